//! `berth-gateway check [the gateway's flags]`: what the gateway needs, verified one line
//! at a time, as `linkerd check` does, with the same configuration it would run with:
//! the AWS region and credentials; every AWS call discovery makes, actually made (with
//! a name that does not exist, so nothing is read), refused only when the policy lacks
//! it; the clusters; the mesh CA (loads, its key matches, is a CA, not near expiry);
//! how sidecars prove their task (the token, or STS reachable for IAM identity). Each
//! failure says what to change. Exit 1 when one fails.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use berth_common::checklist::Checklist as Report;
use rustls_pki_types::pem::PemObject;

use crate::config::Config;
use crate::mesh::CaSource;

/// A CA expiring sooner than this fails the check: rotate it first.
const CA_MARGIN: Duration = Duration::from_secs(30 * 86_400);
/// How long each call may take.
const CALL: Duration = Duration::from_secs(10);

/// A refusal by IAM (the policy lacks the action), told from every other answer.
fn denied(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" | "AuthFailure")
    )
}

/// The credentials themselves refused (a wrong key, an expired session, a clock off).
fn bad_credentials(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
                | "IncompleteSignature"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "ExpiredToken"
                | "MissingAuthenticationTokenException"
        )
    )
}

/// An answer about the name that does not exist: the call itself was allowed.
fn about_the_name(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("ClientException" | "InvalidParameterException" | "ClusterNotFoundException" | "ServiceNotFoundException")
    ) || code.is_some_and(|c| c.starts_with("InvalidInstanceID"))
}

const CREDENTIALS_FIX: &str = "check the task role's credentials and the clock (SigV4 allows 5 minutes of skew)";

/// Run every check; the exit code.
pub(crate) async fn run(cfg: &Config) -> i32 {
    let mut r = Report::default();
    let region = cfg.ecs.as_ref().and_then(|e| e.region.clone());
    let credentials = cfg.ecs.as_ref().and_then(|e| e.credentials.clone());
    let needs_aws = cfg.ecs.is_some() || cfg.mesh.as_ref().is_some_and(|m| m.auth.iam);
    if needs_aws {
        aws(cfg, region, credentials, &mut r).await;
    }
    if let Some(m) = &cfg.mesh {
        mesh_ca(m, &mut r);
        if m.auth.token {
            match &m.token {
                Some(t) if t.len() >= 16 => r.ok("mesh token", format!("set ({} characters)", t.len())),
                Some(_) => r.fail(
                    "mesh token",
                    "shorter than 16 characters",
                    "use a long random token (openssl rand -hex 32)",
                ),
                None => r.fail(
                    "mesh token",
                    "--mesh-auth includes token but no token is set",
                    "set --mesh-token-file / BERTH_MESH_TOKEN, or use --mesh-auth iam",
                ),
            }
        }
    }
    r.finish()
}

async fn aws(
    cfg: &Config,
    region: Option<String>,
    credentials: Option<aws_credential_types::Credentials>,
    r: &mut Report,
) {
    let sdk = match crate::aws::sdk_config(region, credentials).await {
        Ok(sdk) => {
            r.ok("AWS region", sdk.region().map(|x| x.to_string()).unwrap_or_default());
            sdk
        }
        Err(e) => {
            r.fail(
                "AWS region",
                e,
                "set AWS_REGION (ECS sets it in every container) or --ecs-region",
            );
            return;
        }
    };
    let Some(provider) = sdk.credentials_provider() else {
        r.fail("AWS credentials", "no provider", "give the task a task role");
        return;
    };
    match tokio::time::timeout(CALL, provider.provide_credentials()).await {
        Ok(Ok(c)) => r.ok(
            "AWS credentials",
            format!("access key {}…", c.access_key_id().chars().take(8).collect::<String>()),
        ),
        Ok(Err(e)) => {
            r.fail(
                "AWS credentials",
                berth_common::error::chain_text(&e),
                "give the task a task role (taskRoleArn), or set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            );
            return;
        }
        Err(_) => {
            r.fail(
                "AWS credentials",
                "no answer within 10 s",
                "check the credentials endpoint (ECS agent)",
            );
            return;
        }
    }
    if let Some(ecs) = &cfg.ecs {
        discovery_calls(&sdk, &ecs.clusters, r).await;
    }
    if let Some(m) = cfg.mesh.as_ref().filter(|m| m.auth.iam) {
        sts(&sdk, m.sts_endpoint.as_deref(), r).await;
    }
}

/// Make `call`; what it says about the permission.
async fn permission<T, E, F>(r: &mut Report, action: &str, call: F) -> Option<T>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: std::future::Future<Output = Result<T, SdkError<E>>>,
{
    match tokio::time::timeout(CALL, call).await {
        Ok(Ok(v)) => {
            r.ok(action, "allowed");
            Some(v)
        }
        Ok(Err(e)) if denied(e.code()) => {
            r.fail(
                action,
                format!("refused: {}", e.message().unwrap_or_default()),
                format!("allow {action} in the gateway's task role (the Terraform module's policy has it)"),
            );
            None
        }
        Ok(Err(e)) if bad_credentials(e.code()) => {
            r.fail(
                action,
                format!("credentials refused: {}", e.message().unwrap_or_default()),
                CREDENTIALS_FIX,
            );
            None
        }
        Ok(Err(e)) if about_the_name(e.code()) => {
            // Refused for the name that does not exist, not for the permission.
            r.ok(action, format!("allowed ({})", e.code().unwrap_or("answered")));
            None
        }
        Ok(Err(e)) if matches!(e, SdkError::ServiceError(_)) => {
            // Throttling, a server error: nothing learnt about the permission.
            r.fail(
                action,
                format!(
                    "inconclusive: {} {}",
                    e.code().unwrap_or("error"),
                    e.message().unwrap_or_default()
                ),
                "run the check again; a throttled or failing ECS API does not say whether the call is allowed",
            );
            None
        }
        Ok(Err(e)) => {
            r.fail(
                action,
                berth_common::error::chain_text(&e),
                "check that the ECS API is reachable (a VPC endpoint or a NAT gateway)",
            );
            None
        }
        Err(_) => {
            r.fail(action, "no answer within 10 s", "check that the ECS API is reachable");
            None
        }
    }
}

async fn discovery_calls(sdk: &aws_config::SdkConfig, clusters: &[String], r: &mut Report) {
    let c = aws_sdk_ecs::Client::new(sdk);
    permission(r, "ecs:ListClusters", c.list_clusters().max_results(1).send()).await;
    let missing = "berth-check-00000000000000000000000000000000";
    permission(
        r,
        "ecs:DescribeTaskDefinition",
        c.describe_task_definition().task_definition(missing).send(),
    )
    .await;
    for cluster in clusters {
        match tokio::time::timeout(CALL, c.list_tasks().cluster(cluster).max_results(1).send()).await {
            Ok(Ok(_)) => r.ok(&format!("cluster {cluster}"), "exists; ecs:ListTasks allowed"),
            Ok(Err(e)) if e.code() == Some("ClusterNotFoundException") => r.fail(
                &format!("cluster {cluster}"),
                "no such cluster in this account and region",
                "fix --ecs-cluster (or providers.ecs.clusters), or the region",
            ),
            Ok(Err(e)) if denied(e.code()) => r.fail(
                &format!("cluster {cluster}"),
                format!("ecs:ListTasks refused: {}", e.message().unwrap_or_default()),
                "allow ecs:ListTasks on this cluster in the gateway's task role",
            ),
            Ok(Err(e)) => r.fail(
                &format!("cluster {cluster}"),
                berth_common::error::chain_text(&e),
                "check that the ECS API is reachable",
            ),
            Err(_) => r.fail(
                &format!("cluster {cluster}"),
                "no answer within 10 s",
                "check that the ECS API is reachable",
            ),
        }
        permission(
            r,
            &format!("ecs:DescribeTasks ({cluster})"),
            c.describe_tasks().cluster(cluster).tasks(missing).send(),
        )
        .await;
        permission(
            r,
            &format!("ecs:DescribeServices ({cluster})"),
            c.describe_services().cluster(cluster).services(missing).send(),
        )
        .await;
        permission(
            r,
            &format!("ecs:DescribeContainerInstances ({cluster})"),
            c.describe_container_instances()
                .cluster(cluster)
                .container_instances(missing)
                .send(),
        )
        .await;
    }
    ec2(sdk, r).await;
}

/// `ec2:DescribeInstances` for an instance that does not exist, signed as discovery signs it.
async fn ec2(sdk: &aws_config::SdkConfig, r: &mut Report) {
    let (Some(credentials), Some(region)) = (sdk.credentials_provider(), sdk.region()) else {
        return;
    };
    let endpoint = std::env::var("AWS_ENDPOINT_URL_EC2")
        .ok()
        .or_else(|| sdk.endpoint_url().map(str::to_string))
        .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
    let Ok(roots) = berth_common::upstream::trust_roots(None) else {
        return;
    };
    let api = crate::aws::Signed::new(endpoint, region.to_string(), "ec2", credentials, roots);
    let body = "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-00000000000000000";
    let answer = api
        .call(
            "POST",
            "/",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            body.as_bytes().to_vec(),
            64 * 1024,
        )
        .await;
    let (status, text) = match answer {
        Ok(a) => a,
        Err(e) => return r.fail("ec2:DescribeInstances", e, "check that the EC2 API is reachable"),
    };
    let code = berth_common::http::xml_text(&text, "Code");
    let message = berth_common::http::xml_text(&text, "Message").unwrap_or_default();
    if denied(code) {
        r.fail(
            "ec2:DescribeInstances",
            format!("refused: {message}"),
            "allow ec2:DescribeInstances in the gateway's task role (bridge and host mode tasks need it)",
        );
    } else if status.is_success() {
        r.ok("ec2:DescribeInstances", "allowed");
    } else if about_the_name(code) {
        r.ok(
            "ec2:DescribeInstances",
            format!("allowed ({})", code.unwrap_or_default()),
        );
    } else if bad_credentials(code) {
        r.fail(
            "ec2:DescribeInstances",
            format!("credentials refused: {message}"),
            CREDENTIALS_FIX,
        );
    } else {
        r.fail(
            "ec2:DescribeInstances",
            format!("inconclusive: {status} {}", code.unwrap_or_default()),
            "run the check again; the EC2 API did not say whether the call is allowed",
        );
    }
}

/// IAM identity: the gateway verifies sidecars' proofs at STS, so STS must answer.
async fn sts(sdk: &aws_config::SdkConfig, endpoint: Option<&str>, r: &mut Report) {
    let (Some(credentials), Some(region)) = (sdk.credentials_provider(), sdk.region()) else {
        return;
    };
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_STS").ok())
        .or_else(|| sdk.endpoint_url().map(str::to_string))
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
    let Ok(roots) = berth_common::upstream::trust_roots(None) else {
        return;
    };
    let api = crate::aws::Signed::new(endpoint.clone(), region.to_string(), "sts", credentials, roots);
    match api
        .call(
            "POST",
            "/",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"Action=GetCallerIdentity&Version=2011-06-15".to_vec(),
            64 * 1024,
        )
        .await
    {
        Ok((status, text)) if status.is_success() => r.ok(
            "STS (IAM identity)",
            format!(
                "{endpoint} answers; the gateway is {}",
                berth_common::http::xml_text(&text, "Arn").unwrap_or("?")
            ),
        ),
        Ok((status, text)) if status.is_server_error() || !text.contains('<') => r.fail(
            "STS (IAM identity)",
            format!(
                "{endpoint}: {status} {}",
                berth_common::http::xml_text(&text, "Message").unwrap_or_default()
            ),
            "sidecars' IAM proofs are verified at STS: it must answer (a VPC endpoint for sts)",
        ),
        // The gateway forwards the sidecars' signed requests; its own identity there
        // does not matter, only that STS answers.
        Ok((status, text)) => r.ok(
            "STS (IAM identity)",
            format!(
                "{endpoint} answers ({status} {} for the gateway's own credentials, which proofs do not use)",
                berth_common::http::xml_text(&text, "Code").unwrap_or_default()
            ),
        ),
        Err(e) => r.fail(
            "STS (IAM identity)",
            format!("{endpoint}: {e}"),
            "sidecars' IAM proofs are verified at STS: let the gateway reach it (a VPC endpoint for sts)",
        ),
    }
}

fn mesh_ca(m: &crate::mesh::MeshSettings, r: &mut Report) {
    let (cert, key) = match &m.ca {
        CaSource::Dev(dir) => {
            r.ok(
                "mesh CA",
                format!("a development CA in {} (not for production)", dir.display()),
            );
            return;
        }
        CaSource::Files { cert, key } => (cert, key),
    };
    // Loading checks the PEM and that the key belongs to the certificate.
    if let Err(e) = crate::mesh::ca::MeshCa::load(cert, key, &m.trust_domain) {
        r.fail(
            "mesh CA",
            &e,
            "give --mesh-ca-cert the CA certificate and --mesh-ca-key its own key (PEM)",
        );
        return;
    }
    let Ok(pem) = crate::mesh::ca::read(cert) else { return };
    let Some(Ok(first)) = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return;
    };
    match berth_common::identity::summarize(&first) {
        Ok(sum) if !sum.is_ca => r.fail(
            "mesh CA",
            format!("{} is not a CA certificate (basicConstraints CA:FALSE)", sum.subject),
            "give the CA's certificate, not a leaf's",
        ),
        Ok(sum) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let left = sum.not_after_unix - now;
            if left <= 0 {
                r.fail(
                    "mesh CA",
                    format!("{} expired {} days ago", sum.subject, -left / 86_400),
                    "rotate the CA (docs/security.md#ca-rotation)",
                );
            } else if left < CA_MARGIN.as_secs() as i64 {
                r.fail(
                    "mesh CA",
                    format!("{} expires in {} days", sum.subject, left / 86_400),
                    "rotate the CA before it expires (docs/security.md#ca-rotation)",
                );
            } else {
                r.ok(
                    "mesh CA",
                    format!("{}, its key matches, expires in {} days", sum.subject, left / 86_400),
                );
            }
        }
        Err(e) => r.fail("mesh CA", e, "give a PEM CA certificate"),
    }
}
