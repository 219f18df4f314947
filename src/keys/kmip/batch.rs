//! The KMIP provider for one batch of operations (a re-key of every VM
//! home).
//!
//! Asking a KMIP provider for its current KEK lists the series on the KMS
//! (a Locate and a GetAttributes per version): four requests of the six a
//! re-key of one VM made. A batch asks once, at its first need, and
//! answers every VM with that, as the embedded provider's batch does: it
//! sees the provider's state as of that moment, as an operation that
//! started just before a rotation would. Wrapping and unwrapping still
//! go to the KMS per VM (batched into shared messages by the client).

use std::sync::{Arc, Mutex, PoisonError};

use super::KmipProvider;
use crate::crypto::secret::Dek;
use crate::keys::{KekRef, KekVersionInfo, KeyProvider, ProviderError};

/// [`KmipProvider`] with its current KEK read once per batch.
pub(super) struct KmipBatch {
    /// The provider. Immutable.
    provider: Arc<KmipProvider>,
    /// The current KEK, read at the first ask; held while it is read, so
    /// concurrent workers ask the KMS once. A failure is not kept.
    current: Mutex<Option<KekRef>>,
}

impl KmipBatch {
    pub(super) fn new(provider: Arc<KmipProvider>) -> Self {
        Self {
            provider,
            current: Mutex::new(None),
        }
    }

    /// Forgets the current KEK: the KMS changed under this batch.
    fn forget(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl KeyProvider for KmipBatch {
    fn name(&self) -> &str {
        self.provider.name()
    }

    fn current_kek(&self) -> Result<KekRef, ProviderError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kek) = &*current {
            return Ok(kek.clone());
        }
        let kek = self.provider.current_kek()?;
        *current = Some(kek.clone());
        Ok(kek)
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.provider.wrap_dek(kek, dek, aad)
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        self.provider.unwrap_dek(kek, wrapped, aad)
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
