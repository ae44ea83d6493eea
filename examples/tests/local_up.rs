//! `berth-local up` end to end: real processes (berth-gateway, berth-whoami), the
//! gateway discovering through berth-local's ECS API. Scaling, stopping, a rolling
//! update under load (failed requests counted), and a clean stop.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_common::test_util::{eventually, free_port, get, http1};

struct Local {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    api: SocketAddr,
    web: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(first_address: &str) -> Local {
    let (api, tmds, web, admin, mesh) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-local"))
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
    Local {
        child,
        lines,
        api: format!("127.0.0.1:{api}").parse().unwrap(),
        web: format!("127.0.0.1:{web}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
    }
}

use berth_examples::testing::ecs_client as client;

async fn hostnames(web: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = http1(web, get("whoami.localhost", "/")).await;
        if let Some(h) = r.body.lines().next().and_then(|l| l.strip_prefix("Hostname: ")) {
            seen.insert(h.to_string());
        }
    }
    seen
}

async fn running_ids(ecs: &aws_sdk_ecs::Client) -> BTreeSet<String> {
    let arns = ecs.list_tasks().service_name("whoami").send().await.unwrap();
    let d = ecs
        .describe_tasks()
        .set_tasks(Some(arns.task_arns().to_vec()))
        .send()
        .await
        .unwrap();
    d.tasks()
        .iter()
        .filter(|t| t.last_status() == Some("RUNNING"))
        .map(|t| t.task_arn().unwrap().rsplit('/').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_scale_stop_rolling_update_and_clean_exit() {
    let mut local = start("127.0.140.1");
    let ready = eventually(Duration::from_secs(90), || {
        let lines = local.lines.clone();
        async move { lines.lock().unwrap().iter().any(|l| l == "ready") }
    })
    .await;
    assert!(
        ready,
        "berth-local did not print ready: {:?}",
        local.lines.lock().unwrap()
    );
    let web = local.web;
    let ecs = client(&format!("http://{}", local.api));

    // Three tasks, all reached through the gateway and their sidecars (mTLS); each task
    // answers with its id, and sees the gateway's verified identity.
    let all = eventually(Duration::from_secs(10), || async {
        hostnames(web, 30).await == running_ids(&ecs).await
    })
    .await;
    assert!(all, "every running task is reached");
    assert_eq!(running_ids(&ecs).await.len(), 3);
    let r = http1(web, get("whoami.localhost", "/")).await;
    assert!(
        r.body.contains("X-Berth-Client-Id: spiffe://berth.local/gateway"),
        "{}",
        r.body
    );

    // Scale 3 -> 5: the gateway converges.
    ecs.update_service()
        .service("whoami")
        .desired_count(5)
        .send()
        .await
        .unwrap();
    let five = eventually(Duration::from_secs(20), || async {
        hostnames(web, 40).await.len() == 5
    })
    .await;
    assert!(five, "scaled to 5: {:?}", running_ids(&ecs).await);

    // Stop a task: it leaves the rotation, and the service replaces it.
    let victim = running_ids(&ecs).await.into_iter().next().unwrap();
    ecs.stop_task().task(&victim).send().await.unwrap();
    let gone = eventually(Duration::from_secs(20), || async {
        let ids = running_ids(&ecs).await;
        ids.len() == 5 && !ids.contains(&victim) && {
            let seen = hostnames(web, 40).await;
            !seen.contains(&victim) && seen.len() == 5
        }
    })
    .await;
    assert!(gone, "stopped task left and was replaced");

    // Rolling update under a steady load, counting failed requests.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
    let load = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            let r = tokio::time::timeout(Duration::from_secs(5), async {
                let stream = tokio::net::TcpStream::connect(web).await.ok()?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
                tokio::spawn(conn);
                send.send_request(get("whoami.localhost", "/"))
                    .await
                    .ok()
                    .map(|r| r.status())
            })
            .await;
            match r {
                Ok(Some(st)) if st.is_success() => o.fetch_add(1, Ordering::Relaxed),
                _ => f.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    let before = running_ids(&ecs).await;
    let started = Instant::now();
    ecs.update_service()
        .service("whoami")
        .force_new_deployment(true)
        .send()
        .await
        .unwrap();
    let rolled = eventually(Duration::from_secs(60), || async {
        let d = ecs.describe_services().services("whoami").send().await.unwrap();
        let s = &d.services()[0];
        let ids = running_ids(&ecs).await;
        s.deployments().len() == 1
            && s.deployments()[0].rollout_state().map(|r| r.as_str()) == Some("COMPLETED")
            && ids.len() == 5
            && ids.is_disjoint(&before)
    })
    .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(rolled, "the rolling update completed");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling update of 5 tasks under load: {ok} ok, {failed} failed requests, rollout {took:?}");
    assert!(ok > 100, "the load loop ran: {ok}");
    let after = eventually(Duration::from_secs(10), || async {
        hostnames(web, 40).await == running_ids(&ecs).await
    })
    .await;
    assert!(after, "the new tasks are the ones routed");

    // A clean stop: SIGTERM, and nothing it started keeps listening.
    let _ = Command::new("kill")
        .args(["-TERM", &local.child.id().to_string()])
        .status();
    let exited = eventually(Duration::from_secs(40), || {
        let done = matches!(local.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "berth-local exits on SIGTERM");
    assert!(tokio::net::TcpStream::connect(web).await.is_err(), "gateway stopped");
    assert!(tokio::net::TcpStream::connect(local.admin).await.is_err());
    for i in 1..=8 {
        let addr: SocketAddr = format!("127.0.140.{i}:8080").parse().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "a whoami task survived at {addr}"
        );
    }
}

#[tokio::test]
async fn kill_9_leaves_no_child_behind() {
    let mut local = start("127.0.150.1");
    let ready = eventually(Duration::from_secs(90), || {
        let lines = local.lines.clone();
        async move { lines.lock().unwrap().iter().any(|l| l == "ready") }
    })
    .await;
    assert!(ready, "{:?}", local.lines.lock().unwrap());
    assert!(tokio::net::TcpStream::connect("127.0.150.1:8080").await.is_ok());
    local.child.kill().unwrap();
    let _ = local.child.wait();
    let web = local.web;
    let clean = eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(web).await.is_err()
            && tokio::net::TcpStream::connect("127.0.150.1:8080").await.is_err()
            && tokio::net::TcpStream::connect("127.0.150.3:8080").await.is_err()
    })
    .await;
    assert!(clean, "children outlived berth-local's SIGKILL");
}
