//! What a scrub checks a mounted file through: the content state the
//! mount's open handles of it share (see `datastore::scrub`).
//!
//! A scrub holds a file's node as a lookup and an open would: it finds (or
//! makes) the node of the backing file, as a lookup does, and takes a hold
//! on its content state, as an open does. A handle the VM opens meanwhile
//! shares that state, so the scrub's chunk locks and the VM's writes
//! exclude each other; and a file replaced behind the mount gets a node of
//! its own, as for a lookup.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::inodes::{Area, InodeTable};
use super::node_ops::names_backing_in;
use super::VmCryptFs;
use crate::content::encrypted_file::ReadSettings;
use crate::content::EncryptedFile;
use crate::crypto::keyring::VmKeyring;
use crate::datastore::backing_device::DeviceReadahead;
use crate::datastore::backing_root::BackingRoot;
use crate::datastore::fsck::{ContentHold, SharedContent};
use crate::datastore::vm_home::{StoragePolicy, VmHome};
use crate::format::content_layout::ContentLayout;

/// How the mount makes the content state of an encrypted file. Immutable;
/// the readahead table locks itself.
pub struct ContentSettings {
    read_settings: ReadSettings,
    device_readahead: Arc<DeviceReadahead>,
    max_backing_len: u64,
}

impl ContentSettings {
    /// The state of the encrypted file `backing` of a VM home with
    /// `keyring` and `layout`, read as the mount's options say.
    pub fn state_for(
        &self,
        keyring: Arc<VmKeyring>,
        layout: ContentLayout,
        backing: &File,
    ) -> EncryptedFile {
        let settings = ReadSettings {
            ahead: (self.read_settings.ahead).resolve(self.device_readahead.of_file(backing)),
            ..self.read_settings
        };
        EncryptedFile::new(keyring, layout)
            .with_read_settings(settings)
            .with_max_stored_len(self.max_backing_len)
    }
}

/// The mount's nodes, as a scrub sees them. Every field is shared with the
/// mount and locks itself.
pub struct MountContent {
    inodes: Arc<InodeTable>,
    beneath: Arc<BackingRoot>,
    settings: ContentSettings,
}

impl VmCryptFs {
    /// How this mount makes content states.
    pub(super) fn content_settings(&self) -> ContentSettings {
        ContentSettings {
            read_settings: self.read_settings,
            device_readahead: self.device_readahead.clone(),
            max_backing_len: self.max_backing_len,
        }
    }

    /// The mount's nodes, for a scrub.
    pub(super) fn mount_content(&self) -> MountContent {
        MountContent {
            inodes: self.inodes.clone(),
            beneath: self.beneath.clone(),
            settings: self.content_settings(),
        }
    }
}

impl SharedContent for MountContent {
    fn hold(
        &self,
        vm: &Arc<VmHome>,
        rel: &Path,
        backing: &File,
        keyring: &Arc<VmKeyring>,
        policy: &StoragePolicy,
    ) -> ContentHold {
        let make = || {
            self.settings
                .state_for(keyring.clone(), policy.content_layout, backing)
        };
        let Ok(meta) = backing.metadata() else {
            return ContentHold::unshared(make());
        };
        let id = (meta.dev(), meta.ino());
        let path = Path::new(&vm.name()).join(rel);
        let ino = self
            .inodes
            .remember(id, &path, Area::Vm(vm.clone()), |known| {
                names_backing_in(&self.beneath, known, id)
            });
        match self.inodes.acquire_content(ino, make) {
            Some(content) => {
                let inodes = self.inodes.clone();
                ContentHold::shared(
                    content,
                    Box::new(move || {
                        inodes.release_content(ino);
                        inodes.forget(ino, 1);
                    }),
                )
            }
            None => {
                self.inodes.forget(ino, 1);
                ContentHold::unshared(make())
            }
        }
    }
}
