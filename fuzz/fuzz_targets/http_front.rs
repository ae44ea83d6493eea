#![no_main]
//! The gateway's HTTP front, whole: arbitrary bytes go to a real entrypoint over
//! loopback TCP (hyper's parser, our routing, header handling and forwarding to a real
//! backend). Nothing may panic, and whatever the client sent, the backend must never see
//! a request framed two ways (Content-Length with Transfer-Encoding, or two
//! Content-Lengths: the stuff of request smuggling) or carrying a client-supplied
//! `x-berth-client-id`. After every input the gateway must still answer a plain request.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use berth_gateway::Gateway;
use berth_gateway::{Args, Config};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use libfuzzer_sys::fuzz_target;

async fn backend(req: hyper::Request<hyper::body::Incoming>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let h = req.headers();
    let te = h.contains_key(http::header::TRANSFER_ENCODING);
    let cls = h.get_all(http::header::CONTENT_LENGTH).iter().count();
    assert!(
        !(te && cls > 0),
        "backend got Content-Length and Transfer-Encoding: {h:?}"
    );
    assert!(cls <= 1, "backend got {cls} Content-Lengths: {h:?}");
    assert!(
        !h.contains_key("x-berth-client-id"),
        "a client-supplied identity reached the backend"
    );
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    Ok(hyper::Response::new(Full::new(Bytes::from(format!("ok {body}")))))
}

fn gateway() -> SocketAddr {
    static WEB: OnceLock<SocketAddr> = OnceLock::new();
    *WEB.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                berth_common::tls::install_crypto_provider();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("backend");
                let be = listener.local_addr().expect("backend addr");
                tokio::spawn(async move {
                    loop {
                        let Ok((s, _)) = listener.accept().await else { continue };
                        tokio::spawn(async move {
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(s), hyper::service::service_fn(backend))
                                .await;
                        });
                    }
                });
                let dir = std::env::temp_dir().join(format!("berth-fuzz-front-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("dir");
                let dynamic = dir.join("dynamic.yml");
                let yaml = format!(
                    "http:\n  routers:\n    r:\n      rule: \"Host(`a.test`) || PathPrefix(`/`)\"\n      service: s\n      middlewares: [strip]\n  middlewares:\n    strip:\n      stripPrefix:\n        prefixes: [\"/api\"]\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"http://{be}\"\n"
                );
                std::fs::write(&dynamic, yaml).expect("config");
                let argv = [
                    "berth-gateway",
                    "--entrypoint",
                    "web=127.0.0.1:0",
                    "--admin",
                    "127.0.0.1:0",
                    "--file-provider",
                    &dynamic.display().to_string(),
                    "--header-read-timeout",
                    "1s",
                ];
                let cfg = Config::from_args(Args::try_parse_from(argv).expect("args")).expect("config");
                let gw = Gateway::start(cfg).await.expect("gateway");
                let web = gw.entrypoint_addr("web").expect("web");
                // Wait until the route is served.
                for _ in 0..200 {
                    if answers(web) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tx.send(web).expect("send");
                std::future::pending::<()>().await;
                drop(gw);
            });
        });
        rx.recv().expect("gateway address")
    })
}

fn exchange(web: SocketAddr, data: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(web) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(data);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A plain request's answer: 200 from the backend, or what came instead.
fn plain(web: SocketAddr) -> Result<(), String> {
    let out = exchange(web, b"GET /api/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    if out.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out).into_owned())
    }
}

fn answers(web: SocketAddr) -> bool {
    plain(web).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let web = gateway();
    let out = exchange(web, data);
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.") || data.starts_with(b"PRI * HTTP/2.0"),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    if let Err(got) = plain(web) {
        panic!("the gateway stopped answering after {data:?}: {got:?}");
    }
});
