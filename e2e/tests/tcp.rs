//! TCP routers over real sockets: SNI routing with TLS passthrough (the backend's own
//! certificate reaches the client), SNI routing with TLS terminated by the gateway, a
//! plain TCP catch-all on its own entrypoint (also for a server-first protocol), servers
//! balanced, an unknown SNI refused, HTTP still served beside them, and bad TCP rules
//! reported.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_common::test_util::{Backend, Proto, free_port, get, http1, self_signed};
use berth_e2e::{service, start, temp_dir};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP echo server answering `<name>:<what it read>`; with `greeting`, it speaks first.
async fn echo(name: &'static str, greeting: Option<&'static str>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    let _ = s.write_all(g.as_bytes()).await;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A TLS echo server with its own certificate for `host`.
async fn tls_echo(host: &str) -> (SocketAddr, CertificateDer<'static>) {
    let (cert, key) = self_signed(&[host]);
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&[b"backend:", &buf[..n]].concat()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, der)
}

async fn tls_connect(
    addr: SocketAddr,
    trust: &CertificateDer<'static>,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

async fn say<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, what: &str) -> String {
    s.write_all(what.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn sni_passthrough_termination_catch_all_and_refusals() {
    berth_common::tls::install_crypto_provider();
    let http = Backend::start("http", Proto::Http1).await;
    let (db, db_cert) = tls_echo("db.test").await;
    let plain_a = echo("a", None).await;
    let plain_b = echo("b", None).await;
    let smtp = echo("smtp", Some("220 ready\r\n")).await;
    let dir = temp_dir("tcp");
    let (cert, key) = self_signed(&["term.test"]);
    let term_cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let (cp, kp) = (dir.join("term.crt"), dir.join("term.key"));
    std::fs::write(&cp, &cert).unwrap();
    std::fs::write(&kp, &key).unwrap();
    let (raw, mail) = (free_port(), free_port());
    let yaml = format!(
        r#"http:
  routers:
    site: {{ rule: "Host(`site.test`)", service: site, entryPoints: [web] }}
  services:
{}
tcp:
  routers:
    db: {{ rule: "HostSNI(`db.test`)", service: db, entryPoints: [web], tls: {{ passthrough: true }} }}
    term: {{ rule: "HostSNI(`term.test`)", service: pair, entryPoints: [web], tls: {{}} }}
    raw: {{ rule: "HostSNI(`*`)", service: pair, entryPoints: [raw] }}
    mail: {{ rule: "HostSNI(`*`)", service: smtp, entryPoints: [mail] }}
    wrong: {{ rule: "Host(`x.test`)", service: pair, entryPoints: [raw] }}
    nosni: {{ rule: "HostSNI(`plain.test`)", service: pair, entryPoints: [raw] }}
  services:
    db: {{ loadBalancer: {{ servers: [{{ address: "{db}" }}] }} }}
    pair: {{ loadBalancer: {{ servers: [{{ address: "{plain_a}" }}, {{ address: "{plain_b}" }}] }} }}
    smtp: {{ loadBalancer: {{ servers: [{{ address: "{smtp}" }}] }} }}
tls:
  certificates:
    - {{ certFile: "{}", keyFile: "{}" }}
"#,
        service("site", &[http.url()], ""),
        cp.display(),
        kp.display()
    );
    let gw = start(
        &yaml,
        &[
            "--entrypoint",
            &format!("raw=127.0.0.1:{raw}"),
            "--entrypoint",
            &format!("mail=127.0.0.1:{mail}"),
        ],
    )
    .await;
    let web = gw.web();

    // Passthrough: the TLS session is the backend's, with its certificate; the gateway
    // has none for db.test.
    let mut s = tls_connect(web, &db_cert, "db.test").await.unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], db_cert);
    assert_eq!(say(&mut s, "select 1").await, "backend:select 1");

    // Termination: the gateway's certificate for term.test, plaintext to the servers,
    // balanced over both.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let mut s = tls_connect(web, &term_cert, "term.test").await.unwrap();
        assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], term_cert);
        let answer = say(&mut s, "hi").await;
        assert!(answer == "a:hi" || answer == "b:hi", "{answer}");
        seen.insert(answer);
    }
    assert_eq!(seen.len(), 2, "both servers of the service were used");

    // An SNI no router and no certificate knows: refused.
    assert!(tls_connect(web, &term_cert, "unknown.test").await.is_err());

    // HTTP on the same entrypoint is untouched.
    assert_eq!(http1(web, get("site.test", "/")).await.status, 200);

    // A plain TCP catch-all on its own entrypoint.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", raw)).await.unwrap();
    let answer = say(&mut s, "ping").await;
    assert!(answer == "a:ping" || answer == "b:ping", "{answer}");
    // A server-first protocol: the client reads the greeting before it sends anything.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", mail)).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"220 ready\r\n");

    // Reported and not served: an HTTP matcher in a TCP rule, a server name on plain TCP.
    let routers = gw.admin_json("/api/tcp/routers").await;
    let by_name = |n: &str| {
        routers
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing: {routers:#}"))
    };
    assert_eq!(by_name("db@file")["status"], "enabled");
    assert_eq!(by_name("db@file")["tls"]["passthrough"], true);
    assert_eq!(by_name("wrong@file")["status"], "disabled");
    assert!(
        by_name("wrong@file")["error"][0]
            .as_str()
            .unwrap()
            .contains("HTTP matcher")
    );
    assert_eq!(by_name("nosni@file")["status"], "disabled");
    let diags = gw.admin_json("/api/diagnostics").await.to_string();
    assert!(diags.contains("tcp router wrong@file"), "{diags}");
    let services = gw.admin_json("/api/tcp/services").await;
    assert!(services.to_string().contains(&plain_a.to_string()), "{services}");
    let metrics = http1(gw.admin(), get("admin", "/metrics")).await.body;
    assert!(
        metrics.contains("berth_tcp_connections_total{router=\"term@file\",outcome=\"forwarded\"} 30"),
        "{metrics}"
    );
}

/// Whether the gateway closes a connection before a byte comes back.
async fn closed_at_once(addr: SocketAddr) -> bool {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn tcp_middlewares_allow_by_address_and_bound_connections_per_client() {
    let plain = echo("a", None).await;
    let (open, limited, closed, broken) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        r#"http:
  routers: {{}}
tcp:
  routers:
    open: {{ rule: "HostSNI(`*`)", service: echo, entryPoints: [open], middlewares: [loopback] }}
    limited: {{ rule: "HostSNI(`*`)", service: echo, entryPoints: [limited], middlewares: [loopback, two] }}
    closed: {{ rule: "HostSNI(`*`)", service: echo, entryPoints: [closed], middlewares: [elsewhere] }}
    broken: {{ rule: "HostSNI(`*`)", service: echo, entryPoints: [broken], middlewares: [zero, missing] }}
  middlewares:
    loopback: {{ ipAllowList: {{ sourceRange: ["127.0.0.0/8"] }} }}
    elsewhere: {{ ipWhiteList: {{ sourceRange: ["10.0.0.0/8"] }} }}
    two: {{ inFlightConn: {{ amount: 2 }} }}
    zero: {{ inFlightConn: {{ amount: 0 }} }}
  services:
    echo: {{ loadBalancer: {{ servers: [{{ address: "{plain}" }}] }} }}
"#
    );
    let ep = |name: &str, port: u16| ["--entrypoint".to_string(), format!("{name}=127.0.0.1:{port}")];
    let args: Vec<String> = [
        ep("open", open),
        ep("limited", limited),
        ep("closed", closed),
        ep("broken", broken),
    ]
    .into_iter()
    .flatten()
    .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = start(&yaml, &args).await;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // In the allowed range: spliced.
    let mut s = tokio::net::TcpStream::connect(at(open)).await.unwrap();
    assert_eq!(say(&mut s, "hi").await, "a:hi");
    // Outside it: closed before any server is dialled.
    assert!(closed_at_once(at(closed)).await);

    // Two at once from one client; the third is closed; when one ends, one more may come.
    let mut first = tokio::net::TcpStream::connect(at(limited)).await.unwrap();
    assert_eq!(say(&mut first, "1").await, "a:1");
    let mut second = tokio::net::TcpStream::connect(at(limited)).await.unwrap();
    assert_eq!(say(&mut second, "2").await, "a:2");
    assert!(closed_at_once(at(limited)).await);
    drop(first);
    let again = berth_common::test_util::eventually(Duration::from_secs(5), || async {
        let Ok(mut s) = tokio::net::TcpStream::connect(at(limited)).await else {
            return false;
        };
        let _ = s.write_all(b"3").await;
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
    })
    .await;
    assert!(again, "a closed connection was not released");
    drop(second);

    // A broken or missing middleware: the router is not served, and says why.
    let _ = broken;
    let routers = gw.admin_json("/api/tcp/routers").await;
    let broken = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "broken@file")
        .unwrap();
    assert_eq!(broken["status"], "disabled");
    let error = broken["error"].to_string();
    assert!(error.contains("amount") && error.contains("missing@file"), "{error}");
    let mws = gw.admin_json("/api/tcp/middlewares").await;
    let two = mws
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "two@file")
        .unwrap();
    assert_eq!(two["type"], "inflightconn");
    assert_eq!(two["usedBy"][0], "limited@file");
}
