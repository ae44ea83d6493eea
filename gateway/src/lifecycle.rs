//! Readiness and shutdown state, read by `/readyz`, `/ping` and the proxy.
//!
//! Ready means every configured source has delivered a first complete view and the
//! snapshot built from them is the one the proxy routes with (each ECS cluster one whole
//! round, the file provider parsed), and with the mesh, a grace period for sidecars to
//! register. A load balancer that trusts `/readyz` then never sends traffic to a replica
//! that would answer 404 for what the others route. The wait is bounded
//! (`--ready-timeout`): past it the replica is ready with what it has, and says which
//! source it gave up on. While not ready, `/readyz` says what it waits for.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Lifecycle {
    shutting_down: AtomicBool,
    started: Instant,
    /// How long readiness waits for its sources at most; `None`: for ever.
    ready_timeout: Option<Duration>,
    /// What readiness still waits for, by gate.
    waits: Mutex<BTreeMap<&'static str, String>>,
    gave_up: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new(None)
    }
}

impl Lifecycle {
    pub fn new(ready_timeout: Option<Duration>) -> Self {
        Lifecycle {
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
            ready_timeout,
            waits: Mutex::default(),
            gave_up: AtomicBool::new(false),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Readiness waits for `gate` until [`Lifecycle::clear`]; `why` is shown meanwhile.
    pub fn wait_for(&self, gate: &'static str, why: impl Into<String>) {
        self.waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gate, why.into());
    }

    pub fn clear(&self, gate: &'static str) {
        self.waits.lock().unwrap_or_else(|e| e.into_inner()).remove(gate);
    }

    /// Why the replica is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if self.is_shutting_down() {
            return Some("shutting down".into());
        }
        let waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        if waits.is_empty() {
            return None;
        }
        let reasons: Vec<&str> = waits.values().map(String::as_str).collect();
        match self.ready_timeout {
            Some(t) if self.started.elapsed() >= t => {
                if !self.gave_up.swap(true, Ordering::Relaxed) {
                    tracing::warn!(after = ?t, waiting = ?reasons,
                        "ready without every source's first view (--ready-timeout)");
                }
                None
            }
            _ => Some(reasons.join("; ")),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_every_gate_is_clear_or_the_wait_is_over() {
        let l = Lifecycle::new(Some(Duration::from_millis(50)));
        assert!(l.is_ready());
        l.wait_for("ecs", "ECS cluster prod has not finished a round");
        assert_eq!(
            l.not_ready().as_deref(),
            Some("ECS cluster prod has not finished a round")
        );
        l.clear("ecs");
        assert!(l.is_ready());
        l.wait_for("mesh", "sidecars are registering");
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.is_ready(), "bounded");
        l.begin_shutdown();
        assert_eq!(l.not_ready().as_deref(), Some("shutting down"));
    }
}
