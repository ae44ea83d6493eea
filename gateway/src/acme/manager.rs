//! What each resolver obtains and when: the routers of the current snapshot that name it
//! want certificates for their domain sets; a set with no certificate, or with one past
//! two thirds of its lifetime, is ordered, one order at a time per resolver; a failure
//! (an unreachable CA, a rate limit, a failed challenge) is retried with back-off from
//! 5 s to an hour and shown with its reason, and the last good certificate is served
//! meanwhile. Certificates already in storage are served from the start.
//!
//! With a shared table the order is taken under the table's lock, so that one replica
//! orders while the others wait for the result; each replica reads the table again
//! every few seconds to serve what the others obtained, and an unreachable table keeps
//! every certificate already served (its reason shown).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use berth_common::routing::{Snapshot, Status};
use rustls::sign::CertifiedKey;

use super::challenges::Challenges;
use super::file::{Account, Resolver, Stored};
use super::order::Solvers;
use super::route53::Route53;
use super::storage::Storage;
use super::table::{Lock, Table};
use super::{ResolverSettings, StorageSettings, order};

/// How often the snapshot is looked at for new domains and certificates for renewal.
const LOOK_EVERY: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(3600);
/// How often a shared table is read for the certificates other replicas obtained.
const REFRESH: Duration = Duration::from_secs(5);
/// The longest wait between reads of a table that does not answer.
const LAST_REFRESH_RETRY: Duration = Duration::from_secs(60);

/// A certificate a resolver obtained, as served.
#[derive(Debug, Clone)]
pub(crate) struct AcmeCert {
    pub resolver: Arc<str>,
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When the CA's renewal information (ARI, RFC 9773) says to renew: a random point
    /// of its suggested window, once asked.
    renew_by_ari: Option<SystemTime>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
            renew_by_ari: None,
        })
    }

    /// When it is renewed: when the CA's renewal information says (inside its
    /// lifetime), else at two thirds of the lifetime. Whether ARI said.
    pub(crate) fn renewal(&self) -> (SystemTime, bool) {
        match self.renew_by_ari {
            Some(t) if t < self.not_after => (t, true),
            _ => {
                let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
                (self.not_before + life.mul_f64(2.0 / 3.0), false)
            }
        }
    }

    fn due(&self, now: SystemTime) -> bool {
        now >= self.renewal().0
    }

    /// Which certificate this is (its leaf's hash): renewal information is per certificate.
    fn id(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.key.cert.first().map(|c| c.as_ref()).hash(&mut h);
        h.finish()
    }
}

/// A domain set that has no good certificate yet, and why.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Pending {
    pub resolver: String,
    pub names: Vec<String>,
    pub last_error: Option<String>,
    /// The replica ordering it now (a shared table), when that is the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordered_by: Option<String>,
}

/// What a resolver knows of the CA's renewal information.
#[derive(Default)]
struct Ari {
    /// The CA has none (no `renewalInfo` in its directory).
    unsupported: bool,
    /// Per domain set: the certificate asked about ([`AcmeCert::id`]) and when to ask again.
    next: BTreeMap<Vec<String>, (u64, Instant)>,
    /// When to try the stored account again after it could not be restored.
    account_retry: Option<Instant>,
}

/// Why a domain set is not ordered now, and until when.
struct Failure {
    next: Instant,
    attempts: u32,
    why: String,
    /// Not a failure: another replica holds the order lock (`why` names it).
    busy: bool,
}

/// The back-off after `attempts` failed orders: 5 s, doubling, at most an hour.
fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(LAST_RETRY)
}

pub(crate) struct Acme {
    settings: Vec<ResolverSettings>,
    storages: Vec<Storage>,
    /// Per resolver, Route 53 when it validates by DNS-01.
    dns: Vec<Option<Route53>>,
    pub challenges: Arc<Challenges>,
    certs: ArcSwap<Vec<AcmeCert>>,
    pending: Mutex<Vec<Pending>>,
}

impl Acme {
    /// The resolvers, with their storage; the AWS configuration is loaded when a
    /// resolver shares a table (`region` from the gateway's `--ecs-region`, else the
    /// standard chain).
    pub(crate) async fn start(settings: Vec<ResolverSettings>, region: Option<String>) -> Result<Arc<Acme>, String> {
        let mut tables: BTreeMap<String, Arc<Table>> = BTreeMap::new();
        let mut storages = Vec::new();
        let mut dns = Vec::new();
        for s in &settings {
            dns.push(match &s.dns_challenge {
                Some(_) => Some(
                    Route53::new(region.clone())
                        .await
                        .map_err(|e| format!("certificatesResolvers.{}.acme.dnsChallenge: {e}", s.name))?,
                ),
                None => None,
            });
            storages.push(match &s.storage {
                StorageSettings::File(p) => Storage::File(p.clone()),
                StorageSettings::DynamoDb(name) => {
                    if !tables.contains_key(name) {
                        let sdk = crate::aws::sdk_config(region.clone(), None)
                            .await
                            .map_err(|e| format!("certificatesResolvers.{}.acme.storage: {e}", s.name))?;
                        let table = Arc::new(Table::new(&sdk, name));
                        tracing::info!(table = %name, owner = %table.owner(), "ACME certificates shared in a DynamoDB table");
                        tables.insert(name.clone(), table);
                    }
                    match tables.get(name) {
                        Some(t) => Storage::Shared(t.clone()),
                        None => return Err(format!("table {name} went missing")),
                    }
                }
            });
        }
        Ok(Arc::new(Acme {
            settings,
            storages,
            dns,
            challenges: Arc::new(Challenges::new(tables.into_values().collect())),
            certs: ArcSwap::from_pointee(Vec::new()),
            pending: Mutex::new(Vec::new()),
        }))
    }

    /// Whether `resolver` answers HTTP-01 on `entrypoint`.
    pub(crate) fn http_challenge_on(&self, entrypoint: &str) -> bool {
        self.settings
            .iter()
            .any(|s| s.http_challenge.as_deref() == Some(entrypoint))
    }

    /// The resolver's Route 53, when it validates by DNS-01 (resolver names are unique).
    fn dns_for(&self, s: &ResolverSettings) -> Option<&Route53> {
        let i = self.settings.iter().position(|x| x.name == s.name)?;
        self.dns.get(i)?.as_ref()
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

    /// Serve what the storage holds for `resolver`: per domain set, the certificate
    /// that lasts longer of the stored one and the one served now; a set the storage
    /// no longer has keeps the one served.
    fn publish(&self, resolver: &Arc<str>, stored: &Resolver) {
        let mut loaded: Vec<AcmeCert> = Vec::new();
        for s in &stored.certificates {
            match AcmeCert::from_stored(resolver, s) {
                Ok(c) => loaded.push(c),
                Err(e) => {
                    tracing::warn!(resolver = %resolver, names = ?s.names(), error = %e, "a stored ACME certificate is not usable");
                }
            }
        }
        // rcu: resolvers publish concurrently; none loses another's certificates.
        self.certs.rcu(|current| {
            let mut all: Vec<AcmeCert> = current.iter().cloned().collect();
            for c in &loaded {
                match all.iter_mut().find(|m| m.resolver == *resolver && m.names == c.names) {
                    // The one issued later wins (a renewal may last less than the one
                    // it replaces: a revocation, a shorter profile).
                    Some(m) if m.not_before >= c.not_before => {}
                    Some(m) => *m = c.clone(),
                    None => all.push(c.clone()),
                }
            }
            all
        });
    }

    /// Whether a good certificate for `names` is served and not due for renewal.
    fn fresh(&self, resolver: &Arc<str>, names: &[String]) -> bool {
        let now = SystemTime::now();
        self.certs
            .load()
            .iter()
            .any(|c| c.resolver == *resolver && c.names == names && !c.due(now))
    }

    async fn run(self: Arc<Self>, i: usize, snapshot: Arc<ArcSwap<Snapshot>>) {
        let s = &self.settings[i];
        let storage = &self.storages[i];
        let name: Arc<str> = s.name.as_str().into();
        let mut stored = Resolver::default();
        let mut account = None;
        let mut failures: BTreeMap<Vec<String>, Failure> = BTreeMap::new();
        let mut storage_error: Option<String> = None;
        let mut next_read = Instant::now();
        let mut read_retry = FIRST_RETRY;
        let mut read_once = false;
        let mut ari = Ari::default();
        loop {
            // The storage: read at start, and again and again when shared.
            if Instant::now() >= next_read && (!read_once || storage.shared().is_some()) {
                match storage.load(&s.name).await {
                    Ok(r) => {
                        stored = r;
                        self.publish(&name, &stored);
                        storage_error = None;
                        read_retry = FIRST_RETRY;
                        next_read = Instant::now() + REFRESH;
                        read_once = true;
                    }
                    Err(e) if storage.shared().is_none() => {
                        tracing::error!(resolver = %s.name, error = %e, "ACME storage not readable; starting empty");
                        read_once = true;
                    }
                    Err(e) => {
                        tracing::warn!(resolver = %s.name, error = %e, retry_in = ?read_retry, "ACME storage not readable; serving the certificates already loaded");
                        storage_error = Some(format!("storage: {e}"));
                        next_read = Instant::now() + read_retry;
                        read_retry = (read_retry * 2).min(LAST_REFRESH_RETRY);
                    }
                }
            }
            let wanted = wanted(&snapshot.load(), &s.name, s.dns_challenge.is_some());
            failures.retain(|names, _| wanted.contains(names));
            self.ask_renewal_info(s, &mut ari, &mut account, &stored, &wanted).await;
            // Without a readable shared table nothing is ordered: it holds the lock.
            if storage_error.is_none() {
                for names in &wanted {
                    if self.fresh(&name, names) {
                        failures.remove(names);
                        continue;
                    }
                    if failures.get(names).is_some_and(|f| Instant::now() < f.next) {
                        continue;
                    }
                    let attempts = failures.get(names).map_or(0, |f| f.attempts);
                    if let Some(f) = self.order(s, storage, &mut account, &mut stored, names, attempts).await {
                        failures.insert(names.clone(), f);
                    } else {
                        failures.remove(names);
                    }
                }
            }
            self.set_pending(&name, &wanted, &failures, storage_error.as_deref());
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Order a certificate for `names` under the storage's lock; why not, when not.
    async fn order(
        &self,
        s: &ResolverSettings,
        storage: &Storage,
        account: &mut Option<instant_acme::Account>,
        stored: &mut Resolver,
        names: &[String],
        attempts: u32,
    ) -> Option<Failure> {
        let name: Arc<str> = s.name.as_str().into();
        let attempts = match storage.lock(&s.name, names).await {
            Ok(Lock::Taken { attempts: shared }) => attempts.max(shared),
            Ok(Lock::Held { owner, until, error }) => {
                // Another replica orders (or backs off): its result is read with the table.
                let wait =
                    Duration::from_secs(until.saturating_sub(unix(SystemTime::now()))).clamp(LOOK_EVERY, LAST_RETRY);
                let (why, busy) = match error {
                    Some(e) => (
                        format!("{e} (ordered by {owner}; next attempt in {}s)", wait.as_secs()),
                        false,
                    ),
                    None => (owner, true),
                };
                return Some(Failure {
                    next: Instant::now() + wait,
                    attempts,
                    why,
                    busy,
                });
            }
            Err(e) => {
                let attempts = attempts + 1;
                return Some(Failure {
                    next: Instant::now() + backoff(attempts),
                    attempts,
                    why: format!("storage: {e}"),
                    busy: false,
                });
            }
        };
        // Another replica may have stored one just before the lock was ours.
        if storage.shared().is_some()
            && let Ok(r) = storage.load(&s.name).await
        {
            *stored = r;
            self.publish(&name, stored);
            if self.fresh(&name, names) {
                self.release(s, storage, names).await;
                return None;
            }
        }
        let work = self.obtain(s, storage, account, stored, names);
        let result = match storage.shared() {
            None => work.await,
            // The locks' lease is extended while the order runs; an order whose locks
            // another replica took over stops.
            Some(table) => {
                tokio::pin!(work);
                let mut tick = tokio::time::interval(super::table::EXTEND_EVERY);
                tick.tick().await;
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = tick.tick() => match table.extend(&s.name, names).await {
                            Ok(true) => {}
                            Ok(false) => break Err("the order lock was lost to another replica".to_string()),
                            Err(e) => tracing::warn!(resolver = %s.name, error = %e, "the order lock's lease not extended"),
                        },
                    }
                }
            }
        };
        match result {
            Ok(None) => {
                self.publish(&name, stored);
                self.release(s, storage, names).await;
                tracing::info!(resolver = %s.name, ?names, "ACME certificate obtained");
                None
            }
            Ok(Some(write_error)) => {
                // Served from memory, but the others cannot see it: the locks stay ours
                // for a short while so they do not order at once, then one of them does.
                self.publish(&name, stored);
                tracing::info!(resolver = %s.name, ?names, "ACME certificate obtained");
                let why = format!("storage: the certificate was not written: {write_error}");
                if let Err(e) = storage.fail(&s.name, names, attempts, &why, FIRST_RETRY * 6).await {
                    tracing::warn!(resolver = %s.name, error = %e, "the order lock keeps no back-off (its lease ends it)");
                }
                None
            }
            Err(why) => {
                let attempts = attempts + 1;
                let wait = backoff(attempts);
                tracing::warn!(resolver = %s.name, ?names, error = %why, retry_in = ?wait, "ACME certificate not obtained");
                if let Err(e) = storage.fail(&s.name, names, attempts, &why, wait).await {
                    tracing::warn!(resolver = %s.name, error = %e, "the order lock keeps no back-off (its lease ends it)");
                }
                Some(Failure {
                    next: Instant::now() + wait,
                    attempts,
                    why,
                    busy: false,
                })
            }
        }
    }

    /// Ask the CA's renewal information (RFC 9773) for each served certificate when it
    /// is due to be asked (a new certificate, or the answer's `Retry-After`, kept within a
    /// minute and a day), with the account already known (never one made only for this).
    async fn ask_renewal_info(
        &self,
        s: &ResolverSettings,
        ari: &mut Ari,
        account: &mut Option<instant_acme::Account>,
        stored: &Resolver,
        wanted: &BTreeSet<Vec<String>>,
    ) {
        if ari.unsupported {
            return;
        }
        let name: Arc<str> = s.name.as_str().into();
        let now = Instant::now();
        let certs = self.certs.load_full();
        let ask: Vec<&AcmeCert> = certs
            .iter()
            .filter(|c| c.resolver == name && wanted.contains(&c.names))
            .filter(|c| {
                ari.next
                    .get(&c.names)
                    .is_none_or(|(id, at)| *id != c.id() || now >= *at)
            })
            .collect();
        if ask.is_empty() {
            return;
        }
        if account.is_none() {
            if ari.account_retry.is_some_and(|t| now < t) {
                return;
            }
            let Some(creds) = stored.account.as_ref().and_then(|a| a.credentials.as_ref()) else {
                return;
            };
            match order::restore(s, creds).await {
                Ok(a) => *account = Some(a),
                Err(e) => {
                    tracing::debug!(resolver = %s.name, error = %e, "no account to ask renewal information with");
                    ari.account_retry = Some(now + Duration::from_secs(600));
                    return;
                }
            }
        }
        let Some(a) = account.as_ref() else { return };
        for c in ask {
            let Some(leaf) = c.key.cert.first() else { continue };
            let (next, renew_at) = match order::renewal_window(a, leaf).await {
                Ok(None) => {
                    tracing::debug!(resolver = %s.name, "the CA has no renewal information (ARI)");
                    ari.unsupported = true;
                    return;
                }
                Ok(Some(w)) => {
                    let span = w.end.duration_since(w.start).unwrap_or_default();
                    let at = w.start + span.mul_f64(fastrand::f64());
                    tracing::info!(resolver = %s.name, names = ?c.names, renew_at = unix(at), "renewal window from the CA (ARI)");
                    (
                        w.retry_after
                            .clamp(Duration::from_secs(60), Duration::from_secs(86_400)),
                        Some(at),
                    )
                }
                Err(e) => {
                    tracing::warn!(resolver = %s.name, names = ?c.names, error = %e, "renewal information (ARI) not read");
                    (Duration::from_secs(600), None)
                }
            };
            ari.next.insert(c.names.clone(), (c.id(), now + next));
            if let Some(at) = renew_at {
                self.set_renewal(c.id(), at);
            }
        }
    }

    fn set_renewal(&self, id: u64, at: SystemTime) {
        self.certs.rcu(|current| {
            let mut all: Vec<AcmeCert> = current.iter().cloned().collect();
            for c in all.iter_mut().filter(|c| c.id() == id) {
                c.renew_by_ari = Some(at);
            }
            all
        });
    }

    async fn release(&self, s: &ResolverSettings, storage: &Storage, names: &[String]) {
        if let Err(e) = storage.release(&s.name, names).await {
            tracing::warn!(resolver = %s.name, error = %e, "the order lock was not released (its lease ends it)");
        }
    }

    async fn obtain(
        &self,
        s: &ResolverSettings,
        storage: &Storage,
        account: &mut Option<instant_acme::Account>,
        stored: &mut Resolver,
        names: &[String],
    ) -> Result<Option<String>, String> {
        if account.is_none() {
            let creds = stored.account.as_ref().and_then(|a| a.credentials.as_ref());
            let (a, new) = order::account(s, creds).await?;
            if let Some(c) = new {
                let new = Account {
                    email: s.email.clone().unwrap_or_default(),
                    registration: None,
                    credentials: Some(c),
                };
                stored.account = Some(new.clone());
                if let Err(e) = storage.save_account(&s.name, stored, &new).await {
                    storage_failed(s, storage, &e);
                }
            }
            *account = Some(a);
        }
        let Some(a) = account.as_ref() else {
            return Err("no ACME account".into());
        };
        let solvers = Solvers {
            challenges: &self.challenges,
            shared: storage.shared(),
            dns: self.dns_for(s),
        };
        // A renewal the CA's renewal information asked for names the certificate it replaces.
        let certs = self.certs.load_full();
        let replaces = certs
            .iter()
            .find(|c| c.resolver.as_ref() == s.name && c.names == names && c.renewal().1)
            .and_then(|c| c.key.cert.first());
        let (chain, key) = order::obtain(a, names, s, solvers, replaces).await?;
        let fresh = Stored::new(names, &chain, &key);
        // Checked before it replaces the last good one.
        let cert = AcmeCert::from_stored(&s.name.as_str().into(), &fresh)?;
        stored.certificates.retain(|c| c.names() != names);
        stored.certificates.push(fresh.clone());
        if let Err(e) = storage
            .save_cert(&s.name, stored, &fresh, (unix(cert.not_before), unix(cert.not_after)))
            .await
        {
            storage_failed(s, storage, &e);
            return Ok(Some(e));
        }
        Ok(None)
    }

    fn set_pending(
        &self,
        name: &Arc<str>,
        wanted: &BTreeSet<Vec<String>>,
        failures: &BTreeMap<Vec<String>, Failure>,
        storage_error: Option<&str>,
    ) {
        let certs = self.certs.load();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|p| *p.resolver != **name);
        for names in wanted {
            let failure = failures.get(names);
            let ordered_by = failure.filter(|f| f.busy).map(|f| f.why.clone());
            let failed = storage_error
                .map(str::to_string)
                .or_else(|| failure.filter(|f| !f.busy).map(|f| f.why.clone()));
            let served = certs.iter().any(|c| c.resolver == *name && &c.names == names);
            if !served || failed.is_some() || ordered_by.is_some() {
                pending.push(Pending {
                    resolver: name.to_string(),
                    names: names.clone(),
                    last_error: failed,
                    ordered_by,
                });
            }
        }
    }
}

fn storage_failed(s: &ResolverSettings, storage: &Storage, e: &str) {
    tracing::error!(
        resolver = %s.name,
        storage = %storage.describe(),
        error = %e,
        "ACME storage not written (a read-only root filesystem needs a file storage on a mounted volume); \
         the certificate is served from memory"
    );
}

/// The domain sets the snapshot's routers want from `resolver` (wildcards only with
/// DNS-01, the one challenge that can prove them: otherwise left out).
fn wanted(snap: &Snapshot, resolver: &str, wildcards: bool) -> BTreeSet<Vec<String>> {
    snap.routers
        .iter()
        .filter(|r| r.status == Status::Enabled && r.cert_resolver.as_deref() == Some(resolver))
        .flat_map(|r| r.cert_domains.iter())
        .filter(|names| !names.is_empty() && (wildcards || names.iter().all(|n| !n.starts_with("*."))))
        .cloned()
        .collect()
}
