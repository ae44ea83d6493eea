//! The routing model: one immutable [`Snapshot`] built by a pure function from every
//! provider's view, swapped atomically by its owner, read once per request.

pub mod builder;
mod prefix;
pub mod snapshot;

pub use builder::{BuildOptions, MAX_WEIGHTED_DEPTH, ProviderView, build};
pub use snapshot::*;

#[cfg(test)]
mod tests;
