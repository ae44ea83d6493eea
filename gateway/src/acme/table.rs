//! The store several gateway replicas share (`storage: dynamodb://TABLE`): one DynamoDB
//! table, partition key `pk` and sort key `sk` (both strings), holding each resolver's
//! account and certificates, the order lock of each domain set, and the pending
//! challenges, so that one replica orders a certificate at a time, every replica serves
//! it, a replica that starts finds it, and the replica the load balancer picks answers
//! the CA's validation whoever ordered. No consensus of Berth's own: every decision is
//! a DynamoDB conditional write.
//!
//! | pk | sk | attributes |
//! |---|---|---|
//! | `resolver#<name>` | `account` | `credentials` (JSON), `email` |
//! | `resolver#<name>` | `cert#<names>` | `certificate`, `key` (PEM, base64), `notBefore`, `notAfter` |
//! | `resolver#<name>` | `lock#<name>` | `owner`, `until`, `attempts`, `error` |
//! | `challenge` | `http#<token>` / `alpn#<name>` | `value`, `expires` |
//!
//! A certificate is written only over one issued earlier (`notBefore` smaller). An order
//! takes the lock of every name it covers (two orders sharing a name would overwrite
//! each other's TLS-ALPN-01 answer and DNS-01 record), each only when absent or past its
//! `until`; the holder extends the lease while it orders, and a failed order keeps the
//! locks until its back-off ends, so the other replicas neither order meanwhile nor
//! multiply the CA's rate limits. Every call is bounded in time; answers are bounded.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::file::{Account, Resolver, Stored};

/// How long one call may take, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most items read for one resolver (accounts, certificates, locks).
const MAX_ITEMS: usize = 4096;
/// How long a lock lasts unless its holder extends it (a replica that dies mid-order
/// frees its names after this).
const LEASE: Duration = Duration::from_secs(300);
/// How often the holder extends its locks while it orders.
pub(super) const EXTEND_EVERY: Duration = Duration::from_secs(60);
/// How long a challenge stays answerable (DynamoDB's TTL on `expires` removes it later).
const CHALLENGE_LIFE: Duration = Duration::from_secs(600);
/// The most lookups of other replicas' challenges in flight: a stranger asking for
/// random tokens costs DynamoDB reads, bounded here.
const MAX_LOOKUPS: usize = 8;

type Item = HashMap<String, AttributeValue>;

pub(crate) struct Table {
    client: Client,
    table: String,
    /// Who this replica is, in the locks it takes.
    owner: String,
    lookups: tokio::sync::Semaphore,
}

/// The outcome of asking for a domain set's order lock.
#[derive(Debug)]
pub(super) enum Lock {
    /// Ours; `attempts` orders failed before (by any replica), for the back-off.
    Taken { attempts: u32 },
    /// Another replica's (or ours, backing off) until `until`, with its last error.
    Held {
        owner: String,
        until: u64,
        error: Option<String>,
    },
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn text(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn number(item: &Item, k: &str) -> Option<u64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn failed<E: ProvideErrorMetadata + std::error::Error + 'static>(op: &str, e: &SdkError<E>) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("DynamoDB {op}: {code}: {message}"),
        (Some(code), None) => format!("DynamoDB {op}: {code}"),
        // The error and its causes, without the debug dump DisplayErrorContext adds.
        _ => format!("DynamoDB {op}: {}", berth_common::error::chain_text(e)),
    }
}

async fn bounded<T>(op: &str, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("DynamoDB {op}: no answer within {CALL_TIMEOUT:?}")))
}

fn resolver_key(resolver: &str) -> AttributeValue {
    s(format!("resolver#{resolver}"))
}

/// The sort key of a domain set's certificate: its names, or, past what a DynamoDB sort
/// key holds (1 KiB), their FNV-1a hash (the names are in the item anyway).
fn names_key(kind: &str, names: &[String]) -> AttributeValue {
    let joined = names.join(",");
    if joined.len() <= 512 {
        return s(format!("{kind}#{joined}"));
    }
    let hash = joined.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    s(format!("{kind}#fnv:{hash:016x}"))
}

/// The sort key of one name's order lock.
fn lock_key(name: &str) -> AttributeValue {
    s(format!("lock#{name}"))
}

/// The name in a DynamoDB table name (3 to 255 of `a-z A-Z 0-9 _ - .`), when valid.
pub(super) fn table_name(text: &str) -> Option<&str> {
    let name = text.strip_prefix("dynamodb://")?;
    let ok = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then_some(name)
}

impl Table {
    pub(crate) fn new(sdk: &aws_config::SdkConfig, table: &str) -> Table {
        let config = aws_sdk_dynamodb::config::Builder::from(sdk)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(2))
                    .build(),
            )
            .build();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Table {
            client: Client::from_conf(config),
            table: table.to_string(),
            owner: format!("{}/{}/{:04x}", host.trim(), std::process::id(), fastrand::u16(..)),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
        }
    }

    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// The resolver's account and certificates.
    pub(super) async fn load(&self, resolver: &str) -> Result<Resolver, String> {
        bounded("Query", async {
            let mut out = Resolver::default();
            let mut start: Option<Item> = None;
            let mut seen = 0usize;
            loop {
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk")
                    // Right after taking a lock, a certificate just written must be seen.
                    .consistent_read(true)
                    .expression_attribute_values(":pk", resolver_key(resolver))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| failed("Query", &e))?;
                for item in page.items() {
                    seen += 1;
                    let sk = text(item, "sk").unwrap_or_default();
                    if sk == "account" {
                        out.account = Some(Account {
                            email: text(item, "email").unwrap_or_default(),
                            registration: None,
                            credentials: text(item, "credentials").and_then(|c| serde_json::from_str(&c).ok()),
                        });
                    } else if sk.starts_with("cert#")
                        && let (Some(names), Some(certificate), Some(key)) =
                            (text(item, "names"), text(item, "certificate"), text(item, "key"))
                    {
                        let names: Vec<String> = names.split(',').map(str::to_string).collect();
                        let mut stored = Stored::new(&names, "", "");
                        stored.certificate = certificate;
                        stored.key = key;
                        out.certificates.push(stored);
                    }
                }
                match page.last_evaluated_key() {
                    Some(k) if seen < MAX_ITEMS => start = Some(k.clone()),
                    Some(_) => return Err(format!("more than {MAX_ITEMS} items for resolver {resolver}")),
                    None => return Ok(out),
                }
            }
        })
        .await
    }

    /// Store the resolver's account unless one is there already (the first replica's wins).
    pub(super) async fn put_account(&self, resolver: &str, account: &Account) -> Result<(), String> {
        let credentials = account.credentials.as_ref().map(|c| c.to_string()).unwrap_or_default();
        bounded("PutItem", async {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", resolver_key(resolver))
                .item("sk", s("account"))
                .item("email", s(account.email.clone()))
                .item("credentials", s(credentials))
                .condition_expression("attribute_not_exists(sk)")
                .send()
                .await;
            done_or_lost("PutItem", put)
        })
        .await
    }

    /// Store a certificate for `names` unless one issued later is there.
    pub(super) async fn put_cert(
        &self,
        resolver: &str,
        cert: &Stored,
        not_before: u64,
        not_after: u64,
    ) -> Result<(), String> {
        let names = cert.names();
        bounded("PutItem", async {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", resolver_key(resolver))
                .item("sk", names_key("cert", &names))
                .item("names", s(names.join(",")))
                .item("certificate", s(cert.certificate.clone()))
                .item("key", s(cert.key.clone()))
                .item("notBefore", n(not_before))
                .item("notAfter", n(not_after))
                .condition_expression(
                    "attribute_not_exists(sk) OR attribute_not_exists(notBefore) OR notBefore < :mine",
                )
                .expression_attribute_values(":mine", n(not_before))
                .send()
                .await;
            done_or_lost("PutItem", put)
        })
        .await
    }

    /// Take the order locks of every name in `names`, if no replica holds one (all or
    /// none: the ones taken are given back when another is held).
    pub(super) async fn lock(&self, resolver: &str, names: &[String]) -> Result<Lock, String> {
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut taken: Vec<String> = Vec::new();
        let mut attempts = 0;
        for name in sorted {
            let one = self.lock_one(resolver, name).await;
            match one {
                Ok(Lock::Taken { attempts: a }) => {
                    attempts = attempts.max(a);
                    taken.push(name.clone());
                }
                Ok(held) => {
                    let _ = self.release(resolver, &taken).await;
                    return Ok(held);
                }
                Err(e) => {
                    let _ = self.release(resolver, &taken).await;
                    return Err(e);
                }
            }
        }
        Ok(Lock::Taken { attempts })
    }

    async fn lock_one(&self, resolver: &str, name: &str) -> Result<Lock, String> {
        let at = now();
        bounded("PutItem", async {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", resolver_key(resolver))
                .item("sk", lock_key(name))
                .item("owner", s(self.owner.clone()))
                .item("until", n(at + LEASE.as_secs()))
                .condition_expression("attribute_not_exists(sk) OR #until < :now")
                .expression_attribute_names("#until", "until")
                .expression_attribute_values(":now", n(at))
                .return_values(ReturnValue::AllOld)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match put {
                Ok(out) => {
                    let before = out.attributes().cloned().unwrap_or_default();
                    let attempts = u32::try_from(number(&before, "attempts").unwrap_or(0)).unwrap_or(u32::MAX);
                    // A lock past its lease without an error is an order that died with
                    // its replica: it counts as a failure too.
                    let died = !before.is_empty() && text(&before, "error").is_none();
                    Ok(Lock::Taken {
                        attempts: attempts.saturating_add(u32::from(died)),
                    })
                }
                Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                    let item = match e.err() {
                        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                            c.item().cloned().unwrap_or_default()
                        }
                        _ => Item::new(),
                    };
                    Ok(Lock::Held {
                        owner: text(&item, "owner").unwrap_or_default(),
                        until: number(&item, "until").unwrap_or(0),
                        error: text(&item, "error"),
                    })
                }
                Err(e) => Err(failed("PutItem", &e)),
            }
        })
        .await
    }

    /// Give the locks back after a success.
    pub(super) async fn release(&self, resolver: &str, names: &[String]) -> Result<(), String> {
        for name in names {
            bounded("DeleteItem", async {
                let del = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", resolver_key(resolver))
                    .key("sk", lock_key(name))
                    .condition_expression("#owner = :me")
                    .expression_attribute_names("#owner", "owner")
                    .expression_attribute_values(":me", s(self.owner.clone()))
                    .send()
                    .await;
                // Taken over meanwhile (our lease ran out): the new holder keeps it.
                done_or_lost("DeleteItem", del)
            })
            .await?;
        }
        Ok(())
    }

    /// Keep the locks through the back-off after a failed order, with the reason, so that
    /// no replica orders again before it ends.
    pub(super) async fn fail(
        &self,
        resolver: &str,
        names: &[String],
        attempts: u32,
        why: &str,
        backoff: Duration,
    ) -> Result<(), String> {
        let why: String = why.chars().take(1024).collect();
        for name in names {
            // A lock no longer ours keeps its new holder's state.
            self.update_lock(
                resolver,
                name,
                Some((attempts, why.as_str())),
                now() + backoff.as_secs(),
            )
            .await?;
        }
        Ok(())
    }

    /// Extend the locks while their order runs: `Ok(false)` when one is no longer ours
    /// (its lease ran out and another replica took it): the order should stop.
    pub(super) async fn extend(&self, resolver: &str, names: &[String]) -> Result<bool, String> {
        for name in names {
            if !self.update_lock(resolver, name, None, now() + LEASE.as_secs()).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Set a lock's `until` (and its failure) if it is still ours; whether it was.
    async fn update_lock(
        &self,
        resolver: &str,
        name: &str,
        failure: Option<(u32, &str)>,
        until: u64,
    ) -> Result<bool, String> {
        bounded("UpdateItem", async {
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", resolver_key(resolver))
                .key("sk", lock_key(name))
                .condition_expression("#owner = :me")
                .expression_attribute_names("#until", "until")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":until", n(until))
                .expression_attribute_values(":me", s(self.owner.clone()));
            update = match failure {
                Some((attempts, why)) => update
                    .update_expression("SET #until = :until, attempts = :attempts, #error = :why")
                    .expression_attribute_names("#error", "error")
                    .expression_attribute_values(":attempts", n(u64::from(attempts)))
                    .expression_attribute_values(":why", s(why)),
                None => update.update_expression("SET #until = :until"),
            };
            match update.send().await {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
                Err(e) => Err(failed("UpdateItem", &e)),
            }
        })
        .await
    }

    /// Publish a challenge answer for the other replicas (`kind` is `http` or `alpn`).
    pub(super) async fn put_challenge(&self, kind: &str, key: &str, value: &str) -> Result<(), String> {
        bounded("PutItem", async {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s("challenge"))
                .item("sk", s(format!("{kind}#{key}")))
                .item("value", s(value))
                .item("expires", n(now() + CHALLENGE_LIFE.as_secs()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| failed("PutItem", &e))
        })
        .await
    }

    pub(super) async fn remove_challenge(&self, kind: &str, key: &str) -> Result<(), String> {
        bounded("DeleteItem", async {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s("challenge"))
                .key("sk", s(format!("{kind}#{key}")))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| failed("DeleteItem", &e))
        })
        .await
    }

    /// Another replica's challenge answer, when one is pending. `None` too when too many
    /// lookups are in flight or the table does not answer (the CA retries).
    pub(super) async fn challenge(&self, kind: &str, key: &str) -> Option<String> {
        let _slot = self.lookups.try_acquire().ok()?;
        let got = bounded("GetItem", async {
            self.client
                .get_item()
                .table_name(&self.table)
                .key("pk", s("challenge"))
                .key("sk", s(format!("{kind}#{key}")))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| failed("GetItem", &e))
        })
        .await;
        match got {
            Ok(out) => {
                let item = out.item()?;
                (number(item, "expires").unwrap_or(0) > now())
                    .then(|| text(item, "value"))
                    .flatten()
            }
            Err(e) => {
                tracing::warn!(error = %e, "a shared ACME challenge could not be looked up");
                None
            }
        }
    }
}

/// A conditional write done, or refused by its condition (which is an answer too: the
/// item is someone else's, or newer); any other error is one.
fn done_or_lost<T, E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &str,
    r: Result<T, SdkError<E>>,
) -> Result<(), String> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
        Err(e) => Err(failed(op, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_domain_sets_get_short_keys() {
        let few = names_key("cert", &["a.test".into(), "b.test".into()]);
        assert_eq!(few.as_s().unwrap(), "cert#a.test,b.test");
        let many: Vec<String> = (0..16).map(|i| format!("{}{i}.example.test", "x".repeat(60))).collect();
        let key = names_key("cert", &many);
        assert!(key.as_s().unwrap().starts_with("cert#fnv:") && key.as_s().unwrap().len() < 40);
        assert_eq!(key, names_key("cert", &many));
    }

    #[test]
    fn table_names_are_checked() {
        assert_eq!(table_name("dynamodb://berth-acme"), Some("berth-acme"));
        assert_eq!(table_name("dynamodb://a.b_c-1"), Some("a.b_c-1"));
        assert_eq!(table_name("dynamodb://ab"), None);
        assert_eq!(table_name("dynamodb://has space"), None);
        assert_eq!(table_name("acme.json"), None);
        assert_eq!(table_name(&format!("dynamodb://{}", "x".repeat(256))), None);
    }
}
