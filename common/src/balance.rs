//! Load balancing and passive health, per service.
//!
//! Power of two choices over peak-EWMA latency (the default) or smooth weighted round
//! robin. Health feedback lives in [`EndpointState`], keyed by endpoint URL in a
//! registry that survives snapshot swaps, so an ejected endpoint stays ejected and a
//! slow one stays expensive when unrelated configuration changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Strategy;

/// The EWMA decay time constant.
const TAU: Duration = Duration::from_secs(10);
/// The estimate for an endpoint with no sample yet: high enough that a new endpoint is
/// not flooded before it has proven itself, low enough that it gets traffic.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// After this long without a sample an estimate no longer counts.
const STALE: Duration = Duration::from_secs(1);
const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// Health and load of one endpoint, shared across snapshots.
#[derive(Debug)]
pub struct EndpointState {
    pending: AtomicU32,
    ewma: Mutex<Ewma>,
    ejected_until: Mutex<Option<Instant>>,
    consecutive_failures: AtomicU32,
    /// Set by the active health check (`loadBalancer.healthCheck`) when it fails.
    active_down: std::sync::atomic::AtomicBool,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
}

#[derive(Debug)]
struct Ewma {
    value_ns: f64,
    stamp: Instant,
    sampled: bool,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            pending: AtomicU32::new(0),
            ewma: Mutex::new(Ewma {
                value_ns: DEFAULT_RTT.as_nanos() as f64,
                stamp: Instant::now(),
                sampled: false,
            }),
            ejected_until: Mutex::new(None),
            consecutive_failures: AtomicU32::new(0),
            active_down: std::sync::atomic::AtomicBool::new(false),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl EndpointState {
    /// Record the active health check's verdict; returns whether it changed.
    pub fn set_active_healthy(&self, healthy: bool) -> bool {
        self.active_down.swap(!healthy, Ordering::Relaxed) == healthy
    }

    pub fn is_healthy(&self, now: Instant) -> bool {
        if self.active_down.load(Ordering::Relaxed) {
            return false;
        }
        match *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(until) => now >= until,
            None => true,
        }
    }

    /// The decayed latency estimate, `None` before the first sample and when the last
    /// one is older than [`STALE`]: an endpoint that lost every comparison for a while is
    /// priced like a new one, so it gets a request and a fresh sample instead of starving
    /// behind faster peers at low concurrency.
    fn latency(&self, now: Instant) -> Option<f64> {
        let ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        if !ewma.sampled || now.saturating_duration_since(ewma.stamp) > STALE {
            return None;
        }
        let elapsed = now.saturating_duration_since(ewma.stamp).as_secs_f64();
        Some((ewma.value_ns * (-elapsed / TAU.as_secs_f64()).exp()).max(1.0))
    }

    /// Peak-EWMA cost: latency estimate times (in-flight + 1). An endpoint without a
    /// sample yet is priced at `peer` (the other candidate's estimate) when there is one:
    /// it gets its share of traffic at once, and its in-flight count keeps it from being
    /// flooded; otherwise at the conservative default.
    fn cost(&self, now: Instant, peer: Option<f64>) -> f64 {
        let latency = self.latency(now).or(peer).unwrap_or(DEFAULT_RTT.as_nanos() as f64);
        let pending = f64::from(self.pending.load(Ordering::Relaxed));
        latency * (pending + 1.0)
    }

    fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        let mut ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        if !ewma.sampled {
            ewma.sampled = true;
            ewma.value_ns = sample;
        } else if sample > ewma.value_ns {
            // Peak: jump to a worse latency at once.
            ewma.value_ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(ewma.stamp).as_secs_f64();
            let w = (-elapsed / TAU.as_secs_f64()).exp();
            ewma.value_ns = ewma.value_ns * w + sample * (1.0 - w);
        }
        ewma.stamp = now;
    }

    /// A request finished and the endpoint answered.
    pub fn record_success(&self, rtt: Duration) {
        self.observe(rtt);
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The endpoint refused or timed out: eject it with exponential back-off.
    pub fn record_failure(&self) -> Duration {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = EJECT_BASE.saturating_mul(1u32 << n.min(5)).min(EJECT_MAX);
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + backoff);
        backoff
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight on an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub fn new(state: Arc<EndpointState>) -> Self {
        state.pending.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoint states by URL; entries for endpoints no longer configured are dropped at
/// each snapshot swap.
#[derive(Debug, Default)]
pub struct Registry {
    states: Mutex<HashMap<String, Arc<EndpointState>>>,
}

impl Registry {
    /// Resolve the states of `urls`, keeping existing ones and forgetting the rest.
    pub fn resolve<'a>(&self, urls: impl IntoIterator<Item = &'a str>) -> HashMap<String, Arc<EndpointState>> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let fresh: HashMap<String, Arc<EndpointState>> = urls
            .into_iter()
            .map(|u| (u.to_string(), states.get(u).cloned().unwrap_or_default()))
            .collect();
        *states = fresh.clone();
        fresh
    }
}

/// Chooses endpoints for one service.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    weights: Vec<u32>,
    wrr: Mutex<Vec<i64>>,
}

impl Balancer {
    pub fn new(strategy: Strategy, weights: Vec<u32>) -> Self {
        let n = weights.len();
        Balancer {
            strategy,
            weights,
            wrr: Mutex::new(vec![0; n]),
        }
    }

    /// Pick an endpoint index among healthy ones not in `exclude`; `None` when none is left.
    pub fn pick(&self, states: &[Arc<EndpointState>], exclude: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let eligible = |i: usize| !exclude.contains(&i) && self.weights[i] > 0 && states[i].is_healthy(now);
        match self.strategy {
            Strategy::P2c => {
                let candidates: Vec<usize> = (0..states.len()).filter(|&i| eligible(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    n => {
                        let a = fastrand::usize(..n);
                        let mut b = fastrand::usize(..n - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (candidates[a], candidates[b]);
                        // Weight scales the cost down: a weight-2 endpoint looks half as busy.
                        let (la, lb) = (states[a].latency(now), states[b].latency(now));
                        let ca = states[a].cost(now, lb) / f64::from(self.weights[a]);
                        let cb = states[b].cost(now, la) / f64::from(self.weights[b]);
                        Some(if ca <= cb { a } else { b })
                    }
                }
            }
            Strategy::Wrr => self.pick_wrr(eligible),
        }
    }

    /// Smooth weighted round robin (nginx's) over the indexes `eligible` allows: add
    /// weights, take the largest, subtract the total from it. Weighted services pick
    /// their children with it.
    pub fn pick_wrr(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.wrr.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if self.weights[i] == 0 || !eligible(i) {
                continue;
            }
            let w = i64::from(self.weights[i]);
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n).map(|_| Arc::new(EndpointState::default())).collect()
    }

    #[test]
    fn wrr_follows_weights_smoothly() {
        let b = Balancer::new(Strategy::Wrr, vec![5, 1, 1]);
        let s = states(3);
        let picks: Vec<usize> = (0..7).map(|_| b.pick(&s, &[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint() {
        let b = Balancer::new(Strategy::P2c, vec![1, 1]);
        let s = states(2);
        s[0].record_success(Duration::from_millis(200));
        s[1].record_success(Duration::from_millis(2));
        let fast = (0..100).filter(|_| b.pick(&s, &[]) == Some(1)).count();
        assert_eq!(fast, 100, "with two endpoints both are compared every time");
    }

    #[test]
    fn p2c_gives_new_endpoints_traffic_at_once() {
        let b = Balancer::new(Strategy::P2c, vec![1, 1, 1]);
        let s = states(3);
        s[0].record_success(Duration::from_millis(1));
        s[1].record_success(Duration::from_millis(1));
        // s[2] has no sample: it is priced like its peer and wins ties, so it is tried.
        let picked_new = (0..100).filter(|_| b.pick(&s, &[]) == Some(2)).count();
        assert!(picked_new > 0);
    }

    #[test]
    fn p2c_probes_an_endpoint_whose_estimate_went_stale() {
        let b = Balancer::new(Strategy::P2c, vec![1, 1]);
        let s = states(2);
        s[0].record_success(Duration::from_millis(200));
        s[1].record_success(Duration::from_millis(2));
        assert!((0..50).all(|_| b.pick(&s, &[]) == Some(1)));
        // Unsampled for longer than STALE: priced like its peer, so it is tried again.
        s[0].ewma.lock().unwrap().stamp = Instant::now() - STALE - Duration::from_millis(10);
        assert!((0..100).any(|_| b.pick(&s, &[]) == Some(0)));
    }

    #[test]
    fn p2c_counts_in_flight_requests() {
        let b = Balancer::new(Strategy::P2c, vec![1, 1]);
        let s = states(2);
        let _busy: Vec<InFlight> = (0..10).map(|_| InFlight::new(s[0].clone())).collect();
        assert_eq!(b.pick(&s, &[]), Some(1));
    }

    #[test]
    fn ejected_and_excluded_endpoints_are_skipped() {
        let b = Balancer::new(Strategy::P2c, vec![1, 1, 1]);
        let s = states(3);
        s[0].record_failure();
        for _ in 0..50 {
            let p = b.pick(&s, &[1]).unwrap();
            assert_eq!(p, 2);
        }
        assert_eq!(b.pick(&s, &[1, 2]), None);
        s[0].record_success(Duration::from_millis(1));
        assert_eq!(b.pick(&s, &[1, 2]), Some(0));
    }

    #[test]
    fn ejection_backs_off_exponentially() {
        let s = EndpointState::default();
        assert_eq!(s.record_failure(), Duration::from_secs(1));
        assert_eq!(s.record_failure(), Duration::from_secs(2));
        assert_eq!(s.record_failure(), Duration::from_secs(4));
        for _ in 0..10 {
            s.record_failure();
        }
        assert_eq!(s.record_failure(), EJECT_MAX);
    }

    #[test]
    fn registry_keeps_state_across_swaps() {
        let r = Registry::default();
        let a = r.resolve(["http://a", "http://b"]);
        a["http://a"].record_failure();
        let b = r.resolve(["http://a", "http://c"]);
        assert!(Arc::ptr_eq(&a["http://a"], &b["http://a"]));
        assert!(!b["http://a"].is_healthy(Instant::now()));
        assert!(!b.contains_key("http://b"));
    }
}
