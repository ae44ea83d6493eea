//! Certificates by ACME against Pebble (Let's Encrypt's test server, RFC 8555), with a
//! Traefik static configuration: one resolver validating by HTTP-01 on the `web`
//! entrypoint (which redirects everything else to HTTPS, as Traefik setups do), one by
//! TLS-ALPN-01 on `websecure`; the certificates served by SNI to curl trusting Pebble's
//! root, kept in Traefik's `acme.json` format, served again by a restarted gateway
//! without a new order, and renewed before they expire (Pebble issues 60-second ones).
//! Pebble resolves every name to 127.0.0.1 through `pebble-challtestsrv`.
//!
//! Then three replicas sharing a DynamoDB table (moto): one order per certificate, every
//! replica serving it, the CA's validations answered by a replica that did not order
//! (a load balancer in the test sends them there), a fourth replica serving the
//! certificates as it starts, and the table's outage keeping them served.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_common::test_util::{Backend, Proto, closed_port, eventually, free_port, write_pki};
use berth_e2e::{GatewayProcess, Moto, args, moto_json, moto_rest, temp_dir, tool};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its DNS server, both stopped on drop.
struct Pebble {
    _processes: Vec<Killed>,
    /// The directory URL.
    directory: String,
    /// Pebble's management port (its issuing root at `/roots/0`).
    mgmt: u16,
    /// pebble-challtestsrv's management port (`/set-txt`, `/clear-txt`).
    dns_mgmt: u16,
    /// The CA that signed Pebble's own HTTPS certificate.
    ca: std::path::PathBuf,
}

/// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`, its DNS
/// answering every name with 127.0.0.1 (and TXT records the test sets).
fn pebble(
    dir: &std::path::Path,
    http_port: u16,
    tls_port: u16,
    validity_secs: u64,
    eab: Option<(&str, &str)>,
) -> Pebble {
    write_pki(
        dir,
        vec![
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
            rcgen::SanType::DnsName("pebble.test".try_into().unwrap()),
        ],
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
        "externalAccountBindingRequired": eab.is_some(),
        "externalAccountMACKeys": eab.map(|(kid, key)| serde_json::json!({kid: key})).unwrap_or_default(),
        "certificateValidityPeriod": validity_secs,
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
    // Ready when it accepts connections (a resolver's first try would otherwise fail
    // and back off).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Pebble {
        _processes: vec![Killed(dns_server), Killed(server)],
        directory: format!("https://127.0.0.1:{listen}/dir"),
        mgmt,
        dns_mgmt,
        ca: dir.join("ca.pem"),
    }
}

/// Two routers over one backend: `a.test` by the HTTP-01 resolver, `b.test` and
/// `www.b.test` by the TLS-ALPN-01 one.
fn dynamic_file(dir: &std::path::Path, backend: &Backend) -> std::path::PathBuf {
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
    dynamic
}

#[derive(Clone, Copy)]
struct Ports {
    web: u16,
    secure: u16,
    internal: u16,
}

/// Traefik's static configuration: `web` redirecting to `websecure`, the file provider,
/// resolver `byhttp` (HTTP-01 on `web`) and `byalpn` (TLS-ALPN-01, EC384), both kept in
/// `storage`.
fn static_config(p: Ports, dynamic: &std::path::Path, directory: &str, ca: &std::path::Path, storage: &str) -> String {
    format!(
        "entryPoints:\n  web:\n    address: \"127.0.0.1:{web}\"\n    http:\n      redirections:\n        entryPoint:\n          \
         to: websecure\n  websecure:\n    address: \"127.0.0.1:{secure}\"\n    http:\n      tls: {{}}\n  traefik:\n    \
         address: \"127.0.0.1:{internal}\"\nproviders:\n  file:\n    filename: \"{dynamic}\"\nping: {{}}\n\
         certificatesResolvers:\n  byhttp:\n    acme:\n      email: ops@example.test\n      caServer: \"{directory}\"\n      \
         caCertificates: [\"{ca}\"]\n      storage: \"{storage}\"\n      httpChallenge:\n        entryPoint: web\n  \
         byalpn:\n    acme:\n      caServer: \"{directory}\"\n      caCertificates: [\"{ca}\"]\n      storage: \"{storage}\"\n      \
         keyType: EC384\n      tlsChallenge: {{}}\n",
        web = p.web,
        secure = p.secure,
        internal = p.internal,
        dynamic = dynamic.display(),
        ca = ca.display(),
    )
}

/// Pebble's issuing root, from its management port (curl trusts only it).
async fn pebble_root(dir: &std::path::Path, mgmt: u16, pebble_ca: &std::path::Path) -> std::path::PathBuf {
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
    root
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

/// The dashboard's HTML.
async fn dashboard(gw: &GatewayProcess) -> String {
    berth_common::test_util::http1(gw.admin, berth_common::test_util::get("admin", "/dashboard/"))
        .await
        .body
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
    let pebble = pebble(&dir, web, secure, 60, None);
    let (directory, mgmt, pebble_ca) = (&pebble.directory, pebble.mgmt, &pebble.ca);
    let backend = Backend::start("app", Proto::Http1).await;
    let dynamic = dynamic_file(&dir, &backend);
    let storage = dir.join("acme.json");
    let cwd = temp_dir("acme-cwd");
    let ports = Ports { web, secure, internal };
    std::fs::write(
        cwd.join("traefik.yml"),
        static_config(ports, &dynamic, directory, pebble_ca, &storage.display().to_string()),
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

    let root = pebble_root(&dir, mgmt, pebble_ca).await;
    for name in ["a.test", "b.test", "www.b.test"] {
        let (ok, out) = curl(name, secure, &root).await;
        assert!(ok && out.contains("backend=app"), "{name}: {out}");
    }
    // The dashboard lists them with their resolver.
    let page = dashboard(&gw).await;
    assert!(
        page.contains("ACME byhttp") && page.contains("ACME byalpn") && page.contains("www.b.test"),
        "{page}"
    );
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

    // Renewed at two thirds of its 60 s (the steps above stay well inside the first 40):
    // a new one within 60 s, served by SNI.
    let renewed = eventually(Duration::from_secs(60), || async {
        issued(&gw, "a.test").await.is_some_and(|t| t > before)
    })
    .await;
    assert!(renewed, "renewal; log:\n{}", gw.log());
    let (ok, out) = curl("a.test", secure, &root).await;
    assert!(ok && out.contains("backend=app"), "{out}");
}

/// The owners of the order locks in the shared table now (`host/pid/random`).
async fn lock_owners(moto: &str, table: &str) -> Vec<String> {
    let (_, scan) = moto_json(
        moto,
        "dynamodb",
        "DynamoDB_20120810.Scan",
        &serde_json::json!({"TableName": table}),
    )
    .await;
    scan["Items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| i["sk"]["S"].as_str().is_some_and(|k| k.starts_with("lock#")))
                .filter_map(|i| i["owner"]["S"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What the test's load balancer did with one validation connection from Pebble.
#[derive(Debug, Clone)]
struct Routed {
    /// The replica it went to, and the lock owners when it arrived.
    to_pid: u32,
    owners: Vec<String>,
}

/// A TCP load balancer in front of the replicas' ports for Pebble's validations: each
/// connection goes to a replica that does not hold an order lock, so a challenge is
/// answered by a replica that did not order it (the shared table's doing).
fn balancer(
    listen: u16,
    backends: Vec<(u32, u16)>,
    moto: String,
    table: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Routed>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await.unwrap();
        let mut turn = 0usize;
        loop {
            let Ok((mut inbound, _)) = l.accept().await else { return };
            let owners = lock_owners(&moto, &table).await;
            turn += 1;
            let free: Vec<&(u32, u16)> = backends
                .iter()
                .filter(|(pid, _)| !owners.iter().any(|o| o.contains(&format!("/{pid}/"))))
                .collect();
            let &(pid, port) = free.get(turn % free.len().max(1)).copied().unwrap_or(&backends[0]);
            log.lock().unwrap().push(Routed { to_pid: pid, owners });
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    })
}

/// The SHA-256 fingerprint of the certificate served for `name` at `port`.
async fn fingerprint(name: &str, port: u16) -> String {
    let (_, out) = tool(
        "sh",
        args(&[
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null \
                 | openssl x509 -noout -fingerprint -sha256"
            ),
        ]),
        vec![],
    )
    .await;
    out.trim().to_string()
}

fn obtained(gw: &GatewayProcess) -> usize {
    gw.log().matches("ACME certificate obtained").count()
}

#[tokio::test]
async fn replicas_share_certificates_and_challenges_through_dynamodb() {
    let dir = temp_dir("acme-shared");
    let moto = Moto::start().await;
    let table = format!("berth-acme-{}", std::process::id());
    let (status, created) = moto_json(
        &moto.endpoint,
        "dynamodb",
        "DynamoDB_20120810.CreateTable",
        &serde_json::json!({
            "TableName": table,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        }),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    // Pebble validates through the test's balancers; certificates last an hour.
    let (lb_http, lb_tls) = (free_port(), free_port());
    let pebble = pebble(&dir, lb_http, lb_tls, 3600, None);
    let (directory, mgmt, pebble_ca) = (&pebble.directory, pebble.mgmt, &pebble.ca);
    let backend = Backend::start("app", Proto::Http1).await;
    let dynamic = dynamic_file(&dir, &backend);
    // The replicas reach moto through a forwarder the test can cut.
    let (to_moto, cut) = berth_e2e::forwarder(moto.endpoint.trim_start_matches("http://").parse().unwrap()).await;
    let through = format!("http://127.0.0.1:{to_moto}");
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", through.as_str())];
    let replica = |p: Ports| {
        let cwd = temp_dir("acme-shared-cwd");
        std::fs::write(
            cwd.join("traefik.yml"),
            static_config(p, &dynamic, directory, pebble_ca, &format!("dynamodb://{table}")),
        )
        .unwrap();
        GatewayProcess::spawn_in(&cwd, &[], &env)
    };
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            web: free_port(),
            secure: free_port(),
            internal: free_port(),
        })
        .collect();
    let replicas: Vec<GatewayProcess> = ports.iter().map(|p| replica(*p)).collect();
    for r in &replicas {
        r.wait_admin().await;
    }
    let routed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pids = |port: fn(&Ports) -> u16| -> Vec<(u32, u16)> {
        replicas
            .iter()
            .zip(&ports)
            .map(|(r, p)| (r.child.id(), port(p)))
            .collect()
    };
    let lb = |listen, to| balancer(listen, to, moto.endpoint.clone(), table.clone(), routed.clone());
    let _http_lb = lb(lb_http, pids(|p| p.web));
    let _tls_lb = lb(lb_tls, pids(|p| p.secure));

    // Every replica serves both certificates.
    let all = eventually(Duration::from_secs(90), || async {
        for r in &replicas {
            if issued(r, "a.test").await.is_none() || issued(r, "www.b.test").await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    let logs = || replicas.iter().map(|r| r.log()).collect::<Vec<_>>().join("\n-----\n");
    assert!(all, "every replica serves both; logs:\n{}", logs());
    let root = pebble_root(&dir, mgmt, pebble_ca).await;
    let mut seen = std::collections::BTreeMap::new();
    for p in &ports {
        for name in ["a.test", "b.test", "www.b.test"] {
            let (ok, out) = curl(name, p.secure, &root).await;
            assert!(ok && out.contains("backend=app"), "{name} on {}: {out}", p.secure);
            seen.entry(name)
                .or_insert_with(Vec::new)
                .push(fingerprint(name, p.secure).await);
        }
    }
    for (name, prints) in &seen {
        assert!(
            prints[0].contains("Fingerprint") && prints.iter().all(|f| f == &prints[0]),
            "{name}: the same certificate everywhere: {prints:?}"
        );
    }
    // One order per certificate, whichever replica made it.
    let orders: usize = replicas.iter().map(obtained).sum();
    assert_eq!(orders, 2, "one order per domain set; logs:\n{}", logs());
    // Each validation reached a replica that did not hold the lock.
    let routed = routed.lock().unwrap().clone();
    eprintln!("validations: {routed:?}");
    assert!(routed.len() >= 2, "validations: {routed:?}");
    for r in &routed {
        assert!(
            !r.owners.is_empty() && r.owners.iter().all(|o| !o.contains(&format!("/{}/", r.to_pid))),
            "a validation went to a replica that did not order: {routed:?}"
        );
    }
    assert!(lock_owners(&moto.endpoint, &table).await.is_empty(), "locks released");

    // A replica that starts later serves them at once, without ordering.
    let late = Ports {
        web: free_port(),
        secure: free_port(),
        internal: free_port(),
    };
    let fourth = replica(late);
    fourth.wait_admin().await;
    let served = eventually(Duration::from_secs(8), || async {
        issued(&fourth, "a.test").await.is_some() && issued(&fourth, "b.test").await.is_some()
    })
    .await;
    assert!(served, "{}", fourth.log());
    assert_eq!(fingerprint("a.test", late.secure).await, seen["a.test"][0]);
    assert_eq!(obtained(&fourth), 0, "{}", fourth.log());

    // The table goes away: every replica keeps serving, and says why nothing is renewed.
    cut.send_replace(true);
    let told = eventually(Duration::from_secs(20), || async {
        let certs = replicas[0].admin_json("/api/certificates").await;
        certs.as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["use"].as_str().is_some_and(|u| u.ends_with("(pending)"))
                    && c["lastError"].as_str().is_some_and(|e| e.starts_with("storage: "))
            })
        })
    })
    .await;
    assert!(told, "{}", replicas[0].admin_json("/api/certificates").await);
    let page = dashboard(&replicas[0]).await;
    assert!(
        page.contains("not obtained") && page.contains("storage: DynamoDB"),
        "{page}"
    );
    for p in ports.iter().chain([&late]) {
        let (ok, out) = curl("a.test", p.secure, &root).await;
        assert!(ok && out.contains("backend=app"), "still served on {}: {out}", p.secure);
    }
}

/// TXT record sets: name -> values (unquoted).
type Txt = std::collections::BTreeMap<String, Vec<String>>;

/// The TXT record sets of a moto hosted zone.
async fn txt_records(moto: &str, zone: &str) -> Txt {
    let (_, xml) = moto_rest(
        moto,
        "route53",
        "GET",
        &format!("/2013-04-01/hostedzone/{zone}/rrset"),
        "",
    )
    .await;
    let mut out = std::collections::BTreeMap::new();
    for set in xml.split("<ResourceRecordSet>").skip(1) {
        if !set.contains("<Type>TXT</Type>") {
            continue;
        }
        let name = set
            .split("<Name>")
            .nth(1)
            .and_then(|n| n.split("</Name>").next())
            .unwrap_or_default();
        let values: Vec<String> = set
            .split("<Value>")
            .skip(1)
            .filter_map(|v| v.split("</Value>").next())
            .map(|v| v.replace("&quot;", "\"").trim_matches('"').to_string())
            .collect();
        out.insert(name.to_string(), values);
    }
    out
}

/// Route 53 (moto) serving DNS: its TXT records copied into pebble-challtestsrv, which
/// Pebble asks, until the task is aborted; every state seen is kept.
fn bridge_txt(
    moto: String,
    zone: String,
    dns_mgmt: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Txt>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mgmt: SocketAddr = format!("127.0.0.1:{dns_mgmt}").parse().unwrap();
        let post = |path: &'static str, body: serde_json::Value| async move {
            let req = http::Request::post(path)
                .header("host", mgmt.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap();
            berth_common::test_util::http1(mgmt, req).await
        };
        let mut last = std::collections::BTreeMap::new();
        loop {
            let now = txt_records(&moto, &zone).await;
            if now != last {
                for name in last.keys().chain(now.keys()) {
                    if last.get(name) != now.get(name) {
                        post("/clear-txt", serde_json::json!({"host": name})).await;
                        for v in now.get(name).into_iter().flatten() {
                            post("/set-txt", serde_json::json!({"host": name, "value": v})).await;
                        }
                    }
                }
                seen.lock().unwrap().push(now.clone());
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The External Account Binding Pebble requires in the DNS-01 test (its key base64url).
const EAB_KID: &str = "kid-1";
const EAB_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

/// DNS-01 with Route 53 against a Pebble that requires External Account Binding: resolver
/// `bydns` binds its account (`eab`), `noeab` does not and is refused; `badname` verifies
/// Pebble for a name its certificate lacks (`caServerName`) and cannot reach it.
#[tokio::test]
async fn dns01_with_route53_obtains_a_wildcard_and_removes_its_records() {
    let dir = temp_dir("acme-dns");
    let moto = Moto::start().await;
    let (status, created) = moto_rest(
        &moto.endpoint,
        "route53",
        "POST",
        "/2013-04-01/hostedzone",
        &format!(
            "<CreateHostedZoneRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Name>d.test.</Name>\
             <CallerReference>berth-{}</CallerReference></CreateHostedZoneRequest>",
            std::process::id()
        ),
    )
    .await;
    assert!(status < 300, "{created}");
    let zone = created
        .split("<Id>/hostedzone/")
        .nth(1)
        .and_then(|z| z.split("</Id>").next())
        .unwrap()
        .to_string();
    // No HTTP-01 or TLS-ALPN-01 here: Pebble's ports for them lead nowhere. The bridge
    // below plays Route 53's name servers, a little behind its API as they are: the
    // resolver's delayBeforeCheck covers that.
    let pebble = pebble(
        &dir,
        closed_port().await.port(),
        closed_port().await.port(),
        3600,
        Some((EAB_KID, EAB_KEY)),
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let _bridge = bridge_txt(moto.endpoint.clone(), zone.clone(), pebble.dns_mgmt, seen.clone());
    let backend = Backend::start("app", Proto::Http1).await;
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    d:\n      rule: Host(`d.test`) || HostRegexp(`^.+\\.d\\.test$`)\n      \
             entryPoints: [websecure]\n      service: app\n      tls:\n        certResolver: bydns\n        \
             domains:\n          - main: d.test\n            sans: [\"*.d.test\"]\n    \
             e:\n      rule: Host(`e.test`)\n      entryPoints: [websecure]\n      service: app\n      tls:\n        \
             certResolver: noeab\n    f:\n      rule: Host(`f.test`)\n      entryPoints: [websecure]\n      service: app\n      \
             tls:\n        certResolver: badname\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\n",
            backend.url()
        ),
    )
    .unwrap();
    let (secure, internal) = (free_port(), free_port());
    let cwd = temp_dir("acme-dns-cwd");
    std::fs::write(
        cwd.join("traefik.yml"),
        format!(
            "entryPoints:\n  websecure:\n    address: \"127.0.0.1:{secure}\"\n    http:\n      tls: {{}}\n  traefik:\n    \
             address: \"127.0.0.1:{internal}\"\nproviders:\n  file:\n    filename: \"{dynamic}\"\n\
             certificatesResolvers:\n  bydns:\n    acme:\n      caServer: \"{directory}\"\n      caCertificates: [\"{ca}\"]\n      \
             storage: \"{storage}\"\n      caServerName: pebble.test\n      dnsChallenge:\n        provider: route53\n        \
             delayBeforeCheck: 1s\n      \
             eab:\n        kid: {EAB_KID}\n        hmacEncoded: {EAB_KEY}\n  noeab:\n    acme:\n      caServer: \"{directory}\"\n      \
             caCertificates: [\"{ca}\"]\n      storage: \"{storage}\"\n      dnsChallenge:\n        provider: route53\n  \
             badname:\n    acme:\n      caServer: \"{directory}\"\n      caCertificates: [\"{ca}\"]\n      \
             caServerName: other.test\n      storage: \"{storage}\"\n      dnsChallenge:\n        provider: route53\n",
            dynamic = dynamic.display(),
            directory = pebble.directory,
            ca = pebble.ca.display(),
            storage = dir.join("acme.json").display(),
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn_in(&cwd, &[], &[("AWS_ENDPOINT_URL_ROUTE_53", moto.endpoint.as_str())]);
    gw.wait_admin().await;
    let issued_both = eventually(Duration::from_secs(60), || async {
        issued(&gw, "d.test").await.is_some() && issued(&gw, "*.d.test").await.is_some()
    })
    .await;
    assert!(
        issued_both,
        "{}\nTXT records seen: {:?}\nlog:\n{}",
        gw.admin_json("/api/certificates").await,
        seen.lock().unwrap(),
        gw.log()
    );
    let root = pebble_root(&dir, pebble.mgmt, &pebble.ca).await;
    for name in ["d.test", "www.d.test", "api.d.test"] {
        let (ok, out) = curl(name, secure, &root).await;
        assert!(ok && out.contains("backend=app"), "{name}: {out}");
    }
    // Without the binding, Pebble refuses the account; caServerName: Pebble's certificate
    // is verified for that name (bydns: pebble.test, which it has), not caServer's host,
    // and one it lacks fails the handshake. Both reasons are shown.
    let error_of = |certs: &serde_json::Value, resolver: &str| {
        certs
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|c| c["use"] == format!("ACME {resolver} (pending)").as_str())
            })
            .and_then(|c| c["lastError"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let shown = eventually(Duration::from_secs(20), || async {
        let certs = gw.admin_json("/api/certificates").await;
        error_of(&certs, "noeab")
            .to_ascii_lowercase()
            .contains("externalaccount")
            && error_of(&certs, "badname").contains("not valid for name \"other.test\"")
    })
    .await;
    assert!(shown, "{}", gw.admin_json("/api/certificates").await);
    // One record set held both answers (the name's and the wildcard's) at once.
    let states = seen.lock().unwrap().clone();
    assert!(
        states
            .iter()
            .any(|s| s.get("_acme-challenge.d.test.").is_some_and(|v| v.len() == 2)),
        "{states:?}"
    );
    // And the records are gone once the order is done.
    let cleaned = eventually(Duration::from_secs(10), || async {
        txt_records(&moto.endpoint, &zone).await.is_empty()
    })
    .await;
    assert!(cleaned, "{:?}", txt_records(&moto.endpoint, &zone).await);
}

/// Renewal information (RFC 9773) moves the renewal: a directory in front of Pebble adds
/// `renewalInfo` and says the first certificate's window is open now, the next one's in
/// twenty minutes; the first is renewed at once (not at two thirds of its hour), the
/// second is scheduled inside its window.
#[tokio::test]
async fn renewal_information_moves_the_renewal() {
    let dir = temp_dir("acme-ari");
    let web = free_port();
    let pebble = pebble(&dir, web, closed_port().await.port(), 3600, None);
    let mut ari = berth_e2e::PythonServer::start(
        "ari_directory.py",
        &[
            dir.join("server.pem").to_str().unwrap(),
            dir.join("server.key").to_str().unwrap(),
            &pebble.directory,
            pebble.ca.to_str().unwrap(),
        ],
    );
    let backend = Backend::start("app", Proto::Http1).await;
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    a:\n      rule: Host(`a.test`)\n      entryPoints: [websecure]\n      service: app\n      \
             tls:\n        certResolver: le\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\n",
            backend.url()
        ),
    )
    .unwrap();
    let (secure, internal) = (free_port(), free_port());
    let cwd = temp_dir("acme-ari-cwd");
    std::fs::write(
        cwd.join("traefik.yml"),
        format!(
            "entryPoints:\n  web:\n    address: \"127.0.0.1:{web}\"\n  websecure:\n    address: \"127.0.0.1:{secure}\"\n    \
             http:\n      tls: {{}}\n  traefik:\n    address: \"127.0.0.1:{internal}\"\n\
             providers:\n  file:\n    filename: \"{dynamic}\"\ncertificatesResolvers:\n  le:\n    acme:\n      \
             caServer: \"https://127.0.0.1:{port}/dir\"\n      caCertificates: [\"{ca}\"]\n      storage: \"{storage}\"\n      \
             httpChallenge:\n        entryPoint: web\n",
            dynamic = dynamic.display(),
            port = ari.port,
            ca = pebble.ca.display(),
            storage = dir.join("acme.json").display(),
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn_in(&cwd, &[], &[]);
    gw.wait_admin().await;
    let renewed = eventually(Duration::from_secs(60), || async { obtained(&gw) >= 2 }).await;
    assert!(renewed, "renewed on the CA's word; log:\n{}", gw.log());
    // The renewal named the certificate it replaces; Pebble does not take the field, so
    // it was ordered again without.
    assert!(gw.log().contains("the CA did not take `replaces`"), "{}", gw.log());
    // The new certificate renews inside its window, 20 to 21 minutes from now, by ARI.
    let scheduled = eventually(Duration::from_secs(10), || async {
        let certs = gw.admin_json("/api/certificates").await;
        certs.as_array().unwrap().iter().any(|c| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            c["renewalBy"] == "ARI"
                && c["renewAtUnix"]
                    .as_i64()
                    .is_some_and(|t| (now + 19 * 60..=now + 21 * 60 + 5).contains(&t))
        })
    })
    .await;
    assert!(scheduled, "{}", gw.admin_json("/api/certificates").await);
    // The fixture was asked about the first certificate (open window), then the second.
    let asked: Vec<String> = {
        use std::io::BufRead;
        let out = &mut ari.out;
        let mut lines = Vec::new();
        for _ in 0..2 {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            lines.push(l.trim().to_string());
        }
        lines
    };
    assert!(
        asked[0].ends_with(" now") && asked[1].ends_with(" later") && asked[0] != asked[1],
        "{asked:?}"
    );
    // And no third order: the second certificate is not due.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(obtained(&gw), 2, "{}", gw.log());
    let root = pebble_root(&dir, pebble.mgmt, &pebble.ca).await;
    let (ok, out) = curl("a.test", secure, &root).await;
    assert!(ok && out.contains("backend=app"), "{out}");
}
