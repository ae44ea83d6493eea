//! The sidecar registry: which tasks' sidecars are registered, under a lease, and what
//! they say about their app's health.
//!
//! It owns only what sidecars report. ECS discovery stays the authority on which tasks
//! exist; it reads this registry's view ([`HealthView`]) to decide, for a task with a
//! sidecar, whether the endpoint gets traffic: a live registration's health wins over
//! ECS's (slower) container health, and a draining or lost one takes the task out at
//! once. A registration whose heartbeats stop is *lost*, not forgotten, so a killed
//! sidecar does not fall back to ECS's stale "RUNNING".

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_common::control::Registration;
use berth_common::identity::SpiffeId;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often sidecars heartbeat, and how long a lease lasts without one.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
pub(crate) const LEASE: Duration = Duration::from_secs(3);
/// Draining and lost registrations are kept this long (ECS drops the task long before).
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Heartbeating; traffic follows `healthy`.
    Live,
    /// Deregistered: the task is stopping.
    Draining,
    /// No heartbeat within the lease.
    Lost,
}

/// What ECS discovery needs to know about one task's sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SidecarHealth {
    pub state: State,
    pub healthy: bool,
}

impl SidecarHealth {
    /// `None` when the task may get traffic, else why not.
    pub(crate) fn excluded(&self) -> Option<&'static str> {
        match (self.state, self.healthy) {
            (State::Live, true) => None,
            (State::Live, false) => Some("its sidecar reports the app unhealthy"),
            (State::Draining, _) => Some("its sidecar deregistered: the task is stopping"),
            (State::Lost, _) => Some("its sidecar stopped heartbeating"),
        }
    }
}

/// Every registered task's sidecar health, by (cluster name, task id).
pub(crate) type HealthView = Arc<BTreeMap<(String, String), SidecarHealth>>;

/// One sidecar as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SidecarInfo {
    pub identity: String,
    pub task_arn: String,
    pub cluster: String,
    pub service: String,
    pub family: String,
    pub revision: String,
    pub address: Option<String>,
    pub inbound_port: Option<u16>,
    pub app_port: Option<u16>,
    pub version: Option<String>,
    pub state: State,
    pub healthy: bool,
    pub containers: Vec<berth_common::control::ContainerStatus>,
    pub registered_unix: f64,
    /// Since when the registration has said the app is healthy (null when it is not).
    pub healthy_since_unix: Option<f64>,
    pub last_heartbeat_unix: f64,
    pub last_heartbeat_age_seconds: f64,
    pub certificate_not_after_unix: Option<f64>,
    pub remote_addr: String,
}

struct Record {
    reg: Registration,
    identity: SpiffeId,
    state: State,
    registered: SystemTime,
    healthy_since: Option<SystemTime>,
    last_seen: Instant,
    last_seen_wall: SystemTime,
    changed: Instant,
    cert_not_after: Option<SystemTime>,
    remote: SocketAddr,
}

pub(crate) struct Registry {
    records: Mutex<HashMap<String, Record>>,
    tx: watch::Sender<HealthView>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `arn:aws:ecs:region:account:task/<cluster>/<id>` -> the task id.
fn task_id(arn: &str) -> String {
    arn.rsplit('/').next().unwrap_or(arn).to_string()
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            records: Mutex::default(),
            tx: watch::Sender::new(HealthView::default()),
        }
    }
}

impl Registry {
    pub(crate) fn subscribe(&self) -> watch::Receiver<HealthView> {
        self.tx.subscribe()
    }

    /// Register or heartbeat (the same message); the caller has checked the identity.
    pub(crate) fn upsert(
        &self,
        reg: Registration,
        identity: SpiffeId,
        remote: SocketAddr,
        cert_not_after: Option<SystemTime>,
    ) {
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match records.get_mut(&reg.task_arn) {
            Some(r) if r.state == State::Draining => {
                // A stopping task does not come back; late heartbeats only refresh it.
                r.last_seen = now;
                r.last_seen_wall = SystemTime::now();
            }
            Some(r) => {
                if r.state != State::Live || r.reg.healthy != reg.healthy {
                    r.changed = now;
                    r.healthy_since = reg.healthy.then(SystemTime::now);
                    tracing::info!(task = %reg.task_arn, healthy = reg.healthy, "sidecar health changed");
                }
                r.state = State::Live;
                r.reg = reg;
                r.identity = identity;
                r.last_seen = now;
                r.last_seen_wall = SystemTime::now();
                r.cert_not_after = cert_not_after.or(r.cert_not_after);
                r.remote = remote;
            }
            None => {
                tracing::info!(task = %reg.task_arn, %identity, healthy = reg.healthy, "sidecar registered");
                let healthy_since = reg.healthy.then(SystemTime::now);
                records.insert(
                    reg.task_arn.clone(),
                    Record {
                        reg,
                        identity,
                        state: State::Live,
                        registered: SystemTime::now(),
                        healthy_since,
                        last_seen: now,
                        last_seen_wall: SystemTime::now(),
                        changed: now,
                        cert_not_after,
                        remote,
                    },
                );
            }
        }
        self.publish(&records);
    }

    /// The task is stopping: take it out of the rotation now. Returns false when the
    /// task never registered.
    pub(crate) fn deregister(&self, task_arn: &str) -> bool {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = records.get_mut(task_arn) else {
            return false;
        };
        if r.state != State::Draining {
            tracing::info!(task = %task_arn, "sidecar deregistered; draining");
            r.state = State::Draining;
            r.changed = Instant::now();
            self.publish(&records);
        }
        true
    }

    /// Mark expired leases lost and forget old records; run every few hundred ms.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (arn, r) in records.iter_mut() {
            if r.state == State::Live && now.duration_since(r.last_seen) > LEASE {
                tracing::warn!(task = %arn, "sidecar lease expired; out of the rotation");
                r.state = State::Lost;
                r.changed = now;
                changed = true;
            }
        }
        let before = records.len();
        records.retain(|_, r| r.state == State::Live || now.duration_since(r.changed) < FORGET_AFTER);
        if changed || records.len() != before {
            self.publish(&records);
        }
    }

    pub(crate) async fn run_sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    fn publish(&self, records: &HashMap<String, Record>) {
        let view: BTreeMap<(String, String), SidecarHealth> = records
            .values()
            .map(|r| {
                (
                    (r.reg.cluster.clone(), task_id(&r.reg.task_arn)),
                    SidecarHealth {
                        state: r.state,
                        healthy: r.reg.healthy,
                    },
                )
            })
            .collect();
        self.tx.send_if_modified(|cur| {
            if **cur == view {
                return false;
            }
            *cur = Arc::new(view);
            true
        });
    }

    /// Every registration, for `GET /api/sidecars`, by task ARN.
    pub(crate) fn list(&self) -> Vec<SidecarInfo> {
        let now = Instant::now();
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<SidecarInfo> = records
            .values()
            .map(|r| SidecarInfo {
                identity: r.identity.to_string(),
                task_arn: r.reg.task_arn.clone(),
                cluster: r.reg.cluster.clone(),
                service: r.reg.service.clone(),
                family: r.reg.family.clone(),
                revision: r.reg.revision.clone(),
                address: r.reg.address.clone(),
                inbound_port: r.reg.inbound_port,
                app_port: r.reg.port,
                version: r.reg.sidecar_version.clone(),
                state: r.state,
                healthy: r.reg.healthy,
                containers: r.reg.containers.clone(),
                registered_unix: unix(r.registered),
                healthy_since_unix: r.healthy_since.map(unix),
                last_heartbeat_unix: unix(r.last_seen_wall),
                last_heartbeat_age_seconds: now.duration_since(r.last_seen).as_secs_f64(),
                certificate_not_after_unix: r.cert_not_after.map(unix),
                remote_addr: r.remote.to_string(),
            })
            .collect();
        out.sort_by(|a, b| a.task_arn.cmp(&b.task_arn));
        out
    }

    /// Live registrations.
    pub(crate) fn connected(&self) -> usize {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|r| r.state == State::Live)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(healthy: bool) -> Registration {
        Registration {
            task_arn: "arn:aws:ecs:us-east-1:1:task/demo/abc".into(),
            cluster: "demo".into(),
            service: "whoami".into(),
            family: "whoami".into(),
            revision: "1".into(),
            launch_type: None,
            network_mode: Some("awsvpc".into()),
            address: Some("127.0.100.1".into()),
            port: Some(80),
            labels: Default::default(),
            containers: vec![],
            healthy,
            inbound_port: Some(15443),
            sidecar_version: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_draining_and_lost_leases_are_published() {
        let r = Registry::default();
        let rx = r.subscribe();
        let id = SpiffeId::parse("spiffe://berth.local/ecs/demo/whoami").unwrap();
        let remote: SocketAddr = "127.0.100.1:5000".parse().unwrap();
        let key = ("demo".to_string(), "abc".to_string());
        r.upsert(reg(false), id.clone(), remote, None);
        assert_eq!(
            rx.borrow()[&key].excluded(),
            Some("its sidecar reports the app unhealthy")
        );
        r.upsert(reg(true), id.clone(), remote, None);
        assert_eq!(rx.borrow()[&key].excluded(), None);
        assert_eq!(r.connected(), 1);
        // No heartbeat for longer than the lease: lost, still remembered.
        tokio::time::advance(LEASE + Duration::from_millis(10)).await;
        r.sweep();
        assert_eq!(rx.borrow()[&key].state, State::Lost);
        assert_eq!(r.connected(), 0);
        // A heartbeat brings it back; a deregistration drains it for good.
        r.upsert(reg(true), id.clone(), remote, None);
        assert_eq!(rx.borrow()[&key].state, State::Live);
        assert!(r.deregister(&reg(true).task_arn));
        r.upsert(reg(true), id, remote, None);
        assert_eq!(rx.borrow()[&key].state, State::Draining);
        assert!(!r.deregister("arn:aws:ecs:us-east-1:1:task/demo/other"));
    }
}
