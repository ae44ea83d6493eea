//! A generic configuration tree, the meeting point of YAML, TOML and docker labels.

use std::collections::BTreeMap;

use crate::diag::Diagnostic;

/// The longest dotted key accepted (Traefik's longest keys are under 100 bytes).
pub(crate) const MAX_KEY_BYTES: usize = 512;
/// The most dot-separated segments a key may have.
pub(crate) const MAX_KEY_SEGMENTS: usize = 16;

/// Scalars are kept as text; maps keep the keys as written (lookups ignore case).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Leaf(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    pub fn empty_map() -> Node {
        Node::Map(Vec::new())
    }

    /// Entries of a map (empty for other shapes).
    pub fn entries(&self) -> &[(String, Node)] {
        match self {
            Node::Map(m) => m,
            _ => &[],
        }
    }

    /// Build a tree from dotted keys (`http.routers.r.rule = ...`). A key that is both
    /// a value and a parent (`a.b=1` and `a.b.c=2`) is reported and the later one dropped,
    /// and so is a key longer than [`MAX_KEY_BYTES`] or deeper than [`MAX_KEY_SEGMENTS`]
    /// (labels are written by anyone who can register a task definition).
    pub fn from_dotted<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        key_prefix: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Node {
        let mut root = Node::empty_map();
        for (key, value) in pairs {
            if key.len() > MAX_KEY_BYTES || key.split('.').nth(MAX_KEY_SEGMENTS).is_some() {
                let shown: String = key.chars().take(64).collect();
                diags.push(Diagnostic::error(
                    format!("{key_prefix}{shown}…"),
                    format!("a key has at most {MAX_KEY_BYTES} bytes and {MAX_KEY_SEGMENTS} segments"),
                ));
                continue;
            }
            // Traefik's list index `domains[0].main` is the segment `domains`, then `0`.
            let parts: Vec<&str> = key.split('.').flat_map(indexed).collect();
            if parts.iter().any(|p| p.is_empty()) {
                diags.push(Diagnostic::error(
                    format!("{key_prefix}{key}"),
                    "empty segment in label key",
                ));
                continue;
            }
            if let Err(msg) = insert(&mut root, &parts, value) {
                diags.push(Diagnostic::error(format!("{key_prefix}{key}"), msg));
            }
        }
        root
    }

    /// Convert parsed YAML into a tree.
    pub fn from_yaml(v: &serde_norway::Value) -> Node {
        use serde_norway::Value as Y;
        match v {
            Y::Null => Node::Leaf(String::new()),
            Y::Bool(b) => Node::Leaf(b.to_string()),
            Y::Number(n) => Node::Leaf(n.to_string()),
            Y::String(s) => Node::Leaf(s.clone()),
            Y::Sequence(items) => Node::List(items.iter().map(Node::from_yaml).collect()),
            Y::Mapping(m) => Node::Map(
                m.iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Y::String(s) => s.clone(),
                            other => serde_norway::to_string(other).unwrap_or_default().trim().to_string(),
                        };
                        (key, Node::from_yaml(v))
                    })
                    .collect(),
            ),
            Y::Tagged(t) => Node::from_yaml(&t.value),
        }
    }

    /// Convert parsed TOML into a tree.
    pub fn from_toml(v: &toml::Value) -> Node {
        use toml::Value as T;
        match v {
            T::String(s) => Node::Leaf(s.clone()),
            T::Integer(i) => Node::Leaf(i.to_string()),
            T::Float(f) => Node::Leaf(f.to_string()),
            T::Boolean(b) => Node::Leaf(b.to_string()),
            T::Datetime(d) => Node::Leaf(d.to_string()),
            T::Array(items) => Node::List(items.iter().map(Node::from_toml).collect()),
            T::Table(t) => Node::Map(t.iter().map(|(k, v)| (k.clone(), Node::from_toml(v))).collect()),
        }
    }

    /// The tree as plain JSON, for the admin API.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Node::Leaf(s) => serde_json::Value::String(s.clone()),
            Node::List(l) => serde_json::Value::Array(l.iter().map(Node::to_json).collect()),
            Node::Map(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<serde_json::Map<_, _>>(),
            ),
        }
    }

    /// Flatten back to dotted keys (lists as `key[0]`), for messages and tests.
    pub fn flatten(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        flatten_into(self, String::new(), &mut out);
        out
    }
}

fn flatten_into(node: &Node, prefix: String, out: &mut BTreeMap<String, String>) {
    match node {
        Node::Leaf(s) => {
            out.insert(prefix, s.clone());
        }
        Node::List(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten_into(item, format!("{prefix}[{i}]"), out);
            }
        }
        Node::Map(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(v, key, out);
            }
        }
    }
}

fn insert(node: &mut Node, parts: &[&str], value: &str) -> Result<(), String> {
    let Node::Map(entries) = node else {
        return Err("conflicts with a value set by a shorter key".into());
    };
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return Err("empty key".into()),
    };
    let idx = match entries.iter().position(|(k, _)| k.eq_ignore_ascii_case(first)) {
        Some(i) => i,
        None => {
            let child = if rest.is_empty() {
                Node::Leaf(value.to_string())
            } else {
                Node::empty_map()
            };
            entries.push(((*first).to_string(), child));
            if rest.is_empty() {
                return Ok(());
            }
            entries.len() - 1
        }
    };
    if rest.is_empty() {
        return match &entries[idx].1 {
            Node::Leaf(_) => {
                entries[idx].1 = Node::Leaf(value.to_string());
                Ok(())
            }
            _ => Err("conflicts with longer keys under the same name".into()),
        };
    }
    insert(&mut entries[idx].1, rest, value)
}

/// A boolean as Go's `strconv.ParseBool` reads it (Traefik's configuration does):
/// `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A key segment, split into its name and its list index when it is written `name[N]`
/// (N at most four digits); as it is otherwise.
fn indexed(segment: &str) -> Vec<&str> {
    if let Some(open) = segment.find('[')
        && let Some(index) = segment[open + 1..].strip_suffix(']')
        && (1..=4).contains(&index.len())
        && index.bytes().all(|b| b.is_ascii_digit())
    {
        vec![&segment[..open], index]
    } else {
        vec![segment]
    }
}
