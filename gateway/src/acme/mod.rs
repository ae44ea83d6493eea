//! Certificates by ACME (RFC 8555), as Traefik's `certificatesResolvers.<name>.acme`:
//! for every router that names a resolver (`tls.certResolver`, or its entrypoint's), one
//! certificate for its `tls.domains` or for the `Host` names its rule requires, obtained
//! with HTTP-01 (answered on the resolver's `httpChallenge.entryPoint`), TLS-ALPN-01
//! (answered in the TLS handshake of any entrypoint) or DNS-01 (TXT records in Route 53;
//! the only way to wildcards), renewed at two thirds of its
//! lifetime, kept in the resolver's `storage` (Traefik's `acme.json` format, so a file
//! Traefik wrote is used as it is), and served by SNI after the file provider's
//! certificates. The ACME client is `instant-acme`; its HTTP goes through the gateway's
//! own rustls client, trusting the system roots and `caCertificates`.
//!
//! Several replicas share one DynamoDB table instead (`storage: dynamodb://TABLE`): one
//! of them orders a given certificate at a time, all of them serve it, and whichever the
//! load balancer picks answers the CA's challenge.
//!
//! [`challenges`] holds what the entrypoints answer; [`route53`] the DNS-01 records; [`storage`] is where a resolver
//! keeps its state, [`file`] (`acme.json`) or [`table`] (shared); [`order`] obtains one
//! certificate; [`manager`] decides what to obtain and when, with back-off, never
//! dropping the last good certificate.

mod challenges;
mod file;
mod manager;
mod order;
mod route53;
mod storage;
mod table;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use challenges::ACME_TLS_ALPN;
pub(crate) use manager::Acme;

/// Let's Encrypt's production directory, Traefik's default `caServer`.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The key of the certificates a resolver obtains (`keyType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ec256,
    Ec384,
}

/// A resolver's `storage`: a file (Traefik's `acme.json`) or, written
/// `dynamodb://TABLE`, a DynamoDB table every replica shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSettings {
    File(PathBuf),
    DynamoDb(String),
}

impl StorageSettings {
    /// From the option's text; `dynamodb://` with a name DynamoDB would refuse is an error.
    pub fn parse(text: &str) -> Result<StorageSettings, String> {
        if text.starts_with("dynamodb://") {
            return table::table_name(text)
                .map(|t| StorageSettings::DynamoDb(t.to_string()))
                .ok_or_else(|| format!("`{text}` is not a DynamoDB table name (3 to 255 of a-z, A-Z, 0-9, _ - .)"));
        }
        if text.is_empty() {
            return Err("empty".into());
        }
        Ok(StorageSettings::File(text.into()))
    }
}

/// One `certificatesResolvers.<name>.acme`.
#[derive(Debug, Clone)]
pub struct ResolverSettings {
    pub name: String,
    pub email: Option<String>,
    pub ca_server: String,
    /// More roots to trust the CA server by (`caCertificates`), beside the system's.
    pub ca_certificates: Vec<PathBuf>,
    /// The name the CA server's certificate is verified for instead of `caServer`'s host
    /// (`caServerName`).
    pub ca_server_name: Option<rustls_pki_types::ServerName<'static>>,
    /// Where the account and certificates are kept (`storage`).
    pub storage: StorageSettings,
    pub key_type: KeyType,
    /// `certificatesDuration`: how long the CA's certificates last, for the renewal
    /// schedule when a certificate cannot be read.
    pub certificates_duration: Duration,
    /// `httpChallenge.entryPoint`.
    pub http_challenge: Option<String>,
    /// `tlsChallenge`.
    pub tls_challenge: bool,
    /// `dnsChallenge` (provider `route53`).
    pub dns_challenge: Option<DnsChallenge>,
    /// `eab`: External Account Binding (RFC 8555 section 7.3.4), the key ID and the
    /// HMAC key (decoded from `hmacEncoded`, base64url).
    pub eab: Option<(String, Vec<u8>)>,
}

/// `dnsChallenge` with Route 53.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsChallenge {
    /// `delayBeforeCheck` (`propagation.delayBeforeChecks`): how long to wait after
    /// Route 53 has the record on all its servers before the CA is told to look.
    pub delay_before_check: Duration,
}
