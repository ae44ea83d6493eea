//! The control-API messages between sidecars and the gateway. One module owns them so
//! both sides agree on every field.

use serde::{Deserialize, Serialize};

/// Path of certificate issuance and renewal (`POST`).
pub const CERTIFICATES_PATH: &str = "/v1/certificates";

/// A sidecar asks for a certificate: its key stays with it, only the CSR travels.
/// The bootstrap token is needed for the first certificate; a renewal over mTLS with
/// the current certificate needs none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    pub task_arn: String,
    /// PKCS#10 CSR, PEM. Only its public key is used.
    pub csr_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The identity the gateway derived from the task (never the one the CSR asked for).
    pub identity: String,
    /// Leaf then intermediates, PEM.
    pub certificate_chain_pem: String,
    /// The mesh's trust anchor, PEM.
    pub trust_anchor_pem: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: u64,
    /// The mesh denies callers of services without `berth.mesh.allow` (`--mesh-default-deny`).
    #[serde(default)]
    pub default_deny: bool,
}

/// Every refusal, with a stable code and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: String,
    pub error: String,
}
