//! Gateway replicas find each other without a protocol of their own: ECS is the source of
//! truth. With `--mesh-peers-service NAME` the replicas are the running tasks of that
//! service (default: the service this gateway runs in, from its own task metadata); with
//! `--mesh-peers-dns NAME`, every address the name resolves to. The list (each replica's
//! control API, `IP:PORT`) goes to every sidecar in its mesh view, so sidecars keep a
//! connection to each replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::discovery::ecs::TaskLookup;

/// Where the other gateway replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// `--mesh-peers-service NAME`: the tasks of this ECS service (default: the service
    /// the gateway runs in, from its own task metadata).
    Service(String),
    /// `--mesh-peers-dns NAME`: every address the name resolves to.
    Dns(String),
    /// Neither given, and not running in an ECS service: this replica alone.
    Alone,
}

/// Each replica's control API, sorted.
pub(crate) type PeerList = Arc<Vec<String>>;

const SERVICE_EVERY: Duration = Duration::from_secs(1);
const DNS_EVERY: Duration = Duration::from_secs(5);

/// Follow the replicas; `listen` is this replica's control API address.
pub(crate) fn spawn(peers: Peers, listen: SocketAddr, lookup: Option<TaskLookup>) -> watch::Receiver<PeerList> {
    let me: Vec<String> = if listen.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![listen.to_string()]
    };
    let (tx, rx) = watch::channel(Arc::new(me.clone()));
    let port = listen.port();
    let publish = move |mut list: Vec<String>| {
        list.extend(me.iter().cloned());
        list.sort();
        list.dedup();
        tx.send_if_modified(|cur| {
            if **cur == list {
                return false;
            }
            tracing::info!(replicas = ?list, "gateway replicas");
            *cur = Arc::new(list);
            true
        });
    };
    match peers {
        Peers::Alone => {}
        Peers::Service(name) => {
            let Some(lookup) = lookup else {
                tracing::warn!(service = %name, "--mesh-peers-service needs ECS discovery (--ecs-cluster); replicas unknown");
                return rx;
            };
            tokio::spawn(async move {
                loop {
                    let found: Vec<String> = lookup
                        .running_tasks_of(&name)
                        .iter()
                        .filter_map(|t| t.address.as_deref().map(|a| berth_common::http::authority(a, port)))
                        .collect();
                    // Before the first round nothing is known: keep what we have.
                    if !found.is_empty() {
                        publish(found);
                    }
                    tokio::time::sleep(SERVICE_EVERY).await;
                }
            });
        }
        Peers::Dns(name) => {
            tokio::spawn(async move {
                loop {
                    match tokio::net::lookup_host((name.as_str(), port)).await {
                        Ok(addrs) => publish(addrs.map(|a| a.to_string()).collect()),
                        Err(e) => {
                            tracing::warn!(name = %name, error = %e, "--mesh-peers-dns: lookup failed; keeping the last list")
                        }
                    }
                    tokio::time::sleep(DNS_EVERY).await;
                }
            });
        }
    }
    rx
}

/// The ECS service this gateway runs in, from its task metadata (`ServiceName`), when it
/// runs in ECS (`ECS_CONTAINER_METADATA_URI_V4` set); one bounded attempt.
pub(crate) async fn own_service() -> Option<String> {
    let uri = std::env::var("ECS_CONTAINER_METADATA_URI_V4")
        .ok()
        .filter(|u| !u.is_empty())?;
    let v = berth_common::telemetry::resource::get_json(&format!("{}/task", uri.trim_end_matches('/'))).await?;
    v["ServiceName"].as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replicas_by_dns_name_and_alone() {
        // `localhost` resolves from /etc/hosts, never through the network.
        let rx = spawn(Peers::Dns("localhost".into()), "0.0.0.0:9443".parse().unwrap(), None);
        let mut found = false;
        for _ in 0..50 {
            if rx.borrow().iter().any(|p| p == "127.0.0.1:9443") {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(found, "{:?}", rx.borrow());
        let alone = spawn(Peers::Alone, "10.0.0.7:9443".parse().unwrap(), None);
        assert_eq!(**alone.borrow(), vec!["10.0.0.7:9443".to_string()]);
    }
}
