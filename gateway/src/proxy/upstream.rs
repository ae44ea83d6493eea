//! The gateway's keep-alive pools to upstreams: HTTP/1.1 (or h2 by ALPN), HTTP/2 only
//! (h2c), and mTLS to sidecars. The dialling itself (`Connector`, `MeshConnector`) is
//! `berth_common::upstream`, shared with the sidecar and the EC2 client.

use std::sync::Arc;
use std::time::Duration;

use berth_common::pool::Http1Pool;
use berth_common::transport::Transport;
pub(crate) use berth_common::upstream::{Connector, MeshConnector, MeshPeers};
use berth_common::upstream::{Dials, pool};
use hyper_util::client::legacy::Client;
use rustls::RootCertStore;

use super::Body;

/// The upstream pools: one negotiating HTTP/1.1 (or h2 by ALPN), one HTTP/2 only (h2c).
#[derive(Clone)]
pub(crate) struct Clients {
    pub http1: Client<Connector, Body>,
    /// Berth's own pool, for HTTP/1.1 to plain `http://` endpoints (the hot path).
    pub plain: Http1Pool,
    pub h2c: Client<Connector, Body>,
    /// mTLS to sidecars, only when the mesh is enabled.
    pub mesh: Option<MeshClient>,
    /// To `forwardAuth` servers.
    pub auth: Arc<super::auth::AuthClients>,
    /// The pools of `serversTransports`.
    pub transports: Arc<TransportPools>,
}

impl Clients {
    /// `dials` counts the connections both pools open; `insecure`: the gateway's own
    /// pools take any certificate (`--upstream-insecure-skip-verify`).
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        roots: RootCertStore,
        insecure: bool,
        dials: Dials,
    ) -> Clients {
        let auth = Arc::new(super::auth::AuthClients::new(
            connect_timeout,
            idle_timeout,
            roots.clone(),
        ));
        let transports = Arc::new(TransportPools {
            roots: roots.clone(),
            dials: dials.clone(),
            pools: Default::default(),
        });
        let connector = match insecure {
            true => {
                let tls = berth_common::transport::insecure_client_config().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "no TLS client configuration that skips verification; verifying");
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots.clone())
                        .with_no_client_auth()
                });
                Connector::with_tls(connect_timeout, tls)
            }
            false => Connector::new(connect_timeout, roots),
        }
        .counting(dials);
        let http1 = pool(idle_timeout)
            .pool_max_idle_per_host(usize::MAX)
            .build(connector.clone());
        let plain = Http1Pool::new(connector.clone(), idle_timeout, usize::MAX);
        let h2c = pool(idle_timeout).http2_only(true).build(connector);
        Clients {
            http1,
            plain,
            h2c,
            mesh: None,
            auth,
            transports,
        }
    }
}

/// The pools of one `serversTransport`: HTTP/1.1 (or h2 by ALPN), and h2c.
pub(crate) struct TransportClients {
    pub transport: Arc<Transport>,
    pub http1: Client<Connector, Body>,
    pub h2c: Client<Connector, Body>,
}

impl std::fmt::Debug for TransportClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportClients")
            .field("transport", &self.transport.name)
            .finish()
    }
}

/// One pool per transport in use: kept across snapshots while the builder keeps the
/// transport (its configuration did not change), dropped with the last snapshot using it.
pub(crate) struct TransportPools {
    roots: RootCertStore,
    dials: Dials,
    pools: std::sync::Mutex<Vec<Arc<TransportClients>>>,
}

impl TransportPools {
    /// The pools for `t`, made the first time it is seen.
    pub(crate) fn get(&self, t: &Arc<Transport>) -> Result<Arc<TransportClients>, String> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.iter().find(|p| Arc::ptr_eq(&p.transport, t)) {
            return Ok(p.clone());
        }
        let connector = Connector::for_transport(t, &self.roots)?.counting(self.dials.clone());
        let build = |h2c: bool| {
            let mut b = pool(t.idle_timeout);
            b.pool_max_idle_per_host(t.max_idle_per_host).http2_only(h2c);
            if t.idle_timeout.is_zero() {
                b.pool_idle_timeout(None);
            }
            if let Some((interval, timeout)) = t.h2_keep_alive {
                b.http2_keep_alive_interval(interval)
                    .http2_keep_alive_timeout(timeout)
                    .http2_keep_alive_while_idle(true);
            }
            b.build(connector.clone())
        };
        let clients = Arc::new(TransportClients {
            transport: t.clone(),
            http1: build(false),
            h2c: build(true),
        });
        pools.push(clients.clone());
        Ok(clients)
    }

    /// Forget the pools of transports no longer in the snapshot.
    pub(crate) fn retain(&self, live: &[&Arc<Transport>]) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| live.iter().any(|t| Arc::ptr_eq(t, &p.transport)));
    }
}

/// The pool to sidecars, when the gateway runs the mesh.
#[derive(Clone)]
pub(crate) struct MeshClient {
    /// HTTP/1.1 requests: Berth's own pool, over connections whose ALPN is `http/1.1`
    /// (one request at a time per connection, as nginx and Envoy pairs do; measured
    /// faster than one multiplexed HTTP/2 connection, docs/benchmarks.md).
    pub http1: Http1Pool,
    /// HTTP/2 requests (gRPC, h2c services): hyper-util's pool, ALPN `h2`.
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
        // Below the sidecar's header timeout, which hyper also applies to an idle
        // kept-alive connection: the gateway gives a connection up before the sidecar
        // closes it under a request.
        let mesh_idle = idle_timeout.min(berth_common::serve::ServeLimits::MESH.header_read_timeout / 2);
        let http1 = Http1Pool::to_sidecars(connect_timeout, &cfg, peers.clone(), dials.clone(), mesh_idle);
        let connector = MeshConnector::new(connect_timeout, cfg, peers.clone()).counting(dials);
        Ok(MeshClient {
            http1,
            client: pool(idle_timeout).build(connector),
            peers,
            trust_domain: trust_domain.to_string(),
            tcp_tls: Arc::new(tcp_tls),
        })
    }
}
