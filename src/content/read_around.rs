//! Deciding what a read that misses the backing page cache brings in: only
//! its own pages, or the aligned window of the backing file around them.
//!
//! Why: cold random reads are a race to warm the backing page cache, and
//! each miss brings in what it reads. A window makes every miss bring in
//! its neighbours too, as the kernel's read-around does for page faults of
//! mapped files, so a disk that fits in memory is cached after one miss
//! per window instead of one per page (a 1 GiB disk read at random for
//! 10 s: about 1.5x the IOPS with a 128 KiB window). But a window is a bet
//! on locality: each miss waits for the whole window, about twice as long
//! as for one page on this machine's disk, and when reads rarely come back
//! to a window before it is evicted or the workload ends, the bet is lost
//! (an 8 GiB disk read at random for 10 s: about 0.5x the IOPS).
//!
//! So the mount's [`ReadAround`] setting is one of: never, always, or
//! **adaptive**, where each file's [`ReadAroundState`] watches how many of
//! its small reads find their pages cached and places the bet only while
//! the numbers say it pays, and only on a file that fits in the memory the
//! kernel has available, within the mount's cgroup limit if it has one
//! ([`Governor`], with its reasoning).
//!
//! A file read through the kernel's page cache can also have the plaintext
//! of a window copied into that cache ([`ReadAroundState::fill_window`]),
//! so that reads of its neighbours never reach the daemon. Those reads are
//! then invisible to the governor, so such a file keeps one window in
//! [`CONTROL_ONE_IN`] as a control group: brought in like the others but
//! never copied, and for reads through the page cache only reads in
//! control windows are counted ([`AroundRead::counted`]).

mod available_memory;
mod governor;

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub use governor::Governor;

/// An aligned window of the backing file, in whole 4 KiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Bytes; a non-zero multiple of [`Window::UNIT`].
    bytes: u64,
}

impl Window {
    /// Windows are whole 4 KiB pages (the page size of every platform we
    /// build for that matters here; a larger page is still covered).
    pub const UNIT: u64 = 4096;
    /// 16 MiB: past that the advice only evicts what other files cached.
    pub const MAX_KIB: u64 = 16 * 1024;
    /// The kernel's own read-around for page faults of mapped files
    /// (`ra_pages` of a new block device).
    pub const DEFAULT_KIB: u64 = 128;

    /// A window of `kib` KiB: a non-zero multiple of 4 up to [`Self::MAX_KIB`].
    pub fn from_kib(kib: u64) -> Result<Self, ReadAroundError> {
        if kib == 0 || kib > Self::MAX_KIB || (kib * 1024) % Self::UNIT != 0 {
            return Err(ReadAroundError::WindowSize { kib });
        }
        Ok(Self { bytes: kib * 1024 })
    }

    /// The window in KiB.
    pub fn kib(self) -> u64 {
        self.bytes / 1024
    }

    /// The byte range `(start, len)` to bring in around a read of `len`
    /// bytes at `off`: from the start of the window holding the first byte
    /// to the end of the window holding the last. None when empty or as
    /// long as the window: such reads come from the kernel's readahead of
    /// a sequential reader, and the backing file's own readahead, which
    /// runs ahead of the reader, serves them better (a 128 KiB window on
    /// 1 MiB sequential reads measured 0.67x the throughput).
    pub fn cover(self, off: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 || len >= self.bytes {
            return None;
        }
        let start = off - off % self.bytes;
        let end = (off + len).div_ceil(self.bytes) * self.bytes;
        Some((start, end - start))
    }
}

/// One window in this many is a control window (see the module docs).
pub const CONTROL_ONE_IN: u64 = 8;

/// Whether the window with index `index` (plaintext offset / window size)
/// is a control window. The index is hashed (Fibonacci hashing), so that a
/// strided reader does not see only control windows or none.
pub fn is_control_window(index: u64) -> bool {
    index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32 & (CONTROL_ONE_IN - 1) == 0
}

/// A small read's part in read-around: the file's state, and whether the
/// read is counted by the governor.
#[derive(Debug, Clone, Copy)]
pub struct AroundRead<'a> {
    /// The file's read-around state.
    pub state: &'a ReadAroundState,
    /// False for a read through the kernel's page cache outside a control
    /// window: whether it finds its pages cached says more about what was
    /// copied into the kernel's cache than about where reads go.
    pub counted: bool,
    /// Whether a miss brings in the window: false when the caller brings in
    /// the range it will copy into the kernel's cache instead.
    pub brings_in: bool,
}

/// The mount's `read_around` option. Immutable once a mount starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAround {
    /// A miss reads only what it needs (`read_around=0` or `off`).
    Off,
    /// Every small read that misses brings in its window (`read_around=KIB`).
    Always(Window),
    /// Each file brings in windows while that pays off (`read_around=auto`).
    Adaptive(Window),
}

/// Why a `read_around` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadAroundError {
    /// A window that is not whole pages, or too large.
    #[error("a read-around window is a multiple of 4 KiB from 4 to {max} KiB, not {kib} KiB", max = Window::MAX_KIB)]
    WindowSize {
        /// The size asked for.
        kib: u64,
    },
    /// Neither a keyword nor a number.
    #[error("expected auto, off, or a window in KiB (a multiple of 4 up to {max}), not {value:?}", max = Window::MAX_KIB)]
    NotASetting {
        /// The value given.
        value: String,
    },
}

impl ReadAround {
    /// `read_around=auto`: adaptive, with the default window.
    pub const AUTO: Self = Self::Adaptive(Window {
        bytes: Window::DEFAULT_KIB * 1024,
    });
    /// What a mount gets without the option (docs/DESIGN.md §2.2 gives the
    /// rule, docs/PERFORMANCE.md "Read-around" the measurements behind it).
    pub const DEFAULT: Self = Self::AUTO;

    /// Parses the option's value: `auto` (adaptive, with the default
    /// window), `off` or `0`, or a window in KiB to use always.
    pub fn parse(value: &str) -> Result<Self, ReadAroundError> {
        match value {
            "auto" => Ok(Self::AUTO),
            "off" | "0" => Ok(Self::Off),
            _ => {
                let kib = value.parse().map_err(|_| ReadAroundError::NotASetting {
                    value: value.to_owned(),
                })?;
                Window::from_kib(kib).map(Self::Always)
            }
        }
    }

    /// One line for the mount's log, or None when off.
    pub fn describe(self) -> Option<String> {
        match self {
            Self::Off => None,
            Self::Always(window) => Some(format!(
                "a read of an encrypted file that misses the page cache brings in its {} KiB window",
                window.kib()
            )),
            Self::Adaptive(window) => Some(format!(
                "each encrypted file brings in the {} KiB window around a read that misses the page cache while its reads keep coming back to such windows",
                window.kib()
            )),
        }
    }
}

/// The read-around of one open encrypted file: the mount's setting and, when
/// adaptive, what the file's reads have shown so far. Shared by all readers
/// of the file; the read path costs one atomic add and one load.
#[derive(Debug)]
pub struct ReadAroundState {
    /// Immutable.
    setting: ReadAround,
    /// Whether a miss brings in its window now. Written only by the thread
    /// that closes an epoch (under `governor`), read without a lock.
    window_on: AtomicBool,
    /// The current epoch's small reads (high 32 bits) and how many of them
    /// found their pages cached (low 32 bits), packed so that one atomic
    /// add counts a read. Reset by the thread whose read completes the
    /// epoch; reads counted between that and the reset land in the epoch
    /// being closed, which only changes its ratios by a hair.
    tally: AtomicU64,
    /// The adaptive rule's memory. Locked only to close an epoch, by one
    /// thread at a time.
    governor: Mutex<Governor>,
    /// Windows brought in since the last [`ReadAroundState::take_windows`].
    windows: AtomicU64,
    /// Whether a window of the file was ever offered for copying into the
    /// kernel's cache ([`ReadAroundState::fill_window`]); from then on only
    /// control windows' reads through that cache are counted. Set once.
    filled: AtomicBool,
}

impl ReadAroundState {
    /// The state of a newly opened file: adaptive files start without the
    /// window, as nothing has been seen yet.
    pub fn new(setting: ReadAround) -> Self {
        Self {
            setting,
            window_on: AtomicBool::new(matches!(setting, ReadAround::Always(_))),
            tally: AtomicU64::new(0),
            governor: Mutex::new(Governor::new()),
            windows: AtomicU64::new(0),
            filled: AtomicBool::new(false),
        }
    }

    /// The window around a read of `len` bytes at `off` if the read is
    /// small enough to take part, or None: read it plainly, and do not
    /// count it. A read that takes part tries the page cache alone first
    /// and reports the outcome to [`ReadAroundState::on_cache_try`].
    pub fn cover(&self, off: u64, len: u64) -> Option<(u64, u64)> {
        self.window()?.cover(off, len)
    }

    /// Counts a small read of `backing` that found its pages `cached` or
    /// not (unless not `counted`), and says whether a miss should bring in
    /// its window.
    pub fn on_cache_try(&self, cached: bool, counted: bool, backing: &File) -> bool {
        let window = if counted {
            self.count(cached, || fits_in_memory(backing))
        } else {
            !cached && self.window_on.load(Ordering::Relaxed)
        };
        if window {
            self.windows.fetch_add(1, Ordering::Relaxed);
        }
        window
    }

    /// The window setting's size, or None when off.
    fn window(&self) -> Option<Window> {
        match self.setting {
            ReadAround::Off => None,
            ReadAround::Always(window) | ReadAround::Adaptive(window) => Some(window),
        }
    }

    /// Whether a read at plaintext offset `off` through the kernel's page
    /// cache is counted by the governor: until the file's first copy into
    /// that cache every read is (none is hidden yet, and counting all of
    /// them decides eight times sooner), after it only reads in control
    /// windows.
    pub fn counts_cached_read_at(&self, off: u64) -> bool {
        !self.filled.load(Ordering::Relaxed)
            || self
                .window()
                .is_some_and(|window| is_control_window(off / window.bytes))
    }

    /// The plaintext range worth copying into the kernel's page cache after
    /// a small read of `len` bytes at `off` through it, in a file of `size`
    /// bytes: the window holding `off`, while windows are on, unless it is
    /// a control window or the read is not small.
    pub fn fill_window(&self, off: u64, len: u64, size: u64) -> Option<std::ops::Range<u64>> {
        let window = self.window()?;
        if len >= window.bytes || !self.window_on() || is_control_window(off / window.bytes) {
            return None;
        }
        if !self.filled.load(Ordering::Relaxed) {
            self.filled.store(true, Ordering::Relaxed);
        }
        let start = off - off % window.bytes;
        Some(start..size.min(start + window.bytes))
    }

    /// How many windows misses brought in since the last call (for the
    /// mount's counters). A load, and a swap only when there are some.
    pub fn take_windows(&self) -> u64 {
        if self.windows.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.windows.swap(0, Ordering::Relaxed)
    }

    /// [`ReadAroundState::on_cache_try`], with whether the file fits in
    /// memory asked of `fits_in_memory` when an epoch closes.
    fn count(&self, cached: bool, fits_in_memory: impl FnOnce() -> bool) -> bool {
        if !matches!(self.setting, ReadAround::Adaptive(_)) {
            return !cached && self.window_on.load(Ordering::Relaxed);
        }
        let before = self
            .tally
            .fetch_add((1 << 32) | u64::from(cached), Ordering::Relaxed);
        let counted = (before >> 32) + 1;
        let on = self.window_on.load(Ordering::Relaxed);
        // An epoch with windows is longer. The second test closes an
        // epoch whose first end was passed by a reader that still saw the
        // old setting.
        if counted == u64::from(Governor::epoch_reads(on))
            || counted == u64::from(Governor::epoch_reads(true))
        {
            self.close_epoch(fits_in_memory);
        }
        !cached && self.window_on.load(Ordering::Relaxed)
    }

    fn close_epoch(&self, fits_in_memory: impl FnOnce() -> bool) {
        let mut governor = self.governor.lock().expect("read-around governor poisoned");
        let tally = self.tally.swap(0, Ordering::Relaxed);
        let (reads, hits) = ((tally >> 32) as u32, tally as u32);
        let was_on = self.window_on.load(Ordering::Relaxed);
        let on = governor.close_epoch(was_on, reads, hits, fits_in_memory);
        if on != was_on {
            log::debug!(
                "read-around {} for a file: {hits} of {reads} small reads found their pages cached",
                if on { "on" } else { "off" }
            );
        }
        self.window_on.store(on, Ordering::Relaxed);
    }

    /// Whether a miss brings in its window now (for tests and status).
    pub fn window_on(&self) -> bool {
        self.window_on.load(Ordering::Relaxed)
    }
}

/// Whether all of `backing` could stay in the page cache: its size is at
/// most the memory its cache could grow into
/// ([`available_memory::available_bytes`]: `MemAvailable`, or less under a
/// cgroup memory limit). When it cannot be told, no.
fn fits_in_memory(backing: &File) -> bool {
    let Ok(size) = backing.metadata().map(|m| m.len()) else {
        return false;
    };
    available_memory::available_bytes().is_some_and(|available| size <= available)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_the_aligned_cover_of_the_read() {
        for kib in [4, 8, 12, 128] {
            let window = Window::from_kib(kib).unwrap();
            let bytes = kib * 1024;
            for off in (0..3 * bytes).step_by(1021) {
                for len in [1, 100, 4096, 4128, bytes - 1]
                    .into_iter()
                    .filter(|&l| l < bytes)
                {
                    let (start, cover) = window.cover(off, len).unwrap();
                    assert_eq!(start % bytes, 0, "{kib} KiB: off {off} len {len}");
                    assert_eq!(cover % bytes, 0, "{kib} KiB: off {off} len {len}");
                    assert!(start <= off && off + len <= start + cover);
                    // Smallest such cover: one window less at either end
                    // would miss a byte of the read.
                    assert!(start + bytes > off, "{kib} KiB: off {off} len {len}");
                    assert!(
                        start + cover - bytes < off + len,
                        "{kib} KiB: off {off} len {len}"
                    );
                }
            }
        }
        let window = Window::from_kib(128).unwrap();
        assert_eq!(window.cover(4096, 0), None);
        assert_eq!(window.cover(4096, 128 * 1024), None);
        assert_eq!(window.cover(0, 1 << 20), None);
    }

    #[test]
    fn only_whole_pages_up_to_16_mib_are_windows() {
        assert_eq!(Window::from_kib(128).unwrap().kib(), 128);
        assert_eq!(Window::from_kib(16384).unwrap().kib(), 16384);
        for bad in [0, 1, 2, 6, 130, 16388, u64::MAX / 1024] {
            let err = Window::from_kib(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("not {bad} KiB")), "{err}");
        }
    }

    #[test]
    fn the_option_is_auto_off_or_a_window() {
        let default_window = Window::from_kib(Window::DEFAULT_KIB).unwrap();
        assert_eq!(
            ReadAround::parse("auto"),
            Ok(ReadAround::Adaptive(default_window))
        );
        assert_eq!(ReadAround::parse("off"), Ok(ReadAround::Off));
        assert_eq!(ReadAround::parse("0"), Ok(ReadAround::Off));
        assert_eq!(
            ReadAround::parse("64"),
            Ok(ReadAround::Always(Window::from_kib(64).unwrap()))
        );
        for bad in ["64k", "", "Auto", "-4", "on"] {
            let err = ReadAround::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(ReadAround::parse("6")
            .unwrap_err()
            .to_string()
            .contains("not 6 KiB"));
        assert_eq!(ReadAround::Off.describe(), None);
        assert!(ReadAround::parse("auto")
            .unwrap()
            .describe()
            .unwrap()
            .contains("128 KiB"));
    }

    #[test]
    fn fixed_settings_never_change_and_count_nothing() {
        let off = ReadAroundState::new(ReadAround::Off);
        assert_eq!(off.cover(0, 4096), None);
        let always = ReadAroundState::new(ReadAround::parse("64").unwrap());
        for _ in 0..3 * Governor::EPOCH_READS_ON {
            assert!(always.count(false, || false));
            assert!(!always.count(true, || false));
        }
        assert_eq!(always.tally.load(Ordering::Relaxed), 0);
        assert!(always.window_on());
    }

    #[test]
    fn a_small_file_fits_in_this_machines_memory() {
        assert!(fits_in_memory(
            &std::fs::File::open("/proc/self/exe").unwrap()
        ));
    }

    /// Uniform random reads of 4 KiB blocks of a format-2 disk of `pages`
    /// pages through `state`, which is told the file `fits` in memory,
    /// over a page cache of `capacity` pages that evicts the oldest: each
    /// miss brings in its page and the next, or its whole 128 KiB window.
    /// Returns the share of the reads that brought in a window.
    fn simulate(
        state: &ReadAroundState,
        pages: usize,
        capacity: usize,
        fits: bool,
        reads: u64,
    ) -> f64 {
        const WINDOW_PAGES: usize = 32;
        let mut cached = vec![false; pages];
        let mut order = std::collections::VecDeque::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut windows = 0;
        for _ in 0..reads {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let page = (rng % pages as u64) as usize;
            let hit = cached[page];
            let brought = if state.count(hit, || fits) {
                windows += 1;
                let start = page - page % WINDOW_PAGES;
                start..start + WINDOW_PAGES
            } else if hit {
                0..0
            } else {
                page..(page + 2).min(pages)
            };
            for p in brought {
                if !std::mem::replace(&mut cached[p], true) {
                    order.push_back(p);
                }
            }
            while order.len() > capacity {
                cached[order.pop_front().unwrap()] = false;
            }
        }
        windows as f64 / reads as f64
    }

    /// A 1 GiB disk that fits in memory: windows come on within the first
    /// few epochs and stay.
    #[test]
    fn on_a_disk_that_fits_in_memory_windows_come_on_and_stay() {
        let state = ReadAroundState::new(ReadAround::parse("auto").unwrap());
        simulate(&state, 262_144, usize::MAX, true, 40_000);
        assert!(state.window_on(), "not on after 40,000 reads");
        simulate(&state, 262_144, usize::MAX, true, 200_000);
        assert!(state.window_on(), "went off");
    }

    /// A disk five times the page cache: windows are never tried.
    #[test]
    fn on_a_disk_five_times_memory_windows_are_not_tried() {
        let state = ReadAroundState::new(ReadAround::parse("auto").unwrap());
        assert_eq!(
            simulate(&state, 1 << 20, (1 << 20) / 5, false, 400_000),
            0.0
        );
    }

    /// A disk the governor is told fits in memory, under a cache that
    /// keeps only a fifth of it (as when other files take the memory):
    /// once the hit ratio stops rising, windows go off and are tried again
    /// only rarely.
    #[test]
    fn when_windows_stop_paying_they_are_tried_rarely() {
        let state = ReadAroundState::new(ReadAround::parse("auto").unwrap());
        let share = simulate(&state, 1 << 20, (1 << 20) / 5, true, 1_000_000);
        assert!(share < 0.2, "windows on for {share} of the reads");
    }

    #[test]
    fn one_window_in_eight_is_a_control_whatever_the_stride() {
        for stride in [1u64, 2, 8, 64, 1000] {
            let controls = (0..80_000u64)
                .filter(|i| is_control_window(i * stride))
                .count();
            assert!(
                (9_000..11_000).contains(&controls),
                "stride {stride}: {controls} of 80000 are controls"
            );
        }
    }

    #[test]
    fn a_small_read_offers_its_window_unless_off_a_control_or_large() {
        let size = 10 * 128 * 1024 + 100;
        let window = |w: u64| w * 128 * 1024;
        let filled = (0..).find(|&w| !is_control_window(w)).unwrap();
        let control = (0..).find(|&w| is_control_window(w)).unwrap();
        let always = ReadAroundState::new(ReadAround::parse("128").unwrap());
        assert_eq!(
            always.fill_window(window(filled) + 5000, 4096, size),
            Some(window(filled)..window(filled + 1))
        );
        assert_eq!(always.fill_window(window(control) + 5000, 4096, size), None);
        assert_eq!(
            always.fill_window(window(filled), 128 * 1024, size),
            None,
            "not small"
        );
        assert_eq!(
            always.fill_window(window(10) + 10, 10, size),
            if is_control_window(10) {
                None
            } else {
                Some(window(10)..size)
            },
            "the last window ends with the file"
        );
        let off = ReadAroundState::new(ReadAround::Off);
        assert_eq!(off.fill_window(window(filled), 4096, size), None);
        let auto = ReadAroundState::new(ReadAround::AUTO);
        assert_eq!(
            auto.fill_window(window(filled), 4096, size),
            None,
            "windows are off"
        );
    }

    #[test]
    fn reads_through_the_kernel_cache_count_until_the_first_fill_then_only_in_controls() {
        let filled = (0..).find(|&w| !is_control_window(w)).unwrap() * 128 * 1024;
        let control = (0..).find(|&w| is_control_window(w)).unwrap() * 128 * 1024;
        let state = ReadAroundState::new(ReadAround::parse("128").unwrap());
        assert!(state.counts_cached_read_at(filled) && state.counts_cached_read_at(control));
        assert!(state.fill_window(filled, 4096, 1 << 30).is_some());
        assert!(!state.counts_cached_read_at(filled));
        assert!(state.counts_cached_read_at(control));
    }
}
