//! The task proves itself with its IAM role instead of a shared token: the task role's
//! credentials, fetched as the AWS SDKs' container credential provider does, sign an
//! `sts:GetCallerIdentity` request that the gateway rebuilds and sends to STS.
//!
//! Where the credentials are: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS sets it;
//! served at `http://169.254.170.2`, no token), or `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! with `AWS_CONTAINER_AUTHORIZATION_TOKEN` or `_TOKEN_FILE`, which, as in the SDKs, may
//! be plain HTTP only to a loopback address or the ECS and EKS agents' addresses.
//!
//! The signed headers include the gateway's trust domain (learnt from the gateway's own
//! certificate in the handshake) and the SHA-256 of the CSR's public key, so the
//! signature serves one verifier and one key ([`berth_common::iam`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use berth_common::control::IamProof;
use berth_common::iam::{CONTENT_TYPE, GET_CALLER_IDENTITY_BODY, KEY_HASH_HEADER, TRUST_DOMAIN_HEADER, csr_key_hash};

use crate::metadata::{DocumentError, get_document};

/// Where ECS serves task role credentials for `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const ECS_CREDENTIALS_HOST: &str = "169.254.170.2";
/// One credentials fetch, connection to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest credentials document read.
const MAX_DOCUMENT: usize = 64 * 1024;

/// Signs IAM proofs with the task role's credentials.
#[derive(Debug, Clone)]
pub struct IamSigner {
    credentials_uri: http::Uri,
    /// The `Authorization` header the credentials endpoint wants (FULL_URI only).
    authorization: Option<Authorization>,
    region: String,
    sts_endpoint: String,
    /// The source address of credentials fetches ([`IamSigner::from_address`]).
    bind: Option<IpAddr>,
}

#[derive(Debug, Clone)]
enum Authorization {
    Token(String),
    /// Read at each fetch: the agent rotates it.
    File(String),
}

impl IamSigner {
    /// From the container's environment (`var`), when it has task role credentials;
    /// `Ok(None)` when it has none. The region is `AWS_REGION`, `AWS_DEFAULT_REGION`, or
    /// the task ARN's.
    pub fn from_env(var: impl Fn(&str) -> Option<String>, task_arn: &str) -> Result<Option<IamSigner>, String> {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let (uri, authorization) = match (
            set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            set("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ) {
            (Some(rel), _) => (format!("http://{ECS_CREDENTIALS_HOST}{}", rel.trim()), None),
            (None, Some(full)) => {
                let auth = match (
                    set("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
                    set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
                ) {
                    (Some(t), _) => Some(Authorization::Token(t.trim().to_string())),
                    (None, Some(f)) => Some(Authorization::File(f)),
                    (None, None) => None,
                };
                (full.trim().to_string(), auth)
            }
            (None, None) => return Ok(None),
        };
        let credentials_uri: http::Uri = uri
            .parse()
            .map_err(|e| format!("the task credentials URL {uri}: {e}"))?;
        let host = credentials_uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let allowed = host == "localhost"
            || host.parse::<IpAddr>().is_ok_and(|ip| {
                ip.is_loopback() || ip.to_string() == ECS_CREDENTIALS_HOST || ip.to_string() == "169.254.170.23"
            });
        if credentials_uri.scheme_str() != Some("http") || !allowed {
            return Err(format!(
                "the task credentials URL {uri} must be plain HTTP to a loopback address or the ECS agent's \
                 (169.254.170.2), as the AWS SDKs require"
            ));
        }
        let task_region = task_arn.split(':').nth(3).filter(|r| !r.is_empty()).map(str::to_string);
        let region = berth_common::iam::region(&var)
            .or(task_region)
            .ok_or("no region: set AWS_REGION")?;
        let sts_endpoint = berth_common::iam::sts_endpoint(&var, Some(&region)).ok_or("no STS endpoint")?;
        Ok(Some(IamSigner {
            credentials_uri,
            authorization,
            region,
            sts_endpoint,
            bind: None,
        }))
    }

    /// Fetch credentials from the task's own address `ip` when the endpoint is on
    /// loopback and so is `ip` (tasks sharing the host's loopback, as in berth-local, are
    /// told apart by it); elsewhere the kernel's choice stands.
    pub fn from_address(mut self, ip: Option<IpAddr>) -> IamSigner {
        let endpoint_on_loopback = self
            .credentials_uri
            .host()
            .map(|h| h.trim_matches(['[', ']']))
            .is_some_and(|h| h == "localhost" || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback()));
        self.bind = ip.filter(|ip| ip.is_loopback() && endpoint_on_loopback);
        self
    }

    /// A proof for `csr_pem`, for the gateway of `trust_domain`.
    pub async fn proof(&self, csr_pem: &str, trust_domain: &str) -> Result<IamProof, String> {
        self.proof_at(csr_pem, trust_domain, SystemTime::now()).await
    }

    /// A proof signed as at `at` (a clock that is off, or a signature kept for later).
    pub async fn proof_at(&self, csr_pem: &str, trust_domain: &str, at: SystemTime) -> Result<IamProof, String> {
        let creds = self.credentials().await?;
        let key_hash = csr_key_hash(csr_pem).map_err(|e| e.to_string())?;
        self.sign(&creds, trust_domain, &key_hash, at)
    }

    fn sign(
        &self,
        creds: &Credentials,
        trust_domain: &str,
        key_hash: &str,
        at: SystemTime,
    ) -> Result<IamProof, String> {
        let uri: http::Uri = self
            .sts_endpoint
            .parse()
            .map_err(|e| format!("bad STS endpoint {}: {e}", self.sts_endpoint))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let identity: Identity = creds.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sts")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing: {e}"))?
            .into();
        let headers = [
            ("host", host.as_str()),
            ("content-type", CONTENT_TYPE),
            (TRUST_DOMAIN_HEADER, trust_domain),
            (KEY_HASH_HEADER, key_hash),
        ];
        let signable = SignableRequest::new(
            "POST",
            self.sts_endpoint.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(GET_CALLER_IDENTITY_BODY.as_bytes()),
        )
        .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        let mut out: BTreeMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (name, value) in instructions.headers() {
            out.insert(name.to_ascii_lowercase(), value.to_string());
        }
        Ok(IamProof { headers: out })
    }

    /// The task role's credentials, from the container credentials endpoint.
    /// Whether the task role's credentials can be fetched (`berth-sidecar check`).
    pub(crate) async fn credentials_found(&self) -> Result<(), String> {
        self.credentials().await.map(|_| ())
    }

    async fn credentials(&self) -> Result<Credentials, String> {
        let uri = &self.credentials_uri;
        let token = match &self.authorization {
            Some(Authorization::Token(t)) => Some(t.clone()),
            Some(Authorization::File(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {f}: {e}"))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let body = get_document(uri, token.as_deref(), self.bind, MAX_DOCUMENT, FETCH_TIMEOUT)
            .await
            .map_err(|e| match e {
                DocumentError::Unreachable(why) => format!("task credentials at {uri}: {why}"),
                DocumentError::Status(status) => format!("task credentials at {uri}: HTTP {status}"),
                DocumentError::Timeout => format!("no credentials from {uri} within {FETCH_TIMEOUT:?}"),
            })?;
        parse_credentials(&body)
    }
}

/// The container credentials document: `AccessKeyId`, `SecretAccessKey`, `Token`.
fn parse_credentials(body: &[u8]) -> Result<Credentials, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Document {
        access_key_id: String,
        secret_access_key: String,
        #[serde(default)]
        token: Option<String>,
    }
    let d: Document = serde_json::from_slice(body).map_err(|e| format!("the task credentials document: {e}"))?;
    Ok(Credentials::new(
        d.access_key_id,
        d.secret_access_key,
        d.token,
        None,
        "berth-task-role",
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;

    const TASK: &str = "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123abcd";

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_credentials_endpoint_is_found_as_the_sdks_find_it() {
        assert!(IamSigner::from_env(env(&[]), TASK).unwrap().is_none());
        let s = IamSigner::from_env(
            env(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/x")]),
            TASK,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.credentials_uri, "http://169.254.170.2/v2/credentials/x");
        // The region from the task ARN, the regional endpoint.
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.sts_endpoint, "https://sts.eu-west-1.amazonaws.com");
        let s = IamSigner::from_env(
            env(&[
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/creds"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "secret"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:5000"),
            ]),
            TASK,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.sts_endpoint, "http://127.0.0.1:5000");
        assert!(matches!(s.authorization, Some(Authorization::Token(ref t)) if t == "secret"));
        for refused in [
            "http://10.0.0.5/creds",
            "https://127.0.0.1/creds",
            "http://example.com/creds",
        ] {
            assert!(
                IamSigner::from_env(env(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", refused)]), TASK).is_err(),
                "{refused}"
            );
        }
    }

    /// The proof passes the gateway's own header checks, signs what must be signed and
    /// carries the credentials' session token.
    #[test]
    fn a_proof_is_what_the_gateway_accepts() {
        let s = IamSigner::from_env(
            env(&[
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/creds"),
                ("AWS_REGION", "us-east-1"),
            ]),
            TASK,
        )
        .unwrap()
        .unwrap();
        let creds = parse_credentials(
            br#"{"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"s3cr3t","Token":"session-token","Expiration":"2030-01-01T00:00:00Z","RoleArn":"arn:aws:iam::123456789012:role/orders"}"#,
        )
        .unwrap();
        let now = SystemTime::now();
        let proof = s.sign(&creds, "berth.local", "abcd", now).unwrap();
        let auth = berth_common::iam::check_headers(&proof.headers, now, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.access_key, "ASIAEXAMPLE");
        assert_eq!(auth.region, "us-east-1");
        assert_eq!(proof.headers["host"], "sts.us-east-1.amazonaws.com");
        assert_eq!(proof.headers["x-amz-security-token"], "session-token");
        assert_eq!(proof.headers[TRUST_DOMAIN_HEADER], "berth.local");
        assert!(auth.signed_headers.iter().any(|h| h == "x-amz-security-token"));
        // Another key or trust domain: another signature.
        let other = s.sign(&creds, "other.domain", "abcd", now).unwrap();
        assert_ne!(
            berth_common::iam::Authorization::parse(&other.headers["authorization"])
                .unwrap()
                .signature,
            auth.signature
        );
        assert!(parse_credentials(b"{}").is_err());
    }
}
