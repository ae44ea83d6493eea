//! Traefik's `tls.options` for the gateway's own TLS: the protocol versions, TLS 1.2
//! suites, key-exchange groups, client certificates, strict SNI, ALPN and session
//! tickets of one named set, read and checked once per configuration change, and turned
//! into a rustls server configuration around the gateway's certificate resolver.
//!
//! Names and defaults are Go's and Traefik's (`pkg/tls/tlsmanager.go`); what rustls
//! cannot do is said: a minimum below TLS 1.2 is met (nothing older is spoken), a suite
//! or curve Go knows but rustls lacks (CBC, RC4, P-521) is left out with a warning, and
//! anything that would leave the options weaker than written breaks them.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::{DistinguishedName, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::TlsOptionsConfig;

/// The name of the options every TLS router gets unless it names others (a provider's
/// `tls.options.default` replaces the built-in ones).
pub const DEFAULT_OPTIONS: &str = "default";

/// The largest CA file read for `clientAuth.caFiles`.
const MAX_CA_FILE: u64 = 1024 * 1024;

/// Who must show a client certificate, and what it is checked against.
#[derive(Debug, Clone)]
enum ClientAuth {
    /// `NoClientCert`: none is asked for.
    None,
    /// `RequestClientCert` / `RequireAnyClientCert`: asked for, taken unverified.
    Any { mandatory: bool },
    /// `VerifyClientCertIfGiven` / `RequireAndVerifyClientCert`: verified against `caFiles`.
    Verify { roots: Arc<RootCertStore>, mandatory: bool },
}

/// One named set of TLS options, checked and ready to build server configurations.
#[derive(Debug)]
pub struct TlsOptions {
    pub name: String,
    versions: Vec<&'static SupportedProtocolVersion>,
    provider: Arc<CryptoProvider>,
    client_auth: ClientAuth,
    /// No certificate for the server name asked (or none asked): the handshake fails.
    pub sni_strict: bool,
    alpn: Vec<Vec<u8>>,
    session_tickets: bool,
}

/// Go's TLS 1.2 suites that rustls implements, with their IANA numbers.
const TLS12_SUITES: &[(&str, u16)] = &[
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 0xc02b),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 0xc02c),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xc02f),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xc030),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", 0xcca8),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xcca8),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", 0xcca9),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 0xcca9),
];

/// TLS 1.3's suites: Go (and so Traefik) accepts their names but always offers all three.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows and rustls does not offer (no CBC, RC4, 3DES or RSA key exchange).
const UNOFFERED_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_FALLBACK_SCSV",
];

/// Traefik's curve names (Go's and RFC 8446's) with their TLS group numbers.
const CURVES: &[(&str, u16)] = &[
    ("secp256r1", 23),
    ("CurveP256", 23),
    ("secp384r1", 24),
    ("CurveP384", 24),
    ("secp521r1", 25),
    ("CurveP521", 25),
    ("x25519", 29),
    ("X25519", 29),
    ("x25519mlkem768", 0x11ec),
    ("X25519MLKEM768", 0x11ec),
    ("secp256r1mlkem768", 0x11eb),
    ("SecP256r1MLKEM768", 0x11eb),
    ("secp384r1mlkem1024", 0x11ed),
    ("SecP384r1MLKEM1024", 0x11ed),
];

impl TlsOptions {
    /// Traefik's default options: TLS 1.2 and 1.3, rustls' suites and groups, no client
    /// certificate, the default certificate for unknown names, `h2` and `http/1.1`.
    pub fn builtin_default() -> TlsOptions {
        match TlsOptions::resolve(DEFAULT_OPTIONS, &TlsOptionsConfig::default()) {
            Ok((o, _)) => o,
            // Unreachable: the empty configuration has nothing to refuse.
            Err(_) => TlsOptions {
                name: DEFAULT_OPTIONS.into(),
                versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
                provider: crate::tls::provider(),
                client_auth: ClientAuth::None,
                sni_strict: false,
                alpn: default_alpn(),
                session_tickets: true,
            },
        }
    }

    /// Read and check `cfg`: the options, with warnings for what rustls leaves out, or
    /// every reason they cannot be applied as written.
    pub fn resolve(name: &str, cfg: &TlsOptionsConfig) -> Result<(TlsOptions, Vec<String>), Vec<String>> {
        let mut errors = cfg.refused.clone();
        let mut warnings = Vec::new();
        let (min, max) = versions(cfg.min_version.as_deref(), cfg.max_version.as_deref(), &mut errors);
        let mut versions: Vec<&'static SupportedProtocolVersion> = Vec::new();
        if max >= 13 {
            versions.push(&rustls::version::TLS13);
        }
        if min <= 12 {
            versions.push(&rustls::version::TLS12);
        }

        let base = crate::tls::provider();
        let mut provider = (*base).clone();
        if let Some(names) = &cfg.cipher_suites {
            let suites = cipher_suites(names, &mut warnings, &mut errors);
            let tls12 = suites
                .iter()
                .any(|s| s.version().version == rustls::ProtocolVersion::TLSv1_2);
            if !tls12 && min <= 12 {
                if max == 12 {
                    errors.push("cipherSuites: no TLS 1.2 suite Berth offers is listed, and TLS 1.3 is off".into());
                } else {
                    warnings.push(
                        "cipherSuites: no TLS 1.2 suite Berth offers is listed: TLS 1.2 clients cannot connect".into(),
                    );
                }
            }
            provider.cipher_suites = suites;
        }
        if let Some(names) = &cfg.curve_preferences {
            let mut groups = Vec::new();
            for n in names {
                match CURVES.iter().find(|(c, _)| c == n) {
                    Some((_, id)) => {
                        let found = rustls::crypto::aws_lc_rs::ALL_KX_GROUPS
                            .iter()
                            .find(|g| u16::from(g.name()) == *id);
                        match found {
                            Some(g)
                                if !groups
                                    .iter()
                                    .any(|h: &&dyn rustls::crypto::SupportedKxGroup| h.name() == g.name()) =>
                            {
                                groups.push(*g)
                            }
                            Some(_) => {}
                            None => warnings.push(format!("curvePreferences: `{n}` is not offered (rustls lacks it)")),
                        }
                    }
                    None => errors.push(format!("curvePreferences: invalid CurveID `{n}`")),
                }
            }
            if groups.is_empty() && errors.is_empty() {
                errors.push("curvePreferences: no curve Berth offers is listed".into());
            }
            provider.kx_groups = groups;
        }
        let client_auth = client_auth(cfg, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let options = TlsOptions {
            name: name.to_string(),
            versions,
            provider: Arc::new(provider),
            client_auth,
            sni_strict: cfg.sni_strict,
            alpn: match &cfg.alpn_protocols {
                Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
                None => default_alpn(),
            },
            session_tickets: !cfg.disable_session_tickets,
        };
        // What rustls would refuse (no suite for the versions left) is found now.
        let probe: Arc<dyn ResolvesServerCert> = Arc::new(rustls::server::ResolvesServerCertUsingSni::new());
        options.server_config(probe).map_err(|e| vec![e])?;
        Ok((options, warnings))
    }

    /// The rustls server configuration of these options, with `certs` choosing the
    /// certificate.
    pub fn server_config(&self, certs: Arc<dyn ResolvesServerCert>) -> Result<rustls::ServerConfig, String> {
        let verifier: Arc<dyn ClientCertVerifier> = match &self.client_auth {
            ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
            ClientAuth::Any { mandatory } => Arc::new(AnyClientCert {
                provider: self.provider.clone(),
                mandatory: *mandatory,
            }),
            ClientAuth::Verify { roots, mandatory } => {
                let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone());
                let b = if *mandatory { b } else { b.allow_unauthenticated() };
                b.build().map_err(|e| format!("clientAuth: {e}"))?
            }
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&self.versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certs);
        cfg.alpn_protocols = self.alpn.clone();
        if !self.session_tickets {
            cfg.send_tls13_tickets = 0;
            cfg.session_storage = Arc::new(NoServerSessionStorage {});
        }
        Ok(cfg)
    }

    /// Whether ALPN offers HTTP/2: without it, connections speak HTTP/1.1 only (as Go's
    /// server, which speaks HTTP/2 only after ALPN chose `h2`).
    pub fn offers_h2(&self) -> bool {
        self.alpn.iter().any(|p| p == b"h2")
    }

    /// The files these options read (`caFiles` that are paths), with their size and
    /// modification time: options are read again when these change.
    pub fn files_stamp(cfg: &TlsOptionsConfig) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
        cfg.client_auth
            .ca_files
            .iter()
            .filter(|f| !f.contains("-----BEGIN"))
            .map(|f| {
                let meta = std::fs::metadata(f).ok();
                (
                    f.clone(),
                    meta.as_ref().map_or(0, std::fs::Metadata::len),
                    meta.and_then(|m| m.modified().ok()),
                )
            })
            .collect()
    }
}

/// Go's `cipherSuites` as rustls suites: TLS 1.3's three (Go always offers them), then
/// the TLS 1.2 suites named, in their order. A suite Go knows and rustls lacks is left out
/// with a warning; a name Go does not know is an error. Shared with `serversTransports`.
pub(crate) fn cipher_suites(
    names: &[String],
    warnings: &mut Vec<String>,
    errors: &mut Vec<String>,
) -> Vec<rustls::SupportedCipherSuite> {
    let mut wanted = Vec::new();
    for n in names {
        if let Some((_, id)) = TLS12_SUITES.iter().find(|(s, _)| s == n) {
            if !wanted.contains(id) {
                wanted.push(*id);
            }
        } else if TLS13_SUITES.contains(&n.as_str()) {
            // As in Go: TLS 1.3's suites are always all offered.
        } else if UNOFFERED_SUITES.contains(&n.as_str()) {
            warnings.push(format!(
                "cipherSuites: `{n}` is not offered (rustls implements no such suite)"
            ));
        } else {
            errors.push(format!("cipherSuites: invalid CipherSuite `{n}`"));
        }
    }
    let all = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES;
    let mut suites: Vec<_> = all
        .iter()
        .filter(|s| s.version().version == rustls::ProtocolVersion::TLSv1_3)
        .copied()
        .collect();
    for id in &wanted {
        suites.extend(all.iter().filter(|s| u16::from(s.suite()) == *id).copied());
    }
    suites
}

/// Go's `minVersion` and `maxVersion` as TLS minor versions (12, 13), unset meaning
/// 1.2 to 1.3: an older minimum is met (rustls speaks nothing older), an older maximum
/// would leave nothing. Shared with `serversTransports`.
pub(crate) fn versions(min: Option<&str>, max: Option<&str>, errors: &mut Vec<String>) -> (u8, u8) {
    let min = match min {
        None | Some("VersionTLS10" | "VersionTLS11" | "VersionTLS12") => 12,
        Some("VersionTLS13") => 13,
        Some(other) => {
            errors.push(format!("minVersion `{other}`: expected VersionTLS12 or VersionTLS13"));
            12
        }
    };
    let max = match max {
        None | Some("VersionTLS13") => 13,
        Some("VersionTLS12") => 12,
        Some(v @ ("VersionTLS10" | "VersionTLS11")) => {
            errors.push(format!(
                "maxVersion `{v}`: Berth speaks TLS 1.2 and 1.3 only, so nothing would be left"
            ));
            13
        }
        Some(other) => {
            errors.push(format!("maxVersion `{other}`: expected VersionTLS12 or VersionTLS13"));
            13
        }
    };
    if min > max {
        errors.push("minVersion is above maxVersion".into());
    }
    (min, max)
}

fn default_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// `clientAuth`, as Traefik reads it: `caFiles` alone means `RequireAndVerifyClientCert`;
/// the verifying types need `caFiles`.
fn client_auth(cfg: &TlsOptionsConfig, errors: &mut Vec<String>) -> ClientAuth {
    let ca = &cfg.client_auth;
    let mut roots = RootCertStore::empty();
    for (i, file) in ca.ca_files.iter().enumerate() {
        let what = format!("clientAuth.caFiles[{i}]");
        let certs = crate::middleware::options::file_or_pem(&what, file, MAX_CA_FILE)
            .and_then(|pem| crate::tls::certs_from_pem(&pem, &what).map_err(|e| e.to_string()));
        match certs {
            Ok(certs) => {
                for c in certs {
                    if let Err(e) = roots.add(c) {
                        errors.push(format!("{what}: invalid certificate: {e}"));
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let has_roots = !ca.ca_files.is_empty();
    let verify = |mandatory: bool, errors: &mut Vec<String>| {
        if has_roots {
            ClientAuth::Verify {
                roots: Arc::new(roots.clone()),
                mandatory,
            }
        } else {
            errors.push(format!(
                "clientAuth.clientAuthType `{}` needs clientAuth.caFiles",
                ca.client_auth_type.as_deref().unwrap_or_default()
            ));
            ClientAuth::None
        }
    };
    match ca.client_auth_type.as_deref() {
        None if has_roots => verify(true, errors),
        None | Some("NoClientCert") => ClientAuth::None,
        Some("RequestClientCert") => ClientAuth::Any { mandatory: false },
        Some("RequireAnyClientCert") => ClientAuth::Any { mandatory: true },
        Some("VerifyClientCertIfGiven") => verify(false, errors),
        Some("RequireAndVerifyClientCert") => verify(true, errors),
        Some(other) => {
            errors.push(format!("clientAuth.clientAuthType: unknown client auth type `{other}`"));
            ClientAuth::None
        }
    }
}

/// `RequestClientCert` and `RequireAnyClientCert`: a certificate is asked for and taken
/// without checking who issued it; the handshake's signature is still checked, so the
/// client holds its key.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    crate::tls::provider_signatures!(provider);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut TlsOptionsConfig)) -> TlsOptionsConfig {
        let mut c = TlsOptionsConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn versions_follow_go_names() {
        let (o, _) = TlsOptions::resolve("x", &cfg(|c| c.min_version = Some("VersionTLS13".into()))).unwrap();
        assert_eq!(o.versions.len(), 1);
        assert_eq!(o.versions[0].version, rustls::ProtocolVersion::TLSv1_3);
        let (o, _) = TlsOptions::resolve("x", &cfg(|c| c.max_version = Some("VersionTLS12".into()))).unwrap();
        assert_eq!(o.versions[0].version, rustls::ProtocolVersion::TLSv1_2);
        // Older minimums are met.
        assert!(TlsOptions::resolve("x", &cfg(|c| c.min_version = Some("VersionTLS10".into()))).is_ok());
        let e = TlsOptions::resolve("x", &cfg(|c| c.max_version = Some("VersionTLS11".into()))).unwrap_err();
        assert!(e[0].contains("nothing would be left"), "{e:?}");
        let e = TlsOptions::resolve(
            "x",
            &cfg(|c| {
                c.min_version = Some("VersionTLS13".into());
                c.max_version = Some("VersionTLS12".into());
            }),
        )
        .unwrap_err();
        assert!(e.iter().any(|e| e.contains("above")), "{e:?}");
        assert!(TlsOptions::resolve("x", &cfg(|c| c.min_version = Some("TLS1.2".into()))).is_err());
    }

    #[test]
    fn suites_and_curves_are_filtered_by_their_go_names() {
        let (o, w) = TlsOptions::resolve(
            "x",
            &cfg(|c| {
                c.cipher_suites = Some(vec![
                    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into(),
                    "TLS_AES_128_GCM_SHA256".into(),
                    "TLS_RSA_WITH_AES_128_CBC_SHA".into(),
                ]);
                c.curve_preferences = Some(vec!["CurveP384".into(), "secp521r1".into()]);
            }),
        )
        .unwrap();
        let tls12: Vec<u16> = o
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.version().version == rustls::ProtocolVersion::TLSv1_2)
            .map(|s| u16::from(s.suite()))
            .collect();
        assert_eq!(tls12, vec![0xc030]);
        assert_eq!(o.provider.cipher_suites.len(), 4, "TLS 1.3's three stay");
        assert_eq!(o.provider.kx_groups.len(), 1);
        assert_eq!(u16::from(o.provider.kx_groups[0].name()), 24);
        assert_eq!(w.len(), 2, "{w:?}");
        let e = TlsOptions::resolve("x", &cfg(|c| c.cipher_suites = Some(vec!["TLS_NOPE".into()]))).unwrap_err();
        assert!(e[0].contains("invalid CipherSuite"), "{e:?}");
        let e = TlsOptions::resolve("x", &cfg(|c| c.curve_preferences = Some(vec!["P-256".into()]))).unwrap_err();
        assert!(e[0].contains("invalid CurveID"), "{e:?}");
    }

    #[test]
    fn client_auth_types_follow_traefik() {
        let pki = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let pem = pki.cert.pem();
        let (o, _) = TlsOptions::resolve("x", &cfg(|c| c.client_auth.ca_files = vec![pem.clone()])).unwrap();
        assert!(matches!(o.client_auth, ClientAuth::Verify { mandatory: true, .. }));
        let (o, _) = TlsOptions::resolve(
            "x",
            &cfg(|c| {
                c.client_auth.ca_files = vec![pem.clone()];
                c.client_auth.client_auth_type = Some("VerifyClientCertIfGiven".into());
            }),
        )
        .unwrap();
        assert!(matches!(o.client_auth, ClientAuth::Verify { mandatory: false, .. }));
        let (o, _) = TlsOptions::resolve(
            "x",
            &cfg(|c| c.client_auth.client_auth_type = Some("RequireAnyClientCert".into())),
        )
        .unwrap();
        assert!(matches!(o.client_auth, ClientAuth::Any { mandatory: true }));
        let e = TlsOptions::resolve(
            "x",
            &cfg(|c| c.client_auth.client_auth_type = Some("RequireAndVerifyClientCert".into())),
        )
        .unwrap_err();
        assert!(e[0].contains("needs clientAuth.caFiles"), "{e:?}");
        let e = TlsOptions::resolve(
            "x",
            &cfg(|c| {
                c.client_auth.ca_files = vec!["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()]
            }),
        )
        .unwrap_err();
        assert!(!e.is_empty());
        let e = TlsOptions::resolve("x", &cfg(|c| c.client_auth.client_auth_type = Some("Maybe".into()))).unwrap_err();
        assert!(e[0].contains("unknown client auth type"), "{e:?}");
    }
}
