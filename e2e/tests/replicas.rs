//! Several gateway replicas in `berth-local up --gateways 3`, under a steady load spread
//! over the replicas the way a load balancer with health checks would: one killed with
//! SIGKILL (ECS replaces it), scaled 3 -> 2 -> 4, an app turning unhealthy (every replica
//! stops routing to it), and a sidecar starting while a replica is down.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_common::test_util::{eventually, get, try_http1};
use berth_e2e::{LocalUp, ecs_client, find_process, sidecar_process, signal};

const GATEWAY_SERVICE: &str = "berth-gateway";

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Running replicas, by address: desired RUNNING and RUNNING in ECS.
async fn replicas(ecs: &aws_sdk_ecs::Client) -> Vec<IpAddr> {
    let Ok(list) = ecs.list_tasks().service_name(GATEWAY_SERVICE).send().await else {
        return vec![];
    };
    if list.task_arns().is_empty() {
        return vec![];
    }
    let Ok(d) = ecs
        .describe_tasks()
        .set_tasks(Some(list.task_arns().to_vec()))
        .send()
        .await
    else {
        return vec![];
    };
    let mut out: Vec<IpAddr> = d
        .tasks()
        .iter()
        .filter(|t| t.last_status() == Some("RUNNING") && t.desired_status() == Some("RUNNING"))
        .filter_map(|t| {
            t.attachments()
                .iter()
                .flat_map(|a| a.details())
                .find(|kv| kv.name() == Some("privateIPv4Address"))
                .and_then(|kv| kv.value())
                .and_then(|v| v.parse().ok())
        })
        .collect();
    out.sort();
    out
}

async fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    match try_http1(addr, get("admin", path)).await {
        Some(r) => serde_json::from_str(&r.body).unwrap_or_default(),
        None => serde_json::Value::Null,
    }
}

/// A load balancer in front of the replicas: targets are the running replicas whose
/// `/readyz` answers 200, refreshed every 100 ms; `drop_now` is a target deregistered at once.
struct Balancer {
    targets: Arc<RwLock<Vec<IpAddr>>>,
    gone: Arc<RwLock<Vec<IpAddr>>>,
}

impl Balancer {
    fn start(ecs: aws_sdk_ecs::Client, admin_port: u16, stop: Arc<AtomicBool>) -> Balancer {
        let targets: Arc<RwLock<Vec<IpAddr>>> = Arc::default();
        let gone: Arc<RwLock<Vec<IpAddr>>> = Arc::default();
        let (t, g) = (targets.clone(), gone.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut ready = Vec::new();
                for ip in replicas(&ecs).await {
                    let admin = SocketAddr::new(ip, admin_port);
                    let ok = try_http1(admin, get("lb", "/readyz"))
                        .await
                        .is_some_and(|r| r.status == 200);
                    if ok {
                        ready.push(ip);
                    }
                }
                // Under the `gone` lock, so a target dropped meanwhile is not put back.
                {
                    let gone = g.read().unwrap();
                    ready.retain(|ip| !gone.contains(ip));
                    *t.write().unwrap() = ready;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Balancer { targets, gone }
    }

    fn drop_now(&self, ip: IpAddr) {
        let mut gone = self.gone.write().unwrap();
        gone.push(ip);
        self.targets.write().unwrap().retain(|t| *t != ip);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_killed_scaled_health_and_a_new_sidecar() {
    let local = LocalUp::start_with("127.0.170.1", &["--gateways", "3"]);
    local.wait_ready().await;
    let ecs = ecs_client(&format!("http://{}", local.api));
    let (web_port, admin_port) = (local.web.port(), local.admin.port());
    let first = replicas(&ecs).await;
    assert_eq!(first.len(), 3, "{first:?}");

    // Every replica has every sidecar registered (each sidecar talks to all of them).
    let all_registered = eventually(Duration::from_secs(10), || {
        let first = first.clone();
        async move {
            for ip in &first {
                let s = json(SocketAddr::new(*ip, admin_port), "/api/sidecars").await;
                let live = s.as_array().map(|a| a.iter().filter(|x| x["state"] == "live").count());
                // whoami x3, caller, greeter x2.
                if live != Some(6) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(all_registered, "every replica sees the 6 sidecars");

    // Steady load, round robin over the balancer's targets, failures recorded by target.
    let stop = Arc::new(AtomicBool::new(false));
    let lb = Balancer::start(ecs.clone(), admin_port, stop.clone());
    let ok = Arc::new(AtomicU64::new(0));
    let failures: Arc<RwLock<Vec<IpAddr>>> = Arc::default();
    let mut loads = Vec::new();
    for (i, (host, path)) in [
        ("whoami.localhost", "/"),
        ("caller.localhost", "/call?url=http://whoami/"),
    ]
    .into_iter()
    .enumerate()
    {
        let (targets, stop, ok, failures) = (lb.targets.clone(), stop.clone(), ok.clone(), failures.clone());
        let next = Arc::new(AtomicUsize::new(i));
        loads.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let target = {
                    let t = targets.read().unwrap();
                    if t.is_empty() {
                        None
                    } else {
                        Some(t[next.fetch_add(1, Ordering::Relaxed) % t.len()])
                    }
                };
                let Some(ip) = target else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    try_http1(SocketAddr::new(ip, web_port), get(host, path)),
                )
                .await;
                match r {
                    Ok(Some(r)) if r.status.is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("{ip} {host}{path}: {:?}", other.map(|r| r.map(|r| (r.status, r.body))));
                        failures.write().unwrap().push(ip);
                    }
                }
            }
        }));
    }
    let have = |n: usize| {
        let targets = lb.targets.clone();
        move || {
            let targets = targets.clone();
            async move { targets.read().unwrap().len() == n }
        }
    };
    assert!(
        eventually(Duration::from_secs(10), have(3)).await,
        "the balancer has 3 targets"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. SIGKILL one replica (the balancer stops sending new requests at once); ECS
    //    replaces it and the new replica joins.
    let victim = first[0];
    let procs = find_process("berth-gateway", "BERTH_LOCAL_ADDRESS", &victim.to_string());
    assert_eq!(procs.len(), 1, "{procs:?}");
    lb.drop_now(victim);
    signal(procs[0].pid, "KILL");
    let replaced = eventually(Duration::from_secs(30), have(3)).await;
    assert!(replaced, "ECS replaced the killed replica: {:?}", replicas(&ecs).await);
    println!("killed replica {victim}; replaced by {:?}", replicas(&ecs).await);

    // 2. Scale 3 -> 2 -> 4.
    ecs.update_service()
        .service(GATEWAY_SERVICE)
        .desired_count(2)
        .send()
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(30), have(2)).await, "scaled in to 2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    ecs.update_service()
        .service(GATEWAY_SERVICE)
        .desired_count(4)
        .send()
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(30), have(4)).await, "scaled out to 4");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. An app turns unhealthy: every replica stops routing to it.
    let living = lb.targets.read().unwrap().clone();
    let sick = {
        let s = json(SocketAddr::new(living[0], admin_port), "/api/sidecars").await;
        s.as_array()
            .unwrap()
            .iter()
            .find(|x| x["service"] == "whoami" && x["state"] == "live")
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let app: SocketAddr = format!("{sick}:8080").parse().unwrap();
    let turned = Instant::now();
    try_http1(app, get("app", "/health/set?healthy=false")).await.unwrap();
    let out_after: Arc<Mutex<BTreeMap<IpAddr, Duration>>> = Arc::default();
    let everywhere = eventually(Duration::from_secs(5), || {
        let (living, sick, out_after) = (living.clone(), sick.clone(), out_after.clone());
        async move {
            for ip in &living {
                if out_after.lock().unwrap().contains_key(ip) {
                    continue;
                }
                let services = try_http1(SocketAddr::new(*ip, admin_port), get("admin", "/api/http/services")).await;
                if services.is_some_and(|r| !r.body.contains(&format!("mesh://{sick}:"))) {
                    out_after.lock().unwrap().insert(*ip, turned.elapsed());
                }
            }
            out_after.lock().unwrap().len() == living.len()
        }
    })
    .await;
    println!(
        "unhealthy app out of the rotation on each replica after {:?}",
        out_after.lock().unwrap()
    );
    assert!(everywhere, "every replica stopped routing to the unhealthy app");
    try_http1(app, get("app", "/health/set?healthy=true")).await.unwrap();

    // 4. A sidecar starting while a replica is down gets its certificate from another and
    //    is routable through every living replica.
    let down = living[0];
    let procs = find_process("berth-gateway", "BERTH_LOCAL_ADDRESS", &down.to_string());
    lb.drop_now(down);
    signal(procs[0].pid, "KILL");
    let before: Vec<String> = json(SocketAddr::new(living[1], admin_port), "/api/sidecars")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["address"].as_str().map(str::to_string))
        .collect();
    ecs.update_service()
        .service("whoami")
        .desired_count(4)
        .send()
        .await
        .unwrap();
    let alive: Vec<IpAddr> = living[1..].to_vec();
    let newcomer: Arc<Mutex<Option<(String, f64)>>> = Arc::default();
    let routed_at: Arc<Mutex<BTreeMap<IpAddr, f64>>> = Arc::default();
    let joined = eventually(Duration::from_secs(30), || {
        let (alive, before) = (alive.clone(), before.clone());
        let (newcomer, routed_at) = (newcomer.clone(), routed_at.clone());
        async move {
            if newcomer.lock().unwrap().is_none() {
                let s = json(SocketAddr::new(alive[0], admin_port), "/api/sidecars").await;
                *newcomer.lock().unwrap() = s.as_array().into_iter().flatten().find_map(|x| {
                    let a = x["address"].as_str()?;
                    (!before.iter().any(|b| b == a) && x["service"] == "whoami")
                        .then_some((a.to_string(), x["healthySinceUnix"].as_f64()?))
                });
            }
            let Some((addr, _)) = newcomer.lock().unwrap().clone() else {
                return false;
            };
            for ip in &alive {
                if routed_at.lock().unwrap().contains_key(ip) {
                    continue;
                }
                let services = try_http1(SocketAddr::new(*ip, admin_port), get("admin", "/api/http/services")).await;
                if services.is_some_and(|r| r.body.contains(&format!("mesh://{addr}:"))) {
                    routed_at.lock().unwrap().insert(*ip, now_unix());
                }
            }
            routed_at.lock().unwrap().len() == alive.len()
        }
    })
    .await;
    let routed_at = routed_at.lock().unwrap().clone();
    let newcomer = newcomer.lock().unwrap().clone();
    assert!(
        joined,
        "the new task is routable through every living replica: {newcomer:?} {routed_at:?}"
    );
    let (addr, healthy_since) = newcomer.clone().unwrap();
    let lags: Vec<f64> = routed_at.values().map(|t| (t - healthy_since).max(0.0)).collect();
    println!("new task {addr} (a replica down): healthy registration to routable on each living replica: {lags:.3?} s");
    let certified = sidecar_process(&format!("{addr}:15443"));
    assert_eq!(certified.len(), 1, "the new sidecar runs");

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    let failures = failures.read().unwrap().clone();
    let killed = [victim, down];
    let in_flight_on_killed = failures.iter().filter(|f| killed.contains(f)).count();
    let others = failures.len() - in_flight_on_killed;
    println!(
        "load through the replicas: {} ok, {others} failed (besides {in_flight_on_killed} in flight on a killed replica)",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 200, "the load ran");
    assert!(
        in_flight_on_killed <= 4,
        "at most the requests in flight on the killed replicas: {in_flight_on_killed}"
    );
    assert_eq!(others, 0, "no other request failed: {failures:?}");
}
