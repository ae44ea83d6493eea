//! What the entrypoints answer while an order is pending: the key authorization of an
//! HTTP-01 token at `/.well-known/acme-challenge/<token>`, and for TLS-ALPN-01 (RFC 8737)
//! a self-signed certificate for the name with the `acmeIdentifier` extension, served
//! only to a handshake that offers ALPN `acme-tls/1`. With a shared table, a token or
//! name this replica does not hold is looked up there (another replica ordered it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;

use super::table::Table;

/// The ALPN protocol of TLS-ALPN-01.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The path prefix of HTTP-01.
const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";
/// The most challenges pending at once (each order has one per name).
const MAX_PENDING: usize = 1024;

#[derive(Default)]
pub(crate) struct Challenges {
    http: Mutex<HashMap<String, String>>,
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// The shared tables other replicas publish their challenges in.
    shared: Vec<Arc<Table>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("shared", &self.shared.len())
            .finish()
    }
}

/// An HTTP-01 token as RFC 8555 makes them (base64url), not too long to look up.
fn plausible_token(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    pub(super) fn new(shared: Vec<Arc<Table>>) -> Challenges {
        Challenges {
            shared,
            ..Default::default()
        }
    }

    /// The key authorization to answer at `path`, when it is a pending HTTP-01 token's
    /// (this replica's, or one in a shared table).
    pub(crate) async fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP_PREFIX)?;
        if let Some(a) = self.http.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned() {
            return Some(a);
        }
        if !plausible_token(token) {
            return None;
        }
        for t in &self.shared {
            if let Some(a) = t.challenge("http", token).await {
                return Some(a);
            }
        }
        None
    }

    /// The TLS-ALPN-01 certificate for `name`, when a challenge is pending for it (this
    /// replica's, or one in a shared table).
    pub(crate) async fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.alpn.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned() {
            return Some(c);
        }
        for t in &self.shared {
            if let Some(hex) = t.challenge("alpn", &name).await {
                let digest = from_hex(&hex)?;
                return alpn_certificate(&name, &digest).ok();
            }
        }
        None
    }

    /// Whether a TLS-ALPN-01 challenge may be pending (TLS must be accepted for it even
    /// before any certificate exists): one of ours, or any with a shared table.
    pub(crate) fn any_alpn(&self) -> bool {
        !self.shared.is_empty() || !self.alpn.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    pub(crate) fn put_http(&self, token: &str, key_authorization: &str) {
        let mut m = self.http.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < MAX_PENDING {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }

    pub(crate) fn put_alpn(&self, name: &str, cert: Arc<CertifiedKey>) {
        let mut m = self.alpn.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < MAX_PENDING {
            m.insert(name.to_ascii_lowercase(), cert);
        }
    }

    pub(crate) fn remove(&self, token: &str, name: &str) {
        self.http.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
        self.alpn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name.to_ascii_lowercase());
    }
}

/// A SHA-256 digest, as hex (how a shared table holds a TLS-ALPN-01 challenge).
pub(super) fn to_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The TLS-ALPN-01 certificate for `name` and a key authorization's SHA-256.
pub(crate) fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Built directly: the critical acmeIdentifier extension is one webpki refuses to parse.
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = berth_common::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_pending_tokens_and_names_are_answered() {
        berth_common::tls::install_crypto_provider();
        let c = Challenges::default();
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t1").await, None);
        c.put_http("t1", "t1.thumb");
        assert_eq!(
            c.http_answer("/.well-known/acme-challenge/t1").await.as_deref(),
            Some("t1.thumb")
        );
        assert_eq!(c.http_answer("/t1").await, None);
        assert!(!c.any_alpn());
        let cert = alpn_certificate("a.test", &[7; 32]).expect("a challenge certificate");
        c.put_alpn("A.test", cert);
        assert!(c.alpn_cert("a.test.").await.is_some() && c.any_alpn());
        c.remove("t1", "a.test");
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t1").await, None);
        assert!(c.alpn_cert("a.test").await.is_none());
    }

    #[test]
    fn digests_survive_hex_and_tokens_are_checked() {
        let d: Vec<u8> = (0..32).collect();
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
        assert!(plausible_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!plausible_token("short") && !plausible_token("../../etc/passwd-xxxxxxxxxxxx"));
    }
}
