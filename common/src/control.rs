//! The control-API messages between sidecars and the gateway. One module owns them so
//! both sides agree on every field: certificates, registration under a lease,
//! deregistration, and the mesh view each sidecar follows for the services it calls.

use serde::{Deserialize, Serialize};

/// The control API's protocol version. Both sides send it in [`VERSION_HEADER`] on every
/// request and answer. The rule that lets a gateway and sidecars one version apart work
/// together (docs/mesh.md, "Upgrades"): a field is only ever added, with a default, and
/// unknown fields are ignored; a message changes meaning only under a new path. The
/// golden messages in `common/tests/golden/control/` are today's, replayed by the tests.
pub const PROTOCOL_VERSION: u32 = 1;
/// Carries [`PROTOCOL_VERSION`].
pub const VERSION_HEADER: &str = "berth-control-version";

/// Path of `berth-sidecar check`'s question (`POST` a [`CheckRequest`], no certificate
/// needed): how the gateway sees this connection and this task.
pub const CHECK_PATH: &str = "/v1/check";

/// A time as [`CheckReport::time_ms`] carries it: Unix milliseconds (0 before 1970).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub task_arn: String,
    /// The bootstrap token, to be told whether it is the gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The gateway's answer to a check. It says whether the connection comes from the task's
/// address, never what that address is, and gives the task's identity only to a caller
/// at that address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The gateway's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The gateway's version.
    pub gateway_version: String,
    /// The source address the connection arrived from, as the gateway sees it.
    pub source: String,
    /// `found`, `unknown` (in no discovered cluster), `not_checked` (discovery is off,
    /// cannot answer, or this source asked too often) with the reason in `detail`.
    pub task: String,
    /// Whether the connection comes from the task's address (when the task was found and
    /// its address is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_is_task: Option<bool>,
    /// The task's desired status, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_status: Option<String>,
    /// The identity the task gets, or why it gets none (only to the task's own address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How a first certificate may be proved here: `token`, `iam`, or `address` (the
    /// task's address alone, with a development CA).
    pub accepts: Vec<String>,
    /// Whether the token sent is the gateway's (when one was sent and tokens are taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ok: Option<bool>,
    /// The gateway's clock when it answered, Unix milliseconds.
    pub time_ms: u64,
}

/// Path of certificate issuance and renewal (`POST`).
pub const CERTIFICATES_PATH: &str = "/v1/certificates";

/// A sidecar asks for a certificate: its key stays with it, only the CSR travels.
/// The bootstrap token is needed for the first certificate; a renewal over mTLS with
/// the current certificate needs none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRequest {
    pub task_arn: String,
    /// PKCS#10 CSR, PEM. Only its public key is used.
    pub csr_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Instead of the token: a GetCallerIdentity request signed with the task role's
    /// credentials ([`crate::iam`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<IamProof>,
}

/// The headers of a signed `sts:GetCallerIdentity` request (lower-case names). The
/// gateway sends its own request to its own STS endpoint with these headers, never the
/// client's URL or body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamProof {
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The identity the gateway derived from the task (never the one the CSR asked for).
    pub identity: String,
    /// Leaf then intermediates, PEM.
    pub certificate_chain_pem: String,
    /// The mesh's trust anchor, PEM.
    pub trust_anchor_pem: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: u64,
    /// The mesh denies callers of services without `berth.mesh.allow` (`--mesh-default-deny`).
    #[serde(default)]
    pub default_deny: bool,
    /// The task definition's `proxyConfiguration` (type `APPMESH`), when it names this
    /// sidecar's container: the sidecar then runs in transparent mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<crate::proxy_config::ProxyConfig>,
}

/// Every refusal, with a stable code and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: String,
    pub error: String,
}

/// Registration, heartbeat and health push (`POST`, the same message: an idempotent
/// upsert under a lease). Needs the task's mesh certificate.
pub const REGISTRATIONS_PATH: &str = "/v1/registrations";
/// Deregistration (`POST` a [`Deregistration`]): the task is stopping; no new requests.
pub const DEREGISTER_PATH: &str = "/v1/deregister";
/// The mesh view (`GET ?services=a,b&version=V`): answers at once when the view of those
/// services differs from version `V`, else waits for a change (long poll) and answers
/// 204 when none came within the wait.
pub const MESH_PATH: &str = "/v1/mesh";

/// What a sidecar reports about its task (and `berth-sidecar inspect` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub task_arn: String,
    /// The cluster's name (the last segment of its ARN).
    pub cluster: String,
    pub service: String,
    pub family: String,
    pub revision: String,
    pub launch_type: Option<String>,
    pub network_mode: Option<String>,
    /// The IP the gateway should dial, or null when unknown (bridge mode without
    /// instance metadata: the gateway fills it in from the ECS API).
    pub address: Option<String>,
    /// The app port as the gateway dials it (the host port in bridge mode).
    pub port: Option<u16>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub containers: Vec<ContainerStatus>,
    /// Whether the app may get traffic: its container RUNNING and not failing its
    /// health check, and the sidecar's own probe (`BERTH_HEALTH_PATH`) passing.
    #[serde(default)]
    pub healthy: bool,
    /// The sidecar's inbound mTLS port as dialled (the host port in bridge mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_port: Option<u16>,
    /// The sidecar's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub known_status: String,
    pub health: Option<String>,
}

/// The gateway's answer to a registration or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationAck {
    pub identity: String,
    /// Without a heartbeat for this long, the registration is lost and the task leaves
    /// the rotation.
    pub lease_ms: u64,
    /// How often to heartbeat.
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deregistration {
    pub task_arn: String,
}

/// The part of the mesh a sidecar asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    /// Changes whenever anything in this answer changes; sent back as `version`.
    pub version: u64,
    pub services: Vec<MeshService>,
    /// Names asked for that the mesh does not know.
    pub unknown: Vec<String>,
    /// Every gateway replica's control API (`IP:PORT`): a sidecar keeps a connection to
    /// each, so any of them can go without the mesh noticing.
    #[serde(default)]
    pub gateways: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshService {
    /// The east-west name (`berth.mesh.name`, else the ECS service).
    pub name: String,
    /// The identity every endpoint must present.
    pub identity: String,
    /// `IP:PORT` of each routable endpoint's inbound listener.
    pub endpoints: Vec<String>,
    /// How callers route to it, from its own `berth.mesh.*` labels (absent: the
    /// defaults; a sidecar that predates a field ignores it).
    #[serde(default, skip_serializing_if = "MeshPolicy::is_default")]
    pub policy: MeshPolicy,
}

/// A mesh service's routing policy, set by the service's owners on their own tasks
/// (`berth.mesh.weighted.*`, `berth.mesh.retry.*`, `berth.mesh.timeout`) and applied in
/// every caller's sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshPolicy {
    /// Calls are shared by weight between these mesh services (the service itself among
    /// them by its own name); empty: its own endpoints take every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<MeshSplit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<MeshRetry>,
    /// How long each attempt may wait for the response head (replaces the caller's
    /// `BERTH_OUTBOUND_RESPONSE_TIMEOUT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Where calls go while the service (and its split) has no healthy endpoint: another
    /// mesh service of its cluster that consents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
    /// A sticky cookie for calls to the service's own endpoints: a caller whose HTTP
    /// client keeps cookies goes back to the task that answered it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::config::StickyCookie>,
}

impl MeshPolicy {
    pub fn is_default(&self) -> bool {
        *self == MeshPolicy::default()
    }

    /// The other mesh services the split names (not the service itself).
    pub fn split_targets<'a>(&'a self, own: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.split.iter().map(|s| s.name.as_str()).filter(move |n| *n != own)
    }

    /// Every other mesh service calls may be sent to: the split's and the failover.
    pub fn routed_targets<'a>(&'a self, own: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.split_targets(own)
            .chain(self.failover.as_deref())
            .filter(move |n| *n != own)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshSplit {
    pub name: String,
    pub weight: u32,
}

/// The retry middleware's options ([`crate::middleware::limit::Retry`]), as the control
/// API carries them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshRetry {
    pub attempts: u32,
    pub initial_interval_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_methods: Vec<String>,
    /// Answers with these statuses go again (bodyless idempotent calls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<(u16, u16)>,
}

impl MeshRetry {
    pub fn from_retry(r: &crate::middleware::limit::Retry) -> MeshRetry {
        MeshRetry {
            attempts: r.attempts,
            initial_interval_ms: u64::try_from(r.initial_interval.as_millis()).unwrap_or(u64::MAX),
            grpc_codes: r.grpc_codes.clone(),
            grpc_methods: r.grpc_methods.clone(),
            statuses: r.statuses.clone(),
        }
    }

    pub fn to_retry(&self) -> crate::middleware::limit::Retry {
        crate::middleware::limit::Retry {
            attempts: self.attempts.clamp(1, 100),
            initial_interval: std::time::Duration::from_millis(self.initial_interval_ms),
            grpc_codes: self.grpc_codes.clone(),
            grpc_methods: self.grpc_methods.clone(),
            statuses: self.statuses.iter().take(256).copied().collect(),
            ..Default::default()
        }
    }
}

impl MeshView {
    /// The version of a set of services: a hash of their content, so that equal views
    /// have equal versions on every gateway replica.
    pub fn version_of(services: &[MeshService], unknown: &[String], gateways: &[String]) -> u64 {
        // FNV-1a: stable across processes and builds (std's hasher is not).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |s: &str| {
            for b in s.bytes().chain([0xff]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for s in services {
            feed(&s.name);
            feed(&s.identity);
            for e in &s.endpoints {
                feed(e);
            }
            if !s.policy.is_default() {
                feed("%");
                feed(&serde_json::to_string(&s.policy).unwrap_or_default());
            }
        }
        for u in unknown {
            feed("?");
            feed(u);
        }
        for g in gateways {
            feed("@");
            feed(g);
        }
        h
    }
}
