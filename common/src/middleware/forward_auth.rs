//! `forwardAuth`: every request is first asked of an authentication server (Authelia,
//! oauth2-proxy, a Keycloak gatekeeper). A 2xx answer lets the request through, with the
//! headers the server vouches for (`authResponseHeaders`, `authResponseHeadersRegex`)
//! put in place of the client's; any other answer is the client's answer, the server's
//! status, headers and body. Follows Traefik v3.7 (`pkg/middlewares/auth/forward.go`).
//!
//! This module decides, purely, what the auth request carries and what the answer means;
//! the gateway makes the call itself (it owns the connection pools) at the middleware's
//! place in the chain, through [`super::Spec::forward_auth`].
//!
//! Where Berth differs, on purpose: the auth server's answer and a forwarded body are
//! bounded ([`MAX_BODY`]) even when `maxBodySize`/`maxResponseBodySize` are unset or -1
//! (Traefik reads them whole); `tls.insecureSkipVerify: true` is refused (give `tls.ca`);
//! `headerField` is accepted but names no access-log user yet.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Req;
use super::options::Options;
use crate::tree::Node;

/// The most a forwarded request body or an auth server's answer may hold, whatever the
/// options say: both are held in memory.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// How long the auth server may take to answer (Traefik's client timeout).
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The headers Traefik manages, removed from the auth request when `trustForwardHeader`
/// is false (lowercase; `_` spellings are removed too).
const X_HEADERS: [&str; 13] = [
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-scheme",
    "x-real-ip",
];

/// Removed from the auth request (Traefik's list: `Proxy-Authorization` is kept, the
/// auth server may want it, RFC 7235 section 4.4).
const HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    HeaderName::from_static("trailers"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

#[derive(Debug)]
pub struct ForwardAuth {
    address: Uri,
    /// `address` without credentials: what is dialled, logged and traced.
    target: Uri,
    /// Credentials in `address` (`http://user:pass@auth/`), as Basic auth.
    credentials: Option<HeaderValue>,
    tls: Option<Arc<AuthTls>>,
    /// `trustForwardHeader`: unset keeps Traefik's legacy behaviour (the X-Forwarded
    /// headers it sets are overwritten, the others pass untouched).
    trust: Option<bool>,
    response_headers: Vec<HeaderName>,
    response_regex: Option<regex::Regex>,
    request_headers: Vec<HeaderName>,
    auth_cookies: Arc<[String]>,
    forward_body: bool,
    max_body: usize,
    max_response_body: usize,
    preserve_location: bool,
    preserve_method: bool,
    signin_url: Option<HeaderValue>,
    /// From labels: the auth server may not resolve to the gateway's own or a
    /// link-local address (checked when connecting).
    public_only: bool,
}

/// `tls`: whom the auth server's certificate must chain to (none: the gateway's upstream
/// roots) and the client certificate the gateway presents.
#[derive(Debug)]
pub struct AuthTls {
    pub ca: Option<Vec<CertificateDer<'static>>>,
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// What the auth server's answer means for the request.
#[derive(Debug)]
pub enum Verdict {
    /// Go on (the request's headers have been updated).
    Allow,
    /// Answer the client with this instead.
    Deny {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// Cookies the auth server set that go on the response (`addAuthCookiesToResponse`),
/// replacing the backend's cookies of those names.
#[derive(Debug, Clone)]
pub struct AuthCookies {
    names: Arc<[String]>,
    cookies: Vec<HeaderValue>,
}

impl AuthCookies {
    /// Put the auth server's cookies on the response in place of the backend's.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let listed = |v: &HeaderValue| {
            v.to_str()
                .ok()
                .and_then(crate::cookie::set_cookie_name)
                .is_some_and(|n| self.names.iter().any(|l| l == n))
        };
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !listed(v))
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for v in kept
            .into_iter()
            .chain(self.cookies.iter().filter(|v| listed(v)).cloned())
        {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

const KNOWN: &[&str] = &[
    "address",
    "tls",
    "trustForwardHeader",
    "authResponseHeaders",
    "authResponseHeadersRegex",
    "authRequestHeaders",
    "addAuthCookiesToResponse",
    "headerField",
    "forwardBody",
    "maxBodySize",
    "maxResponseBodySize",
    "preserveLocationHeader",
    "preserveRequestMethod",
    "authSigninURL",
];

/// The largest PEM file read for `tls.ca`, `tls.cert` or `tls.key`.
const MAX_PEM: u64 = 1024 * 1024;

impl ForwardAuth {
    pub fn parse(node: &Node) -> Result<ForwardAuth, String> {
        let o = Options::new("forwardAuth", node, KNOWN)?;
        let address_text = o.required("address")?;
        let address: Uri = address_text
            .parse()
            .map_err(|_| format!("forwardAuth.address: `{address_text}` is not a URL"))?;
        if !matches!(address.scheme_str(), Some("http" | "https")) || address.authority().is_none() {
            return Err(format!(
                "forwardAuth.address: `{address_text}` must be an http:// or https:// URL with a host"
            ));
        }
        let trust = match o.string("trustForwardHeader")?.as_deref() {
            None | Some("") => None,
            Some(_) => Some(o.bool("trustForwardHeader")?),
        };
        let names = |key: &str| -> Result<Vec<HeaderName>, String> {
            o.list(key)?
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("forwardAuth.{key}: `{n}` is not a header name"))
                })
                .collect()
        };
        let response_headers = names("authResponseHeaders")?;
        let mut request_headers = names("authRequestHeaders")?;
        if trust == Some(true) && !request_headers.is_empty() {
            request_headers.extend(X_HEADERS.iter().map(|n| HeaderName::from_static(n)));
        }
        let response_regex = match o.string("authResponseHeadersRegex")?.filter(|r| !r.is_empty()) {
            Some(r) => Some(super::regex("forwardAuth", "authResponseHeadersRegex", &r)?),
            None => None,
        };
        let auth_cookies = o.list("addAuthCookiesToResponse")?;
        if let Some(bad) = auth_cookies.iter().find(|c| !crate::cookie::is_name(c)) {
            return Err(format!(
                "forwardAuth.addAuthCookiesToResponse: `{bad}` is not a cookie name"
            ));
        }
        if let Some(field) = o.string("headerField")?.filter(|f| !f.is_empty())
            && HeaderName::from_bytes(field.as_bytes()).is_err()
        {
            return Err(format!("forwardAuth.headerField: `{field}` is not a header name"));
        }
        let size = |key: &str| -> Result<usize, String> {
            match o.string(key)?.as_deref().map(str::trim) {
                None | Some("") | Some("-1") => Ok(MAX_BODY),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n <= MAX_BODY as u64 => Ok(n as usize),
                    Ok(_) => Err(format!(
                        "forwardAuth.{key}: `{v}` is above Berth's bound of {MAX_BODY} bytes"
                    )),
                    Err(_) => Err(format!("forwardAuth.{key}: `{v}` is not a size in bytes or -1")),
                },
            }
        };
        let signin_url = match o.string("authSigninURL")?.filter(|u| !u.is_empty()) {
            None => None,
            Some(u) => Some(
                HeaderValue::from_str(&u)
                    .ok()
                    .filter(|_| u.parse::<Uri>().is_ok())
                    .ok_or_else(|| format!("forwardAuth.authSigninURL: `{u}` is not a URL"))?,
            ),
        };
        let (target, credentials) = split_credentials(&address);
        Ok(ForwardAuth {
            tls: parse_tls(&o)?.map(Arc::new),
            address,
            target,
            credentials,
            trust,
            response_headers,
            response_regex,
            request_headers,
            auth_cookies: auth_cookies.into(),
            forward_body: o.bool("forwardBody")?,
            max_body: size("maxBodySize")?,
            max_response_body: size("maxResponseBodySize")?,
            preserve_location: o.bool("preserveLocationHeader")?,
            preserve_method: o.bool("preserveRequestMethod")?,
            signin_url,
            public_only: false,
        })
    }

    /// Connect only to addresses that are not the gateway's own or link-local (a
    /// middleware from labels).
    pub fn refuse_local_addresses(&mut self) {
        self.public_only = true;
    }

    /// Whether the auth server may only be at a public or private-network address.
    pub fn public_only(&self) -> bool {
        self.public_only
    }

    /// The address as written (Location headers are resolved against it).
    pub fn address(&self) -> &Uri {
        &self.address
    }

    /// The address without credentials: what is dialled.
    pub fn target(&self) -> &Uri {
        &self.target
    }

    /// The address for logs: without credentials.
    pub fn shown_address(&self) -> &Uri {
        &self.target
    }

    /// `Authorization: Basic` for credentials written in the address.
    pub fn address_credentials(&self) -> Option<&HeaderValue> {
        self.credentials.as_ref()
    }

    /// The `tls` options, when the auth server needs its own trust or a client
    /// certificate.
    pub fn tls(&self) -> Option<&Arc<AuthTls>> {
        self.tls.as_ref()
    }

    /// When the request body goes to the auth server too (`forwardBody`): the most it
    /// may hold; a larger body is refused with 401.
    pub fn forwarded_body_limit(&self, method: &Method) -> Option<usize> {
        // A CONNECT's bytes are the tunnel's, not a body (Traefik skips them too).
        (self.forward_body && method != Method::CONNECT).then_some(self.max_body)
    }

    /// The most the auth server's answer may hold; a larger one is refused with 401.
    pub fn max_response_body(&self) -> usize {
        self.max_response_body
    }

    /// The auth request's method and headers (its URL is [`Self::address`]). `body_len`
    /// is the forwarded body's length, if one is forwarded.
    pub fn request_head(&self, req: &Req<'_>, body_len: Option<usize>) -> (Method, HeaderMap) {
        let method = if self.preserve_method {
            req.method.clone()
        } else {
            Method::GET
        };
        let mut h = req.headers.clone();
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named.iter().chain(HOP.iter()) {
            h.remove(name);
        }
        // The auth request has its own framing and its own host.
        h.remove(header::HOST);
        h.remove(header::CONTENT_LENGTH);
        if self.trust == Some(false) {
            let managed: Vec<HeaderName> = h.keys().filter(|n| is_x_header(n.as_str())).cloned().collect();
            for name in managed {
                h.remove(name);
            }
        }
        if !self.request_headers.is_empty() {
            let mut kept = HeaderMap::new();
            for name in &self.request_headers {
                for v in h.get_all(name) {
                    kept.append(name.clone(), v.clone());
                }
            }
            h = kept;
        }
        if let Some(n) = body_len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let proto = if req.tls { "https" } else { "http" };
        let uri = match &req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        let value = |s: &str| HeaderValue::from_str(s).ok();
        let xff = HeaderName::from_static("x-forwarded-for");
        let client = req.peer.to_canonical().to_string();
        let set = |h: &mut HeaderMap, name: &'static str, v: Option<HeaderValue>, overwrite: bool| {
            let name = HeaderName::from_static(name);
            match v {
                Some(v) if overwrite || !h.contains_key(&name) => {
                    h.insert(name, v);
                }
                Some(_) => {}
                None if overwrite => {
                    h.remove(name);
                }
                None => {}
            }
        };
        match self.trust {
            None => {
                h.insert(
                    xff,
                    HeaderValue::from_str(&client).unwrap_or(HeaderValue::from_static("")),
                );
                set(&mut h, "x-forwarded-proto", value(proto), true);
                set(&mut h, "x-forwarded-method", value(req.method.as_str()), true);
                set(&mut h, "x-forwarded-host", value(req.host), true);
                set(&mut h, "x-forwarded-uri", value(&uri), true);
                // Set by Traefik's entrypoint before the middleware runs, so present too.
                let port = forwarded_port(req.host, &h, req.tls);
                set(&mut h, "x-forwarded-port", value(&port), false);
                set(&mut h, "x-real-ip", value(&req.peer.to_canonical().to_string()), false);
            }
            Some(_) => {
                let prior: Vec<&str> = h.get_all(&xff).iter().filter_map(|v| v.to_str().ok()).collect();
                let joined = if prior.is_empty() {
                    client
                } else {
                    format!("{}, {client}", prior.join(", "))
                };
                if let Some(v) = value(&joined) {
                    h.insert(xff, v);
                }
                set(&mut h, "x-forwarded-method", value(req.method.as_str()), false);
                set(&mut h, "x-forwarded-proto", value(proto), false);
                let port = forwarded_port(req.host, &h, req.tls);
                set(&mut h, "x-forwarded-port", value(&port), false);
                set(&mut h, "x-forwarded-host", value(req.host), false);
                set(&mut h, "x-forwarded-uri", value(&uri), false);
                if self.trust == Some(true) {
                    set(&mut h, "x-real-ip", value(&req.peer.to_canonical().to_string()), false);
                }
            }
        }
        (method, h)
    }

    /// What the auth server's answer means. On a 2xx the request's headers are updated
    /// and the cookies to carry to the response, if any, are pushed onto the request.
    pub fn verdict(&self, status: StatusCode, answer: &HeaderMap, body: Bytes, req: &mut Req<'_>) -> Verdict {
        if status == StatusCode::UNAUTHORIZED
            && let Some(url) = &self.signin_url
        {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, url.clone());
            return Verdict::Deny {
                status: StatusCode::FOUND,
                headers,
                body: Bytes::new(),
            };
        }
        if !status.is_success() {
            let mut headers = answer.clone();
            for name in &HOP {
                headers.remove(name);
            }
            headers.remove(header::CONTENT_LENGTH);
            if !self.preserve_location
                && let Some(loc) = answer.get(header::LOCATION).and_then(|v| v.to_str().ok())
            {
                // A Location that is not a URL is the auth server's fault: 500, as Traefik.
                match HeaderValue::from_str(&resolve(&self.address, loc))
                    .ok()
                    .filter(|v| v.to_str().is_ok_and(|t| t.parse::<Uri>().is_ok()))
                {
                    Some(v) => {
                        headers.insert(header::LOCATION, v);
                    }
                    None => {
                        return Verdict::Deny {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            headers: HeaderMap::new(),
                            body: Bytes::new(),
                        };
                    }
                }
            }
            return Verdict::Deny { status, headers, body };
        }
        for name in &self.response_headers {
            req.headers.remove(name);
            for v in answer.get_all(name) {
                req.headers.append(name.clone(), v.clone());
            }
        }
        if let Some(re) = &self.response_regex {
            let matching = |n: &HeaderName| re.is_match(&canonical(n.as_str()));
            let stale: Vec<HeaderName> = req.headers.keys().filter(|n| matching(n)).cloned().collect();
            for name in stale {
                req.headers.remove(name);
            }
            for (name, v) in answer.iter().filter(|(n, _)| matching(n)) {
                req.headers.append(name.clone(), v.clone());
            }
        }
        if !self.auth_cookies.is_empty() && answer.contains_key(header::SET_COOKIE) {
            req.auth_cookies.push(AuthCookies {
                names: self.auth_cookies.clone(),
                cookies: answer.get_all(header::SET_COOKIE).iter().cloned().collect(),
            });
        }
        Verdict::Allow
    }
}

/// The address without its `user:pass@`, and those credentials as Basic auth.
fn split_credentials(address: &Uri) -> (Uri, Option<HeaderValue>) {
    let Some(authority) = address.authority() else {
        return (address.clone(), None);
    };
    let Some((userinfo, hostport)) = authority.as_str().rsplit_once('@') else {
        return (address.clone(), None);
    };
    let mut parts = address.clone().into_parts();
    parts.authority = hostport.parse().ok();
    let target = Uri::from_parts(parts).unwrap_or_else(|_| address.clone());
    let decoded = crate::percent::decode(userinfo);
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, decoded.as_bytes());
    (target, HeaderValue::from_str(&format!("Basic {basic}")).ok())
}

fn parse_tls(o: &Options<'_>) -> Result<Option<AuthTls>, String> {
    let Some(t) = o.nested("tls", &["ca", "cert", "key", "insecureSkipVerify", "caOptional"])? else {
        return Ok(None);
    };
    if t.bool("insecureSkipVerify")? {
        return Err(
            "forwardAuth.tls.insecureSkipVerify: Berth does not skip certificate checks; give the auth server's CA in tls.ca"
                .into(),
        );
    }
    let pem = |key: &str| -> Result<Option<Vec<u8>>, String> {
        match t.string(key)?.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(v) => super::options::file_or_pem(&format!("forwardAuth.tls.{key}"), &v, MAX_PEM).map(Some),
        }
    };
    let what = |key: &str| format!("forwardAuth.tls.{key}");
    let ca = match pem("ca")? {
        None => None,
        Some(p) => Some(crate::tls::certs_from_pem(&p, &what("ca")).map_err(|e| e.to_string())?),
    };
    let identity = match (pem("cert")?, pem("key")?) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((
            crate::tls::certs_from_pem(&c, &what("cert")).map_err(|e| e.to_string())?,
            crate::tls::key_from_pem(&k, &what("key")).map_err(|e| e.to_string())?,
        )),
        _ => return Err("forwardAuth.tls: cert and key go together".into()),
    };
    Ok(Some(AuthTls { ca, identity }))
}

/// One of the X-Forwarded headers Traefik manages, in either spelling.
fn is_x_header(name: &str) -> bool {
    if !name.starts_with('x') {
        return false;
    }
    let dashed = name.replace('_', "-");
    X_HEADERS.contains(&dashed.as_str())
}

/// Go's canonical spelling of a header name (`x-auth-user` -> `X-Auth-User`), which a
/// Traefik user's `authResponseHeadersRegex` is written against.
fn canonical(name: &str) -> String {
    let mut up = true;
    name.chars()
        .map(|c| {
            let out = if up { c.to_ascii_uppercase() } else { c };
            up = c == '-';
            out
        })
        .collect()
}

/// Traefik's `X-Forwarded-Port`: the `Host`'s port, else 443 for https, else 80.
fn forwarded_port(host: &str, h: &HeaderMap, tls: bool) -> String {
    if let Some((_, port)) = host.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        return port.to_string();
    }
    let proto = h.get("x-forwarded-proto").and_then(|v| v.to_str().ok());
    let port = if matches!(proto, Some("https" | "wss")) || tls {
        "443"
    } else {
        "80"
    };
    port.to_string()
}

/// `reference` resolved against `base` (RFC 3986 section 5.2, as Go's
/// `Response.Location` does): a relative `Location` from the auth server points at the
/// auth server, not at the routed host.
fn resolve(base: &Uri, reference: &str) -> String {
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    let has_scheme = reference.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
            && s.as_bytes()[0].is_ascii_alphabetic()
    });
    if has_scheme {
        return reference.to_string();
    }
    if let Some(rest) = reference.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let base_path = base.path();
    let (path, tail) = match reference.find(['?', '#']) {
        Some(i) => (&reference[..i], &reference[i..]),
        None => (reference, ""),
    };
    let merged = if path.is_empty() {
        let query = base.query().map(|q| format!("?{q}")).unwrap_or_default();
        if tail.is_empty() {
            return format!("{scheme}://{authority}{base_path}{query}");
        }
        if tail.starts_with('#') {
            return format!("{scheme}://{authority}{base_path}{query}{tail}");
        }
        base_path.to_string()
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{path}", if dir.is_empty() { "/" } else { dir })
    };
    format!("{scheme}://{authority}{}{tail}", remove_dot_segments(&merged))
}

/// RFC 3986 section 5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate().skip(1) {
        match *seg {
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut s = String::from("/");
    s.push_str(&out.join("/"));
    if trailing && !s.ends_with('/') {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests;
