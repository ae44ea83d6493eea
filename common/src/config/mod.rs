//! Traefik's dynamic configuration (routers, services, middlewares, TLS), as one typed
//! model shared by every provider.
//!
//! Providers differ only in how they produce a [`tree::Node`]: the file provider parses
//! YAML or TOML, docker labels are split on dots. One decoder ([`dynamic::decode`]) turns
//! the tree into [`DynamicConfig`], matching keys case-insensitively as Traefik does and
//! reporting every key it does not understand.

pub mod duration;
pub mod dynamic;
pub mod tree;

pub use duration::parse_duration;

/// A boolean as Go's `strconv.ParseBool` reads it (Traefik's configuration does):
/// `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
pub use dynamic::*;
pub use tree::Node;

#[cfg(test)]
mod tests;
