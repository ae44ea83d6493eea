//! The ECS task metadata endpoint v4 (`ECS_CONTAINER_METADATA_URI_V4`): the task's ARN,
//! cluster, service, family, revision, labels, addresses, ports and container health,
//! and the registration they add up to.
//!
//! The client ignores `HTTP_PROXY`-style variables (those are the app's way to reach
//! the sidecar) and never guesses an address.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

pub const ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{ENV} is not set: berth-sidecar must run as a container of an ECS task")]
    Missing,
    #[error("{ENV}={0} is not a valid http URL")]
    BadUri(String),
    #[error("the task metadata endpoint {0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("the task metadata endpoint {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("the task metadata from {0} was invalid: {1}")]
    Invalid(String, String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskMetadata {
    pub cluster: String,
    #[serde(rename = "TaskARN")]
    pub task_arn: String,
    pub family: String,
    pub revision: String,
    pub desired_status: String,
    pub known_status: String,
    #[serde(default)]
    pub launch_type: Option<String>,
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerMetadata>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerMetadata {
    pub name: String,
    #[serde(default)]
    pub docker_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub known_status: String,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub ports: Vec<PortMetadata>,
    #[serde(default)]
    pub networks: Vec<NetworkMetadata>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortMetadata {
    #[serde(default)]
    pub container_port: Option<u16>,
    #[serde(default)]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkMetadata {
    #[serde(default)]
    pub network_mode: String,
    #[serde(default, rename = "IPv4Addresses")]
    pub ipv4_addresses: Vec<String>,
}

/// One attempt to read `<uri>/task`, bounded by `timeout`.
pub async fn fetch(uri: &str, timeout: Duration) -> Result<TaskMetadata, MetadataError> {
    let url: http::Uri = format!("{}/task", uri.trim_end_matches('/'))
        .parse()
        .map_err(|_| MetadataError::BadUri(uri.to_string()))?;
    if url.scheme_str() != Some("http") || url.host().is_none() {
        return Err(MetadataError::BadUri(uri.to_string()));
    }
    let body = get_document(&url, None, None, berth_common::http::MAX_DOCUMENT_BYTES, timeout)
        .await
        .map_err(|e| match e {
            DocumentError::Unreachable(why) => MetadataError::Unreachable(uri.to_string(), why),
            DocumentError::Status(status) => MetadataError::Invalid(uri.to_string(), format!("HTTP {status}")),
            DocumentError::Timeout => MetadataError::Timeout(uri.to_string(), timeout),
        })?;
    parse(uri, &body)
}

/// Why a local agent's document (TMDS, the task credentials endpoint) was not read.
#[derive(Debug)]
pub(crate) enum DocumentError {
    Unreachable(String),
    Status(http::StatusCode),
    Timeout,
}

/// One GET of a document from a local agent over plain HTTP, with an `Authorization`
/// header when it wants one, from `bind` when given: at most `limit` bytes, the whole
/// within `timeout`.
pub(crate) async fn get_document(
    url: &http::Uri,
    authorization: Option<&str>,
    bind: Option<std::net::IpAddr>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, DocumentError> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(bind);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut req = http::Request::get(url.clone());
    if let Some(a) = authorization {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| DocumentError::Unreachable(e.to_string()))?;
    tokio::time::timeout(timeout, async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| DocumentError::Unreachable(berth_common::error::chain_text(&e)))?;
        if !resp.status().is_success() {
            return Err(DocumentError::Status(resp.status()));
        }
        http_body_util::Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| DocumentError::Unreachable(e.to_string()))
    })
    .await
    .map_err(|_| DocumentError::Timeout)?
}

/// Parse a `/task` document.
pub fn parse(uri: &str, body: &[u8]) -> Result<TaskMetadata, MetadataError> {
    let md: TaskMetadata =
        serde_json::from_slice(body).map_err(|e| MetadataError::Invalid(uri.to_string(), e.to_string()))?;
    if md.task_arn.is_empty() || md.cluster.is_empty() {
        return Err(MetadataError::Invalid(
            uri.to_string(),
            "TaskARN or Cluster is empty".into(),
        ));
    }
    Ok(md)
}

pub use berth_common::control::{ContainerStatus, Registration};

/// The sidecar's own container name in the task definition.
pub const SIDECAR_CONTAINER: &str = "berth-sidecar";

impl TaskMetadata {
    /// The app container: the one carrying `berth.`/`traefik.` labels, else the first
    /// that is not the sidecar.
    pub fn app(&self) -> Option<&ContainerMetadata> {
        let others = || self.containers.iter().filter(|c| c.name != SIDECAR_CONTAINER);
        others()
            .find(|c| {
                c.labels
                    .keys()
                    .any(|k| k.starts_with("berth.") || k.starts_with("traefik."))
            })
            .or_else(|| others().next())
    }

    pub fn registration(&self, app_port: Option<u16>) -> Registration {
        let app = self.app();
        let network = self.containers.iter().flat_map(|c| c.networks.first()).next();
        let network_mode = network.map(|n| n.network_mode.clone()).filter(|m| !m.is_empty());
        let bridge = matches!(network_mode.as_deref(), Some("bridge") | Some("host"));
        let address = if bridge {
            None
        } else {
            network.and_then(|n| n.ipv4_addresses.first().cloned())
        };
        let port = app_port
            .map(|p| {
                // A container port maps to its host port in bridge mode.
                app.and_then(|a| a.ports.iter().find(|m| m.container_port == Some(p)))
                    .and_then(|m| if bridge { m.host_port } else { m.container_port })
                    .unwrap_or(p)
            })
            .or_else(|| {
                let ports = app.map(|a| a.ports.as_slice()).unwrap_or_default();
                match ports {
                    [one] => {
                        if bridge {
                            one.host_port
                        } else {
                            one.container_port
                        }
                    }
                    _ => None,
                }
            });
        Registration {
            task_arn: self.task_arn.clone(),
            cluster: self.cluster.rsplit('/').next().unwrap_or(&self.cluster).to_string(),
            service: self
                .service_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| self.family.clone()),
            family: self.family.clone(),
            revision: self.revision.clone(),
            launch_type: self.launch_type.clone(),
            network_mode,
            address,
            port,
            labels: app
                .map(|a| {
                    a.labels
                        .iter()
                        .filter(|(k, _)| !k.starts_with("com.amazonaws.ecs."))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            containers: self
                .containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    known_status: c.known_status.clone(),
                    health: c.health.as_ref().map(|h| h.status.clone()),
                })
                .collect(),
            healthy: self.app_healthy(),
            inbound_port: None,
            sidecar_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        }
    }

    /// The app container is RUNNING and, when it has a health check, HEALTHY.
    pub fn app_healthy(&self) -> bool {
        self.app()
            .is_some_and(|a| a.known_status == "RUNNING" && a.health.as_ref().is_none_or(|h| h.status == "HEALTHY"))
    }
}
