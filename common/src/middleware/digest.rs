//! `digestAuth`: HTTP Digest access authentication (RFC 7616 with MD5 and `qop=auth`, as
//! Traefik does it through go-http-auth). Users are `user:realm:HA1` lines, as
//! `htdigest` writes them, from `users` and `usersFile`; `realm` (default `traefik`),
//! `removeHeader`, `headerField`.
//!
//! A challenge gives a fresh nonce (from the TLS provider's secure random source); an
//! answer is accepted only for a nonce this middleware gave, with a nonce count above the
//! last one seen for it (a replayed answer is refused), for the request's own URI, and its
//! digest is compared in constant time. At most [`MAX_NONCES`] nonces are remembered; the
//! oldest go first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::options::Options;
use super::{Reply, Req, Step};
use crate::tree::Node;

/// The most nonces remembered at once (go-http-auth keeps 1,000 and a tolerance).
pub const MAX_NONCES: usize = 1024;

#[derive(Debug)]
pub struct DigestAuth {
    /// `(user, realm, HA1 in lowercase hex)`.
    users: Vec<(String, String, String)>,
    realm: String,
    opaque: String,
    remove_header: bool,
    header_field: Option<HeaderName>,
    /// Nonces given, with the last nonce count used and when given.
    nonces: Mutex<HashMap<String, (u64, Instant)>>,
}

impl DigestAuth {
    pub fn parse(node: &Node) -> Result<DigestAuth, String> {
        let o = Options::new(
            "digestAuth",
            node,
            &["users", "usersFile", "realm", "removeHeader", "headerField"],
        )?;
        let lines = super::options::user_lines("digestAuth", &o)?;
        let users = lines
            .iter()
            .map(|(at, l)| {
                let mut parts = l.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(u), Some(r), Some(h))
                        if !u.is_empty() && h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) =>
                    {
                        Ok((u.to_string(), r.to_string(), h.to_ascii_lowercase()))
                    }
                    _ => Err(format!(
                        "digestAuth: {at} is not user:realm:md5-hex (as htdigest writes it)"
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header_field = match o.string("headerField")?.filter(|h| !h.is_empty()) {
            Some(h) => {
                Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("digestAuth.headerField: `{h}`"))?)
            }
            None => None,
        };
        let realm = o
            .string("realm")?
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "traefik".into());
        if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
            return Err(format!(
                "digestAuth.realm: `{realm}` may not hold quotes or control characters"
            ));
        }
        Ok(DigestAuth {
            users,
            realm,
            opaque: random_hex()?,
            remove_header: o.bool("removeHeader")?,
            header_field,
            nonces: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        match self.check(req) {
            Answer::Good(user) => {
                if self.remove_header {
                    req.headers.remove(header::AUTHORIZATION);
                }
                if let (Some(h), Ok(v)) = (&self.header_field, HeaderValue::from_str(&user)) {
                    req.headers.insert(h.clone(), v);
                }
                Step::Next
            }
            // A right answer to a nonce forgotten or already used: the client only needs
            // a new nonce, not the user's password again (RFC 7616 `stale`).
            Answer::Stale => self.challenge(true),
            Answer::Bad => self.challenge(false),
        }
    }

    /// Whether the request's `Authorization` answers one of our challenges.
    fn check(&self, req: &Req<'_>) -> Answer {
        self.check_inner(req).unwrap_or(Answer::Bad)
    }

    fn check_inner(&self, req: &Req<'_>) -> Option<Answer> {
        let value = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let p = params(rest)?;
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let (user, realm, nonce, uri, response) = (
            get("username")?,
            get("realm")?,
            get("nonce")?,
            get("uri")?,
            get("response")?,
        );
        // Users are looked up in this middleware's realm only, whatever a shared
        // usersFile holds for other realms.
        if realm != self.realm || get("opaque") != Some(self.opaque.as_str()) || get("qop") != Some("auth") {
            return None;
        }
        if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
            return None;
        }
        // The answer is for this request's URI (its path and query, as sent).
        let target = match &req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        if uri != target {
            return None;
        }
        let nc_text = get("nc")?;
        let nc = u64::from_str_radix(nc_text, 16).ok()?;
        let cnonce = get("cnonce")?;
        let ha1 = self
            .users
            .iter()
            .find(|(u, r, _)| u == user && *r == self.realm)
            .map(|(_, _, h)| h.as_str());
        // The same work for an unknown user.
        let ha1_or_decoy = ha1.unwrap_or("00000000000000000000000000000000");
        let ha2 = md5_hex(&format!("{}:{uri}", req.method.as_str()));
        let expected = md5_hex(&format!("{ha1_or_decoy}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}"));
        let matches: bool = expected
            .as_bytes()
            .ct_eq(response.to_ascii_lowercase().as_bytes())
            .into();
        if !matches || ha1.is_none() {
            return None;
        }
        // A nonce we gave, with a count above the last one used with it; a use keeps it
        // among the most recent (the least recently used go first).
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = nonces.get_mut(nonce) else {
            return Some(Answer::Stale);
        };
        if nc <= entry.0 {
            return Some(Answer::Stale);
        }
        *entry = (nc, Instant::now());
        Some(Answer::Good(user.to_string()))
    }

    /// 401 with a fresh nonce (`stale`: the answer was right but its nonce spent).
    fn challenge(&self, stale: bool) -> Step {
        let mut r = Reply::new(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
        let Ok(nonce) = random_hex() else {
            return Step::Reply(r);
        };
        {
            let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
            if nonces.len() >= MAX_NONCES {
                // The least recently used eighth goes.
                let mut by_age: Vec<(String, Instant)> = nonces.iter().map(|(k, v)| (k.clone(), v.1)).collect();
                by_age.sort_by_key(|(_, t)| *t);
                for (k, _) in by_age.into_iter().take(MAX_NONCES / 8) {
                    nonces.remove(&k);
                }
            }
            nonces.insert(nonce.clone(), (0, Instant::now()));
        }
        let challenge = format!(
            "Digest realm=\"{}\", nonce=\"{nonce}\", opaque=\"{}\", algorithm=\"MD5\", qop=\"auth\"{}",
            self.realm,
            self.opaque,
            if stale { ", stale=true" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers.push((header::WWW_AUTHENTICATE, v));
        }
        Step::Reply(r)
    }
}

/// What an `Authorization` header is worth.
enum Answer {
    Good(String),
    /// Right, but for a nonce forgotten or already used at that count.
    Stale,
    Bad,
}

/// `name=value` pairs of an `Authorization: Digest` header, values quoted or not; `None`
/// when malformed. At most 32 pairs.
fn params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if out.len() >= 32 {
            return None;
        }
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name.trim().to_string(), value));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 bytes from the TLS provider's secure random source, in hex.
fn random_hex() -> Result<String, String> {
    let mut buf = [0u8; 16];
    crate::tls::provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| "digestAuth: no secure random source".to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::{HeaderMap, Method};

    use super::*;
    use crate::middleware::Spec;
    use crate::middleware::testing::{node, run};

    /// htdigest's line for test:traefik:test.
    const USER: &str = "test:traefik:a2688e031edb4be6a3797f3882655c05";

    fn nonce_and_opaque(step: &Step) -> (String, String) {
        let Step::Reply(r) = step else { panic!("allowed") };
        let v = r.headers[0].1.to_str().unwrap().to_string();
        let field = |k: &str| {
            let start = v.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
            v[start..start + v[start..].find('"').unwrap()].to_string()
        };
        (field("nonce"), field("opaque"))
    }

    fn answer(nonce: &str, opaque: &str, nc: &str, uri: &str, password: &str) -> String {
        let ha1 = md5_hex(&format!("test:traefik:{password}"));
        let ha2 = md5_hex(&format!("GET:{uri}"));
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}"));
        format!(
            r#"Digest username="test", realm="traefik", nonce="{nonce}", uri="{uri}", response="{response}", opaque="{opaque}", qop=auth, nc={nc}, cnonce="abc", algorithm=MD5"#
        )
    }

    #[test]
    fn challenge_answer_and_replay() {
        let spec = Spec::DigestAuth(Box::new(
            DigestAuth::parse(&node(&[("users", USER), ("headerField", "X-User")])).unwrap(),
        ));
        let mut h = HeaderMap::new();
        let (step, _) = run(&spec, &Method::GET, false, "a", "/x?y=1", &mut h, "127.0.0.1");
        let (nonce, opaque) = nonce_and_opaque(&step);
        assert_eq!(nonce.len(), 32);

        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            answer(&nonce, &opaque, "00000001", "/x?y=1", "test").parse().unwrap(),
        );
        let (step, _) = run(&spec, &Method::GET, false, "a", "/x?y=1", &mut h, "127.0.0.1");
        assert_eq!(step, Step::Next);
        assert_eq!(h["x-user"], "test");

        // The same answer again (same nonce count): refused, a new challenge.
        let mut again = HeaderMap::new();
        again.insert(
            "authorization",
            answer(&nonce, &opaque, "00000001", "/x?y=1", "test").parse().unwrap(),
        );
        let (step, _) = run(&spec, &Method::GET, false, "a", "/x?y=1", &mut again, "127.0.0.1");
        assert!(matches!(step, Step::Reply(_)));
        // The next count is fine.
        let mut next = HeaderMap::new();
        next.insert(
            "authorization",
            answer(&nonce, &opaque, "00000002", "/x?y=1", "test").parse().unwrap(),
        );
        let (step, _) = run(&spec, &Method::GET, false, "a", "/x?y=1", &mut next, "127.0.0.1");
        assert_eq!(step, Step::Next);

        // A wrong password, another URI, an unknown nonce: refused.
        for (nonce, uri, password) in [
            (nonce.as_str(), "/x?y=1", "nope"),
            (nonce.as_str(), "/other", "test"),
            ("0123456789abcdef0123456789abcdef", "/x?y=1", "test"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                "authorization",
                answer(nonce, &opaque, "00000009", uri, password).parse().unwrap(),
            );
            let (step, _) = run(&spec, &Method::GET, false, "a", "/x?y=1", &mut h, "127.0.0.1");
            assert!(matches!(step, Step::Reply(_)), "{nonce} {uri} {password}");
        }
    }

    #[test]
    fn users_of_other_realms_are_not_accepted() {
        // test:admin:test, in a file shared with another middleware.
        let other = format!("test:admin:{}", md5_hex("test:admin:test"));
        let spec = Spec::DigestAuth(Box::new(DigestAuth::parse(&node(&[("users", &other)])).unwrap()));
        let mut h = HeaderMap::new();
        let (step, _) = run(&spec, &Method::GET, false, "a", "/", &mut h, "127.0.0.1");
        let (nonce, opaque) = nonce_and_opaque(&step);
        let ha1 = md5_hex("test:admin:test");
        let ha2 = md5_hex("GET:/");
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
        let mut h = HeaderMap::new();
        let value = format!(
            r#"Digest username="test", realm="admin", nonce="{nonce}", uri="/", response="{response}", opaque="{opaque}", qop=auth, nc=00000001, cnonce="abc""#
        );
        h.insert("authorization", value.parse().unwrap());
        let (step, _) = run(&spec, &Method::GET, false, "a", "/", &mut h, "127.0.0.1");
        assert!(
            matches!(step, Step::Reply(_)),
            "a user of realm admin passed realm traefik"
        );
    }

    #[test]
    fn nonces_are_bounded() {
        let d = DigestAuth::parse(&node(&[("users", USER)])).unwrap();
        for _ in 0..(MAX_NONCES * 2) {
            let _ = d.challenge(false);
        }
        assert!(d.nonces.lock().unwrap().len() <= MAX_NONCES);
    }

    #[test]
    fn bad_options_and_headers() {
        assert!(DigestAuth::parse(&node(&[("users", "test:traefik")])).is_err());
        assert!(DigestAuth::parse(&node(&[("users", "test:traefik:nothex")])).is_err());
        assert!(DigestAuth::parse(&node(&[])).is_err());
        assert!(DigestAuth::parse(&node(&[("users", USER), ("realm", "a\"b")])).is_err());
        assert!(params(r#"a="unterminated"#).is_none());
        assert_eq!(
            params(r#"a="x\"y", b=2"#).unwrap(),
            vec![("a".into(), "x\"y".into()), ("b".into(), "2".into())]
        );
    }
}
