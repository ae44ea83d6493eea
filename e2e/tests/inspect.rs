//! `berth-sidecar inspect` against berth-local's task metadata endpoint, and its errors.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use berth_local::{Ecs, tmds};
use serde_json::{Value, json};

fn inspect(env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(berth_e2e::bin("berth-sidecar"));
    c.arg("inspect")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[tokio::test]
async fn inspect_prints_the_registration() {
    let mut ecs = Ecs::new("us-east-1", Ipv4Addr::new(127, 0, 170, 1));
    ecs.create_cluster("prod");
    ecs.register_task_definition(&json!({
        "family": "orders",
        "networkMode": "awsvpc",
        "containerDefinitions": [
            {"name": "berth-sidecar", "image": "berth-sidecar"},
            {"name": "app", "image": "app", "portMappings": [{"containerPort": 8080}],
             "dockerLabels": {"berth.enable": "true", "berth.mesh.allow": "billing"},
             "healthCheck": {"command": ["CMD", "true"]}}
        ]
    }))
    .unwrap();
    let task = ecs
        .run_task(
            Some("prod"),
            "orders",
            1,
            Some("service:orders"),
            None,
            Some("FARGATE"),
            &serde_json::Value::Null,
        )
        .unwrap()
        .remove(0);
    let arn = task["taskArn"].as_str().unwrap().to_string();
    let id = arn.rsplit('/').next().unwrap().to_string();
    let docker = ecs.clusters["prod"].tasks[&id].containers[0].docker_id.clone();
    let ecs = Arc::new(Mutex::new(ecs));
    let addr = tmds::serve("127.0.0.1:0".parse().unwrap(), ecs.clone()).await.unwrap();
    let uri = format!("http://{addr}/v4/{docker}");

    let out = tokio::task::spawn_blocking(move || inspect(&[("ECS_CONTAINER_METADATA_URI_V4", &uri)]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["task_arn"], arn);
    assert_eq!(v["cluster"], "prod", "the name, not the ARN");
    assert_eq!(v["service"], "orders");
    assert_eq!(v["family"], "orders");
    assert_eq!(v["revision"], "1");
    assert_eq!(v["launch_type"], "FARGATE");
    assert_eq!(v["network_mode"], "awsvpc");
    assert_eq!(v["address"], "127.0.170.1");
    assert_eq!(v["port"], 8080);
    assert_eq!(v["labels"]["berth.mesh.allow"], "billing");
    assert!(v["labels"].get("com.amazonaws.ecs.task-arn").is_none());
    let names: Vec<&str> = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["berth-sidecar", "app"]);
    assert_eq!(v["containers"][1]["health"], "UNKNOWN");
    assert!(v["containers"][1]["known_status"].is_string());
}

#[tokio::test]
async fn inspect_errors_name_the_problem() {
    let out = inspect(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ECS_CONTAINER_METADATA_URI_V4"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = inspect(&[(
        "ECS_CONTAINER_METADATA_URI_V4",
        &format!("http://127.0.0.1:{port}/v4/x"),
    )]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Broken JSON from a live endpoint.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let body = "{\"TaskARN\": \"arn:x\", \"Cluster\": ";
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes())
                .await;
        }
    });
    let uri = format!("http://{addr}/v4/x");
    let out = tokio::task::spawn_blocking(move || inspect(&[("ECS_CONTAINER_METADATA_URI_V4", &uri)]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task metadata") && err.contains("invalid"), "{err}");
}
