//! TCP routers on an entrypoint, as Traefik's `tcp` section: before any HTTP, a
//! connection is matched against the entrypoint's TCP routers on what can be seen
//! without consuming a byte (the TLS ClientHello's server name and ALPN, read with
//! `peek`, and the peer address), then spliced to a server of the router's service:
//! untouched (`tls.passthrough`: the backend's certificate reaches the client), after
//! terminating TLS here (`tls`), or as plain TCP (`HostSNI(`*`)`). No match leaves the
//! connection to the HTTP routers. The router's middlewares (`ipAllowList`,
//! `inFlightConn`) decide before a server is dialled.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_common::identity::SpiffeId;
use berth_common::routing::snapshot::TcpRouterEntry;
use berth_common::routing::{Snapshot, Status};
use berth_common::rules::tcp::ConnView;
use berth_common::upstream::UpstreamStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::proxy::upstream::MeshClient;

/// What a ClientHello said, read without consuming it.
#[derive(Debug, Default)]
pub(crate) struct Hello {
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// Peek at the stream until a whole ClientHello can be read (or `limit` passes, or it
/// is not one).
pub(crate) async fn peek_hello(stream: &TcpStream, limit: Duration) -> Option<Hello> {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 16 * 1024 + 512];
    let mut seen = 0;
    loop {
        let n = tokio::time::timeout_at(deadline.into(), stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if n > seen {
            seen = n;
            let mut acceptor = rustls::server::Acceptor::default();
            let mut rd: &[u8] = &buf[..n];
            if acceptor.read_tls(&mut rd).is_err() {
                return None;
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let ch = accepted.client_hello();
                    return Some(Hello {
                        sni: ch.server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase()),
                        alpn: ch.alpn().map(|a| a.map(<[u8]>::to_vec).collect()).unwrap_or_default(),
                    });
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            if n == buf.len() {
                return None;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The first enabled TCP router on `entrypoint` that matches. `tls`: whether the
/// connection opened with a ClientHello (then only `tls` routers apply; else only plain).
pub(crate) fn find<'a>(
    snap: &'a Snapshot,
    entrypoint: &str,
    tls: bool,
    view: &ConnView<'_>,
) -> Option<&'a TcpRouterEntry> {
    snap.tcp_routers
        .iter()
        .filter(|r| (r.status == Status::Enabled || r.refuse_tls) && r.entry_points.iter().any(|e| e == entrypoint))
        .filter(|r| r.tls_passthrough.is_some() == tls)
        .find(|r| r.rule.as_ref().is_some_and(|rule| rule.matches(view)))
}

/// Dial `server`: `host:port` as plain TCP, or `mesh://IP:PORT/<identity path>#<app port>`
/// over mTLS to the task's sidecar, which must present that identity and accept raw TCP
/// to that app port (ALPN `berth-tcp/<port>`).
async fn dial(server: &str, mesh: Option<&MeshClient>, timeout: Duration) -> Result<UpstreamStream, String> {
    let Some(rest) = server.strip_prefix("mesh://") else {
        let s = tokio::time::timeout(timeout, TcpStream::connect(server))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        return Ok(UpstreamStream::Plain(s));
    };
    let mesh = mesh.ok_or("a mesh server, but the mesh is not enabled")?;
    let (target, app_port) = rest.rsplit_once('#').ok_or("no #port")?;
    let (authority, path) = target.split_once('/').ok_or("no identity path")?;
    let want = SpiffeId::parse(&format!("spiffe://{}/{path}", mesh.trust_domain)).map_err(|e| e.to_string())?;
    let port: u16 = app_port.parse().map_err(|_| "bad app port".to_string())?;
    berth_common::upstream::mesh_tcp(&mesh.tcp_tls, authority, &want, port, timeout).await
}

/// Open a connection to one of the router's servers: a random start, then each in turn.
pub(crate) async fn connect(
    snap: &Snapshot,
    router: &TcpRouterEntry,
    mesh: Option<&MeshClient>,
    timeout: Duration,
) -> Option<(UpstreamStream, String)> {
    let svc = snap.tcp_services.get(router.service_index?)?;
    if svc.status != Status::Enabled || svc.servers.is_empty() {
        return None;
    }
    let start = fastrand::usize(..svc.servers.len());
    for i in 0..svc.servers.len() {
        let server = &svc.servers[(start + i) % svc.servers.len()];
        match dial(server, mesh, timeout).await {
            Ok(s) => return Some((s, server.clone())),
            Err(e) => tracing::warn!(router = %router.name, %server, error = %e, "tcp server unreachable"),
        }
    }
    None
}

/// The view of a connection for TCP rules.
pub(crate) fn view<'a>(hello: Option<&'a Hello>, peer: SocketAddr) -> ConnView<'a> {
    ConnView {
        tls: hello.is_some(),
        sni: hello.and_then(|h| h.sni.as_deref()),
        alpn: hello.map(|h| h.alpn.as_slice()).unwrap_or(&[]),
        client_ip: peer.ip(),
    }
}

/// What serving a TCP connection needs from its entrypoint.
pub(crate) struct Ctx<'a> {
    pub connect_timeout: Duration,
    pub idle: Duration,
    pub metrics: &'a crate::metrics::Metrics,
    pub mesh: Option<&'a MeshClient>,
}

/// Serve a connection a TCP router took (TLS already terminated when asked): splice it
/// to a server.
pub(crate) async fn serve<S>(client: S, snap: &Snapshot, router: &TcpRouterEntry, peer: SocketAddr, ctx: &Ctx<'_>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The router's middlewares, in order: a refusal closes the connection; counted
    // connections stay counted until it is done.
    let mut holds = Vec::new();
    for spec in &router.middleware_specs {
        match spec.admit(peer.ip()) {
            Ok(hold) => holds.extend(hold),
            Err(why) => {
                ctx.metrics.tcp(&router.name, "refused");
                tracing::debug!(router = %router.name, %peer, why, "tcp connection refused");
                return;
            }
        }
    }
    let Some((server, addr)) = connect(snap, router, ctx.mesh, ctx.connect_timeout).await else {
        ctx.metrics.tcp(&router.name, "no_server");
        tracing::warn!(router = %router.name, %peer, "no tcp server reachable; connection closed");
        return;
    };
    ctx.metrics.tcp(&router.name, "forwarded");
    let (up, down) = berth_common::serve::splice(client, server, ctx.idle).await;
    tracing::debug!(router = %router.name, %peer, server = %addr, up, down, "tcp connection done");
    drop(holds);
}
