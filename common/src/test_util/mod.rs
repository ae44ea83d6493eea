//! Test fixtures shared by every crate's tests: real backends on loopback sockets and
//! real certificates. Behind the `test-util` feature; never in production builds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod otlp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A self-signed certificate and key (PEM) for the given DNS names.
pub fn self_signed(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// A CA, a server certificate it signs with `server_sans`, and one it signs for a client
/// named `cn`, written as PEM files into `dir`: ca.pem, server.pem, server.key,
/// client.pem, client.key.
pub fn write_pki(dir: &std::path::Path, server_sans: Vec<rcgen::SanType>, cn: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "berth test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, san: Vec<rcgen::SanType>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = san;
        (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf("test server", server_sans);
    let (client, client_key) = leaf(cn, vec![]);
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server),
        ("server.key", server_key),
        ("client.pem", client),
        ("client.key", client_key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
}

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    H2c,
}

/// A running fake upstream.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// What `/health` answers: 200 while true, 503 otherwise.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn request_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Start a backend on `127.0.0.1:0`. It answers:
    /// - `/status/N` with status N;
    /// - `/slow?ms=N` after N ms;
    /// - `/echo` with the request body;
    /// - `/ws` (an upgrade) by echoing bytes on the upgraded connection;
    /// - anything else with `backend=<name>` and the request line.
    pub async fn start(name: &str, proto: Proto) -> Backend {
        Self::start_at(name, proto, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`Backend::start`], on a given address (a task's loopback address).
    pub async fn start_at(name: &str, proto: Proto, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (n, c, s, h) = (name.to_string(), connections.clone(), seen.clone(), healthy.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (n, s, h) = (n.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    let h = h.clone();
                    let svc = hyper::service::service_fn(move |req| handle(n.clone(), s.clone(), h.clone(), req));
                    let io = TokioIo::new(stream);
                    let _ = match proto {
                        Proto::Http1 => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .with_upgrades()
                                .await
                        }
                        Proto::H2c => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await
                        }
                    };
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            connections,
            seen,
            healthy,
            task: Arc::new(task),
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn handle(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        record(&seen, &req, Bytes::new());
        let ok = healthy.load(Ordering::SeqCst);
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(Response::builder().status(status).body(full("health")).unwrap());
    }
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        record(&seen, &req, Bytes::new());
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap();
        return Ok(resp);
    }
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            // The client aborted the body: record nothing, answer nothing useful.
            return Ok(Response::builder().status(400).body(full("bad body")).unwrap());
        }
    };
    let req = Request::from_parts(parts, ());
    record(&seen, &req, body.clone());
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return Ok(Response::builder()
            .status(code)
            .body(full(format!("status {code}")))
            .unwrap());
    }
    if path == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/echo" {
        return Ok(Response::new(full(body)));
    }
    let text = format!("backend={name}\n{} {} {:?}\n", req.method(), req.uri(), req.version());
    Ok(Response::builder()
        .header("x-backend", name)
        .header("connection", "x-hop")
        .header("x-hop", "must-not-reach-client")
        .body(full(text))
        .unwrap())
}

fn record<T>(seen: &Mutex<Vec<Seen>>, req: &Request<T>, body: Bytes) {
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        body,
    });
}

/// A free TCP port on loopback (bound, then released), outside the ephemeral range.
pub fn free_port() -> u16 {
    // A port from bind(0) is an ephemeral one, and any outgoing connection may take it
    // before the caller binds it (seen: berth-local's TMDS port taken during the dashboard
    // test). Ports below the ephemeral range are never taken that way: hand those out,
    // each once per process, from a start that differs between processes, checked free.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut it = r.split_whitespace().map(|p| p.parse::<usize>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Below the range when there is room there (above the sidecar's fixed 15xxx ports),
    // else above it.
    let (first, span) = if low >= 20_000 {
        (16_000, low - 16_000)
    } else {
        (high + 1, 65_535 - high)
    };
    let start = std::process::id() as usize * 7_919;
    for _ in 0..span {
        let port = first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(port) = u16::try_from(port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server that accepts connections and never answers (a hung app, the worst
/// collector); it holds what it accepted until the task is dropped or aborted.
pub async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// A TCP port on loopback that refuses connections (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    // On a loopback address no other test binds, so that a port freed here is not handed
    // to another test's listener (the kernel reuses freed ports for `:0`).
    let l = TcpListener::bind("127.0.0.253:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Send raw bytes on a fresh connection and read the reply until the peer closes or
/// `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A response read whole, for assertions.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// Like [`http1`], `None` when the connection or the exchange fails (a peer that is
/// down or restarting).
pub async fn try_http1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Option<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.ok()?;
    Some(read_reply(resp).await)
}

/// Send one request over a fresh HTTP/1.1 connection to `addr`.
pub async fn http1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.unwrap();
    read_reply(resp).await
}

/// Send one request over a fresh HTTP/2 prior-knowledge (h2c) connection to `addr`.
pub async fn h2c(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.unwrap();
    read_reply(resp).await
}

pub async fn read_reply(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `GET path` with a Host header.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The value of one sample in Prometheus text: `series` is its name with its labels
/// exactly as rendered (`berth_x_total{pool="http"}`). Panics, showing the text, when the
/// sample is missing or not a whole number.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
