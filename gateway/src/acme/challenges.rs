//! What the entrypoints answer while an order is pending: the key authorization of an
//! HTTP-01 token at `/.well-known/acme-challenge/<token>`, and for TLS-ALPN-01 (RFC 8737)
//! a self-signed certificate for the name with the `acmeIdentifier` extension, served
//! only to a handshake that offers ALPN `acme-tls/1`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The path prefix of HTTP-01.
const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";
/// The most challenges pending at once (each order has one per name).
const MAX_PENDING: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Challenges {
    http: Mutex<HashMap<String, String>>,
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization to answer at `path`, when it is a pending HTTP-01 token's.
    pub(crate) fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP_PREFIX)?;
        self.http.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, when one is pending.
    pub(crate) fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.alpn.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned()
    }

    /// Whether a TLS-ALPN-01 challenge is pending (TLS must be accepted for it even
    /// before any certificate exists).
    pub(crate) fn any_alpn(&self) -> bool {
        !self.alpn.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
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

    #[test]
    fn only_pending_tokens_and_names_are_answered() {
        berth_common::tls::install_crypto_provider();
        let c = Challenges::default();
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t1"), None);
        c.put_http("t1", "t1.thumb");
        assert_eq!(
            c.http_answer("/.well-known/acme-challenge/t1").as_deref(),
            Some("t1.thumb")
        );
        assert_eq!(c.http_answer("/t1"), None);
        assert!(!c.any_alpn());
        let cert = alpn_certificate("a.test", &[7; 32]).expect("a challenge certificate");
        c.put_alpn("A.test", cert);
        assert!(c.alpn_cert("a.test.").is_some() && c.any_alpn());
        c.remove("t1", "a.test");
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t1"), None);
        assert!(c.alpn_cert("a.test").is_none());
    }
}
