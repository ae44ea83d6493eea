//! Writing the Prometheus text exposition, for the gateway's and the sidecar's `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A family of counters by label values, kept sorted for rendering.
#[derive(Debug)]
pub struct Counters<K>(Mutex<BTreeMap<K, u64>>);

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Counters(Mutex::new(BTreeMap::new()))
    }
}

impl<K: Ord + Clone> Counters<K> {
    pub fn inc(&self, key: K) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
    }

    /// Forget the series whose labels `keep` refuses (their router or service is gone).
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| keep(k));
    }

    /// Every (labels, count), sorted by labels.
    pub fn snapshot(&self) -> Vec<(K, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }
}

/// A gRPC status as a label value: `0` to `16` (the codes gRPC defines), else `unknown`
/// (the status comes from the upstream; a series per invented code would grow unbounded).
pub fn grpc_code_label(code: Option<u32>) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    code.and_then(|c| CODES.get(usize::try_from(c).ok()?))
        .copied()
        .unwrap_or("unknown")
}

/// A label value, escaped as the format requires.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

const BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines; `labels` is already rendered (`a="b"`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_and_sort() {
        let c = Counters::default();
        c.inc("b");
        c.inc("a");
        c.inc("b");
        assert_eq!(c.snapshot(), vec![("a", 1), ("b", 2)]);
    }

    #[test]
    fn families_and_samples() {
        let mut out = String::new();
        family(&mut out, "x_total", "counter", "Things.");
        sample(&mut out, "x_total", &[("a", "q\"uote"), ("b", "2")], 3);
        sample(&mut out, "x_total", &[], 4);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"uote\",b=\"2\"} 3\nx_total 4\n"
        );
    }
}
