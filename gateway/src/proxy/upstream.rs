//! Connections to upstreams: a connector (TCP with a connect timeout, TLS with ALPN for
//! `https://`) and keep-alive pools for HTTP/1.1, HTTP/2 (h2c) and mTLS to sidecars
//! (the dialling itself is `berth_common::upstream`, shared with the sidecar).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use berth_common::upstream::{ConnectError, MeshConnector, MeshPeers, UpstreamStream};
use berth_common::upstream::{connect_tcp, connect_tls};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::Body;

/// Dials `http://`/`h2c://` over TCP and `https://` over TLS.
#[derive(Clone)]
pub struct Connector {
    connect_timeout: Duration,
    tls: TlsConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| ConnectError::Address(uri.to_string()))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let tls = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let tcp = connect_tcp((host.as_str(), port), this.connect_timeout).await?;
            if !tls {
                return Ok(TokioIo::new(UpstreamStream::Plain(tcp)));
            }
            let name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::Address(host.clone()))?;
            let stream = connect_tls(&this.tls, name, tcp, this.connect_timeout).await?;
            Ok(TokioIo::new(UpstreamStream::Tls(Box::new(stream))))
        })
    }
}

/// The upstream pools: one negotiating HTTP/1.1 (or h2 by ALPN), one HTTP/2 only (h2c).
#[derive(Clone)]
pub struct Clients {
    pub http1: Client<Connector, Body>,
    pub h2c: Client<Connector, Body>,
    /// mTLS to sidecars, only when the mesh is enabled.
    pub mesh: Option<MeshClient>,
}

impl Clients {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, roots: RootCertStore) -> Clients {
        let mut tls = rustls::ClientConfig::builder_with_provider(berth_common::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            });
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = Connector {
            connect_timeout,
            tls: TlsConnector::from(Arc::new(tls)),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(usize::MAX)
            .set_host(false);
        let http1 = b.build(connector.clone());
        let mut b2 = Client::builder(TokioExecutor::new());
        b2.pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .set_host(false);
        let h2c = b2.build(connector);
        Clients { http1, h2c, mesh: None }
    }
}

/// Trust anchors for `https://` upstreams: the system bundle if present, plus `extra`.
pub fn upstream_roots(extra: Option<&std::path::Path>) -> Result<RootCertStore, berth_common::tls::TlsError> {
    let mut roots = RootCertStore::empty();
    for path in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
        if let Ok(pem) = std::fs::read(path)
            && let Ok(certs) = berth_common::tls::certs_from_pem(&pem, path)
        {
            roots.add_parsable_certificates(certs);
            break;
        }
    }
    if let Some(path) = extra {
        let pem = std::fs::read(path).map_err(|source| berth_common::tls::TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        roots.add_parsable_certificates(berth_common::tls::certs_from_pem(&pem, &path.display().to_string())?);
    }
    Ok(roots)
}

/// The pool to sidecars, when the gateway runs the mesh.
#[derive(Clone)]
pub struct MeshClient {
    pub client: Client<MeshConnector, Body>,
    pub peers: MeshPeers,
    pub trust_domain: String,
    /// For TCP routers to tasks behind a sidecar (ALPN set per connection).
    pub tcp_tls: Arc<rustls::ClientConfig>,
}

impl MeshClient {
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        slot: Arc<berth_common::mtls::CertSlot>,
        anchors: berth_common::mtls::TrustAnchors,
        trust_domain: &str,
    ) -> Result<MeshClient, rustls::Error> {
        use berth_common::mtls::{PeerPolicy, client_config};
        let cfg = client_config(Some(slot), anchors, PeerPolicy::TrustDomain(trust_domain.into()))?;
        let mut tcp_tls = cfg.clone();
        tcp_tls.alpn_protocols.clear();
        let peers = MeshPeers::default();
        let connector = MeshConnector::new(connect_timeout, cfg, peers.clone());
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false);
        Ok(MeshClient {
            client: b.build(connector),
            peers,
            trust_domain: trust_domain.to_string(),
            tcp_tls: Arc::new(tcp_tls),
        })
    }
}
