//! Names, attributes and directories.

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, RenameFlags, TimeOrNow};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::attr;
use super::handles::{DirEntry, Handle};
use super::inodes::{Area, NodeInfo, ROOT_INO};
use super::{io_errno, FsResult, VmCryptFs};
use crate::control::virtual_file::VirtualFile;
use crate::datastore::{bundle_file, layout};

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

fn to_timespec(time: Option<TimeOrNow>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
        }
    }
}

impl VmCryptFs {
    /// Resolves `name` in directory `parent` and records the node.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<FileAttr> {
        let dir = self.node(parent)?;
        let dir_path = self.node_path(&dir)?;
        if let Some(file) = self.virtual_file_named(&dir, name) {
            let ino = self.inodes.remember_virtual(parent, dir.area.clone(), file);
            let meta = fs::metadata(self.backing_path(&dir_path)).map_err(io_errno)?;
            return Ok(attr::virtual_attr(ino, &meta, file));
        }
        if layout::is_internal_name(name) {
            return Err(Errno::ENOENT);
        }
        let rel = dir_path.join(name);
        let meta = fs::symlink_metadata(self.backing_path(&rel)).map_err(io_errno)?;
        let area = self.child_area(&dir, name, Some(&meta));
        let encrypted = Self::is_encrypted_file(&area, &rel, &meta);
        let backing = (meta.dev(), meta.ino());
        let ino = self.inodes.remember(backing, &rel, area, |known| {
            self.names_backing(known, backing)
        });
        Ok(attr::from_metadata(ino, &meta, encrypted))
    }

    /// Whether datastore path `rel` currently names the backing file `backing`.
    pub(super) fn names_backing(&self, rel: &Path, backing: (u64, u64)) -> bool {
        fs::symlink_metadata(self.backing_path(rel)).is_ok_and(|m| (m.dev(), m.ino()) == backing)
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
            let dir_meta = fs::metadata(self.datastore.root()).map_err(io_errno)?;
            return Ok(attr::virtual_attr(ino, &dir_meta, file));
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
            match &*handle {
                Handle::Plain { file, .. } => {
                    return Ok(attr::from_metadata(
                        ino,
                        &file.metadata().map_err(io_errno)?,
                        false,
                    ))
                }
                Handle::Encrypted { file, .. } => {
                    return Ok(attr::from_metadata(
                        ino,
                        &file.metadata().map_err(io_errno)?,
                        true,
                    ))
                }
                _ => {}
            }
        }
        self.attr_of(&node)
    }

    fn attr_of(&self, node: &NodeInfo) -> FsResult<FileAttr> {
        let path = self.node_path(node)?;
        let meta = fs::symlink_metadata(self.backing_path(&path)).map_err(io_errno)?;
        let encrypted = Self::is_encrypted_file(&node.area, &path, &meta);
        Ok(attr::from_metadata(node.ino, &meta, encrypted))
    }

    /// chmod, chown, truncate and utimens.
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
    ) -> FsResult<FileAttr> {
        let node = self.node(ino)?;
        if let Some(file) = Self::virtual_file(&node) {
            // `echo cmd > .control` truncates first; there is nothing to do.
            // The read-only files change only by themselves.
            if !file.writable() {
                return Err(Errno::EACCES);
            }
            return self.getattr(ino, None);
        }
        let (full, via_proc) = self.metadata_target(&node)?;
        if let Some(mode) = mode {
            fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io_errno)?;
        }
        if uid.is_some() || gid.is_some() {
            let result = if via_proc {
                std::os::unix::fs::chown(&full, uid, gid)
            } else {
                std::os::unix::fs::lchown(&full, uid, gid)
            };
            result.map_err(io_errno)?;
        }
        if let Some(size) = size {
            self.truncate(&node, size, fh)?;
        }
        if atime.is_some() || mtime.is_some() {
            let flags = if via_proc {
                UtimensatFlags::FollowSymlink
            } else {
                UtimensatFlags::NoFollowSymlink
            };
            utimensat(None, &full, &to_timespec(atime), &to_timespec(mtime), flags)
                .map_err(|e| Errno::from_i32(e as i32))?;
        }
        self.getattr(ino, fh)
    }

    /// Where metadata changes of `node` go, and whether that path is a
    /// /proc link to follow: the backing path, or for a file unlinked while
    /// open, `/proc/self/fd/N` of one of its open handles.
    fn metadata_target(&self, node: &NodeInfo) -> FsResult<(PathBuf, bool)> {
        if let Some(path) = &node.path {
            return Ok((self.backing_path(path), false));
        }
        let handle = self.handles.find_open_file(node.ino).ok_or(Errno::ENOENT)?;
        match &*handle {
            Handle::Plain { file, .. } | Handle::Encrypted { file, .. } => {
                use std::os::fd::AsRawFd;
                Ok((
                    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                    true,
                ))
            }
            _ => Err(Errno::ENOENT),
        }
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
        self.create_entry(parent, name, uid, gid, |full| {
            DirBuilder::new()
                .mode(mode & 0o7777)
                .create(full)
                .map_err(io_errno)
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
        self.create_entry(parent, name, uid, gid, |full| {
            std::os::unix::fs::symlink(target, full).map_err(io_errno)
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
        let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
        let perm = nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777);
        self.create_entry(parent, name, uid, gid, |full| {
            nix::sys::stat::mknod(full, kind, perm, rdev as libc::dev_t)
                .map_err(|e| Errno::from_i32(e as i32))
        })
    }

    /// The common part of mkdir, symlink and mknod: check the name, create
    /// the backing entry with `make`, give it to the caller, look it up.
    fn create_entry(
        &self,
        parent: u64,
        name: &OsStr,
        uid: u32,
        gid: u32,
        make: impl FnOnce(&Path) -> FsResult<()>,
    ) -> FsResult<FileAttr> {
        let dir = self.node(parent)?;
        self.check_user_name(&dir, name)?;
        let full = self.backing_path(&self.node_path(&dir)?.join(name));
        make(&full)?;
        self.chown_to_caller(&full, uid, gid)?;
        self.lookup(parent, name)
    }

    /// Reads a symlink.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        let path = self.node_path(&self.node(ino)?)?;
        Ok(fs::read_link(self.backing_path(&path))
            .map_err(io_errno)?
            .into_os_string()
            .into_vec())
    }

    /// Removes a file.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let dir = self.node(parent)?;
        self.check_user_name(&dir, name)?;
        let rel = self.node_path(&dir)?.join(name);
        fs::remove_file(self.backing_path(&rel)).map_err(io_errno)?;
        self.inodes.unlink_path(&rel);
        Ok(())
    }

    /// Removes a directory. Removing an encrypted VM home that holds nothing
    /// but its internal files (it looks empty through the mount) deletes
    /// its key bundle too, as deleting a VM does.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let dir = self.node(parent)?;
        self.check_user_name(&dir, name)?;
        let rel = self.node_path(&dir)?.join(name);
        let full = self.backing_path(&rel);
        if Self::is_root(parent) && bundle_file::has_bundle(&full) {
            self.remove_empty_vm_home(&full)?;
            self.datastore.forget_vm_home(name);
        }
        fs::remove_dir(&full).map_err(io_errno)?;
        self.inodes.unlink_path(&rel);
        Ok(())
    }

    fn remove_empty_vm_home(&self, full: &Path) -> FsResult<()> {
        let names: Vec<OsString> = fs::read_dir(full)
            .map_err(io_errno)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        if names.iter().any(|n| !layout::is_internal_name(n)) {
            return Err(Errno::ENOTEMPTY);
        }
        log::info!("removing VM home {} and its key bundle", full.display());
        for name in names {
            fs::remove_file(full.join(name)).map_err(io_errno)?;
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
        self.check_user_name(&from_dir, name)?;
        self.check_user_name(&to_dir, new_name)?;
        let from = self.node_path(&from_dir)?.join(name);
        let to = self.node_path(&to_dir)?.join(new_name);
        let from_meta = fs::symlink_metadata(self.backing_path(&from)).map_err(io_errno)?;
        let is_vm_home = matches!(
            self.child_area(&from_dir, name, Some(&from_meta)),
            Area::Vm(_)
        ) && Self::is_root(parent);
        if is_vm_home {
            // A VM home can be renamed in place, not moved below another
            // directory (it would stop being a VM home).
            if !Self::is_root(new_parent) {
                return Err(Errno::EXDEV);
            }
        } else {
            self.check_same_storage(&from_dir, name, &from_meta, &to_dir, new_name)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                let to_meta = fs::symlink_metadata(self.backing_path(&to)).map_err(io_errno)?;
                self.check_same_storage(&to_dir, new_name, &to_meta, &from_dir, name)?;
            }
        }
        nix::fcntl::renameat2(
            None,
            &self.backing_path(&from),
            None,
            &self.backing_path(&to),
            nix::fcntl::RenameFlags::from_bits_truncate(flags.bits()),
        )
        .map_err(|e| Errno::from_i32(e as i32))?;
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

    /// EXDEV unless an entry moving from `from_dir/name` to `to_dir/new_name`
    /// keeps its encryption domain and, for regular files, its class.
    fn check_same_storage(
        &self,
        from_dir: &NodeInfo,
        name: &OsStr,
        meta: &fs::Metadata,
        to_dir: &NodeInfo,
        new_name: &OsStr,
    ) -> FsResult<()> {
        let from_area = self.child_area(from_dir, name, Some(meta));
        let to_area = self.child_area(to_dir, new_name, None);
        if !from_area.same_domain(&to_area) {
            return Err(Errno::EXDEV);
        }
        if meta.is_file()
            && Self::content_class(&from_area, name) != Self::content_class(&to_area, new_name)
        {
            return Err(Errno::EXDEV);
        }
        Ok(())
    }

    /// Creates a hard link (within one encryption domain and class).
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> FsResult<FileAttr> {
        let node = self.node(ino)?;
        let to_dir = self.node(new_parent)?;
        self.check_user_name(&to_dir, new_name)?;
        if Self::virtual_file(&node).is_some() {
            return Err(Errno::EPERM);
        }
        let from = self.node_path(&node)?;
        let from_meta = fs::symlink_metadata(self.backing_path(&from)).map_err(io_errno)?;
        let to_area = self.child_area(&to_dir, new_name, None);
        let name = from.file_name().ok_or(Errno::EPERM)?;
        if !node.area.same_domain(&to_area)
            || Self::content_class(&node.area, name) != Self::content_class(&to_area, new_name)
        {
            return Err(Errno::EXDEV);
        }
        let to = self.node_path(&to_dir)?.join(new_name);
        fs::hard_link(self.backing_path(&from), self.backing_path(&to)).map_err(io_errno)?;
        let _ = from_meta;
        self.lookup(new_parent, new_name)
    }

    /// File system statistics of the datastore's file system.
    pub fn statfs(&self) -> FsResult<FsStats> {
        let st = nix::sys::statvfs::statvfs(self.datastore.root())
            .map_err(|e| Errno::from_i32(e as i32))?;
        Ok(FsStats {
            blocks: st.blocks(),
            bfree: st.blocks_free(),
            bavail: st.blocks_available(),
            files: st.files(),
            ffree: st.files_free(),
            bsize: st.block_size() as u32,
            namelen: st.name_max() as u32,
            frsize: st.fragment_size() as u32,
        })
    }

    /// Opens a directory: snapshots its entries, hiding internal files and
    /// adding the virtual `.control` where there is one.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.node(ino)?;
        let path = self.node_path(&node)?;
        let full = self.backing_path(&path);
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
        if let Some(scope) = self.control_scope_of_dir(&node) {
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
        let dev = fs::metadata(&full).map_err(io_errno)?.dev();
        for entry in fs::read_dir(&full).map_err(io_errno)? {
            let entry = entry.map_err(io_errno)?;
            let name = entry.file_name();
            if layout::is_internal_name(&name) {
                continue;
            }
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let backing_ino = std::os::unix::fs::DirEntryExt::ino(&entry);
            entries.push(DirEntry {
                ino: self
                    .inodes
                    .known_ino((dev, backing_ino))
                    .unwrap_or(backing_ino),
                kind: attr::kind_of(file_type),
                name,
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
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        let Handle::Dir { entries } = &*handle else {
            return Err(Errno::EBADF);
        };
        for (index, entry) in entries.iter().enumerate().skip(offset as usize) {
            if add(entry.ino, index as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        Ok(())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }

    /// fsync on a directory.
    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        let path = self.node_path(&self.node(ino)?)?;
        File::open(self.backing_path(&path))
            .and_then(|d| d.sync_all())
            .map_err(io_errno)
    }

    /// Which virtual file node `ino` is, for the adapter's checks.
    pub fn virtual_file_of(&self, ino: u64) -> Option<VirtualFile> {
        self.inodes.get(ino).and_then(|n| Self::virtual_file(&n))
    }
}
