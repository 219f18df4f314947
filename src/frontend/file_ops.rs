//! Opening, reading, writing and syncing files.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::BackingId;

use fuser::{Errno, FileAttr};
use rustix::fs::Mode;

use super::attr;
use super::cache_fill::{CacheRole, FillGate, FillJob};
use super::cache_mode::{cache_mode, CacheMode, OpenedFile};
use super::caller::Caller;
use super::handles::{Handle, Snapshot};
use super::inodes::NodeInfo;
use super::virtual_calls::{self, VirtualCall};
use super::{io_errno, sys_errno, FsResult, VmCryptFs};
use crate::content::{ContentError, EncryptedFile, SeekTarget};
use crate::control::virtual_file::VirtualFile;
use crate::datastore::layout::ContentClass;
use crate::datastore::vm_home::VmHome;
use crate::format::untrusted;

/// Flags of the caller's open that must not reach the backing file:
/// O_APPEND (the kernel already computed the offset, and pwrite with
/// O_APPEND would ignore it), O_DIRECT (ciphertext is not block-aligned),
/// O_TRUNC (truncation goes through the content layer), O_CREAT/O_EXCL
/// (handled by `create`).
const STRIPPED_FLAGS: i32 =
    libc::O_APPEND | libc::O_DIRECT | libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL;

pub(super) fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

impl VmCryptFs {
    /// Opens the backing file `rel` beneath the datastore root (never
    /// through a symlink; see `datastore::backing_root`). Encrypted files
    /// are opened read-write for any write access, because a partial-block
    /// write must read the block. With `create_mode`, O_CREAT is added
    /// (also with O_RDONLY, which POSIX and pjdfstest allow).
    fn open_backing(
        &self,
        rel: &Path,
        flags: i32,
        class: ContentClass,
        create_mode: Option<u32>,
    ) -> std::io::Result<File> {
        let write = wants_write(flags);
        let read = flags & libc::O_ACCMODE != libc::O_WRONLY || class == ContentClass::Encrypted;
        let access = match (read, write) {
            (true, true) => libc::O_RDWR,
            (false, true) => libc::O_WRONLY,
            _ => libc::O_RDONLY,
        };
        let mut raw = (flags & !STRIPPED_FLAGS & !libc::O_ACCMODE) | access;
        if create_mode.is_some() {
            raw |= libc::O_CREAT | (flags & libc::O_EXCL);
        }
        self.beneath.open_file(rel, raw, create_mode.unwrap_or(0))
    }

    /// Builds the handle for an opened backing file of node `node`, whose
    /// role for the kernel's cache is `role` (a writable one keeps its
    /// inode from being filled until it is closed).
    fn make_handle(
        &self,
        node: &NodeInfo,
        file: File,
        class: ContentClass,
        rel: &Path,
        role: CacheRole,
    ) -> FsResult<Handle> {
        if class == ContentClass::Plain {
            return Ok(Handle::Plain {
                file,
                ino: node.ino,
                passthrough: std::sync::OnceLock::new(),
                _counted: node.area.vm().map(VmHome::handle_opened),
            });
        }
        let vm = node.area.vm().ok_or(Errno::EIO)?;
        let (keyring, policy) = vm
            .keyring_for_open_file(self.datastore.provider())
            .map_err(|locked| {
                log::warn!("open {}: {locked}", untrusted::path(rel));
                Errno::from_i32(libc::ENOKEY)
            })?;
        let Some(content) = self.inodes.acquire_content(node.ino, || {
            self.content_settings()
                .state_for(keyring, policy.content_layout, &file)
        }) else {
            vm.file_closed();
            return Err(Errno::ENOENT);
        };
        if role == CacheRole::Writes {
            self.fill_gate.writer_opened(node.ino);
        }
        Ok(Handle::Encrypted {
            role,
            file: Arc::new(file),
            content,
            ino: node.ino,
            vm: vm.clone(),
            _counted: vm.handle_opened(),
        })
    }

    fn class_of(node: &NodeInfo, rel: &Path) -> ContentClass {
        rel.file_name()
            .map(|name| Self::content_class(&node.area, name))
            .unwrap_or(ContentClass::Plain)
    }

    /// [`Self::class_of`] for a file about to be written: decided by its
    /// VM's authenticated bundle (see [`Self::class_to_write`]).
    fn class_to_write_node(
        &self,
        node: &NodeInfo,
        rel: &Path,
        what: &str,
    ) -> FsResult<ContentClass> {
        match rel.file_name() {
            Some(name) => self.class_to_write(&node.area, name, what, rel),
            None => Ok(ContentClass::Plain),
        }
    }

    /// How the kernel should cache an open of a file of class `class`
    /// with `flags`; see [`super::cache_mode`].
    fn cache_mode_for(&self, class: ContentClass, flags: i32) -> CacheMode {
        let file = match class {
            ContentClass::Encrypted => OpenedFile::Encrypted,
            ContentClass::Plain => OpenedFile::Plain,
        };
        cache_mode(file, flags, self.direct_io_mmap.load(Ordering::Relaxed))
    }

    /// Opens a file (or a `.control`). Returns the handle id and how the
    /// kernel should cache it.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<(u64, CacheMode)> {
        let node = self.node(ino)?;
        if let Some(file) = Self::virtual_file(&node) {
            virtual_calls::check(file, VirtualCall::Open { flags })?;
            let mode = cache_mode(OpenedFile::Virtual, flags, false);
            return Ok((self.open_virtual(&node, file), mode));
        }
        let rel = self.node_path(&node)?;
        let class = match wants_write(flags) {
            true => self.class_to_write_node(&node, &rel, "open for writing")?,
            false => Self::class_of(&node, &rel),
        };
        let file = self
            .open_backing(&rel, flags, class, None)
            .map_err(io_errno)?;
        let mode = self.cache_mode_for(class, flags);
        let handle = self.make_handle(&node, file, class, &rel, CacheRole::of_open(flags, mode))?;
        if flags & libc::O_TRUNC != 0 && wants_write(flags) {
            self.truncate_handle(&handle, &rel, 0)?;
        }
        Ok((self.handles.insert(handle), mode))
    }

    /// Creates and opens a regular file.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(FileAttr, u64, CacheMode)> {
        let dir = self.node(parent)?;
        Self::check_user_name(&dir, name)?;
        let rel = self.node_path(&dir)?.join(name);
        let area = self.child_area(&dir, name, None);
        let class = self.class_to_write(&area, name, "create", &rel)?;
        let file = self
            .open_backing(&rel, flags, class, Some(mode))
            .map_err(io_errno)?;
        self.chown_to_caller(&rel, uid, gid)?;
        let stat = rustix::fs::fstat(&file).map_err(sys_errno)?;
        let backing = super::backing_id(&stat);
        let ino = self.inodes.remember(backing, &rel, area, |known| {
            self.names_backing(known, backing)
        });
        let node = self.node(ino)?;
        let mode = self.cache_mode_for(class, flags);
        let handle = self.make_handle(&node, file, class, &rel, CacheRole::of_open(flags, mode))?;
        if flags & libc::O_TRUNC != 0 && stat.st_size > 0 {
            self.truncate_handle(&handle, &rel, 0)?;
        }
        let format = match &handle {
            Handle::Encrypted { content, .. } if stat.st_size == 0 => Some(content.layout()),
            _ => None,
        };
        let attr = attr::from_stat(ino, &stat, format);
        Ok((attr, self.handles.insert(handle), mode))
    }

    /// The errno for a content error; ENXIO from a seek is an answer, not a
    /// fault, so only other errors are logged.
    fn content_errno(&self, ino: u64, what: &str, err: ContentError) -> Errno {
        match &err {
            ContentError::Io(io) if io.raw_os_error() == Some(libc::ENXIO) => {
                Errno::from_i32(libc::ENXIO)
            }
            _ => Self::log_content_error(&self.handle_path(ino), what, &err),
        }
    }

    fn log_content_error(rel: &Path, what: &str, err: &ContentError) -> Errno {
        log::error!("{what} {}: {err}", untrusted::path(rel));
        Errno::from_i32(errno_of(err))
    }

    /// [`Self::log_content_error`] for a file of `vm`, counting
    /// authentication failures for `.stats`.
    fn content_error(&self, vm: &VmHome, ino: u64, what: &str, err: &ContentError) -> Errno {
        if err.is_authentication_failure() {
            vm.counters().auth_failure();
        }
        Self::log_content_error(&self.handle_path(ino), what, err)
    }

    pub(super) fn handle_path(&self, ino: u64) -> std::path::PathBuf {
        self.inodes
            .get(ino)
            .and_then(|n| n.path)
            .unwrap_or_else(|| "<unlinked file>".into())
    }

    /// Reads from an open file into the scratch buffer `out` (a per-thread
    /// buffer the adapter reuses across requests, never shrunk or zeroed);
    /// the data is `out[..n]` for the returned `n`.
    pub fn read(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> FsResult<usize> {
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        match &*handle {
            Handle::Plain { file, .. } => {
                read_plain(file, offset, size as usize, out).map_err(io_errno)
            }
            Handle::Encrypted {
                file,
                content,
                vm,
                role,
                ..
            } => {
                let n = if *role == CacheRole::Fills {
                    let (n, fill) = content
                        .read_into_page_cache(file, offset, size as u64, out)
                        .map_err(|e| self.content_error(vm, ino, "read", &e))?;
                    if let Some(window) = fill {
                        self.queue_fill(ino, file, content, vm, window);
                    }
                    n
                } else {
                    content
                        .read_into(file, offset, size as u64, out)
                        .map_err(|e| self.content_error(vm, ino, "read", &e))?
                };
                vm.counters().read(n);
                vm.counters()
                    .read_around(content.take_read_around_windows());
                vm.counters().read_ahead(content.take_read_ahead_bytes());
                Ok(n)
            }
            Handle::Control { snapshot, .. } => Ok(snapshot
                .lock()
                .expect("snapshot lock")
                .read_at(offset, size as usize, out)),
            Handle::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    /// Queues the copy of `window` of inode `ino` into the kernel's cache,
    /// if the mount has a filler. Safe before the reply: the filler then
    /// waits for the kernel to release the page being read.
    fn queue_fill(
        &self,
        ino: u64,
        file: &Arc<File>,
        content: &Arc<EncryptedFile>,
        vm: &Arc<VmHome>,
        window: std::ops::Range<u64>,
    ) {
        if let Some(filler) = self.cache_filler.get() {
            filler.queue(FillJob {
                ino,
                backing: file.clone(),
                content: content.clone(),
                window,
                vm: vm.clone(),
            });
        }
    }

    /// Whether the kernel must not be given handle `fh` of `ino` before a
    /// fill of `ino` in flight ends (a writable handle; see `cache_fill`).
    pub fn must_wait_for_fill(&self, ino: u64, fh: u64) -> Option<Arc<FillGate>> {
        let handle = self.handles.get(fh)?;
        let writes = matches!(
            &*handle,
            Handle::Encrypted {
                role: CacheRole::Writes,
                ..
            }
        );
        (writes && self.fill_gate.is_filling(ino)).then(|| self.fill_gate.clone())
    }

    /// Writes `data` at `offset` through an open handle. `setid_clearer`
    /// is the writer when the kernel flags the write FUSE_WRITE_KILL_SUIDGID
    /// (it lacks CAP_FSETID): the file's set-id bits are then cleared as a
    /// local file system would clear them for that writer.
    pub fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        setid_clearer: Option<Caller>,
    ) -> FsResult<u32> {
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        if let Some(writer) = setid_clearer {
            if let Some(file) = handle.backing_file() {
                clear_setid_bits(file, &writer)?;
            }
        }
        match &*handle {
            Handle::Plain { file, .. } => file.write_all_at(data, offset).map_err(io_errno)?,
            Handle::Encrypted {
                file, content, vm, ..
            } => {
                content
                    .write(file, offset, data)
                    .map_err(|e| self.content_error(vm, ino, "write", &e))?;
                vm.counters().write(data.len());
            }
            Handle::Control {
                file,
                vm,
                snapshot,
                pending,
            } => {
                virtual_calls::check(*file, VirtualCall::Write)?;
                let VirtualFile::Control(scope) = *file else {
                    return Err(Errno::EBADF);
                };
                self.control_write(scope, vm.as_ref(), pending, data)?;
                *snapshot.lock().expect("snapshot lock") =
                    Snapshot::from(&self.control_text(scope, vm.as_ref())[..]);
            }
            Handle::Dir { .. } => return Err(Errno::EISDIR),
        }
        Ok(data.len() as u32)
    }

    /// lseek for SEEK_DATA/SEEK_HOLE (the kernel handles the other
    /// whences itself).
    pub fn lseek(&self, ino: u64, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        let target = match whence {
            libc::SEEK_DATA => SeekTarget::Data,
            libc::SEEK_HOLE => SeekTarget::Hole,
            _ => return Err(Errno::EINVAL),
        };
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        match &*handle {
            Handle::Plain { file, .. } => {
                let whence = match target {
                    SeekTarget::Data => rustix::fs::SeekFrom::Data(offset),
                    SeekTarget::Hole => rustix::fs::SeekFrom::Hole(offset),
                };
                rustix::fs::seek(file, whence)
                    .map(|off| off as i64)
                    .map_err(sys_errno)
            }
            Handle::Encrypted { file, content, .. } => content
                .seek(file, offset, target)
                .map(|off| off as i64)
                .map_err(|e| self.content_errno(ino, "seek", e)),
            _ => Err(Errno::EINVAL),
        }
    }

    /// fallocate: modes 0 and KEEP_SIZE (preallocate), PUNCH_HOLE (discard;
    /// frees datastore space), ZERO_RANGE. Others are EOPNOTSUPP.
    pub fn fallocate(&self, ino: u64, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let kind = mode & !libc::FALLOC_FL_KEEP_SIZE;
        let supported = kind == 0
            || (kind == libc::FALLOC_FL_PUNCH_HOLE && keep_size)
            || kind == libc::FALLOC_FL_ZERO_RANGE;
        if !supported {
            return Err(Errno::EOPNOTSUPP);
        }
        match &*handle {
            Handle::Plain { file, .. } => rustix::fs::fallocate(
                file,
                rustix::fs::FallocateFlags::from_bits_truncate(mode as u32),
                offset,
                len,
            )
            .map_err(sys_errno),
            Handle::Encrypted { file, content, .. } => {
                let result = match kind {
                    0 => content.allocate(file, offset, len, keep_size),
                    libc::FALLOC_FL_PUNCH_HOLE => content.punch_hole(file, offset, len),
                    _ => content.zero_range(file, offset, len, keep_size),
                };
                result.map_err(|e| self.content_errno(ino, "fallocate", e))
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// fsync/fdatasync: reaches the backing file.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        let Some(file) = handle.backing_file() else {
            return Ok(());
        };
        let result = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        result.map_err(io_errno)
    }

    /// flush (each close(2) of a descriptor): runs a control command left
    /// without a trailing newline. Nothing to do for other files: writes
    /// are already in the backing file.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        match self.handles.get(fh).as_deref() {
            Some(Handle::Control {
                file: VirtualFile::Control(scope),
                vm,
                pending,
                ..
            }) => self.control_flush(*scope, vm.as_ref(), pending),
            _ => Ok(()),
        }
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) {
        self.release_locks_of_handle(fh);
        if let Some(handle) = self.handles.remove(fh) {
            self.close_handle(&handle);
        }
    }

    /// Gives back what a handle holds: for an encrypted file its share of
    /// the inode's content state and its VM's open-file count, for a
    /// pass-through file its share of the kernel passthrough backing id.
    fn close_handle(&self, handle: &Handle) {
        match handle {
            Handle::Encrypted { ino, vm, role, .. } => {
                if *role == CacheRole::Writes {
                    self.fill_gate.writer_closed(*ino);
                }
                self.inodes.release_content(*ino);
                vm.file_closed();
            }
            Handle::Plain { passthrough, .. } => {
                if let Some(ino) = passthrough.get() {
                    self.inodes.release_passthrough(*ino);
                }
            }
            _ => {}
        }
    }

    /// The kernel passthrough backing id for a freshly opened pass-through
    /// handle, registering the backing file with `open_backing` for the
    /// first handle of the inode. `None` means serve it through FUSE as
    /// usual (encrypted file, passthrough unavailable, or registration
    /// failed, after which passthrough is switched off for this mount).
    pub fn passthrough_backing(
        &self,
        ino: u64,
        fh: u64,
        open_backing: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let handle = self.handles.get(fh)?;
        let Handle::Plain {
            file, passthrough, ..
        } = &*handle
        else {
            return None;
        };
        // A file with set-id bits is served through FUSE: the kernel leaves
        // clearing them on an unprivileged write to the mount
        // (FUSE_HANDLE_KILLPRIV_V2), and a passthrough write never reaches
        // it. The kernel refuses (EIO) a passthrough open of an inode that
        // has FUSE-served opens, and the reverse, so this is decided only
        // by an inode's first open; a file made set-id while open through
        // passthrough keeps its bits on writes until its last close.
        let mut declined = false;
        let acquired = self.inodes.acquire_passthrough(ino, || {
            let set_id = rustix::fs::fstat(file)
                .map(|stat| stat.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0)
                .unwrap_or(true);
            if set_id || self.handles.has_other_open_file(ino, fh) {
                declined = true;
                return Err(std::io::ErrorKind::Other.into());
            }
            open_backing(file)
        });
        match acquired {
            Ok(Some(id)) => {
                let _ = passthrough.set(ino);
                Some(id)
            }
            Ok(None) => None,
            Err(_) if declined => None,
            Err(e) => {
                log::warn!("kernel passthrough refused ({e}); serving unencrypted files through FUSE instead");
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    fn truncate_handle(&self, handle: &Handle, rel: &Path, size: u64) -> FsResult<()> {
        match handle {
            Handle::Plain { file, .. } => file.set_len(size).map_err(io_errno),
            Handle::Encrypted {
                file, content, ino, ..
            } => {
                // The handle is writable, so no fill starts; one in flight
                // could still copy beyond the new end (see `cache_fill`).
                self.fill_gate.wait_for_fill(*ino);
                content
                    .truncate(file, size)
                    .map_err(|e| Self::log_content_error(rel, "truncate", &e))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Truncates through an open handle if given, else opens the file for
    /// the duration (sharing the inode's content state and locks).
    pub(super) fn truncate(&self, node: &NodeInfo, size: u64, fh: Option<u64>) -> FsResult<()> {
        // Through the given handle, or for a file unlinked while open, any
        // open handle of it; otherwise open the file for the duration.
        let open = fh
            .and_then(|fh| self.handles.get(fh))
            .filter(|h| matches!(&**h, Handle::Plain { .. } | Handle::Encrypted { .. }))
            .or_else(|| {
                node.path
                    .is_none()
                    .then(|| self.handles.find_open_file(node.ino))
                    .flatten()
            });
        if let Some(handle) = open {
            return self.truncate_handle(&handle, &self.handle_path(node.ino), size);
        }
        let rel = self.node_path(node)?;
        let class = self.class_to_write_node(node, &rel, "truncate")?;
        let file = self
            .open_backing(&rel, libc::O_WRONLY, class, None)
            .map_err(io_errno)?;
        let handle = self.make_handle(node, file, class, &rel, CacheRole::Writes)?;
        let result = self.truncate_handle(&handle, &rel, size);
        self.close_handle(&handle);
        result
    }
}

/// Reads up to `size` bytes at `offset` into `out`, short only at end of file.
/// Reads up to `size` bytes into the scratch buffer `out`; returns how
/// many (short only at end of file).
fn read_plain(file: &File, offset: u64, size: usize, out: &mut Vec<u8>) -> std::io::Result<usize> {
    if out.len() < size {
        out.resize(size, 0);
    }
    let mut filled = 0;
    while filled < size {
        match file.read_at(&mut out[filled..size], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The errno a FUSE reply carries for a content error: the backing file's
/// own for an I/O error, EIO for anything that failed to authenticate or
/// parse (the mapping lives here, at the kernel's edge, so the content
/// layer speaks only in its own errors).
fn errno_of(err: &ContentError) -> i32 {
    match err {
        ContentError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

/// Clears the set-id bits of the open backing file `file` as a write or
/// truncate by `changer`, a process without CAP_FSETID, does (see
/// [`Caller::mode_after_change`]): one `fstat`, and an `fchmod` only if a
/// bit is set.
pub(super) fn clear_setid_bits(file: &File, changer: &Caller) -> FsResult<()> {
    let stat = rustix::fs::fstat(file).map_err(sys_errno)?;
    if let Some(mode) = changer.mode_after_change(stat.st_mode, stat.st_gid) {
        rustix::fs::fchmod(file, Mode::from_raw_mode(mode & 0o7777)).map_err(sys_errno)?;
    }
    Ok(())
}
