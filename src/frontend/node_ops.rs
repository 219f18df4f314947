//! Names and attributes: lookup, getattr and setattr, creating, linking,
//! renaming and removing entries.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, RenameFlags, TimeOrNow};
use rustix::fs::{Mode, Stat, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};

use super::attr;
use super::caller::Caller;
use super::file_ops::clear_setid_bits;
use super::handles::Handle;
use super::inodes::{Area, NodeInfo, SameVm};
use super::moves::{self, End, Entry};
use super::names::NameKind;
use super::virtual_calls::{self, VirtualCall};
use super::{backing_id, io_errno, sys_errno, FsResult, VmCryptFs};
use crate::control::virtual_file::VirtualFile;
use crate::datastore::backing_root::{BackingRoot, DirFd};
use crate::datastore::{backing_meta, layout};

/// What `statfs` reports.
pub struct FsStats {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

fn to_timespec(time: Option<TimeOrNow>) -> Timespec {
    let special = |tv_nsec| Timespec { tv_sec: 0, tv_nsec };
    match time {
        None => special(UTIME_OMIT),
        Some(TimeOrNow::Now) => special(UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos().into(),
            }
        }
    }
}

/// Where metadata changes of a node go: its backing entry, or for a file
/// unlinked while open, one of its open handles.
enum MetadataTarget {
    /// The entry at this datastore path.
    Entry(PathBuf),
    /// An open handle of the file (a plain or encrypted one).
    Open(Arc<Handle>),
}

/// The backing file of an open file handle.
fn open_file(handle: &Handle) -> FsResult<&File> {
    handle.backing_file().ok_or(Errno::ENOENT)
}

/// Whether datastore path `rel` beneath `beneath` currently names the
/// backing file `backing`.
pub(super) fn names_backing_in(beneath: &BackingRoot, rel: &Path, backing: (u64, u64)) -> bool {
    beneath
        .stat(rel)
        .is_ok_and(|stat| backing_id(&stat) == backing)
}

impl VmCryptFs {
    /// Resolves `name` in directory `parent` and records the node.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<FileAttr> {
        let dir = self.node(parent)?;
        let dir_path = self.node_path(&dir)?;
        let dir_fd = self.beneath.open_dir_path(&dir_path).map_err(sys_errno)?;
        self.lookup_in(&dir, &dir_path, &dir_fd, name)
    }

    /// [`Self::lookup`] of `name` in directory `dir` (at `dir_path`), whose
    /// backing directory the caller has opened as `dir_fd`: what a lookup
    /// and each entry of a `readdirplus` share. Counts one kernel lookup
    /// of the node it returns.
    pub(super) fn lookup_in(
        &self,
        dir: &NodeInfo,
        dir_path: &Path,
        dir_fd: &DirFd<'_>,
        name: &OsStr,
    ) -> FsResult<FileAttr> {
        let kind = Self::dir_place(dir).name(name);
        if let NameKind::Virtual(file) = kind {
            let ino = self
                .inodes
                .remember_virtual(dir.ino, dir.area.clone(), file);
            return self.virtual_file_attr(ino, file);
        }
        kind.check_lookup()?;
        let stat = BackingRoot::stat_in(dir_fd, name).map_err(io_errno)?;
        let rel = dir_path.join(name);
        let area = self.child_area(dir, name, Some(&stat));
        let encrypted = Self::encrypted_format(&area, &rel, &stat);
        let backing = backing_id(&stat);
        let ino = self.inodes.remember(backing, &rel, area, |known| {
            self.names_backing(known, backing)
        });
        Ok(attr::from_stat(ino, &stat, encrypted))
    }

    /// Whether datastore path `rel` currently names the backing file `backing`.
    pub(super) fn names_backing(&self, rel: &Path, backing: (u64, u64)) -> bool {
        names_backing_in(&self.beneath, rel, backing)
    }

    /// The kernel forgets `count` lookups.
    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
    }

    /// Attributes of a node (through the open handle when given, so that
    /// unlinked-but-open files still answer).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<FileAttr> {
        let node = self.node(ino)?;
        if let Some(file) = Self::virtual_file(&node) {
            return self.virtual_file_attr(ino, file);
        }
        // Through an open handle: the one given, or for a file unlinked
        // while open, any open handle of the node.
        let handle = fh
            .and_then(|fh| self.handles.get(fh))
            .or_else(|| match node.path {
                None => self.handles.find_open_file(ino),
                Some(_) => None,
            });
        if let Some(handle) = handle {
            let encrypted = match &*handle {
                Handle::Encrypted { content, .. } => Some(content.layout()),
                _ => None,
            };
            if let Some(file) = handle.backing_file() {
                let stat = rustix::fs::fstat(file).map_err(sys_errno)?;
                return Ok(attr::from_stat(ino, &stat, encrypted));
            }
        }
        self.attr_of(&node)
    }

    /// Attributes of virtual file node `ino`: times are the datastore
    /// root's, wherever the file appears, so that a listing (which looks it
    /// up) and a later `getattr` give the same answer; owner and mode are
    /// the mount's ([`StatusAccess`](crate::control::virtual_file::StatusAccess)).
    fn virtual_file_attr(&self, ino: u64, file: VirtualFile) -> FsResult<FileAttr> {
        let root = self.beneath.stat(Path::new("")).map_err(io_errno)?;
        Ok(attr::virtual_attr(ino, &root, file, self.status_access))
    }

    fn attr_of(&self, node: &NodeInfo) -> FsResult<FileAttr> {
        let path = self.node_path(node)?;
        let stat = self.beneath.stat(&path).map_err(io_errno)?;
        let encrypted = Self::encrypted_format(&node.area, &path, &stat);
        Ok(attr::from_stat(node.ino, &stat, encrypted))
    }

    /// chmod, chown, truncate and utimens. A truncate with a
    /// `setid_clearer` (the caller, when it lacks CAP_FSETID) clears the
    /// file's set-id bits as a local file system would for that caller,
    /// as the kernel leaves that to the mount (`FUSE_HANDLE_KILLPRIV_V2`);
    /// a chown's are cleared by the backing file system's own chown.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
        setid_clearer: Option<Caller>,
    ) -> FsResult<FileAttr> {
        let node = self.node(ino)?;
        if let Some(file) = Self::virtual_file(&node) {
            // `echo cmd > .control` truncates first; there is nothing to do.
            virtual_calls::check(file, VirtualCall::SetAttr)?;
            return self.getattr(ino, None);
        }
        let target = self.metadata_target(&node)?;
        if let Some(mode) = mode {
            match &target {
                MetadataTarget::Entry(rel) => self.beneath.chmod(rel, mode).map_err(io_errno)?,
                MetadataTarget::Open(handle) => {
                    let mode = Mode::from_raw_mode(mode & 0o7777);
                    rustix::fs::fchmod(open_file(handle)?, mode).map_err(sys_errno)?;
                }
            }
        }
        if uid.is_some() || gid.is_some() {
            match &target {
                MetadataTarget::Entry(rel) => {
                    self.beneath.chown(rel, uid, gid).map_err(io_errno)?;
                }
                MetadataTarget::Open(handle) => {
                    // -1 means "unchanged" to chown(2) as well.
                    let uid = uid
                        .filter(|&id| id != u32::MAX)
                        .map(rustix::fs::Uid::from_raw);
                    let gid = gid
                        .filter(|&id| id != u32::MAX)
                        .map(rustix::fs::Gid::from_raw);
                    rustix::fs::fchown(open_file(handle)?, uid, gid).map_err(sys_errno)?;
                }
            }
        }
        if let Some(size) = size {
            self.truncate(&node, size, fh)?;
            if let Some(truncater) = setid_clearer {
                self.clear_setid_of(&target, &truncater)?;
            }
        }
        if atime.is_some() || mtime.is_some() {
            let times = Timestamps {
                last_access: to_timespec(atime),
                last_modification: to_timespec(mtime),
            };
            match &target {
                MetadataTarget::Entry(rel) => {
                    self.beneath.set_times(rel, &times).map_err(io_errno)?;
                }
                MetadataTarget::Open(handle) => {
                    rustix::fs::futimens(open_file(handle)?, &times).map_err(sys_errno)?;
                }
            }
        }
        self.getattr(ino, fh)
    }

    /// Clears the set-id bits of `target` as a truncate by `truncater`, a
    /// process without CAP_FSETID, does.
    fn clear_setid_of(&self, target: &MetadataTarget, truncater: &Caller) -> FsResult<()> {
        match target {
            MetadataTarget::Entry(rel) => {
                let stat = self.beneath.stat(rel).map_err(io_errno)?;
                match truncater.mode_after_change(stat.st_mode, stat.st_gid) {
                    Some(mode) => self.beneath.chmod(rel, mode & 0o7777).map_err(io_errno),
                    None => Ok(()),
                }
            }
            MetadataTarget::Open(handle) => clear_setid_bits(open_file(handle)?, truncater),
        }
    }

    /// Where metadata changes of `node` go: its backing entry (changed
    /// beneath the root, see `datastore::backing_meta`), or for a file
    /// unlinked while open, one of its open handles (changed through the
    /// descriptor).
    fn metadata_target(&self, node: &NodeInfo) -> FsResult<MetadataTarget> {
        if let Some(path) = &node.path {
            return Ok(MetadataTarget::Entry(path.clone()));
        }
        let handle = self.handles.find_open_file(node.ino).ok_or(Errno::ENOENT)?;
        Ok(MetadataTarget::Open(handle))
    }

    /// Creates a directory.
    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<FileAttr> {
        self.create_entry(parent, name, uid, gid, |rel| {
            self.beneath.create_dir(rel, mode)
        })
    }

    /// Creates a symlink. Targets are stored as given (not encrypted).
    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> FsResult<FileAttr> {
        self.create_entry(parent, name, uid, gid, |rel| {
            self.beneath.symlink(target, rel)
        })
    }

    /// Creates a special file (FIFO, socket, device) or an empty regular file.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<FileAttr> {
        // Like `create`: nothing is created in a VM home whose bundle has
        // not authenticated.
        let dir = self.node(parent)?;
        let area = self.child_area(&dir, name, None);
        if let Area::Vm(vm) = &area {
            self.authenticated_policy(vm, "mknod", &self.node_path(&dir)?.join(name))?;
        }
        self.create_entry(parent, name, uid, gid, |rel| {
            self.beneath.mknod(rel, mode, rdev.into())
        })
    }

    /// The common part of mkdir, symlink and mknod: check the name, create
    /// the backing entry with `make` (given its datastore path), give it to
    /// the caller, look it up.
    fn create_entry(
        &self,
        parent: u64,
        name: &OsStr,
        uid: u32,
        gid: u32,
        make: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> FsResult<FileAttr> {
        let dir = self.node(parent)?;
        Self::check_user_name(&dir, name)?;
        let rel = self.node_path(&dir)?.join(name);
        make(&rel).map_err(io_errno)?;
        self.chown_to_caller(&rel, uid, gid)?;
        self.lookup(parent, name)
    }

    /// Reads a symlink.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        let path = self.node_path(&self.node(ino)?)?;
        Ok(self.beneath.read_link(&path).map_err(io_errno)?.into_vec())
    }

    /// Removes a file. The backing file is freed a moment later, by the
    /// closer of [`DeferredRelease`](crate::datastore::deferred_release::DeferredRelease), not on this call's path.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let dir = self.node(parent)?;
        Self::check_user_name(&dir, name)?;
        let rel = self.node_path(&dir)?.join(name);
        let held = self.beneath.unlink_holding(&rel).map_err(io_errno)?;
        self.inodes.unlink_path(&rel);
        if let Some(file) = held {
            self.released.hold(file);
        }
        Ok(())
    }

    /// Removes a directory. Removing an encrypted VM home that holds nothing
    /// but its internal files (it looks empty through the mount) deletes
    /// its key bundle too, as deleting a VM does.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let dir = self.node(parent)?;
        Self::check_user_name(&dir, name)?;
        let rel = self.node_path(&dir)?.join(name);
        if Self::is_root(parent) && self.has_bundle(&rel) {
            self.remove_empty_vm_home(&rel)?;
            self.datastore.forget_vm_home(name);
        }
        self.beneath.remove_dir(&rel).map_err(io_errno)?;
        self.inodes.unlink_path(&rel);
        Ok(())
    }

    /// Whether directory `rel` holds a key bundle (is an encrypted VM home).
    fn has_bundle(&self, rel: &Path) -> bool {
        self.beneath
            .stat(&rel.join(layout::BUNDLE_FILE_NAME))
            .is_ok_and(|stat| backing_meta::file_type(&stat) == rustix::fs::FileType::RegularFile)
    }

    /// Removes the internal files of VM home `rel`, or ENOTEMPTY if it holds
    /// anything else.
    fn remove_empty_vm_home(&self, rel: &Path) -> FsResult<()> {
        let listing = self.beneath.list_dir(rel).map_err(io_errno)?;
        if listing
            .entries
            .iter()
            .any(|entry| !layout::is_internal_name(&entry.name))
        {
            return Err(Errno::ENOTEMPTY);
        }
        log::info!(
            "removing VM home {} and its key bundle",
            crate::format::untrusted::path(rel)
        );
        for entry in listing.entries {
            self.beneath
                .remove_file(&rel.join(entry.name))
                .map_err(io_errno)?;
        }
        Ok(())
    }

    /// Renames an entry. Moves that would change how a file is stored
    /// (between VM homes, into or out of one, or between an encrypted name
    /// and a pass-through disk name) return EXDEV so that `mv` copies and
    /// re-encrypts.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        let from_dir = self.node(parent)?;
        let to_dir = self.node(new_parent)?;
        Self::check_user_name(&from_dir, name)?;
        Self::check_user_name(&to_dir, new_name)?;
        let from = self.node_path(&from_dir)?.join(name);
        let to = self.node_path(&to_dir)?.join(new_name);
        let from_stat = self.beneath.stat(&from).map_err(io_errno)?;
        let is_vm_home = matches!(
            self.child_area(&from_dir, name, Some(&from_stat)),
            Area::Vm(_)
        ) && Self::is_root(parent);
        self.check_same_storage(&from_dir, name, &from_stat, &to_dir, new_name)?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let to_stat = self.beneath.stat(&to).map_err(io_errno)?;
            self.check_same_storage(&to_dir, new_name, &to_stat, &from_dir, name)?;
        }
        // A file renamed over is freed by the closer of `released`, as a
        // removed one is: replacing a large disk image does not wait for
        // the backing file system to free it.
        let replaced = self
            .beneath
            .rename_holding(
                &from,
                &to,
                rustix::fs::RenameFlags::from_bits_retain(flags.bits()),
            )
            .map_err(io_errno)?;
        if let Some(file) = replaced {
            self.released.hold(file);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let marker = PathBuf::from("\0exchange");
            self.inodes.rename_path(&from, &marker);
            self.inodes.rename_path(&to, &from);
            self.inodes.rename_path(&marker, &to);
        } else {
            self.inodes.rename_path(&from, &to);
        }
        if is_vm_home {
            self.datastore.rename_vm_home(name, new_name);
        }
        Ok(())
    }

    /// EXDEV unless an entry moving from `from_dir/name` (whose backing
    /// `stat` is given) to `to_dir/new_name` keeps how it is stored
    /// ([`moves`]).
    fn check_same_storage(
        &self,
        from_dir: &NodeInfo,
        name: &OsStr,
        stat: &Stat,
        to_dir: &NodeInfo,
        new_name: &OsStr,
    ) -> FsResult<()> {
        let from_area = self.child_area(from_dir, name, Some(stat));
        let entry = match backing_meta::file_type(stat) {
            rustix::fs::FileType::RegularFile => Entry::RegularFile,
            _ => Entry::Other,
        };
        let from = End {
            domain: from_area.domain(),
            name,
            in_root: Self::is_root(from_dir.ino),
        };
        self.check_move_into(entry, from, to_dir, new_name, "rename")
    }

    /// [`moves::check_move`] of `entry` from `from` to `to_dir/new_name`,
    /// asking the destination VM's authenticated bundle for the classes
    /// (see [`Self::authenticated_policy`]); `what` names the call in the
    /// log.
    fn check_move_into(
        &self,
        entry: Entry,
        from: End<'_, SameVm<'_>>,
        to_dir: &NodeInfo,
        new_name: &OsStr,
        what: &str,
    ) -> FsResult<()> {
        let to_area = self.child_area(to_dir, new_name, None);
        let to = End {
            domain: to_area.domain(),
            name: new_name,
            in_root: Self::is_root(to_dir.ino),
        };
        let rel = self.node_path(to_dir)?.join(new_name);
        moves::check_move(entry, from, to, |SameVm(vm)| {
            self.authenticated_policy(vm, what, &rel)
        })
    }

    /// Creates a hard link (within one encryption domain and class).
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> FsResult<FileAttr> {
        let node = self.node(ino)?;
        let to_dir = self.node(new_parent)?;
        Self::check_user_name(&to_dir, new_name)?;
        if let Some(file) = Self::virtual_file(&node) {
            virtual_calls::check(file, VirtualCall::Link)?;
        }
        let from = self.node_path(&node)?;
        let name = from.file_name().ok_or(Errno::EPERM)?;
        let to = self.node_path(&to_dir)?.join(new_name);
        // Only regular files and symlinks can be linked here (directories
        // cannot be hard-linked); classes matter for regular files, and a
        // symlink's name never makes it encrypted, so comparing is safe.
        let from_end = End {
            domain: node.area.domain(),
            name,
            in_root: from.components().count() == 1,
        };
        self.check_move_into(Entry::RegularFile, from_end, &to_dir, new_name, "link")?;
        self.beneath.hard_link(&from, &to).map_err(io_errno)?;
        self.lookup(new_parent, new_name)
    }

    /// File system statistics of the datastore's file system, once the
    /// files unlinked so far are freed (so that `df` after `rm` counts
    /// their space as free, as without [`DeferredRelease`](crate::datastore::deferred_release::DeferredRelease)).
    pub fn statfs(&self) -> FsResult<FsStats> {
        self.released.wait_idle();
        let st = self.beneath.statvfs().map_err(io_errno)?;
        Ok(FsStats {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
        })
    }
}
