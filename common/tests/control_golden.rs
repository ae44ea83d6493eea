//! Golden control-API messages (`tests/golden/control/v1/`), as the version-1 gateway and
//! sidecar write them, replayed against this code: a gateway and sidecars one version
//! apart must understand each other (docs/mesh.md, "Upgrades"). Each message parses; what
//! it said survives being read and written again (a field is never renamed, retyped or
//! dropped); the same message with fields this code does not know parses to the same
//! value (a newer peer's additions are ignored); the oldest shapes, without the fields
//! added since, still parse.
#![allow(clippy::unwrap_used)]

use berth_common::control::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn golden(name: &str) -> Value {
    let path = format!("{}/tests/golden/control/v1/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every value in `old` is in `new` (a `null` may be left out).
fn contained(old: &Value, new: &Value, at: &str) -> Result<(), String> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, v) in o {
                match n.get(k) {
                    Some(nv) => contained(v, nv, &format!("{at}.{k}"))?,
                    None if v.is_null() => {}
                    None => return Err(format!("{at}.{k} is no longer written")),
                }
            }
            Ok(())
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => o
            .iter()
            .zip(n)
            .enumerate()
            .try_for_each(|(i, (a, b))| contained(a, b, &format!("{at}[{i}]"))),
        (o, n) if o == n => Ok(()),
        (o, n) => Err(format!("{at}: {o} became {n}")),
    }
}

/// Fields that are maps of the sender's own keys (header names, docker labels), not
/// structures: a new key there is data, not a field.
const MAPS: &[&str] = &["headers", "labels"];

/// The message with an unknown field added to every structure in it.
fn with_unknown_fields(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut o: serde_json::Map<String, Value> = o
                .iter()
                .map(|(k, v)| match MAPS.contains(&k.as_str()) {
                    true => (k.clone(), v.clone()),
                    false => (k.clone(), with_unknown_fields(v)),
                })
                .collect();
            o.insert("added_in_v2".into(), json!({"nested": [1, "two", null]}));
            Value::Object(o)
        }
        Value::Array(a) => Value::Array(a.iter().map(with_unknown_fields).collect()),
        other => other.clone(),
    }
}

fn replay<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(name: &str) -> T {
    let old = golden(name);
    let parsed: T = serde_json::from_value(old.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_value(&parsed).unwrap();
    contained(&old, &again, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let newer: T = serde_json::from_value(with_unknown_fields(&old)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(newer, parsed, "{name}: unknown fields change nothing");
    parsed
}

#[test]
fn every_version_1_message_is_understood() {
    let r: CertificateRequest = replay("certificate_request");
    assert_eq!(r.token.as_deref(), Some("s3cr3t-bootstrap-token"));
    let r: CertificateRequest = replay("certificate_request_iam");
    assert_eq!(r.iam.unwrap().headers.len(), 7);
    let r: CertificateResponse = replay("certificate_response");
    assert!(r.default_deny && r.not_after == 1_796_630_400);
    let _: ErrorResponse = replay("error_response");
    let r: Registration = replay("registration");
    assert_eq!((r.inbound_port, r.healthy, r.labels.len()), (Some(15443), true, 3));
    let r: Registration = replay("registration_oldest");
    assert_eq!((r.inbound_port, r.healthy, r.sidecar_version), (None, false, None));
    let _: RegistrationAck = replay("registration_ack");
    let _: Deregistration = replay("deregistration");
    let v: MeshView = replay("mesh_view");
    let orders = &v.services[0];
    assert_eq!(orders.policy.split.len(), 2);
    assert_eq!(orders.policy.retry.as_ref().unwrap().statuses, vec![(502, 504)]);
    assert_eq!(orders.policy.failover.as_deref(), Some("orders-west"));
    assert!(v.services[1].policy.is_default());
    let v: MeshView = replay("mesh_view_oldest");
    assert!(v.gateways.is_empty() && v.services[0].policy.is_default());
    let _: CheckRequest = replay("check_request");
    let r: CheckReport = replay("check_report");
    assert_eq!((r.protocol, r.source_is_task, r.token_ok), (1, Some(true), Some(true)));
}

#[test]
fn the_version_is_one_the_goldens_were_written_with() {
    // A new PROTOCOL_VERSION comes with a new golden directory, and the old one stays.
    assert_eq!(
        PROTOCOL_VERSION, 1,
        "record tests/golden/control/v{PROTOCOL_VERSION}/ and keep v1"
    );
}

#[test]
fn a_renamed_or_retyped_field_is_caught() {
    // The replay's own check, on a change it must refuse.
    let old = golden("registration_ack");
    let mut renamed = old.clone();
    let lease = renamed.as_object_mut().unwrap().remove("lease_ms").unwrap();
    renamed["lease"] = lease;
    assert!(contained(&old, &renamed, "ack").is_err());
    let mut retyped = old.clone();
    retyped["lease_ms"] = json!("30000");
    assert!(contained(&old, &retyped, "ack").is_err());
    assert!(serde_json::from_value::<RegistrationAck>(retyped).is_err());
}
