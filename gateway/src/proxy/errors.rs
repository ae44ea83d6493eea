//! Every synthetic response the proxy makes, in one place.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use berth_common::body::Body;
use berth_common::forward::{ClientFault, Failure};

use super::router::ServiceRuntime;

/// Why the proxy answered instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no router matches the request")]
    NoRouter,
    /// The router wants TLS options other than those the connection was made with (the
    /// client asked for another server name in the handshake).
    #[error("the connection's TLS options are not the router's")]
    Misdirected,
    #[error("service {0} has no healthy endpoint")]
    NoEndpoint(String),
    #[error("upstream {endpoint} refused or could not be reached: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("upstream {endpoint} did not answer in time")]
    Timeout { endpoint: String },
    #[error("upstream {endpoint} failed: {reason}")]
    Upstream { endpoint: String, reason: String },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the request did not arrive within the read timeout")]
    RequestTimeout,
    /// The path cannot be routed safely (`common::path`).
    #[error("bad request path: {0}")]
    BadPath(#[from] berth_common::path::PathError),
}

impl ProxyError {
    /// The forward loop's last failure for `svc`, as the gateway answers it.
    pub(crate) fn from_failure(f: Failure, svc: &ServiceRuntime, limit: Option<u64>) -> ProxyError {
        let url = |i: usize| svc.endpoints.get(i).map(|e| e.url.clone()).unwrap_or_default();
        match f {
            // (An answer that was a failure is passed on, not returned as one.)
            Failure::NoEndpoint
            | Failure::Deadline
            | Failure::AppUnreachable { .. }
            | Failure::GrpcStatus { .. }
            | Failure::Status { .. } => ProxyError::NoEndpoint(svc.name.clone()),
            Failure::Connect { endpoint, reason } | Failure::Unsendable { endpoint, reason } => ProxyError::Connect {
                endpoint: url(endpoint),
                reason,
            },
            Failure::Broken { endpoint, reason } => ProxyError::Upstream {
                endpoint: url(endpoint),
                reason,
            },
            Failure::Timeout { endpoint, .. } => ProxyError::Timeout {
                endpoint: url(endpoint),
            },
            Failure::Client(ClientFault::TooLarge) => ProxyError::BodyTooLarge {
                limit: limit.unwrap_or_default(),
            },
            Failure::Client(ClientFault::ReadTimeout) => ProxyError::RequestTimeout,
            Failure::Client(ClientFault::Invalid) => ProxyError::BadRequest("invalid request body"),
        }
    }

    /// The trip failed at the network (no endpoint, refused, broken, too slow), as a
    /// circuit breaker's `NetworkErrorRatio` counts it.
    pub(crate) fn is_network(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. }
                | ProxyError::Upstream { .. }
                | ProxyError::Timeout { .. }
                | ProxyError::NoEndpoint(_)
        )
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRouter => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// A short machine-readable kind, for metrics labels and the `x-berth-error` header.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRouter => "no_router",
            ProxyError::Misdirected => "misdirected",
            ProxyError::NoEndpoint(_) => "no_endpoint",
            ProxyError::Connect { .. } => "connect",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Upstream { .. } => "upstream",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::RequestTimeout => "request_timeout",
        }
    }

    /// For a gRPC request: a trailers-only answer whose `grpc-status` is what gRPC's HTTP
    /// mapping gives for our HTTP status (404 UNIMPLEMENTED, 502/503/504 UNAVAILABLE, 400
    /// INTERNAL, ...), so gRPC clients see a status, not a protocol error.
    pub(crate) fn into_grpc_response(self) -> Response<Body> {
        let code = match self.status().as_u16() {
            400 => 13,
            404 => 12,
            413 => 8,
            502..=504 => 14,
            _ => 2,
        };
        let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        *r.headers_mut() = berth_common::grpc::status_headers(code, &self.to_string());
        r.headers_mut()
            .insert("x-berth-error", HeaderValue::from_static(self.kind()));
        r
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let status = self.status();
        let text = match &self {
            // Traefik's exact body, which some clients and tests look for.
            ProxyError::NoRouter => "404 page not found\n".to_string(),
            ProxyError::Misdirected => "Misdirected Request\n".to_string(),
            ProxyError::NoEndpoint(s) => format!("no available server for service {s}\n"),
            other => format!("{}\n", status.canonical_reason().unwrap_or("error")).replace(
                '\n',
                &format!(
                    ": {}\n",
                    match other {
                        ProxyError::BadRequest(r) => r,
                        _ => other.kind(),
                    }
                ),
            ),
        };
        text_response(status, text, Some(self.kind()))
    }
}

/// The status a request's outcome is answered with: the upstream's, or the error's.
pub(crate) fn status_of(result: &Result<Response<Body>, ProxyError>) -> u16 {
    match result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    }
}

/// A plain-text response, optionally tagged with `x-berth-error`.
pub(crate) fn text_response(status: StatusCode, text: impl Into<Bytes>, kind: Option<&'static str>) -> Response<Body> {
    let mut resp = Response::new(Full::new(text.into()).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(k) = kind {
        h.insert("x-berth-error", HeaderValue::from_static(k));
    }
    resp
}
