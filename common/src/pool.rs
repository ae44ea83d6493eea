//! Berth's own keep-alive pool of HTTP/1.1 connections to plain `http://` upstreams: the
//! hot path north-south. hyper's connection API drives each connection; a request takes
//! an idle one under one lock and gives it back under another when its response body
//! has been read, and nothing else runs per request.
//!
//! hyper-util's legacy pool, which the other paths keep, spawns a task per HTTP/1
//! request to learn when the connection is idle again, hashes the `(scheme, authority)`
//! key on checkout and on return, and races each checkout against a connect. Profiled
//! under keep-alive load, that was about 15 % of the gateway's instructions.
//!
//! What it keeps of the legacy pool's behaviour: idle connections are reused newest
//! first and closed after the idle timeout (a sweeper task per pool, while any are
//! idle), at most `max_idle` per authority; a request that a reused connection could
//! not take (the upstream closed it while idle) goes on another connection, since
//! nothing of it was sent; a `101 Switching Protocols` answer keeps its connection for
//! the upgrade.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use crate::body::Body;
use crate::upstream::{ConnectError, Dials, MeshConnector, MeshPeers, UpstreamStream};

/// Why a request got no response from the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The connection could not be made: nothing was sent.
    #[error("{0}")]
    Connect(#[source] ConnectError),
    /// The HTTP/1.1 handshake on a new connection failed: nothing was sent.
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request URI names no authority to dial.
    #[error("no authority in the request URI {0}")]
    NoAuthority(String),
    /// Sending the request or reading the response head failed.
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

impl PoolError {
    /// Whether nothing was sent (the connection was never made).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            PoolError::Connect(_) | PoolError::Handshake(_) | PoolError::NoAuthority(_)
        )
    }
}

/// A request on its way to an upstream, through this pool or a legacy one: what a
/// [`crate::forward::Trip`] of the gateway or the sidecar waits on.
pub type Pending = Pin<Box<dyn std::future::Future<Output = Result<Response<Pooled>, SendFailed>> + Send>>;

/// Why a request sent through one of the pools got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendFailed {
    #[error(transparent)]
    Legacy(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl crate::forward::SendError for SendFailed {
    fn is_connect(&self) -> bool {
        match self {
            SendFailed::Legacy(e) => e.is_connect(),
            SendFailed::Pool(e) => e.is_connect(),
        }
    }
}

/// A legacy (hyper-util) pool's request, as a [`Pending`].
pub fn legacy<C>(client: &hyper_util::client::legacy::Client<C, Body>, up: Request<Body>) -> Pending
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let sending = client.request(up);
    Box::pin(async move { Ok(sending.await?.map(Pooled::unpooled)) })
}

/// A keep-alive pool of HTTP/1.1 connections, per authority.
#[derive(Clone)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

/// At most this many idle connections kept to one peer sidecar: a burst's connections
/// beyond it close when their response ends instead of holding the peer's connection
/// permits and buffers for the idle timeout.
const MAX_IDLE_PER_SIDECAR: usize = 256;

/// A connection being opened.
type Dialling = Pin<Box<dyn std::future::Future<Output = Result<TokioIo<UpstreamStream>, ConnectError>> + Send>>;

struct Inner {
    /// Opens a connection to a URI's authority: a [`crate::upstream::Connector`] or a
    /// [`crate::upstream::MeshConnector`].
    dial: Box<dyn Fn(Uri) -> Dialling + Send + Sync>,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<HashMap<Authority, Vec<Idle>>>,
    /// The sweeper of expired idle connections runs.
    sweeping: std::sync::atomic::AtomicBool,
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

impl Http1Pool {
    /// Dial with `connector` (a [`crate::upstream::Connector`] for plain `http://`, or a
    /// [`crate::upstream::MeshConnector`] whose ALPN offers only `http/1.1`: a connection
    /// it returns is spoken to in HTTP/1.1); keep at most `max_idle` idle connections per
    /// authority, each for `idle_timeout`.
    pub fn new<C>(connector: C, idle_timeout: Duration, max_idle: usize) -> Http1Pool
    where
        C: Service<Uri, Response = TokioIo<UpstreamStream>, Error = ConnectError, Future = Dialling>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        Http1Pool {
            inner: Arc::new(Inner {
                dial: Box::new(move |uri| connector.clone().call(uri)),
                idle_timeout,
                max_idle,
                idle: Mutex::new(HashMap::new()),
                sweeping: Default::default(),
            }),
        }
    }

    /// HTTP/1.1 to sidecars over mTLS (the gateway's and a sidecar outbound's): `tls` is
    /// the mesh client configuration, its ALPN narrowed here to `http/1.1`; `peers` says
    /// whom to expect where; dials counted in `dials`.
    pub fn to_sidecars(
        connect_timeout: Duration,
        tls: &rustls::ClientConfig,
        peers: MeshPeers,
        dials: Dials,
        idle_timeout: Duration,
    ) -> Http1Pool {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = MeshConnector::new(connect_timeout, tls, peers).counting(dials);
        Http1Pool::new(connector, idle_timeout, MAX_IDLE_PER_SIDECAR)
    }

    /// [`Http1Pool::send`], as a [`Pending`].
    pub fn pending(&self, req: Request<Body>) -> Pending {
        let pool = self.clone();
        Box::pin(async move { Ok(pool.send(req).await?) })
    }

    /// How many idle connections the pool holds.
    pub fn idle(&self) -> usize {
        self.inner.lock().values().map(Vec::len).sum()
    }

    /// Send `req` (an absolute URI: its authority is the connection's; it goes out in
    /// origin form) on an idle connection to its authority, or on a new one.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Pooled>, PoolError> {
        let Some(authority) = req.uri().authority().cloned() else {
            return Err(PoolError::NoAuthority(req.uri().to_string()));
        };
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let dial = std::mem::replace(req.uri_mut(), Uri::from(origin));
        loop {
            let (mut tx, reused) = match self.inner.checkout(&authority) {
                Some(tx) => (tx, true),
                None => (self.connect(dial.clone()).await?, false),
            };
            if let Err(e) = tx.ready().await {
                // Closed while idle: another connection.
                if reused {
                    continue;
                }
                return Err(PoolError::Http(e));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Back {
                        tx,
                        authority,
                        pool: Arc::downgrade(&self.inner),
                    });
                    return Ok(resp.map(|body| Pooled {
                        body,
                        back,
                        done: false,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the reused connection closed under it.
                    Some(r) if reused => req = r,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, uri: Uri) -> Result<SendRequest<Body>, PoolError> {
        let io = (self.inner.dial)(uri).await.map_err(PoolError::Connect)?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Authority, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest idle connection to `authority` that is open and not expired.
    fn checkout(&self, authority: &Authority) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        let list = idle.get_mut(authority)?;
        while let Some(i) = list.pop() {
            if i.since.elapsed() >= self.idle_timeout {
                // The newest has expired: so have the older ones.
                list.clear();
                break;
            }
            if !i.tx.is_closed() {
                return Some(i.tx);
            }
        }
        None
    }

    fn put_back(self: &Arc<Self>, authority: Authority, tx: SendRequest<Body>) {
        if tx.is_closed() || self.idle_timeout.is_zero() {
            return;
        }
        {
            let mut idle = self.lock();
            let list = idle.entry(authority).or_default();
            if list.len() >= self.max_idle {
                return;
            }
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
        if !self.sweeping.swap(true, std::sync::atomic::Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(sweep(Arc::downgrade(self)));
                }
                Err(_) => self.sweeping.store(false, std::sync::atomic::Ordering::Release),
            }
        }
    }
}

/// Close idle connections past the timeout, every timeout (at most every 5 s), while the
/// pool lives and holds any.
async fn sweep(pool: Weak<Inner>) {
    loop {
        let every = match pool.upgrade() {
            Some(p) => p.idle_timeout.clamp(Duration::from_millis(100), Duration::from_secs(5)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(p) = pool.upgrade() else { return };
        let mut idle = p.lock();
        for list in idle.values_mut() {
            list.retain(|i| i.since.elapsed() < p.idle_timeout && !i.tx.is_closed());
        }
        idle.retain(|_, list| !list.is_empty());
        if idle.is_empty() {
            // Stop; the next connection given back starts another sweeper.
            p.sweeping.store(false, std::sync::atomic::Ordering::Release);
            return;
        }
    }
}

/// Where a connection goes back to when its response has been read.
struct Back {
    tx: SendRequest<Body>,
    authority: Authority,
    pool: Weak<Inner>,
}

/// A response body from the pool: when it has been read to its end, its connection goes
/// back to the pool; dropped before that, the connection is closed.
pub struct Pooled {
    body: Incoming,
    back: Option<Back>,
    done: bool,
}

impl Pooled {
    /// A body from elsewhere (the legacy pools), with no connection to give back.
    pub fn unpooled(body: Incoming) -> Pooled {
        Pooled {
            body,
            back: None,
            done: false,
        }
    }

    /// The connection goes back once it can take a request: at once when it can (the
    /// usual case), else when it becomes ready (the upstream answered before the request
    /// body was all sent, which is still going out), so that no request waits on it.
    fn give_back(&mut self) {
        let Some(mut b) = self.back.take() else { return };
        if b.tx.is_ready() {
            if let Some(pool) = b.pool.upgrade() {
                pool.put_back(b.authority, b.tx);
            }
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if b.tx.ready().await.is_ok()
                    && let Some(pool) = b.pool.upgrade()
                {
                    pool.put_back(b.authority, b.tx);
                }
            });
        }
    }
}

impl hyper::body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.done || self.body.is_end_stream() {
            self.give_back();
        }
    }
}

/// Read an HTTP/1 answer nobody wants (a health check's, a mirror's) to its end, keeping
/// none of it, so that its connection goes back to the pool instead of being closed; a
/// body that fails, or that goes on past `max` bytes, is dropped where it stands (its
/// connection closes). An HTTP/2 answer is dropped at once: its stream is reset and its
/// connection stays open. Whether the end was reached (or need not be). The caller
/// bounds the time.
pub async fn drain<B: hyper::body::Body>(answer: Response<B>, max: usize) -> bool {
    use bytes::Buf as _;
    use http_body_util::BodyExt as _;
    if answer.version() >= http::Version::HTTP_2 {
        return true;
    }
    let mut body = std::pin::pin!(answer.into_body());
    let mut seen = 0usize;
    loop {
        match body.as_mut().frame().await {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => {
                seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.remaining()));
                if seen > max {
                    return body.is_end_stream();
                }
            }
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("pooled", &self.back.is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::Connector;

    /// An HTTP/1.1 server of its own: answers `ok` to each request (`/big`: 100,000
    /// bytes); after `answers` on
    /// one connection it closes that connection without saying so (as an upstream's idle
    /// timeout does). Counts the connections it accepted.
    async fn server(answers: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..answers {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let big: Vec<u8>;
                        let reply: &[u8] = if seen.starts_with(b"GET /upgrade") {
                            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
                        } else if seen.starts_with(b"GET /big") {
                            big = [
                                b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".as_slice(),
                                &[b'x'; 100_000],
                            ]
                            .concat();
                            &big
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool(idle: Duration) -> Http1Pool {
        Http1Pool::new(
            Connector::new(Duration::from_secs(2), rustls::RootCertStore::empty()),
            idle,
            usize::MAX,
        )
    }

    fn get(addr: SocketAddr, path: &str) -> Request<Body> {
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = format!("http://{addr}{path}").parse().expect("uri");
        req
    }

    async fn read(resp: Response<Pooled>) -> Bytes {
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_reused() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_secs(30));
        for _ in 0..10 {
            let resp = pool.send(get(addr, "/")).await.expect("answer");
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(read(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn an_unread_body_closes_its_connection() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_secs(30));
        let resp = pool.send(get(addr, "/")).await.expect("answer");
        drop(resp);
        assert_eq!(pool.idle(), 0);
        assert_eq!(read(pool.send(get(addr, "/")).await.expect("answer")).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_drained_body_gives_its_connection_back_and_one_past_the_cap_does_not() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_secs(30));
        for _ in 0..5 {
            let resp = pool.send(get(addr, "/")).await.expect("answer");
            assert!(drain(resp, 2).await, "two bytes, within the cap");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let resp = pool.send(get(addr, "/big")).await.expect("answer");
        assert!(drain(resp, 100_000).await, "100,000 bytes, within the cap");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let resp = pool.send(get(addr, "/big")).await.expect("answer");
        assert!(!drain(resp, 1000).await, "100,000 bytes, past the cap");
        assert_eq!(pool.idle(), 0, "the connection closed");
        read(pool.send(get(addr, "/")).await.expect("answer")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        // One answer per connection, then a silent close.
        let (addr, accepted) = server(1).await;
        let pool = pool(Duration::from_secs(30));
        for _ in 0..5 {
            let resp = pool.send(get(addr, "/")).await.expect("answer on a fresh connection");
            assert_eq!(read(resp).await, "ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_millis(150));
        read(pool.send(get(addr, "/")).await.expect("answer")).await;
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(pool.idle(), 0, "the sweeper closed it");
        read(pool.send(get(addr, "/")).await.expect("answer")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A request body that never ends (a client still uploading).
    struct Endless;

    impl hyper::body::Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_taken() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_secs(30));
        // The upstream answers before the upload has ended.
        let mut upload = get(addr, "/");
        *upload.method_mut() = http::Method::POST;
        *upload.body_mut() = crate::body::boxed(Endless);
        let resp = pool.send(upload).await.expect("early answer");
        assert_eq!(read(resp).await, "ok");
        assert_eq!(pool.idle(), 0, "busy sending: not idle");
        let next = tokio::time::timeout(Duration::from_secs(5), pool.send(get(addr, "/")))
            .await
            .expect("the next request does not wait on the busy connection")
            .expect("answer");
        assert_eq!(read(next).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_upgraded_connection_is_not_given_back() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = pool(Duration::from_secs(30));
        let resp = pool.send(get(addr, "/upgrade")).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        drop(resp);
        assert_eq!(pool.idle(), 0);
        read(pool.send(get(addr, "/")).await.expect("answer")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = crate::test_util::closed_port().await;
        let err = pool(Duration::from_secs(30))
            .send(get(addr, "/"))
            .await
            .expect_err("refused");
        assert!(err.is_connect(), "{err}");
    }
}
