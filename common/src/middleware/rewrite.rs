//! Redirects and path rewrites, with Traefik's options and headers: `redirectScheme`,
//! `redirectRegex`, `stripPrefix` and `stripPrefixRegex` (`X-Forwarded-Prefix`),
//! `addPrefix`, `replacePath` and `replacePathRegex` (`X-Replaced-Path`).

use http::{HeaderValue, Method, StatusCode, header};

use super::options::Options;
use super::{Reply, Req, Step, regex};
use crate::tree::Node;

const FORWARDED_PREFIX: &str = "x-forwarded-prefix";
const REPLACED_PATH: &str = "x-replaced-path";

/// 301/302 for GET and HEAD, 308/307 otherwise (the method and body are kept), as Traefik v3.
fn redirect(method: &Method, permanent: bool, location: &str) -> Step {
    let safe = matches!(*method, Method::GET | Method::HEAD);
    let status = match (permanent, safe) {
        (true, true) => StatusCode::MOVED_PERMANENTLY,
        (true, false) => StatusCode::PERMANENT_REDIRECT,
        (false, true) => StatusCode::FOUND,
        (false, false) => StatusCode::TEMPORARY_REDIRECT,
    };
    let Ok(value) = HeaderValue::from_str(location) else {
        return Step::Reply(Reply::new(StatusCode::BAD_REQUEST, "bad redirect target\n"));
    };
    let mut r = Reply::new(status, String::new());
    r.headers.push((header::LOCATION, value));
    Step::Reply(r)
}

/// The host without its port (IPv6 brackets kept).
fn host_only(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..=h.len()]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

fn with_query(path: &str, query: &Option<String>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

#[derive(Debug)]
pub struct RedirectScheme {
    pub scheme: String,
    pub port: Option<String>,
    pub permanent: bool,
}

impl RedirectScheme {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("redirectScheme", node, &["scheme", "port", "permanent"])?;
        let scheme = o.required("scheme")?.to_ascii_lowercase();
        let port = o.string("port")?.filter(|p| !p.is_empty());
        if let Some(p) = &port
            && p.parse::<u16>().is_err()
        {
            return Err(format!("redirectScheme.port: `{p}` is not a port"));
        }
        Ok(RedirectScheme {
            scheme,
            port,
            permanent: o.bool("permanent")?,
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        let current = if req.tls { "https" } else { "http" };
        let host = host_only(req.host);
        let current_port = req.host.strip_prefix(host).and_then(|p| p.strip_prefix(':'));
        let default_port = match self.scheme.as_str() {
            "https" => "443",
            "http" => "80",
            _ => "",
        };
        let target_port = self.port.as_deref().filter(|p| *p != default_port);
        if current == self.scheme && current_port.filter(|p| *p != default_port) == target_port {
            return Step::Next;
        }
        let port = target_port.map(|p| format!(":{p}")).unwrap_or_default();
        let location = format!("{}://{host}{port}{}", self.scheme, with_query(&req.path, &req.query));
        redirect(req.method, self.permanent, &location)
    }
}

#[derive(Debug)]
pub struct RedirectRegex {
    pub regex: regex::Regex,
    pub replacement: String,
    pub permanent: bool,
}

impl RedirectRegex {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("redirectRegex", node, &["regex", "replacement", "permanent"])?;
        Ok(RedirectRegex {
            regex: regex("redirectRegex", "regex", &o.required("regex")?)?,
            replacement: o.required("replacement")?,
            permanent: o.bool("permanent")?,
        })
    }

    /// Matched against the whole URL (`scheme://host/path?query`), as Traefik does.
    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        let scheme = if req.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}{}", req.host, with_query(&req.path, &req.query));
        if !self.regex.is_match(&url) {
            return Step::Next;
        }
        let location = self.regex.replace(&url, self.replacement.as_str()).into_owned();
        if location == url {
            return Step::Next;
        }
        redirect(req.method, self.permanent, &location)
    }
}

fn set(req: &mut Req<'_>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        req.headers.insert(name, v);
    }
}

fn ensure_leading_slash(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

#[derive(Debug)]
pub struct StripPrefix {
    pub prefixes: Vec<String>,
}

impl StripPrefix {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("stripPrefix", node, &["prefixes", "forceSlash"])?;
        let prefixes = o.list("prefixes")?;
        if prefixes.is_empty() {
            return Err("stripPrefix.prefixes is required".into());
        }
        Ok(StripPrefix { prefixes })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        if let Some(prefix) = self.prefixes.iter().find(|p| req.path.starts_with(p.as_str())) {
            let rest = ensure_leading_slash(&req.path[prefix.len()..]);
            set(req, FORWARDED_PREFIX, prefix.trim_end_matches('/'));
            req.path = rest;
        }
        Step::Next
    }
}

#[derive(Debug)]
pub struct StripPrefixRegex {
    pub regexes: Vec<regex::Regex>,
}

impl StripPrefixRegex {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("stripPrefixRegex", node, &["regex"])?;
        let regexes = o.regex_list("regex")?;
        if regexes.is_empty() {
            return Err("stripPrefixRegex.regex is required".into());
        }
        Ok(StripPrefixRegex { regexes })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        for re in &self.regexes {
            if let Some(m) = re.find(&req.path).filter(|m| m.start() == 0) {
                let prefix = m.as_str().to_string();
                let rest = ensure_leading_slash(&req.path[m.end()..]);
                set(req, FORWARDED_PREFIX, prefix.trim_end_matches('/'));
                req.path = rest;
                break;
            }
        }
        Step::Next
    }
}

#[derive(Debug)]
pub struct AddPrefix {
    pub prefix: String,
}

impl AddPrefix {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("addPrefix", node, &["prefix"])?;
        Ok(AddPrefix {
            prefix: ensure_leading_slash(&o.required("prefix")?),
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        req.path = format!(
            "{}{}",
            self.prefix.trim_end_matches('/'),
            ensure_leading_slash(&req.path)
        );
        Step::Next
    }
}

#[derive(Debug)]
pub struct ReplacePath {
    pub path: String,
}

impl ReplacePath {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("replacePath", node, &["path"])?;
        Ok(ReplacePath {
            path: ensure_leading_slash(&o.required("path")?),
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        let original = std::mem::replace(&mut req.path, self.path.clone());
        set(req, REPLACED_PATH, &original);
        Step::Next
    }
}

#[derive(Debug)]
pub struct ReplacePathRegex {
    pub regex: regex::Regex,
    pub replacement: String,
}

impl ReplacePathRegex {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("replacePathRegex", node, &["regex", "replacement"])?;
        Ok(ReplacePathRegex {
            regex: regex("replacePathRegex", "regex", &o.required("regex")?)?,
            replacement: o.string("replacement")?.unwrap_or_default(),
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        if self.regex.is_match(&req.path) {
            let replaced = ensure_leading_slash(&self.regex.replace(&req.path, self.replacement.as_str()));
            let original = std::mem::replace(&mut req.path, replaced);
            set(req, REPLACED_PATH, &original);
        }
        Step::Next
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::middleware::testing::{self, node};
    use crate::middleware::{Spec, parse};

    fn run(spec: &Spec, method: &Method, tls: bool, host: &str, path: &str) -> (Step, String, HeaderMap) {
        let mut headers = HeaderMap::new();
        let (step, path) = testing::run(spec, method, tls, host, path, &mut headers, "127.0.0.1");
        (step, path, headers)
    }

    fn location(step: &Step) -> (u16, String) {
        match step {
            Step::Reply(r) => (r.status.as_u16(), r.headers[0].1.to_str().unwrap().to_string()),
            Step::Next => (0, String::new()),
        }
    }

    #[test]
    fn redirect_scheme_keeps_host_path_query_and_picks_the_status() {
        let m = parse("redirectScheme", &node(&[("scheme", "https"), ("permanent", "true")])).unwrap();
        let (s, _, _) = run(&m, &Method::GET, false, "example.com:80", "/a?b=1");
        assert_eq!(location(&s), (301, "https://example.com/a?b=1".into()));
        let (s, _, _) = run(&m, &Method::POST, false, "example.com", "/a");
        assert_eq!(location(&s).0, 308, "a POST keeps its method and body");
        let (s, _, _) = run(&m, &Method::GET, true, "example.com", "/a");
        assert_eq!(s, Step::Next, "already https");
        let m = parse("redirectScheme", &node(&[("scheme", "https"), ("port", "8443")])).unwrap();
        let (s, _, _) = run(&m, &Method::GET, false, "[::1]:8080", "/");
        assert_eq!(location(&s), (302, "https://[::1]:8443/".into()));
        assert!(parse("redirectScheme", &node(&[("port", "1")])).is_err());
        assert!(parse("redirectScheme", &node(&[("scheme", "https"), ("port", "x")])).is_err());
        assert!(parse("redirectScheme", &node(&[("scheme", "https"), ("bogus", "1")])).is_err());
    }

    #[test]
    fn redirect_regex_rewrites_the_whole_url() {
        let m = parse(
            "redirectRegex",
            &node(&[
                ("regex", "^http://localhost/(.*)"),
                ("replacement", "http://mydomain/${1}"),
            ]),
        )
        .unwrap();
        let (s, _, _) = run(&m, &Method::GET, false, "localhost", "/x/y?z");
        assert_eq!(location(&s), (302, "http://mydomain/x/y?z".into()));
        let (s, _, _) = run(&m, &Method::GET, false, "other", "/x");
        assert_eq!(s, Step::Next);
        assert!(parse("redirectRegex", &node(&[("regex", "("), ("replacement", "x")])).is_err());
    }

    #[test]
    fn strip_and_add_prefix_set_traefiks_headers() {
        let m = parse("stripPrefix", &node(&[("prefixes", "/foo,/api/")])).unwrap();
        let (_, path, h) = run(&m, &Method::GET, false, "h", "/api/users");
        assert_eq!(
            (path.as_str(), h[FORWARDED_PREFIX].to_str().unwrap()),
            ("/users", "/api")
        );
        let (_, path, _) = run(&m, &Method::GET, false, "h", "/foo");
        assert_eq!(path, "/");
        let (_, path, h) = run(&m, &Method::GET, false, "h", "/bar");
        assert_eq!(path, "/bar");
        assert!(!h.contains_key(FORWARDED_PREFIX));
        let m = parse("stripPrefixRegex", &node(&[("regex", "/v[0-9]+")])).unwrap();
        let (_, path, h) = run(&m, &Method::GET, false, "h", "/v12/x");
        assert_eq!((path.as_str(), h[FORWARDED_PREFIX].to_str().unwrap()), ("/x", "/v12"));
        let m = parse("addPrefix", &node(&[("prefix", "/app")])).unwrap();
        assert_eq!(run(&m, &Method::GET, false, "h", "/x").1, "/app/x");
        assert!(parse("stripPrefix", &node(&[])).is_err());
    }

    #[test]
    fn replace_path_keeps_the_original_in_a_header() {
        let m = parse("replacePath", &node(&[("path", "/new")])).unwrap();
        let (_, path, h) = run(&m, &Method::GET, false, "h", "/old?q=1");
        assert_eq!((path.as_str(), h[REPLACED_PATH].to_str().unwrap()), ("/new", "/old"));
        let m = parse(
            "replacePathRegex",
            &node(&[("regex", "^/foo/(.*)"), ("replacement", "/bar/$1")]),
        )
        .unwrap();
        let (_, path, h) = run(&m, &Method::GET, false, "h", "/foo/x");
        assert_eq!(
            (path.as_str(), h[REPLACED_PATH].to_str().unwrap()),
            ("/bar/x", "/foo/x")
        );
        let (_, path, _) = run(&m, &Method::GET, false, "h", "/other");
        assert_eq!(path, "/other");
    }
}
