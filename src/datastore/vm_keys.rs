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
use super::layout::StoragePolicy;
use super::owned_file::{list_dir, VmDir};
use super::{DatastoreError, FieldList};
use crate::crypto::keyring::VmKeyring;
use crate::crypto::secret::Dek;
use crate::format::bundle::{KeyBundle, WrappedDek};
use crate::keys::bundle_sequences::{BundleSequences, SequenceCheck, SequenceError};
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
    policy: &StoragePolicy,
) -> Result<KeyBundle, DatastoreError> {
    std::fs::create_dir_all(path)
        .map_err(|e| DatastoreError::io(format!("creating VM home {}", path.display()), e))?;
    let vm = VmDir::open(path)?;
    let non_empty = !list_dir(vm.fd(), path)?.is_empty();
    if non_empty && !bundle_file::has_bundle_in(&vm) {
        return Err(DatastoreError::NotEmpty { path: path.into() });
    }
    create_bundle(path, provider, policy)
}

/// Writes a first bundle (new VM id, DEK generation 1) into `path`, which
/// may already hold files (they are converted afterwards by `convert`).
pub fn create_bundle(
    path: &Path,
    provider: &dyn KeyProvider,
    policy: &StoragePolicy,
) -> Result<KeyBundle, DatastoreError> {
    let lock = BundleLock::acquire(path)?;
    if bundle_file::has_bundle_in(lock.vm()) {
        return Err(DatastoreError::AlreadyVmHome { path: path.into() });
    }
    let provider_err = provider_error(path);
    let mut deks = BTreeMap::new();
    deks.insert(1, Dek::generate());
    let vm_id: [u8; 16] = crate::crypto::random::array();
    let keyring = VmKeyring::new(vm_id, 1, deks);
    let now = unix_now();
    let mut bundle = KeyBundle {
        vm_id,
        encrypt_disks: policy.encrypt_disks,
        disk_pattern: policy.disk_pattern.clone(),
        content_layout: policy.content_layout,
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

/// A bundle this host authenticated (it unwrapped here, or this host wrote
/// it), with the keyring it holds: what a bundle rewrite compares the
/// bundle on disk with, and the only bundle a rescue may re-wrap from
/// memory.
#[derive(Clone, Copy)]
pub struct Authenticated<'a> {
    /// The bundle, field for field as it authenticated.
    pub bundle: &'a KeyBundle,
    /// Its DEKs.
    pub keyring: &'a VmKeyring,
}

/// Checks an authenticated bundle of `vm_dir` against the highest sequence
/// this host has seen for its VM, and raises that record to it. Called on
/// every successful unlock, by mounts and CLI commands alike.
pub fn check_sequence(
    vm_dir: &Path,
    bundle: &KeyBundle,
    sequences: &dyn SequenceCheck,
) -> Result<(), DatastoreError> {
    sequences
        .observe(&bundle.vm_id, bundle.sequence)
        .map_err(|source| match source {
            SequenceError::RolledBack { recorded, found } => DatastoreError::RolledBack {
                path: vm_dir.into(),
                recorded,
                found,
            },
            source => DatastoreError::SequenceRecord {
                path: vm_dir.into(),
                source,
            },
        })
}

/// Records the sequence of a bundle this host just wrote. The bundle is on
/// disk already, so a failure only warns: the next unlock records it.
fn record_written(vm_dir: &Path, bundle: &KeyBundle, sequences: &dyn SequenceCheck) {
    if let Err(err) = check_sequence(vm_dir, bundle, sequences) {
        log::warn!("the key bundle was rewritten, but its sequence was not recorded: {err}");
    }
}

/// Reads the bundle of `vm_dir`, unwraps it and checks that it is not
/// rolled back.
pub fn unlock_vm_dir(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
) -> Result<(KeyBundle, VmKeyring), DatastoreError> {
    unlock_vm(&VmDir::open(vm_dir)?, provider, sequences)
}

/// [`unlock_vm_dir`] for a VM home already opened: the start of every
/// conversion, which holds its VM home open.
pub fn unlock_vm(
    vm: &VmDir,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
) -> Result<(KeyBundle, VmKeyring), DatastoreError> {
    let vm_dir = vm.path();
    let bundle = bundle_file::read_in(vm)?;
    let keyring = unlock(&bundle, provider).map_err(provider_error(vm_dir))?;
    check_sequence(vm_dir, &bundle, sequences)?;
    Ok((bundle, keyring))
}

/// Reads the bundle of `vm_dir` through its held `lock` and
/// authenticates it, so that a rewrite copies only authenticated fields:
///
/// * it unwraps: every field authenticated (this also accepts a re-key by
///   another host, which unwraps fine);
/// * it does not unwrap because its KEK is gone ([`kek_is_gone`]: version
///   destroyed or unknown, provider or key store gone) and is identical to
///   `known`: it is rescued with `known`'s keyring, held in memory;
/// * otherwise it is refused, naming the fields that differ from `known`.
///   An authentication failure never falls back to `known`: a bundle with a
///   flipped `encrypt_disks` bit or provider name is never re-wrapped.
///
/// Then its sequence is checked against this host's record.
fn read_authenticated(
    lock: &BundleLock,
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &dyn SequenceCheck,
    known: Option<Authenticated<'_>>,
) -> Result<(KeyBundle, VmKeyring), DatastoreError> {
    let on_disk = bundle_file::read_in(lock.vm())?;
    let keyring = match (unlock(&on_disk, provider), known) {
        (Ok(keyring), _) => keyring,
        (Err(err), None) => return Err(provider_error(vm_dir)(err)),
        (Err(err), Some(known)) if *known.bundle != on_disk => {
            return Err(DatastoreError::BundleChanged {
                path: vm_dir.into(),
                fields: FieldList(known.bundle.differing_fields(&on_disk)),
                source: Box::new(err),
            })
        }
        (Err(err), Some(_)) if !kek_is_gone(&err) => return Err(provider_error(vm_dir)(err)),
        (Err(err), Some(known)) => {
            log::warn!(
                "VM home {}: bundle does not unwrap ({err}); it is the bundle this host authenticated, so it is rescued with the DEKs held in memory",
                crate::format::untrusted::path(vm_dir)
            );
            copy_keyring(known.keyring)
        }
    };
    check_sequence(vm_dir, &on_disk, sequences)?;
    Ok((on_disk, keyring))
}

/// Whether an unwrap failed because the KEK that wrapped the bundle can no
/// longer be used (destroyed, unknown, its provider or key store gone, or
/// the KMS refusing it: PyKMIP answers a Decrypt with a destroyed key that
/// way): the only failures a rescue from memory answers. An authentication
/// failure means the bundle or the key is not what it claims, and a
/// transient failure (KMS unreachable, key store busy) is retried instead.
fn kek_is_gone(err: &ProviderError) -> bool {
    matches!(
        err,
        ProviderError::KekDestroyed { .. }
            | ProviderError::UnknownKekVersion { .. }
            | ProviderError::UnknownProvider { .. }
            | ProviderError::ForeignKek { .. }
            | ProviderError::KmsKeyNotFound { .. }
            | ProviderError::KmsRefused { .. }
            | ProviderError::NotInitialized { .. }
    )
}

/// Rewrites the bundle of `vm_dir` to hold exactly the DEKs of `keyring`
/// (its current generation becoming current), the given storage policy
/// (disk policy and pattern, content format), wrapped under the provider's current KEK. Used by deep
/// re-key (adding a generation, then dropping the old ones), by disk
/// conversions and by format conversions; `from` is the bundle the
/// operation authenticated (at its start, or its previous rewrite). The
/// bundle on disk must authenticate ([`read_authenticated`]) and hold the
/// same VM id and DEKs as `from`; only then are its fields copied.
pub fn rewrite_bundle(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
    from: Authenticated<'_>,
    keyring: &VmKeyring,
    policy: &StoragePolicy,
) -> Result<KeyBundle, DatastoreError> {
    let lock = BundleLock::acquire(vm_dir)?;
    let (old, on_disk_keys) = read_authenticated(&lock, vm_dir, provider, sequences, Some(from))?;
    if !same_keys(&on_disk_keys, from.keyring) {
        return Err(DatastoreError::BundleReplaced {
            path: vm_dir.into(),
            fields: FieldList(from.bundle.differing_fields(&old)),
        });
    }
    write_successor(
        &lock,
        vm_dir,
        provider,
        sequences,
        &old,
        keyring,
        |bundle| {
            policy.apply_to(bundle);
            bundle.current_generation = keyring.current_generation();
        },
    )
}

/// Writes, under `lock`, the bundle that follows the authenticated `old`:
/// its fields changed by `change`, moved to the provider's current KEK for
/// it, the next sequence, every DEK of `keyring` wrapped; then records its
/// sequence.
fn write_successor(
    lock: &BundleLock,
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &dyn SequenceCheck,
    old: &KeyBundle,
    keyring: &VmKeyring,
    change: impl FnOnce(&mut KeyBundle),
) -> Result<KeyBundle, DatastoreError> {
    let mut bundle = old.clone();
    change(&mut bundle);
    bundle.kek = provider
        .current_kek_for(&old.kek)
        .map_err(provider_error(vm_dir))?;
    bundle.sequence = old.sequence + 1;
    bundle.updated_unix = unix_now().max(old.updated_unix);
    wrap_all(&mut bundle, keyring, provider).map_err(provider_error(vm_dir))?;
    lock.write(&bundle)?;
    record_written(vm_dir, &bundle, sequences);
    Ok(bundle)
}

/// The error of provider `source` failing for the VM home `vm_dir`.
fn provider_error(vm_dir: &Path) -> impl Fn(ProviderError) -> DatastoreError + Copy + '_ {
    move |source| DatastoreError::Provider {
        path: vm_dir.into(),
        source,
    }
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
    sequences: &dyn SequenceCheck,
) -> Result<RekeyOutcome, DatastoreError> {
    shallow_rekey_with_cache(vm_dir, provider, sequences, None)
}

/// [`shallow_rekey`], able to rescue a VM whose bundle no longer unwraps
/// (its KEK version was destroyed) with the keyring a mount holds in
/// memory, `known`, but only if the bundle on disk is exactly the one that
/// keyring came from (see [`read_authenticated`]).
pub fn shallow_rekey_with_cache(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &dyn SequenceCheck,
    known: Option<Authenticated<'_>>,
) -> Result<RekeyOutcome, DatastoreError> {
    let lock = BundleLock::acquire(vm_dir)?;
    let (old, keyring) = read_authenticated(&lock, vm_dir, provider, sequences, known)?;
    let bundle = write_successor(&lock, vm_dir, provider, sequences, &old, &keyring, |_| {})?;
    Ok(RekeyOutcome {
        from: old.kek,
        to: bundle.kek.clone(),
        bundle,
        keyring: Arc::new(keyring),
    })
}

/// An admin accepts the bundle now in `vm_dir` although it is older than
/// one this host has seen (`vm accept-rollback`): it must authenticate,
/// and this host's record of the VM's sequence is set to its sequence.
/// Returns the bundle and the sequence recorded before.
pub fn accept_rollback(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
) -> Result<(KeyBundle, Option<u64>), DatastoreError> {
    let lock = BundleLock::acquire(vm_dir)?;
    let bundle = bundle_file::read_in(lock.vm())?;
    unlock(&bundle, provider).map_err(provider_error(vm_dir))?;
    let previous = sequences
        .accept(&bundle.vm_id, bundle.sequence)
        .map_err(|source| DatastoreError::SequenceRecord {
            path: vm_dir.into(),
            source,
        })?;
    Ok((bundle, previous))
}

/// Whether two keyrings hold the same VM id and the same DEKs by
/// generation (both are this host's own keys, so a plain comparison
/// reveals nothing to anyone).
fn same_keys(a: &VmKeyring, b: &VmKeyring) -> bool {
    a.vm_id() == b.vm_id()
        && a.deks()
            .map(|(g, d)| (g, d.expose()))
            .eq(b.deks().map(|(g, d)| (g, d.expose())))
}

fn copy_keyring(keyring: &VmKeyring) -> VmKeyring {
    let deks = keyring.deks().map(|(g, d)| (g, d.clone())).collect();
    VmKeyring::new(*keyring.vm_id(), keyring.current_generation(), deks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bundle::tests::FieldChange;
    use crate::format::content_layout::ContentLayout;
    use crate::keys::embedded::EmbeddedProvider;

    fn provider(dir: &Path) -> EmbeddedProvider {
        EmbeddedProvider::init(&dir.join("ks")).unwrap().0
    }

    fn sequences(dir: &Path) -> BundleSequences {
        BundleSequences::in_keystore(&dir.join("ks"))
    }

    /// Writes `bundle` as the VM's bundle, as someone with write access to
    /// the datastore could (the wrapped DEKs are kept as they are).
    fn plant(vm: &Path, bundle: &KeyBundle) {
        BundleLock::acquire(vm).unwrap().write(bundle).unwrap();
    }

    /// A mount's view of an unlocked VM: its authenticated bundle and DEKs.
    fn unlocked(vm: &Path, provider: &EmbeddedProvider) -> (KeyBundle, VmKeyring) {
        let bundle = bundle_file::read(vm).unwrap();
        let keyring = unlock(&bundle, provider).unwrap();
        (bundle, keyring)
    }

    /// A new VM's policy: the default disk pattern, format 2.
    fn policy(encrypt_disks: bool) -> StoragePolicy {
        StoragePolicy::new_vm(encrypt_disks, ContentLayout::PageAligned)
    }

    /// A new VM home at `path` without encrypted disks, in format 2.
    fn new_vm_home(path: &Path, provider: &EmbeddedProvider) -> KeyBundle {
        create_vm_home(path, provider, &policy(false)).unwrap()
    }

    #[test]
    fn create_unlock_and_rekey_keep_the_dek() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let vm = dir.path().join("vm1");
        let bundle = create_vm_home(&vm, &provider, &policy(true)).unwrap();
        let fingerprint = unlock(&bundle, &provider).unwrap().current_fingerprint();
        provider.rotate().unwrap();
        let outcome = shallow_rekey(&vm, &provider, &sequences(dir.path())).unwrap();
        assert_eq!((outcome.from.version, outcome.to.version), (1, 2));
        assert_eq!(outcome.bundle.sequence, 2);
        let reread = bundle_file::read(&vm).unwrap();
        assert_eq!(reread, outcome.bundle);
        assert_eq!(
            unlock(&reread, &provider).unwrap().current_fingerprint(),
            fingerprint
        );
        assert!(matches!(
            create_vm_home(&vm, &provider, &policy(false)),
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

    /// The rescue (re-wrapping from the DEKs held in memory after the
    /// bundle's KEK version was destroyed) re-wraps only the bundle that
    /// authenticated: a flipped policy bit, provider name or wrapped DEK is
    /// refused naming the field, and the bundle on disk stays as it was.
    #[test]
    fn a_rescue_rewraps_only_the_bundle_that_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let vm = dir.path().join("vm1");
        new_vm_home(&vm, &provider);
        let (bundle, keyring) = unlocked(&vm, &provider);
        provider.rotate().unwrap();
        provider.destroy(1).unwrap();
        let known = Authenticated {
            bundle: &bundle,
            keyring: &keyring,
        };
        let tampers: Vec<FieldChange> = vec![
            ("encrypt_disks", |b| b.encrypt_disks = true),
            ("disk_pattern", |b| {
                b.disk_pattern = crate::format::disk_pattern::DiskPattern::legacy()
            }),
            ("provider", |b| b.kek.provider = "kms".into()),
            ("wrapped DEK", |b| b.deks[0].wrapped[30] ^= 1),
        ];
        for (field, tamper) in tampers {
            let mut tampered = bundle.clone();
            tamper(&mut tampered);
            plant(&vm, &tampered);
            let err = shallow_rekey_with_cache(&vm, &provider, &sequences(dir.path()), Some(known))
                .unwrap_err();
            match &err {
                DatastoreError::BundleChanged { fields, .. } => assert_eq!(fields.0, [field]),
                other => panic!("{field}: {other:?}"),
            }
            let message = err.to_string();
            assert!(
                message.contains("vm1") && message.contains(field),
                "{message}"
            );
            assert_eq!(bundle_file::read(&vm).unwrap(), tampered, "{field}");
        }
        plant(&vm, &bundle);
        let outcome =
            shallow_rekey_with_cache(&vm, &provider, &sequences(dir.path()), Some(known)).unwrap();
        assert_eq!(outcome.to.version, 2);
        assert!(bundle
            .differing_fields(&outcome.bundle)
            .iter()
            .all(|f| { ["sequence", "updated_unix", "kek_version", "wrapped DEK"].contains(f) }));
        assert_eq!(
            unlock(&outcome.bundle, &provider)
                .unwrap()
                .current_fingerprint(),
            keyring.current_fingerprint()
        );
    }

    /// An authentication failure never falls back to the keys in memory,
    /// even when the KEK version still exists; without keys in memory a
    /// bundle that does not unwrap is the provider's error.
    #[test]
    fn an_authentication_failure_never_falls_back_to_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let vm = dir.path().join("vm1");
        new_vm_home(&vm, &provider);
        let (bundle, keyring) = unlocked(&vm, &provider);
        let mut flipped = bundle.clone();
        flipped.encrypt_disks = true;
        plant(&vm, &flipped);
        let known = Some(Authenticated {
            bundle: &bundle,
            keyring: &keyring,
        });
        let err =
            shallow_rekey_with_cache(&vm, &provider, &sequences(dir.path()), known).unwrap_err();
        assert!(
            matches!(&err, DatastoreError::BundleChanged { source, fields, .. }
                if matches!(**source, ProviderError::UnwrapFailed { .. }) && fields.0 == ["encrypt_disks"]),
            "{err:?}"
        );
        let err = shallow_rekey(&vm, &provider, &sequences(dir.path())).unwrap_err();
        assert!(matches!(err, DatastoreError::Provider { .. }), "{err:?}");
        assert_eq!(bundle_file::read(&vm).unwrap(), flipped);
    }

    /// A conversion's final rewrite copies fields only from a bundle that
    /// authenticates and holds the DEKs the conversion started from.
    #[test]
    fn rewrite_refuses_a_changed_or_replaced_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let vm = dir.path().join("vm1");
        new_vm_home(&vm, &provider);
        let (bundle, keyring) = unlocked(&vm, &provider);
        let from = Authenticated {
            bundle: &bundle,
            keyring: &keyring,
        };
        let seq = sequences(dir.path());
        let mut flipped = bundle.clone();
        flipped.encrypt_disks = true;
        plant(&vm, &flipped);
        let err = rewrite_bundle(&vm, &provider, &seq, from, &keyring, &policy(false)).unwrap_err();
        assert!(
            matches!(err, DatastoreError::BundleChanged { .. }),
            "{err:?}"
        );

        let other = new_vm_home(&dir.path().join("vm2"), &provider);
        plant(&vm, &other);
        let err = rewrite_bundle(&vm, &provider, &seq, from, &keyring, &policy(false)).unwrap_err();
        assert!(
            matches!(&err, DatastoreError::BundleReplaced { fields, .. } if fields.0.contains(&"vm_id")),
            "{err:?}"
        );

        // A shallow re-key by someone else meanwhile authenticates: kept.
        plant(&vm, &bundle);
        provider.rotate().unwrap();
        shallow_rekey(&vm, &provider, &seq).unwrap();
        let done = rewrite_bundle(&vm, &provider, &seq, from, &keyring, &policy(true)).unwrap();
        assert!(done.encrypt_disks);
        assert_eq!((done.sequence, done.kek.version), (3, 2));
    }

    /// Rollback: an authentic bundle older than one this host has seen is
    /// refused by unlock, re-key and rewrite alike, until accepted.
    #[test]
    fn an_older_authentic_bundle_is_refused_until_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(dir.path());
        let vm = dir.path().join("vm1");
        let seq = sequences(dir.path());
        new_vm_home(&vm, &provider);
        let (old, keyring) = unlocked(&vm, &provider);
        check_sequence(&vm, &old, &seq).unwrap();
        let newer = shallow_rekey(&vm, &provider, &seq).unwrap();
        assert_eq!(seq.recorded(&old.vm_id).unwrap(), Some(2));
        plant(&vm, &old);
        let rolled_back = |err: DatastoreError| match err {
            DatastoreError::RolledBack {
                recorded, found, ..
            } => (recorded, found),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            rolled_back(unlock_vm_dir(&vm, &provider, &seq).unwrap_err()),
            (2, 1)
        );
        assert_eq!(
            rolled_back(shallow_rekey(&vm, &provider, &seq).unwrap_err()),
            (2, 1)
        );
        let from = Authenticated {
            bundle: &newer.bundle,
            keyring: &keyring,
        };
        let err = rewrite_bundle(&vm, &provider, &seq, from, &keyring, &policy(false)).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("vm1") && message.contains("accept-rollback"),
            "{message}"
        );
        assert_eq!(bundle_file::read(&vm).unwrap(), old, "nothing was written");

        let (accepted, previous) = accept_rollback(&vm, &provider, &seq).unwrap();
        assert_eq!((accepted.sequence, previous), (1, Some(2)));
        unlock_vm_dir(&vm, &provider, &seq).unwrap();
        // A bundle that does not authenticate is never accepted.
        let mut flipped = old.clone();
        flipped.encrypt_disks = true;
        plant(&vm, &flipped);
        assert!(accept_rollback(&vm, &provider, &seq).is_err());
        assert_eq!(seq.recorded(&old.vm_id).unwrap(), Some(1));
    }

    /// A rescue answers a KEK that is gone, never a bundle or key that
    /// fails authentication, nor a provider that is merely unreachable.
    #[test]
    fn only_a_gone_kek_allows_a_rescue() {
        let kek = KekRef {
            provider: "kms".into(),
            kek_id: "series".into(),
            version: 2,
        };
        let gone = ProviderError::KekDestroyed {
            kek_id: "series".into(),
            version: 2,
        };
        let unknown = ProviderError::UnknownProvider { name: "kms".into() };
        assert!(kek_is_gone(&gone) && kek_is_gone(&unknown));
        let refused = [
            ProviderError::UnwrapFailed { kek },
            ProviderError::KmsUnreachable {
                provider: "kms".into(),
                reason: "timeout".into(),
            },
            ProviderError::StoreBusy {
                keystore: "/ks".into(),
                waited_ms: 1,
            },
        ];
        assert!(refused.iter().all(|err| !kek_is_gone(err)));
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
