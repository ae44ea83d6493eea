//! The exporter against a real OTLP receiver, over both protocols: spans arrive decoded
//! by the upstream protobuf types with their resource, ids, parents and attributes; a
//! collector that is down costs dropped spans, counted, and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_common::telemetry::{self, SpanKind, TraceSettings, attr};
use berth_common::test_util::otlp::Receiver;
use http::HeaderMap;

fn settings(vars: &[(&str, String)]) -> TraceSettings {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    TraceSettings::from_lookup(|k| m.get(k).cloned())
        .unwrap()
        .expect("tracing on")
}

async fn round_trip(protocol: &str, endpoint: String) {
    let rx = Receiver::start().await;
    let endpoint = endpoint
        .replace("RX_GRPC", &rx.grpc_endpoint())
        .replace("RX_HTTP", &rx.http_endpoint());
    let s = settings(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test".into()),
    ]);
    let resource = telemetry::resource::build(&s, "unit", vec![("cloud.platform".into(), "aws_ecs".into())]);
    let tracer = telemetry::start(&s, resource);
    {
        let mut server = tracer.server(|| "GET /x".into(), &HeaderMap::new());
        server.set(attr::HTTP_METHOD, "GET");
        let mut client = tracer.child(&server, || "GET".into(), SpanKind::Client);
        client.set(attr::HTTP_STATUS, 503u16);
        client.set(attr::HTTP_RESEND, 1i64);
        client.error(|| "upstream 503".into());
    }
    let spans = rx.wait_for(Duration::from_secs(10), |s| s.len() >= 2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans.iter().find(|s| s.kind == 2).expect("server span");
    let client = spans.iter().find(|s| s.kind == 3).expect("client span");
    let via = if protocol == "grpc" { "grpc" } else { "http" };
    assert!(spans.iter().all(|s| s.via == via));
    assert_eq!(server.service(), "unit");
    assert_eq!(server.resource["deployment.environment"], "test");
    assert_eq!(server.resource["cloud.platform"], "aws_ecs");
    assert_eq!(server.scope, "berth");
    assert_eq!(server.name, "GET /x");
    assert_eq!(server.parent_span_id, None);
    assert_eq!(client.parent_span_id.as_deref(), Some(server.span_id.as_str()));
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.trace_id.len(), 32);
    assert_eq!(client.attr("http.response.status_code"), Some("503"));
    assert_eq!(client.attr("http.request.resend_count"), Some("1"));
    assert_eq!(client.status_code, 2);
    assert!(client.end_unix_nanos >= client.start_unix_nanos && client.start_unix_nanos > 1_700_000_000_000_000_000);
    // The receiver may have the spans before the exporter has read its answer.
    tracer.flush(Duration::from_secs(5)).await;
    assert_eq!(tracer.stats().unwrap().exported.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn http_protobuf_reaches_a_real_receiver() {
    round_trip("http/protobuf", "RX_HTTP".into()).await;
}

#[tokio::test]
async fn grpc_reaches_a_real_receiver() {
    round_trip("grpc", "RX_GRPC".into()).await;
}

#[tokio::test]
async fn a_dead_collector_costs_counted_drops_and_no_waiting() {
    let dead = berth_common::test_util::closed_port().await;
    for protocol in ["grpc", "http/protobuf"] {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{dead}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64".into()),
        ]);
        let tracer = telemetry::start(&s, Vec::new());
        let t0 = Instant::now();
        for _ in 0..20_000 {
            drop(tracer.server(|| "GET".into(), &HeaderMap::new()));
        }
        let per_span = t0.elapsed() / 20_000;
        assert!(per_span < Duration::from_micros(50), "{per_span:?} per span");
        tracer.flush(Duration::from_secs(5)).await;
        let st = tracer.stats().unwrap();
        let dropped_full = st.dropped_queue_full.load(Ordering::Relaxed);
        let failed = st.dropped_export_failed.load(Ordering::Relaxed);
        assert!(
            dropped_full > 0 && failed > 0,
            "{protocol}: {dropped_full} dropped at the queue, {failed} failed"
        );
        assert_eq!(dropped_full + failed, 20_000, "{protocol}: every span accounted for");
        assert!(st.export_errors.load(Ordering::Relaxed) >= 1);
        assert!(
            st.last_error
                .lock()
                .unwrap()
                .as_deref()
                .unwrap_or_default()
                .contains("reach")
        );
    }
}
