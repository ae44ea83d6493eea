//! Step 1 of a request's path: what is checked and settled before it is routed.
//!
//! Framing that could be read two ways is refused (the connection is then closed), sizes
//! are checked, what an untrusted peer says about forwarding is removed, the path is
//! cleaned once for the router, the middlewares and the app, and the request's host is
//! decided. What the later steps need to know about the request is kept in one [`Ctx`]
//! instead of being worked out again.

use std::borrow::Cow;
use std::time::Instant;

use berth_common::http::{CLIENT_ID_HEADER, strip_untrusted_forwarding};
use berth_common::rules::matcher::canonical_host;
use http::header;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use ipnet::IpNet;

use super::errors::ProxyError;
use super::{ConnInfo, Limits, Outcome};

/// What the steps after the front know about a request.
pub(super) struct Ctx {
    pub start: Instant,
    /// The method as the client sent it (middlewares may not change it).
    pub method: Method,
    /// The client's HTTP version: the answer goes back in it.
    pub version: Version,
    /// A gRPC call: failures are answered with gRPC statuses, its deadline is honoured.
    pub grpc: bool,
    /// The host as the client named it, port included (the request target's authority
    /// or `Host`); set by [`check`].
    pub raw_host: Option<String>,
    /// The same, lower-cased and without the port, for the rules.
    pub host: String,
    /// What became of it, for its span and access-log line.
    pub outcome: Outcome,
}

impl Ctx {
    pub(super) fn new(req: &Request<Incoming>, start: Instant) -> Ctx {
        Ctx {
            start,
            method: req.method().clone(),
            version: req.version(),
            grpc: berth_common::grpc::is_grpc(req.headers()),
            raw_host: None,
            host: String::new(),
            outcome: Outcome::default(),
        }
    }
}

/// Check and settle the request before routing; an error is answered and, for framing,
/// closes the connection.
pub(super) fn check(
    req: &mut Request<Incoming>,
    conn: &ConnInfo,
    limits: &Limits,
    trusted: &[IpNet],
    ctx: &mut Ctx,
) -> Result<(), ProxyError> {
    // RFC 9112 6.3: a message with both Transfer-Encoding and Content-Length is a
    // smuggling vector; refuse it (and the connection is closed by the caller).
    if req.version() <= Version::HTTP_11
        && req.headers().contains_key(header::TRANSFER_ENCODING)
        && req.headers().contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::BadRequest("both Transfer-Encoding and Content-Length"));
    }
    // RFC 9112 6.3: a request whose final transfer coding is not chunked has no knowable
    // length; refuse it rather than guess.
    if req.version() <= Version::HTTP_11 && !transfer_encoding_is_chunked(req.headers()) {
        return Err(ProxyError::BadRequest("Transfer-Encoding must end with chunked"));
    }
    if let Some(limit) = limits.max_body_bytes
        && req.body().size_hint().lower() > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    // Before anything reads a header (rules, middlewares' ipStrategy, the app): what a
    // client that is not a trusted proxy says about forwarding is its own word, and only
    // the inbound sidecar may say who the caller is.
    if !trusted.iter().any(|n| n.contains(&conn.peer.ip().to_canonical())) {
        strip_untrusted_forwarding(req.headers_mut());
    }
    req.headers_mut().remove(CLIENT_ID_HEADER);
    // One path for the router, the middlewares and the app: normalized, cleaned of dot
    // segments, refused where the entrypoint says or where it stays ambiguous.
    if let Cow::Owned(cleaned) = berth_common::path::clean(req.uri().path(), &conn.path)? {
        let query = req.uri().query().map(str::to_string);
        set_target(req.uri_mut(), &cleaned, query.as_deref())
            .map_err(|()| ProxyError::BadRequest("invalid request target"))?;
    }
    // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host.
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if req.version() <= Version::HTTP_11 && hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if req.version() == Version::HTTP_11 && hosts == 0 && req.uri().authority().is_none() {
        return Err(ProxyError::BadRequest("no Host header"));
    }
    // The request target's authority wins over Host (RFC 9112 3.2.2 for the absolute
    // form, RFC 9113 8.3.1 for HTTP/2's :authority), as in Traefik.
    ctx.raw_host = req
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
    ctx.host = canonical_host(ctx.raw_host.as_deref().unwrap_or_default());
    Ok(())
}

/// Replace the path and query of `uri`, keeping its scheme and authority.
pub(super) fn set_target(uri: &mut Uri, path: &str, query: Option<&str>) -> Result<(), ()> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).map_err(|_| ())?);
    *uri = Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

/// True when there is no Transfer-Encoding or its final coding is `chunked`.
fn transfer_encoding_is_chunked(headers: &HeaderMap) -> bool {
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
