//! Transparent egress: the task's `proxyConfiguration` (type `APPMESH`, as App Mesh's
//! Envoy ran) has ECS redirect every outbound TCP connection of the task to
//! `ProxyEgressPort`, except the sidecar's own (`IgnoredUID`). The app calls
//! `http://orders.apps.local:8080/` with no proxy setting; here the connection's original
//! destination (`SO_ORIGINAL_DST`) and, for HTTP/1, the request's `Host` say where it goes:
//!
//! - a mesh name or alias: the outbound listener's path (mTLS to a peer sidecar, the
//!   callee's splits, retries and timeouts), every request by its own `Host`;
//! - anything else: passed through to its original destination unchanged
//!   (`berth.mesh.outbound=allow-all`, the default, App Mesh's `ALLOW_ALL`) or refused
//!   (`mesh-only`); HTTP/1 gets a 502 that says why;
//! - a connection that was not redirected (an app using `HTTP_PROXY`, or a host without
//!   the rules): the outbound listener's, as on `BERTH_OUTBOUND`.
//!
//! A connection of the sidecar's own that comes back (the sidecar not running as
//! `IgnoredUID`) is recognised by its source port and closed, never looped. Inbound, the
//! transparent ingress is the inbound listener's (`inbound.rs`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_common::labels::Outbound as Mode;
use berth_common::serve::{Listener, ServeLimits};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::metrics::Metrics;
use crate::outbound::Outbound;

/// How long a redirected connection may stay silent before it is taken for a protocol
/// whose server speaks first (it is then passed through, or refused, as TCP).
const SNIFF: Duration = Duration::from_millis(300);
/// The most of an HTTP/1 request head read to find its `Host`.
const MAX_HEAD: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Egress {
    outbound: Arc<Outbound>,
    mode: Mode,
    metrics: Arc<Metrics>,
    /// The local ports of this sidecar's own pass-through connections, while they last.
    own: Arc<Mutex<HashSet<u16>>>,
}

/// What the first bytes of a redirected connection are.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// HTTP/1 with the host it names (absolute form, else `Host`), if any.
    Http1(Option<String>),
    /// HTTP/2 with prior knowledge (h2c).
    H2c,
    /// Anything else, or nothing within [`SNIFF`].
    Other,
}

impl Egress {
    pub(crate) fn new(outbound: Arc<Outbound>, mode: Mode, metrics: Arc<Metrics>) -> Egress {
        Egress {
            outbound,
            mode,
            metrics,
            own: Arc::default(),
        }
    }

    /// Accept redirected (and direct) connections until the task is dropped.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let limits = ServeLimits::LOCAL;
        let listener = Listener::new(listener, "egress", &limits);
        loop {
            let (tcp, peer, admission) = listener.accept().await;
            let _ = tcp.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let _admission = admission;
                me.connection(tcp, peer, limits.idle_timeout).await;
            });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, idle: Duration) {
        let Some(original) = original_destination(&tcp) else {
            // Not redirected: the app asked for the sidecar itself.
            self.metrics.transparent("egress", "direct");
            return self.outbound.clone().connection(tcp, peer).await;
        };
        if self
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&peer.port())
        {
            tracing::error!(
                destination = %original,
                "the sidecar's own connection was redirected back to it: run the sidecar as the \
                 proxyConfiguration's IgnoredUID (the container's `user`); closed"
            );
            self.metrics.transparent("egress", "loop_refused");
            return;
        }
        let sniffed = sniff(&tcp).await;
        let in_mesh = match &sniffed {
            Sniffed::H2c => {
                // HPACK would have to be decoded to see the authority: h2c goes the mesh
                // way, where a name outside it is answered as such.
                self.metrics.transparent("egress", "mesh");
                return self.outbound.clone().connection(tcp, peer).await;
            }
            // An address is never a mesh name: it needs no question to the gateway.
            Sniffed::Http1(Some(host)) if is_address(host) => Some(false),
            Sniffed::Http1(Some(host)) => match crate::outbound::mesh_name(host) {
                Some(name) => self.outbound.in_mesh(&name).await,
                None => Some(false),
            },
            Sniffed::Http1(None) | Sniffed::Other => Some(false),
        };
        if in_mesh != Some(false) {
            self.metrics.transparent("egress", "mesh");
            return self.outbound.clone().connection(tcp, peer).await;
        }
        // Not by name: by the original address, when a mesh task has it. The connection
        // goes to that task and that port, over mTLS; its sidecar serves its app's HTTP
        // port as HTTP (with the caller's identity) and its other ports as TCP.
        if let Some(task) = self.outbound.task_at(original.ip()).await {
            self.metrics.transparent("egress", "mesh_by_address");
            if let Err(e) = self.outbound.tcp_to(tcp, &task, original.port(), idle).await {
                tracing::warn!(destination = %original, service = %task.service, error = %e, "mesh TCP failed");
                self.metrics.transparent("egress", "mesh_tcp_failed");
            }
            return;
        }
        match self.mode {
            Mode::AllowAll => self.pass_through(tcp, original, idle).await,
            Mode::MeshOnly => {
                tracing::info!(destination = %original, "outside the mesh: refused (berth.mesh.outbound=mesh-only)");
                self.metrics.transparent("egress", "refused");
                refuse(tcp, original, &sniffed).await;
            }
        }
    }

    /// To the original destination, byte for byte, from a port this sidecar remembers
    /// while the connection lasts.
    async fn pass_through(&self, tcp: TcpStream, original: SocketAddr, idle: Duration) {
        let socket = match original {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        };
        let bound = socket.and_then(|s| {
            let any: SocketAddr = match original {
                SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            s.bind(any)?;
            let port = s.local_addr()?.port();
            Ok((s, port))
        });
        let (socket, port) = match bound {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(destination = %original, error = %e, "pass-through: no socket");
                self.metrics.transparent("egress", "passthrough_failed");
                return;
            }
        };
        let _mark = OwnPort::new(self.own.clone(), port);
        let started = Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(original)).await {
            Ok(Ok(server)) => {
                let _ = server.set_nodelay(true);
                self.metrics.transparent("egress", "passthrough");
                tracing::debug!(destination = %original, connect = ?started.elapsed(), "passed through");
                berth_common::serve::splice(tcp, server, idle).await;
            }
            Ok(Err(e)) => {
                tracing::info!(destination = %original, error = %e, "pass-through: the destination refused");
                self.metrics.transparent("egress", "passthrough_failed");
            }
            Err(_) => {
                tracing::info!(destination = %original, "pass-through: the destination did not answer");
                self.metrics.transparent("egress", "passthrough_failed");
            }
        }
    }
}

/// A port in the set of this sidecar's own, removed when dropped.
struct OwnPort(Arc<Mutex<HashSet<u16>>>, u16);

impl OwnPort {
    fn new(set: Arc<Mutex<HashSet<u16>>>, port: u16) -> OwnPort {
        set.lock().unwrap_or_else(|e| e.into_inner()).insert(port);
        OwnPort(set, port)
    }
}

impl Drop for OwnPort {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

/// Where a redirected connection was going (`SO_ORIGINAL_DST`, IPv4 or IPv6, by the
/// listener's family: they are v6-only); `None` when it was not redirected: the kernel has
/// no record, or (with conntrack) the record is the listener itself.
pub(crate) fn original_destination(tcp: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let local = tcp.local_addr().ok()?;
    let found = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    found
        .ok()?
        .as_socket()
        .filter(|o| o.ip() != local.ip() || o.port() != local.port())
}

/// Whether a `Host` (with or without a port) is an IP address.
fn is_address(host: &str) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    bare.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
        || host.parse::<std::net::IpAddr>().is_ok()
}

/// A mesh-only refusal: HTTP/1 is told why, anything else is closed.
async fn refuse(mut tcp: TcpStream, original: SocketAddr, sniffed: &Sniffed) {
    if let Sniffed::Http1(host) = sniffed {
        let body = format!(
            "{} is not a mesh destination and this task's berth.mesh.outbound is mesh-only\n",
            host.clone().unwrap_or_else(|| original.to_string())
        );
        let head = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = tcp.write_all(head.as_bytes()).await;
        let _ = tcp.write_all(body.as_bytes()).await;
        let _ = tcp.shutdown().await;
    }
}

/// Look at the first bytes without taking them: an HTTP/1 request head (until it is
/// whole, [`MAX_HEAD`] bytes, or [`SNIFF`] passes), the HTTP/2 preface, or other.
async fn sniff(tcp: &TcpStream) -> Sniffed {
    let deadline = tokio::time::Instant::now() + SNIFF;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Sniffed::Other,
        };
        if n == 0 {
            return Sniffed::Other;
        }
        if n > seen {
            seen = n;
            match classify(&buf[..n]) {
                Some(s) => return s,
                None if n == buf.len() => return Sniffed::Other,
                None => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            // A request line began but its head never ended: HTTP/1 without a host seen.
            return if looks_like_http1(&buf[..seen]) {
                Sniffed::Http1(None)
            } else {
                Sniffed::Other
            };
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What `bytes` are, or `None` while more are needed to tell.
fn classify(bytes: &[u8]) -> Option<Sniffed> {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Sniffed::H2c);
    }
    if !looks_like_http1(bytes) {
        return Some(Sniffed::Other);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            let absolute = req
                .path
                .and_then(|p| p.parse::<http::Uri>().ok())
                .and_then(|u| u.host().map(str::to_string));
            let host = absolute.or_else(|| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(|h| h.trim().to_string())
            });
            Some(Sniffed::Http1(host))
        }
        // Too many headers, or a head httparse refuses: HTTP/1 all the same, host unknown.
        Err(_) => Some(Sniffed::Http1(None)),
    }
}

/// A request line's start: an HTTP method token and a space (`GET `, `POST `...).
fn looks_like_http1(bytes: &[u8]) -> bool {
    let token = bytes.iter().take(16).take_while(|b| b.is_ascii_uppercase()).count();
    match bytes.get(token) {
        Some(b' ') => token > 0,
        None => token == bytes.len() && token > 0 && token < 16,
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_say_what_a_connection_is() {
        let get = b"GET /x HTTP/1.1\r\nHost: Orders.apps.local:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            classify(get),
            Some(Sniffed::Http1(Some("Orders.apps.local:8080".into())))
        );
        // Absolute form wins over Host, as a proxy reads it.
        let abs = b"GET http://orders/x HTTP/1.1\r\nHost: other\r\n\r\n";
        assert_eq!(classify(abs), Some(Sniffed::Http1(Some("orders".into()))));
        assert_eq!(classify(b"GET / HTTP/1.0\r\n\r\n"), Some(Sniffed::Http1(None)));
        // Not whole yet: wait for more.
        assert_eq!(classify(b"GET /x HTTP/1.1\r\nHost: orders"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Sniffed::H2c));
        // TLS, a database greeting, binary.
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Some(Sniffed::Other));
        assert_eq!(classify(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Some(Sniffed::Other));
        assert_eq!(classify(b"get / HTTP/1.1\r\n\r\n"), Some(Sniffed::Other));
        assert_eq!(classify(b"VERYLONGMETHODNAMEXX / HTTP/1.1\r\n"), Some(Sniffed::Other));
        // A head httparse refuses is HTTP/1 with no host seen (then not a mesh call).
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(classify(&many), Some(Sniffed::Http1(None)));
    }

    #[test]
    fn addresses_are_told_from_names() {
        for a in ["10.0.0.5", "10.0.0.5:8080", "[fd00::1]:80", "[fd00::1]", "fd00::1"] {
            assert!(is_address(a), "{a}");
        }
        for n in ["orders", "orders.apps.local:8080", "10.0.0.5.nip.io"] {
            assert!(!is_address(n), "{n}");
        }
    }

    #[tokio::test]
    async fn a_connection_nobody_redirected_has_no_original_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Without conntrack there is no record; with it, the record is the connection's
        // own destination: either way it is not taken for a redirect.
        assert_eq!(original_destination(&server), None);
    }
}
