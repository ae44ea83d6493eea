//! TCP router rules (Traefik v3): `HostSNI`, `HostSNIRegexp`, `ALPN` and `ClientIP`,
//! combined with `!`, `&&`, `||`, evaluated once per connection on what is known before
//! any byte is forwarded: the TLS ClientHello's server name and ALPN list, and the peer.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use super::matcher::{compile_regex, parse_ip_range};
use super::parse::{Expr, MatcherKind, parse};
use super::{CompileError, RuleError};

/// What a TCP router can see of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnView<'a> {
    /// Whether the connection opened with a TLS ClientHello.
    pub tls: bool,
    /// The ClientHello's server name, lowercased; `None` without TLS or without SNI.
    pub sni: Option<&'a str>,
    /// The ClientHello's ALPN protocols.
    pub alpn: &'a [Vec<u8>],
    pub client_ip: IpAddr,
}

#[derive(Debug, Clone)]
enum Node {
    /// `HostSNI(`*`)`: any connection, TLS or not.
    AnySni,
    Sni(String),
    /// `HostSNI(`*.example.com`)`: `.example.com` after exactly one label.
    SniWildcard(String),
    SniRegexp(Regex),
    Alpn(String),
    ClientIp(IpNet),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

/// A compiled TCP rule.
#[derive(Debug, Clone)]
pub struct TcpRule {
    text: String,
    root: Node,
}

fn err(column: usize, kind: MatcherKind, reason: impl Into<String>) -> RuleError {
    RuleError::Compile(CompileError {
        column,
        matcher: kind.name(),
        reason: reason.into(),
    })
}

impl TcpRule {
    pub fn compile(text: &str) -> Result<TcpRule, RuleError> {
        let expr = parse(text)?;
        if super::matcher::regexps(&expr) > super::matcher::MAX_REGEXPS {
            return Err(RuleError::Compile(CompileError {
                column: 1,
                matcher: "rule",
                reason: format!("more than {} regexps", super::matcher::MAX_REGEXPS),
            }));
        }
        Ok(TcpRule {
            text: text.to_string(),
            root: compile(&expr)?,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, c: &ConnView<'_>) -> bool {
        eval(&self.root, c)
    }

    /// The rule needs to see a TLS ClientHello (it names a server name or ALPN other
    /// than `*`); `HostSNI(`*`)` and `ClientIP` rules also take plain TCP.
    pub fn needs_tls(&self) -> bool {
        needs_tls(&self.root)
    }

    /// The rule is `HostSNI(`*`)` alone: Traefik gives it priority -1 by default, so any
    /// more specific router on the entrypoint goes first.
    pub fn is_catch_all(&self) -> bool {
        matches!(self.root, Node::AnySni)
    }
}

fn compile(expr: &Expr) -> Result<Node, RuleError> {
    Ok(match expr {
        Expr::Not(e) => Node::Not(Box::new(compile(e)?)),
        Expr::And(terms) => Node::And(terms.iter().map(compile).collect::<Result<_, _>>()?),
        Expr::Or(terms) => Node::Or(terms.iter().map(compile).collect::<Result<_, _>>()?),
        Expr::Matcher(call) => {
            let (col, kind) = (call.column, call.kind);
            let arg = call.args.first().map(String::as_str).unwrap_or_default();
            if arg.is_empty() {
                return Err(err(col, kind, "an empty value"));
            }
            match kind {
                MatcherKind::HostSni if arg == "*" => Node::AnySni,
                MatcherKind::HostSni => {
                    // Traefik's check: `^(\*\.)?[[:word:].:-]+$`, ASCII only.
                    let (wild, name) = match arg.strip_prefix("*.") {
                        Some(rest) => (true, rest),
                        None => (false, arg),
                    };
                    let valid = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
                    if !valid {
                        return Err(err(col, kind, format!("`{arg}` is not a server name")));
                    }
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    if wild {
                        Node::SniWildcard(format!(".{name}"))
                    } else {
                        Node::Sni(name)
                    }
                }
                MatcherKind::HostSniRegexp => {
                    if !arg.is_ascii() {
                        return Err(err(col, kind, "not ASCII (write the punycode form)"));
                    }
                    Node::SniRegexp(compile_regex(arg).map_err(|e| err(col, kind, e))?)
                }
                MatcherKind::Alpn => {
                    // The ACME TLS challenge's protocol is the gateway's own business.
                    if arg == "acme-tls/1" {
                        return Err(err(col, kind, "`acme-tls/1` is reserved for ACME challenges"));
                    }
                    Node::Alpn(arg.to_string())
                }
                MatcherKind::ClientIp => Node::ClientIp(
                    parse_ip_range(arg)
                        .ok_or_else(|| err(col, kind, format!("`{arg}` is neither an IP nor a CIDR range")))?,
                ),
                other => {
                    return Err(err(
                        col,
                        other,
                        "is an HTTP matcher: TCP routers take HostSNI, HostSNIRegexp, ALPN and ClientIP",
                    ));
                }
            }
        }
    })
}

fn eval(node: &Node, c: &ConnView<'_>) -> bool {
    match node {
        Node::AnySni => true,
        Node::Sni(name) => c.sni.map(|s| s.trim_end_matches('.')) == Some(name.as_str()),
        Node::SniWildcard(suffix) => c
            .sni
            .map(|s| s.trim_end_matches('.'))
            .is_some_and(|s| s.find('.').is_some_and(|dot| dot > 0 && s[dot..] == **suffix)),
        // A ClientHello without a server name is matched as the empty name, as Traefik does.
        Node::SniRegexp(re) => c.tls && re.is_match(c.sni.unwrap_or_default()),
        Node::Alpn(p) => c.alpn.iter().any(|a| a == p.as_bytes()),
        Node::ClientIp(net) => {
            let ip = match c.client_ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(c.client_ip),
                v4 => v4,
            };
            net.contains(&ip)
        }
        Node::Not(n) => !eval(n, c),
        Node::And(terms) => terms.iter().all(|t| eval(t, c)),
        Node::Or(terms) => terms.iter().any(|t| eval(t, c)),
    }
}

fn needs_tls(node: &Node) -> bool {
    match node {
        Node::Sni(_) | Node::SniWildcard(_) | Node::SniRegexp(_) | Node::Alpn(_) => true,
        Node::AnySni | Node::ClientIp(_) => false,
        Node::Not(n) => needs_tls(n),
        Node::And(terms) => terms.iter().any(needs_tls),
        Node::Or(terms) => terms.iter().all(needs_tls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(sni: Option<&'a str>, alpn: &'a [Vec<u8>]) -> ConnView<'a> {
        ConnView {
            tls: sni.is_some() || !alpn.is_empty(),
            sni,
            alpn,
            client_ip: "10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
        }
    }

    #[test]
    fn sni_rules_match_as_traefik_does() {
        let r = TcpRule::compile("HostSNI(`db.example.com`) || HostSNIRegexp(`^.+\\.internal$`)").expect("valid");
        assert!(r.matches(&view(Some("db.example.com"), &[])));
        assert!(r.matches(&view(Some("x.internal"), &[])));
        assert!(!r.matches(&view(Some("other.com"), &[])));
        assert!(!r.matches(&view(None, &[])), "no SNI never matches a name");
        assert!(r.needs_tls());
        let any = TcpRule::compile("HostSNI(`*`)").expect("valid");
        assert!(any.matches(&view(None, &[])) && !any.needs_tls());
        let ip = TcpRule::compile("HostSNI(`*`) && ClientIP(`10.0.0.0/8`)").expect("valid");
        assert!(ip.matches(&view(None, &[])));
        let h2 = TcpRule::compile("ALPN(`h2`)").expect("valid");
        assert!(h2.matches(&view(Some("a"), &[b"h2".to_vec()])));
    }

    #[test]
    fn http_matchers_are_refused_with_the_reason() {
        let e = TcpRule::compile("Host(`a`)").expect_err("HTTP matcher");
        assert!(e.to_string().contains("HTTP matcher"), "{e}");
        let e = super::super::compile("HostSNI(`a`)").expect_err("TCP matcher in an HTTP rule");
        assert!(e.to_string().contains("TCP matcher"), "{e}");
        assert!(TcpRule::compile("HostSNI(`a/b`)").is_err());
    }

    #[test]
    fn traefiks_tcp_tables() {
        let wild = TcpRule::compile("HostSNI(`*.example.com`)").unwrap();
        assert!(wild.matches(&view(Some("foo.example.com"), &[])));
        assert!(!wild.matches(&view(Some("example.com"), &[])));
        assert!(!wild.matches(&view(Some("a.b.example.com"), &[])));
        assert!(TcpRule::compile("HostSNI(`*.*.example.com`)").is_err());
        assert!(TcpRule::compile("HostSNI(`\u{1f9ad}.com`)").is_err());
        let v6 = TcpRule::compile("HostSNI(`10::10`)").unwrap();
        assert!(v6.matches(&view(Some("10::10"), &[])));
        assert!(TcpRule::compile("ALPN(`acme-tls/1`)").is_err());
        assert!(TcpRule::compile("HostSNIRegexp(``)").is_err());
        let any = TcpRule::compile("HostSNIRegexp(`.*`)").unwrap();
        let no_sni = ConnView {
            tls: true,
            sni: None,
            alpn: &[],
            client_ip: "10.1.2.3".parse().unwrap(),
        };
        assert!(any.matches(&no_sni), "a ClientHello without SNI is the empty name");
        assert!(TcpRule::compile("HostSNI(`*`)").unwrap().is_catch_all());
        assert!(
            !TcpRule::compile("HostSNI(`*`) && ClientIP(`10.0.0.0/8`)")
                .unwrap()
                .is_catch_all()
        );
    }
}
