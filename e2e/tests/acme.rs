//! Certificates by ACME against Pebble (Let's Encrypt's test server, RFC 8555), with a
//! Traefik static configuration: one resolver validating by HTTP-01 on the `web`
//! entrypoint (which redirects everything else to HTTPS, as Traefik setups do), one by
//! TLS-ALPN-01 on `websecure`; the certificates served by SNI to curl trusting Pebble's
//! root, kept in Traefik's `acme.json` format, served again by a restarted gateway
//! without a new order, and renewed before they expire (Pebble issues 30-second ones).
//! Pebble resolves every name to 127.0.0.1 through `pebble-challtestsrv`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_common::test_util::{Backend, Proto, eventually, free_port, write_pki};
use berth_e2e::{GatewayProcess, args, temp_dir, tool};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its DNS, validating on `http_port` and `tls_port`: its directory URL and
/// the PEM of the CA that signed its own HTTPS certificate.
fn pebble(dir: &std::path::Path, http_port: u16, tls_port: u16) -> (Vec<Killed>, String, u16, std::path::PathBuf) {
    write_pki(
        dir,
        vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())],
        "unused",
    );
    let (listen, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": dir.join("server.pem"),
        "privateKey": dir.join("server.key"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": 30,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let dns_server = Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{dns}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
        .stdout(Stdio::null())
        .stderr(log("challtestsrv.log"))
        .spawn()
        .expect("pebble-challtestsrv (Debian package pebble; .ci/run installs it)");
    let server = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log("pebble.log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble (Debian package pebble; .ci/run installs it)");
    (
        vec![Killed(dns_server), Killed(server)],
        format!("https://127.0.0.1:{listen}/dir"),
        mgmt,
        dir.join("ca.pem"),
    )
}

/// When the gateway's certificate for `name` from an ACME resolver was issued
/// (`notBeforeUnix` in `/api/certificates`), if it has one.
async fn issued(gw: &GatewayProcess, name: &str) -> Option<i64> {
    let certs = gw.admin_json("/api/certificates").await;
    certs.as_array()?.iter().find_map(|c| {
        let acme = c["use"].as_str()?.starts_with("ACME ") && !c["use"].as_str()?.ends_with("(pending)");
        let names = c["names"].as_array()?;
        (acme && names.iter().any(|n| n == name)).then(|| c["notBeforeUnix"].as_i64())?
    })
}

/// `GET https://NAME:PORT/` with curl, trusting only `root`.
async fn curl(name: &str, port: u16, root: &std::path::Path) -> (bool, String) {
    tool(
        "curl",
        args(&[
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            root.to_str().unwrap(),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/"),
        ]),
        vec![],
    )
    .await
}

#[tokio::test]
async fn certificates_by_http01_and_tls_alpn01_are_served_kept_and_renewed() {
    let dir = temp_dir("acme");
    let (web, secure, internal) = (free_port(), free_port(), free_port());
    let (_pebble, directory, mgmt, pebble_ca) = pebble(&dir, web, secure);
    let backend = Backend::start("app", Proto::Http1).await;
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    a:\n      rule: Host(`a.test`)\n      entryPoints: [websecure]\n      service: app\n      \
             tls:\n        certResolver: byhttp\n    b:\n      rule: Host(`b.test`) || Host(`www.b.test`)\n      \
             entryPoints: [websecure]\n      service: app\n      tls:\n        certResolver: byalpn\n  \
             services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\n",
            backend.url()
        ),
    )
    .unwrap();
    let storage = dir.join("acme.json");
    let cwd = temp_dir("acme-cwd");
    std::fs::write(
        cwd.join("traefik.yml"),
        format!(
            "entryPoints:\n  web:\n    address: \"127.0.0.1:{web}\"\n    http:\n      redirections:\n        entryPoint:\n          \
             to: websecure\n  websecure:\n    address: \"127.0.0.1:{secure}\"\n    http:\n      tls: {{}}\n  traefik:\n    \
             address: \"127.0.0.1:{internal}\"\nproviders:\n  file:\n    filename: \"{dynamic}\"\nping: {{}}\n\
             certificatesResolvers:\n  byhttp:\n    acme:\n      email: ops@example.test\n      caServer: \"{directory}\"\n      \
             caCertificates: [\"{ca}\"]\n      storage: \"{storage}\"\n      httpChallenge:\n        entryPoint: web\n  \
             byalpn:\n    acme:\n      caServer: \"{directory}\"\n      caCertificates: [\"{ca}\"]\n      storage: \"{storage}\"\n      \
             keyType: EC384\n      tlsChallenge: {{}}\n",
            dynamic = dynamic.display(),
            ca = pebble_ca.display(),
            storage = storage.display(),
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn_in(&cwd, &[], &[]);
    gw.wait_admin().await;
    let both = eventually(Duration::from_secs(60), || async {
        issued(&gw, "a.test").await.is_some() && issued(&gw, "www.b.test").await.is_some()
    })
    .await;
    assert!(
        both,
        "certificates: {}\nlog:\n{}",
        gw.admin_json("/api/certificates").await,
        gw.log()
    );

    // Pebble's issuing root, from its management port; curl trusts only it.
    let (ok, root_pem) = tool(
        "curl",
        args(&[
            "-sS",
            "--cacert",
            pebble_ca.to_str().unwrap(),
            &format!("https://127.0.0.1:{mgmt}/roots/0"),
        ]),
        vec![],
    )
    .await;
    assert!(ok && root_pem.contains("BEGIN CERTIFICATE"), "{root_pem}");
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, &root_pem).unwrap();
    for name in ["a.test", "b.test", "www.b.test"] {
        let (ok, out) = curl(name, secure, &root).await;
        assert!(ok && out.contains("backend=app"), "{name}: {out}");
    }
    // A name no router asked a certificate for gets none from Pebble's CA.
    let (ok, _) = curl("c.test", secure, &root).await;
    assert!(!ok, "c.test has no ACME certificate");

    // Kept in Traefik's acme.json format, one entry per resolver.
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&storage).unwrap()).unwrap();
    assert_eq!(stored["byhttp"]["Certificates"][0]["domain"]["main"], "a.test");
    assert_eq!(stored["byalpn"]["Certificates"][0]["domain"]["main"], "b.test");
    assert_eq!(stored["byalpn"]["Certificates"][0]["domain"]["sans"][0], "www.b.test");
    assert_eq!(stored["byhttp"]["Account"]["Email"], "ops@example.test");

    // A restarted gateway serves what the storage holds at once, without a new order.
    let before = issued(&gw, "a.test").await.unwrap();
    drop(gw);
    let gw = GatewayProcess::spawn_in(&cwd, &[], &[]);
    gw.wait_admin().await;
    let ping: SocketAddr = format!("127.0.0.1:{internal}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(ping).await.is_ok()
        })
        .await
    );
    let served = eventually(Duration::from_secs(5), || async {
        issued(&gw, "a.test").await == Some(before)
    })
    .await;
    assert!(
        served && !gw.log().contains("ACME certificate obtained"),
        "the stored certificate, not a new one: {}\n{}",
        gw.admin_json("/api/certificates").await,
        gw.log()
    );
    let (ok, out) = curl("a.test", secure, &root).await;
    assert!(ok, "{out}");

    // Renewed at two thirds of its 30 s: a new one within 40 s, served by SNI.
    let renewed = eventually(Duration::from_secs(40), || async {
        issued(&gw, "a.test").await.is_some_and(|t| t > before)
    })
    .await;
    assert!(renewed, "renewal; log:\n{}", gw.log());
    let (ok, out) = curl("a.test", secure, &root).await;
    assert!(ok && out.contains("backend=app"), "{out}");
}
