//! The task metadata endpoint v4, one per container at its own
//! `ECS_CONTAINER_METADATA_URI_V4` (`<base>/v4/<docker id>`), with the documented
//! paths `/`, `/task`, `/taskWithTags`, `/stats` and `/task/stats` and field names.
//! The same server hands each task with a role its credentials (`/v2/credentials/ID`,
//! the container credentials endpoint: [`crate::iam`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::state::{Ecs, TaskState};

/// Serve TMDS for every task of `ecs`; returns the bound address.
pub async fn serve(addr: SocketAddr, ecs: Arc<Mutex<Ecs>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let ecs = ecs.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let ecs = ecs.clone();
                    async move {
                        let path = req.uri().path();
                        if path.starts_with("/v2/credentials/") {
                            let ecs = ecs.lock().unwrap_or_else(|e| e.into_inner());
                            let authorization = req
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok());
                            let (status, body) = crate::iam::credentials(&ecs, path, authorization, peer.ip());
                            return Ok::<_, Infallible>(reply(status, &body));
                        }
                        Ok::<_, Infallible>(handle(&ecs, path))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn handle(ecs: &Mutex<Ecs>, path: &str) -> Response<Full<Bytes>> {
    let Some(rest) = path.strip_prefix("/v4/") else {
        return reply(StatusCode::NOT_FOUND, &json!({"error": "unknown path"}));
    };
    let (docker_id, sub) = match rest.split_once('/') {
        Some((id, sub)) => (id, sub),
        None => (rest, ""),
    };
    let ecs = ecs.lock().unwrap_or_else(|e| e.into_inner());
    let Some(task) = ecs
        .clusters
        .values()
        .flat_map(|c| c.tasks.values())
        .find(|t| t.containers.iter().any(|c| c.docker_id == docker_id))
    else {
        return reply(StatusCode::NOT_FOUND, &json!({"error": "unknown container"}));
    };
    match sub {
        "" => reply(StatusCode::OK, &container_json(&ecs, task, docker_id)),
        "task" => reply(StatusCode::OK, &task_json(&ecs, task, false)),
        "taskWithTags" => reply(StatusCode::OK, &task_json(&ecs, task, true)),
        "stats" => reply(StatusCode::OK, &stats()),
        "task/stats" => {
            let m: serde_json::Map<String, Value> =
                task.containers.iter().map(|c| (c.docker_id.clone(), stats())).collect();
            reply(StatusCode::OK, &Value::Object(m))
        }
        _ => reply(StatusCode::NOT_FOUND, &json!({"error": "unknown path"})),
    }
}

fn stats() -> Value {
    json!({"read": "0001-01-01T00:00:00Z", "memory_stats": {}, "cpu_stats": {}, "networks": {}})
}

/// ECS agent-level status: PENDING, RUNNING or STOPPED.
fn known_status(last: &str) -> &'static str {
    match last {
        "RUNNING" | "DEACTIVATING" | "STOPPING" => "RUNNING",
        "DEPROVISIONING" | "STOPPED" => "STOPPED",
        _ => "PENDING",
    }
}

fn container_json(ecs: &Ecs, task: &TaskState, docker_id: &str) -> Value {
    let Some(c) = task.containers.iter().find(|c| c.docker_id == docker_id) else {
        return Value::Null;
    };
    let def = ecs.task_definition(&task.taskdef_arn).cloned().unwrap_or(Value::Null);
    let cdef = def["containerDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"].as_str() == Some(c.name.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    let family = def["family"].as_str().unwrap_or_default();
    let revision = def["revision"].as_u64().unwrap_or(0);
    let cluster_arn = ecs
        .clusters
        .get(&task.cluster)
        .map(|c| c.arn.clone())
        .unwrap_or_default();
    let mut labels = serde_json::Map::new();
    if let Some(l) = cdef["dockerLabels"].as_object() {
        labels.extend(l.clone());
    }
    labels.insert("com.amazonaws.ecs.cluster".into(), json!(cluster_arn));
    labels.insert("com.amazonaws.ecs.container-name".into(), json!(c.name));
    labels.insert("com.amazonaws.ecs.task-arn".into(), json!(task.arn));
    labels.insert("com.amazonaws.ecs.task-definition-family".into(), json!(family));
    labels.insert(
        "com.amazonaws.ecs.task-definition-version".into(),
        json!(revision.to_string()),
    );
    let network_mode = def["networkMode"].as_str().unwrap_or("awsvpc");
    let mut v = json!({
        "DockerId": c.docker_id,
        "Name": c.name,
        "DockerName": format!("ecs-{family}-{revision}-{}", c.name),
        "Image": cdef["image"].as_str().unwrap_or("berth-local"),
        "ImageID": format!("sha256:{}", c.docker_id),
        "Labels": labels,
        "DesiredStatus": if task.desired_status == "STOPPED" { "STOPPED" } else { "RUNNING" },
        "KnownStatus": c.last_status,
        "Limits": {"CPU": cdef["cpu"].as_u64().unwrap_or(0), "Memory": cdef["memory"].as_u64().unwrap_or(0)},
        "CreatedAt": task.created_at,
        "Type": "NORMAL",
        "ContainerARN": format!("arn:aws:ecs:{}:{}:container/{}/{}/{}", ecs.region, super::state::ACCOUNT, task.cluster, task.id, c.name),
        "LogDriver": "awslogs",
    });
    if let Some(code) = c.exit_code {
        v["ExitCode"] = json!(code);
    }
    if cdef["healthCheck"].is_object() {
        v["Health"] = json!({"status": c.health});
    }
    let mut networks = json!({"NetworkMode": network_mode});
    match task.address {
        Some(a) => {
            networks["IPv4Addresses"] = json!([a.to_string()]);
            networks["IPv4SubnetCIDRBlock"] =
                json!(format!("{}.{}.{}.0/24", a.octets()[0], a.octets()[1], a.octets()[2]));
            networks["PrivateDNSName"] = json!(format!("ip-{}.local", a.to_string().replace('.', "-")));
            networks["AttachmentIndex"] = json!(0);
        }
        None => {
            // Bridge mode: the container sits on the instance's docker bridge.
            networks["IPv4Addresses"] = json!(["172.17.0.2"]);
        }
    }
    v["Networks"] = json!([networks]);
    if !c.bindings.is_empty() {
        let host_ip = task
            .container_instance_arn
            .as_ref()
            .and_then(|ci| ecs.clusters.get(&task.cluster)?.container_instances.get(ci))
            .and_then(|ec2| ecs.ec2_instances.get(ec2))
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "0.0.0.0".into());
        v["Ports"] = json!(
            c.bindings
                .iter()
                .map(|(cp, hp)| json!({
                    "ContainerPort": cp, "Protocol": "tcp", "HostPort": hp, "HostIp": host_ip
                }))
                .collect::<Vec<_>>()
        );
    } else if let Some(ms) = cdef["portMappings"].as_array() {
        v["Ports"] = json!(
            ms.iter()
                .map(|m| json!({
                    "ContainerPort": m["containerPort"], "Protocol": "tcp", "HostPort": m["containerPort"]
                }))
                .collect::<Vec<_>>()
        );
    }
    v
}

fn task_json(ecs: &Ecs, task: &TaskState, tags: bool) -> Value {
    let def = ecs.task_definition(&task.taskdef_arn).cloned().unwrap_or(Value::Null);
    let cluster_arn = ecs
        .clusters
        .get(&task.cluster)
        .map(|c| c.arn.clone())
        .unwrap_or_default();
    let containers: Vec<Value> = task
        .containers
        .iter()
        .map(|c| container_json(ecs, task, &c.docker_id))
        .collect();
    let mut v = json!({
        "Cluster": cluster_arn,
        "TaskARN": task.arn,
        "Family": def["family"],
        "Revision": def["revision"].as_u64().unwrap_or(0).to_string(),
        "DesiredStatus": task.desired_status,
        "KnownStatus": known_status(&task.last_status),
        "Limits": {"CPU": 0.25, "Memory": 512},
        "AvailabilityZone": format!("{}a", ecs.region),
        "LaunchType": task.launch_type,
        "Containers": containers,
        "ClockDrift": {"ClockErrorBound": 0.5, "ReferenceTimestamp": task.created_at, "ClockSynchronizationStatus": "SYNCHRONIZED"},
    });
    if let Some(service) = task.group.strip_prefix("service:") {
        v["ServiceName"] = json!(service);
    }
    if let Some(s) = task.started_at {
        v["PullStartedAt"] = json!(task.created_at);
        v["PullStoppedAt"] = json!(s);
    }
    if let Some(s) = task.stopped_at {
        v["ExecutionStoppedAt"] = json!(s);
    }
    if tags {
        v["TaskTags"] = json!({});
        v["ContainerInstanceTags"] = json!({});
    }
    v
}
