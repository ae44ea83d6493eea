//! Step 3's one trip out of the chain: `forwardAuth`'s call to the auth server, made at
//! the middleware's place in the router's order. What the call carries and what its
//! answer means are `berth_common::middleware::forward_auth`'s; this module owns the
//! connections (a pool per `tls` setting), the time limit, the bounded read of the
//! answer and the client span, and turns a failed call into Traefik's answer: 500 when
//! the auth server cannot be reached, 401 when its answer is too large.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_common::body::{Body, empty, full};
use berth_common::middleware::Req;
use berth_common::middleware::forward_auth::{AuthTls, ForwardAuth, TIMEOUT, Verdict};
use berth_common::telemetry::{self, Span, SpanKind, Tracer};
use berth_common::upstream::{Connector, pool};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use rustls::RootCertStore;

/// How many pools for `tls` settings are kept; the oldest goes first (settings change
/// only with the configuration, so this is a bound, not a working set).
const MAX_TLS_POOLS: usize = 32;

/// The pools forwardAuth calls go through.
pub(crate) struct AuthClients {
    /// For auth servers without `tls` options: the gateway's upstream trust.
    plain: Pool,
    /// The same, for middlewares from labels: no local or link-local addresses.
    public: Pool,
    roots: RootCertStore,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// A pool per `tls` setting, by the setting's identity.
    tls: Mutex<Vec<(Arc<AuthTls>, Pool)>>,
}

type Pool = Client<Connector, Body>;

/// What one call needs besides the middleware and the request.
pub(super) struct AuthCall<'a> {
    pub clients: &'a AuthClients,
    pub tracer: &'a Tracer,
    pub span: &'a Span,
    /// The gateway's own bounds on a request body read whole (`forwardBody`).
    pub max_body: Option<u64>,
    pub read_deadline: Option<tokio::time::Instant>,
}

impl AuthClients {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration, roots: RootCertStore) -> AuthClients {
        AuthClients {
            plain: pool(idle_timeout).build(Connector::new(connect_timeout, roots.clone())),
            public: pool(idle_timeout).build(Connector::new(connect_timeout, roots.clone()).public_only()),
            roots,
            connect_timeout,
            idle_timeout,
            tls: Mutex::new(Vec::new()),
        }
    }

    /// The pool for the middleware's `tls` settings and origin.
    fn client(&self, fa: &ForwardAuth) -> Result<Pool, String> {
        let Some(tls) = fa.tls() else {
            return Ok(if fa.public_only() {
                self.public.clone()
            } else {
                self.plain.clone()
            });
        };
        let mut pools = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = pools.iter().find(|(t, _)| Arc::ptr_eq(t, tls)) {
            return Ok(c.clone());
        }
        let roots = match &tls.ca {
            Some(certs) => {
                let mut r = RootCertStore::empty();
                for c in certs {
                    r.add(c.clone()).map_err(|e| format!("tls.ca: {e}"))?;
                }
                r
            }
            None => self.roots.clone(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(berth_common::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let cfg = match &tls.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("tls.cert/tls.key: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        let mut connector = Connector::with_tls(self.connect_timeout, cfg);
        if fa.public_only() {
            connector = connector.public_only();
        }
        let client = pool(self.idle_timeout).build(connector);
        if pools.len() >= MAX_TLS_POOLS {
            pools.remove(0);
        }
        pools.push((tls.clone(), client.clone()));
        Ok(client)
    }
}

/// Ask the auth server about `req` (with `body` when `forwardBody` is on) and apply its
/// answer: `Ok(())` to go on, or the client's answer.
pub(super) async fn ask(
    call: &AuthCall<'_>,
    fa: &ForwardAuth,
    req: &mut Req<'_>,
    body: Option<Bytes>,
) -> Result<(), http::Response<Body>> {
    let (method, mut headers) = fa.request_head(req, body.as_ref().map(Bytes::len));
    let address = fa.address();
    // `Host` is the address's host and port; credentials in it become Basic auth, as Go
    // sends them, when the request carries none.
    let host = match (address.host(), address.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, v);
    }
    if let Some(basic) = fa.address_credentials()
        && !headers.contains_key(header::AUTHORIZATION)
    {
        headers.insert(header::AUTHORIZATION, basic.clone());
    }
    let mut cspan = call
        .tracer
        .child(call.span, || "AuthRequest".to_string(), SpanKind::Client);
    telemetry::client_request_attrs(&mut cspan, &method, fa.target(), 0);
    call.tracer.inject(&cspan, &mut headers);
    let shown = fa.shown_address();
    let client = call.clients.client(fa).map_err(|e| {
        tracing::warn!(address = %shown, error = %e, "forwardAuth: the auth server's TLS settings cannot be used");
        status_only(StatusCode::INTERNAL_SERVER_ERROR)
    })?;
    let mut out = Request::new(body.map_or_else(empty, full));
    *out.method_mut() = method;
    *out.uri_mut() = fa.target().clone();
    *out.headers_mut() = headers;
    let limit = fa.max_response_body();
    let answer = tokio::time::timeout(TIMEOUT, async {
        let resp = client.request(out).await.map_err(|e| Failure::Call(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, limit).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Failure::TooLarge
            } else {
                Failure::Call(e.to_string())
            }
        })?;
        Ok::<_, Failure>((parts.status, parts.headers, bytes.to_bytes()))
    })
    .await
    .unwrap_or(Err(Failure::Call(format!("no answer within {TIMEOUT:?}"))));
    let (status, answer_headers, bytes) = match answer {
        Ok(a) => a,
        Err(Failure::TooLarge) => {
            tracing::debug!(address = %shown, limit, "forwardAuth: the auth server's answer is too large");
            telemetry::response_status(&mut cspan, 401);
            return Err(status_only(StatusCode::UNAUTHORIZED));
        }
        Err(Failure::Call(e)) => {
            tracing::warn!(address = %shown, error = %e, "forwardAuth: calling the auth server failed");
            telemetry::response_status(&mut cspan, 500);
            return Err(status_only(StatusCode::INTERNAL_SERVER_ERROR));
        }
    };
    telemetry::response_status(&mut cspan, status.as_u16());
    drop(cspan);
    match fa.verdict(status, &answer_headers, bytes, req) {
        Verdict::Allow => Ok(()),
        Verdict::Deny { status, headers, body } => {
            let mut resp = http::Response::new(full(body));
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            Err(resp)
        }
    }
}

enum Failure {
    Call(String),
    TooLarge,
}

/// An answer with a status and nothing else (Traefik writes only the status for these).
pub(super) fn status_only(status: StatusCode) -> http::Response<Body> {
    let mut resp = http::Response::new(empty());
    *resp.status_mut() = status;
    *resp.headers_mut() = HeaderMap::new();
    resp
}
