//! The file provider: Traefik's dynamic configuration (YAML or TOML) from one file, or
//! from every `.yml`, `.yaml` and `.toml` file under a directory (Traefik's
//! `providers.file.directory`, subdirectories included, merged in name order: a name
//! defined twice keeps its first definition, with a warning, as in Traefik), watched by
//! polling contents (robust to editors that replace files and to bind mounts, where
//! inotify misses changes).
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

/// The most files a directory may hold for the provider (bounded work per poll).
const MAX_FILES: usize = 1024;

/// The configuration files under `dir`, in name order, subdirectories included.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if depth < 8 {
                files_under(&p, out, depth + 1)?;
            }
        } else if p
            .extension()
            .is_some_and(|e| ["yml", "yaml", "toml"].iter().any(|x| e.eq_ignore_ascii_case(x)))
        {
            out.push(p);
        }
        if out.len() > MAX_FILES {
            return Err(format!("{}: more than {MAX_FILES} configuration files", dir.display()));
        }
    }
    Ok(())
}

/// What the provider reads: the file, or a directory's files.
fn sources(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_dir() {
        let mut out = Vec::new();
        files_under(path, &mut out, 0)?;
        Ok(out)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// The bytes a change is detected by: every file's name and content.
fn snapshot(path: &Path) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for f in sources(path).ok()? {
        out.extend_from_slice(f.as_os_str().as_encoded_bytes());
        out.push(0);
        out.extend(std::fs::read(&f).ok()?);
        out.push(0);
    }
    Some(out)
}

/// Read and decode the file (or the directory's files) into a provider view.
pub(crate) fn load(path: &Path) -> Result<ProviderView, String> {
    if !path.is_dir() {
        return load_file(path);
    }
    let mut merged = ProviderView {
        provider: PROVIDER.into(),
        ..Default::default()
    };
    for f in sources(path)? {
        let view = load_file(&f)?;
        let source = format!("file:{}", f.display());
        merged.diagnostics.extend(view.diagnostics);
        let (into, from) = (&mut merged.config, view.config);
        let mut first = |kind: &str, name: &str| {
            merged.diagnostics.push(
                Diagnostic::warning(
                    format!("{kind}.{name}"),
                    "already defined by an earlier file; this definition is skipped",
                )
                .with_source(source.clone()),
            );
        };
        macro_rules! keep_first {
            ($($field:ident).+, $kind:literal) => {
                for (name, v) in from.$($field).+ {
                    if into.$($field).+.contains_key(&name) {
                        first($kind, &name);
                    } else {
                        into.$($field).+.insert(name, v);
                    }
                }
            };
        }
        keep_first!(http.routers, "http.routers");
        keep_first!(http.services, "http.services");
        keep_first!(http.middlewares, "http.middlewares");
        keep_first!(tcp.routers, "tcp.routers");
        keep_first!(tcp.services, "tcp.services");
        into.tls.certificates.extend(from.tls.certificates);
        if into.tls.default_certificate.is_none() {
            into.tls.default_certificate = from.tls.default_certificate;
        }
    }
    Ok(merged)
}

fn load_file(path: &Path) -> Result<ProviderView, String> {
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
        let mut last_content = snapshot(&self.path);
        let mut last_good = tx.borrow().clone();
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let content = snapshot(&self.path);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_merges_its_files_first_definition_first() {
        let dir = std::env::temp_dir().join(format!("berth-file-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("a.yml"),
            "http:\n  routers:\n    r1:\n      rule: Host(`a`)\n      service: s\n  services:\n    s:\n      \
             loadBalancer:\n        servers:\n          - url: http://127.0.0.1:1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("sub/b.toml"),
            "[http.routers.r1]\nrule = \"Host(`b`)\"\nservice = \"s\"\n[http.routers.r2]\nrule = \"Host(`c`)\"\nservice = \"s\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not configuration").unwrap();
        let view = load(&dir).unwrap();
        let routers = &view.config.http.routers;
        assert_eq!(routers.keys().collect::<Vec<_>>(), ["r1", "r2"]);
        assert_eq!(
            routers["r1"].rule.as_deref(),
            Some("Host(`a`)"),
            "the first file's definition"
        );
        assert!(
            view.diagnostics
                .iter()
                .any(|d| d.key == "http.routers.r1" && d.message.contains("earlier file")),
            "{:?}",
            view.diagnostics
        );
        // A change in any file is seen; a file that is not configuration is not read.
        let before = snapshot(&dir);
        std::fs::write(dir.join("notes.txt"), "changed").unwrap();
        assert_eq!(snapshot(&dir), before);
        std::fs::write(dir.join("sub/b.toml"), "").unwrap();
        assert_ne!(snapshot(&dir), before);
        // A broken file fails the whole load (the previous view is kept by the caller).
        std::fs::write(dir.join("sub/b.toml"), "[http.routers").unwrap();
        assert!(load(&dir).is_err());
    }
}
