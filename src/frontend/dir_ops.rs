//! Directory handles: listing a directory (`opendir`, `readdir`,
//! `readdirplus`), closing and syncing it.
//!
//! A listing is read once, at `opendir`, and served from the handle by
//! offset, so a directory that changes while it is being listed neither
//! repeats nor skips entries.
//!
//! `readdirplus` is why `ls -l` of a VM home costs one request per page of
//! entries instead of one lookup per entry: each entry comes with its
//! attributes, so the kernel creates (or refreshes) its dentry and inode
//! from the listing. The kernel counts each such entry, except `.` and
//! `..`, as a lookup that it will later `forget`, exactly like a reply to
//! `lookup`; so does [`VmCryptFs::readdirplus`].

use std::ffi::OsStr;

use fuser::{Errno, FileAttr, FileType};

use super::attr;
use super::handles::{DirEntry, Handle};
use super::inodes::ROOT_INO;
use super::{io_errno, sys_errno, FsResult, VmCryptFs};
use crate::control::virtual_file::VirtualFile;

/// Whether a listing entry is `.` or `..`, which the kernel never turns
/// into a dentry from a `readdirplus` reply (and so never counts).
fn is_dot_entry(name: &OsStr) -> bool {
    name == "." || name == ".."
}

impl VmCryptFs {
    /// Opens a directory: snapshots its entries, hiding internal files and
    /// adding the virtual files where there are some (see [`super::names`]).
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.node(ino)?;
        let path = self.node_path(&node)?;
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: ROOT_INO,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        let place = Self::dir_place(&node);
        if let Some(scope) = place.control_scope() {
            // Listing inode numbers only need to be distinct; a lookup
            // gives the real node.
            for (i, file) in VirtualFile::all_in(scope).iter().enumerate() {
                entries.push(DirEntry {
                    ino: u64::MAX - (ino * 4 + i as u64),
                    kind: FileType::RegularFile,
                    name: file.name().into(),
                });
            }
        }
        // The directory's own device: entries of one directory share it
        // (the datastore is one file system), and d_type and d_ino come with
        // the entry, so listing costs no stat per entry.
        let listing = self.beneath.list_dir(&path).map_err(io_errno)?;
        for entry in listing.entries {
            if !place.name(&entry.name).listed_from_backing() {
                continue;
            }
            entries.push(DirEntry {
                ino: self
                    .inodes
                    .known_ino((listing.dev, entry.ino))
                    .unwrap_or(entry.ino),
                kind: attr::kind_of(entry.kind),
                name: entry.name,
            });
        }
        Ok(self.handles.insert(Handle::Dir { entries }))
    }

    /// Entries of an open directory from `offset` on; `add` returns true
    /// when the reply buffer is full.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> FsResult<()> {
        self.with_listing(fh, |entries| {
            for (index, entry) in entries.iter().enumerate().skip(offset as usize) {
                if add(entry.ino, index as u64 + 1, entry.kind, &entry.name) {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Entries of open directory `ino` from `offset` on, with their
    /// attributes; `add` returns true when the reply buffer is full (that
    /// entry was not added). Each entry added, but `.` and `..`, counts one
    /// lookup of its node, as [`Self::lookup`] does. An entry gone since
    /// `opendir` is left out; any other failure to look an entry up ends
    /// the reply before it, so that the next request starts with it and
    /// returns the error.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&FileAttr, u64, &OsStr) -> bool,
    ) -> FsResult<()> {
        self.with_listing(fh, |entries| {
            self.add_entries_plus(ino, entries, offset, &mut add)
        })
    }

    /// The body of [`Self::readdirplus`] on the handle's entries.
    fn add_entries_plus(
        &self,
        ino: u64,
        entries: &[DirEntry],
        offset: u64,
        add: &mut impl FnMut(&FileAttr, u64, &OsStr) -> bool,
    ) -> FsResult<()> {
        let dir = self.node(ino)?;
        let dir_path = self.node_path(&dir)?;
        // One resolution of the directory for the whole page of entries.
        let dir_fd = self.beneath.open_dir_path(&dir_path).map_err(sys_errno)?;
        let mut added = 0;
        for (index, entry) in entries.iter().enumerate().skip(offset as usize) {
            let counted = !is_dot_entry(&entry.name);
            let attr = if counted {
                match self.lookup_in(&dir, &dir_path, &dir_fd, &entry.name) {
                    Ok(attr) => attr,
                    Err(Errno::ENOENT) => continue,
                    Err(e) if added == 0 => return Err(e),
                    Err(_) => break,
                }
            } else {
                // The kernel ignores these attributes; any valid ones do.
                let dir_stat = rustix::fs::fstat(&dir_fd).map_err(sys_errno)?;
                attr::from_stat(entry.ino, &dir_stat, None)
            };
            if add(&attr, index as u64 + 1, &entry.name) {
                // Not sent, so the kernel will not count it.
                if counted {
                    self.inodes.forget(attr.ino.0, 1);
                }
                break;
            }
            added += 1;
        }
        Ok(())
    }

    /// Runs `f` on the entries of directory handle `fh` (EBADF if it is
    /// not one).
    fn with_listing<R>(&self, fh: u64, f: impl FnOnce(&[DirEntry]) -> FsResult<R>) -> FsResult<R> {
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        let Handle::Dir { entries } = &*handle else {
            return Err(Errno::EBADF);
        };
        f(entries)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }

    /// fsync on a directory.
    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        let path = self.node_path(&self.node(ino)?)?;
        self.beneath.sync_dir(&path).map_err(io_errno)
    }
}
