//! The sidecar's start, as a library: [`Sidecar::start`] takes its [`Settings`] through
//! named phases (trust, task metadata, identity, the app, observability, listeners,
//! registration) and returns a running sidecar; [`Sidecar::run`] carries traffic until
//! the task stops or it is told to stop, then drains. The binary only reads the
//! environment, maps errors to exit codes and forwards signals, so tests can start a
//! sidecar in-process, as they start the gateway with `Gateway::start`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_common::control::Registration;
use berth_common::labels::ContainerLabels as Labels;
use berth_common::mtls::{CertSlot, TrustAnchors};
use berth_common::proxy_config::ProxyConfig;
use berth_common::telemetry::{Observe, Tracer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Settings};
use crate::control::ControlPool;
use crate::identity::{Certifier, Granted};
use crate::inbound::{Inbound, Policy};
use crate::metadata::{self, TaskMetadata};
use crate::metrics::Metrics;
use crate::outbound::{MeshCache, Outbound};
use crate::register::{self, Probe, TaskState};
use crate::transparent::Egress;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Settings that cannot work; the binary exits 64 (EX_USAGE).
    #[error("{0}")]
    Config(String),
    #[error("{what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("outbound TLS: {0}")]
    OutboundTls(rustls::Error),
    #[error("inbound TLS: {0}")]
    InboundTls(rustls::Error),
}

impl StartError {
    /// The process exit code for this error: 64 for configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => 64,
            _ => 1,
        }
    }
}

/// After being told to stop, how long to keep carrying traffic while the app still runs.
const DRAIN_AFTER_STOP: Duration = Duration::from_secs(20);

/// A running sidecar.
pub struct Sidecar {
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    state: watch::Receiver<TaskState>,
    registrar: JoinHandle<()>,
    stop_registrar: watch::Sender<bool>,
    told: watch::Receiver<u32>,
    tell: watch::Sender<u32>,
    tracer: Tracer,
    pub metrics: Arc<Metrics>,
}

/// Tells a running sidecar to stop (the binary sends it on SIGTERM and Ctrl-C).
#[derive(Clone)]
pub struct StopHandle(watch::Sender<u32>);

impl StopHandle {
    /// Deregister at once and carry traffic until the app has exited (at most 20 s).
    pub fn stop(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

impl Sidecar {
    pub async fn start(settings: Settings) -> Result<Sidecar, StartError> {
        let anchors = trust(&settings)?;
        let md = task_metadata(&settings.metadata_uri).await;
        let reg = md.registration(settings.app_port);
        let bind = settings.source_ip();
        let slot = Arc::new(CertSlot::default());
        let metrics = Arc::new(Metrics::default());
        metrics.trust_roots(&anchors);
        let pool = Arc::new(ControlPool::new(
            gateways(&settings.gateways).await,
            bind,
            slot.clone(),
            anchors.clone(),
        ));
        let aws_env = &settings.aws_env;
        let iam = match crate::iam::IamSigner::from_env(|k| aws_env.get(k).cloned(), &reg.task_arn) {
            Ok(signer) => signer.map(|s| s.from_address(bind)),
            Err(e) => {
                tracing::warn!(error = %e, "no IAM identity: the task role's credentials cannot be used");
                None
            }
        };
        let certifier = Arc::new(Certifier {
            replicas: pool.clone(),
            anchors: anchors.clone(),
            token: settings.token.clone(),
            iam,
            task_arn: reg.task_arn.clone(),
            bind,
            slot: slot.clone(),
            trust_domain_hint: None,
            metrics: metrics.clone(),
            current: Default::default(),
        });
        let granted = identity(&certifier).await;
        let granted_proxy = granted.proxy.clone();
        tracing::info!(identity = %granted.identity, task = %reg.task_arn, "certificate obtained");
        let (labels, diags) = berth_common::labels::parse(&reg.labels);
        for d in diags {
            tracing::warn!(diagnostic = %d, "label problem");
        }
        let policy = Policy {
            me: granted.identity.clone(),
            allow: labels.mesh.allow.clone(),
            default_deny: granted.default_deny,
        };
        let trust_domain = granted.identity.trust_domain().to_string();
        tokio::spawn(certifier.clone().keep_renewed(granted));
        let app = app_address(&md, &reg, bind)?;
        let (inbound_port, state) = follow_task(&settings, &md, &reg, &labels, app, &metrics);
        let observe = observability(&settings, &labels, &reg).await?;
        metrics.set_observe(observe.clone());

        // Listeners: inbound mTLS in front of the app, outbound for the app's calls, admin.
        let inbound = Arc::new(
            Inbound::new(app, policy, metrics.clone(), observe.clone())
                .app_h2c(app_h2c(&settings, &labels))
                .tcp_ports(
                    md.app()
                        .map(|a| a.ports.iter().filter_map(|p| p.container_port).collect())
                        .unwrap_or_default(),
                )
                .response_timeout(settings.app_response_timeout),
        );
        let proxy = transparent_config(&settings, granted_proxy);
        let inbound_tls = inbound
            .tls(slot.clone(), anchors.clone())
            .map_err(StartError::InboundTls)?;
        let listener = bind_listener("BERTH_INBOUND", settings.inbound).await?;
        let inbound_addr = listener.local_addr().unwrap_or(settings.inbound);
        tokio::spawn(inbound.clone().serve(listener, inbound_tls.clone(), None));
        if let Some(p) = &proxy {
            for l in bind_both("ProxyIngressPort", p.ingress_port, false).await? {
                tokio::spawn(inbound.clone().serve(l, inbound_tls.clone(), Some(labels.mesh.ingress)));
            }
        }
        let mesh = MeshCache::new(pool.clone());
        tokio::spawn(mesh.clone().follow());
        let outbound = Outbound::new(
            mesh,
            slot,
            anchors,
            &trust_domain,
            metrics.clone(),
            observe.clone(),
            settings.outbound_response_timeout,
        )
        .map_err(StartError::OutboundTls)?;
        let outbound = Arc::new(outbound);
        let outbound_addr;
        if let Some(p) = &proxy {
            let egress = Arc::new(Egress::new(outbound.clone(), labels.mesh.outbound, metrics.clone()));
            // Where ECS's REDIRECT sends the task's own connections, and only there: on
            // the task's other addresses this would be a proxy signing with its identity.
            for l in bind_both("ProxyEgressPort", p.egress_port, true).await? {
                tokio::spawn(egress.clone().serve(l));
            }
            tracing::info!(
                ingress = p.ingress_port,
                egress = p.egress_port,
                app_ports = ?p.app_ports,
                outbound = ?labels.mesh.outbound,
                ingress_plaintext = ?labels.mesh.ingress,
                "transparent mode (proxyConfiguration)"
            );
        }
        // The egress listener also takes direct calls: on its port and loopback (or every
        // address, which would clash with it) it is the outbound.
        let served_by_egress = proxy.as_ref().is_some_and(|p| {
            p.egress_port == settings.outbound.port()
                && (settings.outbound.ip().is_loopback() || settings.outbound.ip().is_unspecified())
        });
        if let Some(p) = proxy.as_ref().filter(|_| served_by_egress) {
            outbound_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p.egress_port));
        } else {
            let out_listener = bind_listener("BERTH_OUTBOUND", settings.outbound).await?;
            outbound_addr = out_listener.local_addr().unwrap_or(settings.outbound);
            tokio::spawn(outbound.serve(out_listener));
        }
        let admin = serve_admin(admin_address(&settings, proxy.as_ref())?, metrics.clone()).await?;

        // Registration and heartbeats, until told to stop.
        let (stop_registrar, stopping) = watch::channel(false);
        let registrar = tokio::spawn(register::run(pool, state.clone(), stopping, metrics.clone()));
        tracing::info!(inbound = %inbound_addr, outbound = %outbound_addr, inbound_port, "ready");
        let (tell, told) = watch::channel(0);
        Ok(Sidecar {
            inbound: inbound_addr,
            outbound: outbound_addr,
            admin,
            state,
            registrar,
            stop_registrar,
            told,
            tell,
            tracer: observe.tracer,
            metrics,
        })
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.tell.clone())
    }

    /// Carry traffic until TMDS shows the task stopping or [`StopHandle::stop`] is
    /// called; then deregister at once, keep carrying traffic until the app has exited
    /// (ECS stops the app first when it depends on the sidecar), and flush spans.
    pub async fn run(self) {
        let Sidecar {
            mut state,
            registrar,
            stop_registrar,
            mut told,
            // Kept so that `told` only changes when a StopHandle says so.
            tell: _tell,
            tracer,
            ..
        } = self;
        let mut stopped_by_us = false;
        loop {
            if state.borrow_and_update().stopping {
                tracing::info!("the task is stopping (TMDS DesiredStatus STOPPED)");
                break;
            }
            tokio::select! {
                r = told.changed() => { stopped_by_us = r.is_ok(); break; }
                r = state.changed() => if r.is_err() { break; },
            }
        }
        let _ = stop_registrar.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), registrar).await;
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
        if stopped_by_us {
            let _ = tokio::time::timeout(DRAIN_AFTER_STOP, &mut app_gone).await;
        } else {
            tokio::select! {
                _ = &mut app_gone => {}
                r = told.changed() => if r.is_ok() {
                    let _ = tokio::time::timeout(DRAIN_AFTER_STOP, &mut app_gone).await;
                },
            }
        }
        tracer.flush(Duration::from_secs(2)).await;
        tracing::info!("stopped");
    }
}

/// Phase: the mesh trust anchor from `BERTH_CA_CERT`.
pub(crate) fn trust(settings: &Settings) -> Result<TrustAnchors, StartError> {
    CertificateDer::pem_slice_iter(settings.ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
        .and_then(|c| TrustAnchors::from_certs(&c).map_err(|e| e.to_string()))
        .map_err(|e| StartError::Config(format!("BERTH_CA_CERT: {e}")))
}

/// Phase: the task metadata, retried with back-off until it answers.
async fn task_metadata(uri: &str) -> TaskMetadata {
    let mut backoff = Duration::from_millis(100);
    loop {
        match metadata::fetch(uri, Duration::from_secs(5)).await {
            Ok(md) => return md,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "task metadata not available yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Phase: the gateway replicas in `BERTH_GATEWAY` (names resolved), retried until one
/// resolves; the mesh view then lists the others.
async fn gateways(configured: &[String]) -> Vec<SocketAddr> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let found = config::resolve_gateways(configured).await;
        if !found.is_empty() {
            return found;
        }
        tracing::warn!(gateways = ?configured, ?backoff, "no gateway address yet");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Phase: the task's certificate, asked for until a replica grants it.
async fn identity(certifier: &Certifier) -> Granted {
    let mut backoff = Duration::from_millis(200);
    loop {
        match certifier.certify().await {
            Ok(g) => return g,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "no certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Phase: where the app listens. awsvpc: the task's own address; bridge: the app
/// container's address on the bridge.
fn app_address(md: &TaskMetadata, reg: &Registration, bind: Option<IpAddr>) -> Result<SocketAddr, StartError> {
    let Some(app_port) = reg.port else {
        return Err(StartError::Config("the app port is unknown: set BERTH_APP_PORT".into()));
    };
    let bridge_ip = (reg.network_mode.as_deref() == Some("bridge"))
        .then(|| {
            md.app()
                .and_then(|a| a.networks.first())
                .and_then(|n| n.ipv4_addresses.first())
        })
        .flatten()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let app_ip = bridge_ip.or(bind).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Ok(SocketAddr::new(app_ip, app_port))
}

/// Phase: the task as TMDS shows it, followed every second, with the app's health
/// (`BERTH_HEALTH_PATH`, else the health-check path its labels give its service, as
/// Traefik's active health check would use). Returns the inbound port the gateway
/// dials (the host port in bridge mode) and the task's state.
fn follow_task(
    settings: &Settings,
    md: &TaskMetadata,
    reg: &Registration,
    labels: &Labels,
    app: SocketAddr,
    metrics: &Arc<Metrics>,
) -> (u16, watch::Receiver<TaskState>) {
    let health_path = settings.health_path.clone().or_else(|| {
        labels
            .config
            .http
            .services
            .values()
            .find_map(|s| s.load_balancer.health_check.as_ref().and_then(|h| h.path.clone()))
    });
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
    let (state_tx, state) = watch::channel(TaskState {
        stopping: md.desired_status == "STOPPED",
        app_exited: false,
        registration: first,
    });
    tokio::spawn(register::poll(
        settings.metadata_uri.clone(),
        settings.app_port,
        inbound_port,
        health_path.map(|p| Probe::new(app, p)),
        state_tx,
        metrics.clone(),
    ));
    (inbound_port, state)
}

/// Phase: spans (named for the task's mesh name, else its service) and the access log.
async fn observability(settings: &Settings, labels: &Labels, reg: &Registration) -> Result<Observe, StartError> {
    let tracer = match &settings.tracing {
        Some(t) => {
            let name = labels.mesh.name.clone().unwrap_or_else(|| reg.service.clone());
            let detected = berth_common::telemetry::resource::detect_ecs().await;
            let resource = berth_common::telemetry::resource::build(t, &name, detected);
            tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, service = %name, "tracing on");
            berth_common::telemetry::start(t, resource)
        }
        None => Tracer::disabled(),
    };
    let access_log = match settings.access_log {
        Some(format) => Some(berth_common::accesslog::AccessLog::open(None, format).map_err(StartError::AccessLog)?),
        None => None,
    };
    Ok(Observe { tracer, access_log })
}

/// h2c to the app when told, or when its labels say its services speak h2c.
fn app_h2c(settings: &Settings, labels: &Labels) -> bool {
    settings.app_protocol.unwrap_or_else(|| {
        labels
            .config
            .http
            .services
            .values()
            .any(|s| s.load_balancer.server.as_ref().and_then(|t| t.scheme.as_deref()) == Some("h2c"))
    })
}

/// Phase: transparent mode, from the task definition's `proxyConfiguration` as the
/// gateway read it (what ECS applies), else `BERTH_PROXY_CONFIGURATION`; only when it
/// names this container.
fn transparent_config(settings: &Settings, from_gateway: Option<ProxyConfig>) -> Option<ProxyConfig> {
    if let (Some(g), Some(e)) = (&from_gateway, &settings.proxy)
        && g != e
    {
        tracing::warn!(
            "BERTH_PROXY_CONFIGURATION differs from the task definition's proxyConfiguration: the task definition's applies"
        );
    }
    let proxy = from_gateway.or_else(|| settings.proxy.clone())?;
    if proxy.container_name != metadata::SIDECAR_CONTAINER {
        tracing::warn!(
            container = %proxy.container_name,
            "the proxyConfiguration names another container: no transparent mode (name the sidecar's container {})",
            metadata::SIDECAR_CONTAINER
        );
        return None;
    }
    // The process's own user and group, without unsafe code: those of its /proc entry.
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").ok();
    let (uid, gid) = (me.as_ref().map(MetadataExt::uid), me.as_ref().map(MetadataExt::gid));
    let ignored = (proxy.ignored_uid.is_some() && proxy.ignored_uid == uid)
        || (proxy.ignored_gid.is_some() && proxy.ignored_gid == gid);
    if !ignored {
        tracing::warn!(
            ?uid,
            ignored_uid = ?proxy.ignored_uid,
            ignored_gid = ?proxy.ignored_gid,
            "the sidecar does not run as the proxyConfiguration's IgnoredUID/IgnoredGID: ECS redirects its own \
             connections back to it, and they fail; set the container's user"
        );
    }
    Some(proxy)
}

/// The admin listener's address: `BERTH_ADMIN`, except that its default port gives way to
/// a transparent listener (App Mesh's ingress is on 15000) and it moves to 9901, Envoy's
/// admin port in App Mesh task definitions.
fn admin_address(settings: &Settings, proxy: Option<&ProxyConfig>) -> Result<SocketAddr, StartError> {
    let Some(p) = proxy.filter(|p| [p.ingress_port, p.egress_port].contains(&settings.admin.port())) else {
        return Ok(settings.admin);
    };
    if settings.admin_set {
        return Err(StartError::Config(format!(
            "BERTH_ADMIN={}: its port is the proxyConfiguration's ProxyIngressPort or ProxyEgressPort ({} or {})",
            settings.admin, p.ingress_port, p.egress_port
        )));
    }
    Ok(SocketAddr::new(settings.admin.ip(), ADMIN_BESIDE_PROXY))
}

/// Envoy's admin port in App Mesh task definitions.
const ADMIN_BESIDE_PROXY: u16 = 9901;

/// A transparent listener on IPv4 and, when the task has it, IPv6: on loopback (`local`:
/// where REDIRECT sends the task's own outgoing connections) or on every address (where
/// it sends connections coming in).
async fn bind_both(what: &'static str, port: u16, local: bool) -> Result<Vec<TcpListener>, StartError> {
    let v4 = if local {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let v6 = if local {
        std::net::Ipv6Addr::LOCALHOST
    } else {
        std::net::Ipv6Addr::UNSPECIFIED
    };
    let mut out = vec![bind_listener(what, SocketAddr::from((v4, port))).await?];
    match v6_only_listener(SocketAddr::from((v6, port))) {
        Ok(l) => out.push(l),
        Err(e) => tracing::info!(port, error = %e, "no IPv6 transparent listener (the task has no IPv6?)"),
    }
    Ok(out)
}

fn v6_only_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

async fn bind_listener(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { what, addr, source })
}

/// `/readyz` and `/healthz` (ready once the certificate is in place, which is when
/// this starts), and `/metrics` (Prometheus text). Returns the bound address.
async fn serve_admin(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, StartError> {
    let limits = berth_common::serve::ServeLimits::LOCAL;
    let bound = bind_listener("BERTH_ADMIN", addr).await?;
    let local = bound.local_addr().unwrap_or(addr);
    let listener = berth_common::serve::Listener::new(bound, "admin", &limits);
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
    Ok(local)
}
