//! The one EC2 call discovery needs, `ec2:DescribeInstances` (bridge and host modes: a
//! container instance's private IP), signed with SigV4 by hand instead of pulling in
//! `aws-sdk-ec2`, which takes minutes and gigabytes to compile for this single query.
//!
//! The endpoint is `AWS_ENDPOINT_URL_EC2`, else the SDK configuration's endpoint URL
//! (`AWS_ENDPOINT_URL`), else `https://ec2.<region>.amazonaws.com`.

use std::collections::HashMap;
use std::sync::Arc;

use super::client::{ApiError, RateLimiter};
use super::reconcile::{AddressesFuture, InstanceAddresses};
use crate::metrics::Metrics;
use berth_common::http::xml_text as tag;

const OP: &str = "DescribeInstances";

pub(crate) struct Ec2Lookup {
    pub api: crate::aws::Signed,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
}

impl Ec2Lookup {
    async fn describe(&self, ids: &[String]) -> Result<HashMap<String, String>, ApiError> {
        let other = |message: String| ApiError::Other { operation: OP, message };
        let mut body = String::from("Action=DescribeInstances&Version=2016-11-15");
        for (i, id) in ids.iter().enumerate() {
            body.push_str(&format!("&InstanceId.{}={}", i + 1, id));
        }
        self.limiter.acquire().await;
        // A page describes up to 100 instances of several kilobytes each.
        let answer = self
            .api
            .call(
                "POST",
                "/",
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                body.into_bytes(),
                16 * berth_common::http::MAX_DOCUMENT_BYTES,
            )
            .await;
        let (status, text) = match answer {
            Ok(r) => r,
            Err(e) => {
                self.metrics.ecs_api_calls.add(OP, "error");
                return Err(other(e));
            }
        };
        if !status.is_success() {
            let code = tag(&text, "Code").unwrap_or_default().to_string();
            let message = tag(&text, "Message").map_or_else(|| status.to_string(), str::to_string);
            return Err(match code.as_str() {
                "UnauthorizedOperation" | "AuthFailure" => {
                    self.metrics.ecs_api_calls.add(OP, "error");
                    ApiError::AccessDenied { operation: OP, message }
                }
                "RequestLimitExceeded" => {
                    self.metrics.ecs_api_calls.add(OP, "throttled");
                    ApiError::Throttled {
                        operation: OP,
                        attempts: 1,
                    }
                }
                _ => {
                    self.metrics.ecs_api_calls.add(OP, "error");
                    other(format!("{code}: {message}"))
                }
            });
        }
        self.metrics.ecs_api_calls.add(OP, "ok");
        Ok(parse_instances(&text))
    }
}

impl InstanceAddresses for Ec2Lookup {
    fn lookup<'a>(&'a self, ids: &'a [String]) -> AddressesFuture<'a> {
        Box::pin(self.describe(ids))
    }
}

/// Instance id -> private IP from a DescribeInstances response. Each instance's own
/// `privateIpAddress` is the first one after its `instanceId` (network interfaces,
/// which repeat the tag, come later in the item).
pub(crate) fn parse_instances(xml: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for chunk in xml.split("<instanceId>").skip(1) {
        let Some(id_end) = chunk.find("</instanceId>") else {
            continue;
        };
        let id = &chunk[..id_end];
        if let Some(ip) = tag(chunk, "privateIpAddress") {
            out.insert(id.to_string(), ip.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instance_addresses() {
        let xml = r#"<DescribeInstancesResponse><reservationSet><item><instancesSet>
            <item><instanceId>i-1</instanceId><privateIpAddress>10.0.0.5</privateIpAddress>
              <networkInterfaceSet><item><privateIpAddress>10.0.0.5</privateIpAddress></item></networkInterfaceSet></item>
            <item><instanceId>i-2</instanceId><privateIpAddress>10.0.0.6</privateIpAddress></item>
            </instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let m = parse_instances(xml);
        assert_eq!(m["i-1"], "10.0.0.5");
        assert_eq!(m["i-2"], "10.0.0.6");
        assert_eq!(m.len(), 2);
    }
}
