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
    let mut rs = Vec::with_capacity(256 + spans.len() * 256);
    // ResourceSpans.resource = 1
    let mut res = Vec::with_capacity(256);
    for (k, v) in resource {
        key_value(&mut res, 1, k, v);
    }
    bytes_field(&mut rs, 1, &res);
    // ResourceSpans.scope_spans = 2: the scope, then each span (encoded in one reused
    // scratch buffer, then copied behind its length).
    let mut ss = Vec::with_capacity(spans.len() * 512 + 64);
    message(&mut ss, 1, |sc| {
        string(sc, 1, scope.0);
        string(sc, 2, scope.1);
    });
    let mut scratch = Vec::with_capacity(1024);
    for span in spans {
        scratch.clear();
        encode_span(&mut scratch, span);
        bytes_field(&mut ss, 2, &scratch);
    }
    bytes_field(&mut rs, 2, &ss);
    let mut out = Vec::with_capacity(rs.len() + 8);
    bytes_field(&mut out, 1, &rs);
    out
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
        tag(b, 15, 2);
        varint(b, (str_field_len(2, msg.len()) + 2) as u64);
        string(b, 2, msg);
        varint_field(b, 3, 2);
    }
    // flags = 16 (fixed32): the W3C flags (sampled) and "has remote-parent info" unset.
    tag(b, 16, 5);
    b.extend_from_slice(&1u32.to_le_bytes());
}

/// A `KeyValue` as field `field`, its lengths computed up front (no scratch buffer: this
/// runs once per attribute per span).
fn key_value(b: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    let any_len = match v {
        Value::Str(s) => str_field_len(1, s.len()),
        Value::Static(s) => str_field_len(1, s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(*i as u64),
        Value::Double(_) => 9,
    };
    let kv_len = str_field_len(1, k.len()) + str_field_len(2, any_len);
    tag(b, field, 2);
    varint(b, kv_len as u64);
    string(b, 1, k);
    tag(b, 2, 2);
    varint(b, any_len as u64);
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

/// The encoded size of a length-delimited field with a one-byte tag (fields 1-15).
fn str_field_len(_field: u32, len: usize) -> usize {
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

fn bytes_field(b: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(b, field, 2);
    varint(b, data.len() as u64);
    b.extend_from_slice(data);
}

fn string(b: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(b, field, s.as_bytes());
}

/// A nested message: written to a scratch buffer, then length-prefixed.
fn message(b: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes_field(b, field, &inner);
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
            let mut len = 0usize;
            let mut shift = 0;
            let mut i = 1;
            loop {
                len |= ((b[i] & 0x7f) as usize) << shift;
                i += 1;
                if b[i - 1] < 0x80 {
                    break;
                }
                shift += 7;
            }
            assert_eq!(b.len() - i, len, "{v:?}");
        }
    }
}
