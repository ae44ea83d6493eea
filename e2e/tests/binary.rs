//! The `berth-gateway` binary: exit codes and signals.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gateway() -> Command {
    let mut c = Command::new(berth_e2e::bin("berth-gateway"));
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn bad_configuration_exits_64_with_a_clear_message() {
    let out = gateway().arg("--entrypoint").arg("web").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NAME=ADDR"), "{err}");

    let out = gateway().output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--entrypoint"));

    // ECS discovery without a region is refused with the fix named (and never asks
    // the instance metadata service for one).
    let out = gateway()
        .args([
            "--entrypoint",
            "web=127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--ecs-cluster",
            "prod",
        ])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ecs-region or AWS_REGION"),
        "{out:?}"
    );
    // A half-configured mesh CA is refused, naming the flags.
    let out = gateway()
        .args(["--entrypoint", "web=127.0.0.1:0", "--mesh-ca-cert", "/tmp/ca.crt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mesh-ca-cert and --mesh-ca-key go together"));

    // Env vars are read as BERTH_<NAME>.
    let out = gateway()
        .env("BERTH_ENTRYPOINT", "web=not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad address"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = gateway()
        .args([
            "--entrypoint",
            &format!("web=127.0.0.1:{port}"),
            "--admin",
            "127.0.0.1:0",
            "--shutdown-delay",
            "200ms",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gateway did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    let mut log = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.lines().all(|l| l.starts_with('{')), "JSON log lines: {log}");
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// On one CPU (what a task with one vCPU sees) the gateway runs Tokio's current-thread
/// runtime, and serves as it does anywhere: 50 connections at once, 100 requests one
/// after another over its kept-alive upstream connection, a reload of its file provider.
/// (Its log names the runtime: a thread-name check could not tell Tokio's blocking-pool
/// threads, which share the workers' name, from workers.)
#[tokio::test]
async fn on_one_cpu_the_gateway_runs_on_one_thread() {
    use berth_common::test_util::{Backend, Proto, eventually, get, http1};
    use berth_e2e::GatewayProcess;
    let route = |host: &str, url: &str| {
        format!(
            "http:\n  routers:\n    r:\n      rule: \"Host(`{host}`)\"\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"{url}\"\n"
        )
    };
    let backend = Backend::start("one", Proto::Http1).await;
    let dir = berth_e2e::temp_dir("onecpu");
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(&dynamic, route("a.test", &backend.url())).unwrap();
    let args = ["--file-provider", dynamic.to_str().unwrap()];
    let serves = |gw: &GatewayProcess, host: &'static str| {
        let web = gw.web;
        eventually(Duration::from_secs(20), move || async move {
            berth_common::test_util::try_http1(web, get(host, "/"))
                .await
                .is_some_and(|r| r.status == http::StatusCode::OK)
        })
    };

    let gw = GatewayProcess::spawn_on_one_cpu(&args, &[]);
    assert!(serves(&gw, "a.test").await, "{}", gw.log());
    assert!(gw.log().contains("current_thread"), "{}", gw.log());
    let all = futures_util::future::join_all((0..50).map(|i| http1(gw.web, get("a.test", &format!("/{i}"))))).await;
    assert!(all.iter().all(|r| r.status == http::StatusCode::OK));
    for i in 0..100 {
        assert_eq!(
            http1(gw.web, get("a.test", &format!("/k{i}"))).await.status,
            http::StatusCode::OK
        );
    }
    std::fs::write(&dynamic, route("b.test", &backend.url())).unwrap();
    assert!(serves(&gw, "b.test").await, "the reload was not applied: {}", gw.log());

    // The control: with more CPUs the same binary runs the multi-thread runtime.
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        let gw = GatewayProcess::spawn(&args, &[]);
        assert!(serves(&gw, "b.test").await, "{}", gw.log());
        assert!(gw.log().contains("multi_thread"), "{}", gw.log());
        let names = thread_names(gw.child.id());
        assert!(names.iter().any(|n| n == "tokio-rt-worker"), "{names:?}");
    }
}
