//! Accepting and serving connections, the same way on every listener Berth has (the
//! gateway's entrypoints, its control API and admin API, the sidecar's inbound, outbound
//! and admin listeners), so none of them can be held open, filled or spun by a client:
//!
//! - at most `max_connections` at once: past that, the listener stops accepting until one
//!   closes (the kernel's backlog holds the rest), instead of taking file descriptors
//!   until `accept` fails;
//! - an `accept` error (EMFILE, ENFILE, ENOBUFS) backs off from 10 ms to 1 s instead of
//!   spinning a core;
//! - a TLS handshake, and the request head, must arrive within their timeouts;
//! - a connection on which nothing moved for `idle_timeout` is closed ([`IdleIo`] counts
//!   every byte either way).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How much a listener lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    pub max_connections: usize,
    /// A TLS handshake (or a first byte) must complete within this.
    pub handshake_timeout: Duration,
    /// Each request head must arrive within this (slowloris).
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

impl ServeLimits {
    /// For the control API: its sidecars speak HTTP/2 with keep-alive pings, so a slow
    /// request head is nobody's.
    pub const INTERNAL: ServeLimits = ServeLimits {
        max_connections: 1024,
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_header_bytes: 64 * 1024,
    };

    /// For a sidecar's inbound listener: every gateway replica and calling sidecar keeps
    /// pooled HTTP/1.1 connections here, idle for up to 90 s between requests (hyper's
    /// header timeout also runs while a kept-alive connection waits), and only holders of
    /// a mesh certificate get past the handshake.
    pub const MESH: ServeLimits = ServeLimits {
        max_connections: 8192,
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(300),
        max_header_bytes: 64 * 1024,
    };

    /// For listeners on a task's or the gateway's own side (the sidecar's outbound for
    /// its app, the admin APIs for scrapers): their clients pool connections too.
    pub const LOCAL: ServeLimits = ServeLimits {
        max_connections: 1024,
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(300),
        max_header_bytes: 64 * 1024,
    };
}

/// A listener that admits at most `max_connections` at once and never spins on errors.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    name: &'static str,
}

/// One accepted connection's place under the cap; dropped when the connection ends.
pub type Admission = OwnedSemaphorePermit;

impl Listener {
    pub fn new(inner: TcpListener, name: &'static str, limits: &ServeLimits) -> Listener {
        Listener {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            name,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Wait for room under the cap, then for a connection. Errors are logged and waited
    /// out with back-off; this never returns one.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, Admission) {
        let mut backoff = Duration::from_millis(10);
        loop {
            // The semaphore is never closed, so this only fails if it were.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, peer)) => return (stream, peer, permit),
                Err(e) => {
                    tracing::warn!(listener = self.name, error = %e, ?backoff, "accept failed; backing off");
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// An HTTP/1.1 and HTTP/2 server for one connection, with the header limits applied.
pub fn http_builder(limits: &ServeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(250);
    builder
}

/// Serve HTTP on `io` with `svc` (upgrades allowed) until the client is done, or nothing
/// has moved for the idle timeout.
pub async fn serve_http<I, S, B>(io: I, svc: S, limits: &ServeLimits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = IdleIo::new(io);
    let activity = io.activity();
    let builder = http_builder(limits);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let mut closing = false;
    let mut tick = tokio::time::interval(tick_for(idle));
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick(), if !closing => {
                if activity.idle_for() >= idle {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// How often an idle timeout is checked.
fn tick_for(idle: Duration) -> Duration {
    idle.min(Duration::from_secs(1)).max(Duration::from_millis(10))
}

/// Run `fut` (a TLS handshake, say) within `limit`; `None` when it took longer.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(limit, fut).await.ok()
}

/// Copy both ways until either side closes, or nothing moved for `idle`.
pub async fn splice<C, S>(client: C, mut server: S, idle: Duration) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = IdleIo::new(client);
    let activity = client.activity();
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    tokio::pin!(copy);
    let mut tick = tokio::time::interval(tick_for(idle));
    loop {
        tokio::select! {
            r = &mut copy => return r.unwrap_or((0, 0)),
            _ = tick.tick() => {
                if activity.idle_for() >= idle {
                    return (0, 0);
                }
            }
        }
    }
}

/// A request body that did not arrive whole within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within the read timeout")]
pub struct BodyTimeout;

pin_project_lite::pin_project! {
    /// A body that fails with [`BodyTimeout`] once its deadline passes (Traefik's
    /// `readTimeout`: a client sending one byte a minute must not hold a request open).
    pub struct Deadline<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: tokio::time::Instant) -> Self {
        Deadline {
            inner,
            sleep: tokio::time::sleep_until(deadline),
        }
    }
}

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// When a connection last moved a byte.
#[derive(Debug, Clone)]
pub struct Activity {
    born: Instant,
    /// Milliseconds after `born`.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub fn idle_for(&self) -> Duration {
        (self.born + Duration::from_millis(self.last.load(Ordering::Relaxed))).elapsed()
    }
}

pin_project_lite::pin_project! {
    /// Records the time of the last read or write, for idle timeouts.
    pub struct IdleIo<S> {
        #[pin]
        inner: S,
        activity: Activity,
    }
}

impl<S> IdleIo<S> {
    pub fn new(inner: S) -> Self {
        IdleIo {
            inner,
            activity: Activity {
                born: Instant::now(),
                last: Arc::new(AtomicU64::new(0)),
            },
        }
    }

    /// A handle on this connection's activity, to check from elsewhere.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl<S: AsyncRead> AsyncRead for IdleIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for IdleIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_cap_holds_connections_until_one_closes() {
        let limits = ServeLimits {
            max_connections: 2,
            ..ServeLimits::INTERNAL
        };
        let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = raw.local_addr().unwrap();
        let l = Arc::new(Listener::new(raw, "test", &limits));
        let accepted = Arc::new(AtomicU64::new(0));
        let (l2, n2) = (l.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _, permit) = l2.accept().await;
                n2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b).await;
                    drop(permit);
                });
            }
        });
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the third waits");
        held[0].write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "admitted once one closed");
    }
}
