//! The east-west routing labels a service puts on its own tasks: `berth.mesh.weighted.*`
//! (a canary split, Traefik's weighted syntax over mesh names), `berth.mesh.retry.*` (the
//! retry middleware's options), `berth.mesh.timeout`, `berth.mesh.failover` (another
//! mesh service that takes the calls while this one has no healthy task) and
//! `berth.mesh.sticky.cookie.*` (Traefik's sticky cookie, per task). They become the
//! [`MeshPolicy`] that every caller's sidecar applies to calls to the service, as App
//! Mesh's virtual routers did. Each part is checked on its own: a bad value disables the
//! part it configures, with a diagnostic, and leaves the rest.

use std::time::Duration;

use crate::control::{MeshPolicy, MeshRetry, MeshSplit};
use crate::diag::Diagnostic;
use crate::middleware::limit::Retry;
use crate::middleware::options::Options;
use crate::tree::Node;

/// The most mesh services one split may name.
pub const MAX_SPLIT: usize = 16;
/// The largest weight of one split target.
const MAX_WEIGHT: u64 = 1_000_000;
/// The longest `berth.mesh.timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Read the keys after `mesh.` (`retry.attempts`, `weighted.services[0].name`,
/// `timeout`) of one prefix.
pub(super) fn policy(pairs: &[(&str, &str)], prefix: &str, diags: &mut Vec<Diagnostic>) -> MeshPolicy {
    let key_prefix = format!("{prefix}mesh.");
    let tree = Node::from_dotted(pairs.iter().copied(), &key_prefix, diags);
    let mut policy = MeshPolicy::default();
    for (key, node) in tree.entries() {
        let label = format!("{key_prefix}{key}");
        match key.to_ascii_lowercase().as_str() {
            "retry" => match Retry::parse(node) {
                Ok(r)
                    if r.timeout.is_some()
                        || !r.network_errors
                        || r.non_idempotent
                        || r.max_body != crate::middleware::limit::RETRY_MAX_BODY =>
                {
                    diags.push(Diagnostic::error(
                        label,
                        "retry.timeout, disableRetryOnNetworkError, retryNonIdempotentMethod and maxRequestBodyBytes are north-south only; calls to the service are not retried",
                    ))
                }
                Ok(r) => policy.retry = Some(MeshRetry::from_retry(&r)),
                Err(e) => diags.push(Diagnostic::error(
                    label,
                    format!("{e}; calls to the service are not retried"),
                )),
            },
            "timeout" => match timeout(node) {
                Ok(ms) => policy.timeout_ms = Some(ms),
                Err(e) => diags.push(Diagnostic::error(
                    label,
                    format!("{e}; callers keep their own response timeout"),
                )),
            },
            "weighted" => match split(node) {
                Ok(s) => policy.split = s,
                Err(e) => diags.push(Diagnostic::error(
                    label,
                    format!("{e}; the service's own tasks take every call"),
                )),
            },
            "sticky" => match crate::config::sticky_from_labels(node, &label, diags) {
                Ok(cookie) => policy.sticky = cookie,
                Err(()) => diags.push(Diagnostic::error(label, "calls to the service are not sticky")),
            },
            "failover" => match node {
                Node::Leaf(name) if super::valid_mesh_name(name.trim()) && !name.contains('@') => {
                    policy.failover = Some(name.trim().to_string())
                }
                _ => diags.push(Diagnostic::error(
                    label,
                    "expected the mesh name of one service; calls have no failover",
                )),
            },
            _ => diags.push(Diagnostic::error(
                label,
                "unknown mesh option (name, aliases, allow, outbound, ingress, weighted, retry, timeout, failover, sticky)",
            )),
        }
    }
    policy
}

fn timeout(node: &Node) -> Result<u64, String> {
    let Node::Leaf(v) = node else {
        return Err("expected a duration".into());
    };
    let d = crate::duration::parse_duration(v.trim())?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(format!("`{v}`: a timeout is above 0 and at most 1h"));
    }
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// `weighted.services[N].name` / `.weight`, in index order.
fn split(node: &Node) -> Result<Vec<MeshSplit>, String> {
    let o = Options::new("weighted", node, &["services"])?;
    let items: Vec<&Node> = match o.get("services") {
        None => return Err("weighted.services is required".into()),
        Some(Node::List(items)) => items.iter().collect(),
        Some(Node::Map(m)) => {
            let mut keyed = Vec::with_capacity(m.len());
            for (k, n) in m {
                let i: usize = k
                    .parse()
                    .map_err(|_| format!("weighted.services.{k}: expected services[N]"))?;
                keyed.push((i, n));
            }
            keyed.sort_by_key(|(i, _)| *i);
            keyed.into_iter().map(|(_, n)| n).collect()
        }
        Some(Node::Leaf(_)) => return Err("weighted.services: expected services[N].name".into()),
    };
    if items.len() > MAX_SPLIT {
        return Err(format!("more than {MAX_SPLIT} weighted services"));
    }
    let mut out: Vec<MeshSplit> = Vec::with_capacity(items.len());
    for item in items {
        let o = Options::new("weighted.services", item, &["name", "weight"])?;
        let name = o.required("name")?.trim().to_ascii_lowercase();
        if !super::valid_mesh_name(&name) || name.contains('@') {
            return Err(format!("`{name}` is not a mesh name"));
        }
        let weight = o.number("weight")?.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err(format!("weight {weight} of `{name}` is more than {MAX_WEIGHT}"));
        }
        if out.iter().any(|s| s.name == name) {
            return Err(format!("`{name}` is named twice"));
        }
        out.push(MeshSplit {
            name,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        });
    }
    if out.iter().all(|s| s.weight == 0) {
        return Err("weighted.services: no service has a weight above 0".into());
    }
    Ok(out)
}
