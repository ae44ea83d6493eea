//! ECS discovery against berth-local's ECS API (the real wire protocol), for what moto
//! does not model: pagination, the 100-ARN cap, `failures`, throttling and 500s,
//! health states, and the API call budget.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerDefinition, NetworkMode, PortMapping};
use berth_common::test_util::{Backend, Proto, eventually, get, http1};
use berth_e2e::{GatewayProcess, ecs_client, free_port, local_ecs, web_container};
use berth_local::{EcsServer, Faults};
use http::StatusCode;

fn task_addresses(server: &EcsServer, family: &str) -> Vec<(String, Ipv4Addr)> {
    let ecs = server.ecs.lock().unwrap();
    ecs.clusters["prod"]
        .tasks
        .values()
        .filter(|t| t.taskdef_arn.contains(&format!("/{family}:")) && t.desired_status == "RUNNING")
        .map(|t| (t.id.clone(), t.address.unwrap()))
        .collect()
}

#[tokio::test]
async fn discovers_routes_and_follows_stops_and_health() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 110, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let port = free_port();
    ecs.register_task_definition()
        .family("web")
        .network_mode(NetworkMode::Awsvpc)
        .container_definitions(web_container(
            port,
            &[
                ("traefik.enable", "true"),
                ("traefik.http.routers.web.rule", "Host(`web.test`)"),
            ],
        ))
        .send()
        .await
        .unwrap();
    ecs.register_task_definition()
        .family("hidden")
        .container_definitions(web_container(port, &[]))
        .send()
        .await
        .unwrap();
    ecs.run_task()
        .cluster("prod")
        .task_definition("web")
        .count(3)
        .group("service:web")
        .send()
        .await
        .unwrap();
    ecs.run_task()
        .cluster("prod")
        .task_definition("hidden")
        .send()
        .await
        .unwrap();
    let mut backends = Vec::new();
    for (id, ip) in task_addresses(&server, "web") {
        backends.push((
            id.clone(),
            Backend::start_at(&id, Proto::Http1, SocketAddr::from((ip, port))).await,
        ));
    }

    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "prod", "--ecs-refresh", "300ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let web = gw.web;
    let routed = eventually(Duration::from_secs(15), || async {
        http1(web, get("web.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(routed, "not routed; log:\n{}", gw.log());
    let seen = std::sync::Mutex::new(BTreeSet::new());
    let all = eventually(Duration::from_secs(10), || async {
        let r = http1(web, get("web.test", "/")).await;
        assert_eq!(r.status, StatusCode::OK);
        let mut seen = seen.lock().unwrap();
        seen.insert(r.headers["x-backend"].to_str().unwrap().to_string());
        seen.len() == 3
    })
    .await;
    assert!(all, "all three tasks get traffic: {:?}", seen.lock().unwrap());

    let routers = gw.admin_json("/api/http/routers").await;
    let names: Vec<&str> = routers
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["web@ecs"], "the disabled family is not routed: {names:?}");
    let services = gw.admin_json("/api/http/services").await;
    assert_eq!(services[0]["name"], "service-web-app@ecs", "Traefik's ECS naming");
    assert_eq!(services[0]["loadBalancer"]["servers"].as_array().unwrap().len(), 3);
    let status = gw.admin_json("/api/ecs").await;
    assert_eq!(status["clusters"][0]["name"], "prod");
    assert!(status["clusters"][0]["lastSuccessUnix"].is_number());
    assert_eq!(status["clusters"][0]["tasks"], 4);

    // A stopped task leaves the rotation.
    let (stopped_id, _) = &backends[0];
    ecs.stop_task().cluster("prod").task(stopped_id).send().await.unwrap();
    let left = eventually(Duration::from_secs(10), || async {
        let s = gw.admin_json("/api/http/services").await;
        s[0]["loadBalancer"]["servers"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert!(left, "stopped task still routed");
    let before = backends[0].1.request_count();
    for _ in 0..20 {
        assert_eq!(http1(web, get("web.test", "/")).await.status, StatusCode::OK);
    }
    assert_eq!(
        backends[0].1.request_count(),
        before,
        "no request reaches the stopped task"
    );
}

#[tokio::test]
async fn unhealthy_containers_are_excluded_and_unknown_kept() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 111, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let port = free_port();
    let container = ContainerDefinition::builder()
        .name("app")
        .image("x")
        .docker_labels("berth.enable", "true")
        .docker_labels("berth.http.routers.h.rule", "Host(`h.test`)")
        .port_mappings(PortMapping::builder().container_port(port as i32).build())
        .health_check(
            aws_sdk_ecs::types::HealthCheck::builder()
                .command("CMD-SHELL")
                .command("true")
                .build()
                .unwrap(),
        )
        .build();
    ecs.register_task_definition()
        .family("h")
        .container_definitions(container)
        .send()
        .await
        .unwrap();
    ecs.run_task()
        .cluster("prod")
        .task_definition("h")
        .count(2)
        .group("service:h")
        .send()
        .await
        .unwrap();
    let tasks = task_addresses(&server, "h");
    let mut backends = Vec::new();
    for (id, ip) in &tasks {
        backends.push(Backend::start_at(id, Proto::Http1, SocketAddr::from((*ip, port))).await);
    }
    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "prod", "--ecs-refresh", "200ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let servers = |v: serde_json::Value| v[0]["loadBalancer"]["servers"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        eventually(Duration::from_secs(15), || async {
            servers(gw.admin_json("/api/http/services").await) == 2
        })
        .await,
        "UNKNOWN health is routed; log:\n{}",
        gw.log()
    );
    server
        .ecs
        .lock()
        .unwrap()
        .set_health("prod", &tasks[0].0, "app", "UNHEALTHY");
    assert!(
        eventually(Duration::from_secs(10), || async {
            servers(gw.admin_json("/api/http/services").await) == 1
        })
        .await,
        "an UNHEALTHY container leaves the rotation"
    );
    let before = backends[0].request_count();
    for _ in 0..10 {
        assert_eq!(http1(gw.web, get("h.test", "/")).await.status, StatusCode::OK);
    }
    assert_eq!(backends[0].request_count(), before);
    server
        .ecs
        .lock()
        .unwrap()
        .set_health("prod", &tasks[0].0, "app", "HEALTHY");
    assert!(
        eventually(Duration::from_secs(10), || async {
            servers(gw.admin_json("/api/http/services").await) == 2
        })
        .await
    );
}

/// 1,000 tasks over 10 rounds with 10 tasks replaced per round: the API calls Berth
/// makes, next to what Traefik's algorithm makes for the same history.
#[tokio::test]
async fn api_call_budget_for_a_thousand_tasks() {
    let server = local_ecs(Ipv4Addr::new(127, 1, 0, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let port = free_port();
    for rev in 0..2 {
        ecs.register_task_definition()
            .family("big")
            .container_definitions(web_container(
                port,
                &[("berth.enable", "true"), ("berth.rev", &rev.to_string())],
            ))
            .send()
            .await
            .unwrap();
    }
    {
        let mut e = server.ecs.lock().unwrap();
        for _ in 0..100 {
            e.run_task(
                Some("prod"),
                "big:1",
                10,
                Some("service:big"),
                None,
                None,
                &serde_json::Value::Null,
            )
            .unwrap();
        }
    }
    let refresh = Duration::from_millis(1500);
    let gw = GatewayProcess::spawn(
        &[
            "--ecs-cluster",
            "prod",
            "--ecs-refresh",
            "1500ms",
            "--ecs-api-rate",
            "1000",
            "--ecs-api-burst",
            "1000",
        ],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let rounds = |gw: &GatewayProcess| {
        let gw_admin = gw.admin;
        async move {
            let r = berth_common::test_util::http1(gw_admin, get("a", "/api/ecs")).await;
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            v["clusters"][0]["rounds"].as_u64().unwrap_or(0)
        }
    };
    assert!(
        eventually(Duration::from_secs(20), || async { rounds(&gw).await >= 1 }).await,
        "{}",
        gw.log()
    );
    let first = server.calls();
    assert_eq!(first.get("ListTasks"), Some(&10), "{first:?}");
    assert_eq!(first.get("DescribeTasks"), Some(&10), "100-ARN batches: {first:?}");
    assert_eq!(
        first.get("DescribeTaskDefinition"),
        Some(&1),
        "one per revision: {first:?}"
    );
    let all = eventually(Duration::from_secs(10), || async {
        let services = gw.admin_json("/api/http/services").await;
        services[0]["loadBalancer"]["servers"].as_array().map(Vec::len) == Some(1000)
    })
    .await;
    assert!(all, "1,000 servers published");

    // Nine more rounds; before each, replace 10 tasks with tasks of revision 2.
    let mut replaced = 0;
    for round in 2..=10u64 {
        {
            let mut e = server.ecs.lock().unwrap();
            let victims: Vec<String> = e.clusters["prod"]
                .tasks
                .values()
                .filter(|t| t.desired_status == "RUNNING" && t.taskdef_arn.ends_with(":1"))
                .take(10)
                .map(|t| t.id.clone())
                .collect();
            for v in &victims {
                e.stop_task(Some("prod"), v, None).unwrap();
            }
            e.run_task(
                Some("prod"),
                "big:2",
                10,
                Some("service:big"),
                None,
                None,
                &serde_json::Value::Null,
            )
            .unwrap();
            replaced += victims.len();
        }
        assert!(
            eventually(refresh * 4, || async { rounds(&gw).await >= round }).await,
            "round {round} did not complete"
        );
    }
    let total = server.calls();
    let list = total["ListTasks"];
    let describe = total["DescribeTasks"];
    let defs = total["DescribeTaskDefinition"];
    let n_rounds = rounds(&gw).await;
    // Traefik per round: ListTasks pages + one DescribeTasks per page, and one
    // DescribeTaskDefinition per task ARN it has not seen (its cache key).
    let traefik = n_rounds * 10 + n_rounds * 10 + 1000 + replaced as u64;
    println!(
        "ECS API calls, 1,000 tasks, {n_rounds} rounds, {replaced} tasks replaced: \
         berth ListTasks={list} DescribeTasks={describe} DescribeTaskDefinition={defs} total={} | traefik algorithm total={traefik}",
        list + describe + defs
    );
    assert_eq!(list, 10 * n_rounds, "a round costs ceil(N/100) ListTasks");
    assert_eq!(defs, 2, "one DescribeTaskDefinition per revision");
    assert!(
        describe <= 10 + (n_rounds - 1),
        "only new tasks are described: {describe}"
    );
    assert!(list + describe + defs < traefik / 5);
}

#[tokio::test]
async fn throttling_and_outages_keep_the_last_good_view() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 112, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let port = free_port();
    ecs.register_task_definition()
        .family("t")
        .container_definitions(web_container(
            port,
            &[
                ("berth.enable", "true"),
                ("berth.http.routers.t.rule", "Host(`t.test`)"),
            ],
        ))
        .send()
        .await
        .unwrap();
    {
        let mut e = server.ecs.lock().unwrap();
        for _ in 0..25 {
            e.run_task(
                Some("prod"),
                "t",
                10,
                Some("service:t"),
                None,
                None,
                &serde_json::Value::Null,
            )
            .unwrap();
        }
    }
    let backend_ip = task_addresses(&server, "t")[0].1;
    let _b = Backend::start_at("t0", Proto::Http1, SocketAddr::from((backend_ip, port))).await;
    // Throttling on half of the calls from the start: retries with back-off still
    // complete rounds.
    server.set_faults(Faults {
        throttle_rate: 0.4,
        error_rate: 0.2,
        ..Faults::default()
    });
    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "prod", "--ecs-refresh", "200ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let count = |v: serde_json::Value| v[0]["loadBalancer"]["servers"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(gw.admin_json("/api/http/services").await) == 250
        })
        .await,
        "all 250 tasks despite throttling; log:\n{}",
        gw.log()
    );
    let throttled = eventually(Duration::from_secs(10), || async {
        let metrics = http1(gw.admin, get("a", "/metrics")).await.body;
        metrics.contains("berth_ecs_api_calls_total{operation=\"ListTasks\",outcome=\"throttled\"}")
    })
    .await;
    assert!(
        throttled,
        "throttled calls are counted: {}",
        http1(gw.admin, get("a", "/metrics")).await.body
    );

    // A full outage: rounds fail, the routes stay, the error is reported.
    server.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let reported = eventually(Duration::from_secs(20), || async {
        gw.admin_json("/api/ecs").await["clusters"][0]["lastError"].is_string()
    })
    .await;
    assert!(reported, "{}", gw.log());
    assert_eq!(
        count(gw.admin_json("/api/http/services").await),
        250,
        "no partial or empty view published"
    );
    // The router is still served (only one of the 250 tasks has a live backend here,
    // so the answer may be a 502 from a dead one, but never a 404).
    assert_ne!(http1(gw.web, get("t.test", "/")).await.status, StatusCode::NOT_FOUND);
    // Recovery.
    server.set_faults(Faults::default());
    assert!(
        eventually(Duration::from_secs(20), || async {
            gw.admin_json("/api/ecs").await["clusters"][0]["lastError"].is_null()
        })
        .await
    );
}

#[tokio::test]
async fn a_missing_cluster_is_reported_by_name() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 113, 1)).await;
    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "nope", "--ecs-refresh", "200ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let err = eventually(Duration::from_secs(10), || async {
        gw.admin_json("/api/ecs").await["clusters"][0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("cluster nope not found"))
    })
    .await;
    assert!(err, "{}", gw.admin_json("/api/ecs").await);
    // Not ready until discovery has a first good round.
    assert_eq!(
        http1(gw.admin, get("a", "/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn bridge_mode_uses_the_instance_address_and_host_ports() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 114, 1)).await;
    let host_ip = Ipv4Addr::new(127, 0, 114, 200);
    server
        .ecs
        .lock()
        .unwrap()
        .register_container_instance("prod", "i-0123456789abcdef0", host_ip)
        .unwrap();
    let ecs = ecs_client(&server.endpoint_url());
    // Two tasks on one instance: the same container port, distinct host ports.
    let (p1, p2) = (free_port(), free_port());
    for p in [p1, p2] {
        let c = ContainerDefinition::builder()
            .name("app")
            .image("x")
            .docker_labels("berth.enable", "true")
            .docker_labels("berth.http.routers.b.rule", "Host(`bridge.test`)")
            .port_mappings(PortMapping::builder().container_port(80).host_port(p as i32).build())
            .build();
        ecs.register_task_definition()
            .family(format!("b{p}"))
            .network_mode(NetworkMode::Bridge)
            .container_definitions(c)
            .send()
            .await
            .unwrap();
        ecs.run_task()
            .cluster("prod")
            .task_definition(format!("b{p}"))
            .group("service:b")
            .send()
            .await
            .unwrap();
    }
    let b1 = Backend::start_at("b1", Proto::Http1, SocketAddr::from((host_ip, p1))).await;
    let b2 = Backend::start_at("b2", Proto::Http1, SocketAddr::from((host_ip, p2))).await;
    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "prod", "--ecs-refresh", "300ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let routed = eventually(Duration::from_secs(15), || async {
        http1(gw.web, get("bridge.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(routed, "{}\n{}", gw.admin_json("/api/ecs").await, gw.log());
    for _ in 0..20 {
        assert_eq!(http1(gw.web, get("bridge.test", "/")).await.status, StatusCode::OK);
    }
    assert!(b1.request_count() > 0 && b2.request_count() > 0);
    let mut urls: Vec<String> = gw.admin_json("/api/http/services").await[0]["loadBalancer"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap().to_string())
        .collect();
    urls.sort();
    let mut want = vec![format!("http://{host_ip}:{p1}"), format!("http://{host_ip}:{p2}")];
    want.sort();
    assert_eq!(urls, want);
    let calls = server.calls();
    assert_eq!(
        calls.get("DescribeContainerInstances"),
        Some(&1),
        "cached per instance: {calls:?}"
    );
    assert_eq!(
        calls.get("ec2:DescribeInstances"),
        Some(&1),
        "cached per instance: {calls:?}"
    );
}

#[tokio::test]
async fn several_containers_per_task_each_follow_their_labels() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 115, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let (p_api, p_admin) = (free_port(), free_port());
    let api = ContainerDefinition::builder()
        .name("api")
        .image("x")
        .docker_labels("traefik.enable", "true")
        .docker_labels("traefik.http.routers.api.rule", "Host(`api.test`)")
        .port_mappings(PortMapping::builder().container_port(p_api as i32).build())
        .build();
    let admin = ContainerDefinition::builder()
        .name("admin")
        .image("x")
        .docker_labels("traefik.enable", "true")
        .docker_labels("traefik.http.routers.admin.rule", "Host(`admin.test`)")
        .port_mappings(PortMapping::builder().container_port(p_admin as i32).build())
        .build();
    let logger = ContainerDefinition::builder()
        .name("log-router")
        .image("fluentbit")
        .build();
    ecs.register_task_definition()
        .family("multi")
        .container_definitions(api)
        .container_definitions(admin)
        .container_definitions(logger)
        .send()
        .await
        .unwrap();
    ecs.run_task()
        .cluster("prod")
        .task_definition("multi")
        .group("service:multi")
        .send()
        .await
        .unwrap();
    let ip = task_addresses(&server, "multi")[0].1;
    let b_api = Backend::start_at("api", Proto::Http1, SocketAddr::from((ip, p_api))).await;
    let b_admin = Backend::start_at("admin", Proto::Http1, SocketAddr::from((ip, p_admin))).await;
    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "prod", "--ecs-refresh", "300ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let both = eventually(Duration::from_secs(15), || async {
        http1(gw.web, get("api.test", "/")).await.status == StatusCode::OK
            && http1(gw.web, get("admin.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(both, "{}", gw.log());
    assert!(b_api.request_count() >= 1 && b_admin.request_count() >= 1);
    assert!(b_api.requests().iter().all(|r| r.headers["host"] == "api.test"));
    let services = gw.admin_json("/api/http/services").await;
    let names: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["service-multi-admin@ecs", "service-multi-api@ecs"],
        "one service per container; the unlabelled one is not exposed"
    );
}

#[tokio::test]
async fn exposed_by_default_routes_unlabelled_containers_but_not_disabled_ones() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 116, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let port = free_port();
    ecs.register_task_definition()
        .family("plain")
        .container_definitions(web_container(port, &[]))
        .send()
        .await
        .unwrap();
    ecs.register_task_definition()
        .family("optout")
        .container_definitions(web_container(port, &[("traefik.enable", "false")]))
        .send()
        .await
        .unwrap();
    for family in ["plain", "optout"] {
        ecs.run_task()
            .cluster("prod")
            .task_definition(family)
            .send()
            .await
            .unwrap();
    }
    let gw = GatewayProcess::spawn(
        &[
            "--ecs-cluster",
            "prod",
            "--ecs-refresh",
            "300ms",
            "--exposed-by-default",
        ],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let names = || async {
        let routers = gw.admin_json("/api/http/routers").await;
        routers
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["name"].as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let routed = eventually(Duration::from_secs(15), || async { !names().await.is_empty() }).await;
    assert!(routed, "{}", gw.log());
    // Traefik's default rule and naming for a task outside a service: `family:plain` + container.
    assert_eq!(names().await, vec!["family-plain-app@ecs"]);
    let routers = gw.admin_json("/api/http/routers").await;
    assert_eq!(routers[0]["rule"], "Host(`family-plain-app`)");
}

#[tokio::test]
async fn ready_only_once_every_cluster_is_routed_and_with_a_bounded_wait() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 118, 1)).await;
    server.ecs.lock().unwrap().create_cluster("staging");
    let ecs = ecs_client(&server.endpoint_url());
    let port = free_port();
    for cluster in ["prod", "staging"] {
        let family = format!("web-{cluster}");
        ecs.register_task_definition()
            .family(&family)
            .network_mode(NetworkMode::Awsvpc)
            .container_definitions(web_container(
                port,
                &[
                    ("traefik.enable", "true"),
                    (
                        &format!("traefik.http.routers.web-{cluster}.rule"),
                        &format!("Host(`{cluster}.test`)"),
                    ),
                ],
            ))
            .send()
            .await
            .unwrap();
        server
            .ecs
            .lock()
            .unwrap()
            .run_service_task(cluster, &family, &family)
            .unwrap();
    }
    let mut backends = Vec::new();
    for c in ["prod", "staging"] {
        for (_, ip) in task_addresses_in(&server, c, &format!("web-{c}")) {
            backends.push(Backend::start_at("web", Proto::Http1, SocketAddr::from((ip, port))).await);
        }
    }
    // Both clusters: the replica is ready only when both are routed.
    let gw = GatewayProcess::spawn(
        &[
            "--ecs-cluster",
            "prod",
            "--ecs-cluster",
            "staging",
            "--ecs-refresh",
            "300ms",
        ],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let ready = eventually(Duration::from_secs(20), || async {
        http1(gw.admin, get("admin", "/readyz")).await.status == StatusCode::OK
    })
    .await;
    assert!(ready, "{}", gw.log());
    for host in ["prod.test", "staging.test"] {
        assert_eq!(
            http1(gw.web, get(host, "/")).await.status,
            StatusCode::OK,
            "{host} at readiness"
        );
    }
    // A cluster that never finishes a round keeps the replica unready, saying why, until
    // --ready-timeout; then it is ready with what it has.
    let started = std::time::Instant::now();
    let gw = GatewayProcess::spawn(
        &[
            "--ecs-cluster",
            "prod",
            "--ecs-cluster",
            "nowhere",
            "--ecs-refresh",
            "300ms",
            "--ready-timeout",
            "3s",
        ],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let routed = eventually(Duration::from_secs(10), || async {
        http1(gw.web, get("prod.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(routed);
    let r = http1(gw.admin, get("admin", "/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("nowhere"), "the reason names the cluster: {}", r.body);
    let ready = eventually(Duration::from_secs(10), || async {
        http1(gw.admin, get("admin", "/readyz")).await.status == StatusCode::OK
    })
    .await;
    assert!(ready && started.elapsed() >= Duration::from_secs(3));
    drop(backends);
}

fn task_addresses_in(server: &EcsServer, cluster: &str, family: &str) -> Vec<(String, Ipv4Addr)> {
    let ecs = server.ecs.lock().unwrap();
    ecs.clusters[cluster]
        .tasks
        .values()
        .filter(|t| t.taskdef_arn.contains(&format!("/{family}:")) && t.desired_status == "RUNNING")
        .map(|t| (t.id.clone(), t.address.unwrap()))
        .collect()
}

/// A canary between two ECS services from labels alone: the stable service's labels
/// split its traffic with a service whose tasks consent (`berth.weighted.allow`); a
/// weighted service naming another team's service without its consent is not created,
/// and its router is not served.
#[tokio::test]
async fn labels_split_traffic_only_with_services_that_consent() {
    let server = local_ecs(Ipv4Addr::new(127, 0, 117, 1)).await;
    let ecs = ecs_client(&server.endpoint_url());
    let (p_orders, p_canary, p_payments) = (free_port(), free_port(), free_port());
    let (orders, canary, payments) = (p_orders.to_string(), p_canary.to_string(), p_payments.to_string());
    let families: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "orders",
            vec![
                ("traefik.enable", "true"),
                ("traefik.http.routers.orders.rule", "Host(`orders.test`)"),
                ("traefik.http.routers.orders.service", "split"),
                ("traefik.http.services.orders.loadbalancer.server.port", &orders),
                ("traefik.http.services.split.weighted.services[0].name", "orders"),
                ("traefik.http.services.split.weighted.services[0].weight", "3"),
                ("traefik.http.services.split.weighted.services[1].name", "canary"),
                ("traefik.http.services.split.weighted.services[1].weight", "1"),
                ("traefik.http.routers.grab.rule", "Host(`grab.test`)"),
                ("traefik.http.routers.grab.service", "grab"),
                ("traefik.http.services.grab.weighted.services[0].name", "payments"),
            ],
        ),
        (
            "canary",
            vec![
                ("traefik.enable", "true"),
                ("traefik.http.routers.canary.rule", "Host(`canary.test`)"),
                ("traefik.http.services.canary.loadbalancer.server.port", &canary),
                ("berth.weighted.allow", "orders"),
            ],
        ),
        (
            "payments",
            vec![
                ("traefik.enable", "true"),
                ("traefik.http.routers.payments.rule", "Host(`payments.test`)"),
                ("traefik.http.services.payments.loadbalancer.server.port", &payments),
            ],
        ),
    ];
    let mut backends = Vec::new();
    for ((family, labels), port) in families.iter().zip([p_orders, p_canary, p_payments]) {
        ecs.register_task_definition()
            .family(*family)
            .container_definitions(web_container(port, labels))
            .send()
            .await
            .unwrap();
        ecs.run_task()
            .cluster("prod")
            .task_definition(*family)
            .group(format!("service:{family}"))
            .send()
            .await
            .unwrap();
        let ip = task_addresses(&server, family)[0].1;
        backends.push(Backend::start_at(family, Proto::Http1, SocketAddr::from((ip, port))).await);
    }
    let gw = GatewayProcess::spawn(
        &["--ecs-cluster", "prod", "--ecs-refresh", "300ms"],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let routed = eventually(Duration::from_secs(15), || async {
        http1(gw.web, get("orders.test", "/")).await.status == StatusCode::OK
            && http1(gw.web, get("payments.test", "/")).await.status == StatusCode::OK
    })
    .await;
    assert!(routed, "{}", gw.admin_json("/api/diagnostics").await);
    let before: Vec<usize> = backends.iter().map(Backend::request_count).collect();
    for _ in 0..8 {
        assert_eq!(http1(gw.web, get("orders.test", "/")).await.status, StatusCode::OK);
    }
    let got: Vec<usize> = backends
        .iter()
        .zip(&before)
        .map(|(b, n)| b.request_count() - n)
        .collect();
    // Smooth weighted round robin at 3:1: exactly 6 and 2 of 8, none to payments.
    assert_eq!(got, vec![6, 2, 0], "orders, canary, payments");

    // payments never said orders may send it traffic: no weighted service, no route.
    assert_eq!(http1(gw.web, get("grab.test", "/")).await.status, StatusCode::NOT_FOUND);
    let diags = gw.admin_json("/api/diagnostics").await.to_string();
    assert!(diags.contains("berth.weighted.allow=orders"), "{diags}");
    let services = gw.admin_json("/api/http/services").await.to_string();
    assert!(
        services.contains("split@ecs") && !services.contains("grab@ecs"),
        "{services}"
    );
    assert_eq!(
        backends[2].request_count(),
        before[2],
        "payments got nothing from orders' labels"
    );
}
