//! Benchmark scenario 5: ECS discovery at scale, in berth-local.
//!
//! Starts `berth-local up` with a service of N idle tasks (no process; addresses span
//! many /24s), then measures what an operator waits for:
//! - the time until the gateway routes to all N;
//! - the ECS API calls of a quiet reconcile round (from the gateway's own counters);
//! - the time from a new task's start (its ECS `startedAt`) to the first request the
//!   gateway routes to it, for a task with the Berth sidecar (which registers, so the
//!   gateway looks the task up at once) and for a bare task (found by polling);
//! - the time from a scale-down to the gateway no longer routing to the stopped task.
//!
//! `cargo run --release -p berth-examples --bin berth-discovery-bench -- --tasks 10000`
//! (`--probes K`, `--refresh DUR`, `--smoke` for CI: 200 tasks, 2 probes).
//! Loopback only; the binaries next to this one are used (berth-local builds them if
//! they are missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API: &str = "127.0.0.1:28855";
const WEB: &str = "127.0.0.1:28080";
const ADMIN: &str = "127.0.0.1:28900";
const WHOAMI_TASKDEF: &str = include_str!("../../../local/demo/taskdefs/whoami.json");

struct Opts {
    tasks: u64,
    probes: usize,
    refresh: String,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        tasks: 10_000,
        probes: 5,
        refresh: "1s".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--tasks" => o.tasks = val()?.parse()?,
            "--probes" => o.probes = val()?.parse()?,
            "--refresh" => o.refresh = val()?,
            "--smoke" => {
                o.tasks = 200;
                o.probes = 2;
            }
            _ => bail!("usage: berth-discovery-bench [--tasks N] [--probes K] [--refresh DUR] [--smoke]"),
        }
    }
    Ok(o)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// One HTTP/1.1 exchange over a fresh connection: (status, body).
async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP head in the answer")?;
    let status = std::str::from_utf8(&out[9..12.min(out.len())])?.parse()?;
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// An ECS API call (JSON 1.1 protocol) to berth-local.
async fn ecs(op: &str, input: Value) -> Result<Value> {
    let target = format!("AmazonEC2ContainerServiceV20141113.{op}");
    let (status, body) = http(
        API,
        "POST",
        "/",
        &[
            ("X-Amz-Target", &target),
            ("Content-Type", "application/x-amz-json-1.1"),
        ],
        input.to_string().as_bytes(),
    )
    .await?;
    let v: Value = serde_json::from_slice(&body).with_context(|| format!("{op}: not JSON"))?;
    if status != 200 {
        bail!("{op}: {status} {v}");
    }
    Ok(v)
}

async fn scale(service: &str, n: u64) -> Result<()> {
    ecs("UpdateService", json!({"service": service, "desiredCount": n})).await?;
    Ok(())
}

/// `startedAt` of the service's task (desired RUNNING), once ECS reports one.
async fn started_at(service: &str) -> Result<Option<f64>> {
    let list = ecs("ListTasks", json!({"serviceName": service})).await?;
    let arns = list["taskArns"].as_array().cloned().unwrap_or_default();
    if arns.is_empty() {
        return Ok(None);
    }
    let d = ecs("DescribeTasks", json!({"tasks": arns})).await?;
    Ok(d["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["startedAt"].as_f64())
        .reduce(f64::max))
}

/// The gateway's status for a request to this host (404: no route).
async fn probe(host: &str) -> u16 {
    http(WEB, "GET", "/", &[("Host", host)], b"")
        .await
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// Poll until `done(status)`; the instant it first held.
async fn until(host: &str, limit: Duration, done: impl Fn(u16) -> bool) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done(probe(host).await) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// `berth_ecs_api_calls_total` by operation, and the reconcile rounds so far.
async fn api_calls() -> Result<(BTreeMap<String, f64>, u64)> {
    let (_, body) = http(ADMIN, "GET", "/metrics", &[], b"").await?;
    let text = String::from_utf8_lossy(&body);
    let mut calls = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("berth_ecs_api_calls_total{")) {
        let op = line
            .split("operation=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *calls.entry(op.to_string()).or_insert(0.0) += v;
    }
    let (_, body) = http(ADMIN, "GET", "/api/ecs", &[], b"").await?;
    let v: Value = serde_json::from_slice(&body)?;
    let rounds = v["clusters"][0]["rounds"].as_u64().unwrap_or(0);
    Ok((calls, rounds))
}

fn write_defs(dir: &Path, tasks: u64) -> Result<()> {
    std::fs::create_dir_all(dir.join("taskdefs"))?;
    std::fs::create_dir_all(dir.join("services"))?;
    let idle = |family: &str, host: &str| {
        json!({
            "family": family, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
            "cpu": "256", "memory": "512",
            "containerDefinitions": [{
                "name": "app", "image": "idle", "essential": true, "command": ["berth-local:idle"],
                "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
                "dockerLabels": {
                    "berth.enable": "true",
                    format!("berth.http.routers.{family}.rule"): format!("Host(`{host}`)")
                }
            }]
        })
    };
    let mut probe: Value = serde_json::from_str(WHOAMI_TASKDEF)?;
    probe["family"] = json!("probe");
    for c in probe["containerDefinitions"].as_array_mut().into_iter().flatten() {
        if let Some(labels) = c["dockerLabels"].as_object_mut() {
            labels.retain(|k, _| k == "berth.enable");
            labels.insert("berth.http.routers.probe.rule".into(), json!("Host(`probe.test`)"));
            labels.insert(
                "berth.http.services.probe.loadbalancer.server.port".into(),
                json!("8080"),
            );
        }
    }
    let docs = [
        ("fleet", idle("fleet", "fleet.test"), tasks),
        ("lone", idle("lone", "lone.test"), 0),
        ("probe", probe, 0),
    ];
    for (name, td, count) in docs {
        std::fs::write(dir.join(format!("taskdefs/{name}.json")), td.to_string())?;
        let svc = json!({
            "serviceName": name, "taskDefinition": name, "desiredCount": count, "launchType": "FARGATE",
            "deploymentConfiguration": {"minimumHealthyPercent": 100, "maximumPercent": 200}
        });
        std::fs::write(dir.join(format!("services/{name}.json")), svc.to_string())?;
    }
    Ok(())
}

struct Local(Child);

impl Drop for Local {
    fn drop(&mut self) {
        // SIGTERM: berth-local stops every task and its reaper kills the rest.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin_dir() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    Ok(me.parent().context("no parent directory")?.to_path_buf())
}

struct Probe {
    to_routable: Vec<f64>,
    from_request: Vec<f64>,
    to_gone: Vec<f64>,
}

/// Scale `service` 0 -> 1 -> 0 `n` times; returns the times in seconds.
async fn probes(service: &str, host: &str, n: usize, up: fn(u16) -> bool) -> Result<Probe> {
    let mut p = Probe {
        to_routable: Vec::new(),
        from_request: Vec::new(),
        to_gone: Vec::new(),
    };
    for i in 0..n {
        let asked = unix_now();
        scale(service, 1).await?;
        let Some(routed) = until(host, Duration::from_secs(60), up).await else {
            bail!("{service}: probe {i} never became routable");
        };
        let routed_unix = unix_now() - routed.elapsed().as_secs_f64();
        // ECS may report RUNNING after the gateway routes (the sidecar registers as soon
        // as the app is healthy): wait for `startedAt`; the difference may be negative.
        let mut started = None;
        for _ in 0..200 {
            started = started_at(service).await?;
            if started.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = started.with_context(|| format!("{service}: no task reached RUNNING"))?;
        p.to_routable.push(routed_unix - started);
        p.from_request.push(routed_unix - asked);
        scale(service, 0).await?;
        let stopped = Instant::now();
        let Some(gone) = until(host, Duration::from_secs(60), |s| s == 404).await else {
            bail!("{service}: probe {i} still routed 60 s after the scale-down");
        };
        p.to_gone.push(gone.duration_since(stopped).as_secs_f64());
        eprintln!(
            "  {service} probe {}/{n}: routable {:.3} s after start ({:.3} s after the scale-up), unroutable {:.3} s after the scale-down",
            i + 1,
            p.to_routable[i],
            p.from_request[i],
            p.to_gone[i]
        );
    }
    Ok(p)
}

fn stats(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = s.get(s.len() / 2).copied().unwrap_or(f64::NAN);
    let max = s.last().copied().unwrap_or(f64::NAN);
    format!("{median:>8.3} {max:>8.3}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let o = parse_args()?;
    let dir = std::env::temp_dir().join(format!("berth-discovery-bench-{}", std::process::id()));
    write_defs(&dir, o.tasks)?;
    let bins = bin_dir()?;
    let local_bin = bins.join("berth-local");
    eprintln!(
        "bench: berth-local up with {} idle tasks (ECS refresh {}), from {}",
        o.tasks,
        o.refresh,
        local_bin.display()
    );
    let t0 = Instant::now();
    let mut child = Command::new(&local_bin)
        .args(["up", "--dir"])
        .arg(&dir)
        .args([
            "--api",
            API,
            "--web",
            WEB,
            "--admin",
            ADMIN,
            "--tmds",
            "127.0.0.1:28679",
            "--tcp",
            "127.0.0.1:28081",
            "--mesh-listen",
            "127.0.0.1:28443",
            "--first-address",
            "127.0.140.1",
            "--ecs-refresh",
            &o.refresh,
        ])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", local_bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let _local = Local(child);
    // berth-local's progress lines go through; `ready` ends the wait.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("  berth-local: {line}");
            if line == "ready"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(1800), rx)
        .await
        .context("berth-local was not ready within 30 min")?
        .context("berth-local exited before it was ready")?;
    let ready = t0.elapsed().as_secs_f64();

    // A quiet round's API calls, over at least 3 rounds.
    let (before, r0) = api_calls().await?;
    let quiet_start = Instant::now();
    let mut after = (before.clone(), r0);
    while after.1 < r0 + 3 && quiet_start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = api_calls().await?;
    }
    let rounds = after.1.saturating_sub(r0).max(1) as f64;
    let round_secs = quiet_start.elapsed().as_secs_f64() / rounds;
    let per_round: BTreeMap<&str, f64> = after
        .0
        .iter()
        .map(|(op, v)| (op.as_str(), (v - before.get(op).copied().unwrap_or(0.0)) / rounds))
        .filter(|(_, v)| *v > 0.0)
        .collect();

    eprintln!("bench: probing a task with the sidecar (registers at start) ...");
    let sidecar = probes("probe", "probe.test", o.probes, |s| s == 200).await?;
    eprintln!("bench: probing a bare task (found by polling) ...");
    let bare = probes("lone", "lone.test", o.probes, |s| s != 404 && s != 0).await?;

    println!();
    println!(
        "scenario 5: discovery in berth-local, {} idle tasks (+ probes), ECS refresh {}, the gateway's default API rate (20/s, burst 40)",
        o.tasks, o.refresh
    );
    println!("  all {} tasks routable after berth-local up: {ready:.1} s", o.tasks);
    println!(
        "  a quiet round: {:.2} s apart; ECS API calls per round: {}",
        round_secs,
        per_round
            .iter()
            .map(|(op, v)| format!("{op} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  {:<58} {:>8} {:>8}", "seconds (over probes)", "median", "max");
    let rows = [
        ("sidecar task: task start -> routable", &sidecar.to_routable),
        ("sidecar task: scale-up call -> routable", &sidecar.from_request),
        ("sidecar task: scale-down call -> no longer routed", &sidecar.to_gone),
        ("bare task: task start -> routable", &bare.to_routable),
        ("bare task: scale-up call -> routable", &bare.from_request),
        ("bare task: scale-down call -> no longer routed", &bare.to_gone),
    ];
    for (name, v) in rows {
        println!("  {name:<58} {}", stats(v));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
