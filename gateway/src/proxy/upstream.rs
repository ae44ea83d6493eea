//! The gateway's keep-alive pools to upstreams: HTTP/1.1 (or h2 by ALPN), HTTP/2 only
//! (h2c), and mTLS to sidecars. The dialling itself (`Connector`, `MeshConnector`) is
//! `berth_common::upstream`, shared with the sidecar and the EC2 client.

use std::sync::Arc;
use std::time::Duration;

pub(crate) use berth_common::upstream::{Connector, MeshConnector, MeshPeers};
use berth_common::upstream::{Dials, pool};
use hyper_util::client::legacy::Client;
use rustls::RootCertStore;

use super::Body;

/// The upstream pools: one negotiating HTTP/1.1 (or h2 by ALPN), one HTTP/2 only (h2c).
#[derive(Clone)]
pub(crate) struct Clients {
    pub http1: Client<Connector, Body>,
    pub h2c: Client<Connector, Body>,
    /// mTLS to sidecars, only when the mesh is enabled.
    pub mesh: Option<MeshClient>,
    /// To `forwardAuth` servers.
    pub auth: Arc<super::auth::AuthClients>,
}

impl Clients {
    /// `dials` counts the connections both pools open.
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        roots: RootCertStore,
        dials: Dials,
    ) -> Clients {
        let auth = Arc::new(super::auth::AuthClients::new(
            connect_timeout,
            idle_timeout,
            roots.clone(),
        ));
        let connector = Connector::new(connect_timeout, roots).counting(dials);
        let http1 = pool(idle_timeout)
            .pool_max_idle_per_host(usize::MAX)
            .build(connector.clone());
        let h2c = pool(idle_timeout).http2_only(true).build(connector);
        Clients {
            http1,
            h2c,
            mesh: None,
            auth,
        }
    }
}

/// The pool to sidecars, when the gateway runs the mesh.
#[derive(Clone)]
pub(crate) struct MeshClient {
    pub client: Client<MeshConnector, Body>,
    pub peers: MeshPeers,
    pub trust_domain: String,
    /// For TCP routers to tasks behind a sidecar (ALPN set per connection).
    pub tcp_tls: Arc<rustls::ClientConfig>,
}

impl MeshClient {
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        slot: Arc<berth_common::mtls::CertSlot>,
        anchors: berth_common::mtls::TrustAnchors,
        trust_domain: &str,
        dials: Dials,
    ) -> Result<MeshClient, rustls::Error> {
        use berth_common::mtls::{PeerPolicy, client_config};
        let cfg = client_config(Some(slot), anchors, PeerPolicy::TrustDomain(trust_domain.into()))?;
        let mut tcp_tls = cfg.clone();
        tcp_tls.alpn_protocols.clear();
        let peers = MeshPeers::default();
        let connector = MeshConnector::new(connect_timeout, cfg, peers.clone()).counting(dials);
        Ok(MeshClient {
            client: pool(idle_timeout).build(connector),
            peers,
            trust_domain: trust_domain.to_string(),
            tcp_tls: Arc::new(tcp_tls),
        })
    }
}
