//! The mesh control plane: the CA that issues SPIFFE identities ([`ca`]), the control API
//! sidecars talk to ([`control_api`]), and how gateway replicas find each other
//! ([`peers`]).

pub mod ca;
pub mod control_api;
pub mod peers;
