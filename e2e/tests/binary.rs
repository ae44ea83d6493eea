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
