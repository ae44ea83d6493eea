//! Registration: the task as TMDS shows it, pushed to the gateway.
//!
//! A poller reads TMDS every second, every 100 ms while the app is not healthy yet (and
//! probes the app on `BERTH_HEALTH_PATH` when set), and publishes the registration on a
//! `watch`. One registrar per gateway replica sends it at once when it changes (a health
//! push) and otherwise heartbeats at the interval the gateway asks for. The poller also
//! notices the task's `DesiredStatus` turning `STOPPED`, the signal to deregister before
//! the app is stopped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_common::control::{DEREGISTER_PATH, Deregistration, REGISTRATIONS_PATH, Registration, RegistrationAck};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::control::{ControlClient, ControlError, ControlPool};
use crate::metadata;
use crate::metrics::Metrics;

/// How often TMDS is read (it allows about 40 requests a second per task).
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// While the app is not healthy yet (starting), read faster, so that the task joins the
/// rotation as soon as the app is up: in a rolling deploy the old tasks start draining
/// as soon as ECS sees the new ones running.
pub(crate) const POLL_STARTING: Duration = Duration::from_millis(100);

/// What the poller learns each round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskState {
    pub registration: Registration,
    /// TMDS says the task is stopping.
    pub stopping: bool,
    /// The app container has exited (KnownStatus STOPPED).
    pub app_exited: bool,
}

/// Probes the app itself: `GET http://app{path}` answering 2xx or 3xx within a second.
pub(crate) struct Probe {
    pub app: SocketAddr,
    pub path: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Probe {
    pub(crate) fn new(app: SocketAddr, path: String) -> Probe {
        Probe {
            app,
            path,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub(crate) async fn check(&self) -> bool {
        let Ok(uri) = format!("http://{}{}", self.app, self.path).parse::<http::Uri>() else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.client.get(uri)).await,
            Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection()
        )
    }
}

/// Poll TMDS (and the probe) for ever, publishing each change; a failed read keeps the
/// last state.
pub(crate) async fn poll(
    uri: String,
    app_port: Option<u16>,
    inbound_port: u16,
    probe: Option<Probe>,
    tx: watch::Sender<TaskState>,
    metrics: Arc<Metrics>,
) {
    let mut healthy = false;
    loop {
        tokio::time::sleep(if healthy { POLL } else { POLL_STARTING }).await;
        let md = match metadata::fetch(&uri, Duration::from_secs(2)).await {
            Ok(md) => md,
            Err(e) => {
                tracing::warn!(error = %e, "task metadata read failed; keeping the last state");
                continue;
            }
        };
        let mut reg = md.registration(app_port);
        reg.inbound_port = Some(inbound_port);
        if let Some(p) = &probe
            && reg.healthy
        {
            reg.healthy = p.check().await;
        }
        healthy = reg.healthy;
        metrics.app_healthy(healthy);
        let state = TaskState {
            stopping: md.desired_status == "STOPPED",
            app_exited: md.app().is_some_and(|a| a.known_status == "STOPPED"),
            registration: reg,
        };
        tx.send_if_modified(|cur| {
            if *cur == state {
                return false;
            }
            if cur.registration.healthy != state.registration.healthy {
                tracing::info!(healthy = state.registration.healthy, "app health changed");
            }
            *cur = state;
            true
        });
    }
}

/// Keep one registrar per gateway replica (the list follows the mesh view), so every
/// replica learns a health change at once and losing one changes nothing for the others.
/// When `stop` turns true every registrar deregisters; this returns once they have.
pub(crate) async fn run(
    pool: Arc<ControlPool>,
    state: watch::Receiver<TaskState>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut replicas = pool.watch();
    let mut running: BTreeMap<SocketAddr, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let want = replicas.borrow_and_update().clone();
        running.retain(|addr, task| {
            let keep = want.contains(addr);
            if !keep {
                tracing::info!(replica = %addr, "gateway replica gone; no longer registering there");
                task.abort();
            }
            keep
        });
        for addr in want {
            if running.contains_key(&addr) {
                continue;
            }
            match pool.client(addr) {
                Ok(client) => {
                    let task = tokio::spawn(register_with(
                        client,
                        addr,
                        state.clone(),
                        stop.clone(),
                        metrics.clone(),
                    ));
                    running.insert(addr, task);
                }
                Err(e) => tracing::warn!(replica = %addr, error = %e, "cannot talk to a gateway replica"),
            }
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = replicas.changed() => if r.is_err() { break; },
            _ = stop.changed() => {}
        }
    }
    for task in running.into_values() {
        let _ = task.await;
    }
}

/// Register with one replica, heartbeat, push changes; deregister there when stopping.
async fn register_with(
    control: Arc<ControlClient>,
    replica: SocketAddr,
    mut state: watch::Receiver<TaskState>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let replica_name = replica.to_string();
    let mut interval = Duration::from_secs(1);
    let mut backoff = Duration::from_millis(100);
    let mut registered = false;
    let task_arn = state.borrow().registration.task_arn.clone();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let reg = state.borrow_and_update().registration.clone();
        let wait = match control.post::<_, RegistrationAck>(REGISTRATIONS_PATH, &reg).await {
            Ok(ack) => {
                if !registered {
                    tracing::info!(%replica, identity = %ack.identity, healthy = reg.healthy, "registered with the gateway");
                }
                registered = true;
                metrics.registered(&replica_name, true);
                backoff = Duration::from_millis(100);
                interval = Duration::from_millis(ack.heartbeat_ms.clamp(100, 60_000));
                interval
            }
            Err(e) => {
                if registered {
                    tracing::warn!(%replica, error = %e, "heartbeat failed; retrying");
                } else {
                    tracing::debug!(%replica, error = %e, ?backoff, "registration failed; retrying");
                }
                registered = false;
                metrics.registered(&replica_name, false);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff.min(interval)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = state.changed() => if r.is_err() { return; },
            r = stop.changed() => if r.is_err() { return; },
        }
    }
    if registered {
        deregister(&control, &task_arn).await;
        metrics.registered(&replica_name, false);
    }
}

/// Tell the gateway the task is stopping (a few quick attempts).
pub(crate) async fn deregister(control: &ControlClient, task_arn: &str) {
    let msg = Deregistration {
        task_arn: task_arn.to_string(),
    };
    for _ in 0..3 {
        match control.post::<_, serde_json::Value>(DEREGISTER_PATH, &msg).await {
            Ok(_) => {
                tracing::info!("deregistered: no new requests will come");
                return;
            }
            Err(ControlError::Refused { code, error, .. }) => {
                tracing::warn!(%code, %error, "deregistration refused");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "deregistration failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
