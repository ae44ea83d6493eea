//! Certificate issuance on the control API, against a gateway process discovering a
//! local ECS: the token, the task's existence and status, the source address, the CSR,
//! the identity derived from the task, renewal over mTLS.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{ContainerDefinition, PortMapping};
use berth_common::control::{
    CERTIFICATES_PATH, CertificateRequest, CertificateResponse, DEREGISTER_PATH, Deregistration, ErrorResponse,
    MESH_PATH, MeshView, REGISTRATIONS_PATH, Registration, RegistrationAck,
};
use berth_common::identity::spiffe_id_of;
use berth_common::mtls::{CertSlot, TrustAnchors};
use berth_common::test_util::eventually;
use berth_e2e::{GatewayProcess, ecs_client, free_port, temp_dir};
use berth_local::{Ecs, EcsServer};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const TOKEN: &str = "a-very-secret-bootstrap-token";

struct Mesh {
    _server: EcsServer,
    gw: GatewayProcess,
    control: SocketAddr,
    anchors: TrustAnchors,
    ecs: aws_sdk_ecs::Client,
    server: EcsServer,
}

async fn setup(first: Ipv4Addr, refresh: &str) -> Mesh {
    berth_common::tls::install_crypto_provider();
    let server = EcsServer::start("127.0.0.1:0".parse().unwrap(), Ecs::new("us-east-1", first))
        .await
        .unwrap();
    server.ecs.lock().unwrap().create_cluster("prod");
    let ecs = ecs_client(&server.endpoint_url());
    ecs.register_task_definition()
        .family("orders")
        .container_definitions(
            ContainerDefinition::builder()
                .name("berth-sidecar")
                .image("berth-sidecar")
                .port_mappings(PortMapping::builder().container_port(15443).build())
                .build(),
        )
        .container_definitions(
            ContainerDefinition::builder()
                .name("app")
                .image("x")
                .port_mappings(PortMapping::builder().container_port(8080).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let dir = temp_dir("mesh");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = GatewayProcess::spawn(
        &[
            "--ecs-cluster",
            "prod",
            "--ecs-refresh",
            refresh,
            "--mesh-dev-ca",
            dir.join("ca").to_str().unwrap(),
            "--mesh-listen",
            &control.to_string(),
            "--mesh-token-file",
            dir.join("token").to_str().unwrap(),
        ],
        &[("AWS_ENDPOINT_URL", &server.endpoint_url())],
    );
    gw.wait_admin().await;
    let ca_pem = std::fs::read(dir.join("ca/ca.crt")).unwrap();
    let anchor = CertificateDer::from_pem_slice(&ca_pem).unwrap();
    let anchors = TrustAnchors::from_certs(&[anchor]).unwrap();
    Mesh {
        _server: server.clone(),
        gw,
        control,
        anchors,
        ecs,
        server,
    }
}

async fn run_task(m: &Mesh) -> (String, Ipv4Addr) {
    run_task_in(m, "orders").await
}

/// A task of `service`, as its scheduler starts it.
async fn run_task_in(m: &Mesh, service: &str) -> (String, Ipv4Addr) {
    let t = m
        .server
        .ecs
        .lock()
        .unwrap()
        .run_service_task("prod", "orders", service)
        .unwrap();
    let arn = t["taskArn"].as_str().unwrap().to_string();
    let id = arn.rsplit('/').next().unwrap().to_string();
    let ip = m.server.ecs.lock().unwrap().clusters["prod"].tasks[&id]
        .address
        .unwrap();
    (arn, ip)
}

fn csr(asking: Option<&str>) -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    if let Some(uri) = asking {
        p.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(uri).unwrap())];
    }
    (p.serialize_request(&key).unwrap().pem().unwrap(), key)
}

/// POST a certificate request from `source`, optionally presenting a client certificate.
async fn request(m: &Mesh, source: Ipv4Addr, body: Vec<u8>, client: Option<Arc<CertSlot>>) -> (u16, Vec<u8>) {
    call(m, source, "POST", CERTIFICATES_PATH, body, client).await
}

/// Any control-API request from `source`.
async fn call(
    m: &Mesh,
    source: Ipv4Addr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    client: Option<Arc<CertSlot>>,
) -> (u16, Vec<u8>) {
    berth_e2e::control_call(m.control, &m.anchors, source, method, path, body, client).await
}

fn body(task_arn: &str, csr_pem: &str, token: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&CertificateRequest {
        task_arn: task_arn.into(),
        csr_pem: csr_pem.into(),
        token: token.map(String::from),
        iam: None,
    })
    .unwrap()
}

fn refusal(bytes: &[u8]) -> ErrorResponse {
    serde_json::from_slice(bytes).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn issuance_checks_every_claim() {
    let m = setup(Ipv4Addr::new(127, 0, 160, 1), "300ms").await;
    let (arn, ip) = run_task(&m).await;
    let (csr_pem, key) = csr(Some("spiffe://berth.local/ecs/prod/admin"));

    // A new task is described on demand: no waiting for the next reconcile round.
    let (status, bytes) = request(&m, ip, body(&arn, &csr_pem, Some(TOKEN)), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let issued: CertificateResponse = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        issued.identity, "spiffe://berth.local/ecs/prod/orders",
        "from the task, not the CSR"
    );
    let leaf = CertificateDer::pem_slice_iter(issued.certificate_chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(spiffe_id_of(&leaf).unwrap().to_string(), issued.identity);
    let log = m.gw.log();
    assert!(
        log.contains("certificate issued") && log.contains(&issued.serial),
        "issuance is logged"
    );

    // Renewal over mTLS with the current certificate, no token.
    let slot = berth_e2e::slot_of(&issued, &key);
    let (csr2, _) = csr(None);
    let (status, bytes) = request(&m, ip, body(&arn, &csr2, None), Some(slot)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));

    // Refusals, each with its reason.
    let (status, bytes) = request(&m, ip, body(&arn, &csr_pem, Some("wrong-token-wrong-token")), None).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (401, "bad_token"));
    let (status, bytes) = request(&m, ip, body(&arn, &csr_pem, None), None).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (401, "bad_token"));

    let other_ip = Ipv4Addr::new(127, 0, 160, 99);
    let (status, bytes) = request(&m, other_ip, body(&arn, &csr_pem, Some(TOKEN)), None).await;
    let r = refusal(&bytes);
    assert_eq!((status, r.code.as_str()), (403, "wrong_source"));
    assert!(
        r.error.contains("127.0.160.99") && r.error.contains(&ip.to_string()),
        "{}",
        r.error
    );

    let ghost = format!("{}/00000000000000000000000000000000", arn.rsplit_once('/').unwrap().0);
    let (status, bytes) = request(&m, ip, body(&ghost, &csr_pem, Some(TOKEN)), None).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (403, "unknown_task"));

    let (status, bytes) = request(
        &m,
        ip,
        body(
            &arn,
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            Some(TOKEN),
        ),
        None,
    )
    .await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (400, "bad_csr"));

    let (status, bytes) = request(&m, ip, b"{garbage".to_vec(), None).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (400, "bad_request"));

    // A stopped task gets nothing, even with the right token and address.
    m.ecs.stop_task().cluster("prod").task(&arn).send().await.unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        let (status, bytes) = request(&m, ip, body(&arn, &csr_pem, Some(TOKEN)), None).await;
        status == 403 && matches!(refusal(&bytes).code.as_str(), "task_not_running" | "unknown_task")
    })
    .await;
    assert!(refused, "a stopped task is refused");
}

#[tokio::test]
async fn unknown_tasks_are_described_at_once_not_at_the_next_round() {
    // A long refresh: only the on-demand DescribeTasks can find the new task in time.
    let m = setup(Ipv4Addr::new(127, 0, 161, 1), "600s").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (arn, ip) = run_task(&m).await;
    let (csr_pem, _) = csr(None);
    let started = Instant::now();
    let (status, bytes) = request(&m, ip, body(&arn, &csr_pem, Some(TOKEN)), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(m.server.calls().get("DescribeTasks").is_some_and(|n| *n >= 1));
}

/// `GET /v1/mesh?...` with the task's certificate.
async fn mesh_view(m: &Mesh, ip: Ipv4Addr, path_and_query: &str, slot: &Arc<CertSlot>) -> (u16, Vec<u8>) {
    call(m, ip, "GET", path_and_query, vec![], Some(slot.clone())).await
}

/// `POST /v1/registrations` with the task's certificate.
async fn register(m: &Mesh, ip: Ipv4Addr, body: Vec<u8>, slot: &Arc<CertSlot>) -> (u16, Vec<u8>) {
    call(m, ip, "POST", REGISTRATIONS_PATH, body, Some(slot.clone())).await
}

/// A certificate for the task, as the sidecar would hold it.
async fn certified(m: &Mesh, arn: &str, ip: Ipv4Addr) -> Arc<CertSlot> {
    let (csr_pem, key) = csr(None);
    let (status, bytes) = request(m, ip, body(arn, &csr_pem, Some(TOKEN)), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let issued: CertificateResponse = serde_json::from_slice(&bytes).unwrap();
    berth_e2e::slot_of(&issued, &key)
}

fn registration(arn: &str, ip: Ipv4Addr, healthy: bool) -> Vec<u8> {
    serde_json::to_vec(&Registration {
        task_arn: arn.into(),
        cluster: "prod".into(),
        service: "claims-to-be-admin".into(),
        family: "orders".into(),
        revision: "1".into(),
        launch_type: None,
        network_mode: Some("awsvpc".into()),
        address: Some(ip.to_string()),
        port: Some(8080),
        labels: Default::default(),
        containers: vec![],
        healthy,
        inbound_port: Some(15443),
        sidecar_version: Some("test".into()),
    })
    .unwrap()
}

#[tokio::test]
async fn registration_needs_the_tasks_certificate_and_the_mesh_view_long_polls() {
    let m = setup(Ipv4Addr::new(127, 0, 162, 1), "300ms").await;
    let (arn, ip) = run_task(&m).await;
    let slot = certified(&m, &arn, ip).await;

    // Without a certificate: refused, whatever the body says.
    let (status, bytes) = call(&m, ip, "POST", REGISTRATIONS_PATH, registration(&arn, ip, true), None).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (401, "no_certificate"));
    // With it: accepted under a lease; the identity is the task's, not the claimed service.
    let (status, bytes) = register(&m, ip, registration(&arn, ip, true), &slot).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let ack: RegistrationAck = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(ack.identity, "spiffe://berth.local/ecs/prod/orders");
    assert!(ack.heartbeat_ms < ack.lease_ms, "{ack:?}");
    let listed = m.gw.admin_json("/api/sidecars").await;
    assert_eq!(listed[0]["taskArn"], arn.as_str(), "{listed}");
    assert_eq!(listed[0]["service"], "orders", "the verified service wins: {listed}");
    assert_eq!(listed[0]["state"], "live");
    assert!(listed[0]["certificateNotAfterUnix"].as_f64().unwrap() > 0.0);

    // This certificate cannot speak for a task of another service.
    let (other_arn, other_ip) = run_task_in(&m, "billing").await;
    let (status, bytes) = register(&m, other_ip, registration(&other_arn, other_ip, true), &slot).await;
    let r = refusal(&bytes);
    assert_eq!((status, r.code.as_str()), (403, "identity_mismatch"), "{}", r.error);
    // From another address than the task's.
    let (status, bytes) = register(&m, other_ip, registration(&arn, ip, true), &slot).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (403, "wrong_source"));
    // Garbage, and the wrong method.
    let (status, bytes) = call(
        &m,
        ip,
        "POST",
        REGISTRATIONS_PATH,
        b"\x00garbage".to_vec(),
        Some(slot.clone()),
    )
    .await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (400, "bad_request"));
    let (status, _) = call(&m, ip, "GET", REGISTRATIONS_PATH, vec![], Some(slot.clone())).await;
    assert_eq!(status, 405);

    // The mesh view: needs a certificate, validates names, answers at once for a new
    // version and 204 when nothing changed within the wait.
    let (status, bytes) = call(&m, ip, "GET", &format!("{MESH_PATH}?services=orders"), vec![], None).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (401, "no_certificate"));
    let (status, bytes) = mesh_view(&m, ip, &format!("{MESH_PATH}?services=bad/name"), &slot).await;
    assert_eq!((status, refusal(&bytes).code.as_str()), (400, "bad_name"));
    let (status, bytes) = mesh_view(&m, ip, &format!("{MESH_PATH}?services=nosuch"), &slot).await;
    assert_eq!(status, 200);
    let view: MeshView = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(view.unknown, vec!["nosuch".to_string()]);
    let started = Instant::now();
    let (status, body) = mesh_view(
        &m,
        ip,
        &format!("{MESH_PATH}?services=nosuch&version={}&wait_ms=400", view.version),
        &slot,
    )
    .await;
    assert_eq!(status, 204, "{view:?} then {}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() >= Duration::from_millis(350), "it waited");

    // Deregistration: draining at once, and a late heartbeat does not revive it.
    let dereg = serde_json::to_vec(&Deregistration { task_arn: arn.clone() }).unwrap();
    let (status, _) = call(&m, ip, "POST", DEREGISTER_PATH, dereg, Some(slot.clone())).await;
    assert_eq!(status, 200);
    let _ = register(&m, ip, registration(&arn, ip, true), &slot).await;
    assert_eq!(m.gw.admin_json("/api/sidecars").await[0]["state"], "draining");
}

#[tokio::test]
async fn a_task_gets_no_identity_it_is_not_entitled_to() {
    let m = setup(Ipv4Addr::new(127, 0, 164, 1), "300ms").await;
    // The real service, with one task.
    let (real, _) = run_task(&m).await;
    // RunTask lets its caller write any group: `service:orders` does not make it a task
    // of service orders (ECS does not list it there).
    let forged = m
        .ecs
        .run_task()
        .cluster("prod")
        .task_definition("orders")
        .group("service:orders")
        .send()
        .await
        .unwrap();
    let forged_arn = forged.tasks()[0].task_arn().unwrap().to_string();
    let forged_ip = task_ip(&m, &forged_arn);
    let (csr_pem, _) = csr(None);
    let (status, bytes) = request(&m, forged_ip, body(&forged_arn, &csr_pem, Some(TOKEN)), None).await;
    let r = refusal(&bytes);
    assert_eq!((status, r.code.as_str()), (403, "no_identity"), "{}", r.error);
    assert!(r.error.contains("does not list it"), "{}", r.error);

    // A standalone task whose family is the name of a service of the cluster would share
    // that service's identity: refused while the service exists.
    {
        let mut ecs = m.server.ecs.lock().unwrap();
        ecs.create_service(&serde_json::json!({
            "cluster": "prod", "serviceName": "orders", "taskDefinition": "orders", "desiredCount": 0
        }))
        .unwrap();
    }
    let standalone = m
        .ecs
        .run_task()
        .cluster("prod")
        .task_definition("orders")
        .send()
        .await
        .unwrap();
    let standalone_arn = standalone.tasks()[0].task_arn().unwrap().to_string();
    let standalone_ip = task_ip(&m, &standalone_arn);
    let (status, bytes) = request(&m, standalone_ip, body(&standalone_arn, &csr_pem, Some(TOKEN)), None).await;
    let r = refusal(&bytes);
    assert_eq!((status, r.code.as_str()), (403, "no_identity"), "{}", r.error);
    assert!(r.error.contains("service orders"), "{}", r.error);
    // The real task is unaffected.
    let real_ip = task_ip(&m, &real);
    let (status, bytes) = request(&m, real_ip, body(&real, &csr_pem, Some(TOKEN)), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
}

fn task_ip(m: &Mesh, arn: &str) -> Ipv4Addr {
    let id = arn.rsplit('/').next().unwrap().to_string();
    m.server.ecs.lock().unwrap().clusters["prod"].tasks[&id]
        .address
        .unwrap()
}
