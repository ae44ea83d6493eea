//! Connections to upstreams: a connector (TCP with a connect timeout, TLS with ALPN for
//! `https://`) and keep-alive pools for HTTP/1.1 and HTTP/2 (h2c).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Body;

/// A TCP or TLS connection to an upstream.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(_) => Connected::new(),
            UpstreamStream::Tls(s) => {
                if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Dials `http://`/`h2c://` over TCP and `https://` over TLS.
#[derive(Clone)]
pub struct Connector {
    connect_timeout: Duration,
    tls: TlsConnector,
}

/// Connection failures, told apart so the balancer can eject and the proxy can retry.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad upstream address: {0}")]
    Address(String),
}

/// TCP to `addr` within `limit`, with Nagle off.
async fn connect_tcp<A: tokio::net::ToSocketAddrs>(addr: A, limit: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(limit))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake on `tcp` within `limit`.
async fn connect_tls(
    tls: &TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
    limit: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    Ok(tokio::time::timeout(limit, tls.connect(name, tcp))
        .await
        .map_err(|_| ConnectError::Timeout(limit))??)
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

/// The identity each sidecar must present, by `host:port`, refreshed at every
/// snapshot swap.
pub type MeshPeers = Arc<std::sync::RwLock<std::collections::HashMap<String, berth_common::identity::SpiffeId>>>;

/// Dials a task's sidecar with mTLS: the gateway's own certificate, the mesh's trust
/// anchor, and the task's identity checked after the handshake.
#[derive(Clone)]
pub struct MeshConnector {
    connect_timeout: Duration,
    tls: TlsConnector,
    peers: MeshPeers,
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.to_string())
                .ok_or_else(|| ConnectError::Address(uri.to_string()))?;
            let expected = this
                .peers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&authority)
                .cloned()
                .ok_or_else(|| ConnectError::Address(format!("{authority}: no expected mesh identity")))?;
            let tcp = connect_tcp(authority.as_str(), this.connect_timeout).await?;
            // Sidecars are dialled by IP and chosen by nothing but their address: the
            // name only satisfies the API; the identity is checked below.
            let name = ServerName::try_from("sidecar.berth").map_err(|_| ConnectError::Address(authority.clone()))?;
            let stream = connect_tls(&this.tls, name, tcp, this.connect_timeout).await?;
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| berth_common::identity::spiffe_id_of(c).ok());
            if presented.as_ref() != Some(&expected) {
                return Err(ConnectError::Io(io::Error::other(format!(
                    "sidecar at {authority} presented {}, expected {expected}",
                    presented.map(|p| p.to_string()).unwrap_or_else(|| "no identity".into())
                ))));
            }
            Ok(TokioIo::new(UpstreamStream::Tls(Box::new(stream))))
        })
    }
}

/// The pool to sidecars, when the gateway runs the mesh.
#[derive(Clone)]
pub struct MeshClient {
    pub client: Client<MeshConnector, Body>,
    pub peers: MeshPeers,
    pub trust_domain: String,
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
        let peers = MeshPeers::default();
        let connector = MeshConnector {
            connect_timeout,
            tls: TlsConnector::from(Arc::new(cfg)),
            peers: peers.clone(),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false);
        Ok(MeshClient {
            client: b.build(connector),
            peers,
            trust_domain: trust_domain.to_string(),
        })
    }
}
