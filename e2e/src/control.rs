//! A client of the gateway's control API as a sidecar is one: TLS to the control
//! listener from a given source address (a task's), the gateway's identity checked,
//! optionally a client certificate; and the certificate requests sidecars make on it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use berth_common::control::{CERTIFICATES_PATH, CertificateRequest, CertificateResponse, ErrorResponse, IamProof};
use berth_common::identity::SpiffeId;
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, client_config};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

/// One control-API request from `source` to the gateway of trust domain `berth.local`
/// at `control`; the status and the body.
pub async fn control_call(
    control: SocketAddr,
    anchors: &TrustAnchors,
    source: Ipv4Addr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    client: Option<Arc<CertSlot>>,
) -> (u16, Vec<u8>) {
    let gateway = SpiffeId::gateway("berth.local").unwrap();
    let cfg = client_config(client, anchors.clone(), PeerPolicy::Exact(gateway)).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let tcp = socket.connect(control).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("gateway.berth").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.berth")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

/// A CSR as a sidecar makes it, for a new key: the PEM and the key.
pub fn new_csr() -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (pem, key)
}

/// Where a sidecar asks for its certificate: the control API, its trust, and the task
/// (its ARN, and its address, the request's source).
pub struct Asker<'a> {
    pub control: SocketAddr,
    pub anchors: &'a TrustAnchors,
    pub task_arn: &'a str,
    pub source: Ipv4Addr,
}

impl Asker<'_> {
    /// `POST /v1/certificates` with these proofs (a renewal when `client` holds the
    /// current certificate): the status and the body.
    pub async fn ask(
        &self,
        csr_pem: &str,
        token: Option<&str>,
        iam: Option<IamProof>,
        client: Option<Arc<CertSlot>>,
    ) -> (u16, Vec<u8>) {
        let body = serde_json::to_vec(&CertificateRequest {
            task_arn: self.task_arn.to_string(),
            csr_pem: csr_pem.to_string(),
            token: token.map(str::to_string),
            iam,
        })
        .unwrap();
        control_call(
            self.control,
            self.anchors,
            self.source,
            "POST",
            CERTIFICATES_PATH,
            body,
            client,
        )
        .await
    }

    /// A proof by `signer` for a new CSR, for `trust_domain`: the status and
    /// [`refusal_text`].
    pub async fn prove(&self, signer: &berth_sidecar::IamSigner, trust_domain: &str) -> (u16, String) {
        let (csr_pem, _) = new_csr();
        let proof = signer.proof(&csr_pem, trust_domain).await.unwrap();
        let (status, body) = self.ask(&csr_pem, None, Some(proof), None).await;
        (status, refusal_text(&body))
    }
}

/// A control-API refusal as `code: reason`; any other body as text.
pub fn refusal_text(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => format!("{}: {}", e.code, e.error),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// An issued certificate and its key as a client certificate (for renewals and calls
/// over mTLS).
pub fn slot_of(issued: &CertificateResponse, key: &rcgen::KeyPair) -> Arc<CertSlot> {
    let slot = Arc::new(CertSlot::default());
    slot.set(
        berth_common::tls::certified_key_from_pem(
            issued.certificate_chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            "test",
        )
        .unwrap(),
    );
    slot
}
