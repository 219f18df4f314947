//! [`ProviderSet`]: every key provider this host knows, as one
//! [`KeyProvider`].
//!
//! Unwrapping goes to the provider a bundle names, so one mount serves VMs
//! of several providers. New VM homes are wrapped by the default provider;
//! a re-key keeps a VM with the provider that wraps it (moving it to that
//! provider's current KEK), unless the set was made to target another
//! provider ([`ProviderSet::targeting`], `rekey --provider`), which moves
//! it there. Either way only the bundle changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::embedded::{EmbeddedProvider, EMBEDDED_PROVIDER_NAME};
use super::kmip::KmipProvider;
use super::registry::{ProviderEntry, Registry};
use super::{KekRef, KekVersionInfo, KeyProvider, ProviderError};
use crate::crypto::secret::Dek;

/// The providers of one key store directory.
#[derive(Clone)]
pub struct ProviderSet {
    /// The key store directory (embedded provider and registry). Immutable.
    keystore: PathBuf,
    /// Name of the provider that wraps new VM homes. Immutable.
    default: String,
    /// When set, every re-key moves VMs to this provider. Immutable.
    target: Option<String>,
    /// Providers by name. `local` is absent when the embedded key store
    /// did not open; asking for it then reports why. Immutable.
    providers: BTreeMap<String, Arc<dyn KeyProvider>>,
}

impl ProviderSet {
    /// Opens the embedded provider and every registered one. External
    /// providers are not contacted until used. Fails if the registry is
    /// unreadable, or if the embedded store does not open and nothing else
    /// is registered (so a bare host gets the embedded store's own error).
    pub fn open(keystore: &Path) -> Result<Self, ProviderError> {
        let registry = Registry::load(keystore)?;
        let mut providers: BTreeMap<String, Arc<dyn KeyProvider>> = BTreeMap::new();
        match EmbeddedProvider::open(keystore) {
            Ok(local) => {
                providers.insert(EMBEDDED_PROVIDER_NAME.into(), Arc::new(local));
            }
            Err(err) if registry.providers.is_empty() => return Err(err),
            Err(err) => log::debug!("embedded key store not available: {err}"),
        }
        for (name, entry) in &registry.providers {
            let provider: Arc<dyn KeyProvider> = match entry {
                ProviderEntry::Kmip(config) => {
                    Arc::new(KmipProvider::new(name, config.clone()).recording_in(keystore))
                }
            };
            providers.insert(name.clone(), provider);
        }
        Ok(Self {
            keystore: keystore.into(),
            default: registry.default_name().to_owned(),
            target: None,
            providers,
        })
    }

    /// The key store directory (which also holds the bundle sequence
    /// record, see [`super::bundle_sequences`]).
    pub fn keystore(&self) -> &Path {
        &self.keystore
    }

    /// This set, re-keying every VM to provider `name`.
    pub fn targeting(&self, name: &str) -> Result<Self, ProviderError> {
        self.get(name)?;
        Ok(Self {
            target: Some(name.to_owned()),
            ..self.clone()
        })
    }

    /// This set for one batch of operations (a re-key of every VM home):
    /// each provider that can batch ([`KeyProvider::batch`]) replaced by
    /// its batch. Drop it when the batch ends: the embedded provider's
    /// batch holds plaintext KEKs until then.
    pub fn batched(&self) -> Self {
        self.with_each(|provider| provider.batch())
    }

    /// This set for a mount's unlocks: each provider that can
    /// ([`KeyProvider::caching_unlocks`]) replaced by its caching form, so
    /// a burst of first unlocks shares its key store openings. Its
    /// [`ProviderSet::batched`] is still the providers' batches.
    pub fn caching_unlocks(&self) -> Self {
        self.with_each(|provider| provider.caching_unlocks())
    }

    /// This set with each provider replaced by what `replace` makes of it,
    /// where it makes something.
    fn with_each(
        &self,
        replace: impl Fn(Arc<dyn KeyProvider>) -> Option<Arc<dyn KeyProvider>>,
    ) -> Self {
        Self {
            providers: self
                .providers
                .iter()
                .map(|(name, provider)| {
                    let replaced = replace(provider.clone());
                    (name.clone(), replaced.unwrap_or_else(|| provider.clone()))
                })
                .collect(),
            ..self.clone()
        }
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        if let Some(provider) = self.providers.get(name) {
            return Ok(provider.clone());
        }
        if name == EMBEDDED_PROVIDER_NAME {
            // Not opened: open again, for the embedded store's own error.
            return Ok(Arc::new(EmbeddedProvider::open(&self.keystore)?));
        }
        Err(ProviderError::UnknownProvider { name: name.into() })
    }

    /// The provider that wraps new VM homes (or the target, if set).
    pub fn default_provider(&self) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        self.get(self.target.as_deref().unwrap_or(&self.default))
    }

    /// Name of the provider that wraps new VM homes.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Names of every available provider, `local` first if present.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.providers.keys().cloned().collect();
        names.sort_by_key(|n| (n != EMBEDDED_PROVIDER_NAME, n.clone()));
        names
    }
}

impl KeyProvider for ProviderSet {
    fn name(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.default)
    }

    fn current_kek(&self) -> Result<KekRef, ProviderError> {
        self.default_provider()?.current_kek()
    }

    fn current_kek_for(&self, existing: &KekRef) -> Result<KekRef, ProviderError> {
        match (&self.target, self.providers.get(&existing.provider)) {
            (None, Some(provider)) => provider.current_kek(),
            _ => self.current_kek(),
        }
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.get(&kek.provider)?.wrap_dek(kek, dek, aad)
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        self.get(&kek.provider)?.unwrap_dek(kek, wrapped, aad)
    }

    fn list_versions(&self) -> Result<Vec<KekVersionInfo>, ProviderError> {
        self.default_provider()?.list_versions()
    }

    fn rotate(&self) -> Result<KekRef, ProviderError> {
        self.default_provider()?.rotate()
    }

    fn retire(&self, version: u32) -> Result<(), ProviderError> {
        self.default_provider()?.retire(version)
    }

    fn destroy(&self, version: u32) -> Result<(), ProviderError> {
        self.default_provider()?.destroy(version)
    }

    fn forget_cached(&self) {
        for provider in self.providers.values() {
            provider.forget_cached();
        }
    }
}
