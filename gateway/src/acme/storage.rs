//! Where a resolver keeps its account and certificates and takes its order lock: a file
//! in Traefik's `acme.json` format (one replica: the lock is always free), or the table
//! every replica shares (`dynamodb://TABLE`). The manager talks to this one type.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::file::{self, Account, Resolver, Stored};
use super::table::{Lock, Table};

pub(super) enum Storage {
    File(PathBuf),
    Shared(Arc<Table>),
}

impl Storage {
    pub(super) fn shared(&self) -> Option<&Table> {
        match self {
            Storage::File(_) => None,
            Storage::Shared(t) => Some(t),
        }
    }

    /// Where it is, for messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Storage::File(p) => p.display().to_string(),
            Storage::Shared(_) => "the shared table".into(),
        }
    }

    pub(super) async fn load(&self, resolver: &str) -> Result<Resolver, String> {
        match self {
            Storage::File(path) => file::load(path, resolver),
            Storage::Shared(t) => t.load(resolver).await,
        }
    }

    /// Keep a new account (`whole` is the resolver's state with it).
    pub(super) async fn save_account(&self, resolver: &str, whole: &Resolver, account: &Account) -> Result<(), String> {
        match self {
            Storage::File(path) => file::save(path, resolver, whole),
            Storage::Shared(t) => t.put_account(resolver, account).await,
        }
    }

    /// Keep a new certificate (`whole` is the resolver's state with it).
    pub(super) async fn save_cert(
        &self,
        resolver: &str,
        whole: &Resolver,
        cert: &Stored,
        (not_before, not_after): (u64, u64),
    ) -> Result<(), String> {
        match self {
            Storage::File(path) => file::save(path, resolver, whole),
            Storage::Shared(t) => t.put_cert(resolver, cert, not_before, not_after).await,
        }
    }

    pub(super) async fn lock(&self, resolver: &str, names: &[String]) -> Result<Lock, String> {
        match self {
            Storage::File(_) => Ok(Lock::Taken { attempts: 0 }),
            Storage::Shared(t) => t.lock(resolver, names).await,
        }
    }

    pub(super) async fn release(&self, resolver: &str, names: &[String]) -> Result<(), String> {
        match self {
            Storage::File(_) => Ok(()),
            Storage::Shared(t) => t.release(resolver, names).await,
        }
    }

    pub(super) async fn fail(
        &self,
        resolver: &str,
        names: &[String],
        attempts: u32,
        why: &str,
        backoff: Duration,
    ) -> Result<(), String> {
        match self {
            Storage::File(_) => Ok(()),
            Storage::Shared(t) => t.fail(resolver, names, attempts, why, backoff).await,
        }
    }
}
