//! From a described task and its task definition to the containers Berth can route to,
//! in every network mode:
//!
//! - `awsvpc` (Fargate, or EC2 with ENIs): the ENI's `privateIPv4Address` from the task's
//!   `attachments`, else `containers[].networkInterfaces`, else the IPv6 address; the
//!   container port is the port dialled.
//! - `bridge`: the container instance's private IP and the `networkBindings` host port
//!   for each container port.
//! - `host`: the instance's private IP and the container port.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{HealthStatus, NetworkMode, Task, TaskDefinition};

use super::membership::Membership;

/// A routable container (or one excluded, with the reason).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerEndpoint {
    /// Traefik's ECS instance name: `<group with ':' as '-'>-<container>`, e.g.
    /// `service-whoami-whoami`.
    pub instance_name: String,
    pub container: String,
    pub labels: BTreeMap<String, String>,
    pub address: Option<String>,
    /// Container port -> port to dial.
    pub ports: Vec<(u16, u16)>,
    /// `None` when the container may get traffic, else why not.
    pub excluded: Option<String>,
    /// The exclusion comes only from ECS's view of the task's progress or container
    /// health, which a live sidecar registration reports faster and overrides.
    pub state_excluded: bool,
    /// The name in the task's identity: for a task with a sidecar the ECS service ECS
    /// lists it in, else its family ([`super::membership`]); for other tasks the `group`
    /// `service:NAME`, else the family (they have no identity).
    pub service: String,
    /// A task with a sidecar that may not have an identity, and why: it joins neither the
    /// mesh nor any router.
    pub identity_refused: Option<String>,
    /// Why the task's `berth.mesh.name` is refused (it names another service).
    pub alias_refused: Option<String>,
    /// When the task has a sidecar (a container named `berth-sidecar`): the port its
    /// inbound mTLS listener is dialled at. Traffic then goes through the sidecar.
    pub sidecar_port: Option<u16>,
}

/// The container that marks a task as part of the mesh.
pub(crate) const SIDECAR: &str = "berth-sidecar";
/// The sidecar's inbound port (container port).
pub(crate) const SIDECAR_PORT: u16 = 15443;

/// Whether a task is in the mesh (reached through its sidecar, over mTLS): its task
/// definition has a container named `berth-sidecar`, or a container carrying a
/// `berth.mesh.*` label (a sidecar under another name). Decided by the definition alone, so
/// every gateway replica decides the same, connected to the sidecar or not.
pub(crate) fn has_sidecar(def: &TaskDefinition) -> bool {
    def.container_definitions().iter().any(|c| {
        c.name() == Some(SIDECAR)
            || c.docker_labels()
                .is_some_and(|l| l.keys().any(|k| k.to_ascii_lowercase().starts_with("berth.mesh.")))
    })
}

/// The definition's `proxyConfiguration`, parsed: `None` without one.
pub(crate) fn proxy_config(def: &TaskDefinition) -> Option<Result<berth_common::proxy_config::ProxyConfig, String>> {
    let p = def.proxy_configuration()?;
    Some(berth_common::proxy_config::ProxyConfig::from_properties(
        p.r#type().map(|t| t.as_str()),
        p.container_name(),
        p.properties()
            .iter()
            .map(|kv| (kv.name().unwrap_or_default(), kv.value().unwrap_or_default())),
    ))
}

/// Whether a task as a whole may receive traffic: ECS says RUNNING and wants it RUNNING.
pub(crate) fn task_is_running(task: &Task) -> bool {
    task.last_status() == Some("RUNNING") && task.desired_status() == Some("RUNNING")
}

/// The task's network mode, with ECS's defaults (Fargate: awsvpc; EC2: bridge).
pub(crate) fn network_mode(task: &Task, def: &TaskDefinition) -> NetworkMode {
    match def.network_mode() {
        Some(m) => m.clone(),
        None if task.launch_type().map(|l| l.as_str()) == Some("FARGATE") => NetworkMode::Awsvpc,
        None if !task.attachments().is_empty() => NetworkMode::Awsvpc,
        None => NetworkMode::Bridge,
    }
}

/// The ENI address of an awsvpc task.
pub(crate) fn awsvpc_address(task: &Task) -> Option<String> {
    let from_attachment = |key: &str| {
        task.attachments()
            .iter()
            .filter(|a| a.r#type() == Some("ElasticNetworkInterface") || a.r#type() == Some("eni"))
            .flat_map(|a| a.details())
            .find(|d| d.name() == Some(key))
            .and_then(|d| d.value())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    from_attachment("privateIPv4Address")
        .or_else(|| {
            task.containers()
                .iter()
                .flat_map(|c| c.network_interfaces())
                .find_map(|n| n.private_ipv4_address().filter(|a| !a.is_empty()).map(str::to_string))
        })
        .or_else(|| from_attachment("ipv6Address"))
        .or_else(|| {
            task.containers()
                .iter()
                .flat_map(|c| c.network_interfaces())
                .find_map(|n| n.ipv6_address().filter(|a| !a.is_empty()).map(str::to_string))
        })
}

fn port(p: Option<i32>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0)
}

/// Which tasks and containers health keeps out, beyond those reporting UNHEALTHY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthyOnly {
    /// Only UNHEALTHY is kept out.
    #[default]
    Off,
    /// Berth's `--ecs-healthy-only`: a container with a health check until it is HEALTHY.
    Containers,
    /// Traefik's `healthyTasksOnly`: a task whose health status is not HEALTHY (a task
    /// without health checks is UNKNOWN, so it is kept out too, as in Traefik).
    Tasks,
}

/// Every container of the task with its address, ports and eligibility.
/// `host_ip` is the container instance's private IP (bridge and host modes);
/// `membership` what ECS says of a task with a sidecar (none yet: it is not routed).
pub(crate) fn containers(
    task: &Task,
    def: &TaskDefinition,
    host_ip: Option<&str>,
    healthy_only: HealthyOnly,
    membership: Option<&Membership>,
) -> Vec<ContainerEndpoint> {
    let mode = network_mode(task, def);
    let group = task.group().unwrap_or_default().replacen(':', "-", 1);
    let running = task_is_running(task);
    let has_sidecar = has_sidecar(def);
    let (service, identity_refused) = if has_sidecar {
        match membership {
            Some(Membership::Service(n) | Membership::Standalone(n)) => (n.clone(), None),
            Some(Membership::Refused(why)) => (String::new(), Some(why.clone())),
            None => (
                String::new(),
                Some("its service membership is not checked yet".to_string()),
            ),
        }
    } else {
        let service = task
            .group()
            .and_then(|g| g.strip_prefix("service:"))
            .map(str::to_string)
            .or_else(|| def.family().map(str::to_string))
            .unwrap_or_default();
        (service, None)
    };
    let sidecar_port = has_sidecar.then(|| match mode {
        // The host port mapped to the sidecar's 15443, whatever the container's name.
        NetworkMode::Bridge => task
            .containers()
            .iter()
            .flat_map(|c| c.network_bindings())
            .find(|b| port(b.container_port()) == Some(SIDECAR_PORT))
            .and_then(|b| port(b.host_port())),
        _ => Some(SIDECAR_PORT),
    });
    let mut out = Vec::new();
    for c in task.containers() {
        let name = c.name().unwrap_or_default().to_string();
        let Some(cdef) = def
            .container_definitions()
            .iter()
            .find(|d| d.name() == Some(name.as_str()))
        else {
            continue;
        };
        let labels: BTreeMap<String, String> = cdef
            .docker_labels()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let (address, ports) = match mode {
            NetworkMode::Bridge => (
                host_ip.map(str::to_string),
                c.network_bindings()
                    .iter()
                    .filter_map(|b| Some((port(b.container_port())?, port(b.host_port())?)))
                    .collect(),
            ),
            NetworkMode::Host => (
                host_ip.map(str::to_string),
                cdef.port_mappings()
                    .iter()
                    .filter_map(|m| {
                        let p = port(m.container_port())?;
                        Some((p, port(m.host_port()).unwrap_or(p)))
                    })
                    .collect(),
            ),
            _ => (
                awsvpc_address(task),
                cdef.port_mappings()
                    .iter()
                    .filter_map(|m| port(m.container_port()).map(|p| (p, p)))
                    .collect(),
            ),
        };
        let mut excluded = None;
        let mut state_excluded = false;
        if name == SIDECAR {
            excluded = Some("the sidecar itself is not routed".into());
        } else if let Some(why) = &identity_refused {
            excluded = Some(format!("no mesh identity: {why}"));
        } else if has_sidecar && sidecar_port.flatten().is_none() {
            excluded = Some("the sidecar's port 15443 is not mapped".into());
        } else if !running {
            state_excluded = task.desired_status() == Some("RUNNING") && address.is_some();
            excluded = Some(format!(
                "task is {} (desired {})",
                task.last_status().unwrap_or("?"),
                task.desired_status().unwrap_or("?")
            ));
        } else if c.health_status() == Some(&HealthStatus::Unhealthy) {
            state_excluded = address.is_some();
            excluded = Some("container health check reports UNHEALTHY".into());
        } else if healthy_only == HealthyOnly::Containers
            && cdef.health_check().is_some()
            && c.health_status() != Some(&HealthStatus::Healthy)
        {
            state_excluded = address.is_some();
            excluded = Some("container is not HEALTHY yet (--ecs-healthy-only)".into());
        } else if healthy_only == HealthyOnly::Tasks && task.health_status() != Some(&HealthStatus::Healthy) {
            state_excluded = address.is_some();
            excluded = Some(format!(
                "task health is {} (providers.ecs.healthyTasksOnly needs HEALTHY)",
                task.health_status().map_or("UNKNOWN", |h| h.as_str())
            ));
        } else if address.is_none() {
            excluded = Some(match mode {
                NetworkMode::Bridge | NetworkMode::Host => "the container instance's address is not known".into(),
                _ => "the task has no ENI address yet".into(),
            });
        }
        out.push(ContainerEndpoint {
            instance_name: format!("{group}-{name}"),
            container: name,
            labels,
            address,
            ports,
            excluded,
            state_excluded,
            service: service.clone(),
            identity_refused: identity_refused.clone(),
            alias_refused: None,
            sidecar_port: sidecar_port.flatten(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::types::{
        Attachment, Container, ContainerDefinition, KeyValuePair, NetworkBinding, NetworkInterface, PortMapping,
    };

    use super::*;

    fn def(mode: Option<NetworkMode>, health: bool) -> TaskDefinition {
        let mut c = ContainerDefinition::builder()
            .name("app")
            .docker_labels("traefik.enable", "true")
            .port_mappings(PortMapping::builder().container_port(8080).build());
        if health {
            c = c.health_check(
                aws_sdk_ecs::types::HealthCheck::builder()
                    .command("CMD-SHELL")
                    .build()
                    .unwrap(),
            );
        }
        TaskDefinition::builder()
            .set_network_mode(mode)
            .container_definitions(c.build())
            .build()
    }

    fn task(container: Container) -> aws_sdk_ecs::types::builders::TaskBuilder {
        Task::builder()
            .group("service:web")
            .last_status("RUNNING")
            .desired_status("RUNNING")
            .containers(container)
    }

    #[test]
    fn awsvpc_uses_the_eni_attachment_then_the_container_interface() {
        let t = task(Container::builder().name("app").build())
            .attachments(
                Attachment::builder()
                    .r#type("ElasticNetworkInterface")
                    .details(
                        KeyValuePair::builder()
                            .name("privateIPv4Address")
                            .value("10.1.2.3")
                            .build(),
                    )
                    .build(),
            )
            .build();
        let eps = containers(&t, &def(Some(NetworkMode::Awsvpc), false), None, HealthyOnly::Off, None);
        assert_eq!(eps[0].address.as_deref(), Some("10.1.2.3"));
        assert_eq!(eps[0].ports, vec![(8080, 8080)]);
        assert_eq!(eps[0].instance_name, "service-web-app");
        assert_eq!(eps[0].excluded, None);

        let t = task(
            Container::builder()
                .name("app")
                .network_interfaces(NetworkInterface::builder().private_ipv4_address("10.9.9.9").build())
                .build(),
        )
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .build();
        let eps = containers(&t, &def(None, false), None, HealthyOnly::Off, None);
        assert_eq!(eps[0].address.as_deref(), Some("10.9.9.9"));
    }

    #[test]
    fn bridge_maps_container_ports_to_host_ports_on_the_instance() {
        let t = task(
            Container::builder()
                .name("app")
                .network_bindings(NetworkBinding::builder().container_port(8080).host_port(32768).build())
                .build(),
        )
        .build();
        let eps = containers(
            &t,
            &def(Some(NetworkMode::Bridge), false),
            Some("10.0.0.5"),
            HealthyOnly::Off,
            None,
        );
        assert_eq!(eps[0].address.as_deref(), Some("10.0.0.5"));
        assert_eq!(eps[0].ports, vec![(8080, 32768)]);
        let eps = containers(&t, &def(Some(NetworkMode::Bridge), false), None, HealthyOnly::Off, None);
        assert!(eps[0].excluded.as_deref().unwrap().contains("instance"));
    }

    #[test]
    fn the_mesh_is_decided_by_the_task_definition() {
        assert!(!has_sidecar(&def(Some(NetworkMode::Awsvpc), false)));
        let named = TaskDefinition::builder()
            .container_definitions(ContainerDefinition::builder().name(SIDECAR).build())
            .build();
        assert!(has_sidecar(&named));
        let labelled = TaskDefinition::builder()
            .container_definitions(
                ContainerDefinition::builder()
                    .name("app")
                    .docker_labels("berth.mesh.name", "orders")
                    .build(),
            )
            .build();
        assert!(has_sidecar(&labelled));
    }

    #[test]
    fn status_and_health_decide_eligibility() {
        let d = def(Some(NetworkMode::Host), true);
        let t = task(
            Container::builder()
                .name("app")
                .health_status(HealthStatus::Unhealthy)
                .build(),
        )
        .build();
        assert!(
            containers(&t, &d, Some("10.0.0.5"), HealthyOnly::Off, None)[0]
                .excluded
                .is_some()
        );
        let t = task(
            Container::builder()
                .name("app")
                .health_status(HealthStatus::from("UNKNOWN"))
                .build(),
        )
        .build();
        assert!(
            containers(&t, &d, Some("10.0.0.5"), HealthyOnly::Off, None)[0]
                .excluded
                .is_none()
        );
        assert!(
            containers(&t, &d, Some("10.0.0.5"), HealthyOnly::Containers, None)[0]
                .excluded
                .is_some()
        );
        // Traefik's healthyTasksOnly looks at the task: HEALTHY only, UNKNOWN kept out.
        let healthy_task = task(Container::builder().name("app").build())
            .health_status(HealthStatus::Healthy)
            .build();
        assert!(
            containers(&healthy_task, &d, Some("10.0.0.5"), HealthyOnly::Tasks, None)[0]
                .excluded
                .is_none()
        );
        let unknown_task = task(Container::builder().name("app").build()).build();
        let why = containers(&unknown_task, &d, Some("10.0.0.5"), HealthyOnly::Tasks, None)[0]
            .excluded
            .clone();
        assert!(why.unwrap().contains("UNKNOWN"));
        assert!(
            containers(&unknown_task, &d, Some("10.0.0.5"), HealthyOnly::Off, None)[0]
                .excluded
                .is_none()
        );
        let t = task(Container::builder().name("app").build())
            .desired_status("STOPPED")
            .build();
        assert!(
            containers(&t, &d, Some("10.0.0.5"), HealthyOnly::Off, None)[0]
                .excluded
                .is_some()
        );
    }
}
