#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20261204/us-east-1/sts/aws4_request, \
    SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-berth-key-sha256;x-berth-trust-domain, \
    Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn proof(date: &str) -> BTreeMap<String, String> {
    [
        ("authorization", AUTH),
        ("content-type", CONTENT_TYPE),
        ("host", "sts.us-east-1.amazonaws.com"),
        ("x-amz-date", date),
        ("x-amz-security-token", "token"),
        (TRUST_DOMAIN_HEADER, "berth.local"),
        (KEY_HASH_HEADER, "ab"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn at(date: &str) -> SystemTime {
    parse_amz_date(date).unwrap()
}

#[test]
fn dates_are_read_as_utc() {
    assert_eq!(parse_amz_date("19700101T000000Z").unwrap(), UNIX_EPOCH);
    // 2026-12-04T23:00:00Z
    assert_eq!(
        parse_amz_date("20261204T230000Z").unwrap(),
        UNIX_EPOCH + Duration::from_secs(1_796_425_200)
    );
    for bad in [
        "",
        "20261204T230000",
        "2026-12-04T23:00:00Z",
        "20261304T230000Z",
        "2026120AT230000Z",
        "٢٠٢٦1204T230000Z",
    ] {
        assert!(parse_amz_date(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_good_proof_passes_and_its_authorization_is_read() {
    let now = at("20261204T230100Z");
    let auth = check_headers(&proof("20261204T230000Z"), now, Duration::from_secs(300)).unwrap();
    assert_eq!(auth.access_key, "ASIAEXAMPLE");
    assert_eq!(auth.region, "us-east-1");
    assert_eq!(auth.service, "sts");
    assert!(auth.signed_headers.contains(&KEY_HASH_HEADER.to_string()));
}

#[test]
fn old_and_future_signatures_are_refused() {
    let window = Duration::from_secs(300);
    let p = proof("20261204T230000Z");
    assert!(matches!(
        check_headers(&p, at("20261204T231000Z"), window),
        Err(IamError::Stale(..))
    ));
    assert!(matches!(
        check_headers(&p, at("20261204T225000Z"), window),
        Err(IamError::Stale(..))
    ));
}

#[test]
fn headers_a_proof_may_not_carry_or_must_sign_are_refused() {
    let now = at("20261204T230000Z");
    let window = Duration::from_secs(300);
    let mut p = proof("20261204T230000Z");
    p.insert("x-forwarded-host".into(), "evil".into());
    assert!(matches!(check_headers(&p, now, window), Err(IamError::NotAllowed(_))));

    // The trust domain not signed: the signature could serve another verifier.
    let mut p = proof("20261204T230000Z");
    p.insert("authorization".into(), AUTH.replace(";x-berth-trust-domain", ""));
    assert_eq!(
        check_headers(&p, now, window),
        Err(IamError::Unsigned(TRUST_DOMAIN_HEADER))
    );

    // A signed header the gateway does not send.
    let mut p = proof("20261204T230000Z");
    p.insert(
        "authorization".into(),
        AUTH.replace("content-type;", "content-type;expect;"),
    );
    assert!(matches!(
        check_headers(&p, now, window),
        Err(IamError::SignedNotAllowed(_))
    ));

    // Another service's signature.
    let mut p = proof("20261204T230000Z");
    p.insert("authorization".into(), AUTH.replace("/sts/", "/ecs/"));
    assert!(matches!(check_headers(&p, now, window), Err(IamError::Service(_))));

    let mut p = proof("20261204T230000Z");
    p.remove(KEY_HASH_HEADER);
    assert_eq!(check_headers(&p, now, window), Err(IamError::Missing(KEY_HASH_HEADER)));

    let mut p = proof("20261204T230000Z");
    p.insert("x-amz-security-token".into(), "x".repeat(MAX_HEADER_BYTES + 1));
    assert!(matches!(check_headers(&p, now, window), Err(IamError::TooLong(_))));
}

#[test]
fn authorization_headers_of_other_shapes_are_refused() {
    for bad in [
        "",
        "Bearer x",
        "AWS4-HMAC-SHA256 Credential=A/B/C/D/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=A/B/C/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=A/B/C/D/E, SignedHeaders=host, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "AWS4-HMAC-SHA256 Credential=A/B/C/D/aws4_request, SignedHeaders=host, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef, Extra=1",
    ] {
        assert!(Authorization::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn sts_answers_and_arns_are_read_strictly() {
    let xml = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/orders-task/0123456789abcdef</Arn>
    <UserId>AROAEXAMPLE:0123456789abcdef</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
</GetCallerIdentityResponse>"#;
    let id = parse_caller_identity(xml).unwrap();
    assert_eq!(id.account, "123456789012");
    let role = AssumedRole::parse(&id.arn).unwrap();
    assert_eq!(role.role_name, "orders-task");
    assert_eq!(role.session, "0123456789abcdef");
    assert!(parse_caller_identity("<ErrorResponse><Error><Code>x</Code></Error></ErrorResponse>").is_err());
    assert!(parse_caller_identity("<GetCallerIdentityResult><Arn>a</Arn>").is_err());

    for not_assumed in [
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:sts::123456789012:federated-user/bob",
        "arn:aws:sts::123456789012:assumed-role/path/role/session",
        "arn:aws:sts::12345:assumed-role/role/session",
        "arn:aws:sts::123456789012:assumed-role/role/",
    ] {
        assert!(AssumedRole::parse(not_assumed).is_err(), "{not_assumed}");
    }
    assert_eq!(
        role_of("arn:aws:iam::123456789012:role/service-roles/orders-task").unwrap(),
        ("123456789012".to_string(), "orders-task".to_string())
    );
    assert_eq!(
        AssumedRole::parse("arn:aws-us-gov:sts::123456789012:assumed-role/r/s")
            .unwrap()
            .account,
        "123456789012"
    );
    assert!(role_of("arn:aws:iam::123456789012:user/orders-task").is_err());
    assert!(role_of("arn:aws:iam::123456789012:role/").is_err());
}

#[cfg(feature = "test-util")]
#[test]
fn the_key_hash_is_the_csrs_public_key_info_hashed() {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let hash = csr_key_hash(&csr).unwrap();
    assert_eq!(
        hash,
        hex(&sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(
            &key
        )))
    );
    let other = rcgen::KeyPair::generate().unwrap();
    let csr2 = rcgen::CertificateParams::default()
        .serialize_request(&other)
        .unwrap()
        .pem()
        .unwrap();
    assert_ne!(csr_key_hash(&csr2).unwrap(), hash);
    assert!(csr_key_hash("not a csr").is_err());
}
