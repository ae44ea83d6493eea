//! Traefik's v2 rule syntax, for routers that ask for it (`ruleSyntax: v2`, or the
//! gateway's default syntax set to v2: Traefik v3's `core.defaultRuleSyntax`).
//!
//! Traefik v3 keeps the v2 matchers beside its own for users migrating from 2.x, with one
//! parser and another set of functions (`pkg/muxer/http/matcher_v2.go`); Berth does the
//! same: the lexer and the parser are v3's ([`super::parse`]), and each v2 call is
//! translated here into v3 matchers, so the compiled rule and its evaluation are the ones
//! every router uses. The v2 semantics, from Traefik's source and tests:
//!
//! - every matcher takes one or more values; several mean *any of them*, except
//!   `Headers`, `HeadersRegexp` and `Query`, whose pairs must *all* hold;
//! - `Host` and `HostHeader` are exact hosts (no wildcards: a `*` is refused, not guessed);
//! - `HostRegexp`, `Path` and `PathPrefix` take templates: literal text with `{name}` or
//!   `{name:regexp}` variables (a host variable is `[^.]+` by default, a path variable
//!   `[^/]+`); a host template is case-insensitive and anchored at both ends, `Path` at
//!   both, `PathPrefix` at the start only (a raw prefix, not a path segment);
//! - `Headers(key, value, ...)` compares values exactly, `HeadersRegexp` with an
//!   unanchored regexp; `Query(`key=value`, ...)` compares the value (a template, whose
//!   variables are `.*`), and `Query(`key=`)` asks only that the key be present;
//! - `Method` values are upper-cased; `ClientIP` takes IPs and CIDR ranges.

use super::parse::{Expr, MatcherCall, MatcherKind, ParseError};

/// Which rule language a router's rule is written in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Syntax {
    V2,
    /// Traefik v3's, the default.
    #[default]
    V3,
}

impl Syntax {
    /// A router's `ruleSyntax` as Traefik reads it: exactly `v2` or `v3`; empty or
    /// `default` take the gateway's default. `None` for anything else (Traefik uses v3
    /// for it; the decoder says so).
    pub fn of_router(value: &str, default: Syntax) -> Option<Syntax> {
        match value {
            "" | "default" => Some(default),
            other => other.parse().ok(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Syntax::V2 => "v2",
            Syntax::V3 => "v3",
        }
    }
}

impl std::str::FromStr for Syntax {
    type Err = String;

    /// The gateway's default syntax (`--default-rule-syntax`, Traefik's
    /// `core.defaultRuleSyntax`): only `v2` and `v3`, as Traefik validates it.
    fn from_str(s: &str) -> Result<Syntax, String> {
        match s {
            "v2" => Ok(Syntax::V2),
            "v3" => Ok(Syntax::V3),
            other => Err(format!("unsupported default rule syntax `{other}` (v2 or v3)")),
        }
    }
}

/// The v2 matchers, as Traefik v3 registers them for `ruleSyntax: v2`.
pub const NAMES: [&str; 10] = [
    "Host",
    "HostHeader",
    "HostRegexp",
    "Path",
    "PathPrefix",
    "Method",
    "Headers",
    "HeadersRegexp",
    "Query",
    "ClientIP",
];

/// The canonical name of a v2 matcher spelled `name` (each is registered under four
/// spellings, as in v3).
pub(super) fn canonical(name: &str) -> Option<&'static str> {
    NAMES.into_iter().find(|c| super::parse::spelled(c, name))
}

fn err(column: usize, expected: impl Into<String>, found: impl Into<String>) -> ParseError {
    ParseError {
        column,
        expected: expected.into(),
        found: found.into(),
    }
}

/// Translate one v2 call (`name` canonical, its values already parsed) into v3 matchers.
pub(super) fn call(name: &'static str, args: Vec<String>, column: usize) -> Result<Expr, ParseError> {
    if args.iter().any(String::is_empty) {
        return Err(err(column, format!("non-empty values for {name}"), "an empty value"));
    }
    let one = |kind: MatcherKind, args: Vec<String>| Expr::Matcher(MatcherCall { kind, args, column });
    let any = |terms: Vec<Expr>| {
        if terms.len() == 1 {
            terms.into_iter().next()
        } else {
            Some(Expr::Or(terms))
        }
    };
    let all = |terms: Vec<Expr>| {
        if terms.len() == 1 {
            terms.into_iter().next()
        } else {
            Some(Expr::And(terms))
        }
    };
    let expr = match name {
        "Host" | "HostHeader" => {
            let mut terms = Vec::new();
            for h in args {
                if h.contains('*') {
                    return Err(err(
                        column,
                        format!(
                            "an exact host for v2 {name} (v2 has no wildcards: write HostRegexp(`{{sub:[^.]+}}.example.com`) or the rule in v3)"
                        ),
                        format!("`{h}`"),
                    ));
                }
                terms.push(one(MatcherKind::Host, vec![h]));
            }
            any(terms)
        }
        "HostRegexp" => {
            let mut terms = Vec::new();
            for t in &args {
                let re = template(t, "[^.]+").map_err(|e| err(column, "a v2 host template", e))?;
                terms.push(one(MatcherKind::HostRegexp, vec![format!("(?i)^{re}$")]));
            }
            any(terms)
        }
        "Path" | "PathPrefix" => {
            let mut terms = Vec::new();
            for t in args {
                if !t.starts_with('/') {
                    return Err(err(
                        column,
                        format!("a path starting with `/` for {name}"),
                        format!("`{t}`"),
                    ));
                }
                let term = if t.contains(['{', '}']) {
                    let re = template(&t, "[^/]+").map_err(|e| err(column, "a v2 path template", e))?;
                    let end = if name == "Path" { "$" } else { "" };
                    one(MatcherKind::PathRegexp, vec![format!("^{re}{end}")])
                } else if name == "Path" {
                    one(MatcherKind::Path, vec![t])
                } else {
                    one(MatcherKind::PathPrefix, vec![t])
                };
                terms.push(term);
            }
            any(terms)
        }
        "Method" => any(args
            .into_iter()
            .map(|m| one(MatcherKind::Method, vec![m.to_ascii_uppercase()]))
            .collect()),
        "ClientIP" => any(args
            .into_iter()
            .map(|ip| one(MatcherKind::ClientIp, vec![ip]))
            .collect()),
        "Headers" | "HeadersRegexp" => {
            if !args.len().is_multiple_of(2) {
                return Err(err(
                    column,
                    format!("{name} with key and value pairs"),
                    format!("{} values", args.len()),
                ));
            }
            let kind = if name == "Headers" {
                MatcherKind::Header
            } else {
                MatcherKind::HeaderRegexp
            };
            all(args.chunks(2).map(|kv| one(kind, kv.to_vec())).collect())
        }
        "Query" => {
            // Each value is split at its first `=` and the pieces read as key, value,
            // key, value... (`Query(`a`, `b`)` is the pair a=b, as in Traefik).
            let pieces: Vec<String> = args
                .iter()
                .flat_map(|a| match a.split_once('=') {
                    Some((k, v)) => vec![k.to_string(), v.to_string()],
                    None => vec![a.clone()],
                })
                .collect();
            if !pieces.len().is_multiple_of(2) {
                return Err(err(column, "Query values of the form `key=value`", format!("{args:?}")));
            }
            let mut terms = Vec::new();
            for kv in pieces.chunks(2) {
                let (key, value) = (&kv[0], &kv[1]);
                if key.is_empty() {
                    return Err(err(column, "a Query key before `=`", format!("`={value}`")));
                }
                let term = if value.is_empty() {
                    one(MatcherKind::QueryRegexp, vec![key.clone(), ".*".into()])
                } else if value.contains(['{', '}']) {
                    let re = template(value, ".*").map_err(|e| err(column, "a v2 query template", e))?;
                    one(MatcherKind::QueryRegexp, vec![key.clone(), format!("^{re}$")])
                } else {
                    one(MatcherKind::Query, vec![key.clone(), value.clone()])
                };
                terms.push(term);
            }
            all(terms)
        }
        _ => None,
    };
    expr.ok_or_else(|| err(column, format!("values for {name}"), "none"))
}

/// Go's `regexp.QuoteMeta`: `\.+*?()|[]{}^$` escaped.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A v2 template (`/users/{id:[0-9]+}`) as the body of a regexp: literal text quoted,
/// each `{name}` the default pattern, each `{name:re}` that regexp (braces may nest).
/// Errors as Traefik's: unbalanced braces, a variable without a name or a pattern.
pub(super) fn template(t: &str, default: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err(format!("unbalanced braces in `{t}`"));
        }
        out.push_str(&quote_meta(&rest[..open]));
        let mut depth = 0usize;
        let mut close = None;
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.ok_or_else(|| format!("unbalanced braces in `{t}`"))?;
        let var = &rest[open + 1..close];
        let (name, pattern) = match var.split_once(':') {
            Some((n, p)) => (n, p),
            None => (var, default),
        };
        if name.is_empty() || pattern.is_empty() {
            return Err(format!("missing name or pattern in `{t}`"));
        }
        out.push_str(&format!("(?:{pattern})"));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unbalanced braces in `{t}`"));
    }
    out.push_str(&quote_meta(rest));
    Ok(out)
}
