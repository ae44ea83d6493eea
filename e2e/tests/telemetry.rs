//! The gateway binary's telemetry, configured the way users do it, by the `OTEL_*`
//! environment: OTLP/HTTP export to a real receiver with the ECS resource read from a
//! task metadata endpoint, a client span for every attempt of a retried request, B3
//! propagation, the access log, a collector that is down (requests keep flowing, drops
//! are counted), and bad variables refused at start.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_common::test_util::otlp::Receiver;
use berth_common::test_util::{Backend, Proto, closed_port, eventually, free_port, get, http1, try_http1};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

struct Gw {
    child: Child,
    web: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("berth-telemetry-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn routes(app: &str, late: SocketAddr) -> String {
    format!(
        r#"http:
  routers:
    app: {{ rule: "Host(`a.test`)", service: app }}
    late: {{ rule: "Host(`late.test`)", service: late, middlewares: [again] }}
  middlewares:
    again: {{ retry: {{ attempts: 8, initialInterval: 100ms }} }}
  services:
    app: {{ loadBalancer: {{ servers: [{{ url: "{app}" }}] }} }}
    late: {{ loadBalancer: {{ servers: [{{ url: "http://{late}" }}] }} }}
"#
    )
}

async fn start(tag: &str, config: &str, flags: &[&str], env: &[(&str, String)]) -> Gw {
    let dir = temp_dir(tag);
    let file = dir.0.join("dynamic.yml");
    std::fs::write(&file, config).unwrap();
    let (web, admin) = (free_port(), free_port());
    let child = Command::new(berth_e2e::bin("berth-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--entrypoint", &format!("web=127.0.0.1:{web}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--file-provider", file.to_str().unwrap(), "--log-format", "json"])
        .args(flags)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let gw = Gw {
        child,
        web: format!("127.0.0.1:{web}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
        _dir: dir,
    };
    let admin = gw.admin;
    assert!(
        eventually(Duration::from_secs(20), || async move {
            try_http1(admin, get("admin", "/readyz"))
                .await
                .is_some_and(|r| r.status == 200)
        })
        .await,
        "the gateway did not become ready"
    );
    gw
}

/// A task metadata endpoint v4 with one task and this container.
async fn fake_tmds() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = match req.uri().path() {
                        "/v4/gw1/task" => serde_json::json!({
                            "Cluster": "arn:aws:ecs:eu-west-1:123456789012:cluster/edge",
                            "TaskARN": "arn:aws:ecs:eu-west-1:123456789012:task/edge/0123abcd",
                            "Family": "berth-gateway", "Revision": "4", "LaunchType": "FARGATE",
                            "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING",
                            "AvailabilityZone": "eu-west-1b", "ServiceName": "berth-gateway",
                        }),
                        "/v4/gw1" => serde_json::json!({"DockerId": "gw1", "Name": "gateway"}),
                        _ => serde_json::json!({}),
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_for_every_attempt_over_otlp_http_with_the_ecs_resource_and_an_access_log() {
    let rx = Receiver::start().await;
    let app = Backend::start("app", Proto::Http1).await;
    let late = closed_port().await;
    let (tmds, _tmds_task) = fake_tmds().await;
    let log_dir = temp_dir("access");
    let log = log_dir.0.join("access.log");
    let gw = start(
        "http",
        &routes(&app.url(), late),
        &["--access-log", "--access-log-file", log.to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("OTEL_PROPAGATORS", "tracecontext,b3,xray".into()),
            ("ECS_CONTAINER_METADATA_URI_V4", format!("http://{tmds}/v4/gw1")),
        ],
    )
    .await;

    // A plain request: the backend gets the gateway's client span as its parent, in
    // both W3C and B3 form.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut req = get("a.test", "/hello?x=1");
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    req.headers_mut()
        .insert("user-agent", "telemetry-test".parse().unwrap());
    assert_eq!(http1(gw.web, req).await.status, 200);
    let seen = app.requests().pop().unwrap();
    let tp = seen.headers["traceparent"].to_str().unwrap().to_string();
    assert!(
        tp.starts_with(&format!("00-{trace}-")) && !tp.contains("b7ad6b7169203331"),
        "{tp}"
    );
    let client_id = &tp[36..52];
    assert_eq!(seen.headers["b3"].to_str().unwrap(), format!("{trace}-{client_id}-1"));
    assert_eq!(
        seen.headers["x-amzn-trace-id"].to_str().unwrap(),
        format!("Root=1-{}-{};Parent={client_id};Sampled=1", &trace[..8], &trace[8..])
    );

    // A caller that speaks X-Ray only (an X-Ray or ADOT SDK): its trace continues, the
    // backend gets the gateway's client span as Parent, in every format.
    let mut req = get("a.test", "/xray");
    req.headers_mut().insert(
        "x-amzn-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            .parse()
            .unwrap(),
    );
    assert_eq!(http1(gw.web, req).await.status, 200);
    let seen = app.requests().pop().unwrap();
    let xray = seen.headers["x-amzn-trace-id"].to_str().unwrap().to_string();
    assert!(
        xray.starts_with("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=") && !xray.contains("53995c3f42cd8ad8"),
        "{xray}"
    );
    let tp = seen.headers["traceparent"].to_str().unwrap();
    assert!(tp.starts_with("00-5759e988bd862e3fe1be46a994272793-"), "{tp}");

    // A retried request: the only server comes up after 350 ms; every attempt is a
    // client span under the one server span.
    let retried = "1af7651916cd43dd8448eb211c80319c";
    let mut req = get("late.test", "/");
    req.headers_mut().insert(
        "traceparent",
        format!("00-{retried}-b7ad6b7169203331-01").parse().unwrap(),
    );
    let up = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(350)).await;
        Backend::start_at("late", Proto::Http1, late).await
    });
    let r = http1(gw.web, req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let _late_backend = up.await.unwrap();

    let spans = rx
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().filter(|s| s.trace_id == trace).count() >= 2
                && s.iter().any(|s| {
                    s.trace_id == "5759e988bd862e3fe1be46a994272793"
                        && s.kind == 2
                        && s.parent_span_id.as_deref() == Some("53995c3f42cd8ad8")
                })
                && s.iter()
                    .any(|s| s.trace_id == retried && s.attr("http.response.status_code") == Some("200") && s.kind == 3)
        })
        .await;
    let server = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == 2)
        .expect("server span");
    let client = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == 3)
        .expect("client span");
    assert!(spans.iter().all(|s| s.via == "http"));
    assert_eq!(server.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(client.parent_span_id.as_deref(), Some(server.span_id.as_str()));
    assert_eq!(client.span_id, client_id);
    assert_eq!(server.name, "GET app@file");
    for (k, v) in [
        ("http.request.method", "GET"),
        ("url.path", "/hello"),
        ("url.query", "x=1"),
        ("url.scheme", "http"),
        ("server.address", "a.test"),
        ("user_agent.original", "telemetry-test"),
        ("network.protocol.version", "1.1"),
        ("http.response.status_code", "200"),
        ("berth.router", "app@file"),
        ("berth.service", "app@file"),
        ("berth.entrypoint", "web"),
        ("client.address", "127.0.0.1"),
    ] {
        assert_eq!(server.attr(k), Some(v), "{k} in {server:?}");
    }
    assert_eq!(
        client.attr("url.full"),
        Some(format!("{}/hello?x=1", app.url()).as_str())
    );
    assert_eq!(client.attr("server.port"), Some(app.addr.port().to_string().as_str()));
    let r = &server.resource;
    assert_eq!(r["service.name"], "berth-gateway");
    assert_eq!(r["cloud.platform"], "aws_ecs");
    assert_eq!(
        r["aws.ecs.cluster.arn"],
        "arn:aws:ecs:eu-west-1:123456789012:cluster/edge"
    );
    assert_eq!(
        r["aws.ecs.task.arn"],
        "arn:aws:ecs:eu-west-1:123456789012:task/edge/0123abcd"
    );
    assert_eq!(r["aws.ecs.launchtype"], "fargate");
    assert_eq!(r["aws.ecs.task.family"], "berth-gateway");
    assert_eq!(r["aws.ecs.task.revision"], "4");
    assert_eq!(r["cloud.region"], "eu-west-1");
    assert_eq!(r["cloud.availability_zone"], "eu-west-1b");
    assert_eq!(r["container.id"], "gw1");

    let rserver = spans
        .iter()
        .find(|s| s.trace_id == retried && s.kind == 2)
        .expect("server span");
    let mut attempts: Vec<_> = spans.iter().filter(|s| s.trace_id == retried && s.kind == 3).collect();
    attempts.sort_by_key(|s| s.start_unix_nanos);
    assert!(attempts.len() >= 2, "{attempts:?}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.parent_span_id.as_deref(), Some(rserver.span_id.as_str()));
        let resend = (i > 0).then(|| i.to_string());
        assert_eq!(a.attr("http.request.resend_count"), resend.as_deref(), "attempt {i}");
    }
    let (last, failed) = attempts.split_last().unwrap();
    assert_eq!(last.attr("http.response.status_code"), Some("200"));
    for f in failed {
        assert_eq!(f.attr("error.type"), Some("connect"), "{f:?}");
        assert_eq!(f.status_code, 2);
    }

    // The access log: Traefik's fields, with the trace id, written after the response.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = lines
        .iter()
        .find(|l| l["TraceId"] == trace)
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(first["RouterName"], "app@file");
    assert_eq!(first["ServiceName"], "app@file");
    assert_eq!(first["ServiceURL"], app.url());
    assert_eq!(first["DownstreamStatus"], 200);
    assert_eq!(first["OriginStatus"], 200);
    assert_eq!(first["RequestPath"], "/hello?x=1");
    assert_eq!(first["RequestHost"], "a.test");
    assert_eq!(first["request_User-Agent"], "telemetry-test");
    assert_eq!(first["entryPointName"], "web");
    assert_eq!(first["SpanId"], server.span_id);
    assert!(first["DownstreamContentSize"].as_u64().unwrap() > 0);
    assert!(first["Duration"].as_u64().unwrap() > 0);
    let second = lines.iter().find(|l| l["TraceId"] == retried).unwrap();
    assert_eq!(second["RetryAttempts"].as_u64().unwrap() as usize, attempts.len() - 1);

    let m = http1(gw.admin, get("admin", "/metrics")).await.body;
    assert!(m.contains("berth_trace_spans_total{outcome=\"exported\"}"), "{m}");
    assert!(m.contains("berth_access_log_dropped_total 0"), "{m}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_collector_never_slows_requests() {
    let app = Backend::start("app", Proto::Http1).await;
    let late = closed_port().await;
    let config = routes(&app.url(), late);
    let (hole, _hole_task) = berth_common::test_util::black_hole().await;
    let dead = closed_port().await;
    let plain = start("plain", &config, &[], &[]).await;
    let hanging = start(
        "hang",
        &config,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{hole}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "300".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "32".into()),
        ],
    )
    .await;
    let refused = start(
        "dead",
        &config,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{dead}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "32".into()),
        ],
    )
    .await;
    // Interleaved, so machine noise hits all three alike.
    let (mut t_plain, mut t_hang, mut t_dead) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..300 {
        for (gw, times) in [(&plain, &mut t_plain), (&hanging, &mut t_hang), (&refused, &mut t_dead)] {
            let t0 = Instant::now();
            let r = http1(gw.web, get("a.test", "/")).await;
            times.push(t0.elapsed());
            assert_eq!(r.status, 200);
        }
    }
    let (p, h, d) = (median(t_plain), median(t_hang), median(t_dead));
    eprintln!("median latency: tracing off {p:?}, collector hanging {h:?}, collector refusing {d:?}");
    // Generous bounds: a blocked data path would cost the export timeout (300 ms).
    assert!(
        h < p * 3 + Duration::from_millis(2),
        "hanging collector: {h:?} against {p:?}"
    );
    assert!(
        d < p * 3 + Duration::from_millis(2),
        "refusing collector: {d:?} against {p:?}"
    );

    // The drops are counted, and the failure is named in the metrics.
    for gw in [&hanging, &refused] {
        let admin = gw.admin;
        let counted = eventually(Duration::from_secs(5), || async move {
            let m = http1(admin, get("admin", "/metrics")).await.body;
            let dropped = |outcome: &str| -> u64 {
                m.lines()
                    .find_map(|l| l.strip_prefix(&format!("berth_trace_spans_total{{outcome=\"{outcome}\"}} ")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            dropped("dropped_queue_full") + dropped("dropped_export_failed") > 0 && dropped("exported") == 0
        })
        .await;
        assert!(counted, "{}", http1(admin, get("admin", "/metrics")).await.body);
    }
}

#[test]
fn bad_otel_variables_are_refused_at_start() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
    ] {
        let out = Command::new(berth_e2e::bin("berth-gateway"))
            .env_clear()
            .args(["--entrypoint", "web=127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}: {err}");
    }
}
