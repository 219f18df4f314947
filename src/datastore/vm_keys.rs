//! Creating encrypted VM homes, unlocking their bundles, shallow re-key.
//!
//! These are the `wrap_file_key` / `unwrap_stanza` of vmcryptfs: DEKs are
//! wrapped by the provider under a KEK version with the bundle's AAD
//! ([`KeyBundle::wrap_aad`]), so the KEK authenticates every bundle field.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::bundle_file::{self, BundleLock};
use super::owned_file::{list_dir, VmDir};
use super::DatastoreError;
use crate::crypto::keyring::VmKeyring;
use crate::crypto::secret::Dek;
use crate::format::bundle::{KeyBundle, WrappedDek};
use crate::format::content_layout::ContentLayout;
use crate::keys::{KekRef, KeyProvider, ProviderError};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unwraps every DEK of `bundle`.
pub fn unlock(bundle: &KeyBundle, provider: &dyn KeyProvider) -> Result<VmKeyring, ProviderError> {
    let mut deks = BTreeMap::new();
    for entry in &bundle.deks {
        let aad = bundle.wrap_aad(entry.generation);
        let dek = provider.unwrap_dek(&bundle.kek, &entry.wrapped, &aad)?;
        deks.insert(entry.generation, dek);
    }
    Ok(VmKeyring::new(
        bundle.vm_id,
        bundle.current_generation,
        deks,
    ))
}

/// Fills `bundle.deks` by wrapping each DEK of `keyring` under `bundle.kek`.
/// All metadata must be final first, since the AAD covers it.
fn wrap_all(
    bundle: &mut KeyBundle,
    keyring: &VmKeyring,
    provider: &dyn KeyProvider,
) -> Result<(), ProviderError> {
    bundle.deks = keyring
        .deks()
        .map(|(generation, _)| WrappedDek {
            generation,
            wrapped: Vec::new(),
        })
        .collect();
    for (i, (generation, dek)) in keyring.deks().enumerate() {
        let aad = bundle.wrap_aad(generation);
        bundle.deks[i].wrapped = provider.wrap_dek(&bundle.kek, dek, &aad)?;
    }
    Ok(())
}

/// Makes `path` a new encrypted VM home with a fresh DEK (generation 1),
/// wrapped under the provider's current KEK. `path` is created if missing
/// and must otherwise be an empty directory.
pub fn create_vm_home(
    path: &Path,
    provider: &dyn KeyProvider,
    encrypt_disks: bool,
    content_layout: ContentLayout,
) -> Result<KeyBundle, DatastoreError> {
    std::fs::create_dir_all(path)
        .map_err(|e| DatastoreError::io(format!("creating VM home {}", path.display()), e))?;
    let vm = VmDir::open(path)?;
    let non_empty = !list_dir(vm.fd(), path)?.is_empty();
    if non_empty && !bundle_file::has_bundle_in(&vm) {
        return Err(DatastoreError::NotEmpty { path: path.into() });
    }
    create_bundle(path, provider, encrypt_disks, content_layout)
}

/// Writes a first bundle (new VM id, DEK generation 1) into `path`, which
/// may already hold files (they are converted afterwards by `convert`).
pub fn create_bundle(
    path: &Path,
    provider: &dyn KeyProvider,
    encrypt_disks: bool,
    content_layout: ContentLayout,
) -> Result<KeyBundle, DatastoreError> {
    let lock = BundleLock::acquire(path)?;
    if bundle_file::has_bundle_in(lock.vm()) {
        return Err(DatastoreError::AlreadyVmHome { path: path.into() });
    }
    let provider_err = |source| DatastoreError::Provider {
        path: path.into(),
        source,
    };
    let mut deks = BTreeMap::new();
    deks.insert(1, Dek::generate());
    let vm_id: [u8; 16] = crate::crypto::random::array();
    let keyring = VmKeyring::new(vm_id, 1, deks);
    let now = unix_now();
    let mut bundle = KeyBundle {
        vm_id,
        encrypt_disks,
        content_layout,
        sequence: 1,
        created_unix: now,
        updated_unix: now,
        kek: provider.current_kek().map_err(provider_err)?,
        current_generation: 1,
        deks: Vec::new(),
    };
    wrap_all(&mut bundle, &keyring, provider).map_err(provider_err)?;
    lock.write(&bundle)?;
    Ok(bundle)
}

/// Rewrites the bundle of `vm_dir` to hold exactly the DEKs of `keyring`
/// (its current generation becoming current), the given disk policy and
/// content format, wrapped under the provider's current KEK. Used by deep
/// re-key (adding a generation, then dropping the old ones), by disk
/// conversions and by format conversions.
pub fn rewrite_bundle(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    keyring: &VmKeyring,
    encrypt_disks: bool,
    content_layout: ContentLayout,
) -> Result<KeyBundle, DatastoreError> {
    let lock = BundleLock::acquire(vm_dir)?;
    let old = bundle_file::read_in(lock.vm())?;
    let provider_err = |source| DatastoreError::Provider {
        path: vm_dir.into(),
        source,
    };
    let mut bundle = old.clone();
    bundle.encrypt_disks = encrypt_disks;
    bundle.content_layout = content_layout;
    bundle.current_generation = keyring.current_generation();
    bundle.kek = provider.current_kek_for(&old.kek).map_err(provider_err)?;
    bundle.sequence = old.sequence + 1;
    bundle.updated_unix = unix_now().max(old.updated_unix);
    wrap_all(&mut bundle, keyring, provider).map_err(provider_err)?;
    lock.write(&bundle)?;
    Ok(bundle)
}

/// What a shallow re-key did.
#[derive(Debug, Clone)]
pub struct RekeyOutcome {
    /// The KEK the bundle was wrapped under before.
    pub from: KekRef,
    /// The KEK it is wrapped under now.
    pub to: KekRef,
    /// The bundle as written.
    pub bundle: KeyBundle,
    /// The keyring (unchanged DEKs), for callers that cache it.
    pub keyring: Arc<VmKeyring>,
}

/// Shallow re-key: rewraps the VM's DEKs, unchanged, under the provider's
/// current KEK version and rewrites only the bundle, atomically. Nothing
/// else in the VM home is read or written, so the cost does not depend on
/// the VM's size, and open files (which hold keys derived from the same
/// DEKs) are not disturbed.
pub fn shallow_rekey(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
) -> Result<RekeyOutcome, DatastoreError> {
    shallow_rekey_with_cache(vm_dir, provider, None)
}

/// [`shallow_rekey`], able to rescue a VM whose bundle no longer unwraps
/// (its KEK version was destroyed) from a keyring a mount still holds in
/// memory. The cache is used only if it is this VM's (same VM id and DEK
/// generations), so a keyring from before a deep re-key is never written
/// back.
pub fn shallow_rekey_with_cache(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    cached: Option<&VmKeyring>,
) -> Result<RekeyOutcome, DatastoreError> {
    let lock = BundleLock::acquire(vm_dir)?;
    let old = bundle_file::read_in(lock.vm())?;
    let provider_err = |source| DatastoreError::Provider {
        path: vm_dir.into(),
        source,
    };
    let keyring = match unlock(&old, provider) {
        Ok(keyring) => Arc::new(keyring),
        Err(err) => match cached.filter(|k| cache_matches(k, &old)) {
            Some(cached) => {
                log::warn!(
                    "VM home {}: bundle does not unwrap ({err}); rescuing it with the DEKs held in memory",
                    crate::format::untrusted::path(vm_dir)
                );
                Arc::new(copy_keyring(cached))
            }
            None => return Err(provider_err(err)),
        },
    };
    let mut bundle = old.clone();
    bundle.kek = provider.current_kek_for(&old.kek).map_err(provider_err)?;
    bundle.sequence = old.sequence + 1;
    bundle.updated_unix = unix_now().max(old.updated_unix);
    wrap_all(&mut bundle, &keyring, provider).map_err(provider_err)?;
    lock.write(&bundle)?;
    Ok(RekeyOutcome {
        from: old.kek,
        to: bundle.kek.clone(),
        bundle,
        keyring,
    })
}

/// Whether a cached keyring belongs to the VM and DEK generations of `bundle`.
fn cache_matches(keyring: &VmKeyring, bundle: &KeyBundle) -> bool {
    keyring.vm_id() == &bundle.vm_id
        && keyring.current_generation() == bundle.current_generation
        && keyring
            .deks()
            .map(|(g, _)| g)
            .eq(bundle.deks.iter().map(|d| d.generation))
}

fn copy_keyring(keyring: &VmKeyring) -> VmKeyring {
    let deks = keyring.deks().map(|(g, d)| (g, d.clone())).collect();
    VmKeyring::new(*keyring.vm_id(), keyring.current_generation(), deks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::embedded::EmbeddedProvider;

    fn provider(dir: &Path) -> EmbeddedProvider {
        EmbeddedProvider::init(&dir.join("ks")).unwrap().0
    }

    /// A new VM home at `path` without encrypted disks, in format 2.
    fn new_vm_home(path: &Path, provider: &EmbeddedProvider) -> KeyBundle {
        create_vm_home(path, provider, false, ContentLayout::PageAligned).unwrap()
    }

    #[test]
    fn create_unlock_and_rekey_keep_the_dek() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let vm = dir.path().join("vm1");
        let bundle = create_vm_home(&vm, &provider, true, ContentLayout::PageAligned).unwrap();
        let fingerprint = unlock(&bundle, &provider).unwrap().current_fingerprint();
        provider.rotate().unwrap();
        let outcome = shallow_rekey(&vm, &provider).unwrap();
        assert_eq!((outcome.from.version, outcome.to.version), (1, 2));
        assert_eq!(outcome.bundle.sequence, 2);
        let reread = bundle_file::read(&vm).unwrap();
        assert_eq!(reread, outcome.bundle);
        assert_eq!(
            unlock(&reread, &provider).unwrap().current_fingerprint(),
            fingerprint
        );
        assert!(matches!(
            create_vm_home(&vm, &provider, false, ContentLayout::PageAligned),
            Err(DatastoreError::AlreadyVmHome { .. })
        ));
    }

    /// Every single-bit change anywhere in a real bundle is caught, either
    /// by the parser or by the KEK when unwrapping.
    #[test]
    fn every_bit_of_a_real_bundle_is_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let vm = dir.path().join("vm1");
        new_vm_home(&vm, &provider);
        let bytes = std::fs::read(bundle_file::bundle_path(&vm)).unwrap();
        for byte in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = bytes.clone();
                bad[byte] ^= 1 << bit;
                if let Ok(parsed) = KeyBundle::parse(&bad) {
                    assert!(
                        unlock(&parsed, &provider).is_err(),
                        "byte {byte} bit {bit} went undetected"
                    );
                }
            }
        }
    }

    #[test]
    fn another_vms_bundle_does_not_open_this_vms_files() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let a = new_vm_home(&dir.path().join("a"), &provider);
        let b = new_vm_home(&dir.path().join("b"), &provider);
        let ka = unlock(&a, &provider).unwrap();
        let kb = unlock(&b, &provider).unwrap();
        assert_ne!(ka.current_fingerprint(), kb.current_fingerprint());
        assert_ne!(ka.vm_id(), kb.vm_id());
    }
}
