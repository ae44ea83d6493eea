//! berth-local: a faithful local ECS, the embedded default of the README's main job
//! (`berth-local up`, `src/main.rs`, with the demo in `demo/`) and the harness of the
//! end-to-end tests. [`state`] is the in-memory model of clusters, task definitions, tasks
//! and container instances; [`ecs_api`] serves it over the real ECS wire protocol
//! (awsJson1.1), with fault injection; [`runner`] drives the task lifecycle and runs
//! containers as processes (a task with a `proxyConfiguration` in a network namespace of
//! its own, `netns`); [`tmds`] is the task metadata endpoint, and the task roles'
//! credentials, which `iam` also verifies as STS does.

mod ecs_api;
mod iam;
mod netns;
mod runner;
mod state;
pub mod tmds;

pub use ecs_api::{EcsServer, Faults};
pub use runner::{Programs, Runner, RunnerConfig, signal};
pub use state::TaskRole;
pub use state::{ApiError, Ecs, TaskState};
