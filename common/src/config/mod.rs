//! Traefik's dynamic configuration (routers, services, middlewares, TLS), as one typed
//! model shared by every provider.
//!
//! Providers differ only in how they produce a [`tree::Node`]: the file provider parses
//! YAML or TOML, docker labels are split on dots. One decoder ([`decode()`]) turns the
//! tree into [`DynamicConfig`] (the model), matching keys case-insensitively as Traefik
//! does and reporting every key it does not understand. Merging the fragments of one
//! provider is the label code's ([`crate::labels::Merger`]).

mod decode;
mod model;

// The tree and durations are below the configuration (middlewares parse their options
// from a tree too); what other crates need of them is offered here.
pub use crate::duration::parse_duration;
pub use crate::tree::{Node, parse_bool};
pub(crate) use decode::sticky_from_labels;
pub use decode::{Mode, decode, parse_file, parse_tree};
pub use model::*;

#[cfg(test)]
mod tests;
