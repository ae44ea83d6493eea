//! App Mesh's task shape, unchanged but for the proxy: task definitions with a
//! `proxyConfiguration` of type `APPMESH` (IgnoredUID 1337, ingress 15000, egress 15001)
//! and `berth-sidecar` where Envoy was, run by berth-local as ECS runs them (each task in
//! a network namespace of its own, with ECS's redirect rules). The caller's app calls
//! `http://orders.apps.local:8080/` straight, with no proxy setting:
//!
//! - the call reaches `orders` over mTLS with the caller's SPIFFE identity, by the
//!   alias `berth.mesh.aliases` gives, with and without the port;
//! - `orders`' weighted split to `orders-v2` and its retry (past a hung task) apply;
//! - a destination outside the mesh passes through (`allow-all`) or is refused
//!   (`berth.mesh.outbound=mesh-only`);
//! - a plaintext caller outside the mesh is refused by a strict ingress, and taken
//!   without an identity (a forged one removed) by a permissive one.
//!
//! Needs root, iproute2 and iptables (`.ci/run` installs them).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_common::test_util::otlp::{ReceivedSpan, Receiver};
use berth_common::test_util::{get, http1, metric, try_http1};
use berth_e2e::{LocalUp, demo_taskdef, write_service};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACE: &str = "7c1a9e0d5f3b4a2c8e6d0b1f2a3c4d5e";
const CLIENT_SPAN: &str = "1a2b3c4d5e6f7a8b";

/// What App Mesh's documentation gives every task.
fn proxy_configuration() -> Value {
    json!({
        "type": "APPMESH",
        "containerName": "berth-sidecar",
        "properties": [
            {"name": "IgnoredUID", "value": "1337"},
            {"name": "ProxyIngressPort", "value": "15000"},
            {"name": "ProxyEgressPort", "value": "15001"},
            {"name": "AppPorts", "value": "8080"},
            {"name": "EgressIgnoredIPs", "value": "169.254.170.2,169.254.169.254"},
        ]
    })
}

/// The demo's whoami as `family` with `labels` on its app, calling other services straight;
/// with `proxy`, in App Mesh's shape (the proxyConfiguration, the sidecar as IgnoredUID).
fn service(whoami: &Value, family: &str, labels: &Value, proxy: bool) -> Value {
    let mut t = whoami.clone();
    t["family"] = json!(family);
    if proxy {
        t["proxyConfiguration"] = proxy_configuration();
    }
    for c in t["containerDefinitions"].as_array_mut().unwrap() {
        if c["name"] == "berth-sidecar" {
            if proxy {
                // As App Mesh's Envoy container: the user its rules ignore.
                c["user"] = json!("1337");
            }
        } else {
            c["dockerLabels"] = labels.clone();
            let env = c["environment"].as_array_mut().unwrap();
            env.push(json!({"name": "WHOAMI_NAME", "value": family}));
            env.push(json!({"name": "WHOAMI_CALLS", "value": "direct"}));
        }
    }
    t
}

/// Four App Mesh-style services made from the demo's whoami task definition.
fn definitions() -> PathBuf {
    let dir = berth_e2e::temp_dir("app-mesh");
    let whoami = demo_taskdef("whoami");
    let services: &[(&str, usize, Value)] = &[
        (
            "orders",
            2,
            json!({
                "berth.mesh.aliases": "orders.apps.local:8080,orders.apps.local",
                "berth.mesh.weighted.services[0].name": "orders",
                "berth.mesh.weighted.services[0].weight": "1",
                "berth.mesh.weighted.services[1].name": "orders-v2",
                "berth.mesh.weighted.services[1].weight": "1",
                "berth.mesh.retry.attempts": "3",
                "berth.mesh.retry.initialInterval": "10ms",
                "berth.mesh.timeout": "400ms",
                // The migration window: plaintext callers still get in.
                "berth.mesh.ingress": "permissive",
            }),
        ),
        ("orders-v2", 1, json!({ "berth.weighted.allow": "orders" })),
        (
            "web",
            1,
            json!({
                "berth.enable": "true",
                "berth.http.routers.web.rule": "Host(`web.localhost`)",
                "berth.http.services.web.loadbalancer.server.port": "8080",
            }),
        ),
        (
            "web-locked",
            1,
            json!({
                "berth.enable": "true",
                "berth.http.routers.locked.rule": "Host(`locked.localhost`)",
                "berth.http.services.locked.loadbalancer.server.port": "8080",
                "berth.mesh.outbound": "mesh-only",
                // Permissive, but it names its callers: plaintext cannot be checked.
                "berth.mesh.ingress": "permissive",
                "berth.mesh.allow": "web,spiffe://berth.local/gateway",
            }),
        ),
    ];
    for (family, count, labels) in services {
        write_service(&dir, &service(&whoami, family, labels, true), *count);
    }
    dir
}

fn answered_by(body: &str) -> &str {
    body.lines().find_map(|l| l.strip_prefix("Hostname: ")).unwrap_or("")
}

/// A server outside the mesh, on a host loopback address no task has.
async fn outside_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.97.5:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\noutside-ok\n")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mesh_task_definitions_run_with_berth_sidecar_and_unchanged_apps() {
    let outside = outside_server().await;
    let dir = definitions();
    let rx = Receiver::start().await;
    let endpoint = rx.grpc_endpoint();
    let local = LocalUp::start_env(
        "127.0.171.1",
        &["--dir", dir.to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    local.wait_ready().await;
    let wanted = [("orders", 2), ("orders-v2", 1), ("web", 1), ("web-locked", 1)];
    let tasks = local.wait_sidecars(&wanted).await;
    let call = |host: &'static str, url: String| {
        let web = local.web;
        async move { http1(web, get(host, &format!("/call?url={url}"))).await }
    };

    // The alias, with its port and without, reaches orders or orders-v2 over mTLS, the
    // caller's identity verified by the callee's sidecar; 1:1 between the two.
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..20 {
        let url = if i % 2 == 0 {
            "http://orders.apps.local:8080/"
        } else {
            "http://orders.apps.local/"
        };
        let r = call("web.localhost", url.into()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let id = r
            .body
            .lines()
            .find_map(|l| l.strip_prefix("X-Berth-Client-Id: "))
            .unwrap_or_default()
            .to_string();
        assert!(
            id.starts_with("spiffe://berth.local/ecs/") && id.ends_with("/web"),
            "{}",
            r.body
        );
        *by.entry(answered_by(&r.body).to_string()).or_default() += 1;
    }
    println!("20 calls to orders.apps.local: {by:?}");
    // Smooth weighted round robin, restarted when the mesh view changes under way.
    let v2 = by.get("orders-v2").copied().unwrap_or(0);
    assert!((7..=13).contains(&v2), "1:1 split: {by:?}");
    assert_eq!(by.get("orders").copied().unwrap_or(0) + v2, 20, "{by:?}");

    // One trace across both sidecars: the caller's outbound client span is the parent of
    // the callee's inbound server span (the transparent hop carries the context).
    let mut traced = get("web.localhost", "/call?url=http://orders.apps.local:8080/");
    traced
        .headers_mut()
        .insert("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01").parse().unwrap());
    let r = http1(local.web, traced).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Each sidecar exports on its own: wait for both.
    let caller_client = |s: &ReceivedSpan| s.service() == "web" && s.kind == 3 && s.attr("berth.direction").is_none();
    let callee_server = |s: &ReceivedSpan| {
        s.service().starts_with("orders") && s.kind == 2 && s.attr("berth.direction") == Some("inbound")
    };
    let spans: Vec<ReceivedSpan> = rx
        .wait_for(Duration::from_secs(20), |s| {
            let ours = || s.iter().filter(|s| s.trace_id == TRACE);
            ours().any(caller_client) && ours().any(callee_server)
        })
        .await
        .into_iter()
        .filter(|s| s.trace_id == TRACE)
        .collect();
    let dump = format!("{spans:#?}");
    let caller_out = spans
        .iter()
        .find(|s| caller_client(s))
        .unwrap_or_else(|| panic!("no client span of web's sidecar: {dump}"));
    let callee_in = spans
        .iter()
        .find(|s| callee_server(s))
        .unwrap_or_else(|| panic!("no server span of the callee's sidecar: {dump}"));
    assert_eq!(
        callee_in.parent_span_id.as_deref(),
        Some(caller_out.span_id.as_str()),
        "{dump}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.service() == "web" && s.attr("berth.direction") == Some("outbound")),
        "the transparent egress's server span: {dump}"
    );

    // A plaintext caller outside the mesh: orders' ingress is permissive and takes it
    // without an identity (a forged one is removed); orders-v2's is strict and refuses.
    let orders_app: SocketAddr = format!("{}:8080", tasks["orders"][0]).parse().unwrap();
    let mut forged = get("orders", "/");
    forged
        .headers_mut()
        .insert("x-berth-client-id", "spiffe://berth.local/ecs/x/admin".parse().unwrap());
    let r = http1(orders_app, forged).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.to_ascii_lowercase().contains("x-berth-client-id"), "{}", r.body);
    let v2_app: SocketAddr = format!("{}:8080", tasks["orders-v2"][0]).parse().unwrap();
    assert!(
        try_http1(v2_app, get("orders-v2", "/")).await.is_none(),
        "a strict ingress refuses plaintext"
    );

    let locked_app: SocketAddr = format!("{}:8080", tasks["web-locked"][0]).parse().unwrap();
    let r = http1(locked_app, get("web-locked", "/")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("berth.mesh.allow"), "{}", r.body);
    // The egress takes only the task's own connections: from outside, nothing listens.
    let web_egress: SocketAddr = format!("{}:15001", tasks["web"][0]).parse().unwrap();
    assert!(
        tokio::net::TcpStream::connect(web_egress).await.is_err(),
        "the egress is not open to other hosts"
    );

    // One orders task hangs: orders' 400 ms timeout and three attempts carry every call
    // to another task.
    let r = http1(orders_app, get("orders", "/delay/set?ms=5000")).await;
    assert_eq!(r.status, 200);
    for _ in 0..3 {
        let round: Vec<_> = (0..6)
            .map(|_| tokio::spawn(call("web.localhost", "http://orders.apps.local:8080/".into())))
            .collect();
        for c in round {
            let r = c.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    let web_admin: SocketAddr = format!("{}:9901", tasks["web"][0]).parse().unwrap();
    let m = http1(web_admin, get("sidecar", "/metrics")).await.body;
    assert!(
        metric(
            &m,
            "berth_sidecar_outbound_retries_total{service=\"orders.apps.local\"}"
        ) >= 1,
        "{m}"
    );
    let r = http1(orders_app, get("orders", "/delay/set?ms=0")).await;
    assert_eq!(r.status, 200);

    // By a task's address rather than a name, from inside the caller's task (as its app,
    // not the IgnoredUID): over mTLS to that task, its HTTP port served as HTTP with the
    // caller's identity (a forged one replaced), its other port as raw TCP.
    let orders_ip = &tasks["orders"][0];
    let out = in_task(&tasks["web"][0], BY_ADDRESS, orders_ip).await;
    let (http, tcp) = out.split_once("----").unwrap_or((&out, ""));
    assert!(http.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        http.contains("X-Berth-Client-Id: spiffe://berth.local/ecs/default/web"),
        "{out}"
    );
    assert!(!http.contains("/ecs/x/admin"), "{out}");
    assert!(tcp.contains("orders: hello-tcp"), "{out}");
    let orders_admin: SocketAddr = format!("{orders_ip}:9901").parse().unwrap();
    let m = http1(orders_admin, get("sidecar", "/metrics")).await.body;
    let tcp_series = |o: &str| format!("berth_sidecar_inbound_tcp_connections_total{{outcome=\"{o}\"}}");
    assert!(metric(&m, &tcp_series("http")) >= 1, "{m}");
    assert!(metric(&m, &tcp_series("forwarded")) >= 1, "{m}");
    // A plaintext connection made to the ingress port itself is no redirect to follow.
    let orders_ingress: SocketAddr = format!("{orders_ip}:15000").parse().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), http1(orders_ingress, get("orders", "/")))
        .await
        .expect("answered, not looped");
    assert_eq!(r.status, 200, "{}", r.body);

    // Outside the mesh: passed through unchanged, or refused by mesh-only.
    let r = call("web.localhost", format!("http://{outside}/")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("outside-ok"), "{}", r.body);
    let r = call("locked.localhost", format!("http://{outside}/")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("mesh-only"), "{}", r.body);
    // ... while the mesh still works from there.
    let r = call("locked.localhost", "http://orders.apps.local:8080/".into()).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let m = http1(web_admin, get("sidecar", "/metrics")).await.body;
    let series = |outcome: &str| {
        format!("berth_sidecar_transparent_connections_total{{listener=\"egress\",outcome=\"{outcome}\"}}")
    };
    assert!(metric(&m, &series("mesh")) >= 20, "{m}");
    assert!(metric(&m, &series("passthrough")) >= 1, "{m}");
    assert!(metric(&m, &series("mesh_by_address")) >= 2, "{m}");
    assert!(!m.contains("mesh_tcp_failed"), "{m}");
    let v2_admin: SocketAddr = format!("{}:9901", tasks["orders-v2"][0]).parse().unwrap();
    let m = http1(v2_admin, get("sidecar", "/metrics")).await.body;
    assert!(
        metric(
            &m,
            "berth_sidecar_transparent_connections_total{listener=\"ingress\",outcome=\"plaintext_refused\"}"
        ) >= 1,
        "{m}"
    );
}

/// An HTTP request and a line of raw TCP to the task at argv[1] (its app's 8080 and 9000).
const BY_ADDRESS: &str = r#"
import socket, sys
ip = sys.argv[1]
s = socket.create_connection((ip, 8080), timeout=10)
s.sendall(b"GET / HTTP/1.1\r\nHost: " + ip.encode() + b":8080\r\nX-Berth-Client-Id: spiffe://berth.local/ecs/x/admin\r\nConnection: close\r\n\r\n")
data = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    data += d
print(data.decode(errors="replace"))
print("----")
t = socket.create_connection((ip, 9000), timeout=10)
t.sendall(b"hello-tcp\n")
print(t.recv(4096).decode(errors="replace"))
"#;

/// Run a Python script inside the network namespace of the task at `task` (found by its
/// sidecar), as its app would: not as the IgnoredUID.
async fn in_task(task: &str, script: &str, arg: &str) -> String {
    let pid = berth_e2e::sidecar_process(&format!("{task}:15443"))[0].pid;
    let ns = std::process::Command::new("ip")
        .args(["netns", "identify", &pid.to_string()])
        .output()
        .unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout).trim().to_string();
    assert!(!ns.is_empty(), "the task at {task} has a namespace");
    let run = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "setpriv",
            "--reuid=1400",
            "--regid=1400",
            "--clear-groups",
        ])
        .args(["/usr/bin/python3", "-c", script, arg])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_of_the_callee_under_transparent_load_fails_nothing() {
    let dir = berth_e2e::temp_dir("app-mesh-deploy");
    let whoami = demo_taskdef("whoami");
    for (family, count, labels, proxy) in [
        ("orders", 2, json!({ "berth.mesh.aliases": "orders.apps.local" }), true),
        (
            "web",
            1,
            json!({
                "berth.enable": "true",
                "berth.http.routers.web.rule": "Host(`web.localhost`)",
                "berth.http.services.web.loadbalancer.server.port": "8080",
            }),
            true,
        ),
        // Today's shape, for the memory comparison.
        ("plain", 1, json!({}), false),
    ] {
        write_service(&dir, &service(&whoami, family, &labels, proxy), count);
    }
    let local = LocalUp::start_with("127.0.172.1", &["--dir", dir.to_str().unwrap()]);
    local.wait_ready().await;
    let tasks = local.wait_sidecars(&[("orders", 2), ("web", 1), ("plain", 1)]).await;

    // Idle, a transparent sidecar holds what an explicit one does.
    let pid = |service: &str| berth_e2e::sidecar_process(&format!("{}:15443", tasks[service][0]))[0].pid;
    let (transparent, explicit) = (berth_e2e::rss_kib(pid("web")), berth_e2e::rss_kib(pid("plain")));
    println!("idle sidecar RSS: transparent {transparent} KiB, explicit {explicit} KiB");
    assert!(transparent > 0 && explicit > 0);
    assert!(
        transparent <= explicit + 1024,
        "transparent {transparent} KiB, explicit {explicit} KiB"
    );

    let ecs = berth_e2e::ecs_client(&format!("http://{}", local.api));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let loads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, web) = (stop.clone(), ok.clone(), failed.clone(), local.web);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = try_http1(web, get("web.localhost", "/call?url=http://orders.apps.local:8080/")).await;
                    match r {
                        Some(r) if r.status == 200 && r.body.contains("Hostname: orders") => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            eprintln!("failed: {:?}", other.map(|r| (r.status, r.body)));
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let rolled = berth_e2e::roll_service(&ecs, "orders", 2, Duration::from_secs(60)).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling deploy of orders under transparent east-west load, rollout {took:?}: {ok} ok / {failed} failed");
    assert!(rolled, "the rolling deploy completed");
    assert!(ok > 50, "the load ran: {ok}");
    assert_eq!(failed, 0, "failed requests during the rolling deploy");
}
