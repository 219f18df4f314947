//! Live counters of one VM home in one mount, for the `.stats` file.
//!
//! Plain relaxed atomics: each event is one uncontended `fetch_add` on the
//! I/O path, and a reader needs no consistency between counters (a scrape
//! that sees a read counted before its bytes is harmless).

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters. Every field is updated with relaxed atomics; no lock.
#[derive(Debug, Default)]
pub struct VmCounters {
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
    auth_failures: AtomicU64,
    key_cache_hits: AtomicU64,
    key_cache_misses: AtomicU64,
    rekeys: AtomicU64,
    read_around_windows: AtomicU64,
    read_ahead_bytes: AtomicU64,
    cache_fill_bytes: AtomicU64,
    scrub_bytes: AtomicU64,
    scrubs: AtomicU64,
    scrub_damaged_files: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValues {
    /// Reads of encrypted files.
    pub read_ops: u64,
    /// Plaintext bytes returned by those reads.
    pub read_bytes: u64,
    /// Writes to encrypted files.
    pub write_ops: u64,
    /// Plaintext bytes written.
    pub write_bytes: u64,
    /// Blocks or file headers that failed authentication, and DEKs whose
    /// unwrap failed authentication.
    pub auth_failures: u64,
    /// Key lookups served from the mount's key cache.
    pub key_cache_hits: u64,
    /// Key lookups that had to unwrap through the provider.
    pub key_cache_misses: u64,
    /// Shallow re-keys done through this mount.
    pub rekeys: u64,
    /// Windows of backing files brought in around cold small reads
    /// (`content::read_around`).
    pub read_around_windows: u64,
    /// Backing bytes whose reads were started ahead of sequential reads
    /// (`content::read_ahead`).
    pub read_ahead_bytes: u64,
    /// Plaintext bytes copied into the kernel's page cache around reads
    /// (`frontend::cache_fill`).
    pub cache_fill_bytes: u64,
    /// Plaintext bytes a scrub read and checked (holes excluded).
    pub scrub_bytes: u64,
    /// Scrubs finished.
    pub scrubs: u64,
    /// Damaged files scrubs found (a file found by two scrubs counts
    /// twice).
    pub scrub_damaged_files: u64,
}

impl VmCounters {
    /// One read of `bytes` plaintext bytes.
    pub fn read(&self, bytes: usize) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One write of `bytes` plaintext bytes.
    pub fn write(&self, bytes: usize) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Something failed authentication.
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A key lookup hit (`true`) or missed the cache.
    pub fn key_lookup(&self, hit: bool) {
        let counter = if hit {
            &self.key_cache_hits
        } else {
            &self.key_cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A shallow re-key completed.
    pub fn rekeyed(&self) {
        self.rekeys.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads brought in `windows` read-around windows.
    pub fn read_around(&self, windows: u64) {
        add_unless_zero(&self.read_around_windows, windows);
    }

    /// Reads started the reads of `bytes` backing bytes ahead of them.
    pub fn read_ahead(&self, bytes: u64) {
        add_unless_zero(&self.read_ahead_bytes, bytes);
    }

    /// `bytes` plaintext bytes were copied into the kernel's page cache.
    pub fn cache_fill(&self, bytes: u64) {
        add_unless_zero(&self.cache_fill_bytes, bytes);
    }

    /// A scrub read and checked `bytes` more plaintext bytes.
    pub fn scrub_read(&self, bytes: u64) {
        add_unless_zero(&self.scrub_bytes, bytes);
    }

    /// A scrub finished, finding `damaged_files` damaged files.
    pub fn scrubbed(&self, damaged_files: u64) {
        self.scrubs.fetch_add(1, Ordering::Relaxed);
        add_unless_zero(&self.scrub_damaged_files, damaged_files);
    }

    /// The current values.
    pub fn values(&self) -> CounterValues {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterValues {
            read_ops: get(&self.read_ops),
            read_bytes: get(&self.read_bytes),
            write_ops: get(&self.write_ops),
            write_bytes: get(&self.write_bytes),
            auth_failures: get(&self.auth_failures),
            key_cache_hits: get(&self.key_cache_hits),
            key_cache_misses: get(&self.key_cache_misses),
            rekeys: get(&self.rekeys),
            read_around_windows: get(&self.read_around_windows),
            read_ahead_bytes: get(&self.read_ahead_bytes),
            cache_fill_bytes: get(&self.cache_fill_bytes),
            scrub_bytes: get(&self.scrub_bytes),
            scrubs: get(&self.scrubs),
            scrub_damaged_files: get(&self.scrub_damaged_files),
        }
    }
}

impl std::ops::AddAssign for CounterValues {
    fn add_assign(&mut self, other: Self) {
        self.read_ops += other.read_ops;
        self.read_bytes += other.read_bytes;
        self.write_ops += other.write_ops;
        self.write_bytes += other.write_bytes;
        self.auth_failures += other.auth_failures;
        self.key_cache_hits += other.key_cache_hits;
        self.key_cache_misses += other.key_cache_misses;
        self.rekeys += other.rekeys;
        self.read_around_windows += other.read_around_windows;
        self.read_ahead_bytes += other.read_ahead_bytes;
        self.cache_fill_bytes += other.cache_fill_bytes;
        self.scrub_bytes += other.scrub_bytes;
        self.scrubs += other.scrubs;
        self.scrub_damaged_files += other.scrub_damaged_files;
    }
}

/// Adds `n` to `counter`, without touching its cache line when there is
/// nothing to add (most reads bring in nothing extra).
fn add_unless_zero(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sums() {
        let c = VmCounters::default();
        c.read(10);
        c.read(5);
        c.write(7);
        c.auth_failure();
        c.key_lookup(true);
        c.key_lookup(false);
        c.key_lookup(true);
        c.rekeyed();
        let v = c.values();
        assert_eq!((v.read_ops, v.read_bytes), (2, 15));
        assert_eq!((v.write_ops, v.write_bytes), (1, 7));
        assert_eq!((v.key_cache_hits, v.key_cache_misses), (2, 1));
        assert_eq!((v.auth_failures, v.rekeys), (1, 1));
        let mut total = CounterValues::default();
        total += v;
        total += v;
        assert_eq!(total.read_bytes, 30);
    }
}
