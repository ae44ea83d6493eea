//! The mesh control plane: the CA that issues SPIFFE identities ([`ca`]), the control API
//! sidecars talk to ([`control_api`]), how a first certificate is proved with the task's
//! IAM role ([`iam`]), how gateway replicas find each other ([`peers`]), and the roots
//! everyone is verified against, reloaded for CA rotation ([`trust`]).

pub(crate) mod ca;
pub(crate) mod control_api;
pub(crate) mod iam;
pub(crate) mod peers;
pub(crate) mod trust;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the mesh CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    Files { cert: PathBuf, key: PathBuf },
    Dev(PathBuf),
}

/// The mesh control plane's settings (`--mesh-*`), built by `config.rs`.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub ca: CaSource,
    /// More roots to trust (`--mesh-trust-bundle`), beside the CA's.
    pub trust_bundle: Option<PathBuf>,
    pub listen: SocketAddr,
    pub trust_domain: String,
    /// The bootstrap token, read from `--mesh-token-file` (trimmed).
    pub token: Option<String>,
    /// How a first certificate is proved (`--mesh-auth`).
    pub auth: MeshAuth,
    /// The STS endpoint IAM proofs are verified at (with `auth.iam`).
    pub sts_endpoint: Option<String>,
    pub default_deny: bool,
    pub cert_lifetime: Duration,
    /// How replicas find each other (the list goes to every sidecar).
    pub peers: peers::Peers,
}

/// How a sidecar proves its task for a first certificate (`--mesh-auth`): the bootstrap
/// token, the task role's IAM identity, either, or (neither, `--mesh-dev-ca` or
/// `--mesh-insecure-no-token` only) nothing beyond the task's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshAuth {
    pub token: bool,
    pub iam: bool,
}
