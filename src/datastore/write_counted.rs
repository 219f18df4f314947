//! A read-write lock that counts the writes made through it.
//!
//! Why: the root `.control` and `.control.json` show every VM home, and
//! building and rendering ten thousand statuses for each read was most of
//! the read. Their renderer keeps each VM home's lines until its status
//! changes (see [`StatusStamp`](super::vm_home::StatusStamp)), and learns
//! of a change from these counts: every state a status shows is behind
//! one of these locks (or is read into the stamp itself), so no change can
//! be made without a count moving. A flag set by hand at each change would
//! be forgotten by the next piece of code that changes one.
//!
//! The count is raised when a write guard is dropped, while the lock is
//! still held: a reader that sees the written value (it takes the lock
//! after the write) sees the raised count whenever it reads the count
//! afterwards. A reader that reads the count first and the value second
//! may pair an old count with a newer value, which only makes the next
//! comparison fail and the lines be rendered again; never the reverse.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A [`RwLock`] whose writes are counted.
#[derive(Default)]
pub struct WriteCounted<T> {
    lock: RwLock<T>,
    writes: AtomicU64,
}

impl<T> WriteCounted<T> {
    /// A lock holding `value`, no write counted yet.
    pub fn new(value: T) -> Self {
        Self {
            lock: RwLock::new(value),
            writes: AtomicU64::new(0),
        }
    }

    /// Locks for reading. A poisoned lock panics, as every user of these
    /// locks did with a plain one: a panic mid-write left its state
    /// unknown.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.lock.read().expect("lock poisoned by an earlier panic")
    }

    /// Locks for writing; the write is counted when the guard is dropped,
    /// whether or not it changed anything.
    pub fn write(&self) -> CountedWriteGuard<'_, T> {
        CountedWriteGuard {
            guard: self
                .lock
                .write()
                .expect("lock poisoned by an earlier panic"),
            writes: &self.writes,
        }
    }

    /// Writes finished so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
}

/// The write guard of a [`WriteCounted`].
pub struct CountedWriteGuard<'a, T> {
    /// Dropped after [`Drop::drop`] has counted the write.
    guard: RwLockWriteGuard<'a, T>,
    writes: &'a AtomicU64,
}

impl<T> Deref for CountedWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for CountedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for CountedWriteGuard<'_, T> {
    fn drop(&mut self) {
        // Still locked here: the lock is released when `guard` drops,
        // after this.
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_is_counted_once_its_guard_is_gone_and_reads_are_not() {
        let lock = WriteCounted::new(1);
        assert_eq!(*lock.read(), 1);
        assert_eq!(lock.writes(), 0);
        {
            let mut guard = lock.write();
            *guard = 2;
            assert_eq!(lock.writes(), 0, "counted when the write is over");
        }
        assert_eq!((*lock.read(), lock.writes()), (2, 1));
        // A write that changes nothing counts too: the counter says that
        // something may have changed, never that nothing did.
        drop(lock.write());
        assert_eq!(lock.writes(), 2);
    }

    /// A reader that reads the count, then the value, never holds a count
    /// newer than the value it read: the property the status lines rely
    /// on.
    #[test]
    fn a_count_read_before_the_value_is_never_newer_than_it() {
        let lock = WriteCounted::new(0u64);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 1..=20_000 {
                    *lock.write() = i;
                }
            });
            for _ in 0..20_000 {
                let count = lock.writes();
                let value = *lock.read();
                assert!(count <= value, "count {count} with value {value}");
            }
        });
    }
}
