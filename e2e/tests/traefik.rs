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

/// The same static configuration in each of Traefik's three forms: a `traefik.yml` in
/// the working directory (a default location), flags, `TRAEFIK_*` variables. Each
/// gateway redirects `web` to `websecure` (301 for GET, 308 for POST), serves the
/// file provider's router over TLS only on `websecure` (`http.tls`), and `/ping` and
/// `/metrics` on the `traefik` entrypoint, with no API there (no `api.insecure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_static_form_configures_the_same_gateway() {
    use berth_common::test_util::{Backend, Proto, free_port, self_signed};
    use berth_e2e::GatewayProcess;

    let backend = Backend::start("app", Proto::Http1).await;
    let dir = temp_dir("traefik-forms");
    let (cert, key) = self_signed(&["app.test", "metrics.test", "open-metrics.test", "noop.test"]);
    std::fs::write(dir.join("app.crt"), cert).unwrap();
    std::fs::write(dir.join("app.key"), key).unwrap();
    let dynamic = dir.join("dynamic.yml");
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n    app:\n      rule: Host(`app.test`)\n      service: app\n    \
             guarded:\n      rule: Host(`metrics.test`)\n      service: prometheus@internal\n      middlewares: [lan]\n    \
             open:\n      rule: Host(`open-metrics.test`)\n      service: prometheus@internal\n    \
             nothing:\n      rule: Host(`noop.test`)\n      service: noop@internal\n  \
             middlewares:\n    lan:\n      ipAllowList:\n        sourceRange: [10.0.0.0/8]\n  services:\n    app:\n      \
             loadBalancer:\n        servers:\n          - url: \"{}\"\ntls:\n  certificates:\n    - certFile: {}\n      keyFile: {}\n",
            backend.url(),
            dir.join("app.crt").display(),
            dir.join("app.key").display()
        ),
    )
    .unwrap();
    let dynamic = dynamic.display().to_string();

    for form in ["file", "flags", "env"] {
        let (web, secure, internal) = (free_port(), free_port(), free_port());
        let cwd = temp_dir(&format!("traefik-{form}"));
        let flags: Vec<String> = vec![
            format!("--entryPoints.web.address=127.0.0.1:{web}"),
            "--entryPoints.web.http.redirections.entryPoint.to=websecure".into(),
            format!("--entryPoints.websecure.address=127.0.0.1:{secure}"),
            "--entryPoints.websecure.http.tls=true".into(),
            format!("--entryPoints.traefik.address=127.0.0.1:{internal}"),
            format!("--providers.file.filename={dynamic}"),
            "--ping".into(),
            "--metrics.prometheus".into(),
        ];
        let env: Vec<(String, String)> = vec![
            ("TRAEFIK_ENTRYPOINTS_WEB_ADDRESS".into(), format!("127.0.0.1:{web}")),
            (
                "TRAEFIK_ENTRYPOINTS_WEB_HTTP_REDIRECTIONS_ENTRYPOINT_TO".into(),
                "websecure".into(),
            ),
            (
                "TRAEFIK_ENTRYPOINTS_WEBSECURE_ADDRESS".into(),
                format!("127.0.0.1:{secure}"),
            ),
            ("TRAEFIK_ENTRYPOINTS_WEBSECURE_HTTP_TLS".into(), "true".into()),
            (
                "TRAEFIK_ENTRYPOINTS_TRAEFIK_ADDRESS".into(),
                format!("127.0.0.1:{internal}"),
            ),
            ("TRAEFIK_PROVIDERS_FILE_FILENAME".into(), dynamic.clone()),
            ("TRAEFIK_PING".into(), "true".into()),
            ("TRAEFIK_METRICS_PROMETHEUS".into(), "true".into()),
        ];
        let gw = match form {
            "file" => {
                std::fs::write(
                    cwd.join("traefik.yml"),
                    format!(
                        "entryPoints:\n  web:\n    address: \"127.0.0.1:{web}\"\n    http:\n      redirections:\n        \
                         entryPoint:\n          to: websecure\n  websecure:\n    address: \"127.0.0.1:{secure}\"\n    \
                         http:\n      tls: {{}}\n  traefik:\n    address: \"127.0.0.1:{internal}\"\nproviders:\n  file:\n    \
                         filename: \"{dynamic}\"\nping: {{}}\nmetrics:\n  prometheus: {{}}\n"
                    ),
                )
                .unwrap();
                GatewayProcess::spawn_in(&cwd, &[], &[])
            }
            "flags" => GatewayProcess::spawn_in(&cwd, &flags.iter().map(String::as_str).collect::<Vec<_>>(), &[]),
            _ => GatewayProcess::spawn_in(
                &cwd,
                &[],
                &env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
            ),
        };
        let ping: SocketAddr = format!("127.0.0.1:{internal}").parse().unwrap();
        let up = eventually(Duration::from_secs(20), || async move {
            try_http1(ping, get("localhost", "/ping"))
                .await
                .is_some_and(|r| r.status == 200 && r.body == "OK")
        })
        .await;
        assert!(up, "{form}: /ping did not answer; log:\n{}", gw.log());
        // `traefik healthcheck` reads the same form (the file in its working directory,
        // the flags given to it, or the variables) and finds the ping entrypoint.
        let mut check = std::process::Command::new(berth_e2e::bin("berth-gateway"));
        check.arg("healthcheck").env_clear().current_dir(&cwd);
        match form {
            "flags" => {
                check.args(&flags);
            }
            "env" => {
                check.envs(env.iter().cloned());
            }
            _ => {}
        }
        let out = check.output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{form}: {said}");
        assert_eq!(said.trim(), format!("OK: http://127.0.0.1:{internal}/ping"), "{form}");
        let web_addr: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
        let served = eventually(Duration::from_secs(10), || async move {
            try_http1(web_addr, get("app.test", "/x?y=1"))
                .await
                .is_some_and(|r| r.status == 301)
        })
        .await;
        assert!(served, "{form}: no redirect on web; log:\n{}", gw.log());
        let r = http1(web_addr, get("app.test", "/x?y=1")).await;
        assert_eq!(
            r.headers["location"],
            format!("https://app.test:{secure}/x?y=1"),
            "{form}"
        );
        let post = http::Request::post("/form")
            .header("host", "app.test")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"a=1")))
            .unwrap();
        assert_eq!(http1(web_addr, post).await.status, 308, "{form}: POST keeps its method");
        // curl over TLS to websecure: the body, then the status on the last line.
        let curl = |host: &str| {
            let out = std::process::Command::new("curl")
                .args(["-sk", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5"])
                .args(["--resolve", &format!("{host}:{secure}:127.0.0.1")])
                .arg(format!("https://{host}:{secure}/any/path"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        // websecure: the router serves TLS connections only, as `http.tls` makes it.
        let text = curl("app.test");
        assert!(text.ends_with("\n200"), "{form}: curl over TLS: {text}");
        // Routers to the gateway's own services, behind the router's middlewares.
        let open = curl("open-metrics.test");
        assert!(
            open.ends_with("\n200") && open.contains("berth_"),
            "{form}: prometheus@internal: {open}"
        );
        assert!(
            curl("metrics.test").ends_with("\n403"),
            "{form}: prometheus@internal behind ipAllowList"
        );
        assert!(curl("noop.test").ends_with("\n418"), "{form}: noop@internal");
        let plain: SocketAddr = format!("127.0.0.1:{secure}").parse().unwrap();
        assert_eq!(
            http1(plain, get("app.test", "/")).await.status,
            404,
            "{form}: plain HTTP on websecure"
        );
        // The traefik entrypoint: ping and metrics asked for; no API without api.insecure.
        let m = http1(ping, get("localhost", "/metrics")).await;
        assert!(m.status == 200 && m.body.contains("berth_"), "{form}: /metrics");
        assert_eq!(
            http1(ping, get("localhost", "/api/rawdata")).await.status,
            404,
            "{form}"
        );
        // The redirect router is the gateway's own, shown as Traefik shows it.
        let routers = gw.admin_json("/api/http/routers").await;
        assert!(
            routers
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "web-to-websecure@internal"),
            "{form}: {routers}"
        );
    }
}

/// An option Berth does not implement stops the start, by name, with exit 64.
#[test]
fn an_unimplemented_traefik_option_exits_64_naming_it() {
    let out = std::process::Command::new(berth_e2e::bin("berth-gateway"))
        .args([
            "--providers.ecs.clusters=default",
            "--certificatesResolvers.le.acme.preferredChain=ISRG Root X1",
        ])
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .current_dir(temp_dir("traefik-refused"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`--certificatesResolvers.le.acme.preferredChain` is not supported: this ACME option"),
        "{err}"
    );
}

/// `traefik healthcheck --ping` with nothing listening fails as Traefik's does.
#[test]
fn the_healthcheck_fails_when_ping_does_not_answer() {
    let port = berth_common::test_util::free_port();
    let out = std::process::Command::new(berth_e2e::bin("berth-gateway"))
        .args([
            "healthcheck",
            "--ping",
            &format!("--entryPoints.traefik.address=127.0.0.1:{port}"),
        ])
        .env_clear()
        .current_dir(temp_dir("traefik-healthcheck"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("Error calling healthcheck: "), "{said}");
    // And without ping configured at all.
    let out = std::process::Command::new(berth_e2e::bin("berth-gateway"))
        .args(["healthcheck", "--api.insecure"])
        .env_clear()
        .current_dir(temp_dir("traefik-healthcheck"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("please enable `ping`"));
}
