//! Docker labels (`berth.*`, and `traefik.*` for compatibility) to configuration.
//!
//! Labels become a [`Node`] tree and go through the same decoder as the file provider.
//! `berth.` keys win over the same `traefik.` keys. Every key that is not understood is
//! a diagnostic; one bad key never stops the rest of the container from loading. The
//! fragments of several containers merge with [`Merger`], as Traefik merges them.

use std::collections::BTreeMap;

use crate::config::{self, DynamicConfig, Mode, Node, ServerConfig, Strategy};
use crate::diag::Diagnostic;
use crate::http::authority;

mod constraints;
mod merge;
mod mesh;
mod template;

pub use constraints::Constraint;
pub use merge::Merger;
pub use mesh::MAX_SPLIT;
pub use template::Template;

pub const PREFIXES: [&str; 2] = ["berth.", "traefik."];

/// The most `berth.`/`traefik.` labels one container may carry; past it the container's
/// labels are refused as a whole (a real one has a few dozen).
pub const MAX_LABELS: usize = 1024;
/// The longest label value accepted (the longest rule the rule parser takes).
pub const MAX_VALUE_BYTES: usize = crate::rules::parse::MAX_RULE_BYTES;
/// The most bytes of `berth.`/`traefik.` labels one container may carry in all (ECS
/// allows a whole task definition 64 KiB).
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;

/// What one container's labels say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerLabels {
    /// `berth.enable` / `traefik.enable`.
    pub enable: Option<bool>,
    pub config: DynamicConfig,
    pub mesh: MeshLabels,
    /// `berth.weighted.allow`: the ECS services (of the same cluster) whose labels may
    /// name this task's services in a `weighted` service.
    pub weighted_allow: Vec<String>,
    /// Every label of the container, as a default rule's `.Labels` sees them.
    pub labels: BTreeMap<String, String>,
}

/// The east-west labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshLabels {
    /// `berth.mesh.name`: the east-west name (default: the ECS service name).
    pub name: Option<String>,
    /// `berth.mesh.allow`: caller identities or service names allowed to call.
    pub allow: Option<Vec<String>>,
    /// `berth.mesh.aliases`: more names callers reach the service by (host names such as
    /// App Mesh virtual-service or Cloud Map names), lower-case, without port.
    pub aliases: Vec<String>,
    /// `berth.mesh.outbound`: what the task's transparent egress does with a destination
    /// that is not in the mesh.
    pub outbound: Outbound,
    /// `berth.mesh.ingress`: whether the transparent ingress also takes plaintext.
    pub ingress: Ingress,
    /// `berth.mesh.weighted.*`, `berth.mesh.retry.*`, `berth.mesh.timeout`: how callers'
    /// sidecars route to this service.
    pub policy: crate::control::MeshPolicy,
}

/// `berth.mesh.outbound`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outbound {
    /// Passed through to its original destination unchanged (App Mesh's `ALLOW_ALL`).
    #[default]
    AllowAll,
    /// Refused (App Mesh's `DROP_ALL`).
    MeshOnly,
}

/// `berth.mesh.ingress`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ingress {
    /// Only callers with a mesh certificate.
    #[default]
    Strict,
    /// Plaintext callers too, without an identity (the migration window).
    Permissive,
}

/// The most aliases one service takes.
pub const MAX_ALIASES: usize = 16;

/// `berth.mesh.aliases`: comma-separated host names, each with or without `:port`.
fn aliases(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for a in value.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let host = match a.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => a,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !valid_mesh_name(&host) {
            return Err(format!(
                "`{}` is not a host name (letters, digits, `-`, `_`, `.`)",
                a.chars().take(64).collect::<String>()
            ));
        }
        if !out.contains(&host) {
            out.push(host);
        }
        if out.len() > MAX_ALIASES {
            return Err(format!("more than {MAX_ALIASES} aliases"));
        }
    }
    Ok(out)
}

/// Parse a container's labels. Labels outside the two prefixes are ignored.
pub fn parse(labels: &BTreeMap<String, String>) -> (ContainerLabels, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let (ours, bytes) = labels
        .iter()
        .filter(|(k, _)| PREFIXES.iter().any(|p| strip_prefix_ci(k, p).is_some()))
        .fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
    if ours > MAX_LABELS || bytes > MAX_TOTAL_BYTES {
        diags.push(Diagnostic::error(
            "labels",
            format!(
                "{ours} berth./traefik. labels of {bytes} bytes, more than {MAX_LABELS} or {MAX_TOTAL_BYTES}: \
                 the container's labels are ignored"
            ),
        ));
        return (ContainerLabels::default(), diags);
    }
    // Collect stripped keys, berth. winning over traefik.
    let mut chosen: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    for prefix in PREFIXES.iter().rev() {
        for (key, value) in labels {
            let Some(rest) = strip_prefix_ci(key, prefix) else {
                continue;
            };
            let norm = rest.to_ascii_lowercase();
            if let Some((old_prefix, _)) = chosen.get(&norm)
                && *old_prefix != *prefix
            {
                diags.push(Diagnostic::warning(
                    key.clone(),
                    format!("overrides the same key under `{old_prefix}`"),
                ));
            }
            chosen.insert(norm, (prefix, value.as_str()));
        }
    }
    // Rebuild with original spelling of the key (router names keep their case).
    let mut out = ContainerLabels {
        labels: labels.clone(),
        ..Default::default()
    };
    let mut dynamic_pairs: Vec<(String, String, &str)> = Vec::new();
    let mut mesh_pairs: Vec<(&str, &str, &str)> = Vec::new();
    for (key, value) in labels {
        let Some((prefix, rest)) = PREFIXES.iter().find_map(|p| strip_prefix_ci(key, p).map(|r| (*p, r))) else {
            continue;
        };
        if value.len() > MAX_VALUE_BYTES {
            diags.push(Diagnostic::error(
                key.clone(),
                format!("a value of {} bytes, more than {MAX_VALUE_BYTES}: ignored", value.len()),
            ));
            continue;
        }
        match chosen.get(&rest.to_ascii_lowercase()) {
            Some((p, _)) if *p == prefix => {}
            _ => continue,
        }
        let lower = rest.to_ascii_lowercase();
        let top = lower.split('.').next().unwrap_or_default();
        match top {
            "enable" if lower == "enable" => match config::parse_bool(value) {
                Some(b) => out.enable = Some(b),
                None => diags.push(Diagnostic::error(
                    key.clone(),
                    format!("`{}` is not true or false", value.trim()),
                )),
            },
            "mesh" => match lower.as_str() {
                "mesh.name" => {
                    let name = value.trim();
                    if valid_mesh_name(name) {
                        out.mesh.name = Some(name.to_string());
                    } else {
                        diags.push(Diagnostic::error(
                            key.clone(),
                            format!("`{name}` is not a valid mesh name (letters, digits, `-`, `_`, `.`)"),
                        ));
                    }
                }
                "mesh.aliases" => match aliases(value) {
                    Ok(a) => out.mesh.aliases = a,
                    Err(e) => diags.push(Diagnostic::error(key.clone(), format!("{e}; no alias is served"))),
                },
                "mesh.outbound" => match value.trim().to_ascii_lowercase().as_str() {
                    "allow-all" => out.mesh.outbound = Outbound::AllowAll,
                    "mesh-only" => out.mesh.outbound = Outbound::MeshOnly,
                    _ => {
                        // Fail closed: a setting that cannot be read never opens the way out.
                        out.mesh.outbound = Outbound::MeshOnly;
                        diags.push(Diagnostic::error(
                            key.clone(),
                            "expected allow-all or mesh-only; destinations outside the mesh are refused",
                        ))
                    }
                },
                "mesh.ingress" => match value.trim().to_ascii_lowercase().as_str() {
                    "strict" => out.mesh.ingress = Ingress::Strict,
                    "permissive" => out.mesh.ingress = Ingress::Permissive,
                    _ => {
                        out.mesh.ingress = Ingress::Strict;
                        diags.push(Diagnostic::error(
                            key.clone(),
                            "expected strict or permissive; only mTLS callers are taken",
                        ))
                    }
                },
                "mesh.allow" => {
                    out.mesh.allow = Some(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect(),
                    )
                }
                // The routing policy's keys, read together below.
                _ => mesh_pairs.push((prefix, rest.get("mesh.".len()..).unwrap_or_default(), value)),
            },
            "weighted" if lower == "weighted.allow" => {
                out.weighted_allow = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "weighted" => diags.push(Diagnostic::error(key.clone(), "unknown weighted option (allow)")),
            "http" | "tcp" | "udp" | "tls" => dynamic_pairs.push((prefix.to_string(), rest.to_string(), value)),
            "docker" | "ecs" | "swarm" => diags.push(Diagnostic::warning(
                key.clone(),
                "provider-specific option is not used by Berth; ignored",
            )),
            _ => diags.push(Diagnostic::error(key.clone(), "unknown label; it is ignored")),
        }
    }
    // berth. before traefik.: a part set under berth. wins.
    for prefix in PREFIXES {
        let pairs: Vec<(&str, &str)> = mesh_pairs
            .iter()
            .filter(|(p, _, _)| *p == prefix)
            .map(|(_, k, v)| (*k, *v))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let p = mesh::policy(&pairs, prefix, &mut diags);
        let own = &mut out.mesh.policy;
        if own.split.is_empty() {
            own.split = p.split;
        }
        own.retry = own.retry.take().or(p.retry);
        own.timeout_ms = own.timeout_ms.or(p.timeout_ms);
        own.failover = own.failover.take().or(p.failover);
        own.sticky = own.sticky.take().or(p.sticky);
    }
    // Decode each prefix's keys so diagnostics name the key as the user wrote it.
    for prefix in PREFIXES {
        let pairs: Vec<(&str, &str)> = dynamic_pairs
            .iter()
            .filter(|(p, _, _)| p == prefix)
            .map(|(_, k, v)| (k.as_str(), *v))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let tree = Node::from_dotted(pairs, prefix, &mut diags);
        let cfg = config::decode(&tree, Mode::Labels, prefix, &mut diags);
        merge_labels(&mut out.config, cfg);
    }
    (out, diags)
}

fn merge_labels(into: &mut DynamicConfig, from: DynamicConfig) {
    // Keys are disjoint between prefixes (berth. won already), but the same router may
    // be spread across both prefixes: merge field by field, the existing (berth.) first.
    for (name, r) in from.http.routers {
        let e = into.http.routers.entry(name).or_default();
        e.rule = e.rule.take().or(r.rule);
        e.rule_syntax = e.rule_syntax.take().or(r.rule_syntax);
        if e.entry_points.is_empty() {
            e.entry_points = r.entry_points;
        }
        e.priority = e.priority.or(r.priority);
        e.service = e.service.take().or(r.service);
        if e.middlewares.is_empty() {
            e.middlewares = r.middlewares;
        }
        e.tls = e.tls.take().or(r.tls);
    }
    for (name, s) in from.http.services {
        into.http.services.entry(name).or_insert(s);
    }
    for (name, r) in from.tcp.routers {
        into.tcp.routers.entry(name).or_insert(r);
    }
    for (name, s) in from.tcp.services {
        into.tcp.services.entry(name).or_insert(s);
    }
    for (name, m) in from.http.middlewares {
        into.http.middlewares.entry(name).or_insert(m);
    }
    for (name, m) in from.tcp.middlewares {
        into.tcp.middlewares.entry(name).or_insert(m);
    }
}

fn strip_prefix_ci<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let head = key.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &key[prefix.len()..])
}

/// Mesh names are DNS-label-like (they become `http://NAME/`).
pub fn valid_mesh_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Where a container can be reached, for turning its labels into servers.
#[derive(Debug, Clone)]
pub struct ContainerTarget {
    /// Name used for the default router and service (Traefik: the normalized instance name).
    pub name: String,
    /// The address to dial (IP or host).
    pub address: String,
    /// Container port -> the port to dial (the host port in bridge mode).
    pub ports: Vec<(u16, u16)>,
    /// Default rule template: `{{ normalize .Name }}` and `{{ .Name }}` are substituted.
    pub default_rule: Option<String>,
    pub default_strategy: Strategy,
    /// The task is reached through its sidecar: every server is the sidecar's inbound
    /// over mTLS instead of the container's own port.
    pub via: Option<Via>,
}

/// A task's sidecar, as servers name it: `mesh://HOST:PORT/IDENTITY` for HTTP, and
/// `...#APP_PORT` for TCP (the sidecar opens the app's container port by ALPN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The sidecar's inbound port (the host port in bridge mode).
    pub port: u16,
    /// The task's identity path, `ecs/CLUSTER/SERVICE`.
    pub identity: String,
}

impl ContainerTarget {
    /// The one server URL of an HTTP service dialling `port` (its mapped port).
    fn http_server(&self, scheme: &str, port: u16) -> String {
        match &self.via {
            Some(via) => format!("mesh://{}/{}", authority(&self.address, via.port), via.identity),
            None => format!("{scheme}://{}", authority(&self.address, port)),
        }
    }

    /// The one server of a TCP service for container port `container` dialled on
    /// `port` (its mapped port).
    fn tcp_server(&self, container: u16, port: u16) -> String {
        match &self.via {
            Some(via) => format!(
                "mesh://{}/{}#{container}",
                authority(&self.address, via.port),
                via.identity
            ),
            None => authority(&self.address, port),
        }
    }
}

/// The port to dial for container port `p`: its mapping (the host port in bridge mode).
/// A container that maps ports may only be reached on those: any other port of a shared
/// EC2 instance's address belongs to someone else. Without mappings (awsvpc) the task's
/// own address is dialled on `p`.
fn mapped_port(p: u16, ports: &[(u16, u16)], key: &str, diags: &mut Vec<Diagnostic>) -> Option<u16> {
    if ports.is_empty() {
        return Some(p);
    }
    let found = ports.iter().find(|(c, _)| *c == p).map(|(_, h)| *h);
    if found.is_none() {
        diags.push(Diagnostic::error(
            key,
            format!("the container maps no port {p}; a label may only name one of its mapped ports"),
        ));
    }
    found
}

/// TCP routing from labels: a default service when routers are declared without one,
/// each service's server at the container's address and (mapped) port, and a router
/// without `service` bound to the only service.
fn tcp_defaults(cfg: &mut DynamicConfig, target: &ContainerTarget, default_name: &str, diags: &mut Vec<Diagnostic>) {
    if cfg.tcp.routers.is_empty() && cfg.tcp.services.is_empty() {
        return;
    }
    if cfg.tcp.services.is_empty() {
        cfg.tcp.services.insert(default_name.to_string(), Default::default());
    }
    for (name, svc) in cfg.tcp.services.iter_mut() {
        if !svc.servers.is_empty() {
            continue;
        }
        // (container port, port dialled)
        let port = match (svc.server_port, target.ports.as_slice()) {
            (Some(p), ports) => mapped_port(
                p,
                ports,
                &format!("tcp.services.{name}.loadbalancer.server.port"),
                diags,
            )
            .map(|dial| (p, dial)),
            (None, [(container, host)]) => Some((*container, *host)),
            (None, _) => {
                diags.push(Diagnostic::error(
                    format!("tcp.services.{name}.loadbalancer.server.port"),
                    "set loadbalancer.server.port: the container exposes no single port",
                ));
                None
            }
        };
        if let Some((container, dial)) = port {
            svc.servers.push(target.tcp_server(container, dial));
        }
    }
    let names: Vec<String> = cfg.tcp.services.keys().cloned().collect();
    for (name, r) in cfg.tcp.routers.iter_mut() {
        if r.service.is_none() {
            if names.len() == 1 {
                r.service = names.first().cloned();
            } else {
                diags.push(Diagnostic::error(
                    format!("tcp.routers.{name}.service"),
                    "the router names no service and the container defines several; set one",
                ));
            }
        }
    }
}

/// Traefik's provider defaults: a default service when none is declared, a default
/// router (with the default rule) when none is declared, a router without `service`
/// bound to the only service, and one server per service at the container's address.
pub fn container_config(labels: &ContainerLabels, target: &ContainerTarget) -> (DynamicConfig, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut cfg = labels.config.clone();
    let default_name = normalize_name(&target.name);
    tcp_defaults(&mut cfg, target, &default_name, &mut diags);
    // A container that declares only TCP routing (a router or a service) gets no default
    // HTTP router or service (Traefik's `tcpOrUDP`).
    let tcp_only = cfg.http.routers.is_empty()
        && cfg.http.services.is_empty()
        && cfg.http.middlewares.is_empty()
        && !(cfg.tcp.routers.is_empty() && cfg.tcp.services.is_empty());
    if tcp_only {
        return (cfg, diags);
    }
    // Without any port to send to, Traefik drops the container ("port is missing"): no
    // router then answers for it with an empty service.
    let portless = target.ports.is_empty()
        && cfg.http.services.values().all(|s| {
            s.load_balancer.servers.is_empty() && s.load_balancer.server.as_ref().is_none_or(|t| t.port.is_none())
        });
    if portless {
        diags.push(Diagnostic::error(
            "http.services",
            "the container exposes no port and no label names one: its HTTP routers and services are not created",
        ));
        cfg.http = Default::default();
        return (cfg, diags);
    }
    if cfg.http.services.is_empty() {
        cfg.http.services.insert(default_name.clone(), Default::default());
    }
    let service_names: Vec<String> = cfg.http.services.keys().cloned().collect();
    for (name, svc) in cfg.http.services.iter_mut() {
        let lb = &mut svc.load_balancer;
        if lb.strategy.is_none() {
            lb.strategy = Some(target.default_strategy);
        }
        // A weighted service has children, not servers.
        if !lb.servers.is_empty() || svc.weighted.is_some() {
            continue;
        }
        let tmpl = lb.server.clone().unwrap_or_default();
        let port = match (tmpl.port, target.ports.as_slice()) {
            (Some(p), ports) => mapped_port(
                p,
                ports,
                &format!("http.services.{name}.loadbalancer.server.port"),
                &mut diags,
            ),
            (None, [(_, host)]) => Some(*host),
            (None, []) => {
                diags.push(Diagnostic::error(
                    format!("http.services.{name}.loadbalancer.server.port"),
                    "the container exposes no port; set loadbalancer.server.port",
                ));
                None
            }
            // Several ports and no label: the lowest port dialled, as Traefik chooses.
            (None, ports) => ports.iter().map(|(_, host)| *host).min(),
        };
        if let Some(port) = port {
            lb.servers.push(ServerConfig {
                url: target.http_server(tmpl.scheme.as_deref().unwrap_or("http"), port),
                weight: tmpl.weight,
            });
        }
    }
    if cfg.http.routers.is_empty() && target.default_rule.is_some() {
        cfg.http.routers.insert(default_name.clone(), Default::default());
    }
    let mut drop = Vec::new();
    for (name, r) in cfg.http.routers.iter_mut() {
        if r.rule.is_none() {
            match &target.default_rule {
                // The name comes from the task's group, which whoever runs a task sets:
                // it may not carry rule syntax into the rule.
                Some(_) if !safe_in_rule(&target.name) => {
                    diags.push(Diagnostic::error(
                        format!("http.routers.{name}.rule"),
                        "the task's name has characters a default rule cannot hold (letters, digits, `-`, `_`, `.`, `:`); set a rule",
                    ));
                    drop.push(name.clone());
                    continue;
                }
                // The default rule is v3 whatever the gateway's default syntax, as in
                // Traefik (its default-rule routers keep the v3 parser). `.Name` is the
                // instance name, normalized, as in Traefik's ECS provider.
                Some(tpl) => {
                    match Template::parse(tpl).and_then(|t| t.render(&normalize_name(&target.name), &labels.labels)) {
                        Ok(rule) => {
                            r.rule = Some(rule);
                            r.rule_syntax.get_or_insert_with(|| "v3".into());
                        }
                        Err(e) => {
                            diags.push(Diagnostic::error(
                                format!("http.routers.{name}.rule"),
                                format!("the default rule cannot be rendered for this container: {e}"),
                            ));
                            drop.push(name.clone());
                            continue;
                        }
                    }
                }
                None => {
                    diags.push(Diagnostic::error(
                        format!("http.routers.{name}.rule"),
                        "the router has no rule and no default rule is configured",
                    ));
                    drop.push(name.clone());
                    continue;
                }
            }
        }
        if r.service.is_none() {
            if service_names.len() == 1 {
                r.service = service_names.first().cloned();
            } else {
                diags.push(Diagnostic::error(
                    format!("http.routers.{name}.service"),
                    "the router names no service and the container defines several; set one",
                ));
                drop.push(name.clone());
            }
        }
    }
    for name in drop {
        cfg.http.routers.remove(&name);
    }
    (cfg, diags)
}

/// Whether `name` can be put into a rule's string without changing the rule.
fn safe_in_rule(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Traefik's `normalize` (`provider.Normalize`): the runs of letters and digits (any
/// script), joined by one `-`.
pub fn normalize_name(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests;
