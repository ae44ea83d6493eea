//! A mirroring service's copies: the request goes on to the main service, and a copy to
//! each mirror chosen, on a task of its own whose answer nobody waits for, so a mirror never
//! slows or fails the main request. The body is copied when `mirrorBody` is on and its
//! declared length is within `maxBodySize`: it is then read whole first (Traefik does the
//! same); a longer body, or one of unknown length, is not mirrored. At most
//! `MAX_MIRRORS_IN_FLIGHT` copies are in flight; past that, copies are dropped. A
//! mirror's HTTP/1 answer is read and dropped (as Traefik's mirror reads it into a
//! discarding writer), up to [`MAX_DRAINED`] bytes within [`DRAIN_TIME`], so that its
//! upstream connection serves the next copy instead of closing; the copy holds its slot
//! meanwhile.

use std::sync::Arc;
use std::time::Instant;

use berth_common::telemetry::Span;
use bytes::Bytes;
use http::header;
use http::{Request, request::Parts};
use http_body::Body as _;
use http_body_util::{Either, Full};

use super::errors::ProxyError;
use super::front::Ctx;
use super::pipeline::read_whole;
use super::router::ServiceRuntime;
use super::{ClientBody, ConnInfo, Outcome, Proxy, forward};

/// The most of a mirror's answer read (and dropped) to keep its connection.
const MAX_DRAINED: usize = 1024 * 1024;
/// How long a mirror's answer may take to be read; its slot is held meanwhile.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

impl Proxy {
    /// Send the copies of `req` to `mirrors` and give back the request for the main
    /// service (its body read whole when the copies carry it).
    pub(super) async fn mirror(
        &self,
        req: Request<ClientBody>,
        conn: &ConnInfo,
        ctx: &Ctx,
        mirrors: &[(Arc<ServiceRuntime>, bool, u64)],
    ) -> Result<Request<ClientBody>, ProxyError> {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return Ok(req);
        };
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bodyless = body.is_end_stream();
        let wants_body = mirrors.iter().any(|(_, with_body, _)| *with_body);
        let limit = mirrors.iter().map(|(_, _, max)| *max).max().unwrap_or(0);
        // Read the body whole only when a copy carries it and its length is known and small.
        let (body, bytes) = match declared {
            Some(n) if !bodyless && wants_body && n <= limit => {
                let limit = usize::try_from(n).unwrap_or(usize::MAX);
                match read_whole(body, limit).await {
                    Ok(b) => (Either::Right(Full::new(b.clone())), Some(b)),
                    Err(_) => return Err(ProxyError::BadRequest("the request body could not be read")),
                }
            }
            _ => (body, None),
        };
        for (svc, with_body, max) in mirrors {
            let copy_body = match (&bytes, bodyless, *with_body) {
                (_, true, _) | (_, false, false) => Bytes::new(),
                (Some(b), false, true) if b.len() as u64 <= *max => b.clone(),
                // A body that was not (or may not be) read whole is not mirrored.
                _ => continue,
            };
            let Ok(permit) = self.mirror_slots.clone().try_acquire_owned() else {
                tracing::debug!(mirror = %svc.name, "mirror copies at their limit; this one is dropped");
                continue;
            };
            let copy = copy_of(&parts, copy_body, !bodyless && *with_body);
            let (me, conn, svc) = (me.clone(), conn.clone(), svc.clone());
            let mut mctx = Ctx {
                start: Instant::now(),
                method: ctx.method.clone(),
                version: ctx.version,
                grpc: ctx.grpc,
                raw_host: ctx.raw_host.clone(),
                host: ctx.host.clone(),
                outcome: Outcome::default(),
            };
            tokio::spawn(async move {
                let how = forward::How {
                    upgrade: None,
                    retry: None,
                };
                match me.forward(copy, &conn, &mut mctx, &svc, how, &Span::inert()).await {
                    Ok(resp) => {
                        let drain = berth_common::pool::drain(resp, MAX_DRAINED);
                        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
                    }
                    Err(e) => tracing::debug!(mirror = %svc.name, error = %e, "mirror copy failed"),
                }
                drop(permit);
            });
        }
        Ok(Request::from_parts(parts, body))
    }
}

/// A copy of the request's head with `body`; without the body, its framing headers go.
fn copy_of(parts: &Parts, body: Bytes, with_body: bool) -> Request<ClientBody> {
    let mut req = Request::new(Either::Right(Full::new(body)));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    if !with_body {
        req.headers_mut().remove(header::CONTENT_LENGTH);
        req.headers_mut().remove(header::TRANSFER_ENCODING);
    }
    req
}
