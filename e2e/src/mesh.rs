//! Calls into the mesh as a peer makes them: a certificate from a mesh CA for an
//! identity, and a request to a sidecar's inbound over mTLS with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_common::identity::SpiffeId;
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, client_config};
use berth_gateway::MeshCa;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

/// A ten-minute certificate for `id` from `ca`, as a client certificate.
pub fn mesh_slot(ca: &MeshCa, id: &SpiffeId) -> Arc<CertSlot> {
    let (issued, key) = ca.issue_local(id, Duration::from_secs(600)).unwrap();
    let s = Arc::new(CertSlot::default());
    s.set(MeshCa::certified_key(&issued, &key).unwrap());
    s
}

/// `req` to a sidecar's inbound over mTLS (HTTP/1.1, a new connection) as `me`,
/// trusting `anchors` and expecting the task to be `expect`.
pub async fn inbound_call(
    inbound: SocketAddr,
    anchors: &TrustAnchors,
    me: Option<Arc<CertSlot>>,
    expect: &SpiffeId,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<berth_common::test_util::Reply, String> {
    let cfg = client_config(me, anchors.clone(), PeerPolicy::Exact(expect.clone())).unwrap();
    let tcp = tokio::net::TcpStream::connect(inbound)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("sidecar.berth").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(berth_common::test_util::read_reply(resp).await)
}
