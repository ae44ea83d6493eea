//! The snapshot builder: a pure function from the providers' views to one [`Snapshot`].
//!
//! Names are qualified `name@provider`; a reference without `@` means the referring
//! router's provider, as in Traefik. Problems never abort the build: they disable the
//! router or service concerned and are recorded on it and in the diagnostics.

use std::collections::{BTreeSet, HashMap};

use super::snapshot::*;
use crate::config::{DynamicConfig, Strategy};
use crate::diag::Diagnostic;
use crate::rules;

/// One provider's complete, current view.
#[derive(Debug, Clone, Default)]
pub struct ProviderView {
    /// `file`, `ecs`, ...
    pub provider: String,
    pub config: DynamicConfig,
    pub diagnostics: Vec<Diagnostic>,
    /// Why this is not yet the provider's first complete view (ECS clusters that have not
    /// finished a round); `None` when it is complete.
    pub pending: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The entrypoints that exist, by name.
    pub entrypoints: Vec<String>,
    /// Where routers without `entryPoints` go; empty: every entrypoint (Traefik's
    /// `asDefault` entrypoints otherwise).
    pub default_entrypoints: Vec<String>,
    /// Entrypoints whose HTTP routers serve TLS connections without saying `tls`
    /// (Traefik's `entryPoints.<name>.http.tls`).
    pub tls_entrypoints: Vec<String>,
    /// Their `http.tls.options` (Traefik's `entryPoints.<name>.http.tls.options`): the
    /// options of the routers on them that set no `tls` of their own.
    pub entrypoint_tls_options: Vec<(String, String)>,
    /// Their `http.tls.certResolver`: the resolver of the routers on them that name none.
    pub entrypoint_cert_resolvers: Vec<(String, String)>,
    /// The gateway's own services a router may name (Traefik's `api@internal`,
    /// `ping@internal`, `noop@internal`, ...): answered by the gateway, not dialled.
    pub internal_services: Vec<String>,
    pub version: u64,
    /// The middlewares of the snapshot being replaced: one whose options did not change
    /// is kept as it is, with its state (rate-limit buckets, in-flight counts).
    pub previous: Vec<MiddlewareEntry>,
    /// The same for TCP middlewares (`inFlightConn` keeps its open connections).
    pub previous_tcp: Vec<TcpMiddlewareEntry>,
    /// The same for servers transports: one whose configuration did not change is not
    /// read again, and keeps its pool of connections.
    pub previous_transports: Vec<TransportEntry>,
    /// The same for `tls.options`: unchanged options keep their CA roots (and the
    /// gateway its server configuration for them).
    pub previous_tls_options: Vec<TlsOptionsEntry>,
    /// The rule syntax of routers that do not choose one (`ruleSyntax`): v3 unless the
    /// gateway says v2 (`--default-rule-syntax`, Traefik's `core.defaultRuleSyntax`).
    pub default_rule_syntax: rules::Syntax,
}

impl BuildOptions {
    fn default_routers_entrypoints(&self) -> Vec<String> {
        if self.default_entrypoints.is_empty() {
            self.entrypoints.clone()
        } else {
            self.default_entrypoints.clone()
        }
    }
}

fn qualify(name: &str, provider: &str) -> String {
    if name.contains('@') {
        name.to_string()
    } else {
        format!("{name}@{provider}")
    }
}

/// `http.serversTransports`: each read once (kept from the previous snapshot while its
/// configuration is the same), by qualified name.
fn build_transports(views: &[ProviderView], opts: &BuildOptions, snap: &mut Snapshot) -> HashMap<String, usize> {
    let mut idx = HashMap::new();
    for view in views {
        for (name, cfg) in &view.config.http.servers_transports {
            let qname = qualify(name, &view.provider);
            let kept = opts
                .previous_transports
                .iter()
                .find(|p| p.name == qname && p.config == *cfg)
                .and_then(|p| p.spec.clone());
            let resolved = match kept {
                Some(t) => Ok(t),
                None => crate::transport::Transport::resolve(&qname, cfg).map(std::sync::Arc::new),
            };
            let (spec, errors) = match resolved {
                Ok(t) => (Some(t), Vec::new()),
                Err(e) => {
                    for why in &e {
                        snap.diagnostics.push(Diagnostic::error(
                            format!("http.serversTransports.{name}"),
                            format!("{why}; the services naming it are not served"),
                        ));
                    }
                    (None, e)
                }
            };
            if cfg.insecure_skip_verify && cfg.peer_cert_uri.is_none() {
                snap.diagnostics.push(Diagnostic::warning(
                    format!("http.serversTransports.{name}.insecureSkipVerify"),
                    "the servers' certificates are not verified: anyone on the path can pose as them",
                ));
            }
            idx.insert(qname.clone(), snap.transports.len());
            snap.transports.push(TransportEntry {
                name: qname,
                provider: view.provider.clone(),
                config: cfg.clone(),
                status: if spec.is_some() {
                    Status::Enabled
                } else {
                    Status::Disabled
                },
                spec,
                used_by: Vec::new(),
                errors,
            });
        }
    }
    idx
}

/// `tls.options`, by qualified name (`default` stays `default`, as in Traefik), with the
/// built-in default options when no provider defines them.
fn build_tls_options(views: &[ProviderView], opts: &BuildOptions, snap: &mut Snapshot) {
    use crate::server_tls::{DEFAULT_OPTIONS, TlsOptions};
    let builtin = ProviderView {
        provider: "internal".into(),
        ..ProviderView::default()
    };
    let mut defined: Vec<(&ProviderView, String, crate::config::TlsOptionsConfig)> = Vec::new();
    for view in views {
        for (name, cfg) in &view.config.tls.options {
            let qname = if name == DEFAULT_OPTIONS {
                DEFAULT_OPTIONS.to_string()
            } else {
                qualify(name, &view.provider)
            };
            if defined.iter().any(|(_, n, _)| *n == qname) {
                snap.diagnostics.push(Diagnostic::error(
                    format!("tls.options.{name}"),
                    "defined by more than one provider; the first is used",
                ));
                continue;
            }
            defined.push((view, qname, cfg.clone()));
        }
    }
    if !defined.iter().any(|(_, n, _)| n == DEFAULT_OPTIONS) {
        defined.push((&builtin, DEFAULT_OPTIONS.to_string(), Default::default()));
    }
    for (view, qname, cfg) in defined {
        let files = TlsOptions::files_stamp(&cfg);
        let kept = opts
            .previous_tls_options
            .iter()
            .find(|p| p.name == qname && p.config == cfg && p.files == files)
            .and_then(|p| p.spec.clone());
        let resolved = match kept {
            Some(o) => Ok((o, Vec::new())),
            None if view.provider == "internal" => Ok((std::sync::Arc::new(TlsOptions::builtin_default()), Vec::new())),
            None => TlsOptions::resolve(&qname, &cfg).map(|(o, w)| (std::sync::Arc::new(o), w)),
        };
        let key = format!("tls.options.{}", qname.split('@').next().unwrap_or_default());
        let (spec, errors) = match resolved {
            Ok((o, warnings)) => {
                for w in warnings {
                    snap.diagnostics
                        .push(Diagnostic::warning(key.clone(), w).with_source(view.provider.clone()));
                }
                (Some(o), Vec::new())
            }
            Err(e) => {
                for why in &e {
                    snap.diagnostics.push(
                        Diagnostic::error(
                            key.clone(),
                            format!("{why}; the routers naming these options are not served"),
                        )
                        .with_source(view.provider.clone()),
                    );
                }
                (None, e)
            }
        };
        snap.tls_options.push(TlsOptionsEntry {
            name: qname,
            provider: view.provider.clone(),
            config: cfg,
            files,
            status: if spec.is_some() {
                Status::Enabled
            } else {
                Status::Disabled
            },
            spec,
            used_by: Vec::new(),
            errors,
        });
    }
}

/// Per entrypoint, which options each server name gets. Options are chosen before the
/// request is read, by the server name only, so a router whose options cannot be told
/// that way is not served (fail closed; Traefik serves it with the default options):
/// one whose rule pins no host, and one whose host has routers naming different options.
fn resolve_sni_options(opts: &BuildOptions, snap: &mut Snapshot) {
    use crate::server_tls::DEFAULT_OPTIONS;
    let tls_here = |r: &RouterEntry, ep: &String| r.tls || opts.tls_entrypoints.contains(ep);
    let mut refused: Vec<(usize, String)> = Vec::new();
    for ep in &opts.entrypoints {
        let mut by_host: HashMap<String, BTreeSet<&str>> = HashMap::new();
        for (i, r) in snap.routers.iter().enumerate() {
            if r.status != Status::Enabled || !r.entry_points.contains(ep) || !tls_here(r, ep) {
                continue;
            }
            match r.rule.as_ref().and_then(|rule| rule.required_hosts()) {
                Some(hosts) => {
                    for h in hosts {
                        by_host.entry(h.clone()).or_default().insert(&r.tls_options);
                    }
                }
                None if r.tls_options != DEFAULT_OPTIONS => refused.push((
                    i,
                    format!(
                        "tls.options `{}` cannot be applied: the rule pins no Host, and TLS options are chosen by the server name the client asks for; the router is not served (fail closed)",
                        r.tls_options
                    ),
                )),
                None => {}
            }
        }
        for (i, r) in snap.routers.iter().enumerate() {
            if r.status != Status::Enabled
                || !r.entry_points.contains(ep)
                || !tls_here(r, ep)
                || r.tls_options == DEFAULT_OPTIONS
            {
                continue;
            }
            let hosts = r.rule.as_ref().and_then(|rule| rule.required_hosts());
            if let Some(h) = hosts
                .into_iter()
                .flatten()
                .find(|h| by_host.get(*h).is_some_and(|o| o.len() > 1))
            {
                let names: Vec<&str> = by_host[h].iter().copied().collect();
                refused.push((
                    i,
                    format!(
                        "on entrypoint `{ep}`, host `{h}` is served by routers naming different TLS options ({}); the router is not served (fail closed)",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    for (i, why) in refused {
        let r = &mut snap.routers[i];
        r.status = Status::Disabled;
        if !r.errors.contains(&why) {
            r.errors.push(why);
        }
    }
    for ep in &opts.entrypoints {
        let mut table: HashMap<String, SniChoice> = HashMap::new();
        for r in &snap.routers {
            if !r.entry_points.contains(ep) || !tls_here(r, ep) || r.tls_options == DEFAULT_OPTIONS {
                continue;
            }
            let broken = !snap
                .tls_options
                .iter()
                .any(|o| o.name == r.tls_options && o.spec.is_some());
            let choice = match (r.status, broken) {
                (_, true) => SniChoice::Refuse,
                (Status::Enabled, false) => SniChoice::Options(r.tls_options.clone()),
                _ => continue,
            };
            for h in r
                .rule
                .as_ref()
                .and_then(|rule| rule.required_hosts())
                .into_iter()
                .flatten()
            {
                table.entry(h.clone()).or_insert_with(|| choice.clone());
            }
        }
        if !table.is_empty() {
            snap.sni_options.insert(ep.clone(), table);
        }
    }
}

/// Never guessed: a rule that is not valid v3 but is valid v2 stays disabled, and the
/// error says how to opt in to v2.
fn v2_hint(rule: &str, syntax: rules::Syntax, router: &str) -> String {
    if syntax == rules::Syntax::V3 && rules::compile_with(rule, rules::Syntax::V2).is_ok() {
        format!(
            "; the rule is valid in Traefik's v2 syntax: set `ruleSyntax: v2` on the router (label `traefik.http.routers.{router}.ruleSyntax=v2`), or make v2 the default (`--default-rule-syntax v2`, Traefik's `--core.defaultRuleSyntax=v2`)"
        )
    } else {
        String::new()
    }
}

/// Build the snapshot. Deterministic: the same input always gives the same output.
pub fn build(views: &[ProviderView], opts: &BuildOptions) -> Snapshot {
    let mut snap = Snapshot {
        version: opts.version,
        ..Snapshot::default()
    };
    for view in views {
        snap.diagnostics.extend(view.diagnostics.iter().cloned());
    }

    let transport_idx = build_transports(views, opts, &mut snap);
    build_tls_options(views, opts, &mut snap);

    // Services.
    let mut service_idx: HashMap<String, usize> = HashMap::new();
    for view in views {
        for (name, svc) in &view.config.http.services {
            let qname = qualify(name, &view.provider);
            let lb = &svc.load_balancer;
            let mut errors = Vec::new();
            let servers_transport = lb.servers_transport.as_ref().map(|t| qualify(t, &view.provider));
            let transport = servers_transport.as_ref().and_then(|t| match transport_idx.get(t) {
                None => {
                    errors.push(format!("servers transport `{t}` does not exist"));
                    None
                }
                Some(&i) => {
                    let entry = &mut snap.transports[i];
                    entry.used_by.push(qname.clone());
                    if entry.spec.is_none() {
                        errors.push(format!(
                            "servers transport `{t}` is broken: {}",
                            entry.errors.join("; ")
                        ));
                    }
                    entry.spec.clone()
                }
            });
            let mut servers = Vec::new();
            for s in &lb.servers {
                match parse_server_url(&s.url) {
                    Ok(uri) => servers.push(Server {
                        url: s.url.clone(),
                        uri,
                        weight: s.weight.unwrap_or(1),
                    }),
                    Err(e) => errors.push(format!("server `{}`: {e}", s.url)),
                }
            }
            let entry = ServiceEntry {
                name: qname.clone(),
                provider: view.provider.clone(),
                servers,
                strategy: lb.strategy.unwrap_or(Strategy::P2c),
                pass_host_header: lb.pass_host_header.unwrap_or(true),
                health_check: lb.health_check.clone(),
                // The cookie's name resolved once: the data path and the admin API agree.
                sticky: svc
                    .weighted
                    .as_ref()
                    .map_or(&lb.sticky, |w| &w.sticky)
                    .clone()
                    .map(|mut c| {
                        c.name.get_or_insert_with(|| crate::sticky::default_name(&qname));
                        c
                    }),
                weighted: match (&svc.weighted, &svc.failover) {
                    (Some(w), _) => Some(Weighted {
                        names: w.services.iter().map(|c| qualify(&c.name, &view.provider)).collect(),
                        weights: w.services.iter().map(|c| c.weight).collect(),
                        children: Vec::new(),
                        health_check: w.health_check,
                        failover: false,
                        failover_errors: None,
                        mirroring: None,
                    }),
                    (None, Some(f)) => Some(Weighted {
                        names: vec![
                            qualify(&f.service, &view.provider),
                            qualify(&f.fallback, &view.provider),
                        ],
                        weights: vec![1, 1],
                        children: Vec::new(),
                        health_check: true,
                        failover: true,
                        failover_errors: f
                            .errors
                            .clone()
                            .filter(|e| !e.status.is_empty())
                            .map(std::sync::Arc::new),
                        mirroring: None,
                    }),
                    (None, None) => svc.mirroring.as_ref().map(|m| Weighted {
                        names: std::iter::once(&m.service)
                            .chain(m.mirrors.iter().map(|x| &x.name))
                            .map(|n| qualify(n, &view.provider))
                            .collect(),
                        weights: std::iter::once(1).chain(m.mirrors.iter().map(|_| 0)).collect(),
                        children: Vec::new(),
                        health_check: m.health_check,
                        failover: false,
                        failover_errors: None,
                        mirroring: Some(Mirroring {
                            percents: m.mirrors.iter().map(|x| x.percent).collect(),
                            mirror_body: m.mirror_body,
                            max_body: m.max_body_size.unwrap_or(MAX_MIRRORED_BODY).min(MAX_MIRRORED_BODY),
                        }),
                    }),
                },
                servers_transport,
                transport,
                used_by: Vec::new(),
                status: if errors.is_empty() {
                    Status::Enabled
                } else {
                    Status::Disabled
                },
                errors,
            };
            service_idx.insert(qname, snap.services.len());
            snap.services.push(entry);
        }
    }

    resolve_weighted(&mut snap.services, &service_idx);

    // Middlewares.
    let mut mw_idx: HashMap<String, usize> = HashMap::new();
    for view in views {
        for (name, mw) in &view.config.http.middlewares {
            let qname = qualify(name, &view.provider);
            let mut errors = Vec::new();
            let mut spec = None;
            match crate::middleware::find_kind(&mw.kind).filter(|_| mw.known) {
                None => errors.push(format!("unknown middleware type `{}`", mw.kind)),
                Some(_) if mw.refused.is_some() => errors.extend(mw.refused.clone()),
                Some(k) if !k.implemented() => {
                    errors.push(format!("middleware type `{}` is not implemented by Berth yet", mw.kind))
                }
                Some(k) => {
                    let kept = opts
                        .previous
                        .iter()
                        .find(|p| p.name == qname && p.kind == mw.kind && p.options == mw.options)
                        .and_then(|p| p.spec.clone());
                    match kept.map(Ok).unwrap_or_else(|| {
                        k.parse(&mw.options).map(|mut s| {
                            s.settle(&view.provider, mw.from_labels);
                            std::sync::Arc::new(s)
                        })
                    }) {
                        Ok(s) => {
                            // An error page's service must exist, as a router's must.
                            if let Some(page) = s.error_page() {
                                match service_idx.get(page.service()) {
                                    None => errors.push(format!("errors.service `{}` does not exist", page.service())),
                                    Some(&i) if snap.services[i].status == Status::Disabled => {
                                        errors.push(format!("errors.service `{}` is disabled", page.service()))
                                    }
                                    Some(_) => {}
                                }
                            }
                            spec = Some(s)
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            mw_idx.insert(qname.clone(), snap.middlewares.len());
            snap.middlewares.push(MiddlewareEntry {
                name: qname,
                provider: view.provider.clone(),
                kind: mw.kind.clone(),
                options: mw.options.clone(),
                spec,
                used_by: Vec::new(),
                status: if errors.is_empty() {
                    Status::Enabled
                } else {
                    Status::Disabled
                },
                errors,
            });
        }
    }

    // Routers.
    for view in views {
        for (name, r) in &view.config.http.routers {
            let qname = qualify(name, &view.provider);
            let mut errors = Vec::new();
            let rule_text = r.rule.clone().unwrap_or_default();
            let rule = if rule_text.is_empty() {
                errors.push("the router has no rule".to_string());
                None
            } else {
                let syntax =
                    rules::Syntax::of_router(r.rule_syntax.as_deref().unwrap_or_default(), opts.default_rule_syntax)
                        .unwrap_or(rules::Syntax::V3);
                match rules::compile_with(&rule_text, syntax) {
                    Ok(rule) => Some(rule),
                    Err(e) => {
                        errors.push(format!("invalid rule: {e}{}", v2_hint(&rule_text, syntax, name)));
                        None
                    }
                }
            };
            let service = match &r.service {
                Some(s) => qualify(s, &view.provider),
                None => {
                    errors.push("the router names no service".to_string());
                    String::new()
                }
            };
            let service_index = service_idx.get(&service).copied();
            match service_index {
                Some(i) => {
                    snap.services[i].used_by.push(qname.clone());
                    if snap.services[i].status == Status::Disabled {
                        errors.push(format!("service `{service}` is disabled"));
                    }
                }
                None if opts.internal_services.contains(&service) => {}
                None if !service.is_empty() => errors.push(format!("service `{service}` does not exist")),
                None => {}
            }
            // A router without `tls` of its own takes its TLS entrypoints' options; they
            // must agree, since options are chosen per host, not per entrypoint.
            let from_entrypoints: BTreeSet<&str> = match &r.tls {
                Some(_) => BTreeSet::new(),
                None => opts
                    .entrypoint_tls_options
                    .iter()
                    .filter(|(ep, _)| match r.entry_points.is_empty() {
                        true => opts.default_routers_entrypoints().contains(ep),
                        false => r.entry_points.contains(ep),
                    })
                    .map(|(_, o)| o.as_str())
                    .collect(),
            };
            let named = match &r.tls {
                Some(t) => t.options.as_deref(),
                None => from_entrypoints.first().copied(),
            };
            if from_entrypoints.len() > 1 {
                errors.push(format!(
                    "its entrypoints give it different TLS options ({}); the router is not served (fail closed)",
                    from_entrypoints.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
            let uses = r.tls.is_some() || named.is_some();
            let (tls_options, resolved) =
                router_tls_options(&mut snap.tls_options, named, &view.provider, &qname, uses);
            let tls_options_spec = resolved
                .map_err(|why| errors.push(format!("{why}; the router is not served (fail closed)")))
                .ok();
            let middlewares: Vec<String> = r.middlewares.iter().map(|m| qualify(m, &view.provider)).collect();
            let mut expansion = Expansion::default();
            for m in &middlewares {
                if let Err(e) = expand(m, &mw_idx, &mut snap.middlewares, &qname, &mut expansion) {
                    errors.push(format!("{e}; the router is not served (fail closed)"));
                    break;
                }
            }
            let middleware_specs = expansion.out;
            for ep in &r.entry_points {
                if !opts.entrypoints.contains(ep) {
                    errors.push(format!("entrypoint `{ep}` does not exist"));
                }
            }
            let entry_points = if r.entry_points.is_empty() {
                opts.default_routers_entrypoints()
            } else {
                r.entry_points
                    .iter()
                    .filter(|e| opts.entrypoints.contains(e))
                    .cloned()
                    .collect()
            };
            // An unknown entrypoint alone does not disable the router (Traefik serves it
            // on the others); anything else does.
            let fatal = errors.iter().any(|e| !e.starts_with("entrypoint "));
            let status = if fatal || entry_points.is_empty() {
                Status::Disabled
            } else {
                Status::Enabled
            };
            // The certificates a resolver obtains for it: `tls.domains`, else one for the
            // Host names its rule requires.
            let cert_resolver = r.tls.as_ref().and_then(|t| t.cert_resolver.clone()).or_else(|| {
                // Only where the router serves TLS (its own `tls`, or the entrypoint's).
                opts.entrypoint_cert_resolvers
                    .iter()
                    .find(|(ep, _)| entry_points.contains(ep) && (r.tls.is_some() || opts.tls_entrypoints.contains(ep)))
                    .map(|(_, name)| name.clone())
            });
            let mut cert_domains: Vec<Vec<String>> = r
                .tls
                .iter()
                .flat_map(|t| &t.domains)
                .map(|d| {
                    std::iter::once(&d.main)
                        .chain(&d.sans)
                        .map(|n| n.to_ascii_lowercase())
                        .collect()
                })
                .collect();
            if cert_resolver.is_some() && cert_domains.is_empty() {
                match rule.as_ref().and_then(|rule| rule.required_hosts()) {
                    Some(hosts) if !hosts.is_empty() => cert_domains.push(hosts.iter().cloned().collect()),
                    _ => snap.diagnostics.push(
                        Diagnostic::warning(
                            format!("http.routers.{name}.tls.certResolver"),
                            "the rule requires no Host name and tls.domains is empty: no certificate to obtain",
                        )
                        .with_source(view.provider.clone()),
                    ),
                }
            }
            snap.routers.push(RouterEntry {
                name: qname,
                provider: view.provider.clone(),
                cert_resolver,
                cert_domains,
                priority: r
                    .priority
                    .filter(|p| *p != 0)
                    .unwrap_or_else(|| rules::default_priority(&rule_text)),
                rule_text,
                rule,
                entry_points,
                service,
                service_index,
                middlewares,
                middleware_specs,
                tls: r.tls.is_some(),
                tls_options,
                tls_options_spec,
                status,
                errors,
            });
        }
    }
    resolve_sni_options(opts, &mut snap);
    build_tcp(views, opts, &mut snap);
    for m in &snap.middlewares {
        for e in &m.errors {
            snap.diagnostics
                .push(Diagnostic::error(format!("middleware {}", m.name), e.clone()).with_source(m.provider.clone()));
        }
    }
    for r in &snap.routers {
        for e in &r.errors {
            snap.diagnostics
                .push(Diagnostic::error(format!("router {}", r.name), e.clone()).with_source(r.provider.clone()));
        }
    }

    // Route tables per (entrypoint, tls).
    let mut order: Vec<u32> = (0..snap.routers.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&snap.routers[a as usize], &snap.routers[b as usize]);
        (std::cmp::Reverse(ra.priority), &ra.name).cmp(&(std::cmp::Reverse(rb.priority), &rb.name))
    });
    for ep in &opts.entrypoints {
        for tls in [false, true] {
            let mut table = RouteTable::default();
            for &i in &order {
                let r = &snap.routers[i as usize];
                let tls_here = r.tls || opts.tls_entrypoints.contains(ep);
                if r.status != Status::Enabled || tls_here != tls || !r.entry_points.contains(ep) {
                    continue;
                }
                let prefix = r.rule.as_ref().and_then(|rule| rule.required_path_prefix());
                match r.rule.as_ref().and_then(|rule| rule.required_hosts()) {
                    Some(hosts) => {
                        for h in hosts {
                            table.by_host.entry(h.clone()).or_default().push(i, prefix);
                        }
                    }
                    None => table.any_host.push(i, prefix),
                }
            }
            snap.tables.insert((ep.clone(), tls), table);
        }
    }

    // TLS certificates, deduplicated.
    let mut seen = BTreeSet::new();
    for view in views {
        for c in &view.config.tls.certificates {
            if seen.insert((c.cert_file.clone(), c.key_file.clone())) {
                snap.certificates.push(c.clone());
            }
        }
        if snap.default_certificate.is_none() {
            snap.default_certificate = view.config.tls.default_certificate.clone();
        }
    }
    snap
}

/// Server URLs: `http`, `https` or `h2c` scheme, a host, an optional port, no path.
pub fn parse_server_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.trim().parse().map_err(|e| format!("invalid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https" | "h2c") => {}
        // A task behind its sidecar: mTLS to `host:port`, expecting the identity whose
        // SPIFFE path is the URL's path (ECS discovery writes these).
        Some("mesh") if uri.path().len() > 1 => {}
        Some("mesh") => {
            return Err("a mesh:// server needs the identity path (mesh://IP:PORT/ecs/CLUSTER/SERVICE)".into());
        }
        Some(other) => {
            return Err(format!("unsupported scheme `{other}` (use http, https or h2c)"));
        }
        None => return Err("missing scheme (http://, https:// or h2c://)".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host".into());
    }
    Ok(uri)
}

/// The `tls.options` a router names (`default` unless it names others), qualified with
/// its provider, and those options, or why it cannot have them; `uses`: the router is
/// recorded in their `usedBy`.
fn router_tls_options(
    all: &mut [TlsOptionsEntry],
    named: Option<&str>,
    provider: &str,
    router: &str,
    uses: bool,
) -> (String, Result<std::sync::Arc<crate::server_tls::TlsOptions>, String>) {
    let name = match named {
        Some(o) if !is_default_tls_options(o) => qualify(o, provider),
        _ => crate::server_tls::DEFAULT_OPTIONS.to_string(),
    };
    let resolved = match all.iter_mut().find(|o| o.name == name) {
        None => Err(format!("tls.options `{name}` do not exist")),
        Some(o) => {
            if uses {
                o.used_by.push(router.to_string());
            }
            o.spec.clone().ok_or_else(|| format!("tls.options `{name}` are broken"))
        }
    };
    (name, resolved)
}

/// `default` (or `default@<provider>`) names Traefik's default TLS options.
fn is_default_tls_options(name: &str) -> bool {
    name.is_empty() || name == "default" || name.starts_with("default@")
}

/// The deepest nesting of `chain` middlewares accepted.
const MAX_CHAIN_DEPTH: usize = 8;
/// The most middlewares one router may run once chains are expanded (chains of chains
/// from labels would otherwise fan out exponentially while the snapshot is built).
pub const MAX_ROUTER_MIDDLEWARES: usize = 64;
/// The most middleware references one router's expansion may visit, chains included.
const MAX_EXPANSION_VISITS: usize = 256;

/// One router's middlewares being expanded: the chains being walked, what came out, and
/// how many references were visited.
#[derive(Default)]
struct Expansion {
    stack: Vec<String>,
    out: Vec<std::sync::Arc<crate::middleware::Spec>>,
    visits: usize,
}

/// The largest request body copied to mirrors, whatever `maxBodySize` says (it is held in
/// memory while the mirrors are sent).
pub const MAX_MIRRORED_BODY: u64 = 4 * 1024 * 1024;

/// The most weighted services one request may pass through before a load balancer.
pub const MAX_WEIGHTED_DEPTH: usize = 8;

/// Weighted services' children resolved to indexes; a missing or disabled child, a cycle,
/// or nesting deeper than [`MAX_WEIGHTED_DEPTH`] disables the weighted service (and the
/// ones above it).
fn resolve_weighted(services: &mut [ServiceEntry], index: &HashMap<String, usize>) {
    for svc in services.iter_mut() {
        let Some(w) = &mut svc.weighted else { continue };
        let mut children = Vec::new();
        for name in &w.names {
            match index.get(name) {
                Some(&c) => children.push(c),
                None => svc.errors.push(format!("weighted service `{name}` does not exist")),
            }
        }
        w.children = children;
    }
    // Depth-first from each weighted service: cycles and depth, each service judged once
    // (a child named many times, at many levels, costs once).
    fn check(
        services: &[ServiceEntry],
        i: usize,
        path: &mut Vec<usize>,
        memo: &mut HashMap<usize, Result<(), String>>,
    ) -> Result<(), String> {
        if path.contains(&i) {
            return Err(format!("weighted services form a cycle through `{}`", services[i].name));
        }
        if path.len() >= MAX_WEIGHTED_DEPTH {
            return Err(format!("weighted services nested more than {MAX_WEIGHTED_DEPTH} deep"));
        }
        if let Some(done) = memo.get(&i) {
            return done.clone();
        }
        let verdict = match &services[i].weighted {
            None => match services[i].status {
                Status::Disabled => Err(format!("service `{}` is disabled", services[i].name)),
                Status::Enabled => Ok(()),
            },
            Some(_) if !services[i].errors.is_empty() => Err(format!("service `{}` is disabled", services[i].name)),
            Some(w) => {
                path.push(i);
                let mut verdict = Ok(());
                let mut unique = w.children.clone();
                unique.sort_unstable();
                unique.dedup();
                for c in unique {
                    verdict = check(services, c, path, memo);
                    if verdict.is_err() {
                        break;
                    }
                }
                path.pop();
                verdict
            }
        };
        // A depth error depends on where the service was reached from: not remembered.
        if !matches!(&verdict, Err(e) if e.contains("nested")) {
            memo.insert(i, verdict.clone());
        }
        verdict
    }
    let mut memo = HashMap::new();
    let verdicts: Vec<Option<String>> = (0..services.len())
        .map(|i| {
            services[i].weighted.as_ref()?;
            if !services[i].errors.is_empty() {
                return None;
            }
            check(services, i, &mut Vec::new(), &mut memo).err()
        })
        .collect();
    for (i, v) in verdicts.into_iter().enumerate() {
        if let Some(e) = v {
            if !services[i].errors.contains(&e) {
                services[i].errors.push(e);
            }
            services[i].status = Status::Disabled;
        } else if !services[i].errors.is_empty() {
            services[i].status = Status::Disabled;
        }
    }
}

/// A router's middleware `name`, in order, with chains expanded (their members qualified by
/// the chain's provider); records the router as a user of each. Missing, broken or
/// circular middlewares are errors, and so are chains nested deeper than
/// [`MAX_CHAIN_DEPTH`] or expanding to more than [`MAX_ROUTER_MIDDLEWARES`].
fn expand(
    name: &str,
    index: &HashMap<String, usize>,
    entries: &mut [MiddlewareEntry],
    router: &str,
    x: &mut Expansion,
) -> Result<(), String> {
    if x.stack.iter().any(|s| s == name) {
        return Err(format!(
            "middleware `{name}` includes itself ({} -> {name})",
            x.stack.join(" -> ")
        ));
    }
    x.visits += 1;
    if x.visits > MAX_EXPANSION_VISITS {
        return Err(format!(
            "more than {MAX_EXPANSION_VISITS} middleware references once chains are expanded"
        ));
    }
    let Some(&i) = index.get(name) else {
        return Err(format!("middleware `{name}` does not exist"));
    };
    if !entries[i].used_by.iter().any(|r| r == router) {
        entries[i].used_by.push(router.to_string());
    }
    if let Some(e) = entries[i].errors.first() {
        return Err(format!("middleware `{name}`: {e}"));
    }
    let Some(spec) = entries[i].spec.clone() else {
        return Err(format!("middleware `{name}` is not usable"));
    };
    if let crate::middleware::Spec::Chain(members) = spec.as_ref() {
        if x.stack.len() >= MAX_CHAIN_DEPTH {
            return Err(format!(
                "middleware `{name}`: chains nested more than {MAX_CHAIN_DEPTH} deep"
            ));
        }
        let provider = entries[i].provider.clone();
        x.stack.push(name.to_string());
        for m in members {
            expand(&qualify(m, &provider), index, entries, router, x)?;
        }
        x.stack.pop();
        return Ok(());
    }
    if x.out.len() >= MAX_ROUTER_MIDDLEWARES {
        return Err(format!(
            "more than {MAX_ROUTER_MIDDLEWARES} middlewares once chains are expanded"
        ));
    }
    x.out.push(spec);
    Ok(())
}

/// TCP services and routers: names qualified by provider, rules compiled, services
/// checked; a router with any problem is disabled and reported.
fn build_tcp(views: &[ProviderView], opts: &BuildOptions, snap: &mut Snapshot) {
    use super::snapshot::{TcpRouterEntry, TcpServiceEntry};
    let mut service_idx: HashMap<String, usize> = HashMap::new();
    for view in views {
        for (name, svc) in &view.config.tcp.services {
            let qname = qualify(name, &view.provider);
            let mut errors = Vec::new();
            if svc.servers.is_empty() {
                errors.push("the service has no servers".to_string());
            }
            service_idx.insert(qname.clone(), snap.tcp_services.len());
            snap.tcp_services.push(TcpServiceEntry {
                name: qname,
                provider: view.provider.clone(),
                servers: svc.servers.clone(),
                used_by: Vec::new(),
                status: if errors.is_empty() {
                    Status::Enabled
                } else {
                    Status::Disabled
                },
                errors,
            });
        }
    }
    let mut mw_idx: HashMap<String, usize> = HashMap::new();
    for view in views {
        for (name, mw) in &view.config.tcp.middlewares {
            let qname = qualify(name, &view.provider);
            let mut errors = Vec::new();
            let mut spec = None;
            if !mw.known {
                errors.push(format!("unknown tcp middleware type `{}`", mw.kind));
            } else {
                let kept = opts
                    .previous_tcp
                    .iter()
                    .find(|p| p.name == qname && p.kind == mw.kind && p.options == mw.options)
                    .and_then(|p| p.spec.clone());
                match kept.map(Ok).unwrap_or_else(|| {
                    crate::middleware::tcp::parse_tcp(&mw.kind, &mw.options).map(std::sync::Arc::new)
                }) {
                    Ok(s) => spec = Some(s),
                    Err(e) => errors.push(e),
                }
            }
            mw_idx.insert(qname.clone(), snap.tcp_middlewares.len());
            snap.tcp_middlewares.push(TcpMiddlewareEntry {
                name: qname,
                provider: view.provider.clone(),
                kind: mw.kind.clone(),
                options: mw.options.clone(),
                spec,
                used_by: Vec::new(),
                status: if errors.is_empty() {
                    Status::Enabled
                } else {
                    Status::Disabled
                },
                errors,
            });
        }
    }
    for m in &snap.tcp_middlewares {
        for e in &m.errors {
            snap.diagnostics.push(
                Diagnostic::error(format!("tcp middleware {}", m.name), e.clone()).with_source(m.provider.clone()),
            );
        }
    }
    for view in views {
        for (name, r) in &view.config.tcp.routers {
            let qname = qualify(name, &view.provider);
            let mut errors = Vec::new();
            let rule_text = r.rule.clone().unwrap_or_default();
            let rule = if rule_text.is_empty() {
                errors.push("the router has no rule".to_string());
                None
            } else {
                match rules::tcp::TcpRule::compile(&rule_text) {
                    Ok(rule) => Some(rule),
                    Err(e) => {
                        errors.push(format!("invalid rule: {e}"));
                        None
                    }
                }
            };
            if let Some(rule) = &rule
                && rule.needs_tls()
                && r.tls.is_none()
            {
                errors.push("a rule on the TLS server name needs `tls` (or `tls.passthrough`)".to_string());
            }
            // Fail closed: a middleware that is missing or broken keeps the router unserved.
            let middlewares: Vec<String> = r.middlewares.iter().map(|m| qualify(m, &view.provider)).collect();
            let mut middleware_specs = Vec::new();
            for m in &middlewares {
                let Some(&i) = mw_idx.get(m) else {
                    errors.push(format!(
                        "tcp middleware `{m}` does not exist; the router is not served (fail closed)"
                    ));
                    continue;
                };
                let entry = &mut snap.tcp_middlewares[i];
                entry.used_by.push(qname.clone());
                match (&entry.spec, entry.errors.first()) {
                    (Some(s), None) => middleware_specs.push(s.clone()),
                    (_, e) => errors.push(format!(
                        "tcp middleware `{m}`: {}; the router is not served (fail closed)",
                        e.map_or("not usable", String::as_str)
                    )),
                }
            }
            // A router that terminates TLS does so with its own options (the default
            // ones unless it names others), as Traefik's TLS handler per TCP route.
            let mut tls_options_spec = None;
            let mut refuse_tls = false;
            if let Some(t) = &r.tls {
                let named = t.options.as_deref();
                let (tls_options, resolved) =
                    router_tls_options(&mut snap.tls_options, named, &view.provider, &qname, !t.passthrough);
                match resolved {
                    _ if t.passthrough && tls_options != crate::server_tls::DEFAULT_OPTIONS => errors.push(format!(
                        "tls.options `{tls_options}` cannot be applied with passthrough (the gateway does not terminate TLS); the router is not served (fail closed)"
                    )),
                    _ if t.passthrough => {}
                    Ok(spec) => tls_options_spec = Some(spec),
                    Err(why) => {
                        refuse_tls = true;
                        errors.push(format!(
                            "{why}; the router is not served and its connections are closed (fail closed)"
                        ));
                    }
                }
            }
            let service = match &r.service {
                Some(s) => qualify(s, &view.provider),
                None => {
                    errors.push("the router names no service".to_string());
                    String::new()
                }
            };
            let service_index = service_idx.get(&service).copied();
            match service_index {
                Some(i) => {
                    snap.tcp_services[i].used_by.push(qname.clone());
                    if snap.tcp_services[i].status == Status::Disabled {
                        errors.push(format!("service `{service}` is disabled"));
                    }
                }
                None if !service.is_empty() => errors.push(format!("tcp service `{service}` does not exist")),
                None => {}
            }
            for ep in &r.entry_points {
                if !opts.entrypoints.contains(ep) {
                    errors.push(format!("entrypoint `{ep}` does not exist"));
                }
            }
            let entry_points: Vec<String> = if r.entry_points.is_empty() {
                opts.default_routers_entrypoints()
            } else {
                r.entry_points
                    .iter()
                    .filter(|e| opts.entrypoints.contains(e))
                    .cloned()
                    .collect()
            };
            let fatal = errors.iter().any(|e| !e.starts_with("entrypoint "));
            for e in &errors {
                snap.diagnostics.push(
                    Diagnostic::error(format!("tcp router {qname}"), e.clone()).with_source(view.provider.clone()),
                );
            }
            snap.tcp_routers.push(TcpRouterEntry {
                name: qname,
                provider: view.provider.clone(),
                // Traefik: `HostSNI(`*`)` alone defaults to -1, below every other router.
                priority: r.priority.filter(|p| *p != 0).unwrap_or_else(|| {
                    if rule.as_ref().is_some_and(|r| r.is_catch_all()) {
                        -1
                    } else {
                        rules::default_priority(&rule_text)
                    }
                }),
                rule_text,
                rule,
                entry_points: entry_points.clone(),
                service,
                service_index,
                tls_passthrough: r.tls.as_ref().map(|t| t.passthrough),
                tls_options_spec,
                refuse_tls,
                middlewares,
                middleware_specs,
                status: if fatal || entry_points.is_empty() {
                    Status::Disabled
                } else {
                    Status::Enabled
                },
                errors,
            });
        }
    }
    for s in &snap.tcp_services {
        for e in &s.errors {
            snap.diagnostics
                .push(Diagnostic::error(format!("tcp service {}", s.name), e.clone()).with_source(s.provider.clone()));
        }
    }
    snap.tcp_routers
        .sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
}
