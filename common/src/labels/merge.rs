//! Merging the fragments of one provider: each container's labels give a fragment of the
//! dynamic configuration, and the ECS provider merges them as Traefik does.

use std::collections::BTreeMap;

use crate::config::{DynamicConfig, LoadBalancerConfig};

/// Keep a definition that every fragment gives identically; drop one given differently
/// (and any later copy of it) and record `<what> <name>` as a conflict.
fn merge_identical<T: PartialEq>(
    into: &mut BTreeMap<String, T>,
    from: BTreeMap<String, T>,
    what: &str,
    conflicts: &mut std::collections::BTreeSet<String>,
) {
    for (name, item) in from {
        let key = format!("{what} {name}");
        if conflicts.contains(&key) {
            continue;
        }
        match into.get(&name) {
            Some(existing) if *existing != item => {
                into.remove(&name);
                conflicts.insert(key);
            }
            Some(_) => {}
            None => {
                into.insert(name, item);
            }
        }
    }
}

/// Merges the fragments of one provider (one per container), as Traefik does: identical
/// routers and middlewares are kept once; a name defined differently is dropped and
/// reported; a service defined by several tasks collects all their servers. Linear in the
/// number of fragments: a service of 10,000 tasks is 10,000 fragments.
#[derive(Debug, Default)]
pub struct Merger {
    pub config: DynamicConfig,
    /// `router NAME`, `service NAME`, ...: names defined differently by several fragments.
    pub conflicts: std::collections::BTreeSet<String>,
    /// Server URLs per service, once each (Traefik keeps the first of two same URLs).
    http_servers: std::collections::HashMap<String, std::collections::HashSet<String>>,
    tcp_servers: std::collections::HashMap<String, std::collections::HashSet<String>>,
}

/// The settings of two load balancers, servers aside.
fn same_settings(a: &LoadBalancerConfig, b: &LoadBalancerConfig) -> bool {
    let LoadBalancerConfig {
        servers: _,
        server,
        strategy,
        pass_host_header,
        health_check,
        sticky,
        servers_transport,
    } = a;
    *server == b.server
        && *strategy == b.strategy
        && *pass_host_header == b.pass_host_header
        && *health_check == b.health_check
        && *sticky == b.sticky
        && *servers_transport == b.servers_transport
}

impl Merger {
    pub fn add(&mut self, other: DynamicConfig) {
        let (cfg, conflicts) = (&mut self.config, &mut self.conflicts);
        merge_identical(&mut cfg.tcp.routers, other.tcp.routers, "tcp router", conflicts);
        for (name, s) in other.tcp.services {
            if conflicts.contains(&format!("tcp service {name}")) {
                continue;
            }
            let seen = self.tcp_servers.entry(name.clone()).or_default();
            match cfg.tcp.services.get_mut(&name) {
                // Settings other than the servers must agree, as in Traefik.
                Some(existing) if existing.server_port != s.server_port => {
                    cfg.tcp.services.remove(&name);
                    conflicts.insert(format!("tcp service {name}"));
                }
                Some(existing) => {
                    for server in s.servers {
                        if seen.insert(server.clone()) {
                            existing.servers.push(server);
                        }
                    }
                }
                None => {
                    let mut s = s;
                    s.servers.retain(|server| seen.insert(server.clone()));
                    cfg.tcp.services.insert(name, s);
                }
            }
        }
        merge_identical(&mut cfg.http.routers, other.http.routers, "router", conflicts);
        for (name, mut s) in other.http.services {
            if conflicts.contains(&format!("service {name}")) {
                continue;
            }
            let seen = self.http_servers.entry(name.clone()).or_default();
            match cfg.http.services.get_mut(&name) {
                Some(existing)
                    if !same_settings(&existing.load_balancer, &s.load_balancer) || existing.weighted != s.weighted =>
                {
                    cfg.http.services.remove(&name);
                    conflicts.insert(format!("service {name}"));
                }
                Some(existing) => {
                    for server in s.load_balancer.servers {
                        if seen.insert(server.url.clone()) {
                            existing.load_balancer.servers.push(server);
                        }
                    }
                }
                None => {
                    s.load_balancer.servers.retain(|server| seen.insert(server.url.clone()));
                    cfg.http.services.insert(name, s);
                }
            }
        }
        merge_identical(
            &mut cfg.http.middlewares,
            other.http.middlewares,
            "middleware",
            conflicts,
        );
        merge_identical(
            &mut cfg.tcp.middlewares,
            other.tcp.middlewares,
            "tcp middleware",
            conflicts,
        );
    }
}
