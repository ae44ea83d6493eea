//! The sidecar's identity: a key made here, a CSR sent to the gateway's control API
//! (the first time with an IAM proof signed by the task role, [`crate::iam`], and/or the
//! bootstrap token; over mTLS with the current certificate after), renewal at 70 % of the lifetime with jitter, retries with back-off.
//!
//! A certificate that has expired (or is about to: the gateway was unreachable for its
//! whole life, the host was suspended, the clock jumped) cannot open the mTLS renewal
//! path, so the sidecar asks again as it did the first time, with the token; the gateway
//! checks the task exactly as for a first certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_common::control::{CERTIFICATES_PATH, CertificateRequest, CertificateResponse};
use berth_common::identity::SpiffeId;
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, client_config};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("cannot reach the gateway's control API at {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("the gateway refused the certificate request ({code}): {error}")]
    Refused { code: String, error: String },
    #[error("bad answer from the gateway: {0}")]
    Protocol(String),
    #[error("key or CSR: {0}")]
    Key(String),
}

/// What the gateway granted.
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    pub identity: SpiffeId,
    pub not_after: SystemTime,
    pub default_deny: bool,
    /// The task definition's `proxyConfiguration`, as the gateway read it.
    pub proxy: Option<berth_common::proxy_config::ProxyConfig>,
}

pub(crate) struct Certifier {
    /// The gateway replicas: any of them issues and renews (they share the CA).
    pub replicas: Arc<crate::control::ControlPool>,
    pub anchors: TrustAnchors,
    pub token: Option<String>,
    /// Signs IAM proofs when the task has role credentials.
    pub iam: Option<crate::iam::IamSigner>,
    pub task_arn: String,
    pub bind: Option<std::net::IpAddr>,
    pub slot: Arc<CertSlot>,
    pub trust_domain_hint: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When the certificate in the slot expires (none yet: `None`).
    pub current: std::sync::Mutex<Option<SystemTime>>,
}

/// A certificate with less life left than this is not used to renew: the renewal could
/// not finish before it expires.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
/// One certificate request, connection to answer, at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read from the control API.
const MAX_ANSWER: usize = 256 * 1024;

impl Certifier {
    /// Request (or renew) a certificate from the first replica that can be reached, and
    /// install it in the slot.
    pub(crate) async fn certify(&self) -> Result<Granted, IdentityError> {
        let mut last = IdentityError::Protocol("no gateway replica is known".into());
        for gateway in self.replicas.in_order() {
            match self.certify_at(gateway).await {
                Err(e @ IdentityError::Connect(..)) => {
                    tracing::debug!(replica = %gateway, error = %e, "replica unavailable; trying the next");
                    last = e;
                }
                other => {
                    if let Ok(g) = &other {
                        self.metrics.certificate(g.not_after);
                    }
                    return other;
                }
            }
        }
        Err(last)
    }

    async fn certify_at(&self, gateway: SocketAddr) -> Result<Granted, IdentityError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.request_at(gateway))
            .await
            .map_err(|_| IdentityError::Protocol(format!("no answer from {gateway} within {REQUEST_TIMEOUT:?}")))?
    }

    /// Whether the slot's certificate can still open the mTLS renewal path.
    fn can_renew(&self) -> bool {
        let current = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.is_some_and(|not_after| not_after > SystemTime::now() + RENEW_MARGIN)
    }

    async fn request_at(&self, gateway: SocketAddr) -> Result<Granted, IdentityError> {
        let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let renewing = self.slot.get().is_some() && self.can_renew();
        // The gateway's identity is checked, whatever the trust domain's name is.
        let policy = match &self.trust_domain_hint {
            Some(td) => PeerPolicy::Exact(SpiffeId::gateway(td).map_err(|e| IdentityError::Protocol(e.to_string()))?),
            None => PeerPolicy::AnyGateway,
        };
        let cfg = client_config(renewing.then(|| self.slot.clone()), self.anchors.clone(), policy)
            .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        let tls = crate::control::dial(gateway, self.bind, Arc::new(cfg))
            .await
            .map_err(|e| IdentityError::Connect(gateway, e.to_string()))?;
        // An IAM proof is signed for the trust domain of the gateway just verified.
        let iam = match (&self.iam, renewing) {
            (Some(signer), false) => {
                let trust_domain = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| berth_common::identity::spiffe_id_of(c).ok())
                    .map(|id| id.trust_domain().to_string())
                    .ok_or_else(|| IdentityError::Protocol("the gateway's certificate has no SPIFFE ID".into()))?;
                match signer.proof(&csr, &trust_domain).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.metrics.iam_failed();
                        tracing::warn!(error = %e, "cannot sign an IAM proof; asking without one");
                        None
                    }
                }
            }
            _ => None,
        };
        let body = serde_json::to_vec(&CertificateRequest {
            task_arn: self.task_arn.clone(),
            csr_pem: csr,
            token: if renewing { None } else { self.token.clone() },
            iam,
        })
        .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method("POST")
            .uri(CERTIFICATES_PATH)
            .header("host", "gateway.berth")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        let status = resp.status();
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        if !status.is_success() {
            return Err(match crate::control::refusal(status, &bytes) {
                crate::control::ControlError::Refused { code, error, .. } => IdentityError::Refused { code, error },
                other => IdentityError::Protocol(other.to_string()),
            });
        }
        let granted: CertificateResponse =
            serde_json::from_slice(&bytes).map_err(|e| IdentityError::Protocol(e.to_string()))?;
        let ck = berth_common::tls::certified_key_from_pem(
            granted.certificate_chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            "issued certificate",
        )
        .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        let not_after = UNIX_EPOCH
            .checked_add(Duration::from_secs(granted.not_after))
            .ok_or_else(|| IdentityError::Protocol(format!("not_after {} is out of range", granted.not_after)))?;
        let identity = SpiffeId::parse(&granted.identity).map_err(|e| IdentityError::Protocol(e.to_string()))?;
        self.adopt_trust_bundle(&granted);
        self.slot.set(ck);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(not_after);
        Ok(Granted {
            identity,
            not_after,
            default_deny: granted.default_deny,
            proxy: granted.proxy,
        })
    }

    /// Trust the roots the gateway sent with a certificate (one, or two during a CA
    /// rotation) from now on, when they verify that certificate; otherwise keep the
    /// current roots. The gateway is the one this sidecar just verified with them.
    fn adopt_trust_bundle(&self, granted: &CertificateResponse) {
        let parse = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .take(berth_common::mtls::MAX_ROOTS + 1)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
        let checked = parse(&granted.trust_anchor_pem).and_then(|roots| {
            let chain = parse(&granted.certificate_chain_pem)?;
            let proposed = TrustAnchors::from_certs(&roots).map_err(|e| e.to_string())?;
            proposed
                .verify_chain(&chain)
                .map_err(|e| format!("the new certificate does not chain to them: {e}"))?;
            Ok(roots)
        });
        match checked.and_then(|roots| self.anchors.replace(&roots).map_err(|e| e.to_string())) {
            Ok(true) => {
                self.metrics.trust_roots(&self.anchors);
                tracing::info!(
                    roots = self.anchors.certs().len(),
                    "trust bundle updated from the gateway (CA rotation)"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "the gateway's trust bundle is not usable; keeping the current roots"),
        }
    }

    /// Keep the certificate fresh: renew at ~70 % of its remaining life, retry with back-off.
    pub(crate) async fn keep_renewed(self: Arc<Self>, mut granted: Granted) {
        loop {
            let left = granted.not_after.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(
                left.mul_f64(0.7 - 0.05 * fastrand::f64())
                    .max(Duration::from_millis(200)),
            )
            .await;
            let mut backoff = Duration::from_millis(200);
            loop {
                match self.certify().await {
                    Ok(g) => {
                        tracing::info!(identity = %g.identity, "certificate renewed");
                        granted = g;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, ?backoff, "renewal failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }
}
