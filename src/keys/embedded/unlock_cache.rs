//! The embedded provider as a mount uses it: unwrapping KEKs kept for
//! [`UNLOCK_KEK_TTL`], so a burst of first unlocks (every VM of a host
//! powering on after a reboot) shares one opening of the store per KEK
//! version and TTL instead of opening it once per VM, one VM at a time.
//!
//! Bounds (DESIGN.md §2.6, "unlock bursts"):
//!
//! * A plaintext KEK is held at most [`UNLOCK_KEK_TTL`] after the fetch
//!   that read it started; a thread wipes it then even if nobody asks
//!   again. The master key is wiped after each fetch, as before.
//! * Only unwrapping is cached. Wrapping, the current version, rotate and
//!   list go to the store each time, so a `provider rotate` shows at once.
//! * A version destroyed (or the store replaced) by another process stops
//!   unlocking VMs in this mount at most [`UNLOCK_KEK_TTL`] after the
//!   destroy returns. A destroy through this provider clears the cache, so
//!   it takes effect at once.
//! * The store is opened only for the fetch, as every operation opens it:
//!   the CLI waits for sled's lock no longer than it did before.

use std::sync::Arc;
use std::time::Duration;

use super::EmbeddedProvider;
use crate::crypto::secret::Dek;
use crate::keys::fetched_keks::{unwrap_under, FetchedKeks, KekUse};
use crate::keys::{KekRef, KekVersionInfo, KeyProvider, ProviderError};

/// How long an unwrapping KEK serves unlocks after its fetch started: the
/// bound on how long a version destroyed elsewhere still unlocks VMs here.
pub const UNLOCK_KEK_TTL: Duration = Duration::from_secs(1);

/// [`EmbeddedProvider`] with unwrapping KEKs kept for a bounded time.
pub(super) struct UnlockCache {
    /// The provider. Immutable.
    provider: Arc<EmbeddedProvider>,
    /// Unwrapping KEKs, each for [`UNLOCK_KEK_TTL`]; its own lock.
    keks: FetchedKeks,
}

impl UnlockCache {
    pub(super) fn new(provider: Arc<EmbeddedProvider>, ttl: Duration) -> Self {
        Self {
            provider,
            keks: FetchedKeks::expiring(ttl),
        }
    }
}

impl KeyProvider for UnlockCache {
    fn name(&self) -> &str {
        self.provider.name()
    }

    fn current_kek(&self) -> Result<KekRef, ProviderError> {
        self.provider.current_kek()
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.provider.wrap_dek(kek, dek, aad)
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        // The owner check is cheap and must hold for every bundle.
        self.provider.check_owner(kek)?;
        let plain = self.keks.get_or_fetch((kek.version, KekUse::Unwrap), || {
            self.provider.kek_for(kek, KekUse::Unwrap)
        })?;
        unwrap_under(&plain, kek, wrapped, aad)
    }

    fn list_versions(&self) -> Result<Vec<KekVersionInfo>, ProviderError> {
        self.provider.list_versions()
    }

    fn rotate(&self) -> Result<KekRef, ProviderError> {
        self.provider.rotate()
    }

    fn retire(&self, version: u32) -> Result<(), ProviderError> {
        // Retired versions still unwrap: nothing cached changes.
        self.provider.retire(version)
    }

    fn destroy(&self, version: u32) -> Result<(), ProviderError> {
        let result = self.provider.destroy(version);
        // After the destroy, not before: a fetch that read the store just
        // before the destroy committed is wiped too.
        self.keks.clear();
        result
    }

    fn batch(self: Arc<Self>) -> Option<Arc<dyn KeyProvider>> {
        self.provider.clone().batch()
    }

    fn caching_unlocks(self: Arc<Self>) -> Option<Arc<dyn KeyProvider>> {
        Some(self)
    }

    fn forget_cached(&self) {
        self.keks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const AAD: &[u8] = b"bundle aad";

    fn wrapped_under(provider: &EmbeddedProvider, kek: &KekRef) -> (Dek, Vec<u8>) {
        let dek = Dek::generate();
        let wrapped = provider.wrap_dek(kek, &dek, AAD).unwrap();
        (dek, wrapped)
    }

    #[test]
    fn a_burst_of_unwraps_opens_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, v1) = EmbeddedProvider::init(dir.path()).unwrap();
        let wrapped: Vec<_> = (0..32).map(|_| wrapped_under(&provider, &v1)).collect();
        let cache = Arc::new(UnlockCache::new(
            Arc::new(provider),
            Duration::from_secs(60),
        ));
        let opens = || cache.provider.keystore.opens.load(Ordering::Relaxed);
        let before = opens();
        std::thread::scope(|scope| {
            for (dek, blob) in &wrapped {
                let (cache, v1) = (cache.clone(), &v1);
                scope.spawn(move || {
                    let got = cache.unwrap_dek(v1, blob, AAD).unwrap();
                    assert_eq!(got.expose(), dek.expose());
                });
            }
        });
        // One opening for all 32 (without the cache: 32, one at a time).
        assert_eq!(opens() - before, 1);
        // A bundle that does not authenticate still fails under the
        // cached KEK.
        let mut bad = wrapped[0].1.clone();
        bad[5] ^= 1;
        assert!(matches!(
            cache.unwrap_dek(&v1, &bad, AAD),
            Err(ProviderError::UnwrapFailed { .. })
        ));
    }

    #[test]
    fn a_destroy_elsewhere_stops_unlocks_within_the_ttl_and_here_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, v1) = EmbeddedProvider::init(dir.path()).unwrap();
        let (_, blob) = wrapped_under(&provider, &v1);
        provider.rotate().unwrap();
        let ttl = Duration::from_millis(300);
        let cache = UnlockCache::new(Arc::new(provider), ttl);
        cache.unwrap_dek(&v1, &blob, AAD).unwrap();
        assert_eq!(cache.keks.held(), 1);

        // Another process (another provider on the same store) destroys v1:
        // within the TTL the cached KEK still serves (the documented bound)...
        EmbeddedProvider::open(dir.path())
            .unwrap()
            .destroy(1)
            .unwrap();
        cache.unwrap_dek(&v1, &blob, AAD).unwrap();
        // ...and after it, the entry is wiped without anyone asking, and
        // the next unlock finds the version destroyed.
        std::thread::sleep(ttl + Duration::from_millis(300));
        assert_eq!(cache.keks.held(), 0, "the KEK outlived its TTL");
        assert!(matches!(
            cache.unwrap_dek(&v1, &blob, AAD),
            Err(ProviderError::KekDestroyed { version: 1, .. })
        ));

        // A destroy through the cache itself takes effect at once.
        let dir = tempfile::tempdir().unwrap();
        let (provider, v1) = EmbeddedProvider::init(dir.path()).unwrap();
        let (_, blob) = wrapped_under(&provider, &v1);
        provider.rotate().unwrap();
        let cache = UnlockCache::new(Arc::new(provider), Duration::from_secs(60));
        cache.unwrap_dek(&v1, &blob, AAD).unwrap();
        cache.destroy(1).unwrap();
        assert_eq!(cache.keks.held(), 0);
        assert!(matches!(
            cache.unwrap_dek(&v1, &blob, AAD),
            Err(ProviderError::KekDestroyed { version: 1, .. })
        ));
    }

    #[test]
    fn wrapping_and_the_current_version_are_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, v1) = EmbeddedProvider::init(dir.path()).unwrap();
        let cache = UnlockCache::new(Arc::new(provider), Duration::from_secs(60));
        let other = EmbeddedProvider::open(dir.path()).unwrap();
        let v2 = other.rotate().unwrap();
        assert_eq!(cache.current_kek().unwrap(), v2);
        other.retire(1).unwrap();
        assert!(matches!(
            cache.wrap_dek(&v1, &Dek::generate(), AAD),
            Err(ProviderError::KekNotActive { version: 1, .. })
        ));
    }
}
