//! ECS's `proxyConfiguration` of type `APPMESH`: the task-definition field with which ECS
//! itself (on EC2 and Fargate) redirects a task's TCP traffic through its proxy. App Mesh
//! task definitions carry it for their Envoy; Berth reads the same field so that swapping
//! Envoy for `berth-sidecar` changes nothing else. One model, parsed here once: the
//! gateway reads it from the task definition and hands it to the task's sidecar with its
//! certificate, the sidecar opens its transparent listeners from it, and berth-local
//! installs the redirect rules ECS would.
//!
//! The parse is bounded and total: a field ECS would reject is an error naming the field.

use serde::{Deserialize, Serialize};

/// The only type ECS knows.
pub const APPMESH: &str = "APPMESH";
/// At most this many ports or addresses in one list (ECS's own limit is lower in practice).
const MAX_LIST: usize = 64;
/// The longest property value taken.
const MAX_VALUE: usize = 4096;
/// At most this many properties.
const MAX_PROPERTIES: usize = 16;

/// A task's transparent-proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// The container that is the proxy (`containerName`).
    pub container_name: String,
    /// `IgnoredUID`: traffic of processes running as this user is never redirected (the
    /// proxy's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_uid: Option<u32>,
    /// `IgnoredGID`: the same, by group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_gid: Option<u32>,
    /// `ProxyIngressPort`: where inbound connections to [`ProxyConfig::app_ports`] are
    /// redirected.
    pub ingress_port: u16,
    /// `ProxyEgressPort`: where the task's outbound TCP is redirected.
    pub egress_port: u16,
    /// `AppPorts`: the app's ports whose inbound traffic goes through the proxy.
    pub app_ports: Vec<u16>,
    /// `EgressIgnoredIPs`: destinations (addresses or CIDR blocks) never redirected.
    #[serde(default)]
    pub egress_ignored_ips: Vec<String>,
    /// `EgressIgnoredPorts`: destination ports never redirected.
    #[serde(default)]
    pub egress_ignored_ports: Vec<u16>,
}

/// The JSON form ECS's API uses (`RegisterTaskDefinition`, `DescribeTaskDefinition`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    container_name: String,
    #[serde(default)]
    properties: Vec<WireProperty>,
}

#[derive(Deserialize)]
struct WireProperty {
    name: String,
    value: String,
}

impl ProxyConfig {
    /// From the API's JSON form, `{"type": "APPMESH", "containerName": ..., "properties":
    /// [{"name": ..., "value": ...}]}`.
    pub fn from_json(json: &str) -> Result<ProxyConfig, String> {
        if json.len() > MAX_PROPERTIES * MAX_VALUE {
            return Err(format!(
                "proxyConfiguration: {} bytes, more than can be valid",
                json.len()
            ));
        }
        let w: Wire = serde_json::from_str(json).map_err(|e| format!("proxyConfiguration: {e}"))?;
        ProxyConfig::from_properties(
            w.kind.as_deref(),
            &w.container_name,
            w.properties.iter().map(|p| (p.name.as_str(), p.value.as_str())),
        )
    }

    /// From the type, the proxy container's name and the name/value properties.
    pub fn from_properties<'a>(
        kind: Option<&str>,
        container_name: &str,
        properties: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ProxyConfig, String> {
        if let Some(k) = kind
            && k != APPMESH
        {
            return Err(format!(
                "proxyConfiguration.type `{}`: only APPMESH is known",
                bounded(k)
            ));
        }
        let container_name = container_name.trim();
        if container_name.is_empty() || container_name.len() > 255 {
            return Err("proxyConfiguration.containerName: 1 to 255 characters".into());
        }
        let mut cfg = ProxyConfig {
            container_name: container_name.to_string(),
            ignored_uid: None,
            ignored_gid: None,
            ingress_port: 0,
            egress_port: 0,
            app_ports: Vec::new(),
            egress_ignored_ips: Vec::new(),
            egress_ignored_ports: Vec::new(),
        };
        let (mut ingress, mut egress, mut apps) = (None, None, None);
        for (i, (name, value)) in properties.into_iter().enumerate() {
            if i >= MAX_PROPERTIES {
                return Err(format!("proxyConfiguration: more than {MAX_PROPERTIES} properties"));
            }
            if value.len() > MAX_VALUE {
                return Err(format!(
                    "proxyConfiguration.{}: longer than {MAX_VALUE} bytes",
                    bounded(name)
                ));
            }
            let value = value.trim();
            let field = |what: &str| format!("proxyConfiguration.{name}: `{}` is not {what}", bounded(value));
            match name {
                "IgnoredUID" => cfg.ignored_uid = Some(value.parse().map_err(|_| field("a user id"))?),
                "IgnoredGID" => cfg.ignored_gid = Some(value.parse().map_err(|_| field("a group id"))?),
                "ProxyIngressPort" => ingress = Some(port(value).ok_or_else(|| field("a port"))?),
                "ProxyEgressPort" => egress = Some(port(value).ok_or_else(|| field("a port"))?),
                "AppPorts" => apps = Some(ports(value).ok_or_else(|| field("a comma-separated list of ports"))?),
                // ECS takes these empty (as if absent).
                "EgressIgnoredPorts" if value.is_empty() => {}
                "EgressIgnoredIPs" if value.is_empty() => {}
                "EgressIgnoredPorts" => {
                    cfg.egress_ignored_ports = ports(value).ok_or_else(|| field("a comma-separated list of ports"))?
                }
                "EgressIgnoredIPs" => {
                    cfg.egress_ignored_ips =
                        ips(value).ok_or_else(|| field("a comma-separated list of IP addresses or CIDR blocks"))?
                }
                other => return Err(format!("proxyConfiguration: unknown property `{}`", bounded(other))),
            }
        }
        let missing = |what: &str| format!("proxyConfiguration: {what} is required");
        cfg.ingress_port = ingress.ok_or_else(|| missing("ProxyIngressPort"))?;
        cfg.egress_port = egress.ok_or_else(|| missing("ProxyEgressPort"))?;
        cfg.app_ports = apps.ok_or_else(|| missing("AppPorts"))?;
        if cfg.ignored_uid.is_none() && cfg.ignored_gid.is_none() {
            return Err(missing("IgnoredUID or IgnoredGID"));
        }
        if cfg.ingress_port == cfg.egress_port {
            return Err("proxyConfiguration: ProxyIngressPort and ProxyEgressPort must differ".into());
        }
        if cfg.app_ports.contains(&cfg.ingress_port) || cfg.app_ports.contains(&cfg.egress_port) {
            return Err("proxyConfiguration: AppPorts must not name the proxy's own ports".into());
        }
        Ok(cfg)
    }

    /// Whether connections to `addr` leave the task unredirected (`EgressIgnoredIPs`,
    /// `EgressIgnoredPorts`).
    pub fn egress_ignored(&self, addr: std::net::SocketAddr) -> bool {
        self.egress_ignored_ports.contains(&addr.port())
            || self.egress_ignored_ips.iter().any(|block| in_block(addr.ip(), block))
    }
}

/// A value cut for an error message.
fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

fn port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

fn ports(s: &str) -> Option<Vec<u16>> {
    let out: Vec<u16> = s.split(',').map(|p| port(p.trim())).collect::<Option<_>>()?;
    let mut seen = out.clone();
    seen.sort_unstable();
    seen.dedup();
    (!out.is_empty() && out.len() <= MAX_LIST && seen.len() == out.len()).then_some(out)
}

fn ips(s: &str) -> Option<Vec<String>> {
    let out: Vec<String> = s
        .split(',')
        .map(str::trim)
        .map(|b| parse_block(b).map(|_| b.to_string()))
        .collect::<Option<_>>()?;
    (!out.is_empty() && out.len() <= MAX_LIST).then_some(out)
}

/// An IPv4 or IPv6 address or CIDR block, as (network, prefix length).
fn parse_block(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}

fn in_block(ip: std::net::IpAddr, block: &str) -> bool {
    use std::net::IpAddr::{V4, V6};
    let Some((net, len)) = parse_block(block) else {
        return false;
    };
    let (ip, net, bits) = match (ip.to_canonical(), net) {
        (V4(ip), V4(net)) => (u128::from(u32::from(ip)), u128::from(u32::from(net)), 32),
        (V6(ip), V6(net)) => (u128::from(ip), u128::from(net), 128),
        _ => return false,
    };
    let mask = if len == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(len))) >> (128 - bits)
    };
    ip & mask == net & mask
}

/// Whether `block` is an IPv4 one (berth-local's namespaces carry IPv4 only).
pub fn is_ipv4_block(block: &str) -> bool {
    parse_block(block).is_some_and(|(ip, _)| ip.is_ipv4())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The App Mesh documentation's example.
    const APP_MESH: &str = r#"{"type":"APPMESH","containerName":"envoy","properties":[
        {"name":"IgnoredUID","value":"1337"},{"name":"ProxyIngressPort","value":"15000"},
        {"name":"ProxyEgressPort","value":"15001"},{"name":"AppPorts","value":"9080"},
        {"name":"EgressIgnoredIPs","value":"169.254.170.2,169.254.169.254"}]}"#;

    #[test]
    fn app_mesh_s_example_parses() {
        let c = ProxyConfig::from_json(APP_MESH).unwrap();
        assert_eq!(c.container_name, "envoy");
        assert_eq!((c.ignored_uid, c.ignored_gid), (Some(1337), None));
        assert_eq!((c.ingress_port, c.egress_port), (15000, 15001));
        assert_eq!(c.app_ports, vec![9080]);
        assert_eq!(c.egress_ignored_ips, vec!["169.254.170.2", "169.254.169.254"]);
        assert!(c.egress_ignored("169.254.170.2:80".parse().unwrap()));
        assert!(!c.egress_ignored("169.254.170.3:80".parse().unwrap()));
        // The control API carries it in its own form, both ways.
        let again: ProxyConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn blocks_and_ports_are_matched() {
        let c = ProxyConfig::from_properties(
            None,
            "berth-sidecar",
            [
                ("IgnoredGID", "1337"),
                ("ProxyIngressPort", "15000"),
                ("ProxyEgressPort", "15001"),
                ("AppPorts", "8080, 9090"),
                ("EgressIgnoredIPs", "10.0.0.0/8,0.0.0.0/0"),
                ("EgressIgnoredPorts", "22"),
            ],
        )
        .unwrap();
        assert_eq!(c.app_ports, vec![8080, 9090]);
        assert!(
            c.egress_ignored("192.168.1.1:80".parse().unwrap()),
            "0.0.0.0/0 covers all"
        );
        assert!(c.egress_ignored("[::1]:22".parse().unwrap()), "the port alone");
        assert!(
            !c.egress_ignored("[::1]:80".parse().unwrap()),
            "IPv4 blocks never match IPv6"
        );
    }

    #[test]
    fn what_ecs_would_reject_is_an_error_naming_the_field() {
        let base = [
            ("IgnoredUID", "1337"),
            ("ProxyIngressPort", "15000"),
            ("ProxyEgressPort", "15001"),
            ("AppPorts", "9080"),
        ];
        let with = |k: &str, v: &str| {
            let mut p: Vec<(&str, &str)> = base.iter().copied().filter(|(n, _)| *n != k).collect();
            if !v.is_empty() {
                p.push((k, v));
            }
            ProxyConfig::from_properties(Some("APPMESH"), "envoy", p.iter().map(|(a, b)| (*a, *b)))
        };
        assert!(with("AppPorts", "").unwrap_err().contains("AppPorts is required"));
        assert!(with("AppPorts", "9080,9080").unwrap_err().contains("AppPorts"));
        assert!(with("AppPorts", "15000").unwrap_err().contains("own ports"));
        assert!(with("ProxyEgressPort", "15000").unwrap_err().contains("differ"));
        assert!(with("ProxyIngressPort", "0").unwrap_err().contains("ProxyIngressPort"));
        assert!(with("ProxyIngressPort", "70000").unwrap_err().contains("not a port"));
        assert!(with("IgnoredUID", "").unwrap_err().contains("IgnoredUID or IgnoredGID"));
        assert!(with("IgnoredUID", "-1").unwrap_err().contains("user id"));
        assert!(with("EgressIgnoredIPs", "10.0.0.0/33").unwrap_err().contains("CIDR"));
        assert!(with("EgressIgnoredIPs", "fd00::/129").unwrap_err().contains("CIDR"));
        assert!(
            with("EgressIgnoredIPs", "10.0.0.0/8,nowhere")
                .unwrap_err()
                .contains("CIDR")
        );
        // ECS takes the ignore lists empty, and IPv6 in them.
        assert!(with("EgressIgnoredIPs", " ").unwrap().egress_ignored_ips.is_empty());
        assert!(with("EgressIgnoredPorts", " ").unwrap().egress_ignored_ports.is_empty());
        let v6 = with("EgressIgnoredIPs", "fd00:ec2::254,fd00::/8").unwrap();
        assert!(v6.egress_ignored("[fd00:ec2::254]:80".parse().unwrap()));
        assert!(v6.egress_ignored("[fd12::1]:80".parse().unwrap()));
        assert!(!v6.egress_ignored("[fe80::1]:80".parse().unwrap()));
        assert!(!v6.egress_ignored("10.0.0.1:80".parse().unwrap()));
        assert!(with("Surprise", "1").unwrap_err().contains("unknown property"));
        let long = "9".repeat(10_000);
        assert!(with("AppPorts", &long).unwrap_err().contains("longer than"));
        let many = (1..=65).map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        assert!(with("AppPorts", &many).unwrap_err().contains("AppPorts"));
        assert!(
            ProxyConfig::from_properties(Some("ISTIO"), "envoy", base)
                .unwrap_err()
                .contains("APPMESH")
        );
        assert!(
            ProxyConfig::from_properties(None, " ", base)
                .unwrap_err()
                .contains("containerName")
        );
        assert!(ProxyConfig::from_json("{").is_err());
        assert!(
            ProxyConfig::from_json(&"x".repeat(100_000))
                .unwrap_err()
                .contains("bytes")
        );
    }
}
