//! The resource every span carries: who emitted it (`service.name`, version) and where
//! it runs, in the OpenTelemetry ECS conventions, read from the task metadata endpoint.

use std::time::Duration;

use serde_json::Value as Json;

use super::otlp::Value;
use super::settings::TraceSettings;

/// The resource for a process whose default name is `default_name`, with `detected`
/// attributes (ECS). Precedence: `OTEL_SERVICE_NAME`, then `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, then the default; other `OTEL_RESOURCE_ATTRIBUTES`
/// entries override detected ones.
pub fn build(settings: &TraceSettings, default_name: &str, detected: Vec<(String, Value)>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = vec![
        ("service.name".into(), default_name.to_string().into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("telemetry.sdk.name".into(), "berth".into()),
        ("telemetry.sdk.language".into(), "rust".into()),
        ("telemetry.sdk.version".into(), env!("CARGO_PKG_VERSION").into()),
    ];
    let put = |out: &mut Vec<(String, Value)>, k: String, v: Value| match out.iter_mut().find(|(key, _)| *key == k) {
        Some(slot) => slot.1 = v,
        None => out.push((k, v)),
    };
    for (k, v) in detected {
        put(&mut out, k, v);
    }
    for (k, v) in &settings.resource_attributes {
        put(&mut out, k.clone(), v.clone().into());
    }
    if let Some(name) = &settings.service_name {
        put(&mut out, "service.name".into(), name.clone().into());
    }
    out
}

/// ECS attributes from the task metadata v4 documents: `<uri>/task` and `<uri>` (this
/// container).
pub fn ecs(task: &Json, container: Option<&Json>) -> Vec<(String, Value)> {
    let s = |v: &Json, k: &str| {
        v.get(k)
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let mut out: Vec<(String, Value)> = vec![
        ("cloud.provider".into(), "aws".into()),
        ("cloud.platform".into(), "aws_ecs".into()),
    ];
    let task_arn = s(task, "TaskARN");
    // arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID
    let arn_parts: Vec<&str> = task_arn.as_deref().unwrap_or_default().split(':').collect();
    let (region, account) = match arn_parts.as_slice() {
        ["arn", _, "ecs", region, account, ..] => (Some(region.to_string()), Some(account.to_string())),
        _ => (None, None),
    };
    if let Some(arn) = &task_arn {
        out.push(("aws.ecs.task.arn".into(), arn.clone().into()));
        if let Some(id) = arn.rsplit('/').next() {
            out.push(("aws.ecs.task.id".into(), id.to_string().into()));
        }
    }
    if let Some(cluster) = s(task, "Cluster") {
        let arn = if cluster.starts_with("arn:") {
            Some(cluster)
        } else {
            match (&region, &account, arn_parts.first()) {
                (Some(r), Some(a), Some(_)) => Some(format!("arn:{}:ecs:{r}:{a}:cluster/{cluster}", arn_parts[1])),
                _ => None,
            }
        };
        if let Some(arn) = arn {
            out.push(("aws.ecs.cluster.arn".into(), arn.into()));
        }
    }
    if let Some(lt) = s(task, "LaunchType") {
        out.push(("aws.ecs.launchtype".into(), lt.to_ascii_lowercase().into()));
    }
    if let Some(f) = s(task, "Family") {
        out.push(("aws.ecs.task.family".into(), f.into()));
    }
    if let Some(r) = s(task, "Revision") {
        out.push(("aws.ecs.task.revision".into(), r.into()));
    }
    if let Some(r) = region {
        out.push(("cloud.region".into(), r.into()));
    }
    if let Some(a) = account {
        out.push(("cloud.account.id".into(), a.into()));
    }
    if let Some(az) = s(task, "AvailabilityZone") {
        out.push(("cloud.availability_zone".into(), az.into()));
    }
    if let Some(c) = container {
        if let Some(id) = s(c, "DockerId") {
            out.push(("container.id".into(), id.into()));
        }
        if let Some(n) = s(c, "Name") {
            out.push(("container.name".into(), n.into()));
        }
        if let Some(arn) = s(c, "ContainerARN") {
            out.push(("aws.ecs.container.arn".into(), arn.into()));
        }
    }
    out
}

/// Read `<uri>/task` and `<uri>` from `ECS_CONTAINER_METADATA_URI_V4` (one bounded
/// attempt each); empty outside ECS or when the endpoint fails.
pub async fn detect_ecs() -> Vec<(String, Value)> {
    let Some(uri) = std::env::var("ECS_CONTAINER_METADATA_URI_V4")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return Vec::new();
    };
    let base = uri.trim_end_matches('/');
    let Some(task) = get_json(&format!("{base}/task")).await else {
        tracing::warn!("task metadata unreadable: spans carry no ECS resource attributes");
        return Vec::new();
    };
    let container = get_json(base).await;
    ecs(&task, container.as_ref())
}

/// One GET of a JSON document, bounded to 2 s.
pub async fn get_json(url: &str) -> Option<Json> {
    let uri: http::Uri = url.parse().ok()?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let work = async {
        let resp = client.get(uri).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            resp.into_body(),
            crate::http::MAX_DOCUMENT_BYTES,
        ))
        .await
        .ok()?
        .to_bytes();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), work).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ecs_attributes_follow_the_conventions() {
        let task = json!({
            "Cluster": "default",
            "TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/default/abc123",
            "Family": "whoami", "Revision": "7", "LaunchType": "FARGATE",
            "AvailabilityZone": "us-east-1a"
        });
        let container = json!({"DockerId": "d0c", "Name": "berth-sidecar"});
        let attrs = ecs(&task, Some(&container));
        let get = |k: &str| attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("cloud.platform"), Some("aws_ecs".into()));
        assert_eq!(
            get("aws.ecs.cluster.arn"),
            Some("arn:aws:ecs:us-east-1:123456789012:cluster/default".into())
        );
        assert_eq!(get("aws.ecs.launchtype"), Some("fargate".into()));
        assert_eq!(get("aws.ecs.task.revision"), Some("7".into()));
        assert_eq!(get("aws.ecs.task.id"), Some("abc123".into()));
        assert_eq!(get("cloud.region"), Some("us-east-1".into()));
        assert_eq!(get("container.id"), Some("d0c".into()));
    }
}
