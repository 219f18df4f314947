//! The FUSE frontend: translates kernel requests into datastore, content
//! and control operations.
//!
//! [`VmCryptFs`] holds the mount's state. Its operations live in
//! [`node_ops`] (names and attributes), [`dir_ops`] (listing directories),
//! [`file_ops`] (open, read, write), [`lock_ops`] (byte-range locks) and
//! [`control_ops`] (`.control` files) and [`xattr_ops`] (extended
//! attributes), each returning
//! `Result<_, Errno>`. [`fuse_adapter`] implements `fuser::Filesystem` by
//! calling them and sending the reply, and nothing else.
//!
//! The rules they apply that need no mount are pure functions, tested in
//! process: [`names`] (what a name is in a directory: virtual, internal
//! or ordinary), [`moves`] (which renames and links keep how an entry is
//! stored, else EXDEV) and [`virtual_calls`] (what each call may do to a
//! virtual file).

pub mod attr;
pub mod cache_fill;
pub mod cache_mode;
pub mod caller;
pub mod control_ops;
pub mod creation_umask;
pub mod dir_ops;
pub mod file_ops;
pub mod fuse_adapter;
pub mod handles;
pub mod inodes;
pub mod lock_ops;
pub mod moves;
pub mod names;
pub mod node_ops;
pub mod scrub_content;
pub mod virtual_calls;
pub mod xattr_ops;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::Errno;
use rustix::fs::{FileType, Stat};

use crate::content::encrypted_file::ReadSettings;
use crate::control::virtual_file::{StatusAccess, VirtualFile};
use crate::datastore::backing_device::DeviceReadahead;
use crate::datastore::backing_meta;
use crate::datastore::backing_root::BackingRoot;
use crate::datastore::deferred_release::DeferredRelease;
use crate::datastore::file_size_limit;
use crate::datastore::layout::ContentClass;
use crate::datastore::registry::Datastore;
use crate::datastore::scrub::{self, Rate};
use crate::datastore::vm_home::{CommandRecord, StoragePolicy, VmHome};
use crate::format::content_layout::ContentLayout;
use crate::format::untrusted;
use handles::HandleTable;
use inodes::{Area, InodeTable, NodeInfo, NodeKind, ROOT_INO};
use names::{DirPlace, NameKind};

/// Result of a frontend operation: a value, or the errno to reply with.
pub type FsResult<T> = Result<T, Errno>;

/// Converts an I/O error into the errno for the reply.
pub fn io_errno(err: std::io::Error) -> Errno {
    Errno::from(err)
}

/// Converts a system call's error (from rustix) into the errno for the
/// reply.
pub fn sys_errno(err: rustix::io::Errno) -> Errno {
    Errno::from_i32(err.raw_os_error())
}

/// The (device, inode) pair that identifies a backing file.
// The field types of `struct stat` differ between architectures.
#[allow(clippy::unnecessary_cast)]
fn backing_id(stat: &Stat) -> (u64, u64) {
    (stat.st_dev as u64, stat.st_ino as u64)
}

/// The state of one mount.
pub struct VmCryptFs {
    /// The datastore and its VM homes; shared, internally locked.
    datastore: Arc<Datastore>,
    /// Node ids; internally locked. Shared with scrubs, which hold the
    /// content state of the files they check as an open would.
    inodes: Arc<InodeTable>,
    /// Open handles; internally locked.
    handles: HandleTable,
    /// Lock owners' backing files; internally locked.
    locks: lock_ops::LockTable,
    /// Last command written to the root `.control`; its own mutex.
    root_last_command: Mutex<Option<CommandRecord>>,
    /// The root status files' lines of every VM home. Held for a whole
    /// root status read; `root_last_command` and the datastore's locks
    /// are taken inside it, never the other way round.
    root_cache: Mutex<crate::control::root_cache::RootCache>,
    /// Whether unencrypted files are served by kernel passthrough (set at
    /// FUSE init when the kernel offers it; cleared if registering a
    /// backing file ever fails).
    passthrough: std::sync::atomic::AtomicBool,
    /// Whether the kernel allows mmap of direct-I/O files and keeps them
    /// coherent with cached opens (`FUSE_DIRECT_IO_ALLOW_MMAP`, set at FUSE
    /// init); without it no file is opened direct (see [`cache_mode`]).
    direct_io_mmap: std::sync::atomic::AtomicBool,
    /// Whether the daemon runs as root, so that new files are given to the
    /// calling user (as a kernel file system would) instead of to root.
    chown_new_files: bool,
    /// The largest file the datastore's file system holds, probed at start
    /// (see `datastore::file_size_limit`); immutable.
    max_backing_len: u64,
    /// The datastore root, through which every backing file is opened and
    /// every metadata operation done, so that none can leave it (see
    /// `datastore::backing_root`). Immutable.
    beneath: Arc<BackingRoot>,
    /// Owner and modes of the virtual files (mount option
    /// `status_group`). Immutable.
    status_access: StatusAccess,
    /// When the mount started, for `.stats` uptime. Immutable.
    started: std::time::Instant,
    /// What reads of encrypted files bring in beyond what they ask for (the
    /// `read_around` and `read_ahead` mount options). Immutable; an `auto`
    /// read-ahead is resolved per file, against `device_readahead`.
    read_settings: ReadSettings,
    /// The readahead of the devices backing files live on; internally
    /// synchronized.
    device_readahead: Arc<DeviceReadahead>,
    /// How fast scrubs read unless their command says (mount option
    /// `scrub_rate`). Immutable.
    scrub_rate: Rate,
    /// Which inodes may be filled into the kernel's cache; internally
    /// locked, shared with the filler thread.
    fill_gate: Arc<cache_fill::FillGate>,
    /// The filler, once the mount started it; set once.
    cache_filler: Arc<std::sync::OnceLock<cache_fill::CacheFiller>>,
    /// Closes the descriptors that unlinks keep of the files they remove,
    /// so that the backing file system frees them off the unlink's path;
    /// internally locked.
    released: DeferredRelease,
}

impl VmCryptFs {
    /// A frontend over `datastore`.
    pub fn new(datastore: Arc<Datastore>) -> std::io::Result<Self> {
        let beneath = BackingRoot::open(datastore.root())?;
        let root = beneath.stat(Path::new(""))?;
        let max_backing_len = file_size_limit::probe(beneath.root_fd()).unwrap_or_else(|e| {
            log::warn!(
                "could not find the largest file the datastore's file system holds ({e}); a size past it fails only when the backing file system refuses it"
            );
            file_size_limit::UNKNOWN_LIMIT
        });
        // Learn every VM home now rather than at its first lookup, so that
        // a bundle deleted behind the mount later locks its VM home instead
        // of turning it plain (see `Datastore::vm_home`).
        match datastore.scan_vm_homes() {
            Ok(vms) => log::info!("{} encrypted VM homes", vms.len()),
            Err(e) => log::warn!("could not list the VM homes at mount: {e}"),
        }
        Ok(Self {
            max_backing_len,
            beneath: Arc::new(beneath),
            inodes: Arc::new(InodeTable::new(backing_id(&root))),
            datastore,
            handles: HandleTable::default(),
            locks: lock_ops::LockTable::default(),
            root_last_command: Mutex::new(None),
            root_cache: Mutex::default(),
            chown_new_files: rustix::process::geteuid().is_root(),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            direct_io_mmap: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            status_access: StatusAccess::new(
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
                None,
            ),
            read_settings: ReadSettings::DEFAULT,
            device_readahead: Arc::default(),
            scrub_rate: Rate(Some(scrub::DEFAULT_RATE)),
            fill_gate: Arc::default(),
            cache_filler: Arc::default(),
            released: DeferredRelease::new(),
        })
    }

    /// What starts this frontend's copying of read-around windows into the
    /// kernel's cache (see [`cache_fill`]), given the session's notifier.
    /// Until started, nothing is copied.
    pub fn cache_filler_starter(&self) -> cache_fill::FillerStarter {
        cache_fill::FillerStarter::new(self.cache_filler.clone(), self.fill_gate.clone())
    }

    /// The same frontend, with encrypted files opened from now on reading
    /// around their cold reads and ahead of their sequential ones as
    /// `read_settings` says (see [`ReadSettings`]; `auto` read-ahead is
    /// decided per file, by the device it lives on).
    pub fn with_read_settings(self, read_settings: ReadSettings) -> Self {
        Self {
            read_settings,
            ..self
        }
    }

    /// The same frontend, with scrubs reading at most `scrub_rate` unless
    /// their command says (mount option `scrub_rate`).
    pub fn with_scrub_rate(self, scrub_rate: Rate) -> Self {
        Self { scrub_rate, ..self }
    }

    /// The same frontend, with its virtual files owned and readable as
    /// `access` says (mount option `status_group`).
    pub fn with_status_access(self, status_access: StatusAccess) -> Self {
        Self {
            status_access,
            ..self
        }
    }

    /// Turns kernel passthrough for unencrypted files on or off (FUSE init).
    pub fn set_passthrough(&self, enabled: bool) {
        self.passthrough
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records whether the kernel granted `FUSE_DIRECT_IO_ALLOW_MMAP` (FUSE
    /// init).
    pub fn set_direct_io_mmap(&self, granted: bool) {
        self.direct_io_mmap
            .store(granted, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node, or ENOENT (ESTALE would confuse tools more).
    fn node(&self, ino: u64) -> FsResult<NodeInfo> {
        self.inodes.get(ino).ok_or(Errno::ENOENT)
    }

    /// The node's current path, or ENOENT if it was unlinked.
    fn node_path(&self, node: &NodeInfo) -> FsResult<PathBuf> {
        node.path.clone().ok_or(Errno::ENOENT)
    }

    /// Where directory node `dir` is, for the names in it: the root, a VM
    /// home (the VM home directory itself, a direct child of the root), or
    /// elsewhere.
    fn dir_place(dir: &NodeInfo) -> DirPlace {
        match (&dir.area, &dir.path) {
            (Area::Root, _) => DirPlace::Root,
            (Area::Vm(_), Some(path)) if path.components().count() == 1 => DirPlace::VmHome,
            _ => DirPlace::Other,
        }
    }

    /// The area of entry `name` in directory `parent`, given its `stat`.
    fn child_area(&self, parent: &NodeInfo, name: &OsStr, stat: Option<&Stat>) -> Area {
        match &parent.area {
            Area::Root => {
                let is_dir =
                    stat.is_some_and(|s| backing_meta::file_type(s) == FileType::Directory);
                match is_dir.then(|| self.datastore.vm_home(name)).flatten() {
                    Some(vm) => Area::Vm(vm),
                    None => Area::Plain,
                }
            }
            Area::Plain => Area::Plain,
            Area::Vm(vm) => Area::Vm(vm.clone()),
        }
    }

    /// How an existing regular file named `name` in `area` is stored, for
    /// showing and reading it: in a VM home not unlocked yet, from its
    /// peeked (unauthenticated) bundle. Creating, writing or moving a file
    /// uses [`Self::class_to_write`] instead.
    fn content_class(area: &Area, name: &OsStr) -> ContentClass {
        match area {
            Area::Vm(vm) => vm.content_class(name),
            _ => ContentClass::Plain,
        }
    }

    /// How a regular file named `name` is to be stored when it is created,
    /// opened for writing or moved into `area`. In a VM home this is
    /// decided by its authenticated bundle, so the VM is unlocked first;
    /// `what` and `rel` name the refused call in the log.
    fn class_to_write(
        &self,
        area: &Area,
        name: &OsStr,
        what: &str,
        rel: &Path,
    ) -> FsResult<ContentClass> {
        match area {
            Area::Vm(vm) => Ok(self.authenticated_policy(vm, what, rel)?.class_of(name)),
            _ => Ok(ContentClass::Plain),
        }
    }

    /// The storage policy of `vm` from its authenticated bundle, unlocking
    /// it first. Fails closed: a VM whose bundle does not authenticate on
    /// this host has only peeked fields, which whoever writes the datastore
    /// may have forged (a flipped `encrypt_disks` bit would store a new
    /// disk in clear, a widened disk pattern any file it names), so the
    /// call fails with ENOKEY and a log line naming the VM.
    fn authenticated_policy(&self, vm: &VmHome, what: &str, rel: &Path) -> FsResult<StoragePolicy> {
        vm.authenticated_policy(self.datastore.provider())
            .map_err(|locked| {
                log::warn!(
                    "{what} {}: refused until the VM's key bundle authenticates: {locked}",
                    untrusted::path(rel)
                );
                Errno::from_i32(libc::ENOKEY)
            })
    }

    /// The content format of the file at `path` in `area` if it is an
    /// encrypted regular file; `None` if it is stored as is.
    fn encrypted_format(area: &Area, path: &Path, stat: &Stat) -> Option<ContentLayout> {
        let encrypted = backing_meta::file_type(stat) == FileType::RegularFile
            && path
                .file_name()
                .is_some_and(|name| Self::content_class(area, name) == ContentClass::Encrypted);
        match area {
            Area::Vm(vm) if encrypted => Some(vm.content_layout()),
            _ => None,
        }
    }

    /// Rejects names the user may not create, remove or rename: our
    /// internal files, and the virtual files where they are virtual.
    fn check_user_name(parent: &NodeInfo, name: &OsStr) -> FsResult<()> {
        let kind = Self::dir_place(parent).name(name);
        if kind == NameKind::Internal {
            log::warn!("refusing to touch internal name {}", untrusted::name(name));
        }
        kind.check_change()
    }

    /// Gives newly created entry `rel` to the calling user when we run as
    /// root.
    fn chown_to_caller(&self, rel: &Path, uid: u32, gid: u32) -> FsResult<()> {
        if self.chown_new_files && (uid != 0 || gid != 0) {
            self.beneath
                .chown(rel, Some(uid), Some(gid))
                .map_err(io_errno)?;
        }
        Ok(())
    }

    /// Whether `ino` is the root.
    fn is_root(ino: u64) -> bool {
        ino == ROOT_INO
    }

    /// Which virtual file the node is, if it is one.
    fn virtual_file(node: &NodeInfo) -> Option<VirtualFile> {
        match node.kind {
            NodeKind::Virtual(file) => Some(file),
            NodeKind::Backing => None,
        }
    }
}
