//! IAM identity for first certificates, against moto: someone else's STS and ECS. The
//! sidecar's own signer ([`berth_sidecar::IamSigner`], aws-sigv4) signs with credentials
//! moto's STS issued by AssumeRole (the session named after the task, as ECS names it);
//! the gateway rebuilds the request, asks moto who signed it, and checks the answer
//! against the task's role as moto's ECS describes it. Every refusal names its reason.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use berth_common::control::CertificateResponse;
use berth_common::mtls::TrustAnchors;
use berth_e2e::{
    Asker, GatewayProcess, Moto, ecs_client, iam_gateway, moto_query, new_csr, refusal_text, temp_dir, xml_field,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "credentials-endpoint-token";

/// A role in moto's IAM, under a path (assumed-role ARNs drop it).
async fn role(moto: &Moto, name: &str) -> String {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let xml = moto_query(
        &moto.endpoint,
        "iam",
        "2010-05-08",
        &[
            ("Action", "CreateRole"),
            ("RoleName", name),
            ("Path", "/tasks/"),
            ("AssumeRolePolicyDocument", trust),
        ],
    )
    .await;
    xml_field(&xml, "Arn")
}

/// Task role credentials as ECS hands them to a task: a session of the role named after
/// the task's ID.
async fn assume(moto: &Moto, role_arn: &str, session: &str) -> String {
    let xml = moto_query(
        &moto.endpoint,
        "sts",
        "2011-06-15",
        &[
            ("Action", "AssumeRole"),
            ("RoleArn", role_arn),
            ("RoleSessionName", session),
        ],
    )
    .await;
    serde_json::json!({
        "AccessKeyId": xml_field(&xml, "AccessKeyId"),
        "SecretAccessKey": xml_field(&xml, "SecretAccessKey"),
        "Token": xml_field(&xml, "SessionToken"),
        "Expiration": xml_field(&xml, "Expiration"),
        "RoleArn": role_arn,
    })
    .to_string()
}

/// A container credentials endpoint on loopback serving `document` to requests that
/// carry the token (`AWS_CONTAINER_CREDENTIALS_FULL_URI`'s form).
async fn credentials_endpoint(document: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let document = document.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let (status, body) = match head.contains(&format!("authorization: {TOKEN}")) {
                    true => ("200 OK", document),
                    false => ("401 Unauthorized", "{}".to_string()),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// The sidecar's signer for these credentials, signing for `sts` at `sts_endpoint`.
async fn signer(credentials: String, task_arn: &str, sts_endpoint: &str) -> berth_sidecar::IamSigner {
    let at = credentials_endpoint(credentials).await;
    let env = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://{at}/v2/credentials"),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL_STS", sts_endpoint.to_string()),
    ];
    berth_sidecar::IamSigner::from_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()), task_arn)
        .unwrap()
        .unwrap()
}

struct Task {
    arn: String,
    id: String,
    ip: Ipv4Addr,
}

struct Setup {
    control: SocketAddr,
    anchors: TrustAnchors,
    gw: GatewayProcess,
    ecs: aws_sdk_ecs::Client,
}

impl Setup {
    fn asker<'a>(&'a self, task: &'a Task) -> Asker<'a> {
        Asker {
            control: self.control,
            anchors: &self.anchors,
            task_arn: &task.arn,
            source: task.ip,
        }
    }

    async fn ask(&self, task: &Task, csr_pem: &str, iam: Option<berth_common::control::IamProof>) -> (u16, Vec<u8>) {
        self.asker(task).ask(csr_pem, None, iam, None).await
    }

    async fn prove(&self, task: &Task, signer: &berth_sidecar::IamSigner, trust_domain: &str) -> (u16, String) {
        self.asker(task).prove(signer, trust_domain).await
    }
}

async fn setup() -> (Moto, Setup, Vec<Task>, [String; 2]) {
    berth_common::tls::install_crypto_provider();
    let moto = Moto::start().await;
    let ecs = ecs_client(&moto.endpoint);
    let net = berth_e2e::moto_awsvpc(&moto.endpoint).await;
    let orders_role = role(&moto, "orders-task").await;
    let billing_role = role(&moto, "billing-task").await;
    assert!(orders_role.contains(":role/tasks/orders-task"), "{orders_role}");
    ecs.create_cluster().cluster_name("prod").send().await.unwrap();
    let tasks = berth_e2e::iam_scenario_tasks(&ecs, &orders_role, &billing_role, Some(net))
        .await
        .iter()
        .map(|t| {
            let arn = t.task_arn().unwrap().to_string();
            Task {
                id: arn.rsplit('/').next().unwrap().to_string(),
                ip: berth_e2e::eni_address(t).unwrap().parse().unwrap(),
                arn,
            }
        })
        .collect();
    let dir = temp_dir("mesh-iam");
    let (gw, control, anchors) = iam_gateway(&moto.endpoint, &dir, &[]).await;
    (
        moto,
        Setup {
            control,
            anchors,
            gw,
            ecs,
        },
        tasks,
        [orders_role, billing_role],
    )
}

#[tokio::test]
async fn a_task_proves_itself_with_its_role_and_nothing_else_passes() {
    let (moto, s, tasks, [orders_role, billing_role]) = setup().await;
    let sts = moto.endpoint.clone();
    let [a, b, overridden, norole] = &tasks[..] else {
        panic!("four tasks")
    };

    // Task A, with its own role session: a certificate, no token.
    let sign_a = signer(assume(&moto, &orders_role, &a.id).await, &a.arn, &sts).await;
    let (csr_pem, _) = new_csr();
    let proof = sign_a.proof(&csr_pem, "berth.local").await.unwrap();
    let (status, body) = s.ask(a, &csr_pem, Some(proof.clone())).await;
    assert_eq!(status, 200, "{}", refusal_text(&body));
    let granted: CertificateResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(granted.identity, "spiffe://berth.local/ecs/prod/orders");

    // The same signature again: accepted once only.
    let (status, body) = s.ask(a, &csr_pem, Some(proof.clone())).await;
    assert_eq!(
        (status, refusal_text(&body).split(':').next().unwrap()),
        (403, "replayed")
    );

    // The proof with another key than the one signed for.
    let (status, body) = s
        .ask(
            a,
            &new_csr().0,
            Some(sign_a.proof(&csr_pem, "berth.local").await.unwrap()),
        )
        .await;
    assert_eq!(
        (status, refusal_text(&body).split(':').next().unwrap()),
        (403, "wrong_key")
    );

    // Signed for another verifier's trust domain.
    let (status, why) = s.prove(a, &sign_a, "other.domain").await;
    assert_eq!(
        (status, why.split(':').next().unwrap()),
        (403, "wrong_trust_domain"),
        "{why}"
    );

    // Task B asking with task A's credentials (a process holding another task's role).
    let (status, why) = s.prove(b, &sign_a, "berth.local").await;
    assert_eq!((status, why.split(':').next().unwrap()), (403, "wrong_task"), "{why}");
    // With its own: yes.
    let sign_b = signer(assume(&moto, &orders_role, &b.id).await, &b.arn, &sts).await;
    assert_eq!(s.prove(b, &sign_b, "berth.local").await.0, 200);

    // A task started with another role than its definition's: the definition's role is
    // not the task's.
    let by_definition = signer(assume(&moto, &orders_role, &overridden.id).await, &overridden.arn, &sts).await;
    let (status, why) = s.prove(overridden, &by_definition, "berth.local").await;
    assert_eq!((status, why.split(':').next().unwrap()), (403, "wrong_role"), "{why}");
    let by_override = signer(
        assume(&moto, &billing_role, &overridden.id).await,
        &overridden.arn,
        &sts,
    )
    .await;
    assert_eq!(s.prove(overridden, &by_override, "berth.local").await.0, 200);

    // A task without a task role cannot prove itself.
    let any = signer(assume(&moto, &orders_role, &norole.id).await, &norole.arn, &sts).await;
    let (status, why) = s.prove(norole, &any, "berth.local").await;
    assert_eq!((status, why.split(':').next().unwrap()), (403, "no_task_role"), "{why}");

    // No proof at all: this gateway wants one.
    let (status, body) = s.ask(b, &new_csr().0, None).await;
    assert_eq!(
        (status, refusal_text(&body).split(':').next().unwrap()),
        (401, "no_iam_proof")
    );

    // Every proof counted by its final outcome: three certificates, six refusals.
    let metrics = berth_common::test_util::http1(s.gw.admin, berth_common::test_util::get("a", "/metrics"))
        .await
        .body;
    let count = |result: &str| {
        berth_common::test_util::metric(&metrics, &format!("berth_mesh_iam_total{{result=\"{result}\"}}"))
    };
    assert_eq!((count("accepted"), count("refused")), (3, 6), "{metrics}");

    // A stopped task gets nothing, however good its proof.
    s.ecs.stop_task().cluster("prod").task(&a.arn).send().await.unwrap();
    let stopped = berth_common::test_util::eventually(Duration::from_secs(10), || async {
        let (status, why) = s.prove(a, &sign_a, "berth.local").await;
        status == 403 && why.starts_with("task_not_running")
    })
    .await;
    assert!(stopped, "a stopped task is refused");
}

/// STS unreachable: first certificates fail closed, with the reason and a metric.
#[tokio::test]
async fn sts_down_fails_closed() {
    let (moto, s, tasks, [orders_role, _]) = setup().await;
    let closed = berth_common::test_util::closed_port().await;
    let dir = temp_dir("mesh-iam-down");
    let sts = format!("http://{closed}");
    let (gw, control, anchors) = iam_gateway(&moto.endpoint, &dir, &[("AWS_ENDPOINT_URL_STS", &sts)]).await;
    let down = Setup {
        control,
        anchors,
        gw,
        ecs: s.ecs.clone(),
    };
    let a = &tasks[0];
    // Signed for the STS this gateway uses (down), with good credentials.
    let sign = signer(assume(&moto, &orders_role, &a.id).await, &a.arn, &sts).await;
    let (status, why) = down.prove(a, &sign, "berth.local").await;
    assert_eq!(
        (status, why.split(':').next().unwrap()),
        (503, "sts_unavailable"),
        "{why}"
    );
    let metrics = berth_common::test_util::http1(down.gw.admin, berth_common::test_util::get("a", "/metrics"))
        .await
        .body;
    assert_eq!(
        berth_common::test_util::metric(&metrics, "berth_mesh_iam_total{result=\"sts_unavailable\"}"),
        1,
        "{metrics}"
    );
}
