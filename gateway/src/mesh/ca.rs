//! The mesh CA: a CA certificate and key from PEM files (`--mesh-ca-cert`,
//! `--mesh-ca-key`, possibly an intermediate followed by its offline root), or a dev CA
//! created in a directory (`--mesh-dev-ca DIR`). It signs leaf certificates from CSRs:
//! the key never leaves its owner, and the identity in the certificate is the one the
//! gateway decided, never the one the CSR asked for.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_common::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Default leaf lifetime.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA certificate is unusable: {0}")]
    BadCa(String),
    #[error("the CSR is malformed or its signature is invalid: {0}")]
    BadCsr(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A certificate issued by the CA.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf followed by any intermediate, PEM.
    pub chain_pem: String,
    pub serial: String,
    pub not_after: SystemTime,
    pub identity: SpiffeId,
}

pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    /// Intermediates presented after each leaf (empty when the CA is the root).
    intermediates_pem: String,
    anchor: CertificateDer<'static>,
    trust_domain: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

/// A PEM file, or the PEM itself (as ECS injects a Secrets Manager secret into an
/// environment variable such as `BERTH_MESH_CA_CERT`).
pub(crate) fn read(path: &Path) -> Result<String, CaError> {
    if let Some(inline) = path.to_str().filter(|p| p.trim_start().starts_with("-----BEGIN")) {
        return Ok(inline.to_string());
    }
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: berth_common::tls::shown_path(path),
        source,
    })
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der))
}

impl MeshCa {
    /// Load a CA: `cert_pem` holds the signing CA first, then any chain up to the root.
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<MeshCa, CaError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CaError::BadCa(format!("bad PEM: {e}")))?;
        let first = certs
            .first()
            .ok_or_else(|| CaError::BadCa("no certificate in the CA file".into()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadCa(format!("bad CA key: {e}")))?;
        let cert_key = berth_common::identity::public_key_bits(first).map_err(|e| CaError::BadCa(e.to_string()))?;
        if cert_key != rcgen::PublicKeyData::der_bytes(&key) {
            return Err(CaError::BadCa(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(first, key).map_err(|e| CaError::BadCa(e.to_string()))?;
        let anchor = certs
            .last()
            .cloned()
            .ok_or_else(|| CaError::BadCa("no certificate".into()))?;
        let intermediates_pem = if certs.len() > 1 {
            certs[..certs.len() - 1].iter().map(|c| pem_of(c)).collect()
        } else {
            String::new()
        };
        Ok(MeshCa {
            issuer,
            intermediates_pem,
            anchor,
            trust_domain: trust_domain.to_string(),
        })
    }

    pub fn load(cert: &Path, key: &Path, trust_domain: &str) -> Result<MeshCa, CaError> {
        MeshCa::from_pem(&read(cert)?, &read(key)?, trust_domain)
    }

    /// A development CA in `dir` (`ca.crt`, `ca.key`), created if missing.
    pub fn dev(dir: &Path, trust_domain: &str) -> Result<MeshCa, CaError> {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !cert.exists() || !key.exists() {
            let write_err = |path: &Path| {
                let path = path.display().to_string();
                move |source| CaError::Write { path, source }
            };
            std::fs::create_dir_all(dir).map_err(write_err(dir))?;
            let (cert_pem, key_pem) = new_root(&format!("Berth dev CA ({trust_domain})"))?;
            std::fs::write(&key, key_pem).map_err(write_err(&key))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(write_err(&key))?;
            std::fs::write(&cert, cert_pem).map_err(write_err(&cert))?;
        }
        MeshCa::load(&cert, &key, trust_domain)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust anchor peers verify against (the root).
    pub fn anchor(&self) -> &CertificateDer<'static> {
        &self.anchor
    }

    pub fn anchor_pem(&self) -> String {
        pem_of(&self.anchor)
    }

    /// Sign a leaf for `identity` from a PEM CSR, valid from a minute ago for `lifetime`.
    pub fn issue(&self, csr_pem: &str, identity: &SpiffeId, lifetime: Duration) -> Result<Issued, CaError> {
        let now = SystemTime::now();
        self.issue_between(csr_pem, identity, now - Duration::from_secs(60), now + lifetime)
    }

    /// Sign a leaf valid between two instants (tests use this for expired certificates).
    pub fn issue_between(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        // Everything the CSR asked for is discarded: only its public key is used.
        csr.params = leaf_params(identity, not_before, not_after)?;
        let serial = csr
            .params
            .serial_number
            .clone()
            .map(|s| hex(s.as_ref()))
            .unwrap_or_default();
        let cert = csr.signed_by(&self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            serial,
            not_after,
            identity: identity.clone(),
        })
    }

    /// A key and certificate for `identity` made here (the gateway's own).
    pub fn issue_local(&self, identity: &SpiffeId, lifetime: Duration) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let now = SystemTime::now();
        let params = leaf_params(identity, now - Duration::from_secs(60), now + lifetime)?;
        let serial = params
            .serial_number
            .clone()
            .map(|s| hex(s.as_ref()))
            .unwrap_or_default();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((
            Issued {
                chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
                serial,
                not_after: now + lifetime,
                identity: identity.clone(),
            },
            key.serialize_pem(),
        ))
    }

    /// The rustls form of a locally issued identity.
    pub fn certified_key(issued: &Issued, key_pem: &str) -> Result<Arc<rustls::sign::CertifiedKey>, CaError> {
        berth_common::tls::certified_key_from_pem(issued.chain_pem.as_bytes(), key_pem.as_bytes(), "mesh identity")
            .map_err(|e| CaError::Sign(e.to_string()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn leaf_params(
    identity: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let uri = rcgen::string::Ia5String::try_from(identity.to_string()).map_err(|e| CaError::Sign(e.to_string()))?;
    p.subject_alt_names = vec![SanType::URI(uri)];
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        identity.path().trim_start_matches('/').replace('/', "."),
    );
    p.distinguished_name = dn;
    p.not_before = not_before.into();
    p.not_after = not_after.into();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    for b in &mut serial {
        *b = fastrand::u8(..);
    }
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(p)
}

/// A new self-signed root CA: (certificate PEM, key PEM).
pub fn new_root(name: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let cert = p.self_signed(&key).map_err(|e| CaError::Sign(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// An intermediate CA signed by `root`: (certificate PEM, key PEM).
pub fn new_intermediate(root_cert_pem: &str, root_key_pem: &str, name: &str) -> Result<(String, String), CaError> {
    let root_key = KeyPair::from_pem(root_key_pem).map_err(|e| CaError::BadCa(e.to_string()))?;
    let root = Issuer::from_ca_cert_pem(root_cert_pem, root_key).map_err(|e| CaError::BadCa(e.to_string()))?;
    let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &root).map_err(|e| CaError::Sign(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}
