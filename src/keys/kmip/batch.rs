//! The KMIP provider for one batch of operations (a re-key of every VM
//! home).
//!
//! Asking a KMIP provider for its current KEK lists the series on the KMS
//! (a Locate and a GetAttributes per version): four requests of the six a
//! re-key of one VM made. A batch asks once, at its first need, and
//! answers every VM with that, as the embedded provider's batch does: it
//! sees the provider's state as of that moment, as an operation that
//! started just before a rotation would.
//!
//! With `wrap = server` the KEK never leaves the KMS, so wrapping and
//! unwrapping still go to it per VM (batched into shared messages by the
//! client): two batch items per VM, which PyKMIP serves one at a time.
//! With `wrap = local` the host holds the KEK anyway, so the batch fetches
//! each version's key once per use (a GetAttributes and a Get for a
//! wrapping key, a Get for an unwrapping one) and keeps it, zeroizing,
//! until the batch is dropped: a re-key of every VM then costs the KMS a
//! handful of requests, whatever the number of VMs.

use std::sync::Arc;

use super::config::WrapMode;
use super::KmipProvider;
use crate::crypto::secret::{Dek, Kek};
use crate::keys::batch::{Batch, BatchSource};
use crate::keys::fetched_keks::{unwrap_under, wrap_under, FetchedKeks, KekUse};
use crate::keys::{KekRef, KeyProvider, ProviderError};

/// [`KmipProvider`]'s part of its [`Batch`].
pub(super) struct KmipBatch {
    /// The provider. Immutable.
    provider: Arc<KmipProvider>,
    /// With `wrap = local`, the keys fetched in this batch, by version and
    /// use; wiped when the batch (and every worker's clone of an entry) is
    /// dropped. Empty with `wrap = server`. Its own lock (see
    /// [`FetchedKeks`]), taken inside the batch's memo of the current KEK
    /// only.
    keks: FetchedKeks,
}

impl KmipBatch {
    /// The KMIP provider's batch.
    pub(super) fn new(provider: Arc<KmipProvider>) -> Batch<Self> {
        Batch::new(Self {
            provider,
            keks: FetchedKeks::for_batch(),
        })
    }

    fn wraps_locally(&self) -> bool {
        self.provider.config().wrap == WrapMode::Local
    }

    /// The key of `kek` for `usage`, fetched on first use. A failure is not
    /// kept: the next VM asks the KMS again.
    fn kek(&self, kek: &KekRef, usage: KekUse) -> Result<Arc<Kek>, ProviderError> {
        // The memo is keyed by version alone, so the series of every
        // bundle's reference is checked before it is consulted.
        self.provider.check_series(kek)?;
        self.keks
            .get_or_fetch((kek.version, usage), || self.provider.fetch_kek(kek, usage))
    }
}

impl BatchSource for KmipBatch {
    fn provider(&self) -> &dyn KeyProvider {
        &*self.provider
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        if !self.wraps_locally() {
            return self.provider.wrap_dek(kek, dek, aad);
        }
        Ok(wrap_under(&*self.kek(kek, KekUse::Wrap)?, dek, aad))
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        if !self.wraps_locally() {
            return self.provider.unwrap_dek(kek, wrapped, aad);
        }
        unwrap_under(&*self.kek(kek, KekUse::Unwrap)?, kek, wrapped, aad)
    }

    /// Forgets every key fetched: the batch changed the KMS's keys.
    fn forget(&self) {
        self.keks.clear();
    }
}
