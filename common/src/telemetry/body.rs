//! A response body that finishes what was observed about its request when the last
//! byte has gone (or the client went away): the server span ends and the access-log
//! line is written, with the body size and the full duration.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, SizeHint};

use super::Span;
use crate::accesslog::{AccessLog, Entry};

/// What to finish when the body is done.
#[derive(Debug)]
pub struct Finish {
    pub span: Span,
    pub log: Option<(AccessLog, Box<Entry>)>,
    pub start: Instant,
    /// A gRPC response: its status is read from the trailers (or the head).
    pub grpc: Option<GrpcTap>,
}

/// Where a gRPC call's final status goes once known: the span, and a counter.
pub struct GrpcTap {
    /// `grpc-status` from the response head (a trailers-only answer), if any.
    pub head_status: Option<u32>,
    pub record: Box<dyn FnOnce(Option<u32>) + Send + Sync>,
}

impl std::fmt::Debug for GrpcTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTap")
            .field("head_status", &self.head_status)
            .finish()
    }
}

impl Finish {
    /// A span, no log line, no gRPC tap.
    pub fn span(span: Span, start: Instant) -> Finish {
        Finish {
            span,
            log: None,
            start,
            grpc: None,
        }
    }

    /// Anything to do at all (a recording span, an access log, a gRPC status)?
    pub fn is_needed(&self) -> bool {
        self.span.is_recording() || self.log.is_some() || self.grpc.is_some()
    }
}

impl super::Observe {
    /// Wrap a response so that, once its body is done, `span` ends, `entry` is logged
    /// (with the final status and the trace ids) and `grpc` records the call's status.
    /// Without anything to observe, the response is returned as it is.
    pub fn finish<E>(
        &self,
        resp: http::Response<BoxBody<Bytes, E>>,
        span: Span,
        entry: Option<Box<Entry>>,
        start: Instant,
        grpc: Option<GrpcTap>,
    ) -> http::Response<BoxBody<Bytes, E>>
    where
        E: std::fmt::Display + 'static,
    {
        let log = match (&self.access_log, entry) {
            (Some(log), Some(mut e)) => {
                e.status = resp.status().as_u16();
                if let Some((t, s)) = span.ids() {
                    e.trace_id = Some(t);
                    e.span_id = Some(s);
                }
                Some((log.clone(), e))
            }
            _ => None,
        };
        let finish = Finish { span, log, start, grpc };
        if finish.is_needed() {
            resp.map(|b| BoxBody::new(Observed::new(b, finish)))
        } else {
            resp
        }
    }
}

/// `inner`, observed.
pub struct Observed<B> {
    inner: B,
    bytes: u64,
    finish: Option<Finish>,
    trailer_status: Option<u32>,
}

impl<B> Observed<B> {
    pub fn new(inner: B, finish: Finish) -> Observed<B> {
        Observed {
            inner,
            bytes: 0,
            finish: Some(finish),
            trailer_status: None,
        }
    }

    fn done(&mut self, error: Option<String>) {
        if let Some(mut f) = self.finish.take() {
            if let Some(e) = error {
                f.span.set(super::attr::ERROR_TYPE, "response_body");
                f.span.error(|| e);
            }
            if let Some(tap) = f.grpc {
                let code = self.trailer_status.or(tap.head_status);
                f.span.set(super::attr::RPC_SYSTEM, "grpc");
                if let Some(c) = code {
                    f.span.set(super::attr::RPC_GRPC_STATUS, i64::from(c));
                    // Server errors, as the gRPC conventions count them.
                    if matches!(c, 2 | 4 | 12 | 13 | 14 | 15) {
                        f.span.error(|| format!("grpc-status {c}"));
                    }
                }
                (tap.record)(code);
            }
            if let Some((log, mut entry)) = f.log {
                entry.duration = f.start.elapsed();
                entry.size = self.bytes;
                log.log(&entry);
            }
        }
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.done(None);
    }
}

impl<B> Body for Observed<B>
where
    B: Body + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += hyper::body::Buf::remaining(d) as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    self.trailer_status = crate::grpc::status(t);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let text = e.to_string();
                self.done(Some(text));
            }
            Poll::Ready(None) => self.done(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
