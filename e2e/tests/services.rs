//! Traefik's service options over real sockets, in its file syntax (labels decode to the
//! same configuration): sticky sessions keep a client on its server and balance the
//! others, and a service whose options cannot be applied is not served.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use berth_common::test_util::{Backend, Proto, eventually, get, http1};
use berth_e2e::start;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

fn with_cookie(host: &str, cookie: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/")
        .header("host", host)
        .header("cookie", cookie)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn sticky_cookie_keeps_a_client_on_its_server_and_balances_the_rest() {
    let backends = [
        Backend::start("a", Proto::Http1).await,
        Backend::start("b", Proto::Http1).await,
        Backend::start("c", Proto::Http1).await,
    ];
    let servers: String = backends
        .iter()
        .map(|b| format!("          - url: \"{}\"\n", b.url()))
        .collect();
    let yaml = format!(
        r#"http:
  routers:
    sticky: {{ rule: "Host(`s.test`)", service: sticky }}
    defaults: {{ rule: "Host(`d.test`)", service: defaults }}
    broken: {{ rule: "Host(`x.test`)", service: broken }}
  services:
    sticky:
      loadBalancer:
        strategy: wrr
        healthCheck: {{ path: /health, interval: 100ms, timeout: 1s }}
        sticky:
          cookie: {{ name: lb, secure: true, httpOnly: true, sameSite: lax, maxAge: 3600 }}
        servers:
{servers}    defaults:
      loadBalancer:
        sticky: {{ cookie: {{}} }}
        servers:
{servers}    broken:
      loadBalancer:
        sticky: {{ cookie: {{ sameSite: sideways }} }}
        servers:
{servers}"#
    );
    let gw = start(&yaml, &[]).await;

    // Clients without the cookie are balanced over every server, and each is given the
    // cookie of the server that answered: its attributes as configured, its value not
    // the server's address.
    let mut seen = HashSet::new();
    let mut cookie_of = std::collections::HashMap::new();
    for _ in 0..6 {
        let r = http1(gw.web(), get("s.test", "/")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let backend = r.headers["x-backend"].to_str().unwrap().to_string();
        let set = r.headers["set-cookie"].to_str().unwrap().to_string();
        let (pair, attrs) = set.split_once("; ").unwrap();
        assert_eq!(attrs, "Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=Lax");
        let value = pair.strip_prefix("lb=").unwrap().to_string();
        for b in &backends {
            assert!(
                !value.contains(&b.addr.port().to_string()),
                "{value} reveals {}",
                b.addr
            );
        }
        assert!(!value.contains("127.0.0.1"), "{value}");
        cookie_of.insert(backend.clone(), value);
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 3, "without the cookie every server gets clients: {seen:?}");

    // With the cookie, every request goes to the same server, and no new cookie is set.
    let value = cookie_of["b"].clone();
    for _ in 0..20 {
        let r = http1(gw.web(), with_cookie("s.test", &format!("other=1; lb={value}"))).await;
        assert_eq!(r.headers["x-backend"], "b");
        assert!(!r.headers.contains_key("set-cookie"), "{:?}", r.headers);
    }

    // A cookie naming no server (forged, or a server that is gone) is balanced as usual
    // and replaced.
    let r = http1(gw.web(), with_cookie("s.test", "lb=0123456789abcdef")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["set-cookie"].to_str().unwrap().starts_with("lb="));

    // The sticky server fails its health check: its clients go elsewhere and are given
    // the new server's cookie; they stay there.
    backends[1].healthy.store(false, Ordering::SeqCst);
    let moved = eventually(Duration::from_secs(5), || async {
        let r = http1(gw.web(), with_cookie("s.test", &format!("lb={value}"))).await;
        r.headers["x-backend"] != "b"
    })
    .await;
    assert!(moved, "the unhealthy sticky server kept its clients");
    let r = http1(gw.web(), with_cookie("s.test", &format!("lb={value}"))).await;
    let now = r.headers["x-backend"].to_str().unwrap().to_string();
    assert_ne!(now, "b");
    let set = r.headers["set-cookie"].to_str().unwrap();
    assert_eq!(set.split(';').next().unwrap(), format!("lb={}", cookie_of[&now]));

    // Defaults: Traefik's generated name (`_` and five hex digits), `Path=/`, nothing else.
    let r = http1(gw.web(), get("d.test", "/")).await;
    let set = r.headers["set-cookie"].to_str().unwrap();
    let (pair, attrs) = set.split_once("; ").unwrap();
    let name = pair.split('=').next().unwrap();
    assert!(
        name.len() == 6 && name.starts_with('_') && name[1..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{set}"
    );
    assert_eq!(attrs, "Path=/");

    // A sticky cookie that cannot be set as written: the service is not served (its
    // router with it), and the admin API says why.
    assert_eq!(http1(gw.web(), get("x.test", "/")).await.status, StatusCode::NOT_FOUND);
    let routers = gw.admin_json("/api/http/routers").await;
    let broken = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "broken@file")
        .unwrap();
    assert_eq!(broken["status"], "disabled");
    let services = gw.admin_json("/api/http/services").await;
    let sticky = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "sticky@file")
        .unwrap();
    assert_eq!(sticky["loadBalancer"]["sticky"]["cookie"]["name"], "lb");
    assert_eq!(sticky["loadBalancer"]["sticky"]["cookie"]["sameSite"], "lax");
    let diags = gw.admin_json("/api/diagnostics").await.to_string();
    assert!(diags.contains("sideways"), "{diags}");
}

#[tokio::test]
async fn weighted_services_share_by_weight_nest_stick_and_skip_what_is_down() {
    let stable = Backend::start("stable", Proto::Http1).await;
    let canary = Backend::start("canary", Proto::Http1).await;
    let other = Backend::start("other", Proto::Http1).await;
    let health = "healthCheck: { path: /health, interval: 100ms, timeout: 1s }";
    let lb = |b: &Backend| {
        format!(
            "      loadBalancer:\n        {health}\n        servers:\n          - url: \"{}\"\n",
            b.url()
        )
    };
    let yaml = format!(
        r#"http:
  routers:
    split: {{ rule: "Host(`w.test`)", service: split }}
    nested: {{ rule: "Host(`n.test`)", service: outer }}
    sticky: {{ rule: "Host(`s.test`)", service: pinned }}
    drained: {{ rule: "Host(`dr.test`)", service: drained }}
    cycle: {{ rule: "Host(`c.test`)", service: loop-a }}
    missing: {{ rule: "Host(`m.test`)", service: gap }}
  services:
    stable:
{stable}    canary:
{canary}    other:
{other}    split:
      weighted:
        healthCheck: {{}}
        services: [{{ name: stable, weight: 3 }}, {{ name: canary, weight: 1 }}]
    outer:
      weighted:
        services: [{{ name: split, weight: 1 }}, {{ name: other, weight: 1 }}]
    pinned:
      weighted:
        sticky: {{ cookie: {{ name: lane }} }}
        services: [{{ name: stable, weight: 1 }}, {{ name: canary, weight: 1 }}]
    drained:
      weighted:
        sticky: {{ cookie: {{ name: lane }} }}
        services: [{{ name: stable, weight: 1 }}, {{ name: canary, weight: 0 }}]
    loop-a: {{ weighted: {{ services: [{{ name: loop-b }}] }} }}
    loop-b: {{ weighted: {{ services: [{{ name: loop-a }}] }} }}
    gap: {{ weighted: {{ services: [{{ name: stable }}, {{ name: nowhere }}] }} }}
"#,
        stable = lb(&stable),
        canary = lb(&canary),
        other = lb(&other),
    );
    let gw = start(&yaml, &[]).await;

    // 3:1, smoothly: every window of four requests has three for stable.
    let mut seen = Vec::new();
    for _ in 0..8 {
        let r = http1(gw.web(), get("w.test", "/")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        seen.push(r.headers["x-backend"].to_str().unwrap().to_string());
    }
    assert_eq!(seen.iter().filter(|b| *b == "canary").count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|b| *b == "stable").count(), 6, "{seen:?}");

    // Nested: half to `other`, half through `split`.
    let mut other_count = 0;
    for _ in 0..8 {
        let r = http1(gw.web(), get("n.test", "/")).await;
        assert_eq!(r.status, StatusCode::OK);
        other_count += usize::from(r.headers["x-backend"] == "other");
    }
    assert_eq!(other_count, 4);

    // Sticky: the cookie names the child service, and keeps the client there.
    let r = http1(gw.web(), get("s.test", "/")).await;
    let first = r.headers["x-backend"].to_str().unwrap().to_string();
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    let pair = set.split(';').next().unwrap().to_string();
    assert!(pair.starts_with("lane="), "{set}");
    for _ in 0..4 {
        let r = http1(gw.web(), with_cookie("s.test", &pair)).await;
        assert_eq!(r.headers["x-backend"].to_str().unwrap(), first);
        assert!(!r.headers.contains_key("set-cookie"));
    }

    // A child drained to weight 0 gets nothing, not even the clients its cookie names.
    let cfg = berth_common::config::StickyCookie {
        name: Some("lane".into()),
        ..Default::default()
    };
    let drained = berth_common::sticky::Sticky::new(&cfg, "drained@file", ["stable@file", "canary@file"]);
    let to_canary = drained.set_cookie(1).unwrap();
    let pair = to_canary.to_str().unwrap().split(';').next().unwrap().to_string();
    for _ in 0..3 {
        let r = http1(gw.web(), with_cookie("dr.test", &pair)).await;
        assert_eq!(r.headers["x-backend"], "stable");
    }

    // With healthCheck, a child with no healthy server gets nothing.
    canary.healthy.store(false, Ordering::SeqCst);
    let only_stable = eventually(Duration::from_secs(5), || async {
        let mut all = true;
        for _ in 0..4 {
            all &= http1(gw.web(), get("w.test", "/")).await.headers["x-backend"] == "stable";
        }
        all
    })
    .await;
    assert!(only_stable, "the canary kept getting requests while down");

    // A cycle or a missing child: the service is disabled and its router not served.
    for host in ["c.test", "m.test"] {
        assert_eq!(
            http1(gw.web(), get(host, "/")).await.status,
            StatusCode::NOT_FOUND,
            "{host}"
        );
    }
    let services = gw.admin_json("/api/http/services").await;
    let find = |name: &str| {
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    assert!(find("loop-a@file")["error"].to_string().contains("cycle"));
    assert!(find("gap@file")["error"].to_string().contains("nowhere@file"));
    let split = find("split@file");
    assert_eq!(split["type"], "weighted");
    assert_eq!(split["weighted"]["services"][0]["name"], "stable@file");
    assert_eq!(split["weighted"]["services"][0]["weight"], 3);
}

#[tokio::test]
async fn failover_uses_the_fallback_while_the_main_service_is_down() {
    let main = Backend::start("main", Proto::Http1).await;
    let spare = Backend::start("spare", Proto::Http1).await;
    let health = "healthCheck: { path: /health, interval: 100ms, timeout: 1s }";
    let yaml = format!(
        r#"http:
  routers:
    app: {{ rule: "Host(`f.test`)", service: app }}
    on-errors: {{ rule: "Host(`e.test`)", service: on-errors }}
  services:
    main:
      loadBalancer:
        {health}
        servers: [{{ url: "{main}" }}]
    spare:
      loadBalancer:
        {health}
        servers: [{{ url: "{spare}" }}]
    app:
      failover: {{ service: main, fallback: spare, healthCheck: {{}} }}
    on-errors:
      failover: {{ service: main, fallback: spare, errors: {{ status: ["500-503"], maxRequestBodyBytes: 16 }} }}
"#,
        main = main.url(),
        spare = spare.url(),
    );
    let gw = start(&yaml, &[]).await;
    let backend = |gw: &berth_e2e::TestGateway| {
        let web = gw.web();
        async move {
            http1(web, get("f.test", "/")).await.headers["x-backend"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    for _ in 0..3 {
        assert_eq!(backend(&gw).await, "main");
    }
    main.healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async { backend(&gw).await == "spare" }).await,
        "no failover while the main service was down"
    );
    main.healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async { backend(&gw).await == "main" }).await,
        "traffic did not come back to the main service"
    );
    // Traefik 3.6's `errors`: a listed answer from the main service is replaced by the
    // fallback's answer to the same request, body included.
    let post = |path: &str, body: &'static str| {
        Request::builder()
            .method("POST")
            .uri(path)
            .header("host", "e.test")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let (main_before, spare_before) = (main.request_count(), spare.request_count());
    let r = http1(gw.web(), post("/status/502", "hello")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "the spare's own answer");
    assert_eq!(main.request_count() - main_before, 1);
    assert_eq!(spare.request_count() - spare_before, 1);
    let seen = spare.requests().pop().unwrap();
    assert_eq!((seen.uri.as_str(), &seen.body[..]), ("/status/502", &b"hello"[..]));
    // An answer not listed is the main's; a body over maxRequestBodyBytes is refused.
    let r = http1(gw.web(), post("/status/404", "hello")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (main_before, spare_before2) = (main.request_count(), spare.request_count());
    assert_eq!(spare_before2, spare_before + 1);
    let r = http1(gw.web(), post("/echo", "more than sixteen bytes")).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        (main.request_count(), spare.request_count()),
        (main_before, spare_before2)
    );
    let services = gw.admin_json("/api/http/services").await;
    let app = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app@file")
        .unwrap();
    assert_eq!(app["type"], "failover");
    assert_eq!(app["failover"]["fallback"], "spare@file");
}

#[tokio::test]
async fn mirroring_copies_a_share_of_requests_and_never_waits_for_the_mirror() {
    let main = Backend::start("main", Proto::Http1).await;
    let half = Backend::start("half", Proto::Http1).await;
    let all = Backend::start("all", Proto::Http1).await;
    let (hole, _keep) = berth_common::test_util::black_hole().await;
    let yaml = format!(
        r#"http:
  routers:
    app: {{ rule: "Host(`m.test`)", service: shadowed }}
    slow: {{ rule: "Host(`slow.test`)", service: to-hole }}
  services:
    main: {{ loadBalancer: {{ servers: [{{ url: "{main}" }}] }} }}
    half: {{ loadBalancer: {{ servers: [{{ url: "{half}" }}] }} }}
    all: {{ loadBalancer: {{ servers: [{{ url: "{all}" }}] }} }}
    hole: {{ loadBalancer: {{ servers: [{{ url: "http://{hole}" }}] }} }}
    shadowed:
      mirroring:
        service: main
        maxBodySize: 1024
        mirrors: [{{ name: half, percent: 50 }}, {{ name: all, percent: 100 }}]
    to-hole:
      mirroring: {{ service: main, mirrors: [{{ name: hole, percent: 100 }}] }}
"#,
        main = main.url(),
        half = half.url(),
        all = all.url(),
    );
    let gw = start(&yaml, &[]).await;
    for i in 0..10 {
        let req = Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", "m.test")
            .body(Full::new(Bytes::from(format!("order {i}"))))
            .unwrap();
        let r = http1(gw.web(), req).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.body,
            format!("order {i}"),
            "the main service answers, with the whole body"
        );
    }
    // Copies arrive on their own time: all of them to `all`, half to `half`, bodies whole.
    assert!(
        eventually(Duration::from_secs(5), || async {
            all.request_count() == 10 && half.request_count() == 5
        })
        .await,
        "all got {}, half got {}",
        all.request_count(),
        half.request_count()
    );
    assert_eq!(main.request_count(), 10);
    let bodies: Vec<String> = all
        .requests()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).to_string())
        .collect();
    assert!(bodies.contains(&"order 7".to_string()), "{bodies:?}");
    // The mirror's answers are read, so its connections are kept alive between copies.
    let opened = all.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened <= 3, "10 copies opened {opened} connections to the mirror");

    // A mirror that never answers does not hold up the main request.
    let t = std::time::Instant::now();
    let r = http1(gw.web(), get("slow.test", "/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let services = gw.admin_json("/api/http/services").await;
    let s = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "shadowed@file")
        .unwrap();
    assert_eq!(s["type"], "mirroring");
    assert_eq!(s["mirroring"]["mirrors"][0]["percent"], 50);
}
