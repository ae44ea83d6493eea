//! The immutable routing table and its lookups.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::{CertificateConfig, HealthCheckConfig, StickyCookie, Strategy};
use crate::diag::Diagnostic;
use crate::rules::{RequestView, Rule};

pub use super::prefix::{Candidates, RouteList};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Enabled,
    Disabled,
}

/// A router as served, with its problems; `rule` is `None` when it did not compile.
#[derive(Debug, Clone)]
pub struct RouterEntry {
    /// `name@provider`.
    pub name: String,
    pub provider: String,
    pub rule_text: String,
    pub rule: Option<Rule>,
    pub priority: i64,
    pub entry_points: Vec<String>,
    /// `name@provider` of the service.
    pub service: String,
    pub service_index: Option<usize>,
    pub middlewares: Vec<String>,
    /// The middlewares to run, in order, chains expanded.
    pub middleware_specs: Vec<std::sync::Arc<crate::middleware::Spec>>,
    pub tls: bool,
    /// The TLS options the router's connections must have been made with (qualified;
    /// [`crate::server_tls::DEFAULT_OPTIONS`] unless it names others), and those options
    /// when usable: a request that matches it on a connection made with other options
    /// (or with these before they changed) is answered 421.
    pub tls_options: String,
    pub tls_options_spec: Option<std::sync::Arc<crate::server_tls::TlsOptions>>,
    /// `tls.certResolver` (or its entrypoint's): who obtains its certificates.
    pub cert_resolver: Option<String>,
    /// The certificates to obtain, each its names (the first the main one).
    pub cert_domains: Vec<Vec<String>>,
    pub status: Status,
    pub errors: Vec<String>,
}

/// One upstream server of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub url: String,
    pub uri: http::Uri,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub name: String,
    pub provider: String,
    pub servers: Vec<Server>,
    pub strategy: Strategy,
    pub pass_host_header: bool,
    pub health_check: Option<HealthCheckConfig>,
    /// `sticky.cookie`, when clients go back to the server that answered them (for a
    /// weighted service: to the child service).
    pub sticky: Option<StickyCookie>,
    /// A `weighted` service: no servers of its own, its children instead.
    pub weighted: Option<Weighted>,
    /// `serversTransport`, qualified, and the transport it names (resolved).
    pub servers_transport: Option<String>,
    pub transport: Option<std::sync::Arc<crate::transport::Transport>>,
    pub used_by: Vec<String>,
    pub status: Status,
    pub errors: Vec<String>,
}

/// A `serversTransports` entry: as configured, and resolved when usable.
#[derive(Debug, Clone)]
pub struct TransportEntry {
    pub name: String,
    pub provider: String,
    pub config: crate::config::ServersTransportConfig,
    pub spec: Option<std::sync::Arc<crate::transport::Transport>>,
    pub used_by: Vec<String>,
    pub status: Status,
    pub errors: Vec<String>,
}

/// A `tls.options` entry: as configured, and resolved when usable.
#[derive(Debug, Clone)]
pub struct TlsOptionsEntry {
    pub name: String,
    pub provider: String,
    pub config: crate::config::TlsOptionsConfig,
    /// The files the options read, as they were ([`crate::server_tls::TlsOptions::files_stamp`]).
    pub files: Vec<(String, u64, Option<std::time::SystemTime>)>,
    pub spec: Option<std::sync::Arc<crate::server_tls::TlsOptions>>,
    pub used_by: Vec<String>,
    pub status: Status,
    pub errors: Vec<String>,
}

/// What a TLS connection gets for the server name it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniChoice {
    /// The options of this name (in `Snapshot::tls_options`).
    Options(String),
    /// The host's routers name options that are broken: the handshake is refused (as
    /// Traefik's closing route for them).
    Refuse,
}

/// A weighted (or failover) service's children, resolved.
#[derive(Debug, Clone)]
pub struct Weighted {
    /// Qualified child names, their weights, and their indexes in `Snapshot::services`
    /// (parallel; a child that does not exist disables the service).
    pub names: Vec<String>,
    pub weights: Vec<u32>,
    pub children: Vec<usize>,
    /// `healthCheck: {}`: a child with no healthy server is skipped.
    pub health_check: bool,
    /// A `failover` service: the first child while it is up, else the second.
    pub failover: bool,
    /// A failover's `errors`: these answers from the first child go to the second.
    pub failover_errors: Option<std::sync::Arc<crate::config::FailoverErrors>>,
    /// A `mirroring` service: the first child serves, the others get copies.
    pub mirroring: Option<Mirroring>,
}

/// A mirroring service's settings; its mirrors are `Weighted::children[1..]`.
#[derive(Debug, Clone)]
pub struct Mirroring {
    /// Parallel to the mirrors: the share of requests each is sent, 0 to 100.
    pub percents: Vec<u32>,
    pub mirror_body: bool,
    /// The largest body copied to the mirrors.
    pub max_body: u64,
}

#[derive(Debug, Clone)]
pub struct MiddlewareEntry {
    pub name: String,
    pub provider: String,
    pub kind: String,
    /// The options as configured, and parsed when valid.
    pub options: crate::config::Node,
    pub spec: Option<std::sync::Arc<crate::middleware::Spec>>,
    pub used_by: Vec<String>,
    pub status: Status,
    pub errors: Vec<String>,
}

/// Routers of one entrypoint for one connection kind (plain or TLS), indexed by host.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Routers whose rule pins the host, by canonical host; each list in priority order.
    pub by_host: HashMap<String, RouteList>,
    /// Routers that may match any host, in priority order.
    pub any_host: RouteList,
}

/// Everything the data path and the admin API need, immutable once built.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub version: u64,
    pub routers: Vec<RouterEntry>,
    /// TCP routers, highest priority first.
    pub tcp_routers: Vec<TcpRouterEntry>,
    pub tcp_services: Vec<TcpServiceEntry>,
    pub tcp_middlewares: Vec<TcpMiddlewareEntry>,
    pub services: Vec<ServiceEntry>,
    pub middlewares: Vec<MiddlewareEntry>,
    /// `http.serversTransports`.
    pub transports: Vec<TransportEntry>,
    /// Key: (entrypoint, tls).
    pub tables: HashMap<(String, bool), RouteTable>,
    /// `tls.options`, always with [`crate::server_tls::DEFAULT_OPTIONS`] among them.
    pub tls_options: Vec<TlsOptionsEntry>,
    /// Per entrypoint, the options chosen by a server name (lowercase) its TLS routers'
    /// rules pin; a name not here gets the default options.
    pub sni_options: HashMap<String, HashMap<String, SniChoice>>,
    pub certificates: Vec<CertificateConfig>,
    pub default_certificate: Option<CertificateConfig>,
    pub diagnostics: Vec<Diagnostic>,
}

/// A TCP router as built: its compiled rule and what it does with a match.
#[derive(Debug, Clone)]
pub struct TcpRouterEntry {
    pub name: String,
    pub provider: String,
    pub rule_text: String,
    pub rule: Option<crate::rules::tcp::TcpRule>,
    pub priority: i64,
    pub entry_points: Vec<String>,
    pub service: String,
    pub service_index: Option<usize>,
    /// `None`: plain TCP; `Some(false)`: the gateway terminates TLS; `Some(true)`: passthrough.
    pub tls_passthrough: Option<bool>,
    /// The `tls.options` a terminating router's handshakes are made with.
    pub tls_options_spec: Option<std::sync::Arc<crate::server_tls::TlsOptions>>,
    /// A terminating router whose options are missing or broken: not served, but its
    /// connections are still matched, and closed (Traefik's closing route), so they
    /// never reach another router without the options it asked for.
    pub refuse_tls: bool,
    /// As written (qualified), and ready to run, in order.
    pub middlewares: Vec<String>,
    pub middleware_specs: Vec<std::sync::Arc<crate::middleware::tcp::TcpSpec>>,
    pub status: Status,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TcpMiddlewareEntry {
    pub name: String,
    pub provider: String,
    pub kind: String,
    pub options: crate::config::Node,
    pub spec: Option<std::sync::Arc<crate::middleware::tcp::TcpSpec>>,
    pub used_by: Vec<String>,
    pub status: Status,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TcpServiceEntry {
    pub name: String,
    pub provider: String,
    /// `host:port`.
    pub servers: Vec<String>,
    pub used_by: Vec<String>,
    pub status: Status,
    pub errors: Vec<String>,
}

impl Snapshot {
    /// The TCP routers enabled on `entrypoint`, highest priority first.
    pub fn tcp_routers_on<'a>(&'a self, entrypoint: &'a str) -> impl Iterator<Item = &'a TcpRouterEntry> + 'a {
        self.tcp_routers.iter().filter(move |r| {
            (r.status == Status::Enabled || r.refuse_tls) && r.entry_points.iter().any(|e| e == entrypoint)
        })
    }

    /// The highest-priority enabled router matching the request, on this entrypoint
    /// for this kind of connection.
    pub fn route(&self, entrypoint: &str, tls: bool, req: &RequestView<'_>) -> Option<&RouterEntry> {
        self.route_index(entrypoint, tls, req).map(|i| &self.routers[i])
    }

    /// Like [`Snapshot::route`], giving the router's index.
    pub fn route_index(&self, entrypoint: &str, tls: bool, req: &RequestView<'_>) -> Option<usize> {
        let table = self.table(entrypoint, tls)?;
        let empty = RouteList::default();
        let mut pinned = table
            .by_host
            .get(crate::rules::matcher::index_host(req.host))
            .unwrap_or(&empty)
            .candidates(req.path)
            .peekable();
        let mut any = table.any_host.candidates(req.path).peekable();
        // Merge the two priority-ordered lists lazily; first match wins.
        loop {
            let take_pinned = match (pinned.peek(), any.peek()) {
                (Some(&a), Some(&b)) => self.before(a, b),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            let idx = if take_pinned { pinned.next() } else { any.next() }?;
            let router = &self.routers[idx as usize];
            if router.rule.as_ref().is_some_and(|r| r.matches(req)) {
                return Some(idx as usize);
            }
        }
    }

    /// The TLS options of a connection to `entrypoint` that asks for `server_name`:
    /// `None` when the handshake must be refused.
    pub fn tls_options_for(&self, entrypoint: &str, server_name: Option<&str>) -> Option<&TlsOptionsEntry> {
        let choice = server_name.and_then(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            self.sni_options.get(entrypoint)?.get(&n)
        });
        let name = match choice {
            Some(SniChoice::Refuse) => return None,
            Some(SniChoice::Options(name)) => name.as_str(),
            None => crate::server_tls::DEFAULT_OPTIONS,
        };
        self.tls_options.iter().find(|o| o.name == name && o.spec.is_some())
    }

    fn table(&self, entrypoint: &str, tls: bool) -> Option<&RouteTable> {
        self.tables
            .iter()
            .find(|((ep, t), _)| *t == tls && ep == entrypoint)
            .map(|(_, table)| table)
    }

    /// Router order: priority descending, then name.
    pub fn before(&self, a: u32, b: u32) -> bool {
        let (ra, rb) = (&self.routers[a as usize], &self.routers[b as usize]);
        (std::cmp::Reverse(ra.priority), &ra.name) < (std::cmp::Reverse(rb.priority), &rb.name)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.iter().find(|s| s.name == name)
    }
}
