//! `berth-local up` end to end: real processes (berth-gateway, berth-whoami), the
//! gateway discovering through berth-local's ECS API. Scaling, stopping, a rolling
//! update under load (failed requests counted), and a clean stop.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_common::test_util::{eventually, get, http1, try_http1};

fn start(first_address: &str) -> LocalUp {
    LocalUp::start(first_address)
}

use berth_e2e::{LocalUp, ecs_client as client, running_tasks};

async fn hostnames(web: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = http1(web, get("whoami.localhost", "/")).await;
        if let Some(h) = r.body.lines().next().and_then(|l| l.strip_prefix("Hostname: ")) {
            seen.insert(h.to_string());
        }
    }
    seen
}

async fn running_ids(ecs: &aws_sdk_ecs::Client) -> BTreeSet<String> {
    running_tasks(ecs, "whoami").await.into_iter().map(|t| t.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_scale_stop_rolling_update_and_clean_exit() {
    let mut local = start("127.0.140.1");
    let ready = eventually(Duration::from_secs(90), || {
        let lines = local.lines.clone();
        async move { lines.lock().unwrap().iter().any(|l| l == "ready") }
    })
    .await;
    assert!(
        ready,
        "berth-local did not print ready: {:?}",
        local.lines.lock().unwrap()
    );
    let web = local.web;
    let ecs = client(&format!("http://{}", local.api));

    // Three tasks, all reached through the gateway and their sidecars (mTLS); each task
    // answers with its id, and sees the gateway's verified identity.
    let all = eventually(Duration::from_secs(10), || async {
        hostnames(web, 30).await == running_ids(&ecs).await
    })
    .await;
    assert!(all, "every running task is reached");
    assert_eq!(running_ids(&ecs).await.len(), 3);
    let r = http1(web, get("whoami.localhost", "/")).await;
    assert!(
        r.body.contains("X-Berth-Client-Id: spiffe://berth.local/gateway"),
        "{}",
        r.body
    );
    // Every sidecar (3 whoami, 1 caller, 2 greeter) proved its task by IAM, no token.
    let metrics = http1(local.admin, get("a", "/metrics")).await.body;
    assert!(
        berth_common::test_util::metric(&metrics, "berth_mesh_iam_total{result=\"accepted\"}") >= 6,
        "{metrics}"
    );

    // Scale 3 -> 5: the gateway converges.
    ecs.update_service()
        .service("whoami")
        .desired_count(5)
        .send()
        .await
        .unwrap();
    let five = eventually(Duration::from_secs(20), || async {
        hostnames(web, 40).await.len() == 5
    })
    .await;
    assert!(five, "scaled to 5: {:?}", running_ids(&ecs).await);

    // Stop a task: it leaves the rotation, and the service replaces it.
    let victim = running_ids(&ecs).await.into_iter().next().unwrap();
    ecs.stop_task().task(&victim).send().await.unwrap();
    let gone = eventually(Duration::from_secs(20), || async {
        let ids = running_ids(&ecs).await;
        ids.len() == 5 && !ids.contains(&victim) && {
            let seen = hostnames(web, 40).await;
            !seen.contains(&victim) && seen.len() == 5
        }
    })
    .await;
    assert!(gone, "stopped task left and was replaced");

    // Rolling update under a steady load, north-south and east-west (the caller's app
    // calls whoami through its sidecar), counting failed requests.
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)> = (0..2)
        .map(|_| (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))))
        .collect();
    let mut loads = Vec::new();
    for (i, (o, f)) in counters.iter().enumerate() {
        let (s, o, f) = (stop.clone(), o.clone(), f.clone());
        let (host, path) = if i == 0 {
            ("whoami.localhost", "/")
        } else {
            ("caller.localhost", "/call?url=http://whoami/")
        };
        loads.push(tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let r = tokio::time::timeout(Duration::from_secs(5), try_http1(web, get(host, path))).await;
                match r {
                    Ok(Some(r)) if r.status.is_success() => o.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!(
                            "{host}{path} failed: {:?}",
                            other.map(|r| r.map(|r| (r.status, r.body)))
                        );
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Registration to routable: when each new task's sidecar first said "healthy"
    // (gateway clock) and when the task first appeared among the gateway's servers.
    let admin = local.admin;
    let sampler_stop = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut healthy_since: std::collections::BTreeMap<String, f64> = Default::default();
        let mut first_routed: std::collections::BTreeMap<String, f64> = Default::default();
        while !sampler_stop.load(Ordering::Relaxed) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            if let Some(r) = try_http1(admin, get("admin", "/api/http/services")).await {
                for part in r.body.split("mesh://").skip(1) {
                    let addr = part.split(':').next().unwrap_or_default().to_string();
                    first_routed.entry(addr).or_insert(now);
                }
            }
            if let Some(r) = try_http1(admin, get("admin", "/api/sidecars")).await {
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
                for sc in v.as_array().into_iter().flatten() {
                    if let (Some(a), Some(t)) = (sc["address"].as_str(), sc["healthySinceUnix"].as_f64()) {
                        healthy_since.entry(a.to_string()).or_insert(t);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (healthy_since, first_routed)
    });
    let before_addrs: BTreeSet<String> = {
        let v: serde_json::Value =
            serde_json::from_str(&http1(local.admin, get("admin", "/api/sidecars")).await.body).unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["address"].as_str().map(str::to_string))
            .collect()
    };
    let started = Instant::now();
    let rolled = berth_e2e::roll_service(&ecs, "whoami", 5, Duration::from_secs(60)).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    let (healthy_since, first_routed) = sampler.await.unwrap();
    assert!(rolled, "the rolling update completed");
    let count = |i: usize| {
        (
            counters[i].0.load(Ordering::Relaxed),
            counters[i].1.load(Ordering::Relaxed),
        )
    };
    let ((ns_ok, ns_failed), (ew_ok, ew_failed)) = (count(0), count(1));
    let mut latencies: Vec<f64> = healthy_since
        .iter()
        .filter(|(a, _)| !before_addrs.contains(*a))
        .filter_map(|(a, t)| first_routed.get(a).map(|r| (r - t).max(0.0)))
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "rolling update of 5 tasks under load, rollout {took:?}: north-south {ns_ok} ok / {ns_failed} failed, \
         east-west {ew_ok} ok / {ew_failed} failed; healthy-registration to routable (s, 20 ms sampling): {latencies:.3?}"
    );
    assert!(ns_ok > 50 && ew_ok > 50, "the load loops ran: {ns_ok} / {ew_ok}");
    // Sidecars deregister when their task is told to stop, and a stopping app's last
    // refusals are retried elsewhere: nothing fails.
    assert_eq!(
        (ns_failed, ew_failed),
        (0, 0),
        "failed requests during the rolling update"
    );
    assert_eq!(latencies.len(), 5, "every new task was seen registering and routed");
    // A loose bound (the goal, 1 s, is reported above, not timed here).
    assert!(latencies.iter().all(|l| *l < 5.0), "{latencies:?}");
    let after = eventually(Duration::from_secs(10), || async {
        hostnames(web, 40).await == running_ids(&ecs).await
    })
    .await;
    assert!(
        after,
        "the new tasks are the ones routed: routed {:?}, running {:?}",
        hostnames(web, 60).await,
        running_ids(&ecs).await
    );

    // A clean stop: SIGTERM, and nothing it started keeps listening.
    let _ = Command::new("kill")
        .args(["-TERM", &local.child.id().to_string()])
        .status();
    let exited = eventually(Duration::from_secs(40), || {
        let done = matches!(local.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "berth-local exits on SIGTERM");
    assert!(tokio::net::TcpStream::connect(web).await.is_err(), "gateway stopped");
    assert!(tokio::net::TcpStream::connect(local.admin).await.is_err());
    for i in 1..=8 {
        let addr: SocketAddr = format!("127.0.140.{i}:8080").parse().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "a whoami task survived at {addr}"
        );
    }
}

#[tokio::test]
async fn kill_9_leaves_no_child_behind() {
    let mut local = start("127.0.150.1");
    let ready = eventually(Duration::from_secs(90), || {
        let lines = local.lines.clone();
        async move { lines.lock().unwrap().iter().any(|l| l == "ready") }
    })
    .await;
    assert!(ready, "{:?}", local.lines.lock().unwrap());
    assert!(tokio::net::TcpStream::connect("127.0.150.1:8080").await.is_ok());
    local.child.kill().unwrap();
    let _ = local.child.wait();
    let web = local.web;
    let clean = eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(web).await.is_err()
            && tokio::net::TcpStream::connect("127.0.150.1:8080").await.is_err()
            && tokio::net::TcpStream::connect("127.0.150.3:8080").await.is_err()
    })
    .await;
    assert!(clean, "children outlived berth-local's SIGKILL");
}
