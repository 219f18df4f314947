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

use std::sync::Arc;
use std::time::Instant;

use super::EmbeddedProvider;
use crate::crypto::secret::{Dek, Kek};
use crate::keys::batch::{Batch, BatchSource};
use crate::keys::fetched_keks::{unwrap_under, wrap_under, FetchedKeks, KekUse};
use crate::keys::{KekRef, KeyProvider, ProviderError};

/// [`EmbeddedProvider`]'s part of its [`Batch`]: the KEKs it fetched, for
/// the life of the batch.
pub(super) struct EmbeddedBatch {
    /// The provider. Immutable.
    provider: Arc<EmbeddedProvider>,
    /// Plaintext KEKs fetched in this batch, by version and use; wiped when
    /// the batch (and every worker's clone of an entry) is dropped. Its own
    /// lock (see [`FetchedKeks`]), taken inside the batch's memo of the
    /// current KEK only.
    keks: FetchedKeks,
}

impl EmbeddedBatch {
    /// The embedded provider's batch.
    pub(super) fn new(provider: Arc<EmbeddedProvider>) -> Batch<Self> {
        Batch::new(Self {
            provider,
            keks: FetchedKeks::for_batch(),
        })
    }

    /// The plaintext KEK of `kek` for `usage`, fetched on first use. A
    /// failure is not kept: the next VM asks the store again.
    fn kek(&self, kek: &KekRef, usage: KekUse) -> Result<Arc<Kek>, ProviderError> {
        // The owner check is cheap and must hold for every bundle.
        self.provider.check_owner(kek)?;
        self.keks
            .get_or_fetch((kek.version, usage), || self.provider.kek_for(kek, usage))
    }
}

impl BatchSource for EmbeddedBatch {
    fn provider(&self) -> &dyn KeyProvider {
        &*self.provider
    }

    fn read_current(&self) -> Result<KekRef, ProviderError> {
        // The wrapping KEK comes with it, from the same opening of the
        // store: each opening is two fsyncs of sled's, a third of the
        // time of a `vm create`.
        let started = Instant::now();
        match self.provider.current_for_wrap() {
            Ok((kek, plain)) => {
                self.keks
                    .insert((kek.version, KekUse::Wrap), started, plain);
                Ok(kek)
            }
            Err(_) => self.provider.current_kek(),
        }
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        Ok(wrap_under(&*self.kek(kek, KekUse::Wrap)?, dek, aad))
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        unwrap_under(&*self.kek(kek, KekUse::Unwrap)?, kek, wrapped, aad)
    }

    /// Forgets every KEK fetched: the store changed under this batch.
    fn forget(&self) {
        self.keks.clear();
    }
}
