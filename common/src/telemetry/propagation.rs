//! Trace context on the wire: W3C `traceparent`/`tracestate`, B3 (single `b3` header or
//! the `X-B3-*` set) for meshes that still speak Zipkin, and AWS X-Ray's
//! `X-Amzn-Trace-Id` (as the X-Ray and ADOT SDKs and ALB write it). Parsing is strict
//! (a malformed header is ignored, never half-read) and allocation-free until a context
//! is found.

use http::{HeaderMap, HeaderName, HeaderValue};

// Names as constants, not strings: a `&str` name is parsed and checked on every lookup,
// and these are looked up on every request while tracing is on.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// AWS X-Ray's header: `Root=1-{epoch}-{random};Parent={span};Sampled={0|1}`.
pub const XRAY: HeaderName = HeaderName::from_static("x-amzn-trace-id");
/// The longest X-Ray header read (ALB and Lambda add `Self=` and `Lineage=` fields).
const XRAY_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> TraceId {
        loop {
            let v = fastrand::u128(..);
            if v != 0 {
                return TraceId(v.to_be_bytes());
            }
        }
    }
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        loop {
            let v = fastrand::u64(..);
            if v != 0 {
                return SpanId(v.to_be_bytes());
            }
        }
    }
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// Where a span sits in its trace, as carried between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// The vendor state (`tracestate`), passed on unchanged.
    pub trace_state: Option<HeaderValue>,
}

/// Which header formats are read and written (`OTEL_PROPAGATORS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagators {
    pub tracecontext: bool,
    pub b3: bool,
    pub b3multi: bool,
    pub xray: bool,
}

impl Default for Propagators {
    fn default() -> Self {
        Propagators {
            tracecontext: true,
            b3: false,
            b3multi: false,
            xray: false,
        }
    }
}

impl Propagators {
    /// `OTEL_PROPAGATORS`: a comma list of `tracecontext`, `baggage` (passed through
    /// untouched anyway), `b3`, `b3multi`, `xray`, `none`.
    pub fn parse(v: &str) -> Result<Propagators, String> {
        let mut p = Propagators {
            tracecontext: false,
            b3: false,
            b3multi: false,
            xray: false,
        };
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "tracecontext" => p.tracecontext = true,
                "b3" => p.b3 = true,
                "b3multi" => p.b3multi = true,
                "xray" => p.xray = true,
                "baggage" | "none" => {}
                other => {
                    return Err(format!(
                        "OTEL_PROPAGATORS: `{other}` is not supported (tracecontext, baggage, b3, b3multi, xray, none)"
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The incoming context: W3C first, then B3 single, then B3 multi, then X-Ray.
    pub fn extract(&self, headers: &HeaderMap) -> Option<SpanContext> {
        if self.tracecontext
            && let Some(ctx) = headers.get(TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()))
        {
            let trace_state = headers.get(TRACESTATE).cloned();
            return Some(SpanContext { trace_state, ..ctx });
        }
        if self.b3
            && let Some(ctx) = headers.get(B3).and_then(|v| parse_b3_single(v.as_bytes()))
        {
            return Some(ctx);
        }
        if self.b3multi
            && let Some(ctx) = parse_b3_multi(headers)
        {
            return Some(ctx);
        }
        if self.xray {
            return headers.get(XRAY).and_then(|v| parse_xray(v.as_bytes()));
        }
        None
    }

    /// Replace the outgoing context headers with `ctx` (the client span's).
    pub fn inject(&self, ctx: &SpanContext, headers: &mut HeaderMap) {
        if self.tracecontext {
            headers.insert(TRACEPARENT, traceparent(ctx));
            match &ctx.trace_state {
                Some(ts) => {
                    headers.insert(TRACESTATE, ts.clone());
                }
                None => {
                    headers.remove(TRACESTATE);
                }
            }
        }
        if self.b3 {
            let v = format!(
                "{}-{}-{}",
                ctx.trace_id.hex(),
                ctx.span_id.hex(),
                if ctx.sampled { "1" } else { "0" }
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(B3, v);
            }
        }
        if self.xray {
            let t = ctx.trace_id.hex();
            let v = format!(
                "Root=1-{}-{};Parent={};Sampled={}",
                &t[..8],
                &t[8..],
                ctx.span_id.hex(),
                if ctx.sampled { "1" } else { "0" }
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(XRAY, v);
            }
        }
        if self.b3multi {
            headers.remove(B3_PARENT);
            headers.remove(B3_FLAGS);
            for (name, v) in [
                (B3_TRACE_ID, ctx.trace_id.hex()),
                (B3_SPAN_ID, ctx.span_id.hex()),
                (B3_SAMPLED, if ctx.sampled { "1" } else { "0" }.to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.insert(name, v);
                }
            }
        }
    }
}

/// The `traceparent` value for `ctx` (version 00).
pub fn traceparent(ctx: &SpanContext) -> HeaderValue {
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    write_hex(&mut buf[3..35], &ctx.trace_id.0);
    buf[35] = b'-';
    write_hex(&mut buf[36..52], &ctx.span_id.0);
    buf[52] = b'-';
    buf[53] = b'0';
    buf[54] = if ctx.sampled { b'1' } else { b'0' };
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// W3C Trace Context level 1: `version-traceid-parentid-flags`. Version ff is invalid;
/// a higher version may append fields after a dash, which are ignored.
pub fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = unhex_u8(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    unhex_into(&v[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    unhex_into(&v[36..52], &mut span_id)?;
    let flags = unhex_u8(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        sampled: flags & 1 == 1,
        trace_state: None,
    })
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parent}]]`; a lone `0`/`1`/`d` carries no ids.
fn parse_b3_single(v: &[u8]) -> Option<SpanContext> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split('-');
    let trace = parse_b3_trace_id(parts.next()?)?;
    let span = parse_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => true,
        Some("1") | Some("d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    Some(SpanContext {
        trace_id: trace,
        span_id: span,
        sampled,
        trace_state: None,
    })
}

/// `X-Amzn-Trace-Id`: `;`-separated `key=value` fields in any order; `Root=1-` then 8
/// hex digits (the epoch) and 24 (random), which are the 128-bit trace id; `Parent=` 16
/// hex digits; `Sampled=1` or `0` (absent or `?`: not sampled here). Other fields
/// (`Self`, `Lineage`) are ignored; a header without `Parent` (an ALB's, `Root` alone)
/// names no parent span and is not a context, as in OpenTelemetry's X-Ray propagator.
fn parse_xray(v: &[u8]) -> Option<SpanContext> {
    if v.len() > XRAY_MAX {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    let (mut trace, mut span, mut sampled) = (None, None, false);
    for field in s.split(';').map(str::trim).filter(|f| !f.is_empty()) {
        let (k, val) = field.split_once('=')?;
        match k.trim() {
            "Root" => {
                let rest = val.trim().strip_prefix("1-")?;
                let (epoch, random) = rest.split_once('-')?;
                if epoch.len() != 8 || random.len() != 24 {
                    return None;
                }
                let mut id = [0u8; 16];
                unhex_into(epoch.as_bytes(), &mut id[..4])?;
                unhex_into(random.as_bytes(), &mut id[4..])?;
                trace = (id != [0; 16]).then_some(TraceId(id));
            }
            "Parent" => span = Some(parse_span_id(val.trim())?),
            "Sampled" => {
                sampled = match val.trim() {
                    "1" => true,
                    "0" | "?" => false,
                    _ => return None,
                }
            }
            _ => {}
        }
    }
    Some(SpanContext {
        trace_id: trace?,
        span_id: span?,
        sampled,
        trace_state: None,
    })
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<SpanContext> {
    let get = |n: HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let trace = parse_b3_trace_id(get(B3_TRACE_ID)?)?;
    let span = parse_span_id(get(B3_SPAN_ID)?)?;
    let sampled = get(B3_FLAGS) == Some("1") || !matches!(get(B3_SAMPLED), Some("0") | Some("false"));
    Some(SpanContext {
        trace_id: trace,
        span_id: span,
        sampled,
        trace_state: None,
    })
}

/// B3 trace ids are 64 or 128 bits; a 64-bit one is left-padded with zeros.
fn parse_b3_trace_id(s: &str) -> Option<TraceId> {
    let mut id = [0u8; 16];
    match s.len() {
        32 => unhex_into(s.as_bytes(), &mut id)?,
        16 => unhex_into(s.as_bytes(), &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(TraceId(id))
}

fn parse_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 {
        return None;
    }
    let mut id = [0u8; 8];
    unhex_into(s.as_bytes(), &mut id)?;
    (id != [0; 8]).then_some(SpanId(id))
}

/// Lower-case hex only, as W3C requires.
fn unhex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn unhex_u8(s: &[u8]) -> Option<u8> {
    Some(unhex_nibble(s[0])? << 4 | unhex_nibble(s[1])?)
}

fn unhex_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = unhex_u8(&s[2 * i..2 * i + 2])?;
    }
    Some(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let ctx = parse_traceparent(TP.as_bytes()).expect("valid");
        assert!(ctx.sampled);
        assert_eq!(ctx.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id.hex(), "00f067aa0ba902b7");
        assert_eq!(traceparent(&ctx).to_str().expect("ascii"), TP);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A future version may carry more fields.
        assert!(parse_traceparent(format!("01{}-more", &TP[2..]).as_bytes()).is_some());
    }

    #[test]
    fn extract_and_inject_carry_tracestate() {
        let p = Propagators::default();
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let mut ctx = p.extract(&h).expect("context");
        assert_eq!(ctx.trace_state.as_ref().map(|v| v.as_bytes()), Some(&b"vendor=1"[..]));
        ctx.span_id = SpanId([1, 2, 3, 4, 5, 6, 7, 8]);
        let mut out = HeaderMap::new();
        p.inject(&ctx, &mut out);
        assert_eq!(
            out[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(out[TRACESTATE], "vendor=1");
    }

    #[test]
    fn b3_single_and_multi() {
        let p = Propagators::parse("b3,b3multi").expect("valid");
        let mut h = HeaderMap::new();
        h.insert(B3, HeaderValue::from_static("a3ce929d0e0e4736-00f067aa0ba902b7-0"));
        let ctx = p.extract(&h).expect("b3");
        assert_eq!(ctx.trace_id.hex(), "0000000000000000a3ce929d0e0e4736");
        assert!(!ctx.sampled);
        let mut h = HeaderMap::new();
        h.insert(
            B3_TRACE_ID,
            HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
        );
        h.insert(B3_SPAN_ID, HeaderValue::from_static("00f067aa0ba902b7"));
        let ctx = p.extract(&h).expect("b3 multi");
        assert!(ctx.sampled);
        let mut out = HeaderMap::new();
        p.inject(&ctx, &mut out);
        assert_eq!(out[B3], "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1");
        assert_eq!(out[B3_TRACE_ID], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!out.contains_key(TRACEPARENT));
        assert!(Propagators::parse("jaeger").is_err());
    }

    #[test]
    fn xray_as_the_aws_sdks_write_it() {
        let p = Propagators::parse("xray").expect("valid");
        let mut h = HeaderMap::new();
        // The example of AWS's X-Ray developer guide, fields in another order.
        h.insert(
            XRAY,
            HeaderValue::from_static("Sampled=1; Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8"),
        );
        let ctx = p.extract(&h).expect("x-ray");
        assert_eq!(ctx.trace_id.hex(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(ctx.span_id.hex(), "53995c3f42cd8ad8");
        assert!(ctx.sampled);
        let mut out = HeaderMap::new();
        p.inject(&ctx, &mut out);
        assert_eq!(
            out[XRAY],
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        );
        assert!(!out.contains_key(TRACEPARENT));
        // What ALB and Lambda add is ignored; Root alone names no parent.
        for (v, ok) in [
            (
                "Self=1-67891234-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=?",
                true,
            ),
            (
                "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;",
                true,
            ),
            ("Root=1-67891233-abcdef012345678912345678", false),
            (
                "Root=2-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8",
                false,
            ),
            ("Root=1-6789123-abcdef012345678912345678;Parent=53995c3f42cd8ad8", false),
            (
                "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=yes",
                false,
            ),
            (
                "Root=1-67891233-abcdef01234567891234567z;Parent=53995c3f42cd8ad8",
                false,
            ),
            ("garbage", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(XRAY, HeaderValue::from_str(v).expect("ascii"));
            assert_eq!(p.extract(&h).is_some(), ok, "{v}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            XRAY,
            HeaderValue::from_str(&format!("Root=1-{}", "a".repeat(300))).expect("ascii"),
        );
        assert!(p.extract(&h).is_none());
    }
}
