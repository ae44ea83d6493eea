//! Traefik's static configuration, so that a Traefik task definition runs with only the
//! image swapped: its three forms read as Traefik reads them (`source`), every option
//! known once with what Berth does with it (`options`), the result in Berth's terms
//! (`translate`), and the `traefik healthcheck` and `traefik version` commands that
//! existing ECS health checks call (`commands`).
//!
//! Traefik mode is on when any of the forms is present. Berth's own flags and `BERTH_*`
//! keep their meaning beside it and win where both say something.

mod commands;
mod options;
mod source;
mod translate;

pub use commands::run_command;
pub use source::{Sources, split_args};
pub(crate) use translate::{DEFAULT_ENTRYPOINT, Exposure, ListenAddr, Traefik, TraefikEntrypoint};

impl Sources {
    /// Traefik's static configuration from these sources, translated; `None` when
    /// none of the forms is present (Berth mode).
    pub(crate) fn load(&self) -> Result<Option<Traefik>, crate::config::ConfigError> {
        match self.resolve()? {
            Some(st) => Traefik::from_static(st).map(Some),
            None => Ok(None),
        }
    }
}

/// The dynamic configuration Traefik creates for entrypoint redirections: per
/// redirecting entrypoint, a router `<from>-to-<to>` on every host with the
/// configured priority, a `redirectScheme` middleware, and `noop@internal` as the
/// service (never reached). Dotted keys, as labels are, for the `internal` provider.
pub(crate) fn redirect_routes(eps: &[TraefikEntrypoint]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for ep in eps {
        let Some(rd) = &ep.redirect else { continue };
        let name = format!("{}-to-{}", ep.name, rd.to);
        let mw = format!("redirect-{name}");
        let r = |k: &str| format!("http.routers.{name}.{k}");
        out.push((r("rule"), "HostRegexp(`^.+$`)".to_string()));
        out.push((r("ruleSyntax"), "v3".to_string()));
        out.push((r("priority"), rd.priority.to_string()));
        out.push((r("entryPoints"), ep.name.clone()));
        out.push((r("middlewares"), mw.clone()));
        out.push((r("service"), "noop@internal".to_string()));
        let m = |k: &str| format!("http.middlewares.{mw}.redirectScheme.{k}");
        out.push((m("scheme"), rd.scheme.clone()));
        out.push((m("port"), rd.port.to_string()));
        out.push((m("permanent"), rd.permanent.to_string()));
    }
    out
}
