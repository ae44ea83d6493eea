//! `GET /api/...`, `/metrics`, `/healthz`, `/readyz` and `/` (also `/dashboard/`) on
//! `--admin`; and on Traefik's internal entrypoints (`traefik`, `:8080`) only what each
//! serves: the API and dashboard (`api.insecure`), `/ping`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use berth_common::routing::{Snapshot, Status};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::traefik::Exposure;
use crate::discovery::StatusCell;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::proxy::{Body, Proxy};

pub(crate) struct AdminState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub proxy: Arc<Proxy>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub providers: Vec<Arc<StatusCell>>,
    pub ecs: Option<Arc<crate::discovery::ecs::EcsStatus>>,
    /// The sidecar registry, when the mesh control plane runs.
    pub sidecars: Option<Arc<crate::discovery::registry::Registry>>,
    /// Entrypoint TLS certificates (default and SNI).
    pub certs: Arc<crate::entrypoint::CertStore>,
    /// The routing entrypoints and their addresses, for `/api/entrypoints`.
    pub entrypoints: Vec<(String, std::net::SocketAddr)>,
    /// When the gateway started (RFC 3339), for `/api/version`.
    pub started: String,
    /// The mesh's roots (the CA's, and the trust bundle's) and the gateway's own mesh
    /// certificate.
    pub mesh_certs: Option<(berth_common::mtls::TrustAnchors, Arc<berth_common::mtls::CertSlot>)>,
}

/// Serve the admin API until the task is dropped: everything (`None`, Berth's
/// `--admin`), or what a Traefik internal entrypoint exposes.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, exposure: Option<Exposure>) {
    let limits = berth_common::serve::ServeLimits::LOCAL;
    let listener = berth_common::serve::Listener::new(listener, "admin API", &limits);
    let exposure = Arc::new(exposure);
    loop {
        let (stream, _, admission) = listener.accept().await;
        let state = state.clone();
        let exposure = exposure.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let exposure = exposure.clone();
                async move {
                    Ok::<_, Infallible>(match exposure.as_ref() {
                        None => handle(&state, req),
                        Some(e) => handle_exposed(&state, e, req),
                    })
                }
            });
            berth_common::serve::serve_http(stream, svc, &limits).await;
        });
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

/// A Traefik internal entrypoint: `/ping`, `/metrics`, the API and the dashboard (at
/// Traefik's `/dashboard/`, `/` redirecting there), each only when configured.
fn handle_exposed<B>(state: &AdminState, e: &Exposure, req: Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let not_found = || respond(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n");
    if path == "/ping" {
        if !e.ping {
            return not_found();
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "");
        }
        return if state.lifecycle.is_shutting_down() {
            let code = StatusCode::from_u16(e.terminating_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            respond(code, "text/plain", code.canonical_reason().unwrap_or("").to_string())
        } else {
            respond(StatusCode::OK, "text/plain", "OK")
        };
    }
    let allowed = match path {
        "/metrics" => e.metrics,
        "/" | "/dashboard" => e.dashboard,
        p if p.starts_with("/dashboard/") => e.dashboard,
        p if p.starts_with("/api/") => e.api,
        _ => false,
    };
    if !allowed {
        return not_found();
    }
    if path == "/" || path == "/dashboard" {
        let mut r = respond(StatusCode::FOUND, "text/plain", "");
        r.headers_mut()
            .insert(header::LOCATION, http::HeaderValue::from_static("/dashboard/"));
        return r;
    }
    handle(state, req)
}

/// A router's request to one of the gateway's own services, after the router's
/// middlewares (Traefik's secure mode: `api@internal` behind basicAuth, ...):
/// `api@internal` answers `/api/...` (and the dashboard when it is on),
/// `dashboard@internal` the dashboard, `ping@internal` `/ping`, `prometheus@internal`
/// the metrics whatever the path, `noop@internal` 418 as Traefik's.
pub(crate) fn internal_service<B>(state: &AdminState, name: &str, dashboard: bool, req: Request<B>) -> Response<Body> {
    let exposure = |f: &dyn Fn(&mut Exposure)| {
        let mut e = Exposure {
            terminating_status: 503,
            ..Default::default()
        };
        f(&mut e);
        e
    };
    match name {
        "api@internal" => handle_exposed(
            state,
            &exposure(&|e| {
                e.api = true;
                e.dashboard = dashboard;
            }),
            req,
        ),
        "dashboard@internal" => handle_exposed(state, &exposure(&|e| e.dashboard = true), req),
        "ping@internal" => handle_exposed(state, &exposure(&|e| e.ping = true), req),
        "prometheus@internal" => {
            let (mut parts, body) = req.into_parts();
            parts.uri = http::Uri::from_static("/metrics");
            handle(state, Request::from_parts(parts, body))
        }
        "noop@internal" => respond(StatusCode::IM_A_TEAPOT, "text/plain", ""),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n"),
    }
}

pub(crate) fn handle<B>(state: &AdminState, req: Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"message": "only GET"}));
    }
    let snap = state.snapshot.load_full();
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match state.lifecycle.not_ready() {
            None => respond(StatusCode::OK, "text/plain", "ready\n"),
            Some(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut text = state.metrics.render();
            let observe = state.proxy.observe();
            if let Some(stats) = observe.tracer.stats() {
                stats.render(&mut text, "berth");
            }
            if let Some(log) = &observe.access_log {
                berth_common::prom::family(
                    &mut text,
                    "berth_access_log_dropped_total",
                    "counter",
                    "Access-log lines dropped because the writer fell behind.",
                );
                berth_common::prom::sample(
                    &mut text,
                    "berth_access_log_dropped_total",
                    &[],
                    log.dropped.load(std::sync::atomic::Ordering::Relaxed),
                );
            }
            let certs = certificates(state);
            if !certs.is_empty() {
                let name = "berth_certificate_expiry_timestamp_seconds";
                berth_common::prom::family(
                    &mut text,
                    name,
                    "gauge",
                    "When each certificate the gateway holds expires.",
                );
                for c in &certs {
                    let subject = c["names"][0]
                        .as_str()
                        .unwrap_or(c["subject"].as_str().unwrap_or_default());
                    let labels = [("use", c["use"].as_str().unwrap_or_default()), ("name", subject)];
                    berth_common::prom::sample(&mut text, name, &labels, c["notAfterUnix"].as_i64().unwrap_or(0));
                }
            }
            if let Some(reg) = &state.sidecars {
                text.push_str("# HELP berth_sidecars_connected Sidecars with a live registration.\n");
                text.push_str("# TYPE berth_sidecars_connected gauge\n");
                text.push_str(&format!("berth_sidecars_connected {}\n", reg.connected()));
            }
            respond(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/api/http/routers" => json_response(StatusCode::OK, &Value::Array(routers(&snap))),
        "/api/http/services" => json_response(StatusCode::OK, &Value::Array(services(state, &snap))),
        "/api/http/middlewares" => json_response(StatusCode::OK, &Value::Array(middlewares(&snap))),
        "/api/tcp/routers" => json_response(StatusCode::OK, &Value::Array(tcp_routers(&snap))),
        "/api/tcp/services" => json_response(StatusCode::OK, &Value::Array(tcp_services(&snap))),
        "/api/tcp/middlewares" => json_response(StatusCode::OK, &Value::Array(tcp_middlewares(&snap))),
        "/api/overview" => json_response(StatusCode::OK, &overview(state, &snap)),
        "/api/diagnostics" => json_response(StatusCode::OK, &json!(snap.diagnostics)),
        "/api/certificates" => json_response(StatusCode::OK, &Value::Array(certificates(state))),
        "/api/ecs" => match &state.ecs {
            Some(ecs) => json_response(StatusCode::OK, &json!({ "clusters": ecs.clusters() })),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"message": "ECS discovery is not enabled (no --ecs-cluster or --ecs-all-clusters)"}),
            ),
        },
        "/api/sidecars" => match &state.sidecars {
            Some(reg) => json_response(StatusCode::OK, &json!(reg.list())),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"message": "the mesh control plane is not enabled (no --mesh-ca-cert or --mesh-dev-ca)"}),
            ),
        },
        "/" | "/dashboard/" => respond(StatusCode::OK, "text/html; charset=utf-8", dashboard(state, &snap)),
        "/api/version" => json_response(
            StatusCode::OK,
            &json!({"Version": env!("CARGO_PKG_VERSION"), "Codename": "berth", "startDate": state.started}),
        ),
        "/api/entrypoints" => json_response(
            StatusCode::OK,
            &Value::Array(
                state
                    .entrypoints
                    .iter()
                    .map(|(name, addr)| json!({"name": name, "address": addr.to_string()}))
                    .collect(),
            ),
        ),
        "/api/rawdata" => json_response(StatusCode::OK, &rawdata(state, &snap)),
        p if p.starts_with("/api/http/routers/") => named(routers(&snap), &p["/api/http/routers/".len()..]),
        p if p.starts_with("/api/http/services/") => named(services(state, &snap), &p["/api/http/services/".len()..]),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"message": "not found"})),
    }
}

/// Traefik's `/api/rawdata`: routers, services and middlewares as maps by name.
fn rawdata(state: &AdminState, snap: &Snapshot) -> Value {
    let by_name = |items: Vec<Value>| {
        Value::Object(
            items
                .into_iter()
                .map(|v| (v["name"].as_str().unwrap_or_default().to_string(), v))
                .collect(),
        )
    };
    json!({
        "routers": by_name(routers(snap)),
        "services": by_name(services(state, snap)),
        "middlewares": by_name(middlewares(snap)),
        "tcpRouters": by_name(tcp_routers(snap)),
        "tcpServices": by_name(tcp_services(snap)),
        "serversTransports": by_name(servers_transports(snap)),
        "tlsOptions": by_name(tls_options(snap)),
    })
}

/// `tls.options` as configured (the CA files by count, never their contents), with
/// whether each is usable and which routers name it.
fn tls_options(snap: &Snapshot) -> Vec<Value> {
    snap.tls_options
        .iter()
        .map(|o| {
            let mut v = json!({
                "name": o.name,
                "provider": o.provider,
                "status": status_str(o.status),
                "minVersion": o.config.min_version,
                "maxVersion": o.config.max_version,
                "cipherSuites": o.config.cipher_suites,
                "curvePreferences": o.config.curve_preferences,
                "clientAuth": {
                    "caFiles": o.config.client_auth.ca_files.len(),
                    "clientAuthType": o.config.client_auth.client_auth_type,
                },
                "sniStrict": o.config.sni_strict,
                "alpnProtocols": o.config.alpn_protocols,
                "disableSessionTickets": o.config.disable_session_tickets,
                "usedBy": o.used_by,
            });
            if !o.errors.is_empty() {
                v["error"] = json!(o.errors);
            }
            v
        })
        .collect()
}

/// `http.serversTransports` as configured (never the certificates' contents), with
/// whether each is usable and who names it.
fn servers_transports(snap: &Snapshot) -> Vec<Value> {
    snap.transports
        .iter()
        .map(|t| {
            let mut v = json!({
                "name": t.name,
                "provider": t.provider,
                "status": status_str(t.status),
                "insecureSkipVerify": t.config.insecure_skip_verify,
                "serverName": t.config.server_name,
                "rootCAs": t.config.root_cas.len(),
                "certificates": t.config.certificates.len(),
                "maxIdleConnsPerHost": t.spec.as_ref().map(|s| s.max_idle_per_host),
                "disableHTTP2": t.config.disable_http2,
                "peerCertURI": t.config.peer_cert_uri,
                "forwardingTimeouts": {
                    "dialTimeout": format!("{:?}", t.config.forwarding_timeouts.dial_timeout),
                    "responseHeaderTimeout": format!("{:?}", t.config.forwarding_timeouts.response_header_timeout),
                    "idleConnTimeout": format!("{:?}", t.config.forwarding_timeouts.idle_conn_timeout),
                    "readIdleTimeout": format!("{:?}", t.config.forwarding_timeouts.read_idle_timeout),
                    "pingTimeout": format!("{:?}", t.config.forwarding_timeouts.ping_timeout),
                },
                "usedBy": t.used_by,
            });
            if !t.errors.is_empty() {
                v["error"] = json!(t.errors);
            }
            v
        })
        .collect()
}

fn named(items: Vec<Value>, name: &str) -> Response<Body> {
    let name = berth_common::percent::decode(name);
    match items.into_iter().find(|v| v["name"] == *name) {
        Some(v) => json_response(StatusCode::OK, &v),
        None => json_response(StatusCode::NOT_FOUND, &json!({"message": format!("{name} not found")})),
    }
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Enabled => "enabled",
        Status::Disabled => "disabled",
    }
}

/// Traefik shows a same-provider reference without its `@provider`.
fn short_ref(name: &str, provider: &str) -> String {
    name.strip_suffix(&format!("@{provider}")).unwrap_or(name).to_string()
}

fn routers(snap: &Snapshot) -> Vec<Value> {
    let mut out: Vec<Value> = snap
        .routers
        .iter()
        .map(|r| {
            let mut v = json!({
                "name": r.name,
                "provider": r.provider,
                "status": status_str(r.status),
                "rule": r.rule_text,
                "priority": r.priority,
                "service": short_ref(&r.service, &r.provider),
                "entryPoints": r.entry_points,
                "using": r.entry_points,
            });
            if !r.middlewares.is_empty() {
                v["middlewares"] = json!(
                    r.middlewares
                        .iter()
                        .map(|m| short_ref(m, &r.provider))
                        .collect::<Vec<_>>()
                );
            }
            if r.tls {
                v["tls"] = json!({});
                if r.tls_options != berth_common::server_tls::DEFAULT_OPTIONS {
                    v["tls"]["options"] = json!(short_ref(&r.tls_options, &r.provider));
                }
            }
            if !r.errors.is_empty() {
                v["error"] = json!(r.errors);
            }
            v
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

fn services(state: &AdminState, snap: &Snapshot) -> Vec<Value> {
    let routes = state.proxy.routes();
    let now = Instant::now();
    let mut out: Vec<Value> = snap
        .services
        .iter()
        .map(|s| {
            let runtime = routes.services.iter().find(|r| r.name == s.name);
            let mut server_status = serde_json::Map::new();
            if let Some(rt) = runtime {
                for (ep, st) in rt.endpoints.iter().zip(&rt.states) {
                    let up = if st.is_healthy(now) { "UP" } else { "DOWN" };
                    server_status.insert(ep.url.clone(), json!(up));
                }
            }
            let mut v = json!({
                "name": s.name,
                "provider": s.provider,
                "status": status_str(s.status),
                "type": "loadbalancer",
                "loadBalancer": {
                    "servers": s.servers.iter().map(|x| json!({"url": x.url, "weight": x.weight})).collect::<Vec<_>>(),
                    "passHostHeader": s.pass_host_header,
                    "strategy": s.strategy,
                },
                "serverStatus": server_status,
                "usedBy": s.used_by,
            });
            if let Some(t) = &s.servers_transport {
                v["loadBalancer"]["serversTransport"] = json!(short_ref(t, &s.provider));
            }
            if let Some(w) = &s.weighted {
                // As Traefik shows one: its children by name, no servers of its own.
                let children: Vec<Value> = w
                    .names
                    .iter()
                    .zip(&w.weights)
                    .map(|(n, weight)| json!({ "name": n, "weight": weight }))
                    .collect();
                if let Some(m) = &w.mirroring {
                    v["type"] = json!("mirroring");
                    let mirrors: Vec<Value> = w
                        .names
                        .iter()
                        .skip(1)
                        .zip(&m.percents)
                        .map(|(n, p)| json!({ "name": n, "percent": p }))
                        .collect();
                    v["mirroring"] = json!({
                        "service": w.names.first(),
                        "mirrors": mirrors,
                        "mirrorBody": m.mirror_body,
                        "maxBodySize": m.max_body,
                    });
                } else if w.failover {
                    v["type"] = json!("failover");
                    v["failover"] = json!({ "service": w.names.first(), "fallback": w.names.get(1) });
                } else {
                    v["type"] = json!("weighted");
                    v["weighted"] = json!({ "services": children });
                    if w.health_check {
                        v["weighted"]["healthCheck"] = json!({});
                    }
                    if let Some(cookie) = &s.sticky {
                        v["weighted"]["sticky"] = json!({ "cookie": cookie });
                    }
                }
                if let Some(o) = v.as_object_mut() {
                    o.remove("loadBalancer");
                    o.remove("serverStatus");
                }
            } else if let Some(cookie) = &s.sticky {
                v["loadBalancer"]["sticky"] = json!({ "cookie": cookie });
            }
            if !s.errors.is_empty() {
                v["error"] = json!(s.errors);
            }
            v
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

fn tcp_routers(snap: &Snapshot) -> Vec<Value> {
    let mut out: Vec<Value> = snap
        .tcp_routers
        .iter()
        .map(|r| {
            let mut v = json!({
                "name": r.name,
                "provider": r.provider,
                "status": status_str(r.status),
                "rule": r.rule_text,
                "priority": r.priority,
                "service": short_ref(&r.service, &r.provider),
                "entryPoints": r.entry_points,
            });
            if !r.middlewares.is_empty() {
                v["middlewares"] = json!(
                    r.middlewares
                        .iter()
                        .map(|m| short_ref(m, &r.provider))
                        .collect::<Vec<_>>()
                );
            }
            if let Some(passthrough) = r.tls_passthrough {
                v["tls"] = json!({ "passthrough": passthrough });
            }
            if !r.errors.is_empty() {
                v["error"] = json!(r.errors);
            }
            v
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

fn tcp_services(snap: &Snapshot) -> Vec<Value> {
    snap.tcp_services
        .iter()
        .map(|s| {
            let mut v = json!({
                "name": s.name,
                "provider": s.provider,
                "status": status_str(s.status),
                "loadBalancer": { "servers": s.servers.iter().map(|a| json!({ "address": a })).collect::<Vec<_>>() },
                "usedBy": s.used_by,
            });
            if !s.errors.is_empty() {
                v["error"] = json!(s.errors);
            }
            v
        })
        .collect()
}

fn middlewares(snap: &Snapshot) -> Vec<Value> {
    snap.middlewares
        .iter()
        .map(|m| middleware_json(&m.name, &m.provider, &m.kind, m.status, &m.used_by, &m.errors))
        .collect()
}

fn tcp_middlewares(snap: &Snapshot) -> Vec<Value> {
    snap.tcp_middlewares
        .iter()
        .map(|m| middleware_json(&m.name, &m.provider, &m.kind, m.status, &m.used_by, &m.errors))
        .collect()
}

/// A middleware as Traefik's API shows one, HTTP or TCP.
fn middleware_json(
    name: &str,
    provider: &str,
    kind: &str,
    status: Status,
    used_by: &[String],
    errors: &[String],
) -> Value {
    let mut v = json!({
        "name": name,
        "provider": provider,
        "type": kind.to_ascii_lowercase(),
        "status": status_str(status),
        "usedBy": used_by,
    });
    if !errors.is_empty() {
        v["error"] = json!(errors);
    }
    v
}

fn counts<'a>(items: impl Iterator<Item = (Status, bool)> + 'a) -> Value {
    let (mut total, mut errors, mut warnings) = (0, 0, 0);
    for (status, has_errors) in items {
        total += 1;
        if status == Status::Disabled {
            errors += 1;
        } else if has_errors {
            warnings += 1;
        }
    }
    json!({"total": total, "warnings": warnings, "errors": errors})
}

fn overview(state: &AdminState, snap: &Snapshot) -> Value {
    json!({
        "http": {
            "routers": counts(snap.routers.iter().map(|r| (r.status, !r.errors.is_empty()))),
            "services": counts(snap.services.iter().map(|s| (s.status, !s.errors.is_empty()))),
            "middlewares": counts(snap.middlewares.iter().map(|m| (m.status, !m.errors.is_empty()))),
        },
        "providers": state.providers.iter().map(|p| p.get()).collect::<Vec<_>>(),
        "ecs": state.ecs.as_ref().map(|e| json!({ "clusters": e.clusters() })),
        "snapshotVersion": snap.version,
        "diagnostics": snap.diagnostics.len(),
        "ready": state.lifecycle.is_ready(),
    })
}

/// Every certificate the gateway holds: the mesh CA, its own mesh identity, the
/// entrypoints' TLS certificates, and those ACME resolvers obtained or are obtaining.
fn certificates(state: &AdminState) -> Vec<Value> {
    let mut out = Vec::new();
    let mut add = |usage: &str, der: &rustls_pki_types::CertificateDer<'_>| {
        if let Ok(sum) = berth_common::identity::summarize(der) {
            let mut v = json!(sum);
            v["use"] = json!(usage);
            out.push(v);
        }
    };
    if let Some((anchors, slot)) = &state.mesh_certs {
        for root in anchors.certs() {
            add("mesh CA", &root);
        }
        if let Some(ck) = slot.get()
            && let Some(c) = ck.cert.first()
        {
            add("gateway mesh identity", c);
        }
    }
    if let Some(ck) = state.certs.default.load().as_ref()
        && let Some(c) = ck.cert.first()
    {
        add("TLS default", c);
    }
    for ck in state.certs.sni.load().iter() {
        if let Some(c) = ck.cert.first() {
            add("TLS", c);
        }
    }
    if let Some(acme) = &state.certs.acme {
        for c in acme.certs().iter() {
            if let Some(leaf) = c.key.cert.first()
                && let Ok(sum) = berth_common::identity::summarize(leaf)
            {
                let (at, by_ari) = c.renewal();
                let mut v = json!(sum);
                v["use"] = json!(format!("ACME {}", c.resolver));
                // When it is renewed, and on whose word: the CA's renewal information
                // (RFC 9773) or two thirds of its lifetime.
                v["renewAtUnix"] = json!(at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
                v["renewalBy"] = json!(if by_ari { "ARI" } else { "two thirds" });
                out.push(v);
            }
        }
        // Domain sets still waiting for a certificate, and why.
        for p in acme.pending() {
            let mut v = json!(p);
            v["use"] = json!(format!("ACME {} (pending)", p.resolver));
            out.push(v);
        }
    }
    out
}

fn dashboard(state: &AdminState, snap: &Snapshot) -> String {
    let routers = routers(snap);
    let services = services(state, snap);
    let providers: Vec<Value> = state.providers.iter().map(|p| json!(p.get())).collect();
    let clusters: Option<Vec<Value>> = state
        .ecs
        .as_ref()
        .map(|e| e.clusters().iter().map(|c| json!(c)).collect());
    let sidecars: Option<Vec<Value>> = state
        .sidecars
        .as_ref()
        .map(|r| r.list().iter().map(|x| json!(x)).collect());
    let diagnostics: Vec<Value> = snap.diagnostics.iter().map(|d| json!(d)).collect();
    let certificates = certificates(state);
    let metrics = state.metrics.clone();
    super::dashboard::render(&super::dashboard::View {
        version: env!("CARGO_PKG_VERSION"),
        ready: state.lifecycle.is_ready(),
        snapshot_version: snap.version,
        routers: &routers,
        services: &services,
        providers: &providers,
        clusters: clusters.as_deref(),
        sidecars: sidecars.as_deref(),
        certificates: &certificates,
        diagnostics: &diagnostics,
        router_requests: &move |name| metrics.router(name).total(),
    })
}
