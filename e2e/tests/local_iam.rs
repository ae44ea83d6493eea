//! IAM identity for first certificates against berth-local's task roles and STS: each
//! task gets credentials of its own at its credentials endpoint (FULL_URI and a token,
//! served to the task's address only), the sidecar's signer (aws-sigv4, the AWS SDK's
//! signer) signs with them, and berth-local's STS recomputes the signature. boto3, a
//! signer nobody here wrote, checks berth-local's STS the same way. Every refusal
//! names its reason.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use berth_common::control::{CertificateResponse, IamProof};
use berth_common::mtls::TrustAnchors;
use berth_common::test_util::{get, http1, metric};
use berth_e2e::{
    Asker, GatewayProcess, args, ecs_client, iam_gateway, local_ecs, new_csr, refusal_text, slot_of, temp_dir, tool,
};

const ORDERS_ROLE: &str = "arn:aws:iam::000000000000:role/tasks/orders-task";
const BILLING_ROLE: &str = "arn:aws:iam::000000000000:role/billing-task";

struct Task {
    arn: String,
    id: String,
    ip: Ipv4Addr,
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN`, as
    /// berth-local's runner gives them to the task's containers.
    credentials: Option<(String, String)>,
}

struct Local {
    server: berth_local::EcsServer,
    control: SocketAddr,
    anchors: TrustAnchors,
    gw: GatewayProcess,
    ecs: aws_sdk_ecs::Client,
}

impl Local {
    /// The sidecar's signer as it starts in `task`: the task's credentials endpoint, the
    /// local STS, fetching from the task's address.
    fn signer(&self, task: &Task) -> berth_sidecar::IamSigner {
        let (uri, token) = task.credentials.clone().unwrap();
        let env = [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.server.endpoint_url()),
        ];
        berth_sidecar::IamSigner::from_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()), &task.arn)
            .unwrap()
            .unwrap()
            .from_address(Some(task.ip.into()))
    }

    fn asker<'a>(&'a self, task: &'a Task) -> Asker<'a> {
        Asker {
            control: self.control,
            anchors: &self.anchors,
            task_arn: &task.arn,
            source: task.ip,
        }
    }

    async fn ask(&self, task: &Task, csr_pem: &str, iam: Option<IamProof>) -> (u16, Vec<u8>) {
        self.asker(task).ask(csr_pem, None, iam, None).await
    }

    async fn prove(&self, task: &Task, signer: &berth_sidecar::IamSigner, trust_domain: &str) -> (u16, String) {
        self.asker(task).prove(signer, trust_domain).await
    }

    async fn metrics(&self) -> String {
        http1(self.gw.admin, get("a", "/metrics")).await.body
    }
}

async fn setup(first: Ipv4Addr) -> (Local, Vec<Task>) {
    berth_common::tls::install_crypto_provider();
    let server = local_ecs(first).await;
    let tmds = berth_local::tmds::serve("127.0.0.1:0".parse().unwrap(), server.ecs.clone())
        .await
        .unwrap();
    let ecs = ecs_client(&server.endpoint_url());
    let mut tasks = Vec::new();
    let started = berth_e2e::iam_scenario_tasks(&ecs, ORDERS_ROLE, BILLING_ROLE, None).await;
    for (t, role_override) in started.iter().zip([None, None, Some(BILLING_ROLE), None]) {
        assert_eq!(
            t.overrides().and_then(|o| o.task_role_arn()),
            role_override,
            "RunTask's role override is the task's"
        );
        let arn = t.task_arn().unwrap().to_string();
        let id = arn.rsplit('/').next().unwrap().to_string();
        let ip = berth_e2e::eni_address(t).unwrap().parse().unwrap();
        let credentials = {
            let ecs = server.ecs.lock().unwrap();
            let state = ecs.clusters["prod"].tasks.get(&id).unwrap();
            state
                .role
                .as_ref()
                .map(|r| (format!("http://{tmds}{}", r.credentials_path), r.endpoint_token.clone()))
        };
        tasks.push(Task {
            arn,
            id,
            ip,
            credentials,
        });
    }
    assert!(
        tasks[3].credentials.is_none(),
        "a task without a role has no credentials"
    );
    let dir = temp_dir("local-iam");
    let (gw, control, anchors) = iam_gateway(&server.endpoint_url(), &dir, &[]).await;
    (
        Local {
            server,
            control,
            anchors,
            gw,
            ecs,
        },
        tasks,
    )
}

/// Each task's own credentials prove that task and no other.
#[tokio::test]
async fn each_task_proves_itself_with_its_own_role_session() {
    let (l, tasks) = setup(Ipv4Addr::new(127, 0, 125, 1)).await;
    let [a, b, overridden, norole] = &tasks[..] else {
        panic!("four tasks")
    };
    let sign_a = l.signer(a);

    // Task A: a certificate, no token.
    let (csr_pem, _) = new_csr();
    let proof = sign_a.proof(&csr_pem, "berth.local").await.unwrap();
    let (status, body) = l.ask(a, &csr_pem, Some(proof.clone())).await;
    assert_eq!(status, 200, "{}\n{}", refusal_text(&body), l.gw.log());
    let granted: CertificateResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(granted.identity, "spiffe://berth.local/ecs/prod/orders");

    // The same signature again: accepted once only.
    let (status, body) = l.ask(a, &csr_pem, Some(proof)).await;
    assert_eq!(
        (status, refusal_text(&body).split(':').next().unwrap()),
        (403, "replayed")
    );

    // A signature made six minutes ago (kept, or a clock that is off): refused.
    let (csr_pem, _) = new_csr();
    let old = sign_a
        .proof_at(&csr_pem, "berth.local", SystemTime::now() - Duration::from_secs(360))
        .await
        .unwrap();
    let (status, body) = l.ask(a, &csr_pem, Some(old)).await;
    let why = refusal_text(&body);
    assert_eq!(
        (status, why.split(':').next().unwrap()),
        (403, "bad_iam_proof"),
        "{why}"
    );

    // Signed for another verifier's trust domain.
    let (status, why) = l.prove(a, &sign_a, "other.domain").await;
    assert_eq!(
        (status, why.split(':').next().unwrap()),
        (403, "wrong_trust_domain"),
        "{why}"
    );

    // Task B asking with task A's credentials (a process holding another task's role).
    let (status, why) = l.prove(b, &sign_a, "berth.local").await;
    assert_eq!((status, why.split(':').next().unwrap()), (403, "wrong_task"), "{why}");
    assert_eq!(l.prove(b, &l.signer(b), "berth.local").await.0, 200);

    // A task started with another role than its definition's: signed with its own
    // (overridden) role it passes; the definition's role, as another task has it, does not.
    assert_eq!(l.prove(overridden, &l.signer(overridden), "berth.local").await.0, 200);
    let (status, why) = l.prove(overridden, &l.signer(b), "berth.local").await;
    assert_eq!((status, why.split(':').next().unwrap()), (403, "wrong_role"), "{why}");

    // A task without a role has no credentials; claimed with another's, it is refused.
    let (status, why) = l.prove(norole, &sign_a, "berth.local").await;
    assert_eq!((status, why.split(':').next().unwrap()), (403, "no_task_role"), "{why}");

    // The credentials endpoint serves a task's credentials to its address and token only.
    let (csr_pem, _) = new_csr();
    let elsewhere = l.signer(a).from_address(None);
    let err = elsewhere.proof(&csr_pem, "berth.local").await.unwrap_err();
    assert!(err.contains("HTTP 403"), "{err}");
    let (uri, _) = a.credentials.clone().unwrap();
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", b.credentials.clone().unwrap().1),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let wrong_token =
        berth_sidecar::IamSigner::from_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()), &a.arn)
            .unwrap()
            .unwrap()
            .from_address(Some(a.ip.into()));
    let err = wrong_token.proof(&csr_pem, "berth.local").await.unwrap_err();
    assert!(err.contains("HTTP 401"), "{err}");

    let metrics = l.metrics().await;
    let count = |result: &str| metric(&metrics, &format!("berth_mesh_iam_total{{result=\"{result}\"}}"));
    assert_eq!((count("accepted"), count("refused")), (3, 6), "{metrics}");
    assert!(l.server.calls().get("sts:GetCallerIdentity").copied().unwrap_or(0) >= 5);

    // A stopped task gets nothing, however good its proof: its credentials stay valid
    // until they expire, as ECS's do, so proofs signed while it ran are sent after.
    let mut kept = Vec::new();
    for _ in 0..10 {
        let (csr_pem, _) = new_csr();
        let proof = l.signer(b).proof(&csr_pem, "berth.local").await.unwrap();
        kept.push((csr_pem, proof));
    }
    l.ecs.stop_task().cluster("prod").task(&b.arn).send().await.unwrap();
    let mut refused = None;
    for (csr_pem, proof) in kept {
        let (status, body) = l.ask(b, &csr_pem, Some(proof)).await;
        let why = refusal_text(&body);
        if status == 403 && why.starts_with("task_not_running") {
            refused = Some(why);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(refused.is_some(), "a stopped task is refused:\n{}", l.gw.log());
}

/// boto3 signs GetCallerIdentity with a task's credentials and berth-local's STS
/// answers with the assumed-role ARN ECS's credentials carry; a wrong secret is refused.
#[tokio::test]
async fn boto3_signs_and_the_local_sts_verifies() {
    let (l, tasks) = setup(Ipv4Addr::new(127, 0, 126, 1)).await;
    let a = &tasks[0];
    let (uri, token) = a.credentials.clone().unwrap();
    let script = r#"
import json, sys, urllib.parse, http.client
import boto3, botocore.exceptions
uri, token, source, endpoint, tamper = sys.argv[1:6]
u = urllib.parse.urlsplit(uri)
conn = http.client.HTTPConnection(u.hostname, u.port, source_address=(source, 0), timeout=10)
conn.request("GET", u.path, headers={"Authorization": token})
resp = conn.getresponse()
doc = json.loads(resp.read())
assert resp.status == 200, (resp.status, doc)
secret = doc["SecretAccessKey"] + ("x" if tamper == "1" else "")
sts = boto3.client("sts", region_name="us-east-1", endpoint_url=endpoint,
                   aws_access_key_id=doc["AccessKeyId"], aws_secret_access_key=secret,
                   aws_session_token=doc["Token"])
try:
    print(json.dumps(sts.get_caller_identity()))
except botocore.exceptions.ClientError as e:
    print("ERROR", e.response["Error"]["Code"])
"#;
    let run = |tamper: &str| {
        let mut a_args = args(&["-c", script]);
        a_args.extend([
            uri.clone(),
            token.clone(),
            a.ip.to_string(),
            l.server.endpoint_url(),
            tamper.to_string(),
        ]);
        tool("python3", a_args, vec![])
    };
    let (ok, out) = run("0").await;
    assert!(ok, "{out}");
    let who: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        who["Arn"],
        format!("arn:aws:sts::000000000000:assumed-role/orders-task/{}", a.id),
        "the session is the task, the role's path dropped"
    );
    assert_eq!(who["Account"], "000000000000");
    assert!(
        who["UserId"].as_str().unwrap().starts_with("AROA") && who["UserId"].as_str().unwrap().ends_with(&a.id),
        "{who}"
    );
    let (ok, out) = run("1").await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "ERROR SignatureDoesNotMatch");

    // STS down: first certificates fail closed; a renewal over mTLS needs no STS.
    let (csr_pem, key) = new_csr();
    let proof = l.signer(a).proof(&csr_pem, "berth.local").await.unwrap();
    let (status, body) = l.ask(a, &csr_pem, Some(proof)).await;
    assert_eq!(status, 200, "{}", refusal_text(&body));
    let issued: CertificateResponse = serde_json::from_slice(&body).unwrap();
    l.server.set_faults(berth_local::Faults {
        sts_outage: true,
        ..Default::default()
    });
    let (status, why) = l.prove(&tasks[1], &l.signer(&tasks[1]), "berth.local").await;
    assert_eq!(
        (status, why.split(':').next().unwrap()),
        (503, "sts_unavailable"),
        "{why}"
    );
    let (csr2, _) = new_csr();
    let (status, body) = l.asker(a).ask(&csr2, None, None, Some(slot_of(&issued, &key))).await;
    assert_eq!(
        status,
        200,
        "renewal over mTLS while STS is down: {}",
        refusal_text(&body)
    );
    let metrics = l.metrics().await;
    assert_eq!(
        metric(&metrics, "berth_mesh_iam_total{result=\"sts_unavailable\"}"),
        1,
        "{metrics}"
    );
}
