//! The ECS API as the reconciler uses it: every call goes through one client-side rate
//! limiter, is retried on throttling and server errors with exponential back-off and
//! full jitter, and is counted per operation and outcome for `/metrics`.
//!
//! The SDK's own retries are disabled so that every attempt is seen and counted here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{ContainerInstance, DesiredStatus, Failure, Task, TaskDefinition};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Why an API call failed, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("cluster {cluster} not found")]
    ClusterNotFound { cluster: String },
    #[error("access denied to ecs:{operation} (grant it in the gateway's task role): {message}")]
    AccessDenied { operation: &'static str, message: String },
    #[error("ecs:{operation} throttled after {attempts} attempts")]
    Throttled { operation: &'static str, attempts: u32 },
    #[error("ecs:{operation} failed: {message}")]
    Other { operation: &'static str, message: String },
}

/// A token bucket shared by every cluster's reconciler.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    state: tokio::sync::Mutex<(f64, Instant)>,
    rate: f64,
    burst: f64,
}

impl RateLimiter {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            state: tokio::sync::Mutex::new((burst, Instant::now())),
            rate: rate.max(0.1),
            burst: burst.max(1.0),
        }
    }

    /// Wait for one token.
    pub(crate) async fn acquire(&self) {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let (tokens, last) = *st;
        let mut tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - tokens) / self.rate);
            tokio::time::sleep(wait).await;
            tokens = 1.0;
        }
        *st = (tokens - 1.0, Instant::now());
    }
}

#[derive(Clone)]
pub(crate) struct EcsApi {
    client: aws_sdk_ecs::Client,
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
    max_attempts: u32,
}

enum Class {
    Retry { throttled: bool },
    Fatal(ApiError),
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(op: &'static str, cluster: &str, err: &SdkError<E>) -> Class {
    let code = err.code().unwrap_or_default();
    let message = err.message().map(str::to_string).unwrap_or_else(|| format!("{err:?}"));
    match code {
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => Class::Retry { throttled: true },
        "ClusterNotFoundException" => Class::Fatal(ApiError::ClusterNotFound {
            cluster: cluster.to_string(),
        }),
        "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => {
            Class::Fatal(ApiError::AccessDenied { operation: op, message })
        }
        "ServerException" | "ServiceUnavailableException" | "InternalFailure" => Class::Retry { throttled: false },
        _ => match err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Class::Retry { throttled: false },
            SdkError::ResponseError(_) => Class::Retry { throttled: false },
            SdkError::ServiceError(s) if s.raw().status().is_server_error() => Class::Retry { throttled: false },
            _ => Class::Fatal(ApiError::Other { operation: op, message }),
        },
    }
}

impl EcsApi {
    pub(crate) fn new(client: aws_sdk_ecs::Client, limiter: Arc<RateLimiter>, metrics: Arc<Metrics>) -> Self {
        EcsApi {
            client,
            limiter,
            metrics,
            max_attempts: 5,
        }
    }

    async fn call<T, E, F, Fut>(&self, op: &'static str, cluster: &str, mut f: F) -> Result<T, ApiError>
    where
        E: ProvideErrorMetadata + std::fmt::Debug,
        F: FnMut(aws_sdk_ecs::Client) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.limiter.acquire().await;
            match f(self.client.clone()).await {
                Ok(v) => {
                    self.metrics.ecs_api_calls.add(op, "ok");
                    return Ok(v);
                }
                Err(e) => match classify(op, cluster, &e) {
                    Class::Fatal(err) => {
                        self.metrics.ecs_api_calls.add(op, "error");
                        return Err(err);
                    }
                    Class::Retry { throttled } => {
                        self.metrics
                            .ecs_api_calls
                            .add(op, if throttled { "throttled" } else { "error" });
                        if attempt >= self.max_attempts {
                            return Err(if throttled {
                                ApiError::Throttled {
                                    operation: op,
                                    attempts: attempt,
                                }
                            } else {
                                ApiError::Other {
                                    operation: op,
                                    message: e.message().map(str::to_string).unwrap_or_else(|| format!("{e}")),
                                }
                            });
                        }
                        // Exponential back-off with full jitter: 100 ms, 200 ms, ... capped at 5 s.
                        let cap = Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5));
                        let wait = cap.mul_f64(fastrand::f64());
                        tracing::debug!(op, attempt, ?wait, throttled, "retrying ECS call");
                        tokio::time::sleep(wait).await;
                    }
                },
            }
        }
    }

    /// All cluster ARNs (ListClusters, every page).
    pub(crate) async fn list_clusters(&self) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let t = token.clone();
            let page = self
                .call("ListClusters", "", |c| {
                    c.list_clusters().set_next_token(t.clone()).send()
                })
                .await?;
            out.extend(page.cluster_arns().iter().cloned());
            match page.next_token() {
                Some(n) if !n.is_empty() => token = Some(n.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Task ARNs whose desired status is RUNNING (ListTasks, every page of 100).
    pub(crate) async fn list_running_tasks(&self, cluster: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let t = token.clone();
            let page = self
                .call("ListTasks", cluster, |c| {
                    c.list_tasks()
                        .cluster(cluster)
                        .desired_status(DesiredStatus::Running)
                        .max_results(100)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            out.extend(page.task_arns().iter().cloned());
            match page.next_token() {
                Some(n) if !n.is_empty() => token = Some(n.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// The tasks ECS counts in `service` (ListTasks with `serviceName`, every page): the
    /// authority on membership, unlike a task's `group`, which whoever runs it sets.
    pub(crate) async fn list_service_tasks(&self, cluster: &str, service: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let t = token.clone();
            let page = self
                .call("ListTasks", cluster, |c| {
                    c.list_tasks()
                        .cluster(cluster)
                        .service_name(service)
                        .desired_status(DesiredStatus::Running)
                        .max_results(100)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            out.extend(page.task_arns().iter().cloned());
            match page.next_token() {
                Some(n) if !n.is_empty() => token = Some(n.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Whether the cluster has a service of this name that is not gone (DescribeServices).
    pub(crate) async fn service_exists(&self, cluster: &str, service: &str) -> Result<bool, ApiError> {
        let out = self
            .call("DescribeServices", cluster, |c| {
                c.describe_services().cluster(cluster).services(service).send()
            })
            .await?;
        Ok(out
            .services()
            .iter()
            .any(|s| s.service_name() == Some(service) && s.status() != Some("INACTIVE")))
    }

    /// DescribeTasks for at most 100 ARNs.
    pub(crate) async fn describe_tasks(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<(Vec<Task>, Vec<Failure>), ApiError> {
        let out = self
            .call("DescribeTasks", cluster, |c| {
                c.describe_tasks()
                    .cluster(cluster)
                    .set_tasks(Some(arns.to_vec()))
                    .send()
            })
            .await?;
        Ok((out.tasks().to_vec(), out.failures().to_vec()))
    }

    pub(crate) async fn describe_task_definition(&self, arn: &str) -> Result<Option<TaskDefinition>, ApiError> {
        let out = self
            .call("DescribeTaskDefinition", "", |c| {
                c.describe_task_definition().task_definition(arn).send()
            })
            .await?;
        Ok(out.task_definition().cloned())
    }

    /// DescribeContainerInstances for at most 100 ARNs.
    pub(crate) async fn describe_container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ContainerInstance>, ApiError> {
        let out = self
            .call("DescribeContainerInstances", cluster, |c| {
                c.describe_container_instances()
                    .cluster(cluster)
                    .set_container_instances(Some(arns.to_vec()))
                    .send()
            })
            .await?;
        Ok(out.container_instances().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_calls_after_the_burst() {
        let l = RateLimiter::new(10.0, 2.0);
        let start = Instant::now();
        for _ in 0..4 {
            l.acquire().await;
        }
        // Two from the burst, then two at 10/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(260),
            "{took:?}"
        );
    }
}
