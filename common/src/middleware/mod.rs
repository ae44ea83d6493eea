//! Traefik's middlewares: their options parsed once into typed specs (a bad option is an
//! error on the middleware, and every router using it is not served), and what each does
//! to a request and its response, as pure functions over the request's parts so that they
//! are unit-tested without a proxy.
//!
//! The request phase runs in router order and may answer at once (a redirect, 401, 403,
//! a CORS preflight); the response phase runs in reverse order on the upstream's answer.

pub mod allow;
pub mod auth;
pub mod breaker;
pub mod compress;
pub mod headers;
pub mod limit;
pub mod options;
pub mod rewrite;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::config::Node;
use options::Options;

/// The middleware types Berth implements; a router naming another one is not served.
pub const IMPLEMENTED: &[&str] = &[
    "addPrefix",
    "basicAuth",
    "chain",
    "circuitBreaker",
    "compress",
    "headers",
    "inFlightReq",
    "ipAllowList",
    "ipWhiteList",
    "rateLimit",
    "redirectRegex",
    "redirectScheme",
    "replacePath",
    "replacePathRegex",
    "retry",
    "stripPrefix",
    "stripPrefixRegex",
];

/// A middleware, ready to run.
#[derive(Debug)]
pub enum Spec {
    RedirectScheme(rewrite::RedirectScheme),
    RedirectRegex(rewrite::RedirectRegex),
    StripPrefix(rewrite::StripPrefix),
    StripPrefixRegex(rewrite::StripPrefixRegex),
    AddPrefix(rewrite::AddPrefix),
    ReplacePath(rewrite::ReplacePath),
    ReplacePathRegex(rewrite::ReplacePathRegex),
    Headers(Box<headers::Headers>),
    BasicAuth(auth::BasicAuth),
    IpAllowList(allow::IpAllowList),
    RateLimit(limit::RateLimit),
    InFlightReq(limit::InFlightReq),
    /// Read by the proxy when it forwards; nothing to do per request.
    Retry(limit::Retry),
    /// Applied by the proxy to the response body.
    Compress(compress::Compress),
    /// Told every outcome by the proxy.
    CircuitBreaker(breaker::CircuitBreaker),
    /// Other middlewares by name, expanded when routers are built.
    Chain(Vec<String>),
}

/// Parse a middleware of type `kind` (canonical spelling) from its options.
pub fn parse(kind: &str, node: &Node) -> Result<Spec, String> {
    Ok(match kind {
        "redirectScheme" => Spec::RedirectScheme(rewrite::RedirectScheme::parse(node)?),
        "redirectRegex" => Spec::RedirectRegex(rewrite::RedirectRegex::parse(node)?),
        "stripPrefix" => Spec::StripPrefix(rewrite::StripPrefix::parse(node)?),
        "stripPrefixRegex" => Spec::StripPrefixRegex(rewrite::StripPrefixRegex::parse(node)?),
        "addPrefix" => Spec::AddPrefix(rewrite::AddPrefix::parse(node)?),
        "replacePath" => Spec::ReplacePath(rewrite::ReplacePath::parse(node)?),
        "replacePathRegex" => Spec::ReplacePathRegex(rewrite::ReplacePathRegex::parse(node)?),
        "headers" => Spec::Headers(Box::new(headers::Headers::parse(node)?)),
        "basicAuth" => Spec::BasicAuth(auth::BasicAuth::parse(node)?),
        "ipAllowList" | "ipWhiteList" => Spec::IpAllowList(allow::IpAllowList::parse(kind, node)?),
        "rateLimit" => Spec::RateLimit(limit::RateLimit::parse(node)?),
        "inFlightReq" => Spec::InFlightReq(limit::InFlightReq::parse(node)?),
        "retry" => Spec::Retry(limit::Retry::parse(node)?),
        "compress" => Spec::Compress(compress::Compress::parse(node)?),
        "circuitBreaker" => Spec::CircuitBreaker(breaker::CircuitBreaker::parse(node)?),
        "chain" => {
            let o = Options::new("chain", node, &["middlewares"])?;
            let names = o.list("middlewares")?;
            if names.is_empty() {
                return Err("chain.middlewares is required".into());
            }
            Spec::Chain(names)
        }
        other => return Err(format!("middleware type `{other}` is not implemented by Berth yet")),
    })
}

/// The request as middlewares see and change it.
#[derive(Debug)]
pub struct Req<'a> {
    pub method: &'a Method,
    /// The client connection is TLS.
    pub tls: bool,
    /// The `Host` as sent (may carry a port).
    pub host: &'a str,
    /// Path and query, decoded path as sent; changed by rewrites.
    pub path: String,
    pub query: Option<String>,
    pub headers: &'a mut HeaderMap,
    /// The TCP peer.
    pub peer: IpAddr,
    /// Counted requests (`inFlightReq`), to release once the response is sent.
    pub holds: Vec<limit::Hold>,
}

/// An answer made by a middleware instead of the upstream's.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Step {
    Next,
    Reply(Reply),
}

impl Spec {
    /// The request phase. Asynchronous because some middlewares wait: `basicAuth` for its
    /// hash on the pool for heavy work.
    pub async fn request(&self, req: &mut Req<'_>) -> Step {
        match self {
            Spec::RedirectScheme(m) => m.request(req),
            Spec::RedirectRegex(m) => m.request(req),
            Spec::StripPrefix(m) => m.request(req),
            Spec::StripPrefixRegex(m) => m.request(req),
            Spec::AddPrefix(m) => m.request(req),
            Spec::ReplacePath(m) => m.request(req),
            Spec::ReplacePathRegex(m) => m.request(req),
            Spec::Headers(m) => m.request(req),
            Spec::BasicAuth(m) => m.request(req).await,
            Spec::IpAllowList(m) => m.request(req),
            Spec::RateLimit(m) => m.request(req),
            Spec::InFlightReq(m) => m.request(req),
            Spec::CircuitBreaker(m) => m.request(),
            Spec::Retry(_) | Spec::Compress(_) | Spec::Chain(_) => Step::Next,
        }
    }

    /// The response phase: `origin` is the request's `Origin`, `tls` its connection's.
    pub fn response(&self, origin: Option<&HeaderValue>, tls: bool, headers: &mut HeaderMap) {
        if let Spec::Headers(m) = self {
            m.response(origin, tls, headers);
        }
    }
}

/// Regex from Go syntax as Traefik users write it (RE2 and Rust's engine agree on the
/// common subset).
pub(crate) fn regex(kind: &str, key: &str, text: &str) -> Result<regex::Regex, String> {
    crate::rules::matcher::compile_regex(text).map_err(|e| format!("{kind}.{key}: bad regex `{text}`: {e}"))
}

/// Helpers for the middlewares' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use http::{HeaderMap, Method};

    use super::{Req, Spec, Step};
    use crate::config::Node;

    /// Options as labels would give them (`key.sub=value`).
    pub fn node(pairs: &[(&str, &str)]) -> Node {
        let mut diags = Vec::new();
        Node::from_dotted(pairs.iter().copied(), "", &mut diags)
    }

    /// Run the request phase on `path` (with its query); gives the step and the new path.
    pub fn run(
        spec: &Spec,
        method: &Method,
        tls: bool,
        host: &str,
        path: &str,
        headers: &mut HeaderMap,
        peer: &str,
    ) -> (Step, String) {
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        let mut req = Req {
            method,
            tls,
            host,
            path: p,
            query: q,
            headers,
            peer: peer.parse().expect("an IP"),
            holds: Vec::new(),
        };
        let step = crate::blocking::block_on(spec.request(&mut req));
        (step, req.path)
    }
}
