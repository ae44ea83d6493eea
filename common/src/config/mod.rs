//! Traefik's dynamic configuration (routers, services, middlewares, TLS), as one typed
//! model shared by every provider.
//!
//! Providers differ only in how they produce a [`tree::Node`]: the file provider parses
//! YAML or TOML, docker labels are split on dots. One decoder ([`dynamic::decode`]) turns
//! the tree into [`DynamicConfig`], matching keys case-insensitively as Traefik does and
//! reporting every key it does not understand.

pub mod dynamic;

// The tree and durations are below the configuration (middlewares parse their options
// from a tree too); kept reachable here under their old paths.
pub use crate::duration::{self, parse_duration};
pub use crate::tree::{self, Node, parse_bool};
pub use dynamic::*;

#[cfg(test)]
mod tests;
