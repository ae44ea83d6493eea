//! `serversTransports` in Traefik's file syntax, against HTTPS backends nobody here wrote
//! (Python's `ssl` and `http.server`), over real sockets: whom the backend's certificate
//! must chain to (`rootCAs`), the name sent and checked (`serverName`), skipping the
//! check, a required URI SAN (`peerCertURI`), client certificates, HTTP/1.1 only
//! (`disableHTTP2`), the response-header timeout, connection reuse, and failing closed
//! when a transport is missing or cannot be read.
#![allow(clippy::unwrap_used)]

use berth_common::test_util::{get, http1, metric};
use berth_e2e::{PythonServer, start};
use http::StatusCode;
use rcgen::SanType;

/// The backend's certificate: for `backend.internal` and a SPIFFE URI, not for
/// 127.0.0.1 (so only `serverName` or skipping the check makes the name right).
fn sans() -> Vec<SanType> {
    vec![
        SanType::DnsName("backend.internal".try_into().unwrap()),
        SanType::URI("spiffe://example.org/backend".try_into().unwrap()),
    ]
}

fn router(name: &str, service: &str) -> String {
    format!("    {name}: {{ rule: \"Host(`{name}.test`)\", service: {service} }}\n")
}

fn https_service(name: &str, port: u16, transport: Option<&str>) -> String {
    let t = transport
        .map(|t| format!("        serversTransport: {t}\n"))
        .unwrap_or_default();
    format!("    {name}:\n      loadBalancer:\n{t}        servers:\n          - url: \"https://127.0.0.1:{port}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_transports_decide_trust_names_client_certificates_and_timeouts() {
    let dir = berth_e2e::temp_dir("transports");
    berth_common::test_util::write_pki(&dir, sans(), "berth-gateway");
    let file = |n: &str| dir.join(n).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let plain = PythonServer::start("tls_backend.py", &[&cert, &key]);
    let mtls = PythonServer::start("tls_backend.py", &[&cert, &key, "--client-ca", &ca]);
    let h2 = PythonServer::start("tls_backend.py", &[&cert, &key, "--alpn", "h2,http/1.1"]);
    let aes256 = PythonServer::start(
        "tls_backend.py",
        &[&cert, &key, "--tls12-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
    );

    // (router, backend port, transport or none)
    let cases: [(&str, u16, Option<&str>); 18] = [
        ("default", plain.port, None),
        ("roots", plain.port, Some("private")),
        ("noname", plain.port, Some("roots-only")),
        ("insecure", plain.port, Some("insecure")),
        ("uri", plain.port, Some("uri")),
        ("wronguri", plain.port, Some("wrong-uri")),
        ("urinoname", plain.port, Some("uri-no-name")),
        ("uriskip", plain.port, Some("uri-skip")),
        ("mtls", mtls.port, Some("client-cert")),
        ("nocert", mtls.port, Some("private")),
        ("h2", h2.port, Some("insecure")),
        ("h1only", h2.port, Some("http1")),
        ("suite", aes256.port, Some("aes256")),
        ("othersuite", aes256.port, Some("aes128")),
        ("slow", plain.port, Some("impatient")),
        ("noreuse", plain.port, Some("no-reuse")),
        ("missing", plain.port, Some("nope")),
        ("broken", plain.port, Some("unreadable")),
    ];
    let mut yaml = String::from("http:\n  routers:\n");
    for (name, _, _) in &cases {
        yaml += &router(name, name);
    }
    yaml += "  services:\n";
    for (name, port, t) in &cases {
        yaml += &https_service(name, *port, *t);
    }
    let client_pem = std::fs::read_to_string(dir.join("client.pem")).unwrap();
    let indented = |pem: &str| pem.lines().map(|l| format!("            {l}\n")).collect::<String>();
    yaml += &format!(
        r#"  serversTransports:
    private: {{ rootCAs: ["{ca}"], serverName: backend.internal }}
    roots-only: {{ rootCAs: ["{ca}"] }}
    insecure: {{ insecureSkipVerify: true }}
    uri: {{ rootCAs: ["{ca}"], serverName: backend.internal, peerCertURI: "SPIFFE://example.org/backend" }}
    wrong-uri: {{ rootCAs: ["{ca}"], serverName: backend.internal, peerCertURI: "spiffe://example.org/other" }}
    uri-no-name: {{ rootCAs: ["{ca}"], peerCertURI: "spiffe://example.org/backend" }}
    uri-skip: {{ rootCAs: ["{ca}"], insecureSkipVerify: true, peerCertURI: "spiffe://example.org/backend" }}
    http1: {{ insecureSkipVerify: true, disableHTTP2: true }}
    aes256: {{ insecureSkipVerify: true, cipherSuites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384] }}
    aes128: {{ insecureSkipVerify: true, cipherSuites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256] }}
    impatient:
      insecureSkipVerify: true
      forwardingTimeouts: {{ responseHeaderTimeout: 300ms }}
    no-reuse: {{ insecureSkipVerify: true, maxIdleConnsPerHost: -1 }}
    unreadable: {{ rootCAs: ["{missing}"] }}
    client-cert:
      rootCAs: ["{ca}"]
      serverName: backend.internal
      certificates:
        - keyFile: "{client_key}"
          certFile: |
{client_pem}"#,
        missing = file("no-such-ca.pem"),
        client_key = file("client.key"),
        client_pem = indented(&client_pem),
    );
    let gw = start(&yaml, &[]).await;
    let ask = |host: &str, path: &str| http1(gw.web(), get(&format!("{host}.test"), path));
    let seen = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();

    // The gateway's own trust does not know the backend's CA: 502.
    assert_eq!(ask("default", "/").await.status, StatusCode::BAD_GATEWAY);
    // rootCAs and serverName: verified against the CA, under the name sent in SNI.
    let r = ask("roots", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(seen(&r.body)["sni"], "backend.internal");
    // The same CA without serverName: the certificate is not for 127.0.0.1.
    assert_eq!(ask("noname", "/").await.status, StatusCode::BAD_GATEWAY);
    // insecureSkipVerify takes the certificate as it is; no SNI for an IP address.
    let r = ask("insecure", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(seen(&r.body)["sni"], serde_json::Value::Null);
    // peerCertURI: the URI SAN is required (without case) beside the usual checks; the
    // name goes unchecked only with insecureSkipVerify.
    assert_eq!(ask("uri", "/").await.status, StatusCode::OK);
    assert_eq!(ask("wronguri", "/").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(ask("urinoname", "/").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(ask("uriskip", "/").await.status, StatusCode::OK);
    // A client certificate (its certFile given as PEM text) for a backend that wants
    // one; without it the backend refuses the handshake.
    let r = ask("mtls", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(seen(&r.body)["peer_cn"], "berth-gateway");
    assert_eq!(ask("nocert", "/").await.status, StatusCode::BAD_GATEWAY);
    // The backend prefers h2, which http.server cannot speak: only disableHTTP2 makes
    // the gateway offer HTTP/1.1 alone.
    assert_eq!(ask("h2", "/").await.status, StatusCode::BAD_GATEWAY);
    let r = ask("h1only", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(seen(&r.body)["alpn"], "http/1.1");
    // cipherSuites: a TLS 1.2 server with one suite is reached only with that one.
    assert_eq!(ask("suite", "/").await.status, StatusCode::OK);
    assert_eq!(ask("othersuite", "/").await.status, StatusCode::BAD_GATEWAY);
    // responseHeaderTimeout: a backend a second late is a 504 after 300 ms; the gateway
    // has no timeout of its own, so the same request elsewhere waits and succeeds.
    let t = std::time::Instant::now();
    assert_eq!(ask("slow", "/sleep").await.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(t.elapsed() < std::time::Duration::from_millis(900), "{:?}", t.elapsed());
    assert_eq!(ask("insecure", "/sleep").await.status, StatusCode::OK);

    // Keep-alive: a transport keeps its connection; maxIdleConnsPerHost < 0 keeps none.
    let opened = || async {
        let m = http1(gw.admin(), get("admin", "/metrics")).await.body;
        metric(&m, "berth_upstream_connections_opened_total{pool=\"http\"}")
    };
    let mut new_connections = Vec::new();
    for host in ["insecure", "noreuse"] {
        ask(host, "/").await;
        let before = opened().await;
        for _ in 0..5 {
            assert_eq!(ask(host, "/").await.status, StatusCode::OK);
        }
        new_connections.push(opened().await - before);
    }
    assert!(new_connections[0] <= 1, "kept alive: {new_connections:?}");
    assert_eq!(new_connections[1], 5, "one connection per request");

    // A transport that does not exist, or cannot be read: the service is not served.
    for (name, says) in [("missing", "does not exist"), ("broken", "no-such-ca.pem")] {
        assert_eq!(ask(name, "/").await.status, StatusCode::NOT_FOUND, "{name}");
        let svc = gw.admin_json(&format!("/api/http/services/{name}@file")).await;
        assert_eq!(svc["status"], "disabled", "{name}: {svc}");
        assert!(svc["error"].to_string().contains(says), "{name}: {svc}");
    }
    let svc = gw.admin_json("/api/http/services/roots@file").await;
    assert_eq!(svc["loadBalancer"]["serversTransport"], "private");
    let raw = gw.admin_json("/api/rawdata").await;
    let t = &raw["serversTransports"]["private@file"];
    assert_eq!(t["status"], "enabled", "{raw}");
    assert_eq!(t["usedBy"], serde_json::json!(["nocert@file", "roots@file"]));
    assert_eq!(raw["serversTransports"]["unreadable@file"]["status"], "disabled");
    let diags = gw.admin_json("/api/diagnostics").await.to_string();
    assert!(
        diags.contains("serversTransports.insecure.insecureSkipVerify"),
        "{diags}"
    );
    assert!(!diags.contains("uri-skip.insecureSkipVerify"), "{diags}");

    // The gateway's own pools skip the check only when told to (Traefik's static
    // `serversTransport.insecureSkipVerify`); a service's transport still decides for it.
    let lax = start(&yaml, &["--upstream-insecure-skip-verify"]).await;
    let ask = |host: &str| http1(lax.web(), get(&format!("{host}.test"), "/"));
    assert_eq!(ask("default").await.status, StatusCode::OK);
    assert_eq!(ask("noname").await.status, StatusCode::BAD_GATEWAY);
}
