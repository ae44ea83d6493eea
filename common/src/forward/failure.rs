//! What can go wrong on the way to an upstream, each variant saying whether the endpoint
//! is to blame (and is ejected for a while) and whether the request may go again (as
//! Pingora's errors carry their retry flag). The callers turn the final one into their
//! own answer; the loop decides retries from these flags alone.

use std::time::Duration;

use super::RetryOn;

/// Why an attempt, or the whole trip, did not end with the upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No endpoint is left to try (none healthy, or all tried).
    #[error("no endpoint is available")]
    NoEndpoint,
    /// The connection was refused or could not be made: nothing reached an app.
    #[error("connect failed: {reason}")]
    Connect { endpoint: usize, reason: String },
    /// The connection broke before a response: the request may have reached the app.
    #[error("failed before answering: {reason}")]
    Broken { endpoint: usize, reason: String },
    /// No response within the response timeout: the request may have reached the app.
    #[error("no answer within {after:?}")]
    Timeout { endpoint: usize, after: Duration },
    /// The endpoint's sidecar answered that its app is not listening (a stopping task):
    /// the request never reached an app.
    #[error("the app behind the sidecar is not listening")]
    AppUnreachable { endpoint: usize },
    /// A gRPC call answered trailers-only with a code the policy retries.
    #[error("gRPC status {code}")]
    GrpcStatus { endpoint: usize, code: u32 },
    /// An answer with a status the policy retries (the retry middleware's `status`).
    #[error("answered {status}")]
    Status { endpoint: usize, status: u16 },
    /// The gRPC call's own deadline (`grpc-timeout`) passed: the caller's budget ran out,
    /// the endpoint is not to blame.
    #[error("the gRPC deadline passed")]
    Deadline,
    /// The client's request body failed.
    #[error("{0}")]
    Client(ClientFault),
    /// The request could not be sent at all (the caller's own refusal).
    #[error("{reason}")]
    Unsendable { endpoint: usize, reason: String },
}

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    #[error("the request body is larger than allowed")]
    TooLarge,
    #[error("the request body did not arrive in time")]
    ReadTimeout,
    #[error("the request body is invalid")]
    Invalid,
}

impl ClientFault {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            ClientFault::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ClientFault::ReadTimeout => http::StatusCode::REQUEST_TIMEOUT,
            ClientFault::Invalid => http::StatusCode::BAD_REQUEST,
        }
    }
}

impl Failure {
    /// Whether the endpoint is to blame: it is ejected (with back-off) for it.
    pub fn ejects(&self) -> bool {
        matches!(
            self,
            Failure::Connect { .. }
                | Failure::Broken { .. }
                | Failure::Timeout { .. }
                | Failure::AppUnreachable { .. }
                | Failure::GrpcStatus { .. }
        )
    }

    /// Whether the request may go to another attempt, by `policy`'s rules (the loop also
    /// needs attempts left and a request that can be sent again).
    pub fn may_retry(&self, on: &RetryOn) -> bool {
        match self {
            Failure::Connect { .. } => on.connect,
            Failure::Broken { .. } => on.broken,
            Failure::Timeout { .. } => on.timeout,
            Failure::AppUnreachable { .. } => on.app_unreachable,
            Failure::GrpcStatus { code, .. } => on.grpc_codes.contains(code),
            Failure::Status { status, .. } => crate::http::status_in(&on.statuses, *status),
            Failure::NoEndpoint | Failure::Deadline | Failure::Client(_) | Failure::Unsendable { .. } => false,
        }
    }

    /// Whether the upstream side failed at the network level (what a circuit breaker's
    /// `NetworkErrorRatio` counts).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Failure::NoEndpoint | Failure::Connect { .. } | Failure::Broken { .. } | Failure::Timeout { .. }
        )
    }

    /// The endpoint it happened at, when one was picked.
    pub fn endpoint(&self) -> Option<usize> {
        match self {
            Failure::Connect { endpoint, .. }
            | Failure::Broken { endpoint, .. }
            | Failure::Timeout { endpoint, .. }
            | Failure::AppUnreachable { endpoint }
            | Failure::GrpcStatus { endpoint, .. }
            | Failure::Status { endpoint, .. }
            | Failure::Unsendable { endpoint, .. } => Some(*endpoint),
            Failure::NoEndpoint | Failure::Deadline | Failure::Client(_) => None,
        }
    }

    /// A short, stable name (`error.type` on spans, the `x-berth-error` header, metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::NoEndpoint => "no_endpoint",
            Failure::Connect { .. } => "connect",
            Failure::Broken { .. } => "upstream",
            Failure::Timeout { .. } => "timeout",
            Failure::AppUnreachable { .. } => "app_unreachable",
            Failure::GrpcStatus { .. } => "grpc_status",
            Failure::Status { .. } => "status",
            Failure::Deadline => "deadline_exceeded",
            Failure::Client(ClientFault::TooLarge) => "body_too_large",
            Failure::Client(ClientFault::ReadTimeout) => "request_timeout",
            Failure::Client(ClientFault::Invalid) => "bad_request",
            Failure::Unsendable { .. } => "unsendable",
        }
    }
}
