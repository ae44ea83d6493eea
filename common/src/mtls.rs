//! Mutual TLS by SPIFFE identity: rustls configurations whose verifiers check the
//! chain to the mesh's trust anchors with webpki and then the peer's URI SAN (webpki
//! itself matches only DNS names and IPs). TLS 1.3 only, aws-lc-rs.
//!
//! The local certificate lives in a [`CertSlot`] that rotation swaps; live connections
//! keep the key they started with, new handshakes get the new one, and before the
//! first certificate a server has nothing to present: it fails closed. The trust anchors
//! are a set of roots ([`TrustAnchors`]) that CA rotation replaces while everything runs:
//! every verifier made from the set follows at its next handshake, and a server's
//! certificate requests name the new authorities once its [`FollowingServerConfig`]
//! rebuilds.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, Error, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::identity::{SpiffeId, spiffe_id_of};

/// Which peer identities a connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Exactly this identity (a client dialling service S expects S's identity).
    Exact(SpiffeId),
    /// Any identity in the trust domain (authorization happens after the handshake).
    TrustDomain(String),
    /// A gateway (`spiffe://<any trust domain>/gateway`): a sidecar dialling the control
    /// API before it knows the trust domain's name.
    AnyGateway,
}

impl PeerPolicy {
    fn check(&self, id: &SpiffeId) -> Result<(), String> {
        match self {
            PeerPolicy::Exact(want) if want == id => Ok(()),
            PeerPolicy::Exact(want) => Err(format!("peer identity {id} is not the expected {want}")),
            PeerPolicy::TrustDomain(td) if id.trust_domain() == td => Ok(()),
            PeerPolicy::TrustDomain(td) => Err(format!("peer identity {id} is outside trust domain {td}")),
            PeerPolicy::AnyGateway if id.is_gateway() => Ok(()),
            PeerPolicy::AnyGateway => Err(format!("peer identity {id} is not a gateway")),
        }
    }
}

/// Why a peer was refused, carried inside rustls's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerRefused(pub String);

fn refused(msg: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerRefused(msg)))))
}

/// The most roots a trust bundle holds (a rotation needs two).
pub const MAX_ROOTS: usize = 16;

/// The mesh's trust anchors: one or more roots, parsed once per change. Clones share
/// the set, so [`TrustAnchors::replace`] reaches every verifier made from any of them.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    roots: Arc<ArcSwap<Roots>>,
}

#[derive(Debug)]
struct Roots {
    /// Bumped by every replacement that changed the set.
    generation: u64,
    anchors: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    certs: Vec<CertificateDer<'static>>,
}

impl TrustAnchors {
    pub fn from_certs(certs: &[CertificateDer<'_>]) -> Result<TrustAnchors, Error> {
        Ok(TrustAnchors {
            roots: Arc::new(ArcSwap::from_pointee(Roots::parse(certs, 0)?)),
        })
    }

    /// Trust `certs` from now on, instead of the current roots; `Ok(false)` when they are
    /// the current roots already. On error the current roots stay.
    pub fn replace(&self, certs: &[CertificateDer<'_>]) -> Result<bool, Error> {
        let current = self.roots.load();
        if current.certs.len() == certs.len() && current.certs.iter().zip(certs).all(|(a, b)| a == b) {
            return Ok(false);
        }
        let next = Roots::parse(certs, current.generation + 1)?;
        self.roots.store(Arc::new(next));
        Ok(true)
    }

    /// Changes so far: a server configuration built at another generation is stale.
    pub fn generation(&self) -> u64 {
        self.roots.load().generation
    }

    /// The roots, in order.
    pub fn certs(&self) -> Vec<CertificateDer<'static>> {
        self.roots.load().certs.clone()
    }

    /// Verify `chain` (leaf first) to these roots now, as a client certificate: the leaf's
    /// SPIFFE ID.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<SpiffeId, Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(Error::NoCertificatesPresented)?;
        self.verify(
            &provider(),
            leaf,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
    }
}

impl Roots {
    fn parse(certs: &[CertificateDer<'_>], generation: u64) -> Result<Roots, Error> {
        if certs.len() > MAX_ROOTS {
            return Err(Error::General(format!(
                "{} trust anchors; at most {MAX_ROOTS}",
                certs.len()
            )));
        }
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        for c in certs {
            let a = webpki::anchor_from_trusted_cert(c)
                .map_err(|e| Error::General(format!("bad trust anchor: {e}")))?
                .to_owned();
            // webpki keeps the subject Name's contents without its SEQUENCE header; the
            // CertificateRequest must carry whole DER Names (RFC 8446 4.2.4), or OpenSSL,
            // curl and Python refuse the handshake (`parse_ca_names: ASN1 lib`).
            subjects.push(DistinguishedName::in_sequence(a.subject.as_ref()));
            anchors.push(a);
        }
        if anchors.is_empty() {
            return Err(Error::General("no trust anchor".into()));
        }
        Ok(Roots {
            generation,
            anchors,
            subjects,
            certs: certs.iter().map(|c| c.clone().into_owned()).collect(),
        })
    }
}

impl TrustAnchors {
    /// Verify `end_entity` chains to an anchor for `usage` now, and return its identity.
    fn verify(
        &self,
        provider: &CryptoProvider,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let roots = self.roots.load();
        cert.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &roots.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| {
            Error::InvalidCertificate(match e {
                webpki::Error::CertExpired { .. } => CertificateError::Expired,
                webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
                webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
                webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
                other => CertificateError::Other(OtherError(Arc::new(PeerRefused(format!(
                    "certificate rejected: {other}"
                ))))),
            })
        })?;
        spiffe_id_of(end_entity).map_err(|e| refused(e.to_string()))
    }
}

/// Verifies a server (the peer we dial) by chain and SPIFFE ID; SNI is not used.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: TrustAnchors,
    policy: PeerPolicy,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = self.anchors.verify(
            &self.provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        self.policy.check(&id).map_err(refused)?;
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::provider_signatures!(provider);
}

/// Requires a client certificate chaining to the anchors with an acceptable SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    anchors: TrustAnchors,
    /// The authorities named in certificate requests: the roots when the configuration
    /// was built ([`FollowingServerConfig`] rebuilds it when they change).
    hints: Vec<DistinguishedName>,
    policy: PeerPolicy,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let id = self.anchors.verify(
            &self.provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        self.policy.check(&id).map_err(refused)?;
        Ok(ClientCertVerified::assertion())
    }

    crate::tls::provider_signatures!(provider);
}

/// The local certificate, swapped on rotation. Empty until the first one arrives.
#[derive(Debug, Default)]
pub struct CertSlot(ArcSwap<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.0.store(Arc::new(Some(key)));
    }
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.load().as_ref().clone()
    }
}

#[derive(Debug)]
struct SlotResolver(Arc<CertSlot>);

impl ResolvesServerCert for SlotResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A sidecar is dialled by IP: no SNI, one identity. Nothing before the first
        // certificate: the handshake fails, closed.
        self.0.get()
    }
}

impl rustls::client::ResolvesClientCert for SlotResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.get()
    }
    fn has_certs(&self) -> bool {
        self.0.get().is_some()
    }
}

fn provider() -> Arc<CryptoProvider> {
    crate::tls::provider()
}

/// A TLS 1.3 server that requires a client certificate accepted by `policy`.
pub fn server_config(
    slot: Arc<CertSlot>,
    anchors: TrustAnchors,
    policy: PeerPolicy,
) -> Result<rustls::ServerConfig, Error> {
    server_config_with(slot, anchors, policy, true)
}

/// Like [`server_config`], but a client may also come without a certificate (the
/// control API's first certificate request); one it presents is still verified.
pub fn server_config_optional_client(
    slot: Arc<CertSlot>,
    anchors: TrustAnchors,
    policy: PeerPolicy,
) -> Result<rustls::ServerConfig, Error> {
    server_config_with(slot, anchors, policy, false)
}

fn server_config_with(
    slot: Arc<CertSlot>,
    anchors: TrustAnchors,
    policy: PeerPolicy,
    mandatory: bool,
) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let hints = anchors.roots.load().subjects.clone();
    let verifier = Arc::new(SpiffeClientVerifier {
        anchors,
        hints,
        policy,
        provider: provider.clone(),
        mandatory,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SlotResolver(slot)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A server configuration that follows its trust anchors: [`FollowingServerConfig::get`]
/// builds it anew when the roots changed since the last build, so certificate requests
/// name the current authorities (Go's crypto/tls sends no certificate to a server that
/// names only others).
pub struct FollowingServerConfig<F> {
    anchors: TrustAnchors,
    build: F,
    current: std::sync::Mutex<(u64, Arc<rustls::ServerConfig>)>,
}

impl<F: Fn(TrustAnchors) -> Result<rustls::ServerConfig, Error>> FollowingServerConfig<F> {
    /// `build` makes the configuration from the anchors; it must succeed now.
    pub fn new(anchors: TrustAnchors, build: F) -> Result<Self, Error> {
        let generation = anchors.generation();
        let first = Arc::new(build(anchors.clone())?);
        Ok(FollowingServerConfig {
            anchors,
            build,
            current: std::sync::Mutex::new((generation, first)),
        })
    }

    /// The configuration for the next handshake.
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.anchors.generation();
        if current.0 != generation {
            match (self.build)(self.anchors.clone()) {
                Ok(cfg) => *current = (generation, Arc::new(cfg)),
                // Keep serving with the configuration that worked; verification already
                // follows the new roots.
                Err(e) => {
                    tracing::warn!(error = %e, "TLS configuration not rebuilt for the new trust anchors");
                    current.0 = generation;
                }
            }
        }
        current.1.clone()
    }
}

/// A TLS 1.3 client presenting the slot's certificate (if any) and accepting only a
/// server that `policy` accepts.
pub fn client_config(
    slot: Option<Arc<CertSlot>>,
    anchors: TrustAnchors,
    policy: PeerPolicy,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        anchors,
        policy,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match slot {
        Some(slot) => builder.with_client_cert_resolver(Arc::new(SlotResolver(slot))),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn certificate_requests_name_their_authorities_in_whole_der() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Berth mesh CA");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "berth");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let anchors = TrustAnchors::from_certs(&[ca.der().clone()]).unwrap();
        let roots = anchors.roots.load();
        let dn = &roots.subjects[0];
        // What OpenSSL's parse_ca_names does: d2i_X509_NAME over each entry.
        use x509_parser::prelude::FromDer;
        let (rest, name) = x509_parser::x509::X509Name::from_der(dn.as_ref()).expect("a DER Name");
        assert!(rest.is_empty());
        assert_eq!(name.to_string(), "CN=Berth mesh CA, O=berth");
    }

    fn root(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    fn leaf(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://berth.local/ecs/prod/orders").unwrap(),
        )];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), ca_key).unwrap();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    #[test]
    fn replaced_roots_reach_every_clone_and_rebuild_server_configs() {
        let (old, old_key) = root("old");
        let (new, new_key) = root("new");
        let anchors = TrustAnchors::from_certs(&[old.der().clone()]).unwrap();
        let clone = anchors.clone();
        let following = FollowingServerConfig::new(anchors.clone(), |a| {
            server_config(
                Arc::new(CertSlot::default()),
                a,
                PeerPolicy::TrustDomain("berth.local".into()),
            )
        })
        .unwrap();
        let first = following.get();
        assert!(
            Arc::ptr_eq(&first, &following.get()),
            "unchanged roots: the same config"
        );
        assert!(clone.verify_chain(&[leaf(&old, &old_key)]).is_ok());
        assert!(clone.verify_chain(&[leaf(&new, &new_key)]).is_err());

        // Both during a rotation, then only the new one.
        assert!(anchors.replace(&[old.der().clone(), new.der().clone()]).unwrap());
        assert!(!anchors.replace(&[old.der().clone(), new.der().clone()]).unwrap());
        assert!(clone.verify_chain(&[leaf(&old, &old_key)]).is_ok());
        assert!(clone.verify_chain(&[leaf(&new, &new_key)]).is_ok());
        assert!(!Arc::ptr_eq(&first, &following.get()), "new roots: a new config");
        anchors.replace(&[new.der().clone()]).unwrap();
        assert!(clone.verify_chain(&[leaf(&old, &old_key)]).is_err());
        assert!(clone.verify_chain(&[leaf(&new, &new_key)]).is_ok());
        assert_eq!(clone.certs(), vec![new.der().clone()]);

        // A bad set changes nothing.
        assert!(anchors.replace(&[]).is_err());
        let many: Vec<_> = (0..=MAX_ROOTS).map(|_| new.der().clone()).collect();
        assert!(anchors.replace(&many).is_err());
        assert!(clone.verify_chain(&[leaf(&new, &new_key)]).is_ok());
    }
}
