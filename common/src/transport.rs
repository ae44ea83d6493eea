//! A `serversTransport` made ready to dial with: its files read and checked once per
//! configuration change, whom the servers' certificates must chain to, the client
//! certificates presented, its timeouts and pool bounds. The snapshot builder resolves
//! each transport the file provider defines; the gateway makes one pool per transport
//! from it ([`Transport::client_config`]).

use std::sync::Arc;
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::ServersTransportConfig;

/// The largest PEM file a transport reads (a CA bundle is far smaller).
const MAX_PEM: u64 = 1024 * 1024;

/// Go's `DefaultMaxIdleConnsPerHost`, which Traefik's named transports keep when
/// `maxIdleConnsPerHost` is unset or 0.
const GO_IDLE_PER_HOST: usize = 2;

/// "No timeout" for a dial: long enough never to be the reason (the kernel gives up on
/// an unanswered SYN in about two minutes).
const NO_DIAL_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// One transport, resolved.
#[derive(Debug)]
pub struct Transport {
    pub name: String,
    /// Unique to this resolution: a changed configuration under the same name is a new
    /// transport, so what its servers' health learnt through the old one is not kept.
    pub generation: u64,
    /// Sent in SNI and checked against the certificate, instead of the server's host.
    pub server_name: Option<ServerName<'static>>,
    /// `rootCAs`; `None`: the gateway's upstream roots.
    pub roots: Option<Vec<CertificateDer<'static>>>,
    pub insecure_skip_verify: bool,
    /// `certificates`, in order: the first the server can accept is presented.
    pub identities: Vec<Arc<CertifiedKey>>,
    /// `peerCertURI`: the URI SAN required besides the usual checks (the name goes
    /// unchecked only with `insecureSkipVerify`; the chain always is checked).
    pub peer_cert_uri: Option<String>,
    pub tls13_only: bool,
    pub tls12_only: bool,
    /// `cipherSuites`: the suites offered (TLS 1.3's three and the TLS 1.2 ones named).
    pub cipher_suites: Option<Vec<rustls::SupportedCipherSuite>>,
    /// Idle connections kept per server (0: none is reused).
    pub max_idle_per_host: usize,
    pub dial_timeout: Duration,
    /// `None`: no bound on waiting for the response head.
    pub response_header_timeout: Option<Duration>,
    /// Zero: idle connections are kept without a time limit (as Go's 0).
    pub idle_timeout: Duration,
    /// HTTP/2: a ping after this long without a frame, and how long its answer may take.
    pub h2_keep_alive: Option<(Duration, Duration)>,
    pub disable_http2: bool,
}

impl Transport {
    /// Read and check what `cfg` names; every problem is reported, each making the
    /// transport unusable.
    pub fn resolve(name: &str, cfg: &ServersTransportConfig) -> Result<Transport, Vec<String>> {
        let mut errors = cfg.refused.clone();
        let server_name = cfg
            .server_name
            .as_ref()
            .and_then(|n| match ServerName::try_from(n.clone()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(format!("serverName `{n}` is not a DNS name or an IP address"));
                    None
                }
            });
        let mut roots = Vec::new();
        for (i, ca) in cfg.root_cas.iter().enumerate() {
            let what = format!("rootCAs[{i}]");
            match pem(&what, ca).and_then(|p| crate::tls::certs_from_pem(&p, &what).map_err(|e| e.to_string())) {
                Ok(certs) => roots.extend(certs),
                Err(e) => errors.push(e),
            }
        }
        let mut identities = Vec::new();
        for (i, c) in cfg.certificates.iter().enumerate() {
            let what = format!("certificates[{i}]");
            let loaded = pem(&format!("{what}.certFile"), &c.cert_file).and_then(|cert| {
                let key = pem(&format!("{what}.keyFile"), &c.key_file)?;
                crate::tls::certified_key_from_pem(&cert, &key, &what).map_err(|e| e.to_string())
            });
            match loaded {
                Ok(k) => identities.push(k),
                Err(e) => errors.push(e),
            }
        }
        let (min, max) =
            crate::server_tls::versions(cfg.min_version.as_deref(), cfg.max_version.as_deref(), &mut errors);
        let mut unoffered = Vec::new();
        let cipher_suites = cfg
            .cipher_suites
            .as_ref()
            .map(|names| crate::server_tls::cipher_suites(names, &mut unoffered, &mut errors));
        // A suite left out is a refusal here: the server may speak nothing else.
        errors.extend(unoffered);
        if max == 12
            && cipher_suites.as_ref().is_some_and(|s| {
                s.iter()
                    .all(|s| s.version().version != rustls::ProtocolVersion::TLSv1_2)
            })
        {
            errors.push("cipherSuites: no TLS 1.2 suite Berth offers is listed, and TLS 1.3 is off".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let t = &cfg.forwarding_timeouts;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let transport = Transport {
            name: name.to_string(),
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            server_name,
            roots: (!cfg.root_cas.is_empty()).then_some(roots),
            insecure_skip_verify: cfg.insecure_skip_verify,
            identities,
            peer_cert_uri: cfg.peer_cert_uri.clone(),
            tls13_only: min == 13,
            tls12_only: max == 12,
            cipher_suites,
            max_idle_per_host: match cfg.max_idle_conns_per_host {
                None | Some(0) => GO_IDLE_PER_HOST,
                Some(n) if n < 0 => 0,
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            },
            dial_timeout: nonzero(t.dial_timeout).unwrap_or(NO_DIAL_LIMIT),
            response_header_timeout: nonzero(t.response_header_timeout),
            idle_timeout: t.idle_conn_timeout,
            // Go falls back to 15 s for a zero pingTimeout.
            h2_keep_alive: nonzero(t.read_idle_timeout)
                .map(|i| (i, nonzero(t.ping_timeout).unwrap_or(Duration::from_secs(15)))),
            disable_http2: cfg.disable_http2,
        };
        // A configuration that cannot be built (a root that is not a certificate) breaks
        // the transport now, so its services show as disabled rather than answer 502.
        // Without `rootCAs` it is built on the gateway's own roots, checked at start.
        if transport.roots.is_some() {
            transport.client_config(&RootCertStore::empty()).map_err(|e| vec![e])?;
        }
        Ok(transport)
    }

    /// The TLS client configuration for `https://` servers; `upstream_roots` is the
    /// gateway's own trust, used when the transport names no `rootCAs`. ALPN is the
    /// caller's.
    pub fn client_config(&self, upstream_roots: &RootCertStore) -> Result<rustls::ClientConfig, String> {
        let provider = match &self.cipher_suites {
            Some(suites) => Arc::new(rustls::crypto::CryptoProvider {
                cipher_suites: suites.clone(),
                ..(*crate::tls::provider()).clone()
            }),
            None => crate::tls::provider(),
        };
        let roots = match &self.roots {
            Some(certs) => {
                let mut r = RootCertStore::empty();
                for c in certs {
                    r.add(c.clone()).map_err(|e| format!("rootCAs: {e}"))?;
                }
                r
            }
            None => upstream_roots.clone(),
        };
        let versions: &[&'static rustls::SupportedProtocolVersion] = match (self.tls13_only, self.tls12_only) {
            (true, _) => &[&rustls::version::TLS13],
            (false, true) => &[&rustls::version::TLS12],
            (false, false) => rustls::DEFAULT_VERSIONS,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.peer_cert_uri, self.insecure_skip_verify) {
            // As Traefik: a required URI SAN verifies the chain even when skipping is on.
            (Some(uri), skip) => Arc::new(UriVerifier {
                chain: webpki_verifier(roots, &provider)?,
                uri: uri.clone(),
                skip_name: skip,
            }),
            (None, true) => Arc::new(NoVerifier(provider.clone())),
            (None, false) => webpki_verifier(roots, &provider)?,
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        Ok(if self.identities.is_empty() {
            builder.with_no_client_auth()
        } else {
            builder.with_client_cert_resolver(Arc::new(Identities(self.identities.clone())))
        })
    }
}

/// The gateway's `--upstream-insecure-skip-verify`: a client configuration that takes
/// any server certificate (the handshake's signatures are still checked).
pub fn insecure_client_config() -> Result<rustls::ClientConfig, String> {
    let provider = crate::tls::provider();
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerifier(provider)))
        .with_no_client_auth())
}

/// A file's PEM text, or the option's own text when it is PEM (Traefik's FileOrContent).
fn pem(what: &str, value: &str) -> Result<Vec<u8>, String> {
    crate::middleware::options::file_or_pem(what, value, MAX_PEM)
}

fn webpki_verifier(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    if roots.is_empty() {
        return Err("no trust anchors (no rootCAs, and the gateway found no system roots)".into());
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

/// `insecureSkipVerify`: any certificate is taken; the handshake's signatures are still
/// checked, so the connection is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

/// `peerCertURI`: the chain must verify and the certificate carry the URI in its SANs
/// (compared without case, as Traefik does); the server's name is checked too unless
/// `insecureSkipVerify` is on (Go still verifies the chain then, through Traefik's
/// `VerifyPeerCertificate`, but not the name).
#[derive(Debug)]
struct UriVerifier {
    chain: Arc<WebPkiServerVerifier>,
    uri: String,
    skip_name: bool,
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::provider_signatures!(0);
}

impl ServerCertVerifier for UriVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // rustls checks the name only after the chain (0.23's WebPkiServerVerifier): a
        // name mismatch means the chain is good.
        match self
            .chain
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Ok(_) => {}
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.skip_name => {}
            Err(e) => return Err(e),
        }
        if uri_sans(end_entity).iter().any(|u| u.eq_ignore_ascii_case(&self.uri)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(crate::mtls::PeerRefused(format!(
                    "the server's certificate has no URI SAN {}",
                    self.uri
                ))),
            ))))
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The URI SANs of a certificate.
fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, parsed)) = X509Certificate::from_der(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// `certificates`: the first whose key can sign with a scheme the server offers, as Go
/// picks among `tls.Config.Certificates`.
#[derive(Debug)]
struct Identities(Vec<Arc<CertifiedKey>>);

impl ResolvesClientCert for Identities {
    fn resolve(&self, _: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or(self.0.first())
            .cloned()
    }

    fn has_certs(&self) -> bool {
        !self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_that_is_no_certificate_breaks_the_transport_at_once() {
        let cfg = ServersTransportConfig {
            root_cas: vec!["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()],
            ..Default::default()
        };
        let errors = Transport::resolve("t", &cfg).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("rootCAs")), "{errors:?}");
    }
}
