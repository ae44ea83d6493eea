//! Fault scenarios on `berth-local up` (the demo: whoami x3, caller, greeter x2, each task
//! with its sidecar), each under two load loops of idempotent GETs that count every failed
//! request:
//! - north-south: client -> gateway -> mTLS -> whoami's sidecar -> app;
//! - east-west: client -> gateway -> caller -> caller's sidecar -> mTLS -> whoami's
//!   sidecar -> app (`/call?url=http://whoami/`).
//!
//! In order: ECS API throttling, then an ECS API outage (120 s, `BERTH_FAULT_OUTAGE_SECS`);
//! a sidecar killed with SIGKILL; an app that hangs (SIGSTOP); slowloris and header
//! floods on the entrypoint; a rolling deploy of every service at once. Goals: no failed
//! request, nothing routed to a dead task 1 s after it died, bounded gateway memory.
//! The gateway killed and restarted under load is `replicas.rs` (it needs replicas and a
//! balancer in front). Prints the fault table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_common::test_util::{eventually, get, try_http1};
use berth_e2e::{LocalUp, ecs_client, find_process, rss_kib, sidecar_process, signal};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counters of one load loop; `take` reads and resets them for the next phase.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    max_ms: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Counts {
    fn take(&self) -> (u64, u64, u64, Vec<String>) {
        (
            self.ok.swap(0, Ordering::SeqCst),
            self.failed.swap(0, Ordering::SeqCst),
            self.max_ms.swap(0, Ordering::SeqCst),
            std::mem::take(&mut *self.samples.lock().unwrap()),
        )
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    north_south: Arc<Counts>,
    east_west: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Two workers per loop, each sending its next request when the last one ended.
    fn start(web: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (north_south, east_west): (Arc<Counts>, Arc<Counts>) = Default::default();
        let mut tasks = Vec::new();
        for (counts, host, path) in [
            (north_south.clone(), "whoami.localhost", "/"),
            (east_west.clone(), "caller.localhost", "/call?url=http://whoami/"),
        ] {
            for _ in 0..2 {
                let (stop, counts) = (stop.clone(), counts.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let r = tokio::time::timeout(Duration::from_secs(10), try_http1(web, get(host, path))).await;
                        let ms = t.elapsed().as_millis() as u64;
                        counts.max_ms.fetch_max(ms, Ordering::Relaxed);
                        match r {
                            Ok(Some(r)) if r.status.is_success() => {
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                let what = match other {
                                    Ok(Some(r)) => format!("{} {}", r.status, r.body.trim()),
                                    Ok(None) => "no answer".into(),
                                    Err(_) => "client timeout (10 s)".into(),
                                };
                                let mut s = counts.samples.lock().unwrap();
                                if s.len() < 5 {
                                    s.push(format!("{host}{path}: {what} after {ms} ms"));
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }));
            }
        }
        Load {
            stop,
            north_south,
            east_west,
            tasks,
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// One row of the fault table.
struct Row {
    fault: String,
    ns: (u64, u64, u64),
    ew: (u64, u64, u64),
    note: String,
}

struct Table {
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Table {
    /// Close a phase: record both loops' counts since the last phase.
    fn phase(&mut self, load: &Load, fault: &str, note: String) {
        let (ns_ok, ns_failed, ns_max, ns_samples) = load.north_south.take();
        let (ew_ok, ew_failed, ew_max, ew_samples) = load.east_west.take();
        println!(
            "FAULT {fault}: north-south {ns_ok} ok / {ns_failed} failed (slowest {ns_max} ms); \
             east-west {ew_ok} ok / {ew_failed} failed (slowest {ew_max} ms); {note}"
        );
        for s in ns_samples.iter().chain(&ew_samples) {
            println!("    failed: {s}");
        }
        self.failures.extend(
            ns_samples
                .into_iter()
                .chain(ew_samples)
                .map(|s| format!("{fault}: {s}")),
        );
        self.rows.push(Row {
            fault: fault.into(),
            ns: (ns_ok, ns_failed, ns_max),
            ew: (ew_ok, ew_failed, ew_max),
            note,
        });
    }

    fn print(&self) {
        println!("\n| fault | north-south ok / failed | east-west ok / failed | slowest request (ms) | observed |");
        println!("|---|---:|---:|---:|---|");
        for r in &self.rows {
            println!(
                "| {} | {} / {} | {} / {} | {} / {} | {} |",
                r.fault, r.ns.0, r.ns.1, r.ew.0, r.ew.1, r.ns.2, r.ew.2, r.note
            );
        }
    }
}

async fn admin_json(local: &LocalUp, path: &str) -> Value {
    let r = try_http1(local.admin, get("admin", path)).await.expect("admin API");
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

/// whoami's endpoints at the gateway: (URL, UP?).
async fn whoami_endpoints(local: &LocalUp) -> Vec<(String, bool)> {
    let services = admin_json(local, "/api/http/services").await;
    services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "whoami@ecs")
        .flat_map(|s| s["serverStatus"].as_object().cloned().unwrap_or_default())
        .map(|(url, st)| (url, st == "UP"))
        .collect()
}

async fn whoami_up(local: &LocalUp, n: usize) -> bool {
    let eps = whoami_endpoints(local).await;
    eps.len() == n && eps.iter().all(|(_, up)| *up)
}

/// The sum of a counter family's samples whose line contains `filter`.
async fn metric(local: &LocalUp, family: &str, filter: &str) -> f64 {
    let r = try_http1(local.admin, get("admin", "/metrics")).await.expect("metrics");
    r.body
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn faults(local: &LocalUp, body: Value) {
    let mut s = tokio::net::TcpStream::connect(local.api).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "POST /berth-local/faults HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// The demo's definitions, with whoami's router behind a retry middleware (what an
/// operator sets for idempotent traffic, so a timed-out request may go elsewhere) and the
/// sidecars' outbound response timeout at 1 s.
fn definitions() -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../local/demo");
    let dir = std::env::temp_dir().join(format!("berth-faults-{}", std::process::id()));
    for sub in ["taskdefs", "services"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            if sub == "taskdefs" {
                // East-west, a peer that does not answer within 1 s is given up on and an
                // idempotent request goes to another endpoint.
                for c in v["containerDefinitions"].as_array_mut().unwrap() {
                    if c["name"] == "berth-sidecar" {
                        c["environment"]
                            .as_array_mut()
                            .unwrap()
                            .push(json!({"name": "BERTH_OUTBOUND_RESPONSE_TIMEOUT", "value": "1s"}));
                    }
                }
            }
            if sub == "taskdefs" && v["family"] == "whoami" {
                for c in v["containerDefinitions"].as_array_mut().unwrap() {
                    if c["name"] == "whoami" {
                        let l = c["dockerLabels"].as_object_mut().unwrap();
                        l.insert("berth.http.routers.whoami.middlewares".into(), json!("whoami-retry"));
                        l.insert("berth.http.middlewares.whoami-retry.retry.attempts".into(), json!("3"));
                        l.insert(
                            "berth.http.middlewares.whoami-retry.retry.initialinterval".into(),
                            json!("50ms"),
                        );
                    }
                }
            }
            std::fs::write(dir.join(sub).join(p.file_name().unwrap()), v.to_string()).unwrap();
        }
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load() {
    let outage = std::env::var("BERTH_FAULT_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120u64);
    let defs = definitions();
    let local = LocalUp::start_with(
        "127.0.190.1",
        &[
            "--dir",
            defs.to_str().unwrap(),
            "--gateway-arg",
            "--upstream-response-timeout=2s",
            "--gateway-arg",
            "--header-read-timeout=5s",
        ],
    );
    local.wait_ready().await;
    let ecs = ecs_client(&format!("http://{}", local.api));
    let gateway_pid = find_process("berth-gateway", "AWS_ENDPOINT_URL", &format!("http://{}", local.api))
        .first()
        .map(|p| p.pid)
        .expect("the gateway process");
    assert!(
        eventually(Duration::from_secs(20), || whoami_up(&local, 3)).await,
        "{:?}",
        whoami_endpoints(&local).await
    );
    let load = Load::start(local.web);
    let mut table = Table {
        rows: Vec::new(),
        failures: Vec::new(),
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    table.phase(&load, "none (baseline, 3 s)", "".into());

    // 1. ECS API throttling: half of all calls answered ThrottlingException.
    let throttled_before = metric(&local, "berth_ecs_api_calls_total", "throttl").await;
    faults(&local, json!({"throttleRate": 0.5})).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let throttled = metric(&local, "berth_ecs_api_calls_total", "throttl").await - throttled_before;
    assert!(throttled > 0.0, "the gateway met throttling");
    assert!(whoami_up(&local, 3).await, "routes stay while throttled");
    table.phase(
        &load,
        "ECS API throttling (50 % of calls), 10 s",
        format!("{throttled} throttled calls; routes kept"),
    );

    // 2. ECS API outage: every call fails; the last good view stays, complete.
    let routers_before = admin_json(&local, "/api/http/routers").await.as_array().map(Vec::len);
    faults(&local, json!({"outage": true})).await;
    let t = Instant::now();
    let mut worst_stale = 0f64;
    while t.elapsed() < Duration::from_secs(outage) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let routers = admin_json(&local, "/api/http/routers").await.as_array().map(Vec::len);
        assert_eq!(routers, routers_before, "no partial snapshot during the outage");
        assert!(
            whoami_endpoints(&local).await.len() == 3,
            "routes stay during the outage"
        );
        let ecs_status = admin_json(&local, "/api/ecs").await;
        worst_stale = worst_stale.max(ecs_status["clusters"][0]["staleSeconds"].as_f64().unwrap_or(0.0));
    }
    let status = admin_json(&local, "/api/ecs").await;
    let last_error = status["clusters"][0]["lastError"].as_str().unwrap_or("").to_string();
    assert!(
        last_error.contains("ServiceUnavailable") || last_error.contains("navailable"),
        "the outage shows in the admin API: {status}"
    );
    assert!(worst_stale >= outage as f64 - 5.0, "staleness reported: {worst_stale}");
    // Recovery: faults off; a scale-up is seen and routed, then a scale-down.
    faults(&local, json!({})).await;
    let recovered = Instant::now();
    ecs.update_service()
        .service("whoami")
        .desired_count(4)
        .send()
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || whoami_up(&local, 4)).await,
        "a new task is routed after the outage: {:?}",
        whoami_endpoints(&local).await
    );
    let to_routable = recovered.elapsed().as_secs_f64();
    ecs.update_service()
        .service("whoami")
        .desired_count(3)
        .send()
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || whoami_up(&local, 3)).await);
    table.phase(
        &load,
        &format!("ECS API outage, {outage} s, then recovery"),
        format!(
            "routers unchanged; staleness up to {worst_stale:.0} s in /api/ecs; after recovery a new task routable in {to_routable:.1} s (start included)"
        ),
    );

    // 3. A sidecar killed with SIGKILL: its task stops (essential container), ECS
    //    replaces it; requests that met it go elsewhere.
    let victim = whoami_endpoints(&local).await[0].0.clone();
    let victim_ip = victim
        .trim_start_matches("mesh://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let procs = sidecar_process(&format!("{victim_ip}:15443"));
    assert_eq!(procs.len(), 1, "{victim}");
    signal(procs[0].pid, "KILL");
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let errors_at_1s = metric(&local, "berth_upstream_errors_total", "whoami").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors_later = metric(&local, "berth_upstream_errors_total", "whoami").await;
    let gone = whoami_endpoints(&local).await.iter().all(|(u, _)| *u != victim);
    assert!(
        eventually(Duration::from_secs(30), || whoami_up(&local, 3)).await,
        "ECS replaced the task: {:?}",
        whoami_endpoints(&local).await
    );
    table.phase(
        &load,
        "sidecar SIGKILL (one whoami task)",
        format!(
            "gateway upstream errors for whoami from 1 s to 5 s after the kill: {}; endpoint {} 5 s after; replaced in {:.1} s",
            errors_later - errors_at_1s,
            if gone { "removed" } else { "still listed" },
            killed.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(errors_later, errors_at_1s, "nothing routed to the dead task after 1 s");

    // 4. An app that hangs (SIGSTOP: its socket accepts, nothing answers). The gateway's
    //    response timeout (2 s) fires, ejects it, the retry sends the request on; its
    //    sidecar's health check fails and the mesh drops it.
    let eps = whoami_endpoints(&local).await;
    let hung_ip = eps[0]
        .0
        .trim_start_matches("mesh://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let apps = find_process("berth-whoami", "BERTH_LOCAL_ADDRESS", &hung_ip);
    assert_eq!(apps.len(), 1, "{hung_ip}");
    let timeouts_before = metric(&local, "berth_upstream_errors_total", "timeout").await;
    signal(apps[0].pid, "STOP");
    let stopped = Instant::now();
    let out = eventually(Duration::from_secs(30), || async {
        whoami_endpoints(&local)
            .await
            .iter()
            .all(|(u, _)| !u.contains(&format!("{hung_ip}:")))
    })
    .await;
    let out_after = stopped.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let timeouts = metric(&local, "berth_upstream_errors_total", "timeout").await - timeouts_before;
    signal(apps[0].pid, "CONT");
    assert!(out, "the hung app's endpoint left the gateway's service");
    assert!(
        eventually(Duration::from_secs(30), || whoami_up(&local, 3)).await,
        "back after SIGCONT"
    );
    table.phase(
        &load,
        "app hangs (SIGSTOP one whoami app), then resumes",
        format!("{timeouts} gateway response timeouts; endpoint out of the service after {out_after:.1} s; back after SIGCONT"),
    );

    // 5. Slowloris and header floods on the entrypoint.
    let rss_before = rss_kib(gateway_pid);
    let attack_stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let (stop, closed, web) = (attack_stop.clone(), closed.clone(), local.web);
        attackers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(web).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if s.write_all(b"GET / HTTP/1.1\r\nHost: whoami.localhost\r\n")
                    .await
                    .is_err()
                {
                    continue;
                }
                // One header byte a second, as slowly as the server allows.
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.write_all(b"X").await.is_err() {
                        closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }));
    }
    for _ in 0..8 {
        let (stop, refused, web) = (attack_stop.clone(), refused.clone(), local.web);
        attackers.push(tokio::spawn(async move {
            let mut head = b"GET / HTTP/1.1\r\nHost: whoami.localhost\r\n".to_vec();
            for i in 0..4000 {
                head.extend_from_slice(format!("X-Flood-{i}: {}\r\n", "v".repeat(40)).as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(web).await else {
                    continue;
                };
                let _ = s.write_all(&head).await;
                let mut buf = vec![0u8; 4096];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
                    && buf[..n].starts_with(b"HTTP/1.1 431")
                {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut rss_peak = rss_before;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_peak = rss_peak.max(rss_kib(gateway_pid));
    }
    attack_stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    let (refused, closed) = (refused.load(Ordering::Relaxed), closed.load(Ordering::Relaxed));
    table.phase(
        &load,
        "slowloris (300 connections) + header floods (8 x 200 KiB heads), 15 s",
        format!(
            "{closed} slow connections closed by the header timeout; {refused} floods refused with 431; gateway RSS {:.1} -> peak {:.1} MiB",
            rss_before as f64 / 1024.0,
            rss_peak as f64 / 1024.0
        ),
    );
    assert!(refused > 10, "header floods refused: {refused}");
    assert!(closed > 100, "slow connections closed: {closed}");
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "gateway memory bounded: {rss_before} -> {rss_peak} KiB"
    );

    // 6. A rolling deploy of every service at once.
    let started = Instant::now();
    let mut deployed = BTreeMap::new();
    for svc in ["whoami", "caller", "greeter"] {
        let d = ecs
            .describe_task_definition()
            .task_definition(svc)
            .send()
            .await
            .unwrap()
            .task_definition
            .unwrap();
        let mut containers = d.container_definitions.unwrap_or_default();
        for c in &mut containers {
            let mut env = c.environment.clone().unwrap_or_default();
            env.push(
                aws_sdk_ecs::types::KeyValuePair::builder()
                    .name("DEPLOY")
                    .value("2")
                    .build(),
            );
            c.environment = Some(env);
        }
        let r = ecs
            .register_task_definition()
            .family(svc)
            // The task role too: the demo's sidecars prove their task with it.
            .set_task_role_arn(d.task_role_arn)
            .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
            .set_requires_compatibilities(d.requires_compatibilities)
            .set_cpu(d.cpu)
            .set_memory(d.memory)
            .set_container_definitions(Some(containers))
            .send()
            .await
            .unwrap();
        let arn = r.task_definition.unwrap().task_definition_arn.unwrap();
        deployed.insert(svc, arn);
    }
    for (svc, arn) in &deployed {
        ecs.update_service()
            .service(*svc)
            .task_definition(arn)
            .send()
            .await
            .unwrap();
    }
    let done = eventually(Duration::from_secs(180), || {
        let (ecs, deployed) = (ecs.clone(), deployed.clone());
        async move {
            let r = ecs
                .describe_services()
                .set_services(Some(deployed.keys().map(|s| s.to_string()).collect()))
                .send()
                .await
                .unwrap();
            r.services().iter().all(|s| {
                let deps = s.deployments();
                deps.len() == 1
                    && deps[0].task_definition() == deployed.get(s.service_name().unwrap_or("")).map(|a| a.as_str())
                    && deps[0].running_count() == s.desired_count()
            })
        }
    })
    .await;
    assert!(done, "the three deployments completed");
    // The phase lasts until every task of the old revisions has stopped (the drain is
    // where requests get lost).
    let drained = eventually(Duration::from_secs(120), || {
        let (ecs, deployed) = (ecs.clone(), deployed.clone());
        async move {
            for (svc, arn) in &deployed {
                let mut arns = Vec::new();
                for status in [
                    aws_sdk_ecs::types::DesiredStatus::Running,
                    aws_sdk_ecs::types::DesiredStatus::Stopped,
                ] {
                    let l = ecs
                        .list_tasks()
                        .family(*svc)
                        .desired_status(status)
                        .send()
                        .await
                        .unwrap();
                    arns.extend(l.task_arns().iter().cloned());
                }
                let d = ecs.describe_tasks().set_tasks(Some(arns)).send().await.unwrap();
                let old_alive = d
                    .tasks()
                    .iter()
                    .any(|t| t.task_definition_arn() != Some(arn.as_str()) && t.last_status() != Some("STOPPED"));
                let new_running = d
                    .tasks()
                    .iter()
                    .filter(|t| t.task_definition_arn() == Some(arn.as_str()) && t.last_status() == Some("RUNNING"))
                    .count();
                if old_alive || new_running == 0 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(drained, "the old tasks stopped");
    assert!(eventually(Duration::from_secs(30), || whoami_up(&local, 3)).await);
    table.phase(
        &load,
        "rolling deploy of whoami, caller and greeter at once",
        format!(
            "all three services on a new revision, old tasks stopped, in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );

    load.stop().await;
    table.print();
    let failed: u64 = table.rows.iter().map(|r| r.ns.1 + r.ew.1).sum();
    let served: u64 = table.rows.iter().map(|r| r.ns.0 + r.ew.0).sum();
    assert!(served > 1000, "the load ran: {served}");
    assert_eq!(failed, 0, "failed requests: {:#?}", table.failures);
    let _ = std::fs::remove_dir_all(defs);
}
