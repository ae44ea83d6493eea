//! The mesh control plane: the CA that issues SPIFFE identities ([`ca`]), the control API
//! sidecars talk to ([`control_api`]), and how gateway replicas find each other
//! ([`peers`]).

pub(crate) mod ca;
pub(crate) mod control_api;
pub(crate) mod peers;

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
    pub listen: SocketAddr,
    pub trust_domain: String,
    /// The bootstrap token, read from `--mesh-token-file` (trimmed).
    pub token: Option<String>,
    pub default_deny: bool,
    pub cert_lifetime: Duration,
    /// How replicas find each other (the list goes to every sidecar).
    pub peers: peers::Peers,
}
