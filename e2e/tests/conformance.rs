//! Protocol conformance with clients nobody here wrote: curl, `openssl s_client`, nghttp,
//! h2load and Python's `http.client` and `ssl`, against the gateway's listeners (plain
//! and TLS entrypoints, HTTP/1.1, HTTP/2 over TLS and h2c, the control API). Each check
//! names the RFC section whose MUST it holds the gateway to. What each tool checked is
//! listed in docs/conformance.md.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use berth_common::test_util::{Backend, Proto, raw_exchange, self_signed};
use berth_e2e::{args, go_tlsprobe, service, start, temp_dir, tool};

/// An HTTP/1.0 origin: answers every request with a close-delimited body, no length.
fn http10_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = c.write_all(
                    b"HTTP/1.0 200 OK\r\nX-Origin: old\r\nKeep-Alive: timeout=1\r\n\r\nfrom an HTTP/1.0 origin",
                );
            });
        }
    });
    addr
}

fn yaml(b: &Backend, old: SocketAddr) -> String {
    format!(
        r#"http:
  routers:
    app: {{ rule: "Host(`app.test`)", service: app }}
    other: {{ rule: "Host(`other.test`)", service: app }}
    old: {{ rule: "Host(`old.test`)", service: old }}
  services:
{}{}"#,
        service("app", &[b.url()], ""),
        service("old", &[format!("http://{old}")], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_as_curl_and_python_see_it() {
    let b = Backend::start("app", Proto::Http1).await;
    let gw = start(&yaml(&b, http10_origin()), &[]).await;
    let web = gw.web();

    // RFC 9110 6.2: an intermediary sends its own HTTP-version, and (RFC 9112 6) its own
    // framing: an HTTP/1.0 origin's close-delimited answer reaches an HTTP/1.1 client as
    // HTTP/1.1, and the connection stays open for the next request.
    let (ok, out) = tool(
        "curl",
        args(&[
            "-sv",
            "--http1.1",
            "-H",
            "Host: old.test",
            &format!("http://{web}/a"),
            "-H",
            "Host: old.test",
            &format!("http://{web}/b"),
        ]),
        vec![],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("< HTTP/1.1 200 OK"), "{out}");
    assert!(!out.contains("< HTTP/1.0"), "{out}");
    assert!(!out.to_ascii_lowercase().contains("< keep-alive"), "hop-by-hop: {out}");
    assert_eq!(out.matches("from an HTTP/1.0 origin").count(), 2, "{out}");
    assert!(out.contains("Re-using existing connection"), "{out}");

    // RFC 9112 7.1: a chunked request body, as Python's http.client sends it, arrives whole.
    let script = format!(
        r#"
import http.client
c = http.client.HTTPConnection("{host}", {port})
c.request("POST", "/echo", body=iter([b"chunk-one,", b"chunk-two"]), headers={{"Host": "app.test"}}, encode_chunked=True)
r = c.getresponse()
print(r.status, r.version, r.read().decode())
c.request("GET", "/", headers={{"Host": "app.test"}})
r = c.getresponse()
print(r.status, r.read().decode().splitlines()[0])
"#,
        host = web.ip(),
        port = web.port()
    );
    let (ok, out) = tool("python3", args(&["-c", &script]), vec![]).await;
    assert!(ok, "{out}");
    assert!(out.contains("200 11 chunk-one,chunk-two"), "{out}");
    assert!(out.contains("200 backend=app"), "kept alive: {out}");

    // RFC 9110 10.1.1: Expect: 100-continue is answered, then the body goes through.
    let body = "x".repeat(4096);
    let (ok, out) = tool(
        "curl",
        args(&[
            "-sv",
            "--http1.1",
            "-H",
            "Host: app.test",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &body,
            &format!("http://{web}/echo"),
        ]),
        vec![],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("< HTTP/1.1 100 Continue"), "{out}");
    assert!(out.contains("< HTTP/1.1 200 OK") && out.contains(&body), "{out}");

    // RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is 400.
    let none = raw_exchange(
        web,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    let two = raw_exchange(
        web,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    // RFC 9112 3.2.2: the absolute form's authority, not Host, names the target; the
    // Host sent upstream is the target's.
    let abs = raw_exchange(
        web,
        b"GET http://app.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(abs.starts_with("HTTP/1.1 200"), "{abs}");
    assert_eq!(b.requests().last().unwrap().headers["host"], "app.test");
    // RFC 9110 4.2.1: an http URI with an empty host is invalid.
    let empty = raw_exchange(
        web,
        b"GET http:///x HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(empty.starts_with("HTTP/1.1 400"), "{empty}");
    // An HTTP/1.0 client gets a whole answer it can read: hyper answers an HTTP/1.0 peer
    // in HTTP/1.0 with a length (RFC 9110 6.2 permits either version), then closes.
    let ten = raw_exchange(web, b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n", Duration::from_secs(5)).await;
    assert!(
        ten.starts_with("HTTP/1.0 200") || ten.starts_with("HTTP/1.1 200"),
        "{ten}"
    );
    assert!(
        ten.contains("content-length: ") && !ten.contains("transfer-encoding"),
        "{ten}"
    );
}

/// A TLS entrypoint with a certificate for `secure.test`; its address and the CA file.
async fn tls_gateway(b: &Backend) -> (berth_e2e::TestGateway, SocketAddr, std::path::PathBuf) {
    let dir = temp_dir("conformance-tls");
    let (cert, key) = self_signed(&["secure.test"]);
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let yaml = format!(
        "http:\n  routers:\n    app: {{ rule: \"Host(`secure.test`)\", service: app, tls: {{}} }}\n  services:\n{}",
        service("app", &[b.url()], "")
    );
    let gw = start(
        &yaml,
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    )
    .await;
    let web = gw.web();
    (gw, web, cert_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_http2_as_openssl_curl_nghttp_and_h2load_see_them() {
    let b = Backend::start("app", Proto::Http1).await;
    let (_gw, web, ca) = tls_gateway(&b).await;
    let connect = web.to_string();
    let resolve = format!("secure.test:{}:127.0.0.1", web.port());
    let url = format!("https://secure.test:{}/", web.port());
    let ca = ca.to_str().unwrap().to_string();

    // RFC 8446 and RFC 7301: TLS 1.3 by default, 1.2 still spoken, ALPN h2 offered.
    for (version, want) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let (_, out) = tool(
            "openssl",
            args(&[
                "s_client",
                "-connect",
                &connect,
                "-servername",
                "secure.test",
                "-CAfile",
                &ca,
                "-alpn",
                "h2,http/1.1",
                version,
            ]),
            vec![],
        )
        .await;
        assert!(out.contains(&format!("New, {want}")), "{version}: {out}");
        assert!(out.contains("ALPN protocol: h2"), "{version}: {out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{version}: {out}");
    }
    // curl over HTTP/2 and HTTP/1.1, verifying the certificate by name.
    for (flag, status) in [("--http2", "HTTP/2 200"), ("--http1.1", "HTTP/1.1 200")] {
        let (ok, out) = tool(
            "curl",
            args(&["-sv", flag, "--cacert", &ca, "--resolve", &resolve, &url]),
            vec![],
        )
        .await;
        assert!(ok && out.contains(&format!("< {status}")), "{flag}: {out}");
        assert!(out.contains("backend=app"), "{out}");
    }
    // RFC 9113 8.2.2: no connection-specific header field in an HTTP/2 response (the
    // origin's `Connection: x-hop` and the header it names must not cross).
    let (ok, out) = tool(
        "nghttp",
        args(&[
            "-nv",
            "--no-verify-peer",
            &format!("https://127.0.0.1:{}/", web.port()),
            "-H",
            ":authority: secure.test",
        ]),
        vec![],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains(":status: 200"), "{out}");
    assert!(!out.contains("x-hop") && !out.contains("connection:"), "{out}");
    // h2load: many streams on few connections, every one answered.
    let (ok, out) = tool(
        "h2load",
        args(&[
            "-n",
            "200",
            "-c",
            "2",
            "-m",
            "10",
            "-H",
            ":authority: secure.test",
            &format!("https://127.0.0.1:{}/", web.port()),
        ]),
        vec![],
    )
    .await;
    assert!(ok && out.contains("200 succeeded"), "{out}");
    assert!(out.contains("Application protocol: h2"), "{out}");

    // Go's crypto/tls (stricter than OpenSSL in other places): both versions, ALPN, the
    // name verified; then Go's net/http over HTTP/2 and HTTP/1.1 (its HTTP/2 client
    // refuses connection-specific headers and bad framing, RFC 9113 8.2.2).
    let go = go_tlsprobe().display().to_string();
    for (version, want) in [("1.3", "TLSv1.3"), ("1.2", "TLSv1.2")] {
        let (ok, out) = tool(
            &go,
            args(&[
                "-connect",
                &connect,
                "-servername",
                "secure.test",
                "-ca",
                &ca,
                "-alpn",
                "h2,http/1.1",
                "-tls",
                version,
            ]),
            vec![],
        )
        .await;
        assert!(ok, "go {version}: {out}");
        assert!(out.contains(&format!("version={want} alpn=h2 verified=ok")), "{out}");
    }
    for (h2, proto) in [(true, "HTTP/2.0 200"), (false, "HTTP/1.1 200")] {
        let mut a = args(&[
            "-url",
            &url,
            "-connect",
            &connect,
            "-servername",
            "secure.test",
            "-ca",
            &ca,
        ]);
        if h2 {
            a.push("-h2".into());
        }
        let (ok, out) = tool(&go, a, vec![]).await;
        assert!(ok && out.contains(proto), "go net/http h2={h2}: {out}");
        assert!(out.contains("backend=app"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_with_curl_and_h2load() {
    let b = Backend::start("app", Proto::Http1).await;
    let gw = start(&yaml(&b, http10_origin()), &[]).await;
    let web = gw.web();
    let (ok, out) = tool(
        "curl",
        args(&[
            "-sv",
            "--http2-prior-knowledge",
            "-H",
            "Host: app.test",
            &format!("http://{web}/"),
        ]),
        vec![],
    )
    .await;
    assert!(ok && out.contains("< HTTP/2 200"), "{out}");
    // An HTTP/1.0 origin behind an HTTP/2 client: still HTTP/2, framed by the gateway.
    let (ok, out) = tool(
        "h2load",
        args(&[
            "-n",
            "50",
            "-c",
            "1",
            "-H",
            ":authority: old.test",
            &format!("http://{web}/"),
        ]),
        vec![],
    )
    .await;
    assert!(ok && out.contains("50 succeeded"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_handshakes_with_openssl_with_and_without_a_client_certificate() {
    berth_common::tls::install_crypto_provider();
    let dir = temp_dir("conformance-control");
    let control: SocketAddr = format!("127.0.0.1:{}", berth_common::test_util::free_port())
        .parse()
        .unwrap();
    let gw = start(
        "http: {}\n",
        &[
            "--mesh-dev-ca",
            dir.join("ca").to_str().unwrap(),
            "--mesh-listen",
            &control.to_string(),
        ],
    )
    .await;
    let ca = berth_gateway::MeshCa::dev(&dir.join("ca"), "berth.local").unwrap();
    let id = berth_common::identity::SpiffeId::for_service("berth.local", "prod", "orders").unwrap();
    let (issued, key) = ca.issue_local(&id, Duration::from_secs(600)).unwrap();
    std::fs::write(dir.join("c.crt"), issued.chain_pem).unwrap();
    std::fs::write(dir.join("c.key"), key).unwrap();
    let ca_file = dir.join("ca/ca.crt").display().to_string();
    let target = control.to_string();
    let request = b"GET /v1/mesh HTTP/1.1\r\nHost: gateway.berth\r\nConnection: close\r\n\r\n".to_vec();
    // Without a certificate (a first certificate request): the handshake completes and the
    // server's chain verifies against the mesh CA.
    let (_, out) = tool(
        "openssl",
        args(&["s_client", "-connect", &target, "-CAfile", &ca_file, "-ign_eof"]),
        request.clone(),
    )
    .await;
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(!out.contains("parse_ca_names"), "{out}");
    assert!(out.contains("HTTP/1.1 401"), "the mesh view needs a certificate: {out}");
    // With a mesh certificate: the CA names are readable and the call is authenticated.
    let (_, out) = tool(
        "openssl",
        args(&[
            "s_client",
            "-connect",
            &target,
            "-CAfile",
            &ca_file,
            "-cert",
            dir.join("c.crt").to_str().unwrap(),
            "-key",
            dir.join("c.key").to_str().unwrap(),
            "-ign_eof",
        ]),
        request,
    )
    .await;
    assert!(out.contains("Acceptable client certificate CA names"), "{out}");
    assert!(!out.contains("HTTP/1.1 401"), "{out}");
    // Go's crypto/tls, without and with the certificate (the control API speaks h2 and
    // HTTP/1.1; the raw probe sends HTTP/1.1).
    let go = go_tlsprobe().display().to_string();
    let send = r"GET /v1/mesh HTTP/1.1\r\nHost: gateway.berth\r\nConnection: close\r\n\r\n";
    let (ok, out) = tool(
        &go,
        args(&["-connect", &target, "-ca", &ca_file, "-noname", "-send", send]),
        vec![],
    )
    .await;
    assert!(
        ok && out.contains("verified=ok") && out.contains("HTTP/1.1 401"),
        "{out}"
    );
    let (ok, out) = tool(
        &go,
        args(&[
            "-connect",
            &target,
            "-ca",
            &ca_file,
            "-noname",
            "-cert",
            dir.join("c.crt").to_str().unwrap(),
            "-key",
            dir.join("c.key").to_str().unwrap(),
            "-send",
            send,
        ]),
        vec![],
    )
    .await;
    assert!(
        ok && out.contains("version=TLSv1.3") && out.contains("HTTP/1.1 "),
        "{out}"
    );
    assert!(!out.contains("HTTP/1.1 401"), "the certificate authenticates: {out}");
    drop(gw);
}
