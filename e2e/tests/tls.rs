//! TLS termination: certificates chosen by SNI, ALPN h2, TLS-only routers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use berth_common::test_util::{Backend, Proto, get, http1, read_reply, self_signed};
use berth_e2e::{service, start, temp_dir};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

struct Tls {
    roots: RootCertStore,
    a: CertificateDer<'static>,
    b: CertificateDer<'static>,
    fallback: CertificateDer<'static>,
}

async fn connect(
    addr: std::net::SocketAddr,
    roots: &RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

fn write_pair(dir: &std::path::Path, name: &str, hosts: &[&str]) -> (String, String, CertificateDer<'static>) {
    let (cert, key) = self_signed(hosts);
    let (cp, kp) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cp, &cert).unwrap();
    std::fs::write(&kp, &key).unwrap();
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    (cp.display().to_string(), kp.display().to_string(), der)
}

#[tokio::test]
async fn sni_selects_certificates_and_alpn_negotiates_h2() {
    berth_common::tls::install_crypto_provider();
    let b = Backend::start("b", Proto::Http1).await;
    let dir = temp_dir("tls");
    let (acrt, akey, a) = write_pair(&dir, "a", &["a.test"]);
    let (bcrt, bkey, bder) = write_pair(&dir, "b", &["*.b.test"]);
    let (dcrt, dkey, fallback) = write_pair(&dir, "default", &["default.test"]);
    let mut roots = RootCertStore::empty();
    for c in [&a, &bder, &fallback] {
        roots.add(c.clone()).unwrap();
    }
    let tls = Tls {
        roots,
        a,
        b: bder,
        fallback,
    };
    let yaml = format!(
        "http:\n  routers:\n    secure: {{ rule: \"Host(`a.test`) || HostRegexp(`b\\\\.test$`)\", service: app, tls: {{}} }}\n    plain: {{ rule: \"Host(`a.test`)\", service: app }}\n  services:\n{}tls:\n  certificates:\n    - {{ certFile: \"{acrt}\", keyFile: \"{akey}\" }}\n    - {{ certFile: \"{bcrt}\", keyFile: \"{bkey}\" }}\n",
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &["--tls-cert", &dcrt, "--tls-key", &dkey]).await;
    let web = gw.web();

    // SNI a.test gets a's certificate (the client verifies the name) and h2 by ALPN.
    let s = connect(web, &tls.roots, "a.test", &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], tls.a);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("https://a.test/secure")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = read_reply(send.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_2);
    let seen = b.requests();
    assert_eq!(seen[0].headers.get("x-forwarded-proto").unwrap(), "https");

    // A wildcard certificate serves a subdomain; HTTP/1.1 when ALPN offers only that.
    let s = connect(web, &tls.roots, "x.b.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], tls.b);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let r = read_reply(send.send_request(get("x.b.test", "/")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_11);

    // An unknown SNI gets the default certificate.
    let s = connect(web, &tls.roots, "default.test", &[]).await.unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], tls.fallback);
    // A name no certificate covers fails verification on the client side.
    assert!(connect(web, &tls.roots, "nothing.test", &[]).await.is_err());

    // The plain router only serves plain connections, the TLS router only TLS ones.
    let plain = http1(web, get("a.test", "/")).await;
    assert_eq!(plain.status, StatusCode::OK);
    let before = b.request_count();
    let r = http1(web, get("x.b.test", "/")).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "TLS-only router must not match plain HTTP"
    );
    assert_eq!(b.request_count(), before);
}

#[tokio::test]
async fn tls_without_any_certificate_is_refused_cleanly() {
    berth_common::tls::install_crypto_provider();
    let b = Backend::start("b", Proto::Http1).await;
    let yaml = format!(
        "http:\n  routers:\n    r: {{ rule: \"PathPrefix(`/`)\", service: app }}\n  services:\n{}",
        service("app", &[b.url()], "")
    );
    let gw = start(&yaml, &[]).await;
    let roots = RootCertStore::empty();
    assert!(connect(gw.web(), &roots, "a.test", &[]).await.is_err());
    // Plain HTTP on the same port still works.
    assert_eq!(http1(gw.web(), get("a.test", "/")).await.status, StatusCode::OK);
}
