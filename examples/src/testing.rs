//! Test helpers shared by the workspace's tests (feature `test-util`): an ECS client for
//! a local peer, and the moto server. Never in production builds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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
