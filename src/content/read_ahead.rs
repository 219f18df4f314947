//! Starting the backing reads ahead of a file that is read from start to
//! end, so that the disk works while the previous request is decrypted.
//!
//! Why: a cold sequential read through the mount is a chain of requests of
//! up to 1 MiB, each one read from the backing file, then decrypted, then
//! copied to the kernel. What keeps the disk busy meanwhile is the backing
//! file system's readahead, and it reads only as far ahead as the backing
//! device's `read_ahead_kb` allows: 128 KiB by default, less than one
//! request. So between two requests the disk idles while the daemon
//! decrypts, and a cold 1 GiB sequential read through the mount measured
//! about gocryptfs's speed. Starting the reads of the next few MiB as soon
//! as a stream is seen keeps the disk busy: 1.28x the throughput under a
//! 128 KiB device readahead. Under a device that reads 8 MiB ahead itself
//! it is the other way round (0.71x: the advice's reads replace the
//! kernel's asynchronous ones), so by default it is used only where the
//! device reads ahead less ([`ReadAhead::resolve`]). docs/PERFORMANCE.md
//! ("Read-ahead") has the numbers.
//!
//! A file's [`ReadAheadState`] sees only its large reads (at least
//! [`MIN_READ_LEN`]): those are what the kernel sends for a sequential
//! reader through the page cache, or what a guest's large I/O becomes.
//! Small reads are left to [`super::read_around`] and cost nothing here.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Reads shorter than this neither start nor continue a stream: random
/// 4 KiB I/O never touches the lock below.
pub const MIN_READ_LEN: u64 = 64 * 1024;

/// How many reads in a row must continue a stream before reading ahead
/// starts: one large read that happens to follow another is not a stream.
const RUN_TO_START: u32 = 2;

/// The mount's `read_ahead` option: how far ahead of a sequential reader
/// the backing reads are started. Immutable once a mount starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAhead {
    /// Only the backing file system's own readahead (`read_ahead=off`/`0`).
    Off,
    /// Keep the reads of this many bytes past a stream's last read started
    /// (`read_ahead=MIB`).
    Bytes(u64),
    /// [`ReadAhead::AUTO_DISTANCE`] when the backing device's own readahead
    /// is shorter, off when it is not (`read_ahead=auto`, the default):
    /// see [`ReadAhead::resolve`].
    Auto,
}

/// Why a `read_ahead` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadAheadError {
    /// A distance larger than [`ReadAhead::MAX_MIB`].
    #[error("read-ahead is a whole number of MiB up to {max}, not {mib} MiB", max = ReadAhead::MAX_MIB)]
    Distance {
        /// The distance asked for.
        mib: u64,
    },
    /// Neither a keyword nor a number.
    #[error("expected auto, off, or a distance in MiB (up to {max}), not {value:?}", max = ReadAhead::MAX_MIB)]
    NotASetting {
        /// The value given.
        value: String,
    },
}

impl ReadAhead {
    /// 64 MiB: past that the pages started would wait long enough to be
    /// evicted before they are read on a busy host.
    pub const MAX_MIB: u64 = 64;
    /// The distance `auto` reads ahead, when it does.
    pub const AUTO_DISTANCE: u64 = 4 << 20;
    /// What a mount gets without the option (docs/PERFORMANCE.md,
    /// "Read-ahead", gives the measurements behind the choice).
    pub const DEFAULT: Self = Self::Auto;

    /// Parses the option's value: `auto`, `off` or `0`, or a distance in
    /// MiB.
    pub fn parse(value: &str) -> Result<Self, ReadAheadError> {
        match value {
            "auto" => return Ok(Self::Auto),
            "off" | "0" => return Ok(Self::Off),
            _ => {}
        }
        let mib: u64 = value.parse().map_err(|_| ReadAheadError::NotASetting {
            value: value.to_owned(),
        })?;
        if mib > Self::MAX_MIB {
            return Err(ReadAheadError::Distance { mib });
        }
        Ok(Self::Bytes(mib << 20))
    }

    /// The setting for a datastore whose backing device reads
    /// `device_readahead` bytes ahead by itself (None: unknown): `auto`
    /// becomes [`ReadAhead::AUTO_DISTANCE`] if that is further, and off
    /// otherwise; the others stay as they are.
    ///
    /// Why: the backing file system's readahead, when long enough, already
    /// keeps the disk ahead of the daemon, and better than advice can (its
    /// reads are asynchronous, and marked so that it knows when to read
    /// more). Reading ahead on top of a device that reads 8 MiB ahead
    /// measured 0.71x the throughput; under a device that reads 128 KiB
    /// ahead (the kernel's default), 1.28x (docs/PERFORMANCE.md,
    /// "Read-ahead"). A device that cannot be found is taken to have the
    /// kernel's default.
    pub fn resolve(self, device_readahead: Option<u64>) -> Self {
        match self {
            Self::Auto if device_readahead.is_some_and(|ra| ra >= Self::AUTO_DISTANCE) => Self::Off,
            Self::Auto => Self::Bytes(Self::AUTO_DISTANCE),
            fixed => fixed,
        }
    }

    /// The distance a file reads ahead, if any (`auto` not yet resolved
    /// counts as its distance).
    fn distance(self) -> Option<u64> {
        match self {
            Self::Off => None,
            Self::Bytes(bytes) => Some(bytes),
            Self::Auto => Some(Self::AUTO_DISTANCE),
        }
    }

    /// One line for the mount's log.
    pub fn describe(self) -> String {
        match self.distance() {
            None => "left to the backing file system".to_owned(),
            Some(bytes) => format!(
                "sequential reads of an encrypted file start the backing reads of the next {} MiB",
                bytes >> 20
            ),
        }
    }
}

/// Where one file's stream of large reads stands. Pure: the decisions are
/// tested without a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stream {
    /// Plaintext offset just past the last large read; `u64::MAX` before
    /// the first, which so never continues anything.
    expected: u64,
    /// Large reads in a row that continued the stream.
    run: u32,
    /// Plaintext offset up to which backing reads have been started.
    started_until: u64,
}

impl Stream {
    fn new() -> Self {
        Self {
            expected: u64::MAX,
            run: 0,
            started_until: 0,
        }
    }

    /// Records a large read of plaintext `[off, end)` of a file of `size`
    /// bytes, `ahead` bytes of read-ahead; the plaintext range whose
    /// backing reads to start now, if any.
    ///
    /// A read continues the stream when it starts within `ahead` of where
    /// the last one ended, either side: worker threads take the kernel's
    /// requests in parallel, so they arrive a little out of order, and the
    /// kernel may skip what its page cache already holds. A random large
    /// read lands that close to the last with odds of `2 * ahead / size`,
    /// and [`RUN_TO_START`] reads in a row must. (Through the mount's page
    /// cache, the kernel's own readahead now and then sends a random read
    /// with its neighbour: random 1 MiB reads of a 1 GiB file measured
    /// about 5 % of their bytes started ahead.)
    ///
    /// Ranges are started in steps of at least a quarter of `ahead`, so a
    /// reader of 128 KiB requests does not cost a system call each.
    fn on_read(&mut self, off: u64, end: u64, size: u64, ahead: u64) -> Option<Range<u64>> {
        let continues = off.abs_diff(self.expected) <= ahead;
        self.expected = end;
        self.run = if continues {
            self.run.saturating_add(1)
        } else {
            0
        };
        if self.run < RUN_TO_START {
            return None;
        }
        let target = end.saturating_add(ahead).min(size);
        // Started ranges behind the read, or further ahead than a read
        // taken out of order explains (an earlier pass over a later part),
        // are stale.
        let fresh = end..=end.saturating_add(2 * ahead);
        let from = if fresh.contains(&self.started_until) {
            self.started_until
        } else {
            end
        };
        if target <= from || (target - from < ahead / 4 && target < size) {
            return None;
        }
        self.started_until = target;
        Some(from..target)
    }
}

/// The read-ahead of one open encrypted file: the mount's setting and the
/// file's stream. Shared by all readers of the file.
#[derive(Debug)]
pub struct ReadAheadState {
    /// Immutable.
    setting: ReadAhead,
    /// Locked once per large read, never across I/O.
    stream: Mutex<Stream>,
    /// Backing bytes whose reads were started since the last
    /// [`ReadAheadState::take_started_bytes`].
    started_bytes: AtomicU64,
}

impl ReadAheadState {
    /// The state of a newly opened file: no stream yet.
    pub fn new(setting: ReadAhead) -> Self {
        Self {
            setting,
            stream: Mutex::new(Stream::new()),
            started_bytes: AtomicU64::new(0),
        }
    }

    /// Records a read of plaintext `[off, end)` of a file of `size` bytes;
    /// the plaintext range whose backing reads to start now, if any.
    pub fn on_read(&self, off: u64, end: u64, size: u64) -> Option<Range<u64>> {
        let ahead = self.setting.distance()?;
        if end - off < MIN_READ_LEN {
            return None;
        }
        let mut stream = self.stream.lock().expect("read-ahead lock poisoned");
        stream.on_read(off, end, size, ahead)
    }

    /// Counts `bytes` of backing file whose reads were started.
    pub fn count_started(&self, bytes: u64) {
        self.started_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Backing bytes whose reads were started since the last call (for the
    /// mount's counters). A load, and a swap only when there are some.
    pub fn take_started_bytes(&self) -> u64 {
        if self.started_bytes.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.started_bytes.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const AHEAD: u64 = 4 * MIB;
    const SIZE: u64 = 1024 * MIB;

    /// Feeds `reads` (MiB offsets of 1 MiB reads) to a fresh stream; the
    /// ranges started, in MiB.
    fn started(reads: &[u64]) -> Vec<Option<Range<u64>>> {
        let mut stream = Stream::new();
        reads
            .iter()
            .map(|&r| {
                stream
                    .on_read(r * MIB, (r + 1) * MIB, SIZE, AHEAD)
                    .map(|range| range.start / MIB..range.end / MIB)
            })
            .collect()
    }

    #[test]
    fn a_sequential_reader_keeps_the_next_mibs_started() {
        assert_eq!(
            started(&[0, 1, 2, 3, 4]),
            vec![None, None, Some(3..7), Some(7..8), Some(8..9)]
        );
    }

    #[test]
    fn requests_taken_out_of_order_continue_the_stream() {
        assert_eq!(
            started(&[0, 2, 1, 3, 5, 4]),
            vec![None, None, Some(2..6), Some(6..8), Some(8..10), None]
        );
    }

    #[test]
    fn random_large_reads_start_nothing() {
        let reads = [500, 17, 900, 301, 44, 700, 12, 650];
        assert!(started(&reads).iter().all(Option::is_none));
        // Two that happen to be close are not yet a stream.
        assert!(started(&[500, 502, 17]).iter().all(Option::is_none));
    }

    #[test]
    fn a_new_pass_from_the_start_starts_over() {
        let mut reads: Vec<u64> = (0..10).collect();
        reads.extend(0..4);
        let ranges = started(&reads);
        assert_eq!(ranges[9], Some(13..14));
        // The jump back breaks the run; after two reads it continues from
        // the new position, not from the old pass's started range.
        assert_eq!(&ranges[10..], &[None, None, Some(3..7), Some(7..8)]);
    }

    #[test]
    fn nothing_is_started_past_the_end_of_the_file() {
        let mut stream = Stream::new();
        let size = 5 * MIB + 4096;
        let ranges: Vec<_> = (0..6)
            .map(|r| stream.on_read(r * MIB, ((r + 1) * MIB).min(size), size, AHEAD))
            .collect();
        assert_eq!(
            ranges,
            vec![None, None, Some(3 * MIB..size), None, None, None]
        );
    }

    #[test]
    fn small_steps_are_batched() {
        // 128 KiB requests: a range is started every 1 MiB (a quarter of
        // the distance), not on every request.
        let mut stream = Stream::new();
        let step = 128 * 1024;
        let starts = (0..64)
            .filter(|&r| {
                stream
                    .on_read(r * step, (r + 1) * step, SIZE, AHEAD)
                    .is_some()
            })
            .count();
        assert!((6..=9).contains(&starts), "{starts} ranges started");
    }

    #[test]
    fn small_reads_and_off_never_take_part() {
        let state = ReadAheadState::new(ReadAhead::DEFAULT);
        for r in 0..8 {
            assert_eq!(state.on_read(r * 4096, (r + 1) * 4096, SIZE), None);
        }
        let off = ReadAheadState::new(ReadAhead::Off);
        for r in 0..8 {
            assert_eq!(off.on_read(r * MIB, (r + 1) * MIB, SIZE), None);
        }
        let on = ReadAheadState::new(ReadAhead::DEFAULT);
        assert!((0..8).any(|r| on.on_read(r * MIB, (r + 1) * MIB, SIZE).is_some()));
    }

    #[test]
    fn option_values() {
        assert_eq!(ReadAhead::parse("off"), Ok(ReadAhead::Off));
        assert_eq!(ReadAhead::parse("0"), Ok(ReadAhead::Off));
        assert_eq!(ReadAhead::parse("8"), Ok(ReadAhead::Bytes(8 * MIB)));
        assert_eq!(
            ReadAhead::parse("65"),
            Err(ReadAheadError::Distance { mib: 65 })
        );
        assert!(matches!(
            ReadAhead::parse("4m"),
            Err(ReadAheadError::NotASetting { .. })
        ));
        assert_eq!(ReadAhead::parse("auto"), Ok(ReadAhead::Auto));
        assert!(ReadAhead::Bytes(4 * MIB).describe().contains("4 MiB"));
    }

    #[test]
    fn auto_reads_ahead_only_past_what_the_device_does() {
        let auto = ReadAhead::Auto;
        assert_eq!(auto.resolve(Some(128 * 1024)), ReadAhead::Bytes(4 * MIB));
        assert_eq!(auto.resolve(None), ReadAhead::Bytes(4 * MIB));
        assert_eq!(auto.resolve(Some(4 * MIB)), ReadAhead::Off);
        assert_eq!(auto.resolve(Some(8 * MIB)), ReadAhead::Off);
        // Asked for explicitly: kept whatever the device does.
        for fixed in [ReadAhead::Off, ReadAhead::Bytes(16 * MIB)] {
            assert_eq!(fixed.resolve(Some(128 * 1024)), fixed);
            assert_eq!(fixed.resolve(Some(8 * MIB)), fixed);
        }
    }
}
