//! IAM identity for a sidecar's first certificate, the part both sides must agree on: the
//! sidecar signs an `sts:GetCallerIdentity` request with its task role's credentials and
//! sends the signed headers; the gateway rebuilds the request itself and sends it to its
//! own STS endpoint, which answers with the caller's assumed role and session.
//!
//! Two headers of Berth's own are among the signed ones, so that a signature is good for
//! one verifier and one key only: the gateway's trust domain ([`TRUST_DOMAIN_HEADER`])
//! and the SHA-256 of the CSR's public key ([`KEY_HASH_HEADER`]). Everything here is
//! total: bad input is an [`IamError`], never a panic, and every length is bounded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::Digest;

/// The signed header naming the gateway's trust domain.
pub const TRUST_DOMAIN_HEADER: &str = "x-berth-trust-domain";
/// The signed header carrying the hex SHA-256 of the CSR's SubjectPublicKeyInfo.
pub const KEY_HASH_HEADER: &str = "x-berth-key-sha256";
/// The one body the gateway sends to STS: nothing of the client's.
pub const GET_CALLER_IDENTITY_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// Its content type, signed.
pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// The headers a proof may carry (lower case); any other signed header is refused,
/// since the gateway would not send it.
pub const ALLOWED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "host",
    "x-amz-date",
    "x-amz-security-token",
    TRUST_DOMAIN_HEADER,
    KEY_HASH_HEADER,
];
/// The headers that must be signed.
pub const REQUIRED_SIGNED: &[&str] = &["host", "x-amz-date", TRUST_DOMAIN_HEADER, KEY_HASH_HEADER];
/// The longest header value accepted (a session token is about 1 KiB; STS's is bounded
/// well under this).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    #[error("the proof has no {0} header")]
    Missing(&'static str),
    #[error("header {0} is not one a proof may carry")]
    NotAllowed(String),
    #[error("header {0} is too long")]
    TooLong(String),
    #[error("the Authorization header is not a SigV4 one: {0}")]
    Authorization(&'static str),
    #[error("header {0} is not signed")]
    Unsigned(&'static str),
    #[error("signed header {0} is not one the gateway sends")]
    SignedNotAllowed(String),
    #[error("the signature is for service {0}, not sts")]
    Service(String),
    #[error("bad x-amz-date {0:?}")]
    Date(String),
    #[error("the signature is {0:?} old or in the future; at most {1:?} is accepted")]
    Stale(Duration, Duration),
    #[error("the STS answer is not a GetCallerIdentity result")]
    Answer,
    #[error("not an assumed-role ARN: {0}")]
    NotAssumedRole(String),
    #[error("not an IAM role ARN: {0}")]
    NotRole(String),
    #[error("the CSR cannot be read: {0}")]
    Csr(String),
}

/// What a SigV4 `Authorization` header says (`AWS4-HMAC-SHA256 Credential=AKID/DATE/
/// REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=HEX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    pub fn parse(value: &str) -> Result<Authorization, IamError> {
        let rest = value
            .strip_prefix("AWS4-HMAC-SHA256 ")
            .ok_or(IamError::Authorization("not AWS4-HMAC-SHA256"))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            } else {
                return Err(IamError::Authorization("an unknown part"));
            }
        }
        let credential = credential.ok_or(IamError::Authorization("no Credential"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key, _date, region, service, "aws4_request"] = scope[..] else {
            return Err(IamError::Authorization("a malformed Credential scope"));
        };
        let signature = signature.ok_or(IamError::Authorization("no Signature"))?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IamError::Authorization("a Signature that is not 64 hex digits"));
        }
        let signed_headers: Vec<String> = signed
            .ok_or(IamError::Authorization("no SignedHeaders"))?
            .split(';')
            .map(str::to_string)
            .collect();
        Ok(Authorization {
            access_key: access_key.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// Check a proof's headers before anything is sent: only allowed headers, none too
/// long, a SigV4 signature for STS over the required headers and no header the gateway
/// would not send, dated within `window` of `now`. Gives the parsed authorization.
pub fn check_headers(
    headers: &std::collections::BTreeMap<String, String>,
    now: SystemTime,
    window: Duration,
) -> Result<Authorization, IamError> {
    for (name, value) in headers {
        if !ALLOWED_HEADERS.contains(&name.as_str()) {
            return Err(IamError::NotAllowed(name.chars().take(64).collect()));
        }
        if value.len() > MAX_HEADER_BYTES {
            return Err(IamError::TooLong(name.clone()));
        }
    }
    let auth = Authorization::parse(headers.get("authorization").ok_or(IamError::Missing("authorization"))?)?;
    if auth.service != "sts" {
        return Err(IamError::Service(auth.service.chars().take(32).collect()));
    }
    for required in REQUIRED_SIGNED {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(IamError::Unsigned(required));
        }
        if !headers.contains_key(*required) && *required != "host" {
            return Err(IamError::Missing(required));
        }
    }
    if let Some(h) = auth
        .signed_headers
        .iter()
        .find(|h| !ALLOWED_HEADERS.contains(&h.as_str()) || h.as_str() == "authorization")
    {
        return Err(IamError::SignedNotAllowed(h.chars().take(64).collect()));
    }
    let date = headers.get("x-amz-date").ok_or(IamError::Missing("x-amz-date"))?;
    let signed_at = parse_amz_date(date)?;
    let skew = now
        .duration_since(signed_at)
        .or_else(|e| Ok::<_, IamError>(e.duration()))?;
    if skew > window {
        return Err(IamError::Stale(skew, window));
    }
    Ok(auth)
}

/// `YYYYMMDDTHHMMSSZ` as a time.
pub fn parse_amz_date(s: &str) -> Result<SystemTime, IamError> {
    let bad = || IamError::Date(s.chars().take(32).collect());
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u64, IamError> {
        let part = s.get(r).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(y as i64, mo as i64, d as i64);
    let secs = u64::try_from(days).map_err(|_| bad())? * 86_400 + h * 3600 + mi * 60 + sec;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What STS says about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    pub arn: String,
    pub account: String,
    pub user_id: String,
}

/// A `GetCallerIdentityResponse` (XML, bounded by the caller), or why not.
pub fn parse_caller_identity(xml: &str) -> Result<CallerIdentity, IamError> {
    let result = crate::http::xml_text(xml, "GetCallerIdentityResult").ok_or(IamError::Answer)?;
    let field = |name| {
        crate::http::xml_text(result, name)
            .map(|v| v.trim().to_string())
            .ok_or(IamError::Answer)
    };
    Ok(CallerIdentity {
        arn: field("Arn")?,
        account: field("Account")?,
        user_id: field("UserId")?,
    })
}

/// An STS assumed-role ARN, `arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumedRole {
    pub account: String,
    pub role_name: String,
    pub session: String,
}

impl AssumedRole {
    /// Any other form (a user, a federated user, a role path left in) is refused.
    pub fn parse(arn: &str) -> Result<AssumedRole, IamError> {
        let bad = || IamError::NotAssumedRole(arn.chars().take(256).collect());
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let ["arn", _partition, "sts", "", account, resource] = parts[..] else {
            return Err(bad());
        };
        let rest: Vec<&str> = resource.split('/').collect();
        let ["assumed-role", role, session] = rest[..] else {
            return Err(bad());
        };
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || role.is_empty() || session.is_empty()
        {
            return Err(bad());
        }
        Ok(AssumedRole {
            account: account.to_string(),
            role_name: role.to_string(),
            session: session.to_string(),
        })
    }
}

/// An IAM role ARN's account and name, its path removed (`arn:aws:iam::ACCOUNT:role/
/// PATH/NAME`): assumed-role ARNs carry the name only.
pub fn role_of(arn: &str) -> Result<(String, String), IamError> {
    let bad = || IamError::NotRole(arn.chars().take(256).collect());
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ["arn", _partition, "iam", "", account, resource] = parts[..] else {
        return Err(bad());
    };
    let path = resource.strip_prefix("role/").ok_or_else(bad)?;
    let name = path.rsplit('/').next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    Ok((account.to_string(), name.to_string()))
}

/// The hex SHA-256 of a CSR's SubjectPublicKeyInfo (DER): what the key-hash header says.
pub fn csr_key_hash(csr_pem: &str) -> Result<String, IamError> {
    use x509_parser::prelude::FromDer;
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|e| IamError::Csr(e.to_string()))?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| IamError::Csr(e.to_string()))?;
    let spki = csr.certification_request_info.subject_pki.raw;
    Ok(hex(&sha2::Sha256::digest(spki)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The region, as the AWS SDKs find it in the environment: `AWS_REGION`, else
/// `AWS_DEFAULT_REGION`.
pub fn region(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |k: &str| var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    set("AWS_REGION").or_else(|| set("AWS_DEFAULT_REGION"))
}

/// The STS endpoint, as the AWS SDKs find it: `AWS_ENDPOINT_URL_STS`, else
/// `AWS_ENDPOINT_URL`, else `region`'s (`https://sts.REGION.amazonaws.com`).
pub fn sts_endpoint(var: impl Fn(&str) -> Option<String>, region: Option<&str>) -> Option<String> {
    let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    set("AWS_ENDPOINT_URL_STS")
        .or_else(|| set("AWS_ENDPOINT_URL"))
        .or_else(|| region.map(|r| format!("https://sts.{r}.amazonaws.com")))
}

#[cfg(test)]
mod tests;
