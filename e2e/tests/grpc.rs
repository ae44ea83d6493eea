//! gRPC end to end in `berth-local up`, with a real tonic client and server (the demo's
//! `greeter`, two tasks): north-south through the gateway and a sidecar, east-west through
//! two sidecars. Unary and server-streaming calls, response metadata and status codes
//! intact, a deadline (`grpc-timeout`) enforced by the proxy, a call retried on
//! UNAVAILABLE onto the healthy greeter, and the gRPC health check ejecting a greeter
//! that says NOT_SERVING.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_common::test_util::{eventually, get, http1};
use berth_e2e::{LocalUp, admin_json};
use berth_examples::greeter::{Client, HelloRequest};
use tonic::{Code, Request};

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

/// The greeter tasks' addresses, from the sidecar registry.
async fn greeters(admin: SocketAddr) -> Vec<String> {
    admin_json(admin, "/api/sidecars")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["service"] == "greeter" && s["state"] == "live")
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect()
}

/// Calls, through `addr` with `authority`, the checks every path must pass.
async fn unary_streaming_status_deadline(addr: SocketAddr, authority: &str) -> String {
    let mut c = Client::connect(addr, authority).await.unwrap();
    // Unary, with response metadata.
    let r = c.say_hello(Request::new(hello("Ada"))).await.unwrap();
    let served_by = r.metadata().get("x-served-by").unwrap().to_str().unwrap().to_string();
    let reply = r.into_inner();
    assert_eq!(reply.message, "Hello Ada");
    assert_eq!(reply.served_by, served_by);
    // Server streaming: every message, then the trailers.
    let (replies, _trailers) = c
        .say_hello_stream(HelloRequest {
            name: "Grace".into(),
            count: 25,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(replies.len(), 25);
    assert_eq!(replies[24].message, "Hello Grace #25");
    // A status code and message from the app arrive as sent (in the trailers).
    let err = c
        .say_hello(Request::new(HelloRequest {
            name: "x".into(),
            fail_code: Code::NotFound as i32,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().ends_with("was asked to fail"), "{err:?}");
    // A deadline: the greeter would answer after 5 s; the proxy ends the call when the
    // call's grpc-timeout (300 ms) passes. A raw HTTP/2 request, because tonic's client
    // also enforces its own deadline and would win the race; the greeter ignores them.
    let t0 = Instant::now();
    let (code, message) = raw_call_with_deadline(addr, authority, "300m", 5000).await;
    assert_eq!(code, Some(Code::DeadlineExceeded as u32), "{message}");
    assert!(message.contains("deadline exceeded"), "{message}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    served_by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_gateway_and_two_sidecars() {
    let local = LocalUp::start("127.0.210.1");
    local.wait_ready().await;
    let (web, admin) = (local.web, local.admin);
    let tasks = greeters(admin).await;
    assert_eq!(tasks.len(), 2, "{tasks:?}");

    // North-south: client -> gateway (h2c) -> mTLS -> greeter's sidecar -> h2c -> greeter.
    unary_streaming_status_deadline(web, "greeter.localhost").await;

    // A gRPC client nobody here wrote (Python's grpcio, over h2c) sees the same.
    grpcio_checks(web, "greeter.localhost").await;

    // East-west: the test stands in for the caller's app and uses its sidecar's outbound
    // listener: -> caller's sidecar -> mTLS -> greeter's sidecar -> greeter.
    let caller = admin_json(admin, "/api/sidecars")
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "caller")
        .map(|s| s["address"].as_str().unwrap().to_string())
        .unwrap();
    let outbound: SocketAddr = format!("{caller}:15001").parse().unwrap();
    unary_streaming_status_deadline(outbound, "greeter").await;
    grpcio_checks(outbound, "greeter").await;
    // And the caller's real app calling over gRPC, reached north-south over HTTP/1.1.
    let r = http1(web, get("caller.localhost", "/grpc?to=greeter&name=Linus")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("called greeter over gRPC: Hello Linus (served by "),
        "{}",
        r.body
    );

    // The gateway's own errors reach gRPC clients as gRPC statuses: no router is
    // UNIMPLEMENTED (not an HTTP 404 the client cannot read).
    let mut nowhere = Client::connect(web, "nosuch.localhost").await.unwrap();
    let err = nowhere.say_hello(Request::new(hello("x"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    // So do a sidecar's: a mesh name nobody serves is UNAVAILABLE with the reason, not
    // an HTTP 503 the client can only map to a code.
    let mut unknown = Client::connect(outbound, "nosuch").await.unwrap();
    let err = unknown.say_hello(Request::new(hello("x"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("no mesh service nosuch"), "{err:?}");

    // Calls are counted by their final grpc-status, read from trailers or a trailers-only
    // head: at the gateway, and at the caller's sidecar.
    let m = http1(admin, get("admin", "/metrics")).await.body;
    for code in ["0", "4", "5"] {
        let line = format!("berth_grpc_responses_total{{service=\"greeter@ecs\",grpc_status=\"{code}\"}}");
        assert!(m.contains(&line), "{line} missing:\n{m}");
    }
    let sm = http1(format!("{caller}:15000").parse().unwrap(), get("sidecar", "/metrics"))
        .await
        .body;
    for code in ["0", "4", "5"] {
        let line = format!("berth_sidecar_grpc_responses_total{{direction=\"outbound\",grpc_status=\"{code}\"}}");
        assert!(sm.contains(&line), "{line} missing:\n{sm}");
    }

    // Retry on UNAVAILABLE: one greeter answers UNAVAILABLE to these calls; the router's
    // retry middleware lists SayHello as safe to send again, so every call lands on the
    // other one.
    let mut c = Client::connect(web, "greeter.localhost").await.unwrap();
    let first = c
        .say_hello(Request::new(hello("a")))
        .await
        .unwrap()
        .into_inner()
        .served_by;
    let retried_before = upstream_errors(admin, "grpc_status").await;
    let mut retried = false;
    for _ in 0..40 {
        let r = c
            .say_hello(Request::new(HelloRequest {
                name: "retry".into(),
                fail_code: Code::Unavailable as i32,
                fail_on: first.clone(),
                ..Default::default()
            }))
            .await;
        let reply = r
            .unwrap_or_else(|e| panic!("a call failed despite the retry: {e:?}"))
            .into_inner();
        assert_ne!(reply.served_by, first);
        if upstream_errors(admin, "grpc_status").await > retried_before {
            retried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(retried, "no call was sent to the failing greeter and retried");

    // The gRPC health check (healthcheck.mode=grpc): a greeter saying NOT_SERVING is
    // ejected (DOWN) within a few intervals, and back once it serves again.
    let victim = tasks[0].clone();
    // Both greeters back in rotation first (the retry above ejected one for a moment).
    let all_up = eventually(Duration::from_secs(10), || async {
        let v = admin_json(admin, "/api/http/services").await;
        v.as_array().is_some_and(|a| {
            a.iter().filter(|s| s["usedBy"][0] == "greeter@ecs").all(|s| {
                s["serverStatus"]
                    .as_object()
                    .is_some_and(|m| m.len() == 2 && m.values().all(|st| st == "UP"))
            })
        })
    })
    .await;
    assert!(all_up, "{:#}", admin_json(admin, "/api/http/services").await);
    let mut direct = Client::connect(format!("{victim}:50051").parse().unwrap(), "greeter")
        .await
        .unwrap();
    direct.set_serving(false).await.unwrap();
    let status_of = |v: serde_json::Value| -> Option<String> {
        v.as_array()?.iter().find(|s| s["usedBy"][0] == "greeter@ecs")?["serverStatus"]
            .as_object()?
            .iter()
            .find(|(url, _)| url.contains(&format!("//{victim}:")))
            .map(|(_, st)| st.as_str().unwrap_or_default().to_string())
    };
    let down = eventually(Duration::from_secs(8), || async {
        status_of(admin_json(admin, "/api/http/services").await).as_deref() == Some("DOWN")
    })
    .await;
    assert!(down, "{:#}", admin_json(admin, "/api/http/services").await);
    for _ in 0..10 {
        let r = c.say_hello(Request::new(hello("b"))).await.unwrap().into_inner();
        assert!(!victim.is_empty() && r.served_by != direct_name(&mut direct).await);
    }
    direct.set_serving(true).await.unwrap();
    let up = eventually(Duration::from_secs(8), || async {
        status_of(admin_json(admin, "/api/http/services").await).as_deref() == Some("UP")
    })
    .await;
    assert!(up, "{:#}", admin_json(admin, "/api/http/services").await);
}

/// `SayHello` sent by hand over HTTP/2 with `grpc-timeout`; the `grpc-status` and
/// `grpc-message` that came back (in headers for a trailers-only answer, else trailers).
async fn raw_call_with_deadline(
    addr: SocketAddr,
    authority: &str,
    timeout: &str,
    delay_ms: u32,
) -> (Option<u32>, String) {
    use http_body_util::BodyExt;
    use prost::Message;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let msg = HelloRequest {
        name: "slow".into(),
        delay_ms,
        ..Default::default()
    }
    .encode_to_vec();
    let req = http::Request::post(format!("http://{authority}/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(berth_common::grpc::frame(&msg)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let head = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let h = collected.trailers().cloned().unwrap_or(head);
    let message = h
        .get("grpc-message")
        .map(|v| v.to_str().unwrap_or_default().replace("%20", " "))
        .unwrap_or_default();
    (berth_common::grpc::status(&h), message)
}

/// The name a greeter answers with, asked directly.
async fn direct_name(c: &mut Client) -> String {
    c.say_hello(Request::new(hello("me")))
        .await
        .unwrap()
        .into_inner()
        .served_by
}

/// `berth_upstream_errors_total{kind=...}` summed over services.
async fn upstream_errors(admin: SocketAddr, kind: &str) -> u64 {
    http1(admin, get("admin", "/metrics"))
        .await
        .body
        .lines()
        .filter(|l| l.starts_with("berth_upstream_errors_total{") && l.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Python's grpcio through `addr` with `:authority` `authority`: a unary call, a server
/// stream, a status from the app and a deadline, on messages encoded by hand (no protoc
/// here): `HelloRequest { name = 1, count = 2, delay_ms = 3, fail_code = 4 }`.
async fn grpcio_checks(addr: SocketAddr, authority: &str) {
    let script = format!(
        r#"
import grpc
def field(tag, value):
    if isinstance(value, str):
        b = value.encode()
        return bytes([tag << 3 | 2, len(b)]) + b
    return bytes([tag << 3, value])
ident = lambda b: b
ch = grpc.insecure_channel("{addr}", options=[("grpc.default_authority", "{authority}")])
hello = ch.unary_unary("/helloworld.Greeter/SayHello", request_serializer=ident, response_deserializer=ident)
reply = hello(field(1, "Py"), timeout=10)
assert b"Hello Py" in reply, reply
stream = ch.unary_stream("/helloworld.Greeter/SayHelloStream", request_serializer=ident, response_deserializer=ident)
replies = list(stream(field(1, "Py") + field(2, 4), timeout=10))
assert len(replies) == 4 and b"Hello Py #4" in replies[3], replies
try:
    hello(field(1, "x") + field(4, 5), timeout=10)
    raise SystemExit("NOT_FOUND expected")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
try:
    # delay_ms = 5000, as a two-byte varint
    hello(field(1, "slow") + bytes([0x18, 0x88, 0x27]), timeout=0.3)
    raise SystemExit("DEADLINE_EXCEEDED expected")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
print("grpcio ok")
"#
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("grpcio ok"), "{text}");
}
