//! Metadata operations on backing entries, beneath the datastore root.
//!
//! The same danger as for opens (see [`super::backing_root`]): a directory
//! swapped for a symlink behind the mount must not make `stat`, `chmod`,
//! `unlink`, `rename` and the rest act on a host path. So each operation
//! opens the entry's *parent* directory beneath the root without following
//! any symlink ([`BackingRoot::parent_of`]) and acts on the final name with
//! one `*at` call that does not follow it either: `AT_SYMLINK_NOFOLLOW`
//! where the call has the choice, and calls that never follow a final
//! symlink (`unlinkat`, `renameat2`, `linkat` without `AT_SYMLINK_FOLLOW`,
//! `readlinkat`, `mkdirat`, `symlinkat`, `mknodat`) otherwise. A symlink on
//! the way is then ELOOP (or EXDEV for `..`); everything else gives the
//! errno the path-based call gave.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, RenameFlags, Stat, Timestamps, Uid};
use rustix::io::Errno;

use super::backing_root::{BackingRoot, DirFd};

/// The type of a backing entry from its `stat`.
pub fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// One entry of a backing directory (not `.` or `..`).
#[derive(Debug)]
pub struct ListedEntry {
    /// The entry's name.
    pub name: OsString,
    /// Its inode number in the backing file system.
    pub ino: u64,
    /// Its type.
    pub kind: FileType,
}

/// The entries of a backing directory, and the device they are on.
#[derive(Debug)]
pub struct DirListing {
    /// The directory's device (its entries' too: the datastore is one file
    /// system, and a mount point below it shows the mounted root's inode
    /// only through a stat).
    pub dev: u64,
    /// The entries, in directory order.
    pub entries: Vec<ListedEntry>,
}

impl BackingRoot {
    /// `lstat` of entry `rel` (of the root itself when `rel` is empty).
    pub fn stat(&self, rel: &Path) -> std::io::Result<Stat> {
        let (dir, name) = self.parent_of(rel)?;
        Self::stat_in(&dir, name)
    }

    /// `lstat` of entry `name` of a directory opened beneath the root
    /// ([`BackingRoot::open_dir_path`]): one system call, and the name is
    /// not followed if it is a symlink.
    pub fn stat_in(dir: &DirFd<'_>, name: &OsStr) -> std::io::Result<Stat> {
        Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// `statvfs` of the file system holding the datastore.
    pub fn statvfs(&self) -> std::io::Result<rustix::fs::StatVfs> {
        Ok(rustix::fs::fstatvfs(self.root_fd())?)
    }

    /// Creates directory `rel` with permission bits `mode`.
    pub fn create_dir(&self, rel: &Path, mode: u32) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(rel)?;
        Ok(rustix::fs::mkdirat(
            &dir,
            name,
            Mode::from_raw_mode(mode & 0o7777),
        )?)
    }

    /// Creates symlink `rel` pointing at `target` (stored as given).
    pub fn symlink(&self, target: &Path, rel: &Path) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(rel)?;
        Ok(rustix::fs::symlinkat(target, &dir, name)?)
    }

    /// Creates a special or empty regular file `rel`; `mode` holds the type
    /// (`S_IFMT` bits; none means a regular file) and the permission bits.
    pub fn mknod(&self, rel: &Path, mode: u32, rdev: u64) -> std::io::Result<()> {
        let kind = match mode & libc::S_IFMT {
            0 => FileType::RegularFile,
            bits => FileType::from_raw_mode(bits),
        };
        if kind == FileType::Unknown {
            return Err(Errno::INVAL.into());
        }
        let (dir, name) = self.parent_of(rel)?;
        Ok(rustix::fs::mknodat(
            &dir,
            name,
            kind,
            Mode::from_raw_mode(mode & 0o7777),
            rdev,
        )?)
    }

    /// The target of symlink `rel`.
    pub fn read_link(&self, rel: &Path) -> std::io::Result<OsString> {
        let (dir, name) = self.parent_of(rel)?;
        let target = rustix::fs::readlinkat(&dir, name, Vec::new())?;
        Ok(OsString::from_vec(target.into_bytes()))
    }

    /// Removes non-directory `rel` (a symlink itself, not its target).
    pub fn remove_file(&self, rel: &Path) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(rel)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
    }

    /// Removes non-directory `rel` as [`Self::remove_file`] does, holding
    /// the removed file open (`O_PATH`, which opens nothing for real, and
    /// never follows a symlink) so that its last close, not the unlink,
    /// frees it (see `super::deferred_release`). `None` when it could not
    /// be held (then the unlink freed it, as `remove_file`).
    pub fn unlink_holding(&self, rel: &Path) -> std::io::Result<Option<OwnedFd>> {
        let (dir, name) = self.parent_of(rel)?;
        let held = hold_entry(&dir, name);
        rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
        Ok(held)
    }

    /// Removes empty directory `rel`.
    pub fn remove_dir(&self, rel: &Path) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(rel)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
    }

    /// Renames `from` to `to` (`renameat2`, so RENAME_NOREPLACE and
    /// RENAME_EXCHANGE work as on the backing file system). A plain rename
    /// over an existing `to` holds the entry it replaces, as
    /// [`Self::unlink_holding`] holds a removed one, so that its last
    /// close, not the rename, frees it. The descriptor is returned: `None`
    /// when nothing was replaced (RENAME_NOREPLACE and RENAME_EXCHANGE
    /// replace nothing), or when it could not be held.
    pub fn rename_holding(
        &self,
        from: &Path,
        to: &Path,
        flags: RenameFlags,
    ) -> std::io::Result<Option<OwnedFd>> {
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        let held = flags
            .is_empty()
            .then(|| hold_entry(&to_dir, to_name))
            .flatten();
        rustix::fs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags)?;
        Ok(held)
    }

    /// Makes `to` a hard link to `from` (to a symlink itself if `from` is
    /// one: linkat without AT_SYMLINK_FOLLOW).
    pub fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let (from_dir, from_name) = self.parent_of(from)?;
        let (to_dir, to_name) = self.parent_of(to)?;
        Ok(rustix::fs::linkat(
            &from_dir,
            from_name,
            &to_dir,
            to_name,
            AtFlags::empty(),
        )?)
    }

    /// Sets the permission bits of `rel`. A symlink's are refused with
    /// EOPNOTSUPP, as Linux does itself since 6.6 (`fchmodat2` and
    /// `lchmod`); before that, the kernel could pass a chmod of a symlink
    /// (through `/proc/self/fd`) on to us.
    ///
    /// Linux has no chmod that refuses to follow a final symlink before
    /// `fchmodat2` (6.6), and checking the type with a stat first would
    /// leave a moment in which the name could be swapped for a link. So the
    /// entry is opened `O_PATH | O_NOFOLLOW` (which pins the inode itself,
    /// a symlink included), checked with `fstat`, and changed through its
    /// `/proc/self/fd` link, which leads to exactly that inode; this is
    /// what the C library does for `fchmodat(AT_SYMLINK_NOFOLLOW)`. It needs
    /// /proc mounted, as the mount already does for locks and passthrough.
    pub fn chmod(&self, rel: &Path, mode: u32) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(rel)?;
        let entry = rustix::fs::openat(
            &dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if file_type(&rustix::fs::fstat(&entry)?) == FileType::Symlink {
            return Err(Errno::OPNOTSUPP.into());
        }
        chmod_pinned(&entry, mode)
    }

    /// Changes the owner and/or group of `rel` (of a symlink itself).
    pub fn chown(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(rel)?;
        // -1 means "unchanged" to chown(2) as well.
        let uid = uid.filter(|&id| id != u32::MAX).map(Uid::from_raw);
        let gid = gid.filter(|&id| id != u32::MAX).map(Gid::from_raw);
        Ok(rustix::fs::chownat(
            &dir,
            name,
            uid,
            gid,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the access and modification times of `rel` (of a symlink
    /// itself); `UTIME_NOW` and `UTIME_OMIT` work as in `utimensat`.
    pub fn set_times(&self, rel: &Path, times: &Timestamps) -> std::io::Result<()> {
        let (dir, name) = self.parent_of(rel)?;
        Ok(rustix::fs::utimensat(
            &dir,
            name,
            times,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// The entries of directory `rel` (which must not be a symlink itself).
    // `st_dev`'s type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    pub fn list_dir(&self, rel: &Path) -> std::io::Result<DirListing> {
        let fd = self.open_dir(rel)?;
        let dev = rustix::fs::fstat(&fd)?.st_dev;
        let mut dir = Dir::new(fd)?;
        let mut entries = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut kind = entry.file_type();
            if kind == FileType::Unknown {
                // File systems without d_type: ask the entry itself, and
                // leave it out if it went away meanwhile.
                match rustix::fs::statat(dir.fd()?, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => kind = file_type(&stat),
                    Err(_) => continue,
                }
            }
            entries.push(ListedEntry {
                name: std::ffi::OsStr::from_bytes(name).to_os_string(),
                ino: entry.ino(),
                kind,
            });
        }
        Ok(DirListing {
            dev: dev as u64,
            entries,
        })
    }

    /// fsync of directory `rel`.
    pub fn sync_dir(&self, rel: &Path) -> std::io::Result<()> {
        let fd = self.open_dir(rel)?;
        Ok(rustix::fs::fsync(fd.as_fd())?)
    }
}

/// chmod of the inode `entry` (an `O_PATH` descriptor, not a symlink)
/// through its `/proc/self/fd` link.
fn chmod_pinned(entry: &OwnedFd, mode: u32) -> std::io::Result<()> {
    let link = format!("/proc/self/fd/{}", entry.as_raw_fd());
    Ok(rustix::fs::chmod(
        link.as_str(),
        Mode::from_raw_mode(mode & 0o7777),
    )?)
}

/// An `O_PATH | O_NOFOLLOW` descriptor of entry `name` of `dir` (which
/// opens nothing for real and never follows a symlink), about to be
/// unlinked or renamed over, or `None` (no such entry, or no descriptor
/// left). Whatever this pins, the caller's call removes the name; if the
/// name was swapped in between, the file held is another one, still
/// linked elsewhere or freed at its close all the same.
fn hold_entry(dir: &impl AsFd, name: &OsStr) -> Option<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use rustix::fs::Timespec;

    use super::*;

    /// A datastore root with `vm/` holding a file, a directory, a symlink to
    /// the file and a symlink to a directory outside; the outside directory
    /// holds the same names.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        for base in [&root.join("vm"), &outside] {
            fs::create_dir_all(base.join("d")).unwrap();
            fs::write(base.join("f"), b"content").unwrap();
            fs::set_permissions(base.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
            std::os::unix::fs::symlink("f", base.join("l")).unwrap();
        }
        std::os::unix::fs::symlink(&outside, root.join("vm/link")).unwrap();
        Fixture {
            _dir: dir,
            root,
            outside,
        }
    }

    /// The root, resolving with `openat2` or, for `fallback`, walking paths
    /// as on a kernel without it.
    fn open_root(root: &Path, fallback: bool) -> BackingRoot {
        let beneath = BackingRoot::open(root).unwrap();
        if fallback {
            beneath.without_openat2()
        } else {
            beneath
        }
    }

    /// Everything about the outside directory that an escaped operation
    /// could change: names, types, modes, owners, times, contents, targets.
    fn snapshot(dir: &Path) -> Vec<String> {
        let mut entries: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_file() {
                    format!("{:?}", fs::read(&path).unwrap())
                } else if meta.is_symlink() {
                    format!("{:?}", fs::read_link(&path).unwrap())
                } else {
                    format!("{:?}", snapshot(&path))
                };
                format!(
                    "{} {:o} {}:{} {}.{} {}",
                    path.display(),
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    content
                )
            })
            .collect();
        entries.sort();
        entries
    }

    fn errno<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
        result.expect_err("refused").raw_os_error().unwrap_or(0)
    }

    /// An unlink and a rename over a file hold the very inode they take
    /// the name from (its last link gone, so the holder's close frees it);
    /// renames that replace nothing hold nothing, and a symlink replaced is
    /// held as the link, never its target.
    #[test]
    fn unlinks_and_renames_over_a_file_hold_the_inode_they_unlink() {
        let fx = fixture();
        let beneath = open_root(&fx.root, false);
        let p = Path::new;
        let vm = fx.root.join("vm");
        let ino = |name: &str| fs::symlink_metadata(vm.join(name)).unwrap().ino();
        let held_stat = |held: Option<OwnedFd>| rustix::fs::fstat(held.expect("held")).unwrap();

        fs::write(vm.join("victim"), b"old").unwrap();
        let victim = ino("victim");
        let stat = held_stat(beneath.unlink_holding(p("vm/victim")).unwrap());
        assert_eq!((stat.st_ino, stat.st_nlink), (victim, 0));
        assert!(!vm.join("victim").exists());

        fs::write(vm.join("replaced"), b"old").unwrap();
        fs::write(vm.join("new"), b"new").unwrap();
        let replaced = ino("replaced");
        let held = beneath
            .rename_holding(p("vm/new"), p("vm/replaced"), RenameFlags::empty())
            .unwrap();
        let stat = held_stat(held);
        assert_eq!((stat.st_ino, stat.st_nlink), (replaced, 0));
        assert_eq!(fs::read(vm.join("replaced")).unwrap(), b"new");

        // Nothing replaced: nothing held.
        let held = beneath
            .rename_holding(p("vm/replaced"), p("vm/moved"), RenameFlags::empty())
            .unwrap();
        assert!(held.is_none());
        fs::write(vm.join("other"), b"other").unwrap();
        let held = beneath
            .rename_holding(p("vm/moved"), p("vm/other"), RenameFlags::EXCHANGE)
            .unwrap();
        assert!(held.is_none(), "an exchange unlinks nothing");
        assert_eq!(
            errno(beneath.rename_holding(p("vm/moved"), p("vm/other"), RenameFlags::NOREPLACE)),
            libc::EEXIST
        );

        // A symlink renamed over is held as the link itself.
        std::os::unix::fs::symlink("other", vm.join("sl")).unwrap();
        let link = ino("sl");
        let stat = held_stat(
            beneath
                .rename_holding(p("vm/moved"), p("vm/sl"), RenameFlags::empty())
                .unwrap(),
        );
        assert_eq!((stat.st_ino, stat.st_nlink), (link, 0));
        assert_eq!(file_type(&stat), FileType::Symlink);
        assert_eq!(
            fs::read(vm.join("other")).unwrap(),
            b"new",
            "the link's target untouched"
        );

        // A failed rename leaves the entry it would have replaced linked.
        assert!(beneath
            .rename_holding(p("vm/missing"), p("vm/other"), RenameFlags::empty())
            .is_err());
        assert_eq!(fs::read(vm.join("other")).unwrap(), b"new");
    }

    #[test]
    fn every_operation_refuses_a_symlink_or_dotdot_on_the_way() {
        let fx = fixture();
        let before = snapshot(&fx.outside);
        let p = Path::new;
        let epoch = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: epoch,
            last_modification: epoch,
        };
        for fallback in [false, true] {
            let beneath = &open_root(&fx.root, fallback);
            for via in ["vm/link", "../outside", "vm/../../outside"] {
                let at = |name: &str| PathBuf::from(format!("{via}/{name}"));
                let results = [
                    ("stat", errno(beneath.stat(&at("f")))),
                    ("create_dir", errno(beneath.create_dir(&at("new"), 0o755))),
                    ("symlink", errno(beneath.symlink(p("f"), &at("new")))),
                    ("mknod", errno(beneath.mknod(&at("new"), 0o600, 0))),
                    ("read_link", errno(beneath.read_link(&at("l")))),
                    ("remove_file", errno(beneath.remove_file(&at("f")))),
                    ("remove_dir", errno(beneath.remove_dir(&at("d")))),
                    (
                        "rename from",
                        errno(beneath.rename_holding(
                            &at("f"),
                            p("vm/moved"),
                            RenameFlags::empty(),
                        )),
                    ),
                    (
                        "rename to",
                        errno(beneath.rename_holding(p("vm/f"), &at("f"), RenameFlags::empty())),
                    ),
                    (
                        "exchange",
                        errno(beneath.rename_holding(p("vm/f"), &at("f"), RenameFlags::EXCHANGE)),
                    ),
                    (
                        "hard_link from",
                        errno(beneath.hard_link(&at("f"), p("vm/linked"))),
                    ),
                    (
                        "hard_link to",
                        errno(beneath.hard_link(p("vm/f"), &at("new"))),
                    ),
                    ("chmod", errno(beneath.chmod(&at("f"), 0o777))),
                    ("chmod dir", errno(beneath.chmod(&at("d"), 0o777))),
                    ("chown", errno(beneath.chown(&at("f"), Some(0), Some(0)))),
                    ("set_times", errno(beneath.set_times(&at("f"), &times))),
                    ("list_dir", errno(beneath.list_dir(&at("d")))),
                    ("list_dir link", errno(beneath.list_dir(p(via)))),
                    ("sync_dir", errno(beneath.sync_dir(&at("d")))),
                ];
                for (what, errno) in results {
                    // ENOTDIR: the fallback opens each directory with
                    // O_NOFOLLOW | O_DIRECTORY, which meets the link.
                    let expected: &[i32] = if fallback {
                        &[libc::ELOOP, libc::EXDEV, libc::ENOTDIR]
                    } else {
                        &[libc::ELOOP, libc::EXDEV]
                    };
                    assert!(
                        expected.contains(&errno),
                        "{what} via {via} (fallback: {fallback}): errno {errno}"
                    );
                }
            }
            assert!(!fx.root.join("vm/moved").exists());
            assert!(!fx.root.join("vm/linked").exists());
            assert_eq!(fs::read(fx.root.join("vm/f")).unwrap(), b"content");
        }
        assert_eq!(snapshot(&fx.outside), before, "nothing outside changed");
    }

    #[test]
    fn every_operation_works_beneath_with_the_usual_errors() {
        let p = Path::new;
        for fallback in [false, true] {
            let fx = fixture();
            let beneath = open_root(&fx.root, fallback);
            let vm = fx.root.join("vm");

            let stat = beneath.stat(p("vm/f")).unwrap();
            assert_eq!(file_type(&stat), FileType::RegularFile);
            assert_eq!(stat.st_size, 7);
            assert_eq!(
                file_type(&beneath.stat(p("vm/l")).unwrap()),
                FileType::Symlink
            );
            assert_eq!(
                file_type(&beneath.stat(p("")).unwrap()),
                FileType::Directory
            );
            assert_eq!(
                file_type(&beneath.stat(p("vm")).unwrap()),
                FileType::Directory
            );
            assert_eq!(errno(beneath.stat(p("vm/missing"))), libc::ENOENT);
            assert_eq!(errno(beneath.stat(p("vm/f/below"))), libc::ENOTDIR);
            assert_eq!(errno(beneath.stat(p("vm/missing/below"))), libc::ENOENT);
            assert!(beneath.statvfs().unwrap().f_bsize > 0);

            beneath.create_dir(p("vm/new"), 0o750).unwrap();
            assert_eq!(
                fs::metadata(vm.join("new")).unwrap().mode() & 0o777,
                0o750 & !umask()
            );
            assert_eq!(errno(beneath.create_dir(p("vm/new"), 0o750)), libc::EEXIST);
            beneath.symlink(p("../elsewhere"), p("vm/new/sl")).unwrap();
            assert_eq!(beneath.read_link(p("vm/new/sl")).unwrap(), "../elsewhere");
            assert_eq!(errno(beneath.read_link(p("vm/f"))), libc::EINVAL);
            beneath
                .mknod(p("vm/new/fifo"), libc::S_IFIFO | 0o600, 0)
                .unwrap();
            assert_eq!(
                file_type(&beneath.stat(p("vm/new/fifo")).unwrap()),
                FileType::Fifo
            );
            beneath.mknod(p("vm/new/plain"), 0o600, 0).unwrap();
            assert!(vm.join("new/plain").is_file());

            beneath.chmod(p("vm/f"), 0o604).unwrap();
            assert_eq!(fs::metadata(vm.join("f")).unwrap().mode() & 0o7777, 0o604);
            beneath.chmod(p(""), 0o711).unwrap();
            assert_eq!(fs::metadata(&fx.root).unwrap().mode() & 0o7777, 0o711);
            // A final symlink is never followed: its target keeps its mode.
            assert_eq!(errno(beneath.chmod(p("vm/l"), 0o777)), libc::EOPNOTSUPP);
            assert_eq!(fs::metadata(vm.join("f")).unwrap().mode() & 0o7777, 0o604);
            let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
            beneath
                .chown(p("vm/l"), Some(uid.as_raw()), Some(gid.as_raw()))
                .unwrap();
            beneath.chown(p("vm/f"), None, Some(gid.as_raw())).unwrap();
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 1000,
                    tv_nsec: 5,
                },
                last_modification: Timespec {
                    tv_sec: 2000,
                    tv_nsec: 7,
                },
            };
            beneath.set_times(p("vm/l"), &times).unwrap();
            let link_meta = fs::symlink_metadata(vm.join("l")).unwrap();
            assert_eq!((link_meta.mtime(), link_meta.mtime_nsec()), (2000, 7));
            assert_ne!(fs::metadata(vm.join("f")).unwrap().mtime(), 2000);
            let omit_atime = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: times.last_modification,
            };
            beneath.set_times(p("vm/f"), &omit_atime).unwrap();
            assert_eq!(fs::metadata(vm.join("f")).unwrap().mtime(), 2000);

            beneath.hard_link(p("vm/f"), p("vm/new/hard")).unwrap();
            assert_eq!(fs::metadata(vm.join("f")).unwrap().nlink(), 2);
            assert_eq!(errno(beneath.hard_link(p("vm/f"), p("vm/d"))), libc::EEXIST);
            beneath.hard_link(p("vm/l"), p("vm/new/hardlink")).unwrap();
            assert!(fs::symlink_metadata(vm.join("new/hardlink"))
                .unwrap()
                .is_symlink());

            beneath
                .rename_holding(p("vm/new/hard"), p("vm/renamed"), RenameFlags::empty())
                .unwrap();
            assert!(vm.join("renamed").is_file());
            assert_eq!(
                errno(beneath.rename_holding(p("vm/renamed"), p("vm/f"), RenameFlags::NOREPLACE)),
                libc::EEXIST
            );
            beneath
                .rename_holding(p("vm/l"), p("vm/d"), RenameFlags::EXCHANGE)
                .unwrap();
            assert!(fs::symlink_metadata(vm.join("d")).unwrap().is_symlink());
            assert!(vm.join("l").is_dir());
            assert_eq!(
                errno(beneath.rename_holding(p("vm/missing"), p("vm/x"), RenameFlags::empty())),
                libc::ENOENT
            );

            let mut names: Vec<_> = beneath
                .list_dir(p("vm"))
                .unwrap()
                .entries
                .into_iter()
                .map(|e| (e.name.into_string().unwrap(), e.kind))
                .collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(
                names,
                [
                    ("d".to_string(), FileType::Symlink),
                    ("f".to_string(), FileType::RegularFile),
                    ("l".to_string(), FileType::Directory),
                    ("link".to_string(), FileType::Symlink),
                    ("new".to_string(), FileType::Directory),
                    ("renamed".to_string(), FileType::RegularFile),
                ]
            );
            let listing = beneath.list_dir(p("")).unwrap();
            assert_eq!(listing.dev, fs::metadata(&fx.root).unwrap().dev());
            assert_eq!(listing.entries.len(), 1);
            assert_eq!(listing.entries[0].ino, fs::metadata(&vm).unwrap().ino());
            assert_eq!(errno(beneath.list_dir(p("vm/f"))), libc::ENOTDIR);
            beneath.sync_dir(p("vm")).unwrap();
            beneath.sync_dir(p("")).unwrap();

            assert_eq!(errno(beneath.remove_dir(p("vm/new"))), libc::ENOTEMPTY);
            assert_eq!(errno(beneath.remove_file(p("vm/new"))), libc::EISDIR);
            assert_eq!(errno(beneath.remove_dir(p("vm/f"))), libc::ENOTDIR);
            beneath.remove_file(p("vm/d")).unwrap(); // the symlink itself
            beneath.remove_file(p("vm/link")).unwrap();
            assert!(fx.outside.join("f").exists());
            beneath.remove_dir(p("vm/l")).unwrap();
            assert_eq!(errno(beneath.remove_file(p("vm/d"))), libc::ENOENT);
        }
    }

    /// The process's umask (read, not set: setting it would race with
    /// other tests creating files).
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }
}
