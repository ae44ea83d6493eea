//! The task-definition examples in `examples/ecs/`: ECS accepts them (berth-local's
//! validation), they have the documented shape (sidecar port, health check, dependsOn),
//! and every variable they set is one the binaries read and the Terraform modules set.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth_local::Ecs;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("examples/ecs").join(name)).unwrap()).unwrap()
}

fn names(container: &Value) -> Vec<String> {
    ["environment", "secrets"]
        .iter()
        .flat_map(|k| container[*k].as_array().cloned().unwrap_or_default())
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

fn container<'a>(def: &'a Value, name: &str) -> &'a Value {
    def["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

#[test]
fn the_task_definition_examples_are_valid_and_match_the_code_and_modules() {
    let gateway = load("gateway.task-definition.json");
    let app = load("whoami-with-sidecar.task-definition.json");
    let mut ecs = Ecs::new("us-east-1", "127.0.250.1".parse().unwrap());
    ecs.register_task_definition(&gateway).unwrap();
    ecs.register_task_definition(&app).unwrap();

    // The app shape: the sidecar on 15443 with its health check; the app depends on it.
    let sidecar = container(&app, "berth-sidecar");
    assert_eq!(sidecar["portMappings"][0]["containerPort"], 15443);
    assert_eq!(sidecar["healthCheck"]["command"][2], "health");
    let whoami = container(&app, "whoami");
    assert_eq!(whoami["dependsOn"][0]["containerName"], "berth-sidecar");
    assert_eq!(whoami["dependsOn"][0]["condition"], "HEALTHY");

    // Every variable is read by the binary, and set by the matching module.
    let gateway_code = std::fs::read_to_string(root().join("gateway/src/config/mod.rs")).unwrap();
    let gateway_module = std::fs::read_to_string(root().join("terraform/modules/gateway/main.tf")).unwrap();
    for n in names(container(&gateway, "berth-gateway")) {
        assert!(
            gateway_code.contains(&format!("env = \"{n}\"")),
            "berth-gateway does not read {n}"
        );
        assert!(gateway_module.contains(&n), "the gateway module does not set {n}");
    }
    // The gateway runs as 65532 and binds :80: the task lowers the unprivileged port start.
    let gw = container(&gateway, "berth-gateway");
    assert_eq!(gw["user"], "65532:65532");
    let web_port = gw["portMappings"][0]["containerPort"].as_u64().unwrap();
    if web_port < 1024 {
        let ctl = &gw["systemControls"][0];
        assert_eq!(ctl["namespace"], "net.ipv4.ip_unprivileged_port_start");
        assert!(ctl["value"].as_str().unwrap().parse::<u64>().unwrap() <= web_port);
        assert!(
            gateway_module.contains("net.ipv4.ip_unprivileged_port_start"),
            "the module lowers it too"
        );
    }
    let sidecar_code = std::fs::read_to_string(root().join("sidecar/src/config.rs")).unwrap();
    let sidecar_module = std::fs::read_to_string(root().join("terraform/modules/sidecar/main.tf")).unwrap();
    for n in names(sidecar) {
        assert!(
            sidecar_code.contains(&format!("\"{n}\"")),
            "berth-sidecar does not read {n}"
        );
        assert!(sidecar_module.contains(&n), "the sidecar module does not set {n}");
    }
}
