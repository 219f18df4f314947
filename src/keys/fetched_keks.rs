//! Plaintext KEKs fetched from a provider, kept for a batch (the embedded
//! and KMIP providers' `batch.rs`) or for a bounded time (the embedded
//! provider's `unlock_cache.rs`), and the local wrap and unwrap under them.
//!
//! Why one map serves all three: a fetch is expensive and serialized. The
//! embedded store opens sled (it reads its segment and fsyncs twice, about
//! 5 ms here) and reads and wipes `master.key`, under the process-wide
//! store mutex; a KMIP server with `wrap = local` answers a GetAttributes
//! and a Get, one message at a time in PyKMIP. Holding the map's lock
//! during a fetch makes concurrent askers of one KEK wait for that single
//! fetch instead of queueing one each.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::crypto::key_wrap;
use crate::crypto::secret::{Dek, Kek};
use crate::keys::{KekRef, ProviderError};

/// What a KEK is being fetched for: only active versions wrap, so a
/// provider checks more before it hands out a wrapping KEK, and the two
/// uses are kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum KekUse {
    Wrap,
    Unwrap,
}

/// Wraps `dek` under `kek_key`, a KEK's plaintext.
pub(crate) fn wrap_under(kek_key: &Kek, dek: &Dek, aad: &[u8]) -> Vec<u8> {
    key_wrap::wrap(kek_key.expose(), dek.expose(), aad)
}

/// Unwraps a DEK wrapped under `kek`, whose plaintext is `kek_key`.
pub(crate) fn unwrap_under(
    kek_key: &Kek,
    kek: &KekRef,
    wrapped: &[u8],
    aad: &[u8],
) -> Result<Dek, ProviderError> {
    let dek = key_wrap::unwrap(kek_key.expose(), wrapped, aad)
        .map_err(|_| ProviderError::UnwrapFailed { kek: kek.clone() })?;
    Ok(Dek::from_bytes(*dek))
}

/// KEKs by (version, use), with the instant each fetch started.
type Entries = BTreeMap<(u32, KekUse), (Instant, Arc<Kek>)>;

/// Plaintext KEKs (zeroizing [`Kek`]s) fetched by one batch or cache.
pub(crate) struct FetchedKeks {
    /// How long after its fetch started an entry still serves, and after
    /// which it is wiped; `None`: until this map is dropped (a batch).
    /// Immutable.
    ttl: Option<Duration>,
    /// The entries. Held while a missing or expired entry is fetched, so
    /// concurrent askers fetch it once; taken last, inside any other lock
    /// of the caller. Shared (weakly) with the expiry threads only.
    entries: Arc<Mutex<Entries>>,
}

impl FetchedKeks {
    /// A map whose entries last until it is dropped.
    pub(crate) fn for_batch() -> Self {
        Self {
            ttl: None,
            entries: Arc::default(),
        }
    }

    /// A map whose entries serve for `ttl` after their fetch started and
    /// are wiped then, by a short-lived thread, whether or not anyone asks
    /// again.
    pub(crate) fn expiring(ttl: Duration) -> Self {
        Self {
            ttl: Some(ttl),
            entries: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map holds only finished fetches: a panic elsewhere cannot
        // have left an entry half made.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry for `key`, from `fetch` if missing or expired. A failure
    /// is not kept: the next asker fetches again.
    pub(crate) fn get_or_fetch(
        &self,
        key: (u32, KekUse),
        fetch: impl FnOnce() -> Result<Kek, ProviderError>,
    ) -> Result<Arc<Kek>, ProviderError> {
        let mut entries = self.lock();
        if let Some((started, kek)) = entries.get(&key) {
            if self.ttl.is_none_or(|ttl| started.elapsed() < ttl) {
                return Ok(kek.clone());
            }
        }
        // Timed from before the fetch: what it read is the store's state
        // no earlier than this, so the bound holds from the store's side.
        let started = Instant::now();
        let kek = Arc::new(fetch()?);
        entries.insert(key, (started, kek.clone()));
        drop(entries);
        self.expire_later(key);
        Ok(kek)
    }

    /// Adds an entry fetched by the caller (with another read of the same
    /// opening of the store), timed from `started`.
    pub(crate) fn insert(&self, key: (u32, KekUse), started: Instant, kek: Kek) {
        self.lock().insert(key, (started, Arc::new(kek)));
        self.expire_later(key);
    }

    /// Wipes every entry (clones held by operations in flight go when
    /// those end).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// With a TTL, starts a thread that wipes `key`'s entry once it has
    /// expired. If no thread can be started, the entry is wiped now: a KEK
    /// is never kept longer than the TTL, only fetched more often.
    fn expire_later(&self, key: (u32, KekUse)) {
        let Some(ttl) = self.ttl else { return };
        let entries: Weak<Mutex<Entries>> = Arc::downgrade(&self.entries);
        let started = std::thread::Builder::new()
            .name("vmcryptfs-kek-expiry".into())
            .spawn(move || {
                std::thread::sleep(ttl);
                if let Some(entries) = entries.upgrade() {
                    wipe_expired(&entries, key, ttl);
                }
            });
        if let Err(err) = started {
            log::warn!("no thread to expire a cached KEK ({err}); not caching it");
            self.lock().remove(&key);
        }
    }
}

/// Removes `key`'s entry if it is at least `ttl` old (a newer fetch of the
/// same key has its own thread).
fn wipe_expired(entries: &Mutex<Entries>, key: (u32, KekUse), ttl: Duration) {
    let mut entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
    if entries
        .get(&key)
        .is_some_and(|(started, _)| started.elapsed() >= ttl)
    {
        entries.remove(&key);
    }
}

#[cfg(test)]
impl FetchedKeks {
    /// How many KEKs are held now.
    pub(crate) fn held(&self) -> usize {
        self.lock().len()
    }
}
