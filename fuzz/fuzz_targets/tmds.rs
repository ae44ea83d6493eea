#![no_main]
//! The sidecar's task-metadata parser, and what it derives from an accepted document
//! (its app container, its registration, the ECS resource of its spans), never panic
//! on any `/task` document; an accepted one always names its task and cluster.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(md) = berth_sidecar::metadata::parse("http://tmds.fuzz/v4/x/task", data) {
        assert!(
            !md.task_arn.is_empty() && !md.cluster.is_empty(),
            "accepted a task without ARN or cluster"
        );
        let _ = md.app();
        let reg = md.registration(Some(8080));
        assert_eq!(reg.task_arn, md.task_arn);
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
            let first = json["Containers"].get(0).cloned();
            let _ = berth_common::telemetry::resource::ecs(&json, first.as_ref());
        }
    }
});
