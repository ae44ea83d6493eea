//! OTLP trace protobuf (`opentelemetry/proto/collector/trace/v1`), encoded by hand.
//!
//! Berth writes only the handful of messages a span export needs; a code generator
//! and its runtime would cost the sidecar more binary and memory than the whole
//! encoder. Field numbers follow `opentelemetry-proto` v1; the tests decode the output
//! with the upstream generated types (`test_util::otlp`).

use super::propagation::{SpanId, TraceId};

/// An attribute value (the `AnyValue` kinds Berth emits).
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    /// A string known at compile time: no allocation per span.
    Static(&'static str),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Static(s) => Some(s),
            _ => None,
        }
    }
}

/// Equal by content: an owned and a static string with the same text are equal.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Double(a), Value::Double(b)) => a == b,
            _ => self.as_str().is_some() && self.as_str() == other.as_str(),
        }
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Static(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Str(s.clone())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Unset,
    Error(String),
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
}

/// Encode one `ExportTraceServiceRequest` with a single resource and scope.
pub fn encode_request(resource: &[(String, Value)], scope: (&str, &str), spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request_into(&mut out, resource, scope, spans);
    out
}

/// [`encode_request`], appended to `out` (behind a frame header the caller wrote).
///
/// One pass, no copies: every message's length is computed before it is written, so
/// each span goes straight to its place in `out`. (Encoding each message into a scratch
/// buffer and copying it behind its length, as before, copied every span three times and
/// was most of the exporter's cost: callgrind, docs/benchmarks.md.)
pub fn encode_request_into(out: &mut Vec<u8>, resource: &[(String, Value)], scope: (&str, &str), spans: &[SpanData]) {
    // ResourceSpans { resource = 1: Resource { attributes = 1 }, scope_spans = 2 }
    let res_len: usize = resource.iter().map(|(k, v)| field_len(key_value_len(k, v))).sum();
    // ScopeSpans { scope = 1: InstrumentationScope { name = 1, version = 2 }, spans = 2 }
    let scope_len = field_len(scope.0.len()) + field_len(scope.1.len());
    let span_lens: Vec<usize> = spans.iter().map(span_len).collect();
    let ss_len = field_len(scope_len) + span_lens.iter().map(|l| field_len(*l)).sum::<usize>();
    let rs_len = field_len(res_len) + field_len(ss_len);
    out.reserve(field_len(rs_len));

    // ExportTraceServiceRequest.resource_spans = 1
    length_delimited(out, 1, rs_len);
    length_delimited(out, 1, res_len);
    for (k, v) in resource {
        key_value(out, 1, k, v);
    }
    length_delimited(out, 2, ss_len);
    length_delimited(out, 1, scope_len);
    string(out, 1, scope.0);
    string(out, 2, scope.1);
    for (span, len) in spans.iter().zip(span_lens) {
        length_delimited(out, 2, len);
        encode_span(out, span);
    }
}

/// The encoded size of `Span` `s` (what [`encode_span`] writes).
fn span_len(s: &SpanData) -> usize {
    let mut n = field_len(16) + field_len(8); // trace_id, span_id
    if let Some(ts) = &s.trace_state {
        n += field_len(ts.len());
    }
    if s.parent.is_some() {
        n += field_len(8);
    }
    n += field_len(s.name.len());
    n += 1 + varint_len(s.kind as u64);
    n += 2 * 9; // start and end, fixed64
    n += s
        .attributes
        .iter()
        .map(|(k, v)| field_len(key_value_len(k, v)))
        .sum::<usize>();
    if let Status::Error(msg) = &s.status {
        n += field_len(status_len(msg));
    }
    n + 2 + 4 // flags: a two-byte tag (field 16), fixed32
}

fn status_len(msg: &str) -> usize {
    field_len(msg.len()) + 2
}

fn encode_span(b: &mut Vec<u8>, s: &SpanData) {
    bytes_field(b, 1, &s.trace_id.0);
    bytes_field(b, 2, &s.span_id.0);
    if let Some(ts) = &s.trace_state {
        string(b, 3, ts);
    }
    if let Some(p) = &s.parent {
        bytes_field(b, 4, &p.0);
    }
    string(b, 5, &s.name);
    varint_field(b, 6, s.kind as u64);
    fixed64(b, 7, s.start_unix_nanos);
    fixed64(b, 8, s.end_unix_nanos);
    for (k, v) in &s.attributes {
        key_value(b, 9, k, v);
    }
    if let Status::Error(msg) = &s.status {
        // Status { message = 2, code = 3 (ERROR) }
        length_delimited(b, 15, status_len(msg));
        string(b, 2, msg);
        varint_field(b, 3, 2);
    }
    // flags = 16 (fixed32): the W3C flags (sampled) and "has remote-parent info" unset.
    tag(b, 16, 5);
    b.extend_from_slice(&1u32.to_le_bytes());
}

/// The encoded size of an `AnyValue` holding `v`.
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => field_len(s.len()),
        Value::Static(s) => field_len(s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(*i as u64),
        Value::Double(_) => 9,
    }
}

/// The encoded size of a `KeyValue { key = 1, value = 2 }`.
fn key_value_len(k: &str, v: &Value) -> usize {
    field_len(k.len()) + field_len(any_value_len(v))
}

/// A `KeyValue` as field `field`, its lengths computed up front.
fn key_value(b: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    let any_len = any_value_len(v);
    length_delimited(b, field, field_len(k.len()) + field_len(any_len));
    string(b, 1, k);
    length_delimited(b, 2, any_len);
    match v {
        Value::Str(s) => string(b, 1, s),
        Value::Static(s) => string(b, 1, s),
        Value::Bool(x) => varint_field(b, 2, u64::from(*x)),
        Value::Int(i) => varint_field(b, 3, *i as u64),
        Value::Double(d) => fixed64(b, 4, d.to_bits()),
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// The encoded size of a length-delimited field of `len` bytes with a one-byte tag
/// (fields 1-15, which is every length-delimited field written here).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn tag(b: &mut Vec<u8>, field: u32, wire: u8) {
    varint(b, (u64::from(field) << 3) | u64::from(wire));
}

fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    tag(b, field, 0);
    varint(b, v);
}

fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    tag(b, field, 1);
    b.extend_from_slice(&v.to_le_bytes());
}

/// A length-delimited field's tag and length; its `len` bytes follow.
fn length_delimited(b: &mut Vec<u8>, field: u32, len: usize) {
    tag(b, field, 2);
    varint(b, len as u64);
}

fn bytes_field(b: &mut Vec<u8>, field: u32, data: &[u8]) {
    length_delimited(b, field, data.len());
    b.extend_from_slice(data);
}

fn string(b: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(b, field, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_examples() {
        let mut b = Vec::new();
        varint(&mut b, 150);
        assert_eq!(b, [0x96, 0x01]);
        let mut b = Vec::new();
        varint_field(&mut b, 3, (-1i64) as u64);
        assert_eq!(b.len(), 11, "negative int64 is ten bytes plus the tag");
        assert_eq!(varint_len((-1i64) as u64), 10);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
    }

    #[test]
    fn span_lengths_match_what_is_written() {
        let mut span = SpanData {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([9; 8]),
            parent: None,
            trace_state: None,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: u64::MAX,
            attributes: vec![],
            status: Status::Unset,
        };
        let check = |s: &SpanData| {
            let mut b = Vec::new();
            encode_span(&mut b, s);
            assert_eq!(b.len(), span_len(s), "{s:?}");
        };
        check(&span);
        span.parent = Some(SpanId([1; 8]));
        span.trace_state = Some("v=".repeat(100));
        span.name = "n".repeat(300);
        span.attributes = vec![
            ("url.full", Value::Str("x".repeat(20_000))),
            ("http.response.status_code", Value::Int(503)),
            ("a", Value::Bool(false)),
            ("b", Value::Double(0.5)),
            ("c", Value::Static("")),
        ];
        span.status = Status::Error("e".repeat(130));
        check(&span);
        // A whole request: its outer lengths are right too (the first field's length
        // covers the rest exactly).
        let out = encode_request(
            &[("service.name".into(), Value::Static("x"))],
            ("berth", "1"),
            &[span.clone(), span],
        );
        assert_eq!(after_first_length(&out), Some(0));
    }

    /// What is left after a one-byte tag, its length and that many bytes (`None` when
    /// the length runs past the end).
    fn after_first_length(b: &[u8]) -> Option<usize> {
        let (mut len, mut shift, mut i) = (0usize, 0, 1);
        loop {
            len |= ((b[i] & 0x7f) as usize) << shift;
            i += 1;
            if b[i - 1] < 0x80 {
                break;
            }
            shift += 7;
        }
        (b.len() - i).checked_sub(len)
    }

    #[test]
    fn computed_lengths_match_what_is_written() {
        for v in [
            Value::Str("x".repeat(200)),
            Value::Static("GET"),
            Value::Int(-5),
            Value::Int(70_000),
            Value::Bool(true),
            Value::Double(1.5),
        ] {
            let mut b = Vec::new();
            key_value(&mut b, 9, "http.request.method", &v);
            // tag, length, then exactly that many bytes.
            assert_eq!(after_first_length(&b), Some(0), "{v:?}");
        }
    }
}
