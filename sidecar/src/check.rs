//! `berth-sidecar check`, run inside the task (ECS Exec: `aws ecs execute-command
//! --container berth-sidecar --command "/berth-sidecar check"`, no shell needed): what the
//! sidecar needs, with its own environment, a line per check, each failure with what to
//! change. Its settings; the task metadata endpoint; the mesh CA; how it proves its task
//! (token or task role); then, for each gateway replica in `BERTH_GATEWAY`, the control
//! API over TLS from the task's own address (`POST /v1/check`): whether the gateway
//! finds the task and sees the task's address as the source (a load balancer that
//! rewrites it breaks the mesh), whether it takes the token, the protocol versions, and
//! the clock against the gateway's. Exit 1 when one fails.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_common::checklist::Checklist;
use berth_common::control::{CHECK_PATH, CheckReport, CheckRequest, PROTOCOL_VERSION, unix_ms};
use berth_common::mtls::{CertSlot, TrustAnchors};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{self, Settings};
use crate::control::{ControlClient, ControlError};
use crate::metadata::{self, TaskMetadata};

/// Clocks further apart than this fail: the gateway backdates certificates by a minute
/// and STS takes SigV4 proofs within five, so half a minute still works with a margin.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// How a first certificate can be proved from this task.
struct Proof {
    token: Option<String>,
    iam: bool,
}

/// Run every check; the exit code.
pub async fn run() -> i32 {
    let mut r = Checklist::default();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            r.fail(
                "settings",
                e,
                "set the sidecar's variables as the injected container definition has them (docs/sidecar.md)",
            );
            return r.finish();
        }
    };
    r.ok("settings", format_args!("gateway {}", settings.gateways.join(",")));
    let task = task_metadata(&settings, &mut r).await;
    let anchors = mesh_ca(&settings, &mut r);
    let proof = proof(&settings, task.as_ref(), &mut r).await;
    if let Some(anchors) = anchors {
        gateways(&settings, task.as_ref(), &anchors, &proof, &mut r).await;
    }
    r.finish()
}

async fn task_metadata(settings: &Settings, r: &mut Checklist) -> Option<TaskMetadata> {
    match metadata::fetch(&settings.metadata_uri, Duration::from_secs(5)).await {
        Ok(md) => {
            let reg = md.registration(settings.app_port);
            r.ok(
                "task metadata",
                format_args!(
                    "task {} of {} in cluster {}, address {}",
                    md.task_arn,
                    md.family,
                    reg.cluster,
                    reg.address.as_deref().unwrap_or("unknown (bridge mode)")
                ),
            );
            Some(md)
        }
        Err(e) => {
            r.fail(
                "task metadata",
                e,
                "run this inside the task: the ECS agent sets ECS_CONTAINER_METADATA_URI_V4 in every container \
                 (Fargate, and EC2 with agent 1.39 or later); use ECS Exec to reach the sidecar container",
            );
            None
        }
    }
}

fn mesh_ca(settings: &Settings, r: &mut Checklist) -> Option<TrustAnchors> {
    let anchors = match crate::start::trust(settings) {
        Ok(a) => a,
        Err(e) => {
            r.fail(
                "mesh CA",
                e,
                "BERTH_CA_CERT must be the gateway's mesh CA certificate (PEM, inline or a path)",
            );
            return None;
        }
    };
    let now = SystemTime::now();
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(settings.ca_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let expiries: Vec<SystemTime> = certs
        .iter()
        .filter_map(|c| berth_common::identity::not_after_of(c).ok())
        .collect();
    match expiries.iter().max() {
        Some(last) if *last <= now => {
            r.fail(
                "mesh CA",
                "every root in BERTH_CA_CERT has expired",
                "give the sidecar the gateway's current mesh CA (its trust bundle after a rotation)",
            );
            None
        }
        Some(last) => {
            let days = last.duration_since(now).unwrap_or_default().as_secs() / 86_400;
            r.ok(
                "mesh CA",
                format_args!("{} root(s), the last expiring in {days} days", certs.len()),
            );
            Some(anchors)
        }
        None => {
            r.ok("mesh CA", format_args!("{} root(s)", certs.len()));
            Some(anchors)
        }
    }
}

async fn proof(settings: &Settings, task: Option<&TaskMetadata>, r: &mut Checklist) -> Proof {
    let aws = &settings.aws_env;
    let arn = task.map(|t| t.task_arn.as_str()).unwrap_or_default();
    let iam = match crate::iam::IamSigner::from_env(|k| aws.get(k).cloned(), arn) {
        Ok(Some(signer)) => match signer.from_address(settings.source_ip()).credentials_found().await {
            Ok(()) => {
                r.ok(
                    "task role",
                    "credentials found: the sidecar can prove its task by IAM identity",
                );
                true
            }
            Err(e) => {
                r.fail(
                    "task role",
                    e,
                    "the task's role credentials must be reachable (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI); \
                     give the task definition a taskRoleArn",
                );
                false
            }
        },
        Ok(None) => false,
        Err(e) => {
            r.fail(
                "task role",
                e,
                "fix or remove the AWS_CONTAINER_CREDENTIALS_* variables",
            );
            false
        }
    };
    if settings.token.is_none() && !iam {
        r.ok(
            "task proof",
            "no BERTH_TOKEN and no task role: only a gateway with a development CA will certify this task",
        );
    }
    Proof {
        token: settings.token.clone(),
        iam,
    }
}

async fn gateways(
    settings: &Settings,
    task: Option<&TaskMetadata>,
    anchors: &TrustAnchors,
    proof: &Proof,
    r: &mut Checklist,
) {
    let found = config::resolve_gateways(&settings.gateways).await;
    if found.is_empty() {
        r.fail(
            "control API",
            format_args!("BERTH_GATEWAY={} does not resolve", settings.gateways.join(",")),
            "use the gateway's --mesh-listen address (an IP, or a name the task's DNS resolves)",
        );
        return;
    }
    let bind = settings.source_ip();
    for addr in found {
        let what = format!("control API {addr}");
        let client = match ControlClient::new(addr, bind, Arc::new(CertSlot::default()), anchors.clone()) {
            Ok(c) => c,
            Err(e) => {
                r.fail(&what, e, "BERTH_CA_CERT must hold usable roots");
                continue;
            }
        };
        let request = CheckRequest {
            task_arn: task.map(|t| t.task_arn.clone()).unwrap_or_default(),
            token: proof.token.clone(),
        };
        let exchange = async {
            client.connect().await?;
            let sent = unix_ms(SystemTime::now());
            let report: CheckReport = client.post(CHECK_PATH, &request).await?;
            Ok::<_, ControlError>((sent, report))
        };
        let (sent, report) = match exchange.await {
            Ok(report) => report,
            Err(e) => {
                let fix = match &e {
                    ControlError::Connect(_, why) if why.starts_with("TLS: ") => {
                        "the gateway's certificate is not signed by BERTH_CA_CERT: give the sidecar the \
                         gateway's mesh CA"
                    }
                    ControlError::Timeout(_) => {
                        "the gateway took the connection but did not answer in time: it may be waiting on \
                         the ECS API (see its log and ecs:DescribeTasks throttling); retry"
                    }
                    ControlError::Refused { status: 404, .. } => {
                        "the gateway predates `check` (upgrade it); the mesh itself still works"
                    }
                    _ => {
                        "BERTH_GATEWAY must be the gateway's --mesh-listen address, and the security groups \
                         must let the task reach that port"
                    }
                };
                r.fail(&what, e, fix);
                continue;
            }
        };
        let received = unix_ms(SystemTime::now());
        if report.protocol.abs_diff(PROTOCOL_VERSION) > 1 {
            r.fail(
                &what,
                format_args!("protocol {} against the sidecar's {PROTOCOL_VERSION}", report.protocol),
                "a gateway and its sidecars may be one version apart: upgrade the older side",
            );
        } else {
            r.ok(
                &what,
                format_args!(
                    "gateway {}, protocol {} (the sidecar's {PROTOCOL_VERSION})",
                    report.gateway_version, report.protocol
                ),
            );
        }
        if let Some(task) = task {
            task_seen(&report, task, r);
        }
        proof_taken(&report, proof, r);
        clock(report.time_ms, sent, received, r);
    }
}

/// Whether the gateway finds the task, and sees the connection come from it.
fn task_seen(report: &CheckReport, task: &TaskMetadata, r: &mut Checklist) {
    match report.task.as_str() {
        "found" => match (report.source_is_task, &report.identity, &report.refused) {
            (Some(true), Some(id), _) => r.ok(
                "task at the gateway",
                format_args!(
                    "found ({}), source {} is the task's address, identity {id}",
                    report.desired_status.as_deref().unwrap_or("?"),
                    report.source
                ),
            ),
            (Some(true), _, why) => r.fail(
                "task at the gateway",
                format_args!(
                    "the task gets no mesh identity: {}",
                    why.as_deref().unwrap_or("unknown reason")
                ),
                "run the task in the ECS service it claims (berth.mesh.name), or without the claim",
            ),
            (Some(false), _, _) => r.fail(
                "source address",
                format_args!(
                    "the gateway sees this task's connection come from {}, not from the task",
                    report.source
                ),
                "something between the task and the gateway rewrites the source (a load balancer without client \
                 IP preservation, NAT): use an NLB with preserve_client_ip enabled (target type ip), or put the \
                 gateway tasks' addresses in BERTH_GATEWAY",
            ),
            (None, _, _) => r.fail(
                "task at the gateway",
                "found, but the gateway does not know the task's address yet",
                "retry once the task is RUNNING; in bridge mode the gateway needs ec2:DescribeInstances",
            ),
        },
        "unknown" => r.fail(
            "task at the gateway",
            format_args!(
                "the gateway does not find task {} (source {})",
                task.task_arn, report.source
            ),
            format_args!(
                "start the gateway with --ecs-cluster including {}, with ecs:DescribeTasks on it",
                task.cluster
            ),
        ),
        _ => r.fail(
            "task at the gateway",
            format_args!("not checked: {}", report.detail.as_deref().unwrap_or("no reason given")),
            "retry shortly; a gateway without ECS discovery cannot certify tasks",
        ),
    }
}

/// Whether the way this task proves itself is one the gateway takes.
fn proof_taken(report: &CheckReport, proof: &Proof, r: &mut Checklist) {
    let takes = |m: &str| report.accepts.iter().any(|a| a == m);
    // The sidecar proves its task with the task role when it has one and the gateway
    // takes IAM; the token is then not used.
    if proof.iam && takes("iam") {
        r.ok("task proof", "the gateway takes the task role's IAM identity");
    } else if proof.token.is_some() && takes("token") && report.token_ok.is_none() {
        r.fail(
            "task proof",
            report
                .detail
                .as_deref()
                .unwrap_or("the gateway did not check the token"),
            "retry in a few seconds",
        );
    } else if report.token_ok == Some(false) {
        r.fail(
            "task proof",
            "BERTH_TOKEN is not the gateway's bootstrap token",
            "give the sidecar the secret the gateway reads with --mesh-token-file",
        );
    } else if report.token_ok == Some(true) {
        r.ok("task proof", "the gateway takes this token");
    } else if takes("address") {
        r.ok("task proof", "the gateway certifies by address alone (development CA)");
    } else {
        let fix = if takes("token") {
            "set BERTH_TOKEN (from Secrets Manager) to the gateway's bootstrap token"
        } else {
            "give the task a task role: the gateway takes IAM identity only (--mesh-auth iam)"
        };
        r.fail(
            "task proof",
            format_args!(
                "the gateway takes {} and this task has {}",
                report.accepts.join(" or "),
                match (&proof.token, proof.iam) {
                    (Some(_), _) => "a token",
                    (None, true) => "a task role",
                    (None, false) => "neither",
                }
            ),
            fix,
        );
    }
}

/// The gateway's clock against ours, taken at the middle of the exchange.
fn clock(gateway_ms: u64, sent_ms: u64, received_ms: u64, r: &mut Checklist) {
    let skew = skew_ms(gateway_ms, sent_ms, received_ms);
    let bound = i64::try_from(MAX_SKEW.as_millis()).unwrap_or(i64::MAX);
    if skew.abs() > bound {
        r.fail(
            "clock",
            format_args!("{} ms off the gateway's clock (more than {MAX_SKEW:?})", skew),
            "synchronise the clocks (the Amazon Time Sync Service, chrony): certificates are valid from a \
             minute before the gateway's now, and IAM proofs within five minutes",
        );
    } else {
        r.ok("clock", format_args!("{skew} ms off the gateway's"));
    }
}

/// Gateway time minus ours at the middle of the round trip, in ms.
fn skew_ms(gateway_ms: u64, sent_ms: u64, received_ms: u64) -> i64 {
    let middle = sent_ms / 2 + received_ms / 2;
    let g = i64::try_from(gateway_ms).unwrap_or(i64::MAX);
    g.saturating_sub(i64::try_from(middle).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_measured_at_the_middle_of_the_exchange() {
        assert_eq!(skew_ms(1_000, 900, 1_100), 0);
        assert_eq!(skew_ms(10_000, 1_000, 1_200), 8_900);
        assert_eq!(skew_ms(0, 6_000, 6_000), -6_000);
        let mut r = Checklist::default();
        clock(60_000, 1_000, 1_000, &mut r);
        clock(20_000, 1_000, 1_000, &mut r);
        assert_eq!(r.failed, 1, "only the clock 59 s off fails");
    }
}
