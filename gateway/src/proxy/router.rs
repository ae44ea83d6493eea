//! The data path's view of one snapshot: routers and services resolved to their
//! runtime state (endpoint health, balancers, metric handles), built once per swap.

use std::sync::Arc;

use berth_common::routing::Snapshot;

use crate::metrics::{Metrics, RequestMetrics};
use berth_common::balance::{Balancer, EndpointState, Registry};
use berth_common::sticky::Sticky;
use berth_common::transport::Transport;

use super::upstream::{TransportClients, TransportPools};

/// One upstream endpoint as the proxy dials it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub url: String,
    pub authority: http::uri::Authority,
    pub h2c: bool,
    pub https: bool,
    /// For a task behind its sidecar: the SPIFFE path the sidecar must present.
    pub mesh: Option<String>,
    /// The service's `serversTransport` pools, or why they could not be made (then the
    /// endpoint is not dialled).
    pub pool: Option<Result<Arc<TransportClients>, Arc<str>>>,
    /// Whose health this endpoint shares: every service dialling the URL the same way
    /// (a server reached through another transport may be up when this one fails).
    pub state_key: String,
}

#[derive(Debug)]
pub(crate) struct ServiceRuntime {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub states: Vec<Arc<EndpointState>>,
    pub balancer: Balancer,
    pub pass_host_header: bool,
    /// The service's `serversTransport`, when it names one.
    pub transport: Option<Arc<Transport>>,
    /// `sticky.cookie`: the cookie naming each endpoint (for a weighted service, each
    /// child).
    pub sticky: Option<Sticky>,
    /// A `weighted` service: the children requests are shared among.
    pub weighted: Option<WeightedRuntime>,
    pub metrics: Arc<RequestMetrics>,
    /// Parallel to `endpoints`.
    pub endpoint_metrics: Vec<Arc<RequestMetrics>>,
}

/// A weighted service's children (indexes into [`Routes::services`]) and their shares.
#[derive(Debug)]
pub(crate) struct WeightedRuntime {
    pub children: Vec<usize>,
    /// Parallel to `children`.
    pub weights: Vec<u32>,
    pub balancer: Balancer,
    /// Skip a child with no healthy server (`healthCheck: {}`).
    pub health_check: bool,
    /// `failover`: the first child while it is up, else the second.
    pub failover: bool,
    /// A failover's `errors`: the first child's answers that go to the second.
    pub failover_errors: Option<Arc<berth_common::config::FailoverErrors>>,
    /// `mirroring`: the first child serves, the others get copies.
    pub mirroring: Option<MirrorRuntime>,
}

/// A mirroring service's shares, counted as Traefik counts them: mirror `i` gets a copy
/// while it has had fewer than `percent` of the requests so far.
#[derive(Debug)]
pub(crate) struct MirrorRuntime {
    pub percents: Vec<u32>,
    pub mirror_body: bool,
    pub max_body: u64,
    total: std::sync::atomic::AtomicU64,
    counts: Vec<std::sync::atomic::AtomicU64>,
}

impl MirrorRuntime {
    /// The mirrors (indexes into the children after the first) this request is copied to.
    pub(crate) fn chosen(&self) -> Vec<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.total.fetch_add(1, Relaxed) + 1;
        self.percents
            .iter()
            .zip(&self.counts)
            .enumerate()
            .filter(|(_, (p, count))| {
                let c = count.load(Relaxed);
                let send = c.saturating_mul(100) < total.saturating_mul(u64::from(**p));
                if send {
                    count.fetch_add(1, Relaxed);
                }
                send
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// A snapshot plus its runtime state, swapped as one.
#[derive(Debug)]
pub(crate) struct Routes {
    pub snapshot: Arc<Snapshot>,
    /// Parallel to `snapshot.services`.
    pub services: Vec<Arc<ServiceRuntime>>,
    /// Parallel to `snapshot.routers`.
    pub router_metrics: Vec<Arc<RequestMetrics>>,
}

impl Routes {
    /// Whether `service` has a healthy server now: one of its own, or through a child
    /// (weighted services, at most `depth` deep). Each service is looked at once per
    /// call, however often it is named.
    pub(crate) fn is_up(&self, service: usize, depth: usize) -> bool {
        let mut seen = std::collections::HashMap::new();
        self.is_up_once(service, depth, &mut seen)
    }

    fn is_up_once(&self, service: usize, depth: usize, seen: &mut std::collections::HashMap<usize, bool>) -> bool {
        if let Some(&up) = seen.get(&service) {
            return up;
        }
        // Until it is known (a cycle the builder would have refused): down.
        seen.insert(service, false);
        let Some(svc) = self.services.get(service) else {
            return false;
        };
        let up = match &svc.weighted {
            // A mirroring service is as up as its main service.
            Some(w) if w.mirroring.is_some() => {
                depth > 0 && w.children.first().is_some_and(|&c| self.is_up_once(c, depth - 1, seen))
            }
            Some(w) => depth > 0 && w.children.iter().any(|&c| self.is_up_once(c, depth - 1, seen)),
            None => {
                let now = std::time::Instant::now();
                svc.states.iter().any(|s| s.is_healthy(now))
            }
        };
        seen.insert(service, up);
        up
    }

    pub(crate) fn build(
        snapshot: Arc<Snapshot>,
        registry: &Registry,
        metrics: &Metrics,
        transports: &TransportPools,
    ) -> Routes {
        let mut endpoints_by_service = Vec::with_capacity(snapshot.services.len());
        for svc in &snapshot.services {
            let pool = svc.transport.as_ref().map(|t| {
                transports.get(t).map_err(|e| {
                    tracing::warn!(service = %svc.name, transport = %t.name, error = %e, "servers transport unusable");
                    Arc::from(format!("servers transport {}: {e}", t.name))
                })
            });
            let eps: Vec<Endpoint> = svc
                .servers
                .iter()
                .filter_map(endpoint)
                .map(|mut e| {
                    if let Some(t) = &svc.transport {
                        e.state_key = format!("{}\0{}\0{}", e.url, t.name, t.generation);
                    }
                    e.pool = pool.clone();
                    e
                })
                .collect();
            endpoints_by_service.push(eps);
        }
        let states = registry.resolve(endpoints_by_service.iter().flatten().map(|e| e.state_key.as_str()));
        let services = snapshot
            .services
            .iter()
            .zip(endpoints_by_service)
            .map(|(svc, endpoints)| {
                let weights = svc
                    .servers
                    .iter()
                    .filter(|s| endpoint(s).is_some())
                    .map(|s| s.weight)
                    .collect();
                Arc::new(ServiceRuntime {
                    endpoint_metrics: endpoints.iter().map(|e| metrics.endpoint(&svc.name, &e.url)).collect(),
                    sticky: svc.sticky.as_ref().map(|c| match &svc.weighted {
                        Some(w) => Sticky::new(c, &svc.name, w.names.iter().map(String::as_str)),
                        None => Sticky::new(c, &svc.name, endpoints.iter().map(|e| e.url.as_str())),
                    }),
                    weighted: svc.weighted.as_ref().map(|w| WeightedRuntime {
                        children: w.children.clone(),
                        weights: w.weights.clone(),
                        balancer: Balancer::new(berth_common::config::Strategy::Wrr, w.weights.clone()),
                        health_check: w.health_check,
                        failover: w.failover,
                        failover_errors: w.failover_errors.clone(),
                        mirroring: w.mirroring.as_ref().map(|m| MirrorRuntime {
                            percents: m.percents.clone(),
                            mirror_body: m.mirror_body,
                            max_body: m.max_body,
                            total: Default::default(),
                            counts: m.percents.iter().map(|_| Default::default()).collect(),
                        }),
                    }),
                    name: svc.name.clone(),
                    states: endpoints.iter().map(|e| states[&e.state_key].clone()).collect(),
                    endpoints,
                    balancer: Balancer::new(svc.strategy, weights),
                    pass_host_header: svc.pass_host_header,
                    transport: svc.transport.clone(),
                    metrics: metrics.service(&svc.name),
                })
            })
            .collect();
        let router_metrics = snapshot.routers.iter().map(|r| metrics.router(&r.name)).collect();
        let keep = snapshot
            .services
            .iter()
            .flat_map(|s| s.servers.iter().map(move |e| format!("{}\0{}", s.name, e.url)))
            .collect();
        metrics.retain_endpoints(&keep);
        metrics.retain_names(
            &snapshot.routers.iter().map(|r| r.name.as_str()).collect(),
            &snapshot.services.iter().map(|s| s.name.as_str()).collect(),
        );
        metrics.retain_tcp(&snapshot.tcp_routers.iter().map(|r| r.name.as_str()).collect());
        Routes {
            snapshot,
            services,
            router_metrics,
        }
    }
}

fn endpoint(s: &berth_common::routing::Server) -> Option<Endpoint> {
    let authority = s.uri.authority()?.clone();
    let scheme = s.uri.scheme_str()?;
    let mesh = (scheme == "mesh").then(|| s.uri.path().to_string());
    let (h2c, https) = (scheme == "h2c", scheme == "https" || mesh.is_some());
    Some(Endpoint {
        url: s.url.clone(),
        authority,
        h2c,
        https,
        mesh,
        pool: None,
        state_key: s.url.clone(),
    })
}
