//! `basicAuth`: users in htpasswd form (bcrypt `$2y$`/`$2a$`/`$2b$`, SHA1 `{SHA}`, Apache
//! MD5 `$apr1$`), from `users` and `usersFile`; `realm`, `removeHeader`, `headerField`.
//! Hashes are compared in constant time; an unknown user costs the same work as a known
//! one with a wrong password. bcrypt runs on [`crate::blocking`]'s threads, never on the
//! async workers (a guessing client would otherwise stall every route), and a cost above
//! [`MAX_BCRYPT_COST`] is refused. Neither a hash nor a line of `usersFile` is ever put
//! into a message.

use base64::Engine;
use http::StatusCode;
use http::header::{self, HeaderName, HeaderValue};
use subtle::ConstantTimeEq;

use super::options::Options;
use super::{Reply, Req, Step};
use crate::tree::Node;

#[derive(Debug)]
pub struct BasicAuth {
    users: Vec<(String, Hash)>,
    realm: String,
    remove_header: bool,
    header_field: Option<HeaderName>,
}

#[derive(Debug, Clone)]
enum Hash {
    Bcrypt(String),
    Sha1(Vec<u8>),
    Apr1 { salt: String, full: String },
}

/// The dearest bcrypt cost accepted: 2^14 rounds, about a second on one core. A label
/// with cost 31 would take days per request.
pub const MAX_BCRYPT_COST: u32 = 14;

impl Hash {
    fn parse(h: &str) -> Result<Hash, String> {
        if h.starts_with("$2y$") || h.starts_with("$2a$") || h.starts_with("$2b$") {
            let parts = h
                .parse::<bcrypt::HashParts>()
                .map_err(|_| "bad bcrypt hash".to_string())?;
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(format!("bcrypt cost {} is above {MAX_BCRYPT_COST}", parts.get_cost()));
            }
            return Ok(Hash::Bcrypt(h.to_string()));
        }
        if let Some(b64) = h.strip_prefix("{SHA}") {
            let d = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "bad {SHA} hash (not base64)".to_string())?;
            if d.len() != 20 {
                return Err("bad {SHA} hash (not 20 bytes)".into());
            }
            return Ok(Hash::Sha1(d));
        }
        if let Some(rest) = h.strip_prefix("$apr1$") {
            let (salt, _) = rest.split_once('$').ok_or("bad $apr1$ hash")?;
            return Ok(Hash::Apr1 {
                salt: salt.to_string(),
                full: h.to_string(),
            });
        }
        Err("unsupported hash (use bcrypt, {SHA} or $apr1$, as htpasswd makes them)".into())
    }

    /// Check `password`; bcrypt on the pool for heavy work (`Err` when it is saturated).
    async fn verify(&self, password: String) -> Result<bool, crate::blocking::Busy> {
        match self {
            Hash::Bcrypt(h) => {
                let h = h.clone();
                Ok(crate::blocking::run(move || bcrypt::verify(password, &h).unwrap_or(false))?.await)
            }
            other => Ok(other.verify_cheap(&password)),
        }
    }

    fn verify_cheap(&self, password: &str) -> bool {
        match self {
            Hash::Bcrypt(_) => false,
            Hash::Sha1(d) => {
                use sha1::Digest;
                let got = sha1::Sha1::digest(password.as_bytes());
                got.as_slice().ct_eq(d).into()
            }
            Hash::Apr1 { salt, full } => apr1(password.as_bytes(), salt.as_bytes())
                .as_bytes()
                .ct_eq(full.as_bytes())
                .into(),
        }
    }
}

/// Apache's MD5-crypt (`$apr1$salt$hash`).
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let alt = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    const ITOA: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::from("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(fin[i]);
    for (a, m, z) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64((b(a) << 16) | (b(m) << 8) | b(z), 4);
    }
    to64(b(11), 2);
    out
}

impl BasicAuth {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new(
            "basicAuth",
            node,
            &["users", "usersFile", "realm", "removeHeader", "headerField"],
        )?;
        let lines = super::options::user_lines("basicAuth", &o)?;
        let users = lines
            .iter()
            .map(|(at, l)| {
                let (user, hash) = l
                    .split_once(':')
                    .ok_or_else(|| format!("basicAuth: {at} is not user:hash"))?;
                Hash::parse(hash)
                    .map(|h| (user.to_string(), h))
                    .map_err(|e| format!("basicAuth: {at}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header_field = match o.string("headerField")?.filter(|h| !h.is_empty()) {
            Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("basicAuth.headerField: `{h}`"))?),
            None => None,
        };
        Ok(BasicAuth {
            users,
            realm: o
                .string("realm")?
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "traefik".into()),
            remove_header: o.bool("removeHeader")?,
            header_field,
        })
    }

    fn credentials(req: &Req<'_>) -> Option<(String, String)> {
        let v = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, b64) = v.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    pub(super) async fn request(&self, req: &mut Req<'_>) -> Step {
        let mut ok = None;
        if let Some((user, password)) = Self::credentials(req) {
            let hit = self.users.iter().find(|(u, _)| *u == user);
            // Same work for an unknown user: verify against the first user's hash.
            if let Some(hash) = hit.map(|(_, h)| h).or_else(|| self.users.first().map(|(_, h)| h)) {
                match hash.verify(password).await {
                    Ok(true) if hit.is_some() => ok = Some(user),
                    Ok(_) => {}
                    Err(crate::blocking::Busy) => {
                        let mut r = Reply::new(StatusCode::SERVICE_UNAVAILABLE, "503 authentication is busy\n");
                        r.headers.push((header::RETRY_AFTER, HeaderValue::from_static("1")));
                        return Step::Reply(r);
                    }
                }
            }
        }
        match ok {
            Some(user) => {
                if self.remove_header {
                    req.headers.remove(header::AUTHORIZATION);
                }
                if let (Some(h), Ok(v)) = (&self.header_field, HeaderValue::from_str(&user)) {
                    req.headers.insert(h.clone(), v);
                }
                Step::Next
            }
            None => {
                let mut r = Reply::new(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
                if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm.replace('"', ""))) {
                    r.headers.push((header::WWW_AUTHENTICATE, v));
                }
                Step::Reply(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use super::*;
    use crate::middleware::testing::{self, node};
    use crate::middleware::{Spec, parse};

    fn spec(users: &str, extra: &[(&str, &str)]) -> Spec {
        let mut pairs = vec![("users", users)];
        pairs.extend_from_slice(extra);
        parse("basicAuth", &node(&pairs)).unwrap()
    }

    fn call(s: &Spec, auth: Option<&str>) -> (Step, HeaderMap) {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(a));
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        }
        let (step, _) = testing::run(s, &Method::GET, false, "h", "/", &mut h, "127.0.0.1");
        (step, h)
    }

    #[test]
    fn apr1_matches_htpasswd() {
        // `openssl passwd -apr1 -salt H6uskkkW test` (Traefik's documentation example).
        assert_eq!(apr1(b"test", b"H6uskkkW"), "$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/");
        assert_eq!(apr1(b"test2", b"d9hr9HBB"), "$apr1$d9hr9HBB$4HxwgUir3HP4EsggP/QNo0");
    }

    #[test]
    fn every_hash_kind_and_the_refusals() {
        let bcrypt_hash = bcrypt::hash("hunter2", 4).unwrap();
        let users = format!(
            "test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/,sha:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=,bc:{bcrypt_hash}"
        );
        let s = spec(
            &users,
            &[
                ("realm", "berth"),
                ("headerField", "X-WebAuth-User"),
                ("removeHeader", "true"),
            ],
        );
        for (cred, user) in [("test:test", "test"), ("sha:secret", "sha"), ("bc:hunter2", "bc")] {
            let (step, h) = call(&s, Some(cred));
            assert_eq!(step, Step::Next, "{cred}");
            assert_eq!(h["x-webauth-user"], user);
            assert!(!h.contains_key(header::AUTHORIZATION), "removeHeader");
        }
        for cred in [Some("test:wrong"), Some("nobody:test"), Some("sha"), None] {
            let (step, _) = call(&s, cred);
            let Step::Reply(r) = step else {
                panic!("{cred:?} must be refused")
            };
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            assert_eq!(r.headers[0].1, "Basic realm=\"berth\"");
        }
        assert!(
            parse("basicAuth", &node(&[("users", "u:plaintext")]))
                .unwrap_err()
                .contains("unsupported hash")
        );
        assert!(parse("basicAuth", &node(&[("realm", "x")])).is_err());
    }

    #[test]
    fn dear_hashes_are_refused_and_no_secret_reaches_a_message() {
        // Cost 31 as a label would write it: refused when parsed, never run.
        let dear = "u:$2y$31$GVDzsHB4b3hVONbmkdYAHe4oNNCf3zrMUUz/kNl4bvcdKAzs2k6Oi";
        let e = parse("basicAuth", &node(&[("users", dear)])).unwrap_err();
        assert!(e.contains("above 14"), "{e}");
        let dir = std::env::temp_dir().join(format!("berth-htpasswd-{}", std::process::id()));
        std::fs::write(&dir, "# users\nroot:SECRET-LINE-NOT-A-HASH\n").unwrap();
        let path = dir.to_string_lossy().into_owned();
        let e = parse("basicAuth", &node(&[("usersFile", &path)])).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("SECRET"), "a line of the file is never quoted: {e}");
        let e = parse("basicAuth", &node(&[("users", "u:{SHA}notbase64!")])).unwrap_err();
        assert!(!e.contains("notbase64"), "{e}");
    }
}
