//! Cookies (RFC 6265), as far as a proxy reads and writes them: finding one by name in a
//! request's `Cookie` headers, the name of a `Set-Cookie`, and what a name or an
//! attribute value may hold, so a configured cookie can never split a header.

use http::HeaderMap;
use http::header::COOKIE;

/// Longest cookie name accepted from configuration.
const MAX_NAME: usize = 256;

/// A cookie name: an RFC 9110 token.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(is_tchar)
}

/// An attribute value (`Path`, `Domain`): any visible character or space but `;`
/// (RFC 6265 `av-octet`), at most 1 KiB.
pub fn is_attribute_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 1024 && v.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b';')
}

/// `name` with every character a cookie name may not hold replaced by `_` (Traefik's
/// `cookie.GetName`), cut to [`MAX_NAME`] bytes.
pub fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii() && is_tchar(c as u8) { c } else { '_' })
        .take(MAX_NAME)
        .collect()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The value of the cookie `name` in the request's `Cookie` headers (the first one when
/// there are several), without the optional double quotes.
pub fn find<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
            })
        })
}

/// The name of the cookie a `Set-Cookie` value sets.
pub fn set_cookie_name(value: &str) -> Option<&str> {
    let pair = value.split(';').next()?;
    let (name, _) = pair.split_once('=')?;
    let name = name.trim();
    is_name(name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn finds_a_cookie_among_several_headers_and_pairs() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; b=\"two\""));
        h.append(COOKIE, HeaderValue::from_static("c=3;d"));
        assert_eq!(find(&h, "a"), Some("1"));
        assert_eq!(find(&h, "b"), Some("two"));
        assert_eq!(find(&h, "c"), Some("3"));
        assert_eq!(find(&h, "d"), None);
        assert_eq!(find(&h, "A"), None, "names are case-sensitive");
    }

    #[test]
    fn names_and_values_that_could_split_a_header_are_refused() {
        assert!(is_name("_3f2a1b"));
        assert!(!is_name("a b"));
        assert!(!is_name("a;b"));
        assert!(!is_name(""));
        assert!(!is_name(&"x".repeat(300)));
        assert!(is_attribute_value("/app"));
        assert!(!is_attribute_value("/; Domain=evil"));
        assert!(!is_attribute_value("/\r\nX: y"));
    }

    #[test]
    fn set_cookie_names() {
        assert_eq!(set_cookie_name("session=abc; Path=/; HttpOnly"), Some("session"));
        assert_eq!(set_cookie_name(" id = 1"), Some("id"));
        assert_eq!(set_cookie_name("novalue"), None);
    }
}
