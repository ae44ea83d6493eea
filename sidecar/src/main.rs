//! `berth-sidecar`: the per-task sidecar. `berth-sidecar inspect` prints the
//! registration it would send; `berth-sidecar health` is the container health check.
//! Without arguments it runs: reads task metadata (retrying with back-off), gets its
//! certificate, serves the inbound mTLS listener, the outbound listener and its admin
//! endpoint, registers and heartbeats; when the task stops it deregisters and carries
//! traffic until the app has exited. Bad configuration exits 64.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_common::mtls::{CertSlot, TrustAnchors};
use berth_sidecar::config::Settings;
use berth_sidecar::control::ControlPool;
use berth_sidecar::identity::Certifier;
use berth_sidecar::inbound::{Inbound, Policy};
use berth_sidecar::metadata;
use berth_sidecar::metrics::Metrics;
use berth_sidecar::outbound::{MeshCache, Outbound};
use berth_sidecar::register::{self, Probe, TaskState};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;

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
    berth_common::logging::init(settings.log_format);
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
    let metrics = Arc::new(Metrics::default());
    // The gateway replicas: those in BERTH_GATEWAY (names resolved), then those the mesh
    // view lists.
    let mut backoff = Duration::from_millis(200);
    let gateways = loop {
        let found = berth_sidecar::config::resolve_gateways(&settings.gateways).await;
        if !found.is_empty() {
            break found;
        }
        tracing::warn!(gateways = ?settings.gateways, ?backoff, "no gateway address yet");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    };
    let pool = Arc::new(ControlPool::new(gateways, bind, slot.clone(), anchors.clone()));
    let certifier = Arc::new(Certifier {
        replicas: pool.clone(),
        anchors: anchors.clone(),
        token: settings.token.clone(),
        task_arn: reg.task_arn.clone(),
        bind,
        slot: slot.clone(),
        trust_domain_hint: None,
        metrics: metrics.clone(),
        current: Default::default(),
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
    let trust_domain = granted.identity.trust_domain().to_string();
    tokio::spawn(certifier.clone().keep_renewed(granted));
    let Some(app_port) = reg.port else {
        eprintln!("berth-sidecar: the app port is unknown: set BERTH_APP_PORT");
        return 64;
    };
    // awsvpc: the app shares the task's address; bridge: it has its own on the bridge.
    let bridge_ip = (reg.network_mode.as_deref() == Some("bridge"))
        .then(|| {
            md.app()
                .and_then(|a| a.networks.first())
                .and_then(|n| n.ipv4_addresses.first())
        })
        .flatten()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let app_ip = bridge_ip.or(bind).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let app = SocketAddr::new(app_ip, app_port);
    // The probe: BERTH_HEALTH_PATH, else the health-check path the app's labels give its
    // service (as Traefik's active health check would use).
    let health_path = settings.health_path.clone().or_else(|| {
        labels
            .config
            .http
            .services
            .values()
            .find_map(|s| s.load_balancer.health_check.as_ref().and_then(|h| h.path.clone()))
    });

    // The task as TMDS shows it, followed every second.
    let inbound_port = md
        .containers
        .iter()
        .find(|c| c.name == metadata::SIDECAR_CONTAINER)
        .and_then(|c| {
            c.ports
                .iter()
                .find(|p| p.container_port == Some(settings.inbound.port()))
        })
        .and_then(|p| p.host_port)
        .unwrap_or(settings.inbound.port());
    let mut first = reg.clone();
    first.inbound_port = Some(inbound_port);
    let (state_tx, mut state) = watch::channel(TaskState {
        stopping: md.desired_status == "STOPPED",
        app_exited: false,
        registration: first,
    });
    let probe = health_path.map(|p| Probe::new(app, p));
    tokio::spawn(register::poll(
        settings.metadata_uri.clone(),
        settings.app_port,
        inbound_port,
        probe,
        state_tx,
        metrics.clone(),
    ));

    // Spans are named for the task's mesh name (`berth.mesh.name`, else its service).
    let tracer = match &settings.tracing {
        Some(t) => {
            let name = labels.mesh.name.clone().unwrap_or_else(|| reg.service.clone());
            let detected = berth_common::telemetry::resource::detect_ecs().await;
            let resource = berth_common::telemetry::resource::build(t, &name, detected);
            tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, service = %name, "tracing on");
            berth_common::telemetry::start(t, resource)
        }
        None => berth_common::telemetry::Tracer::disabled(),
    };
    let access_log = match settings.access_log {
        Some(format) => match berth_common::accesslog::AccessLog::open(None, format) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("berth-sidecar: access log: {e}");
                return 1;
            }
        },
        None => None,
    };
    let observe = berth_common::telemetry::Observe {
        tracer: tracer.clone(),
        access_log,
    };
    metrics.set_observe(observe.clone());
    // h2c to the app when told, or when its labels say its services speak h2c.
    let app_h2c = settings.app_protocol.unwrap_or_else(|| {
        labels
            .config
            .http
            .services
            .values()
            .any(|s| s.load_balancer.server.as_ref().and_then(|t| t.scheme.as_deref()) == Some("h2c"))
    });
    // The app's container ports, for the gateway's TCP routers over the mesh.
    let tcp_ports: Vec<u16> = md
        .app()
        .map(|a| a.ports.iter().filter_map(|p| p.container_port).collect())
        .unwrap_or_default();
    let inbound = Arc::new(
        Inbound::new(app, policy, metrics.clone(), observe.clone())
            .app_h2c(app_h2c)
            .tcp_ports(tcp_ports)
            .response_timeout(settings.app_response_timeout),
    );
    let listener = match tokio::net::TcpListener::bind(settings.inbound).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth-sidecar: BERTH_INBOUND {}: {e}", settings.inbound);
            return 1;
        }
    };
    let (inbound_slot, inbound_anchors) = (slot.clone(), anchors.clone());
    tokio::spawn(async move {
        if let Err(e) = inbound.serve(listener, inbound_slot, inbound_anchors).await {
            tracing::error!(error = %e, "inbound listener stopped");
        }
    });
    let mesh = MeshCache::new(pool.clone());
    tokio::spawn(mesh.clone().follow());
    let outbound = match Outbound::new(
        mesh,
        slot,
        anchors,
        &trust_domain,
        metrics.clone(),
        observe,
        settings.outbound_response_timeout,
    ) {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("berth-sidecar: outbound TLS: {e}");
            return 1;
        }
    };
    let out_listener = match tokio::net::TcpListener::bind(settings.outbound).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth-sidecar: BERTH_OUTBOUND {}: {e}", settings.outbound);
            return 1;
        }
    };
    tokio::spawn(outbound.serve(out_listener));
    if let Err(e) = serve_admin(settings.admin, metrics.clone()).await {
        eprintln!("berth-sidecar: BERTH_ADMIN {}: {e}", settings.admin);
        return 1;
    }
    let (stop, stopping) = watch::channel(false);
    let registrar = tokio::spawn(register::run(pool.clone(), state.clone(), stopping, metrics.clone()));
    tracing::info!(inbound = %settings.inbound, outbound = %settings.outbound, "ready");

    // Stopping: deregister the moment TMDS shows the task stopping (or on SIGTERM), keep
    // carrying traffic until the app has exited, then leave.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return 0,
    };
    let mut signalled = false;
    loop {
        if state.borrow_and_update().stopping {
            tracing::info!("the task is stopping (TMDS DesiredStatus STOPPED)");
            break;
        }
        tokio::select! {
            _ = term.recv() => { signalled = true; break; }
            _ = tokio::signal::ctrl_c() => { signalled = true; break; }
            r = state.changed() => if r.is_err() { break; },
        }
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), registrar).await;
    // With the app depending on the sidecar, ECS stops the app first: wait for it, for
    // at most the drain limit once we were told to stop ourselves.
    let app_gone = async {
        loop {
            if state.borrow_and_update().app_exited {
                return;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(app_gone);
    if signalled {
        let _ = tokio::time::timeout(DRAIN_AFTER_SIGTERM, &mut app_gone).await;
    } else {
        tokio::select! {
            _ = &mut app_gone => {}
            _ = term.recv() => {
                let _ = tokio::time::timeout(DRAIN_AFTER_SIGTERM, &mut app_gone).await;
            }
        }
    }
    tracer.flush(Duration::from_secs(2)).await;
    tracing::info!("stopped");
    0
}

/// After our own SIGTERM, how long to keep carrying traffic while the app still runs.
const DRAIN_AFTER_SIGTERM: Duration = Duration::from_secs(20);

/// `/readyz` and `/healthz` (ready once the certificate is in place, which is when
/// this starts), and `/metrics` (Prometheus text).
async fn serve_admin(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let limits = berth_common::serve::ServeLimits::LOCAL;
    let listener = berth_common::serve::Listener::new(tokio::net::TcpListener::bind(addr).await?, "admin", &limits);
    tokio::spawn(async move {
        loop {
            let (stream, _, admission) = listener.accept().await;
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _admission = admission;
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/readyz" | "/healthz" => (http::StatusCode::OK, bytes::Bytes::from_static(b"ok\n")),
                            "/metrics" => (http::StatusCode::OK, bytes::Bytes::from(metrics.render())),
                            _ => (http::StatusCode::NOT_FOUND, bytes::Bytes::from_static(b"not found\n")),
                        };
                        let mut r = http::Response::new(http_body_util::Full::new(body));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                berth_common::serve::serve_http(stream, svc, &limits).await;
            });
        }
    });
    Ok(())
}
