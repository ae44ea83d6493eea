//! The gateway's side of the trip to an upstream: what it adds to the request
//! (`X-Forwarded-*`, `Host`, the upgrade, the read deadline and the size limit, a gRPC
//! body kept to be sent again), the policy a router's retry middleware makes, and what it
//! records per attempt (endpoint metrics, client spans, logs). The attempts themselves
//! are `berth_common::forward`'s, shared with the sidecar.

use std::time::Duration;

use berth_common::body::{Body, boxed, from_client};
use berth_common::forward::{
    self, Answer, Attempt, Balanced, Buffered, Failed, Failure, Preferring, RequestBody, RetryOn, Trip,
};
use berth_common::http::{ForwardInfo, is_idempotent, remove_hop_by_hop, set_forwarded};
use berth_common::middleware;
use berth_common::pool::{Pending, Pooled, SendFailed, legacy};
use berth_common::telemetry::body::{Finish, Observed};
use berth_common::telemetry::{self, Span, SpanKind, attr};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};

use super::errors::ProxyError;
use super::front::Ctx;
use super::router::{Endpoint, ServiceRuntime};
use super::{ClientBody, ConnInfo, Outcome, Plan, Proxy};

/// Without a retry middleware, an idempotent bodyless request that never reached an app
/// (the connection was refused, or the task's sidecar says its app is gone) goes to at
/// most this many endpoints, each once. In a rolling deploy several stopping tasks can be
/// picked in a row before their sidecars deregister; three was seen to fall short.
const MAX_ATTEMPTS: usize = 5;

/// How a routed request is to be forwarded.
pub(super) struct How {
    /// A requested protocol upgrade (WebSocket) and the client side of it.
    pub upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The router's retry middleware, if any.
    pub retry: Option<middleware::limit::Retry>,
}

impl Proxy {
    /// One trip to the router's service: to the service the request was balanced to,
    /// and, when that is a failover's main service whose answer is one its `errors`
    /// list, to the fallback with the same request (the main's answer is dropped), as
    /// Traefik 3.6 does; the fallback down: 503.
    pub(super) async fn trip(
        &self,
        plan: &Plan<'_>,
        req: Request<ClientBody>,
        upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        let how = How {
            upgrade,
            retry: plan.retry.clone(),
        };
        let result = self.forward(req, plan.conn, ctx, plan.target, how, plan.span).await;
        let (Some((fallback, errors)), Some(kept)) = (plan.on_status, plan.kept) else {
            return result;
        };
        if !berth_common::http::status_in(&errors.status, super::errors::status_of(&result)) {
            return result;
        }
        drop(result);
        let routes = self.routes();
        let depth = berth_common::routing::MAX_WEIGHTED_DEPTH;
        let up = routes
            .services
            .iter()
            .position(|s| s.name == *fallback)
            .filter(|&i| routes.is_up(i, depth));
        let Some(svc) = up.and_then(|i| routes.services.get(i)).cloned() else {
            return Err(ProxyError::NoEndpoint(plan.target.name.clone()));
        };
        let leaf = super::weighted_leaf(&routes, svc, &kept.headers, depth)?;
        drop(routes);
        let how = How {
            upgrade: None,
            retry: plan.retry.clone(),
        };
        // Boxed: the failover is the cold path, and this future is moved on every request.
        Box::pin(self.forward(kept.request(), plan.conn, ctx, &leaf.svc, how, plan.span)).await
    }

    /// Forward a routed request to one of `svc`'s endpoints, going again as the policy
    /// allows; the upstream's answer or the reason there is none.
    pub(super) async fn forward(
        &self,
        req: Request<ClientBody>,
        conn: &ConnInfo,
        ctx: &mut Ctx,
        svc: &ServiceRuntime,
        how: How,
        span: &Span,
    ) -> Result<Response<Body>, ProxyError> {
        let How { upgrade, retry } = how;
        let raw_host = ctx.raw_host.as_deref();
        let outcome = &mut ctx.outcome;
        // When the request body must have arrived whole (Traefik's readTimeout).
        let read_deadline = self
            .limits
            .request_read_timeout
            .map(|t| tokio::time::Instant::from_std(ctx.start) + t);
        let (parts, body) = req.into_parts();
        let bodyless = body.is_end_stream();
        // gRPC: the call's deadline (`grpc-timeout`), and whether the retry middleware
        // lists the method as safe to send again.
        let grpc = ctx.grpc;
        let grpc_deadline = grpc
            .then(|| berth_common::grpc::timeout(&parts.headers))
            .flatten()
            .map(|t| tokio::time::Instant::now() + t);
        let grpc_retry = grpc && retry.as_ref().is_some_and(|r| r.grpc_method_listed(parts.uri.path()));
        // The retry middleware's `status`: the body is kept (up to its maxRequestBodyBytes)
        // so that the request can go again.
        let status_retry =
            !grpc && upgrade.is_none() && retry.as_ref().is_some_and(|r| r.status_retries_method(&parts.method));

        let mut headers = parts.headers;
        // A sticky session's server, tried first while it is healthy.
        let sticky_to = svc.sticky.as_ref().and_then(|s| s.preferred(&headers));
        remove_hop_by_hop(&mut headers);
        set_forwarded(
            &mut headers,
            &ForwardInfo {
                client_ip: conn.peer.ip(),
                tls: conn.tls,
                host: raw_host,
                local_port: conn.local.port(),
            },
        );
        if let Some((proto, _)) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }

        let limit = self.limits.max_body_bytes;
        // The whole request must have arrived by its read deadline (Traefik's readTimeout).
        let body: Body = match read_deadline {
            Some(d) => berth_common::serve::Deadline::new(body, d).boxed(),
            None => boxed(body),
        };
        let body = match limit {
            Some(l) => from_client(Limited::new(body, usize::try_from(l).unwrap_or(usize::MAX))),
            None => from_client(body),
        };
        // A gRPC call that may go again is kept (up to forward::REPLAY_LIMIT) to be sent
        // again; a request the retry middleware retries on its status, up to its bound
        // (larger: sent once, not retried on its status, as in Traefik).
        let keep = match (grpc_retry, status_retry && !bodyless) {
            (true, _) => Some(forward::REPLAY_LIMIT),
            (false, true) => retry.as_ref().map(|r| r.max_body),
            (false, false) => None,
        };
        let body = if let Some(keep) = keep {
            match Box::pin(forward::buffer(body, keep)).await {
                Buffered::Whole(bytes) => RequestBody::Replay(bytes),
                Buffered::Partial(rest) => RequestBody::Once(rest),
                Buffered::Failed(e) => {
                    let fault = forward::client_fault(&*e);
                    return Err(ProxyError::from_failure(Failure::Client(fault), svc, limit));
                }
            }
        } else {
            RequestBody::Once(body)
        };
        let replay = matches!(body, RequestBody::Replay(_));
        // Without a retry middleware: each endpoint at most once, MAX_ATTEMPTS at most, and
        // only what never reached an app goes again. With one: its attempts, waiting its
        // interval (doubling) before each new one, timeouts and its gRPC codes included.
        let policy = forward::Policy {
            max_attempts: retry
                .as_ref()
                .map(|r| r.attempts as usize)
                .unwrap_or(MAX_ATTEMPTS.min(svc.endpoints.len())),
            resendable: (bodyless && upgrade.is_none() && is_idempotent(&parts.method))
                || replay
                || (bodyless && status_retry),
            retry: RetryOn {
                connect: retry.as_ref().is_none_or(|r| r.network_errors),
                broken: retry.as_ref().is_none_or(|r| r.network_errors),
                timeout: retry.as_ref().is_some_and(|r| r.network_errors),
                app_unreachable: true,
                grpc_codes: retry.as_ref().map(|r| r.grpc_codes.clone()).unwrap_or_default(),
                statuses: match status_retry {
                    true => retry.as_ref().map(|r| r.statuses.clone()).unwrap_or_default(),
                    false => Vec::new(),
                },
            },
            retry_deadline: retry
                .as_ref()
                .and_then(|r| r.timeout)
                .map(|t| std::time::Instant::now() + t),
            backoff: retry.as_ref().map(|r| r.initial_interval),
            revisit: retry.is_some(),
            // A transport's responseHeaderTimeout replaces the gateway's (unset: none).
            response_timeout: match &svc.transport {
                Some(t) => t.response_header_timeout,
                None => self.limits.response_timeout,
            },
            grpc_deadline,
        };
        let mut trip = GatewayTrip {
            proxy: self,
            svc,
            method: parts.method,
            path_and_query: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            headers,
            raw_host: raw_host.and_then(|h| HeaderValue::from_str(h).ok()),
            span,
            outcome,
            current: 0,
        };
        let balanced = Balanced {
            balancer: &svc.balancer,
            states: &svc.states,
        };
        let endpoints = Preferring {
            inner: &balanced,
            first: sticky_to,
        };
        let Answer {
            mut response,
            endpoint,
            attempt: cspan,
            sent,
            failure,
        } = match forward::forward(&mut trip, &endpoints, &policy, body).await {
            Ok(answer) => answer,
            Err(Failure::Deadline) => {
                // The client's budget ran out: a gRPC status, not an HTTP error.
                return Ok(berth_common::synthetic::Synthetic::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "deadline exceeded (grpc-timeout) waiting for the upstream",
                )
                .grpc_code(berth_common::grpc::code::DEADLINE_EXCEEDED)
                .into_grpc());
            }
            Err(f) => return Err(ProxyError::from_failure(f, svc, limit)),
        };
        if failure.is_some() {
            // Out of attempts: the sidecar's or the upstream's own answer goes back.
            remove_hop_by_hop(response.headers_mut());
            return Ok(response.map(boxed));
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some((_, client_upgrade)) = upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(splice_upgrade(client_upgrade, upstream_upgrade));
            }
            return Ok(response.map(boxed));
        }
        remove_hop_by_hop(response.headers_mut());
        // A client new to the service, or whose server is gone, sticks to this one now.
        if let Some(sticky) = &svc.sticky
            && sticky_to != Some(endpoint)
            && let Some(cookie) = sticky.set_cookie(endpoint)
        {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Ok(response.map(|b| {
            let b = boxed(b);
            if cspan.is_recording() {
                // The attempt's span ends with the upstream's body.
                Observed::new(b, Finish::span(cspan, sent)).boxed()
            } else {
                b
            }
        }))
    }

    /// Send `up` to `ep` through the right pool: mTLS to a sidecar, or the service's
    /// transport's (the gateway's own without one), h2c or HTTP/1.1 (h2 by ALPN over TLS).
    pub(crate) fn dispatch(&self, ep: &Endpoint, up: Request<Body>) -> Result<Pending, ProxyError> {
        Ok(match (&ep.mesh, &self.clients.mesh) {
            // HTTP/1.1 to the sidecar, except gRPC (its trailers): HTTP/2 as before.
            (Some(_), Some(mesh)) if up.version() == Version::HTTP_11 && !berth_common::grpc::is_grpc(up.headers()) => {
                mesh.http1.pending(up)
            }
            (Some(_), Some(mesh)) => legacy(&mesh.client, up),
            (Some(_), None) => {
                return Err(ProxyError::Connect {
                    endpoint: ep.url.clone(),
                    reason: "a task behind its sidecar, but the gateway's mesh is not enabled (--mesh-*)".into(),
                });
            }
            (None, _) => match &ep.pool {
                None if ep.h2c => legacy(&self.clients.h2c, up),
                // Plain HTTP/1.1 (a gRPC health check asks for HTTP/2: the legacy pool
                // refuses it, as before).
                None if !ep.https && up.version() == Version::HTTP_11 => self.clients.plain.pending(up),
                None => legacy(&self.clients.http1, up),
                Some(Ok(p)) if ep.h2c => legacy(&p.h2c, up),
                Some(Ok(p)) => legacy(&p.http1, up),
                Some(Err(reason)) => {
                    return Err(ProxyError::Connect {
                        endpoint: ep.url.clone(),
                        reason: reason.to_string(),
                    });
                }
            },
        })
    }
}

/// The gateway's attempts to one service's endpoints.
struct GatewayTrip<'a> {
    proxy: &'a Proxy,
    svc: &'a ServiceRuntime,
    method: Method,
    path_and_query: http::uri::PathAndQuery,
    headers: HeaderMap,
    /// The client's `Host`, for a service that passes it on.
    raw_host: Option<HeaderValue>,
    span: &'a Span,
    outcome: &'a mut Outcome,
    /// The endpoint of the attempt under way.
    current: usize,
}

impl GatewayTrip<'_> {
    fn record(&self, endpoint: usize, status: StatusCode, elapsed: Duration) {
        if let Some(m) = self.svc.endpoint_metrics.get(endpoint) {
            m.record(status.as_u16(), &self.method, elapsed);
        }
    }
}

impl Trip for GatewayTrip<'_> {
    type Body = Pooled;
    type Error = SendFailed;
    type Attempt = Span;
    type Future = Pending;

    fn send(&mut self, a: Attempt) -> Result<(Span, Pending), Failure> {
        self.current = a.endpoint;
        let ep = &self.svc.endpoints[a.endpoint];
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(if ep.https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        uri.authority = Some(ep.authority.clone());
        uri.path_and_query = Some(self.path_and_query.clone());
        let unsendable = |reason: String| Failure::Unsendable {
            endpoint: a.endpoint,
            reason,
        };
        let mut up = Request::new(a.body);
        *up.method_mut() = self.method.clone();
        *up.uri_mut() = http::Uri::from_parts(uri).map_err(|e| unsendable(e.to_string()))?;
        *up.version_mut() = if ep.h2c { Version::HTTP_2 } else { Version::HTTP_11 };
        // Only a request that may go again needs its headers kept for another attempt.
        *up.headers_mut() = if a.again {
            self.headers.clone()
        } else {
            std::mem::take(&mut self.headers)
        };
        let host = if self.svc.pass_host_header {
            self.raw_host.clone()
        } else {
            HeaderValue::from_str(ep.authority.as_str()).ok()
        };
        match host {
            Some(v) => up.headers_mut().insert(header::HOST, v),
            None => up.headers_mut().remove(header::HOST),
        };

        // A client span per attempt; its context replaces the caller's downstream.
        let tracer = &self.proxy.observe.tracer;
        let mut cspan = tracer.child(
            self.span,
            || telemetry::method_name(&self.method).to_string(),
            SpanKind::Client,
        );
        telemetry::client_request_attrs(&mut cspan, &self.method, up.uri(), self.outcome.retries as usize);
        if cspan.is_recording()
            && let Some(id) = &ep.mesh
        {
            cspan.set(attr::BERTH_PEER_IDENTITY, id);
        }
        tracer.inject(&cspan, up.headers_mut());
        if self.proxy.observe.access_log.is_some() {
            self.outcome.service_url = Some(ep.url.to_string());
        }
        let pending = self.proxy.dispatch(ep, up).map_err(|e| match e {
            ProxyError::Connect { reason, .. } => unsendable(reason),
            other => unsendable(other.to_string()),
        })?;
        Ok((cspan, pending))
    }

    fn via_sidecar(&self, endpoint: usize) -> bool {
        self.svc.endpoints[endpoint].mesh.is_some()
    }

    fn answered(&mut self, cspan: &mut Span, endpoint: usize, status: StatusCode, elapsed: Duration) {
        telemetry::response_status(cspan, status.as_u16());
        self.record(endpoint, status, elapsed);
        self.outcome.origin_status = Some(status.as_u16());
        self.outcome.origin_duration = Some(elapsed);
    }

    fn failed(&mut self, cspan: &mut Span, f: &Failed<'_>) {
        let service = &self.svc.name;
        let endpoint = f
            .failure
            .endpoint()
            .and_then(|i| self.svc.endpoints.get(i))
            .map_or("", |e| e.url.as_str());
        let ejected_for = f.ejected_for;
        let metrics = &self.proxy.metrics;
        match f.failure {
            Failure::Timeout { endpoint: i, .. } => {
                metrics.upstream_error(service, "timeout");
                cspan.set(attr::ERROR_TYPE, "timeout");
                self.record(*i, StatusCode::GATEWAY_TIMEOUT, f.elapsed);
                cspan.error(|| "upstream timed out".into());
                tracing::warn!(%service, %endpoint, "upstream timed out; endpoint ejected");
            }
            Failure::Deadline => {
                cspan.set(attr::ERROR_TYPE, "deadline_exceeded");
                cspan.error(|| "the gRPC deadline passed".into());
                self.outcome.origin_status = None;
            }
            Failure::AppUnreachable { .. } => {
                metrics.upstream_error(service, "app_unreachable");
                cspan.set(attr::ERROR_TYPE, "app_unreachable");
                tracing::info!(%service, %endpoint, ?ejected_for, "the sidecar's app is not listening");
            }
            Failure::Status { status, .. } => {
                cspan.set(attr::ERROR_TYPE, "status");
                metrics.upstream_error(service, "status");
                tracing::debug!(%service, %endpoint, status, "an answer to retry elsewhere");
            }
            Failure::GrpcStatus { code, .. } => {
                cspan.set(attr::ERROR_TYPE, "grpc_status");
                cspan.set(attr::RPC_GRPC_STATUS, i64::from(*code));
                metrics.upstream_error(service, "grpc_status");
                tracing::info!(%service, %endpoint, code, "gRPC call to retry elsewhere");
            }
            Failure::Connect { endpoint: i, reason } => {
                cspan.error(|| reason.clone());
                self.record(*i, StatusCode::BAD_GATEWAY, f.elapsed);
                cspan.set(attr::ERROR_TYPE, "connect");
                metrics.upstream_error(service, "connect");
                tracing::warn!(%service, %endpoint, error = %reason, ?ejected_for, "upstream connect failed");
            }
            Failure::Broken { endpoint: i, reason } => {
                // The connection broke before a response (the server died mid-request): an
                // idempotent request without a body may go elsewhere (RFC 9110 9.2.2;
                // nginx's default `proxy_next_upstream error`).
                cspan.error(|| reason.clone());
                self.record(*i, StatusCode::BAD_GATEWAY, f.elapsed);
                metrics.upstream_error(service, "upstream");
                cspan.set(attr::ERROR_TYPE, "upstream");
                tracing::warn!(%service, %endpoint, error = %reason, ?ejected_for, "upstream request failed");
            }
            Failure::Client(_) => {
                cspan.error(|| f.failure.to_string());
                self.record(self.current, StatusCode::BAD_GATEWAY, f.elapsed);
            }
            Failure::NoEndpoint | Failure::Unsendable { .. } => cspan.error(|| f.failure.to_string()),
        }
    }

    fn retrying(&mut self, _: usize) {
        self.proxy.metrics.retry(&self.svc.name);
        self.outcome.retries += 1;
    }
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
