//! Sticky sessions (`loadBalancer.sticky.cookie`): a cookie that sends a client back to
//! the server that answered it first, as Traefik does it.
//!
//! The cookie's value names a server without revealing its address: Traefik's hash of the
//! server URL (64-bit FNV-1, in hex), so every gateway replica, and a Traefik replica
//! beside Berth during a migration, reads the same cookie the same way. A client without
//! the cookie, or whose server is gone or unhealthy, is balanced as usual and given the
//! cookie of the server that answers.

use http::{HeaderMap, HeaderValue};

use crate::config::{SameSite, StickyCookie};

/// One service's sticky cookie, ready to read and write.
#[derive(Debug, Clone)]
pub struct Sticky {
    name: String,
    /// `; Path=/; HttpOnly; ...`, rendered once.
    attributes: String,
    /// The cookie value per endpoint, parallel to the service's endpoints.
    values: Vec<String>,
    /// The endpoints' URLs, for Traefik v2's cookies, which hold the URL itself.
    urls: Vec<String>,
}

impl Sticky {
    /// The cookie for `service`'s endpoints, given by their URLs in balancing order.
    pub fn new<'a>(cfg: &StickyCookie, service: &str, urls: impl IntoIterator<Item = &'a str>) -> Sticky {
        let name = cfg.name.clone().unwrap_or_else(|| default_name(service));
        let mut attributes = format!("; Path={}", cfg.path.as_deref().unwrap_or("/"));
        if let Some(d) = &cfg.domain {
            attributes.push_str("; Domain=");
            attributes.push_str(d);
        }
        match cfg.max_age {
            0 => {}
            n if n < 0 => attributes.push_str("; Max-Age=0"),
            n => attributes.push_str(&format!("; Max-Age={n}")),
        }
        if cfg.http_only {
            attributes.push_str("; HttpOnly");
        }
        if cfg.secure {
            attributes.push_str("; Secure");
        }
        match cfg.same_site {
            Some(SameSite::None) => attributes.push_str("; SameSite=None"),
            Some(SameSite::Lax) => attributes.push_str("; SameSite=Lax"),
            Some(SameSite::Strict) => attributes.push_str("; SameSite=Strict"),
            None => {}
        }
        let urls: Vec<String> = urls.into_iter().map(str::to_string).collect();
        Sticky {
            name,
            attributes,
            values: urls.iter().map(|u| value(u)).collect(),
            urls,
        }
    }

    /// Without Traefik v2's cookies that hold the address itself (the mesh has no v2
    /// cookies to honour, and a client could otherwise try addresses).
    pub fn hashed_only(mut self) -> Sticky {
        self.urls.clear();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoint the request's cookie names, if it still exists. Traefik v2 wrote the
    /// server URL itself as the value; such a cookie is still understood.
    pub fn preferred(&self, headers: &HeaderMap) -> Option<usize> {
        let v = crate::cookie::find(headers, &self.name)?;
        self.values
            .iter()
            .position(|x| x == v)
            .or_else(|| self.urls.iter().position(|u| u == v))
    }

    /// The `Set-Cookie` that sends the client back to `endpoint`.
    pub fn set_cookie(&self, endpoint: usize) -> Option<HeaderValue> {
        let value = self.values.get(endpoint)?;
        HeaderValue::from_str(&format!("{}={value}{}", self.name, self.attributes)).ok()
    }
}

/// Traefik's cookie name for a service that does not choose one: `_` and the first five hex
/// digits of the SHA-1 of `_TRAEFIK_BACKEND_` and the service's name.
pub fn default_name(service: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(format!("_TRAEFIK_BACKEND_{service}").as_bytes());
    let mut name = String::from("_");
    for b in &digest[..3] {
        name.push_str(&format!("{b:02x}"));
    }
    // Go's `fmt.Sprintf("_%x", sum)[:6]`: the underscore and five hex digits.
    name.truncate(6);
    name
}

/// The cookie value for a server: the 64-bit FNV-1 hash of its URL in lower-case hex
/// without leading zeros (Go's `strconv.FormatUint(fnv.New64(url), 16)`, as Traefik).
pub fn value(url: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in url.bytes() {
        h = h.wrapping_mul(PRIME);
        h ^= u64::from(b);
    }
    format!("{h:x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;

    #[test]
    fn fnv1_matches_the_reference_vectors() {
        // FNV-1 64 test vectors (the empty string is the offset basis; "a" from the
        // reference table of Fowler, Noll and Vo).
        assert_eq!(value(""), "cbf29ce484222325");
        assert_eq!(value("a"), "af63bd4c8601b7be");
    }

    #[test]
    fn the_value_does_not_reveal_the_address() {
        let v = value("http://10.0.1.17:8080");
        assert!(!v.contains("10.0.1.17") && !v.contains("8080"), "{v}");
        assert_ne!(v, value("http://10.0.1.18:8080"));
    }

    #[test]
    fn the_default_name_is_an_underscore_and_six_hex_digits() {
        let n = default_name("whoami@ecs");
        assert_eq!(n.len(), 6);
        // Traefik's own test: `GenerateName("backend") == "_76eb3"`.
        assert_eq!(default_name("backend"), "_76eb3");
        assert!(n.starts_with('_') && n[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(n, default_name("other@ecs"));
        assert!(crate::cookie::is_name(&n));
    }

    #[test]
    fn renders_attributes_in_the_order_go_writes_them() {
        let cfg = StickyCookie {
            name: Some("lb".into()),
            secure: true,
            http_only: true,
            same_site: Some(SameSite::Strict),
            max_age: 60,
            path: Some("/app".into()),
            domain: Some("example.com".into()),
        };
        let s = Sticky::new(&cfg, "svc@file", ["http://a:1"]);
        let v = s.set_cookie(0).expect("a header");
        assert_eq!(
            v.to_str().unwrap_or_default(),
            format!(
                "lb={}; Path=/app; Domain=example.com; Max-Age=60; HttpOnly; Secure; SameSite=Strict",
                value("http://a:1")
            )
        );
        let neg = Sticky::new(
            &StickyCookie {
                max_age: -1,
                ..StickyCookie::default()
            },
            "svc@file",
            ["http://a:1"],
        );
        assert!(
            neg.set_cookie(0)
                .expect("a header")
                .to_str()
                .unwrap_or_default()
                .ends_with("; Path=/; Max-Age=0")
        );
    }

    #[test]
    fn reads_its_own_values_and_traefik_v2_urls() {
        let urls = ["http://a:1", "http://b:2"];
        let s = Sticky::new(&StickyCookie::default(), "svc@file", urls);
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("x=1; {}={}", s.name(), value("http://b:2"))).unwrap(),
        );
        assert_eq!(s.preferred(&h), Some(1));
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("{}=http://a:1", s.name())).unwrap(),
        );
        assert_eq!(s.preferred(&h), Some(0));
        h.insert(COOKIE, HeaderValue::from_str(&format!("{}=ffff", s.name())).unwrap());
        assert_eq!(s.preferred(&h), None);
    }
}
