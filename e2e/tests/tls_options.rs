//! Traefik's `tls.options` and `passTLSClientCert`, driven by clients nobody here wrote
//! (curl, `openssl s_client`): client certificates required and verified per host, passed
//! to the backend in Traefik's headers; versions, TLS 1.2 suites, ALPN and strict SNI
//! per option set; 421 for a request whose Host wants other options than its handshake
//! had; broken options refuse their hosts' handshakes and disable their routers.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use berth_common::test_util::{Backend, Proto, self_signed, write_pki};
use berth_e2e::{args, service, start, temp_dir, tool};

/// `curl` to `https://<host>:<port>/` through the gateway at 127.0.0.1, trusting `ca`;
/// `extra` adds options (a client certificate, a Host header). The status line, or the
/// failure, in the output.
async fn curl(port: u16, host: &str, ca: &str, extra: &[&str]) -> (bool, String) {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/");
    let mut a = args(&["-sS", "-o", "/dev/null", "-w", "%{http_code}\n", "--max-time", "10"]);
    a.extend(args(&["--cacert", ca, "--resolve", &resolve]));
    a.extend(args(extra));
    a.push(url);
    tool("curl", a, vec![]).await
}

/// `openssl s_client` to the gateway with `flags`; its whole output.
async fn s_client(port: u16, flags: &[&str]) -> String {
    let mut a = args(&["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    a.extend(args(flags));
    tool("openssl", a, vec![]).await.1
}

/// A new folder with a CA, its server certificate for `hosts` and its client certificate
/// for `cn` (`write_pki`), and `<name>.pem`/`<name>.key`, a pair signed by no CA here.
fn pki(hosts: &[&str], cn: &str, name: &str) -> std::path::PathBuf {
    let dir = temp_dir("tls-options");
    let sans = hosts
        .iter()
        .map(|h| rcgen::SanType::DnsName((*h).try_into().unwrap()))
        .collect();
    write_pki(&dir, sans, cn);
    let (cert, key) = self_signed(&[&format!("{name}.test")]);
    std::fs::write(dir.join(format!("{name}.pem")), &cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &key).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_per_host_and_passed_to_the_backend() {
    let app = Backend::start("app", Proto::Http1).await;
    // `stranger`: a client certificate no CA here signed.
    let dir = pki(
        &["mtls.test", "open.test", "any.test", "pg.test"],
        "client one",
        "stranger",
    );
    // A TCP backend behind a TCP router that terminates TLS with the same options.
    let pg = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pg_addr = pg.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = pg.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&[b"pg:", &buf[..n]].concat()).await;
                }
            });
        }
    });
    let p = |f: &str| dir.join(f).display().to_string();
    let yaml = format!(
        r#"http:
  routers:
    mtls: {{ rule: "Host(`mtls.test`)", service: app, middlewares: [certs], tls: {{ options: mtls }} }}
    any: {{ rule: "Host(`any.test`)", service: app, middlewares: [certs], tls: {{ options: anycert }} }}
    open: {{ rule: "Host(`open.test`)", service: app, middlewares: [certs], tls: {{}} }}
  middlewares:
    certs:
      passTLSClientCert:
        pem: true
        info: {{ subject: {{ commonName: true }}, issuer: {{ commonName: true }}, sans: true }}
  services:
{svc}tls:
  certificates:
    - {{ certFile: "{cert}", keyFile: "{key}" }}
  options:
    mtls:
      clientAuth: {{ caFiles: ["{ca}"], clientAuthType: RequireAndVerifyClientCert }}
    anycert:
      clientAuth: {{ clientAuthType: RequireAnyClientCert }}
tcp:
  routers:
    pg: {{ rule: "HostSNI(`pg.test`)", service: pg, tls: {{ options: mtls }} }}
  services:
    pg: {{ loadBalancer: {{ servers: [ {{ address: "{pg_addr}" }} ] }} }}
"#,
        svc = service("app", &[app.url()], ""),
        cert = p("server.pem"),
        key = p("server.key"),
        ca = p("ca.pem"),
    );
    let gw = start(&yaml, &[]).await;
    let port = gw.web().port();
    let ca = p("ca.pem");
    let client = ["--cert", &p("client.pem"), "--key", &p("client.key")];

    // Without a certificate the handshake fails; with one from another CA too.
    let (ok, out) = curl(port, "mtls.test", &ca, &[]).await;
    assert!(!ok && !out.starts_with("200"), "no client certificate: {out}");
    let (ok, out) = curl(
        port,
        "mtls.test",
        &ca,
        &["--cert", &p("stranger.pem"), "--key", &p("stranger.key")],
    )
    .await;
    assert!(!ok, "a certificate from another CA: {out}");
    assert_eq!(app.request_count(), 0);

    // With the CA's client certificate: served, and the backend sees it.
    let (ok, out) = curl(port, "mtls.test", &ca, &client).await;
    assert!(ok && out.starts_with("200"), "{out}");
    let seen = app.requests().pop().unwrap();
    let pem = std::fs::read_to_string(p("client.pem")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    // The chain as the client sent it, its own certificate first (OpenSSL adds the CA it
    // trusts to the chain it sends).
    let sent = seen
        .headers
        .get("x-forwarded-tls-client-cert")
        .unwrap()
        .to_str()
        .unwrap();
    let first = sent.split(',').next().unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(first).unwrap(), der);
    let info = seen
        .headers
        .get("x-forwarded-tls-client-cert-info")
        .unwrap()
        .to_str()
        .unwrap();
    let leaf = "Subject%3D%22CN%3Dclient+one%22%3BIssuer%3D%22CN%3Dberth+test+CA%22";
    let ca_info = "Subject%3D%22CN%3Dberth+test+CA%22%3BIssuer%3D%22CN%3Dberth+test+CA%22";
    let expected = match sent.split(',').count() {
        1 => leaf.to_string(),
        _ => format!("{leaf}%2C{ca_info}"),
    };
    assert_eq!(info, expected, "Traefik's format, query-escaped");

    // RequireAnyClientCert: any certificate is taken (and passed on), none is not.
    let (ok, out) = curl(port, "any.test", &ca, &[]).await;
    assert!(!ok, "no certificate: {out}");
    let (ok, out) = curl(
        port,
        "any.test",
        &ca,
        &["--cert", &p("stranger.pem"), "--key", &p("stranger.key")],
    )
    .await;
    assert!(ok && out.starts_with("200"), "{out}");
    let seen = app.requests().pop().unwrap();
    let info = seen
        .headers
        .get("x-forwarded-tls-client-cert-info")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(info.contains("stranger.test"), "{info}");

    // The default options ask for nothing; a client's own header value never reaches the
    // backend (it is not a trusted forwarder).
    let (ok, out) = curl(port, "open.test", &ca, &["-H", "X-Forwarded-Tls-Client-Cert: forged"]).await;
    assert!(ok && out.starts_with("200"), "{out}");
    let seen = app.requests().pop().unwrap();
    assert!(
        seen.headers.get("x-forwarded-tls-client-cert").is_none(),
        "{:?}",
        seen.headers
    );

    // Domain fronting: a handshake for open.test (no client certificate) cannot reach
    // the router that requires one: 421, as in Traefik.
    let before = app.request_count();
    let (ok, out) = curl(port, "open.test", &ca, &["-H", "Host: mtls.test"]).await;
    assert!(ok && out.starts_with("421"), "{out}");
    assert_eq!(app.request_count(), before);

    // openssl sees the gateway ask for a certificate on mtls.test, naming its CA, and not
    // on open.test.
    let out = s_client(port, &["-servername", "mtls.test", "-CAfile", &ca]).await;
    assert!(
        out.contains("Acceptable client certificate CA names") && out.contains("berth test CA"),
        "{out}"
    );
    let out = s_client(port, &["-servername", "open.test", "-CAfile", &ca]).await;
    assert!(out.contains("No client certificate CA names sent"), "{out}");

    // A reload that changes the router's options: a connection made with the old ones
    // is told 421 for it (Python's http.client, one keep-alive connection), so the
    // client makes a new handshake under the new options.
    let script = format!(
        r#"
import http.client, socket, ssl, time
ctx = ssl.create_default_context(cafile="{ca}")
ctx.load_cert_chain("{cert}", "{key}")
class Conn(http.client.HTTPSConnection):
    def connect(self):
        raw = socket.create_connection(("127.0.0.1", {port}))
        self.sock = ctx.wrap_socket(raw, server_hostname="mtls.test")
c = Conn("mtls.test", {port}, context=ctx)
def ask():
    c.request("GET", "/")
    r = c.getresponse(); r.read(); return r.status
first = ask()
time.sleep(2.5)
print(first, ask())
"#,
        ca = ca,
        cert = p("client.pem"),
        key = p("client.key"),
    );
    let ask = tokio::spawn(async move { tool("python3", args(&["-c", &script]), vec![]).await });
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    std::fs::write(
        &gw.dynamic,
        yaml.replace(
            "clientAuthType: RequireAndVerifyClientCert }",
            "clientAuthType: RequireAndVerifyClientCert }\n      minVersion: VersionTLS12",
        ),
    )
    .unwrap();
    let (ok, out) = ask.await.unwrap();
    assert!(ok && out.trim() == "200 421", "{out}");
    let (ok, out) = curl(port, "mtls.test", &ca, &client).await;
    assert!(ok && out.starts_with("200"), "a new connection is served: {out}");

    // A TCP router terminating TLS applies its own options: the client certificate is
    // required before any byte reaches the database (Python's ssl as the client).
    let pg_client = |with_cert: bool| {
        let load = if with_cert {
            format!("ctx.load_cert_chain({:?}, {:?})", p("client.pem"), p("client.key"))
        } else {
            String::new()
        };
        format!(
            r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
{load}
try:
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="pg.test")
    s.sendall(b"hello")
    print(s.recv(100).decode())
except (ssl.SSLError, OSError) as e:
    print("refused", type(e).__name__)
"#
        )
    };
    let (_, out) = tool("python3", args(&["-c", &pg_client(true)]), vec![]).await;
    assert_eq!(out.trim(), "pg:hello", "{out}");
    let (_, out) = tool("python3", args(&["-c", &pg_client(false)]), vec![]).await;
    assert!(out.starts_with("refused"), "no client certificate: {out}");

    // The admin API shows the options and who uses them.
    let routers = gw.admin_json("/api/http/routers").await;
    let mtls = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mtls@file")
        .unwrap();
    assert_eq!(mtls["status"], "enabled", "{mtls}");
    assert_eq!(mtls["tls"]["options"], "mtls", "{mtls}");
    let raw = gw.admin_json("/api/rawdata").await;
    let opts = &raw["tlsOptions"]["mtls@file"];
    assert_eq!(opts["status"], "enabled", "{raw}");
    assert_eq!(opts["clientAuth"]["caFiles"], 1, "{opts}");
    assert_eq!(opts["usedBy"], serde_json::json!(["mtls@file", "pg@file"]), "{opts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_suites_alpn_and_strict_sni_follow_the_options_of_the_host() {
    let app = Backend::start("app", Proto::Http1).await;
    // `fallback`: the default certificate, served for names no certificate matches,
    // unless strict.
    let dir = pki(
        &["modern.test", "old.test", "plain.test", "brokendb.test"],
        "unused",
        "fallback",
    );
    let p = |f: &str| dir.join(f).display().to_string();
    let yaml = format!(
        r#"http:
  routers:
    lax: {{ rule: "Host(`lax.test`)", service: app, tls: {{ options: lax }} }}
    modern: {{ rule: "Host(`modern.test`)", service: app, tls: {{ options: modern }} }}
    old: {{ rule: "Host(`old.test`)", service: app, tls: {{ options: tls12 }} }}
    plain: {{ rule: "Host(`plain.test`)", service: app, tls: {{}} }}
    broken: {{ rule: "Host(`broken.test`)", service: app, tls: {{ options: broken }} }}
    missing: {{ rule: "Host(`missing.test`)", service: app, tls: {{ options: nowhere }} }}
    shapeless: {{ rule: "Host(`shapeless.test`)", service: app, tls: {{ options: shapeless }} }}
    nohost: {{ rule: "PathPrefix(`/x`)", service: app, tls: {{ options: modern }} }}
  services:
{svc}tls:
  certificates:
    - {{ certFile: "{cert}", keyFile: "{key}" }}
  stores:
    default:
      defaultCertificate: {{ certFile: "{fallback}", keyFile: "{fallback_key}" }}
  options:
    default:
      sniStrict: true
    lax: {{}}
    modern:
      minVersion: VersionTLS13
      alpnProtocols: [http/1.1]
    tls12:
      maxVersion: VersionTLS12
      cipherSuites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
    broken:
      clientAuth: {{ caFiles: ["{dir}/no-such-ca.pem"] }}
    shapeless:
      clientAuth: RequireAndVerifyClientCert
tcp:
  routers:
    db: {{ rule: "HostSNI(`db.test`)", service: db, tls: {{}} }}
    brokendb: {{ rule: "HostSNI(`brokendb.test`)", service: db, tls: {{ options: broken }} }}
  services:
    db: {{ loadBalancer: {{ servers: [ {{ address: "127.0.0.1:1" }} ] }} }}
"#,
        svc = service("app", &[app.url()], ""),
        cert = p("server.pem"),
        key = p("server.key"),
        dir = dir.display(),
        fallback = p("fallback.pem"),
        fallback_key = p("fallback.key"),
    );
    let gw = start(&yaml, &[]).await;
    let port = gw.web().port();
    let ca = p("ca.pem");

    // minVersion VersionTLS13 on modern.test; the default options still speak 1.2.
    let out = s_client(port, &["-servername", "modern.test", "-CAfile", &ca, "-tls1_2"]).await;
    assert!(!out.contains("New, TLSv1.2"), "modern.test over TLS 1.2: {out}");
    let out = s_client(
        port,
        &["-servername", "modern.test", "-CAfile", &ca, "-alpn", "h2,http/1.1"],
    )
    .await;
    assert!(out.contains("New, TLSv1.3"), "{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "alpnProtocols: {out}");
    let (ok, out) = curl(
        port,
        "modern.test",
        &ca,
        &["--http2", "-w", "%{http_code} %{http_version}\n"],
    )
    .await;
    assert!(ok && out.trim() == "200 1.1", "HTTP/1.1 only: {out}");
    let out = s_client(
        port,
        &[
            "-servername",
            "plain.test",
            "-CAfile",
            &ca,
            "-tls1_2",
            "-alpn",
            "h2,http/1.1",
        ],
    )
    .await;
    assert!(
        out.contains("New, TLSv1.2") && out.contains("ALPN protocol: h2"),
        "{out}"
    );

    // maxVersion and cipherSuites on old.test: TLS 1.2 with the one suite listed.
    let out = s_client(port, &["-servername", "old.test", "-CAfile", &ca, "-tls1_3"]).await;
    assert!(!out.contains("New, TLSv1.3"), "old.test over TLS 1.3: {out}");
    let out = s_client(
        port,
        &[
            "-servername",
            "old.test",
            "-CAfile",
            &ca,
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
    )
    .await;
    assert!(!out.contains("New, TLSv1.2"), "a suite not listed: {out}");
    let out = s_client(port, &["-servername", "old.test", "-CAfile", &ca]).await;
    assert!(out.contains("Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"), "{out}");
    let (ok, out) = curl(port, "old.test", &ca, &[]).await;
    assert!(ok && out.starts_with("200"), "{out}");

    // sniStrict in the default options: an unknown name, or none, gets no certificate;
    // options without it serve the default certificate for a name nothing matches.
    let out = s_client(port, &["-servername", "unknown.test", "-CAfile", &ca]).await;
    assert!(!out.contains("New, TLS"), "{out}");
    let out = s_client(port, &["-noservername", "-CAfile", &ca]).await;
    assert!(!out.contains("New, TLS"), "{out}");
    // A TCP router terminating TLS has the default options too: strict here.
    let out = s_client(port, &["-servername", "db.test", "-CAfile", &ca]).await;
    assert!(!out.contains("New, TLS"), "{out}");
    // A TCP router whose options are broken closes its connections (a certificate for
    // the name exists, and HTTP's default options would take them otherwise).
    let out = s_client(port, &["-servername", "brokendb.test", "-CAfile", &ca]).await;
    assert!(!out.contains("New, TLS"), "{out}");
    let out = s_client(port, &["-servername", "lax.test", "-CAfile", &ca]).await;
    assert!(
        out.contains("New, TLSv1.3") && out.contains("CN = rcgen self signed cert"),
        "{out}"
    );

    // Broken options refuse their host's handshakes and disable their router, as do
    // options that do not exist and options on a rule that pins no host.
    let out = s_client(port, &["-servername", "broken.test", "-CAfile", &ca]).await;
    assert!(!out.contains("New, TLS"), "{out}");
    let routers = gw.admin_json("/api/http/routers").await;
    let status = |name: &str| {
        let r = routers
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone();
        (r["status"].as_str().unwrap().to_string(), r["error"].to_string())
    };
    for (name, why) in [
        ("broken@file", "are broken"),
        ("missing@file", "do not exist"),
        ("nohost@file", "pins no Host"),
        ("shapeless@file", "are broken"),
    ] {
        let (s, e) = status(name);
        assert_eq!(s, "disabled", "{name}: {e}");
        assert!(e.contains(why), "{name}: {e}");
    }
    assert_eq!(status("modern@file").0, "enabled");
    let diags = gw.admin_json("/api/diagnostics").await.to_string();
    assert!(diags.contains("no-such-ca.pem"), "{diags}");
}
