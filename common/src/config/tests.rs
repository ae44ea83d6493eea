use super::*;
use crate::diag::Diagnostic;

const YAML: &str = r#"
http:
  routers:
    api:
      rule: "Host(`api.test`) && PathPrefix(`/v1`)"
      entryPoints: [web]
      service: api
      priority: 42
      middlewares: ["strip"]
      tls: {}
      bogus: 1
  services:
    api:
      loadBalancer:
        passHostHeader: false
        strategy: wrr
        servers:
          - url: "http://127.0.0.1:9001"
            weight: 3
          - url: "http://127.0.0.1:9002"
        healthCheck:
          path: /health
          interval: 5s
  middlewares:
    strip:
      stripPrefix:
        prefixes: ["/v1"]
tls:
  certificates:
    - certFile: /a.crt
      keyFile: /a.key
"#;

#[test]
fn yaml_file_decodes_with_traefik_names() {
    let mut diags = Vec::new();
    let cfg = parse_file(YAML, false, &mut diags).unwrap();
    let r = &cfg.http.routers["api"];
    assert_eq!(r.rule.as_deref(), Some("Host(`api.test`) && PathPrefix(`/v1`)"));
    assert_eq!(r.entry_points, vec!["web"]);
    assert_eq!(r.priority, Some(42));
    assert_eq!(r.middlewares, vec!["strip"]);
    assert!(r.tls.is_some());
    let lb = &cfg.http.services["api"].load_balancer;
    assert_eq!(lb.servers.len(), 2);
    assert_eq!(lb.servers[0].weight, Some(3));
    assert_eq!(lb.pass_host_header, Some(false));
    assert_eq!(lb.strategy, Some(Strategy::Wrr));
    assert_eq!(
        lb.health_check.as_ref().unwrap().interval,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(cfg.http.middlewares["strip"].kind, "stripPrefix");
    assert_eq!(cfg.tls.certificates.len(), 1);
    // The unknown key is reported with its full path, nothing else.
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].key, "http.routers.api.bogus");
}

#[test]
fn toml_file_decodes_the_same() {
    let text = r#"
[http.routers.api]
rule = "Host(`api.test`)"
service = "api"
[[http.services.api.loadBalancer.servers]]
url = "http://127.0.0.1:9001"
"#;
    let mut diags: Vec<Diagnostic> = Vec::new();
    let cfg = parse_file(text, true, &mut diags).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        cfg.http.services["api"].load_balancer.servers[0].url,
        "http://127.0.0.1:9001"
    );
}

#[test]
fn broken_files_are_errors() {
    let mut d = Vec::new();
    assert!(
        parse_file("http: [unclosed", false, &mut d)
            .unwrap_err()
            .contains("invalid YAML")
    );
    assert!(
        parse_file("http = ", true, &mut d)
            .unwrap_err()
            .contains("invalid TOML")
    );
    assert!(parse_file("- a\n- b\n", false, &mut d).is_err());
}

#[test]
fn bad_values_are_reported_not_fatal() {
    let text = r#"
http:
  routers:
    r: { rule: "Path(`/`)", priority: high, service: s }
  services:
    s: { loadBalancer: { strategy: random, servers: [ { weight: 1 } ] } }
  middlewares:
    m: { nosuchThing: {} }
"#;
    let mut d = Vec::new();
    let cfg = parse_file(text, false, &mut d).unwrap();
    let keys: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
    assert!(keys.contains(&"http.routers.r.priority"), "{keys:?}");
    assert!(keys.contains(&"http.services.s.loadBalancer.strategy"), "{keys:?}");
    assert!(keys.contains(&"http.services.s.loadBalancer.servers[0]"), "{keys:?}");
    assert!(keys.contains(&"http.middlewares.m.nosuchThing"), "{keys:?}");
    // The router itself still loads.
    assert_eq!(cfg.http.routers["r"].rule.as_deref(), Some("Path(`/`)"));
    assert!(!cfg.http.middlewares["m"].known);
}

#[test]
fn merging_task_fragments_like_traefik() {
    let frag = |url: &str, rule: &str| {
        let text = format!(
            "http:\n  routers:\n    r: {{ rule: \"{rule}\", service: s }}\n  services:\n    s: {{ loadBalancer: {{ servers: [ {{ url: \"{url}\" }} ] }} }}\n"
        );
        parse_file(&text, false, &mut Vec::new()).unwrap()
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
        parse_file(&text, false, &mut Vec::new()).unwrap()
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
