//! Configuration diagnostics: what was not understood, where, and why.
//!
//! Bad input never stops the rest from loading; it becomes a diagnostic that is
//! logged and shown in the admin API.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in configuration input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Where the input came from: `file:/etc/berth/dynamic.yml`, `ecs:prod/whoami/…`.
    pub source: String,
    /// The key or path concerned (`traefik.http.routers.r.rule`), empty for the whole source.
    pub key: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error(key: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            source: String::new(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn warning(key: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(key, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}")?;
        if !self.source.is_empty() {
            write!(f, " in {}", self.source)?;
        }
        if !self.key.is_empty() {
            write!(f, " at `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}
