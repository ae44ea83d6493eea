//! ECS API peers for the discovery tests: an SDK client with test credentials, moto (another
//! implementation of the ECS wire format) and berth-local's ECS API in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An ECS client for a test peer: explicit region, dummy credentials, the endpoint.
pub fn ecs_client(endpoint: &str) -> aws_sdk_ecs::Client {
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_ecs::Client::from_conf(conf)
}

/// A moto server: the one at `MOTO_ENDPOINT`, or one started with the moto-loopback tool
/// ([`moto_tool`]), stopped on drop.
pub struct Moto {
    pub endpoint: String,
    child: Option<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Moto {
    pub async fn start() -> Moto {
        if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") {
            return Moto { endpoint, child: None };
        }
        let tool = moto_tool();
        assert!(
            tool.exists(),
            "moto-loopback not found at {} (set BERTH_MOTO_TOOL to it, or MOTO_ENDPOINT to a running moto)",
            tool.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .arg(&tool)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (pip install 'moto[server]'; scripts/test.sh does it)");
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not start (pip install 'moto[server]')"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // moto-loopback freezes the task state machine right after start.
        tokio::time::sleep(Duration::from_millis(500)).await;
        moto
    }
}

/// The moto-loopback tool (a moto server whose tasks get loopback addresses): the path in
/// `BERTH_MOTO_TOOL`, else `tools/moto-loopback` in the folder beside the checkout
/// (`../shared/tools/moto-loopback` from the workspace root).
pub fn moto_tool() -> PathBuf {
    match std::env::var_os("BERTH_MOTO_TOOL") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/moto-loopback"),
    }
}

/// berth-local's ECS API on a free port, with cluster `prod`; tasks get addresses from `first`.
pub async fn local_ecs(first: std::net::Ipv4Addr) -> berth_local::EcsServer {
    use berth_local::{Ecs, EcsServer};
    let server = EcsServer::start("127.0.0.1:0".parse().unwrap(), Ecs::new("us-east-1", first))
        .await
        .unwrap();
    server.ecs.lock().unwrap().create_cluster("prod");
    server
}

/// A container `app` listening on `port`, with these docker labels.
pub fn web_container(port: u16, labels: &[(&str, &str)]) -> aws_sdk_ecs::types::ContainerDefinition {
    let mut c = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("app")
        .image("berth-whoami")
        .port_mappings(
            aws_sdk_ecs::types::PortMapping::builder()
                .container_port(port as i32)
                .build(),
        );
    for (k, v) in labels {
        c = c.docker_labels(*k, *v);
    }
    c.build()
}

/// A running task of a service, as DescribeTasks reports it.
#[derive(Debug, Clone)]
pub struct RunningTask {
    pub id: String,
    /// Its first container's address (awsvpc).
    pub address: Option<String>,
    /// Its first container's health status.
    pub health: Option<String>,
}

/// The RUNNING tasks of `service`.
pub async fn running_tasks(ecs: &aws_sdk_ecs::Client, service: &str) -> Vec<RunningTask> {
    let arns = ecs.list_tasks().service_name(service).send().await.unwrap();
    if arns.task_arns().is_empty() {
        return Vec::new();
    }
    let d = ecs
        .describe_tasks()
        .set_tasks(Some(arns.task_arns().to_vec()))
        .send()
        .await
        .unwrap();
    d.tasks()
        .iter()
        .filter(|t| t.last_status() == Some("RUNNING"))
        .filter_map(|t| {
            let c = t.containers().first();
            Some(RunningTask {
                id: t.task_arn()?.rsplit('/').next()?.to_string(),
                address: c
                    .and_then(|c| c.network_interfaces().first())
                    .and_then(|n| n.private_ipv4_address())
                    .map(String::from),
                health: c.and_then(|c| c.health_status()).map(|h| h.as_str().to_string()),
            })
        })
        .collect()
}

/// A query-protocol call to moto for `service` (`ec2`, `iam`, `sts`) at API `version`:
/// moto routes by the SigV4 credential scope and does not check signatures; the XML.
pub async fn moto_query(endpoint: &str, service: &str, version: &str, params: &[(&str, &str)]) -> String {
    let mut body = format!("Version={version}");
    for (k, v) in params {
        body.push_str(&format!("&{k}={}", form_encode(v)));
    }
    moto_call(
        endpoint,
        service,
        "POST",
        "/",
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    )
    .await
    .1
}

/// A JSON-protocol call to moto (DynamoDB's `DynamoDB_20120810.<Action>`, for
/// example): the status and the answer.
pub async fn moto_json(
    endpoint: &str,
    service: &str,
    target: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let (status, text) = moto_call(
        endpoint,
        service,
        "POST",
        "/",
        &[("content-type", "application/x-amz-json-1.0"), ("x-amz-target", target)],
        body.to_string(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// A REST call to moto (Route 53's `/2013-04-01/...`): the status and the answer.
pub async fn moto_rest(endpoint: &str, service: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    moto_call(
        endpoint,
        service,
        method,
        path,
        &[("content-type", "application/xml")],
        body.to_string(),
    )
    .await
}

/// One call to moto, which routes by the SigV4 credential scope and the path and does
/// not check signatures.
async fn moto_call(
    endpoint: &str,
    service: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, String) {
    let addr: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
            ),
        );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    let resp = berth_common::test_util::http1(addr, req).await;
    (resp.status.as_u16(), resp.body)
}

/// `application/x-www-form-urlencoded` escaping of a value.
fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of the first `<tag>` in `xml`; panics when there is none.
pub fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no <{tag}> in {xml}")) + open.len();
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    xml[start..end].to_string()
}

/// A VPC (DNS hostnames on), a subnet and a security group in moto, as the awsvpc
/// network configuration of a Fargate RunTask.
pub async fn moto_awsvpc(endpoint: &str) -> aws_sdk_ecs::types::NetworkConfiguration {
    use aws_sdk_ecs::types::{AssignPublicIp, AwsVpcConfiguration, NetworkConfiguration};
    let ec2 = |params: Vec<(&'static str, String)>| async move {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        moto_query(endpoint, "ec2", "2016-11-15", &params).await
    };
    let vpc = xml_field(
        &ec2(vec![
            ("Action", "CreateVpc".into()),
            ("CidrBlock", "10.0.0.0/16".into()),
        ])
        .await,
        "vpcId",
    );
    ec2(vec![
        ("Action", "ModifyVpcAttribute".into()),
        ("VpcId", vpc.clone()),
        ("EnableDnsHostnames.Value", "true".into()),
    ])
    .await;
    let subnet = xml_field(
        &ec2(vec![
            ("Action", "CreateSubnet".into()),
            ("VpcId", vpc.clone()),
            ("CidrBlock", "10.0.1.0/24".into()),
        ])
        .await,
        "subnetId",
    );
    let sg = xml_field(
        &ec2(vec![
            ("Action", "CreateSecurityGroup".into()),
            ("GroupName", "berth".into()),
            ("GroupDescription", "berth".into()),
            ("VpcId", vpc),
        ])
        .await,
        "groupId",
    );
    NetworkConfiguration::builder()
        .awsvpc_configuration(
            AwsVpcConfiguration::builder()
                .subnets(subnet)
                .security_groups(sg)
                .assign_public_ip(AssignPublicIp::Disabled)
                .build()
                .unwrap(),
        )
        .build()
}

/// A Fargate task's ENI address, as DescribeTasks and RunTask report it.
pub fn eni_address(task: &aws_sdk_ecs::types::Task) -> Option<String> {
    task.attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value())
        .map(str::to_string)
}

/// The IAM-identity scenario in cluster `prod`: families `orders` (task role
/// `orders_role`) and `norole`, each a sidecar and an app; then four tasks: two of
/// `orders`, one of `orders` started with `override_role` (`overrides.taskRoleArn`), one of
/// `norole`. `net`: the awsvpc configuration moto wants. The tasks as RunTask gave them.
pub async fn iam_scenario_tasks(
    ecs: &aws_sdk_ecs::Client,
    orders_role: &str,
    override_role: &str,
    net: Option<aws_sdk_ecs::types::NetworkConfiguration>,
) -> Vec<aws_sdk_ecs::types::Task> {
    use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, LaunchType, NetworkMode, PortMapping, TaskOverride};
    for (family, task_role) in [("orders", Some(orders_role)), ("norole", None)] {
        let container = |name: &str, port: i32| {
            ContainerDefinition::builder()
                .name(name)
                .image(name)
                .memory(128)
                .port_mappings(PortMapping::builder().container_port(port).build())
                .build()
        };
        ecs.register_task_definition()
            .family(family)
            .set_task_role_arn(task_role.map(str::to_string))
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("256")
            .memory("512")
            .container_definitions(container("berth-sidecar", 15443))
            .container_definitions(container("app", 8080))
            .send()
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for (family, role) in [
        ("orders", None),
        ("orders", None),
        ("orders", Some(override_role)),
        ("norole", None),
    ] {
        let out = ecs
            .run_task()
            .cluster("prod")
            .task_definition(family)
            .launch_type(LaunchType::Fargate)
            .set_network_configuration(net.clone())
            .set_overrides(role.map(|r| TaskOverride::builder().task_role_arn(r).build()))
            .send()
            .await
            .unwrap();
        tasks.push(out.tasks()[0].clone());
    }
    tasks
}

/// Force a new deployment of `service` and wait (at most `limit`) until it completed with
/// `count` running tasks, none of those running before; whether it did.
pub async fn roll_service(ecs: &aws_sdk_ecs::Client, service: &str, count: usize, limit: std::time::Duration) -> bool {
    let before: Vec<String> = running_tasks(ecs, service).await.into_iter().map(|t| t.id).collect();
    ecs.update_service()
        .service(service)
        .force_new_deployment(true)
        .send()
        .await
        .unwrap();
    berth_common::test_util::eventually(limit, || async {
        let d = ecs.describe_services().services(service).send().await.unwrap();
        let s = &d.services()[0];
        let ids: Vec<String> = running_tasks(ecs, service).await.into_iter().map(|t| t.id).collect();
        s.deployments().len() == 1
            && s.deployments()[0].rollout_state().map(|r| r.as_str()) == Some("COMPLETED")
            && ids.len() == count
            && ids.iter().all(|i| !before.contains(i))
    })
    .await
}
