//! Service-to-service authorization by identity: `berth.mesh.allow` on the target
//! names the callers it accepts, as full SPIFFE IDs or as service names (matched
//! against the caller's `/ecs/<cluster>/<service>`). No label: any identity of the
//! trust domain may call, unless the mesh runs with `--mesh-default-deny`.
//! The gateway (`spiffe://<td>/gateway`) is a caller like any other.

use crate::identity::SpiffeId;

/// The outcome, with the sentence a log line and a 403 body carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// May `caller` call `target` (whose `berth.mesh.allow` is `allow`)?
pub fn authorize(caller: &SpiffeId, target: &SpiffeId, allow: Option<&[String]>, default_deny: bool) -> Decision {
    if caller.trust_domain() != target.trust_domain() {
        return Decision::Deny(format!(
            "{caller} is outside trust domain {}; {target} refuses it",
            target.trust_domain()
        ));
    }
    let Some(allow) = allow else {
        return if default_deny {
            Decision::Deny(format!(
                "{target} has no berth.mesh.allow and the mesh denies by default; {caller} is refused"
            ))
        } else {
            Decision::Allow
        };
    };
    let caller_service = caller.ecs_service().map(|(_, s)| s);
    let allowed = allow.iter().any(|entry| {
        if entry.starts_with("spiffe://") {
            SpiffeId::parse(entry).is_ok_and(|id| id == *caller)
        } else if entry == "gateway" {
            caller.is_gateway()
        } else {
            caller_service == Some(entry.as_str())
        }
    });
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(format!(
            "{caller} is not in berth.mesh.allow of {target} ({})",
            allow.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn allow_lists_by_service_name_or_identity() {
        let target = id("spiffe://berth.local/ecs/prod/orders");
        let billing = id("spiffe://berth.local/ecs/prod/billing");
        let web = id("spiffe://berth.local/ecs/prod/web");
        let gw = id("spiffe://berth.local/gateway");
        let allow = vec!["billing".to_string(), "spiffe://berth.local/gateway".to_string()];
        assert_eq!(authorize(&billing, &target, Some(&allow), false), Decision::Allow);
        assert_eq!(authorize(&gw, &target, Some(&allow), false), Decision::Allow);
        match authorize(&web, &target, Some(&allow), false) {
            Decision::Deny(why) => {
                assert!(why.contains("spiffe://berth.local/ecs/prod/web"), "{why}");
                assert!(why.contains("spiffe://berth.local/ecs/prod/orders"), "{why}");
            }
            Decision::Allow => panic!("web must be denied"),
        }
        // `gateway` as a short name.
        assert_eq!(
            authorize(&gw, &target, Some(&["gateway".to_string()]), false),
            Decision::Allow
        );
    }

    #[test]
    fn defaults_and_trust_domains() {
        let target = id("spiffe://berth.local/ecs/prod/orders");
        let caller = id("spiffe://berth.local/ecs/prod/web");
        assert_eq!(authorize(&caller, &target, None, false), Decision::Allow);
        assert!(matches!(authorize(&caller, &target, None, true), Decision::Deny(_)));
        let foreign = id("spiffe://other.org/ecs/prod/web");
        assert!(matches!(authorize(&foreign, &target, None, false), Decision::Deny(_)));
        // An empty allow list denies everyone.
        assert!(matches!(
            authorize(&caller, &target, Some(&[]), false),
            Decision::Deny(_)
        ));
    }
}
