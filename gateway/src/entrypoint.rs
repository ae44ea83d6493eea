//! Entrypoints: listeners that accept plain HTTP and TLS on the same port (told apart
//! by the first byte, as Traefik does), serve HTTP/1.1 and HTTP/2 (h2c by prior
//! knowledge, h2 by ALPN), bound header size and read time, close idle connections,
//! and drain gracefully.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use berth_common::serve::IdleIo;
use berth_common::server_tls::TlsOptions;
use berth_common::tls::cert_matches_name;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::metrics::EntrypointMetrics;
use crate::proxy::{ConnInfo, Limits, Proxy};

/// A certificate and key on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// One entrypoint's settings (`--entrypoint`, `[entrypoints.NAME]`), built by `config.rs`.
#[derive(Debug, Clone)]
pub struct EntrypointConfig {
    pub name: String,
    pub addr: std::net::SocketAddr,
    /// The entrypoint's default certificate (else the global one).
    pub tls: Option<CertPair>,
    /// How request paths are cleaned and which encoded characters are refused.
    pub path: berth_common::path::PathPolicy,
    /// Routers on this entrypoint serve TLS connections (Traefik's `http.tls`).
    pub tls_routers: bool,
    /// `http.tls.options`: the TLS options of its routers that set no `tls` of their own.
    pub tls_options: Option<String>,
    /// `http.tls.certResolver`: the certificate resolver of its routers that name none.
    pub cert_resolver: Option<String>,
    /// Whose `X-Forwarded-*` this entrypoint keeps, when not the gateway's list.
    pub trusted: Option<Arc<[ipnet::IpNet]>>,
}

/// Certificates for TLS connections: the file provider's, chosen by SNI, then those
/// ACME resolvers obtained, then the entrypoint's default, then the global default.
/// Swapped when configuration changes.
#[derive(Default)]
pub(crate) struct CertStore {
    pub sni: ArcSwap<Vec<Arc<CertifiedKey>>>,
    pub default: ArcSwap<Option<Arc<CertifiedKey>>>,
    pub acme: Option<Arc<crate::acme::Acme>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("sni", &self.sni.load().len())
            .finish()
    }
}

impl CertStore {
    /// Whether a TLS handshake can be served at all (a certificate, or a TLS-ALPN-01
    /// challenge pending).
    pub(crate) fn any(&self) -> bool {
        self.default.load().is_some()
            || !self.sni.load().is_empty()
            || self
                .acme
                .as_ref()
                .is_some_and(|a| !a.certs().is_empty() || a.challenges.any_alpn())
    }
}

/// One certificate, whatever the hello (a TLS-ALPN-01 answer).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Debug)]
struct Resolver {
    store: Arc<CertStore>,
    entrypoint_default: Option<Arc<CertifiedKey>>,
    /// `sniStrict`: only a certificate for the name asked is served, never the default.
    strict: bool,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let certs = self.store.sni.load();
            if let Some(c) = certs.iter().find(|c| cert_matches_name(c, name)) {
                return Some(c.clone());
            }
            if let Some(acme) = &self.store.acme
                && let Some(c) = acme.certs().iter().find(|c| cert_matches_name(&c.key, name))
            {
                return Some(c.key.clone());
            }
        }
        // Strict SNI: never the default certificate, as in Traefik.
        if self.strict {
            return None;
        }
        self.entrypoint_default
            .clone()
            .or_else(|| self.store.default.load().as_ref().clone())
    }
}

/// The TLS server configurations of one entrypoint, one per `tls.options` in use, built
/// when a connection first needs them and kept while the options are unchanged.
pub(crate) struct ServerConfigs {
    pub(crate) store: Arc<CertStore>,
    entrypoint_default: Option<Arc<CertifiedKey>>,
    built: Mutex<Vec<Built>>,
}

/// A configuration built for some options, with ALPN or without (a TCP router
/// terminating TLS).
type Built = (Arc<TlsOptions>, bool, Arc<rustls::ServerConfig>);

impl ServerConfigs {
    pub(crate) fn new(store: Arc<CertStore>, entrypoint_default: Option<Arc<CertifiedKey>>) -> ServerConfigs {
        ServerConfigs {
            store,
            entrypoint_default,
            built: Mutex::new(Vec::new()),
        }
    }

    /// The configuration for `options` (the same `Arc` as long as they do not change);
    /// with `tcp`, without ALPN: a TCP router terminating TLS carries whatever protocol
    /// the client speaks, so it must not promise HTTP/2.
    fn get(&self, options: &Arc<TlsOptions>, tcp: bool) -> Result<Arc<rustls::ServerConfig>, String> {
        {
            let built = self.built.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, _, cfg)) = built.iter().find(|(o, t, _)| Arc::ptr_eq(o, options) && *t == tcp) {
                return Ok(cfg.clone());
            }
        }
        let resolver = Arc::new(Resolver {
            store: self.store.clone(),
            entrypoint_default: self.entrypoint_default.clone(),
            strict: options.sni_strict,
        });
        let mut cfg = options.server_config(resolver)?;
        if tcp {
            cfg.alpn_protocols.clear();
        }
        let cfg = Arc::new(cfg);
        let mut built = self.built.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Options replaced by a reload are dropped with their configurations.
        built.retain(|(o, _, _)| Arc::strong_count(o) > 1);
        built.push((options.clone(), tcp, cfg.clone()));
        Ok(cfg)
    }
}

/// Counts open connections so shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct ConnTracker {
    open: AtomicUsize,
    idle: Notify,
}

struct ConnGuard(Arc<ConnTracker>, Arc<EntrypointMetrics>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.1.open_connections.fetch_sub(1, Ordering::Relaxed);
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ConnTracker {
    fn enter(self: &Arc<Self>, m: &Arc<EntrypointMetrics>) -> ConnGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        m.open_connections.fetch_add(1, Ordering::Relaxed);
        m.connections_total.fetch_add(1, Ordering::Relaxed);
        ConnGuard(self.clone(), m.clone())
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Wait until no connection is open.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Lifecycle phases the accept loops and connections follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Stop accepting; finish in-flight requests and close.
    Draining,
}

/// Everything an entrypoint's accept loop needs.
pub(crate) struct Entrypoint {
    pub name: Arc<str>,
    pub listener: TcpListener,
    /// The TLS configurations, by `tls.options`, for HTTP and for TCP routers.
    pub tls: ServerConfigs,
    pub has_certs: Arc<dyn Fn() -> bool + Send + Sync>,
    pub proxy: Arc<Proxy>,
    pub limits: Limits,
    pub metrics: Arc<EntrypointMetrics>,
    pub tracker: Arc<ConnTracker>,
    pub path: berth_common::path::PathPolicy,
    pub trusted: Option<Arc<[ipnet::IpNet]>>,
    /// The ACME resolvers this entrypoint answers HTTP-01 for.
    pub acme_http: Option<Arc<crate::acme::Acme>>,
}

impl Entrypoint {
    /// Accept until the phase turns to draining.
    pub(crate) async fn run(self, mut phase: watch::Receiver<Phase>) {
        let this = Arc::new(self);
        loop {
            tokio::select! {
                accepted = this.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off briefly rather than spin.
                            tracing::warn!(entrypoint = %this.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let guard = this.tracker.enter(&this.metrics);
                    let this = this.clone();
                    let phase = phase.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        this.serve_connection(stream, peer, phase).await;
                    });
                }
                _ = phase.changed() => {
                    if *phase.borrow() == Phase::Draining {
                        break;
                    }
                }
            }
        }
    }

    async fn serve_connection(&self, stream: TcpStream, peer: std::net::SocketAddr, phase: watch::Receiver<Phase>) {
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let snap = self.proxy.routes().snapshot.clone();
        let has_tcp = snap.tcp_routers_on(&self.name).next().is_some();
        // A server-first protocol (the client waits for a greeting) can only be told by
        // its port: with no HTTP router here, a plain TCP router takes it at once.
        if has_tcp
            && !snap.routers.iter().any(|r| {
                r.status == berth_common::routing::Status::Enabled && r.entry_points.iter().any(|e| **e == *self.name)
            })
            && let Some(router) = crate::tcp::find(&snap, &self.name, false, &crate::tcp::view(None, peer))
        {
            crate::tcp::serve(stream, &snap, router, peer, &self.tcp_ctx()).await;
            return;
        }
        // Peek the first byte: 0x16 opens a TLS handshake.
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(self.limits.header_read_timeout, stream.peek(&mut first)).await;
        let is_tls = matches!(peeked, Ok(Ok(1))) && first[0] == 0x16;
        if !matches!(peeked, Ok(Ok(1))) {
            return;
        }
        if has_tcp {
            let hello = if is_tls {
                crate::tcp::peek_hello(&stream, self.limits.header_read_timeout).await
            } else {
                None
            };
            if is_tls && hello.is_none() {
                tracing::debug!(entrypoint = %self.name, %peer, "no readable ClientHello");
                return;
            }
            let view = crate::tcp::view(hello.as_ref(), peer);
            if let Some(router) = crate::tcp::find(&snap, &self.name, is_tls, &view) {
                let ctx = self.tcp_ctx();
                if router.refuse_tls {
                    tracing::debug!(entrypoint = %self.name, %peer, router = %router.name, "TLS options broken: connection closed");
                    return ctx.metrics.tcp(&router.name, "tls_failed");
                }
                if router.tls_passthrough == Some(false) {
                    // Terminate TLS here with the router's options (the builder resolved
                    // them, `default` unless named), then forward the plaintext.
                    let cfg = router
                        .tls_options_spec
                        .as_ref()
                        .ok_or_else(|| "no TLS options".to_string());
                    let cfg = match cfg.and_then(|o| self.tls.get(o, true)) {
                        Ok(cfg) => cfg,
                        Err(e) => {
                            tracing::warn!(entrypoint = %self.name, %peer, error = %e, "TLS for a TCP router");
                            return ctx.metrics.tcp(&router.name, "tls_failed");
                        }
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    match tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => crate::tcp::serve(tls, &snap, router, peer, &ctx).await,
                        _ => ctx.metrics.tcp(&router.name, "tls_failed"),
                    }
                } else {
                    crate::tcp::serve(stream, &snap, router, peer, &ctx).await;
                }
                return;
            }
        }
        let mut info = ConnInfo {
            entrypoint: self.name.clone(),
            local,
            peer,
            tls: is_tls,
            metrics: self.metrics.clone(),
            path: self.path,
            trusted: self.trusted.clone(),
            tls_options: None,
            client_certs: None,
        };
        if !is_tls {
            return self.serve_http(IdleIo::new(stream), Arc::new(info), phase).await;
        }
        if !(self.has_certs)() {
            tracing::debug!(entrypoint = %self.name, %peer, "TLS handshake but no certificate configured");
            return;
        }
        let handshake = async {
            // The options come from the server name the client asks for, so the hello
            // is read before the configuration is chosen.
            let lazy = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
            let start = lazy.await.map_err(|e| e.to_string())?;
            let name = start.client_hello().server_name().map(str::to_string);
            // TLS-ALPN-01 (RFC 8737): the challenge's certificate, and nothing else.
            let acme_alpn = start
                .client_hello()
                .alpn()
                .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN));
            if acme_alpn {
                let cert = match (self.tls.store.acme.as_ref(), name.as_deref()) {
                    (Some(a), Some(n)) => a.challenges.alpn_cert(n).await,
                    _ => None,
                };
                let Some(cert) = cert else {
                    return Err("ALPN acme-tls/1 for a name with no pending challenge".into());
                };
                let mut cfg = rustls::ServerConfig::builder_with_provider(berth_common::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(Fixed(cert)));
                cfg.alpn_protocols = vec![crate::acme::ACME_TLS_ALPN.to_vec()];
                let _ = start.into_stream(Arc::new(cfg)).await;
                return Err("TLS-ALPN-01 challenge answered".into());
            }
            let Some(entry) = snap.tls_options_for(&self.name, name.as_deref()) else {
                return Err(format!(
                    "the TLS options of the routers for `{}` are broken",
                    name.unwrap_or_default()
                ));
            };
            let options = entry.spec.clone().ok_or("no TLS options")?;
            let cfg = self.tls.get(&options, false)?;
            let tls = start.into_stream(cfg).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((tls, options))
        };
        match tokio::time::timeout(self.limits.header_read_timeout, handshake).await {
            Ok(Ok((tls, options))) => {
                info.client_certs = tls.get_ref().1.peer_certificates().map(Arc::from);
                info.tls_options = Some(options);
                self.serve_http(IdleIo::new(tls), Arc::new(info), phase).await
            }
            Ok(Err(e)) => tracing::debug!(entrypoint = %self.name, %peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(entrypoint = %self.name, %peer, "TLS handshake timed out"),
        }
    }

    fn tcp_ctx(&self) -> crate::tcp::Ctx<'_> {
        crate::tcp::Ctx {
            connect_timeout: self.limits.connect_timeout,
            idle: self.limits.idle_timeout,
            metrics: self.proxy.metrics(),
            mesh: self.proxy.mesh_client(),
        }
    }

    async fn serve_http<S>(&self, io: IdleIo<S>, info: Arc<ConnInfo>, mut phase: watch::Receiver<Phase>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = io.activity();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // TLS options whose ALPN leaves HTTP/2 out: HTTP/1.1 only, as Go serves them.
        if info.tls_options.as_ref().is_some_and(|o| !o.offers_h2()) {
            builder = builder.http1_only();
        }
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes)
            // A client that shuts down its side after the request (`nc -N`, HTTP/1.0
            // tools) still gets its answer, as from nginx.
            .half_close(true)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(250);
        let proxy = self.proxy.clone();
        let acme = self.acme_http.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let proxy = proxy.clone();
            let info = info.clone();
            let acme = acme.clone();
            // Boxed: hyper moves a request's future into its HTTP/1 dispatcher and spawns
            // each HTTP/2 stream's as a task, copying it whole each time; a box is moved
            // as a pointer (the future is kilobytes: docs/benchmarks.md).
            Box::pin(async move {
                // HTTP-01: a pending token's answer comes before any router (and any
                // redirection to HTTPS), as in Traefik.
                let answer = match &acme {
                    Some(a) => a.challenges.http_answer(req.uri().path()).await,
                    None => None,
                };
                if let Some(key_authorization) = answer {
                    let mut resp = http::Response::new(berth_common::body::boxed(http_body_util::Full::new(
                        bytes::Bytes::from(key_authorization),
                    )));
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
                    return Ok::<_, Infallible>(resp);
                }
                Ok::<_, Infallible>(proxy.handle(req, &info).await)
            })
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let idle = self.limits.idle_timeout;
        let mut tick = tokio::time::interval(idle.min(Duration::from_secs(1)).max(Duration::from_millis(10)));
        let mut closing = *phase.borrow() == Phase::Draining;
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = phase.changed(), if !closing => {
                    if *phase.borrow() == Phase::Draining {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
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
}
