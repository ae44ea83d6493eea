//! The admin listener: the API in Traefik's shapes, health and readiness probes,
//! Prometheus metrics and the dashboard.

pub mod api;
pub mod dashboard;
pub mod metrics;
