//! Every Traefik static option a deployment on ECS can give, once, with what Berth does
//! with it: read (translated into Berth's settings), accepted with a note (harmless, no
//! effect), or refused with the reason. An option in none of these rows is unknown and
//! refused by name (exit 64), never silently ignored.
//!
//! Patterns are dotted, lowercase; `*` is one name (an entrypoint's, a header's) and a
//! trailing `**` any path below.

/// What a value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Present (`--api`, `api: {}`) or a boolean (`--api=false` turns it off).
    Section,
    Bool,
    Text,
    /// A list: several values in a file, comma-separated or repeated as a flag.
    List,
    Duration,
    Number,
}

/// What Berth does with an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Translated into Berth's settings (`translate.rs` reads it).
    Read,
    /// Accepted; it changes nothing in Berth, for the reason given.
    Note(&'static str),
    /// Refused at startup, for the reason given.
    Refused(&'static str),
    /// Not an option (a misspelling under a section Berth reads): refused as unknown.
    Unknown,
}

pub(crate) struct Opt {
    pub pattern: &'static str,
    pub kind: Kind,
    pub use_: Use,
}

const fn read(pattern: &'static str, kind: Kind) -> Opt {
    Opt {
        pattern,
        kind,
        use_: Use::Read,
    }
}

const fn note(pattern: &'static str, kind: Kind, why: &'static str) -> Opt {
    Opt {
        pattern,
        kind,
        use_: Use::Note(why),
    }
}

const fn refused(pattern: &'static str, why: &'static str) -> Opt {
    Opt {
        pattern,
        kind: Kind::Text,
        use_: Use::Refused(why),
    }
}

const fn unknown(pattern: &'static str) -> Opt {
    Opt {
        pattern,
        kind: Kind::Text,
        use_: Use::Unknown,
    }
}

use Kind::*;

const NO_ACME: &str = "this ACME option is not implemented yet (Berth's resolvers take email, caServer, \
                       caCertificates, caServerName, storage, keyType, certificatesDuration, httpChallenge, tlsChallenge, \
                       dnsChallenge with provider route53 and eab)";
const NO_PROVIDER: &str = "Berth reads the ecs and file providers only";
const NO_MIDDLEWARE_EP: &str = "entrypoint-wide middlewares are not implemented; attach them to the routers";

/// The rows, first match wins.
pub(crate) const OPTIONS: &[Opt] = &[
    read("configfile", Text),
    // Entrypoints.
    read("entrypoints.*", Section),
    read("entrypoints.*.address", Text),
    read("entrypoints.*.asdefault", Bool),
    read("entrypoints.*.http.redirections.entrypoint.to", Text),
    read("entrypoints.*.http.redirections.entrypoint.scheme", Text),
    read("entrypoints.*.http.redirections.entrypoint.permanent", Bool),
    read("entrypoints.*.http.redirections.entrypoint.priority", Number),
    read("entrypoints.*.http.tls", Section),
    read("entrypoints.*.http.tls.options", Text),
    read("entrypoints.*.http.tls.certresolver", Text),
    refused("entrypoints.*.http.tls.domains.**", NO_ACME),
    refused("entrypoints.*.http.middlewares", NO_MIDDLEWARE_EP),
    read("entrypoints.*.http.sanitizepath", Bool),
    read("entrypoints.*.http.encodedcharacters.*", Bool),
    read("entrypoints.*.forwardedheaders.trustedips", List),
    read("entrypoints.*.forwardedheaders.insecure", Bool),
    read("entrypoints.*.transport.respondingtimeouts.readtimeout", Duration),
    read("entrypoints.*.transport.respondingtimeouts.writetimeout", Duration),
    read("entrypoints.*.transport.respondingtimeouts.idletimeout", Duration),
    read("entrypoints.*.transport.lifecycle.requestacceptgracetimeout", Duration),
    read("entrypoints.*.transport.lifecycle.gracetimeout", Duration),
    note(
        "entrypoints.*.transport.keepalivemaxrequests",
        Number,
        "Berth keeps client connections open until idle",
    ),
    note(
        "entrypoints.*.transport.keepalivemaxtime",
        Duration,
        "Berth keeps client connections open until idle",
    ),
    note(
        "entrypoints.*.http2.maxconcurrentstreams",
        Number,
        "Berth's HTTP/2 limit applies (250 streams)",
    ),
    refused(
        "entrypoints.*.proxyprotocol.**",
        "the PROXY protocol is not implemented; the NLB in front preserves client addresses",
    ),
    refused("entrypoints.*.http3.**", "HTTP/3 is not implemented"),
    refused("entrypoints.*.udp.**", "UDP entrypoints are not implemented"),
    // Providers.
    read("providers.ecs", Section),
    read("providers.ecs.clusters", List),
    read("providers.ecs.autodiscoverclusters", Bool),
    read("providers.ecs.exposedbydefault", Bool),
    read("providers.ecs.constraints", Text),
    read("providers.ecs.healthytasksonly", Bool),
    read("providers.ecs.refreshseconds", Number),
    read("providers.ecs.defaultrule", Text),
    read("providers.ecs.region", Text),
    read("providers.ecs.accesskeyid", Text),
    read("providers.ecs.secretaccesskey", Text),
    read("providers.ecs.ecsanywhere", Bool),
    read("providers.file", Section),
    read("providers.file.filename", Text),
    read("providers.file.directory", Text),
    read("providers.file.watch", Bool),
    note(
        "providers.file.debugloggeneratedtemplate",
        Bool,
        "Berth's file provider has no templates",
    ),
    note(
        "providers.providersthrottleduration",
        Duration,
        "Berth coalesces changes itself",
    ),
    unknown("providers.ecs.**"),
    unknown("providers.file.**"),
    refused("providers.**", NO_PROVIDER),
    // API, dashboard, ping, metrics.
    read("api", Section),
    read("api.insecure", Bool),
    read("api.dashboard", Bool),
    note("api.debug", Bool, "Berth has no debug endpoints"),
    note("api.disabledashboardad", Bool, "Berth's dashboard shows no ads"),
    refused("api.basepath", "the API is served at Traefik's default paths only"),
    read("ping", Section),
    read("ping.entrypoint", Text),
    read("ping.manualrouting", Bool),
    read("ping.terminatingstatuscode", Number),
    read("metrics.prometheus", Section),
    read("metrics.prometheus.entrypoint", Text),
    read("metrics.prometheus.manualrouting", Bool),
    note(
        "metrics.prometheus.addentrypointslabels",
        Bool,
        "Berth's metrics always carry the entrypoint",
    ),
    note(
        "metrics.prometheus.addrouterslabels",
        Bool,
        "Berth's metrics always carry the router",
    ),
    note(
        "metrics.prometheus.addserviceslabels",
        Bool,
        "Berth's metrics always carry the service",
    ),
    note(
        "metrics.prometheus.buckets",
        List,
        "Berth's histograms use its own buckets",
    ),
    note(
        "metrics.prometheus.headerlabels.*",
        Text,
        "Berth does not label metrics by request headers",
    ),
    refused(
        "metrics.**",
        "Berth exports Prometheus metrics only (metrics.prometheus); OTLP metrics are not implemented",
    ),
    // Logs.
    read("log", Section),
    read("log.level", Text),
    read("log.format", Text),
    note("log.nocolor", Bool, "Berth colours nothing when not on a terminal"),
    refused("log.filepath", "Berth logs to stderr, where ECS collects it (awslogs)"),
    refused("log.**", "log rotation is not implemented; Berth logs to stderr"),
    read("accesslog", Section),
    read("accesslog.filepath", Text),
    read("accesslog.format", Text),
    note(
        "accesslog.bufferingsize",
        Number,
        "Berth's access log is written by its own thread",
    ),
    note(
        "accesslog.addinternals",
        Bool,
        "Berth's internal endpoints are never logged",
    ),
    refused(
        "accesslog.filters.**",
        "access-log filters are not implemented; every request is logged",
    ),
    refused(
        "accesslog.fields.**",
        "access-log field selection is not implemented; Traefik's default fields are written",
    ),
    // Tracing.
    read("tracing", Section),
    read("tracing.otlp", Section),
    read("tracing.otlp.http", Section),
    read("tracing.otlp.http.endpoint", Text),
    read("tracing.otlp.grpc", Section),
    read("tracing.otlp.grpc.endpoint", Text),
    read("tracing.otlp.grpc.insecure", Bool),
    read("tracing.servicename", Text),
    read("tracing.samplerate", Number),
    read("tracing.headers.*", Text),
    read("tracing.resourceattributes.*", Text),
    read("tracing.globalattributes.*", Text),
    note(
        "tracing.addinternals",
        Bool,
        "Berth never traces its internal endpoints",
    ),
    refused(
        "tracing.**",
        "Berth exports traces over OTLP only (tracing.otlp.http or tracing.otlp.grpc)",
    ),
    // Upstreams.
    read("serverstransport.insecureskipverify", Bool),
    read("serverstransport.rootcas", List),
    note(
        "serverstransport.maxidleconnsperhost",
        Number,
        "Berth's pool keeps every idle upstream connection until its idle timeout",
    ),
    read("serverstransport.forwardingtimeouts.dialtimeout", Duration),
    read("serverstransport.forwardingtimeouts.responseheadertimeout", Duration),
    read("serverstransport.forwardingtimeouts.idleconntimeout", Duration),
    refused("serverstransport.**", "this serversTransport option is not implemented"),
    refused("tcpserverstransport.**", "TCP servers transports are not implemented"),
    read("certificatesresolvers.*", Section),
    read("certificatesresolvers.*.acme", Section),
    read("certificatesresolvers.*.acme.email", Text),
    read("certificatesresolvers.*.acme.caserver", Text),
    read("certificatesresolvers.*.acme.cacertificates", List),
    read("certificatesresolvers.*.acme.caservername", Text),
    read("certificatesresolvers.*.acme.storage", Text),
    read("certificatesresolvers.*.acme.keytype", Text),
    read("certificatesresolvers.*.acme.certificatesduration", Number),
    read("certificatesresolvers.*.acme.httpchallenge", Section),
    read("certificatesresolvers.*.acme.httpchallenge.entrypoint", Text),
    read("certificatesresolvers.*.acme.tlschallenge", Section),
    read("certificatesresolvers.*.acme.eab", Section),
    read("certificatesresolvers.*.acme.eab.kid", Text),
    read("certificatesresolvers.*.acme.eab.hmacencoded", Text),
    read("certificatesresolvers.*.acme.dnschallenge", Section),
    read("certificatesresolvers.*.acme.dnschallenge.provider", Text),
    read("certificatesresolvers.*.acme.dnschallenge.delaybeforecheck", Duration),
    read("certificatesresolvers.*.acme.dnschallenge.propagation", Section),
    read(
        "certificatesresolvers.*.acme.dnschallenge.propagation.delaybeforechecks",
        Duration,
    ),
    note(
        "certificatesresolvers.*.acme.dnschallenge.resolvers",
        List,
        "Berth waits until Route 53 reports the record INSYNC on all its servers instead of asking resolvers",
    ),
    note(
        "certificatesresolvers.*.acme.dnschallenge.disablepropagationcheck",
        Bool,
        "Berth's propagation check is Route 53's INSYNC, always made",
    ),
    note(
        "certificatesresolvers.*.acme.dnschallenge.propagation.*",
        Bool,
        "Berth's propagation check is Route 53's INSYNC, always made",
    ),
    refused("certificatesresolvers.**", NO_ACME),
    read("core.defaultrulesyntax", Text),
    note("global.checknewversion", Bool, "Berth never calls out for new versions"),
    note("global.sendanonymoususage", Bool, "Berth sends no usage data"),
    refused(
        "experimental.**",
        "Traefik's experimental features (plugins) do not exist in Berth",
    ),
    refused("hostresolver.**", "Berth resolves names with the system resolver"),
    refused("spiffe.**", "Berth's mesh has its own identities (the mesh CA)"),
    refused("ocsp.**", "OCSP stapling is not implemented"),
    refused("pilot.**", "Traefik Pilot was removed in Traefik 2.7"),
    refused("hub.**", "Traefik Hub is not part of Berth"),
];

/// The row for `path` (segments as given; names keep their case), if any.
pub(crate) fn find(path: &[String]) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| matches(o.pattern, path))
}

fn matches(pattern: &str, path: &[String]) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    if let Some((&"**", head)) = pat.split_last() {
        return path.len() > head.len() && segments_match(head, &path[..head.len()]);
    }
    pat.len() == path.len() && segments_match(&pat, path)
}

fn segments_match(pat: &[&str], path: &[String]) -> bool {
    pat.iter()
        .zip(path)
        .all(|(p, s)| *p == "*" || p.eq_ignore_ascii_case(s))
}

/// Split a `TRAEFIK_*` variable's name (without the prefix, in words split at `_`) into
/// an option's path: each literal segment is one word, a name (`*`) one or more. The
/// fit with the most segments wins (`entrypoints.web.address` over an entrypoint named
/// `web_address`), then the first row; `None` when none fits.
pub(crate) fn split_env(words: &[&str]) -> Option<Vec<String>> {
    let mut best: Option<Vec<String>> = None;
    for o in OPTIONS {
        let pat: Vec<&str> = o.pattern.split('.').filter(|p| *p != "**").collect();
        let deep = o.pattern.ends_with(".**");
        if let Some(p) = fit(&pat, words, deep)
            && best.as_ref().is_none_or(|b| p.len() > b.len())
        {
            best = Some(p);
        }
    }
    best
}

fn fit(pat: &[&str], words: &[&str], deep: bool) -> Option<Vec<String>> {
    let Some((first, rest)) = pat.split_first() else {
        return match (words.is_empty(), deep) {
            (true, false) => Some(Vec::new()),
            (false, true) => Some(words.iter().map(|w| w.to_lowercase()).collect()),
            _ => None,
        };
    };
    if *first == "*" {
        // A name takes as few words as it can and still lets the rest fit.
        for n in 1..=words.len() {
            if let Some(mut tail) = fit(rest, &words[n..], deep) {
                let mut out = vec![words[..n].join("_").to_lowercase()];
                out.append(&mut tail);
                return Some(out);
            }
        }
        return None;
    }
    let (w, more) = words.split_first()?;
    if !first.eq_ignore_ascii_case(w) {
        return None;
    }
    let mut tail = fit(rest, more, deep)?;
    let mut out = vec![(*first).to_string()];
    out.append(&mut tail);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn rows_match_case_insensitively_with_names_and_subtrees() {
        assert_eq!(find(&path("entryPoints.Web.address")).unwrap().use_, Use::Read);
        assert_eq!(find(&path("providers.ecs.exposedByDefault")).unwrap().kind, Kind::Bool);
        assert_eq!(
            find(&path("certificatesResolvers.le.acme.email")).unwrap().use_,
            Use::Read
        );
        assert!(matches!(
            find(&path("certificatesResolvers.le.acme.preferredChain"))
                .unwrap()
                .use_,
            Use::Refused(_)
        ));
        assert!(matches!(
            find(&path("providers.docker.endpoint")).unwrap().use_,
            Use::Refused(NO_PROVIDER)
        ));
        assert!(find(&path("nonsense.key")).is_none());
        assert_eq!(find(&path("providers.ecs.clusterz")).unwrap().use_, Use::Unknown);
        assert!(find(&path("api.nonsense")).is_none());
    }

    #[test]
    fn environment_names_split_into_paths() {
        let split = |s: &str| split_env(&s.split('_').collect::<Vec<_>>());
        assert_eq!(split("PROVIDERS_ECS_CLUSTERS").unwrap(), path("providers.ecs.clusters"));
        assert_eq!(
            split("ENTRYPOINTS_WEB_ADDRESS").unwrap(),
            path("entrypoints.web.address")
        );
        // A name may hold underscores.
        assert_eq!(
            split("ENTRYPOINTS_MY_WEB_HTTP_REDIRECTIONS_ENTRYPOINT_TO").unwrap(),
            path("entrypoints.my_web.http.redirections.entrypoint.to")
        );
        assert_eq!(split("API_INSECURE").unwrap(), path("api.insecure"));
        assert_eq!(split("PING").unwrap(), path("ping"));
        assert_eq!(split("CERTIFICATESRESOLVERS_LE_ACME_EMAIL").unwrap().len(), 4);
        assert!(split("NONSENSE").is_none());
    }
}
