//! The control API (`--mesh-listen`, TLS 1.3, HTTP/1.1 or HTTP/2 by ALPN): certificate
//! issuance and renewal for sidecars.
//!
//! A first certificate needs the bootstrap token (compared in constant time), a task the
//! ECS reconciler knows (described at once if it has not seen it yet) that is PENDING or
//! RUNNING, and a request coming from that task's own address. Renewal comes over mTLS
//! with the current certificate instead of the token. The identity is always derived
//! from the task's service, never from the CSR. Every refusal says which check failed;
//! every issuance is logged with identity, task and serial.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use berth_common::control::{CERTIFICATES_PATH, CertificateRequest, CertificateResponse, ErrorResponse};
use berth_common::identity::{SpiffeId, spiffe_id_of};
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, server_config_optional_client};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::ca::MeshCa;
use crate::discovery::ecs::TaskLookup;
use crate::discovery::ecs::client::RateLimiter;

pub struct ControlApi {
    pub ca: Arc<MeshCa>,
    pub token: Option<String>,
    pub lookup: Option<TaskLookup>,
    pub lifetime: Duration,
    pub limiter: RateLimiter,
    pub default_deny: bool,
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reply(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn refuse(status: StatusCode, code: &str, error: String) -> Response<Full<Bytes>> {
    tracing::warn!(code, %error, "control API refused a request");
    reply(
        status,
        &ErrorResponse {
            code: code.into(),
            error,
        },
    )
}

impl ControlApi {
    /// Accept TLS connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, slot: Arc<CertSlot>) -> Result<(), rustls::Error> {
        let anchors = TrustAnchors::from_certs(std::slice::from_ref(self.ca.anchor()))?;
        let cfg = server_config_optional_client(slot, anchors, PeerPolicy::TrustDomain(self.ca.trust_domain().into()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let (api, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "control API: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let client_id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| spiffe_id_of(c).ok());
                let svc = hyper::service::service_fn(move |req| {
                    let (api, client_id) = (api.clone(), client_id.clone());
                    async move { Ok::<_, Infallible>(api.handle(req, peer, client_id).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    }

    pub async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
        client_id: Option<SpiffeId>,
    ) -> Response<Full<Bytes>> {
        if req.uri().path() != CERTIFICATES_PATH {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such path {}", req.uri().path()),
            );
        }
        if req.method() != Method::POST {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "method", "use POST".into());
        }
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("unreadable or too large body: {e}"),
                );
            }
        };
        let request: CertificateRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("not a certificate request: {e}"),
                );
            }
        };
        self.limiter.acquire().await;
        let Some(lookup) = &self.lookup else {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_discovery",
                "issuance checks tasks through ECS discovery: start the gateway with --ecs-cluster".into(),
            );
        };
        // The first certificate needs the token; renewal needs the current certificate.
        if client_id.is_none() {
            let ok = match (&self.token, &request.token) {
                (Some(want), Some(got)) => ct_eq(want.as_bytes(), got.as_bytes()),
                (None, _) => true,
                (Some(_), None) => false,
            };
            if !ok {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "bad_token",
                    "the bootstrap token is missing or wrong".into(),
                );
            }
        }
        let task = match lookup.find(&request.task_arn).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "unknown_task",
                    format!("task {} does not exist in a discovered cluster", request.task_arn),
                );
            }
            Err(e) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "discovery_error",
                    format!("cannot check the task: {e}"),
                );
            }
        };
        let alive = matches!(
            task.last_status.as_str(),
            "PROVISIONING" | "PENDING" | "ACTIVATING" | "RUNNING"
        ) && task.desired_status == "RUNNING";
        if !alive {
            return refuse(
                StatusCode::FORBIDDEN,
                "task_not_running",
                format!(
                    "task {} is {} (desired {})",
                    task.task_arn, task.last_status, task.desired_status
                ),
            );
        }
        let source = peer.ip().to_canonical().to_string();
        if task.address.as_deref() != Some(source.as_str()) {
            return refuse(
                StatusCode::FORBIDDEN,
                "wrong_source",
                format!(
                    "request from {source}, but task {} is at {}",
                    task.task_arn,
                    task.address.as_deref().unwrap_or("an unknown address")
                ),
            );
        }
        let identity = match SpiffeId::for_service(self.ca.trust_domain(), &task.cluster, &task.service) {
            Ok(i) => i,
            Err(e) => return refuse(StatusCode::FORBIDDEN, "bad_identity", e.to_string()),
        };
        if let Some(current) = &client_id
            && *current != identity
        {
            return refuse(
                StatusCode::FORBIDDEN,
                "identity_mismatch",
                format!("renewal by {current} for a task of {identity}"),
            );
        }
        let issued = match self.ca.issue(&request.csr_pem, &identity, self.lifetime) {
            Ok(i) => i,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_csr", e.to_string()),
        };
        tracing::info!(identity = %identity, task = %task.task_arn, serial = %issued.serial,
            renewal = client_id.is_some(), "certificate issued");
        reply(
            StatusCode::OK,
            &CertificateResponse {
                identity: identity.to_string(),
                certificate_chain_pem: issued.chain_pem,
                trust_anchor_pem: self.ca.anchor_pem(),
                serial: issued.serial,
                not_after: issued
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                default_deny: self.default_deny,
            },
        )
    }
}

/// Keep the gateway's own certificate fresh: reissue at 70 % of its lifetime, with jitter.
pub async fn rotate_own(ca: Arc<MeshCa>, slot: Arc<CertSlot>, lifetime: Duration) {
    let Ok(me) = SpiffeId::gateway(ca.trust_domain()) else {
        return;
    };
    loop {
        match ca
            .issue_local(&me, lifetime)
            .and_then(|(issued, key)| MeshCa::certified_key(&issued, &key))
        {
            Ok(k) => slot.set(k),
            Err(e) => tracing::error!(error = %e, "cannot issue the gateway's own certificate"),
        }
        let wait = lifetime.mul_f64(0.7 - 0.05 * fastrand::f64());
        tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
    }
}
