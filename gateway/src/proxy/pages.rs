//! The response phase's one trip out: the `errors` middleware's page, asked of its
//! service through the same forward step as any request (balancing, health, retries of
//! what never reached an app, the service's counts), then given the caught status.
//! Which answers are caught and what the page request carries are
//! `berth_common::middleware::errors`'.

use berth_common::middleware::errors::{ErrorPage, Seen};
use berth_common::telemetry::Span;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};

use super::errors::text_response;
use super::front::Ctx;
use super::{Body, ConnInfo, Proxy, forward};

/// What fetching a page needs besides the middleware.
pub(super) struct Pages<'a> {
    pub proxy: &'a Proxy,
    pub conn: &'a ConnInfo,
    pub span: &'a Span,
}

impl Pages<'_> {
    /// The page for a caught answer, with the status the client gets (`code`). A page
    /// that cannot be had is the gateway's own error text with that status.
    pub(super) async fn fetch(
        &self,
        page: &ErrorPage,
        seen: &Seen,
        code: u16,
        original: u16,
        ctx: &mut Ctx,
    ) -> Response<Body> {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let plain = || {
            let reason = status.canonical_reason().unwrap_or("error");
            text_response(status, format!("{reason}\n"), None)
        };
        let routes = self.proxy.routes();
        let Some(svc) = routes.services.iter().find(|s| s.name == page.service()).cloned() else {
            tracing::debug!(service = page.service(), "errors: the page's service is gone");
            return plain();
        };
        // A weighted (or failover) page service: the load balancer it leads to.
        let svc = match &svc.weighted {
            Some(_) => match super::weighted_leaf(
                &routes,
                svc,
                &http::HeaderMap::new(),
                berth_common::routing::MAX_WEIGHTED_DEPTH,
            ) {
                Ok(leaf) => leaf.svc,
                Err(_) => return plain(),
            },
            None => svc,
        };
        let asked = page.page_request(seen, code, original);
        let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
        match asked.path_and_query.parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                tracing::debug!(query = %asked.path_and_query, "errors: the page's query is not a valid path");
                return plain();
            }
        }
        *req.headers_mut() = asked.headers;
        // The page's trip is not the request's: its outcome stays the caught one.
        let outcome = std::mem::take(&mut ctx.outcome);
        let how = forward::How {
            upgrade: None,
            retry: None,
        };
        let result = self.proxy.forward(req, self.conn, ctx, &svc, how, self.span).await;
        ctx.outcome = outcome;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(service = page.service(), error = %e, "errors: the page could not be fetched");
                e.into_response()
            }
        };
        *resp.status_mut() = status;
        resp
    }
}
