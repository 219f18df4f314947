//! The embedded provider for one batch of operations (a re-key of every VM
//! home).
//!
//! One operation of the embedded provider opens the sled store, reads
//! `master.key`, checks it, unwraps one KEK and wipes both again
//! (DESIGN.md §2.6): about a millisecond, which at ten thousand VMs, three
//! operations each, is most of a re-key of them all. A batch does that
//! once per KEK version and use, and keeps the plaintext KEK (a zeroizing
//! [`Kek`]) until the batch is dropped; the master key is still wiped after
//! each fetch. What a batch fetched is the provider's state at that moment:
//! a version retired or destroyed during the batch still serves the batch,
//! as it would have served an operation that started just before.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::fetched::FetchedKeks;
use super::{unwrap_under, wrap_under, EmbeddedProvider, KekUse};
use crate::crypto::secret::{Dek, Kek};
use crate::keys::{KekRef, KekVersionInfo, KeyProvider, ProviderError};

/// [`EmbeddedProvider`] caching its current version and the KEKs it
/// fetched, for the life of one batch.
pub(super) struct EmbeddedBatch {
    /// The provider. Immutable.
    provider: Arc<EmbeddedProvider>,
    /// The current KEK, read at the first ask. Held while it is read, and
    /// `keks` is taken inside it then, never the other way round.
    current: Mutex<Option<KekRef>>,
    /// Plaintext KEKs fetched in this batch, by version and use; wiped when
    /// the batch (and every worker's clone of an entry) is dropped. Its own
    /// lock (see [`FetchedKeks`]), taken inside `current` only.
    keks: FetchedKeks,
}

impl EmbeddedBatch {
    pub(super) fn new(provider: Arc<EmbeddedProvider>) -> Self {
        Self {
            provider,
            current: Mutex::new(None),
            keks: FetchedKeks::for_batch(),
        }
    }

    /// The plaintext KEK of `kek` for `usage`, fetched on first use. A
    /// failure is not kept: the next VM asks the store again.
    fn kek(&self, kek: &KekRef, usage: KekUse) -> Result<Arc<Kek>, ProviderError> {
        // The owner check is cheap and must hold for every bundle.
        self.provider.check_owner(kek)?;
        self.keks
            .get_or_fetch((kek.version, usage), || self.provider.kek_for(kek, usage))
    }

    /// Forgets everything fetched: the store changed under this batch.
    fn forget(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.keks.clear();
    }
}

impl KeyProvider for EmbeddedBatch {
    fn name(&self) -> &str {
        self.provider.name()
    }

    fn current_kek(&self) -> Result<KekRef, ProviderError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kek) = &*current {
            return Ok(kek.clone());
        }
        // The wrapping KEK comes with it, from the same opening of the
        // store: each opening is two fsyncs of sled's, a third of the
        // time of a `vm create`.
        let started = Instant::now();
        let kek = match self.provider.current_for_wrap() {
            Ok((kek, plain)) => {
                self.keks
                    .insert((kek.version, KekUse::Wrap), started, plain);
                kek
            }
            Err(_) => self.provider.current_kek()?,
        };
        *current = Some(kek.clone());
        Ok(kek)
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        Ok(wrap_under(&*self.kek(kek, KekUse::Wrap)?, dek, aad))
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        unwrap_under(&*self.kek(kek, KekUse::Unwrap)?, kek, wrapped, aad)
    }

    fn list_versions(&self) -> Result<Vec<KekVersionInfo>, ProviderError> {
        self.provider.list_versions()
    }

    fn rotate(&self) -> Result<KekRef, ProviderError> {
        self.forget();
        self.provider.rotate()
    }

    fn retire(&self, version: u32) -> Result<(), ProviderError> {
        self.forget();
        self.provider.retire(version)
    }

    fn destroy(&self, version: u32) -> Result<(), ProviderError> {
        self.forget();
        self.provider.destroy(version)
    }
}
