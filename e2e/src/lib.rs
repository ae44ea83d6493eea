//! The helper library of Berth's end-to-end tests (`e2e/tests/`): the one place the tests
//! get a gateway (in-process or its binary), `berth-local up`, an ECS API peer (berth-local
//! in-process, moto), headless Chromium, and the processes they start. HTTP clients,
//! certificates, free ports and the OTLP receiver are `berth_common::test_util`, which the
//! crates' own unit tests use too. Never in a production build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
mod control;
mod ecs;
mod gateway;
mod local_up;
mod mesh;
mod process;

pub use control::{Asker, control_call, new_csr, refusal_text, slot_of};
pub use ecs::{
    Moto, RunningTask, ecs_client, eni_address, iam_scenario_tasks, local_ecs, moto_awsvpc, moto_json, moto_query,
    moto_rest, moto_tool, roll_service, running_tasks, web_container, xml_field,
};
pub use gateway::{GatewayProcess, TestGateway, admin_json, iam_gateway, service, start};
pub use local_up::{LocalUp, demo_taskdef, live_sidecars, write_service};
pub use mesh::{inbound_call, mesh_slot};
pub use process::{
    ProcessInfo, PythonServer, args, bin, find_process, forwarder, go_tlsprobe, rss_kib, runnable_copy,
    sidecar_process, signal, temp_dir, tool,
};

/// Re-exported so a test names its helpers in one list.
pub use berth_common::test_util::free_port;
