//! A response body that finishes what was observed about its request when the last
//! byte has gone (or the client went away): the server span ends and the access-log
//! line is written, with the body size and the full duration.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};

use super::Span;
use crate::accesslog::{AccessLog, Entry};

/// What to finish when the body is done.
#[derive(Debug)]
pub struct Finish {
    pub span: Span,
    pub log: Option<(AccessLog, Box<Entry>)>,
    pub start: Instant,
}

impl Finish {
    /// Anything to do at all (a recording span or an access log)?
    pub fn is_needed(&self) -> bool {
        self.span.is_recording() || self.log.is_some()
    }
}

/// `inner`, observed.
pub struct Observed<B> {
    inner: B,
    bytes: u64,
    finish: Option<Finish>,
}

impl<B> Observed<B> {
    pub fn new(inner: B, finish: Finish) -> Observed<B> {
        Observed {
            inner,
            bytes: 0,
            finish: Some(finish),
        }
    }

    fn done(&mut self, error: Option<String>) {
        if let Some(mut f) = self.finish.take() {
            if let Some(e) = error {
                f.span.set(super::attr::ERROR_TYPE, "response_body");
                f.span.error(|| e);
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
