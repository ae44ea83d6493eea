//! The gateway's metrics registry, which discovery, the listeners and the proxy write to
//! and the admin API renders as Prometheus text at `GET /metrics`.
//!
//! Per-router and per-service handles are resolved once per snapshot swap (like
//! endpoint health), so the request path touches only atomics and one short lock.

use berth_common::http::method_label;
use berth_common::prom::{Counters, Histogram, escape as esc, grpc_code_label};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Requests by status code and method, and their duration. The method is a registered
/// one or `_OTHER` ([`method_label`]): clients choose methods, and a series per made-up
/// method would grow without bound.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    by_code: Mutex<HashMap<(u16, &'static str), u64, BuildHasherDefault<SmallKeyHasher>>>,
    pub duration: Histogram,
}

impl RequestMetrics {
    pub fn record(&self, code: u16, method: &http::Method, d: Duration) {
        *self
            .by_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((code, method_label(method)))
            .or_default() += 1;
        self.duration.observe(d);
    }

    pub fn total(&self) -> u64 {
        self.by_code.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}

/// The hash of a request count's key: a status code and a method label, few and not
/// chosen freely by clients (a method is folded to a label of [`method_label`], a status
/// is three digits), so no flooding-resistant hash is needed. SipHash cost about 200
/// instructions per count, four counts per request (callgrind, docs/benchmarks.md).
#[derive(Default)]
pub(crate) struct SmallKeyHasher(u64);

impl std::hash::Hasher for SmallKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        // FxHash's step: spreads the bits upwards, where hashbrown reads its tags.
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// All of the gateway's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    routers: Handles,
    services: Handles,
    /// Keyed by `service \0 endpoint URL`; pruned to the current snapshot's endpoints.
    endpoints: Handles,
    entrypoints: Mutex<HashMap<String, Arc<EntrypointMetrics>>>,
    upstream_errors: Counters<(String, &'static str)>,
    retries: Counters<String>,
    grpc: Counters<(String, &'static str)>,
    tcp: Counters<(String, &'static str)>,
    pub config_reloads_ok: AtomicU64,
    pub config_reloads_failed: AtomicU64,
    /// ECS API calls by operation and outcome (`ok`, `throttled`, `error`); each attempt counts.
    pub ecs_api_calls: ApiCalls,
    /// Connections opened to upstreams: beside the requests, how well keep-alive reuses them.
    pub upstream_dials: UpstreamDials,
    /// IAM proofs for first certificates, by outcome.
    pub mesh_iam: MeshIam,
}

/// IAM proofs checked by the control API ([`crate::mesh::iam`]).
#[derive(Debug, Default)]
pub struct MeshIam {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    /// STS could not be asked or failed: the proof was refused (fail closed).
    pub sts_unavailable: AtomicU64,
}

/// Connections opened by the upstream pools.
#[derive(Debug, Default)]
pub struct UpstreamDials {
    /// To services over plain HTTP, h2c or TLS.
    pub plain: berth_common::upstream::Dials,
    /// To sidecars over the mesh's mTLS.
    pub mesh: berth_common::upstream::Dials,
}

/// Calls to an external API by operation and outcome.
#[derive(Debug, Default)]
pub struct ApiCalls(Counters<(&'static str, &'static str)>);

impl ApiCalls {
    pub fn add(&self, op: &'static str, outcome: &'static str) {
        self.0.inc((op, outcome));
    }

    /// Sorted (operation, outcome) counts.
    pub fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.0.snapshot()
    }

    /// Attempts of one operation, any outcome.
    pub fn total(&self, op: &str) -> u64 {
        self.snapshot()
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Per-entrypoint connection and request counts.
#[derive(Debug, Default)]
pub struct EntrypointMetrics {
    pub open_connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub requests: RequestMetrics,
}

/// Renders the label set of a handle's key.
type LabelsOf = dyn Fn(&str) -> String;

/// Metric handles by router or service name.
type Handles = Mutex<HashMap<String, Arc<RequestMetrics>>>;

fn handle(map: &Handles, name: &str) -> Arc<RequestMetrics> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone()
}

impl Metrics {
    pub fn router(&self, name: &str) -> Arc<RequestMetrics> {
        handle(&self.routers, name)
    }
    pub fn service(&self, name: &str) -> Arc<RequestMetrics> {
        handle(&self.services, name)
    }
    pub fn endpoint(&self, service: &str, url: &str) -> Arc<RequestMetrics> {
        handle(&self.endpoints, &format!("{service}\0{url}"))
    }
    /// Forget endpoints no longer in any service (ECS task addresses come and go; their
    /// series go with them, as with any Prometheus target that disappears).
    pub fn retain_endpoints(&self, keep: &std::collections::HashSet<String>) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep.contains(k));
    }
    /// Forget the series of routers and services no longer configured, as Traefik does on
    /// a reload: names come from labels, and tasks that come and go with new names would
    /// otherwise grow `/metrics` for ever.
    pub fn retain_names(&self, routers: &HashSet<&str>, services: &HashSet<&str>) {
        for (map, names) in [(&self.routers, routers), (&self.services, services)] {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| names.contains(k.as_str()));
        }
        self.upstream_errors.retain(|(s, _)| services.contains(s.as_str()));
        self.retries.retain(|s| services.contains(s.as_str()));
        self.grpc.retain(|(s, _)| s.is_empty() || services.contains(s.as_str()));
    }

    /// Forget TCP routers no longer configured.
    pub fn retain_tcp(&self, routers: &HashSet<&str>) {
        self.tcp.retain(|(r, _)| routers.contains(r.as_str()));
    }

    pub fn entrypoint(&self, name: &str) -> Arc<EntrypointMetrics> {
        self.entrypoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
    pub fn upstream_error(&self, service: &str, kind: &'static str) {
        self.upstream_errors.inc((service.to_string(), kind));
    }
    /// A connection a TCP router took: `forwarded`, `no_server`, `tls_failed`.
    pub fn tcp(&self, router: &str, outcome: &'static str) {
        self.tcp.inc((router.to_string(), outcome));
    }

    /// A gRPC call's final status (from trailers, or a trailers-only head).
    pub fn grpc(&self, service: &str, code: Option<u32>) {
        self.grpc.inc((service.to_string(), grpc_code_label(code)));
    }

    pub fn retry(&self, service: &str) {
        self.retries.inc(service.to_string());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let one = |label: &'static str| move |name: &str| format!("{label}=\"{}\"", esc(name));
        let endpoint_labels = |key: &str| {
            let (svc, url) = key.split_once('\0').unwrap_or((key, ""));
            format!("service=\"{}\",endpoint=\"{}\"", esc(svc), esc(url))
        };
        let families: [(&str, &LabelsOf, &Handles); 3] = [
            ("router", &one("router"), &self.routers),
            ("service", &one("service"), &self.services),
            ("endpoint", &endpoint_labels, &self.endpoints),
        ];
        for (family, label, map) in families {
            let map = map.lock().unwrap_or_else(|e| e.into_inner());
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            let _ = writeln!(
                out,
                "# HELP berth_{family}_requests_total Requests handled, by {family}, status code and method."
            );
            let _ = writeln!(out, "# TYPE berth_{family}_requests_total counter");
            for name in &names {
                let codes = map[*name].by_code.lock().unwrap_or_else(|e| e.into_inner());
                let mut rows: Vec<_> = codes.iter().collect();
                rows.sort_unstable();
                for ((code, method), n) in rows {
                    let _ = writeln!(
                        out,
                        "berth_{family}_requests_total{{{},code=\"{code}\",method=\"{method}\"}} {n}",
                        label(name)
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP berth_{family}_request_duration_seconds Time to the response head, by {family}."
            );
            let _ = writeln!(out, "# TYPE berth_{family}_request_duration_seconds histogram");
            for name in &names {
                map[*name].duration.render(
                    &mut out,
                    &format!("berth_{family}_request_duration_seconds"),
                    &label(name),
                );
            }
        }
        {
            let eps = self.entrypoints.lock().unwrap_or_else(|e| e.into_inner());
            let mut names: Vec<&String> = eps.keys().collect();
            names.sort();
            let _ = writeln!(
                out,
                "# HELP berth_entrypoint_open_connections Client connections open now."
            );
            let _ = writeln!(out, "# TYPE berth_entrypoint_open_connections gauge");
            for n in &names {
                let v = eps[*n].open_connections.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "berth_entrypoint_open_connections{{entrypoint=\"{}\"}} {v}",
                    esc(n)
                );
            }
            let _ = writeln!(
                out,
                "# HELP berth_entrypoint_connections_total Client connections accepted."
            );
            let _ = writeln!(out, "# TYPE berth_entrypoint_connections_total counter");
            for n in &names {
                let v = eps[*n].connections_total.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "berth_entrypoint_connections_total{{entrypoint=\"{}\"}} {v}",
                    esc(n)
                );
            }
            let _ = writeln!(
                out,
                "# HELP berth_entrypoint_requests_total Requests received, by entrypoint, status code and method."
            );
            let _ = writeln!(out, "# TYPE berth_entrypoint_requests_total counter");
            for n in &names {
                let codes = eps[*n].requests.by_code.lock().unwrap_or_else(|e| e.into_inner());
                let mut rows: Vec<_> = codes.iter().collect();
                rows.sort_unstable();
                for ((code, method), v) in rows {
                    let _ = writeln!(
                        out,
                        "berth_entrypoint_requests_total{{entrypoint=\"{}\",code=\"{code}\",method=\"{method}\"}} {v}",
                        esc(n)
                    );
                }
            }
            let name = "berth_entrypoint_request_duration_seconds";
            berth_common::prom::family(&mut out, name, "histogram", "Time to the response head, by entrypoint.");
            for n in &names {
                let labels = format!("entrypoint=\"{}\"", esc(n));
                eps[*n].requests.duration.render(&mut out, name, &labels);
            }
        }
        let _ = writeln!(
            out,
            "# HELP berth_upstream_errors_total Failed upstream attempts, by service and kind."
        );
        let _ = writeln!(out, "# TYPE berth_upstream_errors_total counter");
        for ((svc, kind), n) in self.upstream_errors.snapshot() {
            let _ = writeln!(
                out,
                "berth_upstream_errors_total{{service=\"{}\",kind=\"{kind}\"}} {n}",
                esc(&svc)
            );
        }
        let name = "berth_tcp_connections_total";
        berth_common::prom::family(
            &mut out,
            name,
            "counter",
            "Connections taken by TCP routers, by outcome.",
        );
        for ((router, outcome), n) in self.tcp.snapshot() {
            berth_common::prom::sample(&mut out, name, &[("router", &router), ("outcome", outcome)], n);
        }
        let name = "berth_grpc_responses_total";
        berth_common::prom::family(
            &mut out,
            name,
            "counter",
            "gRPC calls by service and final grpc-status.",
        );
        for ((svc, code), n) in self.grpc.snapshot() {
            berth_common::prom::sample(&mut out, name, &[("service", &svc), ("grpc_status", code)], n);
        }
        let _ = writeln!(
            out,
            "# HELP berth_upstream_retries_total Requests retried on another endpoint, by service."
        );
        let _ = writeln!(out, "# TYPE berth_upstream_retries_total counter");
        for (svc, n) in self.retries.snapshot() {
            let _ = writeln!(out, "berth_upstream_retries_total{{service=\"{}\"}} {n}", esc(&svc));
        }
        let _ = writeln!(
            out,
            "# HELP berth_ecs_api_calls_total ECS API attempts, by operation and outcome."
        );
        let _ = writeln!(out, "# TYPE berth_ecs_api_calls_total counter");
        for ((op, outcome), n) in self.ecs_api_calls.snapshot() {
            let _ = writeln!(
                out,
                "berth_ecs_api_calls_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_upstream_connections_opened_total Connections opened to upstreams, by pool: \
             with keep-alive, far fewer than the requests sent."
        );
        let _ = writeln!(out, "# TYPE berth_upstream_connections_opened_total counter");
        for (pool, n) in [
            ("http", &self.upstream_dials.plain),
            ("mesh", &self.upstream_dials.mesh),
        ] {
            let _ = writeln!(
                out,
                "berth_upstream_connections_opened_total{{pool=\"{pool}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_mesh_iam_total IAM proofs for first mesh certificates, by result \
             (sts_unavailable: STS could not be asked, the proof was refused)."
        );
        let _ = writeln!(out, "# TYPE berth_mesh_iam_total counter");
        for (result, n) in [
            ("accepted", &self.mesh_iam.accepted),
            ("refused", &self.mesh_iam.refused),
            ("sts_unavailable", &self.mesh_iam.sts_unavailable),
        ] {
            let _ = writeln!(
                out,
                "berth_mesh_iam_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_config_reloads_total Configuration reloads, by outcome."
        );
        let _ = writeln!(out, "# TYPE berth_config_reloads_total counter");
        let _ = writeln!(
            out,
            "berth_config_reloads_total{{outcome=\"success\"}} {}",
            self.config_reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "berth_config_reloads_total{{outcome=\"failure\"}} {}",
            self.config_reloads_failed.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.router("web@file")
            .record(200, &http::Method::GET, Duration::from_millis(3));
        m.router("web@file")
            .record(200, &http::Method::GET, Duration::from_millis(30));
        m.service("app@file")
            .record(502, &http::Method::POST, Duration::from_millis(1));
        m.upstream_error("app@file", "connect");
        m.endpoint("app@file", "http://10.0.0.1:80")
            .record(200, &http::Method::GET, Duration::from_millis(2));
        let text = m.render();
        assert!(
            text.contains("berth_router_requests_total{router=\"web@file\",code=\"200\",method=\"GET\"} 2"),
            "{text}"
        );
        assert!(text.contains("berth_router_request_duration_seconds_bucket{router=\"web@file\",le=\"0.005\"} 1"));
        assert!(text.contains("berth_router_request_duration_seconds_bucket{router=\"web@file\",le=\"0.05\"} 2"));
        assert!(text.contains("berth_router_request_duration_seconds_count{router=\"web@file\"} 2"));
        assert!(text.contains("berth_service_requests_total{service=\"app@file\",code=\"502\",method=\"POST\"} 1"));
        assert!(text.contains("berth_upstream_errors_total{service=\"app@file\",kind=\"connect\"} 1"));
        assert!(text.contains(
            "berth_endpoint_requests_total{service=\"app@file\",endpoint=\"http://10.0.0.1:80\",code=\"200\",method=\"GET\"} 1"
        ));
        assert!(text.contains(
            "berth_endpoint_request_duration_seconds_count{service=\"app@file\",endpoint=\"http://10.0.0.1:80\"} 1"
        ));
        m.entrypoint("web")
            .requests
            .record(200, &http::Method::GET, Duration::from_millis(2));
        assert!(
            m.render()
                .contains("berth_entrypoint_request_duration_seconds_count{entrypoint=\"web\"} 1")
        );
        for i in 0..3000 {
            let method = http::Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
            m.router("web@file").record(200, &method, Duration::from_millis(1));
        }
        let text = m.render();
        assert!(text.contains("berth_router_requests_total{router=\"web@file\",code=\"200\",method=\"_OTHER\"} 3000"));
        assert!(!text.contains("method=\"M1\""));
        m.grpc("app@file", Some(4_000_000));
        m.grpc("app@file", Some(14));
        let text = m.render();
        assert!(text.contains("grpc_status=\"unknown\""), "{text}");
        assert!(text.contains("grpc_status=\"14\""), "{text}");
        m.retain_endpoints(&Default::default());
        assert!(!m.render().contains("berth_endpoint_requests_total{"));
    }
}
