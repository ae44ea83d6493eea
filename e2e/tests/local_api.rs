//! berth-local's ECS API driven by the AWS SDK for Rust, operation by operation; the
//! operations moto also models run against moto too, to keep both peers honest.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{ContainerDefinition, DeploymentConfiguration, DesiredStatus, PortMapping};
use berth_local::{Ecs, EcsServer};

use berth_e2e::{Moto, ecs_client as client};

fn container() -> ContainerDefinition {
    ContainerDefinition::builder()
        .name("app")
        .image("berth-whoami")
        .memory(128)
        .docker_labels("berth.enable", "true")
        .port_mappings(PortMapping::builder().container_port(8080).build())
        .build()
}

/// The operations both peers model. Returns the ARNs of the tasks it started.
async fn common_scenario(ecs: &aws_sdk_ecs::Client, cluster: &str) -> Vec<String> {
    let created = ecs.create_cluster().cluster_name(cluster).send().await.unwrap();
    let cluster_arn = created.cluster().unwrap().cluster_arn().unwrap().to_string();
    assert!(cluster_arn.ends_with(&format!(":cluster/{cluster}")), "{cluster_arn}");
    let listed = ecs.list_clusters().send().await.unwrap();
    assert!(listed.cluster_arns().contains(&cluster_arn));
    let described = ecs.describe_clusters().clusters(cluster).send().await.unwrap();
    assert_eq!(described.clusters()[0].cluster_name(), Some(cluster));

    let family = format!("{cluster}-app");
    let r1 = ecs
        .register_task_definition()
        .family(&family)
        .container_definitions(container())
        .send()
        .await
        .unwrap();
    let r2 = ecs
        .register_task_definition()
        .family(&family)
        .container_definitions(container())
        .send()
        .await
        .unwrap();
    assert_eq!(r1.task_definition().unwrap().revision(), 1);
    assert_eq!(r2.task_definition().unwrap().revision(), 2);
    let arn2 = r2.task_definition().unwrap().task_definition_arn().unwrap().to_string();
    // Short name (latest), family:revision and ARN all resolve.
    for given in [family.clone(), format!("{family}:1"), arn2.clone()] {
        let d = ecs
            .describe_task_definition()
            .task_definition(&given)
            .send()
            .await
            .unwrap();
        let td = d.task_definition().unwrap();
        assert_eq!(td.family(), Some(family.as_str()));
        assert_eq!(
            td.container_definitions()[0].docker_labels().unwrap()["berth.enable"],
            "true"
        );
    }

    let run = ecs
        .run_task()
        .cluster(&cluster_arn)
        .task_definition(&family)
        .count(3)
        .group("service:api")
        .started_by("test-suite")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .send()
        .await
        .unwrap();
    let arns: Vec<String> = run.tasks().iter().map(|t| t.task_arn().unwrap().to_string()).collect();
    assert_eq!(arns.len(), 3);
    let listed = ecs.list_tasks().cluster(cluster).send().await.unwrap();
    assert_eq!(listed.task_arns().len(), 3);
    let by_family = ecs.list_tasks().cluster(cluster).family(&family).send().await.unwrap();
    assert_eq!(by_family.task_arns().len(), 3);
    let by_starter = ecs
        .list_tasks()
        .cluster(cluster)
        .started_by("test-suite")
        .send()
        .await
        .unwrap();
    assert_eq!(by_starter.task_arns().len(), 3);

    let d = ecs
        .describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(arns.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(d.tasks().len(), 3);
    for t in d.tasks() {
        assert_eq!(t.group(), Some("service:api"));
        assert_eq!(t.desired_status(), Some("RUNNING"));
        assert!(
            t.task_definition_arn()
                .unwrap()
                .contains(&format!("task-definition/{family}:2"))
        );
    }

    ecs.stop_task()
        .cluster(cluster)
        .task(&arns[0])
        .reason("test")
        .send()
        .await
        .unwrap();
    let stopped = ecs
        .list_tasks()
        .cluster(cluster)
        .desired_status(DesiredStatus::Stopped)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.task_arns(), &[arns[0].clone()]);
    let running = ecs
        .list_tasks()
        .cluster(cluster)
        .desired_status(DesiredStatus::Running)
        .send()
        .await
        .unwrap();
    assert_eq!(running.task_arns().len(), 2);

    let err = ecs.list_tasks().cluster("no-such-cluster").send().await.unwrap_err();
    assert_eq!(err.code(), Some("ClusterNotFoundException"), "{err:?}");
    arns
}

#[tokio::test]
async fn every_operation_against_berth_local() {
    let server = EcsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Ecs::new("us-east-1", Ipv4Addr::new(127, 0, 130, 1)),
    )
    .await
    .unwrap();
    let ecs = client(&server.endpoint_url());
    let arns = common_scenario(&ecs, "local").await;

    // What moto does not model: ListTasks' default filter (desiredStatus RUNNING, as the
    // API reference says; moto lists stopped tasks too), task ids as short names, pagination, the 100-ARN cap,
    // `failures`, services with deployments, and their errors.
    let default_filter = ecs.list_tasks().cluster("local").send().await.unwrap();
    assert_eq!(default_filter.task_arns().len(), 2);
    let id = arns[1].rsplit('/').next().unwrap();
    let d = ecs.describe_tasks().cluster("local").tasks(id).send().await.unwrap();
    assert_eq!(d.tasks()[0].task_arn(), Some(arns[1].as_str()));
    let missing = format!("{}/0000", arns[1].rsplit_once('/').unwrap().0);
    let d = ecs
        .describe_tasks()
        .cluster("local")
        .tasks(&arns[1])
        .tasks(&missing)
        .send()
        .await
        .unwrap();
    assert_eq!(d.tasks().len(), 1);
    assert_eq!(d.failures()[0].reason(), Some("MISSING"));
    assert_eq!(d.failures()[0].arn(), Some(missing.as_str()));
    let too_many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let err = ecs
        .describe_tasks()
        .cluster("local")
        .set_tasks(Some(too_many))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterException"));

    for _ in 0..2 {
        ecs.run_task()
            .cluster("local")
            .task_definition("local-app")
            .count(10)
            .send()
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = ecs
            .list_tasks()
            .cluster("local")
            .max_results(7)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(page.task_arns().len() <= 7);
        seen.extend(page.task_arns().iter().cloned());
        token = page.next_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 22);
    assert_eq!(pages, 4);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 22, "pages do not overlap");
    let err = ecs
        .list_tasks()
        .cluster("local")
        .max_results(101)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterException"));

    // Services: desiredCount, deployments with rolloutState, update and delete.
    let created = ecs
        .create_service()
        .cluster("local")
        .service_name("web")
        .task_definition("local-app:1")
        .desired_count(2)
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .minimum_healthy_percent(50)
                .maximum_percent(150)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let svc = created.service().unwrap();
    assert_eq!(svc.desired_count(), 2);
    assert_eq!(svc.deployments()[0].status(), Some("PRIMARY"));
    assert_eq!(
        svc.deployments()[0].rollout_state().map(|r| r.as_str()),
        Some("IN_PROGRESS")
    );
    server.ecs.lock().unwrap().reconcile_services();
    let d = ecs
        .describe_services()
        .cluster("local")
        .services("web")
        .send()
        .await
        .unwrap();
    assert_eq!(d.services()[0].running_count(), 2);
    assert_eq!(
        d.services()[0].deployments()[0].rollout_state().map(|r| r.as_str()),
        Some("IN_PROGRESS")
    );
    server.ecs.lock().unwrap().reconcile_services();
    let d = ecs
        .describe_services()
        .cluster("local")
        .services("web")
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.services()[0].deployments()[0].rollout_state().map(|r| r.as_str()),
        Some("COMPLETED")
    );
    let svc_tasks = ecs
        .list_tasks()
        .cluster("local")
        .service_name("web")
        .send()
        .await
        .unwrap();
    assert_eq!(svc_tasks.task_arns().len(), 2);

    let updated = ecs
        .update_service()
        .cluster("local")
        .service("web")
        .task_definition("local-app:2")
        .desired_count(3)
        .send()
        .await
        .unwrap();
    let deployments = updated.service().unwrap().deployments();
    assert_eq!(deployments.len(), 2, "a new PRIMARY and the old ACTIVE one");
    assert_eq!(deployments[0].status(), Some("PRIMARY"));
    assert_eq!(deployments[1].status(), Some("ACTIVE"));
    for _ in 0..3 {
        server.ecs.lock().unwrap().reconcile_services();
    }
    let d = ecs
        .describe_services()
        .cluster("local")
        .services("web")
        .services("ghost")
        .send()
        .await
        .unwrap();
    let s = &d.services()[0];
    assert_eq!(s.deployments().len(), 1, "rolled out");
    assert_eq!(s.running_count(), 3);
    assert!(s.task_definition().unwrap().ends_with("local-app:2"));
    assert_eq!(d.failures()[0].reason(), Some("MISSING"));
    let listed = ecs.list_services().cluster("local").send().await.unwrap();
    assert_eq!(listed.service_arns().len(), 1);

    let err = ecs
        .delete_service()
        .cluster("local")
        .service("web")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterException"), "scaled above 0");
    ecs.delete_service()
        .cluster("local")
        .service("web")
        .force(true)
        .send()
        .await
        .unwrap();
    let svc_tasks = ecs
        .list_tasks()
        .cluster("local")
        .service_name("web")
        .send()
        .await
        .unwrap();
    assert!(svc_tasks.task_arns().is_empty());
    let err = ecs
        .update_service()
        .cluster("local")
        .service("web")
        .desired_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ServiceNotFoundException"));

    // Faults on demand through the admin call: throttling, then an outage, then none.
    let post = |body: &'static str| {
        let req = http::Request::builder()
            .method("POST")
            .uri("/berth-local/faults")
            .header("host", "local")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap();
        berth_common::test_util::http1(server.addr, req)
    };
    assert_eq!(post(r#"{"throttleRate": 1.0}"#).await.status, 200);
    let err = ecs.list_clusters().send().await.unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));
    post(r#"{"outage": true}"#).await;
    assert!(ecs.list_clusters().send().await.is_err());
    post("{}").await;
    assert!(ecs.list_clusters().send().await.is_ok());

    // Container instances (bridge mode), ARN or id.
    let ci = server
        .ecs
        .lock()
        .unwrap()
        .register_container_instance("local", "i-0abc", Ipv4Addr::new(127, 0, 130, 250))
        .unwrap();
    let d = ecs
        .describe_container_instances()
        .cluster("local")
        .container_instances(&ci)
        .send()
        .await
        .unwrap();
    assert_eq!(d.container_instances()[0].ec2_instance_id(), Some("i-0abc"));
}

#[tokio::test]
async fn the_same_scenario_against_moto() {
    let moto = Moto::start().await;
    common_scenario(&client(&moto.endpoint), "parity").await;
}

/// boto3 (someone else's client, with botocore's machine-readable ECS model) against
/// berth-local: every answer's raw JSON is checked against the operation's output shape,
/// member by member (names, types, enum values), which catches the shape mistakes that
/// lenient clients, the AWS SDK for Rust included, would let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_sees_answers_shaped_as_the_ecs_model_says() {
    let server = EcsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Ecs::new("us-east-1", Ipv4Addr::new(127, 0, 134, 1)),
    )
    .await
    .unwrap();
    let script = r#"
import json, sys, boto3, botocore
raw = {}
def keep(http_response, operation_model, **_):
    raw[operation_model.name] = json.loads(http_response.content or b"{}")
ecs = boto3.client("ecs", endpoint_url=sys.argv[1])
ecs.meta.events.register("after-call.ecs.*", lambda http_response, model, **k: keep(http_response, model))
problems = []
def check(value, shape, path):
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict):
            return problems.append(f"{path}: not an object")
        for k, v in value.items():
            if k not in shape.members:
                problems.append(f"{path}.{k}: not a member of {shape.name}")
            else:
                check(v, shape.members[k], f"{path}.{k}")
    elif t == "list":
        if not isinstance(value, list):
            return problems.append(f"{path}: not a list")
        for i, v in enumerate(value):
            check(v, shape.member, f"{path}[{i}]")
    elif t == "map":
        if not isinstance(value, dict):
            return problems.append(f"{path}: not a map")
        for k, v in value.items():
            check(v, shape.value, f"{path}.{k}")
    elif t == "string":
        if not isinstance(value, str):
            problems.append(f"{path}: not a string: {value!r}")
        elif shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {shape.enum}")
    elif t in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path}: not an integer: {value!r}")
    elif t == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: not a boolean: {value!r}")
    elif t == "timestamp":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"{path}: not epoch seconds: {value!r}")
ecs.create_cluster(clusterName="b3")
ecs.register_task_definition(family="b3-app", containerDefinitions=[{
    "name": "app", "image": "berth-whoami", "memory": 128,
    "portMappings": [{"containerPort": 8080}], "dockerLabels": {"berth.enable": "true"}}])
ecs.run_task(cluster="b3", taskDefinition="b3-app", count=3)
pages = list(ecs.get_paginator("list_tasks").paginate(cluster="b3", PaginationConfig={"PageSize": 2}))
arns = [a for p in pages for a in p["taskArns"]]
assert len(pages) == 2 and len(arns) == 3, pages
d = ecs.describe_tasks(cluster="b3", tasks=arns + [arns[0].rsplit("/", 1)[0] + "/missing"])
assert len(d["tasks"]) == 3 and d["failures"][0]["reason"] == "MISSING", d["failures"]
ecs.create_service(cluster="b3", serviceName="web", taskDefinition="b3-app", desiredCount=2)
s = ecs.describe_services(cluster="b3", services=["web"])["services"][0]
assert s["deployments"][0]["rolloutState"] in ("IN_PROGRESS", "COMPLETED"), s["deployments"]
ecs.update_service(cluster="b3", service="web", desiredCount=1)
ecs.describe_task_definition(taskDefinition="b3-app:1")
ecs.list_services(cluster="b3")
ecs.describe_clusters(clusters=["b3"])
ecs.list_clusters()
ecs.stop_task(cluster="b3", task=arns[0], reason="test")
try:
    ecs.describe_tasks(cluster="nowhere", tasks=arns)
    problems.append("a missing cluster must be ClusterNotFoundException")
except ecs.exceptions.ClusterNotFoundException:
    pass
model = ecs.meta.service_model
for op, body in raw.items():
    shape = model.operation_model(op).output_shape
    if shape is not None and "__type" not in body:
        check(body, shape, op)
print(json.dumps({"operations": sorted(raw), "problems": problems}))
"#;
    let url = server.endpoint_url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &url])
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert!(report["operations"].as_array().unwrap().len() >= 12, "{report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
}
