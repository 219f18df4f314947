//! Whether the kernel serves an open file through its page cache or sends
//! every read and write to us ("direct I/O").
//!
//! The choice is per open, and it is a trade-off the kernel forces:
//!
//! * Through the page cache, the kernel reads ahead and keeps what it read,
//!   so a re-read or a sequential reader never reaches us. But in FUSE's
//!   write-through mode the kernel holds the inode lock for the whole of
//!   every write, so writers to one file are serialized, and each write is
//!   copied into the FUSE file's page cache before it reaches us.
//! * Direct, nothing is cached and writes carry the caller's buffer. With
//!   `FOPEN_PARALLEL_DIRECT_WRITES` the kernel takes the inode lock shared
//!   for writes inside the file, so writers to different blocks run in
//!   parallel (our block-range locks keep them apart; see
//!   `content::encrypted_file`).
//!
//! The policy: a **writable open of an encrypted file** is direct. That
//! is how a hypervisor runs a VM: the guest has its own page cache, and
//! VMware's own datastores do not cache VM disk I/O on the host either.
//! Caching plaintext once more on the host only costs memory, and losing
//! it makes parallel guest writes scale. The same holds for the other
//! files of a VM home that are written in bulk (memory images, snapshot
//! state, a guest's build output): through the page cache every write
//! still reaches us (write-through), one at a time, after a copy into the
//! FUSE file's cache; direct, the copy goes and writers run in parallel.
//! Two writers of an ordinary 1 GiB file measured 3x the random 4 KiB
//! write IOPS and 1.5x the 1 MiB sequential write rate
//! (docs/PERFORMANCE.md, "Direct I/O for every writable encrypted open").
//! What a writable open gives up is the kernel's cache of its own reads,
//! which small VM files (.vmx, .nvram, logs) do not need. Read-only opens
//! keep the page cache: backups, `qemu-img convert` sources and copies
//! keep readahead. Pass-through files are the kernel's (passthrough) or
//! cached as before.
//!
//! Both modes see the same bytes: the kernel writes back and invalidates
//! its cached pages of a range around a direct write of that range when
//! the mount negotiated `FUSE_DIRECT_IO_ALLOW_MMAP` (Linux 6.6+), which
//! is also what lets a direct file be mmapped. Without that capability
//! every open uses the page cache. Copies the daemon itself puts in the
//! cache never overlap a writer (`cache_fill`).
//!
//! `.control` files are always direct: their content is computed on read.
//! An open with O_DIRECT needs no flag from us: the kernel already bypasses
//! its cache for it.

/// How the kernel caches one open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Through the kernel's page cache (with readahead).
    PageCache,
    /// Every read and write comes to us; nothing is cached.
    Direct,
    /// Direct, and writes inside the file may run in parallel.
    DirectParallelWrites,
}

/// What is being opened, as far as the cache policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedFile {
    /// A virtual file (`.control`, `.stats`, …).
    Virtual,
    /// An encrypted regular file of a VM home (a disk in a VM whose policy
    /// encrypts disks, or any other file the VM stores encrypted).
    Encrypted,
    /// A file stored as is (a pass-through disk, a file outside VM homes).
    Plain,
}

/// The cache mode for opening `file` with open(2) `flags`.
/// `direct_io_mmap` says whether the kernel keeps direct and cached I/O
/// coherent and allows mmap of direct files (`FUSE_DIRECT_IO_ALLOW_MMAP`).
pub fn cache_mode(file: OpenedFile, flags: i32, direct_io_mmap: bool) -> CacheMode {
    let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
    match file {
        OpenedFile::Virtual => CacheMode::Direct,
        OpenedFile::Encrypted if writable && direct_io_mmap => CacheMode::DirectParallelWrites,
        OpenedFile::Encrypted | OpenedFile::Plain => CacheMode::PageCache,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writable_encrypted_opens_go_direct_and_only_with_coherent_mmap() {
        use CacheMode::*;
        use OpenedFile::*;
        for (file, flags, mmap, expected) in [
            (Encrypted, libc::O_RDWR, true, DirectParallelWrites),
            (Encrypted, libc::O_WRONLY, true, DirectParallelWrites),
            (
                Encrypted,
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                true,
                DirectParallelWrites,
            ),
            (Encrypted, libc::O_RDONLY, true, PageCache),
            (Encrypted, libc::O_RDWR, false, PageCache),
            (Plain, libc::O_RDWR, true, PageCache),
            (Plain, libc::O_RDONLY, true, PageCache),
            (Virtual, libc::O_RDONLY, false, Direct),
            (Virtual, libc::O_WRONLY, true, Direct),
        ] {
            assert_eq!(
                cache_mode(file, flags, mmap),
                expected,
                "{file:?} {flags:#o} {mmap}"
            );
        }
    }
}
