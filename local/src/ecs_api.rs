//! The ECS API over its real wire protocol: awsJson1.1, `POST /` with
//! `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>`. SigV4 headers are
//! accepted without checking the signature. Errors come in the AWS shape
//! (`{"__type": ..., "message": ...}`, HTTP 400, or 500 for server faults).
//!
//! Faults can be injected at any time: a throttling rate (ThrottlingException), an
//! error rate (ServerException, 500), added latency, and a full outage.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::iam;
use super::state::{ApiError, Ecs};

const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// Faults applied to every API call.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fraction of calls answered with ThrottlingException.
    pub throttle_rate: f64,
    /// Fraction of calls answered with a 500 ServerException.
    pub error_rate: f64,
    pub latency: Duration,
    /// Every call fails with 503 while set.
    pub outage: bool,
    /// STS calls fail with 503 while set (ECS keeps answering).
    pub sts_outage: bool,
    /// Operations refused as IAM refuses an action the caller's policy lacks
    /// (`AccessDeniedException`; EC2's `UnauthorizedOperation` for `ec2:DescribeInstances`),
    /// by name: `DescribeServices` (or `ecs:DescribeServices`), `ec2:DescribeInstances`.
    /// At most 64.
    pub deny: Vec<String>,
}

/// A running ECS API server.
#[derive(Clone)]
pub struct EcsServer {
    pub addr: SocketAddr,
    pub ecs: Arc<Mutex<Ecs>>,
    pub faults: Arc<Mutex<Faults>>,
    calls: Arc<Mutex<BTreeMap<String, u64>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl EcsServer {
    pub async fn start(addr: SocketAddr, ecs: Ecs) -> std::io::Result<EcsServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ecs = Arc::new(Mutex::new(ecs));
        let faults: Arc<Mutex<Faults>> = Arc::default();
        let calls: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let (e, f, c) = (ecs.clone(), faults.clone(), calls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (e, f, c) = (e.clone(), f.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (e, f, c) = (e.clone(), f.clone(), c.clone());
                        async move { Ok::<_, Infallible>(handle(&e, &f, &c, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(EcsServer {
            addr,
            ecs,
            faults,
            calls,
            task: Arc::new(task),
        })
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls received per operation (every call, including those answered with a fault).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn reset_calls(&self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

fn reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

fn error(e: &ApiError) -> Response<Full<Bytes>> {
    reply(e.status, &json!({"__type": e.kind, "message": e.message}))
}

async fn handle(
    ecs: &Mutex<Ecs>,
    faults: &Mutex<Faults>,
    calls: &Mutex<BTreeMap<String, u64>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // Fault injection on demand: `POST /berth-local/faults` with
    // `{"throttleRate": 0.2, "errorRate": 0.1, "latencyMs": 50, "outage": false,
    // "stsOutage": false, "deny": ["DescribeServices"]}`;
    // `GET` shows the current faults.
    if req.uri().path() == "/berth-local/faults" {
        if req.method() == http::Method::POST {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return error(&ApiError::client(
                        "SerializationException",
                        format!("invalid JSON: {e}"),
                    ));
                }
            };
            let rate = |k: &str| v[k].as_f64().filter(|r| (0.0..=1.0).contains(r));
            let mut f = faults.lock().unwrap_or_else(|e| e.into_inner());
            *f = Faults {
                throttle_rate: rate("throttleRate").unwrap_or(0.0),
                error_rate: rate("errorRate").unwrap_or(0.0),
                latency: Duration::from_millis(v["latencyMs"].as_u64().unwrap_or(0)),
                outage: v["outage"].as_bool().unwrap_or(false),
                sts_outage: v["stsOutage"].as_bool().unwrap_or(false),
                deny: v["deny"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str())
                    .filter(|d| d.len() <= 64)
                    .take(64)
                    .map(str::to_string)
                    .collect(),
            };
        }
        let f = faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
        return reply(
            200,
            &json!({"throttleRate": f.throttle_rate, "errorRate": f.error_rate,
                    "latencyMs": f.latency.as_millis() as u64, "outage": f.outage,
                    "stsOutage": f.sts_outage, "deny": f.deny}),
        );
    }
    // The SigV4 credential scope tells EC2 calls (query protocol) from ECS ones.
    let scope_service = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(3))
        .unwrap_or_default()
        .to_string();
    if scope_service == "sts" {
        return sts(ecs, faults, calls, req).await;
    }
    if scope_service == "ec2" {
        *calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry("ec2:DescribeInstances".into())
            .or_default() += 1;
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form = String::from_utf8_lossy(&body).into_owned();
        let mut action = "";
        let mut ids = Vec::new();
        for pair in form.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "Action" {
                action = if v == "DescribeInstances" {
                    "DescribeInstances"
                } else {
                    "other"
                };
            } else if k.starts_with("InstanceId.") {
                ids.push(v.to_string());
            }
        }
        let denied = faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deny
            .iter()
            .any(|d| d == "ec2:DescribeInstances");
        if denied {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation. (injected)</Message></Error></Errors></Response>",
            )));
            *r.status_mut() = StatusCode::FORBIDDEN;
            return r;
        }
        if action != "DescribeInstances" {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"<Response><Errors><Error><Code>InvalidAction</Code><Message>only DescribeInstances</Message></Error></Errors></Response>",
            )));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        let xml = ecs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .describe_instances_xml(&ids);
        let mut r = Response::new(Full::new(Bytes::from(xml)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/xml;charset=UTF-8"),
        );
        return r;
    }
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some(op) = target.strip_prefix(TARGET_PREFIX).map(str::to_string) else {
        return error(&ApiError::client(
            "UnknownOperationException",
            format!("unknown X-Amz-Target `{target}`"),
        ));
    };
    *calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(op.clone())
        .or_default() += 1;
    let f = faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !f.latency.is_zero() {
        tokio::time::sleep(f.latency).await;
    }
    if f.outage {
        return reply(
            503,
            &json!({"__type": "ServiceUnavailableException", "message": "Service unavailable (injected outage)"}),
        );
    }
    if f.deny.iter().any(|d| d.strip_prefix("ecs:").unwrap_or(d) == op) {
        return reply(
            400,
            &json!({"__type": "AccessDeniedException",
                    "message": format!("User is not authorized to perform: ecs:{op} (injected)")}),
        );
    }
    if f.throttle_rate > 0.0 && fastrand::f64() < f.throttle_rate {
        return error(&ApiError::client("ThrottlingException", "Rate exceeded"));
    }
    if f.error_rate > 0.0 && fastrand::f64() < f.error_rate {
        return reply(
            500,
            &json!({"__type": "ServerException", "message": "Internal error (injected)"}),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(&ApiError::client("SerializationException", "unreadable body")),
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(&ApiError::client(
                    "SerializationException",
                    format!("invalid JSON: {e}"),
                ));
            }
        }
    };
    let mut ecs = ecs.lock().unwrap_or_else(|e| e.into_inner());
    let result = dispatch(&mut ecs, &op, &input);
    match result {
        Ok(v) => reply(200, &v),
        Err(e) => error(&e),
    }
}

/// STS's `GetCallerIdentity` (query protocol), for the task roles' credentials.
async fn sts(
    ecs: &Mutex<Ecs>,
    faults: &Mutex<Faults>,
    calls: &Mutex<BTreeMap<String, u64>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    *calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry("sts:GetCallerIdentity".into())
        .or_default() += 1;
    let xml = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/xml"));
        r
    };
    let f = faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if f.sts_outage || f.outage {
        return xml(
            StatusCode::SERVICE_UNAVAILABLE,
            iam::StsError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "ServiceUnavailable",
                message: "Service unavailable (injected outage)".into(),
            }
            .xml(),
        );
    }
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, iam::MAX_STS_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return xml(StatusCode::BAD_REQUEST, String::new()),
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let ecs = ecs.lock().unwrap_or_else(|e| e.into_inner());
    match iam::sts(
        &ecs,
        parts.method.as_str(),
        path,
        &parts.headers,
        &body,
        std::time::SystemTime::now(),
    ) {
        Ok(answer) => xml(StatusCode::OK, answer),
        Err(e) => xml(e.status, e.xml()),
    }
}

fn dispatch(ecs: &mut Ecs, op: &str, input: &Value) -> Result<Value, ApiError> {
    let s = |k: &str| input[k].as_str();
    match op {
        "CreateCluster" => {
            let name = s("clusterName").unwrap_or("default");
            Ok(json!({"cluster": ecs.create_cluster(name)}))
        }
        "ListClusters" => {
            let arns: Vec<String> = ecs.clusters.values().map(|c| c.arn.clone()).collect();
            Ok(json!({"clusterArns": arns}))
        }
        "DescribeClusters" => {
            let mut clusters = Vec::new();
            let mut failures = Vec::new();
            let wanted: Vec<String> = match input["clusters"].as_array() {
                Some(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                None => vec!["default".into()],
            };
            for w in wanted {
                let name = w.rsplit('/').next().unwrap_or(&w).to_string();
                match ecs.cluster_json(&name) {
                    Some(c) => clusters.push(c),
                    None => failures.push(json!({"arn": w, "reason": "MISSING"})),
                }
            }
            Ok(json!({"clusters": clusters, "failures": failures}))
        }
        "RegisterTaskDefinition" => Ok(json!({"taskDefinition": ecs.register_task_definition(input)?})),
        "DescribeTaskDefinition" => {
            let td = s("taskDefinition").ok_or_else(|| ApiError::invalid("taskDefinition is required"))?;
            Ok(json!({"taskDefinition": ecs.task_definition(td)?}))
        }
        "RunTask" => {
            let td = s("taskDefinition").ok_or_else(|| ApiError::invalid("taskDefinition is required"))?;
            let count = input["count"].as_u64().unwrap_or(1) as usize;
            let tasks = ecs.run_task(
                s("cluster"),
                td,
                count,
                s("group"),
                s("startedBy"),
                s("launchType"),
                &input["overrides"],
            )?;
            Ok(json!({"tasks": tasks, "failures": []}))
        }
        "StopTask" => {
            let task = s("task").ok_or_else(|| ApiError::invalid("task is required"))?;
            Ok(json!({"task": ecs.stop_task(s("cluster"), task, s("reason"))?}))
        }
        "CreateService" => Ok(json!({"service": ecs.create_service(input)?})),
        "UpdateService" => Ok(json!({"service": ecs.update_service(input)?})),
        "DeleteService" => Ok(json!({"service": ecs.delete_service(input)?})),
        "ListServices" => ecs.list_services(input),
        "DescribeServices" => ecs.describe_services(input),
        "ListTasks" => ecs.list_tasks(input),
        "DescribeTasks" => ecs.describe_tasks(input),
        "DescribeContainerInstances" => ecs.describe_container_instances(input),
        other => Err(ApiError::client(
            "UnknownOperationException",
            format!("operation {other} is not supported by berth-local"),
        )),
    }
}
