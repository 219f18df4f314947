//! Backing `stat` → FUSE attributes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use rustix::fs::Stat;

use crate::content::EncryptedFile;
use crate::control::virtual_file::{StatusAccess, VirtualFile};
use crate::datastore::backing_meta;
use crate::format::content_layout::ContentLayout;

/// How long the kernel may cache attributes and entries. Short, because a
/// shared datastore can change underneath (another host, the CLI).
pub const ATTR_TTL: Duration = Duration::from_secs(1);

/// The FUSE file type of a backing file.
pub fn file_type(stat: &Stat) -> FileType {
    kind_of(backing_meta::file_type(stat))
}

/// The FUSE file type for a backing file type (from a stat or a directory
/// entry).
pub fn kind_of(kind: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as Backing;
    match kind {
        Backing::Directory => FileType::Directory,
        Backing::Symlink => FileType::Symlink,
        Backing::BlockDevice => FileType::BlockDevice,
        Backing::CharacterDevice => FileType::CharDevice,
        Backing::Fifo => FileType::NamedPipe,
        Backing::Socket => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// Attributes of a backing file as node `ino`. For an encrypted regular
/// file (`encrypted` names its content format) the size is the plaintext
/// size.
// The field types of `struct stat` differ between architectures, hence
// casts that are no-ops on some.
#[allow(clippy::unnecessary_cast)]
pub fn from_stat(ino: u64, stat: &Stat, encrypted: Option<ContentLayout>) -> FileAttr {
    let kind = file_type(stat);
    let stored_size = stat.st_size as u64;
    let size = match encrypted {
        Some(layout) if kind == FileType::RegularFile => {
            EncryptedFile::plain_size_for_stat(layout, stored_size)
        }
        _ => stored_size,
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: stat.st_blocks as u64,
        atime: time(stat.st_atime as i64, stat.st_atime_nsec as i64),
        mtime: time(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
        ctime: time(stat.st_ctime as i64, stat.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind,
        perm: (stat.st_mode & 0o7777) as u16,
        nlink: stat.st_nlink as u32,
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Attributes of a virtual file (`.control`, `.control.json`, `.stats`):
/// times from the stat of the directory it appears in, owner and mode from
/// `access` (never the directory's owner, who may be the datastore's
/// adversary). Size 0: it is opened with direct I/O, so readers read until
/// EOF regardless.
pub fn virtual_attr(ino: u64, dir: &Stat, file: VirtualFile, access: StatusAccess) -> FileAttr {
    let mut attr = from_stat(ino, dir, None);
    attr.kind = FileType::RegularFile;
    attr.size = 0;
    attr.blocks = 0;
    attr.nlink = 1;
    attr.perm = access.mode(file);
    attr.uid = access.uid;
    attr.gid = access.gid;
    attr
}
