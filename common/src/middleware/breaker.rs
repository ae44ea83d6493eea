//! `circuitBreaker`, as Traefik's: an `expression` over the last 10 seconds of the
//! router's traffic — `NetworkErrorRatio()`, `ResponseCodeRatio(from, to, divFrom, divTo)`,
//! `LatencyAtQuantileMS(q)`, compared with numbers and combined with `&&`, `||` and
//! parentheses — checked every `checkPeriod`. When it holds, the breaker trips: requests
//! get `responseCode` (503) for `fallbackDuration`, then traffic comes back gradually over
//! `recoveryDuration` (tripping again if the expression holds), then the breaker stands by.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::options::Options;
use super::predicate::{self, Cmp};
use super::{Reply, Step};
use crate::tree::Node;

const WINDOW_BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_secs(1);
const MAX_SAMPLES: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
enum Metric {
    NetworkErrorRatio,
    ResponseCodeRatio(u16, u16, u16, u16),
    LatencyAtQuantileMs(f64),
}

/// One term: a metric compared with a number.
type Expr = predicate::Expr<(Metric, Cmp, f64)>;

fn metric(p: &mut predicate::Parser<'_>) -> Result<Metric, String> {
    if p.eat("NetworkErrorRatio") {
        p.args(0)?;
        return Ok(Metric::NetworkErrorRatio);
    }
    if p.eat("ResponseCodeRatio") {
        let a = p.args(4)?;
        let code = |x: f64| -> Result<u16, String> {
            if (0.0..=1000.0).contains(&x) {
                Ok(x as u16)
            } else {
                Err(format!("circuitBreaker.expression: bad status {x}"))
            }
        };
        return Ok(Metric::ResponseCodeRatio(
            code(a[0])?,
            code(a[1])?,
            code(a[2])?,
            code(a[3])?,
        ));
    }
    if p.eat("LatencyAtQuantileMS") {
        let a = p.args(1)?;
        if !(0.0..=100.0).contains(&a[0]) {
            return p.err("the quantile is a percentage (0 to 100)");
        }
        return Ok(Metric::LatencyAtQuantileMs(a[0]));
    }
    p.err("expected NetworkErrorRatio(), ResponseCodeRatio(a,b,c,d) or LatencyAtQuantileMS(q)")
}

fn parse_expression(s: &str) -> Result<Expr, String> {
    predicate::parse("circuitBreaker.expression", s, |p| {
        let m = metric(p)?;
        let cmp = p.expect_cmp()?;
        Ok((m, cmp, p.number()?))
    })
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    start: Option<Instant>,
    total: u64,
    network_errors: u64,
    codes: Vec<(u16, u64)>,
    latencies_ms: Vec<f64>,
}

#[derive(Debug)]
enum State {
    Standby,
    Tripped { until: Instant },
    Recovering { since: Instant, until: Instant },
}

#[derive(Debug)]
struct Inner {
    state: State,
    buckets: Vec<Bucket>,
    last_check: Option<Instant>,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    expr: Expr,
    check_period: Duration,
    fallback: Duration,
    recovery: Duration,
    response_code: StatusCode,
    inner: Mutex<Inner>,
}

fn duration(o: &Options<'_>, key: &str, default: Duration) -> Result<Duration, String> {
    match o.string(key)? {
        Some(s) if !s.is_empty() => {
            crate::duration::parse_duration(&s).map_err(|e| format!("circuitBreaker.{key}: {e}"))
        }
        _ => Ok(default),
    }
}

impl CircuitBreaker {
    pub fn parse(node: &Node) -> Result<Self, String> {
        let o = Options::new(
            "circuitBreaker",
            node,
            &[
                "expression",
                "checkPeriod",
                "fallbackDuration",
                "recoveryDuration",
                "responseCode",
            ],
        )?;
        let expr = parse_expression(&o.required("expression")?)?;
        let response_code = match o.number("responseCode")? {
            None => StatusCode::SERVICE_UNAVAILABLE,
            Some(c) => u16::try_from(c)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("circuitBreaker.responseCode: `{c}`"))?,
        };
        Ok(CircuitBreaker {
            expr,
            check_period: duration(&o, "checkPeriod", Duration::from_millis(100))?.max(Duration::from_millis(10)),
            fallback: duration(&o, "fallbackDuration", Duration::from_secs(10))?,
            recovery: duration(&o, "recoveryDuration", Duration::from_secs(10))?,
            response_code,
            inner: Mutex::new(Inner {
                state: State::Standby,
                buckets: vec![Bucket::default(); WINDOW_BUCKETS],
                last_check: None,
            }),
        })
    }

    fn value(metric: &Metric, buckets: &[Bucket], now: Instant) -> f64 {
        let live: Vec<&Bucket> = buckets
            .iter()
            .filter(|b| {
                b.start
                    .is_some_and(|s| now.duration_since(s) < BUCKET * WINDOW_BUCKETS as u32)
            })
            .collect();
        match metric {
            Metric::NetworkErrorRatio => {
                let total: u64 = live.iter().map(|b| b.total).sum();
                let errors: u64 = live.iter().map(|b| b.network_errors).sum();
                if total == 0 { 0.0 } else { errors as f64 / total as f64 }
            }
            Metric::ResponseCodeRatio(a, b, c, d) => {
                let count = |lo: u16, hi: u16| -> u64 {
                    live.iter()
                        .flat_map(|b| b.codes.iter())
                        .filter(|(code, _)| *code >= lo && *code < hi)
                        .map(|(_, n)| n)
                        .sum()
                };
                let den = count(*c, *d);
                if den == 0 {
                    0.0
                } else {
                    count(*a, *b) as f64 / den as f64
                }
            }
            Metric::LatencyAtQuantileMs(q) => {
                let mut all: Vec<f64> = live.iter().flat_map(|b| b.latencies_ms.iter().copied()).collect();
                if all.is_empty() {
                    return 0.0;
                }
                all.sort_by(f64::total_cmp);
                let idx = ((q / 100.0) * (all.len() - 1) as f64).round() as usize;
                all[idx.min(all.len() - 1)]
            }
        }
    }

    fn holds(expr: &Expr, buckets: &[Bucket], now: Instant) -> bool {
        expr.holds(&|(m, cmp, n): &(Metric, Cmp, f64)| cmp.holds(Self::value(m, buckets, now), *n))
    }

    /// The request phase: pass, or answer with the fallback while tripped (and for the
    /// share of traffic not yet let back while recovering).
    pub fn request(&self) -> Step {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let due = inner
            .last_check
            .is_none_or(|t| now.duration_since(t) >= self.check_period);
        match inner.state {
            State::Tripped { until } if now >= until => {
                // Recovery began when the fallback ended, whenever the next request comes.
                let end = until + self.recovery;
                inner.state = if now >= end {
                    State::Standby
                } else {
                    State::Recovering {
                        since: until,
                        until: end,
                    }
                };
                inner.buckets = vec![Bucket::default(); WINDOW_BUCKETS];
            }
            State::Recovering { until, .. } if now >= until => inner.state = State::Standby,
            _ => {}
        }
        if due && !matches!(inner.state, State::Tripped { .. }) {
            inner.last_check = Some(now);
            if Self::holds(&self.expr, &inner.buckets, now) {
                tracing::warn!(until = ?self.fallback, "circuit breaker tripped");
                inner.state = State::Tripped {
                    until: now + self.fallback,
                };
            }
        }
        let pass = match inner.state {
            State::Standby => true,
            State::Tripped { .. } => false,
            State::Recovering { since, .. } => {
                let share = now.duration_since(since).as_secs_f64() / self.recovery.as_secs_f64().max(0.001);
                fastrand::f64() < share
            }
        };
        if pass {
            Step::Next
        } else {
            Step::Reply(Reply::new(self.response_code, format!("{}\n", self.response_code)))
        }
    }

    /// Record a request's outcome (`network_error`: no answer from the upstream).
    pub fn observe(&self, status: u16, network_error: bool, latency: Duration) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let slot = inner
            .buckets
            .iter()
            .position(|b| b.start.is_some_and(|s| now.duration_since(s) < BUCKET))
            .unwrap_or_else(|| {
                // The oldest bucket starts over.
                let oldest = inner
                    .buckets
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| b.start)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                inner.buckets[oldest] = Bucket {
                    start: Some(now),
                    ..Default::default()
                };
                oldest
            });
        let b = &mut inner.buckets[slot];
        b.total += 1;
        if network_error {
            b.network_errors += 1;
        }
        match b.codes.iter_mut().find(|(c, _)| *c == status) {
            Some((_, n)) => *n += 1,
            None => b.codes.push((status, 1)),
        }
        if b.latencies_ms.len() < MAX_SAMPLES {
            b.latencies_ms.push(latency.as_secs_f64() * 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::node;
    use crate::middleware::{Spec, parse};

    fn breaker(expr: &str, extra: &[(&str, &str)]) -> CircuitBreaker {
        let mut pairs = vec![("expression", expr)];
        pairs.extend_from_slice(extra);
        match parse("circuitBreaker", &node(&pairs)).unwrap() {
            Spec::CircuitBreaker(b) => b,
            _ => unreachable!(),
        }
    }

    #[test]
    fn expressions_parse_and_refuse_garbage() {
        let e = parse_expression("NetworkErrorRatio() > 0.30 || ResponseCodeRatio(500, 600, 0, 600) > 0.25").unwrap();
        assert!(matches!(e, Expr::Or(..)));
        let e = parse_expression("(LatencyAtQuantileMS(50.0) > 100) && NetworkErrorRatio() >= 0.5").unwrap();
        assert!(matches!(e, Expr::And(..)));
        for bad in [
            "",
            "NetworkErrorRatio()",
            "Foo() > 1",
            "NetworkErrorRatio() > x",
            "LatencyAtQuantileMS(150) > 1",
            "(NetworkErrorRatio() > 1",
        ] {
            assert!(parse_expression(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_expressions_are_refused_not_fatal() {
        // A non-ASCII space once panicked on a char boundary: it is whitespace, as in Go.
        assert!(parse_expression("NetworkErrorRatio()\u{a0}>\u{a0}0.5").is_ok());
        for bad in [
            "NetworkErrorRatio() > 0.5 \u{a0}é",
            "é",
            "NetworkErrorRatio(\u{2003}1) > 1",
            "NetworkErrorRatio() >\u{10ffff}",
        ] {
            assert!(parse_expression(bad).is_err(), "{bad}");
        }
        let deep = format!("{}NetworkErrorRatio() > 1{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = parse_expression(&deep).expect_err("too long");
        assert!(e.contains("longer than"), "{e}");
        let nested = format!("{}NetworkErrorRatio() > 1{}", "(".repeat(17), ")".repeat(17));
        assert!(parse_expression(&nested).expect_err("too deep").contains("levels"));
        let ok = format!("{}NetworkErrorRatio() > 1{}", "(".repeat(16), ")".repeat(16));
        assert!(parse_expression(&ok).is_ok());
        let wide = vec!["NetworkErrorRatio() > 1"; 150].join(" && ");
        assert!(matches!(parse_expression(&wide), Ok(Expr::And(t)) if t.len() == 150));
    }

    #[test]
    fn trips_on_errors_falls_back_then_recovers() {
        let b = breaker(
            "ResponseCodeRatio(500, 600, 0, 600) > 0.5",
            &[
                ("checkPeriod", "10ms"),
                ("fallbackDuration", "100ms"),
                ("recoveryDuration", "100ms"),
            ],
        );
        assert_eq!(b.request(), Step::Next);
        for _ in 0..10 {
            b.observe(500, false, Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(15));
        let Step::Reply(r) = b.request() else { panic!("tripped") };
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        std::thread::sleep(Duration::from_millis(260));
        // Past the fallback and the recovery (with a fresh window): traffic passes again.
        assert!((0..20).all(|_| b.request() == Step::Next));
    }
}
