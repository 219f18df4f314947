//! Names inside a datastore, and which files are encrypted.
//!
//! A datastore's direct subdirectories are VM homes; a VM home is encrypted
//! exactly when it holds [`BUNDLE_FILE_NAME`]. Names stay in clear, as in
//! vSphere. Names starting with [`INTERNAL_PREFIX`] are ours and hidden.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::format::bundle::KeyBundle;
use crate::format::content_layout::ContentLayout;
use crate::format::disk_pattern::DiskPattern;

/// The key bundle inside an encrypted VM home.
pub const BUNDLE_FILE_NAME: &str = ".vmcryptfs-bundle";
/// Every internal file name starts with this; the mount hides them and
/// refuses to create them.
pub const INTERNAL_PREFIX: &str = ".vmcryptfs";
/// The virtual control file, in the mount root and in each encrypted VM home.
pub const CONTROL_FILE_NAME: &str = ".control";

/// Whether `name` is one of vmcryptfs's internal files.
pub fn is_internal_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(INTERNAL_PREFIX.as_bytes())
}

/// Whether `name` is a disk file of a VM whose bundle names `pattern`
/// (`*.vmdk` for a VM home made before disk patterns; see
/// [`DiskPattern`]).
pub fn is_disk_name(name: &OsStr, pattern: &DiskPattern) -> bool {
    pattern.matches(name.as_bytes())
}

/// How a regular file's content is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentClass {
    /// Stored as is.
    Plain,
    /// Stored in the encrypted file format.
    Encrypted,
}

/// The class of a file named `name` inside an encrypted VM home whose
/// bundle names disks by `pattern` and encrypts them if `encrypt_disks`.
pub fn class_in_vm_home(name: &OsStr, pattern: &DiskPattern, encrypt_disks: bool) -> ContentClass {
    if !encrypt_disks && is_disk_name(name, pattern) {
        ContentClass::Plain
    } else {
        ContentClass::Encrypted
    }
}

/// How a VM stores its files: the policy fields of its bundle. What decides
/// the class and format of a file being created or written, taken from an
/// authenticated bundle only (the mount's [`super::vm_home::VmHome`]), and
/// what a new or converted bundle is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoragePolicy {
    /// Whether disk files (names matching `disk_pattern`) are encrypted.
    pub encrypt_disks: bool,
    /// Which names are disks.
    pub disk_pattern: DiskPattern,
    /// The content format of encrypted files.
    pub content_layout: ContentLayout,
}

impl StoragePolicy {
    /// The policy fields of `bundle`.
    pub fn of(bundle: &KeyBundle) -> Self {
        Self {
            encrypt_disks: bundle.encrypt_disks,
            disk_pattern: bundle.disk_pattern.clone(),
            content_layout: bundle.content_layout,
        }
    }

    /// A new VM home's policy with the default disk pattern.
    pub fn new_vm(encrypt_disks: bool, content_layout: ContentLayout) -> Self {
        Self {
            encrypt_disks,
            disk_pattern: DiskPattern::new_vm_default(),
            content_layout,
        }
    }

    /// The class of a file named `name` under this policy.
    pub fn class_of(&self, name: &OsStr) -> ContentClass {
        class_in_vm_home(name, &self.disk_pattern, self.encrypt_disks)
    }

    /// Sets `bundle`'s policy fields to this policy.
    pub fn apply_to(&self, bundle: &mut KeyBundle) {
        bundle.encrypt_disks = self.encrypt_disks;
        bundle.disk_pattern = self.disk_pattern.clone();
        bundle.content_layout = self.content_layout;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let legacy = DiskPattern::legacy();
        let default = DiskPattern::new_vm_default();
        let name = OsStr::new("vm1-flat.vmdk");
        for pattern in [&legacy, &default] {
            assert_eq!(class_in_vm_home(name, pattern, false), ContentClass::Plain);
            assert_eq!(
                class_in_vm_home(name, pattern, true),
                ContentClass::Encrypted
            );
            for other in ["vm1.nvram", "vmware.log"] {
                assert_eq!(
                    class_in_vm_home(OsStr::new(other), pattern, false),
                    ContentClass::Encrypted
                );
            }
        }
        // A VM home made before disk patterns keeps `.qcow2` encrypted.
        let qcow2 = OsStr::new("vm.qcow2");
        assert_eq!(
            class_in_vm_home(qcow2, &legacy, false),
            ContentClass::Encrypted
        );
        assert_eq!(
            class_in_vm_home(qcow2, &default, false),
            ContentClass::Plain
        );
    }

    #[test]
    fn internal_names() {
        assert!(is_internal_name(OsStr::new(BUNDLE_FILE_NAME)));
        assert!(is_internal_name(OsStr::new(".vmcryptfs-bundle.tmp.1.ab")));
        assert!(!is_internal_name(OsStr::new(".control")));
        assert!(!is_internal_name(OsStr::new("vmcryptfs")));
    }
}
