//! The inbound listener (`BERTH_INBOUND`): mTLS required; the caller's SPIFFE identity
//! is verified, `berth.mesh.allow` applied (403 with the reason otherwise), any
//! `x-berth-client-id` the request carried is replaced by the verified identity, and the
//! request goes to the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_common::authz::{Decision, authorize};
use berth_common::body::{Body, boxed, from_client};
use berth_common::forward::{self, Attempt, Failed, Failure, One, RequestBody, RetryOn, Trip};
use berth_common::http::{CLIENT_ID_HEADER, UNREACHABLE_HEADER, is_idempotent, remove_hop_by_hop};
use berth_common::identity::{SpiffeId, spiffe_id_of};
use berth_common::labels::Ingress;
use berth_common::mtls::{CertSlot, FollowingServerConfig, PeerPolicy, TrustAnchors, server_config};
use berth_common::pool::{Http1Pool, Pending, Pooled, SendFailed, legacy};
use berth_common::serve::{Listener, ServeLimits, serve_http, within};
use berth_common::synthetic::Synthetic;
use berth_common::telemetry::body::{Finish, GrpcTap, Observed};
use berth_common::telemetry::{self, Observe, Span, SpanKind, attr};
use berth_common::upstream::{Connector, Dials};
use http::header::HeaderName;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// The inbound listeners' TLS configuration, rebuilt when the trust anchors change.
pub(crate) type InboundTls =
    FollowingServerConfig<Box<dyn Fn(TrustAnchors) -> Result<rustls::ServerConfig, rustls::Error> + Send + Sync>>;

/// Who the task is and whom it accepts.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub me: SpiffeId,
    pub allow: Option<Vec<String>>,
    pub default_deny: bool,
}

pub(crate) struct Inbound {
    pub app: SocketAddr,
    pub policy: Policy,
    pub metrics: Arc<crate::metrics::Metrics>,
    observe: Observe,
    /// HTTP/1.1 to the app: Berth's own pool (`berth_common::pool`), as the gateway's
    /// plain `http://` upstreams.
    plain: Http1Pool,
    /// HTTP/2 without TLS to the app: for gRPC requests, and for every request when the
    /// app speaks only h2c (`BERTH_APP_PROTOCOL=h2c`, or `scheme=h2c` in its labels).
    h2c: Client<Connector, Body>,
    app_h2c: bool,
    /// The app's container ports reachable as raw TCP over the mesh: a caller asks for
    /// one by ALPN `berth-tcp/<port>`.
    tcp_ports: Vec<u16>,
    /// `BERTH_APP_RESPONSE_TIMEOUT`: how long the app may take to send its response head.
    response_timeout: Duration,
}

/// How long a connection to the app may take (on loopback a refusal is immediate; this
/// bounds an app whose accept backlog is full).
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a kept-alive connection to the app may stay idle (hyper-util's default, which
/// the inbound had before). Many app servers close idle connections sooner (Node and
/// uvicorn after 5 s): the pool skips a connection closed while idle, and a request one
/// could not take goes on another.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Connections to the app, Nagle off (an h2c stream of small frames would otherwise stall
/// on delayed ACKs), counted in `dials`.
fn app_connector(dials: &Dials) -> Connector {
    Connector::new(APP_CONNECT_TIMEOUT, rustls::RootCertStore::empty()).counting(dials.clone())
}

/// The ALPN protocol that asks the inbound for a raw TCP stream to the app's `port`.
pub(crate) fn tcp_alpn(port: u16) -> Vec<u8> {
    format!("{}{port}", berth_common::upstream::TCP_ALPN_PREFIX).into_bytes()
}

impl Inbound {
    pub(crate) fn new(
        app: SocketAddr,
        policy: Policy,
        metrics: Arc<crate::metrics::Metrics>,
        observe: Observe,
    ) -> Inbound {
        let connector = app_connector(&metrics.dials_app);
        let plain = Http1Pool::new(connector.clone(), APP_IDLE_TIMEOUT, usize::MAX);
        let h2c = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        Inbound {
            app,
            policy,
            metrics,
            observe,
            plain,
            h2c,
            app_h2c: false,
            tcp_ports: Vec::new(),
            response_timeout: Duration::from_secs(60),
        }
    }

    /// Accept raw TCP to these app ports over the mesh (the gateway's TCP routers).
    pub(crate) fn tcp_ports(mut self, ports: Vec<u16>) -> Inbound {
        self.tcp_ports = ports;
        self
    }

    /// Wait at most this long for the app's response head (then 504).
    pub(crate) fn response_timeout(mut self, t: Duration) -> Inbound {
        self.response_timeout = t;
        self
    }

    /// Speak HTTP/2 without TLS (h2c) to the app for every request, not only gRPC.
    pub(crate) fn app_h2c(mut self, yes: bool) -> Inbound {
        self.app_h2c = yes;
        self
    }

    /// The TLS configuration inbound connections are accepted with (the task's current
    /// certificate, callers verified against the current trust anchors).
    pub(crate) fn tls(&self, slot: Arc<CertSlot>, anchors: TrustAnchors) -> Result<Arc<InboundTls>, rustls::Error> {
        let policy = PeerPolicy::TrustDomain(self.policy.me.trust_domain().into());
        let tcp_alpns: Vec<Vec<u8>> = self.tcp_ports.iter().map(|p| tcp_alpn(*p)).collect();
        let build: Box<dyn Fn(TrustAnchors) -> Result<rustls::ServerConfig, rustls::Error> + Send + Sync> =
            Box::new(move |anchors| {
                let mut cfg = server_config(slot.clone(), anchors, policy.clone())?;
                cfg.alpn_protocols.extend(tcp_alpns.iter().cloned());
                Ok(cfg)
            });
        Ok(Arc::new(FollowingServerConfig::new(anchors, build)?))
    }

    /// Accept connections until the task is dropped: mTLS only (`plaintext` `None`, the
    /// `BERTH_INBOUND` listener), or, on the transparent ingress, TLS or plaintext told
    /// apart by the first byte, plaintext taken as `berth.mesh.ingress` says.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<InboundTls>,
        plaintext: Option<Ingress>,
    ) {
        let limits = ServeLimits::MESH;
        let name = if plaintext.is_some() { "ingress" } else { "inbound" };
        let listener = Listener::new(listener, name, &limits);
        loop {
            let (tcp, peer, admission) = listener.accept().await;
            // Small HTTP/2 frames (gRPC) must not wait for Nagle's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let (me, acceptor) = (self.clone(), tokio_rustls::TlsAcceptor::from(tls.get()));
            tokio::spawn(async move {
                let _admission = admission;
                if let Some(mode) = plaintext {
                    let mut first = [0u8; 1];
                    match within(limits.handshake_timeout, tcp.peek(&mut first)).await {
                        Some(Ok(1)) if first[0] == TLS_HANDSHAKE => me.metrics.transparent("ingress", "mtls"),
                        Some(Ok(1)) => return me.plaintext(tcp, peer, mode, &limits).await,
                        _ => return,
                    }
                }
                me.tls_connection(tcp, peer, acceptor, &limits).await;
            });
        }
    }

    /// One mTLS connection: the handshake, the caller's identity, then HTTP or raw TCP.
    async fn tls_connection(
        self: Arc<Self>,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        acceptor: tokio_rustls::TlsAcceptor,
        limits: &ServeLimits,
    ) {
        let tls = match within(limits.handshake_timeout, acceptor.accept(tcp)).await {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                tracing::info!(%peer, error = %e, "inbound: handshake refused");
                return;
            }
            None => {
                tracing::info!(%peer, "inbound: handshake timed out");
                return;
            }
        };
        let Some(caller) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| spiffe_id_of(c).ok())
        else {
            return;
        };
        let tcp_port = tls
            .get_ref()
            .1
            .alpn_protocol()
            .and_then(|p| p.strip_prefix(berth_common::upstream::TCP_ALPN_PREFIX.as_bytes()))
            .and_then(|p| std::str::from_utf8(p).ok()?.parse::<u16>().ok());
        // Raw TCP to any app port but the HTTP one: that one is served as HTTP whatever
        // the ALPN (the caller's identity replaces any `x-berth-client-id` it sent).
        if let Some(port) = tcp_port.filter(|p| *p != self.app.port()) {
            self.tcp(tls, &caller, port, limits.idle_timeout).await;
            return;
        }
        if tcp_port.is_some() {
            self.metrics.inbound_tcp("http");
        }
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let (me, caller) = (me.clone(), caller.clone());
            async move {
                let resp = me.observed(req, Some(&caller), peer).await;
                me.metrics.inbound(resp.status().as_u16());
                Ok::<_, Infallible>(resp)
            }
        });
        serve_http(tls, svc, limits).await;
    }

    /// A plaintext connection ECS redirected to the transparent ingress: refused in
    /// strict mode; in permissive mode its requests go to the app without an identity,
    /// unless the service names its callers (an allow list cannot be applied to a caller
    /// without one, so it is not served).
    async fn plaintext(
        self: Arc<Self>,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        mode: Ingress,
        limits: &ServeLimits,
    ) {
        if mode == Ingress::Strict {
            tracing::info!(%peer, "ingress: plaintext caller refused (berth.mesh.ingress=strict)");
            self.metrics.transparent("ingress", "plaintext_refused");
            return;
        }
        // Redirected to another of the app's container ports than the HTTP one: its bytes
        // as they are, to that port (after the same check: a service that names its callers
        // takes no plaintext). A connection made to this listener itself is served as HTTP.
        let port = crate::transparent::original_destination(&tcp).map(|o| o.port());
        let other = port.filter(|p| *p != self.app.port() && self.tcp_ports.contains(p));
        if port.is_some() && other.is_none() && port != Some(self.app.port()) {
            tracing::info!(%peer, ?port, "ingress: plaintext to a port that is not the app's refused");
            self.metrics.transparent("ingress", "plaintext_refused");
            return;
        }
        if let Some(port) = other {
            if self.policy.allow.is_some() || self.policy.default_deny {
                tracing::warn!(%peer, port, "plaintext TCP denied: the service names its callers");
                self.metrics.transparent("ingress", "plaintext_refused");
                return;
            }
            self.metrics.transparent("ingress", "plaintext_tcp");
            let target = SocketAddr::new(self.app.ip(), port);
            match tokio::net::TcpStream::connect(target).await {
                Ok(app) => {
                    let _ = app.set_nodelay(true);
                    berth_common::serve::splice(tcp, app, limits.idle_timeout).await;
                }
                Err(e) => tracing::info!(app = %target, error = %e, "ingress: the app port is not listening"),
            }
            return;
        }
        self.metrics.transparent("ingress", "plaintext");
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let me = me.clone();
            async move {
                let resp = me.observed(req, None, peer).await;
                me.metrics.inbound(resp.status().as_u16());
                Ok::<_, Infallible>(resp)
            }
        });
        serve_http(tcp, svc, limits).await;
    }

    /// A raw TCP stream to the app's `port`, for an authorized caller.
    async fn tcp<S>(&self, tls: S, caller: &SpiffeId, port: u16, idle: Duration)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let Decision::Deny(why) = authorize(
            caller,
            &self.policy.me,
            self.policy.allow.as_deref(),
            self.policy.default_deny,
        ) {
            tracing::warn!(caller = %caller, reason = %why, port, "tcp call denied");
            self.metrics.denied();
            return;
        }
        let target = SocketAddr::new(self.app.ip(), port);
        match tokio::net::TcpStream::connect(target).await {
            Ok(app) => {
                let _ = app.set_nodelay(true);
                self.metrics.inbound_tcp("forwarded");
                berth_common::serve::splice(tls, app, idle).await;
            }
            Err(e) => {
                self.metrics.inbound_tcp("app_unreachable");
                tracing::warn!(app = %target, error = %e, "tcp: the app is not listening");
            }
        }
    }

    /// [`Inbound::handle`] inside a server span, with an access-log line.
    async fn observed(&self, req: Request<Incoming>, caller: Option<&SpiffeId>, peer: SocketAddr) -> Response<Body> {
        let start = std::time::Instant::now();
        let mut span = self.observe.tracer.server(
            || format!("{} inbound", telemetry::method_name(req.method())),
            req.headers(),
        );
        telemetry::server_request_attrs(&mut span, &req, peer, true);
        span.set_with(attr::BERTH_DIRECTION, || "inbound");
        if let Some(caller) = caller {
            span.set_with(attr::BERTH_PEER_IDENTITY, || caller.to_string());
        }
        let entry = self.observe.access_log.as_ref().map(|_| {
            let mut e = berth_common::accesslog::Entry::for_request(&req, peer, true, "inbound");
            e.client_identity = caller.map(ToString::to_string);
            e.service_url = Some(format!("http://{}", self.app));
            e
        });
        let grpc = berth_common::grpc::is_grpc(req.headers());
        let version = req.version();
        let mut resp = self.handle(req, caller, &span).await;
        berth_common::http::use_own_version(&mut resp, version);
        self.metrics.inbound_duration(start.elapsed());
        telemetry::response_status(&mut span, resp.status().as_u16());
        let grpc = grpc.then(|| {
            let metrics = self.metrics.clone();
            GrpcTap {
                head_status: berth_common::grpc::status(resp.headers()),
                record: Box::new(move |code| metrics.grpc("inbound", code)),
            }
        });
        self.observe.finish(resp, span, entry, start, grpc)
    }

    async fn handle(&self, req: Request<Incoming>, caller: Option<&SpiffeId>, span: &Span) -> Response<Body> {
        let grpc = berth_common::grpc::is_grpc(req.headers());
        match self.to_app(req, caller, span).await {
            Ok(resp) => resp,
            Err(e) => e.synthetic(self.app).into_response(grpc),
        }
    }

    /// Authorize the caller and send the request to the app (once more on a fresh
    /// connection when a kept-alive one broke and the request may go again).
    async fn to_app(
        &self,
        req: Request<Incoming>,
        caller: Option<&SpiffeId>,
        span: &Span,
    ) -> Result<Response<Body>, InboundError> {
        match caller {
            Some(caller) => {
                if let Decision::Deny(why) = authorize(
                    caller,
                    &self.policy.me,
                    self.policy.allow.as_deref(),
                    self.policy.default_deny,
                ) {
                    tracing::warn!(caller = %caller, target = %self.policy.me, reason = %why, "call denied");
                    self.metrics.denied();
                    return Err(InboundError::Forbidden(why.to_string()));
                }
            }
            // A permissive ingress's plaintext caller: only where no caller is named.
            None if self.policy.allow.is_some() || self.policy.default_deny => {
                tracing::warn!(target = %self.policy.me, "plaintext call denied: the service names its callers");
                self.metrics.denied();
                return Err(InboundError::Forbidden(
                    "a caller without a mesh identity: this service names its callers (berth.mesh.allow)".into(),
                ));
            }
            None => {}
        }
        let (mut parts, body) = req.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(CLIENT_ID_HEADER);
        if let Some(v) = caller.and_then(|c| HeaderValue::from_str(&c.to_string()).ok()) {
            parts.headers.insert(CLIENT_ID_HEADER, v);
        }
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let target = format!("http://{}{pq}", self.app)
            .parse::<http::Uri>()
            .map_err(|_| InboundError::BadTarget)?;
        let called = std::mem::replace(&mut parts.uri, target);
        let grpc = berth_common::grpc::is_grpc(&parts.headers);
        let h2 = self.app_h2c || grpc;
        // HTTP/1.1 needs a `Host`: a caller without one (HTTP/2, whose `:authority` is the
        // URI's; HTTP/1.0) gets the authority it called, else the app's address.
        if !h2 && !parts.headers.contains_key(http::header::HOST) {
            let host = match called.authority() {
                Some(a) => HeaderValue::from_str(a.as_str()),
                None => HeaderValue::from_str(&self.app.to_string()),
            };
            if let Ok(v) = host {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        parts.version = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        // An idempotent request without a body may go again once on a fresh connection
        // when a kept-alive one to the app broke (an app closing its connections while it
        // stops); if the app then refuses, or closes that one too, the caller is told to
        // go elsewhere.
        let resendable = body.is_end_stream() && is_idempotent(&parts.method);
        let policy = forward::Policy {
            max_attempts: 2,
            resendable,
            retry: RetryOn {
                broken: true,
                ..RetryOn::default()
            },
            response_timeout: Some(self.response_timeout),
            grpc_deadline: grpc
                .then(|| berth_common::grpc::timeout(&parts.headers))
                .flatten()
                .map(|t| tokio::time::Instant::now() + t),
            ..forward::Policy::default()
        };
        let mut trip = AppTrip {
            inbound: self,
            h2,
            parts: Some(parts),
            span,
        };
        let body = RequestBody::Once(from_client(body));
        let answer = forward::forward(&mut trip, &One, &policy, body)
            .await
            .map_err(|f| match f {
                Failure::Broken { .. } if resendable => InboundError::AppClosed,
                f => InboundError::App(f),
            })?;
        let (mut parts, body) = answer.response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        // Only this sidecar says its app is gone; an app cannot say it for itself.
        parts.headers.remove(UNREACHABLE_HEADER);
        let body = boxed(body);
        let cspan = answer.attempt;
        let body = if cspan.is_recording() {
            Observed::new(body, Finish::span(cspan, answer.sent)).boxed()
        } else {
            body
        };
        Ok(Response::from_parts(parts, body))
    }

    /// A client span for one attempt to the app, its context written into `parts`.
    fn app_span(&self, parent: &Span, parts: &mut http::request::Parts, resend: usize) -> Span {
        let mut cspan = self.observe.tracer.child(
            parent,
            || telemetry::method_name(&parts.method).to_string(),
            SpanKind::Client,
        );
        telemetry::client_request_attrs(&mut cspan, &parts.method, &parts.uri, resend);
        self.observe.tracer.inject(&cspan, &mut parts.headers);
        cspan
    }
}

/// Why the inbound answered instead of the app.
#[derive(Debug)]
enum InboundError {
    Forbidden(String),
    BadTarget,
    App(Failure),
    /// The app closed the connection without answering, twice, a request that may be sent
    /// again (idempotent, no body): a stopping app; the caller may send it elsewhere.
    AppClosed,
}

impl InboundError {
    /// The answer, in HTTP or gRPC: one place for every inbound error.
    fn synthetic(&self, app: SocketAddr) -> Synthetic {
        match self {
            InboundError::Forbidden(why) => Synthetic::new(StatusCode::FORBIDDEN, format!("forbidden: {why}\n")),
            InboundError::BadTarget => Synthetic::new(StatusCode::BAD_REQUEST, "bad request target\n"),
            InboundError::AppClosed => {
                unreachable_app(format!("the app at {app} closed the connection without answering\n"))
            }
            InboundError::App(f) => match f {
                Failure::Connect { .. } => unreachable_app(format!("the app at {app} is not listening\n")),
                Failure::Timeout { after, .. } => Synthetic::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the app at {app} did not answer within {after:?}\n"),
                ),
                Failure::Deadline => Synthetic::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "deadline exceeded (grpc-timeout) waiting for the app\n",
                )
                .grpc_code(berth_common::grpc::code::DEADLINE_EXCEEDED),
                Failure::Client(fault) => Synthetic::new(fault.status(), format!("{fault}\n")),
                _ => Synthetic::new(StatusCode::BAD_GATEWAY, format!("the app at {app} did not answer\n")),
            },
        }
    }
}

/// 503 with `x-berth-unreachable: app`: the app cannot take the request, so the caller
/// (the gateway or a peer sidecar) may send it to another task.
fn unreachable_app(body: String) -> Synthetic {
    Synthetic::new(StatusCode::SERVICE_UNAVAILABLE, body).header(
        HeaderName::from_static(UNREACHABLE_HEADER),
        HeaderValue::from_static("app"),
    )
}

/// The inbound's attempts to its app.
struct AppTrip<'a> {
    inbound: &'a Inbound,
    /// To the app in h2c (else HTTP/1.1).
    h2: bool,
    parts: Option<http::request::Parts>,
    span: &'a Span,
}

impl Trip for AppTrip<'_> {
    type Body = Pooled;
    type Error = SendFailed;
    type Attempt = Span;
    type Future = Pending;

    fn send(&mut self, a: Attempt) -> Result<(Span, Self::Future), Failure> {
        let parts = if a.again { self.parts.clone() } else { self.parts.take() };
        let Some(mut parts) = parts else {
            return Err(Failure::NoEndpoint);
        };
        let cspan = self.inbound.app_span(self.span, &mut parts, a.number);
        let req = Request::from_parts(parts, a.body);
        let sending = match self.h2 {
            true => legacy(&self.inbound.h2c, req),
            false => self.inbound.plain.pending(req),
        };
        Ok((cspan, sending))
    }

    fn answered(&mut self, cspan: &mut Span, _: usize, status: StatusCode, _: Duration) {
        telemetry::response_status(cspan, status.as_u16());
    }

    fn failed(&mut self, cspan: &mut Span, f: &Failed<'_>) {
        let app = self.inbound.app;
        match f.failure {
            Failure::Broken { reason, .. } if f.again => {
                tracing::info!(%app, error = %reason, "the app's connection broke; trying once more");
            }
            Failure::Connect { reason, .. } => tracing::warn!(%app, error = %reason, "the app is not listening"),
            Failure::Broken { reason, .. } => tracing::warn!(%app, error = %reason, "the app did not answer"),
            Failure::Timeout { after, .. } => tracing::warn!(%app, ?after, "the app did not answer in time"),
            _ => {}
        }
        let kind = match f.failure {
            Failure::Broken { .. } if f.again => "connection_broken",
            other => other.kind(),
        };
        cspan.set(attr::ERROR_TYPE, kind);
        cspan.error(|| f.failure.to_string());
    }
}
