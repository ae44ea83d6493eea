//! Mesh identity with real rustls handshakes over loopback and real certificates from
//! the mesh CA: what is accepted, and every refusal with its reason.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_common::identity::{SpiffeId, spiffe_id_of};
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, client_config, server_config};
use berth_gateway::{MeshCa, new_intermediate, new_root};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "berth.local";

fn id(service: &str) -> SpiffeId {
    SpiffeId::for_service(TD, "prod", service).unwrap()
}

fn ca() -> MeshCa {
    berth_common::tls::install_crypto_provider();
    let (c, k) = new_root("test root").unwrap();
    MeshCa::from_pem(&c, &k, TD).unwrap()
}

/// A CSR (optionally asking for a SAN URI) and its key.
fn csr(asking: Option<&str>) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    if let Some(uri) = asking {
        p.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(uri).unwrap())];
    }
    (p.serialize_request(&key).unwrap().pem().unwrap(), key)
}

fn slot_for(ca: &MeshCa, who: &SpiffeId, lifetime: Duration) -> Arc<CertSlot> {
    let (csr_pem, key) = csr(None);
    let issued = ca.issue(&csr_pem, who, lifetime).unwrap();
    let slot = Arc::new(CertSlot::default());
    slot.set(MeshCa::certified_key(&issued, &key.serialize_pem()).unwrap());
    slot
}

fn anchors(ca: &MeshCa) -> TrustAnchors {
    TrustAnchors::from_certs(std::slice::from_ref(ca.anchor())).unwrap()
}

/// Run one handshake: returns (client result, server result with the client's identity).
async fn handshake(
    server_slot: Arc<CertSlot>,
    server_anchors: TrustAnchors,
    client_slot: Option<Arc<CertSlot>>,
    client_anchors: TrustAnchors,
    client_expects: PeerPolicy,
) -> (Result<(), String>, Result<SpiffeId, String>) {
    let scfg = server_config(server_slot, server_anchors, PeerPolicy::TrustDomain(TD.into())).unwrap();
    let ccfg = client_config(client_slot, client_anchors, client_expects).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(scfg))
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = spiffe_id_of(&tls.get_ref().1.peer_certificates().unwrap()[0]).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        tls.write_all(b"k").await.map_err(|e| e.to_string())?;
        Ok(peer)
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(ccfg))
            .connect(ServerName::try_from("sidecar.berth").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"p").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    }
    .await;
    let server = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    (client, server)
}

#[tokio::test]
async fn mutual_tls_by_spiffe_id() {
    let ca = ca();
    let (orders, billing) = (id("orders"), id("billing"));
    let (c, s) = handshake(
        slot_for(&ca, &orders, Duration::from_secs(3600)),
        anchors(&ca),
        Some(slot_for(&ca, &billing, Duration::from_secs(3600))),
        anchors(&ca),
        PeerPolicy::Exact(orders.clone()),
    )
    .await;
    assert_eq!(c, Ok(()));
    assert_eq!(s, Ok(billing), "the server learns the verified caller identity");
}

#[tokio::test]
async fn refusals_are_clear() {
    let ca = ca();
    let other_ca = {
        let (c, k) = new_root("another root").unwrap();
        MeshCa::from_pem(&c, &k, TD).unwrap()
    };
    let orders = id("orders");
    let good_server = || slot_for(&ca, &orders, Duration::from_secs(3600));

    // An expired client certificate.
    let (csr_pem, key) = csr(None);
    let now = SystemTime::now();
    let expired = ca
        .issue_between(
            &csr_pem,
            &id("billing"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let slot = Arc::new(CertSlot::default());
    slot.set(MeshCa::certified_key(&expired, &key.serialize_pem()).unwrap());
    let (_, s) = handshake(
        good_server(),
        anchors(&ca),
        Some(slot),
        anchors(&ca),
        PeerPolicy::Exact(orders.clone()),
    )
    .await;
    assert!(s.as_ref().unwrap_err().contains("xpired"), "{s:?}");

    // A client certificate from another CA.
    let foreign = slot_for(&other_ca, &id("billing"), Duration::from_secs(3600));
    let (_, s) = handshake(
        good_server(),
        anchors(&ca),
        Some(foreign),
        anchors(&ca),
        PeerPolicy::Exact(orders.clone()),
    )
    .await;
    assert!(s.as_ref().unwrap_err().contains("UnknownIssuer"), "{s:?}");

    // The right CA but the wrong identity: the client expected orders, got payments.
    let imposter = slot_for(&ca, &id("payments"), Duration::from_secs(3600));
    let client = slot_for(&ca, &id("billing"), Duration::from_secs(3600));
    let (c, _) = handshake(
        imposter,
        anchors(&ca),
        Some(client),
        anchors(&ca),
        PeerPolicy::Exact(orders.clone()),
    )
    .await;
    let err = c.unwrap_err();
    assert!(
        err.contains("spiffe://berth.local/ecs/prod/payments is not the expected spiffe://berth.local/ecs/prod/orders"),
        "{err}"
    );

    // No client certificate at all: mTLS is required.
    let (_, s) = handshake(
        good_server(),
        anchors(&ca),
        None,
        anchors(&ca),
        PeerPolicy::Exact(orders.clone()),
    )
    .await;
    assert!(s.is_err(), "{s:?}");

    // A server with no certificate yet fails closed.
    let empty = Arc::new(CertSlot::default());
    let (c, s) = handshake(
        empty,
        anchors(&ca),
        Some(slot_for(&ca, &id("b"), Duration::from_secs(60))),
        anchors(&ca),
        PeerPolicy::Exact(orders),
    )
    .await;
    assert!(c.is_err() && s.is_err());
}

#[test]
fn csrs_cannot_choose_their_identity() {
    let ca = ca();
    // Malformed CSR.
    let err = ca.issue(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        &id("x"),
        Duration::from_secs(60),
    );
    assert!(err.unwrap_err().to_string().contains("CSR is malformed"));
    let err = ca.issue("not a csr", &id("x"), Duration::from_secs(60));
    assert!(err.is_err());
    // A CSR asking for another identity gets the one the gateway decided, only.
    let (csr_pem, _) = csr(Some("spiffe://berth.local/ecs/prod/admin"));
    let issued = ca.issue(&csr_pem, &id("orders"), Duration::from_secs(60)).unwrap();
    let der = rustls_pki_types::pem::PemObject::pem_slice_iter(issued.chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(spiffe_id_of(&der).unwrap(), id("orders"));
    assert!(!issued.serial.is_empty());
}

#[tokio::test]
async fn an_intermediate_signed_by_an_offline_root_is_supported() {
    berth_common::tls::install_crypto_provider();
    let (root_cert, root_key) = new_root("offline root").unwrap();
    let (int_cert, int_key) = new_intermediate(&root_cert, &root_key, "online intermediate").unwrap();
    let ca = MeshCa::from_pem(&format!("{int_cert}{root_cert}"), &int_key, TD).unwrap();
    let root_der = rustls_pki_types::pem::PemObject::pem_slice_iter(root_cert.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(ca.anchor(), &root_der, "peers trust the root");
    let (c, s) = handshake(
        slot_for(&ca, &id("orders"), Duration::from_secs(600)),
        anchors(&ca),
        Some(slot_for(&ca, &id("billing"), Duration::from_secs(600))),
        anchors(&ca),
        PeerPolicy::Exact(id("orders")),
    )
    .await;
    assert_eq!(c, Ok(()));
    assert_eq!(s, Ok(id("billing")));
}

#[tokio::test]
async fn rotation_keeps_live_connections_and_serves_the_new_certificate() {
    let ca = ca();
    let orders = id("orders");
    let server_slot = slot_for(&ca, &orders, Duration::from_secs(3));
    let first_serial = server_slot.get().unwrap().cert[0].clone();
    let scfg = Arc::new(server_config(server_slot.clone(), anchors(&ca), PeerPolicy::TrustDomain(TD.into())).unwrap());
    let client_slot = slot_for(&ca, &id("billing"), Duration::from_secs(3600));
    let ccfg = Arc::new(client_config(Some(client_slot), anchors(&ca), PeerPolicy::Exact(orders.clone())).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(scfg);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut b = [0u8; 1];
                while tls.read_exact(&mut b).await.is_ok() {
                    if tls.write_all(&b).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let connect = || {
        let ccfg = ccfg.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(ccfg)
                .connect(ServerName::try_from("sidecar.berth").unwrap(), tcp)
                .await
                .unwrap()
        }
    };
    let mut long_lived = connect().await;
    assert_eq!(long_lived.get_ref().1.peer_certificates().unwrap()[0], first_serial);
    // Rotate at 70 % of the 3 s lifetime.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    server_slot.set(slot_for(&ca, &orders, Duration::from_secs(3600)).get().unwrap());
    let fresh = connect().await;
    assert_ne!(
        fresh.get_ref().1.peer_certificates().unwrap()[0],
        first_serial,
        "new handshakes get the new certificate"
    );
    // The old connection keeps working past the old certificate's expiry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    long_lived.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    long_lived.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
}

#[test]
fn the_dev_ca_is_created_once_and_reused() {
    berth_common::tls::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("berth-dev-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = MeshCa::dev(&dir, TD).unwrap();
    let b = MeshCa::dev(&dir, TD).unwrap();
    assert_eq!(a.anchor(), b.anchor());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the CA key is private");
}
