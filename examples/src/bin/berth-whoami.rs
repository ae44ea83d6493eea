//! `berth-whoami`: the demo app. Answers with `Hostname: <name>`, its addresses, the
//! request line and the request headers, like Traefik's whoami; plus `/health` (503
//! after `/health/set?healthy=false`), `/slow?ms=N`, `/delay/set?ms=N` (every later
//! request but `/health` waits N ms first: a hung task), `/status/N`, `/bench` (a fixed small
//! body), `/ws` (echo after an HTTP/1.1 upgrade) and `/call?url=http://S/path`, which
//! calls another service east-west through the task's sidecar (`HTTP_PROXY`, else
//! `$BERTH_LOCAL_ADDRESS:15001`; with `WHOAMI_CALLS=direct`, straight to S, as an app of an
//! App Mesh task does) and answers with what came back, and `/grpc?to=S&name=N`,
//! which calls `helloworld.Greeter/SayHello` on S the same way over gRPC.
//!
//! With `WHOAMI_TCP_PORT`, it also echoes raw TCP on that port, each chunk prefixed by its
//! name (for TCP routers).
//!
//! Flags: `--listen ADDR` (default `WHOAMI_LISTEN`, else `$BERTH_LOCAL_ADDRESS:$WHOAMI_PORT`,
//! else `0.0.0.0:80`), `--name NAME` (default: `WHOAMI_NAME`, then `HOSTNAME`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct App {
    name: String,
    listen: SocketAddr,
    healthy: std::sync::atomic::AtomicBool,
    /// `/delay/set?ms=N`: how long every request but the health check waits first.
    delay_ms: std::sync::atomic::AtomicU64,
    /// The sidecar's outbound listener, `host:port`.
    proxy: Option<String>,
}

fn main() {
    let (listen, name, rt) = berth_examples::demo_app_setup("berth-whoami", "WHOAMI", 80);
    // `WHOAMI_CALLS=direct`: calls go straight to the URL's host, as an app that knows
    // nothing of a proxy (ECS's proxyConfiguration redirects them to the sidecar).
    let direct = std::env::var("WHOAMI_CALLS").is_ok_and(|v| v == "direct");
    let proxy = std::env::var("HTTP_PROXY")
        .or_else(|_| std::env::var("http_proxy"))
        .ok()
        .map(|p| p.trim_start_matches("http://").trim_end_matches('/').to_string())
        .or_else(|| std::env::var("BERTH_LOCAL_ADDRESS").ok().map(|a| format!("{a}:15001")))
        .filter(|_| !direct);
    let app = App {
        name,
        listen,
        healthy: std::sync::atomic::AtomicBool::new(true),
        delay_ms: std::sync::atomic::AtomicU64::new(0),
        proxy,
    };
    if let Err(e) = rt.block_on(serve(Arc::new(app))) {
        eprintln!("berth-whoami: {e}");
        std::process::exit(1);
    }
}

async fn serve(app: Arc<App>) -> std::io::Result<()> {
    // `WHOAMI_TCP_PORT`: also a raw TCP echo (`<name>: <line>`), for TCP routers.
    if let Some(port) = std::env::var("WHOAMI_TCP_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        let l = tokio::net::TcpListener::bind((app.listen.ip(), port)).await?;
        let name = app.name.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0
                            || s.write_all(&[name.as_bytes(), b": ", &buf[..n]].concat())
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(app.listen).await?;
    eprintln!("berth-whoami {} listening on {}", app.name, listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(app.clone(), peer, req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let ms_of = |query: &str, default: u64| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
            .min(600_000)
    };
    if path == "/delay/set" {
        let ms = ms_of(&query, 0);
        app.delay_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
        return Ok(text(StatusCode::OK, format!("delay={ms}ms\n")));
    }
    let delay = app.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 && path != "/health" {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match path.as_str() {
        "/health" => {
            return Ok(if app.healthy.load(std::sync::atomic::Ordering::Relaxed) {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
            });
        }
        "/health/set" => {
            let healthy = !query.contains("healthy=false");
            app.healthy.store(healthy, std::sync::atomic::Ordering::Relaxed);
            return Ok(text(StatusCode::OK, format!("healthy={healthy}\n")));
        }
        "/call" => return Ok(call(&app, &query, req.headers()).await),
        "/grpc" => return Ok(grpc_call(&app, &query).await),
        "/bench" => return Ok(text(StatusCode::OK, "1\n")),
        "/ws" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
            r.headers_mut()
                .insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
            r.headers_mut()
                .insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
            return Ok(r);
        }
        "/slow" => tokio::time::sleep(Duration::from_millis(ms_of(&query, 1000))).await,
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            return Ok(text(code, format!("{code}\n")));
        }
        _ => {}
    }
    let mut out = format!("Hostname: {}\nIP: {}\nRemoteAddr: {peer}\n", app.name, app.listen.ip());
    out.push_str(&format!("{} {} {:?}\n", req.method(), req.uri(), req.version()));
    for (k, v) in req.headers() {
        out.push_str(&format!(
            "{}: {}\n",
            canonical(k.as_str()),
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    Ok(text(StatusCode::OK, out))
}

/// The trace-context headers an instrumented app passes from the request it serves to
/// the calls it makes, so the east-west hop joins the caller's trace.
const TRACE_HEADERS: [&str; 7] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "baggage",
];

/// `GET url` through the sidecar's outbound listener, as an HTTP proxy would be used.
async fn call(app: &App, query: &str, incoming: &http::HeaderMap) -> Response<Full<Bytes>> {
    let Some(url) = query.split('&').find_map(|kv| kv.strip_prefix("url=")) else {
        return text(StatusCode::BAD_REQUEST, "use /call?url=http://SERVICE/path\n");
    };
    let result = async {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        // Through the sidecar as a proxy (absolute form), or straight to the host.
        let (target, uri) = match &app.proxy {
            Some(proxy) => (proxy.clone(), uri),
            None => {
                let port = uri.port_u16().unwrap_or(80);
                let target = format!("{}:{port}", uri.host().unwrap_or_default());
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                (target, path.parse().map_err(|e| format!("{url}: {e}"))?)
            }
        };
        let stream = tokio::net::TcpStream::connect(target.as_str())
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .uri(uri)
            .header(http::header::HOST, host)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        // The trace context, and the caller's cookies both ways (as a web front end that
        // keeps its users' sessions with the services it calls).
        for name in TRACE_HEADERS.iter().copied().chain(["cookie"]) {
            if let Some(v) = incoming.get(name) {
                req.headers_mut().insert(name, v.clone());
            }
        }
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let cookies: Vec<http::HeaderValue> = resp
            .headers()
            .get_all(http::header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, cookies, body))
    };
    match tokio::time::timeout(Duration::from_secs(30), result).await {
        Ok(Ok((status, cookies, body))) => {
            let mut out = format!("{} called {url}: {status}\n", app.name).into_bytes();
            out.extend_from_slice(&body);
            let mut resp = text(status, out);
            for c in cookies {
                resp.headers_mut().append(http::header::SET_COOKIE, c);
            }
            resp
        }
        Ok(Err(e)) => text(
            StatusCode::BAD_GATEWAY,
            format!("{} could not call {url}: {e}\n", app.name),
        ),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{} timed out calling {url}\n", app.name),
        ),
    }
}

/// `/grpc?to=SERVICE&name=N`: `helloworld.Greeter/SayHello` on SERVICE east-west, over
/// HTTP/2 to the sidecar's outbound listener with `:authority` SERVICE.
async fn grpc_call(app: &App, query: &str) -> Response<Full<Bytes>> {
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    let to = param("to").unwrap_or_else(|| "greeter".into());
    let name = param("name").unwrap_or_else(|| "world".into());
    let Some(proxy) = app.proxy.as_ref().and_then(|p| p.parse::<SocketAddr>().ok()) else {
        return text(StatusCode::BAD_GATEWAY, "no sidecar outbound address\n");
    };
    let call = async {
        let mut client = berth_examples::greeter::Client::connect(proxy, &to)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client
            .say_hello(tonic::Request::new(berth_examples::greeter::HelloRequest {
                name: name.clone(),
                ..Default::default()
            }))
            .await
    };
    match tokio::time::timeout(Duration::from_secs(30), call).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            text(
                StatusCode::OK,
                format!(
                    "{} called {to} over gRPC: {} (served by {})\n",
                    app.name, r.message, r.served_by
                ),
            )
        }
        Ok(Err(status)) => text(
            StatusCode::BAD_GATEWAY,
            format!(
                "{} called {to} over gRPC: {:?} {}\n",
                app.name,
                status.code(),
                status.message()
            ),
        ),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{} timed out calling {to}\n", app.name),
        ),
    }
}

/// `x-forwarded-for` -> `X-Forwarded-For`, as whoami prints them.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}
