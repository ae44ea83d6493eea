//! Run what ships the way it ships: `berth-gateway` as the image and the Terraform module
//! run it (user 65532, the web entrypoint on :80, the control API on :9443, the admin API
//! on 127.0.0.1:9900, the CA in the environment as ECS secrets put it (IAM identity, no token), a
//! root filesystem it cannot write), in a network namespace of the test's own whose
//! `net.ipv4.ip_unprivileged_port_start` is what the task definition sets. Without that
//! setting, a non-root process cannot bind :80 (the defect this test was written for).
//!
//! Needs root (for the namespace); the sidecar's counterpart is in `sidecar_inbound.rs`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{runnable_copy, temp_dir};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The gateway container of the shipped task-definition example (kept equal to the
/// module by `examples/tests/ecs_examples.rs`).
fn shipped_container() -> Value {
    let def: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/ecs/gateway.task-definition.json")).unwrap(),
    )
    .unwrap();
    def["containerDefinitions"][0].clone()
}

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("berth-shipped-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        Netns(name)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn the_gateway_runs_as_65532_on_its_shipped_ports() {
    assert!(
        is_root(),
        "this test makes a network namespace: run it as root (CI does)"
    );
    let c = shipped_container();
    let user = c["user"].as_str().unwrap();
    let (uid, gid) = user.split_once(':').unwrap();
    let command: Vec<String> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // The environment as ECS gives it, minus discovery (this namespace has no ECS API;
    // discovery has tests of its own), plus the secrets inline as ECS injects them.
    let mut env: Vec<(String, String)> = c["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(k, _)| !k.starts_with("BERTH_ECS_") && k != "BERTH_MESH_PEERS_SERVICE")
        .collect();
    let (ca_cert, ca_key) = berth_gateway::new_root("Berth shipped-test CA").unwrap();
    env.push(("BERTH_MESH_CA_CERT".into(), ca_cert));
    env.push(("BERTH_MESH_CA_KEY".into(), ca_key));
    // No token: IAM identity, with the region Fargate puts in every container.
    env.push(("AWS_REGION".into(), "us-east-1".into()));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));

    let dir = temp_dir("shipped");
    let bin = runnable_copy(&berth_e2e::bin("berth-gateway"), &dir);
    let ns = Netns::new();
    let run = |ns: &Netns| {
        let mut cmd = ns.cmd("setpriv");
        cmd.args(["--reuid", uid, "--regid", gid, "--clear-groups"])
            .arg(&bin)
            .args(&command)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", "/usr/bin:/bin")
            // The image's root filesystem is read-only: the gateway may write nothing.
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };

    // Without the task's system control: the bind of :80 is refused.
    let out = run(&ns).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Permission denied") || err.contains("permission"), "{err}");

    // With it, as the task definition sets it.
    let ctl = &c["systemControls"][0];
    let key = ctl["namespace"].as_str().unwrap();
    let value = ctl["value"].as_str().unwrap();
    let ok = ns
        .cmd("sysctl")
        .args(["-w", &format!("{key}={value}")])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut gw = run(&ns);
    let started = Instant::now();
    let curl = |url: &str| {
        let out = ns.cmd("curl").args(["-s", "--max-time", "2", url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut ping = String::new();
    while started.elapsed() < Duration::from_secs(20) {
        ping = curl("http://127.0.0.1:80/ping");
        if ping == "OK" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = curl("http://127.0.0.1:9900/readyz");
    // The control API's TLS on :9443, as sidecars reach it.
    let tls = ns
        .cmd("openssl")
        .args(["s_client", "-connect", "127.0.0.1:9443", "-brief"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = gw.kill();
    let out = gw.wait_with_output().unwrap();
    assert_eq!(ping, "OK", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ready, "ready\n");
    let tls = String::from_utf8_lossy(&tls.stderr).to_string() + &String::from_utf8_lossy(&tls.stdout);
    assert!(tls.contains("TLSv1.3"), "{tls}");
}
