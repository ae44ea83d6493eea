//! The decoder: a [`Node`] tree (a YAML or TOML file, or docker labels split on dots) to
//! the typed model, matching keys case-insensitively as Traefik does and reporting every
//! key it does not understand, with what it disables.

use std::collections::BTreeMap;
use std::time::Duration;

use super::model::*;
use crate::diag::Diagnostic;
use crate::duration::parse_duration;
use crate::tree::Node;

/// Where the tree came from: labels use `server` templates and comma-separated lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    File,
    Labels,
}

/// Why labels may not list servers: a label is written by whoever registers a task
/// definition, and a server URL could send the gateway anywhere it can reach (its own
/// admin port, the instance's credentials, another team's tasks over the mesh).
/// The most services one `weighted` service may name.
const MAX_WEIGHTED: usize = 256;
/// The most `tls.domains` of one router (each one certificate to obtain).
const MAX_TLS_DOMAINS: usize = 16;

const LABEL_SERVERS: &str = "labels choose only the port and scheme of the task's own address (loadbalancer.server.port, .scheme); server lists and URLs are refused";

/// Decode a whole dynamic configuration (`http`, `tls`, ...). `prefix` is prepended to
/// every diagnostic key (`traefik.` for labels).
pub fn decode(root: &Node, mode: Mode, prefix: &str, diags: &mut Vec<Diagnostic>) -> DynamicConfig {
    let mut d = Decoder { mode, diags };
    let mut cfg = DynamicConfig::default();
    for (key, node) in root.entries() {
        let path = format!("{prefix}{key}");
        match key.to_ascii_lowercase().as_str() {
            "http" => cfg.http = d.http(node, &path),
            // As in Traefik, certificates and TLS options come from files, never labels.
            "tls" if mode == Mode::Labels => d.diags.push(Diagnostic::error(
                path,
                "tls certificates and options are read from the file provider only; ignored",
            )),
            "tls" => cfg.tls = d.tls(node, &path),
            "tcp" => cfg.tcp = d.tcp(node, &path),
            "udp" => d.diags.push(Diagnostic::warning(
                path,
                format!("{key} routers are not supported yet; this section is ignored"),
            )),
            _ => d.unknown(&path),
        }
    }
    cfg
}

/// `sticky` (`true`, or `cookie.*`) as a label gives it, for the mesh's own labels
/// (`berth.mesh.sticky.cookie.*`): `Err` when a value is bad (the diagnostics say which).
pub(crate) fn sticky_from_labels(
    node: &Node,
    path: &str,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<StickyCookie>, ()> {
    Decoder {
        mode: Mode::Labels,
        diags,
    }
    .sticky(node, path)
}

struct Decoder<'a> {
    mode: Mode,
    diags: &'a mut Vec<Diagnostic>,
}

impl Decoder<'_> {
    fn unknown(&mut self, path: &str) {
        self.diags
            .push(Diagnostic::error(path, "unknown option; it is ignored"));
    }

    fn bad(&mut self, path: &str, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(path, msg));
    }

    /// How many errors have been reported so far.
    fn errors(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> &'n [(String, Node)] {
        match node {
            Node::Map(m) => m,
            Node::Leaf(s) if s.is_empty() => &[],
            _ => {
                self.bad(path, "expected a map of options");
                &[]
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match node {
            Node::Leaf(s) => Some(s.clone()),
            _ => {
                self.bad(path, "expected a single value");
                None
            }
        }
    }

    fn list(&mut self, node: &Node, path: &str) -> Vec<String> {
        match node {
            Node::Leaf(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Node::List(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, n)| self.string(n, &format!("{path}[{i}]")))
                .collect(),
            Node::Map(_) => {
                self.bad(path, "expected a list");
                Vec::new()
            }
        }
    }

    fn parsed<T: std::str::FromStr>(&mut self, node: &Node, path: &str, what: &str) -> Option<T> {
        let s = self.string(node, path)?;
        match s.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.bad(path, format!("`{s}` is not {what}"));
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        let s = self.string(node, path)?;
        let b = super::parse_bool(&s);
        if b.is_none() {
            self.bad(path, format!("`{s}` is not true or false"));
        }
        b
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let s = self.string(node, path)?;
        parse_duration(&s).map_err(|e| self.bad(path, e)).ok()
    }

    /// A section of named entries (`routers`, `services`, ...), each decoded by `one`;
    /// an entry it refuses (`None`) is left out.
    fn named<T>(
        &mut self,
        node: &Node,
        path: &str,
        mut one: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        for (name, n) in self.map(node, path) {
            if let Some(v) = one(self, n, &format!("{path}.{name}")) {
                out.insert(name.clone(), v);
            }
        }
        out
    }

    /// A list's items with their paths. Labels and TOML tables may spell a list as a map
    /// keyed by index.
    fn items<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Vec<(String, &'n Node)> {
        match node {
            Node::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{path}[{i}]"), n))
                .collect(),
            Node::Map(m) => {
                let mut items: Vec<(String, &Node)> = m.iter().map(|(k, n)| (format!("{path}.{k}"), n)).collect();
                // Indexes in labels sort as text (`10` before `2`): put them in number order.
                if m.iter().all(|(k, _)| k.parse::<usize>().is_ok()) {
                    let mut keyed: Vec<(usize, (String, &Node))> = m
                        .iter()
                        .map(|(k, _)| k.parse::<usize>().unwrap_or(usize::MAX))
                        .zip(items)
                        .collect();
                    keyed.sort_by_key(|(i, _)| *i);
                    items = keyed.into_iter().map(|(_, item)| item).collect();
                }
                items
            }
            Node::Leaf(_) => {
                self.bad(path, format!("expected a list of {what}"));
                Vec::new()
            }
        }
    }

    /// A router's `tls`: `true` (or empty) turns it on with no options, `false` off, a map
    /// turns it on with those options. `None` when off or not understood.
    fn tls_switch<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [(String, Node)]> {
        match node {
            Node::Leaf(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "" => Some(&[]),
                "false" => None,
                other => {
                    self.bad(path, format!("`{other}` is not true or false"));
                    None
                }
            },
            Node::Map(m) => Some(m),
            Node::List(_) => {
                self.bad(path, "expected true, false or a map of TLS options");
                None
            }
        }
    }

    /// The keys every router has, HTTP or TCP (`key` in lower case): true when `key` was
    /// one of them.
    fn router_key(&mut self, r: RouterKeys<'_>, key: &str, child: &Node, p: &str) -> bool {
        match key {
            "rule" => *r.rule = self.string(child, p),
            "entrypoints" => *r.entry_points = self.list(child, p),
            "priority" => *r.priority = self.parsed(child, p, "an integer priority"),
            "service" => *r.service = self.string(child, p),
            "middlewares" => *r.middlewares = self.list(child, p),
            _ => return false,
        }
        true
    }

    fn http(&mut self, node: &Node, path: &str) -> HttpConfig {
        let mut http = HttpConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "routers" => http
                    .routers
                    .extend(self.named(child, &p, |d, n, p| Some(d.router(n, p)))),
                "services" => http.services.extend(self.named(child, &p, Self::service)),
                "middlewares" => http.middlewares.extend(self.named(child, &p, Self::middleware)),
                // As in Traefik, transports (certificates, trust) come from files only.
                "serverstransports" if self.mode == Mode::Labels => self.bad(
                    &p,
                    "serversTransports are read from the file provider only; a label may name one (loadbalancer.serverstransport=<name>@file); ignored",
                ),
                "serverstransports" => http
                    .servers_transports
                    .extend(self.named(child, &p, |d, n, p| Some(d.servers_transport(n, p)))),
                _ => self.unknown(&p),
            }
        }
        http
    }

    /// One `serversTransports` entry. What Berth cannot do as written is recorded in
    /// `refused`: the transport is then broken, and so is every service naming it.
    fn servers_transport(&mut self, node: &Node, path: &str) -> ServersTransportConfig {
        let mut t = ServersTransportConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "servername" => t.server_name = self.string(child, &p).filter(|s| !s.is_empty()),
                "insecureskipverify" => t.insecure_skip_verify = self.bool(child, &p).unwrap_or(false),
                "rootcas" => t.root_cas = self.list(child, &p),
                "certificates" => {
                    for (cp, n) in self.items(child, &p, "certificates") {
                        match self.certificate(n, &cp) {
                            Some(c) => t.certificates.push(c),
                            None => t
                                .refused
                                .push(format!("{cp}: a certificate needs certFile and keyFile")),
                        }
                    }
                }
                "maxidleconnsperhost" => t.max_idle_conns_per_host = self.parsed(child, &p, "an integer"),
                "forwardingtimeouts" => {
                    for (k, v) in self.map(child, &p) {
                        let kp = format!("{p}.{k}");
                        let slot = match k.to_ascii_lowercase().as_str() {
                            "dialtimeout" => &mut t.forwarding_timeouts.dial_timeout,
                            "responseheadertimeout" => &mut t.forwarding_timeouts.response_header_timeout,
                            "idleconntimeout" => &mut t.forwarding_timeouts.idle_conn_timeout,
                            "readidletimeout" => &mut t.forwarding_timeouts.read_idle_timeout,
                            "pingtimeout" => &mut t.forwarding_timeouts.ping_timeout,
                            _ => {
                                self.unknown(&kp);
                                continue;
                            }
                        };
                        match self.duration(v, &kp) {
                            Some(d) => *slot = d,
                            None => t.refused.push(format!("{kp}: not a duration")),
                        }
                    }
                }
                "disablehttp2" => t.disable_http2 = self.bool(child, &p).unwrap_or(false),
                "peercerturi" => t.peer_cert_uri = self.string(child, &p).filter(|s| !s.is_empty()),
                "minversion" => t.min_version = self.string(child, &p).filter(|s| !s.is_empty()),
                "maxversion" => t.max_version = self.string(child, &p).filter(|s| !s.is_empty()),
                "ciphersuites" => t.cipher_suites = Some(self.list(child, &p)).filter(|l| !l.is_empty()),
                "peercertsans" | "spiffe" => {
                    let why =
                        format!("{p}: not implemented by Berth; the services naming this transport are not served");
                    self.bad(&p, why.clone());
                    t.refused.push(why);
                }
                _ => {
                    self.unknown(&p);
                    t.refused.push(format!("{p}: unknown option"));
                }
            }
        }
        t
    }

    fn tcp(&mut self, node: &Node, path: &str) -> TcpConfig {
        let mut tcp = TcpConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "routers" => tcp
                    .routers
                    .extend(self.named(child, &p, |d, n, p| Some(d.tcp_router(n, p)))),
                "services" => tcp
                    .services
                    .extend(self.named(child, &p, |d, n, p| Some(d.tcp_service(n, p)))),
                "middlewares" => tcp.middlewares.extend(self.named(child, &p, Self::tcp_middleware)),
                "serverstransports" => self.diags.push(Diagnostic::warning(
                    p,
                    format!("tcp {key} are not supported yet; ignored"),
                )),
                _ => self.unknown(&p),
            }
        }
        tcp
    }

    /// A TCP middleware: one of Traefik's TCP types, its options parsed when the
    /// snapshot is built.
    fn tcp_middleware(&mut self, node: &Node, path: &str) -> Option<MiddlewareConfig> {
        let entries = self.map(node, path);
        let [(kind, options)] = entries else {
            self.bad(
                path,
                "a tcp middleware needs exactly one type (inFlightConn or ipAllowList)",
            );
            return None;
        };
        let canonical = crate::middleware::tcp::find_tcp_kind(kind);
        if canonical.is_none() {
            self.bad(
                &format!("{path}.{kind}"),
                format!("unknown tcp middleware type `{kind}`"),
            );
        }
        Some(MiddlewareConfig {
            kind: canonical.map(str::to_string).unwrap_or_else(|| kind.clone()),
            known: canonical.is_some(),
            refused: None,
            from_labels: self.mode == Mode::Labels,
            options: options.clone(),
        })
    }

    fn tcp_router(&mut self, node: &Node, path: &str) -> TcpRouterConfig {
        let mut r = TcpRouterConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            let key = key.to_ascii_lowercase();
            if self.router_key(r.keys(), &key, child, &p) {
                continue;
            }
            match key.as_str() {
                "rulesyntax" => {}
                "tls" => r.tls = self.tls_switch(child, &p).map(|options| self.tcp_tls(options, &p)),
                _ => self.unknown(&p),
            }
        }
        r
    }

    fn tcp_tls(&mut self, options: &[(String, Node)], path: &str) -> TcpTls {
        let mut tls = TcpTls::default();
        for (k, c) in options {
            let p = format!("{path}.{k}");
            match k.to_ascii_lowercase().as_str() {
                "passthrough" => tls.passthrough = self.bool(c, &p).unwrap_or(false),
                "options" => tls.options = self.string(c, &p),
                "certresolver" | "domains" => self
                    .diags
                    .push(Diagnostic::warning(p, "ignored: the configured certificates are used")),
                _ => self.unknown(&p),
            }
        }
        tls
    }

    fn tcp_service(&mut self, node: &Node, path: &str) -> TcpServiceConfig {
        let mut svc = TcpServiceConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            if !key.eq_ignore_ascii_case("loadbalancer") {
                self.bad(&p, "only loadBalancer services are supported for tcp");
                continue;
            }
            for (k, c) in self.map(child, &p) {
                let pp = format!("{p}.{k}");
                match k.to_ascii_lowercase().as_str() {
                    "servers" if self.mode == Mode::Labels => self.bad(&pp, LABEL_SERVERS),
                    "servers" => {
                        for (ip, item) in self.items(c, &pp, "servers") {
                            for (sk, sc) in self.map(item, &ip) {
                                let sp = format!("{ip}.{sk}");
                                match sk.to_ascii_lowercase().as_str() {
                                    "address" => {
                                        if let Some(a) = self.string(sc, &sp) {
                                            if a.rsplit_once(':')
                                                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok())
                                            {
                                                svc.servers.push(a);
                                            } else {
                                                self.bad(&sp, format!("`{a}` is not host:port"));
                                            }
                                        }
                                    }
                                    "tls" | "weight" => {
                                        self.diags.push(Diagnostic::warning(sp, "ignored for tcp servers"))
                                    }
                                    _ => self.unknown(&sp),
                                }
                            }
                        }
                    }
                    "server" if self.mode == Mode::Labels => {
                        for (sk, sc) in self.map(c, &pp) {
                            let sp = format!("{pp}.{sk}");
                            match sk.to_ascii_lowercase().as_str() {
                                "port" => svc.server_port = self.parsed(sc, &sp, "a port number"),
                                "weight" | "tls" => self.diags.push(Diagnostic::warning(sp, "ignored for tcp servers")),
                                _ => self.unknown(&sp),
                            }
                        }
                    }
                    "terminationdelay" | "proxyprotocol" | "serverstransport" => self
                        .diags
                        .push(Diagnostic::warning(pp, "not supported for tcp yet; ignored")),
                    _ => self.unknown(&pp),
                }
            }
        }
        svc
    }

    fn router(&mut self, node: &Node, path: &str) -> RouterConfig {
        let mut r = RouterConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            let key = key.to_ascii_lowercase();
            if self.router_key(r.keys(), &key, child, &p) {
                continue;
            }
            match key.as_str() {
                "tls" => r.tls = self.router_tls(child, &p),
                "rulesyntax" => {
                    r.rule_syntax = self.string(child, &p);
                    let v = r.rule_syntax.as_deref().unwrap_or_default();
                    if crate::rules::Syntax::of_router(v, crate::rules::Syntax::V3).is_none() {
                        self.diags.push(Diagnostic::warning(
                            p,
                            format!(
                                "ruleSyntax `{v}` is neither v2 nor v3: the rule is read as v3, as Traefik reads it"
                            ),
                        ));
                    }
                }
                "observability" => self.diags.push(Diagnostic::warning(
                    p,
                    "router observability options are not supported yet",
                )),
                _ => self.unknown(&p),
            }
        }
        r
    }

    fn router_tls(&mut self, node: &Node, path: &str) -> Option<RouterTls> {
        let options = self.tls_switch(node, path)?;
        let mut tls = RouterTls::default();
        for (key, child) in options {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "options" => tls.options = self.string(child, &p),
                "certresolver" => tls.cert_resolver = self.string(child, &p),
                "domains" => {
                    for (dp, item) in self.items(child, &p, "domains") {
                        let mut d = TlsDomain::default();
                        for (k, v) in self.map(item, &dp) {
                            match k.to_ascii_lowercase().as_str() {
                                "main" => d.main = self.string(v, &format!("{dp}.{k}")).unwrap_or_default(),
                                "sans" => d.sans = self.list(v, &format!("{dp}.{k}")),
                                _ => self.unknown(&format!("{dp}.{k}")),
                            }
                        }
                        let names = std::iter::once(&d.main).chain(&d.sans);
                        match names.clone().find(|n| !crate::tls::valid_dns_name(n)) {
                            Some(bad) => self.bad(&dp, format!("`{bad}` is not a host name; this domain is left out")),
                            None if tls.domains.len() >= MAX_TLS_DOMAINS => self.bad(
                                &dp,
                                format!("more than {MAX_TLS_DOMAINS} domains; this one is left out"),
                            ),
                            None => tls.domains.push(d),
                        }
                    }
                }
                _ => self.unknown(&p),
            }
        }
        Some(tls)
    }

    fn service(&mut self, node: &Node, path: &str) -> Option<ServiceConfig> {
        let mut svc: Option<ServiceConfig> = None;
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            let kind = key.to_ascii_lowercase();
            if svc.is_some() && matches!(kind.as_str(), "loadbalancer" | "weighted" | "mirroring" | "failover") {
                self.bad(&p, "a service has exactly one type (loadBalancer, weighted, ...)");
                return None;
            }
            match kind.as_str() {
                "loadbalancer" => match self.load_balancer(child, &p) {
                    Some(load_balancer) => {
                        svc = Some(ServiceConfig {
                            load_balancer,
                            weighted: None,
                            failover: None,
                            mirroring: None,
                        })
                    }
                    None => return None,
                },
                // Labels are written per task: a label's weighted service names only
                // services of its own provider, each of which must consent
                // (`berth.weighted.allow`, checked by the ECS provider); failover and
                // mirroring come from files only.
                "failover" | "mirroring" if self.mode == Mode::Labels => {
                    self.bad(&p, format!("`{key}` services come from the file provider only"));
                    return None;
                }
                "weighted" => {
                    let weighted = self.weighted(child, &p)?;
                    svc = Some(ServiceConfig {
                        load_balancer: LoadBalancerConfig::default(),
                        weighted: Some(weighted),
                        failover: None,
                        mirroring: None,
                    });
                }
                "failover" => {
                    let failover = self.failover(child, &p)?;
                    svc = Some(ServiceConfig {
                        load_balancer: LoadBalancerConfig::default(),
                        weighted: None,
                        failover: Some(failover),
                        mirroring: None,
                    });
                }
                "mirroring" => {
                    let mirroring = self.mirroring(child, &p)?;
                    svc = Some(ServiceConfig {
                        load_balancer: LoadBalancerConfig::default(),
                        weighted: None,
                        failover: None,
                        mirroring: Some(mirroring),
                    });
                }
                _ => self.unknown(&p),
            }
        }
        if svc.is_none() {
            self.bad(path, "the service has no loadBalancer");
        }
        svc
    }

    /// A `mirroring` service, or `None` when it cannot be applied as written.
    fn mirroring(&mut self, node: &Node, path: &str) -> Option<MirroringConfig> {
        let before = self.errors();
        let mut m = MirroringConfig {
            mirror_body: true,
            ..MirroringConfig::default()
        };
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "service" => m.service = self.string(child, &p).unwrap_or_default(),
                "mirrorbody" => m.mirror_body = self.bool(child, &p).unwrap_or(true),
                "maxbodysize" => {
                    let v: Option<i64> = self.parsed(child, &p, "a size in bytes or -1");
                    m.max_body_size = v.and_then(|v| u64::try_from(v).ok());
                }
                "healthcheck" => {
                    self.map(child, &p);
                    m.health_check = true;
                }
                "mirrors" => {
                    for (ip, item) in self.items(child, &p, "mirrors") {
                        let mut name = None;
                        let mut percent = 0u32;
                        for (k, v) in self.map(item, &ip) {
                            let kp = format!("{ip}.{k}");
                            match k.to_ascii_lowercase().as_str() {
                                "name" => name = self.string(v, &kp).filter(|n| !n.is_empty()),
                                "percent" => match self.parsed::<u32>(v, &kp, "a percentage (0 to 100)") {
                                    Some(p) if p <= 100 => percent = p,
                                    Some(p) => self.bad(&kp, format!("`{p}` is above 100")),
                                    None => {}
                                },
                                _ => self.unknown(&kp),
                            }
                        }
                        match name {
                            Some(name) => m.mirrors.push(MirrorConfig { name, percent }),
                            None => self.bad(&ip, "a mirror needs a name"),
                        }
                    }
                }
                _ => self.unknown(&p),
            }
        }
        if m.service.is_empty() {
            self.bad(path, "a mirroring service needs `service`");
        }
        if m.mirrors.len() > MAX_WEIGHTED {
            self.bad(path, format!("more than {MAX_WEIGHTED} mirrors"));
        }
        (self.errors() == before).then_some(m)
    }

    /// A `failover` service, or `None` when it cannot be applied as written.
    fn failover(&mut self, node: &Node, path: &str) -> Option<FailoverConfig> {
        let before = self.errors();
        let mut f = FailoverConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "service" => f.service = self.string(child, &p).unwrap_or_default(),
                "fallback" => f.fallback = self.string(child, &p).unwrap_or_default(),
                "healthcheck" => {
                    self.map(child, &p);
                    f.health_check = true;
                }
                "errors" => f.errors = self.failover_errors(child, &p),
                _ => self.unknown(&p),
            }
        }
        if f.service.is_empty() || f.fallback.is_empty() {
            self.bad(path, "a failover service needs `service` and `fallback`");
        }
        (self.errors() == before).then_some(f)
    }

    /// `failover.errors`: the statuses that send the request to the fallback, and how
    /// large a body is kept for it.
    fn failover_errors(&mut self, node: &Node, path: &str) -> Option<FailoverErrors> {
        let mut e = FailoverErrors {
            status: Vec::new(),
            max_request_body_bytes: crate::middleware::buffering::MAX_BUFFERED,
        };
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "status" => {
                    let items = self.list(child, &p);
                    match crate::middleware::errors::status_ranges(&items, &p) {
                        Ok(ranges) => e.status = ranges,
                        Err(why) => self.bad(&p, why),
                    }
                }
                "maxrequestbodybytes" => match self.parsed::<i64>(child, &p, "an integer") {
                    Some(-1) => {}
                    Some(n) if n >= 0 && n.unsigned_abs() <= crate::middleware::buffering::MAX_BUFFERED => {
                        e.max_request_body_bytes = n.unsigned_abs()
                    }
                    Some(n) => self.bad(
                        &p,
                        format!(
                            "{n}: expected -1 (no limit of Traefik's: Berth's bound of {} bytes) or a size up to it",
                            crate::middleware::buffering::MAX_BUFFERED
                        ),
                    ),
                    None => {}
                },
                _ => self.unknown(&p),
            }
        }
        Some(e)
    }

    /// A `weighted` service, or `None` when it cannot be applied as written.
    fn weighted(&mut self, node: &Node, path: &str) -> Option<WeightedConfig> {
        let before = self.errors();
        let mut w = WeightedConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "services" => {
                    for (ip, item) in self.items(child, &p, "services") {
                        let mut name = None;
                        let mut weight = 1u32;
                        for (k, v) in self.map(item, &ip) {
                            let kp = format!("{ip}.{k}");
                            match k.to_ascii_lowercase().as_str() {
                                "name" => name = self.string(v, &kp).filter(|n| !n.is_empty()),
                                "weight" => weight = self.parsed(v, &kp, "a weight (0 or more)").unwrap_or(1),
                                _ => self.unknown(&kp),
                            }
                        }
                        match name {
                            Some(name) if self.mode == Mode::Labels && name.contains('@') => self.bad(
                                &ip,
                                format!(
                                    "`{name}`: a weighted service from labels names ECS services only, without `@`"
                                ),
                            ),
                            Some(name) => w.services.push(WeightedService { name, weight }),
                            None => self.bad(&ip, "a weighted service needs a name"),
                        }
                    }
                }
                "sticky" => match self.sticky(child, &p) {
                    Ok(sticky) => w.sticky = sticky,
                    Err(()) => return None,
                },
                "healthcheck" => {
                    self.map(child, &p);
                    w.health_check = true;
                }
                _ => self.unknown(&p),
            }
        }
        if w.services.is_empty() {
            self.bad(path, "a weighted service needs services");
        }
        if w.services.len() > MAX_WEIGHTED {
            self.bad(path, format!("more than {MAX_WEIGHTED} weighted services"));
        }
        (self.errors() == before).then_some(w)
    }

    /// The load balancer, or `None` when a setting it cannot do without is wrong (a
    /// sticky cookie that cannot be set as written): the service is not served.
    fn load_balancer(&mut self, node: &Node, path: &str) -> Option<LoadBalancerConfig> {
        let mut lb = LoadBalancerConfig::default();
        let mut refused = false;
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "servers" if self.mode == Mode::Labels => self.bad(&p, LABEL_SERVERS),
                "servers" => {
                    for (sp, n) in self.items(child, &p, "servers") {
                        if let Some(s) = self.server(n, &sp) {
                            lb.servers.push(s);
                        }
                    }
                }
                "server" if self.mode == Mode::Labels => lb.server = Some(self.server_template(child, &p)),
                "strategy" => {
                    lb.strategy = match self.string(child, &p).map(|s| s.to_ascii_lowercase()).as_deref() {
                        Some("p2c") => Some(Strategy::P2c),
                        Some("wrr") => Some(Strategy::Wrr),
                        Some(other) => {
                            self.bad(&p, format!("unknown strategy `{other}` (use p2c or wrr)"));
                            None
                        }
                        None => None,
                    }
                }
                "passhostheader" => lb.pass_host_header = self.bool(child, &p),
                "healthcheck" => lb.health_check = Some(self.health_check(child, &p)),
                "sticky" => match self.sticky(child, &p) {
                    Ok(sticky) => lb.sticky = sticky,
                    Err(()) => refused = true,
                },
                // Berth sends each chunk of a response on as it arrives, so any
                // flushInterval is met; only its form is checked.
                "responseforwarding" => {
                    for (k, v) in self.map(child, &p) {
                        let kp = format!("{p}.{k}");
                        if k.eq_ignore_ascii_case("flushInterval") {
                            let text = self.string(v, &kp).unwrap_or_default();
                            if text.trim() != "-1" {
                                self.duration(v, &kp);
                            }
                        } else {
                            self.unknown(&kp);
                        }
                    }
                }
                "serverstransport" => lb.servers_transport = self.string(child, &p).filter(|s| !s.is_empty()),
                _ => self.unknown(&p),
            }
        }
        if refused {
            self.bad(path, "the service is not served until its sticky cookie is fixed");
            return None;
        }
        Some(lb)
    }

    /// `sticky`: `cookie` as `true` (or empty) for the defaults, or a map of its options.
    /// `Err` when an option is wrong; `Ok(None)` when stickiness is off.
    fn sticky(&mut self, node: &Node, path: &str) -> Result<Option<StickyCookie>, ()> {
        let before = self.errors();
        let mut cookie = None;
        match node {
            // Traefik v1/v2's `sticky=true` label: a cookie with the defaults.
            Node::Leaf(v) => match super::parse_bool(v) {
                Some(true) => cookie = Some(StickyCookie::default()),
                Some(false) => {}
                None => self.bad(path, format!("`{v}` is not true or false")),
            },
            _ => {
                for (key, child) in self.map(node, path) {
                    let p = format!("{path}.{key}");
                    match key.to_ascii_lowercase().as_str() {
                        "cookie" => {
                            cookie = self.tls_switch(child, &p).map(|o| self.sticky_cookie(o, &p));
                        }
                        _ => self.unknown(&p),
                    }
                }
            }
        }
        if self.errors() > before {
            return Err(());
        }
        Ok(cookie)
    }

    /// A cookie attribute's value (`path`, `domain`): unset when empty, an error when it
    /// could split the `Set-Cookie` header.
    fn cookie_attribute(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        let v = self.string(node, path).filter(|v| !v.is_empty())?;
        if !crate::cookie::is_attribute_value(&v) {
            self.bad(path, format!("`{v}` cannot be a cookie {what}"));
        }
        Some(v)
    }

    fn sticky_cookie(&mut self, options: &[(String, Node)], path: &str) -> StickyCookie {
        let mut c = StickyCookie::default();
        for (key, child) in options {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "name" => {
                    c.name = self.string(child, &p).filter(|n| !n.trim().is_empty());
                    if let Some(n) = &mut c.name
                        && !crate::cookie::is_name(n)
                    {
                        // As Traefik does: characters a cookie name may not hold become `_`.
                        let fixed = crate::cookie::sanitize_name(n);
                        self.diags.push(Diagnostic::warning(
                            p,
                            format!("`{n}` is not a valid cookie name (an RFC 6265 token); `{fixed}` is used"),
                        ));
                        *n = fixed;
                    }
                }
                "secure" => c.secure = self.bool(child, &p).unwrap_or(false),
                "httponly" => c.http_only = self.bool(child, &p).unwrap_or(false),
                "samesite" => {
                    c.same_site = match self.string(child, &p).map(|s| s.trim().to_ascii_lowercase()).as_deref() {
                        None | Some("") => None,
                        Some("none") => Some(SameSite::None),
                        Some("lax") => Some(SameSite::Lax),
                        Some("strict") => Some(SameSite::Strict),
                        Some(other) => {
                            self.bad(&p, format!("sameSite `{other}` is not none, lax or strict"));
                            None
                        }
                    }
                }
                "maxage" => c.max_age = self.parsed(child, &p, "a whole number of seconds").unwrap_or(0),
                "path" => c.path = self.cookie_attribute(child, &p, "path"),
                "domain" => c.domain = self.cookie_attribute(child, &p, "domain"),
                _ => self.unknown(&p),
            }
        }
        c
    }

    fn server(&mut self, node: &Node, path: &str) -> Option<ServerConfig> {
        let mut url = None;
        let mut weight = None;
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "url" => url = self.string(child, &p),
                "weight" => weight = self.parsed(child, &p, "a non-negative integer weight"),
                // Traefik's `preservePath: true` keeps the server URL's path in front of the
                // request's; Berth does not, so it refuses the server rather than drop it.
                "preservepath" => {
                    if self.bool(child, &p) == Some(true) {
                        self.bad(&p, "preservePath: true is not supported yet; the server is not used");
                        return None;
                    }
                }
                _ => self.unknown(&p),
            }
        }
        match url {
            Some(url) if !url.trim().is_empty() => Some(ServerConfig { url, weight }),
            _ => {
                self.bad(path, "server without url");
                None
            }
        }
    }

    fn server_template(&mut self, node: &Node, path: &str) -> ServerTemplate {
        let mut t = ServerTemplate::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "port" => t.port = self.parsed(child, &p, "a port number"),
                "scheme" => {
                    t.scheme = self.string(child, &p).and_then(|s| match s.as_str() {
                        "http" | "https" | "h2c" => Some(s),
                        _ => {
                            self.bad(&p, format!("unknown scheme `{s}` (use http, https or h2c)"));
                            None
                        }
                    })
                }
                "weight" => t.weight = self.parsed(child, &p, "a non-negative integer weight"),
                "url" => self.bad(&p, LABEL_SERVERS),
                _ => self.unknown(&p),
            }
        }
        t
    }

    fn health_check(&mut self, node: &Node, path: &str) -> HealthCheckConfig {
        let mut h = HealthCheckConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "path" => h.path = self.string(child, &p),
                "interval" => h.interval = self.duration(child, &p),
                "timeout" => h.timeout = self.duration(child, &p),
                "port" => h.port = self.parsed(child, &p, "a port number"),
                "scheme" => h.scheme = self.string(child, &p),
                "hostname" => h.hostname = self.string(child, &p),
                "mode" => h.mode = self.string(child, &p),
                "status" => h.status = self.parsed(child, &p, "an HTTP status code"),
                "headers" => {
                    for (name, v) in self.map(child, &p) {
                        if let Some(v) = self.string(v, &format!("{p}.{name}")) {
                            h.headers.insert(name.clone(), v);
                        }
                    }
                }
                _ => self.unknown(&p),
            }
        }
        h
    }

    fn middleware(&mut self, node: &Node, path: &str) -> Option<MiddlewareConfig> {
        let entries = self.map(node, path);
        let [(kind, options)] = entries else {
            self.bad(path, "a middleware needs exactly one type (for example stripPrefix)");
            return None;
        };
        let canonical = crate::middleware::find_kind(kind).map(|k| k.name);
        if canonical.is_none() {
            self.bad(&format!("{path}.{kind}"), format!("unknown middleware type `{kind}`"));
        }
        let kind = canonical.map(str::to_string).unwrap_or_else(|| kind.clone());
        // Labels are written by whoever can register a task definition: they may not make
        // the gateway read its own files (and echo what it finds into diagnostics), nor
        // call its own or the host's link-local services.
        let refused = (self.mode == Mode::Labels)
            .then(|| label_refusal(&kind, options))
            .flatten();
        let refused = match refused {
            Some((key, why)) => {
                self.bad(&format!("{path}.{kind}.{key}"), why.clone());
                Some(why)
            }
            None => None,
        };
        Some(MiddlewareConfig {
            kind,
            known: canonical.is_some(),
            refused,
            from_labels: self.mode == Mode::Labels,
            options: options.clone(),
        })
    }

    fn tls(&mut self, node: &Node, path: &str) -> TlsConfig {
        let mut tls = TlsConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "certificates" => match child {
                    Node::List(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(c) = self.certificate(item, &format!("{p}[{i}]")) {
                                tls.certificates.push(c);
                            }
                        }
                    }
                    _ => self.bad(&p, "expected a list of certificates"),
                },
                "stores" => {
                    for (store, s) in self.map(child, &p) {
                        let sp = format!("{p}.{store}");
                        for (k, v) in self.map(s, &sp) {
                            let kp = format!("{sp}.{k}");
                            if k.eq_ignore_ascii_case("defaultCertificate") {
                                tls.default_certificate = self.certificate(v, &kp);
                            } else {
                                self.unknown(&kp);
                            }
                        }
                    }
                }
                "options" => tls
                    .options
                    .extend(self.named(child, &p, |d, n, p| Some(d.tls_options(n, p)))),
                _ => self.unknown(&p),
            }
        }
        tls
    }

    /// One `tls.options` entry; what Berth does not know is recorded in `refused`, and
    /// the options are then broken.
    fn tls_options(&mut self, node: &Node, path: &str) -> TlsOptionsConfig {
        // A value of the wrong shape must break the options, never loosen them
        // (`clientAuth` as a plain value would otherwise ask for no certificate).
        let before = self.errors();
        let mut o = TlsOptionsConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "minversion" => o.min_version = self.string(child, &p).filter(|s| !s.is_empty()),
                "maxversion" => o.max_version = self.string(child, &p).filter(|s| !s.is_empty()),
                // An empty list is Go's default, as an absent one.
                "ciphersuites" => o.cipher_suites = Some(self.list(child, &p)).filter(|l| !l.is_empty()),
                "curvepreferences" => o.curve_preferences = Some(self.list(child, &p)),
                "snistrict" => o.sni_strict = self.bool(child, &p).unwrap_or(false),
                "alpnprotocols" => o.alpn_protocols = Some(self.list(child, &p)),
                "disablesessiontickets" => o.disable_session_tickets = self.bool(child, &p).unwrap_or(false),
                "preferserverciphersuites" => self.diags.push(Diagnostic::warning(
                    p,
                    "deprecated and without effect (as in Traefik); remove it",
                )),
                "clientauth" => {
                    for (k, v) in self.map(child, &p) {
                        let kp = format!("{p}.{k}");
                        match k.to_ascii_lowercase().as_str() {
                            "cafiles" => o.client_auth.ca_files = self.list(v, &kp),
                            "clientauthtype" => {
                                o.client_auth.client_auth_type = self.string(v, &kp).filter(|s| !s.is_empty())
                            }
                            _ => {
                                self.unknown(&kp);
                                o.refused.push(format!("{kp}: unknown option"));
                            }
                        }
                    }
                }
                _ => {
                    self.unknown(&p);
                    o.refused.push(format!("{p}: unknown option"));
                }
            }
        }
        if self.errors() > before && o.refused.is_empty() {
            o.refused.push(format!(
                "{path}: a value is not what the option takes (see the other diagnostics)"
            ));
        }
        o
    }

    fn certificate(&mut self, node: &Node, path: &str) -> Option<CertificateConfig> {
        let mut cert = CertificateConfig::default();
        for (key, child) in self.map(node, path) {
            let p = format!("{path}.{key}");
            match key.to_ascii_lowercase().as_str() {
                "certfile" => cert.cert_file = self.string(child, &p).unwrap_or_default(),
                "keyfile" => cert.key_file = self.string(child, &p).unwrap_or_default(),
                "stores" => {}
                _ => self.unknown(&p),
            }
        }
        if cert.cert_file.is_empty() || cert.key_file.is_empty() {
            self.bad(path, "a certificate needs certFile and keyFile");
            return None;
        }
        Some(cert)
    }
}

/// Parse a file provider's text (YAML, or TOML when `toml` is set) into a config.
pub fn parse_file(text: &str, toml: bool, diags: &mut Vec<Diagnostic>) -> Result<DynamicConfig, String> {
    Ok(decode(&parse_tree(text, toml)?, Mode::File, "", diags))
}

/// A YAML or TOML document as a tree, which must be a map at the top level (an empty
/// YAML document is an empty map).
pub fn parse_tree(text: &str, toml: bool) -> Result<Node, String> {
    let root = if toml {
        let v: toml::Value = toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?;
        Node::from_toml(&v)
    } else if text.trim().is_empty() {
        Node::empty_map()
    } else {
        let v: serde_norway::Value = serde_norway::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        Node::from_yaml(&v)
    };
    if !matches!(root, Node::Map(_)) {
        return Err("the configuration must be a map at the top level".into());
    }
    Ok(root)
}

/// The keys HTTP and TCP routers share, borrowed from either for [`Decoder::router_key`].
struct RouterKeys<'r> {
    rule: &'r mut Option<String>,
    entry_points: &'r mut Vec<String>,
    priority: &'r mut Option<i64>,
    service: &'r mut Option<String>,
    middlewares: &'r mut Vec<String>,
}

/// The router keys HTTP and TCP routers share, borrowed for the decoder.
macro_rules! router_keys {
    ($($router:ty),*) => {$(
        impl $router {
            fn keys(&mut self) -> RouterKeys<'_> {
                RouterKeys {
                    rule: &mut self.rule,
                    entry_points: &mut self.entry_points,
                    priority: &mut self.priority,
                    service: &mut self.service,
                    middlewares: &mut self.middlewares,
                }
            }
        }
    )*};
}

router_keys!(RouterConfig, TcpRouterConfig);

/// Why a middleware from labels may not be applied, and the option at fault: a file on
/// the gateway (`usersFile`, `forwardAuth`'s `tls.ca`/`cert`/`key` unless given as PEM
/// text), or a `forwardAuth` address on the gateway itself or a link-local network (the
/// instance metadata service is one).
fn label_refusal(kind: &str, options: &Node) -> Option<(String, String)> {
    let find = |node: &Node, key: &str| {
        node.entries()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    if find(options, "usersFile").is_some() {
        return Some((
            "usersFile".into(),
            format!("{kind}.usersFile names a file on the gateway; labels may not (use users)"),
        ));
    }
    if kind != "forwardAuth" {
        return None;
    }
    if let Some(tls) = find(options, "tls") {
        for key in ["ca", "cert", "key"] {
            if let Some(Node::Leaf(v)) = find(&tls, key)
                && !v.is_empty()
                && !v.contains("-----BEGIN")
            {
                return Some((
                    format!("tls.{key}"),
                    format!("forwardAuth.tls.{key} names a file on the gateway; labels may not (give the PEM text)"),
                ));
            }
        }
    }
    if let Some(Node::Leaf(address)) = find(options, "address")
        && let Ok(uri) = address.parse::<http::Uri>()
        && let Some(host) = uri.host()
    {
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
        let lower = host.to_ascii_lowercase();
        // A last label of digits or hex is an address in one of inet_aton's old forms
        // (`2130706433`, `0x7f.1`, `127.1`), which the resolver would turn into one.
        let last = lower.rsplit('.').next().unwrap_or_default();
        let numeric = host.parse::<std::net::IpAddr>().is_err()
            && (last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x"));
        let local = lower == "localhost"
            || lower.ends_with(".localhost")
            || numeric
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(crate::http::is_local_address);
        if local {
            return Some((
                "address".into(),
                format!(
                    "forwardAuth.address `{address}` is the gateway itself, a link-local network or not a plain name or address; labels may not point there"
                ),
            ));
        }
    }
    None
}
