//! Middlewares through the gateway over real sockets, configured in Traefik's file format
//! (labels decode to the same configuration): rewrites reach the backend, redirects and
//! refusals never do, chains run in order, and a broken or unimplemented middleware keeps
//! its routers from being served.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use berth_common::test_util::{Backend, Proto, get, http1};
use berth_e2e::{service, start};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

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
    limit: {{ plugin: {{ demo: {{ header: X-Demo }} }} }}
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

#[tokio::test]
async fn rate_limit_in_flight_and_retry() {
    let b = Backend::start("app", Proto::Http1).await;
    let late = berth_common::test_util::closed_port().await;
    let yaml = |extra_router: &str| {
        format!(
            r#"http:
  routers:
    limited: {{ rule: "Host(`rl.test`)", service: app, middlewares: [per-client] }}
    single: {{ rule: "Host(`if.test`)", service: app, middlewares: [one-at-a-time] }}
    patient: {{ rule: "Host(`rt.test`)", service: late, middlewares: [again] }}
    impatient: {{ rule: "Host(`nr.test`)", service: late }}
{extra_router}  middlewares:
    per-client: {{ rateLimit: {{ average: 2, period: 1m, burst: 2 }} }}
    one-at-a-time: {{ inFlightReq: {{ amount: 1 }} }}
    again: {{ retry: {{ attempts: 6, initialInterval: 100ms }} }}
  services:
{}{}"#,
            service("app", &[b.url()], ""),
            service("late", &[format!("http://{late}")], "")
        )
    };
    let gw = start(&yaml(""), &[]).await;

    // rateLimit: the burst passes, then 429 with Retry-After; the buckets survive a
    // configuration reload that leaves this middleware unchanged.
    for _ in 0..2 {
        assert_eq!(http1(gw.web(), get("rl.test", "/")).await.status, StatusCode::OK);
    }
    std::fs::write(
        &gw.dynamic,
        yaml("    extra: { rule: \"Host(`x.test`)\", service: app }\n"),
    )
    .unwrap();
    let reloaded = berth_common::test_util::eventually(std::time::Duration::from_secs(5), || async {
        http1(gw.web(), get("x.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(reloaded);
    let r = http1(gw.web(), get("rl.test", "/")).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the bucket was kept across the reload"
    );
    assert!(r.headers.contains_key("retry-after"));

    // inFlightReq: one slow request in flight, a second one is refused; once the first
    // has been answered, another may start.
    let web = gw.web();
    let slow = tokio::spawn(async move { http1(web, get("if.test", "/slow?ms=600")).await.status });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        http1(gw.web(), get("if.test", "/")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(http1(gw.web(), get("if.test", "/")).await.status, StatusCode::OK);

    // retry: the only server comes up after 400 ms. Without the middleware the request
    // fails at once; with it (6 attempts, 100 ms doubling) it succeeds.
    assert_eq!(
        http1(gw.web(), get("nr.test", "/")).await.status,
        StatusCode::BAD_GATEWAY
    );
    let started = std::time::Instant::now();
    let up = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        Backend::start_at("late", Proto::Http1, late).await
    });
    let r = http1(gw.web(), get("rt.test", "/")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    drop(up);
}

#[tokio::test]
async fn compress_circuit_breaker_trusted_hops_hashes_and_retry() {
    use tokio::io::AsyncReadExt;

    let b = Backend::start("app", Proto::Http1).await;
    let dead = berth_common::test_util::closed_port().await;
    let bcrypt_hash = bcrypt::hash("hunter2", 4).unwrap();
    let yaml = format!(
        r#"http:
  routers:
    zipped: {{ rule: "Host(`z.test`)", service: app, middlewares: [zip] }}
    fragile: {{ rule: "Host(`cb.test`)", service: app, middlewares: [breaker] }}
    behind-lb: {{ rule: "Host(`lb.test`)", service: app, middlewares: [via-lb] }}
    hashes: {{ rule: "Host(`h.test`)", service: app, middlewares: [users] }}
    port: {{ rule: "Host(`port.test`)", service: app, middlewares: [https-8443] }}
    healing: {{ rule: "Host(`heal.test`)", service: mixed, middlewares: [again] }}
  middlewares:
    zip: {{ compress: {{ minResponseBodyBytes: 1024 }} }}
    breaker:
      circuitBreaker:
        expression: "ResponseCodeRatio(500, 600, 0, 600) > 0.5"
        checkPeriod: 10ms
        fallbackDuration: 400ms
        recoveryDuration: 100ms
    via-lb: {{ ipAllowList: {{ sourceRange: ["10.0.0.0/8"], ipStrategy: {{ depth: 1 }} }} }}
    users:
      basicAuth:
        users: ["sha:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=", "bc:{bcrypt_hash}"]
    https-8443: {{ redirectScheme: {{ scheme: https, port: "8443" }} }}
    again: {{ retry: {{ attempts: 3, initialInterval: 10ms }} }}
  services:
{}{}"#,
        service("app", &[b.url()], ""),
        service("mixed", &[format!("http://{dead}"), b.url()], "")
    );
    // The test client stands for a load balancer the gateway trusts.
    let gw = start(&yaml, &["--forwarded-trusted-ip", "127.0.0.1"]).await;

    // compress: a 5 KB body is gzip-encoded when asked, and decodes to the original; a
    // small one is left alone.
    let payload = "berth ".repeat(1000);
    let req = Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", "z.test")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let r = http1(gw.web(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert!(r.headers.get("content-length").is_none_or(|l| l != "6000"));
    let raw = reqwest_like_bytes(gw.web(), &payload).await;
    let mut decoded = String::new();
    async_compression::tokio::bufread::GzipDecoder::new(&raw[..])
        .read_to_string(&mut decoded)
        .await
        .unwrap();
    assert_eq!(decoded, payload);
    let small = http1(gw.web(), with_header("z.test", "/", "accept-encoding", "gzip")).await;
    assert!(
        small.headers.get("content-encoding").is_none(),
        "below minResponseBodyBytes"
    );

    // circuitBreaker: errors trip it (the backend is no longer called), then it recovers.
    for _ in 0..5 {
        assert_eq!(
            http1(gw.web(), get("cb.test", "/status/500")).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let before = b.request_count();
    let r = http1(gw.web(), get("cb.test", "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "tripped: {}", r.body);
    assert_eq!(b.request_count(), before, "the fallback answers, not the backend");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        http1(gw.web(), get("cb.test", "/")).await.status,
        StatusCode::OK,
        "recovered"
    );

    // ipAllowList through one trusted proxy: the last X-Forwarded-For hop decides.
    let through = |xff: &'static str| with_header("lb.test", "/", "x-forwarded-for", xff);
    assert_eq!(
        http1(gw.web(), through("1.2.3.4, 10.1.1.1")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        http1(gw.web(), through("10.1.1.1, 1.2.3.4")).await.status,
        StatusCode::FORBIDDEN
    );
    // From a peer that is not a trusted proxy, X-Forwarded-For is the client's own word:
    // gone before the allow-list looks, so depth 1 finds no address and refuses.
    let untrusted = start(&yaml, &[]).await;
    assert_eq!(
        http1(untrusted.web(), through("1.2.3.4, 10.1.1.1")).await.status,
        StatusCode::FORBIDDEN
    );

    // basicAuth with the SHA1 and bcrypt hash kinds (apr1 above), and a wrong password.
    let basic = |c: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(c));
    for (cred, want) in [
        ("sha:secret", StatusCode::OK),
        ("bc:hunter2", StatusCode::OK),
        ("bc:hunter3", StatusCode::UNAUTHORIZED),
    ] {
        let r = http1(gw.web(), with_header("h.test", "/", "authorization", &basic(cred))).await;
        assert_eq!(r.status, want, "{cred}");
    }

    // redirectScheme to another port.
    let r = http1(gw.web(), get("port.test", "/a?b")).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "https://port.test:8443/a?b");

    // retry: one server refuses connections; every request lands on the healthy one.
    for _ in 0..6 {
        assert_eq!(http1(gw.web(), get("heal.test", "/")).await.status, StatusCode::OK);
    }
}

/// The raw (still encoded) body of the compressed echo.
async fn reqwest_like_bytes(web: std::net::SocketAddr, payload: &str) -> Vec<u8> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(web).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", "z.test")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::from(payload.to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn a_router_naming_a_missing_middleware_is_not_served_and_reported() {
    let b = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    r: {{ rule: \"Host(`m.test`)\", service: app, middlewares: [nowhere] }}\n  services:\n{}",
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    assert_eq!(http1(gw.web(), get("m.test", "/")).await.status, StatusCode::NOT_FOUND);
    let diags = gw.admin_json("/api/diagnostics").await;
    assert!(
        diags.to_string().contains("middleware `nowhere@file` does not exist"),
        "{diags}"
    );
    assert_eq!(b.request_count(), 0);
}

#[tokio::test]
async fn a_hung_server_times_out_and_a_retry_middleware_sends_the_request_elsewhere() {
    let good = Backend::start("good", Proto::Http1).await;
    let (hung, _task) = berth_common::test_util::black_hole().await;
    // Another one: an endpoint's ejection is shared by every service that lists it.
    let (hung2, _task2) = berth_common::test_util::black_hole().await;
    // Round robin puts the first request of each router on the hung server.
    let yaml = format!(
        r#"http:
  routers:
    patient: {{ rule: "Host(`retry.test`)", service: both, middlewares: [again] }}
    plain: {{ rule: "Host(`plain.test`)", service: hungonly }}
  middlewares:
    again: {{ retry: {{ attempts: 3, initialInterval: 10ms }} }}
  services:
{}{}"#,
        service(
            "both",
            &[format!("http://{hung}"), good.url()],
            "        strategy: wrr\n"
        ),
        service("hungonly", &[format!("http://{hung2}")], "")
    );
    let gw = start(&yaml, &["--upstream-response-timeout", "300ms"]).await;
    for i in 0..4 {
        let t = std::time::Instant::now();
        let r = http1(gw.web(), get("retry.test", &format!("/{i}"))).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
    assert_eq!(good.request_count(), 4, "every request was answered by the good server");
    let m = berth_common::test_util::http1(gw.admin(), get("admin", "/metrics"))
        .await
        .body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("berth_upstream_errors_total{") && l.contains("kind=\"timeout\"")),
        "{m}"
    );
    // Without a retry middleware the timeout is the answer: the request may have reached
    // the app, so it is not sent twice.
    let r = http1(gw.web(), get("plain.test", "/")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
}

#[tokio::test]
async fn errors_replace_caught_answers_with_the_page_service() {
    let app = Backend::start("app", Proto::Http1).await;
    let pages = Backend::start("pages", Proto::Http1).await;
    let down = berth_common::test_util::closed_port().await;
    let yaml = format!(
        r#"http:
  routers:
    site: {{ rule: "Host(`e.test`)", service: app, middlewares: [pages] }}
    locked: {{ rule: "Host(`l.test`)", service: app, middlewares: [pages-401, auth] }}
    gone: {{ rule: "Host(`d.test`)", service: down, middlewares: [pages] }}
    missing: {{ rule: "Host(`m.test`)", service: app, middlewares: [nowhere] }}
  middlewares:
    pages:
      errors:
        status: ["418", "500-599"]
        statusRewrites: {{ "418": 404 }}
        service: pages
        query: "/{{status}}.html?from={{originalStatus}}&url={{url}}"
        errorRequestHeaders: [Accept]
    pages-401: {{ errors: {{ status: ["401"], service: pages, query: /login.html }} }}
    auth: {{ basicAuth: {{ users: ["test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"] }} }}
    nowhere: {{ errors: {{ status: ["500"], service: no-such-service }} }}
  services:
{}{}{}"#,
        service("app", &[app.url()], ""),
        service("pages", &[pages.url()], ""),
        service("down", &[format!("http://{down}")], ""),
    );
    let gw = start(&yaml, &[]).await;

    // A 500 from the app: the client gets 500 with the page, asked by GET with the
    // filled-in query and only the listed request headers.
    let mut req = get("e.test", "/status/500?x=1");
    req.headers_mut().insert("accept", "text/html".parse().unwrap());
    req.headers_mut().insert("cookie", "secret=1".parse().unwrap());
    let r = http1(gw.web(), req).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.headers["x-backend"], "pages", "{}", r.body);
    let asked = pages.requests().pop().unwrap();
    assert_eq!(asked.method, "GET");
    assert_eq!(
        asked.uri,
        "/500.html?from=500&url=http%3A%2F%2Fe.test%2Fstatus%2F500%3Fx%3D1"
    );
    assert_eq!(asked.headers["accept"], "text/html");
    assert!(!asked.headers.contains_key("cookie"));

    // A caught POST: the page is still a bodyless GET (the original's Content-Length
    // would leave the page server waiting for a body that never comes).
    let post = Request::builder()
        .method("POST")
        .uri("/status/500")
        .header("host", "e.test")
        .body(Full::new(Bytes::from_static(b"a body of 17 bytes")))
        .unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), http1(gw.web(), post))
        .await
        .expect("the error page hung");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.headers["x-backend"], "pages");
    let asked = pages.requests().pop().unwrap();
    assert_eq!(asked.method, "GET");
    assert!(asked.body.is_empty() && !asked.headers.contains_key("content-length"));

    // statusRewrites: a 418 is answered 404, the page asked for the rewritten status.
    let r = http1(gw.web(), get("e.test", "/status/418")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(pages.requests().pop().unwrap().uri.starts_with("/404.html?from=418&"));

    // Not listed: the app's own answer.
    let r = http1(gw.web(), get("e.test", "/status/403")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, "status 403");

    // The gateway's own failure (the service's server is down) is caught too.
    let before = pages.request_count();
    let r = http1(gw.web(), get("d.test", "/")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["x-backend"], "pages");
    assert_eq!(pages.request_count(), before + 1);

    // A middleware further in answers (basicAuth's 401): caught by the errors outside it.
    let r = http1(gw.web(), get("l.test", "/")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["x-backend"], "pages");
    assert_eq!(pages.requests().pop().unwrap().uri, "/login.html");

    // A page service that does not exist: the router is not served.
    assert_eq!(http1(gw.web(), get("m.test", "/")).await.status, StatusCode::NOT_FOUND);
    let mws = gw.admin_json("/api/http/middlewares").await;
    let nowhere = mws
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "nowhere@file")
        .unwrap();
    assert!(nowhere["error"].to_string().contains("does not exist"), "{nowhere}");
}

/// curl with `args` (a digest exchange, for one), its stdout and exit status.
async fn curl(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

#[tokio::test]
async fn digest_auth_with_curl() {
    let app = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        r#"http:
  routers:
    d: {{ rule: "Host(`d.test`)", service: app, middlewares: [digest] }}
  middlewares:
    digest:
      digestAuth:
        users: ["test:traefik:a2688e031edb4be6a3797f3882655c05"]
        headerField: X-WebAuth-User
        removeHeader: true
  services:
{}"#,
        service("app", &[app.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let url = format!("http://{}/private?x=1", gw.web());
    let host = "Host: d.test".to_string();

    // curl answers the challenge itself (MD5, qop=auth): the backend sees the user and
    // not the credentials.
    let (ok, out) = curl(vec![
        "--digest".into(),
        "-u".into(),
        "test:test".into(),
        "-H".into(),
        host.clone(),
        "-w".into(),
        "\n%{http_code}".into(),
        url.clone(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(out.ends_with("\n200"), "{out}");
    let seen = app.requests().pop().unwrap();
    assert_eq!(seen.headers["x-webauth-user"], "test");
    assert!(!seen.headers.contains_key("authorization"));

    // A wrong password: 401 with a fresh challenge, the backend not asked.
    let before = app.request_count();
    let (_, out) = curl(vec![
        "--digest".into(),
        "-u".into(),
        "test:wrong".into(),
        "-H".into(),
        host.clone(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        url.clone(),
    ])
    .await;
    assert_eq!(out, "401");
    assert_eq!(app.request_count(), before);

    // The challenge itself, as RFC 7616 clients expect it.
    let r = http1(gw.web(), get("d.test", "/private")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Digest realm=\"traefik\", nonce=\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("qop=\"auth\"") && challenge.contains("algorithm=\"MD5\""),
        "{challenge}"
    );
}

#[tokio::test]
async fn content_type_is_detected_only_where_asked() {
    let app = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        r#"http:
  routers:
    sniffed: {{ rule: "Host(`ct.test`)", service: app, middlewares: [ct] }}
    off: {{ rule: "Host(`off.test`)", service: app, middlewares: [ct-off] }}
    plain: {{ rule: "Host(`plain.test`)", service: app }}
  middlewares:
    ct: {{ contentType: {{}} }}
    ct-off: {{ contentType: {{ autoDetect: false }} }}
  services:
{}"#,
        service("app", &[app.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let post = |host: &str, body: &'static [u8]| {
        Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", host)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    // The backend sends no Content-Type: with the middleware the gateway names it, from
    // the body, and the body arrives whole with its length.
    let r = http1(gw.web(), post("ct.test", b"<html><body>hi</body></html>")).await;
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers["content-length"], "28");
    assert_eq!(r.body, "<html><body>hi</body></html>");
    let r = http1(gw.web(), post("ct.test", b"\x89PNG\x0D\x0A\x1A\x0A....")).await;
    assert_eq!(r.headers["content-type"], "image/png");
    // Without it, or with autoDetect false, nothing is guessed (Traefik's default).
    for host in ["plain.test", "off.test"] {
        let r = http1(gw.web(), post(host, b"<html></html>")).await;
        assert!(!r.headers.contains_key("content-type"), "{host}: {:?}", r.headers);
    }
}

#[tokio::test]
async fn buffering_reads_whole_bodies_within_its_bounds() {
    let app = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        r#"http:
  routers:
    req: {{ rule: "Host(`req.test`)", service: app, middlewares: [small-requests] }}
    resp: {{ rule: "Host(`resp.test`)", service: app, middlewares: [small-responses] }}
    retry: {{ rule: "Host(`retry.test`)", service: app, middlewares: [with-expression] }}
  middlewares:
    small-requests: {{ buffering: {{ maxRequestBodyBytes: 10, memRequestBodyBytes: 5 }} }}
    small-responses: {{ buffering: {{ maxResponseBodyBytes: 10 }} }}
    with-expression: {{ buffering: {{ retryExpression: "(IsNetworkError() || ResponseCode() == 503) && Attempts() < 3" }} }}
  services:
{}"#,
        service("app", &[app.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let post = |host: &str, body: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", host)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let r = http1(gw.web(), post("req.test", "short")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "short");
    let before = app.request_count();
    let r = http1(gw.web(), post("req.test", "far more than ten bytes")).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        app.request_count(),
        before,
        "an oversized body never reaches the backend"
    );

    // The response is read whole: sent with its length, or 500 when over the bound.
    let r = http1(gw.web(), post("resp.test", "tiny")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-length"], "4");
    let r = http1(gw.web(), get("resp.test", "/")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);

    // retryExpression: the buffered request, body and all, goes again while the answer
    // matches, here twice more (Attempts() counts from 1).
    let before = app.request_count();
    let busy = Request::builder()
        .method("POST")
        .uri("/status/503")
        .header("host", "retry.test")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let r = http1(gw.web(), busy).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let seen = app.requests();
    assert_eq!(seen.len() - before, 3, "three attempts");
    assert!(seen[before..].iter().all(|s| s.body == "payload" && s.method == "POST"));
    // An answer the expression does not match is not sent again.
    let before = app.request_count();
    let r = http1(gw.web(), post("retry.test", "once")).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "once"));
    assert_eq!(app.request_count() - before, 1);
}

/// A gRPC-Web call in one frame: flag 0, length, the message.
fn grpc_web_frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// `grpcWeb` in front of a real gRPC server (tonic, h2c): a browser's gRPC-Web call, in
/// binary (sent by curl) and in text (base64), becomes a gRPC call and its answer comes
/// back as gRPC-Web, trailers as the last frame; a CORS preflight naming `x-grpc-web` is
/// answered for an allowed origin only; a plain request passes untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_reach_a_grpc_server() {
    let (addr, _g) = berth_examples::greeter::start("127.0.0.1:0".parse().unwrap(), "g1")
        .await
        .unwrap();
    let backend = Backend::start("plain", Proto::Http1).await;
    let yaml = format!(
        r#"http:
  routers:
    web: {{ rule: "Host(`grpc.test`)", service: greeter, middlewares: [gw] }}
    plain: {{ rule: "Host(`plain.test`)", service: plain, middlewares: [gw] }}
  middlewares:
    gw: {{ grpcWeb: {{ allowOrigins: ["https://app.example"] }} }}
  services:
    greeter: {{ loadBalancer: {{ servers: [ {{ url: "h2c://{addr}" }} ] }} }}
{plain}"#,
        plain = service("plain", &[backend.url()], ""),
    );
    let gw = start(&yaml, &[]).await;
    // HelloRequest { name: "Ada" } in protobuf: field 1, length 3.
    let call = grpc_web_frame(b"\x0a\x03Ada");
    let path = berth_examples::greeter::SAY_HELLO;

    // Binary, from curl over HTTP/1.1: the reply frame, then the trailer frame.
    let dir = berth_e2e::temp_dir("grpc-web");
    let (req_file, out_file, head_file) = (dir.join("req"), dir.join("out"), dir.join("head"));
    std::fs::write(&req_file, &call).unwrap();
    let url = format!("http://{}{path}", gw.web());
    let (ok, _) = curl(vec![
        "--http1.1".into(),
        "-H".into(),
        "Host: grpc.test".into(),
        "-H".into(),
        "Content-Type: application/grpc-web+proto".into(),
        "-H".into(),
        "X-Grpc-Web: 1".into(),
        "-H".into(),
        "Origin: https://app.example".into(),
        "--data-binary".into(),
        format!("@{}", req_file.display()),
        "-D".into(),
        head_file.display().to_string(),
        "-o".into(),
        out_file.display().to_string(),
        url,
    ])
    .await;
    assert!(ok);
    let head = std::fs::read_to_string(&head_file).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // tonic answers `application/grpc`, which becomes `application/grpc-web`.
    assert!(head.contains("content-type: application/grpc-web\r\n"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-expose-headers:") && head.contains("grpc-status"),
        "{head}"
    );
    let out = std::fs::read(&out_file).unwrap();
    assert_eq!(out[0], 0, "a data frame first: {out:?}");
    let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
    let reply = String::from_utf8_lossy(&out[5..5 + len]).to_string();
    assert!(reply.contains("Hello Ada"), "{reply:?}");
    let trailer = &out[5 + len..];
    assert_eq!(trailer[0], 0x80, "then the trailers: {trailer:?}");
    let block = String::from_utf8_lossy(&trailer[5..]).to_string();
    assert!(block.contains("grpc-status: 0\r\n"), "{block:?}");

    // Text: base64 both ways; a failing call's status in the trailer frame.
    let text = |message: &[u8]| {
        let body = base64::engine::general_purpose::STANDARD.encode(grpc_web_frame(message));
        Request::post(path)
            .header("host", "grpc.test")
            .header("content-type", "application/grpc-web-text")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let r = http1(gw.web(), text(b"\x0a\x03Bob")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/grpc-web-text");
    assert!(
        !r.headers.contains_key("access-control-allow-origin"),
        "no Origin, no CORS"
    );
    let raw = base64::engine::general_purpose::STANDARD.decode(r.body.trim()).unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("Hello Bob"));
    assert!(String::from_utf8_lossy(&raw).contains("grpc-status: 0"));
    // fail_code (field 4) = 5, NOT_FOUND.
    let r = http1(gw.web(), text(b"\x0a\x01x\x20\x05")).await;
    let raw = base64::engine::general_purpose::STANDARD.decode(r.body.trim()).unwrap();
    let shown = String::from_utf8_lossy(&raw).to_string();
    assert!(
        shown.contains("grpc-status: 5") || r.headers.get("grpc-status").is_some_and(|s| s == "5"),
        "{:?} {shown:?}",
        r.headers
    );
    let bad = Request::post(path)
        .header("host", "grpc.test")
        .header("content-type", "application/grpc-web-text")
        .body(Full::new(Bytes::from_static(b"not base64 !!")))
        .unwrap();
    assert_eq!(http1(gw.web(), bad).await.status, StatusCode::BAD_REQUEST);

    // Preflight: answered here, with CORS only for the allowed origin.
    let preflight = |origin: &str| {
        Request::options(path)
            .header("host", "grpc.test")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web,x-user-agent")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = http1(gw.web(), preflight("https://app.example")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(
        r.headers["access-control-allow-headers"],
        "content-type,x-grpc-web,x-user-agent"
    );
    let r = http1(gw.web(), preflight("https://evil.example")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    // Not gRPC-Web: untouched.
    let r = http1(gw.web(), get("plain.test", "/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(backend.request_count(), 1);
}

/// Traefik 3.7's retry options: `status` sends an answer with a listed status again
/// (idempotent requests, or any with `retryNonIdempotentMethod`, the body kept up to
/// `maxRequestBodyBytes`); `disableRetryOnNetworkError` keeps a refused connection from
/// going again.
#[tokio::test]
async fn retry_on_statuses_as_traefik_3_7() {
    let app = Backend::start("app", Proto::Http1).await;
    // Two servers that accept and close at once (a broken connection), counting.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut slammers = Vec::new();
    for _ in 0..2 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        slammers.push(format!("http://{}", l.local_addr().unwrap()));
        let n = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
    }
    let yaml = format!(
        r#"http:
  routers:
    get: {{ rule: "Host(`get.test`)", service: app, middlewares: [on-503] }}
    any: {{ rule: "Host(`any.test`)", service: app, middlewares: [on-503-any] }}
    net: {{ rule: "Host(`net.test`)", service: pair, middlewares: [status-only] }}
    net2: {{ rule: "Host(`net2.test`)", service: pair2, middlewares: [on-503] }}
  middlewares:
    on-503: {{ retry: {{ attempts: 3, status: ["503"] }} }}
    on-503-any: {{ retry: {{ attempts: 3, status: ["500-503"], retryNonIdempotentMethod: true, maxRequestBodyBytes: 16 }} }}
    status-only: {{ retry: {{ attempts: 3, status: ["503"], disableRetryOnNetworkError: true }} }}
  services:
{app}{pair}{pair2}"#,
        app = service("app", &[app.url()], ""),
        pair = service("pair", &slammers, ""),
        pair2 = service("pair2", &slammers, ""),
    );
    let gw = start(&yaml, &[]).await;
    let post = |host: &str, body: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/status/503")
            .header("host", host)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let count = |before: usize| app.request_count() - before;

    // GET: three attempts; POST (not idempotent): one.
    let before = app.request_count();
    assert_eq!(
        http1(gw.web(), get("get.test", "/status/503")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(count(before), 3);
    let before = app.request_count();
    assert_eq!(
        http1(gw.web(), post("get.test", "body")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(count(before), 1, "POST is not retried on its status");
    // An answer not listed is not retried.
    let before = app.request_count();
    assert_eq!(
        http1(gw.web(), get("get.test", "/status/500")).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(count(before), 1);

    // retryNonIdempotentMethod: a POST goes three times, with its body each time; over
    // maxRequestBodyBytes it goes once.
    let before = app.request_count();
    assert_eq!(
        http1(gw.web(), post("any.test", "payload")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let seen = app.requests();
    assert_eq!(seen.len() - before, 3);
    assert!(seen[before..].iter().all(|s| s.body == "payload"), "the body each time");
    let before = app.request_count();
    let r = http1(gw.web(), post("any.test", "more than sixteen bytes")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(count(before), 1, "a body over maxRequestBodyBytes is not retried");

    // disableRetryOnNetworkError: the refused server's 502 is the answer; the other server
    // still answers the requests the balancer gives it.
    let mut statuses = std::collections::BTreeSet::new();
    for _ in 0..6 {
        statuses.insert(http1(gw.web(), get("net.test", "/")).await.status.as_u16());
    }
    assert!(
        statuses.contains(&502),
        "a refused connection is not retried: {statuses:?}"
    );
}
