//! Extended attributes of backing files and directories, reached by
//! descriptor (docs/FORMAT.md §7).
//!
//! Every operation acts on an object the caller has opened beneath the
//! datastore root without following a symlink (an `O_PATH | O_NOFOLLOW`
//! descriptor, a directory descriptor, or an open file's own), through its
//! `/proc/self/fd/N` link: the kernel resolves that link to the object
//! itself, never by walking a path again, and it works for `O_PATH`
//! descriptors, which `fgetxattr(2)` refuses. So an object swapped behind
//! the mount is not followed either.
//!
//! Values of the sealed namespaces (`user.*`, `trusted.*`) on objects of
//! an encrypted VM home are sealed under the VM's keys and bound to the
//! object by its attribute id, a random 16-byte value kept in the internal
//! attribute `<namespace>.vmcryptfs.id` and created with the object's first
//! sealed value. Everything else passes through.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::XattrFlags;
use rustix::io::Errno;
use zeroize::Zeroizing;

use crate::content::xattr_value;
use crate::crypto::keyring::VmKeyring;
use crate::crypto::random;
use crate::format::untrusted;
use crate::format::xattr::{self as rules, Namespace, ATTRIBUTE_ID_LEN, MAX_SEALED_PLAINTEXT};

/// Why an attribute operation failed.
#[derive(Debug, thiserror::Error)]
pub enum XattrError {
    /// The backing file system's answer (ENODATA, EEXIST, ERANGE, ENOSPC,
    /// EOPNOTSUPP, EPERM, ...), passed on as it is.
    #[error("backing file system: {0}")]
    Backing(#[from] Errno),
    /// A value too large to fit the kernel's limit once sealed.
    #[error("a value of {len} bytes is larger than the {MAX_SEALED_PLAINTEXT} bytes a sealed attribute can hold")]
    TooLarge {
        /// The plaintext length.
        len: usize,
    },
    /// A sealed value or its object's attribute id did not authenticate.
    #[error("extended attribute {name}: {why}")]
    Tampered {
        /// The attribute name, escaped.
        name: String,
        /// What failed, in fixed words.
        why: String,
    },
}

impl XattrError {
    fn tampered(name: &[u8], why: impl std::fmt::Display) -> Self {
        XattrError::Tampered {
            name: untrusted::name(OsStr::from_bytes(name)),
            why: why.to_string(),
        }
    }
}

/// One backing file or directory, by descriptor.
pub struct BackingObject<'fd> {
    /// The descriptor the caller opened (kept borrowed so it outlives
    /// every call through `link`).
    _fd: BorrowedFd<'fd>,
    /// `/proc/self/fd/N` of that descriptor.
    link: String,
}

impl<'fd> BackingObject<'fd> {
    /// The object open as `fd` (any descriptor of it, `O_PATH` included).
    pub fn new(fd: BorrowedFd<'fd>) -> Self {
        Self {
            link: format!("/proc/self/fd/{}", fd.as_raw_fd()),
            _fd: fd,
        }
    }

    /// The stored value of attribute `name`, whatever its length.
    pub fn get_raw(&self, name: &[u8]) -> Result<Vec<u8>, Errno> {
        let name = OsStr::from_bytes(name);
        loop {
            let len = rustix::fs::getxattr_query(&self.link, name)?;
            let mut value = vec![0u8; len];
            match rustix::fs::getxattr(&self.link, name, &mut value[..]) {
                Ok(read) => {
                    value.truncate(read);
                    return Ok(value);
                }
                // It grew between the two calls.
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The backing object's names, each ending in NUL.
    pub fn list_raw(&self) -> Result<Vec<u8>, Errno> {
        loop {
            let len = rustix::fs::listxattr_query(&self.link)?;
            let mut list = vec![0u8; len];
            match rustix::fs::listxattr(&self.link, &mut list[..]) {
                Ok(read) => {
                    list.truncate(read);
                    return Ok(list);
                }
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Stores `value` as attribute `name` with `flags` (XATTR_CREATE,
    /// XATTR_REPLACE), which the backing file system enforces.
    pub fn set_raw(&self, name: &[u8], value: &[u8], flags: XattrFlags) -> Result<(), Errno> {
        rustix::fs::setxattr(&self.link, OsStr::from_bytes(name), value, flags)
    }

    /// Removes attribute `name`.
    pub fn remove_raw(&self, name: &[u8]) -> Result<(), Errno> {
        rustix::fs::removexattr(&self.link, OsStr::from_bytes(name))
    }

    /// The attribute id of namespace `ns`, if the object has one; one
    /// that is not [`ATTRIBUTE_ID_LEN`] bytes long is tampering.
    fn attribute_id(
        &self,
        ns: Namespace,
        name: &[u8],
    ) -> Result<Option<[u8; ATTRIBUTE_ID_LEN]>, XattrError> {
        let id_name = ns.id_name().expect("sealed namespaces have an id");
        match self.get_raw(id_name) {
            Ok(id) => id.as_slice().try_into().map(Some).map_err(|_| {
                XattrError::tampered(
                    name,
                    format_args!(
                        "the object's attribute id is {} bytes, not {ATTRIBUTE_ID_LEN}",
                        id.len()
                    ),
                )
            }),
            Err(Errno::NODATA) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The attribute id of namespace `ns`, created (exclusively, so two
    /// writers agree on one) if the object has none yet.
    fn attribute_id_or_new(
        &self,
        ns: Namespace,
        name: &[u8],
    ) -> Result<[u8; ATTRIBUTE_ID_LEN], XattrError> {
        if let Some(id) = self.attribute_id(ns, name)? {
            return Ok(id);
        }
        let id: [u8; ATTRIBUTE_ID_LEN] = random::array();
        let id_name = ns.id_name().expect("sealed namespaces have an id");
        match self.set_raw(id_name, &id, XattrFlags::CREATE) {
            Ok(()) => Ok(id),
            Err(Errno::EXIST) => self
                .attribute_id(ns, name)?
                .ok_or(XattrError::Backing(Errno::NODATA)),
            Err(e) => Err(e.into()),
        }
    }

    /// The plaintext of sealed attribute `name` (namespace `ns`).
    pub fn get_sealed(
        &self,
        keyring: &VmKeyring,
        ns: Namespace,
        name: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, XattrError> {
        let stored = self.get_raw(name)?;
        let id = self
            .attribute_id(ns, name)?
            .ok_or_else(|| XattrError::tampered(name, "the object's attribute id is missing"))?;
        xattr_value::open(keyring, &id, name, &stored)
            .map(|(plaintext, _)| plaintext)
            .map_err(|e| XattrError::tampered(name, e))
    }

    /// Seals `value` as attribute `name` (namespace `ns`) with `flags`.
    pub fn set_sealed(
        &self,
        keyring: &VmKeyring,
        ns: Namespace,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
    ) -> Result<(), XattrError> {
        if value.len() > MAX_SEALED_PLAINTEXT {
            return Err(XattrError::TooLarge { len: value.len() });
        }
        let id = self.attribute_id_or_new(ns, name)?;
        let stored = xattr_value::seal(keyring, &id, name, value);
        Ok(self.set_raw(name, &stored, flags)?)
    }

    /// Brings every `user.*` and `trusted.*` value to the form a
    /// conversion wants: sealed under `keyring`'s current generation when
    /// `sealed`, plaintext otherwise. A value counts as sealed exactly when
    /// it opens under `keyring` (any generation it holds); any other value
    /// is plaintext, which makes every step repeatable after a crash.
    /// Returns how many values were rewritten.
    pub fn reform(&self, keyring: &VmKeyring, sealed: bool) -> Result<usize, XattrError> {
        let list = self.list_raw()?;
        let mut rewritten = 0;
        for name in rules::names(&list) {
            let ns = Namespace::of(name);
            if !ns.is_sealed() || rules::is_internal(name) {
                continue;
            }
            let stored = match self.get_raw(name) {
                Ok(stored) => stored,
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(e.into()),
            };
            let opened = match self.attribute_id(ns, name) {
                Ok(Some(id)) => xattr_value::open(keyring, &id, name, &stored).ok(),
                Ok(None) | Err(XattrError::Tampered { .. }) => None,
                Err(e) => return Err(e),
            };
            match (sealed, opened) {
                (true, Some((_, generation))) if generation == keyring.current_generation() => {}
                (true, Some((plaintext, _))) => {
                    self.set_sealed(keyring, ns, name, &plaintext, XattrFlags::empty())?;
                    rewritten += 1;
                }
                (true, None) => {
                    self.set_sealed(keyring, ns, name, &stored, XattrFlags::empty())?;
                    rewritten += 1;
                }
                (false, Some((plaintext, _))) => {
                    self.set_raw(name, &plaintext, XattrFlags::empty())?;
                    rewritten += 1;
                }
                (false, None) => {}
            }
        }
        if !sealed {
            for ns in [Namespace::User, Namespace::Trusted] {
                match self.remove_raw(ns.id_name().expect("sealed namespace")) {
                    Ok(()) | Err(Errno::NODATA) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(rewritten)
    }

    /// Every `user.*` and `trusted.*` value of the object that does not
    /// open under `keyring` (fsck and scrub): its name, escaped, and why,
    /// in fixed words. Internal names are not values; a value removed while
    /// the list is read is skipped.
    pub fn damaged_sealed(&self, keyring: &VmKeyring) -> Result<Vec<(String, String)>, Errno> {
        let list = self.list_raw()?;
        let mut damaged = Vec::new();
        for name in rules::names(&list) {
            let ns = Namespace::of(name);
            if !ns.is_sealed() || rules::is_internal(name) {
                continue;
            }
            match self.get_sealed(keyring, ns, name) {
                Ok(_) | Err(XattrError::Backing(Errno::NODATA)) => {}
                Err(XattrError::Tampered { name, why }) => damaged.push((name, why)),
                Err(XattrError::Backing(errno)) => return Err(errno),
                Err(XattrError::TooLarge { .. }) => unreachable!("reading never seals"),
            }
        }
        Ok(damaged)
    }

    /// Copies every attribute this process can read to `to`, as stored.
    pub fn copy_to(&self, to: &BackingObject<'_>) -> Result<(), Errno> {
        let list = self.list_raw()?;
        for name in rules::names(&list) {
            match self.get_raw(name) {
                Ok(value) => to.set_raw(name, &value, XattrFlags::empty())?,
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// [`BackingObject::copy_to`] between two descriptors, with an error that
/// names the file.
pub fn copy_all(from: impl AsFd, to: impl AsFd, path: &Path) -> Result<(), super::DatastoreError> {
    BackingObject::new(from.as_fd())
        .copy_to(&BackingObject::new(to.as_fd()))
        .map_err(|e| {
            super::DatastoreError::io(
                format!("copying the extended attributes of {}", path.display()),
                e.into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::Dek;
    use std::collections::BTreeMap;

    /// A directory on a file system with user attributes (tmpfs since
    /// Linux 6.6, ext4), or the reason there is none.
    fn scratch() -> tempfile::TempDir {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let probe = rustix::fs::open(
            dir.path(),
            rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        BackingObject::new(probe.as_fd())
            .set_raw(b"user.probe", b"1", XattrFlags::empty())
            .unwrap_or_else(|e| {
                panic!("/var/tmp has no user extended attributes ({e}); these tests need them")
            });
        dir
    }

    fn keyring(current: u32) -> VmKeyring {
        let deks: BTreeMap<u32, Dek> = (1..=current)
            .map(|g| (g, Dek::from_bytes([g as u8; 32])))
            .collect();
        VmKeyring::new([4; 16], current, deks)
    }

    fn open_path(path: &Path) -> std::os::fd::OwnedFd {
        rustix::fs::open(
            path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn sealed_values_round_trip_and_store_no_plaintext() {
        let dir = scratch();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let fd = open_path(&file);
        let object = BackingObject::new(fd.as_fd());
        let keys = keyring(1);
        object
            .set_sealed(
                &keys,
                Namespace::User,
                b"user.a",
                b"plain value",
                XattrFlags::CREATE,
            )
            .unwrap();
        assert_eq!(
            &object
                .get_sealed(&keys, Namespace::User, b"user.a")
                .unwrap()[..],
            b"plain value"
        );
        let stored = object.get_raw(b"user.a").unwrap();
        assert!(!stored.windows(5).any(|w| w == b"plain"));
        assert_eq!(
            object.get_raw(b"user.vmcryptfs.id").unwrap().len(),
            ATTRIBUTE_ID_LEN
        );
        assert!(matches!(
            object.set_sealed(&keys, Namespace::User, b"user.a", b"x", XattrFlags::CREATE),
            Err(XattrError::Backing(Errno::EXIST))
        ));
        assert_eq!(
            object
                .set_sealed(
                    &keys,
                    Namespace::User,
                    b"user.a",
                    &vec![0; MAX_SEALED_PLAINTEXT + 1],
                    XattrFlags::empty()
                )
                .unwrap_err()
                .to_string(),
            XattrError::TooLarge {
                len: MAX_SEALED_PLAINTEXT + 1
            }
            .to_string()
        );
        // A changed id is tampering.
        object
            .set_raw(b"user.vmcryptfs.id", &[0; 16], XattrFlags::empty())
            .unwrap();
        let err = object
            .get_sealed(&keys, Namespace::User, b"user.a")
            .unwrap_err();
        assert!(matches!(err, XattrError::Tampered { .. }), "{err}");
        object.remove_raw(b"user.vmcryptfs.id").unwrap();
        let err = object
            .get_sealed(&keys, Namespace::User, b"user.a")
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn reform_seals_rekeys_and_unseals_repeatably() {
        let dir = scratch();
        let fd = open_path(dir.path());
        let object = BackingObject::new(fd.as_fd());
        object
            .set_raw(b"user.a", b"one", XattrFlags::empty())
            .unwrap();
        object
            .set_raw(b"user.b", b"two", XattrFlags::empty())
            .unwrap();
        let old = keyring(1);
        assert_eq!(object.reform(&old, true).unwrap(), 3, "user.probe, a, b");
        assert_eq!(object.reform(&old, true).unwrap(), 0, "already sealed");
        assert_ne!(object.get_raw(b"user.a").unwrap(), b"one");
        let new = keyring(2);
        assert_eq!(object.reform(&new, true).unwrap(), 3);
        let stored = object.get_raw(b"user.b").unwrap();
        assert_eq!(rules::parse_sealed(&stored).unwrap().generation, 2);
        assert_eq!(
            &object.get_sealed(&new, Namespace::User, b"user.b").unwrap()[..],
            b"two"
        );
        assert_eq!(object.reform(&new, false).unwrap(), 3);
        assert_eq!(object.reform(&new, false).unwrap(), 0);
        assert_eq!(object.get_raw(b"user.a").unwrap(), b"one");
        assert_eq!(object.get_raw(b"user.vmcryptfs.id"), Err(Errno::NODATA));
    }
}
