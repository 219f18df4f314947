//! Resolving backing paths strictly beneath the datastore root.
//!
//! The mount resolves paths it was given by the kernel, which has already
//! resolved every symlink itself; a symlink met on the way now was put into
//! the datastore behind the mount's back (a directory or file swapped for a
//! link), and following it could make the mount read, write or change a
//! host file outside the datastore. So every backing path is resolved with
//! `openat2(2)` relative to a descriptor of the datastore root, with
//! `RESOLVE_BENEATH` and `RESOLVE_NO_SYMLINKS`: any symlink or `..` escape
//! on the way is `ELOOP` or `EXDEV` instead. Files are opened that way
//! ([`BackingRoot::open_file`]), directories for listing too
//! ([`BackingRoot::open_dir`]), and for the metadata operations of
//! `backing_meta` the *parent* directory of an entry
//! ([`BackingRoot::parent_of`]), so that the operation is one `*at` call on
//! the final name that never follows it.
//!
//! On kernels without `openat2` (before 5.6) the path is walked one
//! component at a time instead, each opened with `O_NOFOLLOW` relative to
//! the previous one and `..` refused, which keeps the same guarantee at the
//! cost of a system call per component (symlinks then give `ENOTDIR` or
//! `ELOOP`).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The open(2) flags a backing open may carry besides the access mode and
/// O_CREAT/O_EXCL. `openat2` rejects unknown bits (the kernel's f_flags
/// that FUSE forwards can hold some, such as `__FMODE_EXEC`), and the
/// others (O_APPEND, O_DIRECT, O_TRUNC) are handled by the caller.
const PASSED_FLAGS: i32 = libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NOATIME
    | libc::O_LARGEFILE
    | libc::O_NOFOLLOW;

/// The datastore root (or a VM home, see `owned_file::VmDir`), for
/// resolving paths beneath it.
pub struct BackingRoot {
    /// A descriptor of the root: `O_PATH` for the datastore, `O_RDONLY` for
    /// a VM home. Immutable.
    fd: OwnedFd,
    /// Set once `openat2` turned out to be missing (ENOSYS).
    no_openat2: AtomicBool,
}

/// A directory beneath the root: the root's own descriptor, or one opened
/// beneath it.
pub enum DirFd<'root> {
    /// The datastore root.
    Root(BorrowedFd<'root>),
    /// A directory below it.
    Opened(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Opened(fd) => fd.as_fd(),
        }
    }
}

impl BackingRoot {
    /// Opens a descriptor of the datastore root.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            no_openat2: AtomicBool::new(false),
        })
    }

    /// Resolves paths beneath the directory `fd` (already opened by the
    /// caller, who vouches that it is the right one).
    pub fn from_dir_fd(fd: OwnedFd) -> Self {
        Self {
            fd,
            no_openat2: AtomicBool::new(false),
        }
    }

    /// The root's descriptor.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the regular file `rel` (relative to the root, no leading `/`)
    /// with raw open(2) `flags`: the access mode, O_CREAT and O_EXCL, and
    /// the flags listed in [`PASSED_FLAGS`]; others are dropped. `mode`
    /// applies with O_CREAT. A symlink as the last component is refused too
    /// (ELOOP), a directory is EISDIR, and anything else that is not a
    /// regular file (FIFO, socket, device) is ENXIO.
    ///
    /// The name was a regular file when the kernel looked it up, but it can
    /// be swapped for a FIFO or a device behind the mount before the open.
    /// So an existing name is first opened `O_PATH`, which opens nothing (no
    /// driver `open` runs for a device, no FIFO open waits for a writer),
    /// its `fstat` says what it is, and only a regular file is opened for
    /// real, through `/proc/self/fd/N` ([`reopen`]), which reopens the very
    /// inode held rather than looking the name up again. That is one system
    /// call more than a plain open and an `fstat`, against a FUSE round trip
    /// per open. An exclusive create needs none of it: it can only make a
    /// new regular file. So O_CREAT tries that first (the kernel sends a
    /// create only after a lookup found no such name, so it almost always
    /// succeeds), and only EEXIST leads to the pinned open.
    pub fn open_file(&self, rel: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
        let flags = (flags & (libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | PASSED_FLAGS))
            | libc::O_NOFOLLOW;
        let creating = flags & libc::O_CREAT != 0;
        let create = |flags: i32| -> std::io::Result<File> {
            let flags = OFlags::from_bits_retain((flags | libc::O_EXCL) as u32);
            Ok(File::from(self.resolve(
                rel,
                flags,
                Mode::from_raw_mode(mode & 0o7777),
            )?))
        };
        if creating && flags & libc::O_EXCL != 0 {
            return create(flags);
        }
        // A name that vanishes between a failed exclusive create and the
        // O_PATH lookup is created again; a datastore writer racing us
        // forever gets EEXIST, never an open of what it planted.
        for _ in 0..3 {
            if creating {
                match create(flags) {
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
                    result => return result,
                }
            }
            match self.resolve(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(pinned) => return open_pinned_regular(&pinned, rel, flags),
                Err(Errno::NOENT) if creating => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
        Err(Errno::EXIST.into())
    }

    /// Opens directory `rel` for reading its entries (or syncing it). The
    /// directory itself must not be a symlink either (ELOOP).
    pub fn open_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        Ok(self.resolve(rel, flags, Mode::empty())?)
    }

    /// An `O_PATH | O_NOFOLLOW` descriptor of entry `rel` itself (a symlink
    /// there is the link, never followed), for calls that act on the object
    /// by descriptor, such as its extended attributes
    /// (`datastore::xattrs`).
    pub fn open_object(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        self.resolve(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())
    }

    /// The parent directory of entry `rel`, opened beneath the root, and
    /// the entry's name in it, for a `*at` call that acts on that name
    /// without following it. For the root itself (`rel` empty) that is the
    /// root and `.`.
    pub fn parent_of<'p>(&self, rel: &'p Path) -> std::io::Result<(DirFd<'_>, &'p OsStr)> {
        match (rel.parent(), rel.file_name()) {
            (None, _) => Ok((DirFd::Root(self.fd.as_fd()), OsStr::new("."))),
            (Some(parent), Some(name)) => Ok((self.open_dir_path(parent)?, name)),
            // A path ending in `..`: never made by the mount.
            (Some(_), None) => Err(Errno::XDEV.into()),
        }
    }

    /// An `O_PATH` descriptor of directory `rel`, the root's own for the
    /// root (no system call), for `*at` calls on several of its entries
    /// at the cost of one resolution (see [`BackingRoot::stat_in`]).
    pub fn open_dir_path(&self, rel: &Path) -> rustix::io::Result<DirFd<'_>> {
        if rel.as_os_str().is_empty() {
            return Ok(DirFd::Root(self.fd.as_fd()));
        }
        let fd = self.resolve(rel, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok(DirFd::Opened(fd))
    }

    /// Opens `rel` with `flags` (O_CLOEXEC is added) beneath the root,
    /// following no symlink on the way. A symlink as the last component is
    /// ELOOP, or with O_PATH | O_NOFOLLOW the link itself; callers pass
    /// O_NOFOLLOW or O_DIRECTORY, so the fallback never follows it either.
    fn resolve(&self, rel: &Path, flags: OFlags, mode: Mode) -> rustix::io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC;
        // The root itself; openat2 refuses an empty path.
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        if !self.no_openat2.load(Ordering::Relaxed) {
            match rustix::fs::openat2(
                &self.fd,
                rel,
                flags,
                mode,
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            ) {
                Err(Errno::NOSYS) => {
                    log::warn!("openat2 is not available (Linux < 5.6): backing paths are walked one component at a time with O_NOFOLLOW");
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                result => return result,
            }
        }
        self.resolve_by_walking(rel, flags, mode)
    }

    /// [`Self::resolve`] without `openat2`: each directory on the way is
    /// opened `O_PATH | O_NOFOLLOW` relative to the one before and the last
    /// component `O_NOFOLLOW`, so no symlink is followed, and `..` or an
    /// absolute path is EXDEV as with `RESOLVE_BENEATH`.
    fn resolve_by_walking(
        &self,
        rel: &Path,
        flags: OFlags,
        mode: Mode,
    ) -> rustix::io::Result<OwnedFd> {
        let mut names = Vec::new();
        for component in rel.components() {
            match component {
                Component::Normal(name) => names.push(name),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(Errno::XDEV)
                }
            }
        }
        let Some((last, dirs)) = names.split_last() else {
            return rustix::fs::openat(&self.fd, ".", flags, mode);
        };
        let mut dir = DirFd::Root(self.fd.as_fd());
        for name in dirs {
            let next = rustix::fs::openat(
                &dir,
                *name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            dir = DirFd::Opened(next);
        }
        // The last component is never followed either (openat2 refuses a
        // symlink there with RESOLVE_NO_SYMLINKS, or with O_PATH |
        // O_NOFOLLOW returns the link itself, as this does).
        rustix::fs::openat(&dir, *last, flags | OFlags::NOFOLLOW, mode)
    }

    /// Makes this root resolve paths as on a kernel without `openat2`, so
    /// that tests cover the fallback.
    #[cfg(test)]
    pub(crate) fn without_openat2(self) -> Self {
        self.no_openat2.store(true, Ordering::Relaxed);
        self
    }
}

/// Opens, with `flags` (access mode and [`PASSED_FLAGS`]), the file that
/// the `O_PATH` descriptor `pinned` of `rel` holds, if it is a regular
/// file; see [`BackingRoot::open_file`].
fn open_pinned_regular(pinned: &OwnedFd, rel: &Path, flags: i32) -> std::io::Result<File> {
    let stat = rustix::fs::fstat(pinned)?;
    let refused = match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
        rustix::fs::FileType::RegularFile => None,
        rustix::fs::FileType::Directory => Some(Errno::ISDIR),
        rustix::fs::FileType::Symlink => Some(Errno::LOOP),
        _ => Some(Errno::NXIO),
    };
    if let Some(errno) = refused {
        log::warn!(
            "backing file {} is not a regular file (it was swapped behind the mount); refused",
            crate::format::untrusted::path(rel)
        );
        return Err(errno.into());
    }
    let flags = flags & (libc::O_ACCMODE | PASSED_FLAGS) & !libc::O_NOFOLLOW;
    Ok(reopen(pinned, OFlags::from_bits_retain(flags as u32))?)
}

/// Opens the file an `O_PATH` descriptor holds, with `flags`, through
/// `/proc/self/fd/N`: that reopens the inode itself, so no name is looked
/// up again (`O_NOFOLLOW` must not be in `flags`: the magic link is the
/// way in).
pub(crate) fn reopen(pinned: &OwnedFd, flags: OFlags) -> rustix::io::Result<File> {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    rustix::fs::open(link.as_str(), flags | OFlags::CLOEXEC, Mode::empty()).map(File::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_beneath_and_refuses_every_way_out() {
        for fallback in [false, true] {
            opens_beneath_and_refuses_every_way_out_with(fallback);
        }
    }

    /// With `fallback`, as on a kernel without openat2.
    fn opens_beneath_and_refuses_every_way_out_with(fallback: bool) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("vm/sub")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("host.txt"), b"host").unwrap();
        std::fs::write(root.join("vm/f"), b"inside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("vm/dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.join("host.txt"), root.join("vm/filelink")).unwrap();
        let mut beneath = BackingRoot::open(&root).unwrap();
        if fallback {
            beneath = beneath.without_openat2();
        }
        // The fallback meets a linked directory with O_NOFOLLOW |
        // O_DIRECTORY, which is ENOTDIR.
        let refused: &[i32] = if fallback {
            &[libc::ELOOP, libc::EXDEV, libc::ENOTDIR]
        } else {
            &[libc::ELOOP, libc::EXDEV]
        };
        let refused_errno = |err: std::io::Error, what: &str| {
            let errno = err.raw_os_error().unwrap_or(0);
            assert!(
                refused.contains(&errno),
                "{what} (fallback {fallback}): {err}"
            );
        };

        let file = beneath
            .open_file(Path::new("vm/f"), libc::O_RDONLY, 0)
            .unwrap();
        assert_eq!(std::io::read_to_string(file).unwrap(), "inside");
        let created = beneath
            .open_file(
                Path::new("vm/new"),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o640,
            )
            .unwrap();
        drop(created);
        assert!(root.join("vm/new").exists());
        for escape in [
            "vm/dirlink/host.txt",
            "vm/filelink",
            "../outside/host.txt",
            "vm/../../outside/host.txt",
        ] {
            let err = beneath
                .open_file(Path::new(escape), libc::O_RDWR, 0)
                .expect_err(escape);
            refused_errno(err, escape);
        }
        let err = beneath
            .open_file(
                Path::new("vm/dirlink/made"),
                libc::O_WRONLY | libc::O_CREAT,
                0o600,
            )
            .unwrap_err();
        assert!(err.raw_os_error().is_some());
        assert!(!outside.join("made").exists());
        assert_eq!(std::fs::read(outside.join("host.txt")).unwrap(), b"host");
        // Flags openat2 does not know are dropped, not refused.
        let exec_flag = 0o40; // __FMODE_EXEC as the kernel forwards it
        assert!(beneath
            .open_file(Path::new("vm/f"), libc::O_RDONLY | exec_flag, 0)
            .is_ok());

        // Directories, for listing, and parents of entries.
        assert!(beneath.open_dir(Path::new("")).is_ok());
        assert!(beneath.open_dir(Path::new("vm/sub")).is_ok());
        for escape in ["vm/dirlink", "..", "vm/../.."] {
            refused_errno(beneath.open_dir(Path::new(escape)).unwrap_err(), escape);
        }
        let (_, name) = beneath.parent_of(Path::new("")).unwrap();
        assert_eq!(name, ".");
        let (parent, name) = beneath.parent_of(Path::new("vm")).unwrap();
        assert!(matches!(parent, DirFd::Root(_)), "no open for the root");
        assert_eq!(name, "vm");
        let (parent, name) = beneath.parent_of(Path::new("vm/sub/x")).unwrap();
        assert_eq!(name, "x");
        let parent_stat = rustix::fs::fstat(&parent).unwrap();
        let sub = std::fs::metadata(root.join("vm/sub")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(parent_stat.st_ino, sub.ino());
        for escape in [
            "vm/dirlink/x",
            "../outside/x",
            "vm/../../outside/x",
            "vm/..",
        ] {
            let Err(err) = beneath.parent_of(Path::new(escape)) else {
                panic!("{escape}: resolved");
            };
            refused_errno(err, escape);
        }
        let Err(err) = beneath.parent_of(Path::new("vm/f/x")) else {
            panic!("a file as a directory");
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
    }

    /// O_CREAT without O_EXCL tries an exclusive create first; a name that
    /// exists is then opened as it is (contents and mode kept), unless it
    /// is a symlink (never followed, even to a file beneath the root).
    #[test]
    fn a_create_of_an_existing_name_opens_what_is_there_and_never_a_symlink() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("file"), b"kept").unwrap();
        std::fs::set_permissions(root.join("file"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("file", root.join("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
        let beneath = BackingRoot::open(root).unwrap();
        let create =
            |name: &str| beneath.open_file(Path::new(name), libc::O_RDWR | libc::O_CREAT, 0o644);

        let mut existing = create("file").unwrap();
        let mut text = String::new();
        existing.read_to_string(&mut text).unwrap();
        assert_eq!(text, "kept");
        let mode = std::fs::metadata(root.join("file"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "an open of an existing file changes no mode"
        );

        for link in ["link", "dangling"] {
            let err = create(link).expect_err(link);
            assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{link}: {err}");
        }
        assert!(
            !root.join("nowhere").exists(),
            "a dangling symlink made its target"
        );

        let new = create("new").unwrap();
        assert_eq!(new.metadata().unwrap().len(), 0);
        assert!(root.join("new").is_file());
    }

    #[test]
    fn a_content_path_swapped_for_anything_but_a_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("file"), b"x").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::RWXU,
            0,
        )
        .unwrap();
        std::fs::create_dir(root.join("dir")).unwrap();
        let beneath = BackingRoot::open(root).unwrap();
        for name in ["fifo", "dir"] {
            for access in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_CREAT] {
                let started = std::time::Instant::now();
                let err = beneath
                    .open_file(Path::new(name), access, 0o600)
                    .expect_err(name);
                assert!(started.elapsed().as_secs() < 1, "{name}: blocked");
                assert!(
                    [libc::ENXIO, libc::EISDIR].contains(&err.raw_os_error().unwrap()),
                    "{name} {access:#o}: {err}"
                );
            }
        }
        // Nothing planted is opened for real, not even for a moment: a
        // writer blocked in open(2) on the FIFO would be let through by
        // any reader's open (a device's driver `open` would run likewise).
        let fifo = root.join("fifo");
        let writer = std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(fifo));
        std::thread::sleep(std::time::Duration::from_millis(100));
        for access in [libc::O_RDONLY, libc::O_RDONLY | libc::O_NONBLOCK] {
            beneath
                .open_file(Path::new("fifo"), access, 0)
                .expect_err("a FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!writer.is_finished(), "the FIFO was opened for reading");
        drop(std::fs::File::open(root.join("fifo")).unwrap());
        writer.join().unwrap().unwrap();
        // O_NONBLOCK stays only where the caller asked for it.
        for (asked, kept) in [(0, false), (libc::O_NONBLOCK, true)] {
            let file = beneath
                .open_file(Path::new("file"), libc::O_RDWR | asked, 0)
                .unwrap();
            let flags = rustix::fs::fcntl_getfl(&file).unwrap();
            assert_eq!(flags.contains(OFlags::NONBLOCK), kept);
            assert_eq!(flags & OFlags::RWMODE, OFlags::RDWR);
        }
    }
}
