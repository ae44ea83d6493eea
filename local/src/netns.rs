//! A network namespace per task whose definition has a `proxyConfiguration`, as ECS gives
//! such a task (awsvpc) its own network stack and installs the redirect rules its proxy
//! needs. Tasks without one keep the shared loopback of the host.
//!
//! The namespace holds the task's address (from berth-local's loopback range) on one end
//! of a veth pair; the host's end routes that one address to it, so the gateway and the
//! other tasks dial it as before. Inside, the rest of 127.0.0.0/8 leads to the host, and
//! so do the host's own `127.0.0.1` ports the task's environment names (the task metadata
//! endpoint, the gateway's control API, the ECS API, an OTLP collector): policy routing by
//! destination port, since the namespace's own `127.0.0.1` is where ECS's rules redirect
//! to. The rules are those of ECS's App Mesh plugin: the task's outbound TCP to anything
//! not local goes to `ProxyEgressPort`, except the proxy's own (`IgnoredUID`/`GID`) and
//! `EgressIgnoredIPs`/`Ports`; inbound TCP to `AppPorts` goes to `ProxyIngressPort`.
//!
//! Only root can do this; berth-local refuses such a task otherwise, saying why. Every
//! namespace is named `berth-<pid>-<n>` and removed with its task, and those of a
//! berth-local that died are removed by the next one.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use berth_common::proxy_config::ProxyConfig;

/// The host's address as tasks in namespaces see it (the source of the host's
/// connections to them), outside berth-local's task range.
pub(crate) const HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 99, 1);
/// The address berth-local's name service gives every `berth.mesh.aliases` name: a stand-in
/// for a virtual service's DNS answer (the sidecar routes by `Host`, as App Mesh's Envoy did).
pub(crate) const VIRTUAL_SERVICE: Ipv4Addr = Ipv4Addr::new(127, 0, 98, 1);
/// The routing table the host's `127.0.0.1` ports are looked up in, inside a namespace.
const HOST_TABLE: &str = "100";

/// One task's namespace; removed when dropped.
#[derive(Debug)]
pub(crate) struct TaskNetwork {
    pub name: String,
    host_if: String,
}

/// The numeric `user` of a container definition (`uid` or `uid:gid`).
pub(crate) fn parse_user(user: &str) -> Result<(u32, u32), String> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    match (u.trim().parse(), g.trim().parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(format!("user `{user}`: berth-local takes a numeric uid or uid:gid")),
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e} (berth-local needs iproute2 and iptables for a proxyConfiguration)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TaskNetwork {
    /// Make the namespace of task number `n`, at `address`, with ECS's rules for `proxy`;
    /// `host_ports` are the host's `127.0.0.1` ports the task must reach; `aliases` get
    /// [`VIRTUAL_SERVICE`] in its hosts file.
    pub(crate) fn create(
        n: u64,
        address: Ipv4Addr,
        proxy: &ProxyConfig,
        host_ports: &[u16],
        aliases: &[String],
    ) -> Result<TaskNetwork, String> {
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if uid.ok() != Some(0) {
            return Err(
                "a task with a proxyConfiguration needs its own network namespace: run berth-local as root".into(),
            );
        }
        if let Some(p) = host_ports
            .iter()
            .find(|p| [proxy.ingress_port, proxy.egress_port].contains(p))
        {
            return Err(format!(
                "port {p} is both a host service's and the proxyConfiguration's"
            ));
        }
        let pid = std::process::id();
        let net = TaskNetwork {
            name: format!("berth-{pid}-{n}"),
            // Interface names have at most 15 bytes.
            host_if: format!("bl{pid:x}x{n:x}"),
        };
        net.set_up(address, proxy, host_ports, aliases)?;
        Ok(net)
    }

    fn set_up(
        &self,
        address: Ipv4Addr,
        proxy: &ProxyConfig,
        host_ports: &[u16],
        aliases: &[String],
    ) -> Result<(), String> {
        let (ns, hif) = (self.name.as_str(), self.host_if.as_str());
        let a = address.to_string();
        let host = HOST.to_string();
        let dir = format!("/etc/netns/{ns}");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        for alias in aliases {
            hosts.push_str(&format!("{VIRTUAL_SERVICE}\t{alias}\n"));
        }
        std::fs::write(format!("{dir}/hosts"), hosts).map_err(|e| format!("{dir}/hosts: {e}"))?;
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &["link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", ns],
        )?;
        run("ip", &["link", "set", hif, "up"])?;
        // Loopback addresses may cross this link, and what comes in from the task may be
        // forwarded to another task's link (only this interface's traffic: the host's
        // global forwarding setting is left alone).
        for (knob, value) in [("route_localnet", "1"), ("forwarding", "1")] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{hif}/{knob}"), value)
                .map_err(|e| format!("{knob} on {hif}: {e}"))?;
        }
        // `replace`: the route of a namespace just removed may outlive it for a moment.
        run(
            "ip",
            &[
                "route",
                "replace",
                &format!("{a}/32"),
                "dev",
                hif,
                "src",
                &host,
                "table",
                "local",
            ],
        )?;
        let ipn = |args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        ipn(&["link", "set", "lo", "up"])?;
        ipn(&["link", "set", "eth0", "up"])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet",
            ],
        )?;
        ipn(&["addr", "add", &format!("{a}/32"), "dev", "eth0"])?;
        // Every other loopback address is the host's or another task's, through the host
        // (its own 127.0.0.1 and the task's address stay local: their /32 routes are more
        // specific). The host answers for HOST, so frames for the others go to it too.
        ipn(&[
            "route",
            "add",
            &format!("{host}/32"),
            "dev",
            "eth0",
            "src",
            &a,
            "table",
            "local",
        ])?;
        for half in ["127.0.0.0/9", "127.128.0.0/9"] {
            ipn(&[
                "route", "add", half, "via", &host, "dev", "eth0", "src", &a, "table", "local",
            ])?;
        }
        ipn(&[
            "route",
            "add",
            "127.0.0.1/32",
            "via",
            &host,
            "dev",
            "eth0",
            "src",
            &a,
            "table",
            HOST_TABLE,
        ])?;
        for port in host_ports {
            let p = port.to_string();
            ipn(&[
                "rule",
                "add",
                "pref",
                "10",
                "to",
                "127.0.0.1/32",
                "ipproto",
                "tcp",
                "dport",
                &p,
                "table",
                HOST_TABLE,
            ])?;
        }
        ipn(&["rule", "del", "pref", "0", "table", "local"])?;
        ipn(&["rule", "add", "pref", "100", "table", "local"])?;
        for rule in ecs_rules(proxy) {
            let mut args = vec!["netns", "exec", ns, "iptables", "-w", "-t", "nat"];
            args.extend(rule.iter().map(String::as_str));
            run("ip", &args)?;
        }
        Ok(())
    }

    /// The command line prefix that runs a program inside the namespace, as `user`.
    pub(crate) fn prefix(&self, user: Option<(u32, u32)>) -> Vec<String> {
        let mut p: Vec<String> = ["ip", "netns", "exec", self.name.as_str()].map(String::from).to_vec();
        if let Some((u, g)) = user {
            p.extend([
                "setpriv".into(),
                format!("--reuid={u}"),
                format!("--regid={g}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        p
    }
}

impl Drop for TaskNetwork {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// The rules ECS's App Mesh plugin installs for `proxy`, as `iptables -t nat` arguments.
pub(crate) fn ecs_rules(proxy: &ProxyConfig) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let mut rules = vec![s(&["-N", "APPMESH_EGRESS"]), s(&["-N", "APPMESH_INGRESS"])];
    if let Some(uid) = proxy.ignored_uid {
        rules.push(s(&[
            "-A",
            "APPMESH_EGRESS",
            "-m",
            "owner",
            "--uid-owner",
            &uid.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    if let Some(gid) = proxy.ignored_gid {
        rules.push(s(&[
            "-A",
            "APPMESH_EGRESS",
            "-m",
            "owner",
            "--gid-owner",
            &gid.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    // multiport takes at most 15 ports: longer lists are several rules.
    let multiport = |rules: &mut Vec<Vec<String>>, chain: &str, ports: &[u16], then: &[&str]| {
        for chunk in ports.chunks(15) {
            let list = chunk.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let mut rule = s(&["-A", chain, "-p", "tcp", "-m", "multiport", "--dports", &list]);
            rule.extend(s(then));
            rules.push(rule);
        }
    };
    multiport(
        &mut rules,
        "APPMESH_EGRESS",
        &proxy.egress_ignored_ports,
        &["-j", "RETURN"],
    );
    // The agent always leaves the task metadata and instance metadata endpoints alone.
    // IPv6 entries belong to ip6tables, and these namespaces carry IPv4 only.
    let always = ["169.254.170.2", "169.254.169.254"].map(String::from);
    let mut ignored: Vec<&String> = always.iter().collect();
    ignored.extend(proxy.egress_ignored_ips.iter().filter(|b| !always.contains(b)));
    for ip in ignored
        .into_iter()
        .filter(|b| berth_common::proxy_config::is_ipv4_block(b))
    {
        rules.push(s(&["-A", "APPMESH_EGRESS", "-p", "tcp", "-d", ip, "-j", "RETURN"]));
    }
    let egress = proxy.egress_port.to_string();
    rules.push(s(&[
        "-A",
        "APPMESH_EGRESS",
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &egress,
    ]));
    rules.push(s(&[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-m",
        "addrtype",
        "!",
        "--dst-type",
        "LOCAL",
        "-j",
        "APPMESH_EGRESS",
    ]));
    let ingress = proxy.ingress_port.to_string();
    multiport(
        &mut rules,
        "APPMESH_INGRESS",
        &proxy.app_ports,
        &["-j", "REDIRECT", "--to-ports", &ingress],
    );
    rules.push(s(&[
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "-m",
        "addrtype",
        "!",
        "--src-type",
        "LOCAL",
        "-j",
        "APPMESH_INGRESS",
    ]));
    rules
}

/// Remove the namespaces of berth-local processes that are gone (killed before they could).
pub(crate) fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("berth-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // What still runs inside keeps the namespace, and its link and route, alive.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
                let pids = String::from_utf8_lossy(&out.stdout).to_string();
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .filter(|p| *p > 1)
                {
                    let _ = run("kill", &["-KILL", &pid.to_string()]);
                }
            }
            let _ = run("ip", &["netns", "del", &name]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
}

/// The host's `127.0.0.1`/`localhost` ports named in an environment (`http://127.0.0.1:P`,
/// `localhost:P`), which a task in a namespace reaches on the host.
pub(crate) fn host_ports<'a>(env: impl IntoIterator<Item = &'a str>) -> Vec<u16> {
    let mut out = Vec::new();
    for value in env {
        for host in ["127.0.0.1:", "localhost:"] {
            let mut rest = value;
            while let Some(i) = rest.find(host) {
                rest = &rest[i + host.len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(p) = digits.parse::<u16>()
                    && p != 0
                    && !out.contains(&p)
                {
                    out.push(p);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_services_a_task_names_are_found() {
        let env = [
            "http://127.0.0.1:51679/v4/abc",
            "https://127.0.0.1:9443,https://127.0.100.2:9443",
            "localhost:4317",
            "127.0.0.1:",
            "http://127.0.0.1:99999/",
        ];
        assert_eq!(host_ports(env), vec![4317, 9443, 51679]);
    }

    #[test]
    fn ecs_s_rules_skip_the_proxy_and_the_ignored() {
        let p = ProxyConfig::from_properties(
            None,
            "berth-sidecar",
            [
                ("IgnoredUID", "1337"),
                ("ProxyIngressPort", "15000"),
                ("ProxyEgressPort", "15001"),
                ("AppPorts", "9080,9081"),
                ("EgressIgnoredIPs", "169.254.170.2"),
                ("EgressIgnoredPorts", "22"),
            ],
        )
        .unwrap();
        let rules: Vec<String> = ecs_rules(&p).iter().map(|r| r.join(" ")).collect();
        let pos = |needle: &str| rules.iter().position(|r| r.contains(needle)).unwrap();
        // The returns come before the redirect in the chain.
        assert!(pos("--uid-owner 1337 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("--dports 22 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("-d 169.254.170.2 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(rules.contains(
            &"-A APPMESH_INGRESS -p tcp -m multiport --dports 9080,9081 -j REDIRECT --to-ports 15000".into()
        ));
        assert!(rules.contains(&"-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS".into()));
        // The metadata endpoints always; multiport's 15 ports at most per rule.
        assert!(pos("-d 169.254.169.254 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        let mut many = p.clone();
        many.app_ports = (8000..8020).collect();
        many.egress_ignored_ips.push("fd00::/8".into());
        let rules: Vec<String> = ecs_rules(&many).iter().map(|r| r.join(" ")).collect();
        let redirects: Vec<&String> = rules.iter().filter(|r| r.contains("--to-ports 15000")).collect();
        assert_eq!(redirects.len(), 2, "{redirects:?}");
        assert!(redirects[0].contains("8000,") && redirects[0].contains(",8014 ") && redirects[1].contains("8015,"));
        assert!(!rules.iter().any(|r| r.contains("fd00")), "IPv6 is ip6tables'");
    }

    #[test]
    fn users_are_numeric() {
        assert_eq!(parse_user("1337"), Ok((1337, 1337)));
        assert_eq!(parse_user("1337:1400"), Ok((1337, 1400)));
        assert!(parse_user("envoy").is_err());
    }
}
