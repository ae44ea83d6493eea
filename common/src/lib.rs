//! What the Berth gateway and sidecar share.
//!
//! Each concept lives in exactly one module here: the rule language in [`rules`], docker
//! labels in [`labels`], the dynamic configuration model in [`config`], the routing
//! snapshot in [`routing`], TLS loading in [`tls`] and HTTP plumbing in [`http`]; the trip
//! to an upstream (attempts, retries, ejection) in `forward`, the answers a proxy makes
//! itself in `synthetic`.

pub mod accesslog;
pub mod authz;
pub mod balance;
pub mod blocking;
#[cfg(feature = "net")]
pub mod body;
pub mod checklist;
pub mod config;
pub mod control;
pub mod cookie;
pub mod diag;
mod duration;
pub mod error;
#[cfg(feature = "net")]
pub mod forward;
pub mod grpc;
pub mod http;
pub mod iam;
pub mod identity;
pub mod labels;
#[cfg(feature = "net")]
pub mod logging;
pub mod middleware;
pub mod mtls;
pub mod path;
pub mod percent;
#[cfg(feature = "net")]
pub mod pool;
pub mod prom;
pub mod proxy_config;
pub mod routing;
pub mod rules;
#[cfg(feature = "net")]
pub mod runtime;
#[cfg(feature = "net")]
pub mod serve;
pub mod server_tls;
pub mod sticky;
#[cfg(feature = "net")]
pub mod synthetic;
#[cfg(feature = "net")]
pub mod telemetry;
pub mod tls;
pub mod transport;
mod tree;
#[cfg(feature = "net")]
pub mod upstream;

#[cfg(feature = "test-util")]
pub mod test_util;
