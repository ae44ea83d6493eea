//! The typed dynamic configuration: what every provider contributes (routers, services,
//! middlewares, TLS, TCP), as plain data the snapshot builder reads.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::tree::Node;

/// Everything one provider contributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DynamicConfig {
    pub http: HttpConfig,
    pub tcp: TcpConfig,
    pub tls: TlsConfig,
}

/// `tcp`: routers matching connections (by TLS server name or client address) and
/// services of `address` servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TcpConfig {
    pub routers: BTreeMap<String, TcpRouterConfig>,
    pub services: BTreeMap<String, TcpServiceConfig>,
    /// `inFlightConn`, `ipAllowList` (`ipWhiteList`).
    pub middlewares: BTreeMap<String, MiddlewareConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouterConfig {
    pub rule: Option<String>,
    pub entry_points: Vec<String>,
    pub service: Option<String>,
    pub priority: Option<i64>,
    /// `tls`: the gateway terminates TLS (or, with `passthrough`, forwards it untouched).
    pub tls: Option<TcpTls>,
    /// The middlewares the router names: none is implemented for TCP yet, so a router
    /// naming any is not served (an `ipAllowList` in front of a database must never be
    /// skipped).
    pub middlewares: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcpTls {
    pub passthrough: bool,
    /// `tls.options`: a router naming options is not served until TCP routers apply them.
    pub options: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TcpServiceConfig {
    /// `loadBalancer.servers[].address` (`host:port`).
    pub servers: Vec<String>,
    /// Labels only: `loadBalancer.server.port`, applied to the container's own address.
    pub server_port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HttpConfig {
    pub routers: BTreeMap<String, RouterConfig>,
    pub services: BTreeMap<String, ServiceConfig>,
    pub middlewares: BTreeMap<String, MiddlewareConfig>,
    /// `serversTransports` (the file provider only, as in Traefik).
    pub servers_transports: BTreeMap<String, ServersTransportConfig>,
}

/// `http.serversTransports.<name>`: how the gateway talks to the servers of the services
/// that name it (`loadBalancer.serversTransport`), as Traefik spells it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServersTransportConfig {
    /// The name sent in SNI and checked against the server's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    /// Each a file or PEM text; none: the system's roots and `--upstream-ca`.
    #[serde(rename = "rootCAs", skip_serializing_if = "Vec::is_empty")]
    pub root_cas: Vec<String>,
    /// Client certificates presented to the servers (each a file or PEM text).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateConfig>,
    /// Unset or 0: 2 (Go's default, as Traefik); negative: no connection is reused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_idle_conns_per_host: Option<i64>,
    pub forwarding_timeouts: ForwardingTimeouts,
    pub disable_http2: bool,
    /// The URI SAN the server's certificate must carry (then its name is not checked).
    #[serde(rename = "peerCertURI", skip_serializing_if = "Option::is_none")]
    pub peer_cert_uri: Option<String>,
    /// `VersionTLS12` or `VersionTLS13` (rustls speaks nothing older).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
    /// Go's names of the TLS 1.2 suites offered (TLS 1.3's are always offered, as in Go).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Vec<String>>,
    /// Options Berth does not implement (`peerCertSANs`, `spiffe`, ...): the transport is
    /// broken and the services naming it are not served.
    #[serde(skip)]
    pub refused: Vec<String>,
}

/// A transport's `forwardingTimeouts`, with Traefik's defaults for a named transport.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingTimeouts {
    /// Zero: no bound of Berth's own.
    pub dial_timeout: Duration,
    /// Zero: none.
    pub response_header_timeout: Duration,
    pub idle_conn_timeout: Duration,
    /// HTTP/2: a ping after this long without a frame (zero: none).
    pub read_idle_timeout: Duration,
    /// HTTP/2: the connection is closed when the ping is not answered in this long.
    pub ping_timeout: Duration,
}

impl Default for ForwardingTimeouts {
    fn default() -> ForwardingTimeouts {
        ForwardingTimeouts {
            dial_timeout: Duration::from_secs(30),
            response_header_timeout: Duration::ZERO,
            idle_conn_timeout: Duration::from_secs(90),
            read_idle_timeout: Duration::ZERO,
            ping_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterConfig {
    pub rule: Option<String>,
    /// `ruleSyntax`: `v2` for Traefik v2's matchers, `v3`; unset, empty or `default` for
    /// the gateway's default ([`crate::rules::Syntax`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_syntax: Option<String>,
    pub entry_points: Vec<String>,
    pub priority: Option<i64>,
    pub service: Option<String>,
    pub middlewares: Vec<String>,
    /// `Some` when the router serves TLS connections only.
    pub tls: Option<RouterTls>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterTls {
    pub options: Option<String>,
    pub cert_resolver: Option<String>,
    /// `tls.domains`: the certificates the resolver obtains for the router; empty: one
    /// for the rule's `Host` names.
    pub domains: Vec<TlsDomain>,
}

/// One certificate a resolver obtains: `main` and the other names (`sans`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsDomain {
    pub main: String,
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    pub load_balancer: LoadBalancerConfig,
    /// A `weighted` service instead of a load balancer (the file provider only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weighted: Option<WeightedConfig>,
    /// A `failover` service instead (the file provider only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverConfig>,
    /// A `mirroring` service instead (the file provider only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirroring: Option<MirroringConfig>,
}

/// Traefik's `mirroring` service: requests go to `service`, and copies to each mirror
/// for its `percent` of them; the mirrors' answers are dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirroringConfig {
    pub service: String,
    pub mirrors: Vec<MirrorConfig>,
    /// Copy the request body to the mirrors (default true).
    pub mirror_body: bool,
    /// The largest body copied; a larger one is not mirrored (`None`: Berth's bound).
    pub max_body_size: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub health_check: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorConfig {
    pub name: String,
    pub percent: u32,
}

/// Traefik's `failover` service: `service` while it has a healthy server, else
/// `fallback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverConfig {
    pub service: String,
    pub fallback: String,
    /// `healthCheck: {}`: its status is told to the services above it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub health_check: bool,
    /// `errors` (Traefik 3.6): answers from `service` with these statuses are replaced by
    /// `fallback`'s to the same request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<FailoverErrors>,
}

/// `failover.errors`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverErrors {
    /// Inclusive status ranges (`500-599`, `503`).
    pub status: Vec<(u16, u16)>,
    /// The largest request body kept to send again (Traefik's -1, no limit: Berth's
    /// bound of 16 MiB).
    pub max_request_body_bytes: u64,
}

/// Traefik's `weighted` service: other services, each given a share of the requests by
/// its weight; nesting allowed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedConfig {
    pub services: Vec<WeightedService>,
    /// `sticky.cookie`: a client keeps going to the child service that answered it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyCookie>,
    /// `healthCheck: {}`: a child with no healthy server is skipped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub health_check: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedService {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Power of two choices over peak-EWMA latency (Berth's default).
    #[default]
    P2c,
    /// Smooth weighted round robin (Traefik's default).
    Wrr,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerConfig {
    pub servers: Vec<ServerConfig>,
    /// Labels only: the port/scheme/weight applied to the container's own address.
    pub server: Option<ServerTemplate>,
    pub strategy: Option<Strategy>,
    pub pass_host_header: Option<bool>,
    pub health_check: Option<HealthCheckConfig>,
    /// `sticky.cookie`: a client that has the cookie goes back to the server it names.
    pub sticky: Option<StickyCookie>,
    /// `serversTransport`: the name of the transport to the servers.
    pub servers_transport: Option<String>,
}

/// `loadBalancer.sticky.cookie`, as Traefik spells it (also sent to sidecars in a mesh
/// service's policy, hence `Deserialize`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StickyCookie {
    /// Unset: a name derived from the service's (Traefik's `_` and 6 hex digits).
    pub name: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: Option<SameSite>,
    /// Seconds; 0: a session cookie (no `Max-Age`); negative: `Max-Age=0`.
    pub max_age: i64,
    /// Unset: `/`.
    pub path: Option<String>,
    pub domain: Option<String>,
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    None,
    Lax,
    Strict,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerConfig {
    pub url: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerTemplate {
    pub port: Option<u16>,
    pub scheme: Option<String>,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckConfig {
    pub path: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub mode: Option<String>,
    pub status: Option<u16>,
    pub headers: BTreeMap<String, String>,
}

/// A named middleware: its Traefik type and its options, decoded by the middleware layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MiddlewareConfig {
    /// Canonical Traefik type name (`stripPrefix`, `basicAuth`, ...), or as written when unknown.
    pub kind: String,
    pub known: bool,
    /// Why this provider may not configure the middleware as written (a label naming a
    /// file on the gateway): the middleware is broken, and its routers are not served.
    #[serde(skip)]
    pub refused: Option<String>,
    /// From labels (whoever can register a task definition wrote it): what it calls out
    /// to may not be the gateway's own or a link-local address, checked when it connects.
    #[serde(skip)]
    pub from_labels: bool,
    #[serde(skip)]
    pub options: Node,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    pub certificates: Vec<CertificateConfig>,
    pub default_certificate: Option<CertificateConfig>,
    /// `tls.options.<name>` (the file provider only, as in Traefik): chosen per
    /// connection by the server name the client asks for.
    pub options: BTreeMap<String, TlsOptionsConfig>,
}

/// `tls.options.<name>`, as Traefik spells it: how the gateway's TLS handshake goes for
/// the hosts of the routers that name these options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptionsConfig {
    /// `VersionTLS12` or `VersionTLS13` (older minimums are met: rustls speaks no older).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
    /// Go's names for the TLS 1.2 suites; as in Go, TLS 1.3's suites are not chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Vec<String>>,
    /// Go's names (`CurveP256`, `X25519`, ...) or the IANA ones (`secp256r1`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve_preferences: Option<Vec<String>>,
    pub client_auth: ClientAuthConfig,
    /// No certificate matches the server name (or none is sent): the handshake fails
    /// instead of getting the default certificate.
    pub sni_strict: bool,
    /// Unset: `h2`, `http/1.1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn_protocols: Option<Vec<String>>,
    pub disable_session_tickets: bool,
    /// Options Berth does not know: the options are broken, and the routers naming them
    /// are not served.
    #[serde(skip)]
    pub refused: Vec<String>,
}

/// `tls.options.<name>.clientAuth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthConfig {
    /// Each a file or PEM text: the roots a client certificate must chain to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ca_files: Vec<String>,
    /// `NoClientCert`, `RequestClientCert`, `RequireAnyClientCert`,
    /// `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`; unset: the last when
    /// `caFiles` are given, else the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateConfig {
    pub cert_file: String,
    pub key_file: String,
}
