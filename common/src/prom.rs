//! Writing the Prometheus text exposition, for the gateway's and the sidecar's `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

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
