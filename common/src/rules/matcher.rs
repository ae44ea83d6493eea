//! Compiled rules and their evaluation against one request.
//!
//! Semantics follow Traefik v3 (its `pkg/muxer/http` test tables are the reference):
//!
//! - `Host` compares the request host lowercased, without its port and brackets, one
//!   trailing dot tolerated on either side; `*.example.com` stands for exactly one label
//!   (not the apex, not two labels) and `Host(`*`)` for any host, even none. A rule value
//!   with a port, or outside ASCII, is refused (Traefik accepts it and never matches).
//! - `HostRegexp` runs on the same host, its trailing dot kept.
//! - `Path` is exact and `PathPrefix` a literal prefix, both on the routing path
//!   (`common::path::routing_path`: reserved escapes such as `%2F` stay encoded).
//! - `Header` and `HeaderRegexp` never see `Host` and `Transfer-Encoding` (Go removes them
//!   from a request's headers); a header value is matched as text, non-UTF-8 bytes lossily.
//! - `Query(`k`)` matches only `?k` or `?k=`; `;` separates pairs as `&` does; a pair with
//!   a bad escape is dropped (Go's `ParseQuery`).
//! - `ClientIP` is the TCP peer, never `X-Forwarded-For`; IPv4-mapped addresses in the
//!   rule compare as IPv4.
//! - regexps are Go's syntax ([`super::regex`]), unanchored as written.
//! - an empty argument is refused for every matcher (an empty regexp would match every
//!   request: a typo would make a catch-all).

use std::collections::BTreeSet;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;
use regex::Regex;

use super::parse::{Expr, MatcherKind};
pub use super::regex::{REGEX_SIZE_LIMIT, compile_regex};

/// A rule value that parsed but cannot be used (bad regexp, bad CIDR, bad header name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {matcher}: {reason}")]
pub struct CompileError {
    pub column: usize,
    pub matcher: &'static str,
    pub reason: String,
}

/// What a rule looks at in a request, computed once per request by the caller.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request's host ([`canonical_host`]): lowercased, without port or brackets,
    /// a trailing dot kept.
    pub host: &'a str,
    /// The routing path (`common::path::routing_path`).
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub client_ip: IpAddr,
}

#[derive(Debug, Clone)]
enum Node {
    /// A host without its trailing dot.
    Host(String),
    /// `*.example.com`: `.example.com`, after exactly one label.
    HostWildcard(String),
    /// `Host(`*`)`.
    AnyHost,
    HostRegexp(Regex),
    Path(String),
    PathPrefix(String),
    PathRegexp(Regex),
    Method(Method),
    Header(HeaderName, String),
    HeaderRegexp(HeaderName, Regex),
    /// `Query(k, v)`, or `Query(k)` for an empty value.
    Query(String, String),
    QueryRegexp(String, Regex),
    ClientIp(IpNet),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

/// A compiled rule: cheap to evaluate, with the hosts it requires for indexing.
#[derive(Debug, Clone)]
pub struct Rule {
    text: String,
    root: Node,
    hosts: Option<BTreeSet<String>>,
    path_prefix: Option<String>,
}

/// The most regexps one rule may compile (each is bounded by [`REGEX_SIZE_LIMIT`]).
pub const MAX_REGEXPS: usize = 16;

/// How many matchers of `expr` take a regexp.
pub(super) fn regexps(expr: &Expr) -> usize {
    match expr {
        Expr::Matcher(call) => usize::from(matches!(
            call.kind,
            MatcherKind::HostRegexp
                | MatcherKind::PathRegexp
                | MatcherKind::HeaderRegexp
                | MatcherKind::QueryRegexp
                | MatcherKind::HostSniRegexp
        )),
        Expr::Not(e) => regexps(e),
        Expr::And(terms) | Expr::Or(terms) => terms.iter().map(regexps).sum(),
    }
}

impl Rule {
    pub fn compile(text: &str, expr: &Expr) -> Result<Rule, CompileError> {
        if regexps(expr) > MAX_REGEXPS {
            return Err(CompileError {
                column: 1,
                matcher: "rule",
                reason: format!("more than {MAX_REGEXPS} regexps"),
            });
        }
        let root = compile_node(expr)?;
        let path_prefix = required_path_prefix(&root).map(str::to_string);
        Ok(Rule {
            text: text.to_string(),
            root,
            hosts: required_hosts(expr),
            path_prefix,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The exact hosts one of which every matching request must carry, when the rule
    /// pins them (`Host(a) && ...`, `Host(a) || Host(b)`); `None` when any host may match.
    /// Hosts are lowercased, without a trailing dot ([`index_host`]).
    pub fn required_hosts(&self) -> Option<&BTreeSet<String>> {
        self.hosts.as_ref()
    }

    /// A prefix of the routing path that every matching request has (`PathPrefix(p) && ...`,
    /// or `Path(p)`), when the rule requires one; `None` otherwise. The route tables index
    /// routers by it, so a request is tested only against rules it can match.
    pub fn required_path_prefix(&self) -> Option<&str> {
        self.path_prefix.as_deref()
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        eval(&self.root, req)
    }
}

/// The longest path prefix a matching request must have: a conjunction needs every term,
/// so any term's prefix is required; alternatives and negations require none.
fn required_path_prefix(node: &Node) -> Option<&str> {
    match node {
        Node::Path(p) | Node::PathPrefix(p) => Some(p),
        Node::And(terms) => terms.iter().filter_map(required_path_prefix).max_by_key(|p| p.len()),
        _ => None,
    }
}

fn compile_error(column: usize, kind: MatcherKind, reason: impl Into<String>) -> CompileError {
    CompileError {
        column,
        matcher: kind.name(),
        reason: reason.into(),
    }
}

/// A `Host` rule value: lowercased, without brackets or one trailing dot; refused when
/// empty, outside ASCII, or with a port.
fn rule_host(v: &str) -> Result<String, String> {
    if !v.is_ascii() {
        return Err(format!("`{v}` is not ASCII (write the punycode form)"));
    }
    let lower = v.to_ascii_lowercase();
    let bare = lower
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&lower);
    if bare.matches(':').count() == 1 {
        return Err(format!(
            "`{v}` has a port: hosts are matched without theirs (write the host alone)"
        ));
    }
    Ok(index_host(bare).to_string())
}

fn compile_node(expr: &Expr) -> Result<Node, CompileError> {
    Ok(match expr {
        Expr::Not(e) => Node::Not(Box::new(compile_node(e)?)),
        Expr::And(terms) => Node::And(terms.iter().map(compile_node).collect::<Result<_, _>>()?),
        Expr::Or(terms) => Node::Or(terms.iter().map(compile_node).collect::<Result<_, _>>()?),
        Expr::Matcher(call) => {
            let col = call.column;
            let kind = call.kind;
            if call.args.iter().any(String::is_empty) {
                return Err(compile_error(col, kind, "an empty value"));
            }
            let arg = |i: usize| call.args.get(i).map(String::as_str).unwrap_or_default();
            let regex = |s: &str| compile_regex(s).map_err(|e| compile_error(col, kind, e));
            let header = |s: &str| {
                HeaderName::from_bytes(s.as_bytes())
                    .map_err(|_| compile_error(col, kind, format!("invalid header name `{s}`")))
            };
            match kind {
                MatcherKind::Host => match arg(0) {
                    "*" => Node::AnyHost,
                    wild if wild.starts_with('*') => {
                        let suffix = wild
                            .strip_prefix("*.")
                            .filter(|rest| !rest.is_empty() && !rest.contains('*'))
                            .ok_or_else(|| {
                                compile_error(col, kind, format!("`{wild}`: a wildcard is `*.` then a domain"))
                            })?;
                        let h = rule_host(suffix).map_err(|e| compile_error(col, kind, e))?;
                        Node::HostWildcard(format!(".{h}"))
                    }
                    h => Node::Host(rule_host(h).map_err(|e| compile_error(col, kind, e))?),
                },
                MatcherKind::HostRegexp => {
                    if !arg(0).is_ascii() {
                        return Err(compile_error(col, kind, "not ASCII (write the punycode form)"));
                    }
                    Node::HostRegexp(regex(arg(0))?)
                }
                MatcherKind::Path | MatcherKind::PathPrefix => {
                    let p = arg(0);
                    if !p.starts_with('/') {
                        return Err(compile_error(col, kind, format!("path `{p}` must start with `/`")));
                    }
                    // Compared with the routing path, whose kept escapes are upper-case.
                    let p = super::super::path::routing_path(p).into_owned();
                    if kind == MatcherKind::Path {
                        Node::Path(p)
                    } else {
                        Node::PathPrefix(p)
                    }
                }
                MatcherKind::PathRegexp => Node::PathRegexp(regex(arg(0))?),
                MatcherKind::Method => {
                    let m = Method::from_bytes(arg(0).to_ascii_uppercase().as_bytes())
                        .map_err(|_| compile_error(col, kind, format!("invalid method `{}`", arg(0))))?;
                    Node::Method(m)
                }
                MatcherKind::Header => Node::Header(header(arg(0))?, arg(1).to_string()),
                MatcherKind::HeaderRegexp => Node::HeaderRegexp(header(arg(0))?, regex(arg(1))?),
                MatcherKind::Query => Node::Query(arg(0).to_string(), arg(1).to_string()),
                MatcherKind::QueryRegexp => match call.args.get(1) {
                    Some(re) => Node::QueryRegexp(arg(0).to_string(), regex(re)?),
                    None => Node::Query(arg(0).to_string(), String::new()),
                },
                MatcherKind::ClientIp => Node::ClientIp(parse_ip_range(arg(0)).ok_or_else(|| {
                    compile_error(col, kind, format!("`{}` is neither an IP nor a CIDR range", arg(0)))
                })?),
                MatcherKind::HostSni | MatcherKind::HostSniRegexp | MatcherKind::Alpn => {
                    return Err(compile_error(col, kind, "is a TCP matcher: use it in a tcp router"));
                }
            }
        }
    })
}

/// An IP address (as a single-address range) or a CIDR range, exactly as written (no
/// spaces). IPv4-mapped IPv6 (`::ffff:10.0.0.1`, `::ffff:10.0.0.0/104`) becomes IPv4.
pub fn parse_ip_range(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    Some(match net {
        IpNet::V6(v6) => match (v6.addr().to_ipv4_mapped(), v6.prefix_len()) {
            (Some(v4), len) if len >= 96 => IpNet::V4(ipnet::Ipv4Net::new(v4, len - 96).ok()?.trunc()),
            _ => IpNet::V6(v6),
        },
        v4 => v4,
    })
}

fn required_hosts(expr: &Expr) -> Option<BTreeSet<String>> {
    match expr {
        Expr::Matcher(call) if call.kind == MatcherKind::Host => {
            let h = call.args.first()?;
            // Wildcards and `*` cannot be found by an exact lookup.
            if h.starts_with('*') {
                return None;
            }
            rule_host(h).ok().map(|h| BTreeSet::from([h]))
        }
        Expr::Matcher(_) | Expr::Not(_) => None,
        // Every operand must hold: the hosts all the pinning operands allow.
        Expr::And(terms) => terms
            .iter()
            .filter_map(required_hosts)
            .reduce(|x, y| x.intersection(&y).cloned().collect()),
        // Any operand may hold: pinned only when every operand pins.
        Expr::Or(terms) => terms.iter().try_fold(BTreeSet::new(), |mut all, t| {
            all.extend(required_hosts(t)?);
            Some(all)
        }),
    }
}

/// The headers Go takes out of a request's header map: a rule never sees them there.
fn hidden_header(name: &HeaderName) -> bool {
    name == http::header::HOST || name == http::header::TRANSFER_ENCODING
}

fn eval(node: &Node, req: &RequestView<'_>) -> bool {
    match node {
        Node::Host(h) => !req.host.is_empty() && index_host(req.host) == h,
        Node::HostWildcard(suffix) => {
            let h = index_host(req.host);
            h.find('.').is_some_and(|dot| dot > 0 && h[dot..] == **suffix)
        }
        Node::AnyHost => true,
        Node::HostRegexp(re) => re.is_match(req.host),
        Node::Path(p) => req.path == p,
        Node::PathPrefix(p) => req.path.starts_with(p.as_str()),
        Node::PathRegexp(re) => re.is_match(req.path),
        Node::Method(m) => req.method == m,
        Node::Header(name, value) => {
            !hidden_header(name)
                && req
                    .headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.as_bytes() == value.as_bytes())
        }
        Node::HeaderRegexp(name, re) => {
            !hidden_header(name)
                && req
                    .headers
                    .get_all(name)
                    .iter()
                    .any(|v| re.is_match(&String::from_utf8_lossy(v.as_bytes())))
        }
        Node::Query(key, value) => query_pairs(req.query).any(|(k, v)| k == *key && v == *value),
        Node::QueryRegexp(key, re) => query_pairs(req.query).any(|(k, v)| k == *key && re.is_match(&v)),
        Node::ClientIp(net) => net.contains(&req.client_ip.to_canonical()),
        Node::Not(n) => !eval(n, req),
        Node::And(terms) => terms.iter().all(|t| eval(t, req)),
        Node::Or(terms) => terms.iter().any(|t| eval(t, req)),
    }
}

/// The request host as rules see it: lowercased, without its port and the brackets of an
/// IPv6 literal (`[::1]:8080` is `::1`), a trailing dot kept. A bare IPv6 address (two
/// colons or more, no brackets) has no port to take off.
pub fn canonical_host(host: &str) -> String {
    let host = host.trim();
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else if host.matches(':').count() == 1 {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    } else {
        host
    };
    bare.to_ascii_lowercase()
}

/// A host as the router index keys it: one trailing dot taken off.
pub fn index_host(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// The pairs of a query string, as Go's `ParseQuery` after `AllowQuerySemicolons`: `&`
/// and `;` separate, `+` is a space, a pair with a bad escape is dropped.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or_default()
        .split(['&', ';'])
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((form_decode(k)?, form_decode(v)?))
        })
}

/// `+` as space and percent-escapes decoded; `None` for a bad escape.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    }) {
        return None;
    }
    Some(crate::percent::decode(&s.replace('+', " ")).into_owned())
}
