//! `rateLimit` (a token bucket per source: `average` requests per `period`, `burst`) and
//! `inFlightReq` (at most `amount` requests at once per source), by Traefik's
//! `sourceCriterion`: the client address (the TCP peer, or an `X-Forwarded-For` hop with
//! `ipStrategy`), a request header, or the host. Over the limit: 429.
//!
//! Their state lives in the middleware and is kept across configuration reloads as long
//! as the middleware's options do not change.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use http::header::{self, HeaderValue};

use super::allow::{IpStrategy, client_ip};
use super::options::Options;
use super::{Reply, Req, Step};
use crate::tree::Node;

/// The most sources a `rateLimit` tracks (Traefik's `maxSources`). Past it, idle buckets
/// go first, then the least recently used eighth, so memory stays bounded whatever keys
/// clients send.
const MAX_SOURCES: usize = 65_536;

/// What a request is counted by.
#[derive(Debug, Clone)]
pub enum Criterion {
    Ip(IpStrategy),
    Header(http::HeaderName),
    Host,
}

/// A source as a keyed hash of its criterion's value: a client-chosen header of kilobytes
/// costs eight bytes, and nobody outside can aim collisions at a seed they do not know.
type SourceKey = u64;

/// A criterion with the seed its keys are hashed with.
#[derive(Debug, Clone)]
struct Sources {
    criterion: Criterion,
    seed: RandomState,
}

impl Sources {
    fn parse(kind: &str, o: &Options<'_>) -> Result<Sources, String> {
        Ok(Sources {
            criterion: Criterion::parse(kind, o)?,
            seed: RandomState::new(),
        })
    }

    /// The request's source; requests without one (no header, no address) share a key.
    fn key(&self, req: &Req<'_>) -> SourceKey {
        match &self.criterion {
            Criterion::Ip(s) => self.seed.hash_one(client_ip(s, req)),
            Criterion::Header(h) => self.seed.hash_one(req.headers.get(h).map(|v| v.as_bytes())),
            Criterion::Host => self.seed.hash_one(req.host.to_ascii_lowercase()),
        }
    }
}

impl Criterion {
    fn parse(kind: &str, o: &Options<'_>) -> Result<Criterion, String> {
        let Some(c) = o.nested("sourceCriterion", &["ipStrategy", "requestHeaderName", "requestHost"])? else {
            return Ok(Criterion::Ip(IpStrategy::default()));
        };
        if let Some(h) = c.string("requestHeaderName")?.filter(|h| !h.is_empty()) {
            let name = http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("{kind}.sourceCriterion.requestHeaderName: `{h}`"))?;
            return Ok(Criterion::Header(name));
        }
        if c.bool("requestHost")? {
            return Ok(Criterion::Host);
        }
        Ok(Criterion::Ip(IpStrategy::parse(kind, &c)?))
    }
}

fn too_many(retry_after: Option<Duration>) -> Step {
    let mut r = Reply::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
    if let Some(d) = retry_after {
        let secs = d.as_secs_f64().ceil().max(1.0) as u64;
        r.headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
    }
    Step::Reply(r)
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    stamp: Instant,
}

#[derive(Debug)]
pub struct RateLimit {
    /// Tokens per second; 0 = no limit.
    rate: f64,
    burst: f64,
    sources: Sources,
    buckets: Mutex<HashMap<SourceKey, Bucket>>,
}

impl RateLimit {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("rateLimit", node, &["average", "period", "burst", "sourceCriterion"])?;
        let average = o.number("average")?.unwrap_or(0);
        let period = match o.string("period")? {
            Some(p) if !p.is_empty() => {
                crate::duration::parse_duration(&p).map_err(|e| format!("rateLimit.period: {e}"))?
            }
            _ => Duration::from_secs(1),
        };
        if period.is_zero() {
            return Err("rateLimit.period must be positive".into());
        }
        let burst = o.number("burst")?.unwrap_or(1).max(1);
        Ok(RateLimit {
            rate: average as f64 / period.as_secs_f64(),
            burst: burst as f64,
            sources: Sources::parse("rateLimit", &o)?,
            buckets: Mutex::default(),
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        if self.rate <= 0.0 {
            return Step::Next;
        }
        let key = self.sources.key(req);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&key) {
            make_room(&mut buckets, now, seconds(self.burst / self.rate));
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            stamp: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.stamp).as_secs_f64() * self.rate).min(self.burst);
        b.stamp = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Step::Next
        } else {
            too_many(Some(seconds((1.0 - b.tokens) / self.rate)))
        }
    }
}

/// Seconds as a duration, saturating: a huge `burst` over a tiny rate must not panic.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
}

/// Forget the buckets idle long enough to be full again (forgetting them changes nothing),
/// and if that is not enough, the least recently used eighth. Runs once per
/// `MAX_SOURCES / 8` new sources at most, so its cost per request stays constant.
fn make_room(buckets: &mut HashMap<SourceKey, Bucket>, now: Instant, refill: Duration) {
    buckets.retain(|_, b| now.duration_since(b.stamp) < refill);
    if buckets.len() < MAX_SOURCES {
        return;
    }
    let mut stamps: Vec<Instant> = buckets.values().map(|b| b.stamp).collect();
    let (_, cut, _) = stamps.select_nth_unstable(MAX_SOURCES / 8);
    let cut = *cut;
    buckets.retain(|_, b| b.stamp > cut);
}

#[derive(Debug)]
pub struct InFlightReq {
    amount: u64,
    sources: Sources,
    counts: Arc<Mutex<HashMap<SourceKey, u64>>>,
}

/// One request counted by an `inFlightReq`; released when dropped (when the response has
/// been sent).
#[derive(Debug)]
pub struct Hold {
    counts: Arc<Mutex<HashMap<SourceKey, u64>>>,
    key: SourceKey,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl InFlightReq {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new("inFlightReq", node, &["amount", "sourceCriterion"])?;
        let amount = o
            .number("amount")?
            .filter(|a| *a > 0)
            .ok_or("inFlightReq.amount must be positive")?;
        Ok(InFlightReq {
            amount,
            sources: Sources::parse("inFlightReq", &o)?,
            counts: Arc::default(),
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        let key = self.sources.key(req);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.amount {
            return too_many(None);
        }
        *n += 1;
        drop(counts);
        req.holds.push(Hold {
            counts: self.counts.clone(),
            key,
        });
        Step::Next
    }
}

/// `retry`: how many attempts in all and the first wait between them (doubling after).
/// Only requests that can be sent again are retried: idempotent and without a body, when
/// the connection failed or the app behind a sidecar was not listening.
///
/// Berth's gRPC extension: `grpcMethods` lists the methods that are safe to send again
/// (`/pkg.Service/Method`, or `/pkg.Service/*`); their requests (up to 64 KiB) are kept so
/// that an answer with one of `grpcCodes` (default `unavailable`) before any message goes
/// to another endpoint, as do connection failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub initial_interval: Duration,
    pub grpc_codes: Vec<u32>,
    pub grpc_methods: Vec<String>,
    /// `status` (Traefik 3.7): answers with these statuses go again, for requests that
    /// may be sent again (idempotent, or any with `retryNonIdempotentMethod`).
    pub statuses: Vec<(u16, u16)>,
    /// `maxRequestBodyBytes` (2 MiB): the largest body kept for a status retry; a larger
    /// request is not retried on its status.
    pub max_body: usize,
    /// `timeout`: no attempt starts after this long from the first.
    pub timeout: Option<Duration>,
    /// `disableRetryOnNetworkError` unset: failures before an answer go again.
    pub network_errors: bool,
    /// `retryNonIdempotentMethod`: POST, PATCH and LOCK are retried on their status too.
    pub non_idempotent: bool,
}

/// Traefik's `RetryDefaultMaxRequestBodyBytes`.
pub const RETRY_MAX_BODY: usize = 2 * 1024 * 1024;

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 1,
            initial_interval: Duration::from_millis(100),
            grpc_codes: vec![crate::grpc::code::UNAVAILABLE],
            grpc_methods: Vec::new(),
            statuses: Vec::new(),
            max_body: RETRY_MAX_BODY,
            timeout: None,
            network_errors: true,
            non_idempotent: false,
        }
    }
}

impl Retry {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new(
            "retry",
            node,
            &[
                "attempts",
                "initialInterval",
                "grpcCodes",
                "grpcMethods",
                "status",
                "maxRequestBodyBytes",
                "timeout",
                "disableRetryOnNetworkError",
                "retryNonIdempotentMethod",
            ],
        )?;
        let attempts = o
            .number("attempts")?
            .filter(|a| *a > 0 && *a <= 100)
            .ok_or("retry.attempts must be 1 to 100")?;
        let initial_interval = match o.string("initialInterval")? {
            Some(i) if !i.is_empty() => {
                crate::duration::parse_duration(&i).map_err(|e| format!("retry.initialInterval: {e}"))?
            }
            _ => Duration::from_millis(100),
        };
        let mut grpc_codes = Vec::new();
        for c in o.list("grpcCodes")? {
            grpc_codes.push(
                crate::grpc::code_from_name(&c)
                    .ok_or_else(|| format!("retry.grpcCodes: `{c}` is not a gRPC status code"))?,
            );
        }
        if grpc_codes.is_empty() {
            grpc_codes.push(crate::grpc::code::UNAVAILABLE);
        }
        let grpc_methods = o.list("grpcMethods")?;
        for m in &grpc_methods {
            let ok = m.starts_with('/')
                && m[1..]
                    .split_once('/')
                    .is_some_and(|(svc, method)| !svc.is_empty() && !method.is_empty());
            if !ok {
                return Err(format!(
                    "retry.grpcMethods: `{m}` is not /package.Service/Method (or /package.Service/*)"
                ));
            }
        }
        let statuses = super::errors::status_ranges(&o.list("status")?, "retry.status")?;
        let network_errors = !o.bool("disableRetryOnNetworkError")?;
        if !network_errors && statuses.is_empty() {
            // As Traefik: nothing would be retried.
            return Err("retry: disableRetryOnNetworkError needs status".into());
        }
        let max_body = match o.string("maxRequestBodyBytes")?.as_deref().map(str::trim) {
            None | Some("") => RETRY_MAX_BODY,
            Some("-1") => super::buffering::MAX_BUFFERED as usize,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n as u64 <= super::buffering::MAX_BUFFERED)
                .ok_or_else(|| format!("retry.maxRequestBodyBytes: `{v}` is not -1 or a size up to 16 MiB"))?,
        };
        let timeout = match o.string("timeout")? {
            Some(t) if !t.is_empty() => {
                let d = crate::duration::parse_duration(&t).map_err(|e| format!("retry.timeout: {e}"))?;
                (!d.is_zero()).then_some(d)
            }
            _ => None,
        };
        Ok(Retry {
            attempts: u32::try_from(attempts).unwrap_or(1),
            initial_interval,
            grpc_codes,
            grpc_methods,
            statuses,
            max_body,
            timeout,
            network_errors,
            non_idempotent: o.bool("retryNonIdempotentMethod")?,
        })
    }

    /// Whether an answer with `status` goes again.
    pub fn retries_status(&self, status: u16) -> bool {
        crate::http::status_in(&self.statuses, status)
    }

    /// Whether a request with `method` is retried on its status (Traefik: all but POST,
    /// PATCH and LOCK, unless `retryNonIdempotentMethod`).
    pub fn status_retries_method(&self, method: &http::Method) -> bool {
        !self.statuses.is_empty() && (self.non_idempotent || !matches!(method.as_str(), "POST" | "PATCH" | "LOCK"))
    }

    /// May a gRPC call to `path` be sent again?
    pub fn grpc_method_listed(&self, path: &str) -> bool {
        self.grpc_methods.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => m == path,
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use super::*;
    use crate::middleware::testing::node;
    use crate::middleware::{Spec, parse};

    fn hit(spec: &Spec, peer: &str, holds: &mut Vec<Hold>) -> Step {
        let mut h = HeaderMap::new();
        let mut req = Req {
            method: &Method::GET,
            tls: false,
            host: "h",
            path: "/".into(),
            query: None,
            headers: &mut h,
            peer: peer.parse().unwrap(),
            holds: Vec::new(),
            auth_cookies: Vec::new(),
            grpc_web: None,
            client_certs: None,
        };
        let step = crate::blocking::block_on(spec.request(&mut req));
        holds.append(&mut req.holds);
        step
    }

    #[test]
    fn rate_limit_allows_the_burst_then_refuses_per_source() {
        let s = parse(
            "rateLimit",
            &node(&[("average", "1"), ("period", "1m"), ("burst", "3")]),
        )
        .unwrap();
        let mut holds = Vec::new();
        for _ in 0..3 {
            assert_eq!(hit(&s, "10.0.0.1", &mut holds), Step::Next);
        }
        let Step::Reply(r) = hit(&s, "10.0.0.1", &mut holds) else {
            panic!("the 4th is refused")
        };
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers[0].0, header::RETRY_AFTER);
        assert_eq!(
            hit(&s, "10.0.0.2", &mut holds),
            Step::Next,
            "another source has its own bucket"
        );
        assert!(parse("rateLimit", &node(&[("average", "1"), ("period", "0s")])).is_err());
        // A burst of 10^18 at one request every 10^12 s: nothing overflows.
        let huge = parse(
            "rateLimit",
            &node(&[
                ("average", "1"),
                ("period", "277777777h"),
                ("burst", "1000000000000000000"),
            ]),
        )
        .unwrap();
        assert_eq!(hit(&huge, "10.0.0.1", &mut holds), Step::Next);
        assert!(seconds(1e300) == Duration::MAX && seconds(f64::NAN) == Duration::MAX);
    }

    #[test]
    fn rate_limit_sources_stay_bounded_whatever_clients_send() {
        let Spec::RateLimit(s) = parse(
            "rateLimit",
            &node(&[
                ("average", "1"),
                ("period", "1h"),
                ("sourceCriterion.requestHeaderName", "x-key"),
            ]),
        )
        .unwrap() else {
            panic!()
        };
        let big = "k".repeat(4000);
        for i in 0..(MAX_SOURCES * 2) {
            let mut h = HeaderMap::new();
            h.insert("x-key", format!("{big}{i}").parse().unwrap());
            let mut req = Req {
                method: &Method::GET,
                tls: false,
                host: "h",
                path: "/".into(),
                query: None,
                headers: &mut h,
                peer: "10.0.0.1".parse().unwrap(),
                holds: Vec::new(),
                auth_cookies: Vec::new(),
                grpc_web: None,
                client_certs: None,
            };
            let _ = s.request(&mut req);
        }
        let n = s.buckets.lock().unwrap().len();
        assert!(n <= MAX_SOURCES, "{n} buckets");
    }

    #[test]
    fn in_flight_requests_are_released_when_their_response_is_done() {
        let s = parse("inFlightReq", &node(&[("amount", "2")])).unwrap();
        let mut holds = Vec::new();
        assert_eq!(hit(&s, "10.0.0.1", &mut holds), Step::Next);
        assert_eq!(hit(&s, "10.0.0.1", &mut holds), Step::Next);
        assert_ne!(hit(&s, "10.0.0.1", &mut holds), Step::Next);
        holds.pop();
        assert_eq!(
            hit(&s, "10.0.0.1", &mut holds),
            Step::Next,
            "one finished, one more may start"
        );
        assert!(parse("inFlightReq", &node(&[("amount", "0")])).is_err());
    }

    #[test]
    fn retry_options() {
        let Spec::Retry(r) = parse("retry", &node(&[("attempts", "4"), ("initialInterval", "50ms")])).unwrap() else {
            panic!()
        };
        assert_eq!((r.attempts, r.initial_interval), (4, Duration::from_millis(50)));
        assert!(parse("retry", &node(&[("attempts", "0")])).is_err());
        assert!(r.network_errors && r.statuses.is_empty() && r.max_body == RETRY_MAX_BODY);
        // Traefik 3.7's options.
        let Spec::Retry(r) = parse(
            "retry",
            &node(&[
                ("attempts", "3"),
                ("status", "500-503,429"),
                ("maxRequestBodyBytes", "1024"),
                ("timeout", "2s"),
                ("retryNonIdempotentMethod", "true"),
            ]),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.statuses, vec![(500, 503), (429, 429)]);
        assert_eq!((r.max_body, r.timeout), (1024, Some(Duration::from_secs(2))));
        assert!(r.retries_status(502) && !r.retries_status(504));
        assert!(r.status_retries_method(&http::Method::POST));
        let Spec::Retry(idem) = parse("retry", &node(&[("attempts", "3"), ("status", "503")])).unwrap() else {
            panic!()
        };
        assert!(!idem.status_retries_method(&http::Method::POST));
        assert!(idem.status_retries_method(&http::Method::PUT));
        for bad in [
            &[("attempts", "3"), ("disableRetryOnNetworkError", "true")][..],
            &[("attempts", "3"), ("status", "5xx")],
            &[
                ("attempts", "3"),
                ("status", "503"),
                ("maxRequestBodyBytes", "99999999999"),
            ],
            &[("attempts", "3"), ("timeout", "soon")],
        ] {
            assert!(parse("retry", &node(bad)).is_err(), "{bad:?}");
        }
    }
}
