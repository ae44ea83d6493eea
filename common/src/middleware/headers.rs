//! `headers`: custom request and response headers (an empty value removes the header),
//! the security headers, and CORS with the preflight answered by the gateway, with
//! Traefik's option names.

use std::collections::BTreeMap;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::options::Options;
use super::{Reply, Req, Step};
use crate::tree::Node;

const KNOWN: &[&str] = &[
    "customRequestHeaders",
    "customResponseHeaders",
    "accessControlAllowCredentials",
    "accessControlAllowHeaders",
    "accessControlAllowMethods",
    "accessControlAllowOriginList",
    "accessControlAllowOriginListRegex",
    "accessControlExposeHeaders",
    "accessControlMaxAge",
    "addVaryHeader",
    "stsSeconds",
    "stsIncludeSubdomains",
    "stsPreload",
    "forceSTSHeader",
    "frameDeny",
    "customFrameOptionsValue",
    "contentTypeNosniff",
    "browserXssFilter",
    "customBrowserXSSValue",
    "contentSecurityPolicy",
    "referrerPolicy",
    "permissionsPolicy",
];

#[derive(Debug, Default)]
pub struct Headers {
    request: Vec<(HeaderName, Option<HeaderValue>)>,
    response: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Security headers added to every response (HSTS separately: TLS only unless forced).
    security: Vec<(HeaderName, HeaderValue)>,
    sts: Option<HeaderValue>,
    force_sts: bool,
    cors: Option<Cors>,
}

#[derive(Debug, Default)]
struct Cors {
    origins: Vec<String>,
    origin_regexes: Vec<regex::Regex>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<u64>,
    vary: bool,
}

fn name(kind_key: &str, n: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("headers.{kind_key}: `{n}` is not a header name"))
}

fn value(kind_key: &str, v: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(v).map_err(|_| format!("headers.{kind_key}: `{v}` is not a header value"))
}

fn custom(map: BTreeMap<String, String>, key: &str) -> Result<Vec<(HeaderName, Option<HeaderValue>)>, String> {
    map.into_iter()
        .map(|(n, v)| Ok((name(key, &n)?, if v.is_empty() { None } else { Some(value(key, &v)?) })))
        .collect()
}

impl Headers {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("headers", node, KNOWN)?;
        let mut h = Headers {
            request: custom(o.map("customRequestHeaders")?, "customRequestHeaders")?,
            response: custom(o.map("customResponseHeaders")?, "customResponseHeaders")?,
            ..Default::default()
        };
        if let Some(secs) = o.number("stsSeconds")?.filter(|s| *s > 0) {
            let mut v = format!("max-age={secs}");
            if o.bool("stsIncludeSubdomains")? {
                v.push_str("; includeSubDomains");
            }
            if o.bool("stsPreload")? {
                v.push_str("; preload");
            }
            h.sts = Some(value("stsSeconds", &v)?);
        }
        h.force_sts = o.bool("forceSTSHeader")?;
        if let Some(v) = o.string("customFrameOptionsValue")?.filter(|v| !v.is_empty()) {
            h.security
                .push((header::X_FRAME_OPTIONS, value("customFrameOptionsValue", &v)?));
        } else if o.bool("frameDeny")? {
            h.security
                .push((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")));
        }
        if o.bool("contentTypeNosniff")? {
            h.security
                .push((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")));
        }
        if let Some(v) = o.string("customBrowserXSSValue")?.filter(|v| !v.is_empty()) {
            h.security
                .push((header::X_XSS_PROTECTION, value("customBrowserXSSValue", &v)?));
        } else if o.bool("browserXssFilter")? {
            h.security
                .push((header::X_XSS_PROTECTION, HeaderValue::from_static("1; mode=block")));
        }
        for (key, hname) in [
            ("contentSecurityPolicy", header::CONTENT_SECURITY_POLICY),
            ("referrerPolicy", header::REFERRER_POLICY),
            ("permissionsPolicy", HeaderName::from_static("permissions-policy")),
        ] {
            if let Some(v) = o.string(key)?.filter(|v| !v.is_empty()) {
                h.security.push((hname, value(key, &v)?));
            }
        }
        let origins = o.list("accessControlAllowOriginList")?;
        let origin_regexes = o.regex_list("accessControlAllowOriginListRegex")?;
        if !origins.is_empty() || !origin_regexes.is_empty() {
            let joined = |key: &str| -> Result<Option<HeaderValue>, String> {
                let l = o.list(key)?;
                if l.is_empty() {
                    Ok(None)
                } else {
                    value(key, &l.join(", ")).map(Some)
                }
            };
            h.cors = Some(Cors {
                origins,
                origin_regexes,
                methods: joined("accessControlAllowMethods")?,
                headers: joined("accessControlAllowHeaders")?,
                expose: joined("accessControlExposeHeaders")?,
                credentials: o.bool("accessControlAllowCredentials")?,
                max_age: o.number("accessControlMaxAge")?,
                vary: o.bool("addVaryHeader")?,
            });
        }
        Ok(h)
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        // A CORS preflight is answered here, never forwarded.
        if let Some(cors) = &self.cors
            && *req.method == Method::OPTIONS
            && req.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            && let Some(origin) = req.headers.get(header::ORIGIN).cloned()
        {
            let mut reply = Reply::new(StatusCode::OK, String::new());
            let mut headers = HeaderMap::new();
            cors.allow(&origin, &mut headers);
            if let Some(m) = &cors.methods {
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
            }
            if let Some(h) = &cors.headers {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
            }
            if let Some(age) = cors.max_age {
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
            }
            reply.headers = headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            return Step::Reply(reply);
        }
        for (n, v) in &self.request {
            match v {
                Some(v) => {
                    req.headers.insert(n.clone(), v.clone());
                }
                None => {
                    req.headers.remove(n);
                }
            }
        }
        Step::Next
    }

    pub(super) fn response(&self, origin: Option<&HeaderValue>, tls: bool, headers: &mut HeaderMap) {
        for (n, v) in &self.security {
            headers.insert(n.clone(), v.clone());
        }
        if let Some(sts) = &self.sts
            && (tls || self.force_sts)
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, sts.clone());
        }
        if let (Some(cors), Some(origin)) = (&self.cors, origin) {
            cors.allow(origin, headers);
            if let Some(e) = &cors.expose {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
            }
        }
        for (n, v) in &self.response {
            match v {
                Some(v) => {
                    headers.insert(n.clone(), v.clone());
                }
                None => {
                    headers.remove(n);
                }
            }
        }
    }
}

impl Cors {
    fn allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin) || self.origin_regexes.iter().any(|r| r.is_match(origin))
    }

    /// `Access-Control-Allow-Origin` (and credentials, `Vary`) for an allowed origin.
    fn allow(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        let Ok(o) = origin.to_str() else {
            return;
        };
        if !self.allowed(o) {
            return;
        }
        let wildcard = self.origins.iter().any(|x| x == "*") && !self.credentials;
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            if wildcard {
                HeaderValue::from_static("*")
            } else {
                origin.clone()
            },
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if self.vary && !wildcard {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{self, node};
    use crate::middleware::{Spec, parse};

    fn spec(pairs: &[(&str, &str)]) -> Spec {
        parse("headers", &node(pairs)).unwrap()
    }

    fn request(spec: &Spec, method: &Method, headers: &mut HeaderMap) -> Step {
        testing::run(spec, method, false, "h", "/", headers, "127.0.0.1").0
    }

    #[test]
    fn custom_headers_are_set_and_removed() {
        let s = spec(&[
            ("customRequestHeaders.X-Script-Name", "test"),
            ("customRequestHeaders.X-Drop", ""),
            ("customResponseHeaders.X-Custom-Response", "value"),
            ("customResponseHeaders.Server", ""),
        ]);
        let mut h = HeaderMap::new();
        h.insert("x-drop", HeaderValue::from_static("1"));
        assert_eq!(request(&s, &Method::GET, &mut h), Step::Next);
        assert_eq!(h["x-script-name"], "test");
        assert!(!h.contains_key("x-drop"));
        let mut resp = HeaderMap::new();
        resp.insert(header::SERVER, HeaderValue::from_static("nginx"));
        s.response(None, false, &mut resp);
        assert_eq!(resp["x-custom-response"], "value");
        assert!(!resp.contains_key(header::SERVER));
    }

    #[test]
    fn security_headers_and_hsts_on_tls_only_unless_forced() {
        let s = spec(&[
            ("stsSeconds", "31536000"),
            ("stsIncludeSubdomains", "true"),
            ("frameDeny", "true"),
            ("contentTypeNosniff", "true"),
            ("browserXssFilter", "true"),
            ("referrerPolicy", "no-referrer"),
        ]);
        let mut plain = HeaderMap::new();
        s.response(None, false, &mut plain);
        assert_eq!(plain[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(plain[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(plain[header::X_XSS_PROTECTION], "1; mode=block");
        assert_eq!(plain[header::REFERRER_POLICY], "no-referrer");
        assert!(!plain.contains_key(header::STRICT_TRANSPORT_SECURITY));
        let mut tls = HeaderMap::new();
        s.response(None, true, &mut tls);
        assert_eq!(
            tls[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
    }

    #[test]
    fn cors_preflight_is_answered_and_responses_carry_the_origin() {
        let s = spec(&[
            ("accessControlAllowOriginList", "https://a.example,https://b.example"),
            ("accessControlAllowMethods", "GET,POST"),
            ("accessControlAllowHeaders", "Content-Type"),
            ("accessControlMaxAge", "100"),
            ("accessControlAllowCredentials", "true"),
            ("addVaryHeader", "true"),
        ]);
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://a.example"));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        let Step::Reply(r) = request(&s, &Method::OPTIONS, &mut h) else {
            panic!("the preflight is answered by the gateway");
        };
        let get = |n: HeaderName| {
            r.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_str().unwrap())
        };
        assert_eq!(get(header::ACCESS_CONTROL_ALLOW_ORIGIN), Some("https://a.example"));
        assert_eq!(get(header::ACCESS_CONTROL_ALLOW_METHODS), Some("GET, POST"));
        assert_eq!(get(header::ACCESS_CONTROL_MAX_AGE), Some("100"));
        assert_eq!(get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
        // A disallowed origin gets no CORS headers.
        let mut resp = HeaderMap::new();
        s.response(
            Some(&HeaderValue::from_static("https://evil.example")),
            false,
            &mut resp,
        );
        assert!(!resp.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let mut resp = HeaderMap::new();
        s.response(Some(&HeaderValue::from_static("https://b.example")), false, &mut resp);
        assert_eq!(resp[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://b.example");
        assert_eq!(resp[header::VARY], "Origin");
        assert!(parse("headers", &node(&[("stsSeconds", "soon")])).is_err());
        assert!(parse("headers", &node(&[("customRequestHeaders.bad name", "x")])).is_err());
    }
}
