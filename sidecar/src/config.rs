//! The sidecar's configuration, from its container environment, parsed once.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone)]
pub struct Settings {
    pub metadata_uri: String,
    /// The control API of one or more gateway replicas, `HOST:PORT` each, HOST an IP or a
    /// name such as a load balancer's (`BERTH_GATEWAY`: comma-separated
    /// `https://HOST:PORT`); the mesh view then says where every replica is.
    pub gateways: Vec<String>,
    /// The mesh trust anchor, PEM.
    pub ca_pem: String,
    pub token: Option<String>,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// Whether `BERTH_ADMIN` was given (else a transparent ingress on its port moves it).
    pub admin_set: bool,
    /// `BERTH_PROXY_CONFIGURATION`: the task's `proxyConfiguration` in the API's JSON
    /// form, for when the gateway cannot read the task definition (the gateway's, when
    /// it sends one, is what ECS applies, and wins).
    pub proxy: Option<berth_common::proxy_config::ProxyConfig>,
    pub app_port: Option<u16>,
    pub health_path: Option<String>,
    /// `BERTH_APP_PROTOCOL`: `h2c` (HTTP/2 without TLS for every request) or `http1`;
    /// unset: from the app's labels (`scheme=h2c`), gRPC requests always go as h2c.
    pub app_protocol: Option<bool>,
    /// `BERTH_LOG_FORMAT`: auto (text on a terminal), json or text.
    pub log_format: berth_common::logging::LogFormat,
    /// `BERTH_ACCESS_LOG`: `json` (or `true`) or `common`, to stdout; off when unset.
    pub access_log: Option<berth_common::accesslog::Format>,
    /// Tracing from the `OTEL_*` environment; `None` when off.
    pub tracing: Option<berth_common::telemetry::TraceSettings>,
    /// `BERTH_OUTBOUND_RESPONSE_TIMEOUT`: how long the outbound listener waits for a
    /// peer's response headers (default 60s). An idempotent request without a body that
    /// times out goes to another endpoint.
    pub outbound_response_timeout: std::time::Duration,
    /// `BERTH_APP_RESPONSE_TIMEOUT`: how long the inbound listener waits for the app's
    /// response headers (default 60s); then 504 (a gRPC caller: `UNAVAILABLE`, or
    /// `DEADLINE_EXCEEDED` when its own deadline came first).
    pub app_response_timeout: std::time::Duration,
    /// The AWS variables that say where the task role's credentials are and which STS to
    /// sign for (`AWS_CONTAINER_*`, `AWS_REGION`, `AWS_ENDPOINT_URL*`): a first
    /// certificate is then proved by IAM ([`crate::iam`]).
    pub aws_env: std::collections::BTreeMap<String, String>,
}

/// The variables [`Settings::aws_env`] keeps.
const AWS_VARS: &[&str] = &[
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_STS",
];

/// A positive duration from `name`, or `default` when it is unset.
fn duration(name: &str, default: std::time::Duration) -> Result<std::time::Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(t) => berth_common::config::parse_duration(&t)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| ConfigError(format!("{name}={t}: not a positive duration (500ms, 2s, 1m)"))),
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn addr(name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
    let v = var(name).unwrap_or_else(|| default.to_string());
    v.parse()
        .map_err(|_| ConfigError(format!("{name}={v} is not an address like 0.0.0.0:15443")))
}

impl Settings {
    /// The task's address when the inbound listener names one: the sidecar's own
    /// connections (control API, task credentials) leave from it, so the gateway sees the
    /// task as the source.
    pub(crate) fn source_ip(&self) -> Option<std::net::IpAddr> {
        Some(self.inbound.ip()).filter(|ip| !ip.is_unspecified())
    }

    pub fn from_env() -> Result<Settings, ConfigError> {
        let metadata_uri = var(crate::metadata::ENV)
            .ok_or_else(|| ConfigError(crate::metadata::MetadataError::Missing.to_string()))?;
        let gw = var("BERTH_GATEWAY")
            .ok_or_else(|| ConfigError("BERTH_GATEWAY is not set (e.g. https://10.0.0.5:9443)".into()))?;
        let gateways = gw
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(|g| {
                let hostport = g.strip_prefix("https://").unwrap_or(g).trim_end_matches('/');
                match hostport.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(hostport.to_string()),
                    _ => Err(ConfigError(format!(
                        "BERTH_GATEWAY={gw}: `{g}` is not https://HOST:PORT (several are separated by commas)"
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if gateways.is_empty() {
            return Err(ConfigError("BERTH_GATEWAY is empty".into()));
        }
        let ca = var("BERTH_CA_CERT")
            .ok_or_else(|| ConfigError("BERTH_CA_CERT is not set (PEM, inline or a path)".into()))?;
        let ca_pem = if ca.contains("-----BEGIN") {
            ca
        } else {
            std::fs::read_to_string(&ca).map_err(|e| ConfigError(format!("BERTH_CA_CERT={ca}: {e}")))?
        };
        let token = match (var("BERTH_TOKEN"), var("BERTH_TOKEN_FILE")) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError(format!("BERTH_TOKEN_FILE={path}: {e}")))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let app_port = match var("BERTH_APP_PORT") {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| ConfigError(format!("BERTH_APP_PORT={p} is not a port")))?,
            ),
            None => None,
        };
        Ok(Settings {
            metadata_uri,
            gateways,
            ca_pem,
            token,
            inbound: addr("BERTH_INBOUND", "0.0.0.0:15443")?,
            outbound: addr("BERTH_OUTBOUND", "127.0.0.1:15001")?,
            admin: addr("BERTH_ADMIN", "127.0.0.1:15000")?,
            admin_set: var("BERTH_ADMIN").is_some(),
            proxy: match var("BERTH_PROXY_CONFIGURATION") {
                Some(json) => Some(
                    berth_common::proxy_config::ProxyConfig::from_json(&json)
                        .map_err(|e| ConfigError(format!("BERTH_PROXY_CONFIGURATION: {e}")))?,
                ),
                None => None,
            },
            app_port,
            health_path: var("BERTH_HEALTH_PATH"),
            app_protocol: match var("BERTH_APP_PROTOCOL").as_deref() {
                None => None,
                Some("h2c") => Some(true),
                Some("http1") | Some("http") => Some(false),
                Some(other) => {
                    return Err(ConfigError(format!("BERTH_APP_PROTOCOL={other}: use h2c or http1")));
                }
            },
            log_format: match var("BERTH_LOG_FORMAT") {
                Some(f) => f
                    .parse()
                    .map_err(|e| ConfigError(format!("BERTH_LOG_FORMAT={f}: {e}")))?,
                None => berth_common::logging::LogFormat::Auto,
            },
            access_log: match var("BERTH_ACCESS_LOG").as_deref() {
                None | Some("false") => None,
                Some("true") | Some("json") => Some(berth_common::accesslog::Format::Json),
                Some("common") => Some(berth_common::accesslog::Format::Common),
                Some(other) => {
                    return Err(ConfigError(format!(
                        "BERTH_ACCESS_LOG={other}: use json, common, true or false"
                    )));
                }
            },
            tracing: berth_common::telemetry::TraceSettings::from_env().map_err(|e| ConfigError(e.to_string()))?,
            outbound_response_timeout: duration("BERTH_OUTBOUND_RESPONSE_TIMEOUT", std::time::Duration::from_secs(60))?,
            app_response_timeout: duration("BERTH_APP_RESPONSE_TIMEOUT", std::time::Duration::from_secs(60))?,
            aws_env: AWS_VARS
                .iter()
                .filter_map(|k| var(k).map(|v| (k.to_string(), v)))
                .collect(),
        })
    }
}

/// The gateway addresses: IPs as given, names resolved (all their addresses). Names that
/// do not resolve are left out, with a warning.
pub(crate) async fn resolve_gateways(gateways: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for g in gateways {
        if let Ok(a) = g.parse::<SocketAddr>() {
            out.push(a);
            continue;
        }
        match tokio::net::lookup_host(g.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::warn!(gateway = %g, error = %e, "BERTH_GATEWAY: cannot resolve"),
        }
    }
    out.sort();
    out.dedup();
    out
}
