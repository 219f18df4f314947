//! Where each block's sealed bytes live in the backing file, for both
//! content formats (docs/FORMAT.md §3 and §3.9), as small pure functions.
//!
//! * **Format 1, interleaved**: a 44-byte header, then every block as
//!   `nonce || ciphertext || tag` (4128 bytes). Blocks straddle the backing
//!   file system's 4 KiB pages, so rewriting one block of a file that is not
//!   in the page cache makes the backing file system read two pages first.
//! * **Format 2, page-aligned**: groups of one *tag page* followed by
//!   [`GROUP_BLOCKS`] data pages. Each block's ciphertext fills exactly one
//!   page-aligned data page; its nonce and tag sit in a 32-byte slot of its
//!   group's tag page. Rewriting a block replaces a whole backing page, which
//!   needs no read, plus one slot (one tag page caches 126 blocks' slots).
//!   The header lives at the start of the first tag page.
//!
//! Block numbers and plaintext offsets are the same in both formats
//! ([`super::offsets`]); only the stored positions and sizes differ.

use std::ops::Range;

use super::offsets::{self, TrailingFragment, PLAIN_BLOCK_LEN};
use crate::crypto::block_aead::OVERHEAD;

/// Backing page size that format 2 aligns data to.
pub const PAGE_LEN: u64 = 4096;
/// Data pages (blocks) per group in format 2.
pub const GROUP_BLOCKS: u64 = 126;
/// Stored bytes of one whole group in format 2: its tag page and its data pages.
pub const GROUP_LEN: u64 = (GROUP_BLOCKS + 1) * PAGE_LEN;
/// Offset of the first slot within a tag page. Bytes before it hold the
/// header in group 0 and are zero in every other group.
pub const SLOTS_START: u64 = 64;
/// Bytes of one slot: the block's nonce (16 bytes), then its tag (16 bytes).
pub const SLOT_LEN: u64 = OVERHEAD as u64;

const _: () = assert!(SLOTS_START + GROUP_BLOCKS * SLOT_LEN <= PAGE_LEN);
const _: () = assert!(PAGE_LEN == PLAIN_BLOCK_LEN);

/// How the blocks of an encrypted file are laid out in its backing file.
/// Chosen per VM home (the key bundle's `page_aligned` flag) and repeated in
/// every file header's version field, which must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentLayout {
    /// Content format 1: `nonce || ciphertext || tag` per block, back to back.
    Interleaved,
    /// Content format 2: page-aligned ciphertext, nonces and tags in tag pages.
    PageAligned,
}

/// A run of consecutive blocks whose stored bytes are contiguous in the
/// backing file: the whole request in format 1, one group's share of it in
/// format 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRun {
    /// First block of the run.
    pub first_block: u64,
    /// Number of blocks in the run (at least 1).
    pub block_count: u64,
    /// Backing offset of the first block's stored bytes: its nonce in
    /// format 1, its data page in format 2.
    pub data_off: u64,
    /// Backing offset of the first block's slot in format 2; `None` in
    /// format 1, where nonces and tags are inline.
    pub slot_off: Option<u64>,
}

impl ContentLayout {
    /// The content format number, which file headers carry as their version.
    pub fn format_version(self) -> u16 {
        match self {
            ContentLayout::Interleaved => 1,
            ContentLayout::PageAligned => 2,
        }
    }

    /// The layout of a content format number, if this build knows it.
    pub fn from_format_version(version: u16) -> Option<Self> {
        match version {
            1 => Some(ContentLayout::Interleaved),
            2 => Some(ContentLayout::PageAligned),
            _ => None,
        }
    }

    /// Stored bytes that a block of `plain_len` bytes takes in its run's
    /// contiguous data region (nonce and tag included in format 1).
    pub fn inline_len(self, plain_len: u64) -> u64 {
        match self {
            ContentLayout::Interleaved => plain_len + OVERHEAD as u64,
            ContentLayout::PageAligned => plain_len,
        }
    }

    /// Stored size of a file holding `plain_size` plaintext bytes.
    pub fn plain_size_to_cipher_size(self, plain_size: u64) -> u64 {
        match self {
            ContentLayout::Interleaved => offsets::plain_size_to_cipher_size(plain_size),
            ContentLayout::PageAligned => {
                if plain_size == 0 {
                    return 0;
                }
                let group_plain = GROUP_BLOCKS * PLAIN_BLOCK_LEN;
                let full_groups = plain_size / group_plain;
                match plain_size % group_plain {
                    0 => full_groups * GROUP_LEN,
                    rest => full_groups * GROUP_LEN + PAGE_LEN + rest,
                }
            }
        }
    }

    /// Plaintext size of a file whose stored size is `cipher_size`.
    ///
    /// In format 2 every stored size is valid: a size that ends inside a tag
    /// page (a header without data, or a tag page whose data page was never
    /// written) counts only the data pages before it.
    pub fn cipher_size_to_plain_size(self, cipher_size: u64) -> Result<u64, TrailingFragment> {
        match self {
            ContentLayout::Interleaved => offsets::cipher_size_to_plain_size(cipher_size),
            ContentLayout::PageAligned => {
                let full_groups = cipher_size / GROUP_LEN;
                let rest = cipher_size % GROUP_LEN;
                Ok(full_groups * GROUP_BLOCKS * PLAIN_BLOCK_LEN + rest.saturating_sub(PAGE_LEN))
            }
        }
    }

    /// Backing offset where block `block_no`'s stored bytes start (its nonce
    /// in format 1, its data page in format 2).
    pub fn block_data_off(self, block_no: u64) -> u64 {
        match self {
            ContentLayout::Interleaved => offsets::block_no_to_cipher_off(block_no),
            ContentLayout::PageAligned => {
                let group = block_no / GROUP_BLOCKS;
                group * GROUP_LEN + PAGE_LEN + (block_no % GROUP_BLOCKS) * PAGE_LEN
            }
        }
    }

    /// Backing offset of block `block_no`'s slot in format 2.
    pub fn block_slot_off(self, block_no: u64) -> Option<u64> {
        match self {
            ContentLayout::Interleaved => None,
            ContentLayout::PageAligned => {
                let group = block_no / GROUP_BLOCKS;
                Some(group * GROUP_LEN + SLOTS_START + (block_no % GROUP_BLOCKS) * SLOT_LEN)
            }
        }
    }

    /// The block whose stored bytes hold backing offset `cipher_off`; an
    /// offset in a format 2 tag page maps to the group's first block, and
    /// one inside the format 1 header to block 0.
    pub fn cipher_off_to_block_no(self, cipher_off: u64) -> u64 {
        match self {
            ContentLayout::Interleaved => {
                cipher_off.saturating_sub(offsets::HEADER_LEN) / offsets::CIPHER_BLOCK_LEN
            }
            ContentLayout::PageAligned => {
                let group = cipher_off / GROUP_LEN;
                let in_group = cipher_off % GROUP_LEN;
                group * GROUP_BLOCKS + in_group.saturating_sub(PAGE_LEN) / PAGE_LEN
            }
        }
    }

    /// The backing bytes from block `first_block`'s stored bytes up to
    /// block `end_block`'s: the ranges of consecutive spans of blocks tile
    /// the file, and in format 2 a span holds the tag page of each group
    /// it enters (a group's tag page precedes its data).
    pub fn stored_span(self, first_block: u64, end_block: u64) -> Range<u64> {
        self.block_data_off(first_block)..self.block_data_off(end_block.max(first_block))
    }

    /// The backing bytes of the blocks that *start* in plaintext range
    /// `plain`, as [`ContentLayout::stored_span`]. A block that `plain`
    /// starts inside of belongs to the range before, so the spans of
    /// consecutive ranges tile the file without overlap, wherever the
    /// ranges are split; a range inside one block has an empty span.
    pub fn stored_span_starting_in(self, plain: Range<u64>) -> Range<u64> {
        self.stored_span(
            offsets::plain_size_to_block_count(plain.start),
            offsets::plain_size_to_block_count(plain.end),
        )
    }

    /// How many leading blocks have a slot that starts inside a backing
    /// file of `stored_len` bytes: block `b` does exactly when
    /// `b < slotted_blocks_within(stored_len)`. Always 0 in format 1, whose
    /// blocks have no slots.
    ///
    /// Why: only those slots can hold stale bytes; every later slot reads as
    /// zeros. Work on slots past the end of a file (clearing them before the
    /// file grows over them) is therefore bounded by what the backing file
    /// holds, never by the size a caller asks it to reach.
    pub fn slotted_blocks_within(self, stored_len: u64) -> u64 {
        match self {
            ContentLayout::Interleaved => 0,
            ContentLayout::PageAligned => {
                let in_last_group = (stored_len % GROUP_LEN).saturating_sub(SLOTS_START);
                (stored_len / GROUP_LEN) * GROUP_BLOCKS
                    + in_last_group.div_ceil(SLOT_LEN).min(GROUP_BLOCKS)
            }
        }
    }

    /// Format 2: the groups all of whose blocks lie in `[first_block,
    /// end_block)`, except group 0 (whose tag page holds the file header):
    /// their stored bytes, tag pages included, are
    /// `range.start * GROUP_LEN..range.end * GROUP_LEN` and belong to those
    /// blocks alone, so one hole punch can free them all. Empty in format 1.
    pub fn whole_groups_within(self, first_block: u64, end_block: u64) -> Range<u64> {
        match self {
            ContentLayout::Interleaved => 0..0,
            ContentLayout::PageAligned => {
                let start = first_block.div_ceil(GROUP_BLOCKS).max(1);
                start..(end_block / GROUP_BLOCKS).max(start)
            }
        }
    }

    /// Splits blocks `[first_block, end_block)` into runs whose stored bytes
    /// are contiguous, in ascending order.
    pub fn stored_runs(self, first_block: u64, end_block: u64) -> impl Iterator<Item = StoredRun> {
        let mut next = first_block;
        std::iter::from_fn(move || {
            if next >= end_block {
                return None;
            }
            let run_end = match self {
                ContentLayout::Interleaved => end_block,
                ContentLayout::PageAligned => {
                    ((next / GROUP_BLOCKS + 1) * GROUP_BLOCKS).min(end_block)
                }
            };
            let run = StoredRun {
                first_block: next,
                block_count: run_end - next,
                data_off: self.block_data_off(next),
                slot_off: self.block_slot_off(next),
            };
            next = run_end;
            Some(run)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContentLayout::*;

    const P: u64 = PLAIN_BLOCK_LEN;

    #[test]
    fn format_versions_round_trip() {
        for layout in [Interleaved, PageAligned] {
            assert_eq!(
                ContentLayout::from_format_version(layout.format_version()),
                Some(layout)
            );
        }
        assert_eq!(ContentLayout::from_format_version(0), None);
        assert_eq!(ContentLayout::from_format_version(3), None);
    }

    #[test]
    fn page_aligned_sizes_round_trip_across_group_boundaries() {
        let mut previous = 0;
        let group_plain = GROUP_BLOCKS * P;
        let interesting = (0..=3 * P + 3)
            .chain(group_plain - 2 * P..=group_plain + 2 * P + 1)
            .chain(2 * group_plain - 3..=2 * group_plain + 3);
        for plain in interesting {
            let cipher = PageAligned.plain_size_to_cipher_size(plain);
            assert_eq!(
                PageAligned.cipher_size_to_plain_size(cipher),
                Ok(plain),
                "plain {plain}"
            );
            if plain > 0 {
                assert!(cipher > previous, "strictly monotonic at {plain}");
            }
            previous = cipher;
        }
    }

    #[test]
    fn every_page_aligned_stored_size_has_a_plain_size_no_larger_than_its_data() {
        for cipher in (0..3 * GROUP_LEN + 5).step_by(509) {
            let plain = PageAligned.cipher_size_to_plain_size(cipher).unwrap();
            let back = PageAligned.plain_size_to_cipher_size(plain);
            assert!(back <= cipher, "cipher {cipher} plain {plain} back {back}");
            // Only tag-page bytes separate the two.
            assert!(cipher - back <= PAGE_LEN, "cipher {cipher}");
        }
    }

    #[test]
    fn page_aligned_known_values() {
        assert_eq!(PageAligned.plain_size_to_cipher_size(1), PAGE_LEN + 1);
        assert_eq!(PageAligned.plain_size_to_cipher_size(P), 2 * PAGE_LEN);
        assert_eq!(PageAligned.plain_size_to_cipher_size(126 * P), GROUP_LEN);
        assert_eq!(
            PageAligned.plain_size_to_cipher_size(126 * P + 1),
            GROUP_LEN + PAGE_LEN + 1
        );
        assert_eq!(PageAligned.plain_size_to_cipher_size(516_097), 524_289);
        assert_eq!(PageAligned.plain_size_to_cipher_size(1 << 20), 1_060_864);
        assert_eq!(PageAligned.cipher_size_to_plain_size(44), Ok(0));
        assert_eq!(PageAligned.cipher_size_to_plain_size(PAGE_LEN), Ok(0));
        assert_eq!(
            PageAligned.cipher_size_to_plain_size(GROUP_LEN + 100),
            Ok(126 * P)
        );
        assert_eq!(PageAligned.block_data_off(0), PAGE_LEN);
        assert_eq!(PageAligned.block_data_off(125), 126 * PAGE_LEN);
        assert_eq!(PageAligned.block_data_off(126), GROUP_LEN + PAGE_LEN);
        assert_eq!(PageAligned.block_slot_off(0), Some(64));
        assert_eq!(PageAligned.block_slot_off(125), Some(64 + 125 * 32));
        assert_eq!(PageAligned.block_slot_off(127), Some(GROUP_LEN + 64 + 32));
        assert_eq!(Interleaved.block_slot_off(3), None);
    }

    #[test]
    fn every_data_page_and_slot_belongs_to_exactly_one_block() {
        let blocks = 3 * GROUP_BLOCKS + 7;
        let mut used = vec![None; (PageAligned.block_data_off(blocks) / PAGE_LEN) as usize];
        for block in 0..blocks {
            let data = PageAligned.block_data_off(block);
            assert_eq!(data % PAGE_LEN, 0, "data pages are aligned");
            let page = (data / PAGE_LEN) as usize;
            assert_eq!(used[page], None, "page {page} used twice");
            used[page] = Some(block);
            let slot = PageAligned.block_slot_off(block).unwrap();
            let slot_page = (slot / PAGE_LEN) as usize;
            assert_eq!(
                slot_page as u64 % (GROUP_BLOCKS + 1),
                0,
                "slots live in tag pages"
            );
            assert_eq!(slot / PAGE_LEN, (slot + SLOT_LEN - 1) / PAGE_LEN);
            assert!(slot % PAGE_LEN >= SLOTS_START);
            assert_eq!(PageAligned.cipher_off_to_block_no(data), block);
            assert_eq!(
                PageAligned.cipher_off_to_block_no(data + PAGE_LEN - 1),
                block
            );
        }
        for (page, owner) in used.iter().enumerate() {
            assert_eq!(
                owner.is_none(),
                page as u64 % (GROUP_BLOCKS + 1) == 0,
                "page {page}: only tag pages are not data"
            );
        }
        assert_eq!(
            PageAligned.cipher_off_to_block_no(GROUP_LEN + 5),
            GROUP_BLOCKS
        );
    }

    /// Exhaustive over four groups: the count steps by one exactly one
    /// byte past each block's slot offset, and never otherwise.
    #[test]
    fn slotted_blocks_within_counts_exactly_the_slots_that_start_inside() {
        assert_eq!(PageAligned.slotted_blocks_within(0), 0);
        let mut previous = 0;
        for stored_len in 0..4 * GROUP_LEN + 2 {
            let count = PageAligned.slotted_blocks_within(stored_len);
            assert!(
                count == previous || count == previous + 1,
                "at {stored_len}"
            );
            if count == previous + 1 {
                let slot = PageAligned.block_slot_off(previous).unwrap();
                assert_eq!(
                    stored_len,
                    slot + 1,
                    "block {previous} counted at {stored_len}"
                );
            }
            previous = count;
            assert_eq!(Interleaved.slotted_blocks_within(stored_len), 0);
        }
        assert_eq!(previous, 4 * GROUP_BLOCKS);
        // Every block, at the edges of its slot.
        for block in 0..4 * GROUP_BLOCKS {
            let slot = PageAligned.block_slot_off(block).unwrap();
            assert_eq!(PageAligned.slotted_blocks_within(slot), block);
            assert_eq!(PageAligned.slotted_blocks_within(slot + 1), block + 1);
        }
        // Sizes a caller can ask for do not overflow, and the largest
        // stored sizes stay in range.
        for stored_len in [u64::MAX, i64::MAX as u64, 1 << 62] {
            let count = PageAligned.slotted_blocks_within(stored_len);
            assert!(PageAligned.block_slot_off(count - 1).unwrap() < stored_len);
        }
    }

    #[test]
    fn whole_groups_within_hold_only_blocks_of_the_range() {
        let g = GROUP_BLOCKS;
        for first in 0..4 * g {
            for end in (first..5 * g).step_by(7).chain([5 * g, first + 2 * g]) {
                let groups = PageAligned.whole_groups_within(first, end);
                assert!(groups.start >= 1, "group 0 holds the header");
                // Exactly the groups from 1 on whose blocks all lie inside.
                for group in 0..6 {
                    let inside = group >= 1 && group * g >= first && (group + 1) * g <= end;
                    assert_eq!(
                        groups.contains(&group),
                        inside,
                        "{first}..{end} group {group}"
                    );
                }
                for block in groups.start * g..groups.end * g {
                    assert!((first..end).contains(&block));
                    assert!(PageAligned.block_slot_off(block).unwrap() >= groups.start * GROUP_LEN);
                    assert!(PageAligned.block_data_off(block) < groups.end * GROUP_LEN);
                }
                assert!(Interleaved.whole_groups_within(first, end).is_empty());
            }
        }
    }

    #[test]
    fn interleaved_matches_format_one_offsets() {
        for block in 0..5 {
            assert_eq!(
                Interleaved.block_data_off(block),
                offsets::block_no_to_cipher_off(block)
            );
            assert_eq!(
                Interleaved.cipher_off_to_block_no(offsets::block_no_to_cipher_off(block) + 7),
                block
            );
        }
        for plain in [0, 1, P, P + 1, 100 * P] {
            assert_eq!(
                Interleaved.plain_size_to_cipher_size(plain),
                offsets::plain_size_to_cipher_size(plain)
            );
        }
    }

    #[test]
    fn stored_runs_cover_blocks_once_and_stay_contiguous() {
        for layout in [Interleaved, PageAligned] {
            for first in [0, 1, 125, 126, 127, 250] {
                for count in [0, 1, 2, 125, 126, 127, 300] {
                    let runs: Vec<_> = layout.stored_runs(first, first + count).collect();
                    let mut next = first;
                    for run in &runs {
                        assert_eq!(run.first_block, next);
                        assert!(run.block_count > 0);
                        let last = run.first_block + run.block_count - 1;
                        // Contiguous data: the last block starts where whole
                        // blocks before it end.
                        assert_eq!(
                            layout.block_data_off(last),
                            run.data_off + (last - run.first_block) * layout.inline_len(P)
                        );
                        if let Some(slot) = run.slot_off {
                            assert_eq!(
                                layout.block_slot_off(last),
                                Some(slot + (last - run.first_block) * SLOT_LEN)
                            );
                        }
                        next = last + 1;
                    }
                    assert_eq!(next, first + count, "{layout:?} {first}+{count}");
                    if layout == Interleaved {
                        assert!(runs.len() <= 1);
                    }
                }
            }
        }
    }

    #[test]
    fn stored_spans_hold_every_stored_byte_of_their_blocks() {
        for layout in [Interleaved, PageAligned] {
            for first in [0, 1, 125, 126, 127, 250] {
                for count in [0, 1, 2, 125, 126, 127, 300] {
                    let span = layout.stored_span(first, first + count);
                    // Consecutive spans tile the file.
                    assert_eq!(
                        span.end,
                        layout.stored_span(first + count, first + count + 5).start
                    );
                    for run in layout.stored_runs(first, first + count) {
                        let data_end = run.data_off + run.block_count * layout.inline_len(P);
                        assert!(span.start <= run.data_off && data_end <= span.end);
                        if let Some(slot) = run.slot_off {
                            // A run's slots sit in its span, or (when the
                            // span starts inside a group) in the span before.
                            let slots_end = slot + run.block_count * SLOT_LEN;
                            assert!(slots_end <= span.end);
                            assert!(slot >= span.start || run.first_block == first);
                        }
                    }
                }
            }
        }
        // Ranges split anywhere, block-aligned or not: their spans tile
        // the span of the whole, each backing byte once.
        for layout in [Interleaved, PageAligned] {
            let cuts = [
                0,
                1,
                4095,
                4096,
                4097,
                126 * P - 1,
                126 * P + 7,
                300 * P,
                300 * P + 1,
            ];
            for window in cuts.windows(2) {
                let (a, b) = (window[0], window[1]);
                let whole = layout.stored_span_starting_in(0..b);
                let parts = (
                    layout.stored_span_starting_in(0..a),
                    layout.stored_span_starting_in(a..b),
                );
                assert_eq!(parts.0.end, parts.1.start, "{layout:?} cut at {a}");
                assert_eq!(parts.0.start..parts.1.end, whole, "{layout:?} {a}..{b}");
            }
            assert!(layout.stored_span_starting_in(10..4000).is_empty());
            assert!(layout.stored_span_starting_in(4097..8192).is_empty());
        }
        // Format 2: a span entering group 1 holds its tag page.
        let span = PageAligned.stored_span(120, 130);
        assert!(span.contains(&GROUP_LEN));
    }
}
