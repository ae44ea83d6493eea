//! `errors`: when the answer's status is in `status` (from the service, or from a
//! middleware further in), the client gets a page from another service instead, with
//! the original status (or the one `statusRewrites` gives). Follows Traefik v3
//! (`pkg/middlewares/customerrors`): the page is asked with `GET <query>` (`{status}`,
//! `{originalStatus}` and `{url}` filled in) carrying the request's headers, or only
//! those in `errorRequestHeaders`.
//!
//! This module decides which answers are caught and what the page request is; the
//! gateway fetches the page through its forward step, at the middleware's place in the
//! response phase, through [`super::Spec::error_page`].

use http::{HeaderMap, HeaderName};

use super::options::Options;
use crate::tree::Node;

#[derive(Debug)]
pub struct ErrorPage {
    ranges: Vec<(u16, u16)>,
    /// `(from, to)` ranges and the status they become, in the order of their first code.
    rewrites: Vec<((u16, u16), u16)>,
    /// As written until the configuration builder qualifies it with the middleware's
    /// provider ([`ErrorPage::qualify`]).
    service: String,
    query: String,
    /// `None`: every request header; a list (maybe empty): only those.
    request_headers: Option<Vec<HeaderName>>,
}

/// The page to ask for: its path and query, and the headers it carries.
#[derive(Debug)]
pub struct PageRequest {
    pub path_and_query: String,
    pub headers: HeaderMap,
}

/// What the request looked like when it passed the middleware: the page request is made
/// from it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub tls: bool,
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

/// The most status ranges one middleware may list.
const MAX_RANGES: usize = 256;

impl ErrorPage {
    pub fn parse(node: &Node) -> Result<ErrorPage, String> {
        let o = Options::new(
            "errors",
            node,
            &["status", "statusRewrites", "service", "query", "errorRequestHeaders"],
        )?;
        let ranges = status_ranges(&o.list("status")?, "errors.status")?;
        if ranges.is_empty() {
            return Err("errors.status is required (for example 500-599)".into());
        }
        let mut rewrites = Vec::new();
        for (from, to) in o.map("statusRewrites")? {
            let r = range(from.trim()).map_err(|e| format!("errors.statusRewrites: {e}"))?;
            let to = to
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("errors.statusRewrites.{from}: `{to}` is not a status code"))?;
            rewrites.push((r, to));
        }
        if rewrites.len() > MAX_RANGES {
            return Err(format!("errors.statusRewrites: more than {MAX_RANGES} entries"));
        }
        rewrites.sort_by_key(|((from, _), _)| *from);
        let request_headers = match o.get("errorRequestHeaders") {
            None => None,
            Some(_) => Some(
                o.list("errorRequestHeaders")?
                    .iter()
                    .map(|n| {
                        HeaderName::from_bytes(n.as_bytes())
                            .map_err(|_| format!("errors.errorRequestHeaders: `{n}` is not a header name"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(ErrorPage {
            ranges,
            rewrites,
            service: o.required("service")?,
            query: o.string("query")?.unwrap_or_default(),
            request_headers,
        })
    }

    /// The page's service, qualified once the builder has called [`ErrorPage::qualify`].
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Qualify the service name with the middleware's provider, as router services are.
    pub fn qualify(&mut self, provider: &str) {
        if !self.service.contains('@') {
            self.service = format!("{}@{provider}", self.service);
        }
    }

    /// Whether an answer with `status` is replaced: the status the client gets, and the
    /// original. Informational answers pass.
    pub fn catches(&self, status: u16) -> Option<(u16, u16)> {
        if status < 200 || !crate::http::status_in(&self.ranges, status) {
            return None;
        }
        let code = self
            .rewrites
            .iter()
            .find(|((a, b), _)| (*a..=*b).contains(&status))
            .map_or(status, |(_, to)| *to);
        Some((code, status))
    }

    /// The page request for a caught answer.
    pub fn page_request(&self, seen: &Seen, code: u16, original: u16) -> PageRequest {
        let path_and_query = if self.query.is_empty() {
            "/".to_string()
        } else {
            let scheme = if seen.tls { "https" } else { "http" };
            let url = match &seen.query {
                Some(q) => format!("{scheme}://{}{}?{q}", seen.host, seen.path),
                None => format!("{scheme}://{}{}", seen.host, seen.path),
            };
            format!("/{}", self.query.trim_start_matches('/'))
                .replace("{status}", &code.to_string())
                .replace("{originalStatus}", &original.to_string())
                .replace("{url}", &query_escape(&url))
        };
        let headers = match &self.request_headers {
            None => seen.headers.clone(),
            Some(names) => {
                let mut h = HeaderMap::new();
                for name in names {
                    for v in seen.headers.get_all(name) {
                        h.append(name.clone(), v.clone());
                    }
                }
                h
            }
        };
        let mut headers = headers;
        // The page request is a GET without a body: the original's framing is not its.
        for name in [
            http::header::CONTENT_LENGTH,
            http::header::TRANSFER_ENCODING,
            http::header::EXPECT,
        ] {
            headers.remove(name);
        }
        PageRequest {
            path_and_query,
            headers,
        }
    }
}

/// `500` or `500-599`.
/// Status ranges as Traefik lists them (`["500-599", "404,418"]`), at most
/// [`MAX_RANGES`]; `what` names the option in errors.
pub(crate) fn status_ranges(items: &[String], what: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut ranges = Vec::new();
    for item in items {
        for part in item.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            ranges.push(range(part).map_err(|e| format!("{what}: {e}"))?);
            if ranges.len() > MAX_RANGES {
                return Err(format!("{what}: more than {MAX_RANGES} ranges"));
            }
        }
    }
    Ok(ranges)
}

pub(crate) fn range(text: &str) -> Result<(u16, u16), String> {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("`{text}` is not a status or a range of statuses (500, 500-599)"))
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (code(a)?, code(b)?);
            if a > b {
                return Err(format!("`{text}`: the range is backwards"));
            }
            Ok((a, b))
        }
        None => code(text).map(|c| (c, c)),
    }
}

/// Go's `url.QueryEscape`: all but unreserved characters percent-encoded, space as `+`.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::HeaderValue;

    use super::*;
    use crate::middleware::testing::node;

    fn page(pairs: &[(&str, &str)]) -> ErrorPage {
        ErrorPage::parse(&node(pairs)).unwrap()
    }

    fn seen() -> Seen {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("text/html"));
        headers.insert("cookie", HeaderValue::from_static("a=b"));
        headers.insert("content-length", HeaderValue::from_static("12"));
        Seen {
            tls: true,
            host: "app.test".into(),
            path: "/a b/c".into(),
            query: Some("x=1&y=2".into()),
            headers,
        }
    }

    #[test]
    fn statuses_ranges_and_rewrites() {
        let p = page(&[
            ("service", "pages"),
            ("status", "404,418,500-599"),
            ("statusRewrites.418", "404"),
            ("statusRewrites.502-504", "503"),
        ]);
        assert_eq!(p.catches(404), Some((404, 404)));
        assert_eq!(p.catches(418), Some((404, 418)));
        assert_eq!(p.catches(502), Some((503, 502)));
        assert_eq!(p.catches(500), Some((500, 500)));
        assert_eq!(p.catches(200), None);
        assert_eq!(p.catches(403), None);
        // Informational answers are never caught.
        let all = page(&[("service", "pages"), ("status", "100-599")]);
        assert_eq!(all.catches(101), None);
        assert_eq!(all.catches(200), Some((200, 200)));
    }

    #[test]
    fn the_page_request_fills_in_the_query() {
        let p = page(&[
            ("service", "pages"),
            ("status", "500-599"),
            ("query", "{status}.html?from={originalStatus}&url={url}"),
            ("statusRewrites.502", "503"),
        ]);
        let r = p.page_request(&seen(), 503, 502);
        assert_eq!(
            r.path_and_query,
            "/503.html?from=502&url=https%3A%2F%2Fapp.test%2Fa+b%2Fc%3Fx%3D1%26y%3D2"
        );
        assert_eq!(r.headers["cookie"], "a=b");
        assert!(
            !r.headers.contains_key("content-length"),
            "the page request has no body"
        );
        // No query: the root; errorRequestHeaders: only those, an empty list none.
        let only = page(&[
            ("service", "pages"),
            ("status", "500"),
            ("errorRequestHeaders", "Accept"),
        ]);
        let r = only.page_request(&seen(), 500, 500);
        assert_eq!(r.path_and_query, "/");
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers["accept"], "text/html");
    }

    #[test]
    fn the_service_is_qualified_once() {
        let mut p = page(&[("service", "pages"), ("status", "500")]);
        p.qualify("ecs");
        p.qualify("file");
        assert_eq!(p.service(), "pages@ecs");
        let mut q = page(&[("service", "pages@file"), ("status", "500")]);
        q.qualify("ecs");
        assert_eq!(q.service(), "pages@file");
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = |pairs: &[(&str, &str)]| ErrorPage::parse(&node(pairs)).unwrap_err();
        assert!(bad(&[("service", "p")]).contains("status is required"));
        assert!(bad(&[("status", "500")]).contains("service is required"));
        assert!(bad(&[("service", "p"), ("status", "5xx")]).contains("not a status"));
        assert!(bad(&[("service", "p"), ("status", "599-500")]).contains("backwards"));
        assert!(bad(&[("service", "p"), ("status", "700")]).contains("not a status"));
        assert!(bad(&[("service", "p"), ("status", "500"), ("statusRewrites.500", "x")]).contains("not a status code"));
        assert!(bad(&[("service", "p"), ("status", "500"), ("errorRequestHeaders", "a b")]).contains("header name"));
    }
}
