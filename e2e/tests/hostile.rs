//! Hostile input against real gateways over real sockets: every class of defect the
//! hardening issue found, with the instance that found it. Each test failed before its
//! fix; the figures (RSS, `/metrics` size) are printed with `--nocapture`.
//!
//! The classes: configuration that crashed (deep rules, a non-ASCII space in a breaker
//! expression), metrics keyed by client input, path tricks past middlewares, fail-open
//! routers and forwarding headers, exhaustion (slow bodies and heads, bcrypt on the
//! workers, accept errors), labels pointing the gateway anywhere, and secrets.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use berth_common::test_util::{Backend, Proto, eventually, get, http1, raw_exchange};
use berth_e2e::{GatewayProcess, ecs_client, free_port, local_ecs, rss_kib, service, start, temp_dir, web_container};
use http::{Request, StatusCode};
use http_body_util::Full;

/// A process's CPU time (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name in parentheses: utime and stime are 14th and 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn with_header(host: &str, path: &str, name: &str, value: &str) -> Request<Full<bytes::Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .header(name, value)
        .body(Full::default())
        .unwrap()
}

/// A file-provider gateway as a process of its own, for RSS and crash checks.
async fn gateway_process(yaml: &str, extra: &[&str]) -> (GatewayProcess, std::path::PathBuf) {
    let dir = temp_dir("hostile");
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(&dynamic, yaml).unwrap();
    let mut args = vec!["--file-provider", dynamic.to_str().unwrap()];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = GatewayProcess::spawn(&refs, &[]);
    gw.wait_admin().await;
    (gw, dynamic)
}

async fn wait_routed(addr: SocketAddr, host: &str) {
    let up = eventually(Duration::from_secs(10), || async {
        http1(addr, get(host, "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(up, "{host} never routed");
}

#[tokio::test]
async fn deep_rules_and_a_non_ascii_space_disable_only_themselves() {
    let b = Backend::start("app", Proto::Http1).await;
    let nots = "!".repeat(100_000);
    let parens_open = "(".repeat(50_000);
    let parens_close = ")".repeat(50_000);
    // A no-break space (U+00A0) between the tokens once panicked on a char boundary.
    let nbsp = '\u{a0}';
    let deep = format!("{}NetworkErrorRatio() > 1{}", "(".repeat(19), ")".repeat(19));
    let yaml = format!(
        r#"http:
  routers:
    good: {{ rule: "Host(`good.test`)", service: app }}
    nots: {{ rule: "{nots}Host(`a`)", service: app }}
    parens: {{ rule: "{parens_open}Host(`b`){parens_close}", service: app }}
    spaced: {{ rule: "Host(`sp.test`)", service: app, middlewares: [nbsp] }}
    breaker: {{ rule: "Host(`cb.test`)", service: app, middlewares: [deep] }}
  middlewares:
    nbsp: {{ circuitBreaker: {{ expression: "NetworkErrorRatio(){nbsp}>{nbsp}0.5" }} }}
    deep: {{ circuitBreaker: {{ expression: "{deep}" }} }}
  services:
{}
tcp:
  routers:
    deep: {{ rule: "{nots}HostSNI(`x`)", service: t, tls: {{}} }}
  services:
    t: {{ loadBalancer: {{ servers: [ {{ address: "127.0.0.1:1" }} ] }} }}
"#,
        service("app", &[b.url()], "")
    );
    let (mut gw, dynamic) = gateway_process(&yaml, &[]).await;
    wait_routed(gw.web, "good.test").await;
    let routers = gw.admin_json("/api/http/routers").await;
    let status = |name: &str| {
        routers
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| (r["status"].as_str().unwrap().to_string(), r.to_string()))
            .unwrap()
    };
    for name in ["nots@file", "parens@file"] {
        let (s, r) = status(name);
        assert_eq!(s, "disabled", "{r}");
        assert!(r.contains("levels") || r.contains("bytes"), "{r}");
    }
    // The non-ASCII space is whitespace; 19 levels of parentheses are too deep: disabled.
    assert_eq!(status("spaced@file").0, "enabled");
    assert_eq!(http1(gw.web, get("sp.test", "/")).await.status, StatusCode::OK);
    let (s, r) = status("breaker@file");
    assert_eq!(s, "disabled", "{r}");
    // A reload with worse still keeps serving the good router.
    let worse = yaml.replace("Host(`a`)", "Host(`a`)&&") + &format!("\n# {}\n", "(".repeat(1000));
    std::fs::write(&dynamic, worse).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(http1(gw.web, get("good.test", "/")).await.status, StatusCode::OK);
    assert!(gw.child.try_wait().unwrap().is_none(), "the gateway is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_sources_do_not_grow_metrics_or_memory() {
    let b = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        r#"http:
  routers:
    app: {{ rule: "Host(`m.test`)", service: app }}
    limited: {{ rule: "Host(`rl.test`)", service: app, middlewares: [rl] }}
  middlewares:
    rl: {{ rateLimit: {{ average: 1, period: 1h, burst: 1, sourceCriterion: {{ requestHeaderName: X-Key }} }} }}
  services:
{}"#,
        service("app", &[b.url()], "")
    );
    let (gw, _) = gateway_process(&yaml, &[]).await;
    wait_routed(gw.web, "m.test").await;
    let pid = gw.child.id();
    let before_rss = rss_kib(pid);
    let before_metrics = http1(gw.admin, get("admin", "/metrics")).await.body.len();
    // 3,000 requests, each with a method nobody registered, on one kept-alive connection;
    // then 20,000 rate-limit sources, each with a 2 KiB key.
    let web = gw.web;
    tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(web).unwrap();
        conn.set_nodelay(true).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
        // One write per request: pieces would wait on Nagle and delayed ACKs.
        for i in 0..3000 {
            conn.write_all(format!("M{i:05} / HTTP/1.1\r\nHost: m.test\r\n\r\n").as_bytes())
                .unwrap();
            read_one_response(&mut reader);
        }
        let key = "k".repeat(2048);
        for i in 0..20_000 {
            let req = format!("GET / HTTP/1.1\r\nHost: rl.test\r\nX-Key: {key}{i}\r\n\r\n");
            conn.write_all(req.as_bytes()).unwrap();
            read_one_response(&mut reader);
        }
    })
    .await
    .unwrap();
    let metrics = http1(gw.admin, get("admin", "/metrics")).await.body;
    let after_rss = rss_kib(pid);
    println!(
        "made-up methods: /metrics {before_metrics} -> {} bytes; RSS {before_rss} -> {after_rss} KiB",
        metrics.len()
    );
    assert!(metrics.contains("method=\"_OTHER\""), "{metrics}");
    assert!(!metrics.contains("method=\"M00001\""));
    assert!(metrics.len() < before_metrics + 16 * 1024, "{} bytes", metrics.len());
    // 20,000 buckets keyed by 8-byte hashes, not 2 KiB strings (40 MB).
    assert!(
        after_rss < before_rss + 24 * 1024,
        "RSS grew {before_rss} -> {after_rss} KiB"
    );
}

/// Read one HTTP/1.1 response with a Content-Length body (what the gateway sends here).
fn read_one_response(r: &mut impl std::io::BufRead) {
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
}

#[tokio::test]
async fn path_tricks_never_reach_what_a_middleware_guards() {
    let b = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        r#"http:
  routers:
    public: {{ rule: "PathPrefix(`/public`)", service: app }}
    admin: {{ rule: "PathPrefix(`/admin`)", service: app, middlewares: [auth] }}
  middlewares:
    auth: {{ basicAuth: {{ users: ["test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"] }} }}
  services:
{}"#,
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    for (trick, want) in [
        ("/public/../admin/x", StatusCode::UNAUTHORIZED),
        ("/public/%2e%2e/admin/x", StatusCode::UNAUTHORIZED),
        ("/public/%2E%2E/admin/x", StatusCode::UNAUTHORIZED),
        ("/public/./../admin/x", StatusCode::UNAUTHORIZED),
        ("//admin/x", StatusCode::UNAUTHORIZED),
        ("/public/..%2Fadmin/x", StatusCode::BAD_REQUEST),
        ("/public/%2e%2e%2fadmin/x", StatusCode::BAD_REQUEST),
        ("/public/..%5Cadmin/x", StatusCode::BAD_REQUEST),
        ("/public/%zz", StatusCode::BAD_REQUEST),
    ] {
        let raw = format!("GET {trick} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(gw.web(), raw.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {}", want.as_u16())),
            "{trick}: {answer}"
        );
    }
    assert!(
        b.requests().iter().all(|s| !s.uri.contains("admin")),
        "the backend saw /admin without credentials: {:?}",
        b.requests().iter().map(|s| s.uri.clone()).collect::<Vec<_>>()
    );
    // What goes upstream is the cleaned path.
    let r = http1(gw.web(), get("a.test", "/public/./x//y/%7Ez")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(b.requests().last().unwrap().uri, "/public/x/y/~z");
    // With the credentials, the cleaned path reaches the admin router.
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("test:test")
    );
    let r = http1(
        gw.web(),
        with_header("a.test", "/public/../admin/x", "authorization", &auth),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(b.requests().last().unwrap().uri, "/admin/x");
}

#[tokio::test]
async fn encoded_characters_are_refused_where_the_entrypoint_says() {
    berth_common::tls::install_crypto_provider();
    let b = Backend::start("app", Proto::Http1).await;
    let dir = temp_dir("encoded");
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    all: {{ rule: \"PathPrefix(`/`)\", service: app }}\n  services:\n{}",
            service("app", &[b.url()], "")
        ),
    )
    .unwrap();
    let toml = dir.join("berth.toml");
    std::fs::write(
        &toml,
        format!(
            "admin = \"127.0.0.1:0\"\nfile-provider = \"{}\"\nshutdown-delay = \"0s\"\n\
             [entrypoints.strict]\naddress = \"127.0.0.1:0\"\n\
             [entrypoints.open]\naddress = \"127.0.0.1:0\"\nsanitize-path = false\n\
             [entrypoints.open.encoded-characters]\nallow-encoded-slash = true\n",
            dynamic.display()
        ),
    )
    .unwrap();
    use clap::Parser;
    let args = berth_gateway::Args::try_parse_from(["berth-gateway", "--config", toml.to_str().unwrap()]).unwrap();
    let gw = berth_gateway::Gateway::start(berth_gateway::Config::from_args(args).unwrap())
        .await
        .unwrap();
    let strict = gw.entrypoint_addr("strict").unwrap();
    let open = gw.entrypoint_addr("open").unwrap();
    let ask = |addr: SocketAddr, path: &str| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        async move { raw_exchange(addr, raw.as_bytes(), Duration::from_secs(5)).await }
    };
    // By default every encoded character is refused, as Traefik's documentation says.
    for p in ["/a%2Fb", "/a%5Cb", "/a%00", "/a%3Bb", "/a%25", "/a%3Fb", "/a%23b"] {
        assert!(ask(strict, p).await.starts_with("HTTP/1.1 400"), "{p} by default");
    }
    assert!(ask(strict, "/a%20b").await.starts_with("HTTP/1.1 200"));
    // An entrypoint allows what it lists, and only that.
    assert!(ask(open, "/a%2Fb").await.starts_with("HTTP/1.1 200"));
    assert!(
        ask(open, "/a%3Bb").await.starts_with("HTTP/1.1 400"),
        "only the slash allowed"
    );
    // Without sanitizing, the path goes as it came (Traefik's "not safe" setting).
    assert!(ask(open, "/x/../y").await.starts_with("HTTP/1.1 200"));
    assert_eq!(b.requests().last().unwrap().uri, "/x/../y");
}

#[tokio::test]
async fn routers_that_ask_for_what_cannot_be_applied_are_not_served() {
    let b = Backend::start("app", Proto::Http1).await;
    let db = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let db_addr = db.local_addr().unwrap();
    let tcp_port = free_port();
    let yaml = format!(
        r#"http:
  routers:
    strict: {{ rule: "Host(`strict.test`)", service: app, tls: {{ options: mtls }} }}
    open: {{ rule: "Host(`open.test`)", service: app }}
  services:
{}
tcp:
  routers:
    db: {{ rule: "HostSNI(`*`)", service: db, entryPoints: [db], middlewares: [only-vpc] }}
    db2: {{ rule: "HostSNI(`*`)", service: db, entryPoints: [db], middlewares: [no-such-guard] }}
  services:
    db: {{ loadBalancer: {{ servers: [ {{ address: "{db_addr}" }} ] }} }}
  middlewares:
    only-vpc: {{ ipAllowList: {{ sourceRange: ["10.0.0.0/8"] }} }}
"#,
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &["--entrypoint", &format!("db=127.0.0.1:{tcp_port}")]).await;
    assert_eq!(http1(gw.web(), get("open.test", "/")).await.status, StatusCode::OK);
    assert_eq!(
        http1(gw.web(), get("strict.test", "/")).await.status,
        StatusCode::NOT_FOUND
    );
    // The database behind an ipAllowList is never reached without it.
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let _ = c.write_all(b"SELECT 1;\n").await;
    let reached = tokio::time::timeout(Duration::from_millis(800), db.accept())
        .await
        .is_ok();
    assert!(!reached, "the TCP router ran without its ipAllowList");
    // A guard that does not exist keeps its router from being served at all.
    let tcp = gw.admin_json("/api/tcp/routers").await;
    let db2 = tcp
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "db2@file")
        .unwrap();
    assert_eq!(db2["status"], "disabled");
    assert!(db2.to_string().contains("fail closed"), "{tcp}");
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_never_reach_apps_or_rules() {
    let b = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        r#"http:
  routers:
    app: {{ rule: "Host(`f.test`)", service: app }}
    spoofed: {{ rule: "Host(`s.test`) && Header(`X-Forwarded-For`, `10.9.9.9`)", service: app }}
    vpc-only: {{ rule: "Host(`v.test`)", service: app, middlewares: [vpc] }}
  middlewares:
    vpc: {{ ipAllowList: {{ sourceRange: ["10.0.0.0/8"], ipStrategy: {{ depth: 1 }} }} }}
  services:
{}"#,
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let req = Request::builder()
        .uri("/")
        .header("host", "f.test")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x_forwarded_for", "10.9.9.9")
        .header("x-forwarded-prefix", "/evil")
        .header("forwarded", "for=10.9.9.9;proto=https")
        .header("x-forwarded-tls-client-cert", "forged")
        .header("x-real-ip", "10.9.9.9")
        .header("x-berth-client-id", "spiffe://berth.local/ecs/prod/admin")
        .body(Full::default())
        .unwrap();
    assert_eq!(http1(gw.web(), req).await.status, StatusCode::OK);
    let seen = b.requests().pop().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    for gone in [
        "x_forwarded_for",
        "x-forwarded-prefix",
        "forwarded",
        "x-forwarded-tls-client-cert",
        "x-berth-client-id",
    ] {
        assert!(!seen.headers.contains_key(gone), "{gone} reached the app");
    }
    let spoof = with_header("s.test", "/", "x-forwarded-for", "10.9.9.9");
    assert_eq!(
        http1(gw.web(), spoof).await.status,
        StatusCode::NOT_FOUND,
        "rules never see it"
    );
    let spoof = with_header("v.test", "/", "x-forwarded-for", "10.9.9.9");
    assert_eq!(http1(gw.web(), spoof).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_heads_are_cut() {
    let b = Backend::start("app", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    app: {{ rule: \"Host(`slow.test`)\", service: app }}\n  services:\n{}",
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &["--request-read-timeout", "1s", "--header-read-timeout", "1s"]).await;
    let web = gw.web();
    tokio::task::spawn_blocking(move || {
        // One byte of a ten-byte body, then nothing: 408 after the read timeout.
        let started = Instant::now();
        let mut c = TcpStream::connect(web).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"POST /echo HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 10\r\n\r\nx")
            .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // Half a request head: the connection is closed.
        let started = Instant::now();
        let mut c = TcpStream::connect(web).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: slow").unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_does_not_stall_other_routes() {
    let b = Backend::start("app", Proto::Http1).await;
    let hash = bcrypt::hash("right", 10).unwrap();
    let yaml = format!(
        r#"http:
  routers:
    locked: {{ rule: "Host(`locked.test`)", service: app, middlewares: [auth] }}
    other: {{ rule: "Host(`other.test`)", service: app }}
  middlewares:
    auth: {{ basicAuth: {{ users: ["u:{hash}"] }} }}
  services:
{}"#,
        service("app", &[b.url()], "")
    );
    let gw = std::sync::Arc::new(start(&yaml, &[]).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("u:wrong"));
    let mut guessers = Vec::new();
    for _ in 0..8 {
        let (gw, stop, wrong) = (gw.clone(), stop.clone(), wrong.clone());
        guessers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http1(gw.web(), with_header("locked.test", "/", "authorization", &wrong)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(http1(gw.web(), get("other.test", "/")).await.status, StatusCode::OK);
        worst = worst.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for g in guessers {
        let _ = g.await;
    }
    println!("another route's slowest answer while 8 clients guess bcrypt passwords: {worst:?}");
    assert!(worst < Duration::from_millis(250), "{worst:?}");
}

#[tokio::test]
async fn the_control_api_times_out_silent_clients_and_never_spins() {
    let dir = temp_dir("ctl");
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Few file descriptors: idle connections soon make accept() fail with EMFILE.
    let web = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let log = dir.join("gw.log");
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(berth_e2e::bin("berth-gateway"))
        .args(["--entrypoint", &format!("web={web}"), "--admin", &admin])
        .args(["--mesh-dev-ca", dir.join("ca").to_str().unwrap()])
        .args(["--mesh-listen", &control.to_string(), "--shutdown-delay", "0s"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(control).await.is_ok()
    })
    .await;
    assert!(up, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    // 120 connections that never start a handshake: more than the process has descriptors.
    let mut silent = Vec::new();
    for _ in 0..120 {
        if let Ok(c) = TcpStream::connect(control) {
            silent.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id();
    let cpu_before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(pid) - cpu_before;
    println!("control API with accept() failing (EMFILE): {spent:?} of CPU in 2 s");
    assert!(
        spent < Duration::from_millis(500),
        "the accept loop spins: {spent:?} in 2 s"
    );
    // The handshake timeout (10 s) closes the silent ones; the listener recovers.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let mut closed = 0;
    for c in &mut silent {
        c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut b = [0u8; 1];
        if matches!(c.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed >= 40, "only {closed} silent connections were closed");
    drop(silent);
    let back = eventually(Duration::from_secs(15), || async {
        let c = tokio::net::TcpStream::connect(control).await;
        c.is_ok()
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(back);
}

#[tokio::test]
async fn labels_cannot_point_the_gateway_at_other_addresses_or_files() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 170, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let port = free_port();
    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "prod", "--ecs-refresh", "300ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let admin_url = format!("http://{}", gw.admin);
    ecs.register_task_definition()
        .family("sneaky")
        .container_definitions(web_container(
            port,
            &[
                ("traefik.enable", "true"),
                ("traefik.http.routers.sneaky.rule", "Host(`sneaky.test`)"),
                (
                    "traefik.http.services.sneaky.loadbalancer.server.url",
                    admin_url.as_str(),
                ),
                ("traefik.http.routers.files.rule", "Host(`files.test`)"),
                ("traefik.http.routers.files.service", "sneaky"),
                ("traefik.http.routers.files.middlewares", "steal"),
                ("traefik.http.middlewares.steal.basicauth.usersfile", "/etc/passwd"),
                ("traefik.http.routers.ok.rule", "Host(`ok.test`)"),
                ("traefik.http.routers.ok.service", "ok"),
                ("traefik.http.services.ok.loadbalancer.server.port", &port.to_string()),
            ],
        ))
        .send()
        .await
        .unwrap();
    let task = server
        .ecs
        .lock()
        .unwrap()
        .run_service_task("prod", "sneaky", "sneaky")
        .unwrap();
    let id = task["taskArn"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let ip = server.ecs.lock().unwrap().clusters["prod"].tasks[&id].address.unwrap();
    let app = Backend::start_at("app", Proto::Http1, SocketAddr::from((ip, port))).await;
    let up = eventually(Duration::from_secs(20), || async {
        http1(gw.web, get("ok.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(up, "{}", gw.log());
    // The router whose service pointed at the gateway's admin API is never sent there.
    let r = http1(gw.web, get("sneaky.test", "/api/overview")).await;
    assert_ne!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!r.body.contains("routers"), "{}", r.body);
    // The label naming a file is refused; the file is never quoted.
    let r = http1(gw.web, get("files.test", "/")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let diags = http1(gw.admin, get("admin", "/api/diagnostics")).await.body;
    assert!(diags.contains("labels may not"), "{diags}");
    assert!(!diags.contains("root:"), "{diags}");
    assert!(app.request_count() >= 1);
}

#[test]
fn secrets_are_never_printed() {
    let secret = "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL\n-----END PRIVATE KEY-----";
    let help = std::process::Command::new(berth_e2e::bin("berth-gateway"))
        .arg("--help")
        .env("BERTH_MESH_CA_KEY", secret)
        .env("BERTH_MESH_TOKEN", "TOKEN-SECRET-VALUE")
        .env("BERTH_TLS_KEY", secret)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--mesh-ca-key"), "{text}");
    assert!(
        !text.contains("SECRET-KEY-MATERIAL") && !text.contains("TOKEN-SECRET-VALUE"),
        "{text}"
    );
    // A secret pasted where a file was expected (here wrapped in JSON, as Secrets Manager
    // can): the error gives its size, never the value.
    let out = std::process::Command::new(berth_e2e::bin("berth-gateway"))
        .args(["--entrypoint", "web=127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--mesh-ca-cert", r#"{"cert":"SECRET-KEY-MATERIAL"}"#])
        .args(["--mesh-ca-key", r#"{"key":"SECRET-KEY-MATERIAL"}"#])
        .args(["--mesh-token", "a-token-of-at-least-16"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("SECRET-KEY-MATERIAL"), "{err}");
    assert!(err.contains("bytes"), "{err}");
    // A real CA without a bootstrap token proves tasks by IAM, with STS: without a
    // region to find STS in, refused at start (exit 64), every way out named.
    let mut cmd = std::process::Command::new(berth_e2e::bin("berth-gateway"));
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .args([
            "--entrypoint",
            "web=127.0.0.1:0",
            "--mesh-ca-cert",
            "/ca.crt",
            "--mesh-ca-key",
            "/ca.key",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--mesh-insecure-no-token") && err.contains("AWS_REGION"),
        "{err}"
    );
    // Token mode without a token: refused at start.
    let out = std::process::Command::new(berth_e2e::bin("berth-gateway"))
        .args([
            "--entrypoint",
            "web=127.0.0.1:0",
            "--mesh-dev-ca",
            "/tmp/berth-unused-dev-ca",
            "--mesh-auth",
            "token",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the bootstrap token"));
}
