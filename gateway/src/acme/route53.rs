//! DNS-01 with Route 53 (`dnsChallenge.provider: route53`, as lego's provider that
//! Traefik uses): the TXT records `_acme-challenge.<name>` put in the hosted zone that
//! holds the name (`AWS_HOSTED_ZONE_ID`, else the longest public zone found by
//! `ListHostedZonesByName`), waited for until Route 53 says `INSYNC` (every one of its
//! authoritative servers has them), and deleted afterwards. Several values for one name
//! (a name and its wildcard) go in one record set. Signed by hand (`crate::aws::Signed`):
//! three REST calls do not need the Route 53 SDK crate.
//!
//! The endpoint is `AWS_ENDPOINT_URL_ROUTE_53`, else `AWS_ENDPOINT_URL`, else Route 53's
//! in the gateway region's partition (aws, aws-cn, aws-us-gov); credentials come from the standard chain (the task
//! role on ECS); `AWS_TTL` sets the records' TTL (default 10 s, as lego's).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_common::http::xml_text as tag;

use crate::aws::Signed;

const API: &str = "/2013-04-01";
/// The largest answer read (a hosted zone list page, a change).
const MAX_ANSWER: usize = 256 * 1024;
/// How long a change may take to be `INSYNC` (Route 53 usually takes under a minute).
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);

pub(super) struct Route53 {
    api: Signed,
    zone_override: Option<String>,
    ttl: u32,
}

/// The records of one order, to delete afterwards.
#[derive(Debug, Default)]
pub(super) struct Records {
    /// (zone, record name) -> values.
    sets: BTreeMap<(String, String), Vec<String>>,
}

/// The record DNS-01 asks for: `_acme-challenge.<name>.`, a wildcard's under its base.
pub(super) fn record_name(identifier: &str) -> String {
    let base = identifier.strip_prefix("*.").unwrap_or(identifier);
    format!("_acme-challenge.{}.", base.trim_end_matches('.').to_ascii_lowercase())
}

/// Route 53's signing region and endpoint in the partition of `region`.
fn partition(region: &str) -> (&'static str, &'static str) {
    if region.starts_with("cn-") {
        ("cn-northwest-1", "https://route53.amazonaws.com.cn")
    } else if region.starts_with("us-gov-") {
        ("us-gov-west-1", "https://route53.us-gov.amazonaws.com")
    } else {
        ("us-east-1", "https://route53.amazonaws.com")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Route53 {
    /// `region`: the gateway's, for its partition (Route 53 is global within one).
    pub(super) async fn new(region: Option<String>) -> Result<Route53, String> {
        let regional = crate::aws::sdk_config(region, None).await.ok();
        let partition = partition(regional.as_ref().and_then(|c| c.region()).map_or("", |r| r.as_ref()));
        let sdk = crate::aws::sdk_config(Some(partition.0.into()), None).await?;
        let credentials = sdk
            .credentials_provider()
            .ok_or("dnsChallenge route53: no AWS credentials provider")?;
        let endpoint = std::env::var("AWS_ENDPOINT_URL_ROUTE_53")
            .ok()
            .or_else(|| sdk.endpoint_url().map(str::to_string))
            .unwrap_or_else(|| partition.1.into());
        let roots = berth_common::upstream::trust_roots(None).map_err(|e| e.to_string())?;
        let ttl = std::env::var("AWS_TTL")
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|t| (1..=86_400).contains(t))
            .unwrap_or(10);
        Ok(Route53 {
            // Route 53 is global: its signatures are scoped to its partition's first region.
            api: Signed::new(endpoint, partition.0.into(), "route53", credentials, roots),
            zone_override: std::env::var("AWS_HOSTED_ZONE_ID").ok().filter(|z| !z.is_empty()),
            ttl,
        })
    }

    async fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<String, String> {
        let content_type = body.as_ref().map(|_| "application/xml");
        let (status, text) = self
            .api
            .call(
                method,
                path,
                content_type,
                body.unwrap_or_default().into_bytes(),
                MAX_ANSWER,
            )
            .await?;
        if !status.is_success() {
            let code = tag(&text, "Code").unwrap_or_default();
            let message = tag(&text, "Message").unwrap_or_default();
            return Err(format!("Route 53 {method} {path}: {status} {code}: {message}"));
        }
        Ok(text)
    }

    /// The public hosted zone holding `record` (a fully qualified name): its ID.
    async fn zone_for(&self, record: &str) -> Result<String, String> {
        if let Some(z) = &self.zone_override {
            return Ok(z.trim_start_matches("/hostedzone/").to_string());
        }
        let labels: Vec<&str> = record.trim_end_matches('.').split('.').collect();
        // `_acme-challenge.a.b.test.`: a.b.test, b.test, test (never the record itself).
        for i in 1..labels.len() {
            let candidate = format!("{}.", labels[i..].join("."));
            let text = self
                .call(
                    "GET",
                    &format!(
                        "{API}/hostedzonesbyname?dnsname={}&maxitems=100",
                        candidate.trim_end_matches('.')
                    ),
                    None,
                )
                .await?;
            for zone in text.split("<HostedZone>").skip(1) {
                let name = tag(zone, "Name").unwrap_or_default().to_ascii_lowercase();
                let private = tag(zone, "PrivateZone") == Some("true");
                if name == candidate && !private {
                    let id = tag(zone, "Id").unwrap_or_default();
                    return Ok(id.trim_start_matches("/hostedzone/").to_string());
                }
            }
        }
        Err(format!("no public Route 53 hosted zone holds {record}"))
    }

    async fn change(&self, zone: &str, action: &str, name: &str, values: &[String]) -> Result<String, String> {
        let records: String = values
            .iter()
            .map(|v| format!("<ResourceRecord><Value>\"{}\"</Value></ResourceRecord>", xml_escape(v)))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <ChangeResourceRecordSetsRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\">\
             <ChangeBatch><Comment>ACME DNS-01 by Berth</Comment><Changes><Change><Action>{action}</Action>\
             <ResourceRecordSet><Name>{}</Name><Type>TXT</Type><TTL>{}</TTL><ResourceRecords>{records}</ResourceRecords>\
             </ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>",
            xml_escape(name),
            self.ttl
        );
        let text = self
            .call("POST", &format!("{API}/hostedzone/{zone}/rrset/"), Some(body))
            .await?;
        Ok(tag(&text, "Id")
            .unwrap_or_default()
            .trim_start_matches("/change/")
            .to_string())
    }

    /// Put `value` for `identifier` (with the values already put for the same record).
    pub(super) async fn present(&self, records: &mut Records, identifier: &str, value: &str) -> Result<(), String> {
        let name = record_name(identifier);
        let zone = self.zone_for(&name).await?;
        let key = (zone.clone(), name.clone());
        let mut values = records.sets.get(&key).cloned().unwrap_or_default();
        values.push(value.to_string());
        let change = self.change(&zone, "UPSERT", &name, &values).await?;
        // Recorded once Route 53 has it: the DELETE afterwards must match what it holds.
        records.sets.insert(key, values);
        self.wait_insync(&change).await
    }

    /// Wait until Route 53 has the change on all its servers.
    async fn wait_insync(&self, change: &str) -> Result<(), String> {
        if change.is_empty() {
            return Err("Route 53 gave no change ID".into());
        }
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let mut pause = Duration::from_millis(250);
        loop {
            let text = self.call("GET", &format!("{API}/change/{change}"), None).await?;
            if tag(&text, "Status") == Some("INSYNC") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("Route 53 change {change} not INSYNC within {SYNC_TIMEOUT:?}"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Delete the order's records.
    pub(super) async fn cleanup(&self, records: Records) {
        for ((zone, name), values) in records.sets {
            if let Err(e) = self.change(&zone, "DELETE", &name, &values).await {
                tracing::warn!(record = %name, error = %e, "an ACME DNS-01 record was not deleted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_follow_rfc_8555() {
        assert_eq!(record_name("a.test"), "_acme-challenge.a.test.");
        assert_eq!(record_name("*.A.test"), "_acme-challenge.a.test.");
        assert_eq!(record_name("a.test."), "_acme-challenge.a.test.");
        assert_eq!(xml_escape("a<b&c"), "a&lt;b&amp;c");
        assert_eq!(partition("eu-west-1").0, "us-east-1");
        assert_eq!(partition("cn-north-1").1, "https://route53.amazonaws.com.cn");
        assert_eq!(partition("us-gov-east-1").0, "us-gov-west-1");
    }
}
