//! The north-south proxy: route, balance, forward.
//!
//! A request's path reads in order, one step per module: [`Proxy::handle`] (its span,
//! access-log line and counts) -> [`front`] (framing, sizes, forwarding headers, the path,
//! the host) -> the snapshot's router -> [`pipeline`] (the router's middlewares) ->
//! [`forward`] (the trip to one of the service's endpoints, through [`upstream`] pools) ->
//! back through [`pipeline`]. Two middlewares make trips of their own: `forwardAuth` to
//! its auth server ([`auth`]) and `errors` to its page's service ([`pages`], through
//! [`forward`]). Failures become responses in [`errors`] only.

mod auth;
pub(crate) mod compress;
pub(crate) mod errors;
mod forward;
mod front;
mod grpc_web;
pub(crate) mod health;
mod mirror;
mod pages;
mod pipeline;
pub(crate) mod router;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use berth_common::config::FailoverErrors;
use berth_common::http::upgrade_protocol;
use berth_common::routing::Snapshot;
use berth_common::rules::RequestView;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::lifecycle::Lifecycle;
use crate::metrics::{EntrypointMetrics, Metrics};
use berth_common::accesslog::Entry;
use berth_common::balance::Registry;
use berth_common::telemetry::body::GrpcTap;
use berth_common::telemetry::{self, Observe, Span, attr};
use errors::{ProxyError, text_response};
use front::Ctx;
use pipeline::Pipeline;
use router::Routes;
use upstream::Clients;

pub(crate) use berth_common::body::{Body, BoxError};

/// A request's body past the middlewares: the client's, or the bytes `forwardAuth`
/// read whole to show its auth server (`forwardBody`).
pub(crate) type ClientBody = http_body_util::Either<Incoming, http_body_util::Full<bytes::Bytes>>;

/// What a client may send and how long each side may take: the entrypoint serves its
/// connections with these, the front checks requests against them, the upstream pools
/// dial and wait with them.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Duration,
    /// The whole request must have arrived within this; `None`: no limit.
    pub request_read_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Option<Duration>,
    pub upstream_idle_timeout: Duration,
}

/// What the proxy knows about the client connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub entrypoint: Arc<str>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub tls: bool,
    pub metrics: Arc<EntrypointMetrics>,
    /// The entrypoint's path settings (`sanitizePath`, `encodedCharacters`).
    pub path: berth_common::path::PathPolicy,
    /// The entrypoint's own trusted forwarders (Traefik's `forwardedHeaders`), else the
    /// gateway's.
    pub trusted: Option<Arc<[IpNet]>>,
    /// TLS connections: the `tls.options` the handshake was made with.
    pub tls_options: Option<Arc<berth_common::server_tls::TlsOptions>>,
    /// TLS connections: the certificates the client showed, its own first.
    pub client_certs: Option<Arc<[rustls_pki_types::CertificateDer<'static>]>>,
}

/// Where a request to a weighted, failover or mirroring service goes.
struct Leaf {
    /// The load-balancer service that answers.
    svc: Arc<router::ServiceRuntime>,
    /// `Set-Cookie`s naming the children chosen anew (sticky weighted services).
    cookies: Vec<HeaderValue>,
    /// Load-balancer services that get a copy, with whether the body goes too and how
    /// large it may be.
    mirrors: Vec<(Arc<router::ServiceRuntime>, bool, u64)>,
    /// A failover with `errors` chose its main service: the fallback (by name: the
    /// routes may be replaced before it is needed) that answers instead when the main's
    /// answer is listed.
    on_status: Option<(String, Arc<FailoverErrors>)>,
}

/// A request kept whole, so that it can be sent again (`buffering`'s `retryExpression`,
/// a failover's `errors`).
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Replay {
    fn of(req: &Request<ClientBody>, body: bytes::Bytes) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        }
    }

    fn request(&self) -> Request<ClientBody> {
        let mut req = Request::new(http_body_util::Either::Right(http_body_util::Full::new(
            self.body.clone(),
        )));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// What a trip to the router's service needs besides the request ([`Proxy::trip`]).
struct Plan<'a> {
    conn: &'a ConnInfo,
    target: &'a router::ServiceRuntime,
    on_status: Option<&'a (String, Arc<FailoverErrors>)>,
    /// The request kept whole, for the fallback of a failover with `errors`.
    kept: Option<&'a Replay>,
    retry: Option<berth_common::middleware::limit::Retry>,
    span: &'a Span,
}

/// The load-balancer service a request to weighted (or failover, or mirroring) `svc` goes
/// to: at each level the child its sticky cookie names (while it is up, when the service
/// checks health), else the next by weight (a failover: its main service while up, else
/// its fallback; a mirroring: its main service, its mirrors chosen by their shares).
fn weighted_leaf(
    routes: &Routes,
    mut svc: Arc<router::ServiceRuntime>,
    headers: &http::HeaderMap,
    depth: usize,
) -> Result<Leaf, ProxyError> {
    let mut cookies = Vec::new();
    let mut mirrors = Vec::new();
    let mut on_status = None;
    for _ in 0..=depth {
        let Some(w) = &svc.weighted else {
            return Ok(Leaf {
                svc,
                cookies,
                mirrors,
                on_status,
            });
        };
        // A child of weight 0 gets nothing, not even its sticky clients (draining a
        // canary); with health checks, a child with no healthy server neither.
        let eligible = |i: usize| {
            w.weights.get(i).is_some_and(|&wt| wt > 0 || w.failover)
                && (!w.health_check || w.children.get(i).is_some_and(|&c| routes.is_up(c, depth)))
        };
        if let Some(m) = &w.mirroring {
            for i in m.chosen() {
                let target = w.children.get(i + 1).and_then(|&c| routes.services.get(c)).cloned();
                // A mirror's own weighted levels, each once; its failures are its own.
                if let Some(Ok(leaf)) =
                    target.map(|t| weighted_leaf(routes, t, &http::HeaderMap::new(), depth.saturating_sub(1)))
                {
                    mirrors.push((leaf.svc, m.mirror_body, m.max_body));
                }
            }
        }
        let sticky = svc.sticky.as_ref();
        let preferred = sticky.and_then(|s| s.preferred(headers)).filter(|&i| eligible(i));
        // A failover: the main service while it is up, else the fallback while it is.
        let next = || match w.failover {
            true => (0..w.children.len()).find(|&i| eligible(i)),
            false => w.balancer.pick_wrr(eligible),
        };
        let Some(pick) = preferred.or_else(next) else {
            return Err(ProxyError::NoEndpoint(svc.name.clone()));
        };
        if preferred != Some(pick)
            && let Some(c) = sticky.and_then(|s| s.set_cookie(pick))
        {
            cookies.push(c);
        }
        // The innermost failover with `errors` that chose its main service decides.
        if w.failover
            && pick == 0
            && let (Some(errors), Some(fallback)) = (
                &w.failover_errors,
                w.children.get(1).and_then(|&c| routes.services.get(c)),
            )
        {
            on_status = Some((fallback.name.clone(), errors.clone()));
        }
        let Some(child) = w.children.get(pick).and_then(|&c| routes.services.get(c)).cloned() else {
            return Err(ProxyError::NoEndpoint(svc.name.clone()));
        };
        svc = child;
    }
    Err(ProxyError::NoEndpoint(svc.name.clone()))
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

/// Answers a request to one of the gateway's own services (`api@internal`, ...): set
/// once the admin state exists, which holds the proxy.
pub(crate) type InternalAnswer = Arc<dyn Fn(&str, Request<ClientBody>) -> Response<Body> + Send + Sync>;

pub(crate) struct Proxy {
    routes: ArcSwap<Routes>,
    internal: std::sync::OnceLock<InternalAnswer>,
    observe: Observe,
    registry: Registry,
    clients: Clients,
    metrics: Arc<Metrics>,
    limits: Limits,
    trusted: Vec<IpNet>,
    lifecycle: Arc<Lifecycle>,
    ping: Option<String>,
    /// The proxy itself, for the copies a mirroring service sends on their own tasks.
    me: std::sync::OnceLock<std::sync::Weak<Proxy>>,
    /// Mirror copies in flight; when all are taken, a copy is not sent.
    mirror_slots: Arc<tokio::sync::Semaphore>,
}

/// The most mirror copies in flight at once, over all mirroring services.
const MAX_MIRRORS_IN_FLIGHT: usize = 1024;

impl Proxy {
    pub(crate) fn new(
        clients: Clients,
        metrics: Arc<Metrics>,
        limits: Limits,
        trusted: Vec<IpNet>,
        lifecycle: Arc<Lifecycle>,
        ping: Option<String>,
        observe: Observe,
    ) -> Proxy {
        let registry = Registry::default();
        let routes = Routes::build(Arc::new(Snapshot::default()), &registry, &metrics, &clients.transports);
        Proxy {
            routes: ArcSwap::from_pointee(routes),
            internal: std::sync::OnceLock::new(),
            registry,
            clients,
            metrics,
            limits,
            trusted,
            lifecycle,
            ping,
            observe,
            me: std::sync::OnceLock::new(),
            mirror_slots: Arc::new(tokio::sync::Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
        }
    }

    /// Tell the proxy where it lives (once, after it is put in its `Arc`).
    pub(crate) fn set_self(self: &Arc<Proxy>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// The mesh client (dialling sidecars), when the gateway runs the mesh.
    pub(crate) fn mesh_client(&self) -> Option<&upstream::MeshClient> {
        self.clients.mesh.as_ref()
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Who answers requests to the gateway's own services (once, at start).
    pub(crate) fn set_internal(&self, answer: InternalAnswer) {
        let _ = self.internal.set(answer);
    }

    pub(crate) fn observe(&self) -> &Observe {
        &self.observe
    }

    /// Swap in a new snapshot; requests in flight keep the one they started with.
    pub(crate) fn swap(&self, snapshot: Arc<Snapshot>) {
        let routes = Routes::build(snapshot, &self.registry, &self.metrics, &self.clients.transports);
        let live: Vec<_> = routes
            .snapshot
            .transports
            .iter()
            .filter_map(|t| t.spec.as_ref())
            .collect();
        self.clients.transports.retain(&live);
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

    pub(crate) fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// Handle one request; never fails (errors become responses).
    pub(crate) async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let mut ctx = Ctx::new(&req, Instant::now());
        let mut close = self.lifecycle.is_shutting_down();
        let mut span = self
            .observe
            .tracer
            .server(|| telemetry::method_name(&ctx.method).to_string(), req.headers());
        telemetry::server_request_attrs(&mut span, &req, conn.peer, conn.tls);
        span.set_with(attr::BERTH_ENTRYPOINT, || conn.entrypoint.to_string());
        let entry = self
            .observe
            .access_log
            .as_ref()
            .map(|_| Entry::for_request(&req, conn.peer, conn.tls, &conn.entrypoint));
        let mut resp = match self.serve(req, conn, &mut ctx, &mut span).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(entrypoint = %conn.entrypoint, peer = %conn.peer, error = %e, "request failed");
                // After a malformed request the connection's framing cannot be trusted.
                close |= matches!(
                    e,
                    ProxyError::BadRequest(_) | ProxyError::BodyTooLarge { .. } | ProxyError::RequestTimeout
                );
                if ctx.grpc {
                    e.into_grpc_response()
                } else {
                    e.into_response()
                }
            }
        };
        conn.metrics
            .requests
            .record(resp.status().as_u16(), &ctx.method, ctx.start.elapsed());
        telemetry::response_status(&mut span, resp.status().as_u16());
        let outcome = std::mem::take(&mut ctx.outcome);
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
        let grpc = ctx.grpc.then(|| {
            let metrics = self.metrics.clone();
            let service = service.unwrap_or_default();
            GrpcTap {
                head_status: berth_common::grpc::status(resp.headers()),
                record: Box::new(move |code| metrics.grpc(&service, code)),
            }
        });
        berth_common::http::use_own_version(&mut resp, ctx.version);
        resp = self.observe.finish(resp, span, entry, ctx.start, grpc);
        // While shutting down, ask HTTP/1 clients to reconnect (elsewhere).
        if close && ctx.version <= Version::HTTP_11 && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The request's path, one step after the other: the front, the router, the
    /// middlewares around the forward step, the router's and service's counts.
    async fn serve(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        ctx: &mut Ctx,
        span: &mut Span,
    ) -> Result<Response<Body>, ProxyError> {
        if self.ping.as_deref() == Some(&*conn.entrypoint) && req.uri().path() == "/ping" {
            return Ok(if self.lifecycle.is_shutting_down() {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n", None)
            } else {
                text_response(StatusCode::OK, "OK", None)
            });
        }
        front::check(
            &mut req,
            conn,
            &self.limits,
            conn.trusted.as_deref().unwrap_or(&self.trusted),
            ctx,
        )?;

        let routes = self.routes.load();
        let path = berth_common::path::routing_path(req.uri().path());
        let view = RequestView {
            host: &ctx.host,
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
        // TLS options are chosen by the server name in the handshake; a request for a
        // router that wants others (its Host is not the name the client asked for) is
        // not served on this connection, as in Traefik.
        // Options changed by a reload are other options: the client reconnects and
        // makes its handshake with the new ones.
        if let Some(made_with) = &conn.tls_options
            && !router
                .tls_options_spec
                .as_ref()
                .is_some_and(|o| Arc::ptr_eq(o, made_with))
        {
            return Err(ProxyError::Misdirected);
        }
        // A router to one of the gateway's own services (the builder let only those
        // through without a service of their own).
        let internal = router.service_index.is_none().then(|| router.service.clone());
        let service = match &internal {
            Some(_) => None,
            None => Some(
                router
                    .service_index
                    .and_then(|i| routes.services.get(i))
                    .cloned()
                    .ok_or_else(|| ProxyError::NoEndpoint(router.service.clone()))?,
            ),
        };
        let service_name: &str = match (&service, &internal) {
            (Some(s), _) => &s.name,
            (None, Some(n)) => n,
            (None, None) => "",
        };
        let router_metrics = routes.router_metrics.get(router_idx).cloned();
        if span.is_recording() {
            span.set_name(|| format!("{} {}", telemetry::method_name(req.method()), router.name));
            span.set(attr::BERTH_ROUTER, &router.name);
            span.set(attr::BERTH_SERVICE, service_name.to_string());
        }
        if self.observe.access_log.is_some() {
            ctx.outcome.router = Some(router.name.clone());
        }
        if self.observe.access_log.is_some() || ctx.grpc {
            ctx.outcome.service = Some(service_name.to_string());
        }
        // A weighted service: the child (down to a load balancer) this request goes to,
        // and the sticky cookies that name the choices made.
        let leaf = match &service {
            // Kept as a result: a service with nothing to pick fails where a load
            // balancer without servers does, after the middlewares.
            Some(s) if s.weighted.is_some() => Some(weighted_leaf(
                &routes,
                s.clone(),
                req.headers(),
                berth_common::routing::MAX_WEIGHTED_DEPTH,
            )),
            _ => None,
        };
        let mut pipeline = Pipeline::new(router.middleware_specs.clone());
        drop(routes);

        let call = auth::AuthCall {
            clients: &self.clients.auth,
            tracer: &self.observe.tracer,
            span,
            max_body: self.limits.max_body_bytes,
            read_deadline: self
                .limits
                .request_read_timeout
                .map(|t| tokio::time::Instant::from_std(ctx.start) + t),
        };
        // Cold steps are boxed (the middlewares' phases, a mirror, a body kept for a
        // failover): a request's future is moved whole at each await and into the task an
        // HTTP/2 stream is spawned in, so the bare path's must stay small.
        let step = if pipeline.is_empty() {
            Ok(req.map(http_body_util::Either::Left))
        } else {
            Box::pin(pipeline.request(req, conn, ctx, &call)).await?
        };
        let mut result = match step {
            Err(answer) => Ok(answer),
            Ok(req) if internal.is_some() => {
                let name = internal.as_deref().unwrap_or_default();
                Ok(match self.internal.get() {
                    Some(answer) => answer(name, req),
                    None => text_response(StatusCode::SERVICE_UNAVAILABLE, "starting\n", None),
                })
            }
            Ok(mut req) => {
                let Some(service) = &service else {
                    return Err(ProxyError::NoEndpoint(String::new()));
                };
                let upgrade = if req.version() == Version::HTTP_11 {
                    upgrade_protocol(req.headers()).map(|p| (p, hyper::upgrade::on(&mut req)))
                } else {
                    None
                };
                let how = forward::How { upgrade, retry: None };
                let leaf = match leaf {
                    Some(Ok(l)) => Some(l),
                    Some(Err(e)) => return Err(e),
                    None => None,
                };
                let (target, cookies) = match &leaf {
                    Some(l) => (&l.svc, l.cookies.as_slice()),
                    None => (service, &[][..]),
                };
                let req = match &leaf {
                    Some(l) if !l.mirrors.is_empty() && how.upgrade.is_none() => {
                        Box::pin(self.mirror(req, conn, ctx, &l.mirrors)).await?
                    }
                    _ => req,
                };
                // A request that may go again (`buffering`'s `retryExpression`, a
                // failover's `errors`) is kept whole.
                let retry_expr = pipeline.replay().filter(|_| how.upgrade.is_none());
                let on_status = leaf
                    .as_ref()
                    .and_then(|l| l.on_status.clone())
                    .filter(|_| how.upgrade.is_none());
                let (req, kept) = match (&retry_expr, &on_status) {
                    (Some((_, body)), _) => {
                        let kept = Replay::of(&req, body.clone());
                        (req, Some(kept))
                    }
                    (None, Some((_, errors))) => {
                        let (parts, mut body) = req.into_parts();
                        let limit = usize::try_from(errors.max_request_body_bytes).unwrap_or(usize::MAX);
                        match Box::pin(pipeline::buffer_request(
                            &call,
                            &mut body,
                            limit,
                            StatusCode::PAYLOAD_TOO_LARGE,
                        ))
                        .await
                        {
                            Ok(bytes) => {
                                let req = Request::from_parts(parts, body);
                                let kept = Replay::of(&req, bytes);
                                (req, Some(kept))
                            }
                            Err(answer) => return Ok(answer),
                        }
                    }
                    (None, None) => (req, None),
                };
                let plan = Plan {
                    conn,
                    target,
                    on_status: on_status.as_ref(),
                    kept: kept.as_ref(),
                    retry: pipeline.retry(),
                    span,
                };
                let mut result = self.trip(&plan, req, how.upgrade, ctx).await;
                if let (Some((expr, _)), Some(kept)) = (&retry_expr, &kept) {
                    let mut attempt = 1;
                    while attempt <= berth_common::middleware::buffering::MAX_RETRIES {
                        if !expr.holds(kept.method.as_str(), attempt, errors::status_of(&result)) {
                            break;
                        }
                        attempt += 1;
                        ctx.outcome.retries += 1;
                        result = self.trip(&plan, kept.request(), None, ctx).await;
                    }
                }
                if let Ok(resp) = &mut result {
                    for c in cookies {
                        resp.headers_mut().append(header::SET_COOKIE, c.clone());
                    }
                }
                pipeline.outcome(&result, ctx.start.elapsed());
                result
            }
        };
        let pages = pages::Pages {
            proxy: self,
            conn,
            span,
        };
        if !pipeline.is_empty() {
            Box::pin(pipeline.response(ctx, &pages, &mut result)).await;
        }
        let code = errors::status_of(&result);
        let elapsed = ctx.start.elapsed();
        if let Some(m) = router_metrics {
            m.record(code, &ctx.method, elapsed);
        }
        if let Some(service) = &service {
            service.metrics.record(code, &ctx.method, elapsed);
        }
        result
    }
}
