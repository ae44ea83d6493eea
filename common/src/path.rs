//! Request paths as Traefik v3 takes them, before anything looks at them: percent-escapes
//! of unreserved characters decoded and the rest upper-cased (`normalizePath`), dot
//! segments and duplicate slashes removed (`sanitizePath`, on by default), encoded
//! characters an entrypoint refuses refused (`encodedCharacters`), and the *routing path*
//! rules match against: decoded, except for the reserved characters whose encoding
//! changes a path's meaning (`%2F` stays `%2F`).
//!
//! The cleaned path is also what goes upstream, so a router, its middlewares and the app
//! agree on which resource was asked for: `/public/../admin` and `/public/%2e%2e/admin`
//! are `/admin` for all three, and never match `PathPrefix(`/public`)`.
//!
//! Berth goes one step further than Traefik, where Traefik forwards an ambiguity: a path
//! whose *decoded* form still holds a `.` or `..` segment (`/a/..%2Fadmin`, `/a\..\b`) is
//! refused, because a backend that decodes before it resolves would reach what the
//! router never matched. With `sanitizePath` off, paths go through as sent (Traefik's
//! "not safe" setting), only normalized.

use std::borrow::Cow;

/// Which encoded characters an entrypoint accepts in a path (Traefik's
/// `http.encodedCharacters`). None by default, as Traefik's current documentation says
/// (Traefik v3.6 allowed every one): an escape the proxy keeps and the app decodes is a
/// path the router never matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedCharacters {
    pub allow_encoded_slash: bool,
    pub allow_encoded_back_slash: bool,
    pub allow_encoded_null_character: bool,
    pub allow_encoded_semicolon: bool,
    pub allow_encoded_percent: bool,
    pub allow_encoded_question_mark: bool,
    pub allow_encoded_hash: bool,
}

impl Default for EncodedCharacters {
    fn default() -> Self {
        EncodedCharacters::REFUSE_ALL
    }
}

impl EncodedCharacters {
    /// Every encoded character refused (the default).
    pub const REFUSE_ALL: EncodedCharacters = EncodedCharacters {
        allow_encoded_slash: false,
        allow_encoded_back_slash: false,
        allow_encoded_null_character: false,
        allow_encoded_semicolon: false,
        allow_encoded_percent: false,
        allow_encoded_question_mark: false,
        allow_encoded_hash: false,
    };

    /// Every encoded character allowed (Traefik v3.6's default).
    pub const ALLOW_ALL: EncodedCharacters = EncodedCharacters {
        allow_encoded_slash: true,
        allow_encoded_back_slash: true,
        allow_encoded_null_character: true,
        allow_encoded_semicolon: true,
        allow_encoded_percent: true,
        allow_encoded_question_mark: true,
        allow_encoded_hash: true,
    };

    /// The upper-case escape of each character with whether it is allowed.
    fn table(&self) -> [(&'static str, bool); 7] {
        [
            ("%2F", self.allow_encoded_slash),
            ("%5C", self.allow_encoded_back_slash),
            ("%00", self.allow_encoded_null_character),
            ("%3B", self.allow_encoded_semicolon),
            ("%25", self.allow_encoded_percent),
            ("%3F", self.allow_encoded_question_mark),
            ("%23", self.allow_encoded_hash),
        ]
    }
}

/// An entrypoint's path settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Traefik's `http.sanitizePath` (default true).
    pub sanitize: bool,
    pub encoded: EncodedCharacters,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            sanitize: true,
            encoded: EncodedCharacters::default(),
        }
    }
}

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a `%` in the path is not followed by two hex digits")]
    BadEscape,
    #[error("the path holds `{0}`, which this entrypoint refuses")]
    Denied(&'static str),
    #[error("the decoded path has a dot segment the cleaned one does not show")]
    Ambiguous,
}

/// RFC 3986 section 2.3.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// `normalizePath`: `%XX` of an unreserved character decoded, every other escape's hex
/// upper-cased; a `%` without two hex digits is an error.
fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            // Copy the run up to the next `%` whole (it may hold UTF-8).
            let next = path[i..].find('%').map_or(b.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) else {
            return Err(PathError::BadEscape);
        };
        let c = h * 16 + l;
        if unreserved(c) {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(b[i + 1].to_ascii_uppercase()));
            out.push(char::from(b[i + 2].to_ascii_uppercase()));
        }
        i += 3;
    }
    Ok(Cow::Owned(out))
}

/// `sanitizePath` (Go's `path.Join` on the escaped path): `.` and empty segments dropped,
/// `..` removes the segment before it and never climbs above the root, one trailing slash
/// kept when the path had one. `None` when the path is clean already.
fn sanitize(path: &str) -> Option<String> {
    let clean = !path.contains("//") && !path.split('/').any(|s| s == "." || s == "..") && path.starts_with('/');
    if clean {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (path.ends_with('/') && !out.ends_with('/')) {
        out.push('/');
    }
    Some(out)
}

/// Percent-decode every escape (invalid ones were refused by [`normalize`] already).
fn decode_all(path: &str) -> Cow<'_, str> {
    crate::percent::decode(path)
}

/// Whether a decoded path, split at `/` and `\` (which some servers take for `/`), has a
/// `.` or `..` segment.
fn has_dot_segment(decoded: &str) -> bool {
    decoded.split(['/', '\\']).any(|s| s == "." || s == "..")
}

/// The path to route, run middlewares on and send upstream, from the path as received.
/// `*` (the `OPTIONS *` target) and other paths that do not start with `/` are kept.
pub fn clean<'a>(path: &'a str, policy: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let normalized = normalize(path)?;
    let cleaned = match policy.sanitize.then(|| sanitize(&normalized)).flatten() {
        Some(s) => Cow::Owned(s),
        None => normalized,
    };
    if cleaned.contains('%') {
        for (escape, allowed) in policy.encoded.table() {
            if !allowed && cleaned.contains(escape) {
                return Err(PathError::Denied(escape));
            }
        }
    }
    if policy.sanitize && (cleaned.contains('%') || cleaned.contains('\\')) && has_dot_segment(&decode_all(&cleaned)) {
        return Err(PathError::Ambiguous);
    }
    Ok(match cleaned {
        Cow::Borrowed(_) => Cow::Borrowed(path),
        Cow::Owned(s) if s == path => Cow::Borrowed(path),
        Cow::Owned(s) => Cow::Owned(s),
    })
}

/// The escapes whose decoding would change what the path means (Traefik's list in
/// `withRoutingPath`): they stay encoded in the routing path.
const RESERVED: &[u8] = b":/?#[]@!$&'()*+,;=%";

/// The path rules match against: a [`clean`] path with every escape decoded except the
/// reserved ones, so `PathPrefix(`/a/b`)` does not match `/a%2Fb`, while `/a%20b` is
/// `/a b`. Bytes that are not UTF-8 become U+FFFD.
pub fn routing_path(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
        {
            let c = h * 16 + l;
            if RESERVED.contains(&c) {
                out.extend_from_slice(&[b'%', b[i + 1].to_ascii_uppercase(), b[i + 2].to_ascii_uppercase()]);
            } else {
                out.push(c);
            }
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sanitizing alone, as Traefik's tables test it: every encoded character allowed.
    fn cleaned(p: &str) -> Result<String, PathError> {
        let open = PathPolicy {
            encoded: EncodedCharacters::ALLOW_ALL,
            ..PathPolicy::default()
        };
        clean(p, &open).map(Cow::into_owned)
    }

    #[test]
    fn traefiks_sanitize_table() {
        // From Traefik's TestSanitizePath and TestPathOperations.
        for (input, want) in [
            ("/b", "/b"),
            ("/b/", "/b/"),
            ("/../../b/", "/b/"),
            ("/../../b", "/b"),
            ("/a/b/..", "/a"),
            ("/a/b/../", "/a/"),
            ("/a/../../b", "/b"),
            ("/..///b///", "/b/"),
            ("/a/../b", "/b"),
            ("/a/./b", "/a/b"),
            ("/a//b", "/a/b"),
            ("/a/%2E%2E/%2E%2E/b/", "/b/"),
            ("/a/%2e%2e/b", "/b"),
            ("/foo/bar//", "/foo/bar/"),
            ("/", "/"),
            ("//", "/"),
            ("/a/%7Eb", "/a/~b"),
            ("/a/%2fb", "/a/%2Fb"),
            ("/%c3%a4", "/%C3%A4"),
            ("*", "*"),
        ] {
            assert_eq!(cleaned(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn the_public_admin_tricks_are_cleaned_or_refused() {
        assert_eq!(cleaned("/public/../admin/x").unwrap(), "/admin/x");
        assert_eq!(cleaned("/public/%2e%2e/admin/x").unwrap(), "/admin/x");
        assert_eq!(cleaned("/public/%2E%2E/admin/x").unwrap(), "/admin/x");
        // What a decoding backend would still resolve: refused.
        assert_eq!(cleaned("/public/..%2Fadmin/x"), Err(PathError::Ambiguous));
        assert_eq!(cleaned("/public/%2e%2e%2fadmin/x"), Err(PathError::Ambiguous));
        assert_eq!(cleaned("/public\\..\\admin"), Err(PathError::Ambiguous));
        assert_eq!(cleaned("/public/..%5Cadmin"), Err(PathError::Ambiguous));
        // Double encoding is one level more than any server decodes: kept as it is.
        assert_eq!(cleaned("/public/%252e%252e/admin").unwrap(), "/public/%252e%252e/admin");
        assert_eq!(cleaned("/a%2Fb").unwrap(), "/a%2Fb");
        assert_eq!(cleaned("/bad%zz"), Err(PathError::BadEscape));
        assert_eq!(cleaned("/bad%"), Err(PathError::BadEscape));
        assert_eq!(cleaned("/bad%4"), Err(PathError::BadEscape));
    }

    #[test]
    fn encoded_characters_are_refused_as_the_entrypoint_says() {
        let strict = PathPolicy::default();
        let open = PathPolicy {
            encoded: EncodedCharacters::ALLOW_ALL,
            ..PathPolicy::default()
        };
        let slash_only = PathPolicy {
            encoded: EncodedCharacters {
                allow_encoded_slash: true,
                ..EncodedCharacters::REFUSE_ALL
            },
            ..PathPolicy::default()
        };
        for (p, esc) in [
            ("/a%2fb", "%2F"),
            ("/a%5Cb", "%5C"),
            ("/a%00", "%00"),
            ("/a%3b", "%3B"),
            ("/a%25", "%25"),
            ("/a%3F", "%3F"),
            ("/a%23", "%23"),
        ] {
            assert_eq!(clean(p, &strict), Err(PathError::Denied(esc)), "{p} by default");
            assert!(clean(p, &open).is_ok(), "{p} when allowed");
            assert_eq!(
                clean(p, &slash_only).is_ok(),
                esc == "%2F",
                "{p} with only the slash allowed"
            );
        }
        assert!(clean("/a%20b", &strict).is_ok());
    }

    #[test]
    fn unsanitized_paths_go_through_normalized() {
        let off = PathPolicy {
            sanitize: false,
            encoded: EncodedCharacters::ALLOW_ALL,
        };
        assert_eq!(clean("/a/../b", &off).unwrap(), "/a/../b");
        assert_eq!(clean("/a/%2e%2e/b", &off).unwrap(), "/a/../b");
        assert_eq!(clean("/a/..%2Fb", &off).unwrap(), "/a/..%2Fb");
    }

    #[test]
    fn the_routing_path_keeps_reserved_escapes() {
        // Traefik's TestRoutingPath.
        assert_eq!(routing_path("/foo%2Fbar"), "/foo%2Fbar");
        assert_eq!(routing_path("/foo%20bar%2Fbaz%23qux"), "/foo bar%2Fbaz%23qux");
        assert_eq!(routing_path("/foo%2fbar"), "/foo%2Fbar");
        assert_eq!(routing_path("/%C3%A4"), "/ä");
        assert_eq!(routing_path("/%FF"), "/\u{fffd}");
        assert_eq!(routing_path("/plain"), "/plain");
    }
}
