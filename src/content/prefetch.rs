//! Starting the reads of the backing pages a store covers only in part.
//!
//! Why: a sealed block is 4,128 bytes, so storing one 4 KiB block writes
//! into two pages of the backing file without covering either. When those
//! pages are not cached, the backing filesystem must read them before it
//! can merge the write, and ext4 does that inside `pwrite`, one page after
//! the other, **holding the backing inode's lock**: every writer of the
//! file waits behind each read. Asking for the pages with
//! `POSIX_FADV_WILLNEED` before sealing starts both reads at once, without
//! the lock, overlapping the encryption; `pwrite` then finds them in the
//! cache or in flight. Cold 4 KiB random writes on a 1 GiB disk measured
//! 7.5 k -> 11.7 k IOPS with one fio job and 7.9 k -> 24.5 k with four
//! (medians of 4 alternating rounds, docs/PERFORMANCE.md). Pages a store
//! covers whole are not read by the kernel, so they are not asked for; on
//! cached pages the advice costs a page-cache lookup.
//!
//! The same advice serves [`ReadAround`], the opt-in `read_around` mount
//! option: a read that misses the backing page cache starts the read of
//! the whole aligned window around it, as the kernel's own read-around
//! does for page faults of mapped files. It is off by default because it
//! trades latency for warm-up: on a 1 GiB disk read at random for 10 s a
//! 128 KiB window measured about 1.5x the IOPS of no window, but on an 8 GiB
//! disk, whose reads rarely came back to a window, 0.5-0.6x, each read
//! waiting about twice as long (docs/DESIGN.md §2.2, docs/PERFORMANCE.md).

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
/// effort, like [`start_reading_partial_pages`].
pub fn start_reading(backing: &File, off: u64, len: u64) {
    let _ = fadvise(backing, off, NonZeroU64::new(len), Advice::WillNeed);
}

/// How much of the backing file a read that misses its page cache brings
/// in: the aligned window of `window` bytes around the read, or nothing
/// more than the read itself (the default). Immutable once a mount starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadAround {
    /// Bytes; a multiple of [`ReadAround::UNIT`], or 0 for off.
    window: u64,
}

/// Why a `read_around` window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a read-around window is a multiple of 4 KiB from 0 (off) to {max} KiB, not {kib} KiB", max = ReadAround::MAX_KIB)]
pub struct ReadAroundError {
    kib: u64,
}

impl ReadAround {
    /// No read-around: a cold read reads what it needs.
    pub const OFF: Self = Self { window: 0 };
    /// Windows are whole 4 KiB pages (the page size of every platform we
    /// build for that matters here; a larger page is still covered).
    pub const UNIT: u64 = 4096;
    /// 16 MiB: past that the advice only evicts what other files cached.
    pub const MAX_KIB: u64 = 16 * 1024;

    /// A window of `kib` KiB (0 turns read-around off).
    pub fn from_kib(kib: u64) -> Result<Self, ReadAroundError> {
        if kib > Self::MAX_KIB || (kib * 1024) % Self::UNIT != 0 {
            return Err(ReadAroundError { kib });
        }
        Ok(Self { window: kib * 1024 })
    }

    /// The window in KiB (0 when off).
    pub fn kib(self) -> u64 {
        self.window / 1024
    }

    /// Whether cold reads bring in only what they read.
    pub fn is_off(self) -> bool {
        self.window == 0
    }

    /// The byte range `(start, len)` to bring in around a read of `len`
    /// bytes at `off`: from the start of the window holding the first byte
    /// to the end of the window holding the last. None when off, empty, or
    /// as long as the window: such reads come from the kernel's readahead
    /// of a sequential reader, and the backing file's own readahead,
    /// which runs ahead of the reader, serves them better (a 128 KiB
    /// window on 1 MiB sequential reads measured 0.67x the throughput).
    pub fn window_of(self, off: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 || len >= self.window {
            return None;
        }
        let start = off - off % self.window;
        let end = (off + len).div_ceil(self.window) * self.window;
        Some((start, end - start))
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
    fn a_window_is_the_aligned_cover_of_the_read() {
        for kib in [4, 8, 12, 128] {
            let ra = ReadAround::from_kib(kib).unwrap();
            let window = kib * 1024;
            for off in (0..3 * window).step_by(1021) {
                for len in [1, 100, 4096, 4128, window - 1]
                    .into_iter()
                    .filter(|&l| l < window)
                {
                    let (start, cover) = ra.window_of(off, len).unwrap();
                    assert_eq!(start % window, 0, "{kib} KiB: off {off} len {len}");
                    assert_eq!(cover % window, 0, "{kib} KiB: off {off} len {len}");
                    assert!(start <= off && off + len <= start + cover);
                    // Smallest such cover: one window less at either end
                    // would miss a byte of the read.
                    assert!(start + window > off, "{kib} KiB: off {off} len {len}");
                    assert!(
                        start + cover - window < off + len,
                        "{kib} KiB: off {off} len {len}"
                    );
                }
            }
        }
        assert_eq!(ReadAround::OFF.window_of(4096, 4096), None);
        let ra = ReadAround::from_kib(128).unwrap();
        assert_eq!(ra.window_of(4096, 0), None);
        assert_eq!(ra.window_of(4096, 128 * 1024), None);
        assert_eq!(ra.window_of(0, 1 << 20), None);
    }

    #[test]
    fn only_whole_pages_up_to_16_mib_are_windows() {
        assert_eq!(ReadAround::from_kib(0).unwrap(), ReadAround::OFF);
        assert!(ReadAround::from_kib(0).unwrap().is_off());
        assert_eq!(ReadAround::from_kib(128).unwrap().kib(), 128);
        assert_eq!(ReadAround::from_kib(16384).unwrap().kib(), 16384);
        for bad in [1, 2, 6, 130, 16388, u64::MAX / 1024] {
            let err = ReadAround::from_kib(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("not {bad} KiB")), "{err}");
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
