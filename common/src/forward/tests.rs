//! The attempt loop driven by a fake `send`: what each failure does to the endpoint and
//! to the request, under each policy.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};

use super::*;
use crate::balance::{Balancer, EndpointState};
use crate::config::Strategy;

/// What the fake upstream does with one attempt.
#[derive(Clone)]
enum Act {
    Answer(u16, Vec<(&'static str, &'static str)>),
    Refuse,
    Break,
    /// Read the request body to its end, then answer 200 (its errors become the send's).
    Drain,
    Hang,
}

#[derive(Debug, thiserror::Error)]
#[error("fake: {what}")]
struct FakeError {
    what: String,
    connect: bool,
    #[source]
    source: Option<crate::body::BoxError>,
}

impl SendError for FakeError {
    fn is_connect(&self) -> bool {
        self.connect
    }
}

#[derive(Default)]
struct Fake {
    script: VecDeque<Act>,
    /// (endpoint, attempt number, again) per attempt sent.
    sent: Vec<(usize, usize, bool)>,
    answered: Vec<u16>,
    failed: Vec<(&'static str, bool, bool)>,
    retries: usize,
}

type Sending = Pin<Box<dyn Future<Output = Result<Response<()>, FakeError>> + Send>>;

impl Trip for Fake {
    type Body = ();
    type Error = FakeError;
    type Attempt = usize;
    type Future = Sending;

    fn send(&mut self, a: Attempt) -> Result<(usize, Sending), Failure> {
        self.sent.push((a.endpoint, a.number, a.again));
        let act = self.script.pop_front().unwrap_or(Act::Answer(200, vec![]));
        let body = a.body;
        let fut: Sending = Box::pin(async move {
            match act {
                Act::Answer(status, headers) => {
                    let mut r = Response::new(());
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    for (k, v) in headers {
                        r.headers_mut().insert(k, v.parse().unwrap());
                    }
                    Ok(r)
                }
                Act::Refuse => Err(FakeError {
                    what: "refused".into(),
                    connect: true,
                    source: None,
                }),
                Act::Break => Err(FakeError {
                    what: "reset".into(),
                    connect: false,
                    source: None,
                }),
                Act::Drain => match http_body_util::BodyExt::collect(body).await {
                    Ok(_) => Ok(Response::new(())),
                    Err(e) => Err(FakeError {
                        what: "body".into(),
                        connect: false,
                        source: Some(e),
                    }),
                },
                Act::Hang => std::future::pending().await,
            }
        });
        Ok((a.number, fut))
    }

    fn answered(&mut self, _: &mut usize, _: usize, status: StatusCode, _: Duration) {
        self.answered.push(status.as_u16());
    }

    fn failed(&mut self, _: &mut usize, f: &Failed<'_>) {
        self.failed.push((f.failure.kind(), f.ejected_for.is_some(), f.again));
    }

    fn retrying(&mut self, _: usize) {
        self.retries += 1;
    }
}

fn fake(script: &[Act]) -> Fake {
    Fake {
        script: script.iter().cloned().collect(),
        ..Fake::default()
    }
}

struct Pool {
    balancer: Balancer,
    states: Vec<Arc<EndpointState>>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        Pool {
            balancer: Balancer::new(Strategy::Wrr, vec![1; n]),
            states: (0..n).map(|_| Arc::new(EndpointState::default())).collect(),
        }
    }
    fn endpoints(&self) -> Balanced<'_> {
        Balanced {
            balancer: &self.balancer,
            states: &self.states,
        }
    }
    fn healthy(&self) -> Vec<bool> {
        let now = std::time::Instant::now();
        self.states.iter().map(|s| s.is_healthy(now)).collect()
    }
}

/// The default for a bodyless GET: each endpoint once, connect and broken retried.
fn bodyless(max: usize) -> Policy {
    Policy {
        max_attempts: max,
        resendable: true,
        retry: RetryOn {
            connect: true,
            broken: true,
            app_unreachable: true,
            ..RetryOn::default()
        },
        ..Policy::default()
    }
}

fn once() -> RequestBody {
    RequestBody::Once(empty())
}

#[tokio::test]
async fn a_refused_connection_goes_to_the_next_endpoint_and_ejects_the_first() {
    let pool = Pool::new(3);
    let mut trip = fake(&[Act::Refuse, Act::Answer(200, vec![])]);
    let answer = forward(&mut trip, &pool.endpoints(), &bodyless(3), once())
        .await
        .unwrap();
    assert_eq!(answer.response.status(), 200);
    assert!(answer.failure.is_none());
    assert_eq!(trip.sent.len(), 2);
    assert_ne!(trip.sent[0].0, trip.sent[1].0, "another endpoint");
    assert_eq!(trip.failed, vec![("connect", true, true)]);
    assert_eq!(trip.retries, 1);
    let healthy = pool.healthy();
    assert!(!healthy[trip.sent[0].0] && healthy[trip.sent[1].0]);
}

#[tokio::test]
async fn a_request_that_cannot_go_again_ends_at_the_first_failure() {
    let pool = Pool::new(3);
    let mut trip = fake(&[Act::Break, Act::Answer(200, vec![])]);
    let policy = Policy {
        resendable: false,
        ..bodyless(3)
    };
    let err = forward(&mut trip, &pool.endpoints(), &policy, once())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Failure::Broken { .. }), "{err:?}");
    assert_eq!(
        trip.sent,
        vec![(trip.sent[0].0, 0, false)],
        "one attempt, told none follows"
    );
    assert_eq!(trip.failed, vec![("upstream", true, false)]);
}

#[tokio::test]
async fn attempts_stop_at_the_maximum_with_the_last_failure() {
    let pool = Pool::new(5);
    let mut trip = fake(&[Act::Refuse, Act::Refuse, Act::Refuse, Act::Refuse]);
    let err = forward(&mut trip, &pool.endpoints(), &bodyless(3), once())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Failure::Connect { .. }));
    assert_eq!(trip.sent.len(), 3);
    assert_eq!(
        trip.sent.iter().map(|s| s.2).collect::<Vec<_>>(),
        vec![true, true, false],
        "the last attempt knows it is the last"
    );
    assert_eq!(pool.healthy().iter().filter(|h| !**h).count(), 3);
}

#[tokio::test]
async fn every_endpoint_tried_once_without_revisit() {
    let pool = Pool::new(2);
    let mut trip = fake(&[Act::Refuse, Act::Refuse, Act::Refuse]);
    let err = forward(&mut trip, &pool.endpoints(), &bodyless(5), once())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, Failure::Connect { .. }),
        "the last failure, not NoEndpoint"
    );
    assert_eq!(trip.sent.len(), 2);
}

#[tokio::test]
async fn a_timeout_ejects_but_goes_again_only_when_the_policy_says() {
    let pool = Pool::new(2);
    let policy = Policy {
        response_timeout: Some(Duration::from_millis(30)),
        ..bodyless(2)
    };
    let mut trip = fake(&[Act::Hang, Act::Answer(200, vec![])]);
    let err = forward(&mut trip, &pool.endpoints(), &policy, once())
        .await
        .err()
        .unwrap();
    assert_eq!(
        err,
        Failure::Timeout {
            endpoint: trip.sent[0].0,
            after: Duration::from_millis(30)
        }
    );
    assert_eq!(trip.failed, vec![("timeout", true, false)]);

    let pool = Pool::new(2);
    let policy = Policy {
        retry: RetryOn {
            timeout: true,
            ..policy.retry.clone()
        },
        ..policy
    };
    let mut trip = fake(&[Act::Hang, Act::Answer(200, vec![])]);
    let answer = forward(&mut trip, &pool.endpoints(), &policy, once()).await.unwrap();
    assert_eq!(answer.response.status(), 200);
    assert_eq!(trip.failed, vec![("timeout", true, true)]);
}

#[tokio::test]
async fn the_grpc_deadline_ends_the_call_without_blaming_the_endpoint() {
    let pool = Pool::new(2);
    let policy = Policy {
        response_timeout: Some(Duration::from_secs(60)),
        grpc_deadline: Some(tokio::time::Instant::now() + Duration::from_millis(30)),
        retry: RetryOn {
            timeout: true,
            ..bodyless(2).retry
        },
        ..bodyless(2)
    };
    let mut trip = fake(&[Act::Hang]);
    let err = forward(&mut trip, &pool.endpoints(), &policy, once())
        .await
        .err()
        .unwrap();
    assert_eq!(err, Failure::Deadline);
    assert_eq!(trip.sent.len(), 1);
    assert_eq!(trip.failed, vec![("deadline_exceeded", false, false)]);
    assert!(pool.healthy().iter().all(|h| *h));
}

#[tokio::test]
async fn a_sidecar_whose_app_is_gone_sends_the_call_elsewhere_or_its_answer_on() {
    let gone = || Act::Answer(503, vec![(crate::http::UNREACHABLE_HEADER, "app")]);
    let pool = Pool::new(2);
    let mut trip = fake(&[gone(), Act::Answer(200, vec![])]);
    let answer = forward(&mut trip, &pool.endpoints(), &bodyless(2), once())
        .await
        .unwrap();
    assert_eq!(answer.response.status(), 200);
    assert_eq!(trip.answered, vec![503, 200]);
    assert_eq!(trip.failed, vec![("app_unreachable", true, true)]);

    // Out of attempts: the sidecar's own answer is passed on, marked as a failure.
    let pool = Pool::new(1);
    let mut trip = fake(&[gone()]);
    let answer = forward(&mut trip, &pool.endpoints(), &bodyless(1), once())
        .await
        .unwrap();
    assert_eq!(answer.response.status(), 503);
    assert_eq!(answer.failure, Some(Failure::AppUnreachable { endpoint: 0 }));
    // Attempts left but no endpoint: none is available (the answer was a failure).
    let pool = Pool::new(1);
    let mut trip = fake(&[gone()]);
    let err = forward(&mut trip, &pool.endpoints(), &bodyless(5), once())
        .await
        .err()
        .unwrap();
    assert_eq!(err, Failure::NoEndpoint);

    // Not from a sidecar: an ordinary 503, answered as it is and the endpoint kept.
    let pool = Pool::new(2);
    let mut trip = fake(&[gone()]);
    let policy = Policy {
        retry: RetryOn {
            app_unreachable: false,
            ..bodyless(2).retry
        },
        ..bodyless(2)
    };
    let answer = forward(&mut trip, &pool.endpoints(), &policy, once()).await.unwrap();
    assert_eq!(answer.response.status(), 503);
    assert!(answer.failure.is_none() && trip.failed.is_empty());
    assert!(pool.healthy().iter().all(|h| *h));
}

#[tokio::test]
async fn a_retryable_grpc_status_goes_again_only_with_a_kept_body() {
    let unavailable = || Act::Answer(200, vec![("grpc-status", "14")]);
    let policy = Policy {
        retry: RetryOn {
            grpc_codes: vec![14],
            ..bodyless(3).retry
        },
        ..bodyless(3)
    };
    let pool = Pool::new(3);
    let mut trip = fake(&[unavailable(), Act::Answer(200, vec![("grpc-status", "0")])]);
    let body = RequestBody::Replay(Bytes::from_static(b"\0\0\0\0\x02hi"));
    let answer = forward(&mut trip, &pool.endpoints(), &policy, body).await.unwrap();
    assert_eq!(answer.response.headers()["grpc-status"], "0");
    assert_eq!(trip.failed, vec![("grpc_status", true, true)]);

    // A body sent once cannot go again: the status is the answer.
    let pool = Pool::new(3);
    let mut trip = fake(&[unavailable()]);
    let answer = forward(&mut trip, &pool.endpoints(), &policy, once()).await.unwrap();
    assert_eq!(answer.response.headers()["grpc-status"], "14");
    assert!(answer.failure.is_none() && trip.sent.len() == 1);
}

#[tokio::test]
async fn a_failing_client_body_is_the_clients_fault() {
    let pool = Pool::new(2);
    let limited = http_body_util::Limited::new(crate::body::full(vec![0u8; 100]), 10);
    let body = RequestBody::Once(crate::body::from_client(limited));
    let mut trip = fake(&[Act::Drain, Act::Answer(200, vec![])]);
    let err = forward(&mut trip, &pool.endpoints(), &bodyless(2), body)
        .await
        .err()
        .unwrap();
    assert_eq!(err, Failure::Client(ClientFault::TooLarge));
    assert_eq!(trip.sent.len(), 1);
    assert_eq!(trip.failed, vec![("body_too_large", false, false)]);
    assert!(pool.healthy().iter().all(|h| *h), "no endpoint is ejected for it");
}

#[tokio::test]
async fn revisit_waits_for_ejected_endpoints_with_doubling_backoff() {
    let pool = Pool::new(1);
    let policy = Policy {
        revisit: true,
        backoff: Some(Duration::from_millis(20)),
        ..bodyless(4)
    };
    let mut trip = fake(&[Act::Refuse, Act::Refuse, Act::Refuse, Act::Refuse]);
    let t0 = std::time::Instant::now();
    let err = forward(&mut trip, &pool.endpoints(), &policy, once())
        .await
        .err()
        .unwrap();
    // One send; then the only endpoint is ejected, so three more looks find none; the
    // waits before attempts 2, 3 and 4 are 20 + 40 + 80 ms.
    assert!(matches!(err, Failure::Connect { .. }), "{err:?}");
    assert_eq!(trip.sent.len(), 1);
    assert!(t0.elapsed() >= Duration::from_millis(140), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn one_endpoint_is_asked_again_on_a_broken_connection() {
    let mut trip = fake(&[Act::Break, Act::Answer(200, vec![])]);
    let policy = Policy {
        max_attempts: 2,
        resendable: true,
        retry: RetryOn {
            broken: true,
            ..RetryOn::default()
        },
        ..Policy::default()
    };
    let answer = forward(&mut trip, &One, &policy, once()).await.unwrap();
    assert_eq!(answer.response.status(), 200);
    assert_eq!(trip.sent, vec![(0, 0, true), (0, 1, false)]);
    // A refused connection is not retried by this policy.
    let mut trip = fake(&[Act::Refuse, Act::Answer(200, vec![])]);
    let err = forward(&mut trip, &One, &policy, once()).await.err().unwrap();
    assert!(matches!(err, Failure::Connect { endpoint: 0, .. }));
    assert_eq!(trip.failed, vec![("connect", false, false)]);
}

#[test]
fn failures_say_whether_they_eject_and_may_go_again() {
    let all = RetryOn {
        connect: true,
        broken: true,
        timeout: true,
        app_unreachable: true,
        grpc_codes: vec![14],
        statuses: vec![(502, 504)],
    };
    let cases = [
        (Failure::NoEndpoint, false, false),
        (
            Failure::Connect {
                endpoint: 0,
                reason: String::new(),
            },
            true,
            true,
        ),
        (
            Failure::Broken {
                endpoint: 0,
                reason: String::new(),
            },
            true,
            true,
        ),
        (
            Failure::Timeout {
                endpoint: 0,
                after: Duration::ZERO,
            },
            true,
            true,
        ),
        (Failure::AppUnreachable { endpoint: 0 }, true, true),
        (Failure::GrpcStatus { endpoint: 0, code: 14 }, true, true),
        (Failure::GrpcStatus { endpoint: 0, code: 13 }, true, false),
        // An answer is the server's to give: it goes again, without ejecting the server.
        (
            Failure::Status {
                endpoint: 0,
                status: 503,
            },
            false,
            true,
        ),
        (
            Failure::Status {
                endpoint: 0,
                status: 500,
            },
            false,
            false,
        ),
        (Failure::Deadline, false, false),
        (Failure::Client(ClientFault::Invalid), false, false),
        (
            Failure::Unsendable {
                endpoint: 0,
                reason: String::new(),
            },
            false,
            false,
        ),
    ];
    for (f, ejects, retries) in cases {
        assert_eq!(f.ejects(), ejects, "{f:?}");
        assert_eq!(f.may_retry(&all), retries, "{f:?}");
        assert!(!f.may_retry(&RetryOn::default()), "{f:?}");
    }
}
