//! The gateway's static configuration: flags, `BERTH_*` environment variables and an
//! optional TOML file (`--config`), and Traefik's static configuration beside them
//! (`traefik`, a submodule), merged once into typed structs.
//!
//! Precedence: flag or environment variable, then the file, then Traefik's options,
//! then the default (Berth's, or Traefik's in Traefik mode).

pub(crate) mod traefik;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_common::config::parse_duration;
use berth_common::path::{EncodedCharacters, PathPolicy};
use berth_common::rules::matcher::parse_ip_range;
use clap::Parser;
use ipnet::IpNet;
use serde::Deserialize;

use crate::entrypoint::{CertPair, EntrypointConfig};
use crate::mesh::peers::Peers;
use crate::mesh::{CaSource, MeshSettings};
use crate::proxy::Limits;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// One layer of settings (the command line with the environment, or the file) over a
/// lower one: a value given wins, else the lower layer's.
trait Layer {
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

impl<T> Layer for Vec<T> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() { lower } else { self }
    }
}

impl<K, V> Layer for std::collections::BTreeMap<K, V> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() { lower } else { self }
    }
}

/// A switch is on when either layer turns it on.
impl Layer for bool {
    fn over(self, lower: Self) -> Self {
        self || lower
    }
}

/// Declares every setting once: the struct is the command line (clap; each flag also
/// reads `BERTH_<NAME>`) and the `--config` file (serde; kebab-case keys, as the flags),
/// and `over` layers the first on the second, field by field.
macro_rules! settings {
    (
        $(#[$outer:meta])*
        pub struct $name:ident {
            $( $(#[$m:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$outer])*
        pub struct $name {
            $( $(#[$m])* pub $field: $ty, )*
        }

        impl $name {
            /// These settings where they say something, else `lower`'s.
            fn over(self, lower: $name) -> $name {
                $name { $( $field: Layer::over(self.$field, lower.$field), )* }
            }
        }
    };
}

settings! {
/// The gateway's settings as given: flags (each also `BERTH_<NAME>`) and, with
/// `--config`, the same settings in a TOML file. [`Config::from_args`] resolves them.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(
    name = "berth-gateway",
    version,
    about = "Berth: the ECS-native ingress gateway and mesh control plane"
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Args {
    /// TOML file with any of these settings (flags and env vars win).
    #[arg(long, env = "BERTH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Entrypoint `NAME=ADDR` (repeatable), e.g. `web=0.0.0.0:80`.
    #[arg(long = "entrypoint", env = "BERTH_ENTRYPOINT", value_delimiter = ',')]
    #[serde(rename = "entrypoint")]
    pub entrypoints: Vec<String>,
    /// The file's `[entrypoints.NAME]` tables (address, certificate, path settings); used
    /// only when no `--entrypoint` is given.
    #[arg(skip)]
    #[serde(rename = "entrypoints")]
    pub entrypoint_tables: std::collections::BTreeMap<String, FileEntrypoint>,
    /// Default TLS certificate (PEM) for TLS connections on every entrypoint.
    #[arg(long, env = "BERTH_TLS_CERT", hide_env_values = true)]
    pub tls_cert: Option<PathBuf>,
    /// Key (PEM) of `--tls-cert`.
    #[arg(long, env = "BERTH_TLS_KEY", hide_env_values = true)]
    pub tls_key: Option<PathBuf>,
    /// The address entrypoints given without a host (Traefik's `:80`) listen on
    /// [default: every address].
    #[arg(long, env = "BERTH_LISTEN_HOST")]
    pub listen_host: Option<IpAddr>,
    /// Serve `GET /ping` on this entrypoint (503 while shutting down).
    #[arg(long, env = "BERTH_PING")]
    pub ping: Option<String>,
    /// Traefik dynamic configuration: a YAML or TOML file, or a directory of them (merged),
    /// watched for changes.
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
    /// Take any certificate from `https://` upstreams (Traefik's
    /// `serversTransport.insecureSkipVerify`); a service's own `serversTransport` decides
    /// for itself.
    #[arg(long, env = "BERTH_UPSTREAM_INSECURE_SKIP_VERIFY")]
    pub upstream_insecure_skip_verify: bool,
    /// Clients whose `X-Forwarded-*` headers are kept (IPs or CIDRs, repeatable).
    #[arg(
        long = "forwarded-trusted-ip",
        env = "BERTH_FORWARDED_TRUSTED_IP",
        value_delimiter = ','
    )]
    #[serde(rename = "forwarded-trusted-ip")]
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
    #[serde(rename = "ecs-cluster")]
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
    /// The rule syntax of routers without `ruleSyntax`: `v3` (the default) or `v2`
    /// (Traefik v2's matchers; Traefik v3's `--core.defaultRuleSyntax`, accepted as an alias).
    #[arg(long, env = "BERTH_DEFAULT_RULE_SYNTAX", aliases = ["core.defaultRuleSyntax", "core.defaultrulesyntax"])]
    pub default_rule_syntax: Option<String>,
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
    /// More roots peers are trusted by, beside the CA's own (PEM, a file or the PEM
    /// itself): the next CA's root before it signs, the last one's until its
    /// certificates expire. Sent to every sidecar with its certificate; the files are
    /// read again when they change.
    #[arg(long, env = "BERTH_MESH_TRUST_BUNDLE", hide_env_values = true)]
    pub mesh_trust_bundle: Option<PathBuf>,
    /// The bootstrap token itself (an ECS secret), instead of --mesh-token-file.
    #[arg(long, env = "BERTH_MESH_TOKEN", hide_env_values = true)]
    #[serde(skip)]
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
    /// How a sidecar proves its task for a first certificate: `token` (the bootstrap
    /// token), `iam` (a GetCallerIdentity request signed with the task role's
    /// credentials, checked with STS), or `iam,token` (either) [default: `token` with a
    /// token; `iam` without one when the CA is a real one].
    #[arg(long, env = "BERTH_MESH_AUTH")]
    pub mesh_auth: Option<String>,
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
}

/// An `[entrypoints.NAME]` table of the `--config` file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileEntrypoint {
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

pub(crate) use berth_common::logging::LogFormat;

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
    pub upstream_insecure_skip_verify: bool,
    pub forwarded_trusted: Vec<IpNet>,
    pub log_format: LogFormat,
    /// The access log, when on: where and how.
    pub access_log: Option<(Option<PathBuf>, berth_common::accesslog::Format)>,
    /// Tracing, from the `OTEL_*` environment; `None` when off.
    pub tracing: Option<berth_common::telemetry::TraceSettings>,
    /// The rule syntax of routers that do not choose one.
    pub default_rule_syntax: berth_common::rules::Syntax,
    /// ECS discovery, only when a cluster (or all clusters) is named.
    pub ecs: Option<crate::discovery::ecs::EcsSettings>,
    /// The mesh control plane, only when a CA is configured.
    pub mesh: Option<MeshSettings>,
    /// Listeners for the API, dashboard, ping and metrics only (Traefik's `traefik`
    /// entrypoint), each with what it serves.
    pub(crate) internal: Vec<(String, SocketAddr, traefik::Exposure)>,
    /// Dynamic configuration the gateway makes itself (Traefik's entrypoint
    /// redirections), as dotted keys for the `internal` provider.
    pub internal_routes: Vec<(String, String)>,
    /// The gateway's own services routers may name (Traefik's `api@internal`,
    /// `dashboard@internal`, `ping@internal`, `prometheus@internal`, `noop@internal`).
    pub internal_services: Vec<String>,
    /// ACME certificate resolvers (Traefik's `certificatesResolvers`).
    pub acme: Vec<crate::acme::ResolverSettings>,
    /// Where routers without `entryPoints` go: every entrypoint, or those marked
    /// `asDefault`.
    pub default_entrypoints: Vec<String>,
    /// The log filter when `RUST_LOG` is not set.
    pub log_filter: String,
    /// What Traefik mode read and what it ignored, logged once logging is up.
    pub notes: Vec<String>,
    /// Which of Traefik's forms configured the gateway, in Traefik mode.
    pub traefik_form: Option<String>,
}

impl Config {
    /// Berth's settings alone: flags/env (already in `args`), then `--config`.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        Config::from_sources(args, &traefik::Sources::default())
    }

    /// Berth's settings with Traefik's static configuration from `traefik` (Traefik
    /// mode when any of its forms is present): merge and validate.
    pub fn from_sources(args: Args, traefik: &traefik::Sources) -> Result<Config, ConfigError> {
        let traefik = traefik.load()?;
        Config::build(args, traefik)
    }

    fn build(args: Args, traefik: Option<traefik::Traefik>) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| bad(format!("--config {}: {e}", path.display())))?;
                toml::from_str::<Args>(&text).map_err(|e| bad(format!("--config {}: {e}", path.display())))?
            }
            None => Args::default(),
        };
        // `--entrypoint` replaces the file's entrypoints, its tables included.
        let entrypoints_given = !args.entrypoints.is_empty();
        let mut traefik = traefik;
        let s = match traefik.as_mut() {
            Some(t) => args.over(file).over(std::mem::take(&mut t.args)),
            None => args.over(file),
        };
        let duration = |flag: &str, given: &Option<String>, default: Duration| match given {
            Some(v) => parse_duration(v).map_err(|e| bad(format!("--{flag}: {e}"))),
            None => Ok(default),
        };
        let pair = |flag: &str, cert: Option<PathBuf>, key: Option<PathBuf>| match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(CertPair { cert, key })),
            (None, None) => Ok(None),
            _ => Err(bad(format!("--{flag}-cert and --{flag}-key go together"))),
        };
        let tls_default = pair("tls", s.tls_cert.clone(), s.tls_key.clone())?;

        let mut entrypoints: Vec<EntrypointConfig> = Vec::new();
        let plain = |name: &str, addr: SocketAddr, tls: Option<CertPair>, path: PathPolicy| EntrypointConfig {
            name: name.to_string(),
            addr,
            tls,
            path,
            tls_routers: false,
            tls_options: None,
            cert_resolver: None,
            trusted: None,
        };
        for spec in &s.entrypoints {
            let (name, addr) = spec.split_once('=').ok_or_else(|| {
                bad(format!(
                    "--entrypoint `{spec}`: expected NAME=ADDR, e.g. web=0.0.0.0:80"
                ))
            })?;
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|e| bad(format!("--entrypoint `{spec}`: bad address: {e}")))?;
            push_entrypoint(&mut entrypoints, plain(name.trim(), addr, None, PathPolicy::default()))?;
        }
        if !entrypoints_given {
            for (name, ep) in &s.entrypoint_tables {
                let path = ep.path_policy();
                let tls = pair("entrypoints.tls", ep.tls_cert.clone(), ep.tls_key.clone())?;
                push_entrypoint(&mut entrypoints, plain(name, ep.address, tls, path))?;
            }
        }
        let mut internal = Vec::new();
        let mut internal_routes = Vec::new();
        let mut default_entrypoints = Vec::new();
        if let Some(t) = &mut traefik {
            // Traefik's default entrypoint, when neither Berth nor Traefik names one.
            if t.entrypoints.is_empty() && entrypoints.is_empty() {
                let (name, port) = traefik::DEFAULT_ENTRYPOINT;
                t.entrypoints.push(traefik::TraefikEntrypoint {
                    name: name.into(),
                    addr: traefik::ListenAddr { host: None, port },
                    path: PathPolicy::default(),
                    tls_routers: false,
                    tls_options: None,
                    cert_resolver: None,
                    redirect: None,
                    trusted: None,
                    read_timeout: None,
                    idle_timeout: None,
                    as_default: false,
                });
            }
            for ep in &t.entrypoints {
                push_entrypoint(
                    &mut entrypoints,
                    EntrypointConfig {
                        name: ep.name.clone(),
                        addr: ep.addr.resolve(s.listen_host),
                        tls: None,
                        path: ep.path,
                        tls_routers: ep.tls_routers,
                        tls_options: ep.tls_options.clone(),
                        cert_resolver: ep.cert_resolver.clone(),
                        trusted: ep.trusted.clone().map(Arc::from),
                    },
                )?;
                if ep.as_default {
                    default_entrypoints.push(ep.name.clone());
                }
            }
            internal_routes = traefik::redirect_routes(&t.entrypoints);
            for i in &t.internal {
                if entrypoints.iter().any(|e| e.name == i.name) {
                    return Err(bad(format!("entrypoint `{}` is defined twice", i.name)));
                }
                internal.push((i.name.clone(), i.addr.resolve(s.listen_host), i.serves.clone()));
            }
        }
        if entrypoints.is_empty() {
            return Err(bad("at least one --entrypoint NAME=ADDR is required"));
        }
        let ping = s.ping.clone();
        if let Some(p) = &ping
            && !entrypoints.iter().any(|e| &e.name == p)
        {
            return Err(bad(format!("--ping {p}: no such entrypoint")));
        }
        let mut forwarded_trusted = Vec::new();
        for ip in &s.forwarded_trusted_ips {
            forwarded_trusted.push(
                parse_ip_range(ip.trim())
                    .ok_or_else(|| bad(format!("--forwarded-trusted-ip `{ip}`: not an IP or CIDR")))?,
            );
        }
        let log_format = match s.log_format.as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(bad(format!("--log-format `{other}`: use auto, json or text")));
            }
        };
        let access_log = if s.access_log {
            let format = match s.access_log_format.as_ref() {
                None => berth_common::accesslog::Format::Json,
                Some(f) => f.parse().map_err(|e| bad(format!("--access-log-format {e}")))?,
            };
            Some((s.access_log_file.clone(), format))
        } else {
            None
        };
        // The `OTEL_*` variables win over Traefik's `tracing` options.
        let trace_env = traefik.as_ref().map(|t| t.trace_env.clone()).unwrap_or_default();
        let tracing = berth_common::telemetry::TraceSettings::from_lookup(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .or_else(|| trace_env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        })
        .map_err(|e| bad(e.to_string()))?;
        let response_timeout = duration(
            "upstream-response-timeout",
            &s.upstream_response_timeout,
            Duration::ZERO,
        )?;
        let max_header_bytes = s.max_header_bytes.unwrap_or(32 * 1024);
        if max_header_bytes < 8192 {
            return Err(bad("--max-header-bytes must be at least 8192"));
        }
        let default_rule_syntax: berth_common::rules::Syntax = match s.default_rule_syntax.as_deref() {
            Some(v) => v.parse().map_err(|e| bad(format!("--default-rule-syntax: {e}")))?,
            None => berth_common::rules::Syntax::V3,
        };
        let ecs_clusters = s.ecs_clusters.clone();
        let all_clusters = s.ecs_all_clusters;
        let ecs = if ecs_clusters.is_empty() && !all_clusters {
            None
        } else {
            if all_clusters && !ecs_clusters.is_empty() {
                return Err(bad("--ecs-cluster and --ecs-all-clusters exclude each other"));
            }
            let default_rule = s
                .ecs_default_rule
                .clone()
                .unwrap_or_else(|| crate::discovery::ecs::DEFAULT_RULE.to_string());
            // The template must be one Berth can evaluate; rendered for a name alone, it
            // must be a rule (unless it reads labels, which only containers have).
            let template = berth_common::labels::Template::parse(&default_rule).map_err(|e| {
                bad(format!(
                    "--ecs-default-rule (providers.ecs.defaultRule) `{default_rule}`: {e}"
                ))
            })?;
            if !default_rule.contains("Labels") {
                let rendered = template
                    .render("x", &Default::default())
                    .map_err(|e| bad(format!("--ecs-default-rule (providers.ecs.defaultRule): {e}")))?;
                if let Err(e) = berth_common::rules::compile(&rendered) {
                    return Err(bad(format!("--ecs-default-rule (providers.ecs.defaultRule): {e}")));
                }
            }
            let extras = traefik.as_ref().and_then(|t| t.ecs.clone()).unwrap_or_default();
            let constraints = match &extras.constraints {
                Some(text) => Some(
                    berth_common::labels::Constraint::parse(text)
                        .map_err(|e| bad(format!("providers.ecs.constraints: {e}")))?,
                ),
                None => None,
            };
            let rate = s.ecs_api_rate.unwrap_or(20.0);
            if !(rate.is_finite() && rate > 0.0) {
                return Err(bad("--ecs-api-rate must be a positive number"));
            }
            Some(crate::discovery::ecs::EcsSettings {
                clusters: ecs_clusters,
                all_clusters,
                region: s.ecs_region.clone(),
                refresh: duration("ecs-refresh", &s.ecs_refresh, Duration::from_secs(30))?,
                healthy_only: match (
                    s.ecs_healthy_only,
                    traefik.as_ref().is_some_and(|t| t.healthy_tasks_only),
                ) {
                    (_, true) => crate::discovery::ecs::HealthyOnly::Tasks,
                    (true, false) => crate::discovery::ecs::HealthyOnly::Containers,
                    (false, false) => crate::discovery::ecs::HealthyOnly::Off,
                },
                default_rule,
                exposed_by_default: s.exposed_by_default,
                api_rate: rate,
                api_burst: s.ecs_api_burst.unwrap_or(40.0).max(1.0),
                concurrency: s.ecs_concurrency.unwrap_or(4).max(1),
                constraints,
                credentials: extras.credentials,
                // Traefik balances by weighted round robin; Berth by power of two choices.
                default_strategy: if traefik.is_some() {
                    berth_common::config::Strategy::Wrr
                } else {
                    berth_common::config::Strategy::P2c
                },
            })
        };
        let ca = match (s.mesh_ca_cert.clone(), s.mesh_ca_key.clone(), s.mesh_dev_ca.clone()) {
            (Some(cert), Some(key), None) => Some(CaSource::Files { cert, key }),
            (None, None, Some(dir)) => Some(CaSource::Dev(dir)),
            (None, None, None) => None,
            (_, _, Some(_)) => return Err(bad("--mesh-dev-ca excludes --mesh-ca-cert/--mesh-ca-key")),
            _ => return Err(bad("--mesh-ca-cert and --mesh-ca-key go together")),
        };
        let mesh = match ca {
            None => None,
            Some(ca) => {
                let trust_domain = s.mesh_trust_domain.clone().unwrap_or_else(|| "berth.local".into());
                berth_common::identity::SpiffeId::gateway(&trust_domain)
                    .map_err(|e| bad(format!("--mesh-trust-domain: {e}")))?;
                let token = match (&s.mesh_token, s.mesh_token_file.clone()) {
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
                let insecure = s.mesh_insecure_no_token;
                let auth = match s.mesh_auth.as_deref().map(str::trim) {
                    Some(list) => {
                        let mut auth = crate::mesh::MeshAuth {
                            token: false,
                            iam: false,
                        };
                        for mode in list.split(',').map(str::trim) {
                            match mode {
                                "token" => auth.token = true,
                                "iam" => auth.iam = true,
                                other => {
                                    return Err(bad(format!(
                                        "--mesh-auth: unknown mode {other:?} (token, iam, or iam,token)"
                                    )));
                                }
                            }
                        }
                        if auth.token && token.is_none() {
                            return Err(bad(
                                "--mesh-auth token needs the bootstrap token (--mesh-token-file or --mesh-token)",
                            ));
                        }
                        auth
                    }
                    None => crate::mesh::MeshAuth {
                        token: token.is_some(),
                        // A real CA without a token proves tasks by IAM; the dev CA and
                        // --mesh-insecure-no-token keep the address-only check.
                        iam: token.is_none() && !insecure && matches!(ca, CaSource::Files { .. }),
                    },
                };
                let env = |k: &str| std::env::var(k).ok();
                let sts_endpoint = berth_common::iam::sts_endpoint(env, berth_common::iam::region(env).as_deref());
                if auth.iam && sts_endpoint.is_none() {
                    return Err(bad(
                        "--mesh-auth iam (the default with a real CA and no bootstrap token) verifies with STS: \
                         set AWS_REGION (or AWS_ENDPOINT_URL_STS), or give a token (--mesh-token-file), or \
                         --mesh-insecure-no-token",
                    ));
                }
                Some(MeshSettings {
                    ca,
                    trust_bundle: s.mesh_trust_bundle.clone(),
                    listen: s.mesh_listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9443))),
                    trust_domain,
                    token,
                    auth,
                    sts_endpoint,
                    default_deny: s.mesh_default_deny,
                    cert_lifetime: duration(
                        "mesh-cert-lifetime",
                        &s.mesh_cert_lifetime,
                        crate::mesh::ca::DEFAULT_LIFETIME,
                    )?,
                    peers: match (s.mesh_peers_service.clone(), s.mesh_peers_dns.clone()) {
                        (Some(_), Some(_)) => {
                            return Err(bad("--mesh-peers-service and --mesh-peers-dns: give one, not both"));
                        }
                        (Some(name), None) if !name.trim().is_empty() => Peers::Service(name.trim().to_string()),
                        (None, Some(d)) if !d.trim().is_empty() => Peers::Dns(d.trim().to_string()),
                        _ => Peers::Alone,
                    },
                })
            }
        };
        let internal_services = traefik
            .as_ref()
            .map(|t| t.internal_services.clone())
            .unwrap_or_default();
        let acme = traefik.as_ref().map(|t| t.acme.clone()).unwrap_or_default();
        for resolver in &acme {
            if let Some(ep) = &resolver.http_challenge
                && !entrypoints.iter().any(|e| &e.name == ep)
            {
                return Err(bad(format!(
                    "certificatesResolvers.{}.acme.httpChallenge.entryPoint: no entrypoint `{ep}`",
                    resolver.name
                )));
            }
        }
        let (log_filter, notes, traefik_form) = match traefik {
            Some(t) => (
                t.log_filter.unwrap_or_else(|| "info".into()),
                t.notes,
                t.form.map(|f| f.to_string()),
            ),
            None => ("info".into(), Vec::new(), None),
        };
        Ok(Config {
            acme,
            internal_services,
            internal,
            internal_routes,
            default_entrypoints,
            log_filter,
            notes,
            traefik_form,
            mesh,
            ecs,
            default_rule_syntax,
            entrypoints,
            tls_default,
            ping,
            file_provider: s.file_provider.clone(),
            admin: s.admin.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9900))),
            shutdown_delay: duration("shutdown-delay", &s.shutdown_delay, Duration::from_secs(10))?,
            drain_timeout: duration("drain-timeout", &s.drain_timeout, Duration::from_secs(30))?,
            ready_timeout: Some(duration("ready-timeout", &s.ready_timeout, Duration::from_secs(60))?)
                .filter(|d| !d.is_zero()),
            limits: Limits {
                max_header_bytes,
                max_body_bytes: s.max_body_bytes.filter(|b| *b > 0),
                header_read_timeout: duration("header-read-timeout", &s.header_read_timeout, Duration::from_secs(10))?,
                request_read_timeout: Some(duration(
                    "request-read-timeout",
                    &s.request_read_timeout,
                    Duration::from_secs(60),
                )?)
                .filter(|d| !d.is_zero()),
                idle_timeout: duration("idle-timeout", &s.idle_timeout, Duration::from_secs(180))?,
                connect_timeout: duration(
                    "upstream-connect-timeout",
                    &s.upstream_connect_timeout,
                    Duration::from_secs(5),
                )?,
                response_timeout: (!response_timeout.is_zero()).then_some(response_timeout),
                upstream_idle_timeout: duration(
                    "upstream-idle-timeout",
                    &s.upstream_idle_timeout,
                    Duration::from_secs(90),
                )?,
            },
            upstream_ca: s.upstream_ca.clone(),
            upstream_insecure_skip_verify: s.upstream_insecure_skip_verify,
            forwarded_trusted,
            log_format,
            access_log,
            tracing,
        })
    }
}

fn push_entrypoint(eps: &mut Vec<EntrypointConfig>, ep: EntrypointConfig) -> Result<(), ConfigError> {
    let name = ep.name.as_str();
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
    eps.push(ep);
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
    fn a_real_ca_without_a_token_proves_tasks_by_iam_or_needs_the_explicit_flag() {
        use crate::mesh::MeshAuth;
        let base = [
            "--entrypoint",
            "a=127.0.0.1:1",
            "--mesh-ca-cert",
            "/ca.crt",
            "--mesh-ca-key",
            "/ca.key",
        ];
        let auth = |args: &[&str]| parse(args).map(|c| c.mesh.map(|m| m.auth)).map_err(|e| e.0);
        // IAM needs STS, which needs a region: with one (this environment's), IAM; without,
        // an error that names every way out.
        match auth(&base) {
            Ok(a) => assert_eq!(
                a,
                Some(MeshAuth {
                    token: false,
                    iam: true
                })
            ),
            Err(e) => assert!(
                e.contains("AWS_REGION") && e.contains("--mesh-token-file") && e.contains("--mesh-insecure-no-token"),
                "{e}"
            ),
        }
        let mut insecure = base.to_vec();
        insecure.push("--mesh-insecure-no-token");
        assert_eq!(
            auth(&insecure),
            Ok(Some(MeshAuth {
                token: false,
                iam: false
            }))
        );
        let mut token = base.to_vec();
        token.extend(["--mesh-token", "0123456789abcdef"]);
        assert_eq!(
            auth(&token),
            Ok(Some(MeshAuth {
                token: true,
                iam: false
            }))
        );
        let mut both = token.clone();
        both.extend(["--mesh-auth", "token"]);
        assert_eq!(
            auth(&both),
            Ok(Some(MeshAuth {
                token: true,
                iam: false
            }))
        );
        // Token mode without a token, or an unknown mode: refused at start.
        let mut no_token = base.to_vec();
        no_token.extend(["--mesh-auth", "token"]);
        assert!(auth(&no_token).unwrap_err().contains("needs the bootstrap token"));
        let mut bogus = token.clone();
        bogus.extend(["--mesh-auth", "token,passwords"]);
        assert!(auth(&bogus).unwrap_err().contains("unknown mode"));
        // The dev CA (local use) may go without.
        assert!(parse(&["--entrypoint", "a=127.0.0.1:1", "--mesh-dev-ca", "/tmp/dev-ca"]).is_ok());
    }

    #[test]
    fn every_setting_layers_the_same_way() {
        let dir = std::env::temp_dir().join(format!("berth-cfg-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        let file = path.to_str().unwrap();
        std::fs::write(
            &path,
            r#"entrypoint = ["web=127.0.0.1:8081"]
forwarded-trusted-ip = ["10.0.0.0/8"]
ecs-cluster = ["prod"]
ecs-healthy-only = true
exposed-by-default = true
ecs-api-rate = 5.0
max-header-bytes = 16384
access-log = true
[entrypoints.admin2]
address = "127.0.0.1:8082"
"#,
        )
        .unwrap();
        // The file alone: its list and its tables, its switches, its numbers.
        let c = parse(&["--config", file]).unwrap();
        let names: Vec<_> = c.entrypoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["web", "admin2"]);
        assert_eq!(c.forwarded_trusted, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        let ecs = c.ecs.as_ref().unwrap();
        assert_eq!(ecs.clusters, ["prod"]);
        assert!(ecs.healthy_only == crate::discovery::ecs::HealthyOnly::Containers && ecs.exposed_by_default);
        assert_eq!(ecs.api_rate, 5.0);
        assert_eq!(c.limits.max_header_bytes, 16384);
        assert!(c.access_log.is_some());
        // Flags win: a list replaces the file's (and --entrypoint its tables too), a value
        // replaces the file's; a switch the file turns on stays on.
        let c = parse(&[
            "--config",
            file,
            "--entrypoint",
            "edge=127.0.0.1:9000",
            "--ecs-cluster",
            "staging",
            "--ecs-api-rate",
            "7",
        ])
        .unwrap();
        let names: Vec<_> = c.entrypoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["edge"]);
        let ecs = c.ecs.as_ref().unwrap();
        assert_eq!(ecs.clusters, ["staging"]);
        assert_eq!(ecs.api_rate, 7.0);
        assert_eq!(ecs.healthy_only, crate::discovery::ecs::HealthyOnly::Containers);
        // A secret given on the command line or in the environment only: not a file key.
        std::fs::write(&path, "mesh-token = \"0123456789abcdef\"\n").unwrap();
        assert!(parse(&["--config", file]).unwrap_err().0.contains("mesh-token"));
        std::fs::write(&path, "config = \"other.toml\"\n").unwrap();
        assert!(parse(&["--config", file]).unwrap_err().0.contains("config"));
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

    fn traefik(berth: &[&str], flags: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut v = vec!["berth-gateway"];
        v.extend_from_slice(berth);
        let args = Args::try_parse_from(v).map_err(|e| bad(e.to_string()))?;
        let sources = traefik::Sources {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            search: Vec::new(),
            always: false,
        };
        Config::from_sources(args, &sources)
    }

    #[test]
    fn a_traefik_2_5_command_line_gets_traefiks_defaults() {
        let c = traefik(
            &[],
            &[
                "--providers.ecs.clusters=prod",
                "--providers.ecs.region=us-east-1",
                "--api.insecure=true",
                "--ping",
                "--log.level=DEBUG",
                "--global.sendAnonymousUsage=false",
            ],
            &[],
        )
        .unwrap();
        // No entrypoint given: Traefik's `http` on :80, and `traefik` on :8080 for the API.
        let eps: Vec<_> = c.entrypoints.iter().map(|e| (e.name.as_str(), e.addr)).collect();
        assert_eq!(eps, [("http", "0.0.0.0:80".parse().unwrap())]);
        let (name, addr, serves) = &c.internal[0];
        assert_eq!((name.as_str(), *addr), ("traefik", "0.0.0.0:8080".parse().unwrap()));
        assert!(serves.api && serves.dashboard && serves.ping && !serves.metrics);
        let ecs = c.ecs.as_ref().unwrap();
        assert_eq!(ecs.clusters, ["prod"]);
        assert_eq!(ecs.region.as_deref(), Some("us-east-1"));
        assert!(ecs.exposed_by_default, "Traefik exposes by default");
        assert_eq!(ecs.refresh, Duration::from_secs(15));
        assert_eq!(ecs.default_strategy, berth_common::config::Strategy::Wrr);
        assert_eq!(ecs.default_rule, "Host(`{{ normalize .Name }}`)");
        assert_eq!(c.log_filter, "debug");
        assert!(
            c.notes.iter().any(|n| n.contains("sendAnonymousUsage")),
            "{:?}",
            c.notes
        );
        assert_eq!(c.traefik_form.as_deref(), Some("flags"));
        // Berth mode keeps its own defaults.
        let b = parse(&["--entrypoint", "web=127.0.0.1:1", "--ecs-cluster", "prod"]).unwrap();
        let ecs = b.ecs.unwrap();
        assert!(!ecs.exposed_by_default);
        assert_eq!(ecs.refresh, Duration::from_secs(30));
        assert_eq!(ecs.default_strategy, berth_common::config::Strategy::P2c);
        assert!(b.internal.is_empty() && b.traefik_form.is_none());
    }

    #[test]
    fn traefik_provider_options_map_and_default() {
        let c = traefik(
            &[],
            &[
                "--providers.ecs",
                "--providers.ecs.autoDiscoverClusters=true",
                "--providers.ecs.exposedByDefault=false",
                "--providers.ecs.healthyTasksOnly=true",
                "--providers.ecs.refreshSeconds=5",
                "--providers.ecs.constraints=Label(`team`, `edge`)",
                "--providers.ecs.accessKeyID=AKIDEXAMPLE",
                "--providers.ecs.secretAccessKey=very-secret-value",
            ],
            &[],
        )
        .unwrap();
        let ecs = c.ecs.as_ref().unwrap();
        assert!(ecs.all_clusters && ecs.clusters.is_empty());
        assert!(!ecs.exposed_by_default);
        assert_eq!(ecs.healthy_only, crate::discovery::ecs::HealthyOnly::Tasks);
        assert_eq!(ecs.refresh, Duration::from_secs(5));
        assert!(ecs.constraints.is_some());
        assert!(ecs.credentials.is_some());
        assert!(
            !format!("{c:?}").contains("very-secret-value"),
            "the secret is never printed"
        );
        // Only `providers.ecs`: the cluster named `default`, as Traefik.
        let c = traefik(&[], &["--providers.ecs=true"], &[]).unwrap();
        assert_eq!(c.ecs.unwrap().clusters, ["default"]);
        // No provider: no discovery.
        assert!(traefik(&[], &["--api.insecure"], &[]).unwrap().ecs.is_none());
        let e = traefik(&[], &["--providers.ecs.constraints=Label(`a`)"], &[])
            .unwrap_err()
            .0;
        assert!(e.contains("providers.ecs.constraints"), "{e}");
    }

    #[test]
    fn traefik_entrypoints_redirections_tls_and_forwarding() {
        let c = traefik(
            &["--listen-host", "127.0.0.5"],
            &[
                "--entrypoints.web.address=:8000",
                "--entrypoints.web.http.redirections.entryPoint.to=websecure",
                "--entrypoints.websecure.address=:8443",
                "--entrypoints.websecure.http.tls=true",
                "--entrypoints.websecure.http.tls.options=mtls@file",
                "--entryPoints.websecure.forwardedHeaders.trustedIPs=10.0.0.0/8,192.168.1.1",
                "--entrypoints.websecure.transport.respondingTimeouts.readTimeout=42s",
                "--entrypoints.metrics.address=127.0.0.1:8082",
                "--metrics.prometheus.entryPoint=metrics",
            ],
            &[],
        )
        .unwrap();
        let web = &c.entrypoints[0];
        assert_eq!(
            (web.name.as_str(), web.addr),
            ("web", "127.0.0.5:8000".parse().unwrap())
        );
        let secure = &c.entrypoints[1];
        assert!(secure.tls_routers && !web.tls_routers);
        assert_eq!(secure.tls_options.as_deref(), Some("mtls@file"));
        assert_eq!(web.tls_options, None);
        assert_eq!(secure.trusted.as_ref().unwrap().len(), 2);
        assert!(web.trusted.is_none());
        assert_eq!(c.limits.request_read_timeout, Some(Duration::from_secs(42)));
        let routes: std::collections::BTreeMap<_, _> = c.internal_routes.iter().cloned().collect();
        assert_eq!(routes["http.routers.web-to-websecure.entryPoints"], "web");
        assert_eq!(
            routes["http.middlewares.redirect-web-to-websecure.redirectScheme.port"],
            "8443"
        );
        assert_eq!(
            routes["http.middlewares.redirect-web-to-websecure.redirectScheme.scheme"],
            "https"
        );
        let (name, addr, serves) = &c.internal[0];
        assert_eq!((name.as_str(), *addr), ("metrics", "127.0.0.1:8082".parse().unwrap()));
        assert!(serves.metrics && !serves.api && !serves.ping);
        assert_eq!(c.entrypoints.len(), 2, "the metrics entrypoint routes nothing");
        let e = traefik(
            &[],
            &[
                "--entrypoints.web.http.redirections.entryPoint.to=nowhere",
                "--entrypoints.web.address=:80",
            ],
            &[],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("neither an entrypoint nor a port"), "{e}");
    }

    /// Traefik's static `serversTransport.insecureSkipVerify` is the gateway's own
    /// pools' (Traefik's `default@internal` transport); off unless asked.
    #[test]
    fn traefik_static_insecure_skip_verify_is_the_default_transports() {
        let flags = [
            "--entrypoints.web.address=:80",
            "--serversTransport.insecureSkipVerify=true",
        ];
        assert!(traefik(&[], &flags, &[]).unwrap().upstream_insecure_skip_verify);
        let c = traefik(&[], &flags[..1], &[]).unwrap();
        assert!(!c.upstream_insecure_skip_verify);
    }

    #[test]
    fn traefik_environment_variables_and_berth_flags_beside_them() {
        let c = traefik(
            &["--ecs-cluster", "from-berth"],
            &[],
            &[
                ("TRAEFIK_PROVIDERS_ECS_CLUSTERS", "a,b"),
                ("TRAEFIK_ENTRYPOINTS_WEB_ADDRESS", ":8000"),
                ("TRAEFIK_PING", "true"),
                ("TRAEFIK_PING_ENTRYPOINT", "web"),
            ],
        )
        .unwrap();
        assert_eq!(c.traefik_form.as_deref(), Some("TRAEFIK_* environment variables"));
        assert_eq!(c.entrypoints[0].addr.port(), 8000);
        // Berth's flag wins over Traefik's option for the same setting.
        assert_eq!(c.ecs.as_ref().unwrap().clusters, ["from-berth"]);
        // Ping on a routing entrypoint is answered by the proxy there.
        assert_eq!(c.ping.as_deref(), Some("web"));
        assert!(c.internal.is_empty());
        let c = traefik(&[], &[], &[("TRAEFIK_PROVIDERS_ECS_CLUSTERS", "a,b")]).unwrap();
        assert_eq!(c.ecs.unwrap().clusters, ["a", "b"]);
    }

    #[test]
    fn traefik_options_berth_lacks_are_refused_by_name() {
        for (flag, says) in [
            (
                "--certificatesResolvers.le.acme.email=a@b.c",
                "give httpChallenge.entryPoint, tlsChallenge or dnsChallenge",
            ),
            (
                "--certificatesResolvers.le.acme.dnsChallenge.provider=cloudflare",
                "`cloudflare` is not supported (route53)",
            ),
            (
                "--certificatesResolvers.le.acme.preferredChain=X",
                "not implemented yet",
            ),
            ("--serversTransport.spiffe.trustDomain=x", "serversTransport option"),
            ("--providers.ecs.ecsAnywhere=true", "ecsAnywhere"),
            ("--providers.docker=true", "ecs and file providers"),
            ("--entrypoints.web.address=:80/udp", "UDP"),
            ("--experimental.plugins.x.moduleName=y", "plugins"),
            (
                "--providers.ecs.defaultRule=Host(`{{ printf \"%s\" .Name }}`)",
                "defaultRule",
            ),
            ("--providers.ecs.defaultRule=Hots(`{{ .Name }}`)", "defaultRule"),
            ("--log.level=LOUD", "log.level"),
            ("--tracing.sampleRate=2", "sampleRate"),
            ("--bogus.option=1", "unknown Traefik option `--bogus.option`"),
        ] {
            let e = traefik(&[], &[flag], &[]).unwrap_err().0;
            assert!(e.contains(says), "{flag}: {e}");
        }
        let e = traefik(
            &[],
            &[
                "--certificatesResolvers.le.acme.tlsChallenge=true",
                "--certificatesResolvers.le.acme.keyType=RSA4096",
            ],
            &[],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("not supported (EC256 or EC384)"), "{e}");
        for (eab, says) in [
            (
                &["--certificatesResolvers.le.acme.eab.kid=k"][..],
                "give both kid and hmacEncoded",
            ),
            (
                &[
                    "--certificatesResolvers.le.acme.eab.kid=k",
                    "--certificatesResolvers.le.acme.eab.hmacEncoded=not base64!",
                ][..],
                "not a base64url HMAC key",
            ),
        ] {
            let flags = [&["--certificatesResolvers.le.acme.tlsChallenge=true"][..], eab].concat();
            let e = traefik(&[], &flags, &[]).unwrap_err().0;
            assert!(e.contains(says), "{e}");
        }
        let c = traefik(
            &[],
            &[
                "--certificatesResolvers.le.acme.tlsChallenge=true",
                "--certificatesResolvers.le.acme.eab.kid=kid-1",
                "--certificatesResolvers.le.acme.eab.hmacEncoded=AAEC",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.acme[0].eab, Some(("kid-1".to_string(), vec![0, 1, 2])));
        let e = traefik(
            &[],
            &["--certificatesResolvers.le.acme.httpChallenge.entryPoint=nowhere"],
            &[],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("no entrypoint `nowhere`"), "{e}");
        let e = traefik(
            &[],
            &[
                "--certificatesResolvers.le.acme.tlsChallenge=true",
                "--certificatesResolvers.le.acme.storage=dynamodb://a b",
            ],
            &[],
        )
        .unwrap_err()
        .0;
        assert!(e.contains("is not a DynamoDB table name"), "{e}");
        let c = traefik(
            &[],
            &[
                "--certificatesResolvers.le.acme.tlsChallenge=true",
                "--certificatesResolvers.le.acme.storage=dynamodb://berth-acme",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.acme[0].storage,
            crate::acme::StorageSettings::DynamoDb("berth-acme".into())
        );
    }

    #[test]
    fn traefik_tracing_options_become_otlp_settings() {
        let c = traefik(
            &[],
            &[
                "--tracing.otlp.http.endpoint=http://127.0.0.1:4318/v1/traces",
                "--tracing.serviceName=edge",
                "--tracing.sampleRate=0.25",
            ],
            &[],
        )
        .unwrap();
        let t = c.tracing.expect("tracing on");
        assert_eq!(t.service_name.as_deref(), Some("edge"));
        assert_eq!(t.endpoint.to_string(), "http://127.0.0.1:4318/v1/traces");
        assert!(format!("{:?}", t.sampler).contains("0.25"), "{:?}", t.sampler);
    }
}
