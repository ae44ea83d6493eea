//! Reading a middleware's options from the configuration tree: keys ignore case, lists
//! come as YAML/TOML lists or as comma-separated label values, and every key a middleware
//! does not know is an error (never silently dropped).

use std::collections::BTreeMap;

use crate::tree::Node;

/// One middleware's options, with the keys it has read.
pub struct Options<'a> {
    node: &'a Node,
    kind: &'a str,
    known: &'static [&'static str],
}

/// The most values one list option may hold.
const MAX_LIST: usize = 1024;

impl<'a> Options<'a> {
    /// `known` lists every option key of the middleware (lowercase).
    pub fn new(kind: &'a str, node: &'a Node, known: &'static [&'static str]) -> Result<Options<'a>, String> {
        if !matches!(node, Node::Map(_)) && node != &Node::Leaf(String::new()) {
            return Err(format!("{kind}: options must be a map"));
        }
        for (key, _) in node.entries() {
            if !known.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                return Err(format!("{kind}: unknown option `{key}` (known: {})", known.join(", ")));
            }
        }
        Ok(Options { node, kind, known })
    }

    pub fn get(&self, key: &str) -> Option<&'a Node> {
        debug_assert!(self.known.contains(&key));
        self.node
            .entries()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Node::Leaf(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{}.{key}: expected a value", self.kind)),
        }
    }

    pub fn required(&self, key: &str) -> Result<String, String> {
        self.string(key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{}.{key} is required", self.kind))
    }

    pub fn bool(&self, key: &str) -> Result<bool, String> {
        match self.string(key)?.as_deref() {
            None | Some("") => Ok(false),
            Some(v) => {
                crate::tree::parse_bool(v).ok_or_else(|| format!("{}.{key}: `{v}` is not true or false", self.kind))
            }
        }
    }

    pub fn number(&self, key: &str) -> Result<Option<u64>, String> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("{}.{key}: `{s}` is not a non-negative integer", self.kind)),
        }
    }

    /// A list: a YAML/TOML list, or a comma-separated value (labels).
    pub fn list(&self, key: &str) -> Result<Vec<String>, String> {
        let items = self.list_unbounded(key)?;
        if items.len() > MAX_LIST {
            return Err(format!("{}.{key}: more than {MAX_LIST} values", self.kind));
        }
        Ok(items)
    }

    /// A list of regexps, each compiled within the rule language's bounds, at most
    /// [`crate::rules::matcher::MAX_REGEXPS`] of them.
    pub fn regex_list(&self, key: &str) -> Result<Vec<regex::Regex>, String> {
        let items = self.list(key)?;
        let max = crate::rules::matcher::MAX_REGEXPS;
        if items.len() > max {
            return Err(format!("{}.{key}: more than {max} regexps", self.kind));
        }
        items.iter().map(|r| super::regex(self.kind, key, r)).collect()
    }

    fn list_unbounded(&self, key: &str) -> Result<Vec<String>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Node::Leaf(s)) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()),
            Some(Node::List(items)) => items
                .iter()
                .map(|n| match n {
                    Node::Leaf(s) => Ok(s.trim().to_string()),
                    _ => Err(format!("{}.{key}: expected a list of values", self.kind)),
                })
                .collect(),
            Some(Node::Map(_)) => Err(format!("{}.{key}: expected a list", self.kind)),
        }
    }

    /// A map of names to values (custom headers), keys as written.
    pub fn map(&self, key: &str) -> Result<BTreeMap<String, String>, String> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Node::Map(entries)) => entries
                .iter()
                .map(|(k, v)| match v {
                    Node::Leaf(s) => Ok((k.clone(), s.clone())),
                    _ => Err(format!("{}.{key}.{k}: expected a value", self.kind)),
                })
                .collect(),
            Some(_) => Err(format!("{}.{key}: expected a map", self.kind)),
        }
    }

    /// A nested map's options (`ipStrategy`).
    pub fn nested(&self, key: &str, known: &'static [&'static str]) -> Result<Option<Options<'a>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(n) => Options::new(self.kind, n, known).map(Some),
        }
    }
}

/// Read a file an option names (`usersFile`, a PEM file): a regular file (not a FIFO or
/// a device that never ends), at most `max` bytes. `what` names the option in errors.
pub(crate) fn read_small_file(what: &str, path: &str, max: u64) -> Result<String, String> {
    use std::io::Read;
    let fail = |why: &str| format!("{what} {path}: {why}");
    let file = std::fs::File::open(path).map_err(|e| fail(&e.kind().to_string()))?;
    let meta = file.metadata().map_err(|e| fail(&e.kind().to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file"));
    }
    if meta.len() > max {
        return Err(fail(&format!("larger than {max} bytes")));
    }
    let mut text = String::new();
    file.take(max)
        .read_to_string(&mut text)
        .map_err(|e| fail(&e.kind().to_string()))?;
    Ok(text)
}

/// An option that is a PEM file or the PEM text itself (Traefik's FileOrContent): the
/// text when it holds a PEM block, else the file's contents (see [`read_small_file`]).
pub(crate) fn file_or_pem(what: &str, value: &str, max: u64) -> Result<Vec<u8>, String> {
    if value.contains("-----BEGIN") {
        Ok(value.as_bytes().to_vec())
    } else {
        read_small_file(what, value, max).map(String::into_bytes)
    }
}

/// The largest `usersFile` read (an htpasswd file of thousands of users is far smaller).
const MAX_USERS_FILE: u64 = 1024 * 1024;

/// The user lines of `basicAuth` and `digestAuth`: `users`, then the non-empty,
/// non-comment lines of `usersFile`, each with where it came from (`users[2]`,
/// `usersFile <path> line 7`) so that a message can say where without quoting it.
pub(crate) fn user_lines(kind: &str, o: &Options<'_>) -> Result<Vec<(String, String)>, String> {
    let mut lines: Vec<(String, String)> = o
        .list("users")?
        .into_iter()
        .enumerate()
        .map(|(i, l)| (format!("users[{i}]"), l))
        .collect();
    if let Some(path) = o.string("usersFile")?.filter(|p| !p.is_empty()) {
        let text = read_small_file(&format!("{kind}.usersFile"), &path, MAX_USERS_FILE)?;
        lines.extend(
            text.lines()
                .enumerate()
                .map(|(i, l)| (i, l.trim()))
                .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
                .map(|(i, l)| (format!("usersFile {path} line {}", i + 1), l.to_string())),
        );
    }
    if lines.is_empty() {
        return Err(format!("{kind}: no users (users or usersFile)"));
    }
    Ok(lines)
}
