//! Opening backing files strictly beneath the datastore root.
//!
//! The mount resolves paths it was given by the kernel, which has already
//! resolved every symlink itself; a symlink met on the way now was put into
//! the datastore behind the mount's back (a directory or file swapped for a
//! link), and following it could make the mount read or write a host file
//! outside the datastore. So files are opened with `openat2(2)` relative to
//! a descriptor of the datastore root, with `RESOLVE_BENEATH` and
//! `RESOLVE_NO_SYMLINKS`: any symlink or `..` escape on the way is `ELOOP`
//! or `EXDEV` instead. On kernels without `openat2` (before 5.6) the open
//! falls back to `open(2)` with `O_NOFOLLOW`, which guards the last
//! component only.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

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

/// The datastore root, for opens beneath it.
pub struct BackingRoot {
    /// The root directory's path (for the fallback and for messages).
    path: PathBuf,
    /// An `O_PATH` descriptor of the root. Immutable.
    fd: OwnedFd,
    /// Set once `openat2` turned out to be missing (ENOSYS).
    no_openat2: AtomicBool,
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
            path: root.to_path_buf(),
            fd,
            no_openat2: AtomicBool::new(false),
        })
    }

    /// Opens `rel` (relative to the root, no leading `/`) with raw open(2)
    /// `flags`: the access mode, O_CREAT and O_EXCL, and the flags listed
    /// in [`PASSED_FLAGS`]; others are dropped. `mode` applies with
    /// O_CREAT.
    pub fn open_file(&self, rel: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
        let creating = flags & libc::O_CREAT != 0;
        let flags = (flags & (libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | PASSED_FLAGS))
            | libc::O_CLOEXEC
            | libc::O_NOFOLLOW;
        let mode = if creating { mode & 0o7777 } else { 0 };
        if !self.no_openat2.load(Ordering::Relaxed) {
            let result = rustix::fs::openat2(
                &self.fd,
                rel,
                OFlags::from_bits_retain(flags as u32),
                Mode::from_raw_mode(mode),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            );
            match result {
                Err(rustix::io::Errno::NOSYS) => {
                    log::warn!("openat2 is not available (Linux < 5.6): backing files are opened with O_NOFOLLOW only");
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                Err(err) => return Err(err.into()),
                Ok(fd) => return Ok(File::from(fd)),
            }
        }
        use std::os::unix::fs::OpenOptionsExt;
        let fallback_flags = flags & !libc::O_ACCMODE & !libc::O_CREAT & !libc::O_EXCL;
        let mut options = std::fs::OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => options.write(true),
            libc::O_RDWR => options.read(true).write(true),
            _ => options.read(true),
        };
        options
            .custom_flags(fallback_flags | (flags & (libc::O_CREAT | libc::O_EXCL)))
            .mode(mode);
        options.open(self.path.join(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_beneath_and_refuses_every_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("vm")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("host.txt"), b"host").unwrap();
        std::fs::write(root.join("vm/f"), b"inside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("vm/dirlink")).unwrap();
        std::os::unix::fs::symlink(outside.join("host.txt"), root.join("vm/filelink")).unwrap();
        let beneath = BackingRoot::open(&root).unwrap();

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
            assert!(
                [libc::ELOOP, libc::EXDEV].contains(&err.raw_os_error().unwrap_or(0)),
                "{escape}: {err}"
            );
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
    }
}
