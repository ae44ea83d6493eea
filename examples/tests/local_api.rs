//! berth-local's ECS API driven by the AWS SDK for Rust, operation by operation; the
//! operations moto also models run against moto too, to keep both peers honest.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{ContainerDefinition, DeploymentConfiguration, DesiredStatus, PortMapping};
use berth_examples::local::{Ecs, EcsServer};

use berth_examples::testing::{Moto, ecs_client as client};

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
