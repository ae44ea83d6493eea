//! Readiness and shutdown state, read by `/readyz`, `/ping` and the proxy.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Lifecycle {
    shutting_down: AtomicBool,
    configured: AtomicBool,
}

impl Lifecycle {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
    /// Every configured provider has delivered its first view.
    pub fn set_configured(&self) {
        self.configured.store(true, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.configured.load(Ordering::Relaxed) && !self.is_shutting_down()
    }
}
