//! Distributed tracing for every hop: a span per request served and per upstream
//! attempt, the trace context read from and written to headers, and OTLP export.
//!
//! Why not the OpenTelemetry SDK: the data path must never wait on telemetry, the
//! sidecar's memory is a product goal, and a proxy needs only spans with attributes.
//! So a [`Span`] is a plain struct that, when dropped, is offered to a bounded queue
//! with `try_send`: a full queue (collector down or slow) drops the span and counts
//! it, and never blocks. One background task batches and exports ([`export`]).
//!
//! Configuration is the OpenTelemetry environment ([`settings`]): tracing is on when
//! an OTLP endpoint is set (or `OTEL_TRACES_EXPORTER=otlp`). When it is off, no
//! header is touched and a span costs nothing.

pub mod body;
pub mod export;
pub mod otlp;
pub mod propagation;
pub mod resource;
pub mod settings;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

pub use otlp::{SpanData, SpanKind, Status, Value};
pub use propagation::{Propagators, SpanContext, SpanId, TraceId};
pub use settings::{Sampler, TraceSettings};

/// What a proxy records about requests beyond metrics: spans and the access log.
#[derive(Clone, Debug, Default)]
pub struct Observe {
    pub tracer: Tracer,
    pub access_log: Option<crate::accesslog::AccessLog>,
}

/// Hands out spans; cheap to clone. [`Tracer::disabled`] makes inert spans.
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Inner>>);

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Tracer(on)" } else { "Tracer(off)" })
    }
}

struct Inner {
    sampler: Sampler,
    propagators: Propagators,
    queue: tokio::sync::mpsc::Sender<SpanData>,
    signal: Arc<QueueSignal>,
    stats: Arc<ExportStats>,
    flush: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

/// How many spans wait in the queue, and the exporter's wake-up when a batch is full.
#[derive(Debug)]
pub(crate) struct QueueSignal {
    pub(crate) queued: std::sync::atomic::AtomicUsize,
    pub(crate) ready: tokio::sync::Notify,
    pub(crate) batch: usize,
}

/// What became of finished spans; rendered into `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    /// Dropped because the queue was full (the collector is down or slow).
    pub dropped_queue_full: AtomicU64,
    /// Dropped because their export failed.
    pub dropped_export_failed: AtomicU64,
    pub export_errors: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl ExportStats {
    /// Prometheus text for these counts, named `{prefix}_trace_spans_total` etc.
    pub fn render(&self, out: &mut String, prefix: &str) {
        use crate::prom::{family, sample};
        let name = format!("{prefix}_trace_spans_total");
        family(out, &name, "counter", "Finished spans by what became of them.");
        for (outcome, v) in [
            ("exported", &self.exported),
            ("dropped_queue_full", &self.dropped_queue_full),
            ("dropped_export_failed", &self.dropped_export_failed),
        ] {
            sample(out, &name, &[("outcome", outcome)], v.load(Ordering::Relaxed));
        }
        let name = format!("{prefix}_trace_export_errors_total");
        family(out, &name, "counter", "OTLP export requests that failed.");
        sample(out, &name, &[], self.export_errors.load(Ordering::Relaxed));
    }
}

impl Tracer {
    pub fn disabled() -> Tracer {
        Tracer(None)
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    pub fn stats(&self) -> Option<Arc<ExportStats>> {
        self.0.as_ref().map(|i| i.stats.clone())
    }

    /// A server span for a request that arrived with `headers`: a child of the caller's
    /// context when there is one, else a new trace (subject to the sampler).
    pub fn server(&self, name: impl FnOnce() -> String, headers: &HeaderMap) -> Span {
        let Some(inner) = &self.0 else {
            return Span::inert();
        };
        let parent = inner.propagators.extract(headers);
        let sampled = inner.sampler.should_sample(parent.as_ref());
        let (trace_id, parent_id, trace_state) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.trace_state),
            None => (TraceId::random(), None, None),
        };
        Span::new(inner, trace_id, parent_id, trace_state, sampled, name, SpanKind::Server)
    }

    /// A child of `parent` in this process (an upstream attempt, for one).
    pub fn child(&self, parent: &Span, name: impl FnOnce() -> String, kind: SpanKind) -> Span {
        let (Some(inner), Some(p)) = (&self.0, &parent.ctx) else {
            return Span::inert();
        };
        Span::new(
            inner,
            p.trace_id,
            Some(p.span_id),
            p.trace_state.clone(),
            p.sampled,
            name,
            kind,
        )
    }

    /// Write `span`'s context into outgoing `headers` (replacing the caller's).
    pub fn inject(&self, span: &Span, headers: &mut HeaderMap) {
        if let (Some(inner), Some(ctx)) = (&self.0, &span.ctx) {
            inner.propagators.inject(ctx, headers);
        }
    }

    /// Export what is queued, waiting at most `timeout` (at shutdown).
    pub async fn flush(&self, timeout: std::time::Duration) {
        let Some(inner) = &self.0 else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if inner.flush.try_send(tx).is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }
}

/// One operation in a trace. Attributes are recorded only when sampled; the span is
/// finished (and queued for export) when dropped.
pub struct Span {
    ctx: Option<SpanContext>,
    rec: Option<Box<Recording>>,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span").field("ctx", &self.ctx).finish()
    }
}

struct Recording {
    data: SpanData,
    started: Instant,
    inner: Arc<Inner>,
}

impl Span {
    /// A span that records nothing and carries no context (tracing off).
    pub fn inert() -> Span {
        Span { ctx: None, rec: None }
    }

    fn new(
        inner: &Arc<Inner>,
        trace_id: TraceId,
        parent: Option<SpanId>,
        trace_state: Option<http::HeaderValue>,
        sampled: bool,
        name: impl FnOnce() -> String,
        kind: SpanKind,
    ) -> Span {
        let span_id = SpanId::random();
        let rec = sampled.then(|| {
            Box::new(Recording {
                data: SpanData {
                    trace_id,
                    span_id,
                    parent,
                    trace_state: trace_state.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string),
                    name: name(),
                    kind,
                    start_unix_nanos: unix_nanos(SystemTime::now()),
                    end_unix_nanos: 0,
                    // A server span carries about 15 attributes, a client span about 6.
                    attributes: Vec::with_capacity(16),
                    status: Status::Unset,
                },
                started: Instant::now(),
                inner: inner.clone(),
            })
        });
        Span {
            ctx: Some(SpanContext {
                trace_id,
                span_id,
                sampled,
                trace_state,
            }),
            rec,
        }
    }

    pub fn context(&self) -> Option<&SpanContext> {
        self.ctx.as_ref()
    }

    pub fn is_recording(&self) -> bool {
        self.rec.is_some()
    }

    /// Set an attribute (replacing an earlier value of the same key).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(rec) = &mut self.rec {
            let value = value.into();
            match rec.data.attributes.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => rec.data.attributes.push((key, value)),
            }
        }
    }

    /// Set a string attribute (copied only when the span records).
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        if self.rec.is_some() {
            self.set(key, Value::Str(value.to_string()));
        }
    }

    /// Set an attribute computed only when the span records.
    pub fn set_with<V: Into<Value>>(&mut self, key: &'static str, value: impl FnOnce() -> V) {
        if self.rec.is_some() {
            self.set(key, value());
        }
    }

    pub fn set_name(&mut self, name: impl FnOnce() -> String) {
        if let Some(rec) = &mut self.rec {
            rec.data.name = name();
        }
    }

    /// Mark the span failed, with a description (`error.type` is set by the caller).
    pub fn error(&mut self, message: impl FnOnce() -> String) {
        if let Some(rec) = &mut self.rec {
            rec.data.status = Status::Error(message());
        }
    }

    /// Trace and span ids as hex, for logs.
    pub fn ids(&self) -> Option<(String, String)> {
        self.ctx.as_ref().map(|c| (c.trace_id.hex(), c.span_id.hex()))
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            let Recording {
                mut data,
                started,
                inner,
            } = *rec;
            let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            data.end_unix_nanos = data.start_unix_nanos.saturating_add(elapsed);
            // The exporter may take this span out of the queue, and subtract it from
            // `queued`, before the add below: the count dips under zero for a moment, so
            // it wraps instead of overflowing.
            if inner.queue.try_send(data).is_err() {
                inner.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            } else if inner.signal.queued.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == inner.signal.batch {
                inner.signal.ready.notify_one();
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Start tracing from `settings` with `resource`: spawns the exporter on the current
/// Tokio runtime.
pub fn start(settings: &TraceSettings, resource: Vec<(String, Value)>) -> Tracer {
    let (queue, rx) = tokio::sync::mpsc::channel(settings.max_queue);
    let (flush, flush_rx) = tokio::sync::mpsc::channel(4);
    let stats = Arc::new(ExportStats::default());
    let signal = Arc::new(QueueSignal {
        queued: Default::default(),
        ready: tokio::sync::Notify::new(),
        batch: settings.max_batch,
    });
    export::spawn(settings, resource, rx, flush_rx, stats.clone(), signal.clone());
    Tracer(Some(Arc::new(Inner {
        sampler: settings.sampler,
        propagators: settings.propagators,
        signal,
        queue,
        stats,
        flush,
    })))
}

/// Semantic-convention attribute names used by Berth's spans.
pub mod attr {
    pub const HTTP_METHOD: &str = "http.request.method";
    pub const HTTP_METHOD_ORIGINAL: &str = "http.request.method_original";
    pub const HTTP_STATUS: &str = "http.response.status_code";
    pub const HTTP_RESEND: &str = "http.request.resend_count";
    pub const HTTP_ROUTE: &str = "http.route";
    pub const URL_PATH: &str = "url.path";
    pub const URL_QUERY: &str = "url.query";
    pub const URL_SCHEME: &str = "url.scheme";
    pub const URL_FULL: &str = "url.full";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
    pub const USER_AGENT: &str = "user_agent.original";
    pub const ERROR_TYPE: &str = "error.type";
    pub const PEER_SERVICE: &str = "peer.service";
    pub const RPC_SYSTEM: &str = "rpc.system";
    pub const RPC_GRPC_STATUS: &str = "rpc.grpc.status_code";
    pub const BERTH_ROUTER: &str = "berth.router";
    pub const BERTH_SERVICE: &str = "berth.service";
    pub const BERTH_ENTRYPOINT: &str = "berth.entrypoint";
    pub const BERTH_PEER_IDENTITY: &str = "berth.peer.identity";
    /// The mesh service a split sent the call to (when not the one called).
    pub const BERTH_MESH_TARGET: &str = "berth.mesh.target";
    pub const BERTH_DIRECTION: &str = "berth.direction";
}

/// Set `http.request.method` as the OpenTelemetry conventions say: a registered method,
/// or `_OTHER` with the method as sent in `http.request.method_original`.
fn set_method(span: &mut Span, m: &http::Method) {
    let label = crate::http::method_label(m);
    span.set(attr::HTTP_METHOD, label);
    if label == "_OTHER" {
        span.set_str(attr::HTTP_METHOD_ORIGINAL, m.as_str());
    }
}

/// A span name's method part: `HTTP` for a method that is not registered (the conventions
/// keep span names low in cardinality).
pub fn method_name(m: &http::Method) -> &'static str {
    match crate::http::method_label(m) {
        "_OTHER" => "HTTP",
        known => known,
    }
}

/// `network.protocol.version` for an HTTP version.
pub fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_11 => "1.1",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "",
    }
}

/// Set the request attributes every server span carries.
pub fn server_request_attrs<B>(span: &mut Span, req: &http::Request<B>, peer: std::net::SocketAddr, tls: bool) {
    if !span.is_recording() {
        return;
    }
    set_method(span, req.method());
    span.set_str(attr::URL_PATH, req.uri().path());
    if let Some(q) = req.uri().query() {
        span.set_str(attr::URL_QUERY, q);
    }
    span.set(attr::URL_SCHEME, if tls { "https" } else { "http" });
    span.set(attr::NETWORK_PROTOCOL_VERSION, protocol_version(req.version()));
    let ip = crate::http::IpText::new(peer.ip()).as_str().to_string();
    span.set(attr::CLIENT_ADDRESS, ip.clone());
    span.set(attr::NETWORK_PEER_ADDRESS, ip);
    span.set(attr::NETWORK_PEER_PORT, peer.port());
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    if let Some(h) = host {
        let (name, port) = split_host_port(h);
        span.set_str(attr::SERVER_ADDRESS, name);
        if let Some(p) = port {
            span.set(attr::SERVER_PORT, p);
        }
    }
    if let Some(ua) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        span.set_str(attr::USER_AGENT, ua);
    }
}

/// Set the request attributes of a client span for an attempt to `uri`.
pub fn client_request_attrs(span: &mut Span, method: &http::Method, uri: &http::Uri, resend: usize) {
    if !span.is_recording() {
        return;
    }
    set_method(span, method);
    span.set(attr::URL_FULL, full_url(uri));
    if let Some(h) = uri.host() {
        span.set_str(attr::SERVER_ADDRESS, h);
    }
    if let Some(p) = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }) {
        span.set(attr::SERVER_PORT, p);
    }
    if resend > 0 {
        span.set(attr::HTTP_RESEND, resend as i64);
    }
}

/// `uri` as its `Display` writes it, without the formatter (once per traced attempt).
fn full_url(uri: &http::Uri) -> String {
    let (scheme, authority, path, query) = (
        uri.scheme_str().unwrap_or_default(),
        uri.authority().map(|a| a.as_str()).unwrap_or_default(),
        uri.path(),
        uri.query(),
    );
    let mut s = String::with_capacity(scheme.len() + 3 + authority.len() + path.len() + 1 + query.map_or(0, str::len));
    if !scheme.is_empty() {
        s.push_str(scheme);
        s.push_str("://");
    }
    s.push_str(authority);
    s.push_str(path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

/// Record a response status. Per the HTTP conventions a 5xx marks any span failed, a
/// 4xx only a client span (for a server span, 4xx is its caller's mistake).
pub fn response_status(span: &mut Span, status: u16) {
    let Some(kind) = span.rec.as_ref().map(|r| r.data.kind) else {
        return;
    };
    span.set(attr::HTTP_STATUS, status);
    if status >= 500 || (status >= 400 && kind == SpanKind::Client) {
        span.set(attr::ERROR_TYPE, status.to_string());
        span.error(String::new);
    }
}

fn split_host_port(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        if let Some((addr, port)) = rest.split_once(']') {
            return (addr, port.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (h, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(sampler: Sampler) -> (Tracer, tokio::sync::mpsc::Receiver<SpanData>) {
        let (queue, rx) = tokio::sync::mpsc::channel(2);
        let (flush, _flush_rx) = tokio::sync::mpsc::channel(1);
        let t = Tracer(Some(Arc::new(Inner {
            sampler,
            propagators: Propagators::default(),
            signal: Arc::new(QueueSignal {
                queued: Default::default(),
                ready: tokio::sync::Notify::new(),
                batch: 512,
            }),
            queue,
            stats: Arc::new(ExportStats::default()),
            flush,
        })));
        (t, rx)
    }

    #[test]
    fn spans_parent_each_other_and_queue_on_drop() {
        let (t, mut rx) = tracer(Sampler::default());
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let server = t.server(|| "GET".into(), &h);
        let mut client = t.child(&server, || "GET".into(), SpanKind::Client);
        client.set(attr::HTTP_STATUS, 200u16);
        let mut out = HeaderMap::new();
        t.inject(&client, &mut out);
        let client_id = client.context().map(|c| c.span_id);
        drop(client);
        drop(server);
        let c = rx.try_recv().expect("client span");
        let s = rx.try_recv().expect("server span");
        assert_eq!(s.parent.map(|p| p.hex()).as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(c.parent, Some(s.span_id));
        assert_eq!(Some(c.span_id), client_id);
        assert_eq!(c.trace_id, s.trace_id);
        assert!(c.end_unix_nanos >= c.start_unix_nanos);
        assert_eq!(
            out["traceparent"].to_str().expect("ascii"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", c.span_id.hex())
        );
    }

    #[test]
    fn an_unsampled_parent_propagates_without_recording() {
        let (t, mut rx) = tracer(Sampler::default());
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let server = t.server(|| "GET".into(), &h);
        assert!(!server.is_recording());
        let client = t.child(&server, || "GET".into(), SpanKind::Client);
        let mut out = HeaderMap::new();
        t.inject(&client, &mut out);
        assert!(out["traceparent"].to_str().expect("ascii").ends_with("-00"));
        drop((client, server));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (t, _rx) = tracer(Sampler {
            parent_based: false,
            root: settings::Root::On,
        });
        for _ in 0..5 {
            drop(t.server(|| "GET".into(), &HeaderMap::new()));
        }
        let stats = t.stats().expect("on");
        assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_disabled_tracer_touches_nothing() {
        let t = Tracer::disabled();
        let s = t.server(|| unreachable!("names are not built when off"), &HeaderMap::new());
        let mut h = HeaderMap::new();
        t.inject(&s, &mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn four_hundreds_fail_client_spans_only() {
        let (t, mut rx) = tracer(Sampler::default());
        let mut server = t.server(|| "GET".into(), &HeaderMap::new());
        let mut client = t.child(&server, || "GET".into(), SpanKind::Client);
        response_status(&mut client, 404);
        response_status(&mut server, 404);
        drop(client);
        drop(server);
        assert!(matches!(rx.try_recv().expect("client").status, Status::Error(_)));
        assert_eq!(rx.try_recv().expect("server").status, Status::Unset);
    }

    #[test]
    fn full_urls_are_what_display_writes() {
        for u in [
            "http://10.0.0.1:8080/a/b?c=d&e",
            "https://svc.internal/",
            "http://[::1]:9/x",
            "/relative?q",
            "http://h",
            "*",
        ] {
            let uri: http::Uri = u.parse().expect("uri");
            assert_eq!(full_url(&uri), uri.to_string(), "{u}");
        }
    }

    #[test]
    fn host_ports_split() {
        assert_eq!(split_host_port("a.b:8080"), ("a.b", Some(8080)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[::1]:9"), ("::1", Some(9)));
    }
}
