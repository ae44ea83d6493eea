//! One cluster's reconcile round, with the caches that make a quiet round cost only
//! its ListTasks pages:
//!
//! - tasks by ARN: described once when first listed, and again each round only while
//!   not yet RUNNING or when a container has a health check (their state changes
//!   without a new ARN);
//! - task definitions by ARN (immutable), shared by every cluster;
//! - container instances by ARN (bridge and host modes), with their address.
//!
//! A round that fails part-way publishes nothing: the caller keeps the last good view.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aws_sdk_ecs::types::{NetworkMode, Task, TaskDefinition};

use super::client::{ApiError, EcsApi};
use super::endpoints::{ContainerEndpoint, containers, has_sidecar, network_mode, task_is_running};
use super::membership::{Membership, Memberships};

/// ECS takes at most 100 ARNs per Describe* call.
pub(crate) const BATCH: usize = 100;

/// Task definitions by ARN, shared across clusters.
pub(crate) type TaskDefCache = Arc<Mutex<HashMap<String, Arc<TaskDefinition>>>>;

/// The task definition `arn`, from the cache or described once (definitions never
/// change); `None` when ECS does not know it.
pub(crate) async fn task_definition(
    cache: &TaskDefCache,
    api: &EcsApi,
    arn: &str,
) -> Result<Option<Arc<TaskDefinition>>, ApiError> {
    if let Some(d) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(arn) {
        return Ok(Some(d.clone()));
    }
    let Some(d) = api.describe_task_definition(arn).await? else {
        return Ok(None);
    };
    let d = Arc::new(d);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(arn.to_string(), d.clone());
    Ok(Some(d))
}

/// EC2 instance id -> private IP, as a boxed future.
pub(crate) type AddressesFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<HashMap<String, String>, ApiError>> + Send + 'a>>;

/// Resolves an EC2 instance id to its private IP (bridge and host modes).
pub(crate) trait InstanceAddresses: Send + Sync {
    fn lookup<'a>(&'a self, ids: &'a [String]) -> AddressesFuture<'a>;
}

/// A task as last described, with what it needs to be routed.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    pub task: Arc<Task>,
    pub def: Option<Arc<TaskDefinition>>,
    /// For a task with a sidecar: the service its identity names, as ECS says.
    pub membership: Option<Membership>,
    /// Why the task's `berth.mesh.name` is refused: it names another service of the cluster.
    pub alias_refused: Option<String>,
}

/// The result of a successful round.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterView {
    pub endpoints: Vec<(String, ContainerEndpoint)>,
    pub tasks: usize,
}

pub(crate) struct ClusterReconciler {
    pub cluster: String,
    api: EcsApi,
    taskdefs: TaskDefCache,
    tasks: HashMap<String, TaskRecord>,
    /// Container instance ARN -> EC2 instance id and its address once known.
    instances: HashMap<String, (Option<String>, Option<String>)>,
    ec2: Option<Arc<dyn InstanceAddresses>>,
    healthy_only: super::endpoints::HealthyOnly,
    memberships: Arc<Memberships>,
}

/// The `berth.mesh.name` a task definition's containers give, if any.
fn mesh_alias(def: &TaskDefinition) -> Option<String> {
    def.container_definitions().iter().find_map(|c| {
        let labels: std::collections::BTreeMap<String, String> =
            c.docker_labels()?.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        berth_common::labels::parse(&labels).0.mesh.name
    })
}

fn short_name(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

impl ClusterReconciler {
    pub(crate) fn new(
        cluster: String,
        api: EcsApi,
        taskdefs: TaskDefCache,
        ec2: Option<Arc<dyn InstanceAddresses>>,
        healthy_only: super::endpoints::HealthyOnly,
        memberships: Arc<Memberships>,
    ) -> Self {
        ClusterReconciler {
            cluster,
            api,
            taskdefs,
            tasks: HashMap::new(),
            instances: HashMap::new(),
            ec2,
            healthy_only,
            memberships,
        }
    }

    fn needs_describe(&self, rec: &TaskRecord) -> bool {
        if !task_is_running(&rec.task) {
            return true;
        }
        match &rec.def {
            Some(def) => def.container_definitions().iter().any(|c| c.health_check().is_some()),
            None => true,
        }
    }

    /// One round: list, describe what is new or changing, resolve definitions and
    /// instances, and return the cluster's complete view.
    pub(crate) async fn round(&mut self) -> Result<ClusterView, ApiError> {
        let listed = self.api.list_running_tasks(&self.cluster).await?;
        let listed_set: HashSet<&String> = listed.iter().collect();
        self.tasks.retain(|arn, _| listed_set.contains(arn));
        let to_describe: Vec<String> = listed
            .iter()
            .filter(|arn| self.tasks.get(*arn).is_none_or(|rec| self.needs_describe(rec)))
            .cloned()
            .collect();
        self.describe(&to_describe).await?;
        self.resolve_definitions().await?;
        self.resolve_memberships().await?;
        self.resolve_instances().await?;
        Ok(self.view())
    }

    /// Take in tasks described outside a round (on demand, for the control plane) and
    /// return the view with them; a later round keeps or drops them like any other.
    pub(crate) async fn adopt(&mut self, tasks: Vec<Task>) -> Result<ClusterView, ApiError> {
        self.record(tasks);
        self.resolve_definitions().await?;
        self.resolve_memberships().await?;
        self.resolve_instances().await?;
        Ok(self.view())
    }

    /// The service each task with a sidecar belongs to, as ECS lists it.
    async fn resolve_memberships(&mut self) -> Result<(), ApiError> {
        let meshed: Vec<&Task> = self
            .tasks
            .values()
            .filter(|r| r.def.as_ref().is_some_and(|d| has_sidecar(d)))
            .map(|r| r.task.as_ref())
            .collect();
        if meshed.is_empty() {
            return Ok(());
        }
        let decided = self.memberships.resolve(&self.api, &self.cluster, meshed).await?;
        for (arn, m) in decided {
            // A `berth.mesh.name` other than its own service's may not be the name of
            // another service of the cluster, even one with no task running.
            let alias = self
                .tasks
                .get(&arn)
                .and_then(|r| r.def.as_ref())
                .and_then(|d| mesh_alias(d))
                .filter(|a| m.name().is_some_and(|own| own != a));
            let alias_refused = match alias {
                Some(a) if self.memberships.service_named(&self.api, &self.cluster, &a).await? => Some(format!(
                    "berth.mesh.name {a} is the name of ECS service {a} in cluster {}; another service may not take it",
                    self.cluster
                )),
                _ => None,
            };
            if let Some(rec) = self.tasks.get_mut(&arn) {
                rec.membership = Some(m);
                rec.alias_refused = alias_refused;
            }
        }
        Ok(())
    }

    /// A known task's membership, when it has a sidecar and it was decided.
    pub(crate) fn membership(&self, arn: &str) -> Option<&Membership> {
        self.tasks.get(arn)?.membership.as_ref()
    }

    /// Keep described tasks, with their definitions when already cached.
    fn record(&mut self, tasks: Vec<Task>) {
        let defs = self.taskdefs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for t in tasks {
            let Some(arn) = t.task_arn().map(str::to_string) else {
                continue;
            };
            let def = t.task_definition_arn().and_then(|d| defs.get(d).cloned());
            // Membership never changes: a re-described task keeps what was decided.
            let membership = self.tasks.get(&arn).and_then(|r| r.membership.clone());
            let alias_refused = self.tasks.get(&arn).and_then(|r| r.alias_refused.clone());
            self.tasks.insert(
                arn,
                TaskRecord {
                    task: Arc::new(t),
                    def,
                    membership,
                    alias_refused,
                },
            );
        }
    }

    /// Describe these tasks now (batched by 100); tasks ECS reports MISSING are forgotten.
    pub(crate) async fn describe(&mut self, arns: &[String]) -> Result<(), ApiError> {
        for chunk in arns.chunks(BATCH) {
            let (tasks, failures) = self.api.describe_tasks(&self.cluster, chunk).await?;
            for f in failures {
                if let Some(arn) = f.arn() {
                    self.tasks.remove(arn);
                }
                tracing::debug!(cluster = %self.cluster, arn = ?f.arn(), reason = ?f.reason(), "DescribeTasks failure");
            }
            self.record(tasks);
        }
        Ok(())
    }

    async fn resolve_definitions(&mut self) -> Result<(), ApiError> {
        let missing: HashSet<String> = self
            .tasks
            .values()
            .filter(|r| r.def.is_none())
            .filter_map(|r| r.task.task_definition_arn().map(str::to_string))
            .collect();
        for arn in missing {
            let Some(def) = task_definition(&self.taskdefs, &self.api, &arn).await? else {
                continue;
            };
            for rec in self.tasks.values_mut() {
                if rec.def.is_none() && rec.task.task_definition_arn() == Some(arn.as_str()) {
                    rec.def = Some(def.clone());
                }
            }
        }
        Ok(())
    }

    async fn resolve_instances(&mut self) -> Result<(), ApiError> {
        let wanted: HashSet<String> = self
            .tasks
            .values()
            .filter(|r| {
                r.def
                    .as_ref()
                    .is_some_and(|d| matches!(network_mode(&r.task, d), NetworkMode::Bridge | NetworkMode::Host))
            })
            .filter_map(|r| r.task.container_instance_arn().map(str::to_string))
            .collect();
        self.instances.retain(|arn, _| wanted.contains(arn));
        let unknown: Vec<String> = wanted
            .iter()
            .filter(|arn| !self.instances.contains_key(*arn))
            .cloned()
            .collect();
        for chunk in unknown.chunks(BATCH) {
            for ci in self.api.describe_container_instances(&self.cluster, chunk).await? {
                if let Some(arn) = ci.container_instance_arn() {
                    self.instances
                        .insert(arn.to_string(), (ci.ec2_instance_id().map(str::to_string), None));
                }
            }
        }
        let need_ip: Vec<String> = self
            .instances
            .values()
            .filter(|(id, ip)| ip.is_none() && id.as_deref().is_some_and(|i| !i.starts_with("mi-")))
            .filter_map(|(id, _)| id.clone())
            .collect();
        if let (false, Some(ec2)) = (need_ip.is_empty(), &self.ec2) {
            for chunk in need_ip.chunks(BATCH) {
                let found = ec2.lookup(chunk).await?;
                for (id, ip) in self.instances.values_mut() {
                    if let Some(addr) = id.as_ref().and_then(|i| found.get(i)) {
                        *ip = Some(addr.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Every task known now, by ARN, for the identity checks.
    pub(crate) fn known_tasks(&self) -> HashMap<String, Arc<Task>> {
        self.tasks
            .iter()
            .map(|(arn, r)| (arn.clone(), r.task.clone()))
            .collect()
    }

    /// The address a task's sidecar connects from: the ENI (awsvpc) or the instance (bridge, host).
    pub(crate) fn task_address(&self, task: &Task) -> Option<String> {
        let def = task
            .task_definition_arn()
            .and_then(|d| self.taskdefs.lock().unwrap_or_else(|e| e.into_inner()).get(d).cloned());
        match def.as_ref().map(|d| network_mode(task, d)) {
            Some(NetworkMode::Bridge | NetworkMode::Host) => task
                .container_instance_arn()
                .and_then(|ci| self.instances.get(ci))
                .and_then(|(_, ip)| ip.clone()),
            _ => super::endpoints::awsvpc_address(task),
        }
    }

    fn view(&self) -> ClusterView {
        let mut endpoints = Vec::new();
        let mut arns: Vec<&String> = self.tasks.keys().collect();
        arns.sort();
        for arn in arns {
            let rec = &self.tasks[arn];
            let Some(def) = &rec.def else {
                continue;
            };
            let host_ip = rec
                .task
                .container_instance_arn()
                .and_then(|ci| self.instances.get(ci))
                .and_then(|(_, ip)| ip.as_deref());
            for mut c in containers(&rec.task, def, host_ip, self.healthy_only, rec.membership.as_ref()) {
                c.alias_refused = rec.alias_refused.clone();
                endpoints.push((short_name(arn).to_string(), c));
            }
        }
        ClusterView {
            endpoints,
            tasks: self.tasks.len(),
        }
    }
}
