//! The `compress` middleware's streaming half: the response body through zstd, brotli or
//! gzip as chosen by `berth_common::middleware::compress`, without buffering it.

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

pub fn apply(encoding: Encoding, resp: Response<Body>) -> Response<Body> {
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
        Encoding::Gzip => Box::new(GzipEncoder::new(reader)),
        Encoding::Brotli => Box::new(BrotliEncoder::new(reader)),
        Encoding::Zstd => Box::new(ZstdEncoder::new(reader)),
    };
    let frames = ReaderStream::new(encoded)
        .map_ok(Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    Response::from_parts(parts, StreamBody::new(frames).boxed())
}
