//! The in-memory ECS model: what `berth-local` knows and its API reports.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub(crate) const ACCOUNT: &str = "000000000000";

/// An API error in the AWS shape (`__type`, message, HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: &'static str,
    pub message: String,
    pub status: u16,
}

impl ApiError {
    pub fn client(kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            status: 400,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterException", message)
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct ContainerState {
    pub name: String,
    pub health: String,
    /// (container port, host port) in bridge mode.
    pub bindings: Vec<(u16, u16)>,
    /// `PENDING`, `RUNNING` or `STOPPED`.
    pub last_status: String,
    pub exit_code: Option<i32>,
    pub docker_id: String,
}

#[derive(Debug, Clone)]
pub struct TaskState {
    pub arn: String,
    pub id: String,
    pub cluster: String,
    pub taskdef_arn: String,
    pub group: String,
    /// The service whose scheduler started it. ECS keeps this itself: a RunTask caller
    /// may write `service:NAME` as the group, but that does not put the task in NAME.
    pub service: Option<String>,
    pub started_by: Option<String>,
    pub last_status: String,
    pub desired_status: String,
    pub launch_type: String,
    pub containers: Vec<ContainerState>,
    pub address: Option<Ipv4Addr>,
    pub container_instance_arn: Option<String>,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub stopping_at: Option<f64>,
    pub stopped_at: Option<f64>,
    pub stopped_reason: Option<String>,
    pub stop_code: Option<String>,
    /// RunTask's `overrides.taskRoleArn`, when the caller set one.
    pub role_override: Option<String>,
    /// The task role's session (its credentials), when the task has a role.
    pub role: Option<TaskRole>,
}

/// One deployment of a service (ECS's `deployments[]`).
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    /// `PRIMARY` (the newest) or `ACTIVE` (older, being replaced).
    pub status: String,
    pub taskdef_arn: String,
    pub rollout_state: String,
    pub created_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone)]
pub struct ServiceState {
    pub arn: String,
    pub name: String,
    pub cluster: String,
    pub desired_count: usize,
    pub launch_type: String,
    pub minimum_healthy_percent: u32,
    pub maximum_percent: u32,
    pub deployments: Vec<Deployment>,
    pub status: String,
    pub created_at: f64,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub arn: String,
    pub name: String,
    pub tasks: BTreeMap<String, TaskState>,
    /// Container instance ARN -> EC2 instance id.
    pub container_instances: BTreeMap<String, String>,
    pub services: BTreeMap<String, ServiceState>,
}

/// The whole local ECS.
#[derive(Debug)]
pub struct Ecs {
    pub region: String,
    pub clusters: BTreeMap<String, ClusterState>,
    /// family -> revisions (index = revision - 1), each the task definition JSON.
    pub taskdefs: BTreeMap<String, Vec<Value>>,
    /// EC2 instance id -> private IP (bridge and host modes).
    pub ec2_instances: BTreeMap<String, Ipv4Addr>,
    next_address: u32,
    next_id: u64,
    next_host_port: u16,
    /// When a runner drives the task lifecycle, RunTask starts at PROVISIONING and
    /// StopTask only sets the desired status; otherwise both take effect at once.
    pub managed: bool,
    /// Stopped tasks are forgotten after this many seconds (ECS keeps them about an hour).
    pub stopped_retention: f64,
}

impl Ecs {
    /// A new ECS whose task addresses start at `first_address` (e.g. 127.0.100.1).
    pub fn new(region: &str, first_address: Ipv4Addr) -> Ecs {
        Ecs {
            region: region.into(),
            clusters: BTreeMap::new(),
            taskdefs: BTreeMap::new(),
            ec2_instances: BTreeMap::new(),
            next_address: u32::from(first_address),
            next_id: 1,
            next_host_port: 32768,
            managed: false,
            stopped_retention: 3600.0,
        }
    }

    fn arn(&self, resource: &str) -> String {
        format!("arn:aws:ecs:{}:{ACCOUNT}:{resource}", self.region)
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        // Unique and ECS-looking (32 hex digits); the counter keeps ids distinct.
        format!("{:016x}{:016x}", fastrand::u64(..), self.next_id)
    }

    /// Allocate the next task address, skipping .0 and .255 of every /24.
    fn allocate_address(&mut self) -> Ipv4Addr {
        loop {
            let a = Ipv4Addr::from(self.next_address);
            self.next_address += 1;
            let last = a.octets()[3];
            if last != 0 && last != 255 {
                return a;
            }
        }
    }

    /// Resolve a cluster name or ARN (default: `default`).
    pub fn cluster_name(&self, given: Option<&str>) -> Result<String, ApiError> {
        let name = given
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
            .unwrap_or_else(|| "default".into());
        if self.clusters.contains_key(&name) {
            Ok(name)
        } else {
            Err(ApiError::client("ClusterNotFoundException", "Cluster not found."))
        }
    }

    pub fn create_cluster(&mut self, name: &str) -> Value {
        let arn = self.arn(&format!("cluster/{name}"));
        let c = self.clusters.entry(name.to_string()).or_insert_with(|| ClusterState {
            arn,
            name: name.to_string(),
            ..Default::default()
        });
        json!({"clusterArn": c.arn, "clusterName": c.name, "status": "ACTIVE"})
    }

    pub fn cluster_json(&self, name: &str) -> Option<Value> {
        let c = self.clusters.get(name)?;
        let running = c.tasks.values().filter(|t| t.last_status == "RUNNING").count();
        let pending = c.tasks.values().filter(|t| t.last_status == "PENDING").count();
        Some(json!({
            "clusterArn": c.arn, "clusterName": c.name, "status": "ACTIVE",
            "runningTasksCount": running, "pendingTasksCount": pending,
            "registeredContainerInstancesCount": c.container_instances.len(),
            "activeServicesCount": 0,
        }))
    }

    /// RegisterTaskDefinition: store a new revision of the family.
    pub fn register_task_definition(&mut self, input: &Value) -> Result<Value, ApiError> {
        let family = input["family"]
            .as_str()
            .filter(|f| !f.is_empty())
            .ok_or_else(|| ApiError::invalid("family is required"))?
            .to_string();
        let containers = input["containerDefinitions"]
            .as_array()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ApiError::invalid("containerDefinitions is required"))?;
        for c in containers {
            if c["name"].as_str().is_none_or(str::is_empty) {
                return Err(ApiError::invalid("every container definition needs a name"));
            }
        }
        // As ECS: a proxyConfiguration it cannot apply is refused, not stored.
        if !input["proxyConfiguration"].is_null() {
            let proxy = berth_common::proxy_config::ProxyConfig::from_json(&input["proxyConfiguration"].to_string())
                .map_err(ApiError::invalid)?;
            if !containers.iter().any(|c| c["name"] == proxy.container_name.as_str()) {
                return Err(ApiError::invalid(format!(
                    "proxyConfiguration.containerName {} names no container of the task definition",
                    proxy.container_name
                )));
            }
        }
        let revisions = self.taskdefs.entry(family.clone()).or_default();
        let revision = revisions.len() + 1;
        let mut def = input.clone();
        def["taskDefinitionArn"] = json!(format!(
            "arn:aws:ecs:{}:{ACCOUNT}:task-definition/{family}:{revision}",
            self.region
        ));
        def["revision"] = json!(revision);
        def["status"] = json!("ACTIVE");
        if def["networkMode"].is_null() {
            def["networkMode"] = json!("awsvpc");
        }
        def["registeredAt"] = json!(now());
        revisions.push(def.clone());
        Ok(def)
    }

    /// Every `berth.mesh.aliases` name the registered task definitions give (what a
    /// private DNS zone or Cloud Map would answer for), read as the gateway reads labels.
    pub fn mesh_aliases(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .taskdefs
            .values()
            .flatten()
            .flat_map(|d| d["containerDefinitions"].as_array().into_iter().flatten())
            .flat_map(|c| {
                let labels: std::collections::BTreeMap<String, String> = c["dockerLabels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                berth_common::labels::parse(&labels).0.mesh.aliases
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Resolve `family`, `family:revision` or a full ARN (latest ACTIVE revision for a family).
    pub fn task_definition(&self, given: &str) -> Result<&Value, ApiError> {
        let short = given.rsplit('/').next().unwrap_or(given);
        let (family, rev) = match short.split_once(':') {
            Some((f, r)) => (f, r.parse::<usize>().ok()),
            None => (short, None),
        };
        let revisions = self
            .taskdefs
            .get(family)
            .ok_or_else(|| ApiError::client("ClientException", "Unable to describe task definition."))?;
        let idx = match rev {
            Some(r) if r >= 1 && r <= revisions.len() => r - 1,
            Some(_) => {
                return Err(ApiError::client(
                    "ClientException",
                    "Unable to describe task definition.",
                ));
            }
            None => revisions.len() - 1,
        };
        Ok(&revisions[idx])
    }

    /// RunTask: `count` tasks of a task definition, with RunTask's `overrides` (of which
    /// berth-local honours `taskRoleArn`; `Value::Null` for none), RUNNING at once (the
    /// process runner and the full lifecycle come with berth-local's runner).
    #[allow(clippy::too_many_arguments)]
    pub fn run_task(
        &mut self,
        cluster: Option<&str>,
        taskdef: &str,
        count: usize,
        group: Option<&str>,
        started_by: Option<&str>,
        launch_type: Option<&str>,
        overrides: &Value,
    ) -> Result<Vec<Value>, ApiError> {
        self.launch(cluster, taskdef, count, group, started_by, launch_type, None, overrides)
    }

    /// Tasks as the scheduler of `service` starts them (group `service:NAME`, and in the
    /// service as ECS counts it), without a service to schedule them: for tests.
    pub fn run_service_task(&mut self, cluster: &str, taskdef: &str, service: &str) -> Result<Value, ApiError> {
        let group = format!("service:{service}");
        let mut out = self.launch(
            Some(cluster),
            taskdef,
            1,
            Some(&group),
            None,
            None,
            Some(service),
            &Value::Null,
        )?;
        Ok(out.remove(0))
    }

    /// RunTask, or a service's scheduler starting its tasks (`service`).
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        cluster: Option<&str>,
        taskdef: &str,
        count: usize,
        group: Option<&str>,
        started_by: Option<&str>,
        launch_type: Option<&str>,
        service: Option<&str>,
        overrides: &Value,
    ) -> Result<Vec<Value>, ApiError> {
        let cluster = self.cluster_name(cluster)?;
        if count == 0 || count > 10 {
            return Err(ApiError::invalid("count must be between 1 and 10"));
        }
        let def = self.task_definition(taskdef)?.clone();
        let family = def["family"].as_str().unwrap_or_default().to_string();
        let bridge = def["networkMode"] == "bridge";
        let role_override = overrides["taskRoleArn"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        let role_arn = role_of(&def, overrides);
        let mut out = Vec::new();
        for _ in 0..count {
            let id = self.new_id();
            let arn = self.arn(&format!("task/{cluster}/{id}"));
            let address = if bridge { None } else { Some(self.allocate_address()) };
            let mut containers = Vec::new();
            for c in def["containerDefinitions"].as_array().into_iter().flatten() {
                let mut bindings = Vec::new();
                if bridge {
                    for m in c["portMappings"].as_array().into_iter().flatten() {
                        let cp = m["containerPort"].as_u64().unwrap_or(0) as u16;
                        let hp = match m["hostPort"].as_u64() {
                            Some(h) if h > 0 => h as u16,
                            _ => {
                                self.next_host_port = self.next_host_port.wrapping_add(1).max(32768);
                                self.next_host_port
                            }
                        };
                        bindings.push((cp, hp));
                    }
                }
                let docker_id = self.new_id();
                containers.push(ContainerState {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    health: "UNKNOWN".to_string(),
                    bindings,
                    last_status: if self.managed { "PENDING" } else { "RUNNING" }.into(),
                    exit_code: None,
                    docker_id,
                });
            }
            let ci = if bridge {
                self.clusters
                    .get(&cluster)
                    .and_then(|c| c.container_instances.keys().next().cloned())
            } else {
                None
            };
            let task = TaskState {
                arn: arn.clone(),
                id: id.clone(),
                cluster: cluster.clone(),
                taskdef_arn: def["taskDefinitionArn"].as_str().unwrap_or_default().to_string(),
                group: group.map(str::to_string).unwrap_or_else(|| format!("family:{family}")),
                service: service.map(str::to_string),
                started_by: started_by.map(str::to_string),
                last_status: if self.managed { "PROVISIONING" } else { "RUNNING" }.into(),
                desired_status: "RUNNING".into(),
                launch_type: launch_type
                    .unwrap_or(if bridge { "EC2" } else { "FARGATE" })
                    .to_string(),
                containers,
                address,
                container_instance_arn: ci,
                created_at: now(),
                started_at: if self.managed { None } else { Some(now()) },
                stopping_at: None,
                stopped_at: None,
                stopped_reason: None,
                stop_code: None,
                role_override: role_override.clone(),
                // Every task its own session of the role, as ECS gives it.
                role: role_arn.as_deref().map(TaskRole::issue),
            };
            out.push(self.task_json(&task));
            if let Some(c) = self.clusters.get_mut(&cluster) {
                c.tasks.insert(id, task);
            }
        }
        Ok(out)
    }

    pub fn find_task_mut(&mut self, cluster: &str, task: &str) -> Option<&mut TaskState> {
        let id = task.rsplit('/').next().unwrap_or(task);
        self.clusters.get_mut(cluster)?.tasks.get_mut(id)
    }

    /// StopTask: desired STOPPED at once; the task is STOPPED (this model has no
    /// processes yet, so nothing to wait for).
    pub fn stop_task(&mut self, cluster: Option<&str>, task: &str, reason: Option<&str>) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(cluster)?;
        let managed = self.managed;
        let t = self
            .find_task_mut(&cluster, task)
            .ok_or_else(|| ApiError::invalid("The referenced task was not found."))?;
        t.desired_status = "STOPPED".into();
        if t.stopped_reason.is_none() {
            t.stopped_reason = Some(reason.unwrap_or("Task stopped by user").to_string());
            t.stop_code = Some("UserInitiated".into());
        }
        if !managed {
            t.last_status = "STOPPED".into();
            t.stopped_at = Some(now());
        }
        let t = t.clone();
        Ok(self.task_json(&t))
    }

    /// Set a container's health status (`HEALTHY`, `UNHEALTHY`, `UNKNOWN`).
    pub fn set_health(&mut self, cluster: &str, task: &str, container: &str, health: &str) -> bool {
        match self.find_task_mut(cluster, task) {
            Some(t) => match t.containers.iter_mut().find(|c| c.name == container) {
                Some(c) => {
                    c.health = health.to_string();
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// Register an EC2 container instance (bridge and host modes) with its private IP.
    pub fn register_container_instance(
        &mut self,
        cluster: &str,
        ec2_instance_id: &str,
        ip: Ipv4Addr,
    ) -> Option<String> {
        self.ec2_instances.insert(ec2_instance_id.to_string(), ip);
        let id = self.new_id();
        let arn = self.arn(&format!("container-instance/{cluster}/{id}"));
        self.clusters
            .get_mut(cluster)?
            .container_instances
            .insert(arn.clone(), ec2_instance_id.to_string());
        Some(arn)
    }

    /// ListTasks with ECS's filters and pagination; `desiredStatus` defaults to RUNNING.
    pub fn list_tasks(&self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let max = match input["maxResults"].as_u64() {
            Some(m) if (1..=100).contains(&m) => m as usize,
            Some(_) => return Err(ApiError::invalid("maxResults must be between 1 and 100")),
            None => 100,
        };
        let start = match input["nextToken"].as_str() {
            Some(tok) => tok
                .strip_prefix("bl-")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| ApiError::invalid("Invalid nextToken"))?,
            None => 0,
        };
        let desired = input["desiredStatus"].as_str().unwrap_or("RUNNING");
        let family = input["family"].as_str();
        let service = input["serviceName"]
            .as_str()
            .map(|s| s.rsplit('/').next().unwrap_or(s).to_string());
        let started_by = input["startedBy"].as_str();
        let launch_type = input["launchType"].as_str();
        let c = &self.clusters[&cluster];
        let matching: Vec<&TaskState> = c
            .tasks
            .values()
            .filter(|t| t.desired_status == desired)
            .filter(|t| family.is_none_or(|f| self.family_of(t) == f))
            .filter(|t| service.as_ref().is_none_or(|s| t.service.as_ref() == Some(s)))
            .filter(|t| started_by.is_none_or(|s| t.started_by.as_deref() == Some(s)))
            .filter(|t| launch_type.is_none_or(|l| t.launch_type == l))
            .collect();
        let page: Vec<&str> = matching.iter().skip(start).take(max).map(|t| t.arn.as_str()).collect();
        let mut out = json!({ "taskArns": page });
        if start + max < matching.len() {
            out["nextToken"] = json!(format!("bl-{}", start + max));
        }
        Ok(out)
    }

    fn family_of(&self, t: &TaskState) -> String {
        let short = t.taskdef_arn.rsplit('/').next().unwrap_or_default();
        short.split(':').next().unwrap_or_default().to_string()
    }

    /// DescribeTasks: at most 100 tasks, unknown ones as `failures` with reason MISSING.
    pub fn describe_tasks(&self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let wanted = input["tasks"]
            .as_array()
            .ok_or_else(|| ApiError::invalid("tasks is required"))?;
        if wanted.len() > 100 {
            return Err(ApiError::invalid("Tasks cannot have more than 100 elements"));
        }
        let c = &self.clusters[&cluster];
        let mut tasks = Vec::new();
        let mut failures = Vec::new();
        for w in wanted {
            let given = w.as_str().unwrap_or_default();
            let id = given.rsplit('/').next().unwrap_or(given);
            match c.tasks.get(id) {
                Some(t) => tasks.push(self.task_json(t)),
                None => failures.push(json!({"arn": given, "reason": "MISSING"})),
            }
        }
        Ok(json!({"tasks": tasks, "failures": failures}))
    }

    pub fn describe_container_instances(&self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let wanted = input["containerInstances"]
            .as_array()
            .ok_or_else(|| ApiError::invalid("containerInstances is required"))?;
        if wanted.len() > 100 {
            return Err(ApiError::invalid(
                "containerInstances cannot have more than 100 elements",
            ));
        }
        let c = &self.clusters[&cluster];
        let mut found = Vec::new();
        let mut failures = Vec::new();
        for w in wanted {
            let given = w.as_str().unwrap_or_default();
            let id = given.rsplit('/').next().unwrap_or(given);
            match c
                .container_instances
                .iter()
                .find(|(arn, _)| arn.ends_with(&format!("/{id}")))
            {
                Some((arn, ec2)) => found.push(json!({
                    "containerInstanceArn": arn, "ec2InstanceId": ec2, "status": "ACTIVE", "agentConnected": true,
                })),
                None => failures.push(json!({"arn": given, "reason": "MISSING"})),
            }
        }
        Ok(json!({"containerInstances": found, "failures": failures}))
    }

    /// EC2 DescribeInstances (query protocol) for the given ids, as XML.
    pub fn describe_instances_xml(&self, ids: &[String]) -> String {
        let mut items = String::new();
        for id in ids {
            if let Some(ip) = self.ec2_instances.get(id) {
                items.push_str(&format!(
                    "<item><instanceId>{id}</instanceId><instanceState><code>16</code><name>running</name></instanceState>\
                     <privateIpAddress>{ip}</privateIpAddress></item>"
                ));
            }
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>berth-local</requestId><reservationSet><item><reservationId>r-local</reservationId>\
             <instancesSet>{items}</instancesSet></item></reservationSet></DescribeInstancesResponse>"
        )
    }

    /// A task in the DescribeTasks shape.
    pub fn task_json(&self, t: &TaskState) -> Value {
        let def = self.task_definition(&t.taskdef_arn).ok();
        let containers: Vec<Value> = t
            .containers
            .iter()
            .map(|c| {
                let mut v = json!({
                    "containerArn": format!("arn:aws:ecs:{}:{ACCOUNT}:container/{}/{}/{}", self.region, t.cluster, t.id, c.name),
                    "taskArn": t.arn, "name": c.name, "lastStatus": c.last_status,
                    "healthStatus": c.health, "runtimeId": c.docker_id,
                });
                if let Some(code) = c.exit_code {
                    v["exitCode"] = json!(code);
                }
                if !c.bindings.is_empty() {
                    v["networkBindings"] = json!(c.bindings.iter().map(|(cp, hp)| json!({
                        "bindIP": "0.0.0.0", "containerPort": cp, "hostPort": hp, "protocol": "tcp"
                    })).collect::<Vec<_>>());
                }
                if let Some(a) = t.address {
                    v["networkInterfaces"] = json!([{ "attachmentId": format!("eni-{}", &t.id[..8]), "privateIpv4Address": a.to_string() }]);
                }
                v
            })
            .collect();
        let health = if t.containers.iter().any(|c| c.health == "UNHEALTHY") {
            "UNHEALTHY"
        } else if !t.containers.is_empty() && t.containers.iter().all(|c| c.health == "HEALTHY") {
            "HEALTHY"
        } else {
            "UNKNOWN"
        };
        let mut v = json!({
            "taskArn": t.arn,
            "clusterArn": self.clusters.get(&t.cluster).map(|c| c.arn.clone()).unwrap_or_default(),
            "taskDefinitionArn": t.taskdef_arn,
            "group": t.group,
            "lastStatus": t.last_status,
            "desiredStatus": t.desired_status,
            "launchType": t.launch_type,
            "healthStatus": health,
            "containers": containers,
            "createdAt": t.created_at,
            "version": 1,
            "overrides": {"containerOverrides": [], "inferenceAcceleratorOverrides": []},
        });
        if let Some(r) = &t.role_override {
            v["overrides"]["taskRoleArn"] = json!(r);
        }
        if let Some(s) = &t.started_by {
            v["startedBy"] = json!(s);
        }
        if let Some(r) = &t.stopped_reason {
            v["stoppedReason"] = json!(r);
        }
        if let Some(c) = &t.stop_code {
            v["stopCode"] = json!(c);
        }
        for (key, value) in [
            ("startedAt", t.started_at),
            ("stoppingAt", t.stopping_at),
            ("stoppedAt", t.stopped_at),
        ] {
            if let Some(ts) = value {
                v[key] = json!(ts);
            }
        }
        if let Some(ci) = &t.container_instance_arn {
            v["containerInstanceArn"] = json!(ci);
        }
        if let Some(a) = t.address {
            v["attachments"] = json!([{
                "id": format!("{}-eni", &t.id[..8]), "type": "ElasticNetworkInterface", "status": "ATTACHED",
                "details": [
                    {"name": "subnetId", "value": "subnet-local"},
                    {"name": "networkInterfaceId", "value": format!("eni-{}", &t.id[..8])},
                    {"name": "privateIPv4Address", "value": a.to_string()},
                ]
            }]);
        }
        if let Some(d) = def
            && let Some(cpu) = d["cpu"].as_str()
        {
            v["cpu"] = json!(cpu);
        }
        v
    }
}

// === impl Ecs: services ===

impl Ecs {
    fn service_mut(&mut self, cluster: &str, given: &str) -> Result<&mut ServiceState, ApiError> {
        let name = given.rsplit('/').next().unwrap_or(given);
        self.clusters
            .get_mut(cluster)
            .and_then(|c| c.services.get_mut(name))
            .filter(|s| s.status == "ACTIVE")
            .ok_or_else(|| ApiError::client("ServiceNotFoundException", "Service not found."))
    }

    /// CreateService: a service keeps `desiredCount` tasks of its task definition running.
    pub fn create_service(&mut self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let name = input["serviceName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid("serviceName is required"))?
            .to_string();
        if self.clusters[&cluster]
            .services
            .get(&name)
            .is_some_and(|s| s.status == "ACTIVE")
        {
            return Err(ApiError::invalid("Creation of service was not idempotent."));
        }
        let td = input["taskDefinition"]
            .as_str()
            .ok_or_else(|| ApiError::invalid("taskDefinition is required"))?;
        let taskdef_arn = self.task_definition(td)?["taskDefinitionArn"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dc = &input["deploymentConfiguration"];
        let deployment = self.new_deployment(&taskdef_arn);
        let svc = ServiceState {
            arn: self.arn(&format!("service/{cluster}/{name}")),
            name: name.clone(),
            cluster: cluster.clone(),
            desired_count: input["desiredCount"].as_u64().unwrap_or(0) as usize,
            launch_type: input["launchType"].as_str().unwrap_or("FARGATE").to_string(),
            minimum_healthy_percent: dc["minimumHealthyPercent"].as_u64().unwrap_or(100) as u32,
            maximum_percent: dc["maximumPercent"].as_u64().unwrap_or(200) as u32,
            deployments: vec![deployment],
            status: "ACTIVE".into(),
            created_at: now(),
        };
        let v = self.service_json(&svc);
        if let Some(c) = self.clusters.get_mut(&cluster) {
            c.services.insert(name, svc);
        }
        Ok(v)
    }

    fn new_deployment(&mut self, taskdef_arn: &str) -> Deployment {
        let id = format!("ecs-svc/{}", &self.new_id()[..19]);
        Deployment {
            id,
            status: "PRIMARY".into(),
            taskdef_arn: taskdef_arn.to_string(),
            rollout_state: "IN_PROGRESS".into(),
            created_at: now(),
            updated_at: now(),
        }
    }

    /// UpdateService: `desiredCount`, `taskDefinition` (a new deployment), `forceNewDeployment`.
    pub fn update_service(&mut self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let given = input["service"]
            .as_str()
            .ok_or_else(|| ApiError::invalid("service is required"))?;
        let new_td = match input["taskDefinition"].as_str() {
            Some(td) => Some(
                self.task_definition(td)?["taskDefinitionArn"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            None => None,
        };
        let force = input["forceNewDeployment"].as_bool().unwrap_or(false);
        let current_td = self.service_mut(&cluster, given)?.deployments[0].taskdef_arn.clone();
        let redeploy = force || new_td.as_ref().is_some_and(|td| *td != current_td);
        let deployment = redeploy.then(|| self.new_deployment(new_td.as_deref().unwrap_or(&current_td)));
        let svc = self.service_mut(&cluster, given)?;
        if let Some(n) = input["desiredCount"].as_u64() {
            svc.desired_count = n as usize;
        }
        let dc = &input["deploymentConfiguration"];
        if let Some(m) = dc["minimumHealthyPercent"].as_u64() {
            svc.minimum_healthy_percent = m as u32;
        }
        if let Some(m) = dc["maximumPercent"].as_u64() {
            svc.maximum_percent = m as u32;
        }
        if let Some(d) = deployment {
            for old in &mut svc.deployments {
                old.status = "ACTIVE".into();
            }
            svc.deployments.insert(0, d);
        }
        let svc = svc.clone();
        Ok(self.service_json(&svc))
    }

    /// DeleteService: only with `desiredCount` 0 unless `force`; its tasks are stopped.
    pub fn delete_service(&mut self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let given = input["service"]
            .as_str()
            .ok_or_else(|| ApiError::invalid("service is required"))?;
        let force = input["force"].as_bool().unwrap_or(false);
        let svc = self.service_mut(&cluster, given)?;
        if svc.desired_count > 0 && !force {
            return Err(ApiError::invalid(
                "The service cannot be stopped while it is scaled above 0.",
            ));
        }
        svc.status = "INACTIVE".into();
        svc.desired_count = 0;
        let svc = svc.clone();
        let ids: Vec<String> = self.clusters[&cluster]
            .tasks
            .values()
            .filter(|t| t.service.as_ref() == Some(&svc.name) && t.desired_status == "RUNNING")
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            let _ = self.stop_task(Some(&cluster), &id, Some("Service deleted"));
        }
        Ok(self.service_json(&svc))
    }

    pub fn list_services(&self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let arns: Vec<&str> = self.clusters[&cluster]
            .services
            .values()
            .filter(|s| s.status == "ACTIVE")
            .map(|s| s.arn.as_str())
            .collect();
        Ok(json!({"serviceArns": arns}))
    }

    pub fn describe_services(&self, input: &Value) -> Result<Value, ApiError> {
        let cluster = self.cluster_name(input["cluster"].as_str())?;
        let mut services = Vec::new();
        let mut failures = Vec::new();
        for w in input["services"].as_array().into_iter().flatten() {
            let given = w.as_str().unwrap_or_default();
            let name = given.rsplit('/').next().unwrap_or(given);
            match self.clusters[&cluster].services.get(name) {
                Some(s) => services.push(self.service_json(s)),
                None => failures.push(json!({"arn": given, "reason": "MISSING"})),
            }
        }
        Ok(json!({"services": services, "failures": failures}))
    }

    fn service_tasks<'a>(&'a self, svc: &ServiceState) -> impl Iterator<Item = &'a TaskState> + 'a {
        let name = svc.name.clone();
        self.clusters
            .get(&svc.cluster)
            .into_iter()
            .flat_map(|c| c.tasks.values())
            .filter(move |t| t.service.as_ref() == Some(&name))
    }

    pub fn service_json(&self, svc: &ServiceState) -> Value {
        let tasks: Vec<&TaskState> = self
            .service_tasks(svc)
            .filter(|t| t.desired_status == "RUNNING")
            .collect();
        let deployments: Vec<Value> = svc
            .deployments
            .iter()
            .map(|d| {
                let mine = tasks.iter().filter(|t| t.started_by.as_deref() == Some(d.id.as_str()));
                let (running, pending) = mine.fold((0, 0), |(r, p), t| {
                    if t.last_status == "RUNNING" {
                        (r + 1, p)
                    } else {
                        (r, p + 1)
                    }
                });
                json!({
                    "id": d.id, "status": d.status, "taskDefinition": d.taskdef_arn,
                    "desiredCount": if d.status == "PRIMARY" { svc.desired_count } else { 0 },
                    "runningCount": running, "pendingCount": pending,
                    "rolloutState": d.rollout_state, "launchType": svc.launch_type,
                    "createdAt": d.created_at, "updatedAt": d.updated_at,
                })
            })
            .collect();
        let running = tasks.iter().filter(|t| t.last_status == "RUNNING").count();
        json!({
            "serviceArn": svc.arn, "serviceName": svc.name,
            "clusterArn": self.clusters.get(&svc.cluster).map(|c| c.arn.clone()).unwrap_or_default(),
            "status": svc.status, "desiredCount": svc.desired_count,
            "runningCount": running, "pendingCount": tasks.len() - running,
            "launchType": svc.launch_type,
            "taskDefinition": svc.deployments.first().map(|d| d.taskdef_arn.clone()).unwrap_or_default(),
            "deploymentConfiguration": {
                "minimumHealthyPercent": svc.minimum_healthy_percent, "maximumPercent": svc.maximum_percent
            },
            "deployments": deployments,
            "createdAt": svc.created_at,
            "schedulingStrategy": "REPLICA",
        })
    }

    /// Whether a task counts as healthy for deployments: RUNNING, and HEALTHY for every
    /// container that has a health check.
    fn task_healthy(&self, t: &TaskState) -> bool {
        if t.last_status != "RUNNING" {
            return false;
        }
        let Ok(def) = self.task_definition(&t.taskdef_arn) else {
            return false;
        };
        def["containerDefinitions"].as_array().into_iter().flatten().all(|cd| {
            !cd["healthCheck"].is_object()
                || t.containers
                    .iter()
                    .any(|c| Some(c.name.as_str()) == cd["name"].as_str() && c.health == "HEALTHY")
        })
    }

    /// The service scheduler: start and stop tasks so each service converges on its
    /// desired count and primary deployment, within minimumHealthyPercent and
    /// maximumPercent, as ECS's rolling update does.
    pub fn reconcile_services(&mut self) {
        let services: Vec<ServiceState> = self
            .clusters
            .values()
            .flat_map(|c| c.services.values())
            .filter(|s| s.status == "ACTIVE")
            .cloned()
            .collect();
        for svc in services {
            let primary = svc.deployments[0].clone();
            let live: Vec<TaskState> = self
                .service_tasks(&svc)
                .filter(|t| t.desired_status == "RUNNING")
                .cloned()
                .collect();
            let is_primary = |t: &TaskState| t.started_by.as_deref() == Some(primary.id.as_str());
            let desired = svc.desired_count;
            let max_total = desired * svc.maximum_percent as usize / 100;
            let min_healthy = (desired * svc.minimum_healthy_percent as usize).div_ceil(100);
            let primary_count = live.iter().filter(|t| is_primary(t)).count();
            let healthy = live.iter().filter(|t| self.task_healthy(t)).count();
            let mut to_stop: Vec<(String, &str)> = Vec::new();
            // Old deployments' tasks that are not healthy yet can go at any time; healthy
            // ones only while enough healthy tasks remain.
            let mut spare = healthy.saturating_sub(min_healthy);
            let mut old: Vec<&TaskState> = live.iter().filter(|t| !is_primary(t)).collect();
            old.sort_by_key(|t| self.task_healthy(t));
            for t in old {
                if !self.task_healthy(t) {
                    to_stop.push((t.id.clone(), "Deployment replaced the task"));
                } else if spare > 0 && primary_count > 0 {
                    spare -= 1;
                    to_stop.push((t.id.clone(), "Deployment replaced the task"));
                }
            }
            // Scale down: extra primary tasks, not-yet-running ones first.
            if primary_count > desired {
                let mut extra: Vec<&TaskState> = live.iter().filter(|t| is_primary(t)).collect();
                extra.sort_by_key(|t| (t.last_status == "RUNNING", t.created_at as i64));
                for t in extra.into_iter().take(primary_count - desired) {
                    to_stop.push((t.id.clone(), "Scaling activity initiated by deployment"));
                }
            }
            let stopping = to_stop.len();
            for (id, reason) in to_stop {
                if let Some(t) = self.find_task_mut(&svc.cluster, &id) {
                    t.stop_code = Some("ServiceSchedulerInitiated".into());
                }
                let _ = self.stop_task(Some(&svc.cluster), &id, Some(reason));
            }
            // Scale up the primary within maximumPercent.
            let total_after = live.len() - stopping;
            let room = max_total.max(desired).saturating_sub(total_after);
            let want = desired.saturating_sub(primary_count.min(desired));
            let mut start = want.min(room);
            while start > 0 {
                let n = start.min(10);
                let _ = self.launch(
                    Some(&svc.cluster),
                    &primary.taskdef_arn,
                    n,
                    Some(&format!("service:{}", svc.name)),
                    Some(&primary.id),
                    Some(&svc.launch_type),
                    Some(&svc.name),
                    &Value::Null,
                );
                start -= n;
            }
            // Rollout state.
            let done = primary_count >= desired
                && live
                    .iter()
                    .filter(|t| is_primary(t))
                    .filter(|t| self.task_healthy(t))
                    .count()
                    >= desired
                && live.iter().all(is_primary);
            if done
                && let Some(s) = self
                    .clusters
                    .get_mut(&svc.cluster)
                    .and_then(|c| c.services.get_mut(&svc.name))
            {
                s.deployments.truncate(1);
                if s.deployments[0].rollout_state != "COMPLETED" {
                    s.deployments[0].rollout_state = "COMPLETED".into();
                    s.deployments[0].updated_at = now();
                }
            }
        }
    }

    /// Forget tasks stopped longer ago than the retention.
    pub fn forget_stopped(&mut self) {
        let cutoff = now() - self.stopped_retention;
        for c in self.clusters.values_mut() {
            c.tasks.retain(|_, t| t.stopped_at.is_none_or(|s| s > cutoff));
        }
    }
}

// === task roles ===

/// How long a task's credentials are good for (ECS refreshes them well before).
const LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// A task's role session: what its credentials endpoint serves.
#[derive(Debug, Clone)]
pub struct TaskRole {
    pub role_arn: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// The path of the task's credentials on the metadata server.
    pub credentials_path: String,
    /// What the credentials endpoint wants as `Authorization`.
    pub endpoint_token: String,
    pub expiration: SystemTime,
}

pub(crate) fn random(alphabet: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| char::from(alphabet[fastrand::usize(..alphabet.len())]))
        .collect()
}

pub(crate) const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub(crate) const HEX: &[u8] = b"0123456789abcdef";

impl TaskRole {
    /// New credentials for a session of `role_arn`.
    pub(crate) fn issue(role_arn: &str) -> TaskRole {
        TaskRole {
            role_arn: role_arn.to_string(),
            access_key_id: format!("ASIA{}", random(UPPER, 16)),
            secret_access_key: random(MIXED, 40),
            session_token: random(MIXED, 120),
            credentials_path: format!("/v2/credentials/{}", random(HEX, 32)),
            endpoint_token: random(HEX, 32),
            expiration: SystemTime::now() + LIFETIME,
        }
    }
}

/// The task's role: RunTask's `overrides.taskRoleArn`, else its definition's.
pub(crate) fn role_of(def: &Value, overrides: &Value) -> Option<String> {
    [&overrides["taskRoleArn"], &def["taskRoleArn"]]
        .into_iter()
        .filter_map(Value::as_str)
        .find(|r| !r.is_empty())
        .map(str::to_string)
}
