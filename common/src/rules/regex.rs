//! Regexps as Traefik users write them: Go's RE2 syntax, compiled with Rust's `regex`
//! crate. The two agree on most of the language; where they differ, Go's meaning is kept
//! by rewriting the pattern first:
//!
//! - a `{` that does not start a repetition (`{2}`, `{2,}`, `{2,5}`) is a literal in Go and
//!   an error in Rust: `PathRegexp(`/{path:(css|js)}`)` (a Traefik v2 habit) compiles;
//! - `\Q...\E` quotes literally (Go has it, Rust does not);
//! - `\d`, `\w`, `\s` and `\b` are ASCII-only in Go (Unicode in Rust);
//! - inside a class, `[`, `&&`, `--` and `~~` are plain characters in Go and set syntax in
//!   Rust.
//!
//! Every regexp is bounded: at most [`REGEX_SIZE_LIMIT`] compiled (a label author can write
//! a thousand of them), and Go's limit of 1,000 on a repetition count.

use regex::{Regex, RegexBuilder};

/// The most memory one compiled rule regexp may take (the regex crate's default is 10 MiB).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Go's largest repetition count.
const MAX_REPEAT: u32 = 1000;

/// Compile a Go-syntax regexp within the bounds; the error says why it is refused.
pub fn compile_regex(pattern: &str) -> Result<Regex, String> {
    let translated = translate(pattern)?;
    RegexBuilder::new(&translated)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regexp: {e}"))
}

/// `{n}`, `{n,}` or `{n,m}` at the start of `rest` (which begins with `{`): its length.
fn repetition(rest: &[char]) -> Option<(usize, u32, Option<u32>)> {
    let close = rest.iter().position(|&c| c == '}')?;
    let inner: String = rest[1..close].iter().collect();
    let (min, max) = match inner.split_once(',') {
        None => (inner.as_str(), Some(inner.as_str())),
        Some((a, "")) => (a, None),
        Some((a, b)) => (a, Some(b)),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(min) || !max.is_none_or(digits) {
        return None;
    }
    let min: u32 = min.parse().unwrap_or(u32::MAX);
    let max = max.map(|m| m.parse().unwrap_or(u32::MAX));
    Some((close + 1, min, max))
}

/// Rewrite a Go regexp into Rust's syntax with the same meaning.
fn translate(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    // Right after `[` or `[^`: a `]` there is a literal.
    let mut class_start = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at_class_start = std::mem::take(&mut class_start);
        match c {
            '\\' => {
                let Some(&e) = chars.get(i + 1) else {
                    return Err("invalid regexp: trailing backslash".into());
                };
                i += 2;
                match (e, in_class) {
                    ('Q', _) => {
                        let mut literal = String::new();
                        while i < chars.len() && !(chars[i] == '\\' && chars.get(i + 1) == Some(&'E')) {
                            literal.push(chars[i]);
                            i += 1;
                        }
                        i += 2;
                        if in_class {
                            for ch in literal.chars() {
                                out.push_str(&regex::escape(&ch.to_string()));
                            }
                        } else {
                            out.push_str(&regex::escape(&literal));
                        }
                        continue;
                    }
                    ('d', true) => out.push_str("0-9"),
                    ('d', false) => out.push_str("[0-9]"),
                    ('D', _) => out.push_str("[^0-9]"),
                    ('w', true) => out.push_str("0-9A-Za-z_"),
                    ('w', false) => out.push_str("[0-9A-Za-z_]"),
                    ('W', _) => out.push_str("[^0-9A-Za-z_]"),
                    ('s', true) => out.push_str("\\t\\n\\x0C\\r "),
                    ('s', false) => out.push_str("[\\t\\n\\x0C\\r ]"),
                    ('S', _) => out.push_str("[^\\t\\n\\x0C\\r ]"),
                    ('b', false) => out.push_str("(?-u:\\b)"),
                    ('B', false) => out.push_str("(?-u:\\B)"),
                    (e, _) => {
                        out.push('\\');
                        out.push(e);
                    }
                }
                continue;
            }
            '[' if !in_class => {
                in_class = true;
                class_start = true;
                out.push('[');
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
            }
            ']' if in_class && at_class_start => out.push_str("\\]"),
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            // A POSIX class (`[[:alpha:]]`) is the same in both.
            '[' if chars.get(i + 1) == Some(&':') => {
                let end = chars[i..]
                    .windows(2)
                    .position(|w| w == [':', ']'])
                    .map(|p| i + p + 2)
                    .unwrap_or(chars.len());
                out.extend(&chars[i..end]);
                i = end;
                continue;
            }
            '[' | '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '-' if in_class && chars.get(i + 1) == Some(&'-') => out.push_str("\\-"),
            '{' if !in_class => match repetition(&chars[i..]) {
                Some((len, min, max)) => {
                    if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
                        return Err(format!("invalid regexp: a repetition count above {MAX_REPEAT}"));
                    }
                    out.extend(&chars[i..i + len]);
                    i += len;
                    continue;
                }
                None => out.push_str("\\{"),
            },
            '}' if !in_class => out.push_str("\\}"),
            c => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        compile_regex(pattern)
            .unwrap_or_else(|e| panic!("{pattern}: {e}"))
            .is_match(text)
    }

    #[test]
    fn go_meanings_are_kept() {
        // Traefik's test tables: a `{` that is no repetition is a literal.
        assert!(m("/{path:(css|js)}", "/{path:css}"));
        assert!(!m("/{path:(css|js)}", "/css"));
        assert!(m("http{secure:s?}", "http{secure:s}"));
        assert!(m("{value:(traefik|nginx)}", "{value:traefik}"));
        assert!(m("^a{2}$", "aa") && !m("^a{2}$", "a{2}"));
        assert!(m("^a{2,}$", "aaa") && m("^a{1,2}$", "aa"));
        // ASCII classes, as in Go.
        assert!(m(r"^/\d+$", "/123"));
        assert!(!m(r"^/\d+$", "/\u{663}"), "an Arabic-Indic digit is not \\d in Go");
        assert!(m(r"^\w+$", "abc_9") && !m(r"^\w+$", "é"));
        assert!(m(r"^[\w.-]+$", "a.b-c") && !m(r"^[\d]$", "\u{663}"));
        assert!(m(r"^\S+\s\S+$", "a b"));
        assert!(m(r"\bcat\b", "a cat!"));
        // \Q...\E quotes.
        assert!(m(r"^\Q*.example.com\E$", "*.example.com") && !m(r"^\Q*.example.com\E$", "a.example.com"));
        // Class characters Rust reads as set operations are plain in Go.
        assert!(m("^[a&&b]+$", "a&&b") && m("^[[]$", "[") && m("^[]a]$", "]") && m("^[a~~]$", "~"));
        assert!(m("^[[:alpha:]]+$", "abc"));
        assert!(m("^x}$", "x}"));
    }

    #[test]
    fn bounds_and_errors() {
        assert!(compile_regex("a{1001}").unwrap_err().contains("1000"));
        assert!(compile_regex("(").is_err());
        assert!(compile_regex("a\\").is_err());
        assert!(
            compile_regex(r"\w{200}\w{200}\w{200}").is_ok(),
            "ASCII classes are small"
        );
        assert!(compile_regex(r"\pL{1000}\pL{1000}").unwrap_err().contains("regexp"));
    }
}
