//! A Traefik 2.5 deployment on ECS with only the image swapped: the task definition as
//! Traefik's ECS guide writes it (static flags in `command`, the `traefik` executable,
//! no entrypoint flag, `--api.insecure`, `traefik healthcheck --ping` as the ECS health
//! check) and a whoami service with `traefik.*` labels and a v2 rule, run by berth-local
//! from `examples/ecs/traefik-2.5`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use berth_common::test_util::{eventually, get, http1, try_http1};
use berth_e2e::{LocalUp, ecs_client, running_tasks, temp_dir};

/// Each running task of `service`: its id, address and health.
async fn tasks(ecs: &aws_sdk_ecs::Client, service: &str) -> Vec<(String, String, Option<String>)> {
    running_tasks(ecs, service)
        .await
        .into_iter()
        .filter_map(|t| Some((t.id, t.address?, t.health)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traefik_2_5_task_definition_runs_with_only_the_image_swapped() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ecs/traefik-2.5");
    // berth-local is started from a folder holding a broken traefik.yml: a container
    // starts in a working directory of its own and never picks it up.
    let cwd = temp_dir("traefik-cwd");
    std::fs::write(cwd.join("traefik.yml"), "bogus: option\n").unwrap();
    let up = LocalUp::start_in(
        "127.0.230.1",
        &["--no-gateway", "--dir", dir.to_str().unwrap()],
        &[],
        Some(&cwd),
    );
    let ecs = ecs_client(&format!("http://{}", up.api));
    let ok = eventually(Duration::from_secs(60), || {
        let ecs = ecs.clone();
        async move { tasks(&ecs, "traefik").await.len() == 1 && tasks(&ecs, "whoami").await.len() == 3 }
    })
    .await;
    assert!(ok, "tasks did not start: {:?}", up.lines.lock().unwrap());
    let gateway = tasks(&ecs, "traefik").await[0].1.clone();
    let web: SocketAddr = format!("{gateway}:80").parse().unwrap();
    let api: SocketAddr = format!("{gateway}:8080").parse().unwrap();
    let whoami: BTreeSet<String> = tasks(&ecs, "whoami").await.into_iter().map(|t| t.0).collect();

    // Traefik's default entrypoint (`http`, :80) routes the v2 rule to every whoami task,
    // in turn (weighted round robin, as the ECS guides promise).
    let routed = eventually(Duration::from_secs(30), || async move {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            if let Some(r) = try_http1(web, get("whoami.localhost", "/")).await
                && r.status == 200
                && let Some(h) = r.body.lines().next().and_then(|l| l.strip_prefix("Hostname: "))
            {
                seen.insert(h.to_string());
            }
        }
        seen.len() == 3
    })
    .await;
    assert!(routed, "whoami not routed to its 3 tasks through :80");
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let r = http1(web, get("whoami.localhost", "/")).await;
        seen.insert(
            r.body
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("Hostname: ")
                .to_string(),
        );
    }
    assert_eq!(seen, whoami, "three requests in a row reach the three tasks");
    // The v2 rule's second host, and a host it does not name.
    assert_eq!(http1(web, get("whoami.example.com", "/x")).await.status, 200);
    assert_eq!(http1(web, get("other.localhost", "/")).await.status, 404);

    // The API and the dashboard on the `traefik` entrypoint, under Traefik's paths.
    let r = http1(api, get("localhost", "/api/http/routers")).await;
    assert_eq!(r.status, 200);
    let routers: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let router = routers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str().is_some_and(|n| n.starts_with("whoami@")))
        .unwrap_or_else(|| panic!("no whoami router: {routers}"));
    assert_eq!(router["status"], "enabled", "{router}");
    let raw: serde_json::Value =
        serde_json::from_str(&http1(api, get("localhost", "/api/rawdata")).await.body).unwrap();
    assert!(
        raw["routers"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("whoami@"))
    );
    assert!(
        raw["services"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("whoami@"))
    );
    let eps = http1(api, get("localhost", "/api/entrypoints")).await;
    assert!(eps.body.contains("\"http\""), "{}", eps.body);
    let dash = http1(api, get("localhost", "/dashboard/")).await;
    assert_eq!(dash.status, 200);
    assert!(dash.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let root = http1(api, get("localhost", "/")).await;
    assert_eq!(root.status, 302);
    assert_eq!(root.headers["location"], "/dashboard/");
    let ping = http1(api, get("localhost", "/ping")).await;
    assert_eq!((ping.status.as_u16(), ping.body.as_str()), (200, "OK"));
    // Only what Traefik serves there: metrics were not asked for.
    assert_eq!(http1(api, get("localhost", "/metrics")).await.status, 404);
    // The routing entrypoint serves no API: the path goes to whoami.
    let r = http1(web, get("whoami.localhost", "/api/rawdata")).await;
    assert!(r.body.starts_with("Hostname: "), "{}", r.body);

    // The ECS health check (`traefik healthcheck --ping`) passes.
    let healthy = eventually(Duration::from_secs(30), || {
        let ecs = ecs.clone();
        async move {
            tasks(&ecs, "traefik")
                .await
                .first()
                .and_then(|t| t.2.clone())
                .as_deref()
                == Some("HEALTHY")
        }
    })
    .await;
    assert!(healthy, "the traefik container's health check did not pass");
}
