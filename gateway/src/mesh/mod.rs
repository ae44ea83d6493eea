//! The mesh control plane: the CA that issues SPIFFE identities (more to come: the
//! control API, registrations, the snapshot stream).

pub mod ca;
pub mod control_api;
