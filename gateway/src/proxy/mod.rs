//! The north-south proxy: route, balance, forward.
//!
//! A request's path reads in order: [`Proxy::handle`] (limits, `/ping`, smuggling
//! checks) -> the snapshot's router -> the service's balancer -> [`upstream`] pools.
//! Failures become responses in [`errors`] only.

pub mod compress;
pub mod errors;
mod forward;
pub mod health;
pub mod router;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use berth_common::http::{CLIENT_ID_HEADER, strip_untrusted_forwarding, upgrade_protocol};
use berth_common::routing::Snapshot;
use berth_common::rules::RequestView;
use berth_common::rules::matcher::canonical_host;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::admin::metrics::{EntrypointMetrics, Metrics};
use crate::config::Limits;
use crate::lifecycle::Lifecycle;
use berth_common::accesslog::Entry;
use berth_common::balance::Registry;
use berth_common::middleware;
use berth_common::telemetry::body::GrpcTap;
use berth_common::telemetry::{self, Observe, Span, attr};
use errors::{ProxyError, text_response};
use router::Routes;
use upstream::Clients;

pub use berth_common::body::{Body, BoxError, ClientBodyError};
pub use forward::Pending;

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
                let how = forward::How {
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
