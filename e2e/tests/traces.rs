//! One request through every hop of the mesh in `berth-local up` — the gateway, the
//! caller's sidecar (inbound, then outbound after the app calls whoami), whoami's
//! sidecar — exported over OTLP/gRPC to a real receiver, arrives as one trace whose
//! spans are parented hop by hop and carry the ECS resource attributes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use berth_common::test_util::otlp::{ReceivedSpan, Receiver};
use berth_common::test_util::{get, http1};
use berth_e2e::LocalUp;

const TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const CLIENT_SPAN: &str = "051581bf3cb55c13";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_gateway_two_sidecars_and_the_apps() {
    let rx = Receiver::start().await;
    let endpoint = rx.grpc_endpoint();
    let local = LocalUp::start_env(
        "127.0.200.1",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=berth-local"),
        ],
    );
    local.wait_ready().await;

    let mut req = get("caller.localhost", "/call?url=http://whoami/");
    req.headers_mut()
        .insert("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01").parse().unwrap());
    let r = http1(local.web, req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("called http://whoami/: 200 OK"), "{}", r.body);
    // whoami echoes the headers it got: the context of the span that called it.
    let seen = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("Traceparent: "))
        .unwrap_or_default()
        .to_string();
    assert!(seen.starts_with(&format!("00-{TRACE}-")), "{}", r.body);

    let ours = |s: &[ReceivedSpan]| s.iter().filter(|s| s.trace_id == TRACE).count();
    let spans: Vec<ReceivedSpan> = rx
        .wait_for(Duration::from_secs(20), |s| ours(s) >= 8)
        .await
        .into_iter()
        .filter(|s| s.trace_id == TRACE)
        .collect();
    let dump = || {
        spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} kind={} id={} parent={:?}",
                    s.service(),
                    s.name,
                    s.kind,
                    s.span_id,
                    s.parent_span_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(spans.len(), 8, "one trace of 8 spans:\n{}", dump());
    assert!(spans.iter().all(|s| s.via == "grpc"));

    let find = |service: &str, kind: i32, direction: Option<&str>| -> &ReceivedSpan {
        spans
            .iter()
            .find(|s| s.service() == service && s.kind == kind && s.attr("berth.direction") == direction)
            .unwrap_or_else(|| panic!("no {service} kind {kind} {direction:?} span:\n{}", dump()))
    };
    let gw_server = find("berth-gateway", 2, None);
    let gw_client = find("berth-gateway", 3, None);
    let caller_in = find("caller", 2, Some("inbound"));
    let caller_app = spans
        .iter()
        .find(|s| s.service() == "caller" && s.kind == 3 && s.parent_span_id.as_deref() == Some(&caller_in.span_id))
        .unwrap_or_else(|| panic!("no call from caller's sidecar to its app:\n{}", dump()));
    let caller_out = find("caller", 2, Some("outbound"));
    let caller_peer = spans
        .iter()
        .find(|s| s.service() == "caller" && s.kind == 3 && s.parent_span_id.as_deref() == Some(&caller_out.span_id))
        .unwrap_or_else(|| panic!("no east-west client span:\n{}", dump()));
    let whoami_in = find("whoami", 2, Some("inbound"));
    let whoami_app = spans
        .iter()
        .find(|s| s.service() == "whoami" && s.kind == 3)
        .unwrap_or_else(|| panic!("no call from whoami's sidecar to its app:\n{}", dump()));

    // Parented hop by hop, starting from the client's own span.
    let chain = [
        (gw_server, CLIENT_SPAN),
        (gw_client, gw_server.span_id.as_str()),
        (caller_in, gw_client.span_id.as_str()),
        (caller_app, caller_in.span_id.as_str()),
        // The app passed on the context it was called with.
        (caller_out, caller_app.span_id.as_str()),
        (caller_peer, caller_out.span_id.as_str()),
        (whoami_in, caller_peer.span_id.as_str()),
        (whoami_app, whoami_in.span_id.as_str()),
    ];
    for (span, parent) in chain {
        assert_eq!(
            span.parent_span_id.as_deref(),
            Some(parent),
            "{} {}:\n{}",
            span.service(),
            span.name,
            dump()
        );
    }
    // Children start within their parents.
    for (span, parent) in chain.iter().skip(1) {
        let p = spans.iter().find(|s| s.span_id == *parent).unwrap();
        assert!(
            span.start_unix_nanos >= p.start_unix_nanos,
            "{} starts before its parent",
            span.name
        );
    }
    assert_eq!(seen, format!("00-{TRACE}-{}-01", whoami_app.span_id));

    // HTTP semantic conventions.
    assert_eq!(gw_server.attr("http.request.method"), Some("GET"));
    assert_eq!(gw_server.attr("http.response.status_code"), Some("200"));
    assert_eq!(gw_server.attr("url.path"), Some("/call"));
    assert_eq!(gw_server.attr("server.address"), Some("caller.localhost"));
    assert!(
        gw_server.attr("berth.router").unwrap_or_default().starts_with("caller"),
        "{gw_server:?}"
    );
    assert!(gw_server.name.starts_with("GET caller"), "{}", gw_server.name);
    assert_eq!(gw_client.attr("http.response.status_code"), Some("200"));
    assert!(
        gw_client.attr("url.full").unwrap_or_default().starts_with("http"),
        "{gw_client:?}"
    );
    assert_eq!(caller_peer.attr("peer.service"), Some("whoami"));
    assert_eq!(
        caller_peer.attr("berth.peer.identity"),
        Some("spiffe://berth.local/ecs/default/whoami")
    );
    assert_eq!(
        whoami_in.attr("berth.peer.identity"),
        Some("spiffe://berth.local/ecs/default/caller")
    );
    assert_eq!(caller_out.name, "GET whoami");

    // Resources: the service names, and the ECS attributes where a hop runs in a task.
    for s in &spans {
        assert_eq!(s.resource["deployment.environment"], "berth-local", "{s:?}");
        assert_eq!(s.scope, "berth");
    }
    for s in spans.iter().filter(|s| s.service() != "berth-gateway") {
        let r = &s.resource;
        assert_eq!(r["cloud.provider"], "aws");
        assert_eq!(r["cloud.platform"], "aws_ecs");
        assert!(r["aws.ecs.task.arn"].starts_with("arn:aws:ecs:"), "{r:?}");
        assert!(r["aws.ecs.cluster.arn"].starts_with("arn:aws:ecs:") && r["aws.ecs.cluster.arn"].contains(":cluster/"));
        assert!(["ec2", "fargate"].contains(&r["aws.ecs.launchtype"].as_str()), "{r:?}");
        assert_eq!(r["aws.ecs.task.family"], s.service());
        assert!(!r["aws.ecs.task.revision"].is_empty());
        assert!(!r["container.id"].is_empty());
        assert_eq!(r["container.name"], "berth-sidecar");
    }
    let caller_task = &caller_in.resource["aws.ecs.task.arn"];
    assert_eq!(&caller_out.resource["aws.ecs.task.arn"], caller_task);
    assert_ne!(&whoami_in.resource["aws.ecs.task.arn"], caller_task);

    // The exporters count what they sent.
    let m = http1(local.admin, get("admin", "/metrics")).await.body;
    assert!(m.contains("berth_trace_spans_total{outcome=\"exported\"}"), "{m}");
}
