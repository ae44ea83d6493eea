//! The auth request's head and the answer's meaning, per Traefik's forward.go.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::{ForwardAuth, Verdict, canonical, resolve};
use crate::middleware::Req;
use crate::middleware::testing::node;

fn auth(pairs: &[(&str, &str)]) -> ForwardAuth {
    let mut all = vec![("address", "http://auth.internal:9091/verify?rd=1")];
    all.extend_from_slice(pairs);
    ForwardAuth::parse(&node(&all)).unwrap()
}

fn req<'a>(headers: &'a mut HeaderMap, method: &'a Method) -> Req<'a> {
    Req {
        method,
        tls: true,
        host: "app.test:8443",
        path: "/a/b".into(),
        query: Some("x=1".into()),
        headers,
        peer: "10.1.2.3".parse().unwrap(),
        holds: Vec::new(),
        auth_cookies: Vec::new(),
        grpc_web: None,
        client_certs: None,
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", hv("app.test:8443"));
    h.insert("authorization", hv("Bearer t"));
    h.insert("proxy-authorization", hv("Basic x"));
    h.insert("connection", hv("keep-alive, x-secret"));
    h.insert("x-secret", hv("s"));
    h.insert("upgrade", hv("websocket"));
    h.insert("content-length", hv("5"));
    h.insert("x-forwarded-for", hv("192.0.2.9"));
    h.insert("x-forwarded-prefix", hv("/p"));
    h.insert("x_forwarded_host", hv("evil"));
    h
}

#[test]
fn legacy_head_overwrites_what_traefik_sets_and_keeps_the_rest() {
    let a = auth(&[]);
    let mut h = client_headers();
    let m = Method::POST;
    let (method, out) = a.request_head(&req(&mut h, &m), None);
    assert_eq!(method, Method::GET);
    assert_eq!(out["authorization"], "Bearer t");
    assert_eq!(out["proxy-authorization"], "Basic x");
    for gone in ["host", "connection", "x-secret", "upgrade", "content-length"] {
        assert!(!out.contains_key(gone), "{gone} kept");
    }
    assert_eq!(out["x-forwarded-for"], "10.1.2.3");
    assert_eq!(out["x-forwarded-proto"], "https");
    assert_eq!(out["x-forwarded-method"], "POST");
    assert_eq!(out["x-forwarded-host"], "app.test:8443");
    assert_eq!(out["x-forwarded-uri"], "/a/b?x=1");
    // Set by Traefik's entrypoint, so present unless the client's came from a trusted hop.
    assert_eq!(out["x-forwarded-port"], "8443");
    assert_eq!(out["x-real-ip"], "10.1.2.3");
    // Not managed by the legacy form: passed untouched.
    assert_eq!(out["x-forwarded-prefix"], "/p");
}

#[test]
fn untrusted_head_removes_every_managed_header_first() {
    let a = auth(&[("trustForwardHeader", "false")]);
    let mut h = client_headers();
    h.insert("x-forwarded-method", hv("DELETE"));
    let m = Method::GET;
    let (_, out) = a.request_head(&req(&mut h, &m), None);
    assert_eq!(out["x-forwarded-for"], "10.1.2.3");
    assert_eq!(out["x-forwarded-method"], "GET");
    assert_eq!(out["x-forwarded-port"], "8443");
    assert!(!out.contains_key("x-forwarded-prefix"));
    assert!(!out.contains_key("x_forwarded_host"));
    assert!(!out.contains_key("x-real-ip"));
}

#[test]
fn trusted_head_appends_the_peer_and_keeps_what_the_client_sent() {
    let a = auth(&[("trustForwardHeader", "true"), ("preserveRequestMethod", "true")]);
    let mut h = client_headers();
    h.insert("x-forwarded-method", hv("DELETE"));
    let m = Method::PUT;
    let (method, out) = a.request_head(&req(&mut h, &m), None);
    assert_eq!(method, Method::PUT);
    assert_eq!(out["x-forwarded-for"], "192.0.2.9, 10.1.2.3");
    assert_eq!(out["x-forwarded-method"], "DELETE");
    assert_eq!(out["x-forwarded-prefix"], "/p");
}

#[test]
fn auth_request_headers_filter_what_is_copied() {
    let a = auth(&[("authRequestHeaders", "Authorization,X-Missing")]);
    let mut h = client_headers();
    h.insert("cookie", hv("a=b"));
    let m = Method::GET;
    let (_, out) = a.request_head(&req(&mut h, &m), Some(3));
    assert_eq!(out["authorization"], "Bearer t");
    assert!(!out.contains_key("cookie"));
    assert!(!out.contains_key("proxy-authorization"));
    assert_eq!(out["content-length"], "3");
    assert_eq!(out["x-forwarded-uri"], "/a/b?x=1");
}

#[test]
fn a_2xx_puts_the_vouched_headers_in_place_of_the_clients() {
    let a = auth(&[
        ("authResponseHeaders", "X-Auth-User"),
        ("authResponseHeadersRegex", "^X-Auth-Group"),
        ("addAuthCookiesToResponse", "sess"),
    ]);
    let mut h = HeaderMap::new();
    h.insert("x-auth-user", hv("forged"));
    h.insert("x-auth-groups", hv("admins"));
    h.insert("x-other", hv("kept"));
    let m = Method::GET;
    let mut r = req(&mut h, &m);
    let mut answer = HeaderMap::new();
    answer.insert("x-auth-user", hv("alice"));
    answer.insert("x-auth-group-a", hv("devs"));
    answer.append("set-cookie", hv("sess=new; Path=/"));
    answer.append("set-cookie", hv("other=1"));
    let v = a.verdict(StatusCode::NO_CONTENT, &answer, Bytes::new(), &mut r);
    assert!(matches!(v, Verdict::Allow));
    let cookies = std::mem::take(&mut r.auth_cookies);
    assert_eq!(h["x-auth-user"], "alice");
    assert!(
        !h.contains_key("x-auth-groups"),
        "the client's matching header is removed"
    );
    assert_eq!(h["x-auth-group-a"], "devs");
    assert_eq!(h["x-other"], "kept");
    assert_eq!(cookies.len(), 1);

    let mut resp = HeaderMap::new();
    resp.append("set-cookie", hv("sess=backend"));
    resp.append("set-cookie", hv("app=1"));
    cookies[0].apply(&mut resp);
    let all: Vec<_> = resp.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(all, ["app=1", "sess=new; Path=/"]);
}

#[test]
fn a_denial_is_the_auth_servers_answer_with_its_location_resolved() {
    let a = auth(&[]);
    let mut h = HeaderMap::new();
    let m = Method::GET;
    let mut r = req(&mut h, &m);
    let mut answer = HeaderMap::new();
    answer.insert("location", hv("../login?next=1"));
    answer.insert("www-authenticate", hv("Bearer"));
    answer.insert("connection", hv("close"));
    answer.insert("content-length", hv("6"));
    let Verdict::Deny { status, headers, body } =
        a.verdict(StatusCode::FOUND, &answer, Bytes::from_static(b"denied"), &mut r)
    else {
        panic!("allowed")
    };
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "http://auth.internal:9091/login?next=1");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(!headers.contains_key("connection"));
    assert!(!headers.contains_key("content-length"));
    assert_eq!(body, "denied");

    let kept = auth(&[("preserveLocationHeader", "true")]);
    let Verdict::Deny { headers, .. } = kept.verdict(StatusCode::FOUND, &answer, Bytes::new(), &mut r) else {
        panic!("allowed")
    };
    assert_eq!(headers["location"], "../login?next=1");
}

#[test]
fn signin_url_turns_a_401_into_a_redirect() {
    let a = auth(&[("authSigninURL", "https://login.test/start")]);
    let mut h = HeaderMap::new();
    let m = Method::GET;
    let mut r = req(&mut h, &m);
    let Verdict::Deny { status, headers, .. } =
        a.verdict(StatusCode::UNAUTHORIZED, &HeaderMap::new(), Bytes::new(), &mut r)
    else {
        panic!("allowed")
    };
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "https://login.test/start");
    // A 403 stays a 403.
    let v = a.verdict(StatusCode::FORBIDDEN, &HeaderMap::new(), Bytes::new(), &mut r);
    assert!(matches!(
        v,
        Verdict::Deny {
            status: StatusCode::FORBIDDEN,
            ..
        }
    ));
}

#[test]
fn references_resolve_as_rfc_3986_says() {
    let base: http::Uri = "http://a/b/c/d;p?q".parse().unwrap();
    for (r, want) in [
        ("g", "http://a/b/c/g"),
        ("./g", "http://a/b/c/g"),
        ("g/", "http://a/b/c/g/"),
        ("/g", "http://a/g"),
        ("//g", "http://g"),
        ("?y", "http://a/b/c/d;p?y"),
        ("g?y", "http://a/b/c/g?y"),
        ("#s", "http://a/b/c/d;p?q#s"),
        ("", "http://a/b/c/d;p?q"),
        (".", "http://a/b/c/"),
        ("..", "http://a/b/"),
        ("../g", "http://a/b/g"),
        ("../../g", "http://a/g"),
        ("../../../g", "http://a/g"),
        ("https://x.test/y", "https://x.test/y"),
    ] {
        assert_eq!(resolve(&base, r), want, "{r}");
    }
}

#[test]
fn options_are_checked() {
    let bad = |pairs: &[(&str, &str)]| ForwardAuth::parse(&node(pairs)).unwrap_err();
    assert!(bad(&[]).contains("address is required"));
    assert!(bad(&[("address", "ftp://x/")]).contains("http://"));
    assert!(bad(&[("address", "/relative")]).contains("http://"));
    let with = |k: &str, v: &str| bad(&[("address", "http://a/"), (k, v)]);
    assert!(with("authResponseHeaders", "bad header").contains("not a header name"));
    assert!(with("authResponseHeadersRegex", "(").contains("bad regex"));
    assert!(with("addAuthCookiesToResponse", "a;b").contains("not a cookie name"));
    assert!(with("maxBodySize", "lots").contains("not a size"));
    assert!(with("maxBodySize", "999999999999").contains("bound"));
    assert!(with("trustForwardHeader", "maybe").contains("true or false"));
    assert!(with("tls.insecureSkipVerify", "true").contains("tls.ca"));
    assert!(with("tls.ca", "/nonexistent/ca.pem").contains("forwardAuth.tls.ca"));
    assert!(with("tls.cert", "-----BEGIN CERTIFICATE-----").contains("cert and key"));
    assert!(with("unknown", "x").contains("unknown option"));
    let ok = auth(&[("maxBodySize", "-1"), ("forwardBody", "true")]);
    assert_eq!(ok.forwarded_body_limit(&Method::POST), Some(super::MAX_BODY));
    assert_eq!(ok.forwarded_body_limit(&Method::CONNECT), None);
    assert_eq!(auth(&[]).forwarded_body_limit(&Method::POST), None);
}

#[test]
fn credentials_in_the_address_become_basic_auth_and_are_never_shown() {
    let a = ForwardAuth::parse(&node(&[("address", "http://u%40x:p@auth.internal:9091/verify")])).unwrap();
    assert_eq!(a.target().to_string(), "http://auth.internal:9091/verify");
    assert_eq!(a.shown_address().to_string(), "http://auth.internal:9091/verify");
    // base64("u@x:p")
    assert_eq!(a.address_credentials().unwrap(), "Basic dUB4OnA=");
    assert!(auth(&[]).address_credentials().is_none());
}

#[test]
fn a_location_that_is_not_a_url_is_a_500() {
    let a = auth(&[]);
    let mut h = HeaderMap::new();
    let m = Method::GET;
    let mut r = req(&mut h, &m);
    let mut answer = HeaderMap::new();
    answer.insert("location", hv("http://[::1"));
    let v = a.verdict(StatusCode::FOUND, &answer, Bytes::new(), &mut r);
    assert!(
        matches!(
            v,
            Verdict::Deny {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                ..
            }
        ),
        "{v:?}"
    );
}

#[test]
fn header_names_are_canonical_as_go_writes_them() {
    assert_eq!(canonical("x-auth-user"), "X-Auth-User");
    assert_eq!(canonical("remote-user"), "Remote-User");
}
