//! The mesh end to end in `berth-local up`: real gateway, sidecars and apps, real mTLS.
//! East-west through two sidecars, an unknown service, the sidecar registry in the
//! admin API, a sidecar killed with SIGKILL under load, and the gateway killed and
//! restarted while east-west keeps working.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_common::test_util::{eventually, get, http1, metric, try_http1};
use berth_e2e::{LocalUp, admin_json, find_process, sidecar_process, signal};
use serde_json::Value;

fn sidecars_of(v: &Value, service: &str) -> Vec<Value> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["service"] == service && s["state"] == "live")
        .cloned()
        .collect()
}

/// Counts successes and failures of one request shape in a loop, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, host: &'static str, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let r = tokio::time::timeout(Duration::from_secs(5), http1(addr, get(host, path))).await;
                match r {
                    Ok(r) if r.status.is_success() => o.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!(
                            "load {host}{path}: {} {}",
                            r.status,
                            r.body.lines().next().unwrap_or("")
                        );
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => f.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Load { stop, ok, failed, task }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// A process the test started itself, killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn east_west_sidecar_kill_and_gateway_restart() {
    let local = LocalUp::start("127.0.160.1");
    local.wait_ready().await;
    let (web, admin) = (local.web, local.admin);

    // North-south to the caller, east-west from it to whoami: the whoami app sees the
    // caller's verified identity, and the Host it was called by.
    let r = http1(web, get("caller.localhost", "/call?url=http://whoami/")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("called http://whoami/: 200 OK"), "{}", r.body);
    assert!(
        r.body
            .contains("X-Berth-Client-Id: spiffe://berth.local/ecs/default/caller"),
        "{}",
        r.body
    );
    let r = http1(web, get("caller.localhost", "/call?url=http://whoami.berth/health")).await;
    assert_eq!(r.status, 200, "the .berth suffix names the same service: {}", r.body);
    // A name the mesh does not know: 503 from the sidecar, no DNS.
    let r = http1(web, get("caller.localhost", "/call?url=http://nosuch/")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("no mesh service nosuch"), "{}", r.body);

    // The registry: every sidecar, live, with identity, version and certificate expiry.
    let sidecars = admin_json(admin, "/api/sidecars").await;
    let whoami = sidecars_of(&sidecars, "whoami");
    let caller = sidecars_of(&sidecars, "caller");
    assert_eq!((whoami.len(), caller.len()), (3, 1), "{sidecars:#}");
    for s in whoami.iter().chain(&caller) {
        assert_eq!(
            s["identity"],
            format!("spiffe://berth.local/ecs/default/{}", s["service"].as_str().unwrap())
        );
        assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
        assert!(s["certificateNotAfterUnix"].as_f64().unwrap() > 0.0);
        assert!(s["lastHeartbeatAgeSeconds"].as_f64().unwrap() < 5.0);
        assert_eq!(s["healthy"], true);
    }
    let metrics = http1(admin, get("admin", "/metrics")).await.body;
    assert!(metrics.contains("berth_sidecars_connected 6"), "{metrics}");
    let caller_app: SocketAddr = format!("{}:8080", caller[0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    // The caller's sidecar counts its east-west calls and its registration.
    let sidecar_admin = SocketAddr::new(caller_app.ip(), 15000);
    let m = http1(sidecar_admin, get("sidecar", "/metrics")).await.body;
    assert!(
        m.contains("berth_sidecar_outbound_requests_total{service=\"whoami\",code=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains("berth_sidecar_outbound_requests_total{service=\"_unknown\",code=\"503\"} 1"),
        "{m}"
    );
    assert!(m.contains("berth_sidecar_registered{replica="), "{m}");
    assert!(m.contains("berth_sidecar_app_healthy 1"), "{m}");

    // Keep-alive: sequential east-west calls reuse the caller's mTLS connections to the
    // three whoami sidecars, and each whoami sidecar its connection to its app.
    let opened = |metrics: &str, pool: &str| {
        metric(
            metrics,
            &format!("berth_sidecar_upstream_connections_opened_total{{pool=\"{pool}\"}}"),
        )
    };
    for _ in 0..60 {
        let r = http1(caller_app, get("caller", "/call?url=http://whoami/")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let m = http1(sidecar_admin, get("sidecar", "/metrics")).await.body;
    let mesh_dials = opened(&m, "mesh");
    println!("60 east-west calls: the caller's sidecar opened {mesh_dials} mTLS connections");
    assert!(
        (1..=6).contains(&mesh_dials),
        "60 sequential east-west calls to 3 tasks opened {mesh_dials} mTLS connections"
    );
    for w in &whoami {
        let admin = SocketAddr::new(w["address"].as_str().unwrap().parse().unwrap(), 15000);
        let m = http1(admin, get("sidecar", "/metrics")).await.body;
        let app_dials = opened(&m, "app");
        assert!(
            (1..=4).contains(&app_dials),
            "a whoami sidecar opened {app_dials} connections to its app for ~20 sequential calls"
        );
    }

    // kill -9 of a whoami sidecar under load, north-south and east-west: its endpoint
    // leaves the rotation and GETs succeed elsewhere.
    let ns = Load::start(web, "whoami.localhost", "/");
    let ew = Load::start(caller_app, "caller", "/call?url=http://whoami/");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = whoami[0]["address"].as_str().unwrap().to_string();
    let procs = sidecar_process(&format!("{victim}:15443"));
    assert_eq!(procs.len(), 1, "the victim's sidecar: {procs:?}");
    let killed = Instant::now();
    signal(procs[0].pid, "KILL");
    let out = eventually(Duration::from_secs(10), || {
        let victim = victim.clone();
        async move {
            let services = http1(admin, get("admin", "/api/http/services")).await.body;
            !services.contains(&format!("mesh://{victim}:"))
        }
    })
    .await;
    let left_after = killed.elapsed();
    assert!(out, "the killed sidecar's task left the rotation");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ns_ok, ns_failed) = ns.finish().await;
    let (ew_ok, ew_failed) = ew.finish().await;
    println!(
        "sidecar kill -9: out of the rotation after {left_after:?}; north-south {ns_ok} ok / {ns_failed} failed; \
         east-west {ew_ok} ok / {ew_failed} failed"
    );
    assert!(ns_ok > 20 && ew_ok > 20, "the loads ran");
    // Only a request in flight on the killed sidecar may fail (one per loop).
    assert!(ns_failed <= 1 && ew_failed <= 1, "{ns_failed} / {ew_failed} failed");

    // The gateway killed: east-west keeps working from the last mesh view.
    let api_url = format!("http://{}", local.api);
    let gws = find_process("berth-gateway", "AWS_ENDPOINT_URL", &api_url);
    assert_eq!(gws.len(), 1, "{gws:?}");
    let gw = gws[0].clone();
    signal(gw.pid, "KILL");
    let down = eventually(Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(admin).await.is_err()
    })
    .await;
    assert!(down, "the gateway is gone");
    for _ in 0..20 {
        let r = http1(caller_app, get("caller", "/call?url=http://whoami/")).await;
        assert_eq!(r.status, 200, "east-west without the gateway: {}", r.body);
    }

    // Restarted (same flags, same CA): the sidecars reconnect and register again.
    let restarted = Command::new(&gw.args[0])
        .args(&gw.args[1..])
        .env_clear()
        .envs(gw.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _restarted = KillOnDrop(restarted);
    let back = Instant::now();
    let reconnected = eventually(Duration::from_secs(20), || async move {
        let s = admin_json(admin, "/api/sidecars").await;
        sidecars_of(&s, "whoami").len() >= 2 && sidecars_of(&s, "caller").len() == 1
    })
    .await;
    let took = back.elapsed();
    let ns_back = eventually(Duration::from_secs(10), || async move {
        try_http1(web, get("caller.localhost", "/call?url=http://whoami/"))
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(reconnected, "sidecars re-registered with the restarted gateway");
    assert!(ns_back, "north-south and east-west through the restarted gateway");
    println!("gateway restart: sidecars re-registered within {took:?}");
}
