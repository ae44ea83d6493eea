//! The `grpcWeb` middleware's body half: a gRPC answer's frames passed on (in base64 for
//! `grpc-web-text`) and its trailers sent as the body's last frame, which HTTP/1.1 pages
//! can read. What the frames and headers say is `berth_common::middleware::grpc_web`'s.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use berth_common::middleware::grpc_web::{Mode, TextEncoder, trailer_frame};
use bytes::Bytes;
use hyper::body::Frame;

use super::{Body, BoxError};

/// A gRPC response body as gRPC-Web.
pub(crate) struct WebBody {
    inner: Body,
    text: Option<TextEncoder>,
    /// The inner body has ended; what is left to send, then nothing.
    tail: Option<Bytes>,
    done: bool,
}

impl WebBody {
    pub(crate) fn new(inner: Body, mode: Mode) -> WebBody {
        WebBody {
            inner,
            text: (mode == Mode::Text).then(TextEncoder::default),
            tail: None,
            done: false,
        }
    }

    fn encode(&mut self, data: &[u8]) -> Bytes {
        match &mut self.text {
            Some(enc) => Bytes::from(enc.chunk(data)),
            None => Bytes::copy_from_slice(data),
        }
    }
}

impl hyper::body::Body for WebBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(tail) = this.tail.take() {
                this.done = true;
                if !tail.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.encode(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        // Trailers: the last frame, then the end.
                        let mut tail = match frame.into_trailers() {
                            Ok(t) => {
                                let f = trailer_frame(&t);
                                this.encode(&f).to_vec()
                            }
                            Err(_) => Vec::new(),
                        };
                        if let Some(enc) = &mut this.text {
                            tail.extend_from_slice(enc.finish().as_bytes());
                        }
                        this.tail = Some(Bytes::from(tail));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let rest = this.text.as_mut().map(|e| e.finish()).unwrap_or_default();
                    this.tail = Some(Bytes::from(rest));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
