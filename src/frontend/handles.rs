//! Open file and directory handles.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fuser::FileType;

use super::cache_fill::CacheRole;
use crate::content::EncryptedFile;
use crate::control::virtual_file::VirtualFile;
use crate::datastore::vm_home::{OpenHandle, VmHome};

/// One directory entry of a directory handle's snapshot.
pub struct DirEntry {
    /// Node id or backing inode number (d_ino).
    pub ino: u64,
    /// Entry type.
    pub kind: FileType,
    /// Entry name.
    pub name: OsString,
}

/// What an open handle refers to.
pub enum Handle {
    /// A file stored as is.
    Plain {
        /// The backing file.
        file: File,
        /// The node.
        ino: u64,
        /// The node, once this handle holds its kernel passthrough backing
        /// id (set at most once, at open).
        passthrough: std::sync::OnceLock<u64>,
        /// Its count in its VM home's open handles, if it lies in one;
        /// immutable, given back when the handle is dropped.
        _counted: Option<OpenHandle>,
    },
    /// An encrypted file.
    Encrypted {
        /// The backing file (opened read-write when possible, because
        /// partial-block writes must read); shared with the fills its
        /// reads queue.
        file: Arc<File>,
        /// Shared per-inode content state.
        content: Arc<EncryptedFile>,
        /// The node, to release the content hold on close.
        ino: u64,
        /// The VM home, whose open-file count this handle holds.
        vm: Arc<VmHome>,
        /// Whether its reads fill the kernel's cache, or it writes (see
        /// `cache_fill`).
        role: CacheRole,
        /// Its count in the VM home's open handles; immutable, given back
        /// when the handle is dropped.
        _counted: OpenHandle,
    },
    /// A virtual file: `.control`, `.control.json` or `.stats`.
    Control {
        /// Which one (and so root or VM home).
        file: VirtualFile,
        /// The VM home, for a VM `.control`.
        vm: Option<Arc<VmHome>>,
        /// Status text taken at open; reads are served from it.
        snapshot: Mutex<Snapshot>,
        /// Written bytes not yet ending in a newline: a command split over
        /// several writes runs once its line is complete, or at close.
        pending: Mutex<Vec<u8>>,
    },
    /// A directory: its entries, read once at opendir.
    Dir {
        /// The entries, `.` and `..` first.
        entries: Vec<DirEntry>,
    },
}

impl Handle {
    /// Whether this is an open regular file of node `ino`.
    fn is_open_file_of(&self, ino: u64) -> bool {
        matches!(self, Handle::Plain { ino: i, .. } | Handle::Encrypted { ino: i, .. } if *i == ino)
    }

    /// The backing file of a plain or encrypted file's handle.
    pub fn backing_file(&self) -> Option<&File> {
        match self {
            Handle::Plain { file, .. } => Some(file),
            Handle::Encrypted { file, .. } => Some(file),
            Handle::Control { .. } | Handle::Dir { .. } => None,
        }
    }
}

/// Largest piece of a [`Snapshot`]: below glibc's initial mmap threshold
/// (128 KiB), so pieces come from the allocator's free lists and return
/// there.
const SNAPSHOT_PIECE: usize = 64 << 10;

/// The text a virtual file shows, as taken at open, in pieces of at most
/// [`SNAPSHOT_PIECE`] bytes. Why pieces: the root `.control.json` of ten
/// thousand VM homes is about 10 MB, and glibc serves one allocation that
/// large with its own mapping, then raises its mmap threshold to that size
/// when it is freed; the next ones then came from the heap of whichever
/// FUSE thread built them, and stayed there, one per thread: tens of MiB
/// of the mount's peak RSS. Pieces are reused by the next snapshot instead.
#[derive(Default)]
pub struct Snapshot {
    /// The text, in order; every piece but the last is full.
    pieces: Vec<Vec<u8>>,
    /// Total length.
    len: usize,
}

impl Snapshot {
    /// Copies up to `size` bytes from `offset` into `out` (cleared first);
    /// returns how many.
    pub fn read_at(&self, offset: u64, size: usize, out: &mut Vec<u8>) -> usize {
        out.clear();
        let mut at = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len);
        let end = at.saturating_add(size).min(self.len);
        while at < end {
            let piece = &self.pieces[at / SNAPSHOT_PIECE];
            let from = at % SNAPSHOT_PIECE;
            let take = (end - at).min(piece.len() - from);
            out.extend_from_slice(&piece[from..from + take]);
            at += take;
        }
        out.len()
    }
}

impl std::io::Write for Snapshot {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let written = data.len();
        while !data.is_empty() {
            if self.pieces.last().is_none_or(|p| p.len() == SNAPSHOT_PIECE) {
                self.pieces.push(Vec::with_capacity(SNAPSHOT_PIECE));
            }
            let piece = self.pieces.last_mut().expect("a piece with room");
            let take = data.len().min(SNAPSHOT_PIECE - piece.len());
            piece.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        self.len += written;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl From<&[u8]> for Snapshot {
    fn from(text: &[u8]) -> Self {
        let mut snapshot = Snapshot::default();
        std::io::Write::write_all(&mut snapshot, text).expect("writing to memory");
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads at every offset and size across piece boundaries give the
    /// text's own bytes.
    #[test]
    fn a_snapshot_reads_back_its_text_across_pieces() {
        let text: Vec<u8> = (0..3 * SNAPSHOT_PIECE + 123)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let snapshot = Snapshot::from(&text[..]);
        assert_eq!(snapshot.pieces.len(), 4);
        let mut out = Vec::new();
        for offset in [
            0,
            1,
            SNAPSHOT_PIECE - 1,
            SNAPSHOT_PIECE,
            2 * SNAPSHOT_PIECE + 5,
            text.len() - 1,
            text.len(),
            text.len() + 9,
        ] {
            for size in [0, 1, 4096, SNAPSHOT_PIECE + 3, 3 * SNAPSHOT_PIECE] {
                let n = snapshot.read_at(offset as u64, size, &mut out);
                let start = offset.min(text.len());
                let end = (start + size).min(text.len());
                assert_eq!(n, end - start, "offset {offset} size {size}");
                assert_eq!(out, &text[start..end], "offset {offset} size {size}");
            }
        }
    }
}

/// Handle ids → handles. Read-locked on every read and write request;
/// write-locked only to open and close.
#[derive(Default)]
pub struct HandleTable {
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

impl HandleTable {
    /// Registers a handle and returns its id.
    pub fn insert(&self, handle: Handle) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.handles
            .write()
            .expect("handle lock")
            .insert(id, Arc::new(handle));
        id
    }

    /// The handle with id `fh`.
    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.read().expect("handle lock").get(&fh).cloned()
    }

    /// An open file handle of node `ino`, if any: the only way to reach a
    /// file that was unlinked while open. A linear scan, used only then.
    pub fn find_open_file(&self, ino: u64) -> Option<Arc<Handle>> {
        self.handles
            .read()
            .expect("handle lock")
            .values()
            .find(|h| h.is_open_file_of(ino))
            .cloned()
    }

    /// Whether node `ino` has an open file handle besides `fh`. A linear
    /// scan, used only when the first kernel passthrough open of a file is
    /// decided.
    pub fn has_other_open_file(&self, ino: u64, fh: u64) -> bool {
        self.handles
            .read()
            .expect("handle lock")
            .iter()
            .any(|(id, h)| *id != fh && h.is_open_file_of(ino))
    }

    /// Removes and returns the handle.
    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.write().expect("handle lock").remove(&fh)
    }
}
