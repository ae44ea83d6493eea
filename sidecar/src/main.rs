//! `berth-sidecar`: the per-task sidecar. `berth-sidecar inspect` prints the
//! registration it would send; without arguments it runs: reads task metadata (retrying
//! with back-off), gets its certificate, and serves the inbound mTLS listener and its
//! admin endpoint until SIGTERM. Bad configuration exits 64.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_common::mtls::{CertSlot, TrustAnchors};
use berth_sidecar::config::Settings;
use berth_sidecar::identity::Certifier;
use berth_sidecar::inbound::{Inbound, Policy};
use berth_sidecar::metadata;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn main() {
    berth_common::tls::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            std::process::exit(70);
        }
    };
    match args.next().as_deref() {
        Some("inspect") => std::process::exit(rt.block_on(inspect())),
        Some("health") => std::process::exit(rt.block_on(health())),
        Some("--help") | Some("-h") => println!("usage: berth-sidecar [inspect | health]"),
        None => std::process::exit(rt.block_on(run())),
        Some(other) => {
            eprintln!("berth-sidecar: unknown command `{other}` (usage: berth-sidecar [inspect])");
            std::process::exit(64);
        }
    }
}

async fn inspect() -> i32 {
    let Some(uri) = std::env::var(metadata::ENV).ok().filter(|v| !v.is_empty()) else {
        eprintln!("berth-sidecar: {}", metadata::MetadataError::Missing);
        return 1;
    };
    let app_port = match std::env::var("BERTH_APP_PORT") {
        Ok(p) => match p.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                eprintln!("berth-sidecar: BERTH_APP_PORT={p} is not a port number");
                return 1;
            }
        },
        Err(_) => None,
    };
    match metadata::fetch(&uri, Duration::from_secs(5)).await {
        Ok(md) => match serde_json::to_string_pretty(&md.registration(app_port)) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("berth-sidecar: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            1
        }
    }
}

/// The container health check: `GET http://$BERTH_ADMIN/readyz` answers 200.
async fn health() -> i32 {
    let admin = std::env::var("BERTH_ADMIN").unwrap_or_else(|_| "127.0.0.1:15000".into());
    let check = async {
        let stream = tokio::net::TcpStream::connect(&admin).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("/readyz")
            .header("host", admin.as_str())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        Some(send.send_request(req).await.ok()?.status().is_success())
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Some(true)) => 0,
        _ => 1,
    }
}

async fn run() -> i32 {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            return 64;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        .flatten_event(true)
        .with_writer(std::io::stderr)
        .try_init();
    let anchors = match CertificateDer::pem_slice_iter(settings.ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
        .and_then(|c| TrustAnchors::from_certs(&c).map_err(|e| e.to_string()))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-sidecar: BERTH_CA_CERT: {e}");
            return 64;
        }
    };
    // Task metadata, retried with back-off until it answers.
    let mut backoff = Duration::from_millis(100);
    let md = loop {
        match metadata::fetch(&settings.metadata_uri, Duration::from_secs(5)).await {
            Ok(md) => break md,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "task metadata not available yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let reg = md.registration(settings.app_port);
    let bind = Some(settings.inbound.ip()).filter(|ip| !ip.is_unspecified());
    let slot = Arc::new(CertSlot::default());
    let certifier = Arc::new(Certifier {
        gateway: settings.gateway,
        anchors: anchors.clone(),
        token: settings.token.clone(),
        task_arn: reg.task_arn.clone(),
        bind,
        slot: slot.clone(),
        trust_domain_hint: None,
    });
    let mut backoff = Duration::from_millis(200);
    let granted = loop {
        match certifier.certify().await {
            Ok(g) => break g,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "no certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    tracing::info!(identity = %granted.identity, task = %reg.task_arn, "certificate obtained");
    let (labels, diags) = berth_common::labels::parse(&reg.labels);
    for d in diags {
        tracing::warn!(diagnostic = %d, "label problem");
    }
    let policy = Policy {
        me: granted.identity.clone(),
        allow: labels.mesh.allow,
        default_deny: granted.default_deny,
    };
    tokio::spawn(certifier.clone().keep_renewed(granted));
    let Some(app_port) = reg.port else {
        eprintln!("berth-sidecar: the app port is unknown: set BERTH_APP_PORT");
        return 64;
    };
    let app_ip = bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let inbound = Arc::new(Inbound::new(SocketAddr::new(app_ip, app_port), policy));
    let listener = match tokio::net::TcpListener::bind(settings.inbound).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth-sidecar: BERTH_INBOUND {}: {e}", settings.inbound);
            return 1;
        }
    };
    tokio::spawn(async move {
        if let Err(e) = inbound.serve(listener, slot, anchors).await {
            tracing::error!(error = %e, "inbound listener stopped");
        }
    });
    if let Err(e) = serve_admin(settings.admin).await {
        eprintln!("berth-sidecar: BERTH_ADMIN {}: {e}", settings.admin);
        return 1;
    }
    tracing::info!(inbound = %settings.inbound, "ready");
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return 0,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    0
}

/// `/readyz` and `/healthz` (ready once the certificate is in place, which is when
/// this starts).
async fn serve_admin(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/readyz" | "/healthz" => (http::StatusCode::OK, "ok\n"),
                        _ => (http::StatusCode::NOT_FOUND, "not found\n"),
                    };
                    let mut r =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())));
                    *r.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}
