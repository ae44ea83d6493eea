//! Active health checks (`loadBalancer.healthCheck`, as in Traefik): every `interval`
//! (default 30 s) each endpoint of a service with a check gets `GET <path>` (on
//! `port`, with `hostname` as Host and the configured headers); a status other than
//! the expected one (any 2xx/3xx by default), a timeout (default 5 s) or a connection
//! failure marks it DOWN until a check passes again. The balancer skips DOWN endpoints.
//! With `mode: grpc` the check is the gRPC health-checking protocol instead
//! (`grpc.health.v1.Health/Check` over HTTP/2): anything but `SERVING` is DOWN.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Instant;

use super::Proxy;
use super::router::Endpoint;
use berth_common::balance::EndpointState;
use berth_common::config::HealthCheckConfig;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Checks run at most this often per endpoint, whatever `interval` says (`0s` in a label
/// would otherwise probe every endpoint ten times a second).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The largest answer read: a gRPC one whole; an HTTP one's body is read and dropped up
/// to this size, so that its keep-alive connection serves the next check (past it, or
/// past the check's time limit, the connection closes).
const MAX_ANSWER: usize = 64 * 1024;

/// The check's period and its time limit: at least [`MIN_INTERVAL`] apart, and a probe
/// never outlives its period, so at most one is under way per endpoint.
fn schedule(hc: &HealthCheckConfig) -> (Duration, Duration) {
    let interval = hc.interval.unwrap_or(DEFAULT_INTERVAL).max(MIN_INTERVAL);
    (interval, hc.timeout.unwrap_or(DEFAULT_TIMEOUT).min(interval))
}

/// Run the checks for as long as the gateway runs.
pub(crate) async fn run(proxy: Arc<Proxy>) {
    let mut next: HashMap<String, Instant> = HashMap::new();
    let mut live = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let routes = proxy.routes();
        let now = Instant::now();
        live.clear();
        for (entry, runtime) in routes.snapshot.services.iter().zip(&routes.services) {
            let Some(hc) = entry.health_check.as_ref().filter(|h| h.path.is_some() || is_grpc(h)) else {
                continue;
            };
            for (ep, state) in runtime.endpoints.iter().zip(&runtime.states) {
                let key = format!("{}|{}", entry.name, ep.url);
                live.insert(key.clone());
                if next.get(&key).is_some_and(|t| *t > now) {
                    continue;
                }
                next.insert(key, now + schedule(hc).0);
                tokio::spawn(probe(
                    proxy.clone(),
                    entry.name.clone(),
                    ep.clone(),
                    state.clone(),
                    hc.clone(),
                ));
            }
        }
        next.retain(|k, _| live.contains(k));
    }
}

fn is_grpc(hc: &HealthCheckConfig) -> bool {
    hc.mode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("grpc"))
}

async fn probe(proxy: Arc<Proxy>, service: String, ep: Endpoint, state: Arc<EndpointState>, hc: HealthCheckConfig) {
    let grpc = is_grpc(&hc);
    let path = if grpc {
        berth_common::grpc::HEALTH_CHECK_PATH.to_string()
    } else {
        hc.path.clone().unwrap_or_else(|| "/".into())
    };
    let authority = match hc.port {
        Some(p) => format!("{}:{p}", ep.authority.host()),
        None => ep.authority.to_string(),
    };
    let scheme = if ep.https { "https" } else { "http" };
    let body = if grpc {
        Full::new(berth_common::grpc::health_request(""))
            .map_err(|never| -> super::BoxError { match never {} })
            .boxed()
    } else {
        Empty::<Bytes>::new()
            .map_err(|never| -> super::BoxError { match never {} })
            .boxed()
    };
    let Ok(mut req) = Request::builder()
        .method(if grpc { "POST" } else { "GET" })
        .uri(format!("{scheme}://{authority}{path}"))
        .version(if ep.h2c || grpc {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        })
        .body(body)
    else {
        return;
    };
    if grpc {
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        req.headers_mut()
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let host = hc.hostname.clone().unwrap_or_else(|| authority.clone());
    if let Ok(v) = HeaderValue::from_str(&host) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    for (k, v) in &hc.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            req.headers_mut().insert(k, v);
        }
    }
    // The time limit covers the whole answer, a gRPC one's body and trailers included;
    // an HTTP one's verdict is its status, and its body is drained afterwards, within the
    // same limit, to keep its connection.
    let deadline = Instant::now() + schedule(&hc).1;
    let (verdict, answer) = match proxy.dispatch(&ep, req) {
        Ok(fut) => tokio::time::timeout_at(deadline, async {
            match fut.await {
                Ok(resp) if grpc => (grpc_verdict(resp).await, None),
                Ok(resp) => (status_verdict(resp.status(), hc.status), Some(resp)),
                Err(e) => (Err(e.to_string()), None),
            }
        })
        .await
        .unwrap_or_else(|_| (Err("timed out".into()), None)),
        Err(e) => (Err(e.to_string()), None),
    };
    let healthy = verdict.is_ok();
    if state.set_active_healthy(healthy) {
        match verdict {
            Ok(()) => tracing::info!(service = %service, endpoint = %ep.url, "health check passes: UP"),
            Err(why) => tracing::warn!(service = %service, endpoint = %ep.url, %why, "health check fails: DOWN"),
        }
    }
    if let Some(answer) = answer {
        let _ = tokio::time::timeout_at(deadline, berth_common::pool::drain(answer, MAX_ANSWER)).await;
    }
}

/// An HTTP check's status: the one configured, else any 2xx or 3xx.
fn status_verdict(status: http::StatusCode, want: Option<u16>) -> Result<(), String> {
    match want {
        Some(want) => (status.as_u16() == want)
            .then_some(())
            .ok_or(format!("status {status}, want {want}")),
        None if status.is_success() || status.is_redirection() => Ok(()),
        None => Err(format!("status {status}")),
    }
}

/// A `Health/Check` answer: HTTP 200, `grpc-status` 0 and `SERVING`, or why not.
async fn grpc_verdict(resp: http::Response<berth_common::pool::Pooled>) -> Result<(), String> {
    use berth_common::grpc;
    let status = resp.status();
    if status != http::StatusCode::OK {
        return Err(format!("HTTP status {status}"));
    }
    let head = grpc::status(resp.headers());
    let collected = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let code = collected.trailers().and_then(grpc::status).or(head);
    if code != Some(grpc::code::OK) {
        return Err(format!(
            "grpc-status {}",
            code.map_or("missing".into(), |c| c.to_string())
        ));
    }
    match grpc::health_status(&collected.to_bytes()) {
        Some(1) => Ok(()),
        Some(2) => Err("NOT_SERVING".into()),
        Some(other) => Err(format!("serving status {other}")),
        None => Err("unreadable health response".into()),
    }
}
