//! Certificates by ACME (RFC 8555), as Traefik's `certificatesResolvers.<name>.acme`:
//! for every router that names a resolver (`tls.certResolver`, or its entrypoint's), one
//! certificate for its `tls.domains` or for the `Host` names its rule requires, obtained
//! with HTTP-01 (answered on the resolver's `httpChallenge.entryPoint`) or TLS-ALPN-01
//! (answered in the TLS handshake of any entrypoint), renewed at two thirds of its
//! lifetime, kept in the resolver's `storage` (Traefik's `acme.json` format, so a file
//! Traefik wrote is used as it is), and served by SNI after the file provider's
//! certificates. The ACME client is `instant-acme`; its HTTP goes through the gateway's
//! own rustls client, trusting the system roots and `caCertificates`.
//!
//! [`challenges`] holds what the entrypoints answer; [`store`] reads and writes the
//! storage file; [`order`] obtains one certificate; [`manager`] decides what to obtain
//! and when, with back-off, never dropping the last good certificate.

mod challenges;
mod manager;
mod order;
mod store;

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

/// One `certificatesResolvers.<name>.acme`.
#[derive(Debug, Clone)]
pub struct ResolverSettings {
    pub name: String,
    pub email: Option<String>,
    pub ca_server: String,
    /// More roots to trust the CA server by (`caCertificates`), beside the system's.
    pub ca_certificates: Vec<PathBuf>,
    /// The storage file (`acme.json`): account and certificates.
    pub storage: PathBuf,
    pub key_type: KeyType,
    /// `certificatesDuration`: how long the CA's certificates last, for the renewal
    /// schedule when a certificate cannot be read.
    pub certificates_duration: Duration,
    /// `httpChallenge.entryPoint`.
    pub http_challenge: Option<String>,
    /// `tlsChallenge`.
    pub tls_challenge: bool,
}
