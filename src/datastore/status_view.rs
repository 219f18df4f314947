//! What status reads of a mounted datastore found on disk, kept between
//! reads and checked with one `lstat` per VM home.
//!
//! The root `.control` shows every VM home. Finding them and what each
//! one's status needs from disk (is it still a VM home, is a conversion
//! unfinished, its bundle's fields for a VM not unlocked yet) is half a
//! dozen system calls per VM, and at ten thousand VMs that alone is a
//! tenth of a second per read. Every one of those facts lives in the VM
//! home directory itself, and any change to them (a bundle replaced, a
//! journal created or removed) changes that directory's modification
//! time; a VM home added, removed or renamed changes the root's. So a read
//! `lstat`s the root and each VM home, and looks again only where a stamp
//! changed.
//!
//! A stamp taken within [`RACY`] of a change to the directory is not
//! trusted (the race git calls "racily clean"): a second change in the same
//! timestamp tick would leave the stamp as it was, so such a directory is
//! looked at again on the next read, until its last change is older.
//!
//! Nothing here is authenticated, nor needs to be: these are the facts
//! status shows for a VM not unlocked yet, and they are read exactly as an
//! uncached read would read them (bounded, through descriptors).

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType};

use super::vm_home::VmHome;

/// How long after a directory's last change its stamp is not trusted.
/// Local file systems stamp changes with the kernel's coarse clock, one
/// tick (1 to 10 ms) behind the clock `SystemTime` reads: ten ticks of
/// margin. (At ten thousand VM homes, a re-key of them all makes every one
/// of them looked at again by each read within this window, about 0.1 s a
/// read, so it is not made longer than it needs to be.)
const RACY: Duration = Duration::from_millis(100);

/// A directory's identity and last change, as `lstat` shows them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DirStamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl DirStamp {
    /// The stamp of `path` if it is a directory itself (not a symlink to
    /// one).
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.is_dir().then(|| Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// The stamp of the entry `name` of the open directory `dir`, if it is
    /// a directory itself: one `fstatat`, without walking the path from
    /// `/` again for each of ten thousand VM homes.
    pub fn of_entry(dir: BorrowedFd<'_>, name: &OsStr) -> Option<Self> {
        let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (FileType::from_raw_mode(stat.st_mode) == FileType::Directory).then_some(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            mtime: (stat.st_mtime, stat.st_mtime_nsec as i64),
            ctime: (stat.st_ctime, stat.st_ctime_nsec as i64),
        })
    }

    /// Whether a view taken at `taken` (before this stamp was read) can
    /// trust this stamp: the last change is older than [`RACY`] then.
    fn settled_at(&self, taken: SystemTime) -> bool {
        let newest = self.mtime.max(self.ctime);
        let changed = u64::try_from(newest.0)
            .ok()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::new(secs, newest.1 as u32)));
        changed.is_some_and(|changed| changed + RACY < taken)
    }
}

/// One subdirectory of the root as the last read found it.
pub struct SeenVm {
    /// The VM home; `None` for a directory that is not one.
    pub vm: Option<Arc<VmHome>>,
    /// Its unfinished conversion, as status shows it.
    pub conversion: Option<String>,
    /// Its directory's stamp when `conversion` was read.
    stamp: DirStamp,
    /// When the stamp was read.
    taken: SystemTime,
}

impl SeenVm {
    /// A VM home just looked at (stamp read before its contents).
    pub fn new(
        vm: Option<Arc<VmHome>>,
        conversion: Option<String>,
        stamp: DirStamp,
        taken: SystemTime,
    ) -> Self {
        Self {
            vm,
            conversion,
            stamp,
            taken,
        }
    }

    /// Whether what was seen still holds: the directory's stamp is the
    /// same, and was settled when it was read.
    pub fn still_holds(&self, now: Option<DirStamp>) -> bool {
        now == Some(self.stamp) && self.stamp.settled_at(self.taken)
    }
}

/// The datastore as the last status read found it. Behind the
/// datastore's own mutex (see `Datastore::status_view`).
#[derive(Default)]
pub struct StatusView {
    /// The root's stamp when its entries were listed, and when.
    pub root: Option<(DirStamp, SystemTime)>,
    /// Names of the root's subdirectories then, sorted.
    pub names: Vec<OsString>,
    /// Each of them as last seen, by name.
    pub vms: std::collections::HashMap<OsString, SeenVm>,
}

impl StatusView {
    /// Whether the listing of the root still holds.
    pub fn listing_holds(&self, now: Option<DirStamp>) -> bool {
        matches!(self.root, Some((stamp, taken)) if now == Some(stamp) && stamp.settled_at(taken))
    }
}
