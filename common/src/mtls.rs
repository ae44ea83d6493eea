//! Mutual TLS by SPIFFE identity: rustls configurations whose verifiers check the
//! chain to the mesh's trust anchors with webpki and then the peer's URI SAN (webpki
//! itself matches only DNS names and IPs). TLS 1.3 only, aws-lc-rs.
//!
//! The local certificate lives in a [`CertSlot`] that rotation swaps; live connections
//! keep the key they started with, new handshakes get the new one, and before the
//! first certificate a server has nothing to present: it fails closed.

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

/// The mesh's trust anchors, parsed once.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    subjects: Arc<Vec<DistinguishedName>>,
}

impl TrustAnchors {
    pub fn from_certs(certs: &[CertificateDer<'_>]) -> Result<TrustAnchors, Error> {
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
        Ok(TrustAnchors {
            anchors: Arc::new(anchors),
            subjects: Arc::new(subjects),
        })
    }

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
        cert.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &self.anchors,
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
    policy: PeerPolicy,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.anchors.subjects
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
    let verifier = Arc::new(SpiffeClientVerifier {
        anchors,
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
        let dn = &anchors.subjects[0];
        // What OpenSSL's parse_ca_names does: d2i_X509_NAME over each entry.
        use x509_parser::prelude::FromDer;
        let (rest, name) = x509_parser::x509::X509Name::from_der(dn.as_ref()).expect("a DER Name");
        assert!(rest.is_empty());
        assert_eq!(name.to_string(), "CN=Berth mesh CA, O=berth");
    }
}
