//! What every provider's batch (see [`KeyProvider::batch`]) does the same
//! way: it reads the current KEK once, at its first need, answers every VM
//! of the batch with it, and forgets it, with whatever else it fetched,
//! when the batch itself changes the provider (rotate, retire, destroy).
//! So a batch sees the provider's state as of that first read, as an
//! operation that started just before a rotation would. Each provider
//! supplies the rest as a [`BatchSource`]: how it reads the current KEK,
//! and how it wraps and unwraps within the batch.

use std::sync::{Mutex, PoisonError};

use crate::crypto::secret::Dek;
use crate::keys::{KekRef, KekVersionInfo, KeyProvider, ProviderError};

/// A provider's own part of its batch.
pub(crate) trait BatchSource: Send + Sync {
    /// The provider the batch serves.
    fn provider(&self) -> &dyn KeyProvider;

    /// Reads the provider's current KEK; [`Batch`] calls it once, holding
    /// its memo's lock, so concurrent workers ask once.
    fn read_current(&self) -> Result<KekRef, ProviderError> {
        self.provider().current_kek()
    }

    /// Wraps `dek` under `kek` for the batch.
    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.provider().wrap_dek(kek, dek, aad)
    }

    /// Unwraps a DEK wrapped under `kek` for the batch.
    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        self.provider().unwrap_dek(kek, wrapped, aad)
    }

    /// Forgets whatever the source fetched: the provider changed under the
    /// batch.
    fn forget(&self) {}
}

/// A provider for one batch of operations: `source` with its current KEK
/// memoized.
pub(crate) struct Batch<S> {
    source: S,
    /// The current KEK, read at the first ask; held while it is read (the
    /// source's own locks are taken inside it, never the other way round).
    /// A failure is not kept: the next VM asks again.
    current: Mutex<Option<KekRef>>,
}

impl<S: BatchSource> Batch<S> {
    pub(crate) fn new(source: S) -> Self {
        Self {
            source,
            current: Mutex::new(None),
        }
    }

    /// Forgets the current KEK and what the source fetched, then makes
    /// `change` to the provider.
    fn forget_then<T>(&self, change: impl FnOnce(&dyn KeyProvider) -> T) -> T {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.source.forget();
        change(self.source.provider())
    }
}

impl<S: BatchSource> KeyProvider for Batch<S> {
    fn name(&self) -> &str {
        self.source.provider().name()
    }

    fn current_kek(&self) -> Result<KekRef, ProviderError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kek) = &*current {
            return Ok(kek.clone());
        }
        let kek = self.source.read_current()?;
        *current = Some(kek.clone());
        Ok(kek)
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.source.wrap_dek(kek, dek, aad)
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        self.source.unwrap_dek(kek, wrapped, aad)
    }

    fn list_versions(&self) -> Result<Vec<KekVersionInfo>, ProviderError> {
        self.source.provider().list_versions()
    }

    fn rotate(&self) -> Result<KekRef, ProviderError> {
        self.forget_then(|provider| provider.rotate())
    }

    fn retire(&self, version: u32) -> Result<(), ProviderError> {
        self.forget_then(|provider| provider.retire(version))
    }

    fn destroy(&self, version: u32) -> Result<(), ProviderError> {
        self.forget_then(|provider| provider.destroy(version))
    }
}
