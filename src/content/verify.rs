//! Checking a stored encrypted file without serving it: which plaintext
//! byte ranges fail to authenticate (the core of `vmcryptfs fsck`).
//!
//! Reuses the read path's pieces instead of a second codec: the header is
//! loaded and authenticated by [`EncryptedFile`]'s own key loading, the
//! stored bytes of a run of blocks are read by [`SealedRegion`], and each
//! block is opened by the same [`FileKeys`] that serve reads, so fsck
//! accepts exactly what the mount accepts. Holes of a sparse backing file
//! are found with SEEK_DATA/SEEK_HOLE ([`EncryptedFile::seek`]) and never
//! read.
//!
//! Reads are large (up to [`CHUNK_BLOCKS`] blocks at a time, sequential),
//! the read of the next chunk is started before the current one is
//! decrypted, and decryption runs on every core
//! ([`super::parallel::try_for_each_block`]), so that checking runs at
//! about the backing file system's sequential read rate.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use rustix::fs::{seek, SeekFrom};
use rustix::io::Errno;

use super::encrypted_file::{ContentError, EncryptedFile, FileKeys};
use super::parallel::try_for_each_block;
use super::prefetch;
use super::sealed_region::{SealedBlock, SealedRegion};
use super::SeekTarget;
use crate::crypto::keyring::VmKeyring;
use crate::format::content_layout::{ContentLayout, SLOT_LEN};
use crate::format::offsets::{
    block_no_to_plain_off, plain_len_of_block, plain_size_to_block_count, PLAIN_BLOCK_LEN,
};

/// Blocks read and checked at a time offline: 4 MiB of plaintext, large
/// enough for the backing file system's sequential read rate.
pub const CHUNK_BLOCKS: u64 = 1024;
/// Blocks a scrub of a mounted file checks at a time: 1 MiB, as each chunk
/// holds its blocks' lock (shared) against the VM's writers while it is
/// read and checked.
pub const SCRUB_CHUNK_BLOCKS: u64 = 256;
/// Chunks whose backing reads are kept in flight ahead of the one being
/// checked, so the disk never waits for the decryption.
const CHUNKS_AHEAD: u64 = 4;

/// What checking one stored file found. Ranges are plaintext byte ranges,
/// ascending, merged, and inside `0..plain_size`.
#[derive(Debug, Default)]
pub struct ContentCheck {
    /// Plaintext size from the stored size (without a trailing fragment).
    pub plain_size: u64,
    /// Why the header is unusable, if it is; then every byte is damaged.
    pub header_error: Option<ContentError>,
    /// Bytes of a trailing fragment too short to be a block (format 1).
    pub trailing_fragment: Option<u64>,
    /// Plaintext ranges whose blocks fail to authenticate (or could not
    /// be read from the backing file).
    pub damaged: Vec<Range<u64>>,
    /// Plaintext ranges of full blocks stored as zero bytes in allocated
    /// backing space: they read as zeros (holes, docs/FORMAT.md §3.5), and
    /// whether they were zeroed by damage or are discarded blocks on a
    /// backing file system that did not free them cannot be told.
    pub zeroed: Vec<Range<u64>>,
    /// Plaintext bytes of the blocks that were read and checked.
    pub checked_bytes: u64,
}

impl ContentCheck {
    /// Whether nothing is wrong (zeroed blocks are not counted: they are
    /// valid holes as far as the format can tell).
    pub fn is_clean(&self) -> bool {
        self.header_error.is_none() && self.trailing_fragment.is_none() && self.damaged.is_empty()
    }
}

/// Appends `range` to ascending ranges `ranges`, merging it with the last
/// one when they touch.
pub fn push_range(ranges: &mut Vec<Range<u64>>, range: Range<u64>) {
    if range.is_empty() {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.end >= range.start => last.end = last.end.max(range.end),
        _ => ranges.push(range),
    }
}

/// The plaintext bytes of blocks `blocks` in a file of `plain_size` bytes.
pub fn blocks_to_plain_range(blocks: Range<u64>, plain_size: u64) -> Range<u64> {
    let start = block_no_to_plain_off(blocks.start).min(plain_size);
    start..block_no_to_plain_off(blocks.end).min(plain_size)
}

/// How one block fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    Authentic,
    /// All zero bytes: reads as a hole.
    Zero,
    /// All zero bytes in allocated backing space (see [`fully_allocated`]).
    ZeroAllocated,
    Damaged,
}

/// Checks every block of the encrypted file `backing` of a VM home with
/// `keyring` and content format `layout`, calling `progress` with the
/// plaintext bytes of each checked chunk. Only an I/O error that stops the
/// whole check (the size cannot be read) is an `Err`; damage and unreadable
/// blocks are in the result.
pub fn check_content(
    backing: &File,
    keyring: Arc<VmKeyring>,
    layout: ContentLayout,
    progress: &mut dyn FnMut(u64),
) -> io::Result<ContentCheck> {
    let file = EncryptedFile::new(keyring, layout);
    check_file(&file, backing, CHUNK_BLOCKS, progress)
}

/// [`check_content`] through `file`, the state that every user of the
/// backing file shares (on a mount, the one its open handles use), reading
/// `chunk_blocks` blocks at a time.
///
/// Each chunk is checked under a shared `size_lock` and a shared lock of
/// its blocks, exactly as a read takes them, so a writer rewriting a block
/// is waited for, never seen half-written, and never reported as damage
/// (a scrub runs while the VM writes). Between chunks nothing is held, so
/// `progress` may sleep to pace the check. A file that shrinks meanwhile
/// is checked up to its new end; blocks written after the check passed
/// them, or past the size it started with, are not checked.
pub fn check_file(
    file: &EncryptedFile,
    backing: &File,
    chunk_blocks: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<ContentCheck> {
    let layout = file.layout();
    let mut check = {
        let _size = file.size_lock.read().expect("size lock poisoned");
        let stored_len = backing.metadata()?.len();
        let (plain_size, trailing_fragment) = match layout.cipher_size_to_plain_size(stored_len) {
            Ok(size) => (size, None),
            Err(fragment) => {
                let size = fragment.plain_size_without_fragment;
                let whole = layout.plain_size_to_cipher_size(size).max(44);
                (size, Some(stored_len - whole))
            }
        };
        let mut check = ContentCheck {
            plain_size,
            trailing_fragment,
            ..ContentCheck::default()
        };
        if plain_size == 0 {
            // A header without data is discarded by the next write (FORMAT.md
            // §3.7): nothing in it is read.
            return Ok(check);
        }
        match file.keys(backing) {
            Ok(_) => {}
            Err(ContentError::Io(err)) if err.kind() != io::ErrorKind::UnexpectedEof => {
                return Err(err)
            }
            Err(err) => {
                check.header_error = Some(err);
                check.damaged.push(0..plain_size);
                return Ok(check);
            }
        }
        check
    };
    let plain_size = check.plain_size;
    let data = if check.trailing_fragment.is_some() {
        // The size does not parse, so the file's own SEEK_DATA cannot run:
        // every block is read.
        std::iter::once(0..plain_size_to_block_count(plain_size)).collect()
    } else {
        data_blocks(file, backing, plain_size)?
    };
    let mut next_hole = 0;
    for blocks in data {
        check_hole_slots(file, backing, next_hole..blocks.start, &mut check);
        next_hole = blocks.end;
        check_blocks(file, backing, blocks, chunk_blocks, &mut check, progress);
    }
    let end = plain_size_to_block_count(plain_size);
    check_hole_slots(file, backing, next_hole..end, &mut check);
    Ok(check)
}

/// The block ranges of `backing` that hold data, by the file's own
/// SEEK_DATA/SEEK_HOLE (exact at block granularity); the rest are holes.
fn data_blocks(file: &EncryptedFile, backing: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    let as_io = |err: ContentError| match err {
        ContentError::Io(err) => err,
        other => io::Error::other(other.to_string()),
    };
    let mut ranges = Vec::new();
    let mut offset = 0;
    while offset < size {
        let start = match file.seek(backing, offset, SeekTarget::Data) {
            Ok(start) => start,
            Err(ContentError::Io(err)) if err.raw_os_error() == Some(libc::ENXIO) => break,
            Err(err) => return Err(as_io(err)),
        };
        let end = match file.seek(backing, start, SeekTarget::Hole) {
            Ok(end) => end,
            // Shrunk meanwhile (a mounted file): no more data.
            Err(ContentError::Io(err)) if err.raw_os_error() == Some(libc::ENXIO) => break,
            Err(err) => return Err(as_io(err)),
        };
        ranges.push(start / PLAIN_BLOCK_LEN..plain_size_to_block_count(end));
        offset = end.max(start + 1);
    }
    Ok(ranges)
}

/// Format 2: the blocks `blocks` lie in holes of the backing file's data
/// pages, so they are holes only if their slots are zero too (a slot
/// without its data page fails authentication when read). A block with a
/// nonzero slot is checked as a block, under its lock: it is damage unless
/// a writer filled it meanwhile. Slots in a hole of the backing file are
/// not read. Format 1 keeps nonce and tag with the data, so a hole there
/// is whole.
fn check_hole_slots(
    file: &EncryptedFile,
    backing: &File,
    blocks: Range<u64>,
    check: &mut ContentCheck,
) {
    let layout = file.layout();
    let mut buf = Vec::new();
    for run in layout.stored_runs(blocks.start, blocks.end) {
        let Some(slot_off) = run.slot_off else {
            continue;
        };
        let len = run.block_count * SLOT_LEN;
        match seek(backing, SeekFrom::Data(slot_off)) {
            Ok(data) if data < slot_off + len => {}
            Ok(_) | Err(Errno::NXIO) => continue,
            Err(_) => {}
        }
        let mut slots = vec![0u8; len as usize];
        let read = std::os::unix::fs::FileExt::read_at(backing, &mut slots, slot_off).unwrap_or(0);
        let slots = &slots[..read];
        for (index, slot) in slots.chunks(SLOT_LEN as usize).enumerate() {
            if slot.iter().any(|&b| b != 0) {
                let block = run.first_block + index as u64;
                if let Some(checked) = check_locked(file, backing, block, 1, &mut buf) {
                    record_states(check, block, &checked);
                }
            }
        }
    }
}

/// Reads and checks blocks `blocks` in chunks of `chunk_blocks`, starting
/// the read of the next chunks before decrypting the current one.
fn check_blocks(
    file: &EncryptedFile,
    backing: &File,
    blocks: Range<u64>,
    chunk_blocks: u64,
    check: &mut ContentCheck,
    progress: &mut dyn FnMut(u64),
) {
    let layout = file.layout();
    let mut buf = Vec::new();
    let mut first = blocks.start;
    while first < blocks.end {
        let count = (blocks.end - first).min(chunk_blocks);
        let next = first + count;
        // The first time the whole window, then the chunk entering it.
        let window_start = if first == blocks.start {
            next
        } else {
            next + (CHUNKS_AHEAD - 1) * chunk_blocks
        };
        let window_end = (next + CHUNKS_AHEAD * chunk_blocks).min(blocks.end);
        if window_start < window_end {
            let ahead = layout.stored_span(window_start, window_end);
            prefetch::start_reading(backing, ahead.start, ahead.end - ahead.start);
        }
        let Some(checked) = check_locked(file, backing, first, count, &mut buf) else {
            // The file shrank below this chunk (or its header changed)
            // since the check started: nothing further is this file's
            // old content.
            return;
        };
        record_states(check, first, &checked);
        let bytes = blocks_to_plain_range(first..first + checked.states.len() as u64, checked.size);
        check.checked_bytes += bytes.end - bytes.start;
        progress(bytes.end - bytes.start);
        first = next;
    }
}

/// The states of some blocks, and the plaintext size they were read at.
struct Checked {
    states: Vec<BlockState>,
    size: u64,
}

/// Adds the damaged and zeroed blocks of `checked` (starting at block
/// `first`) to `check`.
fn record_states(check: &mut ContentCheck, first: u64, checked: &Checked) {
    for (index, state) in checked.states.iter().enumerate() {
        let block = first + index as u64;
        let range = blocks_to_plain_range(block..block + 1, checked.size);
        match state {
            BlockState::Authentic | BlockState::Zero => {}
            BlockState::ZeroAllocated => push_range(&mut check.zeroed, range),
            BlockState::Damaged => push_range(&mut check.damaged, range),
        }
    }
}

/// Checks blocks `first..first + count` (fewer if the file ends sooner)
/// under a shared `size_lock` and a shared lock of those blocks, as a read
/// does. `None` if none of them is left or the file's header no longer
/// authenticates (it changed since the check started).
fn check_locked(
    file: &EncryptedFile,
    backing: &File,
    first: u64,
    count: u64,
    buf: &mut Vec<u8>,
) -> Option<Checked> {
    let layout = file.layout();
    let _size = file.size_lock.read().expect("size lock poisoned");
    let size = EncryptedFile::plain_size_for_stat(layout, backing.metadata().ok()?.len());
    let end = plain_size_to_block_count(size).min(first + count);
    if first >= end {
        return None;
    }
    let _blocks = file.blocks.lock(first, end - 1, false);
    let keys = file.keys(backing).ok()?;
    let mut states = check_chunk(backing, layout, &keys, first, end - first, size, buf);
    for (index, state) in states.iter_mut().enumerate() {
        if *state == BlockState::Zero && fully_allocated(backing, layout, first + index as u64) {
            *state = BlockState::ZeroAllocated;
        }
    }
    Some(Checked { states, size })
}

/// Whether every stored byte of block `block`'s data lies in allocated
/// backing space. A zero block that does not is a hole punched (or never
/// written) in part, which is what holes look like; only one stored as
/// zeros throughout is worth listing, as it may have been zeroed.
fn fully_allocated(backing: &File, layout: ContentLayout, block: u64) -> bool {
    let start = layout.block_data_off(block);
    let end = start + layout.inline_len(PLAIN_BLOCK_LEN);
    match seek(backing, SeekFrom::Hole(start)) {
        Ok(hole) => hole >= end,
        Err(_) => false,
    }
}

/// The state of each of blocks `first..first + count`. A chunk that cannot
/// be read in one go (a bad sector) is read block by block, and a block
/// that cannot be read is damaged.
fn check_chunk(
    backing: &File,
    layout: ContentLayout,
    keys: &FileKeys,
    first: u64,
    count: u64,
    plain_size: u64,
    buf: &mut Vec<u8>,
) -> Vec<BlockState> {
    let region = SealedRegion::new(
        layout,
        first,
        count,
        plain_len_of_block(first + count - 1, plain_size),
    );
    buf.resize(region.buffer_len(), 0);
    if region.read(backing, buf, None).is_err() {
        if count == 1 {
            return vec![BlockState::Damaged];
        }
        return (first..first + count)
            .flat_map(|block| check_chunk(backing, layout, keys, block, 1, plain_size, buf))
            .collect();
    }
    let mut states = vec![BlockState::Authentic; count as usize];
    let work = region
        .blocks(buf)
        .zip(first..first + count)
        .zip(states.iter_mut());
    let _ = try_for_each_block(work, |((sealed, block), state)| {
        *state = block_state(keys, block, &sealed);
        Ok::<(), ()>(())
    });
    states
}

/// Whether one stored block authenticates, is a hole, or is damaged.
fn block_state(keys: &FileKeys, block: u64, sealed: &SealedBlock<'_>) -> BlockState {
    if sealed.is_hole() {
        return BlockState::Zero;
    }
    let mut plain = [0u8; PLAIN_BLOCK_LEN as usize];
    let plain = &mut plain[..sealed.ciphertext.len()];
    match keys.open_block(block, sealed, plain) {
        Ok(()) => BlockState::Authentic,
        Err(_) => BlockState::Damaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn keyring() -> Arc<VmKeyring> {
        use crate::crypto::secret::Dek;
        let mut deks = std::collections::BTreeMap::new();
        deks.insert(1, Dek::generate());
        Arc::new(VmKeyring::new([7; 16], 1, deks))
    }

    fn backing() -> File {
        tempfile::tempfile_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap()
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        let mut ranges = Vec::new();
        push_range(&mut ranges, 0..4096);
        push_range(&mut ranges, 4096..8192);
        push_range(&mut ranges, 12288..12300);
        push_range(&mut ranges, 5..5);
        assert_eq!(ranges, vec![0..8192, 12288..12300]);
        assert_eq!(blocks_to_plain_range(2..4, 10_000), 8192..10_000);
    }

    /// Every block of a file in either format is checked; a flipped byte
    /// in one block is that block's range and nothing else, and holes are
    /// not damage.
    #[test]
    fn a_flipped_byte_is_exactly_its_block_and_holes_are_clean() {
        for layout in [ContentLayout::Interleaved, ContentLayout::PageAligned] {
            let keyring = keyring();
            let file = EncryptedFile::new(keyring.clone(), layout);
            let backing = backing();
            let size = 300 * PLAIN_BLOCK_LEN + 100;
            file.write(&backing, 0, &vec![0x5a; 10 * 4096]).unwrap();
            file.write(
                &backing,
                200 * 4096,
                &vec![0x33; (size - 200 * 4096) as usize],
            )
            .unwrap();
            let mut seen = 0;
            let clean =
                check_content(&backing, keyring.clone(), layout, &mut |b| seen += b).unwrap();
            assert!(clean.is_clean(), "{layout:?}: {clean:?}");
            assert!(clean.zeroed.is_empty(), "{layout:?}: {:?}", clean.zeroed);
            assert_eq!(clean.plain_size, size);
            // The holes (blocks 10..200) were not read.
            assert_eq!(seen, 10 * 4096 + (size - 200 * 4096), "{layout:?}");
            let off = layout.block_data_off(250) + 40;
            let mut byte = [0u8];
            backing.read_exact_at(&mut byte, off).unwrap();
            backing.write_all_at(&[byte[0] ^ 1], off).unwrap();
            let damaged = check_content(&backing, keyring.clone(), layout, &mut |_| {}).unwrap();
            assert_eq!(damaged.damaged, vec![250 * 4096..251 * 4096], "{layout:?}");
            // Format 2: a slot written over a block whose data page is a
            // hole (reads fail: the block is no longer a hole) is damage,
            // though SEEK_DATA skips the block.
            if let Some(slot) = layout.block_slot_off(100) {
                backing.write_all_at(&[9u8; 32], slot).unwrap();
                let found = check_content(&backing, keyring.clone(), layout, &mut |_| {}).unwrap();
                assert_eq!(
                    found.damaged,
                    vec![100 * 4096..101 * 4096, 250 * 4096..251 * 4096]
                );
                assert!(
                    file.read(&backing, 100 * 4096, 4096).is_err(),
                    "reads fail too"
                );
            }
        }
    }
}
