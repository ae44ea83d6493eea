//! The AWS SDK's configuration, built one way for every AWS client the gateway has (ECS
//! discovery, the shared ACME store): the region from the flag, `AWS_REGION` or the
//! profile, never from the instance metadata service (ECS sets `AWS_REGION` in every
//! container); credentials from the standard chain (the task role on ECS) unless given;
//! endpoints from the standard variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_ECS`,
//! `AWS_ENDPOINT_URL_DYNAMODB`). The SDK's own retries are off: each client retries in
//! its own way. [`Signed`] makes the calls the gateway signs itself.

use aws_config::BehaviorVersion;
use aws_config::SdkConfig;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use berth_common::body::{Body, BoxError};
use berth_common::upstream::Connector;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use std::time::{Duration, SystemTime};

/// The configuration, or why there is none (no region).
pub(crate) async fn sdk_config(
    region: Option<String>,
    credentials: Option<aws_credential_types::Credentials>,
) -> Result<SdkConfig, String> {
    let region = RegionProviderChain::first_try(region.map(aws_config::Region::new))
        .or_else(EnvironmentVariableRegionProvider::new())
        .or_else(ProfileFileRegionProvider::new());
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .region(region);
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err("no AWS region".into());
    }
    Ok(sdk)
}

/// Calls to an AWS API the gateway signs itself (SigV4) instead of compiling a whole SDK
/// crate for one or two operations: EC2's DescribeInstances, Route 53's record changes.
/// Answers are bounded; each call is bounded in time.
pub(crate) struct Signed {
    /// `https://host` (or a test's `http://127.0.0.1:port`), no path.
    pub endpoint: String,
    /// The region of the signature (`us-east-1` for global services like Route 53).
    pub region: String,
    /// The signing name (`ec2`, `route53`).
    pub service: &'static str,
    pub credentials: SharedCredentialsProvider,
    pub client: Client<Connector, Body>,
}

/// How long one signed call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

impl Signed {
    pub(crate) fn new(
        endpoint: String,
        region: String,
        service: &'static str,
        credentials: SharedCredentialsProvider,
        roots: rustls::RootCertStore,
    ) -> Signed {
        Signed {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            service,
            credentials,
            client: berth_common::upstream::pool(Duration::from_secs(90))
                .build(Connector::new(Duration::from_secs(5), roots)),
        }
    }

    /// `method path` with `body` (and its content type): the status and at most
    /// `max_answer` bytes of the answer, as text.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        max_answer: usize,
    ) -> Result<(http::StatusCode, String), String> {
        tokio::time::timeout(
            CALL_TIMEOUT,
            self.call_unbounded(method, path, content_type, body, max_answer),
        )
        .await
        .unwrap_or_else(|_| Err(format!("{}: no answer within {CALL_TIMEOUT:?}", self.service)))
    }

    async fn call_unbounded(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        max_answer: usize,
    ) -> Result<(http::StatusCode, String), String> {
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| format!("no AWS credentials: {e}"))?;
        let identity: Identity = creds.into();
        let url = format!("{}{path}", self.endpoint);
        let uri: http::Uri = url.parse().map_err(|e| format!("bad {} endpoint: {e}", self.service))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing: {e}"))?
            .into();
        let mut headers = vec![("host", host.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let signable = SignableRequest::new(
            method,
            url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| format!("signing: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing: {e}"))?
            .into_parts();
        let mut req = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers.iter().copied().chain(instructions.headers()) {
            req = req.header(name, value);
        }
        let req = req
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|e| -> BoxError { match e {} })
                    .boxed(),
            )
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| berth_common::error::chain_text(&e))?;
        let status = resp.status();
        let text = http_body_util::Limited::new(resp.into_body(), max_answer)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .map_err(|e| format!("{} answer: {e}", self.service))?;
        Ok((status, text))
    }
}
