use std::collections::BTreeMap;

use super::*;
use crate::config::{Strategy, TcpServiceConfig};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn target() -> ContainerTarget {
    ContainerTarget {
        name: "whoami".into(),
        address: "127.0.100.1".into(),
        ports: vec![(80, 80)],
        default_rule: Some("Host(`{{ normalize .Name }}.localhost`)".into()),
        default_strategy: Strategy::P2c,
        via: None,
    }
}

#[test]
fn traefik_labels_are_read_for_compatibility() {
    let l = labels(&[
        ("traefik.enable", "true"),
        ("traefik.http.routers.web.rule", "Host(`a.test`)"),
        ("traefik.http.routers.web.entrypoints", "web, websecure"),
        ("traefik.http.routers.web.priority", "10"),
        ("traefik.http.services.app.loadbalancer.server.port", "8080"),
        ("com.amazonaws.ecs.task-arn", "ignored"),
    ]);
    let (c, diags) = parse(&l);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.enable, Some(true));
    let r = &c.config.http.routers["web"];
    assert_eq!(r.rule.as_deref(), Some("Host(`a.test`)"));
    assert_eq!(r.entry_points, vec!["web", "websecure"]);
    assert_eq!(r.priority, Some(10));
    let t = ContainerTarget {
        ports: vec![(8080, 32768), (9000, 32769)],
        ..target()
    };
    let (cfg, d) = container_config(&c, &t);
    assert!(d.is_empty(), "{d:?}");
    // The only service is bound to the router; the container port maps to the host port.
    assert_eq!(cfg.http.routers["web"].service.as_deref(), Some("app"));
    assert_eq!(
        cfg.http.services["app"].load_balancer.servers[0].url,
        "http://127.0.100.1:32768"
    );
}

#[test]
fn berth_wins_over_traefik_and_is_reported() {
    let l = labels(&[
        ("traefik.http.routers.r.rule", "Host(`old.test`)"),
        ("berth.http.routers.r.rule", "Host(`new.test`)"),
        ("traefik.http.routers.r.priority", "5"),
    ]);
    let (c, diags) = parse(&l);
    let r = &c.config.http.routers["r"];
    assert_eq!(r.rule.as_deref(), Some("Host(`new.test`)"));
    assert_eq!(r.priority, Some(5), "non-conflicting traefik keys still apply");
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].key, "berth.http.routers.r.rule");
}

#[test]
fn defaults_follow_traefik() {
    let (c, _) = parse(&labels(&[("berth.enable", "true")]));
    let (cfg, d) = container_config(&c, &target());
    assert!(d.is_empty(), "{d:?}");
    let r = &cfg.http.routers["whoami"];
    assert_eq!(r.rule.as_deref(), Some("Host(`whoami.localhost`)"));
    assert_eq!(r.service.as_deref(), Some("whoami"));
    assert_eq!(
        cfg.http.services["whoami"].load_balancer.servers[0].url,
        "http://127.0.100.1:80"
    );
}

#[test]
fn bad_keys_become_diagnostics_and_the_rest_loads() {
    let l = labels(&[
        ("berth.http.routers.r.rule", "Host(`a.test`)"),
        ("berth.http.routers.r.colour", "blue"),
        ("berth.http.routers.r.priority", "high"),
        ("berth.http.services.s.loadbalancer.server.port", "http"),
        ("berth.http.services.s.loadbalancer.strategy", "wrr"),
        ("berth.enable", "maybe"),
        ("berth.frobnicate", "1"),
        ("berth.mesh.name", "bad name!"),
        ("berth.mesh.allow", "orders, spiffe://berth.local/ecs/prod/billing"),
        ("traefik.udp.routers.u.entrypoints", "dns"),
    ]);
    let (c, diags) = parse(&l);
    let keys: Vec<&str> = diags.iter().map(|d| d.key.as_str()).collect();
    for k in [
        "berth.http.routers.r.colour",
        "berth.http.routers.r.priority",
        "berth.http.services.s.loadbalancer.server.port",
        "berth.enable",
        "berth.frobnicate",
        "berth.mesh.name",
        "traefik.udp",
    ] {
        assert!(keys.contains(&k), "missing diagnostic for {k}: {keys:?}");
    }
    assert_eq!(c.config.http.routers["r"].rule.as_deref(), Some("Host(`a.test`)"));
    assert_eq!(c.config.http.services["s"].load_balancer.strategy, Some(Strategy::Wrr));
    assert_eq!(
        c.mesh.allow.as_deref(),
        Some(
            &[
                "orders".to_string(),
                "spiffe://berth.local/ecs/prod/billing".to_string()
            ][..]
        )
    );
    assert_eq!(c.mesh.name, None);
}

#[test]
fn several_services_need_an_explicit_router_service() {
    let l = labels(&[
        ("berth.http.routers.r.rule", "Host(`a.test`)"),
        ("berth.http.services.a.loadbalancer.server.port", "80"),
        ("berth.http.services.b.loadbalancer.server.port", "80"),
    ]);
    let (c, _) = parse(&l);
    let (cfg, d) = container_config(&c, &target());
    assert!(cfg.http.routers.is_empty());
    assert_eq!(d[0].key, "http.routers.r.service");
}

#[test]
fn several_ports_without_label_take_the_lowest_as_traefik_does() {
    let (c, _) = parse(&labels(&[("berth.enable", "true")]));
    let t = ContainerTarget {
        ports: vec![(4445, 32124), (4444, 32123)],
        ..target()
    };
    let (cfg, d) = container_config(&c, &t);
    assert_eq!(
        cfg.http.services["whoami"].load_balancer.servers[0].url,
        "http://127.0.100.1:32123"
    );
    assert!(d.is_empty(), "{d:?}");
}

/// Rows of Traefik's `pkg/provider/ecs/config_test.go` where Berth once answered otherwise.
#[test]
fn traefiks_ecs_provider_tables() {
    // No port at all: the container gets no router and no service ("port is missing").
    let (c, _) = parse(&labels(&[
        ("traefik.enable", "true"),
        ("traefik.http.middlewares.m.inflightreq.amount", "42"),
    ]));
    let t = ContainerTarget {
        ports: vec![],
        ..target()
    };
    let (cfg, d) = container_config(&c, &t);
    assert!(cfg.http.routers.is_empty() && cfg.http.services.is_empty() && cfg.http.middlewares.is_empty());
    assert!(d.iter().any(|d| d.message.contains("no port")), "{d:?}");
    // Only a TCP service: no HTTP defaults.
    let (c, _) = parse(&labels(&[("traefik.tcp.services.foo.loadbalancer.server.port", "80")]));
    let (cfg, _) = container_config(&c, &target());
    assert!(cfg.http.routers.is_empty() && cfg.http.services.is_empty(), "{cfg:?}");
    assert_eq!(cfg.tcp.services["foo"].servers, vec!["127.0.100.1:80".to_string()]);
    // normalize: runs of non-alphanumerics become one `-`; letters of any script stay.
    assert_eq!(normalize_name("service-my__app-web"), "service-my-app-web");
    assert_eq!(normalize_name("a.-b"), "a-b");
    assert_eq!(normalize_name("café_1"), "café-1");
    // `.Name` in a default rule is the normalized name.
    let t = ContainerTarget {
        name: "Test__x".into(),
        default_rule: Some("Host(`{{ .Name }}.foo.bar`)".into()),
        ..target()
    };
    let (c, _) = parse(&labels(&[("traefik.http.services.s.loadbalancer.server.port", "80")]));
    let (cfg, _) = container_config(&c, &t);
    assert_eq!(
        cfg.http.routers.values().next().unwrap().rule.as_deref(),
        Some("Host(`Test-x.foo.bar`)")
    );
    // traefik.enable takes Go's boolean spellings.
    for (v, want) in [
        ("1", true),
        ("t", true),
        ("TRUE", true),
        ("True", true),
        ("0", false),
        ("F", false),
    ] {
        let (c, d) = parse(&labels(&[("traefik.enable", v)]));
        assert_eq!(c.enable, Some(want), "{v}: {d:?}");
    }
    let (c, d) = parse(&labels(&[("traefik.enable", "yes")]));
    assert!(c.enable.is_none() && !d.is_empty());
}

#[test]
fn middleware_labels() {
    let l = labels(&[
        ("traefik.http.middlewares.strip.stripprefix.prefixes", "/api"),
        ("traefik.http.routers.r.middlewares", "strip, auth@file"),
    ]);
    let (c, diags) = parse(&l);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.config.http.middlewares["strip"].kind, "stripPrefix");
    assert_eq!(c.config.http.routers["r"].middlewares, vec!["strip", "auth@file"]);
}

#[test]
fn conflicting_key_shapes_are_reported() {
    let l = labels(&[
        ("berth.http.routers.r.rule", "Host(`a`)"),
        ("berth.http.routers.r.rule.x", "1"),
    ]);
    let (_, diags) = parse(&l);
    assert!(
        diags.iter().any(|d| d.key == "berth.http.routers.r.rule.x"),
        "{diags:?}"
    );
}

#[test]
fn default_rule_templates_see_the_name_and_the_labels() {
    let rule = |tpl: &str, name: &str, l: &[(&str, &str)]| {
        let t = ContainerTarget {
            name: name.into(),
            default_rule: Some(tpl.into()),
            ..target()
        };
        let (c, _) = parse(&labels(l));
        let (cfg, diags) = container_config(&c, &t);
        (cfg.http.routers.values().next().and_then(|r| r.rule.clone()), diags)
    };
    let port = ("traefik.http.services.s.loadbalancer.server.port", "80");
    assert_eq!(
        rule("Host(`{{ normalize .Name }}`)", "my_app.v2", &[port]).0.unwrap(),
        "Host(`my-app-v2`)"
    );
    assert_eq!(rule("Host(`{{.Name}}.x`)", "a", &[port]).0.unwrap(), "Host(`a.x`)");
    let domain = ("domain", "example.com");
    assert_eq!(
        rule(
            "Host(`{{ .Name }}.{{ index .Labels \"domain\" }}`)",
            "api",
            &[port, domain]
        )
        .0
        .unwrap(),
        "Host(`api.example.com`)"
    );
    // A label that would change the rule's syntax: the router is not served.
    let (r, diags) = rule(
        "Host(`{{ .Labels.domain }}`)",
        "api",
        &[port, ("domain", "a`) || Host(`b")],
    );
    assert!(r.is_none(), "{r:?}");
    assert!(
        diags.iter().any(|d| d.message.contains("cannot be rendered")),
        "{diags:?}"
    );
}

#[test]
fn middleware_labels_parse_into_working_middlewares() {
    let l = labels(&[
        ("traefik.http.middlewares.strip.stripprefix.prefixes", "/api,/v1"),
        (
            "traefik.http.middlewares.hdr.headers.customrequestheaders.X-Team",
            "blue",
        ),
        ("traefik.http.middlewares.hdr.headers.framedeny", "true"),
        (
            "traefik.http.middlewares.auth.basicauth.users",
            "test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/,test2:$apr1$d9hr9HBB$4HxwgUir3HP4EsggP/QNo0",
        ),
        (
            "traefik.http.middlewares.allow.ipallowlist.sourcerange",
            "10.0.0.0/8, 192.168.0.1",
        ),
        ("traefik.http.middlewares.allow.ipallowlist.ipstrategy.depth", "1"),
    ]);
    let (c, diags) = parse(&l);
    assert!(diags.is_empty(), "{diags:?}");
    for (name, kind) in [
        ("strip", "stripPrefix"),
        ("hdr", "headers"),
        ("auth", "basicAuth"),
        ("allow", "ipAllowList"),
    ] {
        let m = &c.config.http.middlewares[name];
        assert_eq!(m.kind, kind);
        crate::middleware::parse(&m.kind, &m.options).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let bad = labels(&[("traefik.http.middlewares.x.stripprefix.prefixs", "/a")]);
    let (c, _) = parse(&bad);
    let m = &c.config.http.middlewares["x"];
    let err = crate::middleware::parse(&m.kind, &m.options).unwrap_err();
    assert!(err.contains("unknown option `prefixs`"), "{err}");
}

#[test]
fn tcp_labels_route_connections_to_the_container() {
    let l = labels(&[
        ("traefik.enable", "true"),
        ("traefik.tcp.routers.pg.rule", "HostSNI(`db.example.com`)"),
        ("traefik.tcp.routers.pg.tls.passthrough", "true"),
        ("traefik.tcp.services.pg.loadbalancer.server.port", "5432"),
    ]);
    let (c, diags) = parse(&l);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        c.config.tcp.routers["pg"].tls,
        Some(config::TcpTls {
            passthrough: true,
            options: None
        })
    );
    let t = ContainerTarget {
        ports: vec![(5432, 32770), (9000, 32771)],
        ..target()
    };
    let (cfg, d) = container_config(&c, &t);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(cfg.tcp.routers["pg"].service.as_deref(), Some("pg"));
    assert_eq!(cfg.tcp.services["pg"].servers, vec!["127.0.100.1:32770"]);
    // TCP only: no default HTTP router appears.
    assert!(cfg.http.routers.is_empty() && cfg.http.services.is_empty());
}

#[test]
fn hostile_label_keys_and_values_disable_only_themselves() {
    let deep = format!("traefik.http.routers.r.{}", vec!["a"; 40_000].join("."));
    let long = format!("traefik.http.routers.{}.rule", "x".repeat(10_000));
    let huge = "H".repeat(MAX_VALUE_BYTES + 1);
    let l = labels(&[
        (deep.as_str(), "1"),
        (long.as_str(), "Host(`a`)"),
        ("traefik.http.routers.big.rule", huge.as_str()),
        ("traefik.http.routers.ok.rule", "Host(`ok.test`)"),
        ("traefik.http.routers.bad\u{a0}name.rule", "Host(`x`)"),
        ("traefik.http.routers..rule", "Host(`x`)"),
    ]);
    let (c, diags) = parse(&l);
    assert_eq!(c.config.http.routers["ok"].rule.as_deref(), Some("Host(`ok.test`)"));
    assert!(!c.config.http.routers.contains_key("big"));
    assert!(diags.iter().any(|d| d.message.contains("segments")), "{diags:?}");
    assert!(
        diags.iter().any(|d| d.message.contains("bytes, more than")),
        "{diags:?}"
    );
    // A diagnostic never echoes a whole hostile key.
    assert!(diags.iter().all(|d| d.key.len() < 200), "{diags:?}");

    let many: BTreeMap<String, String> = (0..=MAX_LABELS)
        .map(|i| (format!("traefik.http.routers.r{i}.rule"), "Host(`a`)".to_string()))
        .collect();
    let (c, diags) = parse(&many);
    assert!(c.config.http.routers.is_empty());
    assert!(diags.iter().any(|d| d.message.contains("more than")), "{diags:?}");
}

#[test]
fn a_label_may_not_make_the_gateway_read_a_file() {
    let l = labels(&[
        ("traefik.http.middlewares.auth.basicauth.usersfile", "/etc/shadow"),
        ("traefik.http.routers.r.rule", "Host(`a`)"),
        ("traefik.http.routers.r.middlewares", "auth"),
    ]);
    let (c, diags) = parse(&l);
    let m = &c.config.http.middlewares["auth"];
    assert!(
        m.refused.as_deref().is_some_and(|w| w.contains("labels may not")),
        "{m:?}"
    );
    assert!(diags.iter().any(|d| d.key.contains("usersFile")), "{diags:?}");
}

#[test]
fn forward_auth_from_labels_reaches_neither_gateway_files_nor_local_services() {
    let refused = |options: &[(&str, &str)]| {
        let mut pairs: Vec<(String, String)> = options
            .iter()
            .map(|(k, v)| (format!("traefik.http.middlewares.fa.forwardauth.{k}"), v.to_string()))
            .collect();
        pairs.push(("traefik.http.routers.r.rule".into(), "Host(`a`)".into()));
        pairs.push(("traefik.http.routers.r.middlewares".into(), "fa".into()));
        let l: BTreeMap<String, String> = pairs.into_iter().collect();
        let (c, _) = parse(&l);
        c.config.http.middlewares["fa"].refused.clone()
    };
    for address in [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8080/api/rawdata",
        "http://[::1]:8080/",
        "http://[fe80::1]/",
        "http://localhost:9000/",
        "http://0.0.0.0/",
        "http://2130706433/",
        "http://2852039166/latest/meta-data/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://LOCALHOST./",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        let why = refused(&[("address", address)]);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("labels may not")),
            "{address}: {why:?}"
        );
    }
    let why = refused(&[
        ("address", "http://auth.internal:9091/"),
        ("tls.key", "/etc/berth/ca.key"),
    ]);
    assert!(why.as_deref().is_some_and(|w| w.contains("tls.key")), "{why:?}");
    // Another service's address, and PEM text in a label, are fine.
    assert_eq!(
        refused(&[("address", "http://authelia.apps.local:9091/api/verify")]),
        None
    );
    assert_eq!(
        refused(&[
            ("address", "https://10.0.3.7/verify"),
            ("tls.ca", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"),
        ]),
        None
    );
}

/// A weighted service from labels names ECS services of its own provider only (the ECS
/// provider then requires each one's consent); its `[N]` indexes are read in number
/// order, as Traefik's label lists are.
#[test]
fn a_label_weighted_service_names_ecs_services_in_index_order() {
    let mut pairs = vec![
        (
            "traefik.http.services.file.weighted.services[0].name",
            "payments@file".to_string(),
        ),
        ("traefik.http.routers.r.rule", "Host(`a`)".to_string()),
        ("traefik.http.routers.r.service", "split".to_string()),
    ];
    let keys: Vec<(String, String)> = (0..12)
        .map(|i| {
            (
                format!("traefik.http.services.split.weighted.services[{i}].name"),
                format!("s{i}"),
            )
        })
        .collect();
    pairs.extend(keys.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let l: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let (c, diags) = parse(&l);
    assert!(!c.config.http.services.contains_key("file"));
    assert!(diags.iter().any(|d| d.message.contains("without `@`")), "{diags:?}");
    let names: Vec<&str> = c.config.http.services["split"]
        .weighted
        .as_ref()
        .unwrap()
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let expected: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn flush_interval_is_met_without_a_warning() {
    let l = labels(&[
        ("traefik.http.services.app.loadbalancer.server.port", "80"),
        (
            "traefik.http.services.app.loadbalancer.responseforwarding.flushinterval",
            "100ms",
        ),
    ]);
    let (_, diags) = parse(&l);
    assert!(!diags.iter().any(|d| d.key.contains("responseforwarding")), "{diags:?}");
    let l = labels(&[
        ("traefik.http.services.app.loadbalancer.server.port", "80"),
        (
            "traefik.http.services.app.loadbalancer.responseforwarding.flushinterval",
            "soon",
        ),
    ]);
    let (_, diags) = parse(&l);
    assert!(
        diags.iter().any(|d| d.key.contains("flushinterval") && d.is_error()),
        "{diags:?}"
    );
}

#[test]
fn labels_point_only_at_the_tasks_own_ports() {
    let l = labels(&[
        (
            "traefik.http.services.a.loadbalancer.server.url",
            "http://127.0.0.1:9900",
        ),
        (
            "traefik.http.services.b.loadbalancer.servers.0.url",
            "mesh://10.0.0.9:15443/ecs/prod/payments",
        ),
        (
            "traefik.tcp.services.t.loadbalancer.servers.0.address",
            "169.254.169.254:80",
        ),
        ("traefik.http.services.c.loadbalancer.server.port", "22"),
        ("traefik.http.routers.r.rule", "Host(`a`)"),
        ("traefik.http.routers.r.service", "c"),
    ]);
    let (c, diags) = parse(&l);
    assert!(
        c.config
            .http
            .services
            .values()
            .all(|s| s.load_balancer.servers.is_empty())
    );
    assert!(c.config.tcp.services.values().all(|s| s.servers.is_empty()));
    assert_eq!(
        diags.iter().filter(|d| d.message.contains("refused")).count(),
        3,
        "{diags:?}"
    );
    // Port 22 is not one the container maps: no server, and a reason.
    let t = ContainerTarget {
        ports: vec![(80, 32768)],
        ..target()
    };
    let (cfg, diags) = container_config(&c, &t);
    assert!(cfg.http.services["c"].load_balancer.servers.is_empty());
    assert!(diags.iter().any(|d| d.message.contains("maps no port 22")), "{diags:?}");
}

#[test]
fn a_task_name_cannot_inject_into_the_default_rule() {
    let t = ContainerTarget {
        name: "x`) || Host(`victim.example".into(),
        ..target()
    };
    let (c, _) = parse(&labels(&[("traefik.enable", "true")]));
    let (cfg, diags) = container_config(&c, &t);
    assert!(
        cfg.http
            .routers
            .values()
            .all(|r| !r.rule.as_deref().unwrap_or_default().contains("victim"))
    );
    assert!(diags.iter().any(|d| d.message.contains("cannot hold")), "{diags:?}");
}

#[test]
fn merging_task_fragments_like_traefik() {
    let frag = |url: &str, rule: &str| {
        let text = format!(
            "http:\n  routers:\n    r: {{ rule: \"{rule}\", service: s }}\n  services:\n    s: {{ loadBalancer: {{ servers: [ {{ url: \"{url}\" }} ] }} }}\n"
        );
        crate::config::parse_file(&text, false, &mut Vec::new()).unwrap()
    };
    let mut m = Merger::default();
    m.add(frag("http://10.0.0.1:80", "Host(`a`)"));
    m.add(frag("http://10.0.0.2:80", "Host(`a`)"));
    m.add(frag("http://10.0.0.2:80", "Host(`a`)"));
    assert!(m.conflicts.is_empty());
    assert_eq!(m.config.http.routers.len(), 1);
    let servers: Vec<&str> = m.config.http.services["s"]
        .load_balancer
        .servers
        .iter()
        .map(|s| s.url.as_str())
        .collect();
    assert_eq!(servers, vec!["http://10.0.0.1:80", "http://10.0.0.2:80"]);
    // A router defined differently by another task is a conflict: dropped and reported.
    m.add(frag("http://10.0.0.3:80", "Host(`b`)"));
    assert!(!m.config.http.routers.contains_key("r"));
    assert!(m.conflicts.contains("router r"));
    m.add(frag("http://10.0.0.4:80", "Host(`a`)"));
    assert!(!m.config.http.routers.contains_key("r"), "a conflicted name stays out");
}

#[test]
fn merging_keeps_one_server_per_url_and_compares_tcp_settings() {
    let http = |url: &str, weight: u32| {
        let text = format!(
            "http:\n  services:\n    s: {{ loadBalancer: {{ servers: [ {{ url: \"{url}\", weight: {weight} }} ] }} }}\n"
        );
        crate::config::parse_file(&text, false, &mut Vec::new()).unwrap()
    };
    let mut m = Merger::default();
    m.add(http("http://10.0.0.1:80", 1));
    m.add(http("http://10.0.0.1:80", 5));
    let servers = &m.config.http.services["s"].load_balancer.servers;
    assert_eq!(servers.len(), 1, "Traefik keeps the first of two same URLs");
    assert_eq!(servers[0].weight, Some(1));
    let tcp = |port: u16, address: &str| {
        let mut c = DynamicConfig::default();
        c.tcp.services.insert(
            "t".into(),
            TcpServiceConfig {
                servers: vec![address.into()],
                server_port: Some(port),
            },
        );
        c
    };
    m.add(tcp(5432, "10.0.0.1:5432"));
    m.add(tcp(5432, "10.0.0.2:5432"));
    assert_eq!(m.config.tcp.services["t"].servers.len(), 2);
    m.add(tcp(5433, "10.0.0.3:5433"));
    assert!(!m.config.tcp.services.contains_key("t"));
    assert!(m.conflicts.contains("tcp service t"));
}

#[test]
fn a_task_behind_its_sidecar_gets_one_mesh_server_per_service() {
    let (c, _) = parse(&labels(&[
        ("traefik.http.routers.web.rule", "Host(`a.test`)"),
        ("traefik.http.services.web.loadbalancer.server.port", "8080"),
        ("traefik.tcp.routers.pg.rule", "HostSNI(`*`)"),
        ("traefik.tcp.services.pg.loadbalancer.server.port", "5432"),
    ]));
    let t = ContainerTarget {
        address: "10.0.0.9".into(),
        ports: vec![(8080, 32768), (5432, 32769)],
        via: Some(Via {
            port: 15443,
            identity: "ecs/prod/payments".into(),
        }),
        ..target()
    };
    let (cfg, d) = container_config(&c, &t);
    assert!(d.is_empty(), "{d:?}");
    let urls: Vec<_> = cfg.http.services["web"]
        .load_balancer
        .servers
        .iter()
        .map(|s| s.url.as_str())
        .collect();
    assert_eq!(urls, ["mesh://10.0.0.9:15443/ecs/prod/payments"]);
    // TCP asks the sidecar for the app's container port, not the host port it maps to.
    assert_eq!(
        cfg.tcp.services["pg"].servers,
        ["mesh://10.0.0.9:15443/ecs/prod/payments#5432"]
    );
    // A port the container does not map is refused, through the sidecar too.
    let (c, _) = parse(&labels(&[("traefik.tcp.services.pg.loadbalancer.server.port", "22")]));
    let (cfg, d) = container_config(&c, &t);
    assert!(cfg.tcp.services["pg"].servers.is_empty());
    assert!(d.iter().any(|d| d.message.contains("maps no port 22")), "{d:?}");
}

#[test]
fn an_ipv6_task_address_goes_in_brackets() {
    let (c, _) = parse(&labels(&[("traefik.tcp.services.pg.loadbalancer.server.port", "5432")]));
    let t = ContainerTarget {
        address: "2600:1f18::7".into(),
        ports: vec![(5432, 5432)],
        ..target()
    };
    let (cfg, _) = container_config(&c, &t);
    assert_eq!(cfg.tcp.services["pg"].servers, ["[2600:1f18::7]:5432"]);
    let (c, _) = parse(&labels(&[("traefik.enable", "true")]));
    let t = ContainerTarget {
        via: Some(Via {
            port: 15443,
            identity: "ecs/prod/web".into(),
        }),
        ..t
    };
    let (cfg, _) = container_config(&c, &t);
    let urls: Vec<_> = cfg
        .http
        .services
        .values()
        .flat_map(|s| s.load_balancer.servers.iter().map(|s| s.url.as_str()))
        .collect();
    assert_eq!(urls, ["mesh://[2600:1f18::7]:15443/ecs/prod/web"]);
}

#[test]
fn rule_syntax_labels_are_kept_and_the_default_rule_is_v3() {
    let l = labels(&[
        ("traefik.http.routers.web.rule", "Host(`a.test`, `b.test`)"),
        ("traefik.http.routers.web.ruleSyntax", "v2"),
        ("berth.http.routers.web.priority", "3"),
        ("traefik.http.routers.other.entrypoints", "web"),
    ]);
    let (c, diags) = parse(&l);
    assert!(diags.is_empty(), "{diags:?}");
    // Merged across the two prefixes without losing the syntax.
    assert_eq!(c.config.http.routers["web"].rule_syntax.as_deref(), Some("v2"));
    assert_eq!(c.config.http.routers["web"].priority, Some(3));
    let (cfg, _) = container_config(&c, &target());
    assert_eq!(cfg.http.routers["web"].rule_syntax.as_deref(), Some("v2"));
    // A router given the default rule reads it as v3, as Traefik does.
    let other = &cfg.http.routers["other"];
    assert_eq!(other.rule.as_deref(), Some("Host(`whoami.localhost`)"));
    assert_eq!(other.rule_syntax.as_deref(), Some("v3"));
}

#[test]
fn sticky_cookie_labels_in_each_traefik_form() {
    use crate::config::{SameSite, StickyCookie};
    // `sticky.cookie=true`: the defaults; v1/v2's `sticky=true` the same.
    for key in [
        "traefik.http.services.app.loadbalancer.sticky.cookie",
        "traefik.http.services.app.loadbalancer.sticky",
    ] {
        let (c, diags) = parse(&labels(&[(key, "true")]));
        assert!(diags.is_empty(), "{key}: {diags:?}");
        assert_eq!(
            c.config.http.services["app"].load_balancer.sticky,
            Some(StickyCookie::default()),
            "{key}"
        );
    }
    let (c, diags) = parse(&labels(&[
        (
            "traefik.http.services.app.loadbalancer.sticky.cookie.name",
            "my session",
        ),
        ("traefik.http.services.app.loadbalancer.sticky.cookie.httponly", "true"),
        (
            "traefik.http.services.app.loadbalancer.sticky.cookie.samesite",
            "Strict",
        ),
        ("traefik.http.services.app.loadbalancer.sticky.cookie.maxage", "-1"),
    ]));
    let sticky = c.config.http.services["app"].load_balancer.sticky.clone().unwrap();
    // A name a cookie cannot have is mended as Traefik mends it, with a warning.
    assert_eq!(sticky.name.as_deref(), Some("my_session"));
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(!diags[0].is_error());
    assert!(sticky.http_only && !sticky.secure);
    assert_eq!(sticky.same_site, Some(SameSite::Strict));
    assert_eq!(sticky.max_age, -1);
    // Off, and wrong: a wrong value refuses the whole service, never half a session.
    let (c, _) = parse(&labels(&[(
        "traefik.http.services.app.loadbalancer.sticky.cookie",
        "false",
    )]));
    assert_eq!(c.config.http.services["app"].load_balancer.sticky, None);
    for (k, v) in [
        (
            "traefik.http.services.app.loadbalancer.sticky.cookie.samesite",
            "sideways",
        ),
        ("traefik.http.services.app.loadbalancer.sticky.cookie.maxage", "soon"),
        (
            "traefik.http.services.app.loadbalancer.sticky.cookie.path",
            "/;Domain=evil",
        ),
        ("traefik.http.services.app.loadbalancer.sticky.cookie.colour", "blue"),
        ("traefik.http.services.app.loadbalancer.sticky", "maybe"),
    ] {
        let (c, diags) = parse(&labels(&[(k, v)]));
        assert!(!c.config.http.services.contains_key("app"), "{k}={v}");
        assert!(diags.iter().any(|d| d.is_error()), "{k}={v}: {diags:?}");
    }
}

/// Labels may name a transport the file provider defines, never define one: a transport
/// carries trust and client keys, which whoever registers a task definition must not set.
#[test]
fn labels_name_servers_transports_but_do_not_define_them() {
    let l = labels(&[
        ("traefik.http.services.app.loadbalancer.server.port", "80"),
        (
            "traefik.http.services.app.loadbalancer.serverstransport",
            "internal-ca@file",
        ),
        ("traefik.http.serverstransports.evil.insecureskipverify", "true"),
    ]);
    let (c, diags) = parse(&l);
    assert_eq!(
        c.config.http.services["app"].load_balancer.servers_transport.as_deref(),
        Some("internal-ca@file")
    );
    assert!(c.config.http.servers_transports.is_empty());
    let refused = diags
        .iter()
        .find(|d| d.key.contains("serverstransports"))
        .expect("{diags:?}");
    assert!(
        refused.is_error() && refused.message.contains("file provider only"),
        "{refused:?}"
    );
}

// The east-west routing policy (`berth.mesh.*`).

#[test]
fn a_split_a_retry_and_a_timeout_are_read_in_traefik_syntax() {
    let (c, diags) = parse(&labels(&[
        ("berth.mesh.weighted.services[1].name", "Orders-Canary"),
        ("berth.mesh.weighted.services[1].weight", "1"),
        ("berth.mesh.weighted.services[0].name", "orders"),
        ("berth.mesh.weighted.services[0].weight", "3"),
        ("berth.mesh.retry.attempts", "4"),
        ("berth.mesh.retry.initialInterval", "50ms"),
        ("traefik.mesh.timeout", "2s"),
    ]));
    assert!(diags.is_empty(), "{diags:?}");
    let p = &c.mesh.policy;
    let split: Vec<(&str, u32)> = p.split.iter().map(|s| (s.name.as_str(), s.weight)).collect();
    assert_eq!(split, vec![("orders", 3), ("orders-canary", 1)]);
    let r = p.retry.as_ref().unwrap();
    assert_eq!((r.attempts, r.initial_interval_ms), (4, 50));
    assert_eq!(p.timeout_ms, Some(2000));
    assert_eq!(p.split_targets("orders").collect::<Vec<_>>(), vec!["orders-canary"]);
    let (c, diags) = parse(&labels(&[("berth.mesh.failover", "orders-dr")]));
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.mesh.policy.failover.as_deref(), Some("orders-dr"));
    assert_eq!(
        c.mesh.policy.routed_targets("orders").collect::<Vec<_>>(),
        vec!["orders-dr"]
    );
    let (c, diags) = parse(&labels(&[
        ("berth.mesh.sticky.cookie.name", "cart"),
        ("berth.mesh.sticky.cookie.secure", "true"),
    ]));
    assert!(diags.is_empty(), "{diags:?}");
    let sticky = c.mesh.policy.sticky.as_ref().unwrap();
    assert_eq!((sticky.name.as_deref(), sticky.secure), (Some("cart"), true));
    let (c, diags) = parse(&labels(&[("berth.mesh.sticky.cookie.maxAge", "soon")]));
    assert_eq!(c.mesh.policy.sticky, None);
    assert!(diags.iter().any(|d| d.message.contains("not sticky")), "{diags:?}");
    for bad in ["orders-dr@file", "", "a b"] {
        let (c, diags) = parse(&labels(&[("berth.mesh.failover", bad)]));
        assert_eq!(c.mesh.policy.failover, None, "{bad}");
        assert!(diags.iter().any(|d| d.key == "berth.mesh.failover"), "{bad}: {diags:?}");
    }
}

#[test]
fn each_bad_part_is_disabled_with_a_diagnostic_and_the_rest_kept() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("berth.mesh.retry.attempts", "0")], "berth.mesh.retry"),
        (
            &[("berth.mesh.retry.attempts", "2"), ("berth.mesh.retry.bogus", "1")],
            "berth.mesh.retry",
        ),
        (
            &[("berth.mesh.retry.attempts", "2"), ("berth.mesh.retry.timeout", "1s")],
            "berth.mesh.retry",
        ),
        (&[("berth.mesh.timeout", "0s")], "berth.mesh.timeout"),
        (&[("berth.mesh.timeout", "2h")], "berth.mesh.timeout"),
        (&[("berth.mesh.timeout", "soon")], "berth.mesh.timeout"),
        (
            &[("berth.mesh.weighted.services[0].name", "a b")],
            "berth.mesh.weighted",
        ),
        (
            &[("berth.mesh.weighted.services[0].name", "x@file")],
            "berth.mesh.weighted",
        ),
        (
            &[("berth.mesh.weighted.services[0].weight", "1")],
            "berth.mesh.weighted",
        ),
        (
            &[
                ("berth.mesh.weighted.services[0].name", "a"),
                ("berth.mesh.weighted.services[0].weight", "0"),
            ],
            "berth.mesh.weighted",
        ),
        (
            &[
                ("berth.mesh.weighted.services[0].name", "a"),
                ("berth.mesh.weighted.services[1].name", "A"),
            ],
            "berth.mesh.weighted",
        ),
        (
            &[
                ("berth.mesh.weighted.services[0].name", "a"),
                ("berth.mesh.weighted.services[0].weight", "9999999"),
            ],
            "berth.mesh.weighted",
        ),
        (&[("berth.mesh.weighted.sticky.cookie", "true")], "berth.mesh.weighted"),
        (&[("berth.mesh.weighted", "a")], "berth.mesh.weighted"),
        (&[("berth.mesh.mirror.service", "a")], "berth.mesh.mirror"),
        (&[("berth.mesh", "a")], "berth.mesh"),
    ];
    for (pairs, key) in cases {
        let mut all = pairs.to_vec();
        all.push(("berth.mesh.name", "orders"));
        if !key.ends_with("retry") {
            all.push(("berth.mesh.retry.attempts", "3"));
        }
        let (c, diags) = parse(&labels(&all));
        assert!(diags.iter().any(|d| d.key.starts_with(key)), "{pairs:?}: {diags:?}");
        assert!(c.mesh.policy.split.is_empty(), "{pairs:?}");
        assert_eq!(c.mesh.name.as_deref(), Some("orders"), "{pairs:?}");
        if !key.ends_with("retry") {
            assert_eq!(c.mesh.policy.retry.as_ref().map(|r| r.attempts), Some(3), "{pairs:?}");
        }
    }
    // Seventeen targets are more than a split takes.
    let many: Vec<(String, String)> = (0..17)
        .map(|i| (format!("berth.mesh.weighted.services[{i}].name"), format!("s{i}")))
        .collect();
    let (c, diags) = parse(&many.into_iter().collect());
    assert!(c.mesh.policy.split.is_empty());
    assert!(diags.iter().any(|d| d.message.contains("more than 16")), "{diags:?}");
}

#[test]
fn transparent_mode_labels_are_read_and_fail_closed() {
    let (c, diags) = parse(&labels(&[
        (
            "berth.mesh.aliases",
            " Orders.Apps.Local:8080, orders.apps.local., orders.internal ",
        ),
        ("berth.mesh.outbound", "mesh-only"),
        ("berth.mesh.ingress", "Permissive"),
    ]));
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(c.mesh.aliases, vec!["orders.apps.local", "orders.internal"]);
    assert_eq!(c.mesh.outbound, crate::labels::Outbound::MeshOnly);
    assert_eq!(c.mesh.ingress, crate::labels::Ingress::Permissive);
    // Unset: App Mesh's defaults (pass through, mTLS only).
    let (c, _) = parse(&labels(&[("berth.mesh.name", "orders")]));
    assert_eq!(c.mesh.outbound, crate::labels::Outbound::AllowAll);
    assert_eq!(c.mesh.ingress, crate::labels::Ingress::Strict);
    // What cannot be read closes the way it configures, with a diagnostic.
    let many = (0..20).map(|i| format!("a{i}.local")).collect::<Vec<_>>().join(",");
    for (key, value, check) in [
        ("berth.mesh.outbound", "sometimes", "mesh-only"),
        ("berth.mesh.ingress", "open", "strict"),
        ("berth.mesh.aliases", "ok.local, bad host", "no alias"),
        ("berth.mesh.aliases", many.as_str(), "more than 16"),
    ] {
        let (c, diags) = parse(&labels(&[(key, value)]));
        assert!(
            diags.iter().any(|d| d.key == key && d.message.contains(check)),
            "{key}={value}: {diags:?}"
        );
        assert_eq!(
            c.mesh.outbound == crate::labels::Outbound::AllowAll,
            key != "berth.mesh.outbound"
        );
        assert_eq!(c.mesh.ingress, crate::labels::Ingress::Strict);
        assert!(c.mesh.aliases.is_empty());
    }
}
