//! Starting the reads of the backing pages a store covers only in part.
//!
//! Why: in content format 1 a sealed block is 4,128 bytes, so storing one
//! 4 KiB block writes into two pages of the backing file without covering
//! either (in format 2, only a tag page and a short last data page are
//! covered in part). When those pages are not cached, the backing
//! filesystem must read them before it can merge the write, and ext4 does
//! that inside `pwrite`, one page after the other, **holding the backing
//! inode's lock**: every writer of the file waits behind each read. Asking
//! for the pages with `POSIX_FADV_WILLNEED` before sealing starts both
//! reads at once, without the lock, overlapping the encryption; `pwrite`
//! then finds them in the cache or in flight. Cold 4 KiB random writes on
//! a 1 GiB disk in format 1 measured 7.5 k -> 11.7 k IOPS with one fio job
//! and 7.9 k -> 24.5 k with four (medians of 4 alternating rounds;
//! docs/PERFORMANCE.md, "Write prefetch"). Pages a store covers whole are
//! not read by the kernel, so they are not asked for; on cached pages the
//! advice costs a page-cache lookup.
//!
//! The same advice starts the read of the window around a read that
//! misses the backing page cache, when [`super::read_around`] says to, and
//! the reads ahead of a sequential reader ([`super::read_ahead`]).

use std::fs::File;
use std::num::NonZeroU64;

use rustix::fs::{fadvise, Advice};

/// Asks the kernel to start reading the pages of `backing` that a store
/// of `len` bytes at `off` covers only in part. Best effort: the advice
/// changes no data, so an error is ignored (the write then reads the
/// pages itself, as without it).
pub fn start_reading_partial_pages(backing: &File, off: u64, len: u64) {
    let page = rustix::param::page_size() as u64;
    for (start, len) in partial_page_ranges(off, len, page) {
        let _ = fadvise(backing, start, NonZeroU64::new(len), Advice::WillNeed);
    }
}

/// Asks the kernel to start reading `len` bytes of `backing` at `off`, so
/// that a read issued right after finds them cached or in flight. Best
/// effort, like [`start_reading_partial_pages`]. A `len` of 0 asks for
/// nothing (to `posix_fadvise` it would mean "to the end of the file").
pub fn start_reading(backing: &File, off: u64, len: u64) {
    if let Some(len) = NonZeroU64::new(len) {
        let _ = fadvise(backing, off, Some(len), Advice::WillNeed);
    }
}

/// The byte ranges `(start, len)`, page-aligned, to read ahead of a store
/// of `len` bytes at `off` with pages of `page` bytes: the first and last
/// pages when the store covers them only in part, as one range when they
/// are the same page or neighbours (one request for both). None when the
/// store starts and ends on page boundaries. At most two ranges, and no
/// allocation: this runs on every store.
pub fn partial_page_ranges(off: u64, len: u64, page: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = off + len;
    let head = (len > 0 && off % page != 0).then(|| off - off % page);
    let tail = (len > 0 && end % page != 0).then(|| end - end % page);
    let (first, second) = match (head, tail) {
        (Some(head), Some(tail)) if tail - head <= page => (Some((head, tail - head + page)), None),
        (head, tail) => (head.map(|p| (p, page)), tail.map(|p| (p, page))),
    };
    first.into_iter().chain(second)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages a store of `[off, off + len)` touches without covering
    /// them whole, by brute force.
    fn partial_pages_brute_force(off: u64, len: u64, page: u64) -> Vec<u64> {
        if len == 0 {
            return Vec::new();
        }
        let end = off + len;
        (off / page..end.div_ceil(page))
            .map(|p| p * page)
            .filter(|&start| off > start || end < start + page)
            .collect()
    }

    #[test]
    fn covers_exactly_the_partly_written_pages() {
        let page = 64;
        for off in 0..4 * page {
            for len in 0..5 * page {
                let ranges: Vec<_> = partial_page_ranges(off, len, page).collect();
                let pages: Vec<u64> = ranges
                    .iter()
                    .flat_map(|&(start, len)| (start..start + len).step_by(page as usize))
                    .collect();
                assert_eq!(
                    pages,
                    partial_pages_brute_force(off, len, page),
                    "off {off} len {len}: {ranges:?}"
                );
                assert!(ranges.iter().all(|&(s, l)| s % page == 0 && l % page == 0));
                assert!(ranges.len() <= 2);
            }
        }
    }

    #[test]
    fn a_sealed_block_after_the_header_reads_both_of_its_pages_at_once() {
        // Block 0 of an encrypted file: 4,128 bytes at offset 44.
        assert_eq!(
            partial_page_ranges(44, 4128, 4096).collect::<Vec<_>>(),
            vec![(0, 8192)]
        );
        // Block 1 likewise; a store of blocks 5 to 7 spans four pages, of
        // which the middle two are covered whole.
        assert_eq!(
            partial_page_ranges(44 + 4128, 4128, 4096).collect::<Vec<_>>(),
            vec![(4096, 8192)]
        );
        assert_eq!(
            partial_page_ranges(44 + 5 * 4128, 4128 * 3, 4096).collect::<Vec<_>>(),
            vec![(20480, 4096), (32768, 4096)]
        );
        assert_eq!(partial_page_ranges(8192, 4096, 4096).count(), 0);
    }
}
