//! The process runner: it drives the task lifecycle of real ECS and runs each
//! container of a task as a local process.
//!
//! PROVISIONING -> PENDING (containers start in `dependsOn` order: START, HEALTHY,
//! COMPLETE, SUCCESS) -> ACTIVATING -> RUNNING; when the desired status turns STOPPED:
//! DEACTIVATING -> STOPPING (SIGTERM to each container, dependents first, SIGKILL after
//! its `stopTimeout`) -> DEPROVISIONING -> STOPPED. An essential container that exits
//! stops its task. Health checks from the task definition run as processes.
//!
//! Every process joins the process group of berth-local's reaper, so that nothing
//! survives berth-local, even when it is killed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use berth_common::proxy_config::ProxyConfig;

use super::state::{Ecs, TaskState};
use crate::netns::TaskNetwork;

/// The command that runs no process: the container just "runs" (scale tests).
pub(crate) const IDLE: &str = "berth-local:idle";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Where programs are looked up: next to berth-local first, then `PATH`.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    pub dirs: Vec<PathBuf>,
}

impl Programs {
    pub fn resolve(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            return Some(PathBuf::from(program));
        }
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        self.dirs
            .iter()
            .chain(path_dirs.iter())
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    }

    /// The program a container or health check names, with the name to run it under:
    /// Berth's gateway image also has the gateway as `traefik` (Traefik's name). A path
    /// inside one of Berth's images (`/berth-sidecar`, as the image's own health check
    /// says) is that program here.
    fn find(&self, program: &str) -> Option<(PathBuf, Option<String>)> {
        let in_image = program
            .strip_prefix('/')
            .filter(|p| BERTH_IMAGES.contains(p) && !std::path::Path::new(program).is_file());
        if let Some(name) = in_image {
            return self.resolve(name).map(|p| (p, None));
        }
        match self.resolve(program) {
            Some(p) => Some((p, None)),
            None if program == "traefik" => self.resolve("berth-gateway").map(|p| (p, Some(program.to_string()))),
            None => None,
        }
    }
}

/// Berth's images, whose entrypoint is their one program (`/berth-sidecar`, ...).
const BERTH_IMAGES: [&str; 2] = ["berth-sidecar", "berth-gateway"];

/// The entrypoint of `image` when it is one of Berth's (any registry, any tag): a
/// container with neither `entryPoint` nor `command` runs it, as ECS runs the image's.
fn image_entrypoint(image: &str) -> Option<&'static str> {
    let repo = image.rsplit('/').next()?;
    let name = repo.split([':', '@']).next()?;
    BERTH_IMAGES.iter().copied().find(|b| *b == name)
}

struct HealthState {
    next_check: Instant,
    failures: u32,
    running: Option<tokio::task::JoinHandle<bool>>,
}

struct Proc {
    child: Option<tokio::process::Child>,
    /// The container's environment (health checks run with it too).
    env: Vec<(String, String)>,
    /// Its working directory (health checks run there too).
    cwd: Option<PathBuf>,
    /// What its programs run under: the task's network namespace and user, if any.
    prefix: Vec<String>,
    term_sent: Option<Instant>,
    stop_timeout: Duration,
    health: Option<HealthState>,
    started: Instant,
}

/// Settings shared by every container the runner starts.
#[derive(Debug, Clone, Default)]
pub struct RunnerConfig {
    pub programs: Programs,
    /// `http://127.0.0.1:PORT`: the TMDS base; each container gets `<base>/v4/<docker id>`.
    pub tmds_base: String,
    /// Process group to put every child in (the reaper's), if any.
    pub process_group: Option<u32>,
    /// Variables passed to every container (OTEL_*, RUST_LOG, ...).
    pub passthrough: Vec<(String, String)>,
    /// Container output goes to `<logs>/<task id>-<container>.log`.
    pub logs: PathBuf,
    /// Default stopTimeout (ECS: 30 s).
    pub default_stop_timeout: Duration,
    /// Extra variables for `berth-sidecar` containers (the gateway's control API, the
    /// trust anchor, the bootstrap token), unless the task definition sets them.
    pub sidecar_env: Vec<(String, String)>,
    /// When the gateway runs as an ECS service (`--gateways N`): its service name and
    /// control-API port. Each sidecar then gets `BERTH_GATEWAY` listing the replicas
    /// running when it starts.
    pub gateway_service: Option<(String, u16)>,
    /// The local ECS API (`http://ADDR`): every container's AWS SDK is pointed at it
    /// (`AWS_ENDPOINT_URL`, dummy credentials), as the task role would let it call ECS.
    pub aws_endpoint: Option<String>,
}

/// `${NAME}` in a container's command, from its environment (as a shell would); unknown
/// names stay as written.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

pub struct Runner {
    ecs: Arc<Mutex<Ecs>>,
    cfg: RunnerConfig,
    procs: HashMap<String, Proc>,
    /// The network namespaces of tasks with a `proxyConfiguration`, by task id.
    networks: HashMap<String, TaskNetwork>,
    /// Numbers the namespaces.
    networks_made: u64,
}

fn container_def<'a>(def: &'a Value, name: &str) -> Option<&'a Value> {
    def["containerDefinitions"]
        .as_array()?
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// A command for `program`, run under `prefix` (`ip netns exec NS setpriv ...`) if any.
fn prefixed(prefix: &[String], program: &std::path::Path) -> tokio::process::Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = tokio::process::Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    }
}

/// Send a signal to a process by pid (through `kill(1)`: no unsafe code here).
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Runner {
    pub fn new(ecs: Arc<Mutex<Ecs>>, cfg: RunnerConfig) -> Runner {
        ecs.lock().unwrap_or_else(|e| e.into_inner()).managed = true;
        crate::netns::remove_stale();
        Runner {
            ecs,
            cfg,
            procs: HashMap::new(),
            networks: HashMap::new(),
            networks_made: 0,
        }
    }

    /// Drive everything forward every 100 ms until the future is dropped.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            self.step().await;
        }
    }

    /// Stop every task (as on Ctrl-C) and wait for them, at most `limit`.
    pub async fn shutdown(&mut self, limit: Duration) {
        {
            let mut ecs = self.ecs.lock().unwrap_or_else(|e| e.into_inner());
            for c in ecs.clusters.values_mut() {
                for s in c.services.values_mut() {
                    s.desired_count = 0;
                }
            }
            let ids: Vec<(String, String)> = ecs
                .clusters
                .values()
                .flat_map(|c| c.tasks.values())
                .filter(|t| t.desired_status == "RUNNING")
                .map(|t| (t.cluster.clone(), t.id.clone()))
                .collect();
            for (cluster, id) in ids {
                let _ = ecs.stop_task(Some(&cluster), &id, Some("berth-local is shutting down"));
            }
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.step().await;
            let busy = self.procs.values().any(|p| p.child.is_some());
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for p in self.procs.values_mut() {
            if let Some(c) = &mut p.child {
                let _ = c.start_kill();
            }
        }
        self.networks.clear();
    }

    /// One pass over every task.
    pub async fn step(&mut self) {
        let tasks: Vec<(TaskState, Value)> = {
            let mut ecs = self.ecs.lock().unwrap_or_else(|e| e.into_inner());
            ecs.reconcile_services();
            ecs.forget_stopped();
            ecs.clusters
                .values()
                .flat_map(|c| c.tasks.values())
                .filter(|t| t.last_status != "STOPPED")
                .map(|t| {
                    (
                        t.clone(),
                        ecs.task_definition(&t.taskdef_arn).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect()
        };
        self.networks.retain(|id, _| {
            tasks
                .iter()
                .any(|(t, _)| &t.id == id && t.last_status != "DEPROVISIONING")
        });
        for (task, def) in tasks {
            self.reap_exits(&task, &def);
            self.check_health(&task, &def);
            if task.desired_status == "STOPPED" {
                self.advance_stop(&task, &def);
            } else {
                self.advance_start(&task, &def);
            }
        }
    }

    fn update<F: FnOnce(&mut TaskState)>(&self, task: &TaskState, f: F) {
        let mut ecs = self.ecs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = ecs.find_task_mut(&task.cluster, &task.id) {
            f(t);
        }
    }

    fn container_status(&self, task: &TaskState, name: &str) -> (String, String, Option<i32>) {
        let ecs = self.ecs.lock().unwrap_or_else(|e| e.into_inner());
        ecs.clusters
            .get(&task.cluster)
            .and_then(|c| c.tasks.get(&task.id))
            .and_then(|t| t.containers.iter().find(|c| c.name == name))
            .map(|c| (c.last_status.clone(), c.health.clone(), c.exit_code))
            .unwrap_or_default()
    }

    fn advance_start(&mut self, task: &TaskState, def: &Value) {
        if task.last_status == "PROVISIONING" {
            self.update(task, |t| t.last_status = "PENDING".into());
            return;
        }
        if task.last_status == "ACTIVATING" {
            self.update(task, |t| {
                t.last_status = "RUNNING".into();
                t.started_at = Some(now());
            });
            return;
        }
        if task.last_status != "PENDING" {
            return;
        }
        let mut all_started = true;
        for c in &task.containers {
            if c.last_status != "PENDING" {
                continue;
            }
            let cdef = container_def(def, &c.name).cloned().unwrap_or(Value::Null);
            let ready = cdef["dependsOn"].as_array().into_iter().flatten().all(|d| {
                let dep = d["containerName"].as_str().unwrap_or_default();
                let (status, health, exit) = self.container_status(task, dep);
                match d["condition"].as_str().unwrap_or("START") {
                    "HEALTHY" => health == "HEALTHY",
                    "COMPLETE" => status == "STOPPED",
                    "SUCCESS" => status == "STOPPED" && exit == Some(0),
                    _ => status == "RUNNING" || status == "STOPPED",
                }
            });
            if !ready {
                all_started = false;
                continue;
            }
            if let Err(e) = self.start_container(task, def, &cdef, &c.name, &c.docker_id) {
                eprintln!("berth-local: task {} container {}: {e}", task.id, c.name);
                let reason = format!("CannotStartContainerError: {e}");
                self.update(task, |t| {
                    t.desired_status = "STOPPED".into();
                    t.stop_code = Some("TaskFailedToStart".into());
                    t.stopped_reason = Some(reason);
                    if let Some(cs) = t.containers.iter_mut().find(|x| x.name == c.name) {
                        cs.last_status = "STOPPED".into();
                    }
                });
                return;
            }
        }
        if all_started {
            self.update(task, |t| t.last_status = "ACTIVATING".into());
        }
    }

    /// The task's network namespace, made on its first container's start when its
    /// definition has a `proxyConfiguration`; `None` for the shared loopback.
    fn task_network(&mut self, task: &TaskState, def: &Value) -> Result<Option<&TaskNetwork>, String> {
        if def["proxyConfiguration"].is_null() {
            return Ok(None);
        }
        if !self.networks.contains_key(&task.id) {
            let proxy = ProxyConfig::from_json(&def["proxyConfiguration"].to_string())?;
            let address = task
                .address
                .ok_or("a task with a proxyConfiguration needs an address of its own (awsvpc)")?;
            let mut named: Vec<&str> = vec![self.cfg.tmds_base.as_str()];
            named.extend(self.cfg.aws_endpoint.as_deref());
            named.extend(self.cfg.sidecar_env.iter().map(|(_, v)| v.as_str()));
            named.extend(self.cfg.passthrough.iter().map(|(_, v)| v.as_str()));
            let defined: Vec<String> = def["containerDefinitions"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["environment"].as_array().into_iter().flatten())
                .filter_map(|e| e["value"].as_str().map(str::to_string))
                .collect();
            named.extend(defined.iter().map(String::as_str));
            let host_ports = crate::netns::host_ports(named);
            let aliases = self.ecs.lock().unwrap_or_else(|e| e.into_inner()).mesh_aliases();
            self.networks_made += 1;
            let net = TaskNetwork::create(self.networks_made, address, &proxy, &host_ports, &aliases)?;
            self.networks.insert(task.id.clone(), net);
        }
        Ok(self.networks.get(&task.id))
    }

    fn start_container(
        &mut self,
        task: &TaskState,
        def: &Value,
        cdef: &Value,
        name: &str,
        docker_id: &str,
    ) -> Result<(), String> {
        let prefix = match self.task_network(task, def)? {
            Some(net) => {
                let user = match cdef["user"].as_str() {
                    Some(u) => Some(crate::netns::parse_user(u)?),
                    None => None,
                };
                net.prefix(user)
            }
            None => Vec::new(),
        };
        let namespaced = !prefix.is_empty();
        let mut argv = strings(&cdef["entryPoint"]);
        argv.extend(strings(&cdef["command"]));
        if argv.is_empty()
            && let Some(p) = cdef["image"].as_str().and_then(image_entrypoint)
        {
            argv.push(p.to_string());
        }
        let stop_timeout = cdef["stopTimeout"]
            .as_u64()
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.default_stop_timeout);
        let health = cdef["healthCheck"].is_object().then(|| HealthState {
            next_check: Instant::now() + Duration::from_millis(200),
            failures: 0,
            running: None,
        });
        let env = self.container_env(task, cdef, name, docker_id, namespaced);
        // A container starts in its image's working directory, never in berth-local's:
        // an empty directory of its own, so nothing there is picked up by accident.
        let cwd = self.cfg.logs.join("cwd").join(format!("{}-{name}", task.id));
        let child = if argv.first().map(String::as_str) == Some(IDLE) || argv.is_empty() && cdef["image"] == IDLE {
            None
        } else {
            let program = argv.first().ok_or("the container has no command or entryPoint")?;
            let (path, arg0) = self
                .cfg
                .programs
                .find(program)
                .ok_or_else(|| format!("program `{program}` not found next to berth-local or on PATH"))?;
            std::fs::create_dir_all(&cwd).map_err(|e| format!("{}: {e}", cwd.display()))?;
            let mut cmd = prefixed(&prefix, &path);
            cmd.args(argv[1..].iter().map(|a| expand(a, &env)))
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(&cwd);
            if let Some(alias) = arg0.filter(|_| prefix.is_empty()) {
                cmd.arg0(alias);
            }
            let log_path = self.cfg.logs.join(format!("{}-{name}.log", task.id));
            let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
            let log2 = log.try_clone().map_err(|e| e.to_string())?;
            cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
            if let Some(pg) = self.cfg.process_group {
                cmd.process_group(pg as i32);
            }
            cmd.kill_on_drop(true);
            Some(cmd.spawn().map_err(|e| format!("{program}: {e}"))?)
        };
        self.procs.insert(
            docker_id.to_string(),
            Proc {
                child,
                env,
                cwd: Some(cwd),
                prefix,
                term_sent: None,
                stop_timeout,
                health,
                started: Instant::now(),
            },
        );
        let name = name.to_string();
        self.update(task, |t| {
            if let Some(c) = t.containers.iter_mut().find(|c| c.name == name) {
                c.last_status = "RUNNING".into();
            }
        });
        Ok(())
    }

    /// The environment ECS (and berth-local) gives a container.
    fn container_env(
        &self,
        task: &TaskState,
        cdef: &Value,
        name: &str,
        docker_id: &str,
        namespaced: bool,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())];
        env.extend(self.cfg.passthrough.iter().cloned());
        let region = self.ecs.lock().unwrap_or_else(|e| e.into_inner()).region.clone();
        env.extend([
            (
                "ECS_CONTAINER_METADATA_URI_V4".into(),
                format!("{}/v4/{docker_id}", self.cfg.tmds_base),
            ),
            (
                "ECS_CONTAINER_METADATA_URI".into(),
                format!("{}/v3/{docker_id}", self.cfg.tmds_base),
            ),
            ("AWS_REGION".into(), region),
            ("AWS_EXECUTION_ENV".into(), "AWS_ECS_FARGATE".into()),
            ("HOSTNAME".into(), task.id.clone()),
        ]);
        if let Some(endpoint) = &self.cfg.aws_endpoint {
            env.extend([
                ("AWS_ENDPOINT_URL".into(), endpoint.clone()),
                ("AWS_ACCESS_KEY_ID".into(), "berth-local".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "berth-local".into()),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ]);
        }
        if let Some(role) = &task.role {
            // The documented loopback form of the container credentials endpoint.
            env.extend([
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
                    format!("{}{}", self.cfg.tmds_base, role.credentials_path),
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN".into(), role.endpoint_token.clone()),
            ]);
        }
        if let Some(a) = task.address {
            env.push(("BERTH_LOCAL_ADDRESS".into(), a.to_string()));
            // A gateway's `:80` (Traefik's host-less address) means the task's own address,
            // as in awsvpc, not every loopback address of the host.
            env.push(("BERTH_LISTEN_HOST".into(), a.to_string()));
            if name == "berth-sidecar" {
                // In its own namespace the proxyConfiguration's ports are the sidecar's
                // (App Mesh's ingress is 15000): its admin is on Envoy's 9901, and the
                // outbound is the task's own, on its loopback, as on ECS.
                let admin = if namespaced { 9901 } else { 15000 };
                let outbound = if namespaced {
                    "127.0.0.1".to_string()
                } else {
                    a.to_string()
                };
                env.extend([
                    ("BERTH_INBOUND".into(), format!("{a}:15443")),
                    ("BERTH_OUTBOUND".into(), format!("{outbound}:15001")),
                    ("BERTH_ADMIN".into(), format!("{a}:{admin}")),
                ]);
            }
        }
        if name == "berth-sidecar" {
            env.extend(self.cfg.sidecar_env.iter().cloned());
            if let Some((service, port)) = &self.cfg.gateway_service {
                let ecs = self.ecs.lock().unwrap_or_else(|e| e.into_inner());
                let replicas: Vec<String> = ecs
                    .clusters
                    .values()
                    .flat_map(|c| c.tasks.values())
                    .filter(|t| {
                        t.service.as_deref() == Some(service.as_str())
                            && t.last_status == "RUNNING"
                            && t.desired_status == "RUNNING"
                    })
                    .filter_map(|t| t.address.map(|a| format!("https://{a}:{port}")))
                    .collect();
                env.push(("BERTH_GATEWAY".into(), replicas.join(",")));
            }
        }
        for e in cdef["environment"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                env.push((k.to_string(), v.to_string()));
            }
        }
        env
    }

    /// More variables for sidecars from now on (the dev CA once a gateway replica made it).
    pub fn add_sidecar_env(&mut self, vars: &[(String, String)]) {
        self.cfg.sidecar_env.extend(vars.iter().cloned());
    }

    /// Record exited containers; an essential one stops its task.
    fn reap_exits(&mut self, task: &TaskState, def: &Value) {
        for c in &task.containers {
            let Some(p) = self.procs.get_mut(&c.docker_id) else {
                continue;
            };
            let Some(child) = &mut p.child else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            p.child = None;
            let code = status.code().unwrap_or(137);
            let essential = container_def(def, &c.name).is_none_or(|d| d["essential"].as_bool() != Some(false));
            let stopping = task.desired_status == "STOPPED";
            let name = c.name.clone();
            self.update(task, |t| {
                if let Some(cs) = t.containers.iter_mut().find(|x| x.name == name) {
                    cs.last_status = "STOPPED".into();
                    cs.exit_code = Some(code);
                }
                if essential && !stopping {
                    t.desired_status = "STOPPED".into();
                    t.stop_code = Some("EssentialContainerExited".into());
                    t.stopped_reason = Some(format!("Essential container in task exited ({name}: exit {code})"));
                }
            });
        }
    }

    fn advance_stop(&mut self, task: &TaskState, def: &Value) {
        match task.last_status.as_str() {
            "PROVISIONING" | "PENDING" | "ACTIVATING" | "RUNNING" => {
                self.update(task, |t| {
                    t.last_status = "DEACTIVATING".into();
                    t.stopping_at = Some(now());
                });
            }
            "DEACTIVATING" => self.update(task, |t| t.last_status = "STOPPING".into()),
            "STOPPING" => {
                // Stop containers no running container depends on (dependents first).
                let running: Vec<&str> = task
                    .containers
                    .iter()
                    .filter(|c| {
                        self.procs
                            .get(&c.docker_id)
                            .is_some_and(|p| p.child.is_some() || p.term_sent.is_none())
                            && c.last_status == "RUNNING"
                    })
                    .map(|c| c.name.as_str())
                    .collect();
                let mut any_left = false;
                for c in &task.containers {
                    if c.last_status != "RUNNING" {
                        continue;
                    }
                    any_left = true;
                    let needed_by_running = running.iter().any(|other| {
                        *other != c.name
                            && container_def(def, other)
                                .and_then(|d| d["dependsOn"].as_array())
                                .is_some_and(|deps| {
                                    deps.iter()
                                        .any(|d| d["containerName"].as_str() == Some(c.name.as_str()))
                                })
                    });
                    if needed_by_running {
                        continue;
                    }
                    let Some(p) = self.procs.get_mut(&c.docker_id) else {
                        let name = c.name.clone();
                        self.update(task, |t| {
                            if let Some(cs) = t.containers.iter_mut().find(|x| x.name == name) {
                                cs.last_status = "STOPPED".into();
                            }
                        });
                        continue;
                    };
                    match (&mut p.child, p.term_sent) {
                        (None, _) => {
                            let name = c.name.clone();
                            self.update(task, |t| {
                                if let Some(cs) = t.containers.iter_mut().find(|x| x.name == name) {
                                    cs.last_status = "STOPPED".into();
                                    cs.exit_code.get_or_insert(0);
                                }
                            });
                        }
                        (Some(child), None) => {
                            if let Some(pid) = child.id() {
                                signal(pid, "TERM");
                            }
                            p.term_sent = Some(Instant::now());
                        }
                        (Some(child), Some(at)) if at.elapsed() >= p.stop_timeout => {
                            let _ = child.start_kill();
                        }
                        _ => {}
                    }
                }
                if !any_left {
                    self.update(task, |t| t.last_status = "DEPROVISIONING".into());
                }
            }
            "DEPROVISIONING" => {
                for c in &task.containers {
                    self.procs.remove(&c.docker_id);
                }
                self.update(task, |t| {
                    t.last_status = "STOPPED".into();
                    t.stopped_at = Some(now());
                });
            }
            _ => {}
        }
    }

    fn check_health(&mut self, task: &TaskState, def: &Value) {
        for c in &task.containers {
            let Some(p) = self.procs.get_mut(&c.docker_id) else {
                continue;
            };
            let Some(h) = &mut p.health else {
                continue;
            };
            let hc = container_def(def, &c.name)
                .map(|d| d["healthCheck"].clone())
                .unwrap_or(Value::Null);
            let interval = Duration::from_secs_f64(hc["interval"].as_f64().unwrap_or(30.0).max(0.2));
            let timeout = Duration::from_secs_f64(hc["timeout"].as_f64().unwrap_or(5.0).max(0.1));
            let retries = hc["retries"].as_u64().unwrap_or(3) as u32;
            let start_period = Duration::from_secs_f64(hc["startPeriod"].as_f64().unwrap_or(0.0));
            if let Some(handle) = &h.running {
                if !handle.is_finished() {
                    continue;
                }
                let handle = h.running.take();
                let ok = handle.and_then(|j| j.now_or_never_result()).unwrap_or(false);
                let new_health = if ok {
                    h.failures = 0;
                    Some("HEALTHY")
                } else {
                    h.failures += 1;
                    (h.failures >= retries.max(1) && p.started.elapsed() >= start_period).then_some("UNHEALTHY")
                };
                if let Some(status) = new_health {
                    let name = c.name.clone();
                    self.update(task, |t| {
                        if let Some(cs) = t.containers.iter_mut().find(|x| x.name == name) {
                            cs.health = status.into();
                        }
                    });
                }
                continue;
            }
            if Instant::now() < h.next_check || c.last_status != "RUNNING" {
                continue;
            }
            h.next_check = Instant::now() + interval;
            let mut argv = strings(&hc["command"]);
            let shell = argv.first().map(String::as_str) == Some("CMD-SHELL");
            if !argv.is_empty() {
                argv.remove(0);
            }
            let mut cmd = if shell {
                let mut c = prefixed(&p.prefix, std::path::Path::new("sh"));
                c.arg("-c").arg(argv.join(" "));
                c
            } else {
                let Some((prog, arg0)) = argv.first().and_then(|p| self.cfg.programs.find(p)) else {
                    h.running = Some(tokio::spawn(async { false }));
                    continue;
                };
                let mut c = prefixed(&p.prefix, &prog);
                c.args(&argv[1..]);
                if let Some(name) = arg0.filter(|_| p.prefix.is_empty()) {
                    c.arg0(name);
                }
                c
            };
            cmd.env_clear().envs(p.env.iter().map(|(k, v)| (k, v)));
            if let Some(cwd) = &p.cwd {
                cmd.current_dir(cwd);
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if let Some(pg) = self.cfg.process_group {
                cmd.process_group(pg as i32);
            }
            h.running = Some(tokio::spawn(async move {
                match cmd.spawn() {
                    Ok(mut child) => {
                        matches!(tokio::time::timeout(timeout, child.wait()).await, Ok(Ok(s)) if s.success())
                    }
                    Err(_) => false,
                }
            }));
        }
    }
}

trait NowOrNever {
    fn now_or_never_result(self) -> Option<bool>;
}

impl NowOrNever for tokio::task::JoinHandle<bool> {
    /// The result of a finished task (callers check `is_finished` first).
    fn now_or_never_result(self) -> Option<bool> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut fut = std::pin::pin!(self);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(v)) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod expand_tests {
    use super::expand;

    #[test]
    fn commands_see_the_container_environment() {
        let env = vec![("BERTH_LOCAL_ADDRESS".to_string(), "127.0.100.7".to_string())];
        assert_eq!(expand("web=${BERTH_LOCAL_ADDRESS}:8080", &env), "web=127.0.100.7:8080");
        assert_eq!(expand("${NOPE}/x", &env), "${NOPE}/x");
        assert_eq!(expand("plain ${unterminated", &env), "plain ${unterminated");
    }
}

#[cfg(test)]
mod image_tests {
    use super::image_entrypoint;

    #[test]
    fn berth_images_have_their_entrypoint() {
        assert_eq!(
            image_entrypoint("123456789012.dkr.ecr.us-east-1.amazonaws.com/berth-sidecar:1.2"),
            Some("berth-sidecar")
        );
        assert_eq!(image_entrypoint("berth-gateway@sha256:ab"), Some("berth-gateway"));
        assert_eq!(image_entrypoint("nginx:1.27"), None);
        assert_eq!(image_entrypoint("example/berth-sidecar-fork"), None);
    }
}
