//! Traefik's static options in Berth's terms: what maps onto Berth's own settings goes
//! into an [`Args`] (layered under Berth's flags, which win), the rest (entrypoint
//! details, the `traefik` entrypoint, provider options Berth's flags lack) into
//! [`Traefik`]'s fields. Traefik's defaults apply where the user relied on them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use berth_common::config::{parse_bool, parse_duration};
use berth_common::path::{EncodedCharacters, PathPolicy};
use berth_common::rules::matcher::parse_ip_range;
use ipnet::IpNet;

use super::source::{Entry, Form, Static, Value, same_path};
use crate::config::{Args, ConfigError};

/// Traefik's default entrypoint when none is configured.
pub(crate) const DEFAULT_ENTRYPOINT: (&str, u16) = ("http", 80);
/// Traefik's internal entrypoint (API, dashboard, ping, metrics by default).
pub(crate) const TRAEFIK_ENTRYPOINT: (&str, u16) = ("traefik", 8080);
/// Traefik's ECS provider defaults.
const DEFAULT_CLUSTER: &str = "default";
const DEFAULT_REFRESH_SECONDS: u64 = 15;

/// Where an entrypoint listens: Traefik's `:80` has no host (every address, or
/// `--listen-host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenAddr {
    pub host: Option<IpAddr>,
    pub port: u16,
}

impl ListenAddr {
    pub(crate) fn resolve(self, listen_host: Option<IpAddr>) -> SocketAddr {
        let host = self.host.or(listen_host).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        SocketAddr::new(host, self.port)
    }
}

/// `entryPoints.<name>.http.redirections.entryPoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redirect {
    /// The target entrypoint's name, when `to` names one.
    pub to: String,
    pub port: u16,
    pub scheme: String,
    pub permanent: bool,
    pub priority: i64,
}

/// One of Traefik's entrypoints, as configured.
#[derive(Debug, Clone)]
pub(crate) struct TraefikEntrypoint {
    pub name: String,
    pub addr: ListenAddr,
    pub path: PathPolicy,
    /// `http.tls`: routers on this entrypoint serve TLS connections.
    pub tls_routers: bool,
    /// `http.tls.options`: the TLS options of its routers that set none of their own.
    pub tls_options: Option<String>,
    /// `http.tls.certResolver`: the certificate resolver of its routers that name none.
    pub cert_resolver: Option<String>,
    pub redirect: Option<Redirect>,
    /// `forwardedHeaders`: whose `X-Forwarded-*` to keep (`insecure`: everyone's).
    pub trusted: Option<Vec<IpNet>>,
    pub read_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub as_default: bool,
}

/// What an internal entrypoint (Traefik's `traefik`, or the one `ping` or
/// `metrics.prometheus` names) serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Exposure {
    pub api: bool,
    pub dashboard: bool,
    pub ping: bool,
    pub metrics: bool,
    /// `ping.terminatingStatusCode`: `/ping`'s answer while shutting down.
    pub terminating_status: u16,
}

#[derive(Debug, Clone)]
pub(crate) struct InternalEntrypoint {
    pub name: String,
    pub addr: ListenAddr,
    pub serves: Exposure,
}

/// `providers.ecs` options Berth's own flags do not have.
#[derive(Debug, Clone, Default)]
pub(crate) struct EcsExtras {
    pub constraints: Option<String>,
    /// Its `Debug` hides the secret.
    pub credentials: Option<aws_credential_types::Credentials>,
}

/// Traefik's static configuration, translated.
#[derive(Debug, Default)]
pub(crate) struct Traefik {
    pub form: Option<Form>,
    pub notes: Vec<String>,
    /// Onto Berth's settings; Berth's flags and `BERTH_*` win.
    pub args: Args,
    pub entrypoints: Vec<TraefikEntrypoint>,
    pub internal: Vec<InternalEntrypoint>,
    pub ecs: Option<EcsExtras>,
    /// `log.level`, as a `RUST_LOG` filter.
    pub log_filter: Option<String>,
    /// `tracing.*` as the `OTEL_*` variables Berth reads (the real ones win).
    pub trace_env: Vec<(String, String)>,
    /// `providers.ecs.healthyTasksOnly`: the task's health, not each container's.
    pub healthy_tasks_only: bool,
    /// The `@internal` services routers may name: `noop@internal` always, `api@internal`
    /// and `dashboard@internal` with `api`, `ping@internal` with `ping`,
    /// `prometheus@internal` with `metrics.prometheus`.
    pub internal_services: Vec<String>,
    /// `certificatesResolvers.<name>.acme`.
    pub acme: Vec<crate::acme::ResolverSettings>,
}

/// Reads the entries by path, case-insensitively, and remembers which were read.
struct Reader<'a> {
    entries: &'a [Entry],
    errors: Vec<String>,
}

impl<'a> Reader<'a> {
    fn entry(&self, path: &str) -> Option<&'a Entry> {
        let want: Vec<String> = path.split('.').map(String::from).collect();
        self.entries.iter().find(|e| same_path(&e.path, &want))
    }

    fn text(&self, path: &str) -> Option<String> {
        self.entry(path).map(|e| match &e.value {
            Value::Scalar(s) => s.trim().to_string(),
            Value::List(l) => l.join(","),
        })
    }

    fn list(&self, path: &str) -> Vec<String> {
        match self.entry(path).map(|e| &e.value) {
            None => Vec::new(),
            Some(Value::Scalar(s)) => split_list(s),
            Some(Value::List(l)) => l.iter().flat_map(|s| split_list(s)).collect(),
        }
    }

    fn bool(&self, path: &str) -> Option<bool> {
        // Kinds were checked; an empty value (`--api.insecure` written as `insecure:`) is true.
        self.text(path).map(|v| v.is_empty() || parse_bool(&v).unwrap_or(false))
    }

    /// A section is on when given as true (or empty), or when any option below it is given.
    fn section(&self, path: &str) -> bool {
        if let Some(on) = self.bool(path) {
            return on;
        }
        let want: Vec<&str> = path.split('.').collect();
        self.entries
            .iter()
            .any(|e| e.path.len() > want.len() && want.iter().zip(&e.path).all(|(w, p)| p.eq_ignore_ascii_case(w)))
    }

    fn duration(&self, path: &str) -> Option<Duration> {
        self.text(path).and_then(|v| parse_duration(&v).ok())
    }

    fn number(&self, path: &str) -> Option<f64> {
        self.text(path).and_then(|v| v.parse().ok())
    }

    /// The names under `prefix` (entrypoints), in order, case kept as first written.
    fn names(&self, prefix: &str) -> Vec<String> {
        let want: Vec<&str> = prefix.split('.').collect();
        let mut out: Vec<String> = Vec::new();
        for e in self.entries {
            if e.path.len() > want.len() && want.iter().zip(&e.path).all(|(w, p)| p.eq_ignore_ascii_case(w)) {
                let name = &e.path[want.len()];
                if !out.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    out.push(name.clone());
                }
            }
        }
        out
    }

    /// A map under `prefix` (`tracing.headers.<name>`).
    fn map(&self, prefix: &str) -> Vec<(String, String)> {
        self.names(prefix)
            .into_iter()
            .filter_map(|k| self.text(&format!("{prefix}.{k}")).map(|v| (k, v)))
            .collect()
    }

    fn fail(&mut self, msg: String) {
        self.errors.push(msg);
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// Traefik's entrypoint address: `:80`, `0.0.0.0:80`, `[::]:443`, with `/tcp` allowed.
pub(crate) fn parse_address(addr: &str) -> Result<ListenAddr, String> {
    let a = addr.trim();
    let a = match a.rsplit_once('/') {
        Some((a, proto)) if proto.eq_ignore_ascii_case("tcp") => a,
        Some((_, proto)) if proto.eq_ignore_ascii_case("udp") => {
            return Err(format!("`{addr}`: UDP entrypoints are not implemented"));
        }
        Some(_) => return Err(format!("`{addr}`: use HOST:PORT, :PORT, or :PORT/tcp")),
        None => a,
    };
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("`{addr}`: use HOST:PORT or :PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("`{addr}`: `{port}` is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() {
        None
    } else {
        Some(
            host.parse::<IpAddr>()
                .map_err(|_| format!("`{addr}`: the host must be an IP address (or empty for all)"))?,
        )
    };
    Ok(ListenAddr { host, port })
}

impl Traefik {
    pub(crate) fn from_static(st: Static) -> Result<Traefik, ConfigError> {
        let mut r = Reader {
            entries: &st.entries,
            errors: Vec::new(),
        };
        let mut t = Traefik {
            form: Some(st.form.clone()),
            notes: st.notes.clone(),
            ..Default::default()
        };
        t.entrypoints(&mut r);
        t.internal(&mut r);
        t.providers(&mut r);
        t.observability(&mut r);
        t.transport(&mut r);
        t.acme(&mut r);
        if let Some(v) = r.text("core.defaultRuleSyntax") {
            t.args.default_rule_syntax = Some(v);
        }
        if !r.errors.is_empty() {
            return Err(ConfigError(format!("{} ({})", r.errors.join("; "), st.form)));
        }
        Ok(t)
    }

    fn entrypoints(&mut self, r: &mut Reader<'_>) {
        let names = r.names("entryPoints");
        for name in &names {
            let p = |k: &str| format!("entryPoints.{name}.{k}");
            let Some(address) = r.text(&p("address")) else {
                r.fail(format!("entryPoints.{name}: `address` is required"));
                continue;
            };
            let addr = match parse_address(&address) {
                Ok(a) => a,
                Err(e) => {
                    r.fail(format!("entryPoints.{name}.address {e}"));
                    continue;
                }
            };
            let enc = |k: &str, d: bool| r.bool(&p(&format!("http.encodedCharacters.{k}"))).unwrap_or(d);
            let d = EncodedCharacters::default();
            let path = PathPolicy {
                sanitize: r.bool(&p("http.sanitizePath")).unwrap_or(true),
                encoded: EncodedCharacters {
                    allow_encoded_slash: enc("allowEncodedSlash", d.allow_encoded_slash),
                    allow_encoded_back_slash: enc("allowEncodedBackSlash", d.allow_encoded_back_slash),
                    allow_encoded_null_character: enc("allowEncodedNullCharacter", d.allow_encoded_null_character),
                    allow_encoded_semicolon: enc("allowEncodedSemicolon", d.allow_encoded_semicolon),
                    allow_encoded_percent: enc("allowEncodedPercent", d.allow_encoded_percent),
                    allow_encoded_question_mark: enc("allowEncodedQuestionMark", d.allow_encoded_question_mark),
                    allow_encoded_hash: enc("allowEncodedHash", d.allow_encoded_hash),
                },
            };
            for k in r.names(&p("http.encodedCharacters")) {
                if !ENCODED.iter().any(|e| e.eq_ignore_ascii_case(&k)) {
                    r.fail(format!(
                        "unknown Traefik option `entryPoints.{name}.http.encodedCharacters.{k}`"
                    ));
                }
            }
            let trusted = if r.bool(&p("forwardedHeaders.insecure")).unwrap_or(false) {
                Some(vec![
                    "0.0.0.0/0".parse().expect("a valid network"),
                    "::/0".parse().expect("a valid network"),
                ])
            } else {
                let ips = r.list(&p("forwardedHeaders.trustedIPs"));
                let mut nets = Vec::new();
                for ip in &ips {
                    match parse_ip_range(ip) {
                        Some(n) => nets.push(n),
                        None => r.fail(format!(
                            "entryPoints.{name}.forwardedHeaders.trustedIPs: `{ip}` is not an IP or CIDR"
                        )),
                    }
                }
                (!ips.is_empty()).then_some(nets)
            };
            if r.duration(&p("transport.respondingTimeouts.writeTimeout"))
                .is_some_and(|d| !d.is_zero())
            {
                r.fail(format!(
                    "Traefik option `entryPoints.{name}.transport.respondingTimeouts.writeTimeout` is not supported: \
                     Berth has no response write deadline (leave it 0)"
                ));
            }
            if let Some(d) = r.duration(&p("transport.lifecycle.requestAcceptGraceTimeout")) {
                self.args.shutdown_delay = Some(format!("{}ms", d.as_millis()));
            }
            if let Some(d) = r.duration(&p("transport.lifecycle.graceTimeOut")) {
                self.args.drain_timeout = Some(format!("{}ms", d.as_millis()));
            }
            let redirect = r.text(&p("http.redirections.entryPoint.to")).map(|to| Redirect {
                to,
                port: 0,
                scheme: r
                    .text(&p("http.redirections.entryPoint.scheme"))
                    .unwrap_or_else(|| "https".into())
                    .to_ascii_lowercase(),
                permanent: r.bool(&p("http.redirections.entryPoint.permanent")).unwrap_or(true),
                priority: r
                    .number(&p("http.redirections.entryPoint.priority"))
                    .map(|n| n as i64)
                    .unwrap_or(i64::from(i32::MAX) - 1),
            });
            self.entrypoints.push(TraefikEntrypoint {
                name: name.clone(),
                addr,
                path,
                tls_routers: r.section(&p("http.tls")),
                tls_options: r
                    .text(&p("http.tls.options"))
                    .filter(|o| !o.is_empty() && o != "default"),
                cert_resolver: r.text(&p("http.tls.certResolver")).filter(|c| !c.is_empty()),
                redirect,
                trusted,
                read_timeout: r.duration(&p("transport.respondingTimeouts.readTimeout")),
                idle_timeout: r.duration(&p("transport.respondingTimeouts.idleTimeout")),
                as_default: r.bool(&p("asDefault")).unwrap_or(false),
            });
        }
        // Berth applies one read and one idle timeout to every entrypoint.
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        for (what, get) in [
            (
                "readTimeout",
                (|e: &TraefikEntrypoint| e.read_timeout) as fn(&TraefikEntrypoint) -> Option<Duration>,
            ),
            ("idleTimeout", |e: &TraefikEntrypoint| e.idle_timeout),
        ] {
            let mut values: Vec<Duration> = self.entrypoints.iter().filter_map(get).collect();
            values.dedup();
            match values.as_slice() {
                [] => {}
                [one] if what == "readTimeout" => self.args.request_read_timeout = Some(ms(*one)),
                [one] => self.args.idle_timeout = Some(ms(*one)),
                _ => r.fail(format!(
                    "transport.respondingTimeouts.{what} differs between entrypoints; Berth applies one to all"
                )),
            }
        }
        // The target of a redirection: an entrypoint's port, or a port (`:443`, `443`).
        let ports: Vec<(String, u16)> = self.entrypoints.iter().map(|e| (e.name.clone(), e.addr.port)).collect();
        for ep in &mut self.entrypoints {
            if let Some(rd) = &mut ep.redirect {
                let by_name = ports
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&rd.to))
                    .map(|(_, p)| *p);
                let by_port = rd.to.trim_start_matches(':').parse::<u16>().ok();
                match by_name.or(by_port) {
                    Some(port) => rd.port = port,
                    None => r.fail(format!(
                        "entryPoints.{}.http.redirections.entryPoint.to: `{}` is neither an entrypoint nor a port",
                        ep.name, rd.to
                    )),
                }
            }
        }
    }

    /// The API, dashboard, ping and metrics: on Traefik's `traefik` entrypoint (`:8080`
    /// unless `entryPoints.traefik.address` says otherwise) or the one each names.
    fn internal(&mut self, r: &mut Reader<'_>) {
        let api = r.section("api");
        let insecure = api && r.bool("api.insecure").unwrap_or(false);
        let dashboard = insecure && r.bool("api.dashboard").unwrap_or(true);
        let ping = r.section("ping");
        let metrics = r.section("metrics.prometheus");
        self.internal_services.push("noop@internal".into());
        if api {
            self.internal_services.push("api@internal".into());
            if r.bool("api.dashboard").unwrap_or(true) {
                self.internal_services.push("dashboard@internal".into());
            }
        }
        if ping {
            self.internal_services.push("ping@internal".into());
        }
        if metrics {
            self.internal_services.push("prometheus@internal".into());
        }
        // manualRouting: no route of the gateway's own; the user routes to ping@internal
        // or prometheus@internal.
        let ping_manual = r.bool("ping.manualRouting").unwrap_or(false);
        let metrics_manual = r.bool("metrics.prometheus.manualRouting").unwrap_or(false);
        let ping_ep = r.text("ping.entryPoint").unwrap_or_else(|| TRAEFIK_ENTRYPOINT.0.into());
        let metrics_ep = r
            .text("metrics.prometheus.entryPoint")
            .unwrap_or_else(|| TRAEFIK_ENTRYPOINT.0.into());
        let terminating = r.number("ping.terminatingStatusCode").map(|n| n as u16).unwrap_or(503);
        let mut wants: Vec<(String, Exposure)> = Vec::new();
        let blank = Exposure {
            terminating_status: terminating,
            ..Default::default()
        };
        fn want<'w>(wants: &'w mut Vec<(String, Exposure)>, name: &str, blank: &Exposure) -> &'w mut Exposure {
            let i = match wants.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some(i) => i,
                None => {
                    wants.push((name.to_string(), blank.clone()));
                    wants.len() - 1
                }
            };
            &mut wants[i].1
        }
        if insecure {
            let e = want(&mut wants, TRAEFIK_ENTRYPOINT.0, &blank);
            e.api = true;
            e.dashboard = dashboard;
        }
        if metrics && !metrics_manual {
            want(&mut wants, &metrics_ep, &blank).metrics = true;
        }
        if ping && !ping_manual {
            // Ping on a routing entrypoint is answered there by the proxy (Berth's `--ping`).
            let internal = ping_ep.eq_ignore_ascii_case(TRAEFIK_ENTRYPOINT.0)
                || wants.iter().any(|(n, _)| n.eq_ignore_ascii_case(&ping_ep));
            if internal {
                want(&mut wants, &ping_ep, &blank).ping = true;
            } else {
                self.args.ping = Some(ping_ep.clone());
            }
        }
        for (name, serves) in wants {
            // Its own entrypoint definition gives the address; it routes nothing else.
            let addr = match self.entrypoints.iter().position(|e| e.name.eq_ignore_ascii_case(&name)) {
                Some(i) => self.entrypoints.remove(i).addr,
                None if name.eq_ignore_ascii_case(TRAEFIK_ENTRYPOINT.0) => ListenAddr {
                    host: None,
                    port: TRAEFIK_ENTRYPOINT.1,
                },
                None => {
                    r.fail(format!("the entrypoint `{name}` (for ping or metrics) is not defined"));
                    continue;
                }
            };
            self.internal.push(InternalEntrypoint { name, addr, serves });
        }
    }

    fn providers(&mut self, r: &mut Reader<'_>) {
        if r.section("providers.ecs") {
            let a = &mut self.args;
            if r.bool("providers.ecs.autoDiscoverClusters").unwrap_or(false) {
                a.ecs_all_clusters = true;
            } else {
                let clusters = r.list("providers.ecs.clusters");
                a.ecs_clusters = if clusters.is_empty() {
                    vec![DEFAULT_CLUSTER.into()]
                } else {
                    clusters
                };
            }
            a.exposed_by_default = r.bool("providers.ecs.exposedByDefault").unwrap_or(true);
            self.healthy_tasks_only = r.bool("providers.ecs.healthyTasksOnly").unwrap_or(false);
            let refresh = r
                .number("providers.ecs.refreshSeconds")
                .unwrap_or(DEFAULT_REFRESH_SECONDS as f64);
            if refresh < 1.0 {
                r.fail("providers.ecs.refreshSeconds must be at least 1".into());
            }
            a.ecs_refresh = Some(format!("{refresh}s"));
            a.ecs_region = r.text("providers.ecs.region").filter(|v| !v.is_empty());
            a.ecs_default_rule = r.text("providers.ecs.defaultRule").filter(|v| !v.is_empty());
            if r.bool("providers.ecs.ecsAnywhere").unwrap_or(false) {
                r.fail(
                    "Traefik option `providers.ecs.ecsAnywhere` is not supported: ECS Anywhere instances \
                     (their SSM addresses) are not discovered yet"
                        .into(),
                );
            }
            let credentials = match (
                r.text("providers.ecs.accessKeyID").filter(|v| !v.is_empty()),
                r.text("providers.ecs.secretAccessKey").filter(|v| !v.is_empty()),
            ) {
                (Some(id), Some(secret)) => Some(aws_credential_types::Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "providers.ecs",
                )),
                (None, None) => None,
                _ => {
                    r.fail("providers.ecs.accessKeyID and providers.ecs.secretAccessKey go together".into());
                    None
                }
            };
            self.ecs = Some(EcsExtras {
                constraints: r.text("providers.ecs.constraints").filter(|v| !v.is_empty()),
                credentials,
            });
        }
        if r.section("providers.file") {
            let file = r.text("providers.file.filename").filter(|v| !v.is_empty());
            let dir = r.text("providers.file.directory").filter(|v| !v.is_empty());
            match (file, dir) {
                (Some(f), None) => self.args.file_provider = Some(f.into()),
                (None, Some(d)) => self.args.file_provider = Some(d.into()),
                (Some(_), Some(_)) => r.fail("providers.file: give filename or directory, not both".into()),
                (None, None) => r.fail("providers.file: filename or directory is required".into()),
            }
            if r.bool("providers.file.watch") == Some(false) {
                self.notes
                    .push("providers.file.watch=false: Berth watches the file provider always".into());
            }
        }
    }

    fn observability(&mut self, r: &mut Reader<'_>) {
        if let Some(level) = r.text("log.level") {
            match level.to_ascii_lowercase().as_str() {
                l @ ("trace" | "debug" | "info" | "warn" | "error") => self.log_filter = Some(l.into()),
                "fatal" | "panic" => self.log_filter = Some("error".into()),
                other => r.fail(format!(
                    "log.level `{other}`: use TRACE, DEBUG, INFO, WARN, ERROR, FATAL or PANIC"
                )),
            }
        }
        if let Some(f) = r.text("log.format") {
            match f.to_ascii_lowercase().as_str() {
                "json" => self.args.log_format = Some("json".into()),
                "common" => self.args.log_format = Some("text".into()),
                other => r.fail(format!("log.format `{other}`: use common or json")),
            }
        }
        if r.section("accessLog") {
            self.args.access_log = true;
            self.args.access_log_file = r.text("accessLog.filePath").filter(|v| !v.is_empty()).map(Into::into);
            match r.text("accessLog.format").map(|f| f.to_ascii_lowercase()) {
                None => self.args.access_log_format = Some("common".into()),
                Some(f) if f == "common" || f == "json" => self.args.access_log_format = Some(f),
                Some(other) => r.fail(format!("accessLog.format `{other}`: use common or json")),
            }
        }
        if r.section("tracing") {
            let env = &mut self.trace_env;
            let grpc = r.text("tracing.otlp.grpc.endpoint");
            match (r.text("tracing.otlp.http.endpoint"), grpc) {
                (Some(_), Some(_)) => r.fail("tracing.otlp: give http or grpc, not both".into()),
                (None, Some(g)) => {
                    let scheme = if r.bool("tracing.otlp.grpc.insecure").unwrap_or(false) {
                        "http"
                    } else {
                        "https"
                    };
                    let url = if g.contains("://") {
                        g
                    } else {
                        format!("{scheme}://{g}")
                    };
                    env.push(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL".into(), "grpc".into()));
                    env.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), url));
                }
                (Some(h), None) => {
                    env.push(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL".into(), "http/protobuf".into()));
                    env.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(), h));
                }
                (None, None) if r.section("tracing.otlp.grpc") => {
                    env.push(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL".into(), "grpc".into()));
                    env.push((
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
                        "https://localhost:4317".into(),
                    ));
                }
                (None, None) => {
                    env.push(("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL".into(), "http/protobuf".into()));
                    env.push((
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
                        "https://localhost:4318/v1/traces".into(),
                    ));
                }
            }
            env.push(("OTEL_TRACES_EXPORTER".into(), "otlp".into()));
            env.push((
                "OTEL_SERVICE_NAME".into(),
                r.text("tracing.serviceName").unwrap_or_else(|| "traefik".into()),
            ));
            let rate = r.number("tracing.sampleRate").unwrap_or(1.0);
            if !(0.0..=1.0).contains(&rate) {
                r.fail("tracing.sampleRate must be between 0 and 1".into());
            }
            env.push(("OTEL_TRACES_SAMPLER".into(), "parentbased_traceidratio".into()));
            env.push(("OTEL_TRACES_SAMPLER_ARG".into(), rate.to_string()));
            let headers = r.map("tracing.headers");
            if !headers.is_empty() {
                let h: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                env.push(("OTEL_EXPORTER_OTLP_TRACES_HEADERS".into(), h.join(",")));
            }
            let mut attrs = r.map("tracing.resourceAttributes");
            attrs.extend(r.map("tracing.globalAttributes"));
            if !attrs.is_empty() {
                let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                env.push(("OTEL_RESOURCE_ATTRIBUTES".into(), a.join(",")));
            }
        }
    }

    fn acme(&mut self, r: &mut Reader<'_>) {
        use crate::acme::{DnsChallenge, KeyType, ResolverSettings, StorageSettings};
        for name in r.names("certificatesResolvers") {
            let p = |k: &str| format!("certificatesResolvers.{name}.acme.{k}");
            if !r.section(&format!("certificatesResolvers.{name}.acme")) {
                r.fail(format!("certificatesResolvers.{name}: only acme resolvers exist"));
                continue;
            }
            let http_challenge = r.text(&p("httpChallenge.entryPoint")).filter(|e| !e.is_empty());
            let tls_challenge = r.section(&p("tlsChallenge"));
            let dns_challenge = match r.text(&p("dnsChallenge.provider")).as_deref() {
                None if !r.section(&p("dnsChallenge")) => None,
                Some("route53") => Some(DnsChallenge {
                    delay_before_check: r
                        .duration(&p("dnsChallenge.propagation.delayBeforeChecks"))
                        .or_else(|| r.duration(&p("dnsChallenge.delayBeforeCheck")))
                        .unwrap_or_default()
                        .min(Duration::from_secs(600)),
                }),
                other => {
                    r.fail(format!(
                        "certificatesResolvers.{name}.acme.dnsChallenge.provider: `{}` is not supported (route53)",
                        other.unwrap_or_default()
                    ));
                    continue;
                }
            };
            if http_challenge.is_none() && !tls_challenge && dns_challenge.is_none() {
                r.fail(format!(
                    "certificatesResolvers.{name}.acme: give httpChallenge.entryPoint, tlsChallenge or dnsChallenge"
                ));
                continue;
            }
            let key_type = match r.text(&p("keyType")).as_deref().map(str::to_ascii_uppercase).as_deref() {
                None | Some("EC256") => KeyType::Ec256,
                Some("EC384") => KeyType::Ec384,
                Some(other) => {
                    r.fail(format!(
                        "certificatesResolvers.{name}.acme.keyType: `{other}` is not supported (EC256 or EC384)"
                    ));
                    continue;
                }
            };
            let hours = r.number(&p("certificatesDuration")).unwrap_or(2160.0);
            if !(1.0..=100_000.0).contains(&hours) {
                r.fail(format!(
                    "certificatesResolvers.{name}.acme.certificatesDuration: {hours} hours is out of range"
                ));
                continue;
            }
            let eab = match (r.text(&p("eab.kid")), r.text(&p("eab.hmacEncoded"))) {
                (None, None) => None,
                (Some(kid), Some(hmac)) if !kid.is_empty() && kid.len() <= 1024 => {
                    use base64::Engine;
                    let text = hmac.trim().trim_end_matches('=');
                    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text) {
                        Ok(key) if !key.is_empty() && key.len() <= 1024 => Some((kid, key)),
                        _ => {
                            r.fail(format!(
                                "certificatesResolvers.{name}.acme.eab.hmacEncoded: not a base64url HMAC key"
                            ));
                            continue;
                        }
                    }
                }
                _ => {
                    r.fail(format!(
                        "certificatesResolvers.{name}.acme.eab: give both kid and hmacEncoded"
                    ));
                    continue;
                }
            };
            let ca_server_name = match r.text(&p("caServerName")).filter(|n| !n.is_empty()) {
                None => None,
                Some(n) => match rustls_pki_types::ServerName::try_from(n.clone()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        r.fail(format!(
                            "certificatesResolvers.{name}.acme.caServerName: `{n}` is not a server name"
                        ));
                        continue;
                    }
                },
            };
            let storage = match StorageSettings::parse(&r.text(&p("storage")).unwrap_or_else(|| "acme.json".into())) {
                Ok(s) => s,
                Err(e) => {
                    r.fail(format!("certificatesResolvers.{name}.acme.storage: {e}"));
                    continue;
                }
            };
            self.acme.push(ResolverSettings {
                name: name.clone(),
                email: r.text(&p("email")).filter(|e| !e.is_empty()),
                ca_server: r
                    .text(&p("caServer"))
                    .unwrap_or_else(|| crate::acme::LETS_ENCRYPT.to_string()),
                ca_certificates: r.list(&p("caCertificates")).into_iter().map(Into::into).collect(),
                ca_server_name,
                storage,
                key_type,
                certificates_duration: Duration::from_secs_f64(hours * 3600.0),
                http_challenge,
                tls_challenge,
                dns_challenge,
                eab,
            });
        }
    }

    fn transport(&mut self, r: &mut Reader<'_>) {
        let a = &mut self.args;
        let roots = r.list("serversTransport.rootCAs");
        match roots.as_slice() {
            [] => {}
            [one] => a.upstream_ca = Some(one.into()),
            _ => r.fail("serversTransport.rootCAs: Berth takes one PEM file (put every CA in it)".into()),
        }
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        if let Some(d) = r.duration("serversTransport.forwardingTimeouts.dialTimeout") {
            a.upstream_connect_timeout = Some(ms(d));
        }
        if let Some(d) = r.duration("serversTransport.forwardingTimeouts.responseHeaderTimeout") {
            a.upstream_response_timeout = Some(ms(d));
        }
        if let Some(d) = r.duration("serversTransport.forwardingTimeouts.idleConnTimeout") {
            a.upstream_idle_timeout = Some(ms(d));
        }
        if r.bool("serversTransport.insecureSkipVerify").unwrap_or(false) {
            tracing::warn!(
                "serversTransport.insecureSkipVerify: the certificates of https:// upstreams are not verified"
            );
            a.upstream_insecure_skip_verify = true;
        }
    }
}

const ENCODED: [&str; 7] = [
    "allowEncodedSlash",
    "allowEncodedBackSlash",
    "allowEncodedNullCharacter",
    "allowEncodedSemicolon",
    "allowEncodedPercent",
    "allowEncodedQuestionMark",
    "allowEncodedHash",
];
