//! The gateway module's task role grants exactly the AWS operations discovery calls: no
//! more (least privilege), no less (a missing one fails only in production).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// `list_tasks` -> `ListTasks`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The operations the code calls: ECS through the SDK client (`c.<operation>()` in
/// `client.rs`, the one place that holds it), EC2 by its hand-signed `OP`.
fn called() -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    let client = read("src/discovery/ecs/client.rs");
    for (i, _) in client.match_indices("c.") {
        let rest = &client[i + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with("()") {
            ops.insert(format!("ecs:{}", pascal(&name)));
        }
    }
    let ec2 = read("src/discovery/ecs/ec2.rs");
    let op = ec2
        .lines()
        .find_map(|l| l.trim().strip_prefix("const OP: &str = \""))
        .and_then(|l| l.strip_suffix("\";"))
        .unwrap();
    ops.insert(format!("ec2:{op}"));
    // Nothing else in the gateway talks to AWS.
    for file in ["src/lib.rs", "src/mesh/control_api.rs", "src/discovery/ecs/mod.rs"] {
        assert!(!read(file).contains("aws_sdk_ec2"), "{file}");
    }
    ops
}

/// The actions of the `discovery` policy document in the module.
fn granted() -> BTreeSet<String> {
    let iam = read("../terraform/modules/gateway/iam.tf");
    let start = iam.find("data \"aws_iam_policy_document\" \"discovery\"").unwrap();
    let end = iam[start..].find("\nresource ").map(|e| start + e).unwrap();
    let doc = &iam[start..end];
    let mut out = BTreeSet::new();
    for line in doc.lines().filter(|l| l.contains("actions")) {
        for part in line.split('"').skip(1).step_by(2) {
            out.insert(part.to_string());
        }
    }
    out
}

#[test]
fn the_task_role_grants_exactly_what_discovery_calls() {
    let called = called();
    assert!(
        called.contains("ecs:ListTasks") && called.contains("ecs:DescribeTasks"),
        "{called:?}"
    );
    assert_eq!(granted(), called, "terraform/modules/gateway/iam.tf vs the code");
}

#[test]
fn the_operation_names_are_derived_as_aws_spells_them() {
    assert_eq!(pascal("describe_container_instances"), "DescribeContainerInstances");
}

/// The DynamoDB operations the shared ACME store calls (`self.client.<operation>()` in
/// `table.rs`, the one place that holds the client).
fn store_calls() -> BTreeSet<String> {
    // Without whitespace: rustfmt breaks the chains across lines.
    let table: String = read("src/acme/table.rs").split_whitespace().collect();
    let mut ops = BTreeSet::new();
    for (i, _) in table.match_indices("self.client.") {
        let rest = &table[i + "self.client.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with("()") {
            ops.insert(format!("dynamodb:{}", pascal(&name)));
        }
    }
    ops
}

#[test]
fn the_acme_table_policy_grants_exactly_what_the_shared_store_calls() {
    let calls = store_calls();
    assert!(
        calls.contains("dynamodb:Query") && calls.contains("dynamodb:PutItem"),
        "{calls:?}"
    );
    let tf = read("../terraform/modules/gateway/acme.tf");
    let granted: BTreeSet<String> = tf
        .lines()
        .filter(|l| l.trim_start().starts_with("actions"))
        .flat_map(|l| l.split('"').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>())
        .filter(|a| a.starts_with("dynamodb:"))
        .collect();
    assert_eq!(granted, calls, "terraform/modules/gateway/acme.tf vs the code");
}

/// DNS-01's Route 53 calls (`route53.rs` makes them by path) are the ones granted.
#[test]
fn the_dns01_policy_grants_exactly_the_route53_calls() {
    // Without whitespace: rustfmt breaks the calls across lines.
    let code: String = read("src/acme/route53.rs").split_whitespace().collect();
    let mut calls = BTreeSet::new();
    for (fragment, action) in [
        ("/hostedzonesbyname?", "route53:ListHostedZonesByName"),
        ("/rrset/", "route53:ChangeResourceRecordSets"),
        ("/change/{change}", "route53:GetChange"),
    ] {
        if code.contains(fragment) {
            calls.insert(action.to_string());
        }
    }
    // Nothing else: every call goes through `self.call(` with one of those paths.
    assert_eq!(
        code.matches(".call(\"").count(),
        3,
        "a new Route 53 call needs its row here"
    );
    let tf = read("../terraform/modules/gateway/acme.tf");
    let granted: BTreeSet<String> = tf
        .lines()
        .filter(|l| l.trim_start().starts_with("actions"))
        .flat_map(|l| l.split('"').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>())
        .filter(|a| a.starts_with("route53:"))
        .collect();
    assert_eq!(granted, calls, "terraform/modules/gateway/acme.tf vs route53.rs");
}
