//! What each resolver obtains and when: the routers of the current snapshot that name it
//! want certificates for their domain sets; a set with no certificate, or with one past
//! two thirds of its lifetime, is ordered, one order at a time per resolver; a failure
//! (an unreachable CA, a rate limit, a failed challenge) is retried with back-off from
//! 5 s to an hour and shown with its reason, and the last good certificate is served
//! meanwhile. Certificates already in storage are served from the start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use berth_common::routing::{Snapshot, Status};
use rustls::sign::CertifiedKey;

use super::challenges::Challenges;
use super::store::{self, Stored};
use super::{ResolverSettings, order};

/// How often the snapshot is looked at for new domains and certificates for renewal.
const LOOK_EVERY: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(3600);

/// A certificate a resolver obtained, as served.
#[derive(Debug, Clone)]
pub(crate) struct AcmeCert {
    pub resolver: Arc<str>,
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl AcmeCert {
    fn from_stored(resolver: &Arc<str>, s: &Stored) -> Result<AcmeCert, String> {
        let (chain, key) = s.pems()?;
        let key =
            berth_common::tls::certified_key_from_pem(&chain, &key, "ACME certificate").map_err(|e| e.to_string())?;
        let leaf = key.cert.first().ok_or("no certificate")?;
        let sum = berth_common::identity::summarize(leaf).map_err(|e| e.to_string())?;
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        Ok(AcmeCert {
            resolver: resolver.clone(),
            names: s.names(),
            key,
            not_before: at(sum.not_before_unix),
            not_after: at(sum.not_after_unix),
        })
    }

    /// Renewal is due at two thirds of the lifetime.
    fn due(&self, now: SystemTime) -> bool {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        now >= self.not_before + life.mul_f64(2.0 / 3.0)
    }
}

/// A domain set that has no good certificate yet, and why.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Pending {
    pub resolver: String,
    pub names: Vec<String>,
    pub last_error: Option<String>,
}

struct Failure {
    next: Instant,
    backoff: Duration,
    why: String,
}

pub(crate) struct Acme {
    settings: Vec<ResolverSettings>,
    pub challenges: Arc<Challenges>,
    certs: ArcSwap<Vec<AcmeCert>>,
    pending: Mutex<Vec<Pending>>,
}

impl Acme {
    pub(crate) fn new(settings: Vec<ResolverSettings>) -> Arc<Acme> {
        Arc::new(Acme {
            settings,
            challenges: Arc::default(),
            certs: ArcSwap::from_pointee(Vec::new()),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Whether `resolver` answers HTTP-01 on `entrypoint`.
    pub(crate) fn http_challenge_on(&self, entrypoint: &str) -> bool {
        self.settings
            .iter()
            .any(|s| s.http_challenge.as_deref() == Some(entrypoint))
    }

    /// The certificates served now.
    pub(crate) fn certs(&self) -> Arc<Vec<AcmeCert>> {
        self.certs.load_full()
    }

    /// The domain sets waiting for a certificate, with the last error.
    pub(crate) fn pending(&self) -> Vec<Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Run every resolver until the gateway stops.
    pub(crate) fn spawn(self: &Arc<Self>, snapshot: Arc<ArcSwap<Snapshot>>) {
        for i in 0..self.settings.len() {
            tokio::spawn(self.clone().run(i, snapshot.clone()));
        }
    }

    fn publish(&self, resolver: &Arc<str>, stored: &store::Resolver) {
        let mine: Vec<AcmeCert> = stored
            .certificates
            .iter()
            .filter_map(|s| match AcmeCert::from_stored(resolver, s) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(resolver = %resolver, names = ?s.names(), error = %e, "a stored ACME certificate is not usable");
                    None
                }
            })
            .collect();
        let mut all: Vec<AcmeCert> = self
            .certs
            .load()
            .iter()
            .filter(|c| c.resolver != *resolver)
            .cloned()
            .collect();
        all.extend(mine);
        self.certs.store(Arc::new(all));
    }

    async fn run(self: Arc<Self>, i: usize, snapshot: Arc<ArcSwap<Snapshot>>) {
        let s = &self.settings[i];
        let name: Arc<str> = s.name.as_str().into();
        let mut stored = store::load(&s.storage, &s.name).unwrap_or_else(|e| {
            tracing::error!(resolver = %s.name, error = %e, "ACME storage not readable; starting empty");
            store::Resolver::default()
        });
        self.publish(&name, &stored);
        let mut account = None;
        let mut failures: BTreeMap<Vec<String>, Failure> = BTreeMap::new();
        loop {
            let wanted = wanted(&snapshot.load(), &s.name);
            failures.retain(|names, _| wanted.contains(names));
            let now = SystemTime::now();
            for names in &wanted {
                let have = self
                    .certs
                    .load()
                    .iter()
                    .find(|c| c.resolver == name && &c.names == names)
                    .map(|c| c.due(now));
                if have == Some(false) || failures.get(names).is_some_and(|f| Instant::now() < f.next) {
                    continue;
                }
                let result = self.obtain(s, &mut account, &mut stored, names).await;
                match result {
                    Ok(()) => {
                        failures.remove(names);
                        self.publish(&name, &stored);
                        tracing::info!(resolver = %s.name, ?names, "ACME certificate obtained");
                    }
                    Err(why) => {
                        let backoff = failures
                            .get(names)
                            .map_or(FIRST_RETRY, |f| (f.backoff * 2).min(LAST_RETRY));
                        tracing::warn!(resolver = %s.name, ?names, error = %why, retry_in = ?backoff, "ACME certificate not obtained");
                        failures.insert(
                            names.clone(),
                            Failure {
                                next: Instant::now() + backoff,
                                backoff,
                                why,
                            },
                        );
                    }
                }
            }
            self.set_pending(&name, &wanted, &failures);
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    async fn obtain(
        &self,
        s: &ResolverSettings,
        account: &mut Option<instant_acme::Account>,
        stored: &mut store::Resolver,
        names: &[String],
    ) -> Result<(), String> {
        if account.is_none() {
            let creds = stored.account.as_ref().and_then(|a| a.credentials.as_ref());
            let (a, new) = order::account(s, creds).await?;
            if let Some(c) = new {
                stored.account = Some(store::Account {
                    email: s.email.clone().unwrap_or_default(),
                    registration: None,
                    credentials: Some(c),
                });
                save(s, stored);
            }
            *account = Some(a);
        }
        let Some(a) = account.as_ref() else {
            return Err("no ACME account".into());
        };
        let (chain, key) = order::obtain(a, names, s, &self.challenges).await?;
        let fresh = Stored::new(names, &chain, &key);
        // Checked before it replaces the last good one.
        AcmeCert::from_stored(&s.name.as_str().into(), &fresh)?;
        stored.certificates.retain(|c| c.names() != names);
        stored.certificates.push(fresh);
        save(s, stored);
        Ok(())
    }

    fn set_pending(&self, name: &Arc<str>, wanted: &BTreeSet<Vec<String>>, failures: &BTreeMap<Vec<String>, Failure>) {
        let certs = self.certs.load();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|p| *p.resolver != **name);
        for names in wanted {
            let failed = failures.get(names).map(|f| f.why.clone());
            let served = certs.iter().any(|c| c.resolver == *name && &c.names == names);
            if !served || failed.is_some() {
                pending.push(Pending {
                    resolver: name.to_string(),
                    names: names.clone(),
                    last_error: failed,
                });
            }
        }
    }
}

fn save(s: &ResolverSettings, stored: &store::Resolver) {
    if let Err(e) = store::save(&s.storage, &s.name, stored) {
        tracing::error!(
            resolver = %s.name,
            error = %e,
            "ACME storage not written (a read-only root filesystem needs the storage on a mounted volume); \
             the certificate is served from memory and ordered again at the next start"
        );
    }
}

/// The domain sets the snapshot's routers want from `resolver` (wildcards need DNS-01,
/// which Berth does not have yet: left out).
fn wanted(snap: &Snapshot, resolver: &str) -> BTreeSet<Vec<String>> {
    snap.routers
        .iter()
        .filter(|r| r.status == Status::Enabled && r.cert_resolver.as_deref() == Some(resolver))
        .flat_map(|r| r.cert_domains.iter())
        .filter(|names| !names.is_empty() && names.iter().all(|n| !n.starts_with("*.")))
        .cloned()
        .collect()
}
