//! A client of the gateway's control API as a sidecar is one: TLS to the control
//! listener from a given source address (a task's), the gateway's identity checked,
//! optionally a client certificate.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

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
