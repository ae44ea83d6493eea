#![allow(clippy::unwrap_used)]
use super::*;

fn opts() -> Options {
    Options {
        image: "registry.example/berth-sidecar:1".into(),
        gateway: Some("https://gw.internal:9443".into()),
        mesh_name: Some("orders".into()),
        mesh_allow: Some("gateway,web".into()),
        ..Default::default()
    }
}

/// As the AWS CLI prints it (four spaces), with what real task definitions have: several
/// containers, an existing dependsOn, secrets, a log router, log configuration.
const REAL: &str = r#"{
    "family": "orders",
    "networkMode": "awsvpc",
    "requiresCompatibilities": [
        "FARGATE"
    ],
    "cpu": "512",
    "memory": "1024",
    "taskRoleArn": "arn:aws:iam::123456789012:role/orders",
    "containerDefinitions": [
        {
            "name": "log_router",
            "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable",
            "essential": true,
            "firelensConfiguration": {
                "type": "fluentbit"
            }
        },
        {
            "name": "orders",
            "image": "orders:42",
            "essential": true,
            "portMappings": [
                {
                    "containerPort": 8080,
                    "protocol": "tcp"
                }
            ],
            "secrets": [
                {
                    "name": "DB_PASSWORD",
                    "valueFrom": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db"
                }
            ],
            "dependsOn": [
                {
                    "containerName": "log_router",
                    "condition": "START"
                }
            ],
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": "/ecs/orders",
                    "awslogs-region": "us-east-1",
                    "awslogs-stream-prefix": "orders"
                }
            }
        },
        {
            "name": "worker",
            "image": "orders-worker:42",
            "essential": false,
            "environment": []
        }
    ]
}
"#;

#[test]
fn inject_adds_the_sidecar_and_uninject_gives_the_input_back_byte_for_byte() {
    let mut o = opts();
    o.http_proxy = vec!["worker".into()];
    let out = run(REAL, &o).unwrap();
    let (v, _) = json::parse(&out).unwrap();
    let list = v.get("containerDefinitions").and_then(J::arr).unwrap();
    assert_eq!(name_of(&list[0]), SIDECAR);
    let side = &list[0];
    assert_eq!(
        side.get("image").and_then(J::str),
        Some("registry.example/berth-sidecar:1")
    );
    let env = serde_json::to_string(&print_value(side.get("environment").unwrap())).unwrap();
    assert!(
        env.contains("BERTH_APP_PORT") && env.contains("8080") && env.contains("gw.internal"),
        "{env}"
    );
    assert_eq!(
        side.get("logConfiguration")
            .and_then(|l| l.get("options"))
            .and_then(|o| o.get("awslogs-stream-prefix"))
            .and_then(J::str),
        Some(SIDECAR)
    );
    let orders = list.iter().find(|c| name_of(c) == "orders").unwrap();
    let deps = orders.get("dependsOn").and_then(J::arr).unwrap();
    assert_eq!(deps.len(), 2, "the existing dependsOn is kept");
    let router = list.iter().find(|c| name_of(c) == "log_router").unwrap();
    assert!(
        router.get("dependsOn").is_none(),
        "the FireLens router does not wait for the sidecar"
    );
    assert_eq!(
        orders
            .get("dockerLabels")
            .and_then(|l| l.get("berth.mesh.name"))
            .and_then(J::str),
        Some("orders")
    );
    let worker = list.iter().find(|c| name_of(c) == "worker").unwrap();
    let wenv: Vec<&str> = worker
        .get("environment")
        .and_then(J::arr)
        .unwrap()
        .iter()
        .filter_map(|e| e.get("name").and_then(J::str))
        .collect();
    assert_eq!(wenv, ["HTTP_PROXY", "NO_PROXY"]);
    // The containers it did not touch, and the key order, are as they were.
    assert!(
        out.starts_with("{\n    \"family\": \"orders\",\n    \"networkMode\": \"awsvpc\","),
        "{out}"
    );
    assert!(out.contains(
        "        {\n            \"name\": \"log_router\",\n            \"image\": \"public.ecr.aws/aws-observability/aws-for-fluent-bit:stable\","
    ));
    // Twice changes nothing; uninject restores the input exactly.
    assert_eq!(run(&out, &o).unwrap(), out);
    let back = run(
        &out,
        &Options {
            uninject: true,
            ..o.clone()
        },
    )
    .unwrap();
    assert_eq!(back, REAL);
    // Uninjecting what has no sidecar changes nothing either.
    assert_eq!(run(REAL, &Options { uninject: true, ..o }).unwrap(), REAL);
}

fn print_value(v: &J) -> serde_json::Value {
    serde_json::from_str(&json::print(v, &json::parse("{}").unwrap().1)).unwrap()
}

#[test]
fn the_examples_hand_made_sidecar_comes_out_and_goes_back_in() {
    let example = include_str!("../../../examples/ecs/whoami-with-sidecar.task-definition.json");
    let plain = run(
        example,
        &Options {
            uninject: true,
            ..opts()
        },
    )
    .unwrap();
    assert!(!plain.contains("berth-sidecar"), "{plain}");
    let o = Options {
        image: "123456789012.dkr.ecr.us-east-1.amazonaws.com/berth-sidecar:latest".into(),
        gateway: Some("https://berth-gateway-ctl-0123456789abcdef.elb.us-east-1.amazonaws.com:9443".into()),
        health_path: Some("/health".into()),
        ca_cert_secret: Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:berth/ca-cert".into()),
        ..Default::default()
    };
    let again = run(&plain, &o).unwrap();
    let (mine, _) = json::parse(&again).unwrap();
    let (theirs, _) = json::parse(example).unwrap();
    let first = |v: &J| v.get("containerDefinitions").and_then(J::arr).unwrap()[0].clone();
    let (mut a, b) = (first(&mine), first(&theirs));
    a.remove("dockerLabels");
    assert_eq!(a, b, "inject makes the sidecar the example has");
}

#[test]
fn describe_output_becomes_a_register_input() {
    let described = r#"{"taskDefinition": {"taskDefinitionArn": "arn:aws:ecs:us-east-1:1:task-definition/orders:3",
        "revision": 3, "status": "ACTIVE", "compatibilities": ["EC2", "FARGATE"], "registeredAt": 1.7e9,
        "family": "orders", "networkMode": "awsvpc", "containerDefinitions": [{"name": "app",
        "portMappings": [{"containerPort": 80}]}]}, "tags": [{"key": "team", "value": "a"}]}"#;
    let out = run(described, &opts()).unwrap();
    let (v, _) = json::parse(&out).unwrap();
    for k in READ_ONLY {
        assert!(v.get(k).is_none(), "{k} dropped: {out}");
    }
    assert_eq!(v.get("family").and_then(J::str), Some("orders"));
    assert!(v.get("tags").is_some() && v.get("taskDefinition").is_none());
}

#[test]
fn what_cannot_be_meshed_is_refused_with_the_reason() {
    let with = |patch: &str| REAL.replace("\"networkMode\": \"awsvpc\"", patch);
    let e = run(&with("\"networkMode\": \"bridge\""), &opts()).unwrap_err();
    assert!(e.contains("networkMode is bridge"), "{e}");
    let e = run(&with("\"pidMode\": \"task\""), &opts()).unwrap_err();
    assert!(e.contains("networkMode is bridge (the EC2 default)"), "{e}");
    let e = run(&REAL.replace("8080", "15001"), &opts()).unwrap_err();
    assert!(e.contains("maps port 15001"), "{e}");
    let two = REAL.replace(
        "\"essential\": false,",
        "\"essential\": false,\n            \"portMappings\": [{\"containerPort\": 9000}],",
    );
    let e = run(&two, &opts()).unwrap_err();
    assert!(e.contains("give --app-port"), "{e}");
    assert!(
        run(
            &two,
            &Options {
                app_port: Some(9000),
                ..opts()
            }
        )
        .is_ok()
    );
    let e = run(&REAL.replace("\"family\": \"orders\"", "\"family\": \"orders\",\n    \"x\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"), &opts()).unwrap_err();
    assert!(e.contains("nested deeper"), "{e}");
    let e = run(&REAL.replace("\"name\": \"worker\"", "\"name\": \"a;b\""), &opts()).unwrap_err();
    assert!(e.contains("not one ECS accepts"), "{e}");
    let e = run(
        REAL,
        &Options {
            app_port: Some(15443),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(e.contains("--app-port 15443"), "{e}");
    let e = run("[1]", &opts()).unwrap_err();
    assert!(e.contains("not a task definition"), "{e}");
    let e = run(
        REAL,
        &Options {
            http_proxy: vec!["nope".into()],
            ..opts()
        },
    )
    .unwrap_err();
    assert!(e.contains("no container nope"), "{e}");
    let taken = REAL.replace(
        "\"image\": \"orders:42\",",
        "\"image\": \"orders:42\",\n            \"dockerLabels\": {\"berth.mesh.name\": \"other\"},",
    );
    let e = run(&taken, &opts()).unwrap_err();
    assert!(e.contains("berth.mesh.name"), "{e}");
}

#[test]
fn options_are_read_as_flags() {
    let args: Vec<String> = [
        "td.json",
        "--gateway=https://g:9443",
        "--app-port",
        "8080",
        "--uninject",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (o, file) = Options::parse(&args).unwrap();
    assert_eq!(file.as_deref(), Some("td.json"));
    assert_eq!(o.gateway.as_deref(), Some("https://g:9443"));
    assert_eq!(o.app_port, Some(8080));
    assert!(o.uninject);
    assert!(Options::parse(&["--bogus".to_string()]).is_err());
    assert!(Options::parse(&["--app-port".to_string(), "x".to_string()]).is_err());
    assert!(Options::parse(&["a".to_string(), "b".to_string()]).is_err());
}

#[test]
fn the_terraform_module_uses_the_published_container_definition() {
    let module = include_str!("../../../terraform/modules/sidecar/main.tf");
    assert!(
        module.contains(r#"jsondecode(file("${path.module}/container-definition.json"))"#),
        "the module reads the published definition"
    );
    for fixed in [
        "healthCheck",
        "readonlyRootFilesystem",
        "portMappings",
        "essential",
        "65532",
    ] {
        assert!(
            !module.contains(fixed),
            "the module repeats `{fixed}`: it comes from the published file"
        );
    }
    let (c, _) = super::json::parse(super::CONTAINER_DEFINITION).unwrap();
    assert_eq!(name_of(&c), "berth-sidecar");
    let health = c
        .get("healthCheck")
        .and_then(|h| h.get("command"))
        .and_then(J::arr)
        .unwrap();
    assert_eq!(
        health.iter().filter_map(J::str).collect::<Vec<_>>(),
        ["CMD", "/berth-sidecar", "health"]
    );
}
