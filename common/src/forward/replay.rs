//! Keeping a request body to send it again: read it whole when it is small, else hand
//! back what was read followed by the rest, unread, so the request still goes once.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};

use crate::body::{Body, BoxError};

pub enum Buffered {
    /// The whole body (trailers dropped: gRPC requests carry none).
    Whole(Bytes),
    /// Too large to keep: the part read, then the rest.
    Partial(Body),
    Failed(BoxError),
}

/// Read `body` up to `limit` bytes.
pub async fn buffer(mut body: Body, limit: usize) -> Buffered {
    let mut kept = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Buffered::Whole(kept.freeze()),
            Some(Err(e)) => return Buffered::Failed(e),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    kept.extend_from_slice(data);
                }
                if kept.len() > limit {
                    let head = Some(kept.freeze());
                    return Buffered::Partial(Chain { head, rest: body }.boxed());
                }
                if body.is_end_stream() {
                    return Buffered::Whole(kept.freeze());
                }
            }
        }
    }
}

/// The bytes already read, then the rest of the body.
struct Chain {
    head: Option<Bytes>,
    rest: Body,
}

impl hyper::body::Body for Chain {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(head))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}
