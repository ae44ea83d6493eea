//! The one body type every proxy path passes along (requests to upstreams, responses to
//! clients, synthetic answers), and the error that says a client's body failed.
//!
//! The gateway's proxy, the sidecar's listeners and [`crate::forward`] all speak
//! [`Body`]; keeping it here means none of them converts another's.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body of bytes.
pub type Body = BoxBody<Bytes, BoxError>;

/// The client's request body failed (a bad chunk, a reset, too large, too slow): not the
/// upstream's fault, so no endpoint is ejected for it and nothing is retried.
#[derive(Debug, thiserror::Error)]
#[error("client body: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Any body of bytes, boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Any request body, its errors marked as the client's ([`ClientBodyError`]).
pub fn from_client<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| -> BoxError { Box::new(ClientBodyError(e.into())) })
        .boxed()
}
