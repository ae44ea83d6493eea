//! The `compress` middleware's streaming half: the response body through zstd, brotli or
//! gzip as chosen by `berth_common::middleware::compress`, without buffering it.
//!
//! Levels are Traefik's (brotli 6, gzip 6, zstd 3): the encoders' own defaults include
//! brotli at quality 11, which costs tens of times the CPU for a few percent of size and
//! lets a client who asks for `br` burn the gateway's cores.

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use berth_common::middleware::compress::Encoding;
use futures_util::TryStreamExt;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use super::{Body, BoxError};

pub(crate) fn apply(encoding: Encoding, resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    let data = body.into_data_stream().map_err(std::io::Error::other);
    let reader = StreamReader::new(data);
    let encoded: Box<dyn AsyncRead + Send + Sync + Unpin> = match encoding {
        Encoding::Gzip => Box::new(GzipEncoder::with_quality(reader, Level::Precise(6))),
        Encoding::Brotli => Box::new(BrotliEncoder::with_quality(reader, Level::Precise(6))),
        Encoding::Zstd => Box::new(ZstdEncoder::with_quality(reader, Level::Precise(3))),
    };
    let frames = ReaderStream::new(encoded)
        .map_ok(Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    Response::from_parts(parts, StreamBody::new(frames).boxed())
}
