//! Compiled rules and their evaluation against one request.
//!
//! Semantics follow Traefik v3: hosts compare lowercased, without port and trailing
//! dot; `Path` is exact and `PathPrefix` literal on the percent-decoded path; regexps
//! are unanchored, as written; `ClientIP` is the TCP peer, never `X-Forwarded-For`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;
use regex::Regex;

use super::parse::{Expr, MatcherKind};

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
    /// Lowercased host without port or trailing dot (see [`canonical_host`]).
    pub host: &'a str,
    /// Percent-decoded path.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub client_ip: IpAddr,
}

#[derive(Debug, Clone)]
enum Node {
    Host(String),
    HostRegexp(Regex),
    Path(String),
    PathPrefix(String),
    PathRegexp(Regex),
    Method(Method),
    Header(HeaderName, String),
    HeaderRegexp(HeaderName, Regex),
    Query(String, Option<String>),
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
        Ok(Rule {
            text: text.to_string(),
            root: compile_node(expr)?,
            hosts: required_hosts(expr),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The exact hosts one of which every matching request must carry, when the rule
    /// pins them (`Host(a) && ...`, `Host(a) || Host(b)`); `None` when any host may match.
    pub fn required_hosts(&self) -> Option<&BTreeSet<String>> {
        self.hosts.as_ref()
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        eval(&self.root, req)
    }
}

fn compile_error(column: usize, kind: MatcherKind, reason: impl Into<String>) -> CompileError {
    CompileError {
        column,
        matcher: kind.name(),
        reason: reason.into(),
    }
}

fn compile_node(expr: &Expr) -> Result<Node, CompileError> {
    Ok(match expr {
        Expr::Not(e) => Node::Not(Box::new(compile_node(e)?)),
        Expr::And(terms) => Node::And(terms.iter().map(compile_node).collect::<Result<_, _>>()?),
        Expr::Or(terms) => Node::Or(terms.iter().map(compile_node).collect::<Result<_, _>>()?),
        Expr::Matcher(call) => {
            let col = call.column;
            let kind = call.kind;
            let arg = |i: usize| call.args.get(i).map(String::as_str).unwrap_or_default();
            let regex = |s: &str| compile_regex(s).map_err(|e| compile_error(col, kind, e));
            let header = |s: &str| {
                HeaderName::from_bytes(s.as_bytes())
                    .map_err(|_| compile_error(col, kind, format!("invalid header name `{s}`")))
            };
            match kind {
                MatcherKind::Host => {
                    let h = canonical_host(arg(0));
                    if h.is_empty() {
                        return Err(compile_error(col, kind, "empty host"));
                    }
                    Node::Host(h)
                }
                MatcherKind::HostRegexp => Node::HostRegexp(regex(arg(0))?),
                MatcherKind::Path | MatcherKind::PathPrefix => {
                    let p = arg(0);
                    if !p.starts_with('/') {
                        return Err(compile_error(col, kind, format!("path `{p}` must start with `/`")));
                    }
                    if kind == MatcherKind::Path {
                        Node::Path(p.to_string())
                    } else {
                        Node::PathPrefix(p.to_string())
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
                MatcherKind::Query => {
                    if arg(0).is_empty() {
                        return Err(compile_error(col, kind, "empty query parameter name"));
                    }
                    Node::Query(arg(0).to_string(), call.args.get(1).cloned())
                }
                MatcherKind::QueryRegexp => Node::QueryRegexp(arg(0).to_string(), regex(arg(1))?),
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

/// The most memory one compiled rule regexp may take (the regex crate's default is 10 MiB,
/// and a label author can write a thousand of them).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Compile a rule's regexp within [`REGEX_SIZE_LIMIT`]; the error says why it is refused.
pub fn compile_regex(s: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(s)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regexp: {e}"))
}

/// An IP address (as a single-address range) or a CIDR range.
pub fn parse_ip_range(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

fn required_hosts(expr: &Expr) -> Option<BTreeSet<String>> {
    match expr {
        Expr::Matcher(call) if call.kind == MatcherKind::Host => {
            call.args.first().map(|h| BTreeSet::from([canonical_host(h)]))
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

fn eval(node: &Node, req: &RequestView<'_>) -> bool {
    match node {
        Node::Host(h) => req.host == h,
        Node::HostRegexp(re) => re.is_match(req.host),
        Node::Path(p) => req.path == p,
        Node::PathPrefix(p) => req.path.starts_with(p.as_str()),
        Node::PathRegexp(re) => re.is_match(req.path),
        Node::Method(m) => req.method == m,
        Node::Header(name, value) => req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes()),
        Node::HeaderRegexp(name, re) => req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
        Node::Query(key, value) => {
            query_pairs(req.query).any(|(k, v)| k == *key && value.as_ref().is_none_or(|want| v == *want))
        }
        Node::QueryRegexp(key, re) => query_pairs(req.query).any(|(k, v)| k == *key && re.is_match(&v)),
        Node::ClientIp(net) => net.contains(&canonical_ip(req.client_ip)),
        Node::Not(n) => !eval(n, req),
        Node::And(terms) => terms.iter().all(|t| eval(t, req)),
        Node::Or(terms) => terms.iter().any(|t| eval(t, req)),
    }
}

/// IPv4-mapped IPv6 peers (from dual-stack sockets) compare as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Lowercase, drop a `:port` and a trailing dot; IPv6 literals keep their brackets.
pub fn canonical_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
}

fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " ")).into_owned()
}

/// Percent-decode; invalid escapes stay as written (as Go's lenient path handling does).
pub fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}
