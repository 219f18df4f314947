//! The one way to touch the files vmcryptfs owns in a VM home (bundle,
//! conversion journal, their temp files, conversion temps, and the files a
//! conversion rewrites).
//!
//! Whoever can write the datastore is the adversary (issue 22, DESIGN.md),
//! and vmcryptfs runs as root beside the key store. A path-based `open`,
//! `read_to_string` or `chmod` follows whatever was planted at the name: a
//! symlink to `master.key` is read and shown, a FIFO blocks the reader
//! forever, a device is opened, a 2 GiB file is read into memory. So:
//!
//! * A VM home is opened once as a [`VmDir`]: its parent (the datastore
//!   directory an admin named) is trusted, its own name is opened
//!   `O_DIRECTORY | O_NOFOLLOW`, and everything after is relative to that
//!   descriptor; paths below it are resolved with `openat2`
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (through a
//!   [`BackingRoot`] of the VM home).
//! * A file is read ([`VmDir::read_owned`]) or opened ([`open_regular_at`])
//!   only once it is known to be a regular file, and a read is bounded by
//!   the file's largest legitimate size.
//! * Journal and temp files are created `O_CREAT | O_EXCL | O_NOFOLLOW`
//!   ([`VmDir::create_exclusive`], [`create_exclusive_at`]), so a planted
//!   name of any kind makes the creation fail instead of being written
//!   through.
//! * Mode, owner and times are set on descriptors, renames and removals are
//!   `renameat`/`unlinkat` on held directory descriptors, which act on the
//!   name itself and never follow it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::backing_root::BackingRoot;

/// Why a file vmcryptfs owns could not be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnedFileError {
    /// Nothing is there.
    #[error("{path} does not exist")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Something other than what vmcryptfs puts there.
    #[error("{path} is {found}, not {expected}: it was planted in the datastore or damaged, and vmcryptfs neither follows nor reads it; inspect and remove it")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// What is there (`a symlink`, `a FIFO`, ...).
        found: &'static str,
        /// What vmcryptfs expects there.
        expected: &'static str,
    },
    /// Larger than such a file can legitimately be.
    #[error("{path} is {len} bytes, more than the {max} bytes such a file can hold: it was not read; it is damaged or was planted in the datastore, inspect and remove it")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least this much).
        len: u64,
        /// The largest legitimate size.
        max: u64,
    },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl OwnedFileError {
    fn io(what: &'static str, path: PathBuf, errno: Errno) -> Self {
        OwnedFileError::Io {
            what,
            path,
            source: errno.into(),
        }
    }

    /// Whether nothing was there.
    pub fn is_missing(&self) -> bool {
        matches!(self, OwnedFileError::Missing { .. })
    }
}

/// What kind of file `stat` describes, for messages.
pub fn kind_name(stat: &Stat) -> &'static str {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "an unknown kind of file",
    }
}

/// One VM home, opened without following a symlink at its own name.
pub struct VmDir {
    /// The VM home's path, for messages only. Immutable.
    path: PathBuf,
    /// An `O_RDONLY | O_DIRECTORY` descriptor of the VM home (so that it can
    /// also be listed, flocked and fsynced), resolving paths beneath it.
    /// Immutable.
    beneath: BackingRoot,
}

impl VmDir {
    /// Opens the VM home `path`. Its parent directory is the datastore an
    /// admin named, and trusted; `path`'s last component must be a directory
    /// itself, not a symlink to one.
    pub fn open(path: &Path) -> Result<Self, OwnedFileError> {
        let Some(name) = path.file_name() else {
            return Err(OwnedFileError::io(
                "opening VM home",
                path.into(),
                Errno::INVAL,
            ));
        };
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let parent = rustix::fs::open(
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| OwnedFileError::io("opening the datastore of", path.into(), errno))?;
        // O_DIRECTORY is checked before anything is opened, so a FIFO or
        // device at the name is ENOTDIR without blocking or touching a
        // driver; O_NOFOLLOW makes a symlink ELOOP.
        let opened = rustix::fs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        match opened {
            Ok(fd) => Ok(Self {
                path: path.to_path_buf(),
                beneath: BackingRoot::from_dir_fd(fd),
            }),
            Err(Errno::NOENT) => Err(OwnedFileError::Missing { path: path.into() }),
            Err(errno @ (Errno::LOOP | Errno::NOTDIR)) => {
                Err(wrong_kind(&parent, name, path.into(), "a directory")
                    .unwrap_or_else(|| OwnedFileError::io("opening VM home", path.into(), errno)))
            }
            Err(errno) => Err(OwnedFileError::io("opening VM home", path.into(), errno)),
        }
    }

    /// The VM home's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The VM home's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.beneath.root_fd()
    }

    /// Resolution of paths beneath the VM home, never through a symlink.
    pub fn beneath(&self) -> &BackingRoot {
        &self.beneath
    }

    /// `rel` (relative to the VM home) as a full path, for messages.
    pub fn display_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// The entry `name` itself (a symlink is not followed), if any.
    pub fn stat_entry(&self, name: &OsStr) -> Option<Stat> {
        rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    /// Whether `name` is a regular file (not a symlink to one).
    pub fn has_regular_file(&self, name: &OsStr) -> bool {
        self.stat_entry(name)
            .is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile)
    }

    /// The whole content of the regular file `name`, which can legitimately
    /// hold at most `max_len` bytes. Anything else at the name is refused
    /// without blocking or side effects (see [`open_regular_at`]); a larger
    /// file is refused before any of it is read.
    pub fn read_owned(&self, name: &OsStr, max_len: u64) -> Result<Vec<u8>, OwnedFileError> {
        let path = self.display_path(name);
        let (file, stat) = open_regular_at(self.fd(), name, OFlags::RDONLY, &path)?;
        let too_large = |len| OwnedFileError::TooLarge {
            path: path.clone(),
            len,
            max: max_len,
        };
        let len = u64::try_from(stat.st_size).unwrap_or(0);
        if len > max_len {
            return Err(too_large(len));
        }
        // The file may grow after the fstat: read at most one byte more
        // than allowed, and refuse if that byte came.
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(max_len + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| OwnedFileError::Io {
                what: "reading",
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > max_len {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(bytes)
    }

    /// Creates `name` (mode `mode`) for writing; see [`create_exclusive_at`].
    pub fn create_exclusive(&self, name: &OsStr, mode: u32) -> Result<File, OwnedFileError> {
        create_exclusive_at(self.fd(), name, mode, &self.display_path(name))
    }

    /// Removes the entry `name` (never what a symlink there points to).
    /// Returns whether it existed; a directory at the name is an error.
    pub fn remove(&self, name: &OsStr) -> Result<bool, OwnedFileError> {
        remove_at(self.fd(), name, &self.display_path(name))
    }

    /// Renames `from` to `to`, both in the VM home.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<(), OwnedFileError> {
        rustix::fs::renameat(self.fd(), from, self.fd(), to).map_err(|errno| {
            OwnedFileError::io("renaming into place", self.display_path(to), errno)
        })
    }

    /// Makes the VM home's entries durable.
    pub fn sync(&self) -> Result<(), OwnedFileError> {
        rustix::fs::fsync(self.fd())
            .map_err(|errno| OwnedFileError::io("fsyncing directory", self.path.clone(), errno))
    }
}

/// Opens `name` in `dir` with access mode `access`, only if it is a regular
/// file, and returns it with its status; `path` names it in errors.
///
/// The name is first opened `O_PATH | O_NOFOLLOW`, which opens nothing:
/// no driver `open` runs for a device, no FIFO open waits for a writer, a
/// symlink yields the link itself. Its `fstat` says what it is; only a
/// regular file is then opened for real, through `/proc/self/fd/N`, which
/// reopens the very inode the `O_PATH` descriptor holds rather than looking
/// the name up again, so a swap of the name in between cannot substitute
/// anything. (Opening with `O_NONBLOCK` and checking afterwards would not
/// block on a FIFO, but would still run a device's `open`.)
pub fn open_regular_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    access: OFlags,
    path: &Path,
) -> Result<(File, Stat), OwnedFileError> {
    let pinned = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        Errno::NOENT => OwnedFileError::Missing { path: path.into() },
        errno => OwnedFileError::io("opening", path.into(), errno),
    })?;
    let stat = rustix::fs::fstat(&pinned)
        .map_err(|errno| OwnedFileError::io("stat", path.into(), errno))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(OwnedFileError::WrongKind {
            path: path.into(),
            found: kind_name(&stat),
            expected: "a regular file",
        });
    }
    let file = reopen(&pinned, access).map_err(|errno| {
        OwnedFileError::io("opening (through /proc/self/fd)", path.into(), errno)
    })?;
    Ok((file, stat))
}

/// Opens the file an `O_PATH` descriptor holds, with only the access
/// mode of `access`.
fn reopen(pinned: &OwnedFd, access: OFlags) -> rustix::io::Result<File> {
    super::backing_root::reopen(
        pinned,
        access & (OFlags::RDONLY | OFlags::WRONLY | OFlags::RDWR),
    )
}

/// Creates `name` in `dir` read-write with mode `mode`, failing if anything
/// at all is at the name (`O_EXCL` also refuses a symlink, dangling or
/// not, and `O_NOFOLLOW` says so twice). `path` names it in errors.
pub fn create_exclusive_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    path: &Path,
) -> Result<File, OwnedFileError> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map(File::from)
    .map_err(|errno| match errno {
        Errno::EXIST => wrong_kind(
            dir,
            name,
            path.into(),
            "absent (a temp file is created there)",
        )
        .unwrap_or_else(|| OwnedFileError::io("creating", path.into(), errno)),
        errno => OwnedFileError::io("creating", path.into(), errno),
    })
}

/// Removes the entry `name` of `dir`; whether it existed. `path` names it
/// in errors.
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<bool, OwnedFileError> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(errno) => Err(OwnedFileError::io("removing", path.into(), errno)),
    }
}

/// Gives `file` the permission bits, owner and access and modification
/// times of `like`, by descriptor. The owner is set first: a chown can
/// clear set-user-ID and set-group-ID bits, which the chmod then restores.
pub fn copy_metadata(file: &File, like: &Stat, path: &Path) -> Result<(), OwnedFileError> {
    let err = |what| move |errno| OwnedFileError::io(what, path.into(), errno);
    rustix::fs::fchown(
        file,
        Some(rustix::fs::Uid::from_raw(like.st_uid)),
        Some(rustix::fs::Gid::from_raw(like.st_gid)),
    )
    .map_err(err("chown"))?;
    rustix::fs::fchmod(file, Mode::from_raw_mode(like.st_mode & 0o7777)).map_err(err("chmod"))?;
    let time = |sec, nsec| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: time(like.st_atime, like.st_atime_nsec),
        last_modification: time(like.st_mtime, like.st_mtime_nsec),
    };
    rustix::fs::futimens(file, &times).map_err(err("setting times of"))
}

/// Lists directory `dir` (a descriptor opened for reading): each entry's
/// name and whether it is a directory or a regular file, from its own
/// entry (a symlink is neither). `path` names it in errors.
pub fn list_dir(
    dir: BorrowedFd<'_>,
    path: &Path,
) -> Result<Vec<(std::ffi::OsString, EntryKind)>, OwnedFileError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |errno| OwnedFileError::io("listing", path.into(), errno);
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let file_type = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(Errno::NOENT) => continue,
                Err(errno) => return Err(err(errno)),
            },
            known => known,
        };
        let kind = match file_type {
            FileType::Directory => EntryKind::Directory,
            FileType::RegularFile => EntryKind::RegularFile,
            _ => EntryKind::Other,
        };
        out.push((name.to_owned(), kind));
    }
    Ok(out)
}

/// What a directory entry is, by its own entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file.
    RegularFile,
    /// Anything else (symlink, FIFO, device, socket).
    Other,
}

/// The error for an entry that is not `expected`, naming what it is, or
/// `None` if it cannot be examined.
fn wrong_kind(
    dir: impl AsFd,
    name: &OsStr,
    path: PathBuf,
    expected: &'static str,
) -> Option<OwnedFileError> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    Some(OwnedFileError::WrongKind {
        path,
        found: kind_name(&stat),
        expected,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::{Duration, Instant};

    /// A secret outside the datastore that nothing may read or change.
    pub(crate) const SECRET: &[u8] = b"vmcryptfs-master-key v1\n0123456789abcdef-secret";

    /// Every kind of thing an adversary can plant at a name.
    pub(crate) const PLANTS: [&str; 5] = [
        "symlink to a file",
        "symlink to a directory",
        "FIFO",
        "directory",
        "2 GiB sparse file",
    ];

    /// A base directory with `outside/secret` and `outside/dir/`.
    pub(crate) struct Outside {
        pub base: tempfile::TempDir,
    }

    impl Outside {
        pub(crate) fn new() -> Self {
            let base = tempfile::tempdir().unwrap();
            let outside = base.path().join("outside");
            fs::create_dir_all(outside.join("dir")).unwrap();
            fs::write(outside.join("secret"), SECRET).unwrap();
            fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
            let outside = Self { base };
            // Reading for a snapshot sets the access times once (relatime);
            // after that only someone else's access changes them.
            outside.snapshot();
            outside
        }

        pub(crate) fn secret(&self) -> PathBuf {
            self.base.path().join("outside/secret")
        }

        /// Plants `plant` (one of [`PLANTS`]) at `at`.
        pub(crate) fn plant(&self, plant: &str, at: &Path) {
            match plant {
                "symlink to a file" => std::os::unix::fs::symlink(self.secret(), at).unwrap(),
                "symlink to a directory" => {
                    std::os::unix::fs::symlink(self.base.path().join("outside/dir"), at).unwrap()
                }
                "FIFO" => {
                    rustix::fs::mknodat(rustix::fs::CWD, at, FileType::Fifo, Mode::RWXU, 0).unwrap()
                }
                "directory" => fs::create_dir(at).unwrap(),
                "2 GiB sparse file" => File::create(at).unwrap().set_len(2 << 30).unwrap(),
                other => panic!("unknown plant {other}"),
            }
        }

        /// Everything outside, with content, mode, owner and times.
        pub(crate) fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>, u32, u32, i64, i64)> {
            let mut out = Vec::new();
            for path in [
                self.base.path().join("outside"),
                self.secret(),
                self.base.path().join("outside/dir"),
            ] {
                let meta = fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_file() {
                    fs::read(&path).unwrap()
                } else {
                    fs::read_dir(&path)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().into_encoded_bytes())
                        .collect::<Vec<_>>()
                        .concat()
                };
                out.push((
                    path,
                    content,
                    meta.mode(),
                    meta.uid(),
                    meta.mtime_nsec(),
                    meta.atime_nsec(),
                ));
            }
            out
        }
    }

    #[test]
    fn read_owned_refuses_every_plant_at_once_naming_the_file() {
        let outside = Outside::new();
        let vm_path = outside.base.path().join("ds/vm");
        fs::create_dir_all(&vm_path).unwrap();
        fs::write(vm_path.join("good"), b"fine").unwrap();
        let before = outside.snapshot();
        let vm = VmDir::open(&vm_path).unwrap();
        assert_eq!(vm.read_owned(OsStr::new("good"), 4).unwrap(), b"fine");
        assert!(matches!(
            vm.read_owned(OsStr::new("good"), 3),
            Err(OwnedFileError::TooLarge { len: 4, max: 3, .. })
        ));
        assert!(vm
            .read_owned(OsStr::new("absent"), 4)
            .unwrap_err()
            .is_missing());
        for (i, plant) in PLANTS.iter().enumerate() {
            let name = format!("planted{i}");
            outside.plant(plant, &vm_path.join(&name));
            let started = Instant::now();
            let err = vm.read_owned(OsStr::new(&name), 1 << 20).expect_err(plant);
            assert!(started.elapsed() < Duration::from_secs(1), "{plant}: slow");
            let message = err.to_string();
            assert!(message.contains(&name), "{plant}: {message}");
            assert!(!message.contains("secret"), "{plant}: {message}");
            let expected = if *plant == "2 GiB sparse file" {
                matches!(err, OwnedFileError::TooLarge { .. })
            } else {
                matches!(err, OwnedFileError::WrongKind { .. })
            };
            assert!(expected, "{plant}: {err:?}");
            assert_eq!(
                vm.has_regular_file(OsStr::new(&name)),
                *plant == "2 GiB sparse file"
            );
        }
        // A device is refused without being opened: /dev/null's twin.
        let null = fs::metadata("/dev/null").unwrap().rdev();
        let device = vm_path.join("device");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &device,
            FileType::CharacterDevice,
            Mode::RUSR,
            null,
        )
        .unwrap();
        let err = vm.read_owned(OsStr::new("device"), 10).unwrap_err();
        assert!(err.to_string().contains("a character device"), "{err}");
        assert_eq!(outside.snapshot(), before, "nothing outside changed");
    }

    #[test]
    fn a_vm_home_is_opened_only_as_a_directory_itself() {
        let outside = Outside::new();
        let ds = outside.base.path().join("ds");
        fs::create_dir_all(&ds).unwrap();
        for (i, plant) in PLANTS.iter().enumerate() {
            let vm = ds.join(format!("vm{i}"));
            outside.plant(plant, &vm);
            let started = Instant::now();
            let result = VmDir::open(&vm);
            assert!(started.elapsed() < Duration::from_secs(1), "{plant}: slow");
            if *plant == "directory" {
                assert!(result.is_ok());
                // A trailing slash does not make it follow a symlink.
                continue;
            }
            let err = result.err().expect(plant);
            assert!(
                err.to_string().contains(&format!("vm{i}")),
                "{plant}: {err}"
            );
            let with_slash = PathBuf::from(format!("{}/", vm.display()));
            assert!(VmDir::open(&with_slash).is_err(), "{plant} with a slash");
        }
    }

    #[test]
    fn creation_removal_and_renames_never_follow_a_plant() {
        let outside = Outside::new();
        let vm_path = outside.base.path().join("ds/vm");
        fs::create_dir_all(&vm_path).unwrap();
        let before = outside.snapshot();
        let vm = VmDir::open(&vm_path).unwrap();
        for (i, plant) in PLANTS.iter().enumerate() {
            let name = format!("temp{i}");
            outside.plant(plant, &vm_path.join(&name));
            let err = vm
                .create_exclusive(OsStr::new(&name), 0o600)
                .expect_err(plant);
            assert!(err.to_string().contains(&name), "{plant}: {err}");
            if *plant != "directory" {
                assert!(vm.remove(OsStr::new(&name)).unwrap(), "{plant}");
                vm.create_exclusive(OsStr::new(&name), 0o600).unwrap();
            } else {
                assert!(vm.remove(OsStr::new(&name)).is_err(), "{plant}");
            }
        }
        // A symlinked target of a rename is replaced, not followed.
        std::os::unix::fs::symlink(outside.secret(), vm_path.join("journal")).unwrap();
        vm.rename(OsStr::new("temp0"), OsStr::new("journal"))
            .unwrap();
        assert!(vm.has_regular_file(OsStr::new("journal")));
        assert_eq!(outside.snapshot(), before, "nothing outside changed");
    }

    #[test]
    fn metadata_is_copied_by_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        fs::write(&model, b"x").unwrap();
        std::os::unix::fs::chown(&model, Some(1234), Some(5678)).unwrap();
        fs::set_permissions(&model, fs::Permissions::from_mode(0o4751)).unwrap();
        let like = rustix::fs::stat(&model).unwrap();
        let copy = File::create(dir.path().join("copy")).unwrap();
        copy_metadata(&copy, &like, &dir.path().join("copy")).unwrap();
        let got = rustix::fs::fstat(&copy).unwrap();
        assert_eq!(got.st_mode & 0o7777, 0o4751, "set-user-ID kept");
        assert_eq!((got.st_uid, got.st_gid), (1234, 5678));
        assert_eq!(
            (got.st_mtime, got.st_mtime_nsec),
            (like.st_mtime, like.st_mtime_nsec)
        );
    }
}
