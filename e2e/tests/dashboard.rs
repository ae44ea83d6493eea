//! The dashboard in real headless Chromium against `berth-local up`: the page shows the
//! demo's services with every endpoint and its health, the sidecars, the ECS cluster's
//! discovery state and the certificates; a bad label shows up as a diagnostic; and a
//! screenshot of it is not blank.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_common::test_util::{eventually, get, http1};
use berth_e2e::LocalUp;
use berth_e2e::browser;

/// The page's DOM after its scripts ran, from headless Chromium.
async fn page_dom(url: &str) -> String {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || browser::dump_dom(&url))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_services_endpoints_and_sidecars_in_chromium() {
    browser::chromium().unwrap();
    let local = LocalUp::start("127.0.190.1");
    local.wait_ready().await;
    let admin = local.admin;
    let url = format!("http://{admin}/");

    // A task with a broken label: discovery reports it and keeps serving the rest.
    let ecs = berth_e2e::ecs_client(&format!("http://{}", local.api));
    let bad = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("app")
        .image("idle")
        .command("berth-local:idle")
        .port_mappings(aws_sdk_ecs::types::PortMapping::builder().container_port(8080).build())
        .docker_labels("traefik.enable", "true")
        .docker_labels("traefik.http.routers.broken.rule", "Host(`broken.localhost`")
        .build();
    ecs.register_task_definition()
        .family("broken")
        .container_definitions(bad)
        .send()
        .await
        .unwrap();
    ecs.run_task()
        .cluster("default")
        .task_definition("broken")
        .send()
        .await
        .unwrap();
    let diagnosed = eventually(Duration::from_secs(20), || async move {
        http1(admin, get("admin", "/api/diagnostics"))
            .await
            .body
            .contains("broken")
    })
    .await;
    assert!(
        diagnosed,
        "{}",
        http1(admin, get("admin", "/api/diagnostics")).await.body
    );

    // What the API says must be on the page.
    let services: serde_json::Value =
        serde_json::from_str(&http1(admin, get("admin", "/api/http/services")).await.body).unwrap();
    let whoami = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["usedBy"][0] == "whoami@ecs")
        .cloned()
        .unwrap();
    let endpoints: Vec<String> = whoami["loadBalancer"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(endpoints.len(), 3, "{whoami:#}");
    let sidecars: serde_json::Value =
        serde_json::from_str(&http1(admin, get("admin", "/api/sidecars")).await.body).unwrap();
    let certificates: serde_json::Value =
        serde_json::from_str(&http1(admin, get("admin", "/api/certificates")).await.body).unwrap();
    assert!(
        certificates
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["use"] == "mesh CA" && c["isCa"] == true),
        "{certificates:#}"
    );

    let dom = page_dom(&url).await;
    assert!(dom.contains("<h1>Berth gateway</h1>"), "{dom}");
    assert!(dom.contains(whoami["name"].as_str().unwrap()), "{dom}");
    for ep in &endpoints {
        // Each endpoint, with its live health beside it.
        let row = format!("<code>{ep}</code></td><td><span class=\"b UP\">UP</span>");
        assert!(dom.contains(&row), "{ep} is not shown as UP:\n{dom}");
    }
    for s in sidecars.as_array().unwrap() {
        assert!(dom.contains(s["identity"].as_str().unwrap()), "{dom}");
    }
    assert!(dom.contains("ECS cluster <b>default</b>"), "{dom}");
    assert!(dom.contains("mesh CA"), "{dom}");
    assert!(dom.contains("id=\"filter\""), "{dom}");
    assert!(
        dom.contains("router broken@ecs") && dom.contains("invalid rule: column 24"),
        "the bad label is not shown:\n{dom}"
    );

    // Live health: an app turning unhealthy shows on its sidecar's row, and its task
    // leaves the service's endpoints.
    let victim = endpoints[0].clone();
    let ip = victim
        .trim_start_matches("mesh://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let app: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
    let r = http1(app, get("whoami", "/health/set?healthy=false")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let gone = eventually(Duration::from_secs(10), || {
        let victim = victim.clone();
        async move { !http1(admin, get("admin", "/")).await.body.contains(&victim) }
    })
    .await;
    assert!(gone, "{victim} is still listed after its app turned unhealthy");
    let dom = page_dom(&url).await;
    let row = format!(
        "<td>{ip}</td><td>{}</td><td><span class=\"b live\">live</span></td><td><span class=\"b unhealthy\">unhealthy</span>",
        env!("CARGO_PKG_VERSION")
    );
    assert!(dom.contains(&row), "the sidecar at {ip} is not shown unhealthy:\n{dom}");
    assert!(!dom.contains(&victim), "{dom}");

    // The screenshot: a real rendering, not a blank page.
    let png = std::env::temp_dir().join(format!("berth-dashboard-{}.png", std::process::id()));
    tokio::task::spawn_blocking({
        let (url, png) = (url.clone(), png.clone());
        move || browser::screenshot(&url, &png, 1280, 1400)
    })
    .await
    .unwrap()
    .unwrap();
    let image = browser::decode_png(&std::fs::read(&png).unwrap()).unwrap();
    let _ = std::fs::remove_file(&png);
    assert_eq!((image.width, image.height), (1280, 1400));
    let (colours, ink) = image.variety();
    eprintln!(
        "dashboard screenshot: {colours} colours, {:.1}% off the background",
        ink * 100.0
    );
    assert!(colours > 50, "{colours} colours: the screenshot looks blank");
    assert!(
        ink > 0.10,
        "only {:.2}% of the screenshot differs from the background",
        ink * 100.0
    );
}
