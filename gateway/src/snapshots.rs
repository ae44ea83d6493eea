//! The one owner of the routing snapshot: it watches every provider's view, rebuilds
//! the snapshot with the pure builder, loads the TLS certificates it names, and swaps
//! the result into the proxy and the certificate store.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use berth_common::diag::Diagnostic;
use berth_common::routing::{BuildOptions, ProviderView, Snapshot, build};
use berth_common::tls::load_certified_key;
use futures_util::future::select_all;
use tokio::sync::watch;

use crate::entrypoint::CertStore;
use crate::proxy::Proxy;

pub(crate) struct SnapshotOwner {
    pub sources: Vec<watch::Receiver<ProviderView>>,
    pub entrypoints: Vec<String>,
    pub default_entrypoints: Vec<String>,
    pub tls_entrypoints: Vec<String>,
    pub entrypoint_tls_options: Vec<(String, String)>,
    pub entrypoint_cert_resolvers: Vec<(String, String)>,
    pub internal_services: Vec<String>,
    pub default_rule_syntax: berth_common::rules::Syntax,
    pub proxy: Arc<Proxy>,
    pub certs: Arc<CertStore>,
    /// The latest snapshot, for the admin API.
    pub current: Arc<ArcSwap<Snapshot>>,
    /// Told when every source's first complete view is live in the proxy.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

/// The readiness gate the sources' first complete views hold.
pub(crate) const SOURCES_GATE: &str = "sources";

impl SnapshotOwner {
    /// Build and publish once from the current views.
    pub(crate) fn publish(&mut self, version: u64) {
        let views: Vec<ProviderView> = self
            .sources
            .iter_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .collect();
        let opts = BuildOptions {
            entrypoints: self.entrypoints.clone(),
            default_entrypoints: self.default_entrypoints.clone(),
            tls_entrypoints: self.tls_entrypoints.clone(),
            entrypoint_tls_options: self.entrypoint_tls_options.clone(),
            entrypoint_cert_resolvers: self.entrypoint_cert_resolvers.clone(),
            internal_services: self.internal_services.clone(),
            version,
            previous: self.current.load().middlewares.clone(),
            previous_tcp: self.current.load().tcp_middlewares.clone(),
            previous_transports: self.current.load().transports.clone(),
            previous_tls_options: self.current.load().tls_options.clone(),
            default_rule_syntax: self.default_rule_syntax,
        };
        let mut snap = build(&views, &opts);
        let mut sni = Vec::new();
        for c in &snap.certificates {
            match load_certified_key(Path::new(&c.cert_file), Path::new(&c.key_file)) {
                Ok(k) => sni.push(k),
                Err(e) => snap
                    .diagnostics
                    .push(Diagnostic::error("tls.certificates", e.to_string()).with_source("file")),
            }
        }
        if let Some(c) = &snap.default_certificate {
            match load_certified_key(Path::new(&c.cert_file), Path::new(&c.key_file)) {
                Ok(k) => self.certs.default.store(Arc::new(Some(k))),
                Err(e) => snap.diagnostics.push(
                    Diagnostic::error("tls.stores.default.defaultCertificate", e.to_string()).with_source("file"),
                ),
            }
        }
        self.certs.sni.store(Arc::new(sni));
        let enabled = snap
            .routers
            .iter()
            .filter(|r| r.status == berth_common::routing::Status::Enabled)
            .count();
        tracing::info!(
            version,
            routers = snap.routers.len(),
            enabled,
            services = snap.services.len(),
            diagnostics = snap.diagnostics.len(),
            "routing snapshot published"
        );
        let snap = Arc::new(snap);
        self.proxy.swap(snap.clone());
        self.current.store(snap);
        // Only now, with the snapshot in the proxy, may the replica say it routes them.
        let pending: Vec<&str> = views.iter().filter_map(|v| v.pending.as_deref()).collect();
        if pending.is_empty() {
            self.lifecycle.clear(SOURCES_GATE);
        } else {
            self.lifecycle.wait_for(SOURCES_GATE, pending.join("; "));
        }
    }

    /// Rebuild whenever any source changes; ends when every source is gone.
    pub(crate) async fn run(mut self) {
        let mut version = 1;
        loop {
            if self.sources.is_empty() {
                return;
            }
            let changed = {
                let futs = self.sources.iter_mut().map(|rx| Box::pin(rx.changed()));
                let (res, idx, _) = select_all(futs).await;
                (res, idx)
            };
            if changed.0.is_err() {
                self.sources.remove(changed.1);
                continue;
            }
            version += 1;
            self.publish(version);
        }
    }
}
