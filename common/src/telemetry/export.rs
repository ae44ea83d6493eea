//! The OTLP exporter: one thread of its own (with a single-threaded Tokio runtime) that
//! batches finished spans and posts them over OTLP/HTTP protobuf or OTLP/gRPC, one request
//! at a time, each bounded by the configured timeout. Its own thread keeps encoding a
//! batch off the proxy's worker threads, so it never holds up a request's task. A failed export drops its batch (counted) and never retries
//! into a growing backlog: spans queue in front of it only up to `OTEL_BSP_MAX_QUEUE_SIZE`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};

use super::otlp::{SpanData, Value, encode_request, encode_request_into};
use super::settings::{Protocol, TraceSettings};
use super::{ExportStats, QueueSignal};

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot reach the collector: {0}")]
    Connect(String),
    #[error("the collector did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the collector answered HTTP {0}")]
    Status(StatusCode),
    #[error("the collector answered grpc-status {0}: {1}")]
    Grpc(String, String),
}

struct Exporter {
    client: Client<HttpConnector, Full<Bytes>>,
    protocol: Protocol,
    url: Uri,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    timeout: Duration,
    resource: Vec<(String, Value)>,
}

pub(super) fn spawn(
    settings: &TraceSettings,
    resource: Vec<(String, Value)>,
    mut rx: mpsc::Receiver<SpanData>,
    mut flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    stats: Arc<ExportStats>,
    queue: Arc<QueueSignal>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.timeout.min(Duration::from_secs(2))));
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(30));
    if settings.protocol == Protocol::Grpc {
        builder.http2_only(true);
    }
    let url = match settings.protocol {
        Protocol::HttpProtobuf => settings.endpoint.clone(),
        Protocol::Grpc => {
            let mut parts = settings.endpoint.clone().into_parts();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static(GRPC_PATH));
            Uri::from_parts(parts).unwrap_or_else(|_| settings.endpoint.clone())
        }
    };
    let exporter = Exporter {
        client: builder.build(connector),
        protocol: settings.protocol,
        url,
        headers: settings.headers.clone(),
        timeout: settings.timeout,
        resource,
    };
    let max_batch = settings.max_batch;
    let delay = settings.schedule_delay;
    let work = async move {
        let mut batch: Vec<SpanData> = Vec::with_capacity(max_batch);
        let mut waiting_flush: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            // Sleep until a full batch is queued (producers signal the crossing once, not
            // per span: waking this thread per span cost more than the spans), the
            // schedule delay passes, or someone asks for a flush.
            if queue.queued.load(Ordering::Relaxed) < max_batch {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = queue.ready.notified() => {}
                    Some(done) = flush_rx.recv() => waiting_flush.push(done),
                }
            }
            let mut closed = false;
            loop {
                batch.clear();
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(s) => batch.push(s),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                queue.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                if batch.is_empty() {
                    break;
                }
                let n = batch.len() as u64;
                match exporter.export(&batch).await {
                    Ok(()) => {
                        stats.exported.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let first = stats.export_errors.fetch_add(1, Ordering::Relaxed) == 0;
                        stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                        let text = e.to_string();
                        let mut last = stats.last_error.lock().unwrap_or_else(|p| p.into_inner());
                        // Log the first failure and each change of cause, not every batch.
                        if first || last.as_deref() != Some(text.as_str()) {
                            tracing::warn!(url = %exporter.url, error = %text, "trace export failed; spans dropped");
                        }
                        *last = Some(text);
                    }
                }
                // Keep going while full batches wait, or everything when flushing.
                if waiting_flush.is_empty() && queue.queued.load(Ordering::Relaxed) < max_batch {
                    break;
                }
            }
            for done in waiting_flush.drain(..) {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    };
    let started = std::thread::Builder::new().name("otlp-export".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(work),
            Err(e) => tracing::error!(error = %e, "trace exporter runtime failed; spans will be dropped"),
        }
    });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the trace exporter thread; spans will be dropped");
    }
}

impl Exporter {
    async fn export(&self, spans: &[SpanData]) -> Result<(), ExportError> {
        let scope = ("berth", env!("CARGO_PKG_VERSION"));
        let (content_type, body) = match self.protocol {
            Protocol::HttpProtobuf => (
                "application/x-protobuf",
                Bytes::from(encode_request(&self.resource, scope, spans)),
            ),
            Protocol::Grpc => {
                // The gRPC message frame: uncompressed flag, big-endian length, message
                // (encoded in place behind the frame, its length filled in after).
                let mut framed = vec![0u8; 5];
                encode_request_into(&mut framed, &self.resource, scope, spans);
                let len = u32::try_from(framed.len() - 5).unwrap_or(u32::MAX);
                framed[1..5].copy_from_slice(&len.to_be_bytes());
                ("application/grpc", Bytes::from(framed))
            }
        };
        let mut req = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| ExportError::Connect(e.to_string()))?;
        if self.protocol == Protocol::Grpc {
            *req.version_mut() = http::Version::HTTP_2;
            req.headers_mut().insert("te", HeaderValue::from_static("trailers"));
        }
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ExportError::Connect(crate::error::chain_text(&e)))?;
            let status = resp.status();
            let head_grpc = grpc_status(resp.headers());
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ExportError::Connect(e.to_string()))?;
            if !status.is_success() {
                return Err(ExportError::Status(status));
            }
            if self.protocol == Protocol::Grpc {
                let trailers = collected.trailers().and_then(grpc_status);
                match trailers.or(head_grpc) {
                    Some((code, _)) if code == "0" => {}
                    Some((code, message)) => return Err(ExportError::Grpc(code, message)),
                    None => return Err(ExportError::Grpc("missing".into(), "no grpc-status".into())),
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ExportError::Timeout(self.timeout))?
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<(String, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.to_string();
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| crate::percent::decode(m).into_owned())
        .unwrap_or_default();
    Some((code, message))
}
