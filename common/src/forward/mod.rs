//! The trip to an upstream, written once: pick an endpoint, send, classify what went
//! wrong, eject the endpoint to blame, go again or answer.
//!
//! The gateway's proxy and both sidecar listeners call [`forward`] with a [`Policy`] (how
//! many attempts, what may go again, the back-off, the response timeout and the gRPC
//! deadline), the [`Endpoints`] to pick from, and a [`Trip`]: how to build and send one
//! attempt, and what to record about it (their own metrics, spans and logs). What the
//! final [`Failure`] becomes for the caller is each caller's one `match`, into a
//! [`crate::synthetic::Synthetic`] answer in HTTP or gRPC.

mod failure;
mod replay;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::balance::{Balancer, EndpointState, InFlight};
use crate::body::{Body, ClientBodyError, empty, full};
pub use failure::{ClientFault, Failure};
pub use replay::{Buffered, buffer};

/// The largest gRPC request kept to be sent again (unary calls are small).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// How a request may be attempted.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Attempts in all, the first one included (at least one is made).
    pub max_attempts: usize,
    /// The request may be sent more than once: it is idempotent without a body, or its
    /// body is kept ([`RequestBody::Replay`]).
    pub resendable: bool,
    /// Which failures go to another attempt.
    pub retry: RetryOn,
    /// Wait this long before the second attempt, twice as long before each next one.
    pub backoff: Option<Duration>,
    /// When every endpoint has been tried, or none is healthy, look again (and count the
    /// look as an attempt): the operator's retry policy, not the default.
    pub revisit: bool,
    /// How long one attempt may wait for the response head.
    pub response_timeout: Option<Duration>,
    /// The gRPC call's deadline (`grpc-timeout`), for all attempts together.
    pub grpc_deadline: Option<tokio::time::Instant>,
    /// No attempt after the first starts past this (the retry middleware's `timeout`).
    pub retry_deadline: Option<Instant>,
}

/// Which failures may go to another attempt (when the request can be sent again and
/// attempts are left).
#[derive(Debug, Clone, Default)]
pub struct RetryOn {
    pub connect: bool,
    pub broken: bool,
    pub timeout: bool,
    /// A sidecar's `503` with `x-berth-unreachable: app` (its app is gone).
    pub app_unreachable: bool,
    /// gRPC codes that go elsewhere, when answered before any message (trailers-only) to
    /// a call whose body was kept.
    pub grpc_codes: Vec<u32>,
    /// Answer statuses that go again (inclusive ranges), for a request that may be sent
    /// again.
    pub statuses: Vec<(u16, u16)>,
}

/// The request body, once or kept to be sent again.
pub enum RequestBody {
    /// Sent with the first attempt; later ones (bodyless requests only) send none.
    Once(Body),
    /// Kept whole: every attempt sends it.
    Replay(Bytes),
}

/// Where attempts may go.
pub trait Endpoints {
    /// An endpoint to try, not one of `tried` (unless the endpoint may be asked again).
    fn pick(&self, tried: &[usize]) -> Option<usize>;
    /// Its health and load, when it has any.
    fn state(&self, endpoint: usize) -> Option<&Arc<EndpointState>>;
}

/// Endpoints picked by a balancer from their states.
pub struct Balanced<'a> {
    pub balancer: &'a Balancer,
    pub states: &'a [Arc<EndpointState>],
}

impl Endpoints for Balanced<'_> {
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(self.states, tried)
    }
    fn state(&self, endpoint: usize) -> Option<&Arc<EndpointState>> {
        self.states.get(endpoint)
    }
}

/// Endpoints with one to try first while it is healthy (the server a sticky session
/// names); the others as `inner` picks them.
pub struct Preferring<'a, E: ?Sized> {
    pub inner: &'a E,
    pub first: Option<usize>,
}

impl<E: Endpoints + ?Sized> Endpoints for Preferring<'_, E> {
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        match self.first {
            Some(i) if !tried.contains(&i) && self.inner.state(i).is_some_and(|s| s.is_healthy(Instant::now())) => {
                Some(i)
            }
            _ => self.inner.pick(tried),
        }
    }
    fn state(&self, endpoint: usize) -> Option<&Arc<EndpointState>> {
        self.inner.state(endpoint)
    }
}

/// One endpoint, asked again on a fresh connection when the policy allows (a sidecar's
/// own app: there is nowhere else to go).
pub struct One;

impl Endpoints for One {
    fn pick(&self, _tried: &[usize]) -> Option<usize> {
        Some(0)
    }
    fn state(&self, _endpoint: usize) -> Option<&Arc<EndpointState>> {
        None
    }
}

/// One attempt, as the [`Trip`] builds it.
pub struct Attempt {
    /// The endpoint picked.
    pub endpoint: usize,
    /// 0 for the first attempt.
    pub number: usize,
    /// The body to send.
    pub body: Body,
    /// Another attempt may follow: keep what it needs (the headers).
    pub again: bool,
}

/// What an error from sending says about where it happened.
pub trait SendError: std::error::Error + Send + Sync + 'static {
    /// The connection could not be made: nothing was sent.
    fn is_connect(&self) -> bool;
}

impl SendError for hyper_util::client::legacy::Error {
    fn is_connect(&self) -> bool {
        hyper_util::client::legacy::Error::is_connect(self)
    }
}

/// How one caller builds, sends and records its attempts.
pub trait Trip {
    /// The upstream's response body.
    type Body;
    type Error: SendError;
    /// What an attempt keeps until it ends (a client span).
    type Attempt;
    /// The response on its way.
    type Future: Future<Output = Result<Response<Self::Body>, Self::Error>>;

    /// Build and send `attempt`. An error is the caller's refusal to send at all.
    fn send(&mut self, attempt: Attempt) -> Result<(Self::Attempt, Self::Future), Failure>;

    /// Whether `endpoint` is a sidecar, whose `x-berth-unreachable` answer is believed.
    fn via_sidecar(&self, _endpoint: usize) -> bool {
        true
    }

    /// The endpoint answered with `status` (whether or not it counts as a failure).
    fn answered(&mut self, _attempt: &mut Self::Attempt, _endpoint: usize, _status: StatusCode, _elapsed: Duration) {}

    /// The attempt failed.
    fn failed(&mut self, _attempt: &mut Self::Attempt, _failed: &Failed<'_>) {}

    /// Attempt `number` (1 for the first retry) is about to be sent.
    fn retrying(&mut self, _number: usize) {}
}

/// A failed attempt, as the [`Trip`] is told of it.
pub struct Failed<'a> {
    pub failure: &'a Failure,
    /// The endpoint was ejected for this long.
    pub ejected_for: Option<Duration>,
    /// Another attempt follows.
    pub again: bool,
    /// How long after sending it failed.
    pub elapsed: Duration,
}

/// The upstream's answer.
pub struct Answer<B, A> {
    pub response: Response<B>,
    pub endpoint: usize,
    /// The attempt's own record, to end with the response body.
    pub attempt: A,
    /// When the attempt was sent.
    pub sent: Instant,
    /// The answer is a failure passed on because no attempt was left (a sidecar's "app
    /// not listening", a retryable gRPC status).
    pub failure: Option<Failure>,
}

/// Attempt the request until it is answered, or fails in a way that may not go again, or
/// the attempts run out.
pub async fn forward<T, E>(
    trip: &mut T,
    endpoints: &E,
    policy: &Policy,
    body: RequestBody,
) -> Result<Answer<T::Body, T::Attempt>, Failure>
where
    T: Trip,
    E: Endpoints + ?Sized,
{
    let max = policy.max_attempts.max(1);
    let (mut once, replay) = match body {
        RequestBody::Once(b) => (Some(b), None),
        RequestBody::Replay(bytes) => (None, Some(bytes)),
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut last: Option<Failure> = None;
    let mut attempts = 0usize;
    loop {
        if let (Some(b), true) = (policy.backoff, attempts > 0) {
            tokio::time::sleep(b.saturating_mul(1u32 << (attempts - 1).min(10))).await;
        }
        let mut pick = endpoints.pick(&tried);
        if pick.is_none() && policy.revisit && !tried.is_empty() {
            // Every endpoint tried: the operator's policy may go round again.
            tried.clear();
            pick = endpoints.pick(&tried);
        }
        let Some(i) = pick else {
            if policy.revisit && policy.resendable && attempts < max {
                // Every endpoint is ejected for now: wait and look again.
                attempts += 1;
                continue;
            }
            return Err(last.unwrap_or(Failure::NoEndpoint));
        };
        if attempts > 0 {
            trip.retrying(attempts);
        }
        attempts += 1;
        tried.push(i);
        let again = policy.resendable && attempts < max && policy.retry_deadline.is_none_or(|d| Instant::now() < d);
        let body = match &replay {
            Some(bytes) => full(bytes.clone()),
            None => once.take().unwrap_or_else(empty),
        };
        let (mut attempt, sending) = trip.send(Attempt {
            endpoint: i,
            number: attempts - 1,
            body,
            again,
        })?;
        let state = endpoints.state(i);
        let _inflight = state.map(|s| InFlight::new(s.clone()));
        let sent = Instant::now();
        // Whichever comes first: the call's gRPC deadline (not the endpoint's fault) or
        // this attempt's response timeout.
        let timeout_at = policy.response_timeout.map(|t| tokio::time::Instant::now() + t);
        let grpc_first = match (policy.grpc_deadline, timeout_at) {
            (Some(d), Some(t)) => d <= t,
            (Some(_), None) => true,
            _ => false,
        };
        let result = match policy.grpc_deadline.filter(|_| grpc_first).or(timeout_at) {
            None => sending.await,
            Some(when) => match tokio::time::timeout_at(when, sending).await {
                Ok(r) => r,
                Err(_) => {
                    let failure = if grpc_first {
                        Failure::Deadline
                    } else {
                        Failure::Timeout {
                            endpoint: i,
                            after: policy.response_timeout.unwrap_or_default(),
                        }
                    };
                    match settle(trip, &mut attempt, state, failure, policy, again, sent) {
                        Flow::Again(f) => {
                            last = Some(f);
                            continue;
                        }
                        Flow::End(f) => return Err(f),
                    }
                }
            },
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                let failure = classify(&e, i, T::Error::is_connect(&e));
                match settle(trip, &mut attempt, state, failure, policy, again, sent) {
                    Flow::Again(f) => {
                        last = Some(f);
                        continue;
                    }
                    Flow::End(f) => return Err(f),
                }
            }
        };
        let elapsed = sent.elapsed();
        trip.answered(&mut attempt, i, response.status(), elapsed);
        let failed = if policy.retry.app_unreachable
            && trip.via_sidecar(i)
            && crate::http::is_app_unreachable(response.status(), response.headers())
        {
            Some(Failure::AppUnreachable { endpoint: i })
        } else if replay.is_some()
            && response.status() == StatusCode::OK
            && let Some(code) = crate::grpc::status(response.headers())
            && policy.retry.grpc_codes.contains(&code)
        {
            Some(Failure::GrpcStatus { endpoint: i, code })
        } else if again
            && crate::http::status_in(&policy.retry.statuses, response.status().as_u16())
            && policy.retry_deadline.is_none_or(|d| Instant::now() < d)
        {
            Some(Failure::Status {
                endpoint: i,
                status: response.status().as_u16(),
            })
        } else {
            None
        };
        match failed {
            None => {
                if let Some(s) = state {
                    s.record_success(elapsed);
                }
                return Ok(Answer {
                    response,
                    endpoint: i,
                    attempt,
                    sent,
                    failure: None,
                });
            }
            // The endpoint answered: what went wrong before (a refused connection) stays
            // the reason if no endpoint is left.
            Some(failure) => match settle(trip, &mut attempt, state, failure, policy, again, sent) {
                Flow::Again(_) => {}
                Flow::End(failure) => {
                    return Ok(Answer {
                        response,
                        endpoint: i,
                        attempt,
                        sent,
                        failure: Some(failure),
                    });
                }
            },
        }
    }
}

/// Whether the trip goes on after a failed attempt.
enum Flow {
    Again(Failure),
    End(Failure),
}

/// Eject the endpoint when it is to blame, tell the trip, and say whether the trip goes on.
fn settle<T: Trip>(
    trip: &mut T,
    attempt: &mut T::Attempt,
    state: Option<&Arc<EndpointState>>,
    failure: Failure,
    policy: &Policy,
    again: bool,
    sent: Instant,
) -> Flow {
    let ejected_for = match state {
        Some(s) if failure.ejects() => Some(s.record_failure()),
        _ => None,
    };
    let goes_on = again && failure.may_retry(&policy.retry);
    trip.failed(
        attempt,
        &Failed {
            failure: &failure,
            ejected_for,
            again: goes_on,
            elapsed: sent.elapsed(),
        },
    );
    if goes_on {
        Flow::Again(failure)
    } else {
        Flow::End(failure)
    }
}

/// What a send error says: the client's body failed, the connection was never made, or it
/// broke before the answer.
fn classify(e: &(dyn std::error::Error + 'static), endpoint: usize, connect: bool) -> Failure {
    if chain_has::<ClientBodyError>(e) {
        return Failure::Client(client_fault(e));
    }
    let reason = crate::error::chain_text(e);
    if connect {
        Failure::Connect { endpoint, reason }
    } else {
        Failure::Broken { endpoint, reason }
    }
}

/// How a client's body failed, from the error it ended with.
pub fn client_fault(e: &(dyn std::error::Error + 'static)) -> ClientFault {
    if chain_has::<http_body_util::LengthLimitError>(e) {
        ClientFault::TooLarge
    } else if chain_has::<crate::serve::BodyTimeout>(e) {
        ClientFault::ReadTimeout
    } else {
        ClientFault::Invalid
    }
}

/// Whether `e` or any of its sources is an `E`.
pub fn chain_has<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}
