//! Berth's gateway: the north-south proxy (and, with the mesh issues, the control plane).
//!
//! [`Gateway::start`] wires the pieces: providers publish views, the snapshot owner
//! builds and swaps the routing snapshot, entrypoints accept and proxy, the admin
//! listener reports. The binary in `main.rs` only parses configuration and waits for
//! signals.

mod acme;
mod admin;
mod aws;
mod check;
mod config;
mod discovery;
mod entrypoint;
mod lifecycle;
mod mesh;
mod metrics;
mod proxy;
mod snapshots;
mod tcp;

// What the binary, the end-to-end tests and the fuzz targets use; everything else is
// private to the crate (`unreachable_pub` holds it so).
pub use config::traefik::{Sources, run_command, split_args};
pub use config::{Args, Config, ConfigError};
pub use discovery::ecs::EcsStartError;
pub use mesh::ca::{CaError, MeshCa, new_intermediate, new_root};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use berth_common::routing::Snapshot;
use berth_common::tls::load_certified_key;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use berth_common::upstream::trust_roots;
use discovery::StatusCell;
use discovery::file::FileProvider;
use entrypoint::{CertStore, ConnTracker, Entrypoint, Phase};
use lifecycle::Lifecycle;
use metrics::Metrics;
use proxy::Proxy;
use proxy::upstream::Clients;
use snapshots::SnapshotOwner;

/// `berth-gateway check`: verify what the configuration needs, a line per check; the exit code.
pub async fn check(cfg: &Config) -> i32 {
    check::run(cfg).await
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] berth_common::tls::TlsError),
    #[error(transparent)]
    Ecs(#[from] discovery::ecs::EcsStartError),
    #[error("mesh CA: {0}")]
    Ca(#[from] mesh::ca::CaError),
    #[error("--mesh-auth iam: {0}")]
    MeshIam(String),
    #[error("mesh TLS: {0}")]
    MeshTls(#[from] rustls::Error),
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("ACME: {0}")]
    Acme(String),
}

/// A running gateway.
pub struct Gateway {
    mesh: Option<SocketAddr>,
    entrypoints: HashMap<String, SocketAddr>,
    admin: SocketAddr,
    shutdown: Arc<Notify>,
    done: JoinHandle<()>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    tracer: berth_common::telemetry::Tracer,
}

impl Gateway {
    pub async fn start(cfg: Config) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::default());
        let lifecycle = Arc::new(Lifecycle::new(cfg.ready_timeout));
        let roots = trust_roots(cfg.upstream_ca.as_deref())?;
        // The mesh CA and the gateway's own identity come first: the proxy dials
        // sidecars with it.
        let mesh_ca = match &cfg.mesh {
            Some(m) => {
                // Fail at start, not at the first handshake, if the CA or a root is unusable.
                let trust = Arc::new(mesh::trust::MeshTrust::load(
                    &m.ca,
                    m.trust_bundle.as_deref(),
                    &m.trust_domain,
                )?);
                let me = berth_common::identity::SpiffeId::gateway(&m.trust_domain)
                    .map_err(|e| mesh::ca::CaError::Sign(e.to_string()))?;
                let slot = Arc::new(berth_common::mtls::CertSlot::default());
                let (issued, key) = trust.ca().issue_local(&me, m.cert_lifetime)?;
                slot.set(mesh::ca::MeshCa::certified_key(&issued, &key)?);
                let anchors = trust.anchors.clone();
                Some((m.clone(), trust, slot, anchors))
            }
            None => None,
        };
        let mut clients = Clients::new(
            cfg.limits.connect_timeout,
            cfg.limits.upstream_idle_timeout,
            roots.clone(),
            cfg.upstream_insecure_skip_verify,
            metrics.upstream_dials.plain.clone(),
        );
        if let Some((m, _, slot, anchors)) = &mesh_ca {
            clients.mesh = Some(proxy::upstream::MeshClient::new(
                cfg.limits.connect_timeout,
                cfg.limits.upstream_idle_timeout,
                slot.clone(),
                anchors.clone(),
                &m.trust_domain,
                metrics.upstream_dials.mesh.clone(),
            )?);
        }
        let tracer = match &cfg.tracing {
            Some(s) => {
                let detected = berth_common::telemetry::resource::detect_ecs().await;
                let resource = berth_common::telemetry::resource::build(s, "berth-gateway", detected);
                tracing::info!(endpoint = %s.endpoint, protocol = ?s.protocol, "tracing on");
                berth_common::telemetry::start(s, resource)
            }
            None => berth_common::telemetry::Tracer::disabled(),
        };
        let access_log = match &cfg.access_log {
            Some((path, format)) => {
                Some(berth_common::accesslog::AccessLog::open(path.clone(), *format).map_err(StartError::AccessLog)?)
            }
            None => None,
        };
        let proxy = Arc::new(Proxy::new(
            clients,
            metrics.clone(),
            cfg.limits.clone(),
            cfg.forwarded_trusted.clone(),
            lifecycle.clone(),
            cfg.ping.clone(),
            berth_common::telemetry::Observe { tracer, access_log },
        ));

        proxy.set_self();
        tokio::spawn(proxy::health::run(proxy.clone()));

        // TLS material named on the command line must load, or we refuse to start.
        let acme = if cfg.acme.is_empty() {
            None
        } else {
            let region = cfg.ecs.as_ref().and_then(|e| e.region.clone());
            Some(
                acme::Acme::start(cfg.acme.clone(), region)
                    .await
                    .map_err(StartError::Acme)?,
            )
        };
        let certs = Arc::new(CertStore {
            acme: acme.clone(),
            ..Default::default()
        });
        let global_default = match &cfg.tls_default {
            Some(p) => Some(load_certified_key(&p.cert, &p.key)?),
            None => None,
        };
        certs.default.store(Arc::new(global_default));

        // Sources.
        let mut sources = Vec::new();
        let mut statuses = Vec::new();
        if let Some(path) = &cfg.file_provider {
            let status = Arc::new(StatusCell::new("file"));
            let fp = FileProvider::new(path.clone(), status.clone(), metrics.clone());
            let (tx, rx) = watch::channel(fp.initial());
            sources.push(rx);
            statuses.push(status);
            tokio::spawn(fp.run(tx));
        }
        // What the gateway configures itself (Traefik's entrypoint redirections).
        if !cfg.internal_routes.is_empty() {
            let mut diagnostics = Vec::new();
            let tree = berth_common::config::Node::from_dotted(
                cfg.internal_routes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                "",
                &mut diagnostics,
            );
            let config = berth_common::config::decode(&tree, berth_common::config::Mode::File, "", &mut diagnostics);
            let (tx, rx) = watch::channel(berth_common::routing::ProviderView {
                provider: "internal".into(),
                config,
                diagnostics,
                ..Default::default()
            });
            sources.push(rx);
            // The view never changes; its sender lives as long as the gateway.
            tokio::spawn(async move {
                let _tx = tx;
                std::future::pending::<()>().await
            });
        }
        let mut ecs_status = None;
        let mut ecs_lookup = None;
        let mut ecs_mesh = None;
        // Sidecars report here; ECS discovery reads their health.
        let registry = Arc::new(discovery::registry::Registry::default());
        if mesh_ca.is_some() {
            tokio::spawn(registry.clone().run_sweeper());
        }
        if let Some(settings) = cfg.ecs.clone() {
            let provider = discovery::ecs::start(settings, metrics.clone(), registry.subscribe()).await?;
            ecs_mesh = Some(provider.mesh.clone());
            sources.push(provider.view);
            ecs_status = Some(provider.status);
            ecs_lookup = Some(provider.lookup);
        }
        let current = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        if let Some(a) = &acme {
            a.spawn(current.clone());
        }
        let mut owner = SnapshotOwner {
            sources,
            entrypoints: cfg.entrypoints.iter().map(|e| e.name.clone()).collect(),
            default_entrypoints: cfg.default_entrypoints.clone(),
            internal_services: cfg.internal_services.clone(),
            tls_entrypoints: cfg
                .entrypoints
                .iter()
                .filter(|e| e.tls_routers)
                .map(|e| e.name.clone())
                .collect(),
            entrypoint_cert_resolvers: cfg
                .entrypoints
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.cert_resolver.clone()?)))
                .collect(),
            entrypoint_tls_options: cfg
                .entrypoints
                .iter()
                .filter(|e| e.tls_routers)
                .map(|e| {
                    let options = e.tls_options.clone();
                    (
                        e.name.clone(),
                        options.unwrap_or_else(|| berth_common::server_tls::DEFAULT_OPTIONS.into()),
                    )
                })
                .collect(),
            default_rule_syntax: cfg.default_rule_syntax,
            proxy: proxy.clone(),
            certs: certs.clone(),
            current: current.clone(),
            lifecycle: lifecycle.clone(),
        };
        owner.publish(1);
        tokio::spawn(owner.run());

        // Listeners.
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
        let tracker = Arc::new(ConnTracker::default());
        let mut addrs = HashMap::new();
        let mut eps = Vec::new();
        for ep in &cfg.entrypoints {
            let listener = TcpListener::bind(ep.addr).await.map_err(|source| StartError::Bind {
                what: format!("entrypoint {}", ep.name),
                addr: ep.addr,
                source,
            })?;
            let local = listener.local_addr().unwrap_or(ep.addr);
            addrs.insert(ep.name.clone(), local);
            let ep_default = match &ep.tls {
                Some(p) => Some(load_certified_key(&p.cert, &p.key)?),
                None => None,
            };
            let has_own = ep_default.is_some();
            let store = certs.clone();
            let acme_http = acme.clone().filter(|a| a.http_challenge_on(&ep.name));
            eps.push(Entrypoint {
                name: ep.name.as_str().into(),
                listener,
                tls: entrypoint::ServerConfigs::new(certs.clone(), ep_default),
                has_certs: Arc::new(move || has_own || store.any()),
                acme_http,
                proxy: proxy.clone(),
                limits: cfg.limits.clone(),
                metrics: metrics.entrypoint(&ep.name),
                tracker: tracker.clone(),
                path: ep.path,
                trusted: ep.trusted.clone(),
            });
        }
        let mut mesh_addr = None;
        let sidecars = mesh_ca.is_some().then(|| registry.clone());
        let mesh_certs = mesh_ca
            .as_ref()
            .map(|(_, _, slot, anchors)| (anchors.clone(), slot.clone()));
        if let Some((m, trust, slot, _)) = mesh_ca {
            let listener = TcpListener::bind(m.listen).await.map_err(|source| StartError::Bind {
                what: "mesh control API".into(),
                addr: m.listen,
                source,
            })?;
            mesh_addr = Some(listener.local_addr().unwrap_or(m.listen));
            tokio::spawn(trust.clone().run(slot.clone(), m.cert_lifetime));
            let peer_source = match &m.peers {
                mesh::peers::Peers::Alone => match mesh::peers::own_service().await {
                    Some(service) => mesh::peers::Peers::Service(service),
                    None => mesh::peers::Peers::Alone,
                },
                other => other.clone(),
            };
            let local_mesh = mesh_addr.unwrap_or(m.listen);
            let peers = mesh::peers::spawn(peer_source, local_mesh, ecs_lookup.clone());
            let iam = match (&m.sts_endpoint, m.auth.iam) {
                (Some(endpoint), true) => {
                    // STS is trusted as the upstreams are (the system bundle, --upstream-ca).
                    let connector =
                        berth_common::upstream::Connector::new(std::time::Duration::from_secs(5), roots.clone());
                    let v = mesh::iam::IamVerifier::new(endpoint, connector, metrics.clone())
                        .map_err(StartError::MeshIam)?;
                    tracing::info!(sts = %v.endpoint(), "first mesh certificates accept IAM proofs");
                    Some(v)
                }
                _ => None,
            };
            let api = Arc::new(mesh::control_api::ControlApi {
                trust,
                token: m.token.clone(),
                auth: m.auth,
                iam,
                lookup: ecs_lookup.clone(),
                lifetime: m.cert_lifetime,
                limiter: discovery::ecs::client::RateLimiter::new(50.0, 200.0),
                default_deny: m.default_deny,
                registry: registry.clone(),
                mesh: ecs_mesh,
                peers,
                budgets: Default::default(),
            });
            tokio::spawn(async move {
                if let Err(e) = api.serve(listener, slot).await {
                    tracing::error!(error = %e, "mesh control API stopped");
                }
            });
            if !m.auth.token && !m.auth.iam {
                tracing::warn!(
                    "no bootstrap token: any task the reconciler knows, asking from its own address, gets its certificate"
                );
            }
            tracing::info!(addr = ?mesh_addr, trust_domain = %m.trust_domain, "mesh control API listening");
            // Sidecars register with every replica within a heartbeat or two of learning of
            // it: a new replica waits a lease for them before it says ready.
            if ecs_lookup.is_some() {
                let lc = lifecycle.clone();
                lc.wait_for(
                    "mesh",
                    "sidecars are registering (one lease after the control API started)",
                );
                tokio::spawn(async move {
                    tokio::time::sleep(discovery::registry::LEASE).await;
                    lc.clear("mesh");
                });
            }
        }
        let admin_listener = TcpListener::bind(cfg.admin).await.map_err(|source| StartError::Bind {
            what: "admin".into(),
            addr: cfg.admin,
            source,
        })?;
        let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin);
        let mut internal_listeners = Vec::new();
        for (name, addr, serves) in &cfg.internal {
            let l = TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
                what: format!("entrypoint {name}"),
                addr: *addr,
                source,
            })?;
            let local = l.local_addr().unwrap_or(*addr);
            tracing::info!(entrypoint = %name, addr = %local, ?serves, "internal entrypoint listening");
            addrs.insert(name.clone(), local);
            internal_listeners.push((l, serves.clone()));
        }
        for (name, addr) in &addrs {
            tracing::info!(entrypoint = %name, %addr, "listening");
        }
        tracing::info!(%admin_addr, "admin API listening");
        let mut routing_eps: Vec<(String, SocketAddr)> = cfg
            .entrypoints
            .iter()
            .filter_map(|e| addrs.get(&e.name).map(|a| (e.name.clone(), *a)))
            .collect();
        routing_eps.sort();
        let mut accept_tasks = Vec::new();
        for ep in eps {
            accept_tasks.push(tokio::spawn(ep.run(phase_rx.clone())));
        }
        let admin_state = Arc::new(admin::api::AdminState {
            snapshot: current,
            proxy: proxy.clone(),
            metrics: metrics.clone(),
            lifecycle: lifecycle.clone(),
            providers: statuses,
            ecs: ecs_status,
            sidecars,
            certs: certs.clone(),
            entrypoints: routing_eps,
            started: berth_common::accesslog::rfc3339(std::time::SystemTime::now()),
            mesh_certs,
        });
        let state = admin_state.clone();
        let dashboard = cfg.internal_services.iter().any(|s| s == "dashboard@internal");
        proxy.set_internal(Arc::new(move |name, req| {
            admin::api::internal_service(&state, name, dashboard, req)
        }));
        let mut admin_tasks = vec![tokio::spawn(admin::api::serve(
            admin_listener,
            admin_state.clone(),
            None,
        ))];
        for (l, serves) in internal_listeners {
            admin_tasks.push(tokio::spawn(admin::api::serve(l, admin_state.clone(), Some(serves))));
        }

        // Shutdown: not ready at once, keep accepting for the delay, then drain.
        let shutdown = Arc::new(Notify::new());
        let (sd, lc) = (shutdown.clone(), lifecycle.clone());
        let (delay, drain) = (cfg.shutdown_delay, cfg.drain_timeout);
        let done = tokio::spawn(async move {
            sd.notified().await;
            lc.begin_shutdown();
            tracing::info!(?delay, "shutting down: readiness off, still accepting");
            tokio::time::sleep(delay).await;
            let _ = phase_tx.send(Phase::Draining);
            for t in accept_tasks {
                let _ = t.await;
            }
            tracing::info!(open = tracker.open(), ?drain, "listeners closed; draining connections");
            if tokio::time::timeout(drain, tracker.wait_idle()).await.is_err() {
                tracing::warn!(open = tracker.open(), "drain timeout: closing remaining connections");
            }
            for t in admin_tasks {
                t.abort();
            }
        });
        Ok(Gateway {
            tracer: proxy.observe().tracer.clone(),
            mesh: mesh_addr,
            entrypoints: addrs,
            admin: admin_addr,
            shutdown,
            done,
            lifecycle,
            metrics,
        })
    }

    pub fn entrypoint_addr(&self, name: &str) -> Option<SocketAddr> {
        self.entrypoints.get(name).copied()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The mesh control API's address, when the mesh is enabled.
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh
    }

    /// Begin the graceful shutdown (as on SIGTERM).
    pub fn shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Wait until shutdown has finished draining.
    pub async fn wait(self) {
        let _ = self.done.await;
        // The last requests' spans go out before the process exits.
        self.tracer.flush(std::time::Duration::from_secs(2)).await;
    }
}
