//! Middlewares through the gateway over real sockets, configured in Traefik's file format
//! (labels decode to the same configuration): rewrites reach the backend, redirects and
//! refusals never do, chains run in order, and a broken or unimplemented middleware keeps
//! its routers from being served.
#![allow(clippy::unwrap_used)]

mod support;

use base64::Engine;
use berth_common::test_util::{Backend, Proto, get, http1};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::{service, start};

fn config(backend: &str) -> String {
    format!(
        r#"http:
  routers:
    api:
      rule: "Host(`a.test`) && PathPrefix(`/api`)"
      service: app
      middlewares: [strip, secure]
    secure-only:
      rule: "Host(`r.test`)"
      service: app
      middlewares: [to-https]
    private:
      rule: "Host(`p.test`)"
      service: app
      middlewares: [guard]
    locked:
      rule: "Host(`l.test`)"
      service: app
      middlewares: [office-only]
    cors:
      rule: "Host(`c.test`)"
      service: app
      middlewares: [cors]
    broken:
      rule: "Host(`b.test`)"
      service: app
      middlewares: [bad-regex]
    unimplemented:
      rule: "Host(`u.test`)"
      service: app
      middlewares: [limit]
    looped:
      rule: "Host(`loop.test`)"
      service: app
      middlewares: [loop-a]
  middlewares:
    strip: {{ stripPrefix: {{ prefixes: ["/api"] }} }}
    secure:
      headers:
        frameDeny: true
        customRequestHeaders: {{ X-Team: "blue" }}
        customResponseHeaders: {{ X-Served-By: "berth" }}
    to-https: {{ redirectScheme: {{ scheme: https, permanent: true }} }}
    guard:
      chain:
        middlewares: [auth, secure]
    auth:
      basicAuth:
        users: ["test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"]
        headerField: X-User
        removeHeader: true
    office-only: {{ ipAllowList: {{ sourceRange: ["10.0.0.0/8"] }} }}
    cors:
      headers:
        accessControlAllowOriginList: ["https://app.example"]
        accessControlAllowMethods: [GET, PUT]
    bad-regex: {{ replacePathRegex: {{ regex: "(", replacement: "/x" }} }}
    limit: {{ rateLimit: {{ average: 10 }} }}
    loop-a: {{ chain: {{ middlewares: [loop-b] }} }}
    loop-b: {{ chain: {{ middlewares: [loop-a] }} }}
  services:
{}"#,
        service("app", &[backend.to_string()], "")
    )
}

fn with_header(host: &str, path: &str, name: &str, value: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .header(name, value)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn middlewares_rewrite_redirect_refuse_and_fail_closed() {
    let b = Backend::start("app", Proto::Http1).await;
    let gw = start(&config(&b.url()), &[]).await;

    // stripPrefix then headers: the backend sees the stripped path and the added header;
    // the client sees the response headers.
    let r = http1(gw.web(), get("a.test", "/api/users?x=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("GET /users?x=1"), "{}", r.body);
    assert_eq!(r.headers["x-served-by"], "berth");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    let seen = b.requests().pop().unwrap();
    assert_eq!(seen.headers["x-forwarded-prefix"], "/api");
    assert_eq!(seen.headers["x-team"], "blue");

    // A redirect is answered by the gateway.
    let before = b.request_count();
    let r = http1(gw.web(), get("r.test:8000", "/x?y=1")).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers["location"], "https://r.test/x?y=1");

    // basicAuth in a chain: refused without credentials, passed with them (the header is
    // removed and the user named), and the chain's headers middleware ran too.
    let r = http1(gw.web(), get("p.test", "/")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Basic realm=\"traefik\"");
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("test:nope")
    );
    assert_eq!(
        http1(gw.web(), with_header("p.test", "/", "authorization", &wrong))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(b.request_count(), before, "refused requests never reach the backend");
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("test:test")
    );
    let r = http1(gw.web(), with_header("p.test", "/", "authorization", &good)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["x-served-by"], "berth");
    let seen = b.requests().pop().unwrap();
    assert_eq!(seen.headers["x-user"], "test");
    assert!(!seen.headers.contains_key("authorization"));

    // ipAllowList: the TCP peer (127.0.0.1) is not in 10.0.0.0/8, whatever X-Forwarded-For says.
    let r = http1(gw.web(), with_header("l.test", "/", "x-forwarded-for", "10.1.1.1")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // CORS: the preflight is answered by the gateway.
    let before = b.request_count();
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/")
        .header("host", "c.test")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = http1(gw.web(), preflight).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(r.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(b.request_count(), before);

    // Broken, unimplemented and circular middlewares: their routers are not served, and
    // the admin API says why.
    for host in ["b.test", "u.test", "loop.test"] {
        assert_eq!(
            http1(gw.web(), get(host, "/")).await.status,
            StatusCode::NOT_FOUND,
            "{host}"
        );
    }
    let routers = gw.admin_json("/api/http/routers").await;
    let error_of = |name: &str| {
        routers.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["error"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        error_of("broken@file").contains("bad regex"),
        "{}",
        error_of("broken@file")
    );
    assert!(error_of("unimplemented@file").contains("not implemented"));
    assert!(
        error_of("looped@file").contains("includes itself"),
        "{}",
        error_of("looped@file")
    );
    let mws = gw.admin_json("/api/http/middlewares").await;
    let auth = mws
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "auth@file")
        .unwrap();
    assert_eq!(auth["status"], "enabled");
    assert_eq!(auth["usedBy"][0], "private@file", "used through the chain");
}
