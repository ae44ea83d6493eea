//! TLS material: loading PEM certificates and keys into rustls, and the crypto provider.
//!
//! rustls uses aws-lc-rs everywhere in Berth (the AWS SDK brings it anyway); binaries
//! call [`install_crypto_provider`] first thing.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: no usable PEM private key found ({reason})")]
    BadKey { what: String, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// The handshake-signature half of a rustls certificate verifier, the same for every
/// verifier here: checked by the crypto provider in `self.<field>`.
macro_rules! provider_signatures {
    ($field:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.$field.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.$field.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$field.signature_verification_algorithms.supported_schemes()
        }
    };
}
pub(crate) use provider_signatures;

/// Install aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: shown_path(path),
        source,
    })
}

/// A setting that should name a file, as an error message may show it: the path, or only
/// its size when it looks like a secret pasted in its place (a key wrapped in JSON by
/// Secrets Manager, base64, a PEM with a stray quote): never the secret itself.
pub fn shown_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let pathlike = text.len() <= 1024 && !text.contains(['\n', '\r', '{', '"']) && !text.contains("-----");
    if pathlike {
        text.into_owned()
    } else {
        format!(
            "(a value of {} bytes that is neither PEM nor a readable file)",
            text.len()
        )
    }
}

/// Parse every certificate in a PEM bundle.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            what: what.to_string(),
            reason: format!("bad PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what: what.into() });
    }
    Ok(certs)
}

/// Parse the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadKey {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = certs_from_pem(cert_pem, what)?;
    let key = key_from_pem(key_pem, what)?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Invalid {
        what: what.into(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

/// Load a certificate chain and key from PEM files.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let what = cert_path.display().to_string();
    certified_key_from_pem(&read(cert_path)?, &read(key_path)?, &what)
}

/// Whether the leaf certificate is valid for `name` (DNS name with wildcard support,
/// or IP address), as a client would check it.
pub fn cert_matches_name(key: &CertifiedKey, name: &str) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// A host name a certificate may be issued for: ASCII letters, digits and hyphens in
/// dot-separated labels of at most 63 characters, 253 in all, the first label `*` for a
/// wildcard.
pub fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
