//! ECS discovery: the gateway finds tasks through the ECS API.
//!
//! One reconciler per cluster ([`reconcile`]), clusters in parallel under a bounded
//! number of concurrent rounds, every call through one rate limiter ([`client`]).
//! Each cluster's last *successful* round is its view; a failed round keeps the last
//! good one and records the error, so a throttled page never publishes a partial
//! configuration. The views are turned into Traefik-style configuration with the
//! container labels ([`endpoints`], `berth_common::labels`) and published as the
//! `ecs` provider.

pub(crate) mod client;
pub(crate) mod ec2;
pub(crate) mod endpoints;
pub(crate) use endpoints::HealthyOnly;
pub(crate) mod membership;
pub(crate) mod reconcile;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_common::config::{DynamicConfig, Strategy};
use berth_common::diag::Diagnostic;
use berth_common::labels::Merger;
use berth_common::labels::{self, ContainerTarget};
use berth_common::routing::ProviderView;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};

use crate::discovery::registry::{HealthView, SidecarHealth};
use crate::metrics::Metrics;
use berth_common::control::{MeshPolicy, MeshService};
use client::{EcsApi, RateLimiter};
use reconcile::{ClusterReconciler, ClusterView, InstanceAddresses, TaskDefCache};

pub(crate) const PROVIDER: &str = "ecs";
/// Traefik's default rule for the ECS provider.
pub(crate) const DEFAULT_RULE: &str = "Host(`{{ normalize .Name }}`)";

/// Settings from `--ecs-*`.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    pub clusters: Vec<String>,
    pub all_clusters: bool,
    pub region: Option<String>,
    pub refresh: Duration,
    pub healthy_only: endpoints::HealthyOnly,
    pub default_rule: String,
    pub exposed_by_default: bool,
    pub api_rate: f64,
    pub api_burst: f64,
    pub concurrency: usize,
    /// Traefik's `providers.ecs.constraints`: containers whose labels fail it are not
    /// looked at.
    pub constraints: Option<labels::Constraint>,
    /// Traefik's `accessKeyID`/`secretAccessKey`, instead of the standard chain.
    /// (Its `Debug` hides the secret.)
    pub credentials: Option<aws_credential_types::Credentials>,
    /// The load-balancing strategy of services without one (Traefik mode: wrr).
    pub default_strategy: Strategy,
}

/// One cluster's discovery state, for the admin API.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterStatus {
    pub name: String,
    #[serde(skip)]
    pub last_success: Option<SystemTime>,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_unix: Option<f64>,
    pub rounds: u64,
    pub failed_rounds: u64,
    pub tasks: usize,
    pub routable_containers: usize,
    pub stale_seconds: Option<f64>,
}

fn unix(t: SystemTime) -> Option<f64> {
    t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

/// Shared between the provider and the admin API.
#[derive(Debug, Default)]
pub(crate) struct EcsStatus {
    clusters: Mutex<BTreeMap<String, ClusterStatus>>,
}

impl EcsStatus {
    pub(crate) fn clusters(&self) -> Vec<ClusterStatus> {
        let now = SystemTime::now();
        self.clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .map(|mut c| {
                c.stale_seconds = c
                    .last_success
                    .and_then(|t| now.duration_since(t).ok())
                    .map(|d| d.as_secs_f64());
                c
            })
            .collect()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut ClusterStatus)) {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let st = map.entry(name.to_string()).or_insert_with(|| ClusterStatus {
            name: name.to_string(),
            ..Default::default()
        });
        f(st);
    }
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("ECS discovery: {0}")]
pub struct EcsStartError(String);

/// The running provider's handles.
pub(crate) struct EcsProvider {
    pub view: watch::Receiver<ProviderView>,
    /// The east-west services (identities as SPIFFE paths, `ecs/<cluster>/<service>`).
    pub mesh: watch::Receiver<MeshTable>,
    pub status: Arc<EcsStatus>,
    pub lookup: TaskLookup,
}

/// What the identity checks need to know about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskFacts {
    pub task_arn: String,
    pub cluster: String,
    pub last_status: String,
    pub desired_status: String,
    /// The ECS service ECS lists the task in, else its task-definition family
    /// ([`membership`]); empty when it may have no identity.
    pub service: String,
    /// Why the task may have no identity (claims a service it is not in, or takes a
    /// service's name while outside it).
    pub refused: Option<String>,
    /// The address its connections come from, when known.
    pub address: Option<String>,
    /// The task's `group` as whoever started it set it (`service:NAME`, `family:NAME`):
    /// good for finding the gateway's own replicas, never for an identity.
    pub group: String,
    /// The task's definition, whose `taskRoleArn` is the task's role unless overridden.
    pub task_definition_arn: String,
    /// `overrides.taskRoleArn`, when whoever started the task set one.
    pub role_override: Option<String>,
}

/// Finds a task for the control plane: from the reconciler's last view, or at once by
/// DescribeTasks (coalesced into batches of up to 100 over a few milliseconds, through
/// the rate limiter), so a new task never waits for the next round.
#[derive(Clone)]
pub(crate) struct TaskLookup {
    shared: Arc<Shared>,
}

type Waiters = Vec<(
    String,
    tokio::sync::oneshot::Sender<Result<Option<TaskFacts>, client::ApiError>>,
)>;

/// How long "ECS does not know this task" is believed: a task that does not exist is
/// not described again for each of its requests.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// The most unknown task ARNs remembered.
const MAX_UNKNOWN: usize = 4096;

impl TaskLookup {
    /// Whether the last views already hold this task (no ECS call needed).
    pub(crate) fn is_known(&self, task_arn: &str) -> bool {
        let Some(cluster) = task_arn.split('/').rev().nth(1) else {
            return false;
        };
        self.shared
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .is_some_and(|k| k.contains_key(task_arn))
    }

    pub(crate) async fn find(&self, task_arn: &str) -> Result<Option<TaskFacts>, client::ApiError> {
        let found = self.find_uncached(task_arn).await;
        if let Ok(None) = found {
            let mut unknown = self.shared.unknown.lock().unwrap_or_else(|e| e.into_inner());
            if unknown.len() >= MAX_UNKNOWN {
                unknown.retain(|_, at| at.elapsed() < UNKNOWN_TTL);
            }
            if unknown.len() < MAX_UNKNOWN {
                unknown.insert(task_arn.to_string(), tokio::time::Instant::now());
            }
        }
        found
    }

    async fn find_uncached(&self, task_arn: &str) -> Result<Option<TaskFacts>, client::ApiError> {
        // arn:aws:ecs:region:account:task/<cluster>/<id>
        let Some(cluster) = task_arn.split('/').rev().nth(1).map(str::to_string) else {
            return Ok(None);
        };
        let known = self
            .shared
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cluster)
            .cloned();
        if let Some(facts) = known.and_then(|k| k.get(task_arn).cloned()) {
            return Ok(Some(facts));
        }
        if !self.shared.clusters_known(&cluster) {
            return Ok(None);
        }
        let recently_unknown = self
            .shared
            .unknown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_arn)
            .is_some_and(|at| at.elapsed() < UNKNOWN_TTL);
        if recently_unknown {
            return Ok(None);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cluster)
            .or_default()
            .push((task_arn.to_string(), tx));
        self.shared.pending_changed.notify_one();
        rx.await.unwrap_or(Ok(None))
    }
}

impl TaskLookup {
    /// The task's IAM role: its `overrides.taskRoleArn`, else its definition's
    /// `taskRoleArn` (definitions never change, so each is described once); `None`: the
    /// task has no role.
    pub(crate) async fn task_role_arn(&self, task: &TaskFacts) -> Result<Option<String>, client::ApiError> {
        if let Some(r) = &task.role_override {
            return Ok(Some(r.clone()));
        }
        let Some(def) =
            reconcile::task_definition(&self.shared.taskdefs, &self.shared.api, &task.task_definition_arn).await?
        else {
            return Ok(None);
        };
        Ok(def.task_role_arn().filter(|r| !r.is_empty()).map(str::to_string))
    }

    /// The task definition's `proxyConfiguration`, for its sidecar's transparent mode;
    /// `None` when it has none, or one ECS would not accept (reported).
    pub(crate) async fn proxy_config(
        &self,
        task: &TaskFacts,
    ) -> Result<Option<berth_common::proxy_config::ProxyConfig>, client::ApiError> {
        let Some(def) =
            reconcile::task_definition(&self.shared.taskdefs, &self.shared.api, &task.task_definition_arn).await?
        else {
            return Ok(None);
        };
        Ok(endpoints::proxy_config(&def).and_then(|r| {
            r.map_err(|e| tracing::warn!(task = %task.task_arn, error = %e, "the task's proxyConfiguration is ignored"))
                .ok()
        }))
    }

    /// The running tasks of an ECS service in the discovered clusters, from the last views.
    pub(crate) fn running_tasks_of(&self, service: &str) -> Vec<TaskFacts> {
        let known = self.shared.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out: Vec<TaskFacts> = known
            .values()
            .flat_map(|tasks| tasks.values())
            .filter(|t| {
                t.group.strip_prefix("service:") == Some(service)
                    && t.last_status == "RUNNING"
                    && t.desired_status == "RUNNING"
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.task_arn.cmp(&b.task_arn));
        out
    }
}

fn facts(
    cluster: &str,
    task: &aws_sdk_ecs::types::Task,
    address: Option<String>,
    membership: Option<&membership::Membership>,
) -> Option<TaskFacts> {
    use membership::Membership;
    let (service, refused) = match membership {
        Some(Membership::Service(n) | Membership::Standalone(n)) => (n.clone(), None),
        Some(Membership::Refused(why)) => (String::new(), Some(why.clone())),
        None => (
            String::new(),
            Some("the task's definition has no berth-sidecar, or its service is not checked yet".to_string()),
        ),
    };
    Some(TaskFacts {
        task_arn: task.task_arn()?.to_string(),
        cluster: cluster.to_string(),
        last_status: task.last_status().unwrap_or_default().to_string(),
        desired_status: task.desired_status().unwrap_or_default().to_string(),
        service,
        refused,
        address,
        group: task.group().unwrap_or_default().to_string(),
        task_definition_arn: task.task_definition_arn().unwrap_or_default().to_string(),
        role_override: task
            .overrides()
            .and_then(|o| o.task_role_arn())
            .filter(|r| !r.is_empty())
            .map(str::to_string),
    })
}

/// Serve lookups of unknown tasks in batches.
async fn lookup_loop(shared: Arc<Shared>) {
    loop {
        shared.pending_changed.notified().await;
        // Let concurrent requests gather into one call.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let batches: Vec<(String, Waiters)> = {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *p).into_iter().collect()
        };
        for (cluster, mut all) in batches {
            while !all.is_empty() {
                let waiters: Waiters = all.drain(..all.len().min(reconcile::BATCH)).collect();
                let arns: Vec<String> = waiters.iter().map(|(a, _)| a.clone()).collect();
                let described = shared.api.describe_tasks(&cluster, &arns).await;
                // A task asking for its identity: which service it is in, as ECS lists it.
                let result = match described {
                    Ok((tasks, failures)) => match shared.memberships.resolve(&shared.api, &cluster, &tasks).await {
                        Ok(m) => Ok((tasks, failures, m)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match result {
                    Ok((tasks, _failures, memberships)) => {
                        if let Some(adopter) = shared.adopters.lock().unwrap_or_else(|e| e.into_inner()).get(&cluster)
                            && !tasks.is_empty()
                        {
                            let _ = adopter.send(tasks.clone());
                        }
                        for (arn, tx) in waiters {
                            let found = tasks
                                .iter()
                                .find(|t| t.task_arn() == Some(arn.as_str()))
                                .and_then(|t| facts(&cluster, t, endpoints::awsvpc_address(t), memberships.get(&arn)));
                            let _ = tx.send(Ok(found));
                        }
                    }
                    Err(e) => {
                        for (_, tx) in waiters {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// Build the AWS clients from the standard chain and start reconciling.
pub(crate) async fn start(
    settings: EcsSettings,
    metrics: Arc<Metrics>,
    sidecars: watch::Receiver<HealthView>,
) -> Result<EcsProvider, EcsStartError> {
    let sdk = crate::aws::sdk_config(settings.region.clone(), settings.credentials.clone())
        .await
        .map_err(|e| EcsStartError(format!("{e}: set --ecs-region or AWS_REGION")))?;
    let client = aws_sdk_ecs::Client::new(&sdk);
    let limiter = Arc::new(RateLimiter::new(settings.api_rate, settings.api_burst));
    let api = EcsApi::new(client, limiter.clone(), metrics.clone());
    let ec2: Option<Arc<dyn InstanceAddresses>> = match (sdk.credentials_provider(), sdk.region()) {
        (Some(credentials), Some(region)) => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL_EC2")
                .ok()
                .or_else(|| sdk.endpoint_url().map(str::to_string))
                .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
            let roots = berth_common::upstream::trust_roots(None).map_err(|e| EcsStartError(e.to_string()))?;
            Some(Arc::new(ec2::Ec2Lookup {
                api: crate::aws::Signed::new(endpoint, region.to_string(), "ec2", credentials, roots),
                limiter,
                metrics,
            }))
        }
        _ => None,
    };
    Ok(spawn(settings, api, ec2, sidecars))
}

/// Start reconciling with an already-built API client.
pub(crate) fn spawn(
    settings: EcsSettings,
    api: EcsApi,
    ec2: Option<Arc<dyn InstanceAddresses>>,
    sidecars: watch::Receiver<HealthView>,
) -> EcsProvider {
    let (tx, rx) = watch::channel(ProviderView {
        provider: PROVIDER.into(),
        pending: Some("ECS discovery has not finished a round yet".into()),
        ..Default::default()
    });
    let status = Arc::new(EcsStatus::default());
    let shared = Arc::new(Shared {
        settings,
        api,
        status: status.clone(),
        views: Mutex::new(BTreeMap::new()),
        changed: Notify::new(),
        taskdefs: TaskDefCache::default(),
        rounds: Semaphore::new(0),
        ec2,
        known: Mutex::default(),
        pending: Mutex::default(),
        pending_changed: Notify::new(),
        adopters: Mutex::default(),
        memberships: Arc::default(),
        unknown: Mutex::default(),
        listed: Mutex::default(),
    });
    shared.rounds.add_permits(shared.settings.concurrency.max(1));
    tokio::spawn(clusters_loop(shared.clone()));
    tokio::spawn(lookup_loop(shared.clone()));
    let lookup = TaskLookup { shared: shared.clone() };
    let (mesh_tx, mesh) = watch::channel(MeshTable::default());
    tokio::spawn(publish_loop(shared, tx, mesh_tx, sidecars));
    EcsProvider {
        view: rx,
        mesh,
        status,
        lookup,
    }
}

struct Shared {
    settings: EcsSettings,
    api: EcsApi,
    status: Arc<EcsStatus>,
    views: Mutex<BTreeMap<String, ClusterView>>,
    changed: Notify,
    taskdefs: TaskDefCache,
    rounds: Semaphore,
    ec2: Option<Arc<dyn InstanceAddresses>>,
    /// Each cluster's tasks as of its last good round, for the identity checks.
    known: Mutex<BTreeMap<String, Arc<std::collections::HashMap<String, TaskFacts>>>>,
    pending: Mutex<BTreeMap<String, Waiters>>,
    pending_changed: Notify,
    /// Each cluster reconciler's inbox for tasks described on demand, so a task that
    /// asked for its certificate joins the view without waiting for the next round.
    adopters: Mutex<BTreeMap<String, tokio::sync::mpsc::UnboundedSender<Vec<aws_sdk_ecs::types::Task>>>>,
    /// Which service each task with a sidecar is in, as ECS lists it.
    memberships: Arc<membership::Memberships>,
    /// Task ARNs ECS said it does not know, and when.
    unknown: Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    /// The clusters to discover, once known (ListClusters answered, with
    /// `--ecs-all-clusters`).
    listed: Mutex<Option<BTreeSet<String>>>,
}

impl Shared {
    /// Why the view is not yet the first complete one: clusters without a finished round.
    fn pending(&self, views: &BTreeMap<String, ClusterView>) -> Option<String> {
        let listed = self.listed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(listed) = listed else {
            return Some("ECS ListClusters has not answered yet".into());
        };
        let missing: Vec<&str> = listed
            .iter()
            .filter(|c| !views.contains_key(*c))
            .map(String::as_str)
            .collect();
        (!missing.is_empty()).then(|| format!("ECS cluster(s) {} not discovered yet (first round)", missing.join(", ")))
    }

    fn clusters_known(&self, cluster: &str) -> bool {
        self.settings.all_clusters || self.settings.clusters.iter().any(|c| cluster_name(c) == cluster)
    }
}

fn cluster_name(arn_or_name: &str) -> String {
    arn_or_name.rsplit('/').next().unwrap_or(arn_or_name).to_string()
}

/// Keep one reconciler task per cluster; with `--ecs-all-clusters`, follow ListClusters.
async fn clusters_loop(shared: Arc<Shared>) {
    let mut running: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let mut listing = true;
        let wanted: Vec<String> = if shared.settings.all_clusters {
            match shared.api.list_clusters().await {
                Ok(arns) => arns,
                Err(e) => {
                    listing = false;
                    tracing::warn!(error = %e, "ListClusters failed; keeping the known clusters");
                    shared.status.update("*", |s| {
                        s.last_error = Some(e.to_string());
                        s.last_error_unix = unix(SystemTime::now());
                    });
                    running.keys().cloned().collect()
                }
            }
        } else {
            shared.settings.clusters.clone()
        };
        let wanted_names: BTreeSet<String> = wanted.iter().map(|c| cluster_name(c)).collect();
        // What readiness waits for: the listed clusters (a failed listing says nothing).
        if listing {
            let first_listing = shared
                .listed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(wanted_names.clone())
                .is_none();
            if first_listing {
                shared.changed.notify_one();
            }
        }
        running.retain(|name, task| {
            let keep = wanted_names.contains(name);
            if !keep {
                task.abort();
                shared.views.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
                shared.changed.notify_one();
            }
            keep
        });
        for c in wanted {
            let name = cluster_name(&c);
            if running.contains_key(&name) {
                continue;
            }
            let sh = shared.clone();
            running.insert(name.clone(), tokio::spawn(cluster_loop(sh, c, name)));
        }
        if !shared.settings.all_clusters {
            // The set is fixed: the cluster tasks run forever.
            futures_util::future::pending::<()>().await;
        }
        tokio::time::sleep(shared.settings.refresh).await;
    }
}

async fn cluster_loop(shared: Arc<Shared>, cluster: String, name: String) {
    let mut rec = ClusterReconciler::new(
        cluster,
        shared.api.clone(),
        shared.taskdefs.clone(),
        shared.ec2.clone(),
        shared.settings.healthy_only,
        shared.memberships.clone(),
    );
    let (adopt_tx, mut adopt_rx) = tokio::sync::mpsc::unbounded_channel();
    shared
        .adopters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.clone(), adopt_tx);
    loop {
        let result = {
            let _permit = shared.rounds.acquire().await;
            rec.round().await
        };
        match result {
            Ok(view) => {
                shared.status.update(&name, |s| {
                    s.rounds += 1;
                    s.last_success = Some(SystemTime::now());
                    s.last_success_unix = unix(SystemTime::now());
                    s.last_error = None;
                });
                install(&shared, &name, &rec, view);
            }
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "reconcile round failed; keeping the last good view");
                shared.status.update(&name, |s| {
                    s.rounds += 1;
                    s.failed_rounds += 1;
                    s.last_error = Some(e.to_string());
                    s.last_error_unix = unix(SystemTime::now());
                });
            }
        }
        // Until the next round, take in tasks described on demand.
        let next = tokio::time::Instant::now() + shared.settings.refresh;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                Some(mut tasks) = adopt_rx.recv() => {
                    while let Ok(more) = adopt_rx.try_recv() {
                        tasks.extend(more);
                    }
                    match rec.adopt(tasks).await {
                        Ok(view) => install(&shared, &name, &rec, view),
                        Err(e) => tracing::warn!(cluster = %name, error = %e, "cannot add tasks described on demand; the next round will"),
                    }
                }
            }
        }
    }
}

/// Publish a cluster's new view and the task facts the identity checks use.
fn install(shared: &Shared, name: &str, rec: &ClusterReconciler, view: ClusterView) {
    let known: std::collections::HashMap<String, TaskFacts> = rec
        .known_tasks()
        .into_iter()
        .filter_map(|(arn, t)| facts(name, &t, rec.task_address(&t), rec.membership(&arn)).map(|f| (arn, f)))
        .collect();
    shared
        .known
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), Arc::new(known));
    let routable = view.endpoints.iter().filter(|(_, e)| e.excluded.is_none()).count();
    shared.status.update(name, |s| {
        s.tasks = view.tasks;
        s.routable_containers = routable;
    });
    shared
        .views
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), view);
    shared.changed.notify_one();
}

async fn publish_loop(
    shared: Arc<Shared>,
    tx: watch::Sender<ProviderView>,
    mesh_tx: watch::Sender<MeshTable>,
    mut health: watch::Receiver<HealthView>,
) {
    let mut last: Option<(DynamicConfig, Vec<Diagnostic>, Option<String>)> = None;
    let mut health_open = true;
    loop {
        tokio::select! {
            _ = shared.changed.notified() => {}
            r = health.changed(), if health_open => {
                if r.is_err() {
                    health_open = false;
                    continue;
                }
            }
        }
        let views = shared.views.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if last.is_none() && views.is_empty() && shared.pending(&views).is_some() {
            // Nothing discovered yet: a sidecar's report alone publishes nothing.
            continue;
        }
        let sidecars = health.borrow_and_update().clone();
        let built = build_config(&views, &shared.settings, &sidecars);
        mesh_tx.send_if_modified(|cur| {
            if **cur == built.mesh {
                return false;
            }
            *cur = Arc::new(built.mesh);
            true
        });
        let (config, diagnostics) = (built.config, built.diagnostics);
        let pending = shared.pending(&views);
        if last
            .as_ref()
            .is_some_and(|(c, d, p)| *c == config && *d == diagnostics && *p == pending)
        {
            continue;
        }
        last = Some((config.clone(), diagnostics.clone(), pending.clone()));
        if tx
            .send(ProviderView {
                provider: PROVIDER.into(),
                config,
                diagnostics,
                pending,
            })
            .is_err()
        {
            return;
        }
    }
}

/// One task's claim on a mesh name.
struct MeshClaim {
    name: String,
    /// `ecs/<cluster>/<service>`.
    identity: String,
    /// The name is the task's own service (or standalone family) name.
    owner: bool,
    /// Where to reach it, when it may get traffic.
    endpoint: Option<String>,
    /// How callers route to it (`berth.mesh.weighted`, `retry`, `timeout`).
    policy: MeshPolicy,
}

/// Who is served under each mesh name. A name belongs to the service of that name (the
/// default: `berth.mesh.name` unset); another service may take it by its label only when
/// no service owns it. A name that two services own (the same service name in two
/// clusters) or that several others claim with none owning it is served to nobody, with
/// a diagnostic: one team's labels must never receive another team's calls, and sort
/// order is not a reason.
fn resolve_mesh_names(claims: Vec<MeshClaim>, diags: &mut Vec<Diagnostic>) -> BTreeMap<String, MeshService> {
    let mut by_name: BTreeMap<String, Vec<MeshClaim>> = BTreeMap::new();
    for c in claims {
        by_name.entry(c.name.clone()).or_default().push(c);
    }
    let mut mesh = BTreeMap::new();
    let mut report = |d: Diagnostic| {
        if !diags.contains(&d) {
            diags.push(d);
        }
    };
    for (name, claims) in by_name {
        let owners: BTreeSet<&str> = claims.iter().filter(|c| c.owner).map(|c| c.identity.as_str()).collect();
        let candidates: BTreeSet<&str> = if owners.is_empty() {
            claims.iter().map(|c| c.identity.as_str()).collect()
        } else {
            owners
        };
        let chosen = match candidates.iter().collect::<Vec<_>>().as_slice() {
            [one] => (**one).to_string(),
            several => {
                let list: Vec<&str> = several.iter().map(|s| **s).collect();
                report(
                    Diagnostic::error(
                        "berth.mesh.name",
                        format!(
                            "mesh name {name} is claimed by {}; it is served to none of them: give each a distinct berth.mesh.name (or berth.mesh.aliases entry)",
                            list.join(" and ")
                        ),
                    )
                    .with_source(PROVIDER),
                );
                continue;
            }
        };
        for other in claims.iter().filter(|c| c.identity != chosen) {
            report(
                Diagnostic::error(
                    "berth.mesh.name",
                    format!(
                        "{} claims mesh name {name}, which belongs to {chosen}; refused",
                        other.identity
                    ),
                )
                .with_source(PROVIDER),
            );
        }
        let mut endpoints: Vec<String> = claims
            .iter()
            .filter(|c| c.identity == chosen)
            .filter_map(|c| c.endpoint.clone())
            .collect();
        endpoints.sort();
        // Tasks of two revisions (a deployment under way) may say different things: the
        // defaults until they agree, never a mix.
        let policies: Vec<&MeshPolicy> = claims
            .iter()
            .filter(|c| c.identity == chosen)
            .map(|c| &c.policy)
            .collect();
        let policy = match policies.split_first() {
            Some((first, rest)) if rest.iter().all(|p| p == first) => (*first).clone(),
            Some(_) => {
                report(
                    Diagnostic::warning(
                        "berth.mesh",
                        format!(
                            "the tasks of {chosen} disagree on their berth.mesh.weighted/retry/timeout/failover/sticky labels \
                             (a deployment under way?): calls to {name} use the defaults until they agree"
                        ),
                    )
                    .with_source(PROVIDER),
                );
                MeshPolicy::default()
            }
            None => MeshPolicy::default(),
        };
        mesh.insert(
            name.clone(),
            MeshService {
                name,
                identity: chosen,
                endpoints,
                policy,
            },
        );
    }
    mesh
}

/// The east-west services: every task with a sidecar, by mesh name.
pub(crate) type MeshTable = Arc<BTreeMap<String, MeshService>>;

/// What one build produces: the north-south configuration, its problems, and the mesh.
pub(crate) struct Built {
    pub config: DynamicConfig,
    pub diagnostics: Vec<Diagnostic>,
    pub mesh: BTreeMap<String, MeshService>,
}

/// Turn every cluster's view into one configuration, Traefik's way.
///
/// For a task with a sidecar, a live registration decides whether it gets traffic (its
/// health is fresher than ECS's), and a draining or lost one excludes it; tasks whose
/// sidecar never registered with this gateway follow ECS's state. Every task with a
/// sidecar also joins the mesh under its mesh name, routable or not.
pub(crate) fn build_config(
    views: &BTreeMap<String, ClusterView>,
    settings: &EcsSettings,
    sidecars: &BTreeMap<(String, String), SidecarHealth>,
) -> Built {
    let mut merger = Merger::default();
    let mut diags = Vec::new();
    let mut reported: HashSet<(String, String, String)> = HashSet::new();
    let mut claims: Vec<MeshClaim> = Vec::new();
    let mut mesh_tasks: HashSet<(&str, &str)> = HashSet::new();
    let mut consent = WeightedConsent::default();
    for (cluster, view) in views {
        for (task_id, ep) in &view.endpoints {
            let ep = with_sidecar_health(ep, sidecars.get(&(cluster.clone(), task_id.clone())));
            let (parsed, label_diags) = labels::parse(&ep.labels);
            consent.allow(cluster, &ep.service, &parsed);
            // The task's mesh name, once per task (every container of it says the same).
            if let Some((claim, refused)) = mesh_claim(cluster, &ep, &parsed)
                && mesh_tasks.insert((cluster.as_str(), task_id.as_str()))
            {
                if let Some(d) = refused
                    && !diags.contains(&d)
                {
                    diags.push(d);
                }
                // Its aliases are names it does not own: two services claiming one alias
                // get it neither, and a service's own name is never taken by an alias.
                for alias in &parsed.mesh.aliases {
                    claims.push(MeshClaim {
                        name: alias.clone(),
                        identity: claim.identity.clone(),
                        owner: false,
                        endpoint: claim.endpoint.clone(),
                        policy: claim.policy.clone(),
                    });
                }
                claims.push(claim);
            }
            // Its routers and services, when exposed and eligible.
            let source = format!("ecs:{cluster}/{task_id}/{}", ep.container);
            let mut report = |d: Diagnostic| {
                // One report per container definition and problem, not per task.
                if reported.insert((ep.instance_name.clone(), d.key.clone(), d.message.clone())) {
                    diags.push(d.with_source(source.clone()));
                }
            };
            if !parsed.enable.unwrap_or(settings.exposed_by_default)
                || settings.constraints.as_ref().is_some_and(|c| !c.matches(&ep.labels))
            {
                continue;
            }
            for d in label_diags {
                report(d);
            }
            let Some(target) = container_target(cluster, &ep, settings) else {
                continue;
            };
            let (frag, frag_diags) = labels::container_config(&parsed, &target);
            for d in frag_diags {
                report(d);
            }
            consent.note(cluster, &ep.service, &frag);
            merger.add(frag);
        }
    }
    let Merger {
        config: mut cfg,
        conflicts,
        ..
    } = merger;
    consent.enforce(&mut cfg, &mut diags);
    for c in conflicts {
        diags.push(
            Diagnostic::error(c.clone(), "defined differently by several containers; not served").with_source(PROVIDER),
        );
    }
    let mut mesh = resolve_mesh_names(claims, &mut diags);
    consent.enforce_mesh(&mut mesh, &mut diags);
    Built {
        config: cfg,
        diagnostics: diags,
        mesh,
    }
}

/// Who may send weighted traffic where. A `weighted` service from labels may name a
/// service only when every ECS service defining that service is the caller itself, or is
/// in the caller's cluster and lists the caller in `berth.weighted.allow`: one team's
/// labels never capture another team's traffic.
#[derive(Default)]
struct WeightedConsent {
    /// Label service name -> the (cluster, ECS service) pairs whose tasks define it.
    owners: HashMap<String, BTreeSet<(String, String)>>,
    /// Weighted service name -> the (cluster, ECS service) pairs whose tasks define it.
    callers: BTreeMap<String, BTreeSet<(String, String)>>,
    /// (cluster, ECS service) -> the callers its tasks allow.
    allowed: HashMap<(String, String), BTreeSet<String>>,
}

impl WeightedConsent {
    /// The callers a task's `berth.weighted.allow` names (every task, exposed or not:
    /// mesh splits need them too).
    fn allow(&mut self, cluster: &str, service: &str, parsed: &labels::ContainerLabels) {
        if parsed.weighted_allow.is_empty() {
            return;
        }
        self.allowed
            .entry((cluster.to_string(), service.to_string()))
            .or_default()
            .extend(parsed.weighted_allow.iter().cloned());
    }

    fn note(&mut self, cluster: &str, service: &str, frag: &DynamicConfig) {
        let who = (cluster.to_string(), service.to_string());
        for (name, s) in &frag.http.services {
            self.owners.entry(name.clone()).or_default().insert(who.clone());
            if s.weighted.is_some() {
                self.callers.entry(name.clone()).or_default().insert(who.clone());
            }
        }
    }

    fn consents(&self, owner: &(String, String), caller: &(String, String)) -> bool {
        owner == caller || (owner.0 == caller.0 && self.allowed.get(owner).is_some_and(|a| a.contains(&caller.1)))
    }

    /// The same rule for east-west splits (`berth.mesh.weighted`): a mesh service may
    /// share its callers' calls only with mesh services of its own cluster whose tasks
    /// allow it. A split that names an unknown or unconsenting service is dropped (the
    /// service's own tasks take every call), with a diagnostic.
    fn enforce_mesh(&self, mesh: &mut BTreeMap<String, MeshService>, diags: &mut Vec<Diagnostic>) {
        let who = |identity: &str| {
            let mut parts = identity.splitn(3, '/').skip(1);
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        };
        // Why `child` may not take calls `caller` routes to it, if it may not.
        let refuse = |caller: &(String, String), child: &str| match mesh.get(child) {
            None => Some(format!("names `{child}`, which is not a mesh service")),
            Some(c) => {
                let owner = who(&c.identity);
                if self.consents(&owner, caller) {
                    None
                } else if owner.0 == caller.0 {
                    Some(format!(
                        "names `{child}`, which ECS service {} serves without allowing {}: put the label `berth.weighted.allow={}` on {}'s containers",
                        owner.1, caller.1, caller.1, owner.1
                    ))
                } else {
                    Some(format!(
                        "names `{child}`, of cluster {}: it may name mesh services of its own cluster ({}) only",
                        owner.0, caller.0
                    ))
                }
            }
        };
        let mut refusals = Vec::new();
        for (name, svc) in mesh.iter() {
            let caller = who(&svc.identity);
            if let Some(why) = svc.policy.split_targets(name).find_map(|child| refuse(&caller, child)) {
                refusals.push((name.clone(), false, why));
            }
            if let Some(why) = svc
                .policy
                .failover
                .as_deref()
                .filter(|f| *f != name)
                .and_then(|f| refuse(&caller, f))
            {
                refusals.push((name.clone(), true, why));
            }
        }
        for (name, failover, why) in refusals {
            if let Some(svc) = mesh.get_mut(&name) {
                if failover {
                    svc.policy.failover = None;
                } else {
                    svc.policy.split.clear();
                }
            }
            let (label, what, effect) = if failover {
                ("berth.mesh.failover", "its failover", "calls have no failover")
            } else {
                ("berth.mesh.weighted", "its split", "its own tasks take every call")
            };
            diags.push(
                Diagnostic::error(label, format!("mesh service {name}: {what} {why}; {effect}")).with_source(PROVIDER),
            );
        }
    }

    /// Drop every weighted service that names a service without its owners' consent, with
    /// a diagnostic saying which label would allow it.
    fn enforce(&self, cfg: &mut DynamicConfig, diags: &mut Vec<Diagnostic>) {
        for (name, callers) in &self.callers {
            let Some(w) = cfg.http.services.get(name).and_then(|s| s.weighted.as_ref()) else {
                continue;
            };
            let refusal = w.services.iter().find_map(|child| {
                let owners = self.owners.get(&child.name)?;
                callers.iter().find_map(|(cc, cs)| {
                    owners.iter().find_map(|(oc, os)| {
                        let consents = self.consents(&(oc.clone(), os.clone()), &(cc.clone(), cs.clone()));
                        (!consents).then(|| {
                            if oc == cc {
                                format!(
                                    "names `{}`, which ECS service {os} defines without allowing {cs}: put the label `berth.weighted.allow={cs}` on {os}'s containers",
                                    child.name
                                )
                            } else {
                                format!(
                                    "names `{}`, which ECS service {os} of cluster {oc} defines: a weighted service from labels may name services of its own cluster ({cc}) only",
                                    child.name
                                )
                            }
                        })
                    })
                })
            });
            if let Some(why) = refusal {
                cfg.http.services.remove(name);
                diags.push(
                    Diagnostic::error(
                        format!("http.services.{name}.weighted"),
                        format!("{why}; the weighted service is not created"),
                    )
                    .with_source(PROVIDER),
                );
            }
        }
    }
}

/// Job 1: what the task's sidecar reports (unhealthy, draining, lost) decides whether a
/// container behind it gets traffic; a sidecar that reports well lifts an exclusion the
/// task's state alone made.
fn with_sidecar_health<'a>(
    ep: &'a endpoints::ContainerEndpoint,
    health: Option<&SidecarHealth>,
) -> std::borrow::Cow<'a, endpoints::ContainerEndpoint> {
    let mut ep = std::borrow::Cow::Borrowed(ep);
    if ep.sidecar_port.is_some()
        && ep.container != endpoints::SIDECAR
        && let Some(h) = health
    {
        match h.excluded() {
            Some(why) if ep.excluded.is_none() || ep.state_excluded => {
                ep.to_mut().excluded = Some(why.into());
            }
            None if ep.state_excluded => ep.to_mut().excluded = None,
            _ => {}
        }
    }
    ep
}

/// Job 2: the mesh name a task with a sidecar claims (its `berth.mesh.name`, else its
/// service), with its identity and, while eligible, its inbound; and the reason when its
/// own name was refused.
fn mesh_claim(
    cluster: &str,
    ep: &endpoints::ContainerEndpoint,
    parsed: &labels::ContainerLabels,
) -> Option<(MeshClaim, Option<Diagnostic>)> {
    let (Some(port), Some(address), true, None) = (
        ep.sidecar_port,
        &ep.address,
        ep.container != endpoints::SIDECAR,
        &ep.identity_refused,
    ) else {
        return None;
    };
    let refused = ep
        .alias_refused
        .as_ref()
        .map(|why| Diagnostic::error("berth.mesh.name", why.clone()).with_source(PROVIDER));
    let name = match &ep.alias_refused {
        Some(_) => ep.service.clone(),
        None => parsed.mesh.name.clone().unwrap_or_else(|| ep.service.clone()),
    };
    let claim = MeshClaim {
        policy: parsed.mesh.policy.clone(),
        owner: name == ep.service,
        name,
        identity: format!("ecs/{cluster}/{}", ep.service),
        endpoint: ep
            .excluded
            .is_none()
            .then(|| berth_common::http::authority(address, port)),
    };
    Some((claim, refused))
}

/// Job 3: where an eligible container's servers point: its own address and ports, or,
/// for a task with a sidecar, the sidecar's inbound over mTLS with the task's identity
/// (the labels code writes each server once, from this).
fn container_target(
    cluster: &str,
    ep: &endpoints::ContainerEndpoint,
    settings: &EcsSettings,
) -> Option<ContainerTarget> {
    if ep.excluded.is_some() {
        return None;
    }
    Some(ContainerTarget {
        name: ep.instance_name.clone(),
        address: ep.address.clone()?,
        ports: ep.ports.clone(),
        default_rule: Some(settings.default_rule.clone()),
        default_strategy: settings.default_strategy,
        via: ep.sidecar_port.map(|port| labels::Via {
            port,
            identity: format!("ecs/{cluster}/{}", ep.service),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, identity: &str, owner: bool, endpoint: &str) -> MeshClaim {
        MeshClaim {
            name: name.into(),
            identity: identity.into(),
            owner,
            endpoint: Some(endpoint.into()),
            policy: MeshPolicy::default(),
        }
    }

    fn split(pairs: &[(&str, u32)]) -> MeshPolicy {
        MeshPolicy {
            split: pairs
                .iter()
                .map(|(n, w)| berth_common::control::MeshSplit {
                    name: n.to_string(),
                    weight: *w,
                })
                .collect(),
            ..MeshPolicy::default()
        }
    }

    #[test]
    fn a_mesh_split_needs_its_targets_consent_and_agreeing_tasks() {
        let with = |mut c: MeshClaim, p: MeshPolicy| {
            c.policy = p;
            c
        };
        let mut diags = Vec::new();
        let mut mesh = resolve_mesh_names(
            vec![
                with(
                    claim("orders", "ecs/prod/orders", true, "10.0.0.1:15443"),
                    split(&[("orders", 3), ("orders-canary", 1)]),
                ),
                claim("orders-canary", "ecs/prod/orders-canary", true, "10.0.0.2:15443"),
                // payments splits into a service that never allowed it, cart into an
                // unknown name, and search into another cluster's service.
                with(
                    claim("payments", "ecs/prod/payments", true, "10.0.0.3:15443"),
                    split(&[("payments", 1), ("orders-canary", 1)]),
                ),
                with(
                    claim("cart", "ecs/prod/cart", true, "10.0.0.4:15443"),
                    split(&[("cart", 1), ("nowhere", 1)]),
                ),
                with(
                    claim("search", "ecs/prod/search", true, "10.0.0.5:15443"),
                    split(&[("search", 1), ("index", 1)]),
                ),
                claim("index", "ecs/staging/index", true, "10.0.0.6:15443"),
                // Two revisions of web say different things: the defaults.
                with(
                    claim("web", "ecs/prod/web", true, "10.0.0.7:15443"),
                    split(&[("web", 1), ("orders-canary", 1)]),
                ),
                claim("web", "ecs/prod/web", true, "10.0.0.8:15443"),
                // orders-canary consents to ledger's failover, not to basket's.
                with(
                    claim("ledger", "ecs/prod/ledger", true, "10.0.0.9:15443"),
                    MeshPolicy {
                        failover: Some("orders-canary".into()),
                        ..MeshPolicy::default()
                    },
                ),
                with(
                    claim("basket", "ecs/prod/basket", true, "10.0.0.10:15443"),
                    MeshPolicy {
                        failover: Some("orders-canary".into()),
                        ..MeshPolicy::default()
                    },
                ),
            ],
            &mut diags,
        );
        let mut consent = WeightedConsent::default();
        let allow = |v: &str| labels::parse(&[("berth.weighted.allow".to_string(), v.to_string())].into()).0;
        consent.allow("prod", "orders-canary", &allow("orders,web,search,ledger"));
        consent.allow("staging", "index", &allow("search"));
        consent.enforce_mesh(&mut mesh, &mut diags);
        assert_eq!(mesh["orders"].policy, split(&[("orders", 3), ("orders-canary", 1)]));
        for refused in ["payments", "cart", "search", "web"] {
            assert!(mesh[refused].policy.split.is_empty(), "{refused}");
        }
        let text = format!("{diags:?}");
        assert!(text.contains("berth.weighted.allow=payments"), "{text}");
        assert!(text.contains("`nowhere`, which is not a mesh service"), "{text}");
        assert!(text.contains("of cluster staging"), "{text}");
        assert!(text.contains("disagree"), "{text}");
        // A failover needs the same consent as a split.
        assert_eq!(mesh["ledger"].policy.failover.as_deref(), Some("orders-canary"));
        assert_eq!(mesh["basket"].policy.failover, None);
        assert!(text.contains("berth.weighted.allow=basket"), "{text}");
    }

    #[test]
    fn a_mesh_name_belongs_to_its_service_never_to_sort_order() {
        let mut diags = Vec::new();
        let mesh = resolve_mesh_names(
            vec![
                // Sorts first, claims payments by label.
                claim("payments", "ecs/aaa/evil", false, "10.0.0.9:15443"),
                claim("payments", "ecs/prod/payments", true, "10.0.0.1:15443"),
                // An alias nobody owns: its claimant gets it.
                claim("orders", "ecs/prod/orders-v2", false, "10.0.0.2:15443"),
                // The same service name in two clusters: nobody.
                claim("cart", "ecs/prod/cart", true, "10.0.0.3:15443"),
                claim("cart", "ecs/staging/cart", true, "10.0.0.4:15443"),
            ],
            &mut diags,
        );
        assert_eq!(mesh["payments"].identity, "ecs/prod/payments");
        assert_eq!(mesh["payments"].endpoints, vec!["10.0.0.1:15443"]);
        assert_eq!(mesh["orders"].identity, "ecs/prod/orders-v2");
        assert!(!mesh.contains_key("cart"));
        assert!(
            diags
                .iter()
                .any(|d| d.message.contains("ecs/aaa/evil claims mesh name payments")),
            "{diags:?}"
        );
        assert!(diags.iter().any(|d| d.message.contains("served to none")), "{diags:?}");
    }

    #[test]
    fn an_alias_two_services_claim_is_served_to_neither() {
        let mut diags = Vec::new();
        let mesh = resolve_mesh_names(
            vec![
                claim("orders", "ecs/prod/orders", true, "10.0.0.1:15443"),
                claim("orders.apps.local", "ecs/prod/orders", false, "10.0.0.1:15443"),
                claim("shared.apps.local", "ecs/prod/orders", false, "10.0.0.1:15443"),
                claim("shared.apps.local", "ecs/prod/billing", false, "10.0.0.2:15443"),
                // An alias naming another service's own name never takes it.
                claim("billing", "ecs/prod/billing", true, "10.0.0.2:15443"),
                claim("billing", "ecs/prod/orders", false, "10.0.0.1:15443"),
            ],
            &mut diags,
        );
        assert_eq!(mesh["orders.apps.local"].identity, "ecs/prod/orders");
        assert_eq!(mesh["orders.apps.local"].endpoints, vec!["10.0.0.1:15443"]);
        assert!(!mesh.contains_key("shared.apps.local"));
        assert_eq!(mesh["billing"].identity, "ecs/prod/billing");
        let text = format!("{diags:?}");
        assert!(
            text.contains("shared.apps.local is claimed by ecs/prod/billing and ecs/prod/orders"),
            "{text}"
        );
        assert!(text.contains("ecs/prod/orders claims mesh name billing"), "{text}");
    }
}
