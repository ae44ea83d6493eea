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
fn http_and_tcp_routers_read_their_shared_keys_alike() {
    let yaml = r#"
http:
  routers:
    a:
      RULE: "Host(`a.test`)"
      entryPoints: "web, websecure"
      Priority: 7
      service: s
      middlewares: [m]
      tls: "true"
    off:
      rule: "Host(`b.test`)"
      tls: "maybe"
tcp:
  routers:
    a:
      RULE: "HostSNI(`a.test`)"
      entryPoints: "web, websecure"
      Priority: 7
      service: s
      middlewares: [m]
      tls: "true"
    off:
      rule: "HostSNI(`b.test`)"
      tls: "maybe"
  services:
    s:
      loadBalancer:
        servers:
          "0": {address: "127.0.0.1:5432"}
          "1": {address: "127.0.0.1:5433"}
"#;
    let mut diags = Vec::new();
    let cfg = parse_file(yaml, false, &mut diags).unwrap();
    let (h, t) = (&cfg.http.routers["a"], &cfg.tcp.routers["a"]);
    assert_eq!(t.rule.as_deref(), Some("HostSNI(`a.test`)"));
    assert_eq!(
        (&h.entry_points, h.priority, &h.service, &h.middlewares),
        (&t.entry_points, t.priority, &t.service, &t.middlewares)
    );
    assert_eq!(h.entry_points, ["web", "websecure"]);
    assert_eq!(h.priority, Some(7));
    assert!(h.tls.is_some() && t.tls.is_some());
    // A `tls` that is neither true, false nor a map is refused the same way for both.
    assert!(cfg.http.routers["off"].tls.is_none() && cfg.tcp.routers["off"].tls.is_none());
    for p in ["http.routers.off.tls", "tcp.routers.off.tls"] {
        assert!(
            diags
                .iter()
                .any(|d| d.key == p && d.message.contains("`maybe` is not true or false")),
            "{p}: {diags:?}"
        );
    }
    // TCP servers may be spelled as a map keyed by index, as HTTP servers may.
    assert_eq!(cfg.tcp.services["s"].servers, ["127.0.0.1:5432", "127.0.0.1:5433"]);
}
