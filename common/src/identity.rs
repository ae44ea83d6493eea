//! SPIFFE identities: `spiffe://<trust-domain>/ecs/<cluster>/<service>` for tasks and
//! `spiffe://<trust-domain>/gateway` for the gateway, and their extraction from
//! certificate URI SANs (webpki checks DNS names and IPs only, so this is ours).

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;

/// A bad identity or certificate, in words that say which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("`{0}` is not a SPIFFE ID: {1}")]
    Invalid(String, &'static str),
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the certificate carries no SPIFFE ID (URI SAN)")]
    NoSpiffeId,
    #[error("the certificate carries {0} SPIFFE IDs; exactly one is allowed")]
    SeveralSpiffeIds(usize),
}

/// A validated SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    /// Starts with `/`; never ends with one.
    path: String,
}

fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_')
}

fn valid_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<SpiffeId, IdentityError> {
        let bad = |why| IdentityError::Invalid(s.to_string(), why);
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it must start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !valid_trust_domain(td) {
            return Err(bad("the trust domain must be lowercase letters, digits, `.`, `-`, `_`"));
        }
        if s.contains(['?', '#']) {
            return Err(bad("query and fragment are not allowed"));
        }
        if !path.is_empty() && !path[1..].split('/').all(valid_segment) {
            return Err(bad("path segments must be non-empty letters, digits, `.`, `-`, `_`"));
        }
        Ok(SpiffeId {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    fn from_parts(trust_domain: &str, segments: &[&str]) -> Result<SpiffeId, IdentityError> {
        let joined = format!("spiffe://{trust_domain}/{}", segments.join("/"));
        if let Some(bad) = segments.iter().find(|s| !valid_segment(s)) {
            return Err(IdentityError::Invalid(
                joined,
                if bad.contains('/') {
                    "a cluster or service name cannot contain `/`"
                } else {
                    "path segments must be non-empty letters, digits, `.`, `-`, `_`"
                },
            ));
        }
        SpiffeId::parse(&joined)
    }

    /// The identity of the tasks of ECS service `service` in cluster `cluster` (names,
    /// not ARNs; an ARN is reduced to its last segment).
    pub fn for_service(trust_domain: &str, cluster: &str, service: &str) -> Result<SpiffeId, IdentityError> {
        let cluster = cluster.rsplit('/').next().unwrap_or(cluster);
        SpiffeId::from_parts(trust_domain, &["ecs", cluster, service])
    }

    /// The gateway's identity.
    pub fn gateway(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::from_parts(trust_domain, &["gateway"])
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// `(cluster, service)` for a task identity.
    pub fn ecs_service(&self) -> Option<(&str, &str)> {
        let mut it = self.path.strip_prefix("/ecs/")?.split('/');
        match (it.next(), it.next(), it.next()) {
            (Some(c), Some(s), None) => Some((c, s)),
            _ => None,
        }
    }

    pub fn is_gateway(&self) -> bool {
        self.path == "/gateway"
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

/// The one SPIFFE ID in a certificate's URI SANs.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                ids.push(SpiffeId::parse(uri)?);
            }
        }
    }
    match ids.len() {
        0 => Err(IdentityError::NoSpiffeId),
        1 => Ok(ids.remove(0)),
        n => Err(IdentityError::SeveralSpiffeIds(n)),
    }
}

/// When a certificate expires.
pub fn not_after_of(cert: &CertificateDer<'_>) -> Result<std::time::SystemTime, IdentityError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
    Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// What an operator wants to see about a certificate.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    pub subject: String,
    /// DNS names, IP addresses and URIs (SPIFFE IDs) from the SAN extension.
    pub names: Vec<String>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub is_ca: bool,
}

/// The certificate's public key: the bits of its SubjectPublicKeyInfo (to check that a
/// key file belongs to a certificate).
pub fn public_key_bits(cert: &CertificateDer<'_>) -> Result<Vec<u8>, IdentityError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    Ok(parsed.public_key().subject_public_key.data.to_vec())
}

/// Subject, names and validity of a certificate.
pub fn summarize(cert: &CertificateDer<'_>) -> Result<CertSummary, IdentityError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::URI(u) => names.push(u.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertSummary {
        subject: parsed.subject().to_string(),
        names,
        not_before_unix: parsed.validity().not_before.timestamp(),
        not_after_unix: parsed.validity().not_after.timestamp(),
        is_ca: parsed.is_ca(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_builds_ids() {
        let id = SpiffeId::for_service("berth.local", "arn:aws:ecs:us-east-1:1:cluster/prod", "orders").unwrap();
        assert_eq!(id.to_string(), "spiffe://berth.local/ecs/prod/orders");
        assert_eq!(id.ecs_service(), Some(("prod", "orders")));
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        let gw = SpiffeId::gateway("berth.local").unwrap();
        assert!(gw.is_gateway());
        assert_eq!(gw.ecs_service(), None);
        for bad in [
            "http://x/y",
            "spiffe://",
            "spiffe://UPPER/x",
            "spiffe://td/a//b",
            "spiffe://td/a/../b",
            "spiffe://td/a?q",
            "spiffe://td/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        assert!(SpiffeId::for_service("td", "c", "bad/name").is_err());
    }
}
