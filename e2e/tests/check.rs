//! `berth-gateway check`, run as shipped against berth-local's ECS and STS APIs: passes
//! with a working setup, and fails with the right line for each broken setting: a call
//! the task role's policy lacks (berth-local refusing it as IAM does), a cluster that
//! does not exist, a CA key that is not the CA's, an expired CA, a leaf given as the CA,
//! no token for token mode, no region.
#![allow(clippy::unwrap_used)]

use berth_e2e::{bin, local_ecs, temp_dir};

/// `berth-gateway check ARGS` with berth-local's credentials: exit code, stdout+stderr.
fn check(endpoint: &str, args: &[&str], region: bool) -> (i32, String) {
    let mut cmd = std::process::Command::new(bin("berth-gateway"));
    cmd.arg("check")
        .args(args)
        .env_clear()
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "berth-local")
        .env("AWS_SECRET_ACCESS_KEY", "berth-local")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    if region {
        cmd.env("AWS_REGION", "us-east-1");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A CA certificate and key valid from January 1st of one year to another's, in `dir`.
fn ca(dir: &std::path::Path, name: &str, is_ca: bool, years: (i32, i32)) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("check {name}"));
    if is_ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn line<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_and_names_each_broken_setting() {
    let server = local_ecs("127.0.250.1".parse().unwrap()).await;
    let endpoint = server.endpoint_url();
    let dir = temp_dir("check");
    let (good_crt, good_key) = ca(&dir, "good", true, (2025, 2036));
    let mesh = |crt: &str, key: &str| -> Vec<String> {
        [
            "--ecs-cluster",
            "prod",
            "--mesh-listen",
            "127.0.0.1:0",
            "--mesh-ca-cert",
            crt,
            "--mesh-ca-key",
            key,
            "--mesh-auth",
            "iam",
            "--entrypoint",
            "web=127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let good = mesh(&good_crt, &good_key);
    let (code, out) = check(&endpoint, &args(&good), true);
    assert_eq!(code, 0, "{out}");
    for want in [
        "ok   AWS region: us-east-1",
        "ok   AWS credentials",
        "ok   ecs:ListClusters: allowed",
        "ok   cluster prod: exists",
        "ok   ecs:DescribeServices (prod): allowed",
        "ok   ec2:DescribeInstances: allowed",
        "ok   STS (IAM identity)",
        "ok   mesh CA: CN=check good, its key matches",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }

    // The task role lacks ecs:DescribeServices, and ec2:DescribeInstances.
    server.set_faults(berth_local::Faults {
        deny: vec!["DescribeServices".into(), "ec2:DescribeInstances".into()],
        ..Default::default()
    });
    let (code, out) = check(&endpoint, &args(&good), true);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "FAIL ecs:DescribeServices (prod)").unwrap_or_else(|| panic!("{out}"));
    assert!(l.contains("refused"), "{out}");
    assert!(
        out.contains("fix: allow ecs:DescribeServices (prod) in the gateway's task role"),
        "{out}"
    );
    assert!(line(&out, "FAIL ec2:DescribeInstances").is_some(), "{out}");
    assert!(
        line(&out, "ok   ecs:DescribeTasks (prod)").is_some(),
        "the others still pass:\n{out}"
    );
    // STS down: the IAM identity line fails; throttling: inconclusive, never "allowed".
    server.set_faults(berth_local::Faults {
        sts_outage: true,
        throttle_rate: 1.0,
        ..Default::default()
    });
    let (code, out) = check(&endpoint, &args(&good), true);
    assert!(code == 1 && line(&out, "FAIL STS (IAM identity)").is_some(), "{out}");
    assert!(
        line(&out, "FAIL ecs:DescribeServices (prod): inconclusive").is_some(),
        "{out}"
    );
    assert!(!out.contains("ok   ecs:DescribeTasks"), "{out}");
    server.set_faults(berth_local::Faults::default());

    // A cluster that does not exist.
    let mut nope = good.clone();
    nope[1] = "nope".into();
    let (code, out) = check(&endpoint, &args(&nope), true);
    assert!(
        code == 1 && line(&out, "FAIL cluster nope: no such cluster").is_some(),
        "{out}"
    );

    // The CA's key is another one; the CA expired; a leaf given as the CA.
    let (_, other_key) = ca(&dir, "other", true, (2025, 2036));
    let (code, out) = check(&endpoint, &args(&mesh(&good_crt, &other_key)), true);
    assert!(
        code == 1 && out.contains("FAIL mesh CA") && out.contains("does not belong"),
        "{out}"
    );
    let (old_crt, old_key) = ca(&dir, "old", true, (2020, 2022));
    let (code, out) = check(&endpoint, &args(&mesh(&old_crt, &old_key)), true);
    assert!(code == 1 && out.contains("FAIL mesh CA: CN=check old expired"), "{out}");
    let (leaf_crt, leaf_key) = ca(&dir, "leaf", false, (2025, 2036));
    let (code, out) = check(&endpoint, &args(&mesh(&leaf_crt, &leaf_key)), true);
    assert!(code != 0 && out.contains("not a CA"), "{out}");

    // Token mode without a token; no region at all.
    let mut token = good.clone();
    token[9] = "token".into();
    let (code, out) = check(&endpoint, &args(&token), true);
    assert!(code != 0 && out.to_ascii_lowercase().contains("token"), "{out}");
    let (code, out) = check(&endpoint, &args(&good), false);
    assert!(code != 0 && out.contains("region"), "{out}");
}
