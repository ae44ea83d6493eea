//! Test helpers shared by the workspace's tests (feature `test-util`): an ECS client for
//! a local peer, the moto server, `berth-local up` as a child process, and finding the
//! processes it started. Never in production builds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An ECS client for a test peer: explicit region, dummy credentials, the endpoint.
pub fn ecs_client(endpoint: &str) -> aws_sdk_ecs::Client {
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_ecs::Client::from_conf(conf)
}

/// A moto server: the one at `MOTO_ENDPOINT`, or one started with
/// `../shared/tools/moto-loopback` (stopped on drop).
pub struct Moto {
    pub endpoint: String,
    child: Option<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Moto {
    pub async fn start() -> Moto {
        if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") {
            return Moto { endpoint, child: None };
        }
        let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/moto-loopback");
        assert!(
            tool.exists(),
            "moto-loopback not found at {} (set MOTO_ENDPOINT)",
            tool.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .arg(&tool)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (pip install 'moto[server]'; scripts/test.sh does it)");
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not start (pip install 'moto[server]')"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // moto-loopback freezes the task state machine right after start.
        tokio::time::sleep(Duration::from_millis(500)).await;
        moto
    }
}

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
    }
}

impl LocalUp {
    /// `bin` is the berth-local executable (`env!("CARGO_BIN_EXE_berth-local")`).
    pub fn start(bin: &str, first_address: &str) -> LocalUp {
        Self::start_with(bin, first_address, &[])
    }

    /// Like [`LocalUp::start`], with more flags (`--gateways 3`, ...).
    pub fn start_with(bin: &str, first_address: &str, extra: &[&str]) -> LocalUp {
        Self::start_env(bin, first_address, extra, &[])
    }

    /// Like [`LocalUp::start_with`], with environment variables for berth-local (which
    /// passes `OTEL_*` and `RUST_LOG` on to what it starts).
    pub fn start_env(bin: &str, first_address: &str, extra: &[&str], env: &[(&str, &str)]) -> LocalUp {
        let port = || berth_common::test_util::free_port();
        let (api, tmds, web, admin, mesh, tcp) = (port(), port(), port(), port(), port(), port());
        let mut child = Command::new(bin)
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

/// A process found by [`find_process`]: its pid, command line and environment.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Processes whose executable's file name is `name` and whose environment has
/// `key=value`, from `/proc`.
pub fn find_process(name: &str, key: &str, value: &str) -> Vec<ProcessInfo> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args = split(cmdline);
        let exe = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string());
        if exe.as_deref() != Some(name) {
            continue;
        }
        let env: Vec<(String, String)> = std::fs::read(entry.path().join("environ"))
            .map(split)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        if env.iter().any(|(k, v)| k == key && v == value) {
            out.push(ProcessInfo { pid, args, env });
        }
    }
    out
}

/// The sidecar serving `inbound` (`IP:15443`), not its health checks (`berth-sidecar health`
/// runs with the same environment).
pub fn sidecar_process(inbound: &str) -> Vec<ProcessInfo> {
    find_process("berth-sidecar", "BERTH_INBOUND", inbound)
        .into_iter()
        .filter(|p| p.args.len() == 1)
        .collect()
}

/// Send a signal by pid through `kill(1)`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

pub mod browser;
