//! `berth-sidecar inject`: add the sidecar to an ECS task definition, as `linkerd inject`
//! does to a Kubernetes manifest. Reads the JSON `aws ecs describe-task-definition`
//! prints (its read-only fields dropped, so the result registers as it is) or a
//! `register-task-definition` input, adds the `berth-sidecar` container first (its
//! health check, ports 15443, the gateway, the trust settings, a log configuration like
//! the app's), makes every other container wait for it (`dependsOn ... HEALTHY`), puts
//! the mesh labels on the app container and `HTTP_PROXY`/`NO_PROXY` where asked, and
//! leaves everything else as it was, key order and layout included. What it changed in
//! the app containers is recorded on the sidecar (label `berth.inject`), so `--uninject`
//! takes exactly that out again and a second inject changes nothing. A task definition
//! it cannot mesh is refused with the reason.

mod json;

use json::J;

/// The largest input read.
pub const MAX_INPUT: usize = json::MAX_BYTES;

/// The sidecar container's name.
pub const SIDECAR: &str = "berth-sidecar";
/// The label on the sidecar that records what inject changed elsewhere.
const RECORD: &str = "berth.inject";
/// The ports the sidecar takes in the task's network namespace.
const SIDECAR_PORTS: [u64; 3] = [15443, 15001, 15000];
/// Fields `describe-task-definition` prints that `register-task-definition` refuses.
const READ_ONLY: [&str; 8] = [
    "taskDefinitionArn",
    "revision",
    "status",
    "requiresAttributes",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "deregisteredAt",
];

/// What to inject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub image: String,
    /// `BERTH_GATEWAY`: the gateway's control API.
    pub gateway: Option<String>,
    /// `BERTH_APP_PORT`; found from the app's port mapping when there is one.
    pub app_port: Option<u16>,
    pub health_path: Option<String>,
    /// Secrets Manager or SSM ARNs for `BERTH_CA_CERT` and `BERTH_TOKEN`.
    pub ca_cert_secret: Option<String>,
    pub token_secret: Option<String>,
    /// Labels `berth.mesh.name` and `berth.mesh.allow` on the app container.
    pub mesh_name: Option<String>,
    pub mesh_allow: Option<String>,
    /// Containers that get `HTTP_PROXY`/`NO_PROXY` (the sidecar's outbound listener).
    pub http_proxy: Vec<String>,
    pub uninject: bool,
}

impl Options {
    /// From `inject`'s arguments.
    pub fn parse(args: &[String]) -> Result<(Options, Option<String>), String> {
        let mut o = Options {
            image: format!("berth-sidecar:{}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let mut file = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut value = || -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{key} needs a value"))
            };
            match key {
                "--uninject" => o.uninject = true,
                "--image" => o.image = value()?,
                "--gateway" => o.gateway = Some(value()?),
                "--app-port" => {
                    let v = value()?;
                    o.app_port = Some(v.parse().map_err(|_| format!("--app-port {v}: not a port"))?)
                }
                "--health-path" => o.health_path = Some(value()?),
                "--ca-cert-secret" => o.ca_cert_secret = Some(value()?),
                "--token-secret" => o.token_secret = Some(value()?),
                "--mesh-name" => o.mesh_name = Some(value()?),
                "--mesh-allow" => o.mesh_allow = Some(value()?),
                "--http-proxy" => o.http_proxy = value()?.split(',').map(|s| s.trim().to_string()).collect(),
                k if k.starts_with("--") => return Err(format!("unknown option {k}")),
                path if file.is_none() => file = Some(path.to_string()),
                extra => return Err(format!("one task definition at a time (`{extra}`)")),
            }
        }
        Ok((o, file))
    }
}

fn name_of(c: &J) -> &str {
    c.get("name").and_then(J::str).unwrap_or_default()
}

/// Whether the input's layout is one inject writes back exactly (the AWS CLI's, any
/// consistent indentation, compact); otherwise the output is the same JSON re-laid out.
pub fn layout_kept(text: &str) -> bool {
    json::faithful(text)
}

/// Inject (or uninject) `text`: the result in the input's layout.
pub fn run(text: &str, o: &Options) -> Result<String, String> {
    let (mut top, layout) = json::parse(text)?;
    if !matches!(top, J::Obj(_)) {
        return Err("not a task definition (a JSON object)".into());
    }
    // describe-task-definition's output: the definition inside, ready to register.
    if let Some(J::Obj(_)) = top.get("taskDefinition") {
        let tags = top
            .get("tags")
            .filter(|t| t.arr().is_some_and(|a| !a.is_empty()))
            .cloned();
        let mut td = top.remove("taskDefinition").unwrap_or(J::Null);
        for k in READ_ONLY {
            td.remove(k);
        }
        if let Some(t) = tags {
            td.set("tags", t);
        }
        top = td;
    }
    if o.uninject {
        uninject(&mut top)?;
    } else {
        inject(&mut top, o)?;
    }
    Ok(json::print(&top, &layout))
}

fn inject(td: &mut J, o: &Options) -> Result<(), String> {
    let mode = td
        .get("networkMode")
        .and_then(J::str)
        .unwrap_or("bridge (the EC2 default)");
    if mode != "awsvpc" {
        return Err(format!(
            "networkMode is {mode}: the sidecar reaches the app at 127.0.0.1 and takes ports 15443, 15001 and \
             15000, which only awsvpc gives each task (Fargate always; on EC2 set networkMode awsvpc)"
        ));
    }
    let Some(containers) = td.get("containerDefinitions").and_then(J::arr) else {
        return Err("no containerDefinitions".into());
    };
    if containers.iter().any(|c| name_of(c) == SIDECAR) {
        // Already injected: nothing changes.
        return Ok(());
    }
    if containers.is_empty() {
        return Err("no containers to mesh".into());
    }
    // ECS's rule for container names (and what keeps the record below readable).
    for c in containers {
        let n = name_of(c);
        if n.is_empty() || n.len() > 255 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!(
                "container name {n:?} is not one ECS accepts (letters, digits, - and _)"
            ));
        }
    }
    if let Some(p) = o.app_port
        && (p == 0 || SIDECAR_PORTS.contains(&u64::from(p)))
    {
        return Err(format!(
            "--app-port {p}: not the app's port (0, or one the sidecar takes)"
        ));
    }
    // A FireLens log router starts before everything and logs for the sidecar too: it
    // neither waits for the sidecar nor is the app.
    let firelens = |c: &J| c.get("firelensConfiguration").is_some();
    let mut app_ports = Vec::new();
    for c in containers {
        for m in c.get("portMappings").and_then(J::arr).into_iter().flatten() {
            let port = m.get("containerPort").and_then(|p| match p {
                J::Num(n) => n.as_u64(),
                _ => None,
            });
            if let Some(p) = port {
                if SIDECAR_PORTS.contains(&p) {
                    return Err(format!(
                        "container {} maps port {p}, which the sidecar takes (15443 inbound, 15001 outbound, 15000 admin)",
                        name_of(c)
                    ));
                }
                app_ports.push((name_of(c).to_string(), p));
            }
        }
    }
    let (app, port) = match (o.app_port, app_ports.as_slice()) {
        (Some(p), _) => (
            app_ports
                .iter()
                .find(|(_, q)| *q == u64::from(p))
                .map(|(n, _)| n.clone())
                .or_else(|| {
                    containers
                        .iter()
                        .find(|c| !firelens(c) && c.get("essential") != Some(&J::Bool(false)))
                        .map(|c| name_of(c).to_string())
                })
                .unwrap_or_default(),
            u64::from(p),
        ),
        (None, [(name, p)]) => (name.clone(), *p),
        (None, []) => return Err("no container maps a port: give --app-port".into()),
        (None, _) => return Err("several ports are mapped: give --app-port (the one the sidecar serves)".into()),
    };
    for name in &o.http_proxy {
        if !containers.iter().any(|c| name_of(c) == name) {
            return Err(format!("--http-proxy: no container {name}"));
        }
    }
    let logs = containers
        .iter()
        .find(|c| name_of(c) == app)
        .and_then(|c| c.get("logConfiguration"))
        .cloned();

    let mut record: Vec<String> = Vec::new();
    let mut edits: Vec<(String, Edit)> = Vec::new();
    for c in containers {
        let name = name_of(c).to_string();
        if !firelens(c) {
            edits.push((name.clone(), Edit::DependsOn));
        }
        if name == app {
            if let Some(v) = &o.mesh_name {
                edits.push((name.clone(), Edit::Label("berth.mesh.name", v.clone())));
            }
            if let Some(v) = &o.mesh_allow {
                edits.push((name.clone(), Edit::Label("berth.mesh.allow", v.clone())));
            }
        }
        if o.http_proxy.contains(&name) {
            edits.push((name.clone(), Edit::Env("HTTP_PROXY", "http://127.0.0.1:15001".into())));
            edits.push((
                name.clone(),
                Edit::Env("NO_PROXY", "localhost,127.0.0.1,169.254.169.254,169.254.170.2".into()),
            ));
        }
    }
    let list = td
        .get_mut("containerDefinitions")
        .and_then(J::arr_mut)
        .ok_or("no containerDefinitions")?;
    for (name, edit) in &edits {
        let Some(c) = list.iter_mut().find(|c| name_of(c) == name) else {
            continue;
        };
        record.push(edit.apply(c, name)?);
    }
    list.insert(0, sidecar(o, port, logs, &record.join(";"))?);
    Ok(())
}

/// One change to an app container.
enum Edit {
    DependsOn,
    Label(&'static str, String),
    Env(&'static str, String),
}

impl Edit {
    /// Apply it; what to record: `<container>|<what>|<key>|<created>`.
    fn apply(&self, c: &mut J, name: &str) -> Result<String, String> {
        match self {
            Edit::DependsOn => {
                let created = c.get("dependsOn").is_none();
                if created {
                    c.set("dependsOn", J::Arr(Vec::new()));
                }
                if let Some(a) = c.get_mut("dependsOn").and_then(J::arr_mut) {
                    a.push(J::obj(vec![
                        ("containerName", J::s(SIDECAR)),
                        ("condition", J::s("HEALTHY")),
                    ]));
                }
                Ok(format!("{name}|dependsOn||{created}"))
            }
            Edit::Label(key, value) => {
                let created = c.get("dockerLabels").is_none();
                if created {
                    c.set("dockerLabels", J::Obj(Vec::new()));
                }
                let labels = c.get_mut("dockerLabels").ok_or("dockerLabels")?;
                if let Some(old) = labels.get(key) {
                    if old.str() == Some(value.as_str()) {
                        // Already so: nothing to record, nothing to take out later.
                        return Ok(format!("{name}|kept||false"));
                    }
                    return Err(format!("container {name} has label {key} = {old:?} already"));
                }
                labels.set(key, J::s(value));
                Ok(format!("{name}|label|{key}|{created}"))
            }
            Edit::Env(key, value) => {
                let created = c.get("environment").is_none();
                if created {
                    c.set("environment", J::Arr(Vec::new()));
                }
                let env = c.get_mut("environment").and_then(J::arr_mut).ok_or("environment")?;
                if let Some(old) = env.iter().find(|e| e.get("name").and_then(J::str) == Some(key)) {
                    return Err(format!("container {name} sets {key} already ({old:?})"));
                }
                env.push(J::obj(vec![("name", J::s(key)), ("value", J::s(value))]));
                Ok(format!("{name}|env|{key}|{created}"))
            }
        }
    }
}

/// The sidecar's container definition as releases publish it and the Terraform module
/// (`terraform/modules/sidecar`) reads it: what does not depend on the task. Image,
/// environment, secrets and logs are set for each task.
pub const CONTAINER_DEFINITION: &str = include_str!("../../../terraform/modules/sidecar/container-definition.json");

fn sidecar(o: &Options, app_port: u64, logs: Option<J>, record: &str) -> Result<J, String> {
    let mut env = vec![J::obj(vec![
        ("name", J::s("BERTH_APP_PORT")),
        ("value", J::s(&app_port.to_string())),
    ])];
    if let Some(g) = &o.gateway {
        env.push(J::obj(vec![("name", J::s("BERTH_GATEWAY")), ("value", J::s(g))]));
    }
    if let Some(p) = &o.health_path {
        env.push(J::obj(vec![("name", J::s("BERTH_HEALTH_PATH")), ("value", J::s(p))]));
    }
    let mut secrets = Vec::new();
    if let Some(a) = &o.ca_cert_secret {
        secrets.push(J::obj(vec![("name", J::s("BERTH_CA_CERT")), ("valueFrom", J::s(a))]));
    }
    if let Some(a) = &o.token_secret {
        secrets.push(J::obj(vec![("name", J::s("BERTH_TOKEN")), ("valueFrom", J::s(a))]));
    }
    // The published container definition, which the Terraform module uses too.
    let (mut c, _) =
        json::parse(CONTAINER_DEFINITION).map_err(|e| format!("the built-in container definition: {e}"))?;
    c.set("image", J::s(&o.image));
    c.set("environment", J::Arr(env));
    if secrets.is_empty() {
        c.remove("secrets");
    } else {
        c.set("secrets", J::Arr(secrets));
    }
    if let Some(mut l) = logs {
        // The app's log configuration, under the sidecar's own stream prefix.
        if let Some(opts) = l.get_mut("options")
            && opts.get("awslogs-stream-prefix").is_some()
        {
            opts.set("awslogs-stream-prefix", J::s(SIDECAR));
        }
        c.set("logConfiguration", l);
    }
    c.set("dockerLabels", J::obj(vec![(RECORD, J::s(record))]));
    Ok(c)
}

fn uninject(td: &mut J) -> Result<(), String> {
    let Some(list) = td.get_mut("containerDefinitions").and_then(J::arr_mut) else {
        return Err("no containerDefinitions".into());
    };
    let Some(i) = list.iter().position(|c| name_of(c) == SIDECAR) else {
        // Not injected: nothing changes.
        return Ok(());
    };
    let side = list.remove(i);
    let record = side
        .get("dockerLabels")
        .and_then(|l| l.get(RECORD))
        .and_then(J::str)
        .unwrap_or_default()
        .to_string();
    // Undone last first, so a field the first change created goes with the last change.
    for entry in record.split(';').rev().filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split('|').collect();
        let [name, what, key, created] = parts.as_slice() else {
            return Err(format!("the sidecar's {RECORD} label is damaged (`{entry}`)"));
        };
        let Some(c) = list.iter_mut().find(|c| name_of(c) == *name) else {
            continue;
        };
        let created = *created == "true";
        let (field, removed) = match *what {
            "dependsOn" => ("dependsOn", {
                let a = c.get_mut("dependsOn").and_then(J::arr_mut);
                a.map(|a| a.retain(|d| d.get("containerName").and_then(J::str) != Some(SIDECAR)))
                    .is_some()
            }),
            "label" => (
                "dockerLabels",
                c.get_mut("dockerLabels").and_then(|l| l.remove(key)).is_some(),
            ),
            "env" => ("environment", {
                let a = c.get_mut("environment").and_then(J::arr_mut);
                a.map(|a| a.retain(|e| e.get("name").and_then(J::str) != Some(*key)))
                    .is_some()
            }),
            _ => continue,
        };
        let empty = match c.get(field) {
            Some(J::Arr(a)) => a.is_empty(),
            Some(J::Obj(m)) => m.is_empty(),
            _ => false,
        };
        if removed && created && empty {
            c.remove(field);
        }
    }
    // A sidecar added by hand, without the record: the app containers' waits go too.
    if record.is_empty() {
        for c in list.iter_mut() {
            if let Some(a) = c.get_mut("dependsOn").and_then(J::arr_mut) {
                a.retain(|d| d.get("containerName").and_then(J::str) != Some(SIDECAR));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
