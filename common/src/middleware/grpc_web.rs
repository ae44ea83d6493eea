//! `grpcWeb`: gRPC-Web calls from browsers made gRPC calls to the servers, as Traefik's
//! middleware does (its fork of improbable-eng's grpc-web wrapper, any path accepted):
//!
//! - a `POST` whose `Content-Type` is `application/grpc-web[+codec]` goes on as
//!   `application/grpc[+codec]`; `application/grpc-web-text` bodies are base64, decoded
//!   here (the gateway reads them whole: gRPC-Web has no client streaming);
//! - the gRPC answer goes back as `application/grpc-web[-text][+codec]`, its trailers as
//!   the body's last frame (flag `0x80`, then `name: value\r\n` lines), every header
//!   name exposed to the page (`Access-Control-Expose-Headers`);
//! - a CORS preflight naming `x-grpc-web` is answered here (204), and an allowed
//!   `Origin` (`allowOrigins`, `*` for any) gets the CORS headers, with credentials.
//!
//! Anything else passes through untouched. This module is the pure part: the gateway
//! applies [`Call`] to the request body and the response body.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::options::Options;
use super::{Reply, Req, Step};

/// How long a browser may keep a preflight's answer (rs/cors as the wrapper sets it).
const PREFLIGHT_MAX_AGE: &str = "600";

/// The request headers a gRPC-Web page sends that a preflight may name.
const ALLOWED_HEADERS: &str = "x-grpc-web, content-type, x-user-agent, grpc-timeout";

#[derive(Debug, Clone)]
pub struct GrpcWeb {
    allow_origins: Vec<String>,
}

/// The encoding of one gRPC-Web call's bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/grpc-web`: the gRPC frames as they are.
    Binary,
    /// `application/grpc-web-text`: the frames in base64.
    Text,
}

/// A gRPC-Web call in flight: what the response phase must undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub mode: Mode,
    /// The `Origin` to allow in the answer, when it is allowed.
    pub allowed_origin: Option<HeaderValue>,
}

impl GrpcWeb {
    pub fn parse(n: &crate::tree::Node) -> Result<GrpcWeb, String> {
        let o = Options::new("grpcWeb", n, &["allowOrigins"])?;
        Ok(GrpcWeb {
            allow_origins: o.list("allowOrigins")?,
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.allow_origins
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin.as_bytes())
    }

    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        headers.get(header::ORIGIN).filter(|o| self.allows(o)).cloned()
    }

    /// The request phase: a preflight answered, a gRPC-Web call turned into gRPC (its
    /// [`Call`] left in `req.grpc_web`), anything else untouched.
    pub fn request(&self, req: &mut Req<'_>) -> Step {
        if *req.method == Method::OPTIONS && is_preflight(req.headers) {
            let mut reply = Reply::new(StatusCode::NO_CONTENT, "");
            reply.headers.push((header::VARY, HeaderValue::from_static("Origin")));
            reply
                .headers
                .push((header::VARY, HeaderValue::from_static("Access-Control-Request-Method")));
            reply
                .headers
                .push((header::VARY, HeaderValue::from_static("Access-Control-Request-Headers")));
            if let Some(origin) = self.allowed_origin(req.headers) {
                let method = req
                    .headers
                    .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static("POST"));
                let asked = req
                    .headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(ALLOWED_HEADERS));
                reply.headers.extend([
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                    (
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    ),
                    (header::ACCESS_CONTROL_ALLOW_METHODS, method),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, asked),
                    (
                        header::ACCESS_CONTROL_MAX_AGE,
                        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
                    ),
                ]);
            }
            return Step::Reply(reply);
        }
        if *req.method != Method::POST {
            return Step::Next;
        }
        let Some((mode, grpc)) = req.headers.get(header::CONTENT_TYPE).and_then(to_grpc) else {
            return Step::Next;
        };
        req.headers.insert(header::CONTENT_TYPE, grpc);
        // The body changes length in text mode; HTTP/2 frames it anyway.
        req.headers.remove(header::CONTENT_LENGTH);
        req.headers.insert(header::TE, HeaderValue::from_static("trailers"));
        req.grpc_web = Some(Call {
            mode,
            allowed_origin: self.allowed_origin(req.headers),
        });
        Step::Next
    }
}

/// A CORS preflight for a gRPC-Web call: its requested headers name `x-grpc-web`.
fn is_preflight(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("x-grpc-web"))
}

/// `application/grpc-web[-text][+codec]` as its mode and the gRPC type it becomes.
fn to_grpc(v: &HeaderValue) -> Option<(Mode, HeaderValue)> {
    let v = v.to_str().ok()?;
    let lower = v.to_ascii_lowercase();
    let rest = lower.strip_prefix("application/grpc-web")?;
    let (mode, rest) = match rest.strip_prefix("-text") {
        Some(r) => (Mode::Text, r),
        None => (Mode::Binary, rest),
    };
    if !(rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')) {
        return None;
    }
    HeaderValue::from_str(&format!("application/grpc{rest}"))
        .ok()
        .map(|g| (mode, g))
}

impl Call {
    /// Whether the answer is gRPC (then its body is converted).
    pub fn converts(&self, headers: &HeaderMap) -> bool {
        headers.get(header::CONTENT_TYPE).is_some_and(|v| {
            v.as_bytes().starts_with(b"application/grpc") && !v.as_bytes().starts_with(b"application/grpc-web")
        })
    }

    /// The answer's head as the page reads it: the gRPC-Web type, every header name
    /// exposed, CORS for an allowed origin, no length (the body changes).
    pub fn response_head(&self, headers: &mut HeaderMap) {
        if let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            let rest = &ct["application/grpc".len().min(ct.len())..];
            let web = match self.mode {
                Mode::Binary => format!("application/grpc-web{rest}"),
                Mode::Text => format!("application/grpc-web-text{rest}"),
            };
            if let Ok(v) = HeaderValue::from_str(&web) {
                headers.insert(header::CONTENT_TYPE, v);
            }
        }
        headers.remove(header::CONTENT_LENGTH);
        let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
        for extra in ["grpc-status", "grpc-message"] {
            if !names.iter().any(|n| n == extra) {
                names.push(extra.to_string());
            }
        }
        if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
        if let Some(origin) = &self.allowed_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// The trailers as gRPC-Web's last frame: flag `0x80`, the length (big-endian), then
/// `name: value\r\n` for each, names in lower case as gRPC-Web says.
pub fn trailer_frame(trailers: &HeaderMap) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = Vec::with_capacity(5 + block.len());
    frame.push(0x80);
    frame.extend_from_slice(&u32::try_from(block.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// Base64 over a stream cut anywhere: whole 3-byte groups now, the rest with the next
/// chunk, padding only at the end, so the page reads one base64 text.
#[derive(Debug, Default)]
pub struct TextEncoder {
    carry: Vec<u8>,
}

impl TextEncoder {
    pub fn chunk(&mut self, data: &[u8]) -> String {
        use base64::Engine;
        self.carry.extend_from_slice(data);
        let whole = self.carry.len() / 3 * 3;
        let out = base64::engine::general_purpose::STANDARD.encode(&self.carry[..whole]);
        self.carry.drain(..whole);
        out
    }

    pub fn finish(&mut self) -> String {
        use base64::Engine;
        let out = base64::engine::general_purpose::STANDARD.encode(&self.carry);
        self.carry.clear();
        out
    }
}

/// A `grpc-web-text` request body (base64, possibly in several padded pieces, with
/// whitespace between), decoded.
pub fn decode_text(body: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let clean: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    // Pieces end where padding does.
    let mut start = 0;
    for (i, b) in clean.iter().enumerate() {
        if *b == b'=' && clean.get(i + 1).is_none_or(|n| *n != b'=') {
            let piece = &clean[start..=i];
            out.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(piece)
                    .map_err(|e| format!("the grpc-web-text body is not base64: {e}"))?,
            );
            start = i + 1;
        }
    }
    if start < clean.len() {
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(&clean[start..])
                .map_err(|e| format!("the grpc-web-text body is not base64: {e}"))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn content_types_map_both_ways() {
        let (mode, grpc) = to_grpc(&HeaderValue::from_static("application/grpc-web+proto")).unwrap();
        assert_eq!((mode, grpc.to_str().unwrap()), (Mode::Binary, "application/grpc+proto"));
        let (mode, grpc) = to_grpc(&HeaderValue::from_static("application/grpc-web-text")).unwrap();
        assert_eq!((mode, grpc.to_str().unwrap()), (Mode::Text, "application/grpc"));
        assert!(to_grpc(&HeaderValue::from_static("application/grpc-webby")).is_none());
        assert!(to_grpc(&HeaderValue::from_static("application/grpc")).is_none());
        let call = Call {
            mode: Mode::Text,
            allowed_origin: None,
        };
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        h.insert("x-served-by", HeaderValue::from_static("a"));
        assert!(call.converts(&h));
        call.response_head(&mut h);
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc-web-text+proto");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        let exposed = h[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap();
        assert!(
            exposed.contains("x-served-by") && exposed.contains("grpc-status"),
            "{exposed}"
        );
    }

    #[test]
    fn text_survives_any_cut_and_padded_pieces() {
        let data: Vec<u8> = (0..=255).collect();
        let mut enc = TextEncoder::default();
        let mut text = String::new();
        for piece in data.chunks(7) {
            text += &enc.chunk(piece);
        }
        text += &enc.finish();
        assert_eq!(decode_text(text.as_bytes()).unwrap(), data);
        // Two separately padded messages, as some clients send them.
        use base64::Engine;
        let two = format!(
            "{}{}",
            base64::engine::general_purpose::STANDARD.encode(b"ab"),
            base64::engine::general_purpose::STANDARD.encode(b"cde")
        );
        assert_eq!(decode_text(two.as_bytes()).unwrap(), b"abcde");
        assert!(decode_text(b"!!!!").is_err());
    }

    #[test]
    fn the_trailer_frame_is_flagged_and_sized() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let f = trailer_frame(&t);
        assert_eq!(f[0], 0x80);
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, f.len() - 5);
        assert_eq!(&f[5..], b"grpc-status: 0\r\n");
    }
}
