//! Backing `stat` → FUSE attributes.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::content::EncryptedFile;
use crate::control::virtual_file::VirtualFile;

/// How long the kernel may cache attributes and entries. Short, because a
/// shared datastore can change underneath (another host, the CLI).
pub const ATTR_TTL: Duration = Duration::from_secs(1);

/// The FUSE file type of a backing file.
pub fn file_type(meta: &Metadata) -> FileType {
    kind_of(meta.file_type())
}

/// The FUSE file type for a std file type (from a stat or a directory entry).
pub fn kind_of(ft: std::fs::FileType) -> FileType {
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// Attributes of a backing file as node `ino`. For encrypted regular files
/// the size is the plaintext size.
pub fn from_metadata(ino: u64, meta: &Metadata, encrypted: bool) -> FileAttr {
    let kind = file_type(meta);
    let size = if encrypted && kind == FileType::RegularFile {
        EncryptedFile::plain_size_for_stat(meta.len())
    } else {
        meta.len()
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Attributes of a virtual file (`.control`, `.control.json`, `.stats`).
/// Size 0: it is opened with
/// direct I/O, so readers read until EOF regardless.
pub fn virtual_attr(ino: u64, dir: &Metadata, file: VirtualFile) -> FileAttr {
    let mut attr = from_metadata(ino, dir, false);
    attr.kind = FileType::RegularFile;
    attr.size = 0;
    attr.blocks = 0;
    attr.nlink = 1;
    attr.perm = file.mode();
    attr
}
