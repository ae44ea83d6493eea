//! Dialling upstreams, shared by the gateway and the sidecar: TCP with a connect timeout
//! and Nagle off, TLS with a timeout, one stream type for both, the connector for
//! `http://`, `h2c://` and `https://` URLs (services, the EC2 API), and the mesh connector
//! that dials a sidecar with mTLS and checks the identity it presents against the one
//! the routing snapshot expects at that address.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The ALPN prefix by which the gateway asks a sidecar's inbound for raw TCP to an app
/// port (`berth-tcp/5432`) instead of HTTP.
pub const TCP_ALPN_PREFIX: &str = "berth-tcp/";

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
pub async fn connect_tcp<A: tokio::net::ToSocketAddrs>(addr: A, limit: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(limit))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake on `tcp` within `limit`.
pub async fn connect_tls(
    tls: &TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
    limit: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    Ok(tokio::time::timeout(limit, tls.connect(name, tcp))
        .await
        .map_err(|_| ConnectError::Timeout(limit))??)
}

/// How many connections a connector has opened: with keep-alive, far fewer than the
/// requests sent over them (the reuse `/metrics` shows).
pub type Dials = Arc<std::sync::atomic::AtomicU64>;

fn dialled(dials: &Dials) {
    dials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A serversTransport's TLS handshake bound, as Traefik's (Go's `TLSHandshakeTimeout`).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `http://`/`h2c://` over TCP and `https://` over TLS (ALPN `h2`, then
/// `http/1.1`), each within the connect timeout.
#[derive(Clone)]
pub struct Connector {
    connect_timeout: Duration,
    /// How long the TLS handshake may take once connected (a transport's: Go's 10 s,
    /// apart from `dialTimeout`; otherwise the connect timeout).
    handshake_timeout: Duration,
    tls: TlsConnector,
    dials: Dials,
    /// Refuse names that resolve to the machine itself or a link-local address.
    public_only: bool,
    /// Sent in SNI and verified instead of the URL's host (a transport's `serverName`).
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    /// `roots`: whom `https://` upstreams may present certificates from
    /// ([`trust_roots`]).
    pub fn new(connect_timeout: Duration, roots: rustls::RootCertStore) -> Connector {
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        Connector::with_tls(connect_timeout, tls)
    }

    /// With a TLS client configuration of the caller's (its own roots, a client
    /// certificate); ALPN is set here, h2 or HTTP/1.1.
    pub fn with_tls(connect_timeout: Duration, mut tls: rustls::ClientConfig) -> Connector {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Connector {
            connect_timeout,
            handshake_timeout: connect_timeout,
            tls: TlsConnector::from(Arc::new(tls)),
            dials: Dials::default(),
            public_only: false,
            server_name: None,
        }
    }

    /// A `serversTransport`'s: its trust and client certificates, its server name and
    /// dial timeout, and ALPN without h2 when it says `disableHTTP2`. `roots`: the
    /// gateway's upstream trust, for a transport that names no `rootCAs`.
    pub fn for_transport(t: &crate::transport::Transport, roots: &rustls::RootCertStore) -> Result<Connector, String> {
        let mut tls = t.client_config(roots)?;
        tls.alpn_protocols = if t.disable_http2 {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Ok(Connector {
            connect_timeout: t.dial_timeout,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            tls: TlsConnector::from(Arc::new(tls)),
            dials: Dials::default(),
            public_only: false,
            server_name: t.server_name.clone(),
        })
    }

    /// Send `name` in SNI and verify the server's certificate for it instead of the URL's
    /// host (Traefik's `caServerName` for an ACME server, a transport's `serverName`).
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Connector {
        self.server_name = Some(name);
        self
    }

    /// Count every connection opened in `dials`.
    pub fn counting(mut self, dials: Dials) -> Connector {
        self.dials = dials;
        self
    }

    /// Refuse to connect where a name resolves to the machine itself, an unspecified or
    /// a link-local address ([`crate::http::is_local_address`]): for calls a label asked
    /// for. Every address the name has is checked, not only the one dialled.
    pub fn public_only(mut self) -> Connector {
        self.public_only = true;
        self
    }
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
            let tcp = if this.public_only {
                let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port)).await?.collect();
                if addrs.is_empty() || addrs.iter().any(|a| crate::http::is_local_address(a.ip())) {
                    return Err(ConnectError::Address(format!(
                        "{host} is the gateway itself or a link-local address; a label may not call it"
                    )));
                }
                connect_tcp(&addrs[..], this.connect_timeout).await?
            } else {
                connect_tcp((host.as_str(), port), this.connect_timeout).await?
            };
            dialled(&this.dials);
            if !tls {
                return Ok(TokioIo::new(UpstreamStream::Plain(tcp)));
            }
            let name = match &this.server_name {
                Some(n) => n.clone(),
                None => ServerName::try_from(host.clone()).map_err(|_| ConnectError::Address(host.clone()))?,
            };
            let stream = connect_tls(&this.tls, name, tcp, this.handshake_timeout).await?;
            Ok(TokioIo::new(UpstreamStream::Tls(Box::new(stream))))
        })
    }
}

/// A keep-alive pool's builder as every pool here sets it: Tokio's executor and timers,
/// idle connections closed after `idle`, and the caller's own `Host` header kept.
pub fn pool(idle: Duration) -> hyper_util::client::legacy::Builder {
    let mut b = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    b.pool_idle_timeout(idle)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .set_host(false);
    b
}

/// Trust anchors for `https://` upstreams: the system bundle if present, plus `extra`.
pub fn trust_roots(extra: Option<&std::path::Path>) -> Result<rustls::RootCertStore, crate::tls::TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for path in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
        if let Ok(pem) = std::fs::read(path)
            && let Ok(certs) = crate::tls::certs_from_pem(&pem, path)
        {
            roots.add_parsable_certificates(certs);
            break;
        }
    }
    if let Some(path) = extra {
        let pem = std::fs::read(path).map_err(|source| crate::tls::TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        roots.add_parsable_certificates(crate::tls::certs_from_pem(&pem, &path.display().to_string())?);
    }
    Ok(roots)
}

/// The identity each sidecar must present, by `host:port`, refreshed at every
/// snapshot swap.
pub type MeshPeers = Arc<std::sync::RwLock<std::collections::HashMap<String, crate::identity::SpiffeId>>>;

/// Dials a task's sidecar with mTLS: the gateway's own certificate, the mesh's trust
/// anchor, and the task's identity checked after the handshake.
#[derive(Clone)]
pub struct MeshConnector {
    connect_timeout: Duration,
    tls: TlsConnector,
    peers: MeshPeers,
    dials: Dials,
}

impl MeshConnector {
    /// `cfg` carries our own certificate and the mesh's trust anchor (see
    /// [`crate::mtls::client_config`]); `peers` says whom to expect where.
    pub fn new(connect_timeout: Duration, cfg: rustls::ClientConfig, peers: MeshPeers) -> MeshConnector {
        MeshConnector {
            connect_timeout,
            tls: TlsConnector::from(Arc::new(cfg)),
            peers,
            dials: Dials::default(),
        }
    }

    /// Count every connection opened in `dials`.
    pub fn counting(mut self, dials: Dials) -> MeshConnector {
        self.dials = dials;
        self
    }
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
            dialled(&this.dials);
            // Sidecars are dialled by IP and chosen by nothing but their address: the
            // name only satisfies the API; the identity is checked below.
            let name = ServerName::try_from("sidecar.berth").map_err(|_| ConnectError::Address(authority.clone()))?;
            let stream = connect_tls(&this.tls, name, tcp, this.connect_timeout).await?;
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::identity::spiffe_id_of(c).ok());
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

/// A raw TCP stream to `port` of the app behind the sidecar at `authority`, over mTLS:
/// the sidecar must present `want` and accept ALPN `berth-tcp/<port>`. `tls` is the mesh
/// client configuration (its ALPN is replaced). The gateway's TCP routers and a sidecar's
/// transparent egress both go this way.
pub async fn mesh_tcp(
    tls: &rustls::ClientConfig,
    authority: &str,
    want: &crate::identity::SpiffeId,
    port: u16,
    timeout: Duration,
) -> Result<UpstreamStream, String> {
    let mut cfg = tls.clone();
    let alpn = format!("{TCP_ALPN_PREFIX}{port}").into_bytes();
    cfg.alpn_protocols = vec![alpn.clone()];
    let host = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority);
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(|e| e.to_string())?;
    let work = async {
        let tcp = TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    };
    let tls = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "mTLS connect timed out".to_string())??;
    let conn = tls.get_ref().1;
    let got = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::identity::spiffe_id_of(c).ok());
    if got.as_ref() != Some(want) {
        return Err(format!("the sidecar is not {want}"));
    }
    if conn.alpn_protocol() != Some(alpn.as_slice()) {
        return Err(format!("the sidecar does not offer TCP to port {port}"));
    }
    Ok(UpstreamStream::Tls(Box::new(tls)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tower_service::Service;

    use super::Connector;

    /// A connector for what a label asked refuses the machine's own addresses, by name
    /// or literal, before dialling; the ordinary one dials them.
    #[tokio::test]
    async fn a_public_only_connector_refuses_local_addresses() {
        crate::tls::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let roots = rustls::RootCertStore::empty();
        let mut public = Connector::new(Duration::from_secs(1), roots.clone()).public_only();
        for host in ["127.0.0.1", "localhost", "[::1]"] {
            let uri = format!("http://{host}:{port}/").parse().unwrap();
            let err = public.call(uri).await.err().expect("refused");
            assert!(err.to_string().contains("a label may not call it"), "{host}: {err}");
        }
        let mut plain = Connector::new(Duration::from_secs(1), roots);
        assert!(
            plain
                .call(format!("http://127.0.0.1:{port}/").parse().unwrap())
                .await
                .is_ok()
        );
    }
}
