//! JSON that keeps what `inject` does not touch as it was: objects keep their key order
//! (serde_json's map sorts them), and the output is written in the input's layout (the
//! AWS CLI's four-space indentation, any other indentation, or compact), so an injected
//! task definition differs from its input only where the sidecar went in, and uninject
//! gives the input back. Bounded: at most [`MAX_DEPTH`] levels, inputs of at most
//! [`MAX_BYTES`].

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The largest task definition read (ECS allows 64 KiB; CLI output adds a little).
pub(super) const MAX_BYTES: usize = 1024 * 1024;
/// The deepest nesting read.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum J {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    pub(super) fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut J> {
        match self {
            J::Obj(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(super) fn str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn arr(&self) -> Option<&Vec<J>> {
        match self {
            J::Arr(a) => Some(a),
            _ => None,
        }
    }

    pub(super) fn arr_mut(&mut self) -> Option<&mut Vec<J>> {
        match self {
            J::Arr(a) => Some(a),
            _ => None,
        }
    }

    /// Set `key` (in place when present, else last).
    pub(super) fn set(&mut self, key: &str, value: J) {
        if let J::Obj(m) = self {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => m.push((key.to_string(), value)),
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<J> {
        match self {
            J::Obj(m) => {
                let i = m.iter().position(|(k, _)| k == key)?;
                Some(m.remove(i).1)
            }
            _ => None,
        }
    }

    pub(super) fn obj(pairs: Vec<(&str, J)>) -> J {
        J::Obj(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    pub(super) fn s(text: &str) -> J {
        J::Str(text.to_string())
    }
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<J, E> {
        Ok(J::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<J, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<J, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<J, E> {
        serde_json::Number::from_f64(v)
            .map(J::Num)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<J, E> {
        Ok(J::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<J, E> {
        Ok(J::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(J::Arr(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
        let mut out: Vec<(String, J)> = Vec::new();
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        while let Some((k, v)) = map.next_entry::<String, J>()? {
            // A repeated key: the last one wins, in the first one's place.
            match at.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    at.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Ok(J::Obj(out))
    }
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

/// How the input was laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// One level's indentation; `None`: compact.
    indent: Option<String>,
    trailing_newline: bool,
}

/// Parse `text`, and how it was laid out.
pub(super) fn parse(text: &str) -> Result<(J, Layout), String> {
    if text.len() > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    // serde_json refuses nesting past 128 levels itself; ours is stricter.
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for b in text.bytes() {
        match (in_str, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_str = false,
            (false, _, b'"') => in_str = true,
            (false, _, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let value: J = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let indent = text.split('\n').nth(1).and_then(|line| {
        let ws: String = line.chars().take_while(|c| *c == ' ' || *c == '\t').collect();
        (!ws.is_empty()).then_some(ws)
    });
    Ok((
        value,
        Layout {
            indent,
            trailing_newline: text.ends_with('\n'),
        },
    ))
}

/// Whether `text` is written as [`print`] writes it (then uninject gives it back byte for
/// byte; otherwise the same JSON in that layout).
pub(super) fn faithful(text: &str) -> bool {
    parse(text).is_ok_and(|(v, layout)| print(&v, &layout) == text)
}

/// `value` written in `layout`.
pub(super) fn print(value: &J, layout: &Layout) -> String {
    let mut out = String::new();
    write(&mut out, value, layout.indent.as_deref(), 0);
    if layout.trailing_newline {
        out.push('\n');
    }
    out
}

fn write(out: &mut String, v: &J, indent: Option<&str>, level: usize) {
    let newline = |out: &mut String, level: usize| {
        if let Some(i) = indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(i);
            }
        }
    };
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(&n.to_string()),
        J::Str(s) => out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())),
        J::Arr(a) if a.is_empty() => out.push_str("[]"),
        J::Obj(m) if m.is_empty() => out.push_str("{}"),
        J::Arr(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                write(out, item, indent, level + 1);
            }
            newline(out, level);
            out.push(']');
        }
        J::Obj(m) => {
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, level + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into()));
                out.push_str(if indent.is_some() { ": " } else { ":" });
                write(out, item, indent, level + 1);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layouts_and_key_order_survive_a_round_trip() {
        for text in [
            "{\n    \"b\": 1,\n    \"a\": [\n        true,\n        null\n    ],\n    \"c\": {},\n    \"d\": []\n}\n",
            "{\n  \"z\": \"\u{e9}\\n\",\n  \"y\": -2.5\n}",
            "{\"b\":{\"a\":1},\"a\":[1,2]}",
        ] {
            let (v, layout) = parse(text).unwrap();
            assert_eq!(print(&v, &layout), text);
        }
    }

    #[test]
    fn other_layouts_are_told() {
        assert!(faithful("{\n    \"a\": 1\n}\n"));
        assert!(!faithful("{\r\n    \"a\": 1\r\n}\r\n"));
        assert!(!faithful("{\"a\": 1e3}"));
        // A repeated key keeps its first place, the last value.
        let (v, _) = parse("{\"a\":1,\"b\":2,\"a\":3}").unwrap();
        assert_eq!(print(&v, &parse("{}").unwrap().1), "{\"a\":3,\"b\":2}");
    }

    #[test]
    fn hostile_inputs_are_refused() {
        assert!(parse(&format!("{}{}", "[".repeat(100), "]".repeat(100))).is_err());
        assert!(parse(&" ".repeat(MAX_BYTES + 1)).is_err());
        assert!(parse("{\"a\":").is_err());
        // Brackets inside strings are not nesting.
        assert!(parse(&format!("{{\"a\":\"{}\"}}", "[".repeat(100))).is_ok());
    }
}
