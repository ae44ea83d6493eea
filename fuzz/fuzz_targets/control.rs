#![no_main]
//! The control-API messages as the gateway and the sidecars decode them: the JSON of
//! every message type, the CSR inside a certificate request (parsed and signed by a real
//! mesh CA, which must refuse anything but a well-formed CSR and always issue for the
//! identity it was given, never one the CSR asks for), and the mesh view's identities and
//! endpoints; an IAM proof's headers, the STS answer and the ARNs in it, and the CSR's key
//! hash ([`berth_common::iam`]). Nothing may panic.

use std::sync::OnceLock;
use std::time::Duration;

use berth_common::control::{CertificateRequest, Deregistration, MeshView, Registration};
use berth_common::identity::SpiffeId;
use berth_gateway::MeshCa;
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static MeshCa {
    static CA: OnceLock<MeshCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-fuzz-ca-{}", std::process::id()));
        MeshCa::dev(&dir, "fuzz.local").expect("dev CA")
    })
}

fn issue(csr_pem: &str) {
    let id = SpiffeId::for_service("fuzz.local", "c", "s").expect("identity");
    if let Ok(issued) = ca().issue(csr_pem, &id, Duration::from_secs(3600)) {
        let der = pem::parse(issued.chain_pem.as_bytes()).expect("issued PEM");
        let got = berth_common::identity::spiffe_id_of(&der.contents().to_vec().into()).expect("issued SAN");
        assert_eq!(got, id, "issued for another identity");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<CertificateRequest>(body) {
                if let Some(proof) = &r.iam {
                    let window = Duration::from_secs(300);
                    let _ = berth_common::iam::check_headers(&proof.headers, std::time::SystemTime::now(), window);
                }
                let _ = berth_common::iam::csr_key_hash(&r.csr_pem);
                issue(&r.csr_pem);
            }
        }
        5 => {
            let text = String::from_utf8_lossy(body);
            if let Ok(id) = berth_common::iam::parse_caller_identity(&text) {
                let _ = berth_common::iam::AssumedRole::parse(&id.arn);
                let _ = berth_common::iam::role_of(&id.arn);
            }
            let _ = berth_common::iam::Authorization::parse(&text);
            let _ = berth_common::iam::parse_amz_date(&text);
        }
        1 => issue(&String::from_utf8_lossy(body)),
        2 => {
            if let Ok(r) = serde_json::from_slice::<Registration>(body) {
                let again: Registration =
                    serde_json::from_slice(&serde_json::to_vec(&r).expect("encode")).expect("decode");
                assert_eq!(again, r, "registration does not round-trip");
            }
        }
        3 => {
            let _ = serde_json::from_slice::<Deregistration>(body);
        }
        _ => {
            if let Ok(v) = serde_json::from_slice::<MeshView>(body) {
                for s in &v.services {
                    let _ = SpiffeId::parse(&s.identity);
                    for e in &s.endpoints {
                        let _ = e.parse::<std::net::SocketAddr>();
                    }
                }
                let _ = MeshView::version_of(&v.services, &v.unknown, &v.gateways);
            }
        }
    }
});
