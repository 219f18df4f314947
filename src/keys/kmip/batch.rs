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

use std::sync::Arc;

use super::KmipProvider;
use crate::keys::batch::{Batch, BatchSource};
use crate::keys::KeyProvider;

/// [`KmipProvider`]'s part of its [`Batch`]: only the provider, as every
/// wrap and unwrap goes to the KMS.
pub(super) struct KmipBatch(Arc<KmipProvider>);

impl KmipBatch {
    /// The KMIP provider's batch.
    pub(super) fn new(provider: Arc<KmipProvider>) -> Batch<Self> {
        Batch::new(Self(provider))
    }
}

impl BatchSource for KmipBatch {
    fn provider(&self) -> &dyn KeyProvider {
        &*self.0
    }
}
