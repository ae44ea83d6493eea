//! East-west routing set by the callee's own labels and applied in the caller's sidecar,
//! in `berth-local up` (real gateway, sidecars, apps and mTLS): `orders` shares its
//! calls 3:1 with `orders-canary`, which consents with `berth.weighted.allow=orders`;
//! `payments` names the canary without its consent and keeps every call; `orders`'
//! `berth.mesh.timeout` with `berth.mesh.retry` carries calls past a hung task;
//! `catalog`'s sticky cookie keeps a caller on one task; and `inventory`'s
//! `berth.mesh.failover` sends calls to `inventory-dr` while it is down.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_common::test_util::{eventually, get, http1, metric};
use berth_e2e::{LocalUp, demo_taskdef, write_service};
use serde_json::{Value, json};

/// The demo's caller, and three services made from its whoami task definition, each
/// answering with its own name.
fn definitions() -> PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../local/demo");
    let dir = berth_e2e::temp_dir("mesh-policy");
    for sub in ["taskdefs", "services"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::copy(src.join(sub).join("caller.json"), dir.join(sub).join("caller.json")).unwrap();
    }
    let whoami = demo_taskdef("whoami");
    let services: &[(&str, &str, usize, Value)] = &[
        (
            "orders",
            "orders",
            2,
            json!({
                "berth.mesh.weighted.services[0].name": "orders",
                "berth.mesh.weighted.services[0].weight": "3",
                "berth.mesh.weighted.services[1].name": "orders-canary",
                "berth.mesh.weighted.services[1].weight": "1",
                "berth.mesh.retry.attempts": "3",
                "berth.mesh.retry.initialInterval": "10ms",
                "berth.mesh.retry.status": "503",
                "berth.mesh.timeout": "400ms",
            }),
        ),
        (
            "orders-canary",
            "canary",
            1,
            json!({ "berth.weighted.allow": "orders" }),
        ),
        (
            "inventory",
            "inventory",
            1,
            json!({ "berth.mesh.failover": "inventory-dr" }),
        ),
        ("inventory-dr", "dr", 1, json!({ "berth.weighted.allow": "inventory" })),
        (
            "catalog",
            "catalog",
            2,
            json!({ "berth.mesh.sticky.cookie.name": "catalog_task", "berth.mesh.sticky.cookie.httpOnly": "true" }),
        ),
        (
            "payments",
            "payments",
            1,
            json!({
                "berth.mesh.weighted.services[0].name": "payments",
                "berth.mesh.weighted.services[1].name": "orders-canary",
            }),
        ),
    ];
    for (family, name, count, labels) in services {
        let mut t = whoami.clone();
        t["family"] = json!(family);
        for c in t["containerDefinitions"].as_array_mut().unwrap() {
            if c["name"] == "whoami" {
                c["dockerLabels"] = labels.clone();
                c["environment"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "WHOAMI_NAME", "value": name}));
            }
        }
        write_service(&dir, &t, *count);
    }
    dir
}

/// Who answered an east-west call the caller made (`Hostname: NAME` of the callee).
fn answered_by(body: &str) -> &str {
    body.lines().find_map(|l| l.strip_prefix("Hostname: ")).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_retries_and_timeouts_follow_the_callees_labels() {
    let dir = definitions();
    let local = LocalUp::start_with("127.0.170.1", &["--dir", dir.to_str().unwrap()]);
    local.wait_ready().await;
    let admin = local.admin;
    let wanted = [
        ("caller", 1),
        ("orders", 2),
        ("orders-canary", 1),
        ("payments", 1),
        ("inventory", 1),
        ("inventory-dr", 1),
        ("catalog", 2),
    ];
    let tasks = local.wait_sidecars(&wanted).await;
    let caller: SocketAddr = format!("{}:8080", tasks["caller"][0]).parse().unwrap();
    let call = |url: &'static str| async move {
        let started = Instant::now();
        let r = http1(caller, get("caller", &format!("/call?url={url}"))).await;
        (r, started.elapsed())
    };

    // 3:1 between orders and its consenting canary, by smooth weighted round robin in
    // the caller's sidecar (exact over 40 calls; 10 % is the bound asked for).
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let (r, _) = call("http://orders/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        *by.entry(answered_by(&r.body).to_string()).or_default() += 1;
    }
    println!("40 calls to orders: {by:?}");
    let canary = by.get("canary").copied().unwrap_or(0);
    assert!((6..=14).contains(&canary), "3:1 split: {by:?}");
    assert_eq!(by.get("orders").copied().unwrap_or(0) + canary, 40, "{by:?}");
    // The canary's sidecar saw the caller's identity: the mTLS hop went to the canary's
    // own identity, and its allow list is its own.
    let (r, _) = call("http://orders-canary/").await;
    assert_eq!(answered_by(&r.body), "canary");

    // payments named the canary without its consent: no split, every call its own, and
    // the gateway says which label would allow it.
    for _ in 0..8 {
        let (r, _) = call("http://payments/").await;
        assert_eq!(answered_by(&r.body), "payments", "{}", r.body);
    }
    let diags = http1(admin, get("admin", "/api/diagnostics")).await.body;
    assert!(diags.contains("berth.weighted.allow=payments"), "{diags}");

    // One orders task hangs for 5 s on every request. orders' labels give each attempt
    // 400 ms and three attempts: every call is answered by the other task (or the
    // canary) well before the hang ends; the caller's default would wait 60 s.
    let hung = &tasks["orders"][0];
    let hung_app: SocketAddr = format!("{hung}:8080").parse().unwrap();
    let r = http1(hung_app, get("orders", "/delay/set?ms=5000")).await;
    assert_eq!(r.status, 200);
    let sidecar_admin = SocketAddr::new(caller.ip(), 15000);
    let retries = || async {
        let m = http1(sidecar_admin, get("sidecar", "/metrics")).await.body;
        // No sample before the first retry.
        let series = "berth_sidecar_outbound_retries_total{service=\"orders\"}";
        if m.contains(series) { metric(&m, series) } else { 0 }
    };
    let before = retries().await;
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        // Concurrent calls, so that the balancer spreads them over both tasks.
        let round: Vec<_> = (0..8).map(|_| tokio::spawn(call("http://orders/"))).collect();
        for c in round {
            let (r, took) = c.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(r.body.contains("RemoteAddr"), "{}", r.body);
            slowest = slowest.max(took);
        }
    }
    let retried = retries().await - before;
    println!("24 calls with a hung orders task: {retried} retried, the slowest took {slowest:?}");
    assert!(retried >= 1, "the hung task was tried and given up on");
    assert!(slowest < Duration::from_millis(2500), "{slowest:?}");
    let _ = http1(hung_app, get("orders", "/delay/set?ms=0")).await;

    // retry.status: an answer of 503 goes again, to the three attempts the label allows.
    let before = retries().await;
    let (r, _) = call("http://orders/status/503").await;
    assert!(r.body.contains(": 503"), "{}", r.body);
    assert_eq!(retries().await - before, 2, "three attempts in all");
    let before = retries().await;
    let (r, _) = call("http://orders/status/500").await;
    assert!(r.body.contains(": 500"), "{}", r.body);
    assert_eq!(retries().await - before, 0, "500 is not listed");

    // catalog's sticky cookie: a caller without it is balanced over both tasks and told
    // which one answered (by a hash, not its address); with it, it stays on that task.
    let ip_of = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("IP: "))
            .unwrap_or("")
            .to_string()
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut cookie = None;
    for _ in 0..12 {
        let (r, _) = call("http://catalog/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(ip_of(&r.body));
        let set = r.headers.get("set-cookie").map(|v| v.to_str().unwrap().to_string());
        let set = set.expect("a cookie for a caller without one");
        assert!(set.starts_with("catalog_task=") && set.contains("HttpOnly"), "{set}");
        assert!(!tasks["catalog"].iter().any(|ip| set.contains(ip.as_str())), "{set}");
        cookie = Some((set.split(';').next().unwrap().to_string(), ip_of(&r.body)));
    }
    assert_eq!(seen.len(), 2, "balanced without the cookie: {seen:?}");
    let (cookie, task) = cookie.unwrap();
    for _ in 0..12 {
        let mut req = get("caller", "/call?url=http://catalog/");
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let r = http1(caller, req).await;
        assert_eq!(ip_of(&r.body), task, "sticky: {}", r.body);
        assert!(r.headers.get("set-cookie").is_none(), "already sticky");
    }

    // inventory names inventory-dr (which consents) as its failover: calls go to
    // inventory while its task is healthy, to the DR service while it is not, and back.
    for _ in 0..4 {
        let (r, _) = call("http://inventory/").await;
        assert_eq!(answered_by(&r.body), "inventory", "{}", r.body);
    }
    let inventory: SocketAddr = format!("{}:8080", tasks["inventory"][0]).parse().unwrap();
    let answered = |want: &'static str| async move {
        let (r, _) = call("http://inventory/").await;
        r.status == 200 && answered_by(&r.body) == want
    };
    assert_eq!(
        http1(inventory, get("inventory", "/health/set?healthy=false"))
            .await
            .status,
        200
    );
    assert!(
        eventually(Duration::from_secs(20), || answered("dr")).await,
        "no failover while inventory was unhealthy"
    );
    assert_eq!(
        http1(inventory, get("inventory", "/health/set?healthy=true"))
            .await
            .status,
        200
    );
    assert!(
        eventually(Duration::from_secs(20), || answered("inventory")).await,
        "calls did not come back to inventory"
    );
}
