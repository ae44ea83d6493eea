//! The AWS SDK's configuration, built one way for every AWS client the gateway has (ECS
//! discovery, the shared ACME store): the region from the flag, `AWS_REGION` or the
//! profile, never from the instance metadata service (ECS sets `AWS_REGION` in every
//! container); credentials from the standard chain (the task role on ECS) unless given;
//! endpoints from the standard variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_ECS`,
//! `AWS_ENDPOINT_URL_DYNAMODB`). The SDK's own retries are off: each client retries in
//! its own way.

use aws_config::BehaviorVersion;
use aws_config::SdkConfig;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;

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
