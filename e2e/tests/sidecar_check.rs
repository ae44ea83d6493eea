//! `berth-sidecar check`, run as shipped with a running sidecar's own environment in
//! `berth-local up` (as ECS Exec runs it in the task): passes, then fails with the right
//! line for each broken setting: the task metadata endpoint unreachable, a CA that is not
//! the mesh's, a token that is not the gateway's (in a task without a role), and the source address rewritten on the
//! way to the gateway (a hop that makes the connection come from 127.0.0.1, as a load
//! balancer without client IP preservation does).
#![allow(clippy::unwrap_used)]

use berth_e2e::{LocalUp, ProcessInfo, bin, forwarder, sidecar_process};

/// `berth-sidecar check` with exactly `env`: exit code and stdout+stderr.
fn check(env: &[(String, String)]) -> (i32, String) {
    let out = std::process::Command::new(bin("berth-sidecar"))
        .arg("check")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    e.push((key.into(), value.into()));
    e
}

fn line<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find(|l| l.starts_with(prefix))
}

/// A running sidecar of the demo mesh, found by its task address.
fn some_sidecar() -> ProcessInfo {
    (1..40)
        .flat_map(|i| sidecar_process(&format!("127.0.150.{i}:15443")))
        .next()
        .expect("a sidecar of berth-local up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_check_passes_in_the_task_and_names_each_broken_setting() {
    let up = LocalUp::start_with("127.0.150.1", &["--mesh-auth", "iam,token"]);
    up.wait_ready().await;
    let sidecar = some_sidecar();
    let env = sidecar.env.clone();
    let run = |env: Vec<(String, String)>| tokio::task::spawn_blocking(move || check(&env));

    let (code, out) = run(env.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}");
    for ok in [
        "ok   settings",
        "ok   task metadata: task arn:aws:ecs:",
        "ok   mesh CA: 1 root(s)",
        "ok   task role: credentials found",
        "ok   task at the gateway: found (RUNNING), source 127.0.150.",
        "ok   task proof: the gateway takes the task role's IAM identity",
        "ok   clock:",
        "all checks passed",
    ] {
        assert!(line(&out, ok).is_some(), "missing `{ok}` in\n{out}");
    }
    let reached = line(&out, "ok   control API ").unwrap();
    assert!(
        reached.contains(&format!("{}", up.mesh)) && reached.contains("protocol 1"),
        "{out}"
    );
    assert!(
        line(&out, "ok   task at the gateway").unwrap().contains("spiffe://"),
        "{out}"
    );

    // The metadata endpoint unreachable.
    let closed = berth_common::test_util::closed_port().await;
    let (code, out) = run(with(
        &env,
        "ECS_CONTAINER_METADATA_URI_V4",
        &format!("http://{closed}/v4/x"),
    ))
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "FAIL task metadata:").is_some(), "{out}");
    assert!(out.contains("ECS Exec"), "the fix is told: {out}");

    // A CA that is not the mesh's: the gateway's certificate does not verify.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = p.self_signed(&key).unwrap().pem();
    let (code, out) = run(with(&env, "BERTH_CA_CERT", &other)).await.unwrap();
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL control API ").unwrap_or_default();
    assert!(fail.contains("TLS"), "{out}");
    assert!(out.contains("not signed by BERTH_CA_CERT"), "{out}");
    assert!(
        line(&out, "ok   task metadata").is_some(),
        "the other checks still run: {out}"
    );

    // Without the task role, the token proves the task: the right one is taken...
    let no_role: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_CONTAINER_"))
        .cloned()
        .collect();
    let (code, out) = run(no_role.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "ok   task proof: the gateway takes this token").is_some(),
        "{out}"
    );
    // ...and one that is not the gateway's fails.
    let (code, out) = run(with(&no_role, "BERTH_TOKEN", "not-the-token")).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        line(
            &out,
            "FAIL task proof: BERTH_TOKEN is not the gateway's bootstrap token"
        )
        .is_some(),
        "{out}"
    );
    assert!(line(&out, "ok   task at the gateway").is_some(), "{out}");

    // The source rewritten on the way: the gateway sees 127.0.0.1, not the task.
    let (hop, _cut) = forwarder(up.mesh).await;
    let (code, out) = run(with(&env, "BERTH_GATEWAY", &format!("https://127.0.0.1:{hop}")))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL source address:").unwrap_or_default();
    assert!(fail.contains("come from 127.0.0.1, not from the task"), "{out}");
    assert!(out.contains("preserve_client_ip"), "the fix is told: {out}");
    assert!(!fail.contains("127.0.150."), "the task's address is not told: {out}");
}
