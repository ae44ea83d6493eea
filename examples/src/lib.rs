//! berth-local (a local ECS), the demo apps and the benchmarks. The binaries live in
//! `src/bin/`; [`local`] is the local ECS they share with the tests, [`greeter`] the gRPC
//! demo service.

pub mod greeter;
pub mod local;

#[cfg(feature = "test-util")]
pub mod testing;
