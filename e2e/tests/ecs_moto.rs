//! ECS discovery against the moto server: someone else's implementation of the ECS
//! wire format, to catch our misreadings. Tasks are seeded with RunTask (FARGATE,
//! awsvpc, `group` `service:NAME`, container memory, security groups, a VPC with DNS
//! hostnames); moto-loopback makes moto hand out 127.64.0.0/10 addresses.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, LaunchType, NetworkMode, PortMapping};
use berth_common::test_util::{Backend, Proto, eventually, get, http1};
use berth_e2e::Moto;
use berth_e2e::{GatewayProcess, ecs_client, free_port};
use http::StatusCode;

async fn moto() -> Moto {
    Moto::start().await
}

#[tokio::test]
async fn moto_tasks_are_discovered_with_their_eni_addresses() {
    let moto = moto().await;
    let ecs = ecs_client(&moto.endpoint);
    let net = berth_e2e::moto_awsvpc(&moto.endpoint).await;
    let port = free_port();
    for cluster in ["moto-a", "moto-b"] {
        ecs.create_cluster().cluster_name(cluster).send().await.unwrap();
    }
    let def = |family: &str, labels: &[(&str, &str)]| {
        let mut c = ContainerDefinition::builder()
            .name("app")
            .image("berth-whoami")
            .memory(128)
            .port_mappings(PortMapping::builder().container_port(port as i32).build());
        for (k, v) in labels {
            c = c.docker_labels(*k, *v);
        }
        ecs.register_task_definition()
            .family(family)
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("256")
            .memory("512")
            .container_definitions(c.build())
            .send()
    };
    def(
        "shop",
        &[
            ("traefik.enable", "true"),
            ("traefik.http.routers.shop.rule", "Host(`shop.test`)"),
        ],
    )
    .await
    .unwrap();
    def("quiet", &[("traefik.http.routers.quiet.rule", "Host(`quiet.test`)")])
        .await
        .unwrap();
    def(
        "other",
        &[
            ("berth.enable", "true"),
            ("berth.http.routers.other.rule", "Host(`other.test`)"),
        ],
    )
    .await
    .unwrap();
    let run = |cluster: &str, family: &str, count: i32| {
        ecs.run_task()
            .cluster(cluster)
            .task_definition(family)
            .count(count)
            .group(format!("service:{family}"))
            .launch_type(LaunchType::Fargate)
            .network_configuration(net.clone())
            .send()
    };
    let shop = run("moto-a", "shop", 2).await.unwrap();
    run("moto-a", "quiet", 1).await.unwrap();
    run("moto-b", "other", 1).await.unwrap();

    // The ENI addresses moto gave the shop tasks, from DescribeTasks.
    let arns: Vec<String> = shop
        .tasks()
        .iter()
        .filter_map(|t| t.task_arn().map(String::from))
        .collect();
    let described = ecs
        .describe_tasks()
        .cluster("moto-a")
        .set_tasks(Some(arns.clone()))
        .send()
        .await
        .unwrap();
    let mut addrs = Vec::new();
    for t in described.tasks() {
        let ip = berth_e2e::eni_address(t).expect("moto reports the ENI address");
        assert!(
            ip.starts_with("127."),
            "moto-loopback keeps addresses on loopback: {ip}"
        );
        addrs.push(ip);
    }
    let mut backends = Vec::new();
    for ip in &addrs {
        backends.push(Backend::start_at(ip, Proto::Http1, format!("{ip}:{port}").parse().unwrap()).await);
    }

    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "moto-a", "--ecs-refresh", "300ms"],
        &[("AWS_ENDPOINT_URL", &moto.endpoint)],
    );
    gw.wait_admin().await;
    let routed = eventually(Duration::from_secs(20), || async {
        http1(gw.web, get("shop.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(
        routed,
        "shop not routed: {}\nlog:\n{}",
        gw.admin_json("/api/ecs").await,
        gw.log()
    );
    let services = gw.admin_json("/api/http/services").await;
    let mut urls: Vec<String> = services[0]["loadBalancer"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap().to_string())
        .collect();
    urls.sort();
    let mut want: Vec<String> = addrs.iter().map(|ip| format!("http://{ip}:{port}")).collect();
    want.sort();
    assert_eq!(urls, want, "the right ENI addresses");
    // Disabled containers stay out; the other cluster is not mixed in.
    assert_eq!(
        http1(gw.web, get("quiet.test", "/")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http1(gw.web, get("other.test", "/")).await.status,
        StatusCode::NOT_FOUND
    );
    let routers = gw.admin_json("/api/http/routers").await;
    assert_eq!(routers.as_array().unwrap().len(), 1, "{routers}");

    // A stopped task disappears.
    ecs.stop_task().cluster("moto-a").task(&arns[0]).send().await.unwrap();
    let gone = eventually(Duration::from_secs(15), || async {
        let s = gw.admin_json("/api/http/services").await;
        s[0]["loadBalancer"]["servers"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert!(
        gone,
        "stopped task still listed: {}",
        gw.admin_json("/api/http/services").await
    );
}
