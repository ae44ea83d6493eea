//! The sidecar's Prometheus metrics on `BERTH_ADMIN` (`GET /metrics`): inbound requests
//! by status and refusals, outbound requests by mesh service and status, retries, whether
//! each gateway replica has the registration, the app's health, the certificate's expiry
//! and IAM proofs that could not be signed, the roots it trusts (a CA rotation's progress),
//! request durations, the connections opened (keep-alive reuse), and what became of trace
//! spans and access-log lines.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_common::prom::{Counters, Histogram, family, sample};
use berth_common::upstream::Dials;

#[derive(Debug, Default)]
pub struct Metrics {
    inbound: Counters<u16>,
    denied: AtomicU64,
    outbound: Counters<(String, u16)>,
    retries: Counters<String>,
    registered: Mutex<BTreeMap<String, bool>>,
    app_healthy: AtomicBool,
    cert_not_after: AtomicU64,
    /// IAM proofs that could not be signed (no credentials, a bad endpoint).
    iam_failed: AtomicU64,
    /// The subjects of the roots trusted now.
    trust_roots: Mutex<Vec<String>>,
    inbound_duration: Histogram,
    grpc: Counters<(&'static str, &'static str)>,
    inbound_tcp: Counters<&'static str>,
    /// Transparent mode's connections, by listener and what became of them.
    transparent: Counters<(&'static str, &'static str)>,
    outbound_duration: Mutex<BTreeMap<String, Arc<Histogram>>>,
    observe: std::sync::OnceLock<berth_common::telemetry::Observe>,
    /// Connections opened: to other sidecars over mTLS (outbound), to the app (inbound).
    pub dials_mesh: Dials,
    pub dials_app: Dials,
}

impl Metrics {
    pub fn inbound(&self, status: u16) {
        self.inbound.inc(status);
    }

    /// A raw TCP connection over the mesh: `forwarded` or `app_unreachable`.
    pub fn inbound_tcp(&self, outcome: &'static str) {
        self.inbound_tcp.inc(outcome);
    }

    /// A connection the transparent egress or ingress took (`listener`), and its fate.
    pub fn transparent(&self, listener: &'static str, outcome: &'static str) {
        self.transparent.inc((listener, outcome));
    }

    /// A gRPC call's final status, by direction (`inbound`, `outbound`).
    pub fn grpc(&self, direction: &'static str, code: Option<u32>) {
        self.grpc.inc((direction, berth_common::prom::grpc_code_label(code)));
    }

    /// How long an inbound request took to its response head.
    pub fn inbound_duration(&self, d: Duration) {
        self.inbound_duration.observe(d);
    }

    pub fn outbound_duration(&self, service: &str, d: Duration) {
        let h = {
            let mut map = self.outbound_duration.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(service) {
                Some(h) => h.clone(),
                None => map.entry(service.to_string()).or_default().clone(),
            }
        };
        h.observe(d);
    }

    /// Where span and access-log counts come from, once they are set up.
    pub fn set_observe(&self, observe: berth_common::telemetry::Observe) {
        let _ = self.observe.set(observe);
    }

    pub fn denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn outbound(&self, service: &str, status: u16) {
        self.outbound.inc((service.to_string(), status));
    }

    pub fn retry(&self, service: &str) {
        self.retries.inc(service.to_string());
    }

    pub fn registered(&self, replica: &str, yes: bool) {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(replica.to_string(), yes);
    }

    pub fn app_healthy(&self, yes: bool) {
        self.app_healthy.store(yes, Ordering::Relaxed);
    }

    /// An IAM proof could not be signed.
    pub fn iam_failed(&self) {
        self.iam_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The roots trusted from now on.
    pub fn trust_roots(&self, anchors: &berth_common::mtls::TrustAnchors) {
        let subjects = anchors
            .certs()
            .iter()
            .map(|c| {
                berth_common::identity::summarize(c)
                    .map(|s| s.subject)
                    .unwrap_or_default()
            })
            .collect();
        *self.trust_roots.lock().unwrap_or_else(|e| e.into_inner()) = subjects;
    }

    pub fn certificate(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.cert_not_after.store(secs, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let name = "berth_sidecar_inbound_requests_total";
        family(
            &mut out,
            name,
            "counter",
            "Requests through the inbound listener, by status.",
        );
        for (code, n) in self.inbound.snapshot() {
            sample(&mut out, name, &[("code", &code.to_string())], n);
        }
        let name = "berth_sidecar_inbound_denied_total";
        family(&mut out, name, "counter", "Callers refused by berth.mesh.allow.");
        sample(&mut out, name, &[], self.denied.load(Ordering::Relaxed));
        let name = "berth_sidecar_outbound_requests_total";
        family(
            &mut out,
            name,
            "counter",
            "East-west requests, by mesh service and status.",
        );
        for ((svc, code), n) in self.outbound.snapshot() {
            sample(&mut out, name, &[("service", &svc), ("code", &code.to_string())], n);
        }
        let name = "berth_sidecar_outbound_retries_total";
        family(&mut out, name, "counter", "East-west retries, by mesh service.");
        for (svc, n) in self.retries.snapshot() {
            sample(&mut out, name, &[("service", &svc)], n);
        }
        let name = "berth_sidecar_registered";
        family(
            &mut out,
            name,
            "gauge",
            "Whether the gateway replica holds this task's registration.",
        );
        for (replica, yes) in self.registered.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            sample(&mut out, name, &[("replica", replica)], u8::from(*yes));
        }
        let name = "berth_sidecar_app_healthy";
        family(&mut out, name, "gauge", "Whether the app may get traffic.");
        sample(&mut out, name, &[], u8::from(self.app_healthy.load(Ordering::Relaxed)));
        let name = "berth_sidecar_inbound_tcp_connections_total";
        family(
            &mut out,
            name,
            "counter",
            "Raw TCP connections over the mesh to the app, by outcome.",
        );
        for (outcome, n) in self.inbound_tcp.snapshot() {
            sample(&mut out, name, &[("outcome", outcome)], n);
        }
        let name = "berth_sidecar_transparent_connections_total";
        family(
            &mut out,
            name,
            "counter",
            "Connections ECS redirected to the sidecar (proxyConfiguration), by listener (egress, ingress) and outcome.",
        );
        for ((listener, outcome), n) in self.transparent.snapshot() {
            sample(&mut out, name, &[("listener", listener), ("outcome", outcome)], n);
        }
        let name = "berth_sidecar_grpc_responses_total";
        family(
            &mut out,
            name,
            "counter",
            "gRPC calls by direction and final grpc-status.",
        );
        for ((direction, code), n) in self.grpc.snapshot() {
            sample(&mut out, name, &[("direction", direction), ("grpc_status", code)], n);
        }
        let name = "berth_sidecar_upstream_connections_opened_total";
        family(
            &mut out,
            name,
            "counter",
            "Connections opened, by pool (mesh: to other sidecars; app: to the app): with keep-alive, far fewer than the requests.",
        );
        for (pool, n) in [("mesh", &self.dials_mesh), ("app", &self.dials_app)] {
            sample(&mut out, name, &[("pool", pool)], n.load(Ordering::Relaxed));
        }
        let name = "berth_sidecar_inbound_request_duration_seconds";
        family(
            &mut out,
            name,
            "histogram",
            "Inbound requests: time to the response head.",
        );
        self.inbound_duration.render(&mut out, name, "");
        let name = "berth_sidecar_outbound_request_duration_seconds";
        family(
            &mut out,
            name,
            "histogram",
            "East-west requests by mesh service: time to the response head.",
        );
        for (svc, h) in self.outbound_duration.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h.render(
                &mut out,
                name,
                &format!("service=\"{}\"", berth_common::prom::escape(svc)),
            );
        }
        if let Some(o) = self.observe.get() {
            if let Some(stats) = o.tracer.stats() {
                stats.render(&mut out, "berth_sidecar");
            }
            if let Some(log) = &o.access_log {
                let name = "berth_sidecar_access_log_dropped_total";
                family(
                    &mut out,
                    name,
                    "counter",
                    "Access-log lines dropped because the writer fell behind.",
                );
                sample(&mut out, name, &[], log.dropped.load(Ordering::Relaxed));
            }
        }
        let name = "berth_sidecar_certificate_expiry_timestamp_seconds";
        family(&mut out, name, "gauge", "When the task's certificate expires.");
        sample(&mut out, name, &[], self.cert_not_after.load(Ordering::Relaxed));
        let name = "berth_sidecar_iam_proof_failures_total";
        family(
            &mut out,
            name,
            "counter",
            "IAM proofs that could not be signed with the task role's credentials.",
        );
        sample(&mut out, name, &[], self.iam_failed.load(Ordering::Relaxed));
        let name = "berth_sidecar_trust_anchor";
        family(
            &mut out,
            name,
            "gauge",
            "The mesh roots this sidecar trusts now, by subject (two during a CA rotation).",
        );
        for subject in self.trust_roots.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            sample(&mut out, name, &[("subject", subject)], 1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inbound(200);
        m.inbound(200);
        m.denied();
        m.outbound("whoami", 503);
        m.retry("whoami");
        m.registered("10.0.0.1:9443", true);
        m.app_healthy(true);
        let text = m.render();
        assert!(
            text.contains("berth_sidecar_inbound_requests_total{code=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("berth_sidecar_inbound_denied_total 1"));
        assert!(text.contains("berth_sidecar_outbound_requests_total{service=\"whoami\",code=\"503\"} 1"));
        assert!(text.contains("berth_sidecar_registered{replica=\"10.0.0.1:9443\"} 1"));
        assert!(text.contains("berth_sidecar_app_healthy 1"));
    }
}
