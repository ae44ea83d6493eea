//! Answers a proxy makes itself (no router, no endpoint, a refused caller, a timeout), in
//! one type that speaks to both kinds of caller: HTTP callers get a status and a text
//! body, gRPC callers a trailers-only response (HTTP 200 with `grpc-status`), since a
//! gRPC client reads an HTTP error status as a protocol failure (linkerd's
//! `SyntheticHttpResponse` does the same). Every listener turns its errors into one of
//! these, in one place each.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, empty, full};
use crate::grpc::code;

/// The header naming the kind of a synthetic answer (`no_router`, `timeout`, ...).
pub const ERROR_HEADER: &str = "x-berth-error";

/// A synthetic answer, before it is known whether the caller speaks gRPC.
#[derive(Debug, Clone)]
pub struct Synthetic {
    status: StatusCode,
    text: Bytes,
    message: Option<String>,
    kind: Option<&'static str>,
    grpc: Option<u32>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Synthetic {
    /// `status` with `text` as the HTTP body (and, trimmed, the gRPC message).
    pub fn new(status: StatusCode, text: impl Into<Bytes>) -> Synthetic {
        Synthetic {
            status,
            text: text.into(),
            message: None,
            kind: None,
            grpc: None,
            headers: Vec::new(),
        }
    }

    /// Tag the answer with [`ERROR_HEADER`].
    pub fn kind(mut self, kind: &'static str) -> Synthetic {
        self.kind = Some(kind);
        self
    }

    /// The gRPC message, when it is not the HTTP text.
    pub fn message(mut self, message: impl Into<String>) -> Synthetic {
        self.message = Some(message.into());
        self
    }

    /// The gRPC status, when it is not what the HTTP status maps to.
    pub fn grpc_code(mut self, code: u32) -> Synthetic {
        self.grpc = Some(code);
        self
    }

    /// One more header, on either kind of answer.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Synthetic {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer for this caller: gRPC when `grpc`, else HTTP.
    pub fn into_response(self, grpc: bool) -> Response<Body> {
        if grpc { self.into_grpc() } else { self.into_http() }
    }

    /// The HTTP answer: the status, a plain-text body (none when the text is empty).
    pub fn into_http(self) -> Response<Body> {
        let has_text = !self.text.is_empty();
        let mut r = Response::new(full(self.text));
        *r.status_mut() = self.status;
        if has_text {
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        }
        Self::finish(r, self.kind, self.headers)
    }

    /// The gRPC answer: trailers-only, `grpc-status` from [`grpc_code_for`] unless set.
    pub fn into_grpc(self) -> Response<Body> {
        let code = self.grpc.unwrap_or_else(|| grpc_code_for(self.status));
        let message = match &self.message {
            Some(m) => m.clone(),
            None => String::from_utf8_lossy(&self.text).trim_end().to_string(),
        };
        let mut r = Response::new(empty());
        *r.headers_mut() = crate::grpc::status_headers(code, &message);
        Self::finish(r, self.kind, self.headers)
    }

    fn finish(
        mut r: Response<Body>,
        kind: Option<&'static str>,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Response<Body> {
        if let Some(k) = kind {
            r.headers_mut()
                .insert(HeaderName::from_static(ERROR_HEADER), HeaderValue::from_static(k));
        }
        for (name, value) in headers {
            r.headers_mut().append(name, value);
        }
        r
    }
}

/// gRPC's mapping of an HTTP status to a gRPC code (grpc/doc/http-grpc-status-mapping.md,
/// as Envoy applies it), with 413 as RESOURCE_EXHAUSTED.
pub fn grpc_code_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        413 => code::RESOURCE_EXHAUSTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_answer_in_http_or_grpc() {
        let s = Synthetic::new(StatusCode::SERVICE_UNAVAILABLE, "no endpoint\n").kind("no_endpoint");
        let http = s.clone().into_response(false);
        assert_eq!(http.status(), 503);
        assert_eq!(http.headers()[ERROR_HEADER], "no_endpoint");
        assert_eq!(http.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        let grpc = s.into_response(true);
        assert_eq!(grpc.status(), 200);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(grpc.headers()["grpc-message"], "no endpoint");
        assert_eq!(grpc.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(grpc.headers()[ERROR_HEADER], "no_endpoint");
        let deadline = Synthetic::new(StatusCode::GATEWAY_TIMEOUT, "late")
            .grpc_code(code::DEADLINE_EXCEEDED)
            .into_grpc();
        assert_eq!(deadline.headers()["grpc-status"], "4");
    }

    #[test]
    fn grpc_codes_follow_the_mapping() {
        for (status, want) in [
            (400, code::INTERNAL),
            (401, code::UNAUTHENTICATED),
            (403, code::PERMISSION_DENIED),
            (404, code::UNIMPLEMENTED),
            (429, code::UNAVAILABLE),
            (502, code::UNAVAILABLE),
            (503, code::UNAVAILABLE),
            (504, code::UNAVAILABLE),
            (500, code::UNKNOWN),
        ] {
            assert_eq!(grpc_code_for(StatusCode::from_u16(status).unwrap()), want, "{status}");
        }
    }
}
