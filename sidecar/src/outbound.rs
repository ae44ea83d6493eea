//! The outbound listener (`BERTH_OUTBOUND`, plain HTTP inside the task): the app calls
//! service `S` as `http://S/...` (or `S.berth`), as an HTTP proxy (absolute form) or with
//! that `Host`. `S` is resolved only from the mesh view: the sidecar subscribes to it on
//! first use and follows its changes by long poll; an unknown name gets 503
//! `no mesh service S`, never a DNS lookup. Each request goes to one of S's endpoints by
//! power of two choices over peak-EWMA, over mTLS to the peer sidecar, whose certificate
//! must carry S's identity. Idempotent bodyless requests are retried elsewhere when a
//! connection fails or the peer's app is not listening.
//!
//! The last mesh view is kept when the gateway is unreachable.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use berth_common::balance::{Balancer, EndpointState, Registry};
use berth_common::body::{Body, boxed, from_client};
use berth_common::config::Strategy;
use berth_common::control::{MESH_PATH, MeshPolicy, MeshRetry, MeshView};
use berth_common::forward::{
    self, Attempt, Balanced, Buffered, ClientFault, Failed, Failure, RequestBody, RetryOn, Trip,
};
use berth_common::http::{CLIENT_ID_HEADER, is_idempotent, remove_hop_by_hop};
use berth_common::identity::SpiffeId;
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, client_config};
use berth_common::pool::{Http1Pool, Pending, Pooled, SendFailed, legacy};
use berth_common::serve::{Listener, ServeLimits, serve_http};
use berth_common::synthetic::Synthetic;
use berth_common::telemetry::body::{Finish, GrpcTap, Observed};
use berth_common::telemetry::{self, Observe, Span, SpanKind, attr};
use berth_common::upstream::{MeshConnector, MeshPeers};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::control::ControlPool;

/// At most this many services per sidecar (the gateway's limit per request).
const MAX_SERVICES: usize = 256;
/// An idempotent bodyless call that never reached an app goes to at most this many
/// endpoints, each once (as the gateway does).
const MAX_ATTEMPTS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the mesh long poll waits at the gateway.
const LONG_POLL: Duration = Duration::from_secs(25);

/// The metrics label of calls to a name the mesh does not know.
const UNKNOWN_SERVICE: &str = "_unknown";

/// Every way an outbound request fails, and the response it becomes (one place).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboundError {
    #[error("no mesh service {0}")]
    NoService(String),
    #[error("no mesh service {name}: the control plane is unreachable ({reason})")]
    Unresolved { name: String, reason: String },
    #[error("mesh service {0} has no healthy endpoint")]
    NoEndpoint(String),
    #[error("no mesh service named in the request: send it to http://SERVICE/ (Host or absolute form)")]
    NoName,
    #[error("`{0}` is not a mesh service name")]
    BadName(String),
    #[error("CONNECT is not supported: send plain HTTP, the sidecar adds mTLS")]
    Connect,
    #[error("mesh service {name}: the subscription limit ({MAX_SERVICES}) is reached")]
    TooMany { name: String },
    #[error("{endpoint} of {name}: {reason}")]
    Upstream {
        name: String,
        endpoint: String,
        reason: String,
    },
    #[error("{endpoint} of {name} did not answer within {after:?}")]
    Timeout {
        name: String,
        endpoint: String,
        after: Duration,
    },
    #[error("{0}")]
    ClientBody(ClientFault),
}

impl OutboundError {
    /// A short, stable name for the failure (`error.type` on spans).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            OutboundError::NoService(_) => "no_service",
            OutboundError::Unresolved { .. } => "unresolved",
            OutboundError::NoEndpoint(_) => "no_endpoint",
            OutboundError::NoName => "no_name",
            OutboundError::BadName(_) => "bad_name",
            OutboundError::Connect => "connect_method",
            OutboundError::TooMany { .. } => "too_many_services",
            OutboundError::Upstream { .. } => "upstream",
            OutboundError::Timeout { .. } => "timeout",
            OutboundError::ClientBody(f) => Failure::Client(*f).kind(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            OutboundError::NoService(_)
            | OutboundError::Unresolved { .. }
            | OutboundError::NoEndpoint(_)
            | OutboundError::TooMany { .. } => StatusCode::SERVICE_UNAVAILABLE,
            OutboundError::NoName | OutboundError::BadName(_) => StatusCode::BAD_REQUEST,
            OutboundError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            OutboundError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            OutboundError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            OutboundError::ClientBody(f) => f.status(),
        }
    }

    /// The trip's last failure, as the app is told of it.
    fn from_failure(f: Failure, name: &str, target: &Target) -> OutboundError {
        let endpoint = |i: usize| target.endpoints.get(i).cloned().unwrap_or_default();
        match f {
            Failure::Connect { endpoint: i, reason } | Failure::Broken { endpoint: i, reason } => {
                OutboundError::Upstream {
                    name: name.into(),
                    endpoint: endpoint(i),
                    reason,
                }
            }
            Failure::Timeout { endpoint: i, after } => OutboundError::Timeout {
                name: name.into(),
                endpoint: endpoint(i),
                after,
            },
            Failure::Client(fault) => OutboundError::ClientBody(fault),
            Failure::Unsendable { .. } => OutboundError::BadName(name.into()),
            Failure::NoEndpoint
            | Failure::AppUnreachable { .. }
            | Failure::GrpcStatus { .. }
            | Failure::Status { .. }
            | Failure::Deadline => OutboundError::NoEndpoint(name.into()),
        }
    }

    /// The answer to the app, in HTTP or (to a gRPC call) gRPC: one place for every
    /// outbound error.
    fn response(&self, grpc: bool) -> Response<Body> {
        Synthetic::new(self.status(), format!("{self}\n")).into_response(grpc)
    }
}

/// One mesh service as this sidecar routes to it.
struct Target {
    identity: SpiffeId,
    endpoints: Vec<String>,
    states: Vec<Arc<EndpointState>>,
    balancer: Balancer,
    /// Its owners' routing policy (`berth.mesh.*` labels).
    policy: MeshPolicy,
    /// Smooth weighted round robin over `policy.split`, when there is one.
    split: Option<Balancer>,
    /// `policy.sticky`, over `endpoints` (its default name from the identity).
    sticky: Option<berth_common::sticky::Sticky>,
}

impl Target {
    fn new(identity: SpiffeId, endpoints: Vec<String>, states: Vec<Arc<EndpointState>>, policy: MeshPolicy) -> Target {
        let split = (!policy.split.is_empty())
            .then(|| Balancer::new(Strategy::Wrr, policy.split.iter().map(|s| s.weight).collect()));
        let sticky = policy.sticky.as_ref().map(|c| {
            berth_common::sticky::Sticky::new(c, &identity.to_string(), endpoints.iter().map(String::as_str))
                .hashed_only()
        });
        Target {
            sticky,
            balancer: Balancer::new(Strategy::P2c, vec![1; endpoints.len()]),
            identity,
            endpoints,
            states,
            policy,
            split,
        }
    }

    /// Whether any endpoint may take a call now.
    fn has_healthy(&self) -> bool {
        let now = Instant::now();
        self.states.iter().any(|s| s.is_healthy(now))
    }
}

enum Entry {
    Known(Arc<Target>),
    Unknown,
}

/// The services this sidecar has subscribed to, as the gateway last described them.
pub(crate) struct MeshCache {
    control: Arc<ControlPool>,
    entries: RwLock<HashMap<String, Entry>>,
    subscribed: Mutex<BTreeSet<String>>,
    wake: Notify,
    first_fetch: tokio::sync::Mutex<()>,
    peers: MeshPeers,
    states: Registry,
    /// Addresses no single mesh task could be found at (the gateway said none, or could
    /// not say), and since when: asked again after [`NOT_A_TASK_FOR`].
    not_tasks: Mutex<HashMap<std::net::IpAddr, Instant>>,
    /// One address question to the gateway at a time (the others wait, then look again).
    address_fetch: tokio::sync::Mutex<()>,
}

/// One task of a mesh service, as the transparent egress reaches it by address.
pub(crate) struct MeshTask {
    pub service: String,
    pub identity: SpiffeId,
    /// Its sidecar's inbound, `IP:PORT`.
    pub endpoint: String,
}

/// How long an address no mesh task has is not asked about again.
const NOT_A_TASK_FOR: Duration = Duration::from_secs(10);
/// At most this many such addresses are remembered.
const MAX_NOT_TASKS: usize = 1024;

fn endpoint_ip(endpoint: &str) -> Option<std::net::IpAddr> {
    let (host, _) = endpoint.rsplit_once(':')?;
    host.trim_matches(['[', ']']).parse().ok()
}

impl MeshCache {
    pub(crate) fn new(control: Arc<ControlPool>) -> Arc<MeshCache> {
        Arc::new(MeshCache {
            control,
            entries: RwLock::default(),
            subscribed: Mutex::default(),
            wake: Notify::new(),
            first_fetch: tokio::sync::Mutex::new(()),
            peers: MeshPeers::default(),
            states: Registry::default(),
            not_tasks: Mutex::default(),
            address_fetch: tokio::sync::Mutex::new(()),
        })
    }

    /// The one task at `ip` among the services this sidecar knows: `None` when none is,
    /// or several (tasks in bridge mode share their instance's address: which one an app
    /// dialled cannot be told, so such a connection is not taken for the mesh).
    fn task_at(&self, ip: std::net::IpAddr) -> Option<MeshTask> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut found: Option<MeshTask> = None;
        for (name, e) in entries.iter() {
            let Entry::Known(t) = e else { continue };
            for ep in t.endpoints.iter().filter(|ep| endpoint_ip(ep) == Some(ip)) {
                match &found {
                    // The same task under an alias of its service.
                    Some(f) if f.endpoint == *ep && f.identity == t.identity => {}
                    Some(_) => return None,
                    None => {
                        found = Some(MeshTask {
                            service: name.clone(),
                            identity: t.identity.clone(),
                            endpoint: ep.clone(),
                        })
                    }
                }
            }
        }
        found
    }

    fn not_a_task(&self, ip: std::net::IpAddr) -> bool {
        self.not_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .is_some_and(|at| at.elapsed() < NOT_A_TASK_FOR)
    }

    /// The mesh task at `ip`: from what this sidecar follows, else asked of the gateway
    /// (its service is then followed, room permitting); `None` when no single mesh task has
    /// it, or the gateway cannot say now: remembered for [`NOT_A_TASK_FOR`] either way, so
    /// connections outside the mesh wait for the gateway at most once in that time.
    pub(crate) async fn resolve_address(&self, ip: std::net::IpAddr) -> Option<MeshTask> {
        if let Some(t) = self.task_at(ip) {
            return Some(t);
        }
        if self.not_a_task(ip) {
            return None;
        }
        let _one = self.address_fetch.lock().await;
        if let Some(t) = self.task_at(ip) {
            return Some(t);
        }
        if self.not_a_task(ip) {
            return None;
        }
        let path = format!("{MESH_PATH}?addresses={ip}");
        let view = match self.control.call_any(Method::GET, &path, Duration::from_secs(3)).await {
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<MeshView>(&body).ok(),
            _ => None,
        };
        if let Some(mut view) = view {
            {
                // Only what can be followed is taken: an entry nobody follows would go stale.
                let mut subs = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
                view.services.retain(|s| {
                    let room = subs.contains(&s.name) || subs.len() < MAX_SERVICES;
                    if room {
                        subs.insert(s.name.clone());
                    }
                    room
                });
            }
            self.apply(&view);
            self.wake.notify_one();
        }
        let found = self.task_at(ip);
        if found.is_none() {
            let mut not = self.not_tasks.lock().unwrap_or_else(|e| e.into_inner());
            if not.len() >= MAX_NOT_TASKS {
                not.retain(|_, at| at.elapsed() < NOT_A_TASK_FOR);
            }
            if not.len() < MAX_NOT_TASKS {
                not.insert(ip, Instant::now());
            }
        }
        found
    }

    fn lookup(&self, name: &str) -> Option<Result<Arc<Target>, OutboundError>> {
        match self.entries.read().unwrap_or_else(|e| e.into_inner()).get(name)? {
            Entry::Known(t) => Some(Ok(t.clone())),
            Entry::Unknown => Some(Err(OutboundError::NoService(name.to_string()))),
        }
    }

    /// The service, subscribing to it (and fetching it at once) on first use.
    async fn resolve(&self, name: &str) -> Result<Arc<Target>, OutboundError> {
        if let Some(r) = self.lookup(name) {
            return r;
        }
        let _one = self.first_fetch.lock().await;
        if let Some(r) = self.lookup(name) {
            return r;
        }
        {
            let mut subs = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
            if !subs.contains(name) && subs.len() >= MAX_SERVICES {
                // Names the mesh does not know are the app's (or its users') input: they
                // give way to a new name, so typos never lock out real services.
                let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
                let unknown = subs
                    .iter()
                    .find(|n| matches!(entries.get(n.as_str()), Some(Entry::Unknown)))
                    .cloned();
                match unknown {
                    Some(old) => {
                        subs.remove(&old);
                        entries.remove(&old);
                    }
                    None => return Err(OutboundError::TooMany { name: name.into() }),
                }
            }
            subs.insert(name.to_string());
        }
        let path = format!("{MESH_PATH}?services={name}");
        let fetched = self.control.call_any(Method::GET, &path, Duration::from_secs(3)).await;
        let result = match fetched {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<MeshView>(&body) {
                Ok(view) => {
                    self.apply(&view);
                    self.lookup(name)
                        .unwrap_or_else(|| Err(OutboundError::NoService(name.to_string())))
                }
                Err(e) => Err(OutboundError::Unresolved {
                    name: name.into(),
                    reason: e.to_string(),
                }),
            },
            Ok((status, body)) => Err(OutboundError::Unresolved {
                name: name.into(),
                reason: crate::control::refusal(status, &body).to_string(),
            }),
            Err(e) => Err(OutboundError::Unresolved {
                name: name.into(),
                reason: e.to_string(),
            }),
        };
        // The follower restarts its long poll with the new set.
        self.wake.notify_one();
        result
    }

    /// Take in what the gateway said about these services.
    fn apply(&self, view: &MeshView) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for name in &view.unknown {
            entries.insert(name.clone(), Entry::Unknown);
        }
        for svc in &view.services {
            let Ok(identity) = SpiffeId::parse(&svc.identity) else {
                tracing::warn!(service = %svc.name, identity = %svc.identity, "bad identity in the mesh view");
                continue;
            };
            let unchanged = matches!(entries.get(&svc.name), Some(Entry::Known(t))
                if t.identity == identity && t.endpoints == svc.endpoints && t.policy == svc.policy);
            if unchanged {
                continue;
            }
            tracing::info!(
                service = %svc.name,
                endpoints = svc.endpoints.len(),
                split = svc.policy.split.len(),
                retry = svc.policy.retry.is_some(),
                "mesh service updated"
            );
            entries.insert(
                svc.name.clone(),
                Entry::Known(Arc::new(Target::new(
                    identity,
                    svc.endpoints.clone(),
                    Vec::new(),
                    svc.policy.clone(),
                ))),
            );
        }
        // Endpoint health survives updates; whom to expect where follows them.
        let all: Vec<String> = entries
            .values()
            .filter_map(|e| match e {
                Entry::Known(t) => Some(t.endpoints.iter().cloned()),
                Entry::Unknown => None,
            })
            .flatten()
            .collect();
        let states = self.states.resolve(all.iter().map(String::as_str));
        let mut peers = HashMap::new();
        for e in entries.values_mut() {
            if let Entry::Known(t) = e {
                let fresh = Target::new(
                    t.identity.clone(),
                    t.endpoints.clone(),
                    t.endpoints.iter().map(|u| states[u].clone()).collect(),
                    t.policy.clone(),
                );
                for ep in &fresh.endpoints {
                    peers.insert(ep.clone(), fresh.identity.clone());
                }
                *e = Entry::Known(Arc::new(fresh));
            }
        }
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// Where a call to `called` goes: one of its split's targets by weight (a target with
    /// no healthy endpoint is passed over), else the service itself; while none of those
    /// has a healthy endpoint, its failover when that has one.
    fn split_target(&self, name: &str, called: &Arc<Target>) -> Result<(String, Arc<Target>), OutboundError> {
        let chosen = self.split_pick(name, called);
        let Some(failover) = called.policy.failover.as_deref().filter(|f| *f != name) else {
            return chosen;
        };
        if chosen.as_ref().is_ok_and(|(_, t)| t.has_healthy()) {
            return chosen;
        }
        match self.lookup(failover).and_then(Result::ok) {
            Some(t) if t.has_healthy() => Ok((failover.to_string(), t)),
            _ => chosen,
        }
    }

    fn split_pick(&self, name: &str, called: &Arc<Target>) -> Result<(String, Arc<Target>), OutboundError> {
        let Some(balancer) = &called.split else {
            return Ok((name.to_string(), called.clone()));
        };
        let targets: Vec<Option<Arc<Target>>> = called
            .policy
            .split
            .iter()
            .map(|s| {
                if s.name == name {
                    Some(called.clone())
                } else {
                    self.lookup(&s.name).and_then(Result::ok)
                }
            })
            .collect();
        let i = balancer
            .pick_wrr(|i| targets[i].as_ref().is_some_and(|t| t.has_healthy()))
            .ok_or_else(|| OutboundError::NoEndpoint(name.to_string()))?;
        let target = targets[i]
            .clone()
            .ok_or_else(|| OutboundError::NoEndpoint(name.to_string()))?;
        Ok((called.policy.split[i].name.clone(), target))
    }

    /// Follow the subscribed services and the gateway replicas for ever: long poll, keep
    /// the last view on errors.
    pub(crate) async fn follow(self: Arc<Self>) {
        let mut version: Option<u64> = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            let names: Vec<String> = self
                .subscribed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            // Even without subscriptions the view says where the gateway replicas are.
            let mut path = format!(
                "{MESH_PATH}?services={}&wait_ms={}",
                names.join(","),
                LONG_POLL.as_millis()
            );
            if let Some(v) = version {
                path.push_str(&format!("&version={v}"));
            }
            let poll = self
                .control
                .call_any(Method::GET, &path, LONG_POLL + Duration::from_secs(10));
            tokio::select! {
                r = poll => match r {
                    Ok((StatusCode::OK, body)) => match serde_json::from_slice::<MeshView>(&body) {
                        Ok(view) => {
                            self.apply(&view);
                            self.control.set_replicas(&view.gateways);
                            version = Some(view.version);
                            backoff = Duration::from_millis(200);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "bad mesh view; keeping the last one");
                            tokio::time::sleep(backoff).await;
                        }
                    },
                    Ok((StatusCode::NO_CONTENT, _)) => {}
                    Ok((status, body)) => {
                        tracing::warn!(error = %crate::control::refusal(status, &body), "mesh view refused; keeping the last one");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ?backoff, "mesh view unavailable; keeping the last one");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// How long a kept-alive connection to a peer sidecar may stay idle.
const MESH_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The outbound proxy.
pub(crate) struct Outbound {
    observe: Observe,
    mesh: Arc<MeshCache>,
    /// The app's HTTP/1.x calls: Berth's own pool, over mTLS connections with ALPN
    /// `http/1.1` (as the gateway's to sidecars).
    http1: Http1Pool,
    /// gRPC and the app's HTTP/2 calls (trailers): one multiplexed h2 connection per peer.
    client: Client<MeshConnector, Body>,
    /// For raw TCP to a peer's app (ALPN set per connection).
    tcp_tls: rustls::ClientConfig,
    metrics: Arc<crate::metrics::Metrics>,
    /// `BERTH_OUTBOUND_RESPONSE_TIMEOUT`.
    response_timeout: Duration,
}

/// The mesh name a request is for: the absolute-form authority, else `Host`; without
/// the port and a trailing `.berth`.
pub(crate) fn target_name(uri: &http::Uri, headers: &http::HeaderMap) -> Result<String, OutboundError> {
    let raw = uri
        .host()
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .ok_or(OutboundError::NoName)?;
    mesh_name(raw).ok_or_else(|| OutboundError::BadName(raw.to_string()))
}

/// A host as an app wrote it (with or without its port), as a mesh name or alias:
/// lower-case, without the port, a trailing dot and `.berth`; `None` when it cannot be one.
pub(crate) fn mesh_name(host: &str) -> Option<String> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_suffix(".berth").unwrap_or(&lower);
    berth_common::labels::valid_mesh_name(name).then(|| name.to_string())
}

impl Outbound {
    /// Peers are verified against the mesh's trust anchor, then (by the connector)
    /// against the identity the mesh view gives for their address.
    pub(crate) fn new(
        mesh: Arc<MeshCache>,
        slot: Arc<CertSlot>,
        anchors: TrustAnchors,
        trust_domain: &str,
        metrics: Arc<crate::metrics::Metrics>,
        observe: Observe,
        response_timeout: Duration,
    ) -> Result<Outbound, rustls::Error> {
        let cfg = client_config(Some(slot), anchors, PeerPolicy::TrustDomain(trust_domain.into()))?;
        let tcp_tls = cfg.clone();
        let http1 = Http1Pool::to_sidecars(
            CONNECT_TIMEOUT,
            &cfg,
            mesh.peers.clone(),
            metrics.dials_mesh.clone(),
            MESH_IDLE_TIMEOUT,
        );
        let connector =
            MeshConnector::new(CONNECT_TIMEOUT, cfg, mesh.peers.clone()).counting(metrics.dials_mesh.clone());
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(MESH_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false);
        Ok(Outbound {
            tcp_tls,
            observe,
            mesh,
            http1,
            client: b.build(connector),
            metrics,
            response_timeout,
        })
    }

    /// Accept the app's plain-HTTP connections until the task is dropped.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let limits = ServeLimits::LOCAL;
        let listener = Listener::new(listener, "outbound", &limits);
        loop {
            let (tcp, peer, admission) = listener.accept().await;
            let _ = tcp.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let _admission = admission;
                me.connection(tcp, peer).await;
            });
        }
    }

    /// Serve one of the app's plain-HTTP connections (also the transparent egress's, for
    /// calls to the mesh).
    pub(crate) async fn connection<I>(self: Arc<Self>, tcp: I, peer: std::net::SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let me = self.clone();
            async move { Ok::<_, Infallible>(me.observed(req, peer).await) }
        });
        serve_http(tcp, svc, &ServeLimits::LOCAL).await;
    }

    /// The mesh task at `ip`, when there is one (asked of the gateway once, remembered).
    pub(crate) async fn task_at(&self, ip: std::net::IpAddr) -> Option<MeshTask> {
        self.mesh.resolve_address(ip).await
    }

    /// The app's connection to `port` of `task`, byte for byte over mTLS to its sidecar
    /// (which serves its app's HTTP port as HTTP, with the caller's identity).
    pub(crate) async fn tcp_to<C>(&self, client: C, task: &MeshTask, port: u16, idle: Duration) -> Result<(), String>
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let server =
            berth_common::upstream::mesh_tcp(&self.tcp_tls, &task.endpoint, &task.identity, port, CONNECT_TIMEOUT)
                .await?;
        berth_common::serve::splice(client, server, idle).await;
        Ok(())
    }

    /// Whether `name` (a host as the app wrote it, port and `.berth` already gone) is a
    /// mesh service or alias: `Some(false)` when the mesh says it is not, `None` when
    /// that cannot be told now (the call then gets the outbound's own answer).
    pub(crate) async fn in_mesh(&self, name: &str) -> Option<bool> {
        match self.mesh.resolve(name).await {
            Ok(_) => Some(true),
            Err(OutboundError::NoService(_) | OutboundError::BadName(_)) => Some(false),
            Err(_) => None,
        }
    }

    /// [`Outbound::handle`] inside a server span, with an access-log line.
    async fn observed(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
        let start = Instant::now();
        let mut span = self.observe.tracer.server(
            || format!("{} outbound", telemetry::method_name(req.method())),
            req.headers(),
        );
        telemetry::server_request_attrs(&mut span, &req, peer, false);
        span.set_with(attr::BERTH_DIRECTION, || "outbound");
        let grpc = berth_common::grpc::is_grpc(req.headers());
        let mut entry = self
            .observe
            .access_log
            .as_ref()
            .map(|_| berth_common::accesslog::Entry::for_request(&req, peer, false, "outbound"));
        let version = req.version();
        let mut resp = self
            .handle(req, &mut span, entry.as_deref_mut())
            .await
            .unwrap_or_else(|e| {
                span.set(attr::ERROR_TYPE, e.kind());
                e.response(grpc)
            });
        berth_common::http::use_own_version(&mut resp, version);
        telemetry::response_status(&mut span, resp.status().as_u16());
        let grpc = grpc.then(|| {
            let metrics = self.metrics.clone();
            GrpcTap {
                head_status: berth_common::grpc::status(resp.headers()),
                record: Box::new(move |code| metrics.grpc("outbound", code)),
            }
        });
        self.observe.finish(resp, span, entry, start, grpc)
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        span: &mut Span,
        entry: Option<&mut berth_common::accesslog::Entry>,
    ) -> Result<Response<Body>, OutboundError> {
        if req.method() == Method::CONNECT {
            return Err(OutboundError::Connect);
        }
        let name = target_name(req.uri(), req.headers())?;
        if span.is_recording() {
            span.set_name(|| format!("{} {name}", telemetry::method_name(req.method())));
            span.set(attr::PEER_SERVICE, &name);
        }
        let start = Instant::now();
        let result = self.forward(&name, req, span, entry).await;
        // Series are per mesh service; a name the mesh does not know is the app's (or its
        // user's) input, and counts under one label.
        let label = match &result {
            Err(OutboundError::NoService(_) | OutboundError::Unresolved { .. } | OutboundError::TooMany { .. }) => {
                UNKNOWN_SERVICE
            }
            _ => name.as_str(),
        };
        self.metrics.outbound_duration(label, start.elapsed());
        let status = match &result {
            Ok(r) => r.status(),
            Err(e) => e.status(),
        };
        self.metrics.outbound(label, status.as_u16());
        result
    }

    async fn forward(
        &self,
        name: &str,
        req: Request<Incoming>,
        span: &mut Span,
        mut entry: Option<&mut berth_common::accesslog::Entry>,
    ) -> Result<Response<Body>, OutboundError> {
        if let Some(e) = entry.as_deref_mut() {
            e.service = Some(name.to_string());
        }
        let called = self.mesh.resolve(name).await?;
        // The callee's policy decides: its split, its retries, its timeout.
        let (routed, target) = self.mesh.split_target(name, &called)?;
        if routed != name {
            span.set_with(attr::BERTH_MESH_TARGET, || routed.clone());
        }
        let (parts, body) = req.into_parts();
        let grpc = berth_common::grpc::is_grpc(&parts.headers);
        // HTTP/1.x calls go on HTTP/1.1 to the peer; gRPC and HTTP/2 calls (trailers) on h2.
        let h1 = !grpc && matches!(parts.version, http::Version::HTTP_10 | http::Version::HTTP_11);
        let retry = called.policy.retry.as_ref().map(MeshRetry::to_retry);
        let grpc_retry = grpc && retry.as_ref().is_some_and(|r| r.grpc_method_listed(parts.uri.path()));
        let bodyless = body.is_end_stream();
        // A gRPC call the retry lists as safe to send again is kept (as at the gateway).
        let body = from_client(body);
        let body = if grpc_retry {
            match forward::buffer(body, forward::REPLAY_LIMIT).await {
                Buffered::Whole(bytes) => RequestBody::Replay(bytes),
                Buffered::Partial(rest) => RequestBody::Once(rest),
                Buffered::Failed(e) => return Err(OutboundError::ClientBody(forward::client_fault(&*e))),
            }
        } else {
            RequestBody::Once(body)
        };
        let replay = matches!(body, RequestBody::Replay(_));
        // Without a retry policy, an idempotent request without a body may go to another
        // endpoint when this one fails before answering (as nginx's
        // `proxy_next_upstream error timeout`); with one, its attempts and back-off, as
        // the gateway's retry middleware.
        let policy = forward::Policy {
            max_attempts: retry
                .as_ref()
                .map(|r| r.attempts as usize)
                .unwrap_or(MAX_ATTEMPTS.min(target.endpoints.len())),
            resendable: (bodyless && is_idempotent(&parts.method)) || replay,
            retry: RetryOn {
                connect: true,
                broken: true,
                timeout: true,
                app_unreachable: true,
                grpc_codes: retry.as_ref().map(|r| r.grpc_codes.clone()).unwrap_or_default(),
                // Status retries east-west: calls sent again anyway (bodyless idempotent).
                statuses: retry.as_ref().map(|r| r.statuses.clone()).unwrap_or_default(),
            },
            retry_deadline: None,
            backoff: retry.as_ref().map(|r| r.initial_interval),
            revisit: retry.is_some(),
            response_timeout: Some(
                called
                    .policy
                    .timeout_ms
                    .map_or(self.response_timeout, Duration::from_millis),
            ),
            // The call's own deadline, for all attempts together: the peer is not to blame.
            grpc_deadline: grpc
                .then(|| berth_common::grpc::timeout(&parts.headers))
                .flatten()
                .map(|t| tokio::time::Instant::now() + t),
        };
        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        // Only the peer's inbound sidecar says who the caller is.
        headers.remove(CLIENT_ID_HEADER);
        if !headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(name)
        {
            headers.insert(header::HOST, v);
        }
        let mut trip = PeerTrip {
            outbound: self,
            name,
            target: &target,
            method: parts.method,
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            headers,
            h1,
            span: &*span,
            entry,
        };
        // The callee's sticky cookie: its task, tried first while it is healthy.
        let sticky_to = target.sticky.as_ref().and_then(|s| s.preferred(&trip.headers));
        let balanced = Balanced {
            balancer: &target.balancer,
            states: &target.states,
        };
        let endpoints = forward::Preferring {
            inner: &balanced,
            first: sticky_to,
        };
        let answer = match forward::forward(&mut trip, &endpoints, &policy, body).await {
            Ok(a) => a,
            Err(Failure::Deadline) => {
                return Ok(Synthetic::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "deadline exceeded (grpc-timeout) waiting for the peer",
                )
                .grpc_code(berth_common::grpc::code::DEADLINE_EXCEEDED)
                .into_grpc());
            }
            Err(f) => return Err(OutboundError::from_failure(f, name, &target)),
        };
        let (mut rparts, rbody) = answer.response.into_parts();
        remove_hop_by_hop(&mut rparts.headers);
        if let Some(sticky) = &target.sticky
            && answer.failure.is_none()
            && sticky_to != Some(answer.endpoint)
            && let Some(cookie) = sticky.set_cookie(answer.endpoint)
        {
            rparts.headers.append(header::SET_COOKIE, cookie);
        }
        let rbody = boxed(rbody);
        let cspan = answer.attempt;
        let rbody = if answer.failure.is_none() && cspan.is_recording() {
            Observed::new(rbody, Finish::span(cspan, answer.sent)).boxed()
        } else {
            rbody
        };
        Ok(Response::from_parts(rparts, rbody))
    }
}

/// The outbound's attempts to a mesh service's endpoints (the peers' inbound sidecars).
struct PeerTrip<'a> {
    outbound: &'a Outbound,
    name: &'a str,
    target: &'a Target,
    method: Method,
    path_and_query: String,
    headers: http::HeaderMap,
    /// To the peer over HTTP/1.1 (else h2).
    h1: bool,
    span: &'a Span,
    entry: Option<&'a mut berth_common::accesslog::Entry>,
}

impl Trip for PeerTrip<'_> {
    type Body = Pooled;
    type Error = SendFailed;
    type Attempt = Span;
    type Future = Pending;

    fn send(&mut self, a: Attempt) -> Result<(Span, Self::Future), Failure> {
        let endpoint = &self.target.endpoints[a.endpoint];
        let uri: http::Uri = format!("https://{endpoint}{}", self.path_and_query)
            .parse()
            .map_err(|_| Failure::Unsendable {
                endpoint: a.endpoint,
                reason: format!("`{}` is not a mesh service name", self.name),
            })?;
        let mut up = Request::new(a.body);
        *up.method_mut() = self.method.clone();
        *up.uri_mut() = uri;
        // Only a request that may go again needs its headers kept.
        *up.headers_mut() = if a.again {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        let mut cspan = self.outbound.observe.tracer.child(
            self.span,
            || telemetry::method_name(&self.method).to_string(),
            SpanKind::Client,
        );
        telemetry::client_request_attrs(&mut cspan, &self.method, up.uri(), a.number);
        if cspan.is_recording() {
            cspan.set_str(attr::PEER_SERVICE, self.name);
            cspan.set(attr::BERTH_PEER_IDENTITY, self.target.identity.to_string());
        }
        self.outbound.observe.tracer.inject(&cspan, up.headers_mut());
        if let Some(e) = self.entry.as_deref_mut() {
            e.service_url = Some(format!("https://{endpoint}"));
        }
        let sending = match self.h1 {
            true => self.outbound.http1.pending(up),
            false => legacy(&self.outbound.client, up),
        };
        Ok((cspan, sending))
    }

    fn answered(&mut self, cspan: &mut Span, _: usize, status: StatusCode, elapsed: Duration) {
        telemetry::response_status(cspan, status.as_u16());
        if let Some(e) = self.entry.as_deref_mut() {
            e.origin_status = Some(status.as_u16());
            e.origin_duration = Some(elapsed);
        }
    }

    fn failed(&mut self, cspan: &mut Span, f: &Failed<'_>) {
        let (service, ejected_for) = (self.name, f.ejected_for);
        let endpoint = f
            .failure
            .endpoint()
            .and_then(|i| self.target.endpoints.get(i))
            .map_or("", String::as_str);
        cspan.set(attr::ERROR_TYPE, f.failure.kind());
        match f.failure {
            Failure::Timeout { after, .. } => {
                cspan.error(|| "the peer did not answer in time".into());
                tracing::warn!(service, %endpoint, ?after, ?ejected_for, "peer did not answer in time")
            }
            Failure::AppUnreachable { .. } => tracing::info!(service, %endpoint, "the peer's app is not listening"),
            Failure::Connect { reason, .. } => {
                cspan.error(|| reason.clone());
                tracing::warn!(service, %endpoint, error = %reason, ?ejected_for, "peer connect failed")
            }
            Failure::Broken { reason, .. } => {
                cspan.error(|| reason.clone());
                tracing::warn!(service, %endpoint, error = %reason, ?ejected_for, "peer failed before answering")
            }
            _ => cspan.error(|| f.failure.to_string()),
        }
    }

    fn retrying(&mut self, _: usize) {
        self.outbound.metrics.retry(self.name);
        if let Some(e) = self.entry.as_deref_mut() {
            e.retries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(uri: &str, host: Option<&str>) -> Result<String, OutboundError> {
        let mut headers = http::HeaderMap::new();
        if let Some(h) = host {
            headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        target_name(&uri.parse().unwrap(), &headers)
    }

    #[test]
    fn the_service_comes_from_the_absolute_form_or_the_host() {
        assert_eq!(name("http://whoami/x", None).unwrap(), "whoami");
        assert_eq!(name("http://Whoami.berth:8080/x", Some("other")).unwrap(), "whoami");
        assert_eq!(name("/x", Some("orders.berth:80")).unwrap(), "orders");
        assert_eq!(name("/x", Some("orders.")).unwrap(), "orders");
        assert!(matches!(name("/x", None), Err(OutboundError::NoName)));
        assert!(matches!(name("/x", Some("a b")), Err(OutboundError::BadName(_))));
        assert_eq!(
            OutboundError::NoService("s".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(OutboundError::NoService("s".into()).to_string(), "no mesh service s");
    }
}
