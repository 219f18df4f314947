//! Names inside a datastore, and which files are encrypted.
//!
//! A datastore's direct subdirectories are VM homes; a VM home is encrypted
//! exactly when it holds [`BUNDLE_FILE_NAME`]. Names stay in clear, as in
//! vSphere. Names starting with [`INTERNAL_PREFIX`] are ours and hidden.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

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

/// Whether `name` is a VM disk file: `*.vmdk` in any case, which covers
/// descriptors and `-flat`, `-delta`, `-sesparse` and `-000001` extents.
pub fn is_disk_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 5 && bytes[bytes.len() - 5..].eq_ignore_ascii_case(b".vmdk")
}

/// How a regular file's content is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentClass {
    /// Stored as is.
    Plain,
    /// Stored in the encrypted file format.
    Encrypted,
}

/// The class of a file named `name` inside an encrypted VM home.
pub fn class_in_vm_home(name: &OsStr, encrypt_disks: bool) -> ContentClass {
    if is_disk_name(name) && !encrypt_disks {
        ContentClass::Plain
    } else {
        ContentClass::Encrypted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names() {
        for name in [
            "disk.vmdk",
            "disk-flat.vmdk",
            "disk-delta.vmdk",
            "disk-sesparse.vmdk",
            "disk-000001.vmdk",
            "DISK.VMDK",
        ] {
            assert!(is_disk_name(OsStr::new(name)), "{name}");
        }
        for name in [
            "vm.vmx",
            "vm.nvram",
            "vmdk",
            ".vmdk.bak",
            "vmware.log",
            "disk.vmdk~",
        ] {
            assert!(!is_disk_name(OsStr::new(name)), "{name}");
        }
        assert!(is_disk_name(OsStr::new(".vmdk")));
    }

    #[test]
    fn policy() {
        let name = OsStr::new("vm1-flat.vmdk");
        assert_eq!(class_in_vm_home(name, false), ContentClass::Plain);
        assert_eq!(class_in_vm_home(name, true), ContentClass::Encrypted);
        assert_eq!(
            class_in_vm_home(OsStr::new("vm1.nvram"), false),
            ContentClass::Encrypted
        );
        assert_eq!(
            class_in_vm_home(OsStr::new("vmware.log"), false),
            ContentClass::Encrypted
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
