//! The gateway's static configuration: flags, `BERTH_*` environment variables and an
//! optional TOML file (`--config`), merged once into typed structs.
//!
//! Precedence: flag or environment variable, then the file, then the default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use berth_common::config::parse_duration;
use berth_common::path::{EncodedCharacters, PathPolicy};
use berth_common::rules::matcher::parse_ip_range;
use clap::Parser;
use ipnet::IpNet;
use serde::Deserialize;

use crate::mesh::peers::Peers;
use crate::proxy::Limits;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Command-line flags. Every flag also reads `BERTH_<NAME>`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "berth-gateway",
    version,
    about = "Berth: the ECS-native ingress gateway and mesh control plane"
)]
pub struct Args {
    /// TOML file with any of these settings (flags and env vars win).
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Entrypoint `NAME=ADDR` (repeatable), e.g. `web=0.0.0.0:80`.
    #[arg(long = "entrypoint", env = "BERTH_ENTRYPOINT", value_delimiter = ',')]
    pub entrypoints: Vec<String>,
    /// Default TLS certificate (PEM) for TLS connections on every entrypoint.
    #[arg(long, env = "BERTH_TLS_CERT", hide_env_values = true)]
    pub tls_cert: Option<PathBuf>,
    /// Key (PEM) of `--tls-cert`.
    #[arg(long, env = "BERTH_TLS_KEY", hide_env_values = true)]
    pub tls_key: Option<PathBuf>,
    /// Serve `GET /ping` on this entrypoint (503 while shutting down).
    #[arg(long, env = "BERTH_PING")]
    pub ping: Option<String>,
    /// Traefik dynamic configuration file (YAML or TOML), watched for changes.
    #[arg(long, env = "BERTH_FILE_PROVIDER")]
    pub file_provider: Option<PathBuf>,
    /// Admin API, metrics and dashboard address [default: 127.0.0.1:9900].
    #[arg(long, env = "BERTH_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// After SIGTERM, keep accepting this long before draining [default: 10s].
    #[arg(long, env = "BERTH_SHUTDOWN_DELAY")]
    pub shutdown_delay: Option<String>,
    /// Longest wait for in-flight requests once draining [default: 30s].
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Largest request head (request line and headers) in bytes; larger gets 431 [default: 32768].
    #[arg(long, env = "BERTH_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Largest request body in bytes; larger gets 413 [default: unlimited].
    #[arg(long, env = "BERTH_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Time allowed to read a request head [default: 10s].
    #[arg(long, env = "BERTH_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// How long `/readyz` waits for every source's first complete view (each ECS cluster
    /// one round) before it says ready anyway; 0 waits for ever [default: 60s].
    #[arg(long, env = "BERTH_READY_TIMEOUT")]
    pub ready_timeout: Option<String>,
    /// Time allowed to read a whole request, body included, as Traefik's `readTimeout`;
    /// 0 disables [default: 60s].
    #[arg(long, env = "BERTH_REQUEST_READ_TIMEOUT")]
    pub request_read_timeout: Option<String>,
    /// Close client connections idle this long [default: 180s].
    #[arg(long, env = "BERTH_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Time allowed to connect to an upstream [default: 5s].
    #[arg(long, env = "BERTH_UPSTREAM_CONNECT_TIMEOUT")]
    pub upstream_connect_timeout: Option<String>,
    /// Time allowed for an upstream's response headers; 0 disables [default: 0].
    #[arg(long, env = "BERTH_UPSTREAM_RESPONSE_TIMEOUT")]
    pub upstream_response_timeout: Option<String>,
    /// Close idle upstream connections after this long [default: 90s].
    #[arg(long, env = "BERTH_UPSTREAM_IDLE_TIMEOUT")]
    pub upstream_idle_timeout: Option<String>,
    /// Extra trust anchors (PEM) for `https://` upstreams.
    #[arg(long, env = "BERTH_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Clients whose `X-Forwarded-*` headers are kept (IPs or CIDRs, repeatable).
    #[arg(
        long = "forwarded-trusted-ip",
        env = "BERTH_FORWARDED_TRUSTED_IP",
        value_delimiter = ','
    )]
    pub forwarded_trusted_ips: Vec<String>,
    /// Log format: `json`, `text`, or `auto` (text on a terminal) [default: auto].
    #[arg(long, env = "BERTH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Write an access log line per request (Traefik's fields).
    #[arg(long, env = "BERTH_ACCESS_LOG")]
    pub access_log: bool,
    /// Access log format: `json` or `common` [default: json].
    #[arg(long, env = "BERTH_ACCESS_LOG_FORMAT")]
    pub access_log_format: Option<String>,
    /// Access log file (appended) [default: stdout].
    #[arg(long, env = "BERTH_ACCESS_LOG_FILE")]
    pub access_log_file: Option<PathBuf>,

    // --- ECS discovery (issue: ECS discovery) ---
    /// ECS cluster to discover (repeatable). Discovery runs only when given.
    #[arg(long = "ecs-cluster", env = "BERTH_ECS_CLUSTER", value_delimiter = ',')]
    pub ecs_clusters: Vec<String>,
    /// Discover every cluster (ListClusters).
    #[arg(long, env = "BERTH_ECS_ALL_CLUSTERS")]
    pub ecs_all_clusters: bool,
    #[arg(long, env = "BERTH_ECS_REGION")]
    pub ecs_region: Option<String>,
    /// Reconcile period [default: 30s].
    #[arg(long, env = "BERTH_ECS_REFRESH")]
    pub ecs_refresh: Option<String>,
    #[arg(long, env = "BERTH_ECS_HEALTHY_ONLY")]
    pub ecs_healthy_only: bool,
    #[arg(long, env = "BERTH_ECS_DEFAULT_RULE")]
    pub ecs_default_rule: Option<String>,
    /// `--exposed-by-default`: route containers without `berth.enable=true` too.
    #[arg(long = "exposed-by-default", env = "BERTH_EXPOSED_BY_DEFAULT")]
    pub exposed_by_default: bool,
    /// Client-side limit on ECS API calls per second [default: 20].
    #[arg(long, env = "BERTH_ECS_API_RATE")]
    pub ecs_api_rate: Option<f64>,
    /// Burst allowed above `--ecs-api-rate` [default: 40].
    #[arg(long, env = "BERTH_ECS_API_BURST")]
    pub ecs_api_burst: Option<f64>,
    /// Clusters reconciled at the same time [default: 4].
    #[arg(long, env = "BERTH_ECS_CONCURRENCY")]
    pub ecs_concurrency: Option<usize>,

    // --- Mesh control plane (issue: mesh identity) ---
    /// The mesh CA certificate: a PEM file, or the PEM itself (an ECS secret).
    #[arg(long, env = "BERTH_MESH_CA_CERT", hide_env_values = true)]
    pub mesh_ca_cert: Option<PathBuf>,
    /// The mesh CA key: a PEM file, or the PEM itself (an ECS secret).
    #[arg(long, env = "BERTH_MESH_CA_KEY", hide_env_values = true)]
    pub mesh_ca_key: Option<PathBuf>,
    /// The bootstrap token itself (an ECS secret), instead of --mesh-token-file.
    #[arg(long, env = "BERTH_MESH_TOKEN", hide_env_values = true)]
    pub mesh_token: Option<String>,
    #[arg(long, env = "BERTH_MESH_DEV_CA")]
    pub mesh_dev_ca: Option<PathBuf>,
    #[arg(long, env = "BERTH_MESH_LISTEN")]
    pub mesh_listen: Option<SocketAddr>,
    #[arg(long, env = "BERTH_MESH_TRUST_DOMAIN")]
    pub mesh_trust_domain: Option<String>,
    #[arg(long, env = "BERTH_MESH_TOKEN_FILE")]
    pub mesh_token_file: Option<PathBuf>,
    /// Issue first certificates without a bootstrap token (any task the reconciler knows,
    /// asking from its own address, gets its identity). Refused without this flag when
    /// the CA is a real one (`--mesh-ca-cert`); `--mesh-dev-ca` allows it with a warning.
    #[arg(long, env = "BERTH_MESH_INSECURE_NO_TOKEN")]
    pub mesh_insecure_no_token: bool,
    #[arg(long, env = "BERTH_MESH_DEFAULT_DENY")]
    pub mesh_default_deny: bool,
    #[arg(long, env = "BERTH_MESH_PEERS_SERVICE")]
    pub mesh_peers_service: Option<String>,
    #[arg(long, env = "BERTH_MESH_PEERS_DNS")]
    pub mesh_peers_dns: Option<String>,
    /// Lifetime of issued certificates [default: 24h]; renewal happens at 70 %.
    #[arg(long, env = "BERTH_MESH_CERT_LIFETIME")]
    pub mesh_cert_lifetime: Option<String>,
}

/// The same settings in a TOML file (kebab-case keys, as the flags).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    entrypoints: std::collections::BTreeMap<String, FileEntrypoint>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ping: Option<String>,
    file_provider: Option<PathBuf>,
    admin: Option<SocketAddr>,
    shutdown_delay: Option<String>,
    drain_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    header_read_timeout: Option<String>,
    request_read_timeout: Option<String>,
    ready_timeout: Option<String>,
    idle_timeout: Option<String>,
    upstream_connect_timeout: Option<String>,
    upstream_response_timeout: Option<String>,
    upstream_idle_timeout: Option<String>,
    upstream_ca: Option<PathBuf>,
    #[serde(default)]
    forwarded_trusted_ip: Vec<String>,
    log_format: Option<String>,
    #[serde(default)]
    access_log: bool,
    access_log_format: Option<String>,
    access_log_file: Option<PathBuf>,
    #[serde(default)]
    ecs_cluster: Vec<String>,
    #[serde(default)]
    ecs_all_clusters: bool,
    ecs_region: Option<String>,
    ecs_refresh: Option<String>,
    #[serde(default)]
    ecs_healthy_only: bool,
    ecs_default_rule: Option<String>,
    #[serde(default)]
    exposed_by_default: bool,
    ecs_api_rate: Option<f64>,
    ecs_api_burst: Option<f64>,
    ecs_concurrency: Option<usize>,
    mesh_ca_cert: Option<PathBuf>,
    mesh_ca_key: Option<PathBuf>,
    mesh_dev_ca: Option<PathBuf>,
    mesh_listen: Option<SocketAddr>,
    mesh_trust_domain: Option<String>,
    mesh_token_file: Option<PathBuf>,
    #[serde(default)]
    mesh_insecure_no_token: bool,
    #[serde(default)]
    mesh_default_deny: bool,
    mesh_cert_lifetime: Option<String>,
    mesh_peers_service: Option<String>,
    mesh_peers_dns: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileEntrypoint {
    address: SocketAddr,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// Traefik's `http.sanitizePath` (default true).
    sanitize_path: Option<bool>,
    /// Traefik's `http.encodedCharacters`: each `allow-encoded-*` defaults to false.
    #[serde(default)]
    encoded_characters: FileEncodedCharacters,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileEncodedCharacters {
    allow_encoded_slash: Option<bool>,
    allow_encoded_back_slash: Option<bool>,
    allow_encoded_null_character: Option<bool>,
    allow_encoded_semicolon: Option<bool>,
    allow_encoded_percent: Option<bool>,
    allow_encoded_question_mark: Option<bool>,
    allow_encoded_hash: Option<bool>,
}

impl FileEntrypoint {
    fn path_policy(&self) -> PathPolicy {
        let e = &self.encoded_characters;
        let d = EncodedCharacters::default();
        PathPolicy {
            sanitize: self.sanitize_path.unwrap_or(true),
            encoded: EncodedCharacters {
                allow_encoded_slash: e.allow_encoded_slash.unwrap_or(d.allow_encoded_slash),
                allow_encoded_back_slash: e.allow_encoded_back_slash.unwrap_or(d.allow_encoded_back_slash),
                allow_encoded_null_character: e.allow_encoded_null_character.unwrap_or(d.allow_encoded_null_character),
                allow_encoded_semicolon: e.allow_encoded_semicolon.unwrap_or(d.allow_encoded_semicolon),
                allow_encoded_percent: e.allow_encoded_percent.unwrap_or(d.allow_encoded_percent),
                allow_encoded_question_mark: e.allow_encoded_question_mark.unwrap_or(d.allow_encoded_question_mark),
                allow_encoded_hash: e.allow_encoded_hash.unwrap_or(d.allow_encoded_hash),
            },
        }
    }
}

/// A certificate and key on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct EntrypointConfig {
    pub name: String,
    pub addr: SocketAddr,
    /// The entrypoint's default certificate (else the global one).
    pub tls: Option<CertPair>,
    /// How request paths are cleaned and which encoded characters are refused.
    pub path: PathPolicy,
}

pub use berth_common::logging::LogFormat;

/// Everything the gateway needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub entrypoints: Vec<EntrypointConfig>,
    pub tls_default: Option<CertPair>,
    pub ping: Option<String>,
    pub file_provider: Option<PathBuf>,
    pub admin: SocketAddr,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// How long readiness waits for the sources' first views; `None`: for ever.
    pub ready_timeout: Option<Duration>,
    pub limits: Limits,
    pub upstream_ca: Option<PathBuf>,
    pub forwarded_trusted: Vec<IpNet>,
    pub log_format: LogFormat,
    /// The access log, when on: where and how.
    pub access_log: Option<(Option<PathBuf>, berth_common::accesslog::Format)>,
    /// Tracing, from the `OTEL_*` environment; `None` when off.
    pub tracing: Option<berth_common::telemetry::TraceSettings>,
    /// ECS discovery, only when a cluster (or all clusters) is named.
    pub ecs: Option<crate::discovery::ecs::EcsSettings>,
    /// The mesh control plane, only when a CA is configured.
    pub mesh: Option<MeshSettings>,
}

/// Where the mesh CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    Files { cert: PathBuf, key: PathBuf },
    Dev(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub ca: CaSource,
    pub listen: SocketAddr,
    pub trust_domain: String,
    /// The bootstrap token, read from `--mesh-token-file` (trimmed).
    pub token: Option<String>,
    pub default_deny: bool,
    pub cert_lifetime: Duration,
    /// How replicas find each other (the list goes to every sidecar).
    pub peers: Peers,
}

impl Config {
    /// Parse flags/env (already in `args`), read `--config`, merge and validate.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| bad(format!("--config {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| bad(format!("--config {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let duration = |flag: &str, cli: &Option<String>, file: &Option<String>, default: Duration| match cli
            .as_ref()
            .or(file.as_ref())
        {
            Some(s) => parse_duration(s).map_err(|e| bad(format!("--{flag}: {e}"))),
            None => Ok(default),
        };
        let pair = |flag: &str, cert: Option<PathBuf>, key: Option<PathBuf>| match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(CertPair { cert, key })),
            (None, None) => Ok(None),
            _ => Err(bad(format!("--{flag}-cert and --{flag}-key go together"))),
        };
        let tls_default = pair(
            "tls",
            args.tls_cert.clone().or(file.tls_cert.clone()),
            args.tls_key.clone().or(file.tls_key.clone()),
        )?;

        let mut entrypoints: Vec<EntrypointConfig> = Vec::new();
        let specs = if args.entrypoints.is_empty() {
            file.entrypoint.clone()
        } else {
            args.entrypoints.clone()
        };
        for spec in specs {
            let (name, addr) = spec.split_once('=').ok_or_else(|| {
                bad(format!(
                    "--entrypoint `{spec}`: expected NAME=ADDR, e.g. web=0.0.0.0:80"
                ))
            })?;
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|e| bad(format!("--entrypoint `{spec}`: bad address: {e}")))?;
            push_entrypoint(&mut entrypoints, name.trim(), addr, None, PathPolicy::default())?;
        }
        if args.entrypoints.is_empty() {
            for (name, ep) in file.entrypoints {
                let path = ep.path_policy();
                let tls = pair("entrypoints.tls", ep.tls_cert, ep.tls_key)?;
                push_entrypoint(&mut entrypoints, &name, ep.address, tls, path)?;
            }
        }
        if entrypoints.is_empty() {
            return Err(bad("at least one --entrypoint NAME=ADDR is required"));
        }
        let ping = args.ping.clone().or(file.ping.clone());
        if let Some(p) = &ping
            && !entrypoints.iter().any(|e| &e.name == p)
        {
            return Err(bad(format!("--ping {p}: no such entrypoint")));
        }
        let mut forwarded_trusted = Vec::new();
        let trusted = if args.forwarded_trusted_ips.is_empty() {
            &file.forwarded_trusted_ip
        } else {
            &args.forwarded_trusted_ips
        };
        for s in trusted {
            forwarded_trusted.push(
                parse_ip_range(s.trim())
                    .ok_or_else(|| bad(format!("--forwarded-trusted-ip `{s}`: not an IP or CIDR")))?,
            );
        }
        let log_format = match args
            .log_format
            .as_ref()
            .or(file.log_format.as_ref())
            .map(String::as_str)
        {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(bad(format!("--log-format `{other}`: use auto, json or text")));
            }
        };
        let access_log = if args.access_log || file.access_log {
            let format = match args.access_log_format.as_ref().or(file.access_log_format.as_ref()) {
                None => berth_common::accesslog::Format::Json,
                Some(f) => f.parse().map_err(|e| bad(format!("--access-log-format {e}")))?,
            };
            Some((args.access_log_file.clone().or(file.access_log_file.clone()), format))
        } else {
            None
        };
        let tracing = berth_common::telemetry::TraceSettings::from_env().map_err(|e| bad(e.to_string()))?;
        let response_timeout = duration(
            "upstream-response-timeout",
            &args.upstream_response_timeout,
            &file.upstream_response_timeout,
            Duration::ZERO,
        )?;
        let max_header_bytes = args.max_header_bytes.or(file.max_header_bytes).unwrap_or(32 * 1024);
        if max_header_bytes < 8192 {
            return Err(bad("--max-header-bytes must be at least 8192"));
        }
        let ecs_clusters = if args.ecs_clusters.is_empty() {
            file.ecs_cluster.clone()
        } else {
            args.ecs_clusters.clone()
        };
        let all_clusters = args.ecs_all_clusters || file.ecs_all_clusters;
        let ecs = if ecs_clusters.is_empty() && !all_clusters {
            None
        } else {
            if all_clusters && !ecs_clusters.is_empty() {
                return Err(bad("--ecs-cluster and --ecs-all-clusters exclude each other"));
            }
            let default_rule = args
                .ecs_default_rule
                .clone()
                .or(file.ecs_default_rule.clone())
                .unwrap_or_else(|| crate::discovery::ecs::DEFAULT_RULE.to_string());
            if let Err(e) = berth_common::rules::compile(&berth_common::labels::render_default_rule(&default_rule, "x"))
            {
                return Err(bad(format!("--ecs-default-rule: {e}")));
            }
            let rate = args.ecs_api_rate.or(file.ecs_api_rate).unwrap_or(20.0);
            if !(rate.is_finite() && rate > 0.0) {
                return Err(bad("--ecs-api-rate must be a positive number"));
            }
            Some(crate::discovery::ecs::EcsSettings {
                clusters: ecs_clusters,
                all_clusters,
                region: args.ecs_region.clone().or(file.ecs_region.clone()),
                refresh: duration(
                    "ecs-refresh",
                    &args.ecs_refresh,
                    &file.ecs_refresh,
                    Duration::from_secs(30),
                )?,
                healthy_only: args.ecs_healthy_only || file.ecs_healthy_only,
                default_rule,
                exposed_by_default: args.exposed_by_default || file.exposed_by_default,
                api_rate: rate,
                api_burst: args.ecs_api_burst.or(file.ecs_api_burst).unwrap_or(40.0).max(1.0),
                concurrency: args.ecs_concurrency.or(file.ecs_concurrency).unwrap_or(4).max(1),
            })
        };
        let ca = match (
            args.mesh_ca_cert.clone().or(file.mesh_ca_cert.clone()),
            args.mesh_ca_key.clone().or(file.mesh_ca_key.clone()),
            args.mesh_dev_ca.clone().or(file.mesh_dev_ca.clone()),
        ) {
            (Some(cert), Some(key), None) => Some(CaSource::Files { cert, key }),
            (None, None, Some(dir)) => Some(CaSource::Dev(dir)),
            (None, None, None) => None,
            (_, _, Some(_)) => return Err(bad("--mesh-dev-ca excludes --mesh-ca-cert/--mesh-ca-key")),
            _ => return Err(bad("--mesh-ca-cert and --mesh-ca-key go together")),
        };
        let mesh = match ca {
            None => None,
            Some(ca) => {
                let trust_domain = args
                    .mesh_trust_domain
                    .clone()
                    .or(file.mesh_trust_domain.clone())
                    .unwrap_or_else(|| "berth.local".into());
                berth_common::identity::SpiffeId::gateway(&trust_domain)
                    .map_err(|e| bad(format!("--mesh-trust-domain: {e}")))?;
                let token = match (
                    &args.mesh_token,
                    args.mesh_token_file.clone().or(file.mesh_token_file.clone()),
                ) {
                    (Some(_), Some(_)) => return Err(bad("--mesh-token and --mesh-token-file: give one, not both")),
                    (Some(t), None) => Some(("--mesh-token", t.trim().to_string())),
                    (None, Some(p)) => {
                        let t = std::fs::read_to_string(&p)
                            .map_err(|e| bad(format!("--mesh-token-file {}: {e}", p.display())))?;
                        Some(("--mesh-token-file", t.trim().to_string()))
                    }
                    (None, None) => None,
                };
                let token = match token {
                    Some((flag, t)) if t.len() < 16 => {
                        return Err(bad(format!("{flag}: the token must be at least 16 characters")));
                    }
                    Some((_, t)) => Some(t),
                    None => None,
                };
                let insecure = args.mesh_insecure_no_token || file.mesh_insecure_no_token;
                if token.is_none() && !insecure && matches!(ca, CaSource::Files { .. }) {
                    return Err(bad(
                        "the mesh CA needs a bootstrap token (--mesh-token-file or --mesh-token); \
                         --mesh-insecure-no-token issues without one",
                    ));
                }
                Some(MeshSettings {
                    ca,
                    listen: args
                        .mesh_listen
                        .or(file.mesh_listen)
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9443))),
                    trust_domain,
                    token,
                    default_deny: args.mesh_default_deny || file.mesh_default_deny,
                    cert_lifetime: duration(
                        "mesh-cert-lifetime",
                        &args.mesh_cert_lifetime,
                        &file.mesh_cert_lifetime,
                        crate::mesh::ca::DEFAULT_LIFETIME,
                    )?,
                    peers: match (
                        args.mesh_peers_service.clone().or(file.mesh_peers_service.clone()),
                        args.mesh_peers_dns.clone().or(file.mesh_peers_dns.clone()),
                    ) {
                        (Some(_), Some(_)) => {
                            return Err(bad("--mesh-peers-service and --mesh-peers-dns: give one, not both"));
                        }
                        (Some(s), None) if !s.trim().is_empty() => Peers::Service(s.trim().to_string()),
                        (None, Some(d)) if !d.trim().is_empty() => Peers::Dns(d.trim().to_string()),
                        _ => Peers::Alone,
                    },
                })
            }
        };
        Ok(Config {
            mesh,
            ecs,
            entrypoints,
            tls_default,
            ping,
            file_provider: args.file_provider.clone().or(file.file_provider),
            admin: args
                .admin
                .or(file.admin)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9900))),
            shutdown_delay: duration(
                "shutdown-delay",
                &args.shutdown_delay,
                &file.shutdown_delay,
                Duration::from_secs(10),
            )?,
            drain_timeout: duration(
                "drain-timeout",
                &args.drain_timeout,
                &file.drain_timeout,
                Duration::from_secs(30),
            )?,
            ready_timeout: Some(duration(
                "ready-timeout",
                &args.ready_timeout,
                &file.ready_timeout,
                Duration::from_secs(60),
            )?)
            .filter(|d| !d.is_zero()),
            limits: Limits {
                max_header_bytes,
                max_body_bytes: args.max_body_bytes.or(file.max_body_bytes).filter(|b| *b > 0),
                header_read_timeout: duration(
                    "header-read-timeout",
                    &args.header_read_timeout,
                    &file.header_read_timeout,
                    Duration::from_secs(10),
                )?,
                request_read_timeout: Some(duration(
                    "request-read-timeout",
                    &args.request_read_timeout,
                    &file.request_read_timeout,
                    Duration::from_secs(60),
                )?)
                .filter(|d| !d.is_zero()),
                idle_timeout: duration(
                    "idle-timeout",
                    &args.idle_timeout,
                    &file.idle_timeout,
                    Duration::from_secs(180),
                )?,
                connect_timeout: duration(
                    "upstream-connect-timeout",
                    &args.upstream_connect_timeout,
                    &file.upstream_connect_timeout,
                    Duration::from_secs(5),
                )?,
                response_timeout: (!response_timeout.is_zero()).then_some(response_timeout),
                upstream_idle_timeout: duration(
                    "upstream-idle-timeout",
                    &args.upstream_idle_timeout,
                    &file.upstream_idle_timeout,
                    Duration::from_secs(90),
                )?,
            },
            upstream_ca: args.upstream_ca.clone().or(file.upstream_ca),
            forwarded_trusted,
            log_format,
            access_log,
            tracing,
        })
    }
}

fn push_entrypoint(
    eps: &mut Vec<EntrypointConfig>,
    name: &str,
    addr: SocketAddr,
    tls: Option<CertPair>,
    path: PathPolicy,
) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad(format!(
            "entrypoint name `{name}`: use letters, digits, `-` and `_`"
        )));
    }
    if eps.iter().any(|e| e.name == name) {
        return Err(bad(format!("entrypoint `{name}` is defined twice")));
    }
    eps.push(EntrypointConfig {
        name: name.to_string(),
        addr,
        tls,
        path,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["berth-gateway"];
        v.extend_from_slice(args);
        Config::from_args(Args::try_parse_from(v).map_err(|e| bad(e.to_string()))?)
    }

    #[test]
    fn flags_parse_and_default() {
        let c = parse(&[
            "--entrypoint",
            "web=127.0.0.1:8080",
            "--entrypoint",
            "ws=127.0.0.1:8443",
        ])
        .unwrap();
        assert_eq!(c.entrypoints.len(), 2);
        assert_eq!(c.admin, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(c.shutdown_delay, Duration::from_secs(10));
        assert_eq!(c.limits.response_timeout, None);
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        assert!(parse(&[]).unwrap_err().0.contains("--entrypoint"));
        assert!(parse(&["--entrypoint", "web"]).unwrap_err().0.contains("NAME=ADDR"));
        assert!(
            parse(&["--entrypoint", "web=nope"])
                .unwrap_err()
                .0
                .contains("bad address")
        );
        assert!(
            parse(&["--entrypoint", "a=127.0.0.1:1", "--entrypoint", "a=127.0.0.1:2"])
                .unwrap_err()
                .0
                .contains("twice")
        );
        assert!(
            parse(&["--entrypoint", "a=127.0.0.1:1", "--ping", "b"])
                .unwrap_err()
                .0
                .contains("--ping")
        );
        assert!(parse(&["--entrypoint", "a=127.0.0.1:1", "--shutdown-delay", "soon"]).is_err());
        assert!(
            parse(&["--entrypoint", "a=127.0.0.1:1", "--tls-cert", "/x"])
                .unwrap_err()
                .0
                .contains("together")
        );
    }

    #[test]
    fn a_real_ca_without_a_token_needs_the_explicit_flag() {
        let base = [
            "--entrypoint",
            "a=127.0.0.1:1",
            "--mesh-ca-cert",
            "/ca.crt",
            "--mesh-ca-key",
            "/ca.key",
        ];
        let e = parse(&base).unwrap_err().0;
        assert!(
            e.contains("bootstrap token") && e.contains("--mesh-insecure-no-token"),
            "{e}"
        );
        let mut insecure = base.to_vec();
        insecure.push("--mesh-insecure-no-token");
        assert!(parse(&insecure).is_ok());
        // The dev CA (local use) may go without.
        assert!(parse(&["--entrypoint", "a=127.0.0.1:1", "--mesh-dev-ca", "/tmp/dev-ca"]).is_ok());
    }

    #[test]
    fn toml_file_merges_under_flags() {
        let dir = std::env::temp_dir().join(format!("berth-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(
            &path,
            "admin = \"127.0.0.1:9911\"\nshutdown-delay = \"3s\"\n[entrypoints.web]\naddress = \"127.0.0.1:8081\"\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.entrypoints[0].name, "web");
        assert_eq!(c.admin, "127.0.0.1:9911".parse().unwrap());
        assert_eq!(c.shutdown_delay, Duration::from_secs(3));
        let c = parse(&["--config", path.to_str().unwrap(), "--shutdown-delay", "1s"]).unwrap();
        assert_eq!(c.shutdown_delay, Duration::from_secs(1));
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(
            parse(&["--config", path.to_str().unwrap()])
                .unwrap_err()
                .0
                .contains("bogus")
        );
    }
}
