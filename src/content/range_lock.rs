//! Shared/exclusive locks on inclusive ranges of block numbers.
//!
//! Writers of disjoint block ranges proceed in parallel; a writer excludes
//! readers and writers of overlapping blocks, which makes read-modify-write
//! of a partial block safe and stops readers from seeing a torn block.
//! Ranges are few (one per in-flight request), so a list under one mutex is
//! simpler and faster than a tree.

use std::sync::{Condvar, Mutex};

#[derive(Debug, Clone, Copy)]
struct HeldRange {
    id: u64,
    first: u64,
    last: u64,
    exclusive: bool,
}

impl HeldRange {
    fn conflicts_with(&self, first: u64, last: u64, exclusive: bool) -> bool {
        let overlaps = self.first <= last && first <= self.last;
        overlaps && (self.exclusive || exclusive)
    }
}

#[derive(Default)]
struct State {
    held: Vec<HeldRange>,
    next_id: u64,
    /// Threads inside `released.wait`. A release wakes them only when
    /// there are any: `Condvar::notify_all` is a futex system call even
    /// with nobody waiting, and ranges are released on every request.
    waiting: usize,
}

/// A set of block-range locks for one file.
#[derive(Default)]
pub struct BlockRangeLock {
    /// Held ranges; guarded by the mutex, waited on through `released`.
    state: Mutex<State>,
    /// Signalled whenever a range is released.
    released: Condvar,
}

/// Releases its range on drop.
pub struct RangeGuard<'a> {
    lock: &'a BlockRangeLock,
    id: u64,
}

impl BlockRangeLock {
    /// Blocks until `[first, last]` can be held in the requested mode.
    pub fn lock(&self, first: u64, last: u64, exclusive: bool) -> RangeGuard<'_> {
        debug_assert!(first <= last);
        let mut state = self.state.lock().expect("range lock poisoned");
        while state
            .held
            .iter()
            .any(|h| h.conflicts_with(first, last, exclusive))
        {
            state.waiting += 1;
            state = self.released.wait(state).expect("range lock poisoned");
            state.waiting -= 1;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.held.push(HeldRange {
            id,
            first,
            last,
            exclusive,
        });
        RangeGuard { lock: self, id }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.lock.state.lock().expect("range lock poisoned");
        state.held.retain(|h| h.id != self.id);
        // A waiter counted here is already inside `wait` (it counted
        // itself under the mutex, and `wait` releases the mutex
        // atomically), so the notification below cannot be missed.
        let anyone_waiting = state.waiting > 0;
        drop(state);
        if anyone_waiting {
            self.lock.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn disjoint_exclusive_ranges_do_not_block() {
        let lock = BlockRangeLock::default();
        let _a = lock.lock(0, 3, true);
        let _b = lock.lock(4, 9, true);
        let _c = lock.lock(10, 10, false);
    }

    #[test]
    fn shared_ranges_overlap_freely() {
        let lock = BlockRangeLock::default();
        let _a = lock.lock(0, 5, false);
        let _b = lock.lock(2, 8, false);
    }

    #[test]
    fn overlapping_writer_waits_for_release() {
        let lock = Arc::new(BlockRangeLock::default());
        let acquired = Arc::new(AtomicBool::new(false));
        let guard = lock.lock(5, 5, false);
        let (l2, a2) = (lock.clone(), acquired.clone());
        let waiter = std::thread::spawn(move || {
            let _g = l2.lock(0, 10, true);
            a2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !acquired.load(Ordering::SeqCst),
            "writer got in while a reader held block 5"
        );
        drop(guard);
        waiter.join().unwrap();
        assert!(acquired.load(Ordering::SeqCst));
    }

    /// Threads fight over overlapping exclusive ranges: no two are ever
    /// inside the same block at once, and no release is lost (a lost
    /// wake-up would leave a thread waiting forever, caught by the
    /// deadline).
    #[test]
    fn contended_ranges_exclude_each_other_and_never_lose_a_wakeup() {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 2000;
        let lock = Arc::new(BlockRangeLock::default());
        let inside: Arc<Vec<AtomicBool>> =
            Arc::new((0..8).map(|_| AtomicBool::new(false)).collect());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..THREADS {
            let (lock, inside, done_tx) = (lock.clone(), inside.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let first = (t + round) % 6;
                    let last = first + round % 3;
                    let _guard = lock.lock(first, last, true);
                    for block in first..=last {
                        assert!(
                            !inside[block as usize].swap(true, Ordering::SeqCst),
                            "block {block} held twice"
                        );
                    }
                    std::thread::yield_now();
                    for block in first..=last {
                        inside[block as usize].store(false, Ordering::SeqCst);
                    }
                }
                done_tx.send(()).unwrap();
            });
        }
        for _ in 0..THREADS {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a thread never got its range: lost wake-up");
        }
    }
}
