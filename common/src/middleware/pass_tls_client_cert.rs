//! `passTLSClientCert`: the client certificates of a mutual-TLS connection (the router's
//! `tls.options` asked for them with `clientAuth`) passed to the backend in headers, as
//! Traefik v3 writes them (`pkg/middlewares/passtlsclientcert`):
//!
//! - `pem: true`: `X-Forwarded-Tls-Client-Cert`, each certificate's PEM without its
//!   armour lines and line breaks (its DER in standard base64), the chain joined by `,`;
//! - `info`: `X-Forwarded-Tls-Client-Cert-Info`, the chosen fields of each certificate
//!   (`Subject="C=..,CN=.."`, `Issuer=".."`, `SerialNumber=".."`, `NB="unix"`,
//!   `NA="unix"`, `SAN="dns,email,ip,uri"`) joined by `;`, the chain by `,`, the whole
//!   query-escaped as Go's `url.QueryEscape` does.
//!
//! Without a client certificate the headers are left alone; a client's own values never
//! get this far, because the front removes them unless the client is a trusted forwarder.

use base64::Engine;
use http::{HeaderMap, HeaderValue};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use super::errors::query_escape;
use super::options::Options;
use crate::tree::Node;

pub const CERT_HEADER: &str = "x-forwarded-tls-client-cert";
pub const INFO_HEADER: &str = "x-forwarded-tls-client-cert-info";

/// Which parts of a distinguished name go into the info header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NameFields {
    country: bool,
    province: bool,
    locality: bool,
    organization: bool,
    organizational_unit: bool,
    common_name: bool,
    serial_number: bool,
    domain_component: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Info {
    not_after: bool,
    not_before: bool,
    sans: bool,
    serial_number: bool,
    subject: Option<NameFields>,
    issuer: Option<NameFields>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PassTlsClientCert {
    pem: bool,
    info: Option<Info>,
}

const SUBJECT_KEYS: &[&str] = &[
    "country",
    "province",
    "locality",
    "organization",
    "organizationalUnit",
    "commonName",
    "serialNumber",
    "domainComponent",
];
/// Traefik's issuer has no `organizationalUnit`.
const ISSUER_KEYS: &[&str] = &[
    "country",
    "province",
    "locality",
    "organization",
    "commonName",
    "serialNumber",
    "domainComponent",
];

fn name_fields(o: &Options<'_>, key: &str, known: &'static [&'static str]) -> Result<Option<NameFields>, String> {
    let Some(n) = o.nested(key, known)? else {
        return Ok(None);
    };
    let has = |k: &str| -> Result<bool, String> { if known.contains(&k) { n.bool(k) } else { Ok(false) } };
    Ok(Some(NameFields {
        country: has("country")?,
        province: has("province")?,
        locality: has("locality")?,
        organization: has("organization")?,
        organizational_unit: has("organizationalUnit")?,
        common_name: has("commonName")?,
        serial_number: has("serialNumber")?,
        domain_component: has("domainComponent")?,
    }))
}

impl PassTlsClientCert {
    pub fn parse(node: &Node) -> Result<PassTlsClientCert, String> {
        let o = Options::new("passTLSClientCert", node, &["pem", "info"])?;
        let info = match o.nested(
            "info",
            &["notAfter", "notBefore", "sans", "serialNumber", "subject", "issuer"],
        )? {
            None => None,
            Some(i) => Some(Info {
                not_after: i.bool("notAfter")?,
                not_before: i.bool("notBefore")?,
                sans: i.bool("sans")?,
                serial_number: i.bool("serialNumber")?,
                subject: name_fields(&i, "subject", SUBJECT_KEYS)?,
                issuer: name_fields(&i, "issuer", ISSUER_KEYS)?,
            }),
        };
        Ok(PassTlsClientCert {
            pem: o.bool("pem")?,
            info,
        })
    }

    /// The request phase: set the headers from `certs` (the client's, its own first).
    pub fn request(&self, certs: Option<&[CertificateDer<'static>]>, headers: &mut HeaderMap) {
        let Some(certs) = certs.filter(|c| !c.is_empty()) else {
            return;
        };
        if self.pem {
            let b64 = base64::engine::general_purpose::STANDARD;
            let value: Vec<String> = certs.iter().map(|c| b64.encode(c.as_ref())).collect();
            if let Ok(v) = HeaderValue::from_str(&value.join(",")) {
                headers.insert(CERT_HEADER, v);
            }
        }
        if let Some(info) = &self.info {
            let value: Vec<String> = certs.iter().map(|c| info.describe(c)).collect();
            if let Ok(v) = HeaderValue::from_str(&query_escape(&value.join(","))) {
                headers.insert(INFO_HEADER, v);
            }
        }
    }
}

impl Info {
    /// One certificate's fields; a certificate that does not parse gives none (it came
    /// through the handshake, so it parses unless the client's auth type takes any).
    fn describe(&self, der: &CertificateDer<'_>) -> String {
        let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
            return String::new();
        };
        let mut values = Vec::new();
        if let Some(f) = &self.subject {
            let s = dn(f, cert.subject());
            if !s.is_empty() {
                values.push(format!("Subject=\"{s}\""));
            }
        }
        if let Some(f) = &self.issuer {
            let s = dn(f, cert.issuer());
            if !s.is_empty() {
                values.push(format!("Issuer=\"{s}\""));
            }
        }
        if self.serial_number {
            values.push(format!("SerialNumber=\"{}\"", cert.tbs_certificate.serial));
        }
        let unix = |t: i64| u64::try_from(t).unwrap_or_default();
        if self.not_before {
            values.push(format!("NB=\"{}\"", unix(cert.validity().not_before.timestamp())));
        }
        if self.not_after {
            values.push(format!("NA=\"{}\"", unix(cert.validity().not_after.timestamp())));
        }
        if self.sans {
            let sans = sans(&cert);
            if !sans.is_empty() {
                values.push(format!("SAN=\"{}\"", sans.join(",")));
            }
        }
        values.join(";")
    }
}

/// A distinguished name as Go's `pkix.Name` gives it to Traefik: domain components in
/// order, then each country, province, locality, organization and unit, then the
/// serial number and the common name (the last of each), every part `K=v,`; the
/// trailing comma dropped.
fn dn(f: &NameFields, name: &X509Name<'_>) -> String {
    let mut by: Vec<(String, &str)> = Vec::new();
    for rdn in name.iter_rdn() {
        for atv in rdn.iter() {
            if let Ok(v) = atv.as_str() {
                by.push((atv.attr_type().to_id_string(), v));
            }
        }
    }
    let mut out = String::new();
    let mut part = |k: &str, v: &str| {
        if !v.is_empty() {
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push(',');
        }
    };
    let fields: [(bool, &str, &str, bool); 8] = [
        (f.domain_component, "DC", "0.9.2342.19200300.100.1.25", true),
        (f.country, "C", "2.5.4.6", true),
        (f.province, "ST", "2.5.4.8", true),
        (f.locality, "L", "2.5.4.7", true),
        (f.organization, "O", "2.5.4.10", true),
        (f.organizational_unit, "OU", "2.5.4.11", true),
        (f.serial_number, "SN", "2.5.4.5", false),
        (f.common_name, "CN", "2.5.4.3", false),
    ];
    for (on, key, oid, every) in fields {
        if !on {
            continue;
        }
        let mut values = by.iter().filter(|(o, _)| o == oid).map(|(_, v)| *v);
        if every {
            values.for_each(|v| part(key, v));
        } else if let Some(v) = values.next_back() {
            part(key, v);
        }
    }
    if out.ends_with(',') {
        out.pop();
    }
    out
}

/// The SANs in Go's order: DNS names, e-mail addresses, IP addresses, URIs.
fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    let names = &ext.value.general_names;
    let mut out: Vec<String> = Vec::new();
    out.extend(names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    }));
    out.extend(names.iter().filter_map(|n| match n {
        GeneralName::RFC822Name(e) => Some(e.to_string()),
        _ => None,
    }));
    out.extend(names.iter().filter_map(|n| match n {
        GeneralName::IPAddress(b) => ip(b),
        _ => None,
    }));
    out.extend(names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    }));
    out
}

/// An IP SAN as Go prints it (an IPv4-mapped IPv6 address as IPv4).
fn ip(b: &[u8]) -> Option<String> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Some(std::net::Ipv4Addr::from(v4).to_string());
    }
    let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?);
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::node;

    /// A client certificate with a full subject, issued by a CA with one.
    fn chain() -> Vec<CertificateDer<'static>> {
        use rcgen::{CertificateParams, DnType, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name.push(DnType::CountryName, "FR");
        ca.distinguished_name.push(DnType::OrganizationName, "Berth CA");
        ca.distinguished_name.push(DnType::CommonName, "Berth test root");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["client.test".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CountryName, "FR");
        p.distinguished_name.push(DnType::StateOrProvinceName, "Some-State");
        p.distinguished_name.push(DnType::LocalityName, "Toulouse");
        p.distinguished_name.push(DnType::OrganizationName, "Cheese");
        p.distinguished_name.push(DnType::OrganizationalUnitName, "Ops");
        p.distinguished_name.push(DnType::CommonName, "client one");
        p.subject_alt_names
            .push(SanType::Rfc822Name("ops@example.test".try_into().unwrap()));
        p.subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
        p.subject_alt_names
            .push(SanType::URI("spiffe://example.test/client".try_into().unwrap()));
        p.serial_number = Some(rcgen::SerialNumber::from(vec![0x01, 0x00]));
        p.not_before = rcgen::date_time_ymd(2026, 1, 2);
        p.not_after = rcgen::date_time_ymd(2030, 1, 2);
        let leaf = p.signed_by(&key, &issuer).unwrap();
        vec![leaf.der().clone(), ca_cert.der().clone()]
    }

    #[test]
    fn pem_is_the_base64_der_of_each_certificate() {
        let m = PassTlsClientCert::parse(&node(&[("pem", "true")])).unwrap();
        let certs = chain();
        let mut h = HeaderMap::new();
        m.request(Some(&certs), &mut h);
        let v = h.get(CERT_HEADER).unwrap().to_str().unwrap();
        let parts: Vec<&str> = v.split(',').collect();
        assert_eq!(parts.len(), 2);
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.decode(parts[0]).unwrap(), certs[0].as_ref());
        assert!(h.get(INFO_HEADER).is_none());
        // No certificate: nothing is set, and what was there stays.
        let mut h = HeaderMap::new();
        h.insert(CERT_HEADER, HeaderValue::from_static("from-a-trusted-proxy"));
        m.request(None, &mut h);
        assert_eq!(h.get(CERT_HEADER).unwrap(), "from-a-trusted-proxy");
    }

    #[test]
    fn info_has_traefiks_fields_in_its_order_and_escaping() {
        let m = PassTlsClientCert::parse(&node(&[
            ("info.notAfter", "true"),
            ("info.notBefore", "true"),
            ("info.sans", "true"),
            ("info.serialNumber", "true"),
            ("info.subject.country", "true"),
            ("info.subject.province", "true"),
            ("info.subject.locality", "true"),
            ("info.subject.organization", "true"),
            ("info.subject.organizationalUnit", "true"),
            ("info.subject.commonName", "true"),
            ("info.issuer.commonName", "true"),
            ("info.issuer.organization", "true"),
        ]))
        .unwrap();
        let certs = chain();
        let mut h = HeaderMap::new();
        m.request(Some(&certs[..1]), &mut h);
        let v = h.get(INFO_HEADER).unwrap().to_str().unwrap();
        let decoded = crate::percent::decode(&v.replace('+', " ")).into_owned();
        assert_eq!(
            decoded,
            "Subject=\"C=FR,ST=Some-State,L=Toulouse,O=Cheese,OU=Ops,CN=client one\";\
             Issuer=\"O=Berth CA,CN=Berth test root\";SerialNumber=\"256\";\
             NB=\"1767312000\";NA=\"1893542400\";\
             SAN=\"client.test,ops@example.test,10.0.0.1,spiffe://example.test/client\""
        );
        assert!(v.starts_with("Subject%3D%22C%3DFR%2CST%3DSome-State"), "{v}");
        assert!(v.contains("client+one"), "a space is a plus: {v}");
    }

    #[test]
    fn options_are_checked() {
        assert!(PassTlsClientCert::parse(&node(&[("pems", "true")])).is_err());
        assert!(PassTlsClientCert::parse(&node(&[("info.issuer.organizationalUnit", "true")])).is_err());
        assert!(PassTlsClientCert::parse(&node(&[("pem", "maybe")])).is_err());
        assert_eq!(query_escape("a b/c~é"), "a+b%2Fc~%C3%A9");
    }
}
