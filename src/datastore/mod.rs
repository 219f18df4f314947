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
//! * [`known`]: the datastores a key store knows about.
//! * [`inventory`]: scanning bundles to see which KEK version wraps each VM.
//! * [`counters`]: live per-VM counters for `.stats`.
//! * [`current_kek`]: providers' current KEK versions for status, kept
//!   a few seconds.
//! * [`file_size_limit`]: the largest file the datastore's file system
//!   holds, so that a size beyond it fails before any work.
//! * [`backing_device`]: what the block device under the datastore does by
//!   itself (its readahead), from sysfs.
//! * [`backing_root`]: resolving backing paths strictly beneath the root
//!   (opening files, directories, and the parents of entries).
//! * [`backing_meta`]: metadata operations on backing entries (stat,
//!   chmod, unlink, rename, ...) as `*at` calls beneath the root.

pub mod backing_device;
pub mod backing_meta;
pub mod backing_root;
pub mod bundle_file;
pub mod convert;
pub mod counters;
pub mod current_kek;
pub mod file_size_limit;
pub mod inventory;
pub mod known;
pub mod layout;
pub mod registry;
pub mod vm_home;
pub mod vm_keys;

use std::path::PathBuf;

use crate::format::bundle::BundleError;
use crate::format::untrusted;
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
    #[error("{} is not empty; encrypting existing VMs is not supported yet, so create the VM home empty and copy files in through the mount", untrusted::path(.path))]
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

impl DatastoreError {
    /// Shorthand for an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DatastoreError::Io {
            context: context.into(),
            source,
        }
    }
}
