//! IAM identity for a first certificate: the sidecar signed an `sts:GetCallerIdentity`
//! request with its task role's credentials; this sends the gateway's own rebuild of it
//! to the gateway's own STS endpoint and checks what STS answers against the task.
//!
//! Nothing the client shaped is forwarded (Vault's AWS auth was bypassed that way,
//! CVE-2020-16250): the URL is the configured endpoint, the body is
//! [`GET_CALLER_IDENTITY_BODY`], `Host` is the endpoint's, and only the allow-listed
//! headers of the proof are sent, the trust-domain and key-hash headers required among
//! the signed ones and checked here. A signature is accepted once, and only within
//! [`WINDOW`] of its date. STS unreachable or failing: the request is refused (fail
//! closed) as `sts_unavailable`; renewals over mTLS do not come here.
//!
//! What the answer must say, against the task the request claims: an assumed-role ARN
//! (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`) in the task's account, `ROLE` the
//! name of the task's role (its `overrides.taskRoleArn`, else its definition's
//! `taskRoleArn`, the path removed, since assumed-role ARNs carry only the name), and
//! `SESSION` the task's ID: ECS names the task role's session after the task (see
//! docs/security.md for what this relies on).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use berth_common::body::{Body, boxed};
use berth_common::control::IamProof;
use berth_common::iam::{
    self, AssumedRole, CallerIdentity, GET_CALLER_IDENTITY_BODY, IamError, KEY_HASH_HEADER, TRUST_DOMAIN_HEADER,
};
use berth_common::upstream::Connector;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;

use crate::metrics::Metrics;

/// How far a signature's date may be from the gateway's clock.
pub(crate) const WINDOW: Duration = Duration::from_secs(5 * 60);
/// One STS call, connection to answer.
const STS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most signatures remembered (a window's worth of first certificates).
const MAX_SEEN: usize = 100_000;
/// The largest STS answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// A refusal: the HTTP status, a stable code, and the reason.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

fn refused(code: &'static str, reason: impl std::fmt::Display) -> Refusal {
    Refusal {
        status: StatusCode::FORBIDDEN,
        code,
        reason: reason.to_string(),
    }
}

pub(crate) struct IamVerifier {
    endpoint: http::Uri,
    client: Client<Connector, Body>,
    /// Signatures accepted, and when: each is good once.
    seen: Mutex<HashMap<String, Instant>>,
    metrics: Arc<Metrics>,
}

impl IamVerifier {
    /// Verify against the STS endpoint `endpoint` (`https://sts.REGION.amazonaws.com`, or
    /// `AWS_ENDPOINT_URL_STS`).
    pub(crate) fn new(endpoint: &str, connector: Connector, metrics: Arc<Metrics>) -> Result<IamVerifier, String> {
        let endpoint: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("bad STS endpoint {endpoint}: {e}"))?;
        if endpoint.authority().is_none() || !matches!(endpoint.scheme_str(), Some("http" | "https")) {
            return Err(format!("bad STS endpoint {endpoint}: not an http(s) URL"));
        }
        Ok(IamVerifier {
            endpoint,
            client: berth_common::upstream::pool(Duration::from_secs(60)).build(connector),
            seen: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The endpoint this verifier sends to.
    pub(crate) fn endpoint(&self) -> &http::Uri {
        &self.endpoint
    }

    /// Count a proof's final outcome (after the checks against the task) in `/metrics`.
    pub(crate) fn count<T>(&self, result: &Result<T, Refusal>) {
        let counts = &self.metrics.mesh_iam;
        let counter = match result {
            Ok(_) => &counts.accepted,
            Err(r) if r.code == "sts_unavailable" => &counts.sts_unavailable,
            Err(_) => &counts.refused,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Check the proof and ask STS who signed it; the caller's identity, or why not.
    pub(crate) async fn caller(
        &self,
        proof: &IamProof,
        csr_pem: &str,
        trust_domain: &str,
    ) -> Result<CallerIdentity, Refusal> {
        let bad = |e: IamError| refused("bad_iam_proof", e);
        let auth = iam::check_headers(&proof.headers, SystemTime::now(), WINDOW).map_err(bad)?;
        let header = |name: &'static str| proof.headers.get(name).map(String::as_str).unwrap_or_default();
        if header(TRUST_DOMAIN_HEADER) != trust_domain {
            return Err(refused(
                "wrong_trust_domain",
                format!(
                    "the proof was signed for trust domain {:?}, this gateway's is {trust_domain}",
                    header(TRUST_DOMAIN_HEADER).chars().take(64).collect::<String>()
                ),
            ));
        }
        let key_hash = iam::csr_key_hash(csr_pem).map_err(|e| refused("bad_csr", e))?;
        if header(KEY_HASH_HEADER) != key_hash {
            return Err(refused(
                "wrong_key",
                "the proof was signed for another key than the CSR's",
            ));
        }
        self.first_use(&auth.signature)?;
        let answer = self.ask_sts(proof).await?;
        Ok(answer)
    }

    /// Remember the signature; refuse one seen before.
    fn first_use(&self, signature: &str) -> Result<(), Refusal> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_SEEN {
            // Older than two windows: their dates are refused anyway.
            seen.retain(|_, at| at.elapsed() < 2 * WINDOW);
        }
        if seen.contains_key(signature) {
            return Err(refused(
                "replayed",
                "this signature was used before; sign a new request",
            ));
        }
        if seen.len() >= MAX_SEEN {
            return Err(Refusal {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "too_busy",
                reason: "too many IAM proofs in the last minutes; retry later".into(),
            });
        }
        seen.insert(signature.to_string(), Instant::now());
        Ok(())
    }

    async fn ask_sts(&self, proof: &IamProof) -> Result<CallerIdentity, Refusal> {
        let unavailable = |why: String| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "sts_unavailable",
            reason: format!("cannot verify the IAM proof with STS at {}: {why}", self.endpoint),
        };
        let host = self.endpoint.authority().map(|a| a.as_str()).unwrap_or_default();
        let mut req = http::Request::builder()
            .method("POST")
            .uri(self.endpoint.clone())
            .header(http::header::HOST, host);
        for (name, value) in &proof.headers {
            // `check_headers` allowed only known names; the Host is the endpoint's.
            if name != "host" {
                req = req.header(name.as_str(), value.as_str());
            }
        }
        let req = req
            .body(boxed(Full::new(Bytes::from_static(
                GET_CALLER_IDENTITY_BODY.as_bytes(),
            ))))
            .map_err(|e| refused("bad_iam_proof", e))?;
        let resp = tokio::time::timeout(STS_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unavailable(format!("no answer within {STS_TIMEOUT:?}")))?
            .map_err(|e| unavailable(berth_common::error::chain_text(&e)))?;
        let status = resp.status();
        let body = tokio::time::timeout(
            STS_TIMEOUT,
            http_body_util::Limited::new(resp.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| unavailable("the answer did not arrive in time".into()))?
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
        let text = String::from_utf8_lossy(&body);
        if status.is_server_error() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            // STS's words, at most 256 characters of each.
            let said =
                |name| berth_common::http::xml_text(&text, name).map(|t| t.chars().take(256).collect::<String>());
            let code = said("Code").unwrap_or_else(|| "unknown".into());
            let message = said("Message").unwrap_or_default();
            return Err(refused(
                "iam_rejected",
                format!("STS refused the signature: {code}: {message}"),
            ));
        }
        iam::parse_caller_identity(&text).map_err(|e| unavailable(e.to_string()))
    }
}

/// Check STS's answer against the task: its account, its role and its ID.
pub(crate) fn check_caller(caller: &CallerIdentity, task_arn: &str, task_role: Option<&str>) -> Result<(), Refusal> {
    let Some(role_arn) = task_role else {
        return Err(refused(
            "no_task_role",
            format!("task {task_arn} has no task role (taskRoleArn), so it cannot prove itself with IAM"),
        ));
    };
    let assumed = AssumedRole::parse(&caller.arn).map_err(|e| refused("not_a_task_role", e))?;
    let (role_account, role_name) = iam::role_of(role_arn).map_err(|e| refused("no_task_role", e))?;
    // arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID
    let task_account = task_arn.split(':').nth(4).unwrap_or_default();
    let task_id = task_arn.rsplit('/').next().unwrap_or_default();
    if caller.account != task_account || assumed.account != task_account || role_account != task_account {
        return Err(refused(
            "wrong_account",
            format!(
                "signed by account {}, but task {task_arn} is in account {task_account}",
                caller.account
            ),
        ));
    }
    if assumed.role_name != role_name {
        return Err(refused(
            "wrong_role",
            format!(
                "signed with role {}, but task {task_arn} runs with role {role_name}",
                assumed.role_name
            ),
        ));
    }
    if assumed.session != task_id {
        return Err(refused(
            "wrong_task",
            format!(
                "signed by the role's session {}, which is not task {task_id} (another task's credentials)",
                assumed.session
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(arn: &str) -> CallerIdentity {
        CallerIdentity {
            arn: arn.into(),
            account: "123456789012".into(),
            user_id: "AROAEXAMPLE:x".into(),
        }
    }

    const TASK: &str = "arn:aws:ecs:us-east-1:123456789012:task/prod/0123abcd";
    const ROLE: &str = "arn:aws:iam::123456789012:role/tasks/orders";

    #[test]
    fn the_answer_must_name_the_tasks_role_and_session() {
        let ok = caller("arn:aws:sts::123456789012:assumed-role/orders/0123abcd");
        assert!(check_caller(&ok, TASK, Some(ROLE)).is_ok());
        let code = |c: &CallerIdentity, role: Option<&str>| check_caller(c, TASK, role).err().map(|r| r.code);
        assert_eq!(code(&ok, None), Some("no_task_role"));
        assert_eq!(
            code(
                &caller("arn:aws:sts::123456789012:assumed-role/billing/0123abcd"),
                Some(ROLE)
            ),
            Some("wrong_role")
        );
        assert_eq!(
            code(
                &caller("arn:aws:sts::123456789012:assumed-role/orders/ffff0000"),
                Some(ROLE)
            ),
            Some("wrong_task")
        );
        assert_eq!(
            code(
                &caller("arn:aws:sts::210987654321:assumed-role/orders/0123abcd"),
                Some(ROLE)
            ),
            Some("wrong_account")
        );
        assert_eq!(
            code(&caller("arn:aws:iam::123456789012:user/alice"), Some(ROLE)),
            Some("not_a_task_role")
        );
    }

    #[test]
    fn a_signature_is_accepted_once() {
        berth_common::tls::install_crypto_provider();
        let v = IamVerifier::new(
            "http://127.0.0.1:1",
            Connector::new(Duration::from_secs(1), rustls::RootCertStore::empty()),
            Arc::default(),
        )
        .unwrap();
        assert!(v.first_use("abc").is_ok());
        assert_eq!(v.first_use("abc").err().map(|r| r.code), Some("replayed"));
        assert!(v.first_use("abd").is_ok());
    }
}
