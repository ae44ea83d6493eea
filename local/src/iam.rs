//! Task roles as ECS and IAM give them. A task whose definition (or RunTask's
//! `overrides`) names a `taskRoleArn` gets credentials of its own, a session of that
//! role named after the task's ID, as ECS's are. Its containers find them at
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` with `AWS_CONTAINER_AUTHORIZATION_TOKEN` (the
//! documented form the SDKs accept over plain HTTP to loopback; ECS's relative form
//! points at a link-local address, which berth-local never uses), served only with that
//! task's token and only to its address. `sts:GetCallerIdentity` on the local API
//! verifies SigV4 signatures made with those credentials, recomputing them with
//! aws-sigv4, and answers with the assumed-role ARN STS would give.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use berth_common::iam::Authorization;
use http::StatusCode;
use serde_json::{Value, json};

use super::state::{ACCOUNT, Ecs, HEX, TaskRole, TaskState, UPPER, random};

/// How far a signature's date may be from STS's clock, as STS allows.
const SKEW: Duration = Duration::from_secs(15 * 60);
/// The largest `GetCallerIdentity` request read.
pub(crate) const MAX_STS_BODY: usize = 4 * 1024;

/// Serve `GET <credentials path>` from `peer` with `authorization`.
pub(crate) fn credentials(ecs: &Ecs, path: &str, authorization: Option<&str>, peer: IpAddr) -> (StatusCode, Value) {
    let refuse = |status: StatusCode, message: String| (status, json!({"code": status.as_u16(), "message": message}));
    let Some((task, role)) =
        tasks(ecs).find_map(|t| t.role.as_ref().filter(|r| r.credentials_path == path).map(|r| (t, r)))
    else {
        return refuse(StatusCode::NOT_FOUND, "no credentials at this path".into());
    };
    if authorization != Some(role.endpoint_token.as_str()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the Authorization header is not this task's token".into(),
        );
    }
    if let Some(a) = task.address
        && peer != IpAddr::V4(a)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "task {}'s credentials are served only to its address {a}, not {peer}",
                task.id
            ),
        );
    }
    if task.last_status == "STOPPED" {
        return refuse(StatusCode::NOT_FOUND, format!("task {} has stopped", task.id));
    }
    (StatusCode::OK, document(role))
}

/// A task role's credentials document, as the ECS agent serves it.
fn document(role: &TaskRole) -> Value {
    json!({
        "RoleArn": role.role_arn,
        "AccessKeyId": role.access_key_id,
        "SecretAccessKey": role.secret_access_key,
        "Token": role.session_token,
        "Expiration": berth_common::accesslog::rfc3339(role.expiration),
    })
}

fn tasks(ecs: &Ecs) -> impl Iterator<Item = &TaskState> {
    ecs.clusters.values().flat_map(|c| c.tasks.values())
}

/// An STS error: its HTTP status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

fn sts_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> StsError {
    StsError {
        status,
        code,
        message: message.into(),
    }
}

impl StsError {
    /// The error in STS's XML shape.
    pub(crate) fn xml(&self) -> String {
        let kind = if self.status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        };
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>{kind}</Type>\
             <Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            self.code,
            escape(&self.message),
            request_id()
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn request_id() -> String {
    let h = random(HEX, 32);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// One STS call (the query protocol, `POST /` with a form body): `GetCallerIdentity`
/// whose SigV4 signature is good for one of the tasks' credentials; the answer's XML.
pub(crate) fn sts(
    ecs: &Ecs,
    method: &str,
    path_and_query: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<String, StsError> {
    let form = String::from_utf8_lossy(body);
    let action = form
        .split('&')
        .find_map(|p| p.strip_prefix("Action="))
        .unwrap_or_default();
    if action != "GetCallerIdentity" {
        return Err(sts_error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("berth-local's STS serves GetCallerIdentity only, not {action:?}"),
        ));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err(sts_error(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        ));
    };
    let auth = Authorization::parse(authorization)
        .map_err(|e| sts_error(StatusCode::BAD_REQUEST, "IncompleteSignature", e.to_string()))?;
    let invalid = || {
        sts_error(
            StatusCode::FORBIDDEN,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        )
    };
    let (task, role) = tasks(ecs)
        .find_map(|t| {
            t.role
                .as_ref()
                .filter(|r| r.access_key_id == auth.access_key)
                .map(|r| (t, r))
        })
        .ok_or_else(invalid)?;
    if header("x-amz-security-token") != Some(role.session_token.as_str()) {
        return Err(invalid());
    }
    if now > role.expiration {
        return Err(sts_error(
            StatusCode::FORBIDDEN,
            "ExpiredToken",
            "The security token included in the request is expired",
        ));
    }
    let mismatch = |why: &str| {
        sts_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            format!(
                "The request signature we calculated does not match the signature you provided ({why}). \
                 Check your AWS Secret Access Key and signing method."
            ),
        )
    };
    let signed_at = header("x-amz-date")
        .and_then(|d| berth_common::iam::parse_amz_date(d).ok())
        .ok_or_else(|| mismatch("no valid X-Amz-Date"))?;
    let skew = match now.duration_since(signed_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > SKEW {
        return Err(sts_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "Signature expired: the request's date is more than 15 minutes from the server's time",
        ));
    }
    if auth.service != "sts" {
        return Err(mismatch("the credential scope is not for sts"));
    }
    // The signature over the headers the client signed, as aws-sigv4 computes it; the
    // signer adds X-Amz-Date and X-Amz-Security-Token itself.
    let mut signed: Vec<(&str, &str)> = Vec::new();
    for name in &auth.signed_headers {
        if name == "x-amz-date" || name == "x-amz-security-token" {
            continue;
        }
        let value = header(name).ok_or_else(|| mismatch("a signed header is missing"))?;
        signed.push((name.as_str(), value));
    }
    let host = header("host").ok_or_else(|| mismatch("no Host"))?;
    let url = format!("http://{host}{path_and_query}");
    let identity: Identity = Credentials::new(
        &role.access_key_id,
        &role.secret_access_key,
        Some(role.session_token.clone()),
        None,
        "berth-local",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&auth.region)
        .name("sts")
        .time(signed_at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| mismatch("unsignable"))?
        .into();
    let request = SignableRequest::new(method, url.as_str(), signed.into_iter(), SignableBody::Bytes(body))
        .map_err(|_| mismatch("unsignable"))?;
    let (_, signature) = sign(request, &params).map_err(|_| mismatch("unsignable"))?.into_parts();
    if signature != auth.signature {
        return Err(mismatch("the signatures differ"));
    }
    let role_name = role.role_arn.rsplit('/').next().unwrap_or_default();
    let account = role
        .role_arn
        .split(':')
        .nth(4)
        .filter(|a| !a.is_empty())
        .unwrap_or(ACCOUNT);
    Ok(format!(
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <GetCallerIdentityResult><Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{task}</Arn>\
         <UserId>{}:{task}</UserId><Account>{account}</Account></GetCallerIdentityResult>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
        role_id(&role.role_arn),
        request_id(),
        task = task.id,
    ))
}

/// A role's unique ID (`AROA` and 17 characters), the same for every session of it.
fn role_id(role_arn: &str) -> String {
    // FNV-1a, enough to make distinct roles' IDs distinct here.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in role_arn.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let chars: String = (0..17)
        .map(|i| char::from(UPPER[((h.rotate_left(i * 5)) & 31) as usize]))
        .collect();
    format!("AROA{chars}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::role_of;

    #[test]
    fn the_override_wins_over_the_definitions_role() {
        let def = json!({"taskRoleArn": "arn:aws:iam::000000000000:role/a"});
        assert_eq!(
            role_of(&def, &Value::Null).as_deref(),
            Some("arn:aws:iam::000000000000:role/a")
        );
        let o = json!({"taskRoleArn": "arn:aws:iam::000000000000:role/b"});
        assert_eq!(role_of(&def, &o).as_deref(), Some("arn:aws:iam::000000000000:role/b"));
        assert_eq!(role_of(&json!({"taskRoleArn": ""}), &Value::Null), None);
    }

    #[test]
    fn credentials_are_unique_and_role_ids_stable() {
        let (a, b) = (TaskRole::issue("r"), TaskRole::issue("r"));
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.endpoint_token, b.endpoint_token);
        assert!(a.access_key_id.starts_with("ASIA") && a.access_key_id.len() == 20);
        assert_eq!(role_id("x"), role_id("x"));
        assert_ne!(role_id("x"), role_id("y"));
        assert_eq!(role_id("x").len(), 21);
    }
}
