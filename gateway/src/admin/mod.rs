//! The admin listener: the API in Traefik's shapes, health and readiness probes,
//! the Prometheus text of [`crate::metrics`] and the dashboard.

pub(crate) mod api;
pub(crate) mod dashboard;
