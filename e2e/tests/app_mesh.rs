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

use berth_common::test_util::{get, http1, metric, try_http1};
use berth_e2e::{LocalUp, demo_taskdef, write_service};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            }),
        ),
    ];
    for (family, count, labels) in services {
        let mut t = whoami.clone();
        t["family"] = json!(family);
        t["proxyConfiguration"] = proxy_configuration();
        for c in t["containerDefinitions"].as_array_mut().unwrap() {
            if c["name"] == "berth-sidecar" {
                // As App Mesh's Envoy container: the user its rules ignore.
                c["user"] = json!("1337");
            } else {
                c["dockerLabels"] = labels.clone();
                let env = c["environment"].as_array_mut().unwrap();
                env.push(json!({"name": "WHOAMI_NAME", "value": family}));
                env.push(json!({"name": "WHOAMI_CALLS", "value": "direct"}));
            }
        }
        write_service(&dir, &t, *count);
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
    let local = LocalUp::start_with("127.0.171.1", &["--dir", dir.to_str().unwrap()]);
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
