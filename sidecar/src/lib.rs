//! Berth's per-task sidecar: reads the task metadata endpoint ([`metadata`]), gets its
//! identity from the gateway ([`identity`]), registers and pushes the app's health
//! ([`register`]) over the control connection ([`control`]), terminates inbound mTLS in
//! front of the app with authorization ([`inbound`]), and carries the app's east-west
//! calls to peer sidecars ([`outbound`]). [`Sidecar::start`] wires them in named phases
//! (`start.rs`); the binary only reads the environment and forwards signals.

pub mod config;
pub mod control;
pub mod identity;
pub mod inbound;
pub mod metadata;
pub mod metrics;
pub mod outbound;
pub mod register;
mod start;

pub use start::{Sidecar, StartError, StopHandle};
