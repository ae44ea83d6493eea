//! The gateway under test: in-process ([`start`], a [`Gateway`] on loopback with a
//! file-provider configuration) or as its binary ([`GatewayProcess`]).

use std::path::PathBuf;

use berth_common::test_util::free_port;
use berth_gateway::Gateway;
use berth_gateway::{Args, Config};
use clap::Parser;

use crate::{bin, temp_dir};

/// A gateway started in-process by [`start`], with its folder and dynamic file.
pub struct TestGateway {
    pub gw: Gateway,
    pub dir: PathBuf,
    pub dynamic: PathBuf,
}

impl TestGateway {
    pub fn web(&self) -> std::net::SocketAddr {
        self.gw.entrypoint_addr("web").unwrap()
    }
    pub fn admin(&self) -> std::net::SocketAddr {
        self.gw.admin_addr()
    }
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = berth_common::test_util::http1(self.admin(), berth_common::test_util::get("admin", path)).await;
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }
}

/// `GET path` on an admin API as JSON; `Null` when it does not answer or is not JSON (for
/// tests that poll while things start or stop).
pub async fn admin_json(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    match berth_common::test_util::try_http1(admin, berth_common::test_util::get("admin", path)).await {
        Some(r) => serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    }
}

/// Start a gateway with entrypoint `web` (and any `extra` flags) and `yaml` as its
/// dynamic configuration.
pub async fn start(yaml: &str, extra: &[&str]) -> TestGateway {
    berth_common::tls::install_crypto_provider();
    let dir = temp_dir("gw");
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(&dynamic, yaml).unwrap();
    let mut argv = vec![
        "berth-gateway".to_string(),
        "--entrypoint".into(),
        "web=127.0.0.1:0".into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--file-provider".into(),
        dynamic.display().to_string(),
    ];
    if !extra.contains(&"--shutdown-delay") {
        argv.extend(["--shutdown-delay".to_string(), "0s".to_string()]);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let cfg = Config::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
    let gw = Gateway::start(cfg).await.unwrap();
    TestGateway { gw, dir, dynamic }
}

/// A YAML service block with these server URLs.
pub fn service(name: &str, urls: &[String], extra: &str) -> String {
    let mut s = format!("    {name}:\n      loadBalancer:\n{extra}        servers:\n");
    for u in urls {
        s.push_str(&format!("          - url: \"{u}\"\n"));
    }
    s
}

/// The `berth-gateway` binary running as a child process, killed on drop.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub web: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Start with entrypoint `web` and the admin API on free ports, dummy AWS
    /// credentials, a region, and instance metadata disabled.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        Self::launch(args, env, true, None, false)
    }

    /// Like [`GatewayProcess::spawn`], allowed to run on one CPU only (`taskset`, the
    /// first CPU this process may use): what a task with one vCPU sees.
    pub fn spawn_on_one_cpu(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        Self::launch(args, env, true, None, true)
    }

    /// Like [`GatewayProcess::spawn`] without Berth's `web` entrypoint (Traefik mode
    /// names its own), started in `cwd`, where Traefik looks for `traefik.yml`.
    pub fn spawn_in(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        Self::launch(args, env, false, Some(cwd), false)
    }

    fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        web_entrypoint: bool,
        cwd: Option<&std::path::Path>,
        one_cpu: bool,
    ) -> GatewayProcess {
        let web: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = temp_dir("gwlog").join("gateway.log");
        // taskset execs the gateway: the child's PID is the gateway's.
        let mut cmd = if one_cpu {
            // The first CPU of this process's own set (a container may not have CPU 0).
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let cpu: String = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", &cpu]).arg(bin("berth-gateway"));
            c
        } else {
            std::process::Command::new(bin("berth-gateway"))
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info,berth_gateway=debug");
        if web_entrypoint {
            cmd.args(["--entrypoint", &format!("web={web}")]);
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.args(["--admin", &admin.to_string()])
            .args(["--shutdown-delay", "0s", "--log-format", "json"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        GatewayProcess { child, web, admin, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        admin_json(self.admin, path).await
    }

    /// Wait until the admin API answers.
    pub async fn wait_admin(&self) {
        let up = berth_common::test_util::eventually(std::time::Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(self.admin).await.is_ok()
        })
        .await;
        assert!(up, "gateway did not start; log:\n{}", self.log());
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway binary discovering cluster `prod` through the AWS API at `aws_endpoint`
/// (ECS and STS), issuing first certificates by IAM proof only, with a dev CA in `dir`:
/// the gateway, its control API, and the mesh's trust anchors.
pub async fn iam_gateway(
    aws_endpoint: &str,
    dir: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> (GatewayProcess, std::net::SocketAddr, berth_common::mtls::TrustAnchors) {
    use rustls_pki_types::pem::PemObject;
    let control: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut env = vec![("AWS_ENDPOINT_URL", aws_endpoint)];
    env.extend_from_slice(extra_env);
    let ca = dir.join("ca");
    let gw = GatewayProcess::spawn(
        &[
            "--ecs-cluster",
            "prod",
            "--ecs-refresh",
            "300ms",
            "--mesh-dev-ca",
            ca.to_str().unwrap(),
            "--mesh-listen",
            &control.to_string(),
            "--mesh-auth",
            "iam",
        ],
        &env,
    );
    gw.wait_admin().await;
    let ca_pem = std::fs::read(ca.join("ca.crt")).unwrap();
    let anchors =
        berth_common::mtls::TrustAnchors::from_certs(&[
            rustls_pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap()
        ])
        .unwrap();
    (gw, control, anchors)
}
