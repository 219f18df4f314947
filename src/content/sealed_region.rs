//! The stored form of a run of consecutive blocks: one buffer holding their
//! sealed bytes, its reads and writes on the backing file, and per-block
//! views of nonce, ciphertext and tag, for both content formats.
//!
//! The buffer always holds the blocks' *inline* bytes back to back (format
//! 1: `nonce || ciphertext || tag`; format 2: the ciphertext), followed, in
//! format 2, by their 32-byte slots back to back. So the crypto code sees
//! the same [`SealedBlock`] views whatever the layout, and a request still
//! costs one `pread`/`pwrite` per contiguous stored run: one in format 1,
//! two per group of 126 blocks (data and slots) in format 2.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::prefetch;
use super::read_around::AroundRead;
use crate::crypto::block_aead::{NONCE_LEN, TAG_LEN};
use crate::format::content_layout::{ContentLayout, StoredRun, PAGE_LEN, SLOT_LEN};
use crate::format::offsets::PLAIN_BLOCK_LEN;

/// One `preadv2` with `flags` of `buf` at `off` and, with `next_page`, of
/// the backing page after it (discarded); the bytes read. The page's
/// scratch space is only set up when asked for.
fn preadv_with_next_page(
    backing: &File,
    buf: &mut [u8],
    off: u64,
    next_page: bool,
    flags: rustix::io::ReadWriteFlags,
) -> io::Result<usize> {
    if !next_page {
        return Ok(rustix::io::preadv2(
            backing,
            &mut [io::IoSliceMut::new(buf)],
            off,
            flags,
        )?);
    }
    let mut page = [0u8; PAGE_LEN as usize];
    let request = &mut [io::IoSliceMut::new(buf), io::IoSliceMut::new(&mut page)];
    Ok(rustix::io::preadv2(backing, request, off, flags)?)
}

/// Reads `buf` at `off` only if all of it is in the page cache
/// (`RWF_NOWAIT`); whether it was. Never waits for the disk, but a miss
/// starts the read of what is missing, as any read would. With
/// `next_page`, the request also covers the backing page after `buf`, so
/// that the read a miss starts is the one [`read_data`] would make.
fn read_if_cached(backing: &File, buf: &mut [u8], off: u64, next_page: bool) -> bool {
    let len = buf.len();
    let nowait = rustix::io::ReadWriteFlags::NOWAIT;
    matches!(preadv_with_next_page(backing, buf, off, next_page, nowait), Ok(read) if read >= len)
}

/// Reads all of `buf` at `off`, with `next_page` (content format 2) in the
/// same request as the backing page after it (discarded).
///
/// Why the next page: format 1 reads parts of two backing pages for every
/// block, and format 2 would read one. The backing file system's readahead
/// starts when the pages before a miss are already cached (context
/// readahead), so with one page per block it starts much later on a cold
/// random-read workload: a 1 GiB disk read at random for 10 s measured
/// about 25 % fewer IOPS than format 1. Reading the next page too keeps
/// format 1's read pattern and its cache warm-up, at the cost format 1
/// always paid (two pages per read), and costs one 4 KiB copy when cached.
fn read_data(backing: &File, buf: &mut [u8], off: u64, next_page: bool) -> io::Result<()> {
    let flags = rustix::io::ReadWriteFlags::empty();
    let read = preadv_with_next_page(backing, buf, off, next_page, flags)?;
    if read < buf.len() {
        backing.read_exact_at(&mut buf[read..], off + read as u64)?;
    }
    Ok(())
}

/// A read of `buf` at `off` small enough for read-around: tries the page
/// cache alone (with the next page in format 2, `next_page`), tells
/// `around` whether that hit, and on a miss it says should bring in
/// `window` (`(start, len)`), starts the window's read and then reads.
/// Whether `buf` is read; if not, the caller reads it as it would without
/// read-around, and finds its pages in flight.
fn read_small(
    backing: &File,
    buf: &mut [u8],
    off: u64,
    next_page: bool,
    around: AroundRead<'_>,
    (start, len): (u64, u64),
) -> io::Result<bool> {
    let cached = read_if_cached(backing, buf, off, next_page);
    if around.state.on_cache_try(cached, around.counted, backing) && around.brings_in {
        prefetch::start_reading(backing, start, len);
        backing.read_exact_at(buf, off)?;
        return Ok(true);
    }
    Ok(cached)
}

/// Format 2: writes zeros over the slots of blocks `first..end` that lie
/// before backing offset `stored_len` (slots past the end of the backing
/// file already read as zeros, and writing them would allocate tag pages).
/// Format 1 has no slots: its nonces and tags go with the data.
///
/// Costs one write per group of slots inside the backing file, however
/// far `end` lies past it: `end` is clamped to the blocks whose slots start
/// before `stored_len`, so a caller that grows a file to any size does not
/// make us walk the groups up to it.
pub(super) fn zero_slots(
    backing: &File,
    layout: ContentLayout,
    first: u64,
    end: u64,
    stored_len: u64,
) -> io::Result<()> {
    let zeros = [0u8; PAGE_LEN as usize];
    let end = end.min(layout.slotted_blocks_within(stored_len));
    for run in layout.stored_runs(first, end) {
        let Some(slot_off) = run.slot_off.filter(|&off| off < stored_len) else {
            continue;
        };
        let len = (run.block_count * SLOT_LEN).min(stored_len - slot_off);
        backing.write_all_at(&zeros[..len as usize], slot_off)?;
    }
    Ok(())
}

/// Consecutive blocks `first_block..first_block + count` of one file: all
/// of them full except possibly the last, which holds `last_len` plaintext
/// bytes (only a file's last block can be short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SealedRegion {
    layout: ContentLayout,
    first_block: u64,
    count: u64,
    last_len: u64,
}

/// One stored block, read-only.
pub(super) struct SealedBlock<'a> {
    pub nonce: &'a [u8],
    pub ciphertext: &'a [u8],
    pub tag: &'a [u8],
}

/// One stored block, to be filled by sealing.
pub(super) struct SealedBlockMut<'a> {
    pub nonce: &'a mut [u8],
    pub ciphertext: &'a mut [u8],
    pub tag: &'a mut [u8],
}

impl SealedBlock<'_> {
    /// Whether the block is a hole: a full block whose nonce, tag and
    /// ciphertext are all zero bytes (docs/FORMAT.md §3.5, §3.9). The nonce
    /// is checked first, so a real block is rejected after 16 bytes.
    pub fn is_hole(&self) -> bool {
        self.ciphertext.len() as u64 == PLAIN_BLOCK_LEN
            && self.nonce.iter().all(|&b| b == 0)
            && self.tag.iter().all(|&b| b == 0)
            && self.ciphertext.iter().all(|&b| b == 0)
    }
}

impl SealedRegion {
    /// Blocks `first_block..first_block + count` (count ≥ 1), the last of
    /// which holds `last_len` (1..=4096) plaintext bytes.
    pub fn new(layout: ContentLayout, first_block: u64, count: u64, last_len: u64) -> Self {
        assert!(count > 0, "a region holds at least one block");
        assert!(
            (1..=PLAIN_BLOCK_LEN).contains(&last_len),
            "last block length {last_len}"
        );
        Self {
            layout,
            first_block,
            count,
            last_len,
        }
    }

    /// Plaintext bytes of the region's `index`-th block.
    fn plain_len(&self, index: u64) -> u64 {
        if index + 1 == self.count {
            self.last_len
        } else {
            PLAIN_BLOCK_LEN
        }
    }

    /// Inline bytes of blocks `from..to` (region indices).
    fn inline_len_of(&self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        let full = self.layout.inline_len(PLAIN_BLOCK_LEN);
        (to - from - 1) * full + self.layout.inline_len(self.plain_len(to - 1))
    }

    fn has_slots(&self) -> bool {
        self.layout == ContentLayout::PageAligned
    }

    /// Bytes of the buffer that holds the region.
    pub fn buffer_len(&self) -> usize {
        let slots = if self.has_slots() {
            self.count * SLOT_LEN
        } else {
            0
        };
        (self.inline_len_of(0, self.count) + slots) as usize
    }

    /// The contiguous stored runs of the region, each with where its inline
    /// bytes and slots go in the buffer: `(run, inline_at, inline_len,
    /// slots_at)`.
    fn runs(&self) -> impl Iterator<Item = (StoredRun, usize, usize, usize)> + '_ {
        let slots_start = self.inline_len_of(0, self.count);
        self.layout
            .stored_runs(self.first_block, self.first_block + self.count)
            .map(move |run| {
                let from = run.first_block - self.first_block;
                let to = from + run.block_count;
                (
                    run,
                    self.inline_len_of(0, from) as usize,
                    self.inline_len_of(from, to) as usize,
                    (slots_start + from * SLOT_LEN) as usize,
                )
            })
    }

    /// Reads the region's stored bytes into `buf` (`buffer_len()` bytes).
    ///
    /// Format 2 reads the slots first, from the page cache only (one tag
    /// page holds 126 blocks' slots, so it nearly always is cached). If
    /// they are not there, their read is started before the data is read,
    /// so that the two disk reads overlap instead of following each other,
    /// and the slots are read again afterwards.
    ///
    /// With `around`, a small read of data first tries the page cache
    /// alone (`RWF_NOWAIT`: a cached read costs nothing more, as the try
    /// is the read), tells the read-around state whether it hit, and on a
    /// miss starts the read of its window first if the state says so (see
    /// [`super::read_around`]).
    pub fn read(
        &self,
        backing: &File,
        buf: &mut [u8],
        around: Option<AroundRead<'_>>,
    ) -> io::Result<()> {
        assert_eq!(buf.len(), self.buffer_len(), "region buffer length");
        let mut slots_missing = false;
        for (run, _, _, slots_at) in self.runs() {
            if let Some(slot_off) = run.slot_off {
                let slots = &mut buf[slots_at..slots_at + (run.block_count * SLOT_LEN) as usize];
                if !read_if_cached(backing, slots, slot_off, false) {
                    prefetch::start_reading(backing, slot_off, slots.len() as u64);
                    slots_missing = true;
                }
            }
        }
        for (run, inline_at, inline_len, slots_at) in self.runs() {
            let data = &mut buf[inline_at..inline_at + inline_len];
            let next_page = run.slot_off.is_some();
            let window =
                around.and_then(|ra| Some((ra, ra.state.cover(run.data_off, data.len() as u64)?)));
            let read_already = match window {
                Some((ra, window)) => {
                    read_small(backing, data, run.data_off, next_page, ra, window)?
                }
                None => false,
            };
            if !read_already {
                read_data(backing, data, run.data_off, next_page)?;
            }
            if let (Some(slot_off), true) = (run.slot_off, slots_missing) {
                let slots_len = (run.block_count * SLOT_LEN) as usize;
                backing.read_exact_at(&mut buf[slots_at..slots_at + slots_len], slot_off)?;
            }
        }
        Ok(())
    }

    /// Writes `buf` (`buffer_len()` bytes) as the region's stored bytes.
    /// In format 2 each run's data pages go first, then its slots; a crash
    /// in between leaves those blocks failing authentication, as a torn
    /// write does in format 1.
    pub fn write(&self, backing: &File, buf: &[u8]) -> io::Result<()> {
        assert_eq!(buf.len(), self.buffer_len(), "region buffer length");
        for (run, inline_at, inline_len, slots_at) in self.runs() {
            backing.write_all_at(&buf[inline_at..inline_at + inline_len], run.data_off)?;
            if let Some(slot_off) = run.slot_off {
                let slots_len = (run.block_count * SLOT_LEN) as usize;
                backing.write_all_at(&buf[slots_at..slots_at + slots_len], slot_off)?;
            }
        }
        Ok(())
    }

    /// Starts reading the backing pages that a [`SealedRegion::write`] will
    /// cover only in part (see [`prefetch`]). In format 1 that is nearly
    /// every page a small write touches; in format 2 only the slots' tag
    /// page and a short last data page.
    pub fn start_reading_partial_pages(&self, backing: &File) {
        for (run, _, inline_len, _) in self.runs() {
            prefetch::start_reading_partial_pages(backing, run.data_off, inline_len as u64);
            if let Some(slot_off) = run.slot_off {
                prefetch::start_reading_partial_pages(
                    backing,
                    slot_off,
                    run.block_count * SLOT_LEN,
                );
            }
        }
    }

    /// Per-block views of a buffer read by [`SealedRegion::read`].
    pub fn blocks<'a>(&self, buf: &'a [u8]) -> impl Iterator<Item = SealedBlock<'a>> + 'a {
        self.carve(buf).map(|(nonce, ciphertext, tag)| SealedBlock {
            nonce,
            ciphertext,
            tag,
        })
    }

    /// Per-block views of a buffer to seal into before
    /// [`SealedRegion::write`].
    pub fn blocks_mut<'a>(
        &self,
        buf: &'a mut [u8],
    ) -> impl Iterator<Item = SealedBlockMut<'a>> + 'a {
        self.carve(buf)
            .map(|(nonce, ciphertext, tag)| SealedBlockMut {
                nonce,
                ciphertext,
                tag,
            })
    }

    /// Cuts a region buffer into `(nonce, ciphertext, tag)` per block, for
    /// shared and mutable buffers alike.
    fn carve<'a, B: Carve<'a>>(&self, buf: B) -> impl Iterator<Item = (B, B, B)> + 'a {
        let (mut inline, mut slots) = buf.cut(self.inline_len_of(0, self.count) as usize);
        let region = *self;
        (0..self.count).map(move |index| {
            let len = region.layout.inline_len(region.plain_len(index)) as usize;
            let (block, rest) = std::mem::take(&mut inline).cut(len);
            inline = rest;
            if region.has_slots() {
                let (slot, rest) = std::mem::take(&mut slots).cut(SLOT_LEN as usize);
                slots = rest;
                let (nonce, tag) = slot.cut(NONCE_LEN);
                (nonce, block, tag)
            } else {
                let (nonce, rest) = block.cut(NONCE_LEN);
                let tag_at = rest.len() - TAG_LEN;
                let (ciphertext, tag) = rest.cut(tag_at);
                (nonce, ciphertext, tag)
            }
        })
    }
}

/// A byte slice, shared or mutable, that can be cut in two: what
/// [`SealedRegion::carve`] needs to serve reads and writes with one body.
trait Carve<'a>: Default + Sized + 'a {
    fn len(&self) -> usize;
    fn cut(self, mid: usize) -> (Self, Self);
}

impl<'a> Carve<'a> for &'a [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn cut(self, mid: usize) -> (Self, Self) {
        self.split_at(mid)
    }
}

impl<'a> Carve<'a> for &'a mut [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn cut(self, mid: usize) -> (Self, Self) {
        self.split_at_mut(mid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::content_layout::GROUP_BLOCKS;
    use ContentLayout::*;

    /// An empty file in a temporary directory under the build directory: a
    /// disk-backed file system (a tmpfs /tmp could not evict pages).
    fn file_on_disk() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, file)
    }

    /// Writing a region and reading it back through the views places every
    /// byte where the layout functions say, for regions that cross groups.
    #[test]
    fn views_and_io_agree_with_the_layout_functions() {
        for layout in [Interleaved, PageAligned] {
            for (first, count, last_len) in [
                (0, 1, 1),
                (0, 1, 4096),
                (3, 2, 100),
                (GROUP_BLOCKS - 1, 3, 4096),
                (GROUP_BLOCKS - 2, GROUP_BLOCKS + 5, 7),
            ] {
                let (_dir, file) = file_on_disk();
                let region = SealedRegion::new(layout, first, count, last_len);
                let mut buf = vec![0u8; region.buffer_len()];
                for (index, block) in region.blocks_mut(&mut buf).enumerate() {
                    let mark = index as u8 + 1;
                    block.nonce.fill(mark);
                    block.ciphertext.fill(mark ^ 0x80);
                    block.tag.fill(!mark);
                }
                region.write(&file, &buf).unwrap();
                for (index, block_no) in (first..first + count).enumerate() {
                    let mark = index as u8 + 1;
                    let data_off = layout.block_data_off(block_no);
                    let (ciphertext_off, nonce_off, tag_off) = match layout.block_slot_off(block_no)
                    {
                        Some(slot) => (data_off, slot, slot + NONCE_LEN as u64),
                        None => {
                            let len = if index as u64 + 1 == count {
                                last_len
                            } else {
                                4096
                            };
                            (data_off + 16, data_off, data_off + 16 + len)
                        }
                    };
                    let mut byte = [0u8];
                    file.read_exact_at(&mut byte, nonce_off).unwrap();
                    assert_eq!(byte[0], mark, "{layout:?} block {block_no} nonce");
                    file.read_exact_at(&mut byte, ciphertext_off).unwrap();
                    assert_eq!(byte[0], mark ^ 0x80, "{layout:?} block {block_no} data");
                    file.read_exact_at(&mut byte, tag_off).unwrap();
                    assert_eq!(byte[0], !mark, "{layout:?} block {block_no} tag");
                }
                let mut back = vec![0u8; region.buffer_len()];
                region.read(&file, &mut back, None).unwrap();
                assert_eq!(back, buf);
                let lens: Vec<_> = region.blocks(&back).map(|b| b.ciphertext.len()).collect();
                assert_eq!(lens.len() as u64, count);
                assert_eq!(*lens.last().unwrap() as u64, last_len);
                assert!(region
                    .blocks(&back)
                    .all(|b| b.nonce.len() == 16 && b.tag.len() == 16));
            }
        }
    }

    /// Slots that are not in the page cache are read from the disk (the
    /// `RWF_NOWAIT` attempt fails and the blocking read follows).
    #[test]
    fn slots_evicted_from_the_page_cache_are_read_back() {
        let (_dir, file) = file_on_disk();
        let region = SealedRegion::new(PageAligned, GROUP_BLOCKS - 1, 2, 4096);
        let buf: Vec<u8> = (0..region.buffer_len()).map(|i| (i % 251) as u8).collect();
        region.write(&file, &buf).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let mut probe = [0u8; 32];
        let slot = PageAligned.block_slot_off(GROUP_BLOCKS - 1).unwrap();
        assert!(
            !read_if_cached(&file, &mut probe, slot, false),
            "the slots were evicted, so the test takes the slow path"
        );
        let mut back = vec![0u8; region.buffer_len()];
        region.read(&file, &mut back, None).unwrap();
        assert_eq!(back, buf);
        assert!(read_if_cached(&file, &mut probe, slot, false), "now cached");
    }

    #[test]
    fn only_full_zero_blocks_are_holes() {
        let zeros = [0u8; 4096];
        let hole = SealedBlock {
            nonce: &zeros[..16],
            ciphertext: &zeros,
            tag: &zeros[..16],
        };
        assert!(hole.is_hole());
        let short = SealedBlock {
            ciphertext: &zeros[..100],
            ..hole
        };
        assert!(!short.is_hole());
        let mut tag = [0u8; 16];
        tag[15] = 1;
        assert!(!SealedBlock { tag: &tag, ..hole }.is_hole());
    }
}
