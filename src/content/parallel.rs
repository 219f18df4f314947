//! Running the per-block crypto of one request on every core.
//!
//! A 1 MiB request is 256 independent blocks. One writer (a VM's guest
//! flushing sequentially, `qemu-img convert`) sends one request at a time,
//! so sealing them on the calling thread alone leaves the other cores idle
//! while the writer waits. Blocks of a large request are therefore shared
//! between the calling thread and a small pool with one thread per further
//! core. The cores are shared out between the large requests in flight:
//! when the kernel sends several at once (readahead, several writers),
//! each FUSE thread already keeps a core busy, and splitting further would
//! only make the calling threads wait for pool threads that are busy with
//! other requests. Small requests (most random guest I/O) always stay on
//! the calling thread, where handing work to another thread would cost
//! more than it saves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Requests of fewer blocks than this run on the calling thread. 64 blocks
/// is 256 KiB: about 40 µs of AES-GCM with AWS-LC (0.6 µs per block), well
/// above the cost of waking a pool thread. It was 16 blocks when blocks
/// took 1.2–1.8 µs (OpenSSL); with AWS-LC, splitting qemu-img's 64 KiB
/// writes (10 µs of crypto) cost more than it saved: `qemu-img convert` of
/// 512 MiB onto the mount ran at a median 170 MiB/s with 64 against 157
/// with 16, faster in 6 of 7 alternating rounds.
const PARALLEL_MIN_BLOCKS: usize = 64;

/// The crypto helpers: one thread per core besides the calling one,
/// created on first use.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores.saturating_sub(1).max(1))
            .thread_name(|i| format!("vmcryptfs-crypto-{i}"))
            .build()
            .expect("cannot start the block crypto threads")
    })
}

/// Large batches being worked on right now, by any thread.
static LARGE_BATCHES_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one large batch as in flight until dropped.
struct InFlight;

impl InFlight {
    /// Registers a batch; returns the guard and how many batches are in
    /// flight including this one.
    fn enter() -> (Self, usize) {
        (
            Self,
            LARGE_BATCHES_IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1,
        )
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        LARGE_BATCHES_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many shares a batch is cut into: the cores divided between the
/// large batches in flight, at least one.
fn share_count(cores: usize, batches_in_flight: usize) -> usize {
    (cores / batches_in_flight.max(1)).max(1)
}

/// Calls `work` on every item, stopping at (and returning) an error; which
/// error is returned when several items fail is unspecified. Items are
/// taken lazily from an iterator.
///
/// With enough items, the items are cut into shares (see
/// [`share_count`]): the pool takes all shares but one, and the calling
/// thread works through the first share itself instead of sleeping until
/// the pool is done (which `rayon::ThreadPool::install` would do).
pub fn try_for_each_block<T, E>(
    items: impl IntoIterator<Item = T>,
    work: impl Fn(T) -> Result<(), E> + Sync,
) -> Result<(), E>
where
    T: Send,
    E: Send,
{
    // Small batches (judged by the iterator's lower size bound, exact for
    // the block iterators of the content layer) are never collected: no
    // allocation on the path of a 4 KiB request.
    let mut items = items.into_iter();
    if items.size_hint().0 < PARALLEL_MIN_BLOCKS {
        return items.try_for_each(work);
    }
    let mut items: Vec<T> = items.collect();
    let pool = pool();
    let (_in_flight, batches) = InFlight::enter();
    let share_total = share_count(pool.current_num_threads() + 1, batches);
    if share_total == 1 {
        return items.into_iter().try_for_each(work);
    }
    let share = items.len().div_ceil(share_total);
    let mut shares = Vec::new();
    while items.len() > share {
        shares.push(items.split_off(items.len() - share));
    }
    let mut results: Vec<Result<(), E>> = shares.iter().map(|_| Ok(())).collect();
    let mut own = Ok(());
    pool.in_place_scope(|scope| {
        for (share, result) in shares.into_iter().zip(results.iter_mut()) {
            let work = &work;
            scope.spawn(move |_| *result = share.into_iter().try_for_each(work));
        }
        own = items.into_iter().try_for_each(&work);
    });
    own?;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn visits_every_item_small_and_large() {
        for n in [0, 1, PARALLEL_MIN_BLOCKS - 1, PARALLEL_MIN_BLOCKS, 1000] {
            let mut slots = vec![0u32; n];
            let items: Vec<(usize, &mut u32)> = slots.iter_mut().enumerate().collect();
            try_for_each_block(items, |(i, slot)| {
                *slot = i as u32 + 1;
                Ok::<_, ()>(())
            })
            .unwrap();
            assert!(slots.iter().enumerate().all(|(i, &v)| v == i as u32 + 1));
        }
        // An iterator that cannot tell its length runs on this thread, and
        // still visits everything.
        let visited = AtomicUsize::new(0);
        try_for_each_block((0..1000).filter(|i| i % 2 == 0), |_| {
            visited.fetch_add(1, Ordering::Relaxed);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(visited.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn cores_are_shared_between_batches_in_flight() {
        assert_eq!(share_count(2, 1), 2);
        assert_eq!(share_count(2, 2), 1);
        assert_eq!(share_count(2, 5), 1);
        assert_eq!(share_count(8, 3), 2);
        assert_eq!(share_count(1, 1), 1);
        assert_eq!(share_count(4, 0), 4);
    }

    #[test]
    fn an_error_stops_the_batch_and_is_returned() {
        let visited = AtomicUsize::new(0);
        let result = try_for_each_block(0..1000, |i| {
            visited.fetch_add(1, Ordering::Relaxed);
            if i == 500 {
                Err(i)
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err(500));
        assert!(visited.load(Ordering::Relaxed) >= 1);
    }
}
