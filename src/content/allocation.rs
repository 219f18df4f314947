//! Sparse files on encrypted content: SEEK_DATA/SEEK_HOLE, preallocation,
//! hole punching and zeroing (gocryptfs keeps the same concerns apart in
//! `file_holes.go` and `file_allocate_truncate.go`).
//!
//! A plaintext block is a hole exactly when its stored bytes (nonce,
//! ciphertext, tag) are all zero (docs/FORMAT.md §3.5, §3.9). The backing
//! file's own SEEK_DATA/SEEK_HOLE skip large unallocated regions quickly,
//! but a block's stored bytes are not one backing page (format 1 blocks
//! straddle pages; format 2 keeps nonce and tag in a tag page), so the
//! block at each boundary is checked by reading it. Answers are therefore
//! exact at block granularity.

use std::fs::File;
use std::io;

use rustix::fs::{fallocate, seek, FallocateFlags, SeekFrom};
use rustix::io::Errno;

use super::encrypted_file::{ContentError, EncryptedFile};
use super::sealed_region::{self, SealedRegion};
use crate::format::content_layout::{ContentLayout, GROUP_BLOCKS, GROUP_LEN};
use crate::format::offsets::{
    block_no_to_plain_off, plain_off_in_block, plain_off_to_block_no, plain_size_to_block_count,
    PLAIN_BLOCK_LEN,
};

/// Which boundary `seek` looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekTarget {
    /// The next offset holding data (SEEK_DATA).
    Data,
    /// The next hole, or the end of the file (SEEK_HOLE).
    Hole,
}

fn errno_err(errno: Errno) -> ContentError {
    ContentError::Io(errno.into())
}

/// Whether full block `block_no` is stored as a hole (all zero bytes).
fn is_hole_block(backing: &File, layout: ContentLayout, block_no: u64) -> io::Result<bool> {
    let region = SealedRegion::new(layout, block_no, 1, PLAIN_BLOCK_LEN);
    let mut stored = vec![0u8; region.buffer_len()];
    match region.read(backing, &mut stored, None) {
        Ok(()) => Ok(region.blocks(&stored).all(|block| block.is_hole())),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The backing file's own SEEK_DATA/SEEK_HOLE answer; `None` for ENXIO
/// (no data at or after `from`).
fn backing_seek(backing: &File, whence: SeekFrom) -> Result<Option<u64>, ContentError> {
    match seek(backing, whence) {
        Ok(off) => Ok(Some(off)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(errno_err(e)),
    }
}

/// Punches `len` backing bytes at `off` out of the file, keeping its size.
fn punch(backing: &File, off: u64, len: u64) -> Result<(), ContentError> {
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    fallocate(backing, flags, off, len).map_err(errno_err)?;
    Ok(())
}

impl EncryptedFile {
    /// SEEK_DATA / SEEK_HOLE in plaintext offsets. ENXIO (as an I/O error)
    /// when `offset` is at or past the end, or for SEEK_DATA when only holes
    /// follow; SEEK_HOLE finds the end of the file if nothing earlier.
    pub fn seek(
        &self,
        backing: &File,
        offset: u64,
        target: SeekTarget,
    ) -> Result<u64, ContentError> {
        let _size = self.size_lock.read().expect("size lock poisoned");
        let size = self.plain_size(backing)?;
        if offset >= size {
            return Err(errno_err(Errno::NXIO));
        }
        let blocks = plain_size_to_block_count(size);
        let mut block_no = plain_off_to_block_no(offset);
        let whence = match target {
            SeekTarget::Data => SeekFrom::Data,
            SeekTarget::Hole => SeekFrom::Hole,
        };
        loop {
            let found = backing_seek(backing, whence(self.layout().block_data_off(block_no)))?;
            let candidate = match found {
                Some(off) => self.layout().cipher_off_to_block_no(off).max(block_no),
                None => blocks,
            };
            if candidate >= blocks {
                return match target {
                    SeekTarget::Data => Err(errno_err(Errno::NXIO)),
                    SeekTarget::Hole => Ok(size),
                };
            }
            // The last block is never a hole: a hole block is a full block.
            let hole = candidate + 1 < blocks || plain_off_in_block(size) == 0;
            let is_hole = hole && is_hole_block(backing, self.layout(), candidate)?;
            if is_hole == (target == SeekTarget::Hole) {
                return Ok(block_no_to_plain_off(candidate).max(offset));
            }
            block_no = candidate + 1;
        }
    }

    /// fallocate mode 0 / FALLOC_FL_KEEP_SIZE: reserves backing space for
    /// `[offset, offset + len)` and, unless `keep_size`, extends the file.
    /// Reserved but unwritten ranges read back as zeros, i.e. holes.
    pub fn allocate(
        &self,
        backing: &File,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> Result<(), ContentError> {
        let end = offset.checked_add(len).ok_or(errno_err(Errno::FBIG))?;
        self.check_reachable(end)?;
        let _size = self.size_lock.write().expect("size lock poisoned");
        let first = plain_off_to_block_no(offset);
        let last = plain_off_to_block_no(end.saturating_sub(1).max(offset));
        // Format 2 tag pages in the range are reserved too: harmless.
        let cipher_start = self.layout().block_data_off(first);
        let cipher_len = self.layout().block_data_off(last + 1) - cipher_start;
        fallocate(backing, FallocateFlags::KEEP_SIZE, cipher_start, cipher_len)
            .map_err(errno_err)?;
        self.extend_unless(keep_size, backing, end)
    }

    /// FALLOC_FL_PUNCH_HOLE: `[offset, offset + len)` reads as zeros and the
    /// whole blocks inside it give their space back to the datastore (guest
    /// TRIM/discard). Partial blocks at the edges are rewritten with zeros.
    /// The size does not change.
    pub fn punch_hole(&self, backing: &File, offset: u64, len: u64) -> Result<(), ContentError> {
        let _size = self.size_lock.write().expect("size lock poisoned");
        self.zero_within_size(backing, offset, len)
    }

    /// FALLOC_FL_ZERO_RANGE: like a hole punch, and extends the file unless
    /// `keep_size`.
    pub fn zero_range(
        &self,
        backing: &File,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> Result<(), ContentError> {
        let end = offset.checked_add(len).ok_or(errno_err(Errno::FBIG))?;
        self.check_reachable(end)?;
        let _size = self.size_lock.write().expect("size lock poisoned");
        self.zero_within_size(backing, offset, len)?;
        self.extend_unless(keep_size, backing, end)
    }

    /// Extends the file to `end` if it is shorter, unless `keep_size`
    /// (fallocate's FALLOC_FL_KEEP_SIZE). Caller holds `size_lock`
    /// exclusively.
    fn extend_unless(&self, keep_size: bool, backing: &File, end: u64) -> Result<(), ContentError> {
        if !keep_size && end > self.plain_size(backing)? {
            self.truncate_locked(backing, end)?;
        }
        Ok(())
    }

    /// Zeroes the part of `[offset, offset + len)` inside the file: whole
    /// blocks become holes, edge blocks are rewritten. Caller holds
    /// `size_lock` exclusively.
    fn zero_within_size(&self, backing: &File, offset: u64, len: u64) -> Result<(), ContentError> {
        let size = self.plain_size(backing)?;
        let end = (offset + len).min(size);
        if offset >= end {
            return Ok(());
        }
        let keys = self.keys(backing)?;
        // Whole blocks strictly inside the range, excluding a partial last
        // block of the file (which can never be a hole).
        let first_whole = offset.div_ceil(PLAIN_BLOCK_LEN);
        let whole_end = if end == size && plain_off_in_block(size) != 0 {
            plain_off_to_block_no(size)
        } else {
            end / PLAIN_BLOCK_LEN
        };
        // Partial blocks are rewritten as encrypted zeros.
        let write_zeros = |from: u64, to: u64| -> Result<(), ContentError> {
            if from < to {
                self.write_blocks(backing, &keys, from, &vec![0u8; (to - from) as usize], size)?;
            }
            Ok(())
        };
        if first_whole >= whole_end {
            return write_zeros(offset, end);
        }
        write_zeros(offset, block_no_to_plain_off(first_whole))?;
        write_zeros(block_no_to_plain_off(whole_end), end)?;
        self.make_holes(backing, first_whole, whole_end)
    }

    /// Turns whole blocks `first..end` into holes: their stored bytes are
    /// punched out of the backing file (format 2: their data pages, which
    /// frees them whole, and zeros over their slots).
    ///
    /// A constant number of calls however large the range: format 2's
    /// whole groups inside it go in one punch, tag pages included (a
    /// sparse 16 TiB file holds 33 million groups, which one call per
    /// group would keep the file locked for minutes to walk); only the
    /// partial groups at either edge are done run by run.
    fn make_holes(&self, backing: &File, first: u64, end: u64) -> Result<(), ContentError> {
        let groups = self.layout().whole_groups_within(first, end);
        if !groups.is_empty() {
            punch(
                backing,
                groups.start * GROUP_LEN,
                (groups.end - groups.start) * GROUP_LEN,
            )?;
            let (inner_first, inner_end) = (groups.start * GROUP_BLOCKS, groups.end * GROUP_BLOCKS);
            self.make_holes(backing, first, inner_first)?;
            return self.make_holes(backing, inner_end, end);
        }
        let full = self.layout().inline_len(PLAIN_BLOCK_LEN);
        for run in self.layout().stored_runs(first, end) {
            punch(backing, run.data_off, run.block_count * full)?;
        }
        // Whole blocks inside the file: their slots are inside it too.
        sealed_region::zero_slots(backing, self.layout(), first, end, u64::MAX)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::VmKeyring;
    use crate::crypto::secret::Dek;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    const B: u64 = PLAIN_BLOCK_LEN;

    const LAYOUTS: [ContentLayout; 2] = [ContentLayout::Interleaved, ContentLayout::PageAligned];

    fn setup(layout: ContentLayout) -> (tempfile::TempDir, File, EncryptedFile) {
        // A real file on disk (not tmpfs-backed memfd) so holes are real.
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, file, fresh(layout))
    }

    /// State for the test files, with no header loaded yet.
    fn fresh(layout: ContentLayout) -> EncryptedFile {
        let mut deks = BTreeMap::new();
        deks.insert(1, Dek::from_bytes([3; 32]));
        EncryptedFile::new(Arc::new(VmKeyring::new([1; 16], 1, deks)), layout)
    }

    /// Data at blocks 0 and 100..102 and 300 of a 400-block file; holes
    /// elsewhere. SEEK_DATA/SEEK_HOLE find exactly those boundaries.
    #[test]
    fn seek_data_and_hole_at_block_granularity() {
        for layout in LAYOUTS {
            let (_d, file, enc) = setup(layout);
            enc.truncate(&file, 400 * B).unwrap();
            enc.write(&file, 10, b"head").unwrap();
            enc.write(&file, 100 * B + 5, &vec![1u8; (2 * B) as usize])
                .unwrap();
            enc.write(&file, 300 * B, &[2u8; 10]).unwrap();
            let data = |o| enc.seek(&file, o, SeekTarget::Data);
            let hole = |o| enc.seek(&file, o, SeekTarget::Hole);
            assert_eq!(data(0).unwrap(), 0);
            assert_eq!(hole(0).unwrap(), B);
            assert_eq!(data(B).unwrap(), 100 * B);
            assert_eq!(data(50 * B + 7).unwrap(), 100 * B);
            assert_eq!(hole(100 * B).unwrap(), 103 * B);
            assert_eq!(data(103 * B).unwrap(), 300 * B);
            assert_eq!(hole(300 * B + 1).unwrap(), 301 * B);
            assert!(data(301 * B).is_err(), "only holes after block 300");
            assert_eq!(hole(301 * B).unwrap(), 301 * B);
            assert!(
                data(400 * B).is_err() && hole(400 * B).is_err(),
                "at EOF: ENXIO"
            );
        }
    }

    #[test]
    fn punch_hole_frees_space_and_reads_zeros() {
        for layout in LAYOUTS {
            let (_d, file, enc) = setup(layout);
            let data = vec![7u8; (64 * B) as usize];
            enc.write(&file, 0, &data).unwrap();
            let before = file.metadata().unwrap().blocks();
            enc.punch_hole(&file, 100, 60 * B).unwrap();
            assert!(
                file.metadata().unwrap().blocks() < before / 2,
                "space must be freed"
            );
            let all = enc.read(&file, 0, 64 * B).unwrap();
            assert!(all[..100].iter().all(|&b| b == 7));
            assert!(all[100..(100 + 60 * B) as usize].iter().all(|&b| b == 0));
            assert!(all[(100 + 60 * B) as usize..].iter().all(|&b| b == 7));
            assert_eq!(enc.plain_size(&file).unwrap(), 64 * B);
            assert_eq!(enc.seek(&file, 0, SeekTarget::Hole).unwrap(), B);
        }
    }

    /// Punching a hole costs a constant number of calls: 8 TiB is 16
    /// million format 2 groups, which one call each would take minutes to
    /// walk. Data on both edges and in the middle; the header survives.
    #[test]
    fn punching_a_huge_sparse_range_is_fast_and_exact() {
        for layout in LAYOUTS {
            let (_d, file, enc) = setup(layout);
            let size = 8 << 40;
            enc.truncate(&file, size).unwrap();
            let spots = [100, 300 * B + 5, size / 2 + 7, size - B - 1000];
            for spot in spots {
                enc.write(&file, spot, &[9u8; 3000]).unwrap();
            }
            let started = std::time::Instant::now();
            enc.punch_hole(&file, 200, size - B - 200 - 1).unwrap();
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{layout:?}"
            );
            // Fresh state: the header is read and checked again.
            let enc = fresh(layout);
            assert_eq!(enc.plain_size(&file).unwrap(), size);
            assert_eq!(
                enc.read(&file, 100, 101).unwrap()[..],
                [[9u8; 100].as_slice(), &[0]].concat()
            );
            for spot in &spots[1..3] {
                assert_eq!(
                    enc.read(&file, *spot, 3000).unwrap(),
                    vec![0u8; 3000],
                    "{layout:?}"
                );
            }
            let tail = enc.read(&file, size - B - 1000, 3000).unwrap();
            assert!(tail[..999].iter().all(|&b| b == 0) && tail[999..].iter().all(|&b| b == 9));
        }
    }

    #[test]
    fn zero_range_and_allocate_change_size_only_without_keep_size() {
        for layout in LAYOUTS {
            let (_d, file, enc) = setup(layout);
            enc.write(&file, 0, &[5u8; 5000]).unwrap();
            enc.zero_range(&file, 4000, 100, true).unwrap();
            let all = enc.read(&file, 0, 5000).unwrap();
            assert!(all[4000..4100].iter().all(|&b| b == 0) && all[4100..].iter().all(|&b| b == 5));
            enc.zero_range(&file, 4900, 1000, false).unwrap();
            assert_eq!(enc.plain_size(&file).unwrap(), 5900);
            enc.allocate(&file, 0, 20 * B, true).unwrap();
            assert_eq!(enc.plain_size(&file).unwrap(), 5900);
            enc.allocate(&file, 0, 20 * B, false).unwrap();
            assert_eq!(enc.plain_size(&file).unwrap(), 20 * B);
            let all = enc.read(&file, 0, 20 * B).unwrap();
            assert!(all[..4000].iter().all(|&b| b == 5));
            assert!(all[5900..].iter().all(|&b| b == 0));
        }
    }
}
