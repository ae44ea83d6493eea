//! TCP routes to tasks behind a sidecar ride the mesh's mTLS: `berth-local up`'s whoami
//! tasks declare `berth.tcp.routers.whoami-tcp` (`HostSNI(`*`)` on the gateway's `tcp`
//! entrypoint, container port 9000). The gateway dials each task's sidecar with mTLS,
//! checks its identity and asks for the app's port by ALPN; the sidecar splices to the
//! app. Connections are balanced over the three tasks.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use berth_common::test_util::{get, http1};
use berth_e2e::LocalUp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_over_the_mesh_reaches_every_task() {
    let local = LocalUp::start("127.0.220.1");
    local.wait_ready().await;
    let routers: serde_json::Value =
        serde_json::from_str(&http1(local.admin, get("admin", "/api/tcp/routers")).await.body).unwrap();
    let services = http1(local.admin, get("admin", "/api/tcp/services")).await.body;
    assert!(routers.to_string().contains("whoami-tcp@ecs"), "{routers:#}");
    assert_eq!(
        services.matches("mesh://").count(),
        3,
        "one mesh server per whoami task: {services}"
    );

    let mut answered_by = BTreeSet::new();
    for i in 0..30 {
        let mut s = tokio::net::TcpStream::connect(local.tcp).await.unwrap();
        let line = format!("line {i}\n");
        s.write_all(line.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        let (who, echoed) = answer.split_once(": ").unwrap_or_else(|| panic!("{answer:?}"));
        assert_eq!(echoed, line);
        answered_by.insert(who.to_string());
    }
    assert_eq!(answered_by.len(), 3, "{answered_by:?}");

    // HTTP still works beside it, and the sidecars count the raw connections.
    assert_eq!(http1(local.web, get("whoami.localhost", "/")).await.status, 200);
    let sidecars: serde_json::Value =
        serde_json::from_str(&http1(local.admin, get("admin", "/api/sidecars")).await.body).unwrap();
    let mut forwarded = 0u64;
    for s in sidecars.as_array().unwrap().iter().filter(|s| s["service"] == "whoami") {
        let admin: std::net::SocketAddr = format!("{}:15000", s["address"].as_str().unwrap()).parse().unwrap();
        let m = http1(admin, get("sidecar", "/metrics")).await.body;
        forwarded += m
            .lines()
            .find_map(|l| l.strip_prefix("berth_sidecar_inbound_tcp_connections_total{outcome=\"forwarded\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert_eq!(forwarded, 30);
    let m = http1(local.admin, get("admin", "/metrics")).await.body;
    assert!(
        m.contains("berth_tcp_connections_total{router=\"whoami-tcp@ecs\",outcome=\"forwarded\"} 30"),
        "{m}"
    );
}
