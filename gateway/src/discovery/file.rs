//! The file provider: Traefik's dynamic configuration (YAML or TOML) from one file,
//! watched by polling its contents (robust to editors that replace the file and to
//! bind mounts, where inotify misses changes).
//!
//! A broken edit keeps the previous view serving and reports the error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_common::config::parse_file;
use berth_common::diag::Diagnostic;
use berth_common::routing::ProviderView;
use tokio::sync::watch;

use super::StatusCell;
use crate::metrics::Metrics;

pub(crate) const PROVIDER: &str = "file";

/// Read and decode the file into a provider view.
pub(crate) fn load(path: &Path) -> Result<ProviderView, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let mut diagnostics = Vec::new();
    let config = parse_file(&text, is_toml, &mut diagnostics).map_err(|e| format!("{}: {e}", path.display()))?;
    let source = format!("file:{}", path.display());
    Ok(ProviderView {
        provider: PROVIDER.into(),
        config,
        diagnostics: diagnostics.into_iter().map(|d| d.with_source(source.clone())).collect(),
        pending: None,
    })
}

/// Watches one file and publishes its view whenever its content changes.
pub(crate) struct FileProvider {
    path: PathBuf,
    interval: Duration,
    status: Arc<StatusCell>,
    metrics: Arc<Metrics>,
}

impl FileProvider {
    pub(crate) fn new(path: PathBuf, status: Arc<StatusCell>, metrics: Arc<Metrics>) -> Self {
        FileProvider {
            path,
            interval: Duration::from_millis(500),
            status,
            metrics,
        }
    }

    /// The first load: a broken file at start still starts the gateway (with nothing
    /// from this provider) and reports why.
    pub(crate) fn initial(&self) -> ProviderView {
        let (view, _) = self.reload(None);
        view.unwrap_or_else(|| ProviderView {
            provider: PROVIDER.into(),
            ..Default::default()
        })
    }

    fn reload(&self, last_good: Option<&ProviderView>) -> (Option<ProviderView>, Option<String>) {
        match load(&self.path) {
            Ok(view) => {
                self.status.ok();
                self.metrics
                    .config_reloads_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for d in &view.diagnostics {
                    tracing::warn!(diagnostic = %d, "configuration problem");
                }
                (Some(view), None)
            }
            Err(e) => {
                tracing::error!(error = %e, "file provider: keeping the previous configuration");
                self.status.err(e.clone());
                self.metrics
                    .config_reloads_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut kept = last_good.cloned().unwrap_or_else(|| ProviderView {
                    provider: PROVIDER.into(),
                    ..Default::default()
                });
                kept.diagnostics.push(
                    Diagnostic::error("", format!("{e}; the previous configuration is kept"))
                        .with_source(format!("file:{}", self.path.display())),
                );
                (Some(kept), Some(e))
            }
        }
    }

    /// Poll for changes until the sender's receivers are gone.
    pub(crate) async fn run(self, tx: watch::Sender<ProviderView>) {
        let mut last_content = std::fs::read(&self.path).ok();
        let mut last_good = tx.borrow().clone();
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let content = std::fs::read(&self.path).ok();
            if content == last_content {
                continue;
            }
            last_content = content;
            let (view, err) = self.reload(Some(&last_good));
            if let Some(view) = view {
                if err.is_none() {
                    last_good = view.clone();
                }
                tx.send_replace(view);
            }
        }
    }
}
