//! Re-keying many VM homes at once: `rekey-all` on a mount's `.control`,
//! `vmcryptfs rekey --all` on an unmounted datastore.
//!
//! A shallow re-key of one VM is three key operations and one bundle
//! update, and one after another they cost about 4.5 ms a VM, nearly all
//! of it waiting: the embedded store opened and `master.key` read per key
//! operation, the bundle's two fsyncs, and a rewrite of the bundle
//! sequence record (which grows with the number of VMs) per VM. A batch
//! instead:
//!
//! * re-keys the VMs on a bounded pool of worker threads, so the fsyncs of
//!   different VM homes are in flight together and the file system
//!   commits them in shared journal transactions (the work is I/O waits,
//!   so more threads than cores);
//! * uses the providers batched ([`ProviderSet::batched`]): each KEK
//!   version fetched once, held in a zeroizing type and dropped with the
//!   batch;
//! * checks sequences against the record as before but writes the raises
//!   once, before the batch returns ([`SequenceBatch`]).
//!
//! Each VM keeps every guarantee of a single re-key: its bundle is read and
//! authenticated under its own lock, and replaced atomically and durably
//! (temp file, fsync, rename, directory fsync) before its result is
//! reported. A crash at any point leaves each VM's bundle either the old
//! one or the new one.

use crate::keys::bundle_sequences::{BundleSequences, SequenceCheck};
use crate::keys::provider_set::ProviderSet;
use crate::keys::KeyProvider;
use rayon::prelude::*;

/// Worker threads of one batch. Measured on this 2-core machine's ext4 (a
/// re-key of 1,000 VM homes): throughput grows up to about 16 threads and
/// is flat beyond.
const WORKERS: usize = 16;

/// Runs `rekey` on every item on the worker pool, with the providers
/// batched and the sequence raises written once at the end; the results
/// are in the order of `items`. If the sequence record cannot be read for
/// a batch, each VM checks it on its own and fails as a single re-key
/// would.
pub fn rekey_each<T: Sync, R: Send>(
    items: &[T],
    providers: &ProviderSet,
    sequences: &BundleSequences,
    rekey: impl Fn(&T, &dyn KeyProvider, &dyn SequenceCheck) -> R + Sync,
) -> Vec<R> {
    let batched = providers.batched();
    let run = |check: &dyn SequenceCheck| -> Vec<R> {
        let work = || {
            items
                .par_iter()
                .map(|item| rekey(item, &batched, check))
                .collect()
        };
        match rayon::ThreadPoolBuilder::new()
            .num_threads(WORKERS)
            .thread_name(|i| format!("vmcryptfs-rekey-{i}"))
            .build()
        {
            Ok(pool) => pool.install(work),
            Err(err) => {
                log::warn!("no re-key worker threads ({err}); re-keying one VM at a time");
                items
                    .iter()
                    .map(|item| rekey(item, &batched, check))
                    .collect()
            }
        }
    };
    match sequences.batch() {
        Ok(batch) => {
            let results = run(&batch);
            // The bundles are written already; like a single re-key, a
            // record that cannot be written only warns, and the next
            // unlock of each VM records its sequence.
            if let Err(err) = batch.commit() {
                log::warn!(
                    "the key bundles were rewritten, but their sequences were not recorded: {err}"
                );
            }
            results
        }
        Err(err) => {
            log::warn!("re-keying one sequence check at a time: {err}");
            run(sequences)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::bundle_file::{self, BundleLock};
    use crate::datastore::layout::StoragePolicy;
    use crate::datastore::vm_keys::{self, create_vm_home};
    use crate::datastore::DatastoreError;
    use crate::format::content_layout::ContentLayout;
    use crate::keys::embedded::EmbeddedProvider;

    /// A batch re-keys every VM as single re-keys would (each bundle under
    /// the new KEK version, unwrapping to the same DEKs, results in input
    /// order), records every new sequence before it returns, and still
    /// refuses a rolled-back bundle, which it leaves as it was.
    #[test]
    fn a_batch_rekeys_every_vm_records_them_and_refuses_a_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let keystore = dir.path().join("ks");
        let provider = EmbeddedProvider::init(&keystore).unwrap().0;
        let sequences = BundleSequences::in_keystore(&keystore);
        let vms: Vec<_> = (0..40).map(|i| dir.path().join(format!("vm{i}"))).collect();
        let firsts: Vec<_> = vms
            .iter()
            .map(|vm| {
                let policy = StoragePolicy::new_vm(false, ContentLayout::PageAligned);
                create_vm_home(vm, &provider, &policy).unwrap()
            })
            .collect();
        // vm7 was re-keyed once (sequence 2, recorded), then its first
        // bundle was put back.
        provider.rotate().unwrap();
        vm_keys::shallow_rekey(&vms[7], &provider, &sequences).unwrap();
        BundleLock::acquire(&vms[7])
            .unwrap()
            .write(&firsts[7])
            .unwrap();
        provider.rotate().unwrap();

        let providers = ProviderSet::open(&keystore).unwrap();
        let results = rekey_each(&vms, &providers, &sequences, |vm, provider, seq| {
            vm_keys::shallow_rekey(vm, provider, seq)
        });
        assert_eq!(results.len(), vms.len());
        for (i, (vm, result)) in vms.iter().zip(&results).enumerate() {
            if i == 7 {
                assert!(
                    matches!(
                        result,
                        Err(DatastoreError::RolledBack {
                            recorded: 2,
                            found: 1,
                            ..
                        })
                    ),
                    "{result:?}"
                );
                assert_eq!(bundle_file::read(vm).unwrap(), firsts[7], "left as it was");
                continue;
            }
            let outcome = result.as_ref().unwrap();
            assert_eq!((outcome.from.version, outcome.to.version), (1, 3), "vm{i}");
            let on_disk = bundle_file::read(vm).unwrap();
            assert_eq!(on_disk, outcome.bundle, "vm{i}");
            assert_eq!(on_disk.vm_id, firsts[i].vm_id, "results in input order");
            let before = vm_keys::unlock(&firsts[i], &provider).unwrap();
            let after = vm_keys::unlock(&on_disk, &provider).unwrap();
            assert_eq!(before.current_fingerprint(), after.current_fingerprint());
            assert_eq!(
                sequences.recorded(&on_disk.vm_id).unwrap(),
                Some(2),
                "vm{i}"
            );
        }
    }
}
