//! Datastores and VM homes: which files are encrypted, key bundles on disk,
//! unlocking and re-keying VMs, and the per-mount key cache.
//!
//! * [`layout`]: names and the encryption policy (pure).
//! * [`bundle_file`]: reading and atomically rewriting `.vmcryptfs-bundle`.
//! * [`vm_keys`]: creating VM homes, unwrapping bundles into keyrings, and
//!   shallow re-key, against any [`crate::keys::KeyProvider`].
//! * [`vm_home`]: one VM home inside a mount: cached keys, locked state,
//!   last control command.
//! * [`registry`]: all VM homes of a mounted datastore.
//! * [`convert`]: in-place conversions (encrypting a VM home or its disks,
//!   decrypting disks, deep re-key), file by file and resumable.
//! * [`fsck`]: checking an unmounted datastore: bundles, journals, stray
//!   temps and every block of every encrypted file.
//! * [`scrub`]: the same checks on a mounted datastore, in the background
//!   while VMs run, paced.
//! * [`known`]: the datastores a key store knows about.
//! * [`inventory`]: scanning bundles to see which KEK version wraps each VM.
//! * [`counters`]: live per-VM counters for `.stats`.
//! * [`current_kek`]: providers' current KEK versions for status, kept
//!   a few seconds.
//! * [`write_counted`]: a lock counting its writes, so that status can
//!   tell cheaply whether a VM home's status changed.
//! * [`file_size_limit`]: the largest file the datastore's file system
//!   holds, so that a size beyond it fails before any work.
//! * [`backing_device`]: what the block device under the datastore does by
//!   itself (its readahead), from sysfs.
//! * [`backing_root`]: resolving backing paths strictly beneath the root
//!   (opening files, directories, and the parents of entries).
//! * [`owned_file`]: the one access rule for the files vmcryptfs owns in a
//!   VM home (no symlink followed, only regular files read, reads bounded).
//! * [`backing_meta`]: metadata operations on backing entries (stat,
//!   chmod, unlink, rename, ...) as `*at` calls beneath the root.
//! * [`xattrs`]: extended attributes of backing objects by descriptor,
//!   sealed in encrypted VM homes.

pub mod backing_device;
pub mod backing_meta;
pub mod backing_root;
pub mod bundle_file;
pub mod convert;
pub mod counters;
pub mod current_kek;
pub mod deferred_release;
pub mod file_size_limit;
pub mod fsck;
pub mod inventory;
pub mod known;
pub mod layout;
pub mod owned_file;
pub mod registry;
pub mod rekey_batch;
pub mod scrub;
pub mod status_view;
pub mod vm_home;
pub mod vm_keys;
pub mod write_counted;
pub mod xattrs;

use std::path::PathBuf;

use convert::JOURNAL_FILE_NAME;
use owned_file::OwnedFileError;

use crate::format::bundle::BundleError;
use crate::format::untrusted;
use crate::keys::bundle_sequences::SequenceError;
use crate::keys::ProviderError;

/// Errors of datastore operations; each names the VM home or file at fault.
/// Paths and names in them come from the datastore, so they are shown
/// escaped ([`untrusted`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    /// The directory holds no key bundle.
    #[error("{} is not an encrypted VM home (no key bundle); create one with `vmcryptfs vm create {}`", untrusted::path(.path), untrusted::path(.path))]
    NotAVmHome {
        /// The directory.
        path: PathBuf,
    },
    /// `vm create` on a directory that already is a VM home.
    #[error("{} is already an encrypted VM home", untrusted::path(.path))]
    AlreadyVmHome {
        /// The directory.
        path: PathBuf,
    },
    /// `vm create` on a directory that holds files.
    #[error("{} is not empty; to encrypt a VM home that already holds files, run `vmcryptfs vm encrypt {}` (it converts them in place)", untrusted::path(.path), untrusted::path(.path))]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The bundle did not parse.
    #[error("key bundle {} is corrupt or tampered: {source}", untrusted::path(.path))]
    BadBundle {
        /// The bundle file.
        path: PathBuf,
        /// Why.
        #[source]
        source: BundleError,
    },
    /// Another conversion of this VM home was interrupted.
    #[error("VM home {} has an unfinished `{}` conversion; finish it first by running that command again", untrusted::path(.path), untrusted::field(.operation))]
    ConversionPending {
        /// The VM home.
        path: PathBuf,
        /// The unfinished operation.
        operation: String,
    },
    /// The provider failed.
    #[error("VM home {}: {source}", untrusted::path(.path))]
    Provider {
        /// The VM home.
        path: PathBuf,
        /// Why.
        #[source]
        source: ProviderError,
    },
    /// A file vmcryptfs owns is missing, planted or unusable.
    #[error(transparent)]
    Owned(#[from] OwnedFileError),
    /// The conversion journal is not one this build wrote.
    #[error("VM home {} has a damaged conversion journal {JOURNAL_FILE_NAME} ({why}), which vmcryptfs neither follows nor trusts: remove it, then, if a conversion of this VM was interrupted, run that conversion again", untrusted::path(.path))]
    DamagedJournal {
        /// The VM home.
        path: PathBuf,
        /// What is wrong, in fixed words (never the journal's content).
        why: &'static str,
    },
    /// An authentic bundle older than one this host has seen.
    #[error("VM home {}: its key bundle was rolled back: sequence {found} is older than sequence {recorded}, which this host has already seen (an older copy of the bundle was put back in the datastore); if you restored it on purpose, accept it with `vmcryptfs vm accept-rollback {}`", untrusted::path(.path), untrusted::path(.path))]
    RolledBack {
        /// The VM home.
        path: PathBuf,
        /// The highest sequence this host recorded for the VM.
        recorded: u64,
        /// The bundle's sequence.
        found: u64,
    },
    /// A re-key found a bundle on disk that does not authenticate and is
    /// not the one this host authenticated, so it re-wrapped nothing.
    #[error("VM home {}: the key bundle on disk does not authenticate ({source}) and differs from the one this host authenticated in {fields}; it was changed in the datastore, so nothing was re-wrapped: put the authentic bundle back (e.g. from a backup) and retry", untrusted::path(.path))]
    BundleChanged {
        /// The VM home.
        path: PathBuf,
        /// The differing fields, by their docs/FORMAT.md names.
        fields: FieldList,
        /// Why the bundle on disk did not unwrap (boxed: it is large, and
        /// every datastore result carries this enum).
        #[source]
        source: Box<ProviderError>,
    },
    /// A bundle rewrite found an authentic bundle of another key lineage
    /// (VM id or DEK generations) than the one the operation started from.
    #[error("VM home {}: the key bundle changed while this operation ran (it differs in {fields}); refusing to overwrite it: run the operation again", untrusted::path(.path))]
    BundleReplaced {
        /// The VM home.
        path: PathBuf,
        /// The differing fields.
        fields: FieldList,
    },
    /// The key store's bundle sequence record failed.
    #[error("VM home {}: {source}", untrusted::path(.path))]
    SequenceRecord {
        /// The VM home.
        path: PathBuf,
        /// Why.
        #[source]
        source: SequenceError,
    },
    /// An I/O error.
    #[error("{}: {source}", untrusted::line(.context))]
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Bundle field names for a message: `encrypt_disks, provider`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldList(pub Vec<&'static str>);

impl std::fmt::Display for FieldList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no field"),
            [one] => write!(f, "field {one}"),
            many => write!(f, "fields {}", many.join(", ")),
        }
    }
}

impl DatastoreError {
    /// Shorthand for an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DatastoreError::Io {
            context: context.into(),
            source,
        }
    }
}
