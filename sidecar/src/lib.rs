//! Berth's per-task sidecar: reads the task metadata endpoint ([`metadata`]), gets its
//! identity from the gateway ([`identity`], proved by the task role with [`iam`] or by the
//! bootstrap token), registers and pushes the app's health
//! ([`register`]) over the control connection ([`control`]), terminates inbound mTLS in
//! front of the app with authorization ([`inbound`]), and carries the app's east-west
//! calls to peer sidecars ([`outbound`]); under the task's `proxyConfiguration` it takes
//! the connections ECS redirects to it ([`transparent`], and the inbound's ingress).
//! [`Sidecar::start`] wires them in named phases (`start.rs`); the binary only reads the
//! environment and forwards signals.

pub mod check;
mod config;
mod control;
mod iam;
mod identity;
mod inbound;
pub mod inject;
pub mod metadata;
mod metrics;
mod outbound;
mod register;
mod start;
mod transparent;

// What the binary, the end-to-end tests and the fuzz targets use; everything else is
// private to the crate (`unreachable_pub` holds it so). `metadata` (the TMDS v4 model and
// reader) is public whole: `berth-sidecar inspect` prints it and a fuzz target parses it.
pub use config::Settings;
/// Public for the end-to-end tests, which sign proofs as a sidecar does against moto's STS.
pub use iam::IamSigner;
pub use start::{Sidecar, StartError, StopHandle};
