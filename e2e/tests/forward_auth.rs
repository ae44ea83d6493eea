//! `forwardAuth` against an auth server nobody here wrote (Python's `http.server`),
//! over real sockets, in Traefik's file syntax: what the auth server is asked, how its
//! denials reach the client, which of its headers reach the backend, its cookies, a
//! forwarded body, and failing closed when it cannot answer or is misconfigured.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;

use berth_common::test_util::{Backend, Proto, closed_port, get, http1};
use berth_e2e::{PythonServer, start};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

/// The Python auth server.
struct AuthServer(PythonServer);

impl std::ops::Deref for AuthServer {
    type Target = PythonServer;
    fn deref(&self) -> &PythonServer {
        &self.0
    }
}

impl AuthServer {
    fn start() -> AuthServer {
        AuthServer::start_with(&[])
    }

    fn start_with(args: &[&str]) -> AuthServer {
        AuthServer(PythonServer::start("auth_server.py", args))
    }

    /// The next request the TLS auth server reports having been asked.
    fn next_asked(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.0.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the auth server was asked, oldest first.
    async fn seen(&self) -> Vec<serde_json::Value> {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let r = http1(addr, get(&format!("127.0.0.1:{}", self.port), "/seen")).await;
        serde_json::from_str::<Vec<serde_json::Value>>(&r.body).unwrap()
    }
}

/// A header the auth server saw (the first of that name).
fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

#[tokio::test]
async fn forward_auth_asks_the_auth_server_and_follows_its_answer() {
    let auth = AuthServer::start();
    let backend = Backend::start("app", Proto::Http1).await;
    let down = closed_port().await;
    let yaml = format!(
        r#"http:
  routers:
    guarded: {{ rule: "Host(`fa.test`)", service: app, middlewares: [strip, guard] }}
    body: {{ rule: "Host(`body.test`)", service: app, middlewares: [with-body] }}
    small: {{ rule: "Host(`small.test`)", service: app, middlewares: [small] }}
    down: {{ rule: "Host(`down.test`)", service: app, middlewares: [down] }}
    signin: {{ rule: "Host(`signin.test`)", service: app, middlewares: [signin] }}
    broken: {{ rule: "Host(`broken.test`)", service: app, middlewares: [broken] }}
  middlewares:
    strip: {{ stripPrefix: {{ prefixes: [/api] }} }}
    guard:
      forwardAuth:
        address: "{verify}"
        trustForwardHeader: false
        authResponseHeaders: [X-Auth-User]
        authResponseHeadersRegex: "^X-Auth-Gr"
        addAuthCookiesToResponse: [authsess]
    with-body: {{ forwardAuth: {{ address: "{verify}", forwardBody: true, maxBodySize: 16 }} }}
    small: {{ forwardAuth: {{ address: "{small}", maxResponseBodySize: 100 }} }}
    down: {{ forwardAuth: {{ address: "http://{down}/verify" }} }}
    signin: {{ forwardAuth: {{ address: "{verify}", authSigninURL: "https://login.example/start" }} }}
    broken: {{ forwardAuth: {{ address: "{verify}", tls: {{ insecureSkipVerify: true }} }} }}
  services:
{service}"#,
        verify = auth.url("/auth/verify"),
        small = auth.url("/small"),
        service = berth_e2e::service("app", &[backend.url()], ""),
    );
    let gw = start(&yaml, &[]).await;

    // No credentials: the auth server's redirect, its relative Location resolved against
    // the auth server, its body; the backend is never asked.
    let r = http1(gw.web(), get("fa.test", "/api/x")).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(
        r.headers["location"],
        format!("http://127.0.0.1:{}/login?rd=app", auth.port).as_str()
    );
    assert_eq!(r.body, "go log in");

    // Bad credentials: its 401, with its headers and body.
    let r = http1(
        gw.web(),
        request("GET", "fa.test", "/api/x", &[("authorization", "Bearer nope")], ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], r#"Bearer realm="berth""#);
    assert_eq!(r.body, "denied\n");
    assert_eq!(backend.request_count(), 0);

    // Good credentials: the backend gets the vouched headers in place of forged ones,
    // and nothing the auth server did not vouch for.
    let r = http1(
        gw.web(),
        request(
            "POST",
            "fa.test",
            "/api/orders?id=7",
            &[
                ("authorization", "Bearer good"),
                ("x-auth-user", "mallory"),
                ("x-auth-group-forged", "root"),
                ("x-forwarded-prefix", "/evil"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let seen = backend.requests().pop().unwrap();
    assert_eq!(seen.uri, "/orders?id=7");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-auth-groups"], "admins");
    assert!(!seen.headers.contains_key("x-auth-group-forged"));
    assert!(!seen.headers.contains_key("x-not-vouched"));

    // What the auth server was asked: GET to its address, the client's credentials, the
    // original request in X-Forwarded-* (after stripPrefix, which runs first), and none
    // of the client's own X-Forwarded headers (trustForwardHeader: false).
    let asked = auth.seen().await;
    let last = asked.last().unwrap();
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], "/auth/verify");
    assert_eq!(header(last, "authorization"), Some("Bearer good"));
    assert_eq!(header(last, "host"), Some(format!("127.0.0.1:{}", auth.port).as_str()));
    assert_eq!(header(last, "x-forwarded-method"), Some("POST"));
    assert_eq!(header(last, "x-forwarded-uri"), Some("/orders?id=7"));
    assert_eq!(header(last, "x-forwarded-host"), Some("fa.test"));
    assert_eq!(header(last, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(last, "x-forwarded-port"), Some("80"));
    assert_eq!(header(last, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(last, "x-forwarded-prefix"), None);

    // The auth server's listed cookie goes on the response; the others do not.
    let r = http1(
        gw.web(),
        request("GET", "fa.test", "/api/x", &[("authorization", "Bearer cookie")], ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookies: Vec<_> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["authsess=fresh; Path=/; HttpOnly"]);
    assert_eq!(backend.requests().pop().unwrap().headers["x-auth-user"], "bob");

    // forwardBody: the auth server reads the body, and the backend still gets it whole.
    let r = http1(gw.web(), request("POST", "body.test", "/echo", &[], "let me in")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, "let me in");
    let asked = auth.seen().await;
    assert_eq!(asked.last().unwrap()["body"], "let me in");
    assert_eq!(header(asked.last().unwrap(), "content-length"), Some("9"));
    // Above maxBodySize: 401, and neither server is asked.
    let (asked_before, backend_before) = (asked.len(), backend.request_count());
    let r = http1(
        gw.web(),
        request("POST", "body.test", "/echo", &[], "let me in, I have a long body"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(auth.seen().await.len(), asked_before);
    assert_eq!(backend.request_count(), backend_before);

    // An answer above maxResponseBodySize: 401, not the truncated answer.
    let r = http1(gw.web(), get("small.test", "/")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.is_empty(), "{}", r.body);

    // An auth server that cannot be reached: 500, and the backend is not asked.
    let before = backend.request_count();
    let r = http1(gw.web(), get("down.test", "/")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.body.is_empty(), "{}", r.body);
    assert_eq!(backend.request_count(), before);

    // authSigninURL: a 401 becomes a redirect to the sign-in page.
    let r = http1(
        gw.web(),
        request("GET", "signin.test", "/", &[("authorization", "Bearer nope")], ""),
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "https://login.example/start");

    // An option Berth will not apply: the router is not served, and says why.
    let r = http1(gw.web(), get("broken.test", "/")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let routers = gw.admin_json("/api/http/routers").await;
    let broken = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "broken@file")
        .unwrap();
    assert_eq!(broken["status"], "disabled");
    assert!(broken["error"].to_string().contains("insecureSkipVerify"), "{broken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_over_tls_with_its_own_ca_and_a_client_certificate() {
    let dir = berth_e2e::temp_dir("forward-auth-tls");
    berth_common::test_util::write_pki(
        &dir,
        vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
        "berth-gateway",
    );
    let file = |n: &str| dir.join(n).display().to_string();
    let mut auth = AuthServer::start_with(&["--tls", &file("server.pem"), &file("server.key"), &file("ca.pem")]);
    let backend = Backend::start("app", Proto::Http1).await;
    let address = format!("https://127.0.0.1:{}/verify", auth.port);
    let yaml = format!(
        r#"http:
  routers:
    mtls: {{ rule: "Host(`mtls.test`)", service: app, middlewares: [mtls] }}
    no-cert: {{ rule: "Host(`nocert.test`)", service: app, middlewares: [no-cert] }}
    roots: {{ rule: "Host(`roots.test`)", service: app, middlewares: [roots] }}
  middlewares:
    mtls:
      forwardAuth:
        address: "{address}"
        tls: {{ ca: "{ca}", cert: "{cert}", key: "{key}" }}
    no-cert: {{ forwardAuth: {{ address: "{address}", tls: {{ ca: "{ca}" }} }} }}
    roots: {{ forwardAuth: {{ address: "{address}" }} }}
  services:
{service}"#,
        ca = file("ca.pem"),
        cert = file("client.pem"),
        key = file("client.key"),
        service = berth_e2e::service("app", &[backend.url()], ""),
    );
    let gw = start(&yaml, &[]).await;

    let good = |host: &'static str| request("GET", host, "/", &[("authorization", "Bearer good")], "");
    // The auth server's certificate checked against tls.ca, the gateway's certificate
    // presented: allowed, and the auth server saw who called.
    let r = http1(gw.web(), good("mtls.test")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        backend.requests().pop().unwrap().headers.get("authorization").unwrap(),
        "Bearer good"
    );
    let asked = tokio::task::block_in_place(|| auth.next_asked());
    assert_eq!(asked["peer_cn"], "berth-gateway");
    assert_eq!(asked["path"], "/verify");

    // Without a client certificate the auth server refuses the handshake; with the
    // gateway's own roots its certificate is unknown: 500 both, the backend not asked.
    for host in ["nocert.test", "roots.test"] {
        let r = http1(gw.web(), good(host)).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{host}: {}", r.body);
    }
    assert_eq!(backend.request_count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
