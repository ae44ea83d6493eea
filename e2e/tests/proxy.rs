//! The north-south proxy over real loopback sockets.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_common::test_util::{Backend, Proto, closed_port, eventually, get, h2c, http1, metric, raw_exchange};
use berth_e2e::{service, start};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;

fn one_route(rule: &str, urls: &[String]) -> String {
    format!(
        "http:\n  routers:\n    app:\n      rule: \"{rule}\"\n      service: app\n  services:\n{}",
        service("app", urls, "")
    )
}

#[tokio::test]
async fn routes_by_host_and_sets_forwarded_headers() {
    let b = Backend::start("b1", Proto::Http1).await;
    let gw = start(&one_route("Host(`app.test`)", &[b.url()]), &[]).await;
    let req = Request::builder()
        .uri("/hello?x=1")
        .header("host", "App.Test:8080")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-berth-client-id", "spiffe://evil/forged")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = http1(gw.web(), req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.starts_with("backend=b1\nGET /hello?x=1"), "{}", r.body);
    // Hop-by-hop headers of the response (named by its Connection header) are dropped.
    assert!(r.headers.get("x-hop").is_none());
    assert_eq!(r.headers.get("x-backend").unwrap(), "b1");

    let seen = &b.requests()[0];
    let h = &seen.headers;
    assert_eq!(h.get("host").unwrap(), "App.Test:8080", "Host is kept by default");
    assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1", "untrusted XFF replaced");
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(h.get("x-forwarded-host").unwrap(), "App.Test:8080");
    assert_eq!(h.get("x-real-ip").unwrap(), "127.0.0.1");
    assert!(h.get("x-private").is_none(), "Connection-named header removed");
    assert!(h.get("keep-alive").is_none());
    assert!(
        h.get("x-berth-client-id").is_none(),
        "identity header never passes the gateway"
    );

    // No router: Traefik's 404.
    let r = http1(gw.web(), get("other.test", "/")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, "404 page not found\n");
}

#[tokio::test]
async fn pass_host_header_false_sends_the_server_host() {
    let b = Backend::start("b1", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    app: {{ rule: \"PathPrefix(`/`)\", service: app }}\n  services:\n{}",
        service("app", &[b.url()], "        passHostHeader: false\n")
    );
    let gw = start(&yaml, &[]).await;
    let r = http1(gw.web(), get("public.test", "/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        b.requests()[0].headers.get("host").unwrap().to_str().unwrap(),
        b.addr.to_string()
    );
}

#[tokio::test]
async fn matchers_and_priorities_over_sockets() {
    let (a, b, c, d) = (
        Backend::start("a", Proto::Http1).await,
        Backend::start("b", Proto::Http1).await,
        Backend::start("c", Proto::Http1).await,
        Backend::start("d", Proto::Http1).await,
    );
    let yaml = format!(
        r#"http:
  routers:
    api: {{ rule: "Host(`x.test`) && PathPrefix(`/api`) && Method(`POST`)", service: a }}
    hdr: {{ rule: "Host(`x.test`) && (Header(`X-Canary`, `1`) || Query(`canary`, `yes`))", service: b }}
    ip: {{ rule: "ClientIP(`127.0.0.0/8`) && PathRegexp(`^/ip/[0-9]+$`)", service: c }}
    notlocal: {{ rule: "!ClientIP(`127.0.0.0/8`) && PathPrefix(`/ip`)", service: a, priority: 1000 }}
    rx: {{ rule: "HostRegexp(`^[a-z]+\\.rx\\.test$`) && HeaderRegexp(`User-Agent`, `^curl/`)", service: d }}
  services:
{}{}{}{}"#,
        service("a", &[a.url()], ""),
        service("b", &[b.url()], ""),
        service("c", &[c.url()], ""),
        service("d", &[d.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let req = |method: &str, host: &str, path: &str, hdrs: &[(&str, &str)]| {
        let mut r = Request::builder().method(method).uri(path).header("host", host);
        for (k, v) in hdrs {
            r = r.header(*k, *v);
        }
        r.body(Full::new(Bytes::new())).unwrap()
    };
    let who = |r: &berth_common::test_util::Reply| r.headers.get("x-backend").map(|v| v.to_str().unwrap().to_string());
    let r = http1(gw.web(), req("POST", "x.test", "/api/v1", &[])).await;
    assert_eq!(who(&r).as_deref(), Some("a"));
    let r = http1(gw.web(), req("GET", "x.test", "/api/v1", &[])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = http1(gw.web(), req("GET", "x.test", "/", &[("x-canary", "1")])).await;
    assert_eq!(who(&r).as_deref(), Some("b"));
    let r = http1(gw.web(), req("GET", "x.test", "/?canary=yes", &[])).await;
    assert_eq!(who(&r).as_deref(), Some("b"));
    let r = http1(gw.web(), req("GET", "x.test", "/?canary=no", &[])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = http1(gw.web(), req("GET", "any.test", "/ip/42", &[])).await;
    assert_eq!(
        who(&r).as_deref(),
        Some("c"),
        "ClientIP is the TCP peer; negated router skipped"
    );
    let r = http1(
        gw.web(),
        req("GET", "any.test", "/ip/42", &[("x-forwarded-for", "8.8.8.8")]),
    )
    .await;
    assert_eq!(who(&r).as_deref(), Some("c"), "X-Forwarded-For never changes ClientIP");
    let r = http1(gw.web(), req("GET", "foo.rx.test", "/", &[("user-agent", "curl/8")])).await;
    assert_eq!(who(&r).as_deref(), Some("d"));
    let r = http1(gw.web(), req("GET", "foo.rx.test", "/", &[("user-agent", "wget")])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn http2_both_sides() {
    let h1 = Backend::start("h1", Proto::Http1).await;
    let h2 = Backend::start("h2", Proto::H2c).await;
    let yaml = format!(
        "http:\n  routers:\n    one: {{ rule: \"Host(`one.test`)\", service: one }}\n    two: {{ rule: \"Host(`two.test`)\", service: two }}\n  services:\n{}{}",
        service("one", &[h1.url()], ""),
        service("two", &[format!("h2c://{}", h2.addr)], "")
    );
    let gw = start(&yaml, &[]).await;
    // h2c client -> HTTP/1.1 upstream.
    let req = Request::builder()
        .uri(format!("http://one.test:{}/x", gw.web().port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = h2c(gw.web(), req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(h1.requests()[0].version, Version::HTTP_11);
    assert_eq!(
        h1.requests()[0].headers.get("x-forwarded-host").unwrap(),
        &format!("one.test:{}", gw.web().port())
    );
    // HTTP/1.1 client -> h2c upstream.
    let r = http1(gw.web(), get("two.test", "/y")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(h2.requests()[0].version, Version::HTTP_2);
    // h2c both sides, with a POST body streamed through.
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://two.test:{}/echo", gw.web().port()))
        .body(Full::new(Bytes::from(vec![b'z'; 100_000])))
        .unwrap();
    let r = h2c(gw.web(), req).await;
    assert_eq!(r.body.len(), 100_000);
}

#[tokio::test]
async fn websocket_upgrade_passes_bytes_both_ways() {
    let b = Backend::start("ws", Proto::Http1).await;
    let gw = start(&one_route("Host(`ws.test`)", &[b.url()]), &[]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.web()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let seen = &b.requests()[0];
    assert_eq!(seen.headers.get("upgrade").unwrap(), "websocket");
    for msg in [&b"ping-1"[..], b"second message"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
}

#[tokio::test]
async fn upstream_down_get_retried_post_502() {
    let good = Backend::start("good", Proto::Http1).await;
    let dead = closed_port().await;
    let gw = start(
        &one_route("PathPrefix(`/`)", &[format!("http://{dead}"), good.url()]),
        &["--log-format", "json"],
    )
    .await;
    // Every GET succeeds: a refused connection is retried on the other endpoint.
    for _ in 0..10 {
        let r = http1(gw.web(), get("x", "/")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // The dead endpoint is ejected and shown DOWN.
    let services = gw.admin_json("/api/http/services").await;
    assert_eq!(services[0]["serverStatus"][format!("http://{dead}")], "DOWN");
    assert_eq!(services[0]["serverStatus"][good.url()], "UP");

    // A POST with a body is never resent: with only the dead endpoint it is a 502.
    let only_dead = start(&one_route("PathPrefix(`/`)", &[format!("http://{dead}")]), &[]).await;
    let req = Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "x")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let r = http1(only_dead.web(), req).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers.get("x-berth-error").unwrap(), "connect");
    // And once ejected, the service has no healthy endpoint: 503.
    let r = http1(only_dead.web(), get("x", "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let metrics = berth_common::test_util::http1(gw.admin(), get("a", "/metrics"))
        .await
        .body;
    assert!(
        metrics.contains("berth_upstream_retries_total{service=\"app@file\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn post_is_not_retried_even_with_a_healthy_peer() {
    let good = Backend::start("good", Proto::Http1).await;
    let dead = closed_port().await;
    let gw = start(
        &one_route("PathPrefix(`/`)", &[format!("http://{dead}"), good.url()]),
        &[],
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "x")
            .body(Full::new(Bytes::from_static(b"p")))
            .unwrap();
        codes.push(http1(gw.web(), req).await.status);
    }
    // A POST that met the dead endpoint got a 502, never a retry on the healthy one;
    // ejection keeps such POSTs rare (one per back-off period).
    let failed = codes.iter().filter(|c| **c == StatusCode::BAD_GATEWAY).count();
    assert!(
        codes
            .iter()
            .all(|c| *c == StatusCode::OK || *c == StatusCode::BAD_GATEWAY),
        "{codes:?}"
    );
    assert!(failed <= 3, "{codes:?}");
    assert_eq!(good.request_count(), 20 - failed, "no failed POST was resent");
}

#[tokio::test]
async fn response_timeout_is_504_and_ejects() {
    let slow = Backend::start("slow", Proto::Http1).await;
    let gw = start(
        &one_route("PathPrefix(`/`)", &[slow.url()]),
        &["--upstream-response-timeout", "200ms"],
    )
    .await;
    let r = http1(gw.web(), get("x", "/slow?ms=2000")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn oversized_headers_get_431_and_bodies_413() {
    let b = Backend::start("b", Proto::Http1).await;
    let gw = start(&one_route("PathPrefix(`/`)", &[b.url()]), &["--max-body-bytes", "1000"]).await;
    let big = "a".repeat(40_000);
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let reply = raw_exchange(gw.web(), raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    // Declared too large: refused before reading.
    let req = Request::builder()
        .method("PUT")
        .uri("/echo")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![0u8; 5000])))
        .unwrap();
    assert_eq!(http1(gw.web(), req).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked and too large: cut off mid-stream.
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"3e8\r\n");
        raw.extend_from_slice(&[b'q'; 1000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let reply = raw_exchange(gw.web(), &raw, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:.200}");
    assert!(b.requests().iter().all(|r| r.body.len() <= 1000));
}

#[tokio::test]
async fn smuggling_attempts_never_reach_the_upstream() {
    let b = Backend::start("b", Proto::Http1).await;
    let gw = start(&one_route("PathPrefix(`/`)", &[b.url()]), &[]).await;
    let wait = Duration::from_secs(3);

    // CL.TE: both headers. Refused, connection closed, nothing forwarded.
    let reply = raw_exchange(
        gw.web(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        wait,
    )
    .await;
    // Either refused, or handled as RFC 9112 6.3 allows: Transfer-Encoding wins and the
    // connection is closed after the response, so the tail is never read as a request.
    let lower = reply.to_ascii_lowercase();
    assert!(
        reply.starts_with("HTTP/1.1 400") || (reply.starts_with("HTTP/1.1 200") && lower.contains("connection: close")),
        "{reply}"
    );
    let responses = reply.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count();
    assert_eq!(responses, 1, "no second response: {reply}");
    let forwarded_cl_te = b.request_count();
    if forwarded_cl_te == 1 {
        let seen = &b.requests()[0];
        assert!(seen.body.is_empty(), "the chunked framing won: {:?}", seen.body);
        assert!(seen.headers.get("content-length").is_none_or(|v| v == "0"));
    }

    // Two different Content-Length values.
    let reply = raw_exchange(
        gw.web(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\nhello",
        wait,
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    // Obfuscated Transfer-Encoding.
    let reply = raw_exchange(
        gw.web(),
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        wait,
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 501"),
        "{reply}"
    );

    assert!(
        b.requests().iter().all(|r| r.uri != "/smuggled"),
        "a smuggled request reached the upstream"
    );
    assert_eq!(b.request_count(), forwarded_cl_te, "{:?}", b.requests());
}

#[tokio::test]
async fn bad_chunk_aborts_the_upstream_request_and_its_connection() {
    let b = Backend::start("b", Proto::Http1).await;
    let gw = start(&one_route("PathPrefix(`/`)", &[b.url()]), &[]).await;
    // Warm a pooled upstream connection.
    assert_eq!(http1(gw.web(), get("x", "/")).await.status, StatusCode::OK);
    let before = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    let reply = raw_exchange(
        gw.web(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(!reply.contains("hello"), "the partial body was not echoed: {reply}");
    assert!(b.requests().iter().all(|r| r.uri != "/smuggled"));
    assert_eq!(b.request_count(), 1, "only the warm-up request completed upstream");
    // The next request works and uses a fresh upstream connection: the aborted one was not reused.
    assert_eq!(http1(gw.web(), get("x", "/")).await.status, StatusCode::OK);
    let after = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        after > before,
        "aborted upstream connection was reused ({before} -> {after})"
    );
}

#[tokio::test]
async fn broken_file_edit_keeps_old_routes() {
    let b = Backend::start("b", Proto::Http1).await;
    let gw = start(&one_route("Host(`old.test`)", &[b.url()]), &[]).await;
    assert_eq!(http1(gw.web(), get("old.test", "/")).await.status, StatusCode::OK);
    std::fs::write(&gw.dynamic, "http:\n  routers: [ this is not yaml\n").unwrap();
    let web = gw.web();
    let reported = eventually(Duration::from_secs(5), || async {
        let o = gw.admin_json("/api/overview").await;
        o["providers"][0]["lastError"].is_string()
    })
    .await;
    assert!(reported, "the broken edit is reported in /api/overview");
    assert_eq!(
        http1(web, get("old.test", "/")).await.status,
        StatusCode::OK,
        "old routes still served"
    );
    let diags = gw.admin_json("/api/diagnostics").await;
    assert!(diags.to_string().contains("previous configuration is kept"), "{diags}");
    // A good edit takes over.
    std::fs::write(&gw.dynamic, one_route("Host(`new.test`)", &[b.url()])).unwrap();
    let switched = eventually(Duration::from_secs(5), || async {
        http1(web, get("new.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(switched);
    assert_eq!(http1(web, get("old.test", "/")).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrr_spreads_by_weight() {
    let a = Backend::start("a", Proto::Http1).await;
    let b = Backend::start("b", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    r: {{ rule: \"PathPrefix(`/`)\", service: s }}\n  services:\n    s:\n      loadBalancer:\n        strategy: wrr\n        servers:\n          - {{ url: \"{}\", weight: 3 }}\n          - {{ url: \"{}\", weight: 1 }}\n",
        a.url(),
        b.url()
    );
    let gw = start(&yaml, &[]).await;
    for _ in 0..40 {
        assert_eq!(http1(gw.web(), get("x", "/")).await.status, StatusCode::OK);
    }
    assert_eq!((a.request_count(), b.request_count()), (30, 10));
}

#[tokio::test]
async fn admin_api_shapes_and_fail_closed_middleware() {
    let b = Backend::start("b", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    app: {{ rule: \"Host(`a.test`)\", service: app, entryPoints: [web] }}\n    guarded: {{ rule: \"Host(`g.test`)\", service: app, middlewares: [auth] }}\n  middlewares:\n    auth: {{ plugin: {{ demo: {{ header: X-Demo }} }} }}\n  services:\n{}",
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let routers = gw.admin_json("/api/http/routers").await;
    let app = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "app@file")
        .unwrap();
    assert_eq!(app["provider"], "file");
    assert_eq!(app["status"], "enabled");
    assert_eq!(app["rule"], "Host(`a.test`)");
    assert_eq!(app["service"], "app");
    assert_eq!(app["entryPoints"][0], "web");
    let guarded = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "guarded@file")
        .unwrap();
    assert_eq!(guarded["status"], "disabled");
    assert!(guarded["error"][0].as_str().unwrap().contains("fail closed"));
    // Fail closed: the guarded host is not served at all.
    assert_eq!(http1(gw.web(), get("g.test", "/")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(b.request_count(), 0);
    let services = gw.admin_json("/api/http/services").await;
    assert_eq!(services[0]["loadBalancer"]["servers"][0]["url"], b.url());
    let mws = gw.admin_json("/api/http/middlewares").await;
    assert_eq!(mws[0]["name"], "auth@file");
    assert_eq!(mws[0]["usedBy"][0], "guarded@file");
    let overview = gw.admin_json("/api/overview").await;
    assert_eq!(overview["http"]["routers"]["total"], 2);
    assert_eq!(overview["http"]["routers"]["errors"], 1);
    let r = http1(gw.admin(), get("a", "/readyz")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = http1(gw.admin(), get("a", "/")).await;
    assert!(r.body.contains("app@file"), "{}", r.body);
}

#[tokio::test]
async fn shutdown_turns_readiness_off_then_drains() {
    let b = Backend::start("b", Proto::Http1).await;
    let gw = start(
        &one_route("PathPrefix(`/`)", &[b.url()]),
        &["--shutdown-delay", "700ms", "--ping", "web"],
    )
    .await;
    let (web, admin) = (gw.web(), gw.admin());
    assert_eq!(http1(web, get("x", "/ping")).await.status, StatusCode::OK);
    // A slow request in flight when the shutdown starts.
    let inflight = tokio::spawn(async move { http1(web, get("x", "/slow?ms=1200")).await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.gw.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        http1(admin, get("a", "/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let ping = http1(web, get("x", "/ping")).await;
    assert_eq!(ping.status, StatusCode::SERVICE_UNAVAILABLE);
    // Still accepting and serving during the delay, asking clients to reconnect.
    let r = http1(web, get("x", "/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("connection").unwrap(), "close");
    let gw = gw.gw;
    let done = tokio::time::timeout(Duration::from_secs(5), gw.wait()).await;
    assert!(done.is_ok(), "drained and stopped");
    assert_eq!(
        inflight.await.unwrap(),
        StatusCode::OK,
        "the in-flight request finished"
    );
    assert!(tokio::net::TcpStream::connect(web).await.is_err(), "listener closed");
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b", Proto::Http1).await;
    let gw = start(
        &one_route("PathPrefix(`/`)", &[b.url()]),
        &["--header-read-timeout", "300ms", "--idle-timeout", "400ms"],
    )
    .await;
    // Slowloris: a head that never ends is cut off after the header read timeout.
    let mut s = tokio::net::TcpStream::connect(gw.web()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection closed by the gateway");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(b.request_count(), 0);

    // Idle keep-alive connection: closed after the idle timeout.
    let mut s = tokio::net::TcpStream::connect(gw.web()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "idle connection closed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back() {
    let a = Backend::start("a", Proto::Http1).await;
    let b = Backend::start("b", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    r: {{ rule: \"PathPrefix(`/`)\", service: s }}\n  services:\n    s:\n      loadBalancer:\n        healthCheck: {{ path: /health, interval: 100ms, timeout: 1s }}\n        servers:\n          - url: \"{}\"\n          - url: \"{}\"\n",
        a.url(),
        b.url()
    );
    let gw = start(&yaml, &[]).await;
    let status = |gw: &berth_e2e::TestGateway, url: String| {
        let admin = gw.admin();
        async move {
            let r = http1(admin, get("a", "/api/http/services")).await;
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            v[0]["serverStatus"][url].as_str().unwrap_or_default().to_string()
        }
    };
    // a's /health turns 503: it goes DOWN and gets no traffic; b serves everything.
    a.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            status(&gw, a.url()).await == "DOWN"
        })
        .await
    );
    let before = a.requests().iter().filter(|r| r.uri != "/health").count();
    for _ in 0..20 {
        let r = http1(gw.web(), get("x", "/")).await;
        assert_eq!(r.headers["x-backend"], "b");
    }
    assert_eq!(a.requests().iter().filter(|r| r.uri != "/health").count(), before);
    // It recovers when the check passes again.
    a.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || async { status(&gw, a.url()).await == "UP" }).await);
    assert_eq!(status(&gw, b.url()).await, "UP");
    assert!(
        a.requests().iter().any(|r| r.uri == "/health"),
        "the check requested the configured path"
    );
}

/// A check's answer is read (and dropped), so its keep-alive connection serves the next
/// check: one connection for every check, not one each.
#[tokio::test]
async fn health_checks_keep_their_connection_alive() {
    let b = Backend::start("b", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    r: {{ rule: \"PathPrefix(`/`)\", service: s }}\n  services:\n    s:\n      loadBalancer:\n        healthCheck: {{ path: /health, interval: 1s, timeout: 1s }}\n        servers:\n          - url: \"{}\"\n",
        b.url()
    );
    let _gw = start(&yaml, &[]).await;
    let checks = || b.requests().iter().filter(|r| r.uri == "/health").count();
    assert!(
        eventually(Duration::from_secs(10), || async { checks() >= 4 }).await,
        "{} checks",
        checks()
    );
    let opened = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened <= 2, "{} checks opened {opened} connections", checks());
}

/// Found by the `http_front` fuzz target: a client that sends its request and shuts down
/// its side of the connection (HTTP/1.0 tools, `nc -N`) got no answer at all.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b", Proto::Http1).await;
    let gw = start(&one_route("PathPrefix(`/`)", &[b.url()]), &[]).await;
    for req in [
        &b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /half HTTP/1.0\r\nHost: x\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.web()).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the gateway closes after answering")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
            "{text:.300}"
        );
    }
    assert_eq!(b.request_count(), 2);
    // An empty connection, closed at once, gets nothing and costs nothing.
    let s = tokio::net::TcpStream::connect(gw.web()).await.unwrap();
    drop(s);
    let r = http1(gw.web(), get("x", "/after")).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Traefik v2 rules beside v3 ones on the same requests: `ruleSyntax: v2` per router, and
/// the gateway's default syntax given with Traefik's own flag.
#[tokio::test]
async fn rule_syntax_v2_beside_v3_on_the_same_requests() {
    let v2 = Backend::start("v2", Proto::Http1).await;
    let v3 = Backend::start("v3", Proto::Http1).await;
    // The same routes, once in each syntax, on two pairs of hosts.
    let yaml = format!(
        "http:\n  routers:\n    old:\n      rule: \"Host(`a.test`, `b.test`) && Path(`/u/{{id:[0-9]+}}`)\"\n      ruleSyntax: v2\n      service: v2\n    new:\n      rule: \"(Host(`x.test`) || Host(`y.test`)) && PathRegexp(`^/u/[0-9]+$`)\"\n      service: v3\n    unmarked:\n      rule: \"Host(`c.test`, `d.test`)\"\n      service: v2\n  services:\n{}{}",
        service("v2", &[v2.url()], ""),
        service("v3", &[v3.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let ask = |host: &'static str, path: &'static str| {
        let addr = gw.web();
        async move {
            let r = http1(addr, get(host, path)).await;
            (r.status, r.body.lines().next().unwrap_or_default().to_string())
        }
    };
    for (path, served) in [
        ("/u/42", true),
        ("/u/0", true),
        ("/u/4x", false),
        ("/u/42/", false),
        ("/u", false),
    ] {
        for (hosts, backend) in [
            (["a.test", "B.TEST:80"], "backend=v2"),
            (["x.test", "Y.test:80"], "backend=v3"),
        ] {
            for host in hosts {
                let (status, first) = ask(host, path).await;
                if served {
                    assert_eq!((status, first.as_str()), (StatusCode::OK, backend), "{host}{path}");
                } else {
                    assert_eq!(status, StatusCode::NOT_FOUND, "{host}{path}");
                }
            }
        }
    }
    // A v2 rule not marked v2 is not served, and the API says how to opt in.
    assert_eq!(ask("c.test", "/").await.0, StatusCode::NOT_FOUND);
    let routers = gw.admin_json("/api/http/routers").await;
    let unmarked = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "unmarked@file")
        .unwrap()
        .clone();
    assert_eq!(unmarked["status"], "disabled", "{unmarked}");
    assert!(unmarked.to_string().contains("ruleSyntax: v2"), "{unmarked}");

    // With Traefik's `--core.defaultRuleSyntax=v2`, the unmarked router is served too.
    let gw2 = start(&yaml, &["--core.defaultRuleSyntax=v2"]).await;
    let r = http1(gw2.web(), get("d.test", "/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.starts_with("backend=v2"), "{}", r.body);
}

/// Keep-alive to upstreams: 200 requests one after another, each on its own client
/// connection, open one upstream connection, and `/metrics` says so.
#[tokio::test]
async fn upstream_connections_are_reused_and_counted() {
    let b = Backend::start("b1", Proto::Http1).await;
    let gw = start(&one_route("PathPrefix(`/`)", &[b.url()]), &[]).await;
    let opened = |metrics: &str| metric(metrics, "berth_upstream_connections_opened_total{pool=\"http\"}");
    assert_eq!(opened(&http1(gw.admin(), get("admin", "/metrics")).await.body), 0);
    for i in 0..200 {
        let r = http1(gw.web(), get("app.test", &format!("/{i}"))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(b.requests().len(), 200);
    let n = opened(&http1(gw.admin(), get("admin", "/metrics")).await.body);
    assert!(
        (1..=2).contains(&n),
        "200 sequential requests opened {n} upstream connections"
    );
}
