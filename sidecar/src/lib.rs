//! Berth's per-task sidecar. Today: reading the task metadata endpoint ([`metadata`]);
//! registration, inbound and outbound mTLS come with the sidecar issue.

pub mod metadata;
