//! The little of gRPC a proxy must understand: telling a gRPC request apart, reading
//! `grpc-status` from headers or trailers, `grpc-timeout`, answering with a status
//! (trailers-only), and the `grpc.health.v1.Health/Check` exchange for active checks.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};

pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// gRPC status codes Berth acts on.
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Names of the codes, as `retryOn` lists them (`unavailable`, `deadline-exceeded`, ...).
pub fn code_from_name(name: &str) -> Option<u32> {
    let n = name.trim().to_ascii_lowercase().replace(['_', ' '], "-");
    Some(match n.as_str() {
        "ok" => 0,
        "cancelled" | "canceled" => 1,
        "unknown" => 2,
        "invalid-argument" => 3,
        "deadline-exceeded" => 4,
        "not-found" => 5,
        "already-exists" => 6,
        "permission-denied" => 7,
        "resource-exhausted" => 8,
        "failed-precondition" => 9,
        "aborted" => 10,
        "out-of-range" => 11,
        "unimplemented" => 12,
        "internal" => 13,
        "unavailable" => 14,
        "data-loss" => 15,
        "unauthenticated" => 16,
        other => return other.parse().ok().filter(|c| *c <= 16),
    })
}

/// A gRPC request: `content-type: application/grpc` (or `application/grpc+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-status` as a number, when present and valid.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// `grpc-timeout`: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The headers of a trailers-only response carrying `code` and `message` (HTTP 200).
pub fn status_headers(code: u32, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    h
}

/// `grpc-message` is percent-encoded (RFC 3986 unreserved and printable ASCII pass).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One length-prefixed, uncompressed gRPC message frame around `message`.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + 5);
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// The request body of `Health/Check` for `service` (`""`: the whole server).
pub fn health_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 2);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    frame(&msg)
}

/// The `ServingStatus` in a `Health/Check` response body (1 SERVING, 2 NOT_SERVING, ...).
pub fn health_status(body: &[u8]) -> Option<u32> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let msg = body.get(5..5 + len)?;
    // An empty message is status 0 (UNKNOWN); else field 1 as a varint.
    let mut i = 0;
    let mut status = 0;
    while i < msg.len() {
        let key = msg[i];
        i += 1;
        let (value, used) = varint(&msg[i..])?;
        i += used;
        match key {
            0x08 => status = value as u32,
            k if k & 7 == 0 => {}
            _ => return None,
        }
    }
    Some(status)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_the_spec_says() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            timeout(&h)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789m"), None, "more than 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("m"), None);
    }

    #[test]
    fn health_messages_round_trip() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        let r = health_request("helloworld.Greeter");
        assert_eq!(r[4] as usize, r.len() - 5);
        assert_eq!(&r[5..7], &[0x0a, 18]);
        assert_eq!(health_status(&frame(&[0x08, 0x01])), Some(1));
        assert_eq!(health_status(&frame(&[0x08, 0x02])), Some(2));
        assert_eq!(health_status(&frame(&[])), Some(0));
        assert_eq!(health_status(&[1, 0, 0, 0, 0]), None, "compressed frames are not read");
        assert_eq!(health_status(&[0, 0, 0, 0, 9, 8]), None, "truncated");
    }

    #[test]
    fn codes_by_name() {
        assert_eq!(code_from_name("unavailable"), Some(code::UNAVAILABLE));
        assert_eq!(code_from_name("DEADLINE_EXCEEDED"), Some(code::DEADLINE_EXCEEDED));
        assert_eq!(code_from_name("resource-exhausted"), Some(8));
        assert_eq!(code_from_name("14"), Some(14));
        assert_eq!(code_from_name("17"), None);
        assert_eq!(code_from_name("sometimes"), None);
        let h = status_headers(14, "no 100%");
        assert_eq!(h["grpc-message"], "no 100%25");
        assert_eq!(status(&h), Some(14));
    }
}
