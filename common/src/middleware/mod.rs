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
pub mod buffering;
pub mod compress;
pub mod content_type;
pub mod digest;
pub mod errors;
pub mod forward_auth;
pub mod grpc_web;
pub mod headers;
pub mod limit;
pub mod options;
pub mod pass_tls_client_cert;
mod predicate;
pub mod rewrite;
pub mod tcp;

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::tree::Node;
use options::Options;

/// A parser from a middleware's options to its spec.
type Parse = fn(&Node) -> Result<Spec, String>;

/// One of Traefik's middleware types: its canonical spelling and, when Berth implements
/// it, how its options are parsed. A router naming a type without a parser is not served.
#[derive(Debug)]
pub struct Kind {
    pub name: &'static str,
    parse: Option<Parse>,
}

impl Kind {
    pub fn implemented(&self) -> bool {
        self.parse.is_some()
    }

    /// Parse a middleware of this kind from its options.
    pub fn parse(&self, node: &Node) -> Result<Spec, String> {
        match self.parse {
            Some(parse) => parse(node),
            None => Err(format!(
                "middleware type `{}` is not implemented by Berth yet",
                self.name
            )),
        }
    }
}

const fn kind(name: &'static str, parse: Parse) -> Kind {
    Kind {
        name,
        parse: Some(parse),
    }
}

const fn not_yet(name: &'static str) -> Kind {
    Kind { name, parse: None }
}

/// Every middleware type Traefik has, in its canonical spelling; adding a middleware is a
/// line here, its `Spec` variant and its phases.
pub const KINDS: &[Kind] = &[
    kind("addPrefix", |n| Ok(Spec::AddPrefix(rewrite::AddPrefix::parse(n)?))),
    kind("basicAuth", |n| Ok(Spec::BasicAuth(auth::BasicAuth::parse(n)?))),
    kind("buffering", |n| Ok(Spec::Buffering(buffering::Buffering::parse(n)?))),
    kind("chain", |n| {
        let o = Options::new("chain", n, &["middlewares"])?;
        let names = o.list("middlewares")?;
        if names.is_empty() {
            return Err("chain.middlewares is required".into());
        }
        Ok(Spec::Chain(names))
    }),
    kind("circuitBreaker", |n| {
        Ok(Spec::CircuitBreaker(breaker::CircuitBreaker::parse(n)?))
    }),
    kind("compress", |n| Ok(Spec::Compress(compress::Compress::parse(n)?))),
    kind("contentType", |n| {
        Ok(Spec::ContentType(content_type::ContentType::parse(n)?))
    }),
    kind("digestAuth", |n| {
        Ok(Spec::DigestAuth(Box::new(digest::DigestAuth::parse(n)?)))
    }),
    kind("errors", |n| Ok(Spec::Errors(Box::new(errors::ErrorPage::parse(n)?)))),
    kind("forwardAuth", |n| {
        Ok(Spec::ForwardAuth(Box::new(forward_auth::ForwardAuth::parse(n)?)))
    }),
    kind("grpcWeb", |n| Ok(Spec::GrpcWeb(grpc_web::GrpcWeb::parse(n)?))),
    kind("headers", |n| Ok(Spec::Headers(Box::new(headers::Headers::parse(n)?)))),
    kind("inFlightReq", |n| Ok(Spec::InFlightReq(limit::InFlightReq::parse(n)?))),
    kind("ipAllowList", |n| {
        Ok(Spec::IpAllowList(allow::IpAllowList::parse("ipAllowList", n)?))
    }),
    kind("ipWhiteList", |n| {
        Ok(Spec::IpAllowList(allow::IpAllowList::parse("ipWhiteList", n)?))
    }),
    kind("passTLSClientCert", |n| {
        Ok(Spec::PassTlsClientCert(pass_tls_client_cert::PassTlsClientCert::parse(
            n,
        )?))
    }),
    not_yet("plugin"),
    kind("rateLimit", |n| Ok(Spec::RateLimit(limit::RateLimit::parse(n)?))),
    kind("redirectRegex", |n| {
        Ok(Spec::RedirectRegex(rewrite::RedirectRegex::parse(n)?))
    }),
    kind("redirectScheme", |n| {
        Ok(Spec::RedirectScheme(rewrite::RedirectScheme::parse(n)?))
    }),
    kind("replacePath", |n| {
        Ok(Spec::ReplacePath(rewrite::ReplacePath::parse(n)?))
    }),
    kind("replacePathRegex", |n| {
        Ok(Spec::ReplacePathRegex(rewrite::ReplacePathRegex::parse(n)?))
    }),
    kind("retry", |n| Ok(Spec::Retry(limit::Retry::parse(n)?))),
    kind("stripPrefix", |n| {
        Ok(Spec::StripPrefix(rewrite::StripPrefix::parse(n)?))
    }),
    kind("stripPrefixRegex", |n| {
        Ok(Spec::StripPrefixRegex(rewrite::StripPrefixRegex::parse(n)?))
    }),
];

/// The kind named `name`, in any case (Traefik matches type names case-insensitively).
pub fn find_kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name.eq_ignore_ascii_case(name))
}

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
    DigestAuth(Box<digest::DigestAuth>),
    IpAllowList(allow::IpAllowList),
    RateLimit(limit::RateLimit),
    InFlightReq(limit::InFlightReq),
    /// Read by the forward step ([`Spec::retry`]); nothing to do per request.
    Retry(limit::Retry),
    /// Chooses the response body's coding ([`Spec::encoding`]).
    Compress(compress::Compress),
    /// Told every upstream outcome ([`Spec::outcome`]).
    CircuitBreaker(breaker::CircuitBreaker),
    /// Replaces caught answers with a page from another service
    /// ([`Spec::error_page`]).
    Errors(Box<errors::ErrorPage>),
    /// Reads the request and the response whole ([`Spec::buffering`]).
    Buffering(buffering::Buffering),
    /// Names the type of a response sent without one ([`Spec::sniffs_content_type`]).
    ContentType(content_type::ContentType),
    /// Asks an auth server first; the gateway makes the call ([`Spec::forward_auth`]).
    ForwardAuth(Box<forward_auth::ForwardAuth>),
    /// Turns gRPC-Web calls into gRPC; the gateway converts the bodies
    /// ([`Spec::grpc_web`]).
    GrpcWeb(grpc_web::GrpcWeb),
    /// Passes the client's certificates on in headers.
    PassTlsClientCert(pass_tls_client_cert::PassTlsClientCert),
    /// Other middlewares by name, expanded when routers are built.
    Chain(Vec<String>),
}

/// Parse a middleware of type `kind` (any spelling) from its options.
pub fn parse(kind: &str, node: &Node) -> Result<Spec, String> {
    match find_kind(kind) {
        Some(k) => k.parse(node),
        None => Err(format!("unknown middleware type `{kind}`")),
    }
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
    /// Cookies an auth server set that go on the response (`forwardAuth`).
    pub auth_cookies: Vec<forward_auth::AuthCookies>,
    /// A gRPC-Web call made gRPC (`grpcWeb`): its bodies to convert.
    pub grpc_web: Option<grpc_web::Call>,
    /// The certificates the client showed in the TLS handshake, its own first.
    pub client_certs: Option<&'a [rustls_pki_types::CertificateDer<'static>]>,
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
            Spec::DigestAuth(m) => m.request(req),
            Spec::IpAllowList(m) => m.request(req),
            Spec::RateLimit(m) => m.request(req),
            Spec::InFlightReq(m) => m.request(req),
            Spec::CircuitBreaker(m) => m.request(),
            Spec::GrpcWeb(m) => m.request(req),
            Spec::PassTlsClientCert(m) => {
                m.request(req.client_certs, req.headers);
                Step::Next
            }
            Spec::Retry(_)
            | Spec::Compress(_)
            | Spec::ForwardAuth(_)
            | Spec::Errors(_)
            | Spec::ContentType(_)
            | Spec::Buffering(_)
            | Spec::Chain(_) => Step::Next,
        }
    }

    /// The response phase: `origin` is the request's `Origin`, `tls` its connection's.
    pub fn response(&self, origin: Option<&HeaderValue>, tls: bool, headers: &mut HeaderMap) {
        if let Spec::Headers(m) = self {
            m.response(origin, tls, headers);
        }
    }

    /// How the forward step may go again (`retry`); the innermost one counts.
    pub fn retry(&self) -> Option<&limit::Retry> {
        match self {
            Spec::Retry(r) => Some(r),
            _ => None,
        }
    }

    /// The auth server to ask before going on (`forwardAuth`): the caller makes the call
    /// and applies [`forward_auth::ForwardAuth::verdict`].
    pub fn forward_auth(&self) -> Option<&forward_auth::ForwardAuth> {
        match self {
            Spec::ForwardAuth(f) => Some(f),
            _ => None,
        }
    }

    /// `grpcWeb`: the gateway decodes a `grpc-web-text` body after the request phase
    /// and converts the gRPC answer in the response phase ([`grpc_web::Call`]).
    pub fn grpc_web(&self) -> Option<&grpc_web::GrpcWeb> {
        match self {
            Spec::GrpcWeb(g) => Some(g),
            _ => None,
        }
    }

    /// The error pages this middleware serves (`errors`): the caller fetches the page
    /// from [`errors::ErrorPage::service`] in the response phase.
    pub fn error_page(&self) -> Option<&errors::ErrorPage> {
        match self {
            Spec::Errors(e) => Some(e),
            _ => None,
        }
    }

    /// Where the middleware comes from, told by the configuration builder: service names
    /// it refers to are qualified with its provider (`errors`' `service`), as routers'
    /// are; one from labels may call out only to addresses that are not the gateway's own
    /// or link-local (`forwardAuth`).
    pub fn settle(&mut self, provider: &str, from_labels: bool) {
        match self {
            Spec::Errors(e) => e.qualify(provider),
            Spec::ForwardAuth(f) if from_labels => f.refuse_local_addresses(),
            _ => {}
        }
    }

    /// Whether the middleware learns how the upstream answered (`circuitBreaker`).
    pub fn learns_outcomes(&self) -> bool {
        matches!(self, Spec::CircuitBreaker(_))
    }

    /// Told how the upstream answered: the status (the proxy's own when there was no
    /// answer), whether the trip failed at the network, and how long the request took.
    pub fn outcome(&self, status: u16, network_error: bool, elapsed: Duration) {
        if let Spec::CircuitBreaker(b) = self {
            b.observe(status, network_error, elapsed);
        }
    }

    /// The bounds a body read whole must keep (`buffering`): the gateway reads the
    /// request at the middleware's place, and the response on the way back.
    pub fn buffering(&self) -> Option<&buffering::Buffering> {
        match self {
            Spec::Buffering(b) => Some(b),
            _ => None,
        }
    }

    /// Whether a response without `Content-Type` gets one detected from its first bytes
    /// (`contentType`).
    pub fn sniffs_content_type(&self) -> bool {
        matches!(self, Spec::ContentType(c) if c.enabled)
    }

    /// Whether the middleware reads the request's `Accept-Encoding` (`compress`).
    pub fn reads_accept_encoding(&self) -> bool {
        matches!(self, Spec::Compress(_))
    }

    /// The coding this middleware gives the response body, if any (`compress`).
    pub fn encoding(
        &self,
        method: &Method,
        accept: Option<&str>,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<compress::Encoding> {
        match self {
            Spec::Compress(c) => c.choose(method, accept, status, headers),
            _ => None,
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
    use crate::tree::Node;

    /// Options as labels would give them (`key.sub=value`).
    pub(crate) fn node(pairs: &[(&str, &str)]) -> Node {
        let mut diags = Vec::new();
        Node::from_dotted(pairs.iter().copied(), "", &mut diags)
    }

    /// Run the request phase on `path` (with its query); gives the step and the new path.
    pub(crate) fn run(
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
            auth_cookies: Vec::new(),
            grpc_web: None,
            client_certs: None,
        };
        let step = crate::blocking::block_on(spec.request(&mut req));
        (step, req.path)
    }
}
