//! Configuration sources. Each owns its state and publishes its complete current
//! view on a `watch` channel; none edits another's.

pub(crate) mod ecs;
pub(crate) mod file;
pub(crate) mod registry;

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// How a provider is doing, for the admin API.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProviderStatus {
    pub name: String,
    #[serde(with = "unix_secs")]
    pub last_success: Option<SystemTime>,
    #[serde(with = "unix_secs")]
    pub last_error_at: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// Shared, updated by the provider, read by the admin API.
#[derive(Debug, Default)]
pub(crate) struct StatusCell(pub Mutex<ProviderStatus>);

impl StatusCell {
    pub(crate) fn new(name: &str) -> Self {
        StatusCell(Mutex::new(ProviderStatus {
            name: name.into(),
            ..Default::default()
        }))
    }
    pub(crate) fn get(&self) -> ProviderStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn ok(&self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.last_success = Some(SystemTime::now());
        s.last_error = None;
    }
    pub(crate) fn err(&self, e: String) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.last_error_at = Some(SystemTime::now());
        s.last_error = Some(e);
    }
}

mod unix_secs {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
