//! `berth-local up` (the README's main job) as a child process, on its own ports and
//! task addresses, for the tests that run the whole demo mesh.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bin;

/// `berth-local up` with the demo, on its own ports and task addresses (killed on drop).
pub struct LocalUp {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub api: SocketAddr,
    pub web: SocketAddr,
    /// The gateway's TCP entrypoint.
    pub tcp: SocketAddr,
    pub admin: SocketAddr,
    pub mesh: SocketAddr,
}

impl Drop for LocalUp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, it could not remove the network namespaces of its tasks with a
        // proxyConfiguration (`berth-<pid>-<n>`): the test does.
        let prefix = format!("berth-{}-", self.child.id());
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&prefix) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
            }
        }
    }
}

impl LocalUp {
    /// Start it with task addresses from `first_address`.
    pub fn start(first_address: &str) -> LocalUp {
        Self::start_with(first_address, &[])
    }

    /// Like [`LocalUp::start`], with more flags (`--gateways 3`, ...).
    pub fn start_with(first_address: &str, extra: &[&str]) -> LocalUp {
        Self::start_env(first_address, extra, &[])
    }

    /// Like [`LocalUp::start_with`], with environment variables for berth-local (which
    /// passes `OTEL_*` and `RUST_LOG` on to what it starts).
    pub fn start_env(first_address: &str, extra: &[&str], env: &[(&str, &str)]) -> LocalUp {
        Self::start_in(first_address, extra, env, None)
    }

    /// Like [`LocalUp::start_env`], started in the directory `cwd`.
    pub fn start_in(
        first_address: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&std::path::Path>,
    ) -> LocalUp {
        let port = || berth_common::test_util::free_port();
        let (api, tmds, web, admin, mesh, tcp) = (port(), port(), port(), port(), port(), port());
        let mut cmd = Command::new(bin("berth-local"));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .args([
                "up",
                "--no-build",
                "--ecs-refresh",
                "300ms",
                "--first-address",
                first_address,
            ])
            .args([
                "--api",
                &format!("127.0.0.1:{api}"),
                "--tmds",
                &format!("127.0.0.1:{tmds}"),
            ])
            .args([
                "--web",
                &format!("127.0.0.1:{web}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(["--mesh-listen", &format!("127.0.0.1:{mesh}")])
            .args(["--tcp", &format!("127.0.0.1:{tcp}")])
            .args(extra)
            .envs(env.iter().copied())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let addr = |p: u16| format!("127.0.0.1:{p}").parse().unwrap();
        LocalUp {
            child,
            lines,
            api: addr(api),
            web: addr(web),
            tcp: addr(tcp),
            admin: addr(admin),
            mesh: addr(mesh),
        }
    }

    /// Wait (at most 30 s) until the gateway holds exactly `wanted` live, healthy
    /// sidecars per service; their task addresses, by service.
    pub async fn wait_sidecars(&self, wanted: &[(&str, usize)]) -> std::collections::BTreeMap<String, Vec<String>> {
        let admin = self.admin;
        let up = berth_common::test_util::eventually(Duration::from_secs(30), || async {
            let l = live_sidecars(admin).await;
            wanted.iter().all(|(s, n)| l.get(*s).map(Vec::len) == Some(*n))
        })
        .await;
        let tasks = live_sidecars(admin).await;
        assert!(up, "wanted {wanted:?}, live {tasks:?}");
        tasks
    }

    /// Wait for `ready` (at most 90 s); panics with the output otherwise.
    pub async fn wait_ready(&self) {
        let lines = self.lines.clone();
        let ready = berth_common::test_util::eventually(Duration::from_secs(90), || {
            let lines = lines.clone();
            async move { lines.lock().unwrap().iter().any(|l| l == "ready") }
        })
        .await;
        assert!(
            ready,
            "berth-local did not print ready: {:?}",
            self.lines.lock().unwrap()
        );
    }
}

/// A task definition of berth-local's demo (`local/demo/taskdefs/NAME.json`), to make
/// services from.
pub fn demo_taskdef(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../local/demo/taskdefs/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Write `def` and a Fargate service of `count` tasks of it (named for its family) where
/// `berth-local up --dir DIR` reads them.
pub fn write_service(dir: &std::path::Path, def: &serde_json::Value, count: usize) {
    let family = def["family"].as_str().unwrap();
    for sub in ["taskdefs", "services"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join(format!("taskdefs/{family}.json")), def.to_string()).unwrap();
    let s = serde_json::json!({
        "serviceName": family,
        "taskDefinition": family,
        "desiredCount": count,
        "launchType": "FARGATE",
    });
    std::fs::write(dir.join(format!("services/{family}.json")), s.to_string()).unwrap();
}

/// The gateway's live, healthy sidecars' task addresses, by service.
pub async fn live_sidecars(admin: SocketAddr) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for s in crate::admin_json(admin, "/api/sidecars")
        .await
        .as_array()
        .into_iter()
        .flatten()
    {
        if s["state"] == "live" && s["healthy"] == true {
            out.entry(s["service"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(s["address"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}
