//! A VM's unwrapped DEKs: what a mount caches per unlocked VM.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::kdf;
use super::secret::Dek;

/// The unwrapped DEKs of one VM home, by generation. Immutable once built;
/// a shallow re-key rewraps the same DEKs, so an open file's keyring stays
/// valid across it.
pub struct VmKeyring {
    vm_id: [u8; 16],
    current_generation: u32,
    deks: BTreeMap<u32, Dek>,
    /// [`VmKeyring::current_fingerprint`], derived on first use and kept:
    /// every status read shows it for every unlocked VM, and an HKDF per
    /// VM per read was a tenth of a root `.control` read at ten thousand
    /// VMs. Set once (its own synchronisation); public, like the value.
    fingerprint: OnceLock<String>,
}

impl VmKeyring {
    /// Builds a keyring. `deks` must contain `current_generation`.
    pub fn new(vm_id: [u8; 16], current_generation: u32, deks: BTreeMap<u32, Dek>) -> Self {
        assert!(
            deks.contains_key(&current_generation),
            "keyring without its current DEK generation"
        );
        Self {
            vm_id,
            current_generation,
            deks,
            fingerprint: OnceLock::new(),
        }
    }

    /// The VM id (salt of every derived key).
    pub fn vm_id(&self) -> &[u8; 16] {
        &self.vm_id
    }

    /// The generation new files are encrypted under.
    pub fn current_generation(&self) -> u32 {
        self.current_generation
    }

    /// The DEK of one generation, if the bundle holds it.
    pub fn dek(&self, generation: u32) -> Option<&Dek> {
        self.deks.get(&generation)
    }

    /// All generations with their DEKs, ascending.
    pub fn deks(&self) -> impl Iterator<Item = (u32, &Dek)> {
        self.deks.iter().map(|(g, d)| (*g, d))
    }

    /// Public fingerprint of the current DEK (reveals nothing about it).
    pub fn current_fingerprint(&self) -> String {
        self.fingerprint
            .get_or_init(|| kdf::dek_fingerprint(&self.deks[&self.current_generation], &self.vm_id))
            .clone()
    }
}

impl std::fmt::Debug for VmKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmKeyring")
            .field("vm_id", &hex::encode(self.vm_id))
            .field("current_generation", &self.current_generation)
            .field("generations", &self.deks.keys().collect::<Vec<_>>())
            .finish()
    }
}
