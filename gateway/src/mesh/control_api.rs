//! The control API (`--mesh-listen`, TLS 1.3, HTTP/1.1 or HTTP/2 by ALPN): certificate
//! issuance and renewal, registration under a lease (heartbeats and health pushes are
//! the same upsert), deregistration, and the mesh view each sidecar long-polls for the
//! services it calls.
//!
//! Registration and deregistration need the task's mesh certificate, and are accepted
//! only for a task the reconciler knows, from the task's own address, whose identity is
//! the certificate's.
//!
//! A first certificate needs the bootstrap token (compared in constant time) or an IAM
//! proof ([`super::iam`]: the task role's signature, checked with STS), a task the
//! ECS reconciler knows (described at once if it has not seen it yet) that is PENDING or
//! RUNNING, and a request coming from that task's own address. Renewal comes over mTLS
//! with the current certificate instead of the token. The identity is always derived
//! from the task's service, never from the CSR. Every refusal says which check failed;
//! every issuance is logged with identity, task and serial.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use berth_common::control::{
    CERTIFICATES_PATH, CHECK_PATH, CertificateRequest, CertificateResponse, CheckReport, CheckRequest, DEREGISTER_PATH,
    Deregistration, ErrorResponse, MESH_PATH, MeshService, MeshView, PROTOCOL_VERSION, REGISTRATIONS_PATH,
    Registration, RegistrationAck, VERSION_HEADER,
};
use berth_common::identity::{SpiffeId, spiffe_id_of};
use berth_common::mtls::{CertSlot, FollowingServerConfig, PeerPolicy, server_config_optional_client};
use berth_common::serve::{Listener, ServeLimits, serve_http, within};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::net::TcpListener;

use crate::discovery::ecs::client::RateLimiter;
use crate::discovery::ecs::{MeshTable, TaskFacts, TaskLookup};
use crate::discovery::registry::{HEARTBEAT, LEASE, Registry};

pub(crate) struct ControlApi {
    /// The CA that signs and the roots peers are verified against.
    pub trust: Arc<super::trust::MeshTrust>,
    pub token: Option<String>,
    /// How first certificates are proved.
    pub auth: super::MeshAuth,
    /// Checks IAM proofs with STS (with `auth.iam`).
    pub iam: Option<super::iam::IamVerifier>,
    pub lookup: Option<TaskLookup>,
    pub lifetime: Duration,
    pub limiter: RateLimiter,
    pub default_deny: bool,
    pub registry: Arc<Registry>,
    /// The east-west services, from ECS discovery.
    pub mesh: Option<tokio::sync::watch::Receiver<MeshTable>>,
    /// Every gateway replica's control API.
    pub peers: tokio::sync::watch::Receiver<super::peers::PeerList>,
    /// Per source address: certificates signed, and tasks looked up that discovery did
    /// not know (each may cost an ECS call), so one host cannot spend everyone's budget.
    pub budgets: SourceBudgets,
}

/// Per-source token buckets for the control API's costly work.
#[derive(Debug)]
pub(crate) struct SourceBudgets {
    issue: SourceBudget,
    lookup: SourceBudget,
}

impl Default for SourceBudgets {
    fn default() -> Self {
        SourceBudgets {
            // A bridge-mode host may start dozens of tasks at once.
            issue: SourceBudget::new(10.0, 50.0),
            lookup: SourceBudget::new(10.0, 20.0),
        }
    }
}

/// A token bucket per source address, for at most [`MAX_SOURCES`] sources (the oldest
/// half is forgotten past that).
#[derive(Debug)]
struct SourceBudget {
    rate: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

const MAX_SOURCES: usize = 4096;

impl SourceBudget {
    fn new(rate: f64, burst: f64) -> Self {
        SourceBudget {
            rate,
            burst,
            buckets: Default::default(),
        }
    }

    /// Take one token for `ip`; `false` when its bucket is empty.
    fn take(&self, ip: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_SOURCES && !b.contains_key(&ip) {
            let mut stamps: Vec<std::time::Instant> = b.values().map(|(_, t)| *t).collect();
            stamps.sort_unstable();
            let cut = stamps[stamps.len() / 2];
            b.retain(|_, (_, t)| *t > cut);
        }
        let (tokens, stamp) = b.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*stamp).as_secs_f64() * self.rate).min(self.burst);
        *stamp = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn too_busy(what: &str) -> Reply {
    let mut r = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        format!("too many {what} from this address; retry shortly"),
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
}

/// The peer's verified certificate, when it presented one.
#[derive(Clone)]
pub(crate) struct Caller {
    pub id: SpiffeId,
    pub not_after: Option<std::time::SystemTime>,
}

/// The longest a mesh long poll waits, and the most names it may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_WAIT: Duration = Duration::from_secs(25);
const MAX_NAMES: usize = 256;
/// At most this many addresses per mesh-view request: a sidecar asks of one original
/// destination at a time, and the view is no directory of the VPC.
const MAX_ADDRESSES: usize = 4;

type Reply = Response<Full<Bytes>>;

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reply(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn refuse(status: StatusCode, code: &str, error: String) -> Response<Full<Bytes>> {
    tracing::warn!(code, %error, "control API refused a request");
    reply(
        status,
        &ErrorResponse {
            code: code.into(),
            error,
        },
    )
}

impl ControlApi {
    /// Accept TLS connections until the task is dropped.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        slot: Arc<CertSlot>,
    ) -> Result<(), rustls::Error> {
        let policy = PeerPolicy::TrustDomain(self.trust.trust_domain().into());
        let configs = FollowingServerConfig::new(self.trust.anchors.clone(), move |anchors| {
            server_config_optional_client(slot.clone(), anchors, policy.clone())
        })?;
        let limits = ServeLimits::INTERNAL;
        let listener = Listener::new(listener, "control API", &limits);
        loop {
            let (tcp, peer, admission) = listener.accept().await;
            let (api, acceptor) = (self.clone(), tokio_rustls::TlsAcceptor::from(configs.get()));
            tokio::spawn(async move {
                let _admission = admission;
                let tls = match within(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Some(Ok(t)) => t,
                    Some(Err(e)) => {
                        tracing::info!(%peer, error = %e, "control API: TLS handshake refused");
                        return;
                    }
                    None => return,
                };
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let client_id = leaf.and_then(|c| {
                    Some(Caller {
                        id: spiffe_id_of(c).ok()?,
                        not_after: berth_common::identity::not_after_of(c).ok(),
                    })
                });
                let svc = hyper::service::service_fn(move |req| {
                    let (api, client_id) = (api.clone(), client_id.clone());
                    async move { Ok::<_, Infallible>(api.handle(req, peer, client_id).await) }
                });
                serve_http(tls, svc, &limits).await;
            });
        }
    }

    pub(crate) async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
        caller: Option<Caller>,
    ) -> Reply {
        let path = req.uri().path().to_string();
        let mut reply = match (req.method().clone(), path.as_str()) {
            (Method::POST, CERTIFICATES_PATH) => match read_json(req).await {
                Ok(r) => self.certificate(r, peer, caller.map(|c| c.id)).await,
                Err(e) => e,
            },
            (Method::POST, REGISTRATIONS_PATH) => match read_json(req).await {
                Ok(r) => self.register(r, peer, caller).await,
                Err(e) => e,
            },
            (Method::POST, DEREGISTER_PATH) => match read_json(req).await {
                Ok(r) => self.deregister(r, peer, caller).await,
                Err(e) => e,
            },
            (Method::GET, MESH_PATH) => self.mesh_view(req.uri().query().unwrap_or_default(), caller).await,
            (Method::POST, CHECK_PATH) => match read_json(req).await {
                Ok(r) => self.check(r, peer).await,
                Err(e) => e,
            },
            (_, CERTIFICATES_PATH | REGISTRATIONS_PATH | DEREGISTER_PATH | CHECK_PATH) => {
                refuse(StatusCode::METHOD_NOT_ALLOWED, "method", "use POST".into())
            }
            (_, MESH_PATH) => refuse(StatusCode::METHOD_NOT_ALLOWED, "method", "use GET".into()),
            _ => refuse(StatusCode::NOT_FOUND, "not_found", format!("no such path {path}")),
        };
        reply
            .headers_mut()
            .insert(VERSION_HEADER, http::HeaderValue::from(PROTOCOL_VERSION));
        reply
    }

    /// `berth-sidecar check`: how this connection and the task look from here. Whether
    /// the source is the task's address is told, the address itself never is; the
    /// identity only to that address. An unknown task costs a lookup, from the same
    /// per-source budget as certificates.
    async fn check(&self, request: CheckRequest, peer: SocketAddr) -> Reply {
        let source = peer.ip().to_canonical();
        let mut report = CheckReport {
            protocol: PROTOCOL_VERSION,
            gateway_version: env!("CARGO_PKG_VERSION").into(),
            source: source.to_string(),
            task: "not_checked".into(),
            source_is_task: None,
            desired_status: None,
            identity: None,
            refused: None,
            detail: None,
            accepts: match (self.auth.token, self.auth.iam) {
                (false, false) => vec!["address".into()],
                (t, i) => [("token", t), ("iam", i)]
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(m, _)| m.to_string())
                    .collect(),
            },
            token_ok: None,
            time_ms: 0,
        };
        // As telling as a certificate request with the token: the same budget.
        if let Some(given) = &request.token
            && self.auth.token
        {
            if self.budgets.issue.take(source) {
                report.token_ok = Some(
                    self.token
                        .as_ref()
                        .is_some_and(|want| ct_eq(want.as_bytes(), given.as_bytes())),
                );
            } else {
                report.detail = Some("the token was not checked: too many checks from this address".into());
            }
        }
        // A task discovery does not know costs an ECS call: only for a caller that could
        // get a certificate (the right token, unless IAM proofs are taken too), within the
        // per-source budget and the gateway's ECS rate.
        let ecs_error = |e: crate::discovery::ecs::client::ApiError| {
            tracing::info!(%source, error = %e, "control API check: cannot look up the task");
            "the gateway cannot look the task up in ECS now (its log has the reason)".to_string()
        };
        let found = match &self.lookup {
            None => Err("the gateway runs without ECS discovery (--ecs-cluster)".to_string()),
            Some(l) if l.is_known(&request.task_arn) => l.find(&request.task_arn).await.map_err(ecs_error),
            Some(_) if self.auth.token && !self.auth.iam && report.token_ok != Some(true) => {
                Err("a task the gateway has not seen yet is looked up only with the right token".to_string())
            }
            Some(_) if !self.budgets.lookup.take(source) => {
                Err("too many lookups of unknown tasks from this address; retry shortly".to_string())
            }
            Some(l) => {
                self.limiter.acquire().await;
                l.find(&request.task_arn).await.map_err(ecs_error)
            }
        };
        match found {
            Err(why) => report.detail = Some(why),
            Ok(None) => report.task = "unknown".into(),
            Ok(Some(task)) => {
                report.task = "found".into();
                report.desired_status = Some(task.desired_status.clone());
                let at_task = task.address.as_deref().map(|a| a == source.to_string());
                report.source_is_task = at_task;
                if at_task == Some(true) {
                    match (
                        &task.refused,
                        SpiffeId::for_service(self.trust.trust_domain(), &task.cluster, &task.service),
                    ) {
                        (Some(why), _) => report.refused = Some(why.clone()),
                        (None, Ok(id)) => report.identity = Some(id.to_string()),
                        (None, Err(e)) => report.refused = Some(e.to_string()),
                    }
                }
            }
        }
        report.time_ms = berth_common::control::unix_ms(std::time::SystemTime::now());
        reply(StatusCode::OK, &report)
    }

    /// Find the task, and check the request comes from its address; gives its identity.
    async fn task(&self, task_arn: &str, peer: SocketAddr) -> Result<(TaskFacts, SpiffeId), Reply> {
        let Some(lookup) = &self.lookup else {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_discovery",
                "the mesh checks tasks through ECS discovery: start the gateway with --ecs-cluster".into(),
            ));
        };
        // A task discovery does not know yet costs an ECS call: bounded per source.
        if !lookup.is_known(task_arn) && !self.budgets.lookup.take(peer.ip().to_canonical()) {
            return Err(too_busy("lookups of unknown tasks"));
        }
        let task = match lookup.find(task_arn).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "unknown_task",
                    format!("task {task_arn} does not exist in a discovered cluster"),
                ));
            }
            Err(e) => {
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "discovery_error",
                    format!("cannot check the task: {e}"),
                ));
            }
        };
        if let Some(why) = &task.refused {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "no_identity",
                format!("task {} gets no mesh identity: {why}", task.task_arn),
            ));
        }
        let source = peer.ip().to_canonical().to_string();
        if task.address.as_deref() != Some(source.as_str()) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "wrong_source",
                format!(
                    "request from {source}, but task {} is at {}",
                    task.task_arn,
                    task.address.as_deref().unwrap_or("an unknown address")
                ),
            ));
        }
        match SpiffeId::for_service(self.trust.trust_domain(), &task.cluster, &task.service) {
            Ok(id) => Ok((task, id)),
            Err(e) => Err(refuse(StatusCode::FORBIDDEN, "bad_identity", e.to_string())),
        }
    }

    /// The caller must hold the certificate of the task it speaks for.
    async fn certified_task(
        &self,
        task_arn: &str,
        peer: SocketAddr,
        caller: &Option<Caller>,
    ) -> Result<(TaskFacts, SpiffeId), Reply> {
        let Some(caller) = caller else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "no_certificate",
                "this needs the task's mesh certificate (get one from /v1/certificates first)".into(),
            ));
        };
        let (task, identity) = self.task(task_arn, peer).await?;
        if caller.id != identity {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "identity_mismatch",
                format!("{} cannot speak for task {} of {identity}", caller.id, task.task_arn),
            ));
        }
        Ok((task, identity))
    }

    async fn register(&self, reg: Registration, peer: SocketAddr, caller: Option<Caller>) -> Reply {
        let (task, identity) = match self.certified_task(&reg.task_arn, peer, &caller).await {
            Ok(t) => t,
            Err(r) => return r,
        };
        if task.desired_status != "RUNNING" {
            return refuse(
                StatusCode::FORBIDDEN,
                "task_not_running",
                format!("task {} is stopping (desired {})", task.task_arn, task.desired_status),
            );
        }
        let mut reg = reg;
        // What the gateway verified wins over what the sidecar says.
        reg.cluster = task.cluster.clone();
        reg.service = task.service.clone();
        reg.address = task.address.clone().or(reg.address);
        self.registry
            .upsert(reg, identity.clone(), peer, caller.and_then(|c| c.not_after));
        reply(
            StatusCode::OK,
            &RegistrationAck {
                identity: identity.to_string(),
                lease_ms: LEASE.as_millis() as u64,
                heartbeat_ms: HEARTBEAT.as_millis() as u64,
            },
        )
    }

    async fn deregister(&self, d: Deregistration, peer: SocketAddr, caller: Option<Caller>) -> Reply {
        if let Err(r) = self.certified_task(&d.task_arn, peer, &caller).await {
            return r;
        }
        if self.registry.deregister(&d.task_arn) {
            reply(StatusCode::OK, &serde_json::json!({"draining": d.task_arn}))
        } else {
            refuse(
                StatusCode::NOT_FOUND,
                "not_registered",
                format!("task {} is not registered", d.task_arn),
            )
        }
    }

    /// The requested services as the mesh sees them now, with those that have a task at
    /// one of `addresses` (a transparent sidecar's question about an original destination:
    /// each by its service's own name, not an alias).
    fn view_of(&self, table: &MeshTable, gateways: &[String], names: &[String], addresses: &[IpAddr]) -> MeshView {
        let mut services = Vec::new();
        let mut unknown = Vec::new();
        // A split's targets come with the service that names them: the caller's sidecar
        // routes to them without asking (one level: their own splits are not followed).
        let mut asked: Vec<&str> = names.iter().map(String::as_str).collect();
        for ip in addresses {
            // The one service with a task there (in bridge mode, several share the
            // instance's address: none is answered), under any of its names.
            let mut found: Option<(&str, &str)> = None;
            let mut several = false;
            for s in table.values() {
                let here = s.endpoints.iter().any(|e| {
                    e.rsplit_once(':')
                        .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
                        == Some(*ip)
                });
                match found {
                    _ if !here => {}
                    Some((_, identity)) if identity == s.identity => {}
                    Some(_) => several = true,
                    None => found = Some((&s.name, &s.identity)),
                }
            }
            if !several {
                asked.extend(found.map(|(name, _)| name));
            }
        }
        let mut wanted = asked.clone();
        for n in asked {
            if let Some(s) = table.get(n) {
                wanted.extend(s.policy.routed_targets(n));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in wanted {
            if !seen.insert(n) {
                continue;
            }
            match table.get(n) {
                Some(s) => services.push(MeshService {
                    name: s.name.clone(),
                    identity: format!("spiffe://{}/{}", self.trust.trust_domain(), s.identity),
                    endpoints: s.endpoints.clone(),
                    policy: s.policy.clone(),
                }),
                None => unknown.push(n.to_string()),
            }
        }
        MeshView {
            version: MeshView::version_of(&services, &unknown, gateways),
            services,
            unknown,
            gateways: gateways.to_vec(),
        }
    }

    async fn mesh_view(&self, query: &str, caller: Option<Caller>) -> Reply {
        if caller.is_none() {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "no_certificate",
                "the mesh view needs a mesh certificate".into(),
            );
        }
        let Some(mut rx) = self.mesh.clone() else {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_discovery",
                "the mesh is discovered through ECS: start the gateway with --ecs-cluster".into(),
            );
        };
        let mut names: Vec<String> = Vec::new();
        let mut addresses: Vec<IpAddr> = Vec::new();
        let mut since = None;
        let mut wait = DEFAULT_WAIT;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                "services" => {
                    for n in v.split(',').filter(|n| !n.is_empty()) {
                        if !berth_common::labels::valid_mesh_name(n) {
                            return refuse(StatusCode::BAD_REQUEST, "bad_name", format!("`{n}` is not a mesh name"));
                        }
                        names.push(n.to_string());
                    }
                }
                "addresses" => {
                    for a in v.split(',').filter(|a| !a.is_empty()) {
                        match a.parse::<IpAddr>() {
                            Ok(ip) => addresses.push(ip),
                            Err(_) => {
                                return refuse(
                                    StatusCode::BAD_REQUEST,
                                    "bad_address",
                                    format!("`{a}` is not an IP address"),
                                );
                            }
                        }
                    }
                }
                "version" => match v.parse::<u64>() {
                    Ok(n) => since = Some(n),
                    Err(_) => return refuse(StatusCode::BAD_REQUEST, "bad_version", format!("version={v}")),
                },
                "wait_ms" => match v.parse::<u64>() {
                    Ok(ms) => wait = Duration::from_millis(ms).min(MAX_WAIT),
                    Err(_) => return refuse(StatusCode::BAD_REQUEST, "bad_wait", format!("wait_ms={v}")),
                },
                _ => {}
            }
        }
        names.sort();
        names.dedup();
        addresses.sort();
        addresses.dedup();
        if addresses.len() > MAX_ADDRESSES {
            return refuse(
                StatusCode::BAD_REQUEST,
                "too_many_addresses",
                format!("{} addresses; at most {MAX_ADDRESSES} per request", addresses.len()),
            );
        }
        if names.len() > MAX_NAMES {
            return refuse(
                StatusCode::BAD_REQUEST,
                "too_many_names",
                format!("{} names; at most {MAX_NAMES} per request", names.len()),
            );
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut peers = self.peers.clone();
        // A replica alone has no peer source: its list never changes.
        let mut peers_open = true;
        let no_content = || {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        };
        loop {
            let gateways = peers.borrow_and_update().clone();
            let view = self.view_of(&rx.borrow_and_update(), &gateways, &names, &addresses);
            if since != Some(view.version) {
                return reply(StatusCode::OK, &view);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return no_content(); },
                r = peers.changed(), if peers_open => peers_open = r.is_ok(),
                _ = tokio::time::sleep_until(deadline) => return no_content(),
            }
        }
    }

    async fn certificate(&self, request: CertificateRequest, peer: SocketAddr, client_id: Option<SpiffeId>) -> Reply {
        // The first certificate needs the token or an IAM proof (checked once the task is
        // found); renewal needs the current certificate.
        let iam = match (&self.iam, &request.iam) {
            (Some(v), Some(proof)) if client_id.is_none() && self.auth.iam => Some((v, proof)),
            _ => None,
        };
        if client_id.is_none() && iam.is_none() {
            let ok = match (self.auth.token, &self.token, &request.token) {
                (true, Some(want), Some(got)) => ct_eq(want.as_bytes(), got.as_bytes()),
                (true, _, _) => false,
                // Address only (--mesh-dev-ca or --mesh-insecure-no-token).
                (false, _, _) => !self.auth.iam,
            };
            if !ok {
                return match self.auth.token {
                    true => refuse(
                        StatusCode::UNAUTHORIZED,
                        "bad_token",
                        "the bootstrap token is missing or wrong".into(),
                    ),
                    false => refuse(
                        StatusCode::UNAUTHORIZED,
                        "no_iam_proof",
                        "this gateway issues first certificates on IAM identity: the sidecar signs with its \
                         task role's credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI), \
                         and the task needs a task role"
                            .into(),
                    ),
                };
            }
        }
        // Issuance signs and may describe tasks: bounded per source, then per second.
        if !self.budgets.issue.take(peer.ip().to_canonical()) {
            return too_busy("certificate requests");
        }
        self.limiter.acquire().await;
        let (task, identity) = match self.task(&request.task_arn, peer).await {
            Ok(t) => t,
            Err(r) => return r,
        };
        let alive = matches!(
            task.last_status.as_str(),
            "PROVISIONING" | "PENDING" | "ACTIVATING" | "RUNNING"
        ) && task.desired_status == "RUNNING";
        if !alive {
            return refuse(
                StatusCode::FORBIDDEN,
                "task_not_running",
                format!(
                    "task {} is {} (desired {})",
                    task.task_arn, task.last_status, task.desired_status
                ),
            );
        }
        if let Some((verifier, proof)) = iam
            && let Err(r) = self.prove_by_iam(verifier, proof, &request.csr_pem, &task).await
        {
            tracing::warn!(task = %task.task_arn, code = r.code, reason = %r.reason, "IAM proof refused");
            return refuse(r.status, r.code, r.reason);
        }
        if let Some(current) = &client_id
            && *current != identity
        {
            return refuse(
                StatusCode::FORBIDDEN,
                "identity_mismatch",
                format!("renewal by {current} for a task of {identity}"),
            );
        }
        // A first certificate carries the task definition's proxyConfiguration (the
        // sidecar reads it once, at start): when the definition cannot be read now, the
        // sidecar asks again rather than start without the mode ECS applies.
        let proxy = match (&self.lookup, client_id.is_some()) {
            (Some(lookup), false) => match lookup.proxy_config(&task).await {
                Ok(p) => p,
                Err(e) => {
                    return refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "task_definition_unavailable",
                        format!("the task definition of {} cannot be read now: {e}", task.task_arn),
                    );
                }
            },
            _ => None,
        };
        let issued = match self.trust.ca().issue(&request.csr_pem, &identity, self.lifetime) {
            Ok(i) => i,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_csr", e.to_string()),
        };
        let proof = match (client_id.is_some(), iam.is_some(), self.auth.token) {
            (true, _, _) => "certificate",
            (false, true, _) => "iam",
            (false, false, true) => "token",
            (false, false, false) => "address",
        };
        tracing::info!(identity = %identity, task = %task.task_arn, serial = %issued.serial,
            renewal = client_id.is_some(), proof, "certificate issued");
        reply(
            StatusCode::OK,
            &CertificateResponse {
                identity: identity.to_string(),
                certificate_chain_pem: issued.chain_pem,
                trust_anchor_pem: self.trust.bundle_pem(),
                serial: issued.serial,
                not_after: issued
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                default_deny: self.default_deny,
                proxy,
            },
        )
    }
}

impl ControlApi {
    /// STS says who signed the proof; that must be the task's role, in the task's account,
    /// in the session ECS made for this task.
    async fn prove_by_iam(
        &self,
        verifier: &super::iam::IamVerifier,
        proof: &berth_common::control::IamProof,
        csr_pem: &str,
        task: &TaskFacts,
    ) -> Result<(), super::iam::Refusal> {
        let result = async {
            let caller = verifier.caller(proof, csr_pem, self.trust.trust_domain()).await?;
            let role = match &self.lookup {
                Some(lookup) => lookup.task_role_arn(task).await.map_err(|e| super::iam::Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "discovery_error",
                    reason: format!("cannot read the task's role: {e}"),
                })?,
                None => None,
            };
            super::iam::check_caller(&caller, &task.task_arn, role.as_deref())
        }
        .await;
        verifier.count(&result);
        result
    }
}

/// A request body must arrive whole within this (a message is a few kilobytes).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON body of at most 64 KiB, read within [`BODY_TIMEOUT`], or the 400 that says what
/// was wrong with it.
async fn read_json<T: serde::de::DeserializeOwned>(req: Request<hyper::body::Incoming>) -> Result<T, Reply> {
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), 64 * 1024).collect()).await;
    let body = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("unreadable or too large body: {e}"),
            ));
        }
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                "slow_body",
                format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "not a {}: {e}",
                std::any::type_name::<T>().rsplit("::").next().unwrap_or("message")
            ),
        )
    })
}
