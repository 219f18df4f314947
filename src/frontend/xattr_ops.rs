//! Extended attributes: get, set, list and remove (docs/FORMAT.md §7).
//!
//! Each call opens the node's backing object beneath the datastore root
//! without following a symlink (or, for a file unlinked while open, uses
//! its open handle's descriptor), and acts on it by descriptor through
//! `datastore::xattrs`. `user.*` and `trusted.*` values of directories and
//! encrypted files in an encrypted VM home are sealed; everything else
//! passes through to the backing file system, which then decides flags,
//! ENODATA, ERANGE and size limits as it does for any caller.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::Errno;
use rustix::fs::{FileType, XattrFlags};

use super::handles::Handle;
use super::inodes::Area;
use super::virtual_calls::{self, VirtualCall};
use super::{io_errno, sys_errno, FsResult, VmCryptFs};
use crate::control::virtual_file::VirtualFile;
use crate::crypto::keyring::VmKeyring;
use crate::datastore::backing_meta;
use crate::datastore::layout::ContentClass;
use crate::datastore::vm_home::VmHome;
use crate::datastore::xattrs::{BackingObject, XattrError};
use crate::format::untrusted;
use crate::format::xattr::{self as rules, Treatment};

/// What an attribute call on a node acts on.
enum XattrTarget {
    /// A virtual file (`.control`, `.control.json`, `.stats`): it has no
    /// attributes, and takes none ([`virtual_calls`]).
    Virtual(VirtualFile),
    /// A backing object of any kind. A symlink, FIFO, socket or device is
    /// reached by an `O_PATH` descriptor too, never followed or opened;
    /// the kernel refuses `user.*` names on them before asking us, as it
    /// does on ext4.
    Object(BackingTarget),
}

/// A backing object, opened for attribute calls.
struct BackingTarget {
    /// An `O_PATH` descriptor of the object, or a duplicate of an open
    /// handle's. Owned by this call.
    fd: OwnedFd,
    /// Its datastore path, for logs.
    rel: PathBuf,
    /// The VM whose keys seal its `user.*` and `trusted.*` values, when
    /// they are sealed.
    sealing_vm: Option<Arc<VmHome>>,
}

impl BackingTarget {
    fn object(&self) -> BackingObject<'_> {
        BackingObject::new(self.fd.as_fd())
    }

    fn treatment(&self, name: &[u8]) -> Treatment {
        rules::treatment(name, self.sealing_vm.is_some())
    }
}

impl VmCryptFs {
    /// The value of attribute `name` of node `ino`.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.as_bytes();
        if rules::is_internal(name) {
            return Err(Errno::ENODATA);
        }
        let target = match self.xattr_target(ino, name, false)? {
            XattrTarget::Virtual(file) => {
                return virtual_calls::check(file, VirtualCall::GetXattr).map(|()| Vec::new())
            }
            XattrTarget::Object(target) => target,
        };
        let result = match target.treatment(name) {
            Treatment::Sealed(ns) => {
                let keyring = self.sealing_keyring(&target, "getxattr")?;
                target
                    .object()
                    .get_sealed(&keyring, ns, name)
                    .map(|value| value.to_vec())
            }
            _ => target.object().get_raw(name).map_err(XattrError::from),
        };
        result.map_err(|err| self.xattr_errno(&target, "getxattr", err))
    }

    /// Sets attribute `name` of node `ino` to `value`; `flags` may hold
    /// XATTR_CREATE or XATTR_REPLACE.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let name = name.as_bytes();
        let flags = XattrFlags::from_bits_truncate(flags as u32);
        if rules::is_internal(name) {
            log::warn!(
                "refusing to set internal extended attribute {}",
                untrusted::name(OsStr::from_bytes(name))
            );
            return Err(Errno::EPERM);
        }
        let target = match self.xattr_target(ino, name, true)? {
            XattrTarget::Virtual(file) => return virtual_calls::check(file, VirtualCall::SetXattr),
            XattrTarget::Object(target) => target,
        };
        let result = match target.treatment(name) {
            Treatment::Sealed(ns) => {
                let keyring = self.sealing_keyring(&target, "setxattr")?;
                target.object().set_sealed(&keyring, ns, name, value, flags)
            }
            _ => target
                .object()
                .set_raw(name, value, flags)
                .map_err(XattrError::from),
        };
        result.map_err(|err| self.xattr_errno(&target, "setxattr", err))
    }

    /// The attribute names of node `ino`, each ending in NUL; `trusted.*`
    /// ones only if `show_trusted` (the caller has CAP_SYS_ADMIN, as ext4
    /// decides).
    pub fn listxattr(&self, ino: u64, show_trusted: bool) -> FsResult<Vec<u8>> {
        let target = match self.xattr_target(ino, b"", false)? {
            XattrTarget::Virtual(file) => {
                return virtual_calls::check(file, VirtualCall::ListXattr).map(|()| Vec::new())
            }
            XattrTarget::Object(target) => target,
        };
        let list = target.object().list_raw().map_err(sys_errno)?;
        Ok(rules::visible_names(&list, show_trusted))
    }

    /// Removes attribute `name` of node `ino`.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let name = name.as_bytes();
        if rules::is_internal(name) {
            log::warn!(
                "refusing to remove internal extended attribute {}",
                untrusted::name(OsStr::from_bytes(name))
            );
            return Err(Errno::EPERM);
        }
        match self.xattr_target(ino, name, false)? {
            XattrTarget::Virtual(file) => virtual_calls::check(file, VirtualCall::RemoveXattr),
            XattrTarget::Object(target) => target.object().remove_raw(name).map_err(sys_errno),
        }
    }

    /// Opens node `ino` for an attribute call on `name` (empty for a
    /// listing) and decides whether its sealed namespaces are sealed.
    /// A write of a sealed namespace in a VM home decides by the VM's
    /// authenticated bundle (see [`Self::class_to_write`]), so a forged
    /// `encrypt_disks` bit or disk pattern never makes a value be stored in
    /// clear.
    fn xattr_target(&self, ino: u64, name: &[u8], writing: bool) -> FsResult<XattrTarget> {
        let node = self.node(ino)?;
        if let Some(file) = Self::virtual_file(&node) {
            return Ok(XattrTarget::Virtual(file));
        }
        let (fd, rel, open_class) = match &node.path {
            Some(rel) => (
                self.beneath.open_object(rel).map_err(sys_errno)?,
                rel.clone(),
                None,
            ),
            // Unlinked while open: its open handle is all that is left.
            None => {
                let handle = self.handles.find_open_file(ino).ok_or(Errno::ENOENT)?;
                let file = handle.backing_file().ok_or(Errno::ENOENT)?;
                let class = match &*handle {
                    Handle::Encrypted { .. } => ContentClass::Encrypted,
                    _ => ContentClass::Plain,
                };
                let fd = OwnedFd::from(file.try_clone().map_err(io_errno)?);
                (fd, self.handle_path(ino), Some(class))
            }
        };
        let stat = rustix::fs::fstat(&fd).map_err(sys_errno)?;
        let kind = backing_meta::file_type(&stat);
        let sealing_vm = match &node.area {
            Area::Vm(vm) => {
                // Only a regular file has a class; everything else in an
                // encrypted VM home is sealed, as its directories are.
                let sealed = kind != FileType::RegularFile
                    || match (open_class, rel.file_name()) {
                        (Some(class), _) => class == ContentClass::Encrypted,
                        (None, Some(file_name)) => {
                            let class = if writing && rules::Namespace::of(name).is_sealed() {
                                self.class_to_write(&node.area, file_name, "setxattr", &rel)?
                            } else {
                                Self::content_class(&node.area, file_name)
                            };
                            class == ContentClass::Encrypted
                        }
                        (None, None) => false,
                    };
                sealed.then(|| vm.clone())
            }
            _ => None,
        };
        Ok(XattrTarget::Object(BackingTarget {
            fd,
            rel,
            sealing_vm,
        }))
    }

    /// The keys of the VM that seals `target`'s values, unlocking it
    /// first; ENOKEY (and a log line naming the object) while it is
    /// locked, as for an open of an encrypted file.
    fn sealing_keyring(&self, target: &BackingTarget, what: &str) -> FsResult<Arc<VmKeyring>> {
        let vm = target.sealing_vm.as_ref().ok_or(Errno::EIO)?;
        vm.keyring(self.datastore.provider()).map_err(|locked| {
            log::warn!("{what} {}: {locked}", untrusted::path(&target.rel));
            Errno::from_i32(libc::ENOKEY)
        })
    }

    /// The errno for `err` (the backing file system's own, E2BIG for a
    /// value too large to seal, EIO for tampering); a value that fails
    /// authentication is logged naming the object and attribute and counted
    /// for `.stats`, as a tampered block is.
    fn xattr_errno(&self, target: &BackingTarget, what: &str, err: XattrError) -> Errno {
        if let XattrError::Tampered { .. } = &err {
            if let Some(vm) = &target.sealing_vm {
                vm.counters().auth_failure();
            }
            log::error!("{what} {}: {err}", untrusted::path(&target.rel));
        }
        Errno::from_i32(match err {
            XattrError::Backing(errno) => errno.raw_os_error(),
            XattrError::TooLarge { .. } => libc::E2BIG,
            XattrError::Tampered { .. } => libc::EIO,
        })
    }
}
