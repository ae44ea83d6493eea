//! The inbound listener (`BERTH_INBOUND`): mTLS required; the caller's SPIFFE identity
//! is verified, `berth.mesh.allow` applied (403 with the reason otherwise), any
//! `x-berth-client-id` the request carried is replaced by the verified identity, and the
//! request goes to the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use berth_common::authz::{Decision, authorize};
use berth_common::http::{CLIENT_ID_HEADER, UNREACHABLE_HEADER, is_idempotent, remove_hop_by_hop};
use berth_common::identity::{SpiffeId, spiffe_id_of};
use berth_common::mtls::{CertSlot, PeerPolicy, TrustAnchors, server_config};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Who the task is and whom it accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    pub me: SpiffeId,
    pub allow: Option<Vec<String>>,
    pub default_deny: bool,
}

pub struct Inbound {
    pub app: SocketAddr,
    pub policy: Policy,
    pub metrics: Arc<crate::metrics::Metrics>,
    client: Client<HttpConnector, Body>,
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Inbound {
    pub fn new(app: SocketAddr, policy: Policy, metrics: Arc<crate::metrics::Metrics>) -> Inbound {
        Inbound {
            app,
            policy,
            metrics,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Accept mTLS connections until the task is dropped.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        slot: Arc<CertSlot>,
        anchors: TrustAnchors,
    ) -> Result<(), rustls::Error> {
        let cfg = server_config(
            slot,
            anchors,
            PeerPolicy::TrustDomain(self.policy.me.trust_domain().into()),
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let (me, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "inbound: handshake refused");
                        return;
                    }
                };
                let Some(caller) = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| spiffe_id_of(c).ok())
                else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let (me, caller) = (me.clone(), caller.clone());
                    async move {
                        let resp = me.handle(req, &caller).await;
                        me.metrics.inbound(resp.status().as_u16());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>, caller: &SpiffeId) -> Response<Body> {
        if let Decision::Deny(why) = authorize(
            caller,
            &self.policy.me,
            self.policy.allow.as_deref(),
            self.policy.default_deny,
        ) {
            tracing::warn!(caller = %caller, target = %self.policy.me, reason = %why, "call denied");
            self.metrics.denied();
            return text(StatusCode::FORBIDDEN, format!("forbidden: {why}\n"));
        }
        let (mut parts, body) = req.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(CLIENT_ID_HEADER);
        if let Ok(v) = HeaderValue::from_str(&caller.to_string()) {
            parts.headers.insert(CLIENT_ID_HEADER, v);
        }
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let Ok(uri) = format!("http://{}{pq}", self.app).parse::<http::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "bad request target\n".into());
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        // An idempotent request without a body may go again once on a fresh connection
        // when a kept-alive one to the app broke (an app closing its connections while it
        // stops); if the app then refuses, the caller is told to go elsewhere.
        let again = body.is_end_stream() && is_idempotent(&parts.method);
        let spare = again.then(|| parts.clone());
        let up = Request::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
        let mut result = self.client.request(up).await;
        if let (Some(parts), Err(e)) = (spare, &result)
            && !e.is_connect()
        {
            tracing::info!(app = %self.app, error = %e, "the app's connection broke; trying once more");
            let retry = Request::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed());
            result = self.client.request(retry).await;
        }
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed())
            }
            Err(e) if e.is_connect() => {
                tracing::warn!(app = %self.app, error = %e, "the app is not listening");
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the app at {} is not listening\n", self.app),
                );
                r.headers_mut()
                    .insert(UNREACHABLE_HEADER, HeaderValue::from_static("app"));
                r
            }
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "the app did not answer");
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("the app at {} did not answer\n", self.app),
                )
            }
        }
    }
}
