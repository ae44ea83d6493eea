//! Step 3 of a request's path: the router's middlewares, around the forward step.
//!
//! The request phase runs them in router order; one may rewrite the request or answer it
//! (a redirect, 401, 403, a CORS preflight). The response phase runs the ones that ran,
//! innermost first, on whatever answer there is. The middlewares that act on the outcome
//! or the body say so through `Spec`'s hooks (`retry`, `outcome`, `encoding`,
//! `forward_auth`), so nothing here names a middleware.

use std::sync::Arc;
use std::time::Duration;

use berth_common::middleware::buffering::RetryExpression;
use berth_common::middleware::errors::Seen;
use berth_common::middleware::forward_auth::{AuthCookies, ForwardAuth};
use berth_common::middleware::grpc_web;
use berth_common::middleware::{self, Spec, Step, limit::Hold};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Empty, Full, Limited};
use hyper::body::Incoming;

use super::auth::{self, AuthCall};
use super::errors::{ProxyError, text_response};
use super::front::{Ctx, set_target};
use super::pages::Pages;
use super::{Body, BoxError, ClientBody, ConnInfo, compress};

/// A router's middlewares for one request, and what their phases carry between them.
pub(super) struct Pipeline {
    specs: Vec<Arc<Spec>>,
    /// How many ran in the request phase (all, unless one answered).
    ran: usize,
    /// Requests counted by `inFlightReq`, released when the response body is done.
    holds: Vec<Hold>,
    /// The request's `Origin` (CORS answers), read only when there are middlewares.
    origin: Option<HeaderValue>,
    /// The request's `Accept-Encoding`, read only for a middleware that encodes.
    accept_encoding: Option<String>,
    /// Cookies auth servers set, for the response (`forwardAuth`), by the place in the
    /// chain of the middleware that asked.
    auth_cookies: Vec<(usize, AuthCookies)>,
    /// The request as each `errors` middleware saw it, by its place in the chain.
    seen: Vec<(usize, Seen)>,
    /// A gRPC-Web call made gRPC, by the place in the chain of the `grpcWeb` that did.
    grpc_web: Option<(usize, grpc_web::Call)>,
    /// `buffering` with `retryExpression`: when to send again, and the body read whole.
    replay: Option<(Arc<RetryExpression>, Bytes)>,
}

impl Pipeline {
    pub(super) fn new(specs: Vec<Arc<Spec>>) -> Pipeline {
        Pipeline {
            ran: specs.len(),
            specs,
            holds: Vec::new(),
            origin: None,
            accept_encoding: None,
            auth_cookies: Vec::new(),
            seen: Vec::new(),
            grpc_web: None,
            replay: None,
        }
    }

    /// A router without middlewares: neither phase has anything to do, and the caller
    /// skips both (it pays nothing, not even a future).
    pub(super) fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The request phase: the request to forward, or the answer a middleware made.
    pub(super) async fn request(
        &mut self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        ctx: &Ctx,
        call: &AuthCall<'_>,
    ) -> Result<Result<Request<ClientBody>, Response<Body>>, ProxyError> {
        self.origin = req.headers().get(header::ORIGIN).cloned();
        if self.specs.iter().any(|s| s.reads_accept_encoding()) {
            self.accept_encoding = req
                .headers()
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        let (mut parts, body) = req.into_parts();
        let mut body = Either::Left(body);
        let host = ctx.raw_host.clone().unwrap_or_default();
        let mut mreq = middleware::Req {
            method: &parts.method,
            tls: conn.tls,
            host: &host,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: &mut parts.headers,
            peer: conn.peer.ip(),
            holds: Vec::new(),
            auth_cookies: Vec::new(),
            grpc_web: None,
            client_certs: conn.client_certs.as_deref(),
        };
        let mut answer = None;
        for (i, spec) in self.specs.iter().enumerate() {
            if spec.error_page().is_some() {
                self.seen.push((
                    i,
                    Seen {
                        tls: mreq.tls,
                        host: mreq.host.to_string(),
                        path: mreq.path.clone(),
                        query: mreq.query.clone(),
                        headers: mreq.headers.clone(),
                    },
                ));
            }
            let step = match spec.request(&mut mreq).await {
                Step::Reply(reply) => Err(reply_response(reply)),
                Step::Next if spec.buffering().is_some() => {
                    let b = spec.buffering();
                    let limit = b.map_or(0, |b| b.max_request);
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                    let retry = b.and_then(|b| b.retry.clone());
                    buffer_request(call, &mut body, limit, StatusCode::PAYLOAD_TOO_LARGE)
                        .await
                        .map(|bytes| {
                            if let Some(r) = retry {
                                self.replay = Some((r, bytes));
                            }
                        })
                }
                Step::Next if spec.grpc_web().is_some() => match mreq.grpc_web.take() {
                    Some(web) => {
                        let decoded = match web.mode {
                            grpc_web::Mode::Binary => Ok(()),
                            grpc_web::Mode::Text => {
                                // The body sent is no longer the one buffered.
                                self.replay = None;
                                decode_text_body(call, &mut body).await
                            }
                        };
                        self.grpc_web = Some((i, web));
                        decoded
                    }
                    None => Ok(()),
                },
                Step::Next => match spec.forward_auth() {
                    Some(fa) => {
                        let step = authorize(call, fa, &mut mreq, &mut body).await;
                        self.auth_cookies.extend(mreq.auth_cookies.drain(..).map(|c| (i, c)));
                        step
                    }
                    None => Ok(()),
                },
            };
            if let Err(resp) = step {
                self.ran = i;
                answer = Some(resp);
                break;
            }
        }
        self.holds = std::mem::take(&mut mreq.holds);
        if let Some(resp) = answer {
            return Ok(Err(resp));
        }
        // Rebuild the target only when a middleware rewrote it.
        if mreq.path != parts.uri.path() || mreq.query.as_deref() != parts.uri.query() {
            let (path, query) = (mreq.path, mreq.query);
            set_target(&mut parts.uri, &path, query.as_deref())
                .map_err(|()| ProxyError::BadRequest("a middleware made an invalid path"))?;
        }
        Ok(Ok(Request::from_parts(parts, body)))
    }

    /// `buffering`'s `retryExpression` and the request body it read, when the request
    /// may be sent again.
    pub(super) fn replay(&self) -> Option<(Arc<RetryExpression>, Bytes)> {
        self.replay.clone()
    }

    /// The retry middleware the forward step follows: the innermost one.
    pub(super) fn retry(&self) -> Option<middleware::limit::Retry> {
        self.specs.iter().rev().find_map(|s| s.retry().cloned())
    }

    /// Tell the middlewares that learn from outcomes how the upstream answered.
    pub(super) fn outcome(&self, result: &Result<Response<Body>, ProxyError>, elapsed: Duration) {
        if !self.specs.iter().any(|s| s.learns_outcomes()) {
            return;
        }
        let (status, network_error) = match result {
            Ok(r) => (r.status().as_u16(), false),
            Err(e) => (e.status().as_u16(), e.is_network()),
        };
        for spec in &self.specs {
            spec.outcome(status, network_error, elapsed);
        }
    }

    /// The response phase, innermost first, for the middlewares that ran (an `errors`
    /// middleware may replace the answer, a failure included, with its page); then the
    /// auth servers' cookies, the body's coding, and the counted requests held until the
    /// body is done.
    pub(super) async fn response(
        self,
        ctx: &mut Ctx,
        pages: &Pages<'_>,
        result: &mut Result<Response<Body>, ProxyError>,
    ) {
        let ran = &self.specs[..self.ran];
        for (i, spec) in ran.iter().enumerate().rev() {
            if let Some(page) = spec.error_page() {
                let status = super::errors::status_of(result);
                if let (Some((code, original)), Some((_, seen))) =
                    (page.catches(status), self.seen.iter().find(|(j, _)| *j == i))
                {
                    *result = Ok(pages.fetch(page, seen, code, original, ctx).await);
                }
                continue;
            }
            if let Some(b) = spec.buffering()
                && let Ok(resp) = result
            {
                buffer_response(resp, b.max_response).await;
            }
            if let Some((j, web)) = &self.grpc_web
                && *j == i
                && let Ok(resp) = result
                && web.converts(resp.headers())
            {
                web.response_head(resp.headers_mut());
                let taken = std::mem::replace(
                    resp,
                    Response::new(Empty::new().map_err(|never| match never {}).boxed()),
                );
                *resp = taken.map(|inner| super::grpc_web::WebBody::new(inner, web.mode).boxed());
            }
            if let Ok(resp) = result {
                spec.response(self.origin.as_ref(), pages.conn.tls, resp.headers_mut());
                for (_, cookies) in self.auth_cookies.iter().filter(|(j, _)| *j == i) {
                    cookies.apply(resp.headers_mut());
                }
            }
        }
        let Ok(resp) = result else { return };
        if ran.iter().any(|s| s.sniffs_content_type()) {
            sniff(&ctx.method, resp).await;
        }
        // The innermost middleware that encodes, encodes.
        let accept = self.accept_encoding.as_deref();
        if let Some(encoding) = ran
            .iter()
            .rev()
            .find_map(|s| s.encoding(&ctx.method, accept, resp.status(), resp.headers()))
        {
            let taken = std::mem::replace(
                resp,
                Response::new(Empty::new().map_err(|never| match never {}).boxed()),
            );
            *resp = compress::apply(encoding, taken);
        }
        if !self.holds.is_empty() {
            let holds = self.holds;
            let taken = std::mem::replace(
                resp,
                Response::new(Empty::new().map_err(|never| match never {}).boxed()),
            );
            *resp = taken.map(|inner| Held { inner, _holds: holds }.boxed());
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps requests counted (`inFlightReq`) until it is done.
    struct Held {
        #[pin]
        inner: Body,
        _holds: Vec<Hold>,
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `forwardAuth` at its place in the chain: with `forwardBody`, the client's body is
/// read whole first and goes on to the upstream as those bytes. The read keeps the
/// gateway's own bounds (its body limit: 413; its read deadline: 408) beside the
/// middleware's (`maxBodySize`: 401, as Traefik).
async fn authorize(
    call: &AuthCall<'_>,
    fa: &ForwardAuth,
    mreq: &mut middleware::Req<'_>,
    body: &mut ClientBody,
) -> Result<(), Response<Body>> {
    let mut forwarded = None;
    if let Some(limit) = fa.forwarded_body_limit(mreq.method) {
        forwarded = Some(buffer_request(call, body, limit, StatusCode::UNAUTHORIZED).await?);
    }
    auth::ask(call, fa, mreq, forwarded).await
}

/// A `grpc-web-text` request body, read whole (gRPC-Web has no client streaming) within
/// the gateway's bounds, and decoded from base64; not base64: 400.
async fn decode_text_body(call: &AuthCall<'_>, body: &mut ClientBody) -> Result<(), Response<Body>> {
    let text = buffer_request(call, body, GRPC_WEB_TEXT_LIMIT, StatusCode::PAYLOAD_TOO_LARGE).await?;
    match grpc_web::decode_text(&text) {
        Ok(bytes) => {
            *body = Either::Right(Full::new(Bytes::from(bytes)));
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, "grpc-web-text body refused");
            Err(auth::status_only(StatusCode::BAD_REQUEST))
        }
    }
}

/// The largest `grpc-web-text` request read (gRPC's default message limit is 4 MiB; base64
/// is a third larger).
const GRPC_WEB_TEXT_LIMIT: usize = 6 * 1024 * 1024;

/// Read the request body whole (it goes on as those bytes), keeping the gateway's own
/// bounds (its body limit: 413; its read deadline: 408) beside the middleware's `limit`
/// (`over` when passed).
pub(super) async fn buffer_request(
    call: &AuthCall<'_>,
    body: &mut ClientBody,
    limit: usize,
    over: StatusCode,
) -> Result<Bytes, Response<Body>> {
    let gateway = call
        .max_body
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let taken = std::mem::replace(body, Either::Right(Full::new(Bytes::new())));
    let read = match call.read_deadline {
        Some(d) => read_whole(berth_common::serve::Deadline::new(taken, d), limit.min(gateway)).await,
        None => read_whole(taken, limit.min(gateway)).await,
    };
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(Unread::TooLarge) => {
            tracing::debug!(limit, gateway, "the request body is larger than allowed");
            let status = if gateway < limit {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                over
            };
            return Err(auth::status_only(status));
        }
        Err(Unread::Timeout) => return Err(auth::status_only(StatusCode::REQUEST_TIMEOUT)),
        Err(Unread::Failed(e)) => {
            tracing::debug!(error = %e, "reading the request body failed");
            return Err(auth::status_only(StatusCode::INTERNAL_SERVER_ERROR));
        }
    };
    *body = Either::Right(Full::new(bytes.clone()));
    Ok(bytes)
}

/// `buffering` on the way back: the response read whole (its length then known), or 500
/// when it is larger than the middleware allows or cannot be read. (Boxed: it keeps the
/// request's future `Send` for the compiler.)
fn buffer_response(
    resp: &mut Response<Body>,
    limit: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let taken = std::mem::replace(
            resp,
            Response::new(Empty::new().map_err(|never| match never {}).boxed()),
        );
        let (parts, mut body) = taken.into_parts();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut whole = bytes::BytesMut::new();
        let mut ok = true;
        while let Some(frame) = body.frame().await {
            match frame.map(|f| f.into_data()) {
                Ok(Ok(data)) if whole.len() + data.len() <= limit => whole.extend_from_slice(&data),
                // Trailers are dropped: the body is sent whole, with its length.
                Ok(Err(_)) => {}
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            *resp = Response::from_parts(parts, berth_common::body::full(whole.freeze()));
        } else {
            tracing::debug!(
                limit,
                "buffering: the response is larger than maxResponseBodyBytes or broke off"
            );
            *resp = auth::status_only(StatusCode::INTERNAL_SERVER_ERROR);
        }
    })
}

/// Why a body could not be read whole.
pub(super) enum Unread {
    TooLarge,
    Timeout,
    Failed(String),
}

/// A body read whole, at most `limit` bytes.
pub(super) async fn read_whole<B>(body: B, limit: usize) -> Result<Bytes, Unread>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = &*e;
            Err(
                if berth_common::forward::chain_has::<http_body_util::LengthLimitError>(e) {
                    Unread::TooLarge
                } else if berth_common::forward::chain_has::<berth_common::serve::BodyTimeout>(e) {
                    Unread::Timeout
                } else {
                    Unread::Failed(e.to_string())
                },
            )
        }
    }
}

/// `contentType`: a response without `Content-Type` (and not encoded, with a body its
/// status allows) gets the type its first body chunk shows, as Go's server detects it.
async fn sniff(method: &http::Method, resp: &mut Response<Body>) {
    let status = resp.status();
    if resp.headers().contains_key(header::CONTENT_TYPE)
        || resp.headers().contains_key(header::CONTENT_ENCODING)
        || *method == http::Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || resp.body().is_end_stream()
    {
        return;
    }
    let taken = std::mem::replace(
        resp,
        Response::new(Empty::new().map_err(|never| match never {}).boxed()),
    );
    let (mut parts, mut body) = taken.into_parts();
    let first = body.frame().await;
    if let Some(Ok(frame)) = &first
        && let Some(data) = frame.data_ref()
        && !data.is_empty()
    {
        let mime = middleware::content_type::detect(data);
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    }
    *resp = Response::from_parts(parts, Prepend { first, rest: body }.boxed());
}

pin_project_lite::pin_project! {
    /// A body whose first frame was already read (to look at it), then the rest.
    struct Prepend {
        first: Option<Result<hyper::body::Frame<Bytes>, BoxError>>,
        #[pin]
        rest: Body,
    }
}

impl hyper::body::Body for Prepend {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(first) = this.first.take() {
            return std::task::Poll::Ready(Some(first));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let rest = self.rest.size_hint();
        let n = match &self.first {
            Some(Ok(f)) => f.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        match rest.exact() {
            Some(m) => hyper::body::SizeHint::with_exact(m + n),
            None => {
                let mut h = hyper::body::SizeHint::new();
                h.set_lower(rest.lower() + n);
                h
            }
        }
    }
}

/// A middleware's own answer (a redirect, 401, 403, a CORS preflight).
fn reply_response(reply: middleware::Reply) -> Response<Body> {
    let mut resp = text_response(reply.status, reply.body, None);
    if resp.body().size_hint().exact() == Some(0) {
        resp.headers_mut().remove(header::CONTENT_TYPE);
    }
    for (name, value) in reply.headers {
        resp.headers_mut().append(name, value);
    }
    resp
}
