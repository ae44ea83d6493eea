//! The mesh CA rotated in `berth-local up` while north-south (client -> gateway -> mTLS
//! -> sidecar -> whoami) and east-west (caller -> its sidecar -> mTLS -> whoami's
//! sidecar) traffic runs, as docs/security.md says to do it: add the new root to the
//! trust bundle, wait until every sidecar trusts it, switch the CA, wait until every
//! sidecar holds a certificate from it, remove the old root. The gateway follows its
//! files; sidecars take the bundle with each certificate. No request may fail, and at
//! the end a certificate from the old CA opens no sidecar.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use berth_common::identity::SpiffeId;
use berth_common::mtls::TrustAnchors;
use berth_common::test_util::{eventually, get, try_http1};
use berth_e2e::{LocalUp, ecs_client, inbound_call, mesh_slot, running_tasks, temp_dir};
use berth_gateway::{MeshCa, new_root};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const SERVICES: [&str; 3] = ["whoami", "caller", "greeter"];

/// Write a file whole (a rename), as a secrets agent would: the gateway never reads half.
fn put(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn anchors(pem: &str) -> TrustAnchors {
    TrustAnchors::from_certs(&[CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()]).unwrap()
}

/// Every sidecar of the mesh: its task address and its identity.
async fn sidecars(ecs: &aws_sdk_ecs::Client) -> Vec<(IpAddr, SpiffeId)> {
    let mut out = Vec::new();
    for service in SERVICES {
        for t in running_tasks(ecs, service).await {
            let id = SpiffeId::for_service("berth.local", "default", service).unwrap();
            out.push((t.address.unwrap().parse().unwrap(), id));
        }
    }
    out
}

/// Whether every sidecar trusts exactly the roots named `subjects` (its metrics).
async fn all_trust(sidecars: &[(IpAddr, SpiffeId)], subjects: &[&str]) -> bool {
    for (ip, _) in sidecars {
        let Some(r) = try_http1(SocketAddr::new(*ip, 15000), get("a", "/metrics")).await else {
            return false;
        };
        let trusted: Vec<&str> = r
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("berth_sidecar_trust_anchor{subject=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        if trusted.len() != subjects.len() || !subjects.iter().all(|s| trusted.contains(s)) {
            return false;
        }
    }
    true
}

/// Whether every sidecar presents a certificate that chains to `roots` (a handshake as
/// the gateway, with a certificate from `ca`).
async fn all_certified_by(sidecars: &[(IpAddr, SpiffeId)], roots: &TrustAnchors, ca: &MeshCa) -> bool {
    let me = mesh_slot(ca, &SpiffeId::gateway("berth.local").unwrap());
    for (ip, id) in sidecars {
        let call = inbound_call(SocketAddr::new(*ip, 15443), roots, Some(me.clone()), id, get("x", "/"));
        if tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .map(|r| r.is_ok())
            != Ok(true)
        {
            return false;
        }
    }
    true
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    last_failure: std::sync::Mutex<String>,
}

/// Requests to `path` on `host` through the gateway until `stop`, each on a new
/// connection, counted.
fn run_load(web: SocketAddr, host: &'static str, path: &'static str, stop: Arc<AtomicBool>) -> Arc<Load> {
    let load = Arc::new(Load::default());
    let l = load.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let r = tokio::time::timeout(Duration::from_secs(10), try_http1(web, get(host, path))).await;
            match r {
                Ok(Some(r)) if r.status == 200 => l.ok.fetch_add(1, Ordering::Relaxed),
                other => {
                    *l.last_failure.lock().unwrap() = format!("{:?}", other.map(|r| r.map(|r| (r.status, r.body))));
                    l.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    load
}

#[tokio::test]
async fn the_mesh_ca_rotates_under_load_with_no_failed_request() {
    berth_common::tls::install_crypto_provider();
    let dir = temp_dir("ca-rotation");
    let (old_cert, old_key) = new_root("Berth mesh CA 1").unwrap();
    let (new_cert, new_key) = new_root("Berth mesh CA 2").unwrap();
    let (old_ca, new_ca) = (
        MeshCa::from_pem(&old_cert, &old_key, "berth.local").unwrap(),
        MeshCa::from_pem(&new_cert, &new_key, "berth.local").unwrap(),
    );
    let (cert, key, bundle) = (dir.join("ca.crt"), dir.join("ca.key"), dir.join("bundle.pem"));
    put(&cert, &old_cert);
    put(&key, &old_key);
    put(&bundle, &old_cert);
    // Certificates of 20 s: sidecars renew every ~14 s, so each step takes seconds.
    let local = LocalUp::start_with(
        "127.0.155.1",
        &[
            "--mesh-ca-cert",
            cert.to_str().unwrap(),
            "--mesh-ca-key",
            key.to_str().unwrap(),
            "--mesh-trust-bundle",
            bundle.to_str().unwrap(),
            "--gateway-arg",
            "--mesh-cert-lifetime=20s",
        ],
    );
    local.wait_ready().await;
    let ecs = ecs_client(&format!("http://{}", local.api));
    let mesh = sidecars(&ecs).await;
    assert_eq!(mesh.len(), 6, "3 whoami, 1 caller, 2 greeter");
    let new_only = anchors(&new_cert);
    assert!(all_trust(&mesh, &["CN=Berth mesh CA 1"]).await);

    let stop = Arc::new(AtomicBool::new(false));
    let north_south = run_load(local.web, "whoami.localhost", "/", stop.clone());
    let east_west = run_load(local.web, "caller.localhost", "/call?url=http://whoami/", stop.clone());
    let wait = Duration::from_secs(60);

    // 1. The new root beside the old one; the old CA still signs.
    put(&bundle, &format!("{old_cert}{new_cert}"));
    let both = ["CN=Berth mesh CA 1", "CN=Berth mesh CA 2"];
    assert!(
        eventually(wait, || all_trust(&mesh, &both)).await,
        "every sidecar trusts both roots"
    );

    // 2. The new CA signs; every sidecar renews onto it.
    put(&key, &new_key);
    put(&cert, &new_cert);
    assert!(
        eventually(wait, || all_certified_by(&mesh, &new_only, &new_ca)).await,
        "every sidecar holds a certificate from the new CA"
    );

    // 3. The old root removed, once no certificate from it is left.
    put(&bundle, &new_cert);
    assert!(
        eventually(wait, || all_trust(&mesh, &["CN=Berth mesh CA 2"])).await,
        "every sidecar trusts the new root only"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (name, load) in [("north-south", &north_south), ("east-west", &east_west)] {
        let (ok, failed) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
        println!("{name}: {ok} requests, {failed} failed");
        assert!(ok > 100, "{name}: the load ran ({ok} requests)");
        assert_eq!(failed, 0, "{name}: {}", load.last_failure.lock().unwrap());
    }
    // A certificate from the old CA opens no sidecar now; one from the new CA does.
    let me = SpiffeId::gateway("berth.local").unwrap();
    for (ip, id) in &mesh {
        let inbound = SocketAddr::new(*ip, 15443);
        let refused = inbound_call(inbound, &new_only, Some(mesh_slot(&old_ca, &me)), id, get("x", "/")).await;
        assert!(refused.is_err(), "{ip}: a certificate of the removed CA is refused");
        assert!(
            inbound_call(inbound, &new_only, Some(mesh_slot(&new_ca, &me)), id, get("x", "/"))
                .await
                .is_ok()
        );
    }
}
