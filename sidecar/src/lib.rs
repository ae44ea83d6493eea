//! Berth's per-task sidecar: reads the task metadata endpoint ([`metadata`]), gets its
//! identity from the gateway ([`identity`]), and terminates inbound mTLS in front of the
//! app with authorization ([`inbound`]). Registration, health pushes and the outbound
//! listener come with the rest of the sidecar issue.

pub mod config;
pub mod identity;
pub mod inbound;
pub mod metadata;
