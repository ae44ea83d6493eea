//! The north-south proxy: route, balance, forward.
//!
//! A request's path reads in order: [`Proxy::handle`] (limits, `/ping`, smuggling
//! checks) -> the snapshot's router -> the service's balancer -> [`upstream`] pools.
//! Failures become responses in [`errors`] only.

pub mod compress;
pub mod errors;
pub mod health;
pub mod replay;
pub mod router;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use berth_common::error::chain_text;
use berth_common::http::{
    CLIENT_ID_HEADER, ForwardInfo, is_app_unreachable, is_idempotent, remove_hop_by_hop, set_forwarded,
    strip_untrusted_forwarding, upgrade_protocol,
};
use berth_common::routing::Snapshot;
use berth_common::rules::RequestView;
use berth_common::rules::matcher::canonical_host;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::admin::metrics::{EntrypointMetrics, Metrics};
use crate::config::Limits;
use crate::lifecycle::Lifecycle;
use berth_common::accesslog::Entry;
use berth_common::balance::{InFlight, Registry};
use berth_common::middleware;
use berth_common::telemetry::body::{Finish, GrpcTap, Observed};
use berth_common::telemetry::{self, Observe, Span, SpanKind, attr};
use errors::{ProxyError, text_response};
use router::{Routes, ServiceRuntime};
use upstream::Clients;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// The client's request body failed (bad chunk, reset): not the upstream's fault.
#[derive(Debug, thiserror::Error)]
#[error("client body: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// Without a retry middleware, an idempotent bodyless request that never reached an app
/// (the connection was refused, or the task's sidecar says its app is gone) goes to at
/// most this many endpoints, each once. In a rolling deploy several stopping tasks can be
/// picked in a row before their sidecars deregister; three was seen to fall short.
const MAX_ATTEMPTS: usize = 5;

/// What the proxy knows about the client connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub entrypoint: Arc<str>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub tls: bool,
    pub metrics: Arc<EntrypointMetrics>,
    /// The entrypoint's path settings (`sanitizePath`, `encodedCharacters`).
    pub path: berth_common::path::PathPolicy,
}

/// The largest gRPC request kept to be sent again (unary calls are small).
const REPLAY_LIMIT: usize = 64 * 1024;

/// A trailers-only gRPC answer (HTTP 200) with `code`.
fn grpc_status_response(code: u32, message: &str) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.headers_mut() = berth_common::grpc::status_headers(code, message);
    r
}

/// How a routed request is to be forwarded.
struct How {
    /// The `Host` the client sent (kept when the service passes it on).
    raw_host: Option<String>,
    /// A requested protocol upgrade (WebSocket) and the client side of it.
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The router's retry middleware, if any.
    retry: Option<middleware::limit::Retry>,
    /// When the request body must have arrived whole.
    read_deadline: Option<tokio::time::Instant>,
}

/// Filled in as a request goes through, for its span and access-log line.
#[derive(Default)]
struct Outcome {
    router: Option<String>,
    service: Option<String>,
    service_url: Option<String>,
    origin_status: Option<u16>,
    origin_duration: Option<std::time::Duration>,
    retries: u32,
}

pub struct Proxy {
    routes: ArcSwap<Routes>,
    observe: Observe,
    registry: Registry,
    clients: Clients,
    metrics: Arc<Metrics>,
    limits: Limits,
    trusted: Vec<IpNet>,
    lifecycle: Arc<Lifecycle>,
    ping: Option<String>,
}

impl Proxy {
    pub fn new(
        clients: Clients,
        metrics: Arc<Metrics>,
        limits: Limits,
        trusted: Vec<IpNet>,
        lifecycle: Arc<Lifecycle>,
        ping: Option<String>,
        observe: Observe,
    ) -> Proxy {
        let registry = Registry::default();
        let routes = Routes::build(Arc::new(Snapshot::default()), &registry, &metrics);
        Proxy {
            routes: ArcSwap::from_pointee(routes),
            registry,
            clients,
            metrics,
            limits,
            trusted,
            lifecycle,
            ping,
            observe,
        }
    }

    /// The mesh client (dialling sidecars), when the gateway runs the mesh.
    pub fn mesh_client(&self) -> Option<&upstream::MeshClient> {
        self.clients.mesh.as_ref()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn observe(&self) -> &Observe {
        &self.observe
    }

    /// Swap in a new snapshot; requests in flight keep the one they started with.
    pub fn swap(&self, snapshot: Arc<Snapshot>) {
        let routes = Routes::build(snapshot, &self.registry, &self.metrics);
        if let Some(mesh) = &self.clients.mesh {
            let peers = routes
                .services
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter_map(|e| {
                    let path = e.mesh.as_ref()?;
                    let id = berth_common::identity::SpiffeId::parse(&format!("spiffe://{}{path}", mesh.trust_domain))
                        .ok()?;
                    Some((e.authority.to_string(), id))
                })
                .collect();
            *mesh.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
        }
        self.routes.store(Arc::new(routes));
    }

    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// Handle one request; never fails (errors become responses).
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let start = Instant::now();
        let method = req.method().clone();
        let version = req.version();
        let mut close = self.lifecycle.is_shutting_down();
        let mut span = self
            .observe
            .tracer
            .server(|| telemetry::method_name(&method).to_string(), req.headers());
        telemetry::server_request_attrs(&mut span, &req, conn.peer, conn.tls);
        span.set_with(attr::BERTH_ENTRYPOINT, || conn.entrypoint.to_string());
        let grpc = berth_common::grpc::is_grpc(req.headers());
        let entry = self
            .observe
            .access_log
            .as_ref()
            .map(|_| Entry::for_request(&req, conn.peer, conn.tls, &conn.entrypoint));
        let mut outcome = Outcome::default();
        let mut resp = match self.serve(req, conn, start, &mut span, &mut outcome).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(entrypoint = %conn.entrypoint, peer = %conn.peer, error = %e, "request failed");
                // After a malformed request the connection's framing cannot be trusted.
                close |= matches!(
                    e,
                    ProxyError::BadRequest(_) | ProxyError::BodyTooLarge { .. } | ProxyError::RequestTimeout
                );
                if grpc {
                    e.into_grpc_response()
                } else {
                    e.into_response()
                }
            }
        };
        conn.metrics
            .requests
            .record(resp.status().as_u16(), &method, start.elapsed());
        telemetry::response_status(&mut span, resp.status().as_u16());
        let service = outcome.service.clone();
        let entry = entry.map(|mut e| {
            e.router = outcome.router;
            e.service = outcome.service;
            e.service_url = outcome.service_url;
            e.origin_status = outcome.origin_status;
            e.origin_duration = outcome.origin_duration;
            e.retries = outcome.retries;
            e
        });
        let grpc = grpc.then(|| {
            let metrics = self.metrics.clone();
            let service = service.unwrap_or_default();
            GrpcTap {
                head_status: berth_common::grpc::status(resp.headers()),
                record: Box::new(move |code| metrics.grpc(&service, code)),
            }
        });
        berth_common::http::use_own_version(&mut resp, version);
        resp = self.observe.finish(resp, span, entry, start, grpc);
        // While shutting down, ask HTTP/1 clients to reconnect (elsewhere).
        if close && version <= Version::HTTP_11 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    async fn serve(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        start: Instant,
        span: &mut Span,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, ProxyError> {
        if self.ping.as_deref() == Some(&*conn.entrypoint) && req.uri().path() == "/ping" {
            return Ok(if self.lifecycle.is_shutting_down() {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n", None)
            } else {
                text_response(StatusCode::OK, "OK", None)
            });
        }
        // RFC 9112 6.3: a message with both Transfer-Encoding and Content-Length is a
        // smuggling vector; refuse it (and the connection is closed by the caller).
        if req.version() <= Version::HTTP_11
            && req.headers().contains_key(header::TRANSFER_ENCODING)
            && req.headers().contains_key(header::CONTENT_LENGTH)
        {
            return Err(ProxyError::BadRequest("both Transfer-Encoding and Content-Length"));
        }
        // RFC 9112 6.3: a request whose final transfer coding is not chunked has no
        // knowable length; refuse it rather than guess.
        if req.version() <= Version::HTTP_11 && !transfer_encoding_is_chunked(req.headers()) {
            return Err(ProxyError::BadRequest("Transfer-Encoding must end with chunked"));
        }
        if let Some(limit) = self.limits.max_body_bytes
            && req.body().size_hint().lower() > limit
        {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        // Before anything reads a header (rules, middlewares' ipStrategy, the app): what a
        // client that is not a trusted proxy says about forwarding is its own word, and only
        // the inbound sidecar may say who the caller is.
        if !self.trusted.iter().any(|n| n.contains(&conn.peer.ip().to_canonical())) {
            strip_untrusted_forwarding(req.headers_mut());
        }
        req.headers_mut().remove(CLIENT_ID_HEADER);
        // One path for the router, the middlewares and the app: normalized, cleaned of dot
        // segments, refused where the entrypoint says or where it stays ambiguous.
        if let std::borrow::Cow::Owned(cleaned) = berth_common::path::clean(req.uri().path(), &conn.path)? {
            let pq = match req.uri().query() {
                Some(q) => format!("{cleaned}?{q}"),
                None => cleaned,
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(
                http::uri::PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("invalid request target"))?,
            );
            *req.uri_mut() =
                http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        }

        // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host.
        let hosts = req.headers().get_all(header::HOST).iter().count();
        if req.version() <= Version::HTTP_11 && hosts > 1 {
            return Err(ProxyError::BadRequest("more than one Host header"));
        }
        if req.version() == Version::HTTP_11 && hosts == 0 && req.uri().authority().is_none() {
            return Err(ProxyError::BadRequest("no Host header"));
        }
        let routes = self.routes.load();
        // The request target's authority wins over Host (RFC 9112 3.2.2 for the absolute
        // form, RFC 9113 8.3.1 for HTTP/2's :authority), as in Traefik.
        let raw_host = req
            .uri()
            .authority()
            .map(|a| match a.port() {
                Some(p) => format!("{}:{p}", a.host()),
                None => a.host().to_string(),
            })
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let host = canonical_host(raw_host.as_deref().unwrap_or_default());
        let path = berth_common::path::routing_path(req.uri().path());
        let view = RequestView {
            host: &host,
            path: &path,
            method: req.method(),
            headers: req.headers(),
            query: req.uri().query(),
            client_ip: conn.peer.ip(),
        };
        let router_idx = routes
            .snapshot
            .route_index(&conn.entrypoint, conn.tls, &view)
            .ok_or(ProxyError::NoRouter)?;
        let router = &routes.snapshot.routers[router_idx];
        let service = router
            .service_index
            .and_then(|i| routes.services.get(i))
            .cloned()
            .ok_or_else(|| ProxyError::NoEndpoint(router.service.clone()))?;
        let router_metrics = routes.router_metrics.get(router_idx).cloned();
        if span.is_recording() {
            span.set_name(|| format!("{} {}", telemetry::method_name(req.method()), router.name));
            span.set(attr::BERTH_ROUTER, &router.name);
            span.set(attr::BERTH_SERVICE, &service.name);
        }
        if self.observe.access_log.is_some() {
            outcome.router = Some(router.name.clone());
        }
        if self.observe.access_log.is_some() || berth_common::grpc::is_grpc(req.headers()) {
            outcome.service = Some(service.name.clone());
        }
        let specs = router.middleware_specs.clone();
        drop(routes);

        let method = req.method().clone();
        // Middlewares, request phase: they may rewrite the request or answer it.
        let mut ran = specs.len();
        let mut answered = None;
        let mut holds = Vec::new();
        // Only middlewares read these; a router without any pays nothing.
        let origin = if specs.is_empty() {
            None
        } else {
            req.headers().get(header::ORIGIN).cloned()
        };
        let accept_encoding = if specs
            .iter()
            .any(|s| matches!(s.as_ref(), middleware::Spec::Compress(_)))
        {
            req.headers()
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        } else {
            None
        };
        if !specs.is_empty() {
            let (mut parts, body) = req.into_parts();
            let host = raw_host.clone().unwrap_or_default();
            let mut mreq = middleware::Req {
                method: &parts.method,
                tls: conn.tls,
                host: &host,
                path: parts.uri.path().to_string(),
                query: parts.uri.query().map(str::to_string),
                headers: &mut parts.headers,
                peer: conn.peer.ip(),
                holds: Vec::new(),
            };
            for (i, spec) in specs.iter().enumerate() {
                if let middleware::Step::Reply(reply) = spec.request(&mut mreq).await {
                    ran = i;
                    answered = Some(reply);
                    break;
                }
            }
            holds = std::mem::take(&mut mreq.holds);
            // Rebuild the target only when a middleware rewrote it.
            if mreq.path != parts.uri.path() || mreq.query.as_deref() != parts.uri.query() {
                let pq = match &mreq.query {
                    Some(q) => format!("{}?{q}", mreq.path),
                    None => mreq.path.clone(),
                };
                let mut uri = parts.uri.clone().into_parts();
                uri.path_and_query = Some(
                    http::uri::PathAndQuery::try_from(pq.as_str())
                        .map_err(|_| ProxyError::BadRequest("a middleware made an invalid path"))?,
                );
                parts.uri = http::Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
            }
            req = Request::from_parts(parts, body);
        }
        let went_upstream = answered.is_none();
        let mut result = match answered {
            Some(reply) => Ok(reply_response(reply)),
            None => {
                let upgrade = if req.version() == Version::HTTP_11 {
                    upgrade_protocol(req.headers()).map(|p| (p, hyper::upgrade::on(&mut req)))
                } else {
                    None
                };
                let retry = specs.iter().rev().find_map(|s| match s.as_ref() {
                    middleware::Spec::Retry(r) => Some(r.clone()),
                    _ => None,
                });
                let how = How {
                    raw_host,
                    upgrade,
                    retry,
                    read_deadline: self
                        .limits
                        .request_read_timeout
                        .map(|t| tokio::time::Instant::from_std(start) + t),
                };
                self.forward(req, conn, &service, how, span, outcome).await
            }
        };
        // Circuit breakers learn every upstream outcome.
        if went_upstream
            && specs
                .iter()
                .any(|s| matches!(s.as_ref(), middleware::Spec::CircuitBreaker(_)))
        {
            let (status, network_error) = match &result {
                Ok(r) => (r.status().as_u16(), false),
                Err(e) => (
                    e.status().as_u16(),
                    matches!(
                        e,
                        ProxyError::Connect { .. }
                            | ProxyError::Upstream { .. }
                            | ProxyError::Timeout { .. }
                            | ProxyError::NoEndpoint(_)
                    ),
                ),
            };
            for spec in &specs {
                if let middleware::Spec::CircuitBreaker(b) = spec.as_ref() {
                    b.observe(status, network_error, start.elapsed());
                }
            }
        }
        // Response phase, innermost first, for the middlewares that ran.
        if let Ok(resp) = &mut result {
            for spec in specs[..ran].iter().rev() {
                spec.response(origin.as_ref(), conn.tls, resp.headers_mut());
            }
        }
        // compress, innermost first: the first one that applies encodes.
        if let Ok(resp) = result.as_mut() {
            let chosen = specs[..ran].iter().rev().find_map(|s| match s.as_ref() {
                middleware::Spec::Compress(c) => {
                    c.choose(&method, accept_encoding.as_deref(), resp.status(), resp.headers())
                }
                _ => None,
            });
            if let Some(encoding) = chosen {
                let taken = std::mem::replace(
                    resp,
                    Response::new(Empty::new().map_err(|never| match never {}).boxed()),
                );
                *resp = compress::apply(encoding, taken);
            }
        }
        // Counted requests (inFlightReq) end when their response body has been sent.
        if !holds.is_empty() {
            result = result.map(|resp| {
                resp.map(|body| {
                    Held {
                        inner: body,
                        _holds: holds,
                    }
                    .boxed()
                })
            });
        }
        let code = match &result {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        let elapsed = start.elapsed();
        if let Some(m) = router_metrics {
            m.record(code, &method, elapsed);
        }
        service.metrics.record(code, &method, elapsed);
        result
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        svc: &ServiceRuntime,
        how: How,
        span: &Span,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, ProxyError> {
        let How {
            raw_host,
            upgrade,
            retry,
            read_deadline,
        } = how;
        let (parts, body) = req.into_parts();
        let bodyless = body.is_end_stream();
        // gRPC: the call's deadline (`grpc-timeout`), and whether the retry middleware
        // lists the method as safe to send again.
        let grpc = berth_common::grpc::is_grpc(&parts.headers);
        let deadline = grpc
            .then(|| berth_common::grpc::timeout(&parts.headers))
            .flatten()
            .map(|t| tokio::time::Instant::now() + t);
        let grpc_retry = grpc && retry.as_ref().is_some_and(|r| r.grpc_method_listed(parts.uri.path()));

        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        set_forwarded(
            &mut headers,
            &ForwardInfo {
                client_ip: conn.peer.ip(),
                tls: conn.tls,
                host: raw_host.as_deref(),
                local_port: conn.local.port(),
            },
        );
        if let Some((proto, _)) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

        let limit = self.limits.max_body_bytes;
        // The whole request must have arrived by its read deadline (Traefik's readTimeout).
        let body: Body = match read_deadline {
            Some(d) => berth_common::serve::Deadline::new(body, d).boxed(),
            None => body.map_err(|e| -> BoxError { Box::new(e) }).boxed(),
        };
        let body: Body = match limit {
            Some(l) => Limited::new(body, usize::try_from(l).unwrap_or(usize::MAX))
                .map_err(|e| -> BoxError { Box::new(ClientBodyError(e)) })
                .boxed(),
            None => body.map_err(|e| -> BoxError { Box::new(ClientBodyError(e)) }).boxed(),
        };
        // A gRPC call that may go again is kept (up to REPLAY_LIMIT) to be sent again.
        let (replay, mut body) = if grpc_retry {
            match replay::buffer(body, REPLAY_LIMIT).await {
                replay::Buffered::Whole(bytes) => (Some(bytes), None),
                replay::Buffered::Partial(rest) => (None, Some(rest)),
                replay::Buffered::Failed(e) => {
                    if error_chain_has::<berth_common::serve::BodyTimeout>(&*e) {
                        return Err(ProxyError::RequestTimeout);
                    }
                    if let Some(limit) = limit
                        && error_chain_has::<http_body_util::LengthLimitError>(&*e)
                    {
                        return Err(ProxyError::BodyTooLarge { limit });
                    }
                    return Err(ProxyError::BadRequest("invalid request body"));
                }
            }
        } else {
            (None, Some(body))
        };
        let retryable = (bodyless && upgrade.is_none() && is_idempotent(&parts.method)) || replay.is_some();

        let mut tried: Vec<usize> = Vec::new();
        let mut last_err: Option<ProxyError> = None;
        // Without a retry middleware: each endpoint at most once, MAX_ATTEMPTS at most.
        // With one: its attempts, waiting its interval (doubling) before each new attempt.
        let max_attempts = retry
            .as_ref()
            .map(|r| r.attempts as usize)
            .unwrap_or(MAX_ATTEMPTS.min(svc.endpoints.len()));
        let mut attempts = 0usize;
        loop {
            if let (Some(r), true) = (&retry, attempts > 0) {
                let factor = 1u32 << (attempts - 1).min(10);
                tokio::time::sleep(r.initial_interval.saturating_mul(factor)).await;
            }
            let mut pick = svc.balancer.pick(&svc.states, &tried);
            if pick.is_none() && retry.is_some() && !tried.is_empty() {
                // Every endpoint tried: a retry middleware may go round again.
                tried.clear();
                pick = svc.balancer.pick(&svc.states, &tried);
            }
            let Some(i) = pick else {
                if retry.is_some() && retryable && attempts < max_attempts {
                    // Every endpoint is ejected for now: wait and look again.
                    attempts += 1;
                    continue;
                }
                return Err(last_err.unwrap_or_else(|| ProxyError::NoEndpoint(svc.name.clone())));
            };
            if attempts > 0 {
                self.metrics.retry(&svc.name);
                outcome.retries += 1;
            }
            attempts += 1;
            tried.push(i);
            let ep = &svc.endpoints[i];
            let state = &svc.states[i];
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if ep.https {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            uri.authority = Some(ep.authority.clone());
            uri.path_and_query = Some(path_and_query.clone());
            let mut up = Request::new(match &replay {
                Some(bytes) => Full::new(bytes.clone()).map_err(|never| match never {}).boxed(),
                None => body
                    .take()
                    .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed()),
            });
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = http::Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
            *up.version_mut() = if ep.h2c { Version::HTTP_2 } else { Version::HTTP_11 };
            // Only a request that may be retried needs its headers kept for another attempt.
            *up.headers_mut() = if retryable {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            let host_value = if svc.pass_host_header {
                raw_host.as_deref().and_then(|h| HeaderValue::from_str(h).ok())
            } else {
                HeaderValue::from_str(ep.authority.as_str()).ok()
            };
            match host_value {
                Some(v) => {
                    up.headers_mut().insert(header::HOST, v);
                }
                None => {
                    up.headers_mut().remove(header::HOST);
                }
            }

            // A client span per attempt; its context replaces the caller's downstream.
            let mut cspan = self.observe.tracer.child(
                span,
                || telemetry::method_name(&parts.method).to_string(),
                SpanKind::Client,
            );
            telemetry::client_request_attrs(&mut cspan, &parts.method, up.uri(), outcome.retries as usize);
            if cspan.is_recording()
                && let Some(id) = &ep.mesh
            {
                cspan.set(attr::BERTH_PEER_IDENTITY, id);
            }
            self.observe.tracer.inject(&cspan, up.headers_mut());
            if self.observe.access_log.is_some() {
                outcome.service_url = Some(ep.url.to_string());
            }
            let _inflight = InFlight::new(state.clone());
            let t0 = Instant::now();
            let fut = self.dispatch(ep, up)?;
            // A gRPC deadline that comes first ends the call with DEADLINE_EXCEEDED (the
            // client's budget ran out: the endpoint is not to blame).
            let response_deadline = self.limits.response_timeout.map(|t| tokio::time::Instant::now() + t);
            let grpc_first = match (deadline, response_deadline) {
                (Some(d), Some(r)) => d <= r,
                (Some(_), None) => true,
                _ => false,
            };
            let res = match deadline.filter(|_| grpc_first).or(response_deadline) {
                Some(when) => match tokio::time::timeout_at(when, fut).await {
                    Ok(r) => r,
                    Err(_) if grpc_first => {
                        cspan.set(attr::ERROR_TYPE, "deadline_exceeded");
                        cspan.error(|| "the gRPC deadline passed".into());
                        outcome.origin_status = None;
                        return Ok(grpc_status_response(
                            berth_common::grpc::code::DEADLINE_EXCEEDED,
                            "deadline exceeded (grpc-timeout) waiting for the upstream",
                        ));
                    }
                    Err(_) => {
                        state.record_failure();
                        self.metrics.upstream_error(&svc.name, "timeout");
                        cspan.set(attr::ERROR_TYPE, "timeout");
                        if let Some(m) = svc.endpoint_metrics.get(i) {
                            m.record(StatusCode::GATEWAY_TIMEOUT.as_u16(), &parts.method, t0.elapsed());
                        }
                        cspan.error(|| "upstream timed out".into());
                        tracing::warn!(service = %svc.name, endpoint = %ep.url, "upstream timed out; endpoint ejected");
                        // The request may have reached the app: only a retry middleware
                        // (the operator's word that it may go twice) sends it elsewhere.
                        if retry.is_some() && retryable && attempts < max_attempts {
                            last_err = Some(ProxyError::Timeout {
                                endpoint: ep.url.clone(),
                            });
                            continue;
                        }
                        return Err(ProxyError::Timeout {
                            endpoint: ep.url.clone(),
                        });
                    }
                },
                None => fut.await,
            };
            match res {
                Ok(mut resp) => {
                    telemetry::response_status(&mut cspan, resp.status().as_u16());
                    if let Some(m) = svc.endpoint_metrics.get(i) {
                        m.record(resp.status().as_u16(), &parts.method, t0.elapsed());
                    }
                    outcome.origin_status = Some(resp.status().as_u16());
                    outcome.origin_duration = Some(t0.elapsed());
                    if ep.mesh.is_some() && is_app_unreachable(resp.status(), resp.headers()) {
                        // The sidecar answered but its app is gone (a stopping task):
                        // the request never reached an app, so it may go elsewhere.
                        let backoff = state.record_failure();
                        self.metrics.upstream_error(&svc.name, "app_unreachable");
                        cspan.set(attr::ERROR_TYPE, "app_unreachable");
                        tracing::info!(service = %svc.name, endpoint = %ep.url, ejected_for = ?backoff,
                            "the sidecar's app is not listening");
                        if retryable && attempts < max_attempts {
                            continue;
                        }
                        remove_hop_by_hop(resp.headers_mut());
                        return Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()));
                    }
                    // A gRPC call that may go again, answered with a retryable status before
                    // any message (trailers-only), goes to another endpoint.
                    if replay.is_some()
                        && resp.status() == StatusCode::OK
                        && let Some(code) = berth_common::grpc::status(resp.headers())
                        && retry.as_ref().is_some_and(|r| r.grpc_codes.contains(&code))
                    {
                        cspan.set(attr::ERROR_TYPE, "grpc_status");
                        cspan.set(attr::RPC_GRPC_STATUS, i64::from(code));
                        state.record_failure();
                        self.metrics.upstream_error(&svc.name, "grpc_status");
                        tracing::info!(service = %svc.name, endpoint = %ep.url, code, "gRPC call to retry elsewhere");
                        if attempts < max_attempts {
                            continue;
                        }
                        remove_hop_by_hop(resp.headers_mut());
                        return Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()));
                    }
                    state.record_success(t0.elapsed());
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some((_, client_upgrade)) = upgrade {
                            let upstream_upgrade = hyper::upgrade::on(&mut resp);
                            tokio::spawn(splice_upgrade(client_upgrade, upstream_upgrade));
                        }
                        return Ok(resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()));
                    }
                    remove_hop_by_hop(resp.headers_mut());
                    return Ok(resp.map(|b| {
                        let b = b.map_err(|e| -> BoxError { Box::new(e) }).boxed();
                        if cspan.is_recording() {
                            // The attempt's span ends with the upstream's body.
                            Observed::new(b, Finish::span(cspan, t0)).boxed()
                        } else {
                            b
                        }
                    }));
                }
                Err(e) => {
                    cspan.error(|| chain_text(&e));
                    if let Some(m) = svc.endpoint_metrics.get(i) {
                        m.record(StatusCode::BAD_GATEWAY.as_u16(), &parts.method, t0.elapsed());
                    }
                    if let Some(limit) = limit
                        && error_chain_has::<http_body_util::LengthLimitError>(&e)
                    {
                        return Err(ProxyError::BodyTooLarge { limit });
                    }
                    if error_chain_has::<berth_common::serve::BodyTimeout>(&e) {
                        return Err(ProxyError::RequestTimeout);
                    }
                    if error_chain_has::<ClientBodyError>(&e) {
                        return Err(ProxyError::BadRequest("invalid request body"));
                    }
                    if e.is_connect() {
                        cspan.set(attr::ERROR_TYPE, "connect");
                        let backoff = state.record_failure();
                        self.metrics.upstream_error(&svc.name, "connect");
                        tracing::warn!(service = %svc.name, endpoint = %ep.url, error = %chain_text(&e),
                            ejected_for = ?backoff, "upstream connect failed");
                        last_err = Some(ProxyError::Connect {
                            endpoint: ep.url.clone(),
                            reason: chain_text(&e),
                        });
                        if retryable && attempts < max_attempts {
                            continue;
                        }
                        return Err(last_err.unwrap_or_else(|| ProxyError::NoEndpoint(svc.name.clone())));
                    }
                    self.metrics.upstream_error(&svc.name, "upstream");
                    cspan.set(attr::ERROR_TYPE, "upstream");
                    // The connection broke before a response (the server died mid-request):
                    // an idempotent request without a body may go elsewhere (RFC 9110 9.2.2;
                    // nginx's default `proxy_next_upstream error`).
                    let backoff = state.record_failure();
                    tracing::warn!(service = %svc.name, endpoint = %ep.url, error = %chain_text(&e),
                        ejected_for = ?backoff, "upstream request failed");
                    if retryable && attempts < max_attempts {
                        last_err = Some(ProxyError::Upstream {
                            endpoint: ep.url.clone(),
                            reason: chain_text(&e),
                        });
                        continue;
                    }
                    return Err(ProxyError::Upstream {
                        endpoint: ep.url.clone(),
                        reason: chain_text(&e),
                    });
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps requests counted (`inFlightReq`) until it is done.
    struct Held {
        #[pin]
        inner: Body,
        _holds: Vec<middleware::limit::Hold>,
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A middleware's own answer (a redirect, 401, 403, a CORS preflight).
fn reply_response(reply: middleware::Reply) -> Response<Body> {
    let mut resp = errors::text_response(reply.status, reply.body, None);
    if resp.body().size_hint().exact() == Some(0) {
        resp.headers_mut().remove(header::CONTENT_TYPE);
    }
    for (name, value) in reply.headers {
        resp.headers_mut().append(name, value);
    }
    resp
}

/// A request on its way to an upstream.
pub type Pending = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>> + Send>,
>;

impl Proxy {
    /// Send `up` to `ep` through the right pool: mTLS to a sidecar, h2c, or HTTP/1.1
    /// (h2 by ALPN over TLS).
    pub fn dispatch(&self, ep: &router::Endpoint, up: Request<Body>) -> Result<Pending, ProxyError> {
        Ok(match (&ep.mesh, &self.clients.mesh) {
            (Some(_), Some(mesh)) => Box::pin(mesh.client.request(up)),
            (Some(_), None) => {
                return Err(ProxyError::Connect {
                    endpoint: ep.url.clone(),
                    reason: "a task behind its sidecar, but the gateway's mesh is not enabled (--mesh-*)".into(),
                });
            }
            (None, _) if ep.h2c => Box::pin(self.clients.h2c.request(up)),
            (None, _) => Box::pin(self.clients.http1.request(up)),
        })
    }
}

/// True when there is no Transfer-Encoding or its final coding is `chunked`.
fn transfer_encoding_is_chunked(headers: &http::HeaderMap) -> bool {
    let mut last = None;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(v) = v.to_str() else {
            return false;
        };
        if let Some(t) = v.split(',').map(str::trim).rfind(|t| !t.is_empty()) {
            last = Some(t.to_ascii_lowercase());
        }
    }
    headers.get(header::TRANSFER_ENCODING).is_none() || last.as_deref() == Some("chunked")
}

fn error_chain_has<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Join the client's and the upstream's upgraded connections and copy both ways.
async fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((c, u)) => {
            let mut c = hyper_util::rt::TokioIo::new(c);
            let mut u = hyper_util::rt::TokioIo::new(u);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}
