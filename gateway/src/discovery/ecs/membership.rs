//! Which ECS service a task with a sidecar belongs to, as ECS itself says: the name its
//! mesh identity (`spiffe://<td>/ecs/<cluster>/<service>`) is made of.
//!
//! A task's `group` (`service:NAME`) is set by whoever calls RunTask, so it proves
//! nothing: a task is in service S only when ListTasks with `serviceName` S lists it.
//! A task outside any service is known by its task-definition family, unless the cluster
//! has a service of that name (then it would share the service's identity, its mesh
//! traffic and its rights in every `berth.mesh.allow`): such a task gets no identity.
//!
//! Answers are cached: a task's membership never changes, so a verified task costs
//! nothing after the first check; a service is listed again at most once a second (and
//! only while a task claims it without being listed), and a family's service check is
//! kept for a minute.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ecs::types::Task;
use tokio::time::Instant;

use super::client::{ApiError, EcsApi};

/// What a task's identity is made of, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Membership {
    /// ECS lists the task in this service.
    Service(String),
    /// Not in a service: known by its task-definition family.
    Standalone(String),
    /// No identity, and why.
    Refused(String),
}

impl Membership {
    /// The service segment of the task's identity, when it may have one.
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Membership::Service(s) | Membership::Standalone(s) => Some(s),
            Membership::Refused(_) => None,
        }
    }
}

/// A service is listed again at most this often while a task claims it unlisted.
const RELIST_AFTER: Duration = Duration::from_secs(1);
/// How long "the cluster has (no) service named F" is believed.
const FAMILY_TTL: Duration = Duration::from_secs(60);
/// Entries kept per cache before the oldest are dropped.
const MAX_ENTRIES: usize = 65_536;

#[derive(Debug, Default)]
struct Caches {
    /// (cluster, task ARN) -> its membership, once decided for good.
    decided: HashMap<(String, String), Membership>,
    /// (cluster, service) -> the tasks ECS listed in it, and when.
    listed: HashMap<(String, String), (HashSet<String>, Instant)>,
    /// (cluster, family) -> whether a service of that name exists, and when checked.
    families: HashMap<(String, String), (bool, Instant)>,
}

/// The shared cache of memberships, for the reconcilers and the control plane's lookups.
#[derive(Debug, Default)]
pub(crate) struct Memberships {
    caches: Mutex<Caches>,
}

fn family(task: &Task) -> Option<String> {
    let td = task.task_definition_arn()?;
    Some(td.rsplit('/').next()?.split(':').next()?.to_string())
}

impl Memberships {
    /// Decide the membership of each task (by ARN), asking ECS where the cache cannot say.
    pub(crate) async fn resolve<'a>(
        &self,
        api: &EcsApi,
        cluster: &str,
        tasks: impl IntoIterator<Item = &'a Task>,
    ) -> Result<HashMap<String, Membership>, ApiError> {
        let mut out = HashMap::new();
        for task in tasks {
            let Some(arn) = task.task_arn() else { continue };
            if let Some(m) = self.decided(cluster, arn) {
                out.insert(arn.to_string(), m);
                continue;
            }
            let m = match task.group().and_then(|g| g.strip_prefix("service:")) {
                Some(service) => {
                    if self.listed_in(api, cluster, service, arn).await? {
                        Membership::Service(service.to_string())
                    } else {
                        Membership::Refused(format!(
                            "the task's group claims ECS service {service}, which ECS does not list it in"
                        ))
                    }
                }
                None => match family(task) {
                    None => Membership::Refused("the task has no task definition family".into()),
                    Some(f) if self.service_named(api, cluster, &f).await? => Membership::Refused(format!(
                        "a task outside any service may not take the name of service {f} (its family)"
                    )),
                    Some(f) => Membership::Standalone(f),
                },
            };
            // A verified member stays one; the other answers may change.
            if matches!(m, Membership::Service(_)) {
                self.remember(cluster, arn, m.clone());
            }
            out.insert(arn.to_string(), m);
        }
        Ok(out)
    }

    fn decided(&self, cluster: &str, arn: &str) -> Option<Membership> {
        let c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        c.decided.get(&(cluster.to_string(), arn.to_string())).cloned()
    }

    fn remember(&self, cluster: &str, arn: &str, m: Membership) {
        let mut c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if c.decided.len() >= MAX_ENTRIES {
            c.decided.clear();
        }
        c.decided.insert((cluster.to_string(), arn.to_string()), m);
    }

    /// Whether ECS lists `arn` in `service`: from the last listing, or a new one when the
    /// task is not in it and the listing is older than [`RELIST_AFTER`].
    async fn listed_in(&self, api: &EcsApi, cluster: &str, service: &str, arn: &str) -> Result<bool, ApiError> {
        let key = (cluster.to_string(), service.to_string());
        {
            let c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((arns, at)) = c.listed.get(&key)
                && (arns.contains(arn) || at.elapsed() < RELIST_AFTER)
            {
                return Ok(arns.contains(arn));
            }
        }
        let arns: HashSet<String> = api.list_service_tasks(cluster, service).await?.into_iter().collect();
        let found = arns.contains(arn);
        let mut c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if c.listed.len() >= MAX_ENTRIES {
            c.listed.clear();
        }
        c.listed.insert(key, (arns, Instant::now()));
        Ok(found)
    }

    /// Whether the cluster has an ECS service called `name` (cached for a minute).
    pub(crate) async fn service_named(&self, api: &EcsApi, cluster: &str, name: &str) -> Result<bool, ApiError> {
        let key = (cluster.to_string(), name.to_string());
        {
            let c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((exists, at)) = c.families.get(&key)
                && at.elapsed() < FAMILY_TTL
            {
                return Ok(*exists);
            }
        }
        let exists = api.service_exists(cluster, name).await?;
        let mut c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if c.families.len() >= MAX_ENTRIES {
            c.families.clear();
        }
        c.families.insert(key, (exists, Instant::now()));
        Ok(exists)
    }
}
