use std::net::IpAddr;

use http::{HeaderMap, Method};

use super::*;
use crate::config::{self, DynamicConfig};
use crate::rules::RequestView;

fn view(provider: &str, yaml: &str) -> ProviderView {
    let mut diagnostics = Vec::new();
    let config: DynamicConfig = config::parse_file(yaml, false, &mut diagnostics).unwrap();
    ProviderView {
        provider: provider.into(),
        config,
        diagnostics,
        pending: None,
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        entrypoints: vec!["web".into(), "admin".into()],
        version: 1,
        previous: vec![],
        ..BuildOptions::default()
    }
}

fn route<'a>(s: &'a Snapshot, ep: &str, host: &str, path: &str) -> Option<&'a str> {
    let headers = HeaderMap::new();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let req = RequestView {
        host,
        path,
        method: &Method::GET,
        headers: &headers,
        query: None,
        client_ip: ip,
    };
    s.route(ep, false, &req).map(|r| r.name.as_str())
}

const BASE: &str = r#"
http:
  routers:
    catchall: { rule: "PathPrefix(`/`)", service: s }
    api: { rule: "Host(`a.test`) && PathPrefix(`/api`)", service: s }
    host: { rule: "Host(`a.test`)", service: s }
    pinned: { rule: "Path(`/x`)", service: s, priority: 1000, entryPoints: [admin] }
    low: { rule: "Host(`a.test`) && Path(`/low`)", service: s, priority: 1 }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
"#;

#[test]
fn priority_by_rule_length_and_explicit() {
    let s = build(&[view("file", BASE)], &opts());
    assert_eq!(route(&s, "web", "a.test", "/api/x"), Some("api@file"));
    // As in Traefik, the length decides: `PathPrefix(`/`)` (15) beats `Host(`a.test`)` (14).
    assert_eq!(route(&s, "web", "a.test", "/other"), Some("catchall@file"));
    assert_eq!(route(&s, "web", "b.test", "/other"), Some("catchall@file"));
    // Explicit priority 1 loses to every default one.
    assert_eq!(route(&s, "web", "a.test", "/low"), Some("catchall@file"));
    let s2 = build(
        &[view(
            "file",
            &BASE.replace(
                "rule: \"Host(`a.test`)\", service: s",
                "rule: \"Host(`a.test`)\", service: s, priority: 20",
            ),
        )],
        &opts(),
    );
    assert_eq!(route(&s2, "web", "a.test", "/other"), Some("host@file"));
    // Entrypoint scoping: `pinned` only on admin, and wins there by priority.
    assert_eq!(route(&s, "web", "b.test", "/x"), Some("catchall@file"));
    assert_eq!(route(&s, "admin", "b.test", "/x"), Some("pinned@file"));
    assert_eq!(route(&s, "nope", "b.test", "/x"), None);
}

#[test]
fn broken_routers_are_disabled_with_reasons() {
    let yaml = r#"
http:
  routers:
    badrule: { rule: "Host(`a`", service: s }
    nosvc: { rule: "Host(`b`)", service: missing }
    mw: { rule: "Host(`c`)", service: s, middlewares: [auth] }
    mw2: { rule: "Host(`d`)", service: s, middlewares: [nothere] }
    ep: { rule: "Host(`e`)", service: s, entryPoints: [web, ghost] }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
  middlewares:
    auth: { basicAuth: { users: ["u:p"] } }
"#;
    let s = build(&[view("file", yaml)], &opts());
    let r = |n: &str| s.routers.iter().find(|r| r.name == n).unwrap();
    assert_eq!(r("badrule@file").status, Status::Disabled);
    assert!(
        r("badrule@file").errors[0].contains("column"),
        "{:?}",
        r("badrule@file").errors
    );
    assert_eq!(r("nosvc@file").status, Status::Disabled);
    assert_eq!(
        r("mw@file").status,
        Status::Disabled,
        "unimplemented middleware fails closed"
    );
    assert!(r("mw@file").errors[0].contains("fail closed"));
    assert_eq!(r("mw2@file").status, Status::Disabled);
    assert_eq!(
        r("ep@file").status,
        Status::Enabled,
        "served on the entrypoints that exist"
    );
    assert_eq!(route(&s, "web", "c", "/"), None);
    assert_eq!(route(&s, "web", "e", "/"), Some("ep@file"));
    assert!(s.diagnostics.len() >= 5);
}

#[test]
fn cross_provider_references() {
    let file = r#"
http:
  services:
    shared: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
"#;
    let ecs = r#"
http:
  routers:
    r: { rule: "Host(`x`)", service: shared@file }
"#;
    let s = build(&[view("file", file), view("ecs", ecs)], &opts());
    assert_eq!(route(&s, "web", "x", "/"), Some("r@ecs"));
    assert_eq!(s.service("shared@file").unwrap().used_by, vec!["r@ecs"]);
}

#[test]
fn ten_thousand_routers_index_by_host() {
    let mut yaml = String::from("http:\n  routers:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "    r{i}: {{ rule: \"Host(`h{i}.test`) && PathPrefix(`/`)\", service: s }}\n"
        ));
    }
    yaml.push_str("  services:\n    s: { loadBalancer: { servers: [ { url: \"http://127.0.0.1:1\" } ] } }\n");
    let s = build(&[view("file", &yaml)], &opts());
    let table = &s.tables[&("web".to_string(), false)];
    assert_eq!(table.by_host.len(), 10_000);
    assert!(table.any_host.is_empty());
    assert_eq!(route(&s, "web", "h9999.test", "/"), Some("r9999@file"));
    assert_eq!(route(&s, "web", "h10000.test", "/"), None);
}

/// The prefix index must not change which router wins: every router below is tested in
/// priority order against paths that do and do not carry its prefix, beside routers that
/// require none (a method, an `||`, a negation) and host-less ones.
#[test]
fn the_path_prefix_index_keeps_priority_order() {
    const YAML: &str = r#"
http:
  routers:
    deep: { rule: "Host(`a.test`) && PathPrefix(`/api/v2`)", service: s, priority: 50 }
    either: { rule: "Host(`a.test`) && (PathPrefix(`/api`) || PathPrefix(`/web`))", service: s, priority: 40 }
    notadmin: { rule: "Host(`a.test`) && !PathPrefix(`/admin`) && Method(`POST`)", service: s, priority: 35 }
    api: { rule: "Host(`a.test`) && PathPrefix(`/api`)", service: s, priority: 30 }
    exact: { rule: "Path(`/web/index`)", service: s, priority: 45 }
    anyweb: { rule: "PathPrefix(`/web`)", service: s, priority: 20 }
    root: { rule: "Host(`a.test`) && PathPrefix(`/`)", service: s, priority: 10 }
    last: { rule: "PathPrefix(`/`)", service: s, priority: 1 }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
"#;
    let s = build(&[view("file", YAML)], &opts());
    for (host, path, want) in [
        ("a.test", "/api/v2/x", "deep@file"),
        ("a.test", "/api/v1", "either@file"),
        ("a.test", "/web/index", "exact@file"),
        ("a.test", "/web/other", "either@file"),
        ("a.test", "/admin", "root@file"),
        ("b.test", "/web/index", "exact@file"),
        ("b.test", "/web/x", "anyweb@file"),
        ("b.test", "/api/v2", "last@file"),
        ("a.test.", "/api/v2", "deep@file"),
    ] {
        assert_eq!(route(&s, "web", host, path), Some(want), "{host}{path}");
    }
}

/// 1,000 `PathPrefix` routers on one host: each is found, and a path none of them
/// starts with falls through to the host-less catch-all.
#[test]
fn a_thousand_prefixes_on_one_host() {
    let mut yaml = String::from("http:\n  routers:\n");
    for i in 0..1_000 {
        yaml.push_str(&format!(
            "    p{i:04}: {{ rule: \"Host(`one.test`) && PathPrefix(`/p{i:04}`)\", service: s }}\n"
        ));
    }
    yaml.push_str("    any: { rule: \"PathPrefix(`/`)\", service: s, priority: 1 }\n");
    yaml.push_str("  services:\n    s: { loadBalancer: { servers: [ { url: \"http://127.0.0.1:1\" } ] } }\n");
    let s = build(&[view("file", &yaml)], &opts());
    for i in [0, 1, 500, 999] {
        let want = format!("p{i:04}@file");
        assert_eq!(
            route(&s, "web", "one.test", &format!("/p{i:04}/x")),
            Some(want.as_str())
        );
    }
    assert_eq!(route(&s, "web", "one.test", "/p1000"), Some("any@file"));
    assert_eq!(route(&s, "web", "one.test", "/p09"), Some("any@file"));
}

#[test]
fn chains_that_fan_out_or_nest_deep_are_refused_quickly() {
    // a -> 200 x b, b -> 200 x c, c -> 200 x headers: 8 million middlewares if expanded.
    let list = |m: &str| vec![m; 200].join(", ");
    let yaml = format!(
        r#"
http:
  routers:
    fan: {{ rule: "Host(`fan`)", service: s, middlewares: [a] }}
    deep: {{ rule: "Host(`deep`)", service: s, middlewares: [d0] }}
    ok: {{ rule: "Host(`ok`)", service: s, middlewares: [c] }}
  services:
    s: {{ loadBalancer: {{ servers: [ {{ url: "http://127.0.0.1:1" }} ] }} }}
  middlewares:
    a: {{ chain: {{ middlewares: [{b}] }} }}
    b: {{ chain: {{ middlewares: [{c}] }} }}
    c: {{ chain: {{ middlewares: [h] }} }}
    h: {{ headers: {{ customRequestHeaders: {{ X-A: "1" }} }} }}
{deep}
"#,
        b = list("b"),
        c = list("c"),
        deep = (0..12)
            .map(|i| format!("    d{i}: {{ chain: {{ middlewares: [d{}] }} }}\n", i + 1))
            .collect::<String>()
            + "    d12: { headers: { customRequestHeaders: { X-B: \"1\" } } }"
    );
    let t = std::time::Instant::now();
    let opts = opts();
    let s = build(&[view("file", &yaml)], &opts);
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    let r = |n: &str| s.routers.iter().find(|r| r.name == n).unwrap();
    assert_eq!(r("fan@file").status, Status::Disabled, "{:?}", r("fan@file").errors);
    assert_eq!(r("deep@file").status, Status::Disabled);
    assert!(r("deep@file").errors[0].contains("deep"), "{:?}", r("deep@file").errors);
    assert_eq!(r("ok@file").status, Status::Enabled, "{:?}", r("ok@file").errors);
}

#[test]
fn what_cannot_be_applied_keeps_the_router_unserved() {
    let yaml = r#"
http:
  routers:
    opts: { rule: "Host(`o`)", service: s, tls: { options: strict } }
    plain: { rule: "Host(`p`)", service: s, tls: { options: default } }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
tcp:
  routers:
    db: { rule: "HostSNI(`*`)", service: t, middlewares: [allow, gone] }
    guarded: { rule: "HostSNI(`*`)", service: t, middlewares: [allow] }
    db2: { rule: "HostSNI(`db`)", service: t, tls: { options: mtls } }
    db3: { rule: "HostSNI(`*`)", service: t }
  services:
    t: { loadBalancer: { servers: [ { address: "127.0.0.1:5432" } ] } }
  middlewares:
    allow: { ipAllowList: { sourceRange: ["10.0.0.0/8"] } }
"#;
    let s = build(&[view("file", yaml)], &opts());
    let http = |n: &str| s.routers.iter().find(|r| r.name == n).unwrap();
    let tcp = |n: &str| s.tcp_routers.iter().find(|r| r.name == n).unwrap();
    assert_eq!(http("opts@file").status, Status::Disabled);
    assert_eq!(http("plain@file").status, Status::Enabled);
    assert_eq!(
        tcp("db@file").status,
        Status::Disabled,
        "a missing tcp middleware must never be skipped"
    );
    assert_eq!(tcp("guarded@file").status, Status::Enabled);
    assert_eq!(tcp("guarded@file").middleware_specs.len(), 1);
    assert_eq!(tcp("db2@file").status, Status::Disabled);
    assert_eq!(tcp("db3@file").status, Status::Enabled);
}

#[test]
fn rule_syntax_v2_per_router_or_by_default_and_never_guessed() {
    let yaml = r#"
http:
  routers:
    v2: { rule: "Host(`a.test`, `b.test`) && PathPrefix(`/u/{id:[0-9]+}`)", ruleSyntax: v2, service: s }
    guessed: { rule: "Host(`c.test`, `d.test`)", service: s }
    v3: { rule: "Host(`e.test`)", ruleSyntax: v3, service: s }
    odd: { rule: "Host(`f.test`)", ruleSyntax: V2, service: s }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
"#;
    let s = build(&[view("file", yaml)], &opts());
    let r = |s: &Snapshot, n: &str| s.routers.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(
        r(&s, "v2@file").status,
        Status::Enabled,
        "{:?}",
        r(&s, "v2@file").errors
    );
    assert_eq!(route(&s, "web", "b.test", "/u/12/x"), Some("v2@file"));
    assert_eq!(route(&s, "web", "b.test", "/u/ab"), None);
    // Valid only as v2 and not marked: disabled, with the two ways to opt in.
    let g = r(&s, "guessed@file");
    assert_eq!(g.status, Status::Disabled);
    assert!(
        g.errors[0].contains("ruleSyntax: v2") && g.errors[0].contains("--default-rule-syntax v2"),
        "{:?}",
        g.errors
    );
    assert_eq!(route(&s, "web", "c.test", "/"), None);
    assert_eq!(r(&s, "v3@file").status, Status::Enabled);
    // Not exactly `v2`: read as v3, as Traefik reads it (the decoder warns).
    assert_eq!(r(&s, "odd@file").status, Status::Enabled);
    assert!(s.diagnostics.iter().any(|d| d.message.contains("neither v2 nor v3")));

    // With v2 the default, the unmarked router is served, and `ruleSyntax: v3` still wins.
    let o = BuildOptions {
        default_rule_syntax: crate::rules::Syntax::V2,
        ..opts()
    };
    let s = build(&[view("file", yaml)], &o);
    assert_eq!(route(&s, "web", "d.test", "/"), Some("guessed@file"));
    assert_eq!(r(&s, "v3@file").status, Status::Enabled);
    assert_eq!(r(&s, "v2@file").status, Status::Enabled);
}

/// A service names a transport by name (its provider's unless qualified); one that does
/// not exist or cannot be read keeps the service, and its routers, unserved; a transport
/// whose configuration is unchanged is kept from the previous snapshot as it is.
#[test]
fn services_resolve_their_servers_transports() {
    let yaml = r#"
http:
  routers:
    good: { rule: "Host(`good.test`)", service: good }
    missing: { rule: "Host(`missing.test`)", service: missing }
    broken: { rule: "Host(`broken.test`)", service: broken }
    unknown: { rule: "Host(`unknown.test`)", service: unknown }
  services:
    good: { loadBalancer: { serversTransport: t, servers: [ { url: "https://127.0.0.1:1" } ] } }
    missing: { loadBalancer: { serversTransport: nope, servers: [ { url: "https://127.0.0.1:1" } ] } }
    broken: { loadBalancer: { serversTransport: unreadable, servers: [ { url: "https://127.0.0.1:1" } ] } }
    unknown: { loadBalancer: { serversTransport: ciphers, servers: [ { url: "https://127.0.0.1:1" } ] } }
  serversTransports:
    t:
      serverName: backend.internal
      maxIdleConnsPerHost: 7
      forwardingTimeouts: { dialTimeout: 2s, responseHeaderTimeout: 0s, readIdleTimeout: 10s }
    unreadable: { rootCAs: [/nonexistent/ca.pem] }
    ciphers: { spiffe: { ids: ["spiffe://x/y"] } }
    suites: { cipherSuites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256] }
    cbc: { cipherSuites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA] }
"#;
    let s = build(&[view("file", yaml)], &opts());
    let svc = |n: &str| s.services.iter().find(|x| x.name == n).unwrap();
    let t = svc("good@file").transport.clone().expect("resolved");
    assert_eq!(
        t.server_name.as_ref().map(|n| n.to_str().into_owned()).as_deref(),
        Some("backend.internal")
    );
    assert_eq!(t.max_idle_per_host, 7);
    assert_eq!(t.dial_timeout, std::time::Duration::from_secs(2));
    assert_eq!(t.response_header_timeout, None);
    // Traefik's default pingTimeout with the readIdleTimeout given.
    assert_eq!(
        t.h2_keep_alive,
        Some((std::time::Duration::from_secs(10), std::time::Duration::from_secs(15)))
    );
    assert_eq!(route(&s, "web", "good.test", "/"), Some("good@file"));
    // cipherSuites: TLS 1.3's three and the TLS 1.2 suite named; one rustls lacks breaks
    // the transport (the server might speak nothing else).
    let suites = |n: &str| s.transports.iter().find(|t| t.name == n).unwrap();
    let offered = suites("suites@file")
        .spec
        .as_ref()
        .unwrap()
        .cipher_suites
        .clone()
        .unwrap();
    assert_eq!(offered.len(), 4);
    assert!(offered.iter().any(|c| u16::from(c.suite()) == 0xc02f));
    assert!(suites("cbc@file").spec.is_none());
    assert!(suites("cbc@file").errors.join(";").contains("not offered"));
    for (name, says) in [
        ("missing", "`nope@file` does not exist"),
        ("broken", "/nonexistent/ca.pem"),
        ("unknown", "not implemented"),
    ] {
        let e = svc(&format!("{name}@file"));
        assert_eq!(e.status, Status::Disabled, "{name}");
        assert!(e.errors.join(";").contains(says), "{name}: {:?}", e.errors);
        assert_eq!(route(&s, "web", &format!("{name}.test"), "/"), None, "{name}");
    }
    let again = build(
        &[view("file", yaml)],
        &BuildOptions {
            previous_transports: s.transports.clone(),
            ..opts()
        },
    );
    let kept = again.services.iter().find(|x| x.name == "good@file").unwrap();
    assert!(std::sync::Arc::ptr_eq(&t, kept.transport.as_ref().unwrap()));
    // A changed configuration under the same name is a new transport, of a new
    // generation (its servers' health starts afresh).
    let changed = build(
        &[view(
            "file",
            &yaml.replace("maxIdleConnsPerHost: 7", "maxIdleConnsPerHost: 8"),
        )],
        &BuildOptions {
            previous_transports: s.transports.clone(),
            ..opts()
        },
    );
    let fresh = changed.services.iter().find(|x| x.name == "good@file").unwrap();
    let fresh = fresh.transport.as_ref().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&t, fresh));
    assert_eq!(fresh.max_idle_per_host, 8);
    assert_ne!(fresh.generation, t.generation);
}

#[test]
fn tls_options_are_chosen_by_host_and_conflicts_are_not_served() {
    let yaml = r#"
http:
  routers:
    a: { rule: "Host(`a.test`)", service: s, tls: { options: mtls } }
    a-api: { rule: "Host(`a.test`) && PathPrefix(`/api`)", service: s, tls: { options: mtls@file } }
    b: { rule: "Host(`b.test`) || Host(`B2.test`)", service: s, tls: { options: modern } }
    b-other: { rule: "Host(`b.test`)", service: s, tls: {} }
    c: { rule: "Host(`c.test`)", service: s, tls: { options: broken } }
    any: { rule: "PathPrefix(`/`)", service: s, tls: { options: modern } }
    plain: { rule: "PathPrefix(`/`)", service: s, tls: {} }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
tls:
  options:
    mtls: { clientAuth: { clientAuthType: RequireAnyClientCert } }
    modern: { minVersion: VersionTLS13 }
    broken: { minVersion: VersionSSL30 }
"#;
    let s = build(&[view("file", yaml)], &opts());
    let r = |n: &str| s.routers.iter().find(|r| r.name == n).unwrap();
    // The same options under two spellings agree.
    assert_eq!(r("a@file").status, Status::Enabled, "{:?}", r("a@file").errors);
    assert_eq!(r("a-api@file").status, Status::Enabled);
    assert_eq!(r("a@file").tls_options, "mtls@file");
    // b.test is wanted with two option sets: the one that is not the default is refused.
    assert_eq!(r("b@file").status, Status::Disabled);
    assert!(
        r("b@file").errors[0].contains("different TLS options"),
        "{:?}",
        r("b@file").errors
    );
    assert_eq!(r("b-other@file").status, Status::Enabled);
    assert_eq!(r("c@file").status, Status::Disabled);
    assert!(r("c@file").errors[0].contains("broken"), "{:?}", r("c@file").errors);
    assert_eq!(r("any@file").status, Status::Disabled);
    assert!(r("any@file").errors[0].contains("pins no Host"));
    assert_eq!(r("plain@file").status, Status::Enabled);

    let name = |sni: Option<&str>| s.tls_options_for("web", sni).map(|o| o.name.clone());
    assert_eq!(name(Some("a.test")).as_deref(), Some("mtls@file"));
    assert_eq!(
        name(Some("A.TEST.")).as_deref(),
        Some("mtls@file"),
        "names compare as hosts"
    );
    assert_eq!(name(Some("b.test")).as_deref(), Some("default"));
    assert_eq!(
        name(Some("b2.test")).as_deref(),
        Some("default"),
        "b's other host goes with it"
    );
    assert_eq!(name(Some("c.test")), None, "broken options refuse the handshake");
    assert_eq!(name(None).as_deref(), Some("default"));
    assert_eq!(name(Some("elsewhere.test")).as_deref(), Some("default"));
    let broken = s.tls_options.iter().find(|o| o.name == "broken@file").unwrap();
    assert_eq!(broken.status, Status::Disabled);
    assert!(s.diagnostics.iter().any(|d| d.message.contains("VersionSSL30")));
    // Unchanged options are kept, so the gateway keeps their server configuration.
    let again = build(
        &[view("file", yaml)],
        &BuildOptions {
            previous_tls_options: s.tls_options.clone(),
            ..opts()
        },
    );
    let spec = |s: &Snapshot| {
        s.tls_options
            .iter()
            .find(|o| o.name == "mtls@file")
            .and_then(|o| o.spec.clone())
            .unwrap()
    };
    assert!(std::sync::Arc::ptr_eq(&spec(&s), &spec(&again)));
}

#[test]
fn failover_errors_are_read_with_their_bounds() {
    let yaml = r#"
http:
  services:
    a: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
    b: { loadBalancer: { servers: [ { url: "http://127.0.0.1:2" } ] } }
    ok: { failover: { service: a, fallback: b, errors: { status: ["500-503", "429"], maxRequestBodyBytes: 1024 } } }
    unbounded: { failover: { service: a, fallback: b, errors: { status: ["502"] } } }
    bad-status: { failover: { service: a, fallback: b, errors: { status: ["5xx"] } } }
    too-big: { failover: { service: a, fallback: b, errors: { status: ["502"], maxRequestBodyBytes: 99999999999 } } }
"#;
    let s = build(&[view("file", yaml)], &opts());
    let svc = |n: &str| s.services.iter().find(|x| x.name == n);
    let errors = |n: &str| {
        svc(n)
            .and_then(|x| x.weighted.as_ref())
            .and_then(|w| w.failover_errors.clone())
    };
    let ok = errors("ok@file").unwrap();
    assert_eq!(ok.status, vec![(500, 503), (429, 429)]);
    assert_eq!(ok.max_request_body_bytes, 1024);
    assert_eq!(
        errors("unbounded@file").unwrap().max_request_body_bytes,
        crate::middleware::buffering::MAX_BUFFERED
    );
    assert!(svc("bad-status@file").is_none());
    assert!(svc("too-big@file").is_none());
    assert!(s.diagnostics.iter().any(|d| d.message.contains("5xx")));
}

#[test]
fn tcp_routers_that_terminate_tls_carry_their_options() {
    let yaml = r#"
tcp:
  routers:
    pg: { rule: "HostSNI(`pg.test`)", service: t, tls: { options: mtls } }
    plain: { rule: "HostSNI(`p.test`)", service: t, tls: {} }
    through: { rule: "HostSNI(`x.test`)", service: t, tls: { passthrough: true, options: mtls } }
    gone: { rule: "HostSNI(`g.test`)", service: t, tls: { options: nowhere } }
  services:
    t: { loadBalancer: { servers: [ { address: "127.0.0.1:5432" } ] } }
tls:
  options:
    mtls: { clientAuth: { clientAuthType: RequireAnyClientCert } }
"#;
    let s = build(&[view("file", yaml)], &opts());
    let r = |n: &str| s.tcp_routers.iter().find(|r| r.name == n).unwrap();
    let mtls = s.tls_options.iter().find(|o| o.name == "mtls@file").unwrap();
    assert!(std::sync::Arc::ptr_eq(
        r("pg@file").tls_options_spec.as_ref().unwrap(),
        mtls.spec.as_ref().unwrap()
    ));
    assert_eq!(r("plain@file").status, Status::Enabled);
    assert_eq!(r("through@file").status, Status::Disabled);
    assert!(r("through@file").errors[0].contains("passthrough"));
    assert_eq!(r("gone@file").status, Status::Disabled);
}

#[test]
fn routers_without_tls_take_their_entrypoints_options() {
    let yaml = r#"
http:
  routers:
    inherits: { rule: "Host(`a.test`)", service: s, entryPoints: [secure] }
    own: { rule: "Host(`b.test`)", service: s, entryPoints: [secure], tls: {} }
    torn: { rule: "Host(`c.test`)", service: s, entryPoints: [secure, other] }
    half: { rule: "Host(`d.test`)", service: s, entryPoints: [secure, third] }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
tls:
  options:
    mtls: { clientAuth: { clientAuthType: RequireAnyClientCert } }
    modern: { minVersion: VersionTLS13 }
"#;
    let o = BuildOptions {
        entrypoints: vec!["secure".into(), "other".into(), "third".into()],
        tls_entrypoints: vec!["secure".into(), "other".into(), "third".into()],
        entrypoint_tls_options: vec![
            ("secure".into(), "mtls@file".into()),
            ("other".into(), "modern@file".into()),
            ("third".into(), "default".into()),
        ],
        ..opts()
    };
    let s = build(&[view("file", yaml)], &o);
    let r = |n: &str| s.routers.iter().find(|r| r.name == n).unwrap();
    assert_eq!(r("inherits@file").tls_options, "mtls@file");
    assert_eq!(r("own@file").tls_options, "default", "its own tls wins");
    assert_eq!(r("torn@file").status, Status::Disabled);
    assert!(r("torn@file").errors[0].contains("different TLS options"));
    assert_eq!(
        r("half@file").status,
        Status::Disabled,
        "mtls on one, the default on the other"
    );
    assert_eq!(
        s.tls_options_for("secure", Some("a.test")).map(|o| o.name.as_str()),
        Some("mtls@file")
    );
}

#[test]
fn certificate_resolvers_get_the_rule_hosts_or_the_domains_and_bad_names_are_left_out() {
    let yaml = r#"
http:
  routers:
    byrule: { rule: "Host(`a.test`) || Host(`B.test`)", service: s, tls: { certResolver: le } }
    bydomains:
      rule: "Host(`c.test`)"
      service: s
      tls:
        certResolver: le
        domains:
          - { main: "c.test", sans: ["www.c.test"] }
          - { main: "bad name!" }
    fromentrypoint: { rule: "Host(`d.test`)", service: s, entryPoints: [admin], tls: {} }
    nohost: { rule: "PathPrefix(`/`)", service: s, tls: { certResolver: le } }
    plain: { rule: "Host(`e.test`)", service: s }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
"#;
    let v = view("file", yaml);
    assert!(
        v.diagnostics
            .iter()
            .any(|d| d.message.contains("`bad name!` is not a host name")),
        "{:?}",
        v.diagnostics
    );
    let o = BuildOptions {
        entrypoint_cert_resolvers: vec![("admin".into(), "edge".into())],
        ..opts()
    };
    let s = build(&[v], &o);
    let r = |name: &str| s.routers.iter().find(|r| r.name == format!("{name}@file")).unwrap();
    assert_eq!(r("byrule").cert_resolver.as_deref(), Some("le"));
    assert_eq!(
        r("byrule").cert_domains,
        vec![vec!["a.test".to_string(), "b.test".to_string()]]
    );
    assert_eq!(
        r("bydomains").cert_domains,
        vec![vec!["c.test".to_string(), "www.c.test".to_string()]]
    );
    assert_eq!(r("fromentrypoint").cert_resolver.as_deref(), Some("edge"));
    assert_eq!(r("fromentrypoint").cert_domains, vec![vec!["d.test".to_string()]]);
    assert!(r("nohost").cert_domains.is_empty());
    assert!(
        s.diagnostics
            .iter()
            .any(|d| d.message.contains("no certificate to obtain"))
    );
    assert_eq!(r("plain").cert_resolver, None);
}
