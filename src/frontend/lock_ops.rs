//! Byte-range locks (POSIX `fcntl`/`lockf` and OFD), forwarded to the
//! backing files.
//!
//! The kernel sends every lock request of this mount here (we negotiate
//! FUSE_POSIX_LOCKS). Each lock owner (a process for POSIX locks, an open
//! file description for OFD locks) gets its own open file description of
//! the backing file, and the lock is taken there as an OFD lock. So owners
//! conflict with each other exactly as on a local file system, and because
//! the locks live on the backing file they also hold against other mounts
//! of the same datastore (another host on shared storage, with a file
//! system that supports OFD locks there, such as NFSv4 or CephFS). Ranges
//! are the plaintext offsets, used as they are on the backing file: every
//! participant goes through vmcryptfs, so they agree. `flock(2)` is left to
//! the kernel's local emulation (fuser cannot tell flock from POSIX
//! requests), so flock locks hold within one mount only, and wait, and are
//! interrupted, as on any local file system.
//!
//! POSIX locks are dropped when their owner closes any descriptor of the
//! file (FUSE FLUSH, synchronous with close). An OFD lock is dropped when
//! the kernel reports the last close of its open file description (FUSE
//! RELEASE), which arrives asynchronously, shortly after close(2) returns.
//!
//! **Blocking requests never sleep in the kernel.** A process waiting for a
//! lock on a FUSE file waits for our reply, and once the request has reached
//! us nothing but that reply (or tearing the connection down) frees it: not
//! even SIGKILL. fuser 0.18 answers FUSE_INTERRUPT with ENOSYS itself (so
//! the kernel stops sending interrupts for the rest of the connection), so
//! we cannot learn of a signal from the kernel. Hence:
//! * a blocking request is queued and served by one `lock-wait` thread per
//!   mount (bounded, whatever the number of waiters), which retries it with
//!   a non-blocking F_OFD_SETLK: at once when a lock of the same file is
//!   released on this mount, otherwise after a back-off of 1 ms doubling to
//!   [`MAX_BACKOFF`] (a release on another mount is only seen by polling);
//! * before each retry it reads the waiting thread's pending signals from
//!   `/proc/<tid>/status` (the FUSE request names the thread): a pending,
//!   unblocked signal, or a thread that is gone, ends the wait with EINTR.
//!   The kernel turns that into a restart if the signal's handler asked for
//!   SA_RESTART, into EINTR otherwise, and a SIGKILLed process dies. A
//!   waiter whose thread is outside our pid namespace (pid 0) can only be
//!   freed by the lock or by unmounting.
//!
//! **Deadlocks get EDEADLK**, as POSIX locks do on ext4. We record the
//! ranges each owner holds, so a waiting owner's blockers on this mount are
//! known; a request that would wait for an owner that (through a chain of
//! waiting owners) waits for the requester fails with EDEADLK. The check is
//! made before queueing and again before every retry, under the same mutex
//! as every lock change, so of a cycle's owners exactly the one that closes
//! it gets the error. Unlike the kernel we cannot tell an OFD owner from a
//! POSIX one (the FUSE request does not say), so a cycle of OFD waiters
//! also gets EDEADLK where ext4 would leave it waiting until a signal.
//! Holders on another mount are unknown to us: a cycle through them is not
//! detected (nor is one over NFS), and its waiters wait until a signal.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fuser::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use super::{FsResult, VmCryptFs};

/// The longest a queued lock request goes without being retried and its
/// thread's signals checked: bounds how long a signalled waiter stays, and
/// how late a lock released on another mount is taken.
const MAX_BACKOFF: Duration = Duration::from_millis(32);

/// The first back-off of a queued request.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

/// A byte range with inclusive ends, as FUSE gives them (an end at
/// `i64::MAX` means "to end of file"), and a lock type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
    typ: i32,
}

impl Range {
    /// Whether a lock `held` by another owner keeps this request waiting.
    fn conflicts_with(&self, held: &Range) -> bool {
        let overlap = self.start <= held.end && held.start <= self.end;
        overlap && (self.typ == libc::F_WRLCK || held.typ == libc::F_WRLCK)
    }

    fn to_flock(self) -> libc::flock {
        // An end at the largest offset means "to EOF", which struct flock
        // spells as length 0.
        let len = if self.end >= i64::MAX as u64 {
            0
        } else {
            (self.end - self.start + 1) as i64
        };
        libc::flock {
            l_type: self.typ as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: self.start as i64,
            l_len: len,
            l_pid: 0,
        }
    }
}

/// Applies a granted request (a lock or an unlock) to the ranges an owner
/// holds, as the kernel does: the request's range replaces whatever the
/// owner held there.
fn apply_to_held(held: &mut Vec<Range>, new: Range) {
    let mut kept = Vec::with_capacity(held.len() + 2);
    for h in held.drain(..) {
        if h.end < new.start || h.start > new.end {
            kept.push(h);
            continue;
        }
        if h.start < new.start {
            kept.push(Range {
                end: new.start - 1,
                ..h
            });
        }
        if h.end > new.end {
            kept.push(Range {
                start: new.end + 1,
                ..h
            });
        }
    }
    if new.typ != libc::F_UNLCK {
        kept.push(new);
    }
    *held = kept;
}

/// One lock owner's backing file on one node.
struct OwnerFile {
    /// The handle it was opened through (its OFD locks end with it).
    fh: u64,
    file: Arc<File>,
    /// What this owner holds on the backing file, as it asked for it.
    held: Vec<Range>,
}

/// Sends the reply of a queued request.
type Reply = Box<dyn FnOnce(FsResult<()>) + Send>;

/// A blocking request waiting for its lock.
struct Waiter {
    ino: u64,
    fh: u64,
    owner: u64,
    file: Arc<File>,
    want: Range,
    /// The thread that asked, as the FUSE request names it (0: outside our
    /// pid namespace).
    tid: u32,
    reply: Reply,
    next_try: Instant,
    backoff: Duration,
}

/// What the lock table's mutex guards.
#[derive(Default)]
struct LockState {
    /// Lock owners' backing files by (node, owner).
    owners: HashMap<(u64, u64), OwnerFile>,
    /// Blocking requests, oldest first.
    waiters: Vec<Waiter>,
    /// Nodes on which a lock was released since the wait thread last looked:
    /// their waiters are retried at once.
    released: HashSet<u64>,
    /// Whether the wait thread runs.
    thread_started: bool,
    /// Set when the mount ends: the wait thread fails what is queued and
    /// exits.
    closing: bool,
}

/// The lock table and the wait thread's queue.
struct Shared {
    /// Everything, under one mutex: taken for the non-blocking lock calls
    /// on backing files and the bookkeeping around them, never across a
    /// wait or a reply, so a record of what is held always matches the
    /// backing files and the deadlock check sees one consistent graph.
    state: Mutex<LockState>,
    /// Signalled when a request is queued, a lock is released, or the mount
    /// ends; the wait thread sleeps on it.
    changed: Condvar,
}

/// Byte-range lock owners, what they hold, and who waits.
pub struct LockTable {
    /// Shared with the wait thread; internally locked.
    shared: Arc<Shared>,
}

impl Default for LockTable {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(LockState::default()),
                changed: Condvar::new(),
            }),
        }
    }
}

impl Drop for LockTable {
    fn drop(&mut self) {
        self.shared.lock_state().closing = true;
        self.shared.changed.notify_all();
    }
}

/// Takes or releases a lock on a backing file without waiting.
fn try_lock(file: &File, want: Range) -> FsResult<()> {
    fcntl(file, FcntlArg::F_OFD_SETLK(&want.to_flock()))
        .map(|_| ())
        .map_err(|e| Errno::from_i32(e as i32))
}

/// Whether thread `tid` has a signal pending that it does not block, or is
/// gone: either way its lock request must end now. Reads
/// `/proc/<tid>/status`, whose SigPnd (the thread's), ShdPnd (the
/// process's) and SigBlk are hexadecimal masks. A fatal signal shows as a
/// pending SIGKILL.
fn thread_interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, LockState> {
        self.state.lock().expect("lock table")
    }
}

/// How a request that could not be granted at once goes on.
enum Attempt {
    Done(FsResult<()>),
    Wait,
}

impl LockState {
    /// Tries `want` for `owner` on `file`; on success records it and notes a
    /// release. A conflict that `wait`s is checked for deadlock.
    fn attempt(
        &mut self,
        ino: u64,
        fh: u64,
        owner: u64,
        file: &Arc<File>,
        want: Range,
        wait: bool,
    ) -> Attempt {
        match try_lock(file, want) {
            Ok(()) => {
                let entry = self.owners.entry((ino, owner)).or_insert_with(|| {
                    // Another thread of a POSIX owner closed a descriptor of
                    // the file while this one waited: the lock still belongs
                    // to the owner.
                    OwnerFile {
                        fh,
                        file: file.clone(),
                        held: Vec::new(),
                    }
                });
                apply_to_held(&mut entry.held, want);
                // An unlock or a downgrade to shared may free a waiter.
                if want.typ != libc::F_WRLCK {
                    self.released.insert(ino);
                }
                Attempt::Done(Ok(()))
            }
            Err(Errno::EAGAIN) if wait => {
                if self.would_deadlock(ino, owner, want) {
                    Attempt::Done(Err(Errno::EDEADLK))
                } else {
                    Attempt::Wait
                }
            }
            Err(e) => Attempt::Done(Err(e)),
        }
    }

    /// The owners on this mount holding a lock that keeps `owner`'s request
    /// `want` on `ino` waiting.
    fn blockers(&self, ino: u64, owner: u64, want: Range) -> impl Iterator<Item = u64> + '_ {
        self.owners
            .iter()
            .filter(move |((node, other), entry)| {
                *node == ino && *other != owner && entry.held.iter().any(|h| want.conflicts_with(h))
            })
            .map(|((_, other), _)| *other)
    }

    /// Whether `owner` waiting for `want` on `ino` closes a cycle of owners
    /// each waiting for a lock the next one holds.
    fn would_deadlock(&self, ino: u64, owner: u64, want: Range) -> bool {
        let mut to_visit: Vec<u64> = self.blockers(ino, owner, want).collect();
        let mut visited = HashSet::new();
        while let Some(blocker) = to_visit.pop() {
            if blocker == owner {
                return true;
            }
            if !visited.insert(blocker) {
                continue;
            }
            for w in self.waiters.iter().filter(|w| w.owner == blocker) {
                to_visit.extend(self.blockers(w.ino, w.owner, w.want));
            }
        }
        false
    }

    /// Retries the queued requests that are due (all of them on a node where
    /// a lock was released); returns the replies to send and when the next
    /// retry is due.
    fn retry_waiters(&mut self, now: Instant) -> (Vec<(Reply, FsResult<()>)>, Option<Instant>) {
        let released = std::mem::take(&mut self.released);
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if w.next_try > now && !released.contains(&w.ino) {
                i += 1;
                continue;
            }
            let outcome = if thread_interrupted(w.tid) {
                Attempt::Done(Err(Errno::EINTR))
            } else {
                // Taken out while it is tried, so that it does not count as
                // waiting in its own deadlock check (it is tried again just
                // the same).
                let w = self.waiters.remove(i);
                let outcome = self.attempt(w.ino, w.fh, w.owner, &w.file, w.want, true);
                self.waiters.insert(i, w);
                outcome
            };
            match outcome {
                Attempt::Done(result) => {
                    let w = self.waiters.remove(i);
                    finished.push((w.reply, result));
                }
                Attempt::Wait => {
                    let w = &mut self.waiters[i];
                    w.next_try = now + w.backoff;
                    w.backoff = (w.backoff * 2).min(MAX_BACKOFF);
                    i += 1;
                }
            }
        }
        let next = self.waiters.iter().map(|w| w.next_try).min();
        (finished, next)
    }
}

/// The wait thread: retries queued requests until each is granted, fails,
/// or its thread is signalled. Replies are sent without the mutex held.
fn serve_waiters(shared: Arc<Shared>) {
    let mut state = shared.lock_state();
    loop {
        if state.closing {
            let queued = std::mem::take(&mut state.waiters);
            drop(state);
            for w in queued {
                (w.reply)(Err(Errno::EINTR));
            }
            return;
        }
        let now = Instant::now();
        let (finished, next) = state.retry_waiters(now);
        if !finished.is_empty() {
            drop(state);
            for (reply, result) in finished {
                reply(result);
            }
            state = shared.lock_state();
            continue;
        }
        state = match next {
            Some(due) => {
                let timeout = due.saturating_duration_since(Instant::now());
                shared
                    .changed
                    .wait_timeout(state, timeout)
                    .expect("lock table")
                    .0
            }
            None => shared.changed.wait(state).expect("lock table"),
        };
    }
}

impl VmCryptFs {
    /// The backing file through which `owner` locks node `ino`, opened on
    /// first use as a new open file description of the handle's file.
    fn lock_owner_file(
        &self,
        state: &mut LockState,
        ino: u64,
        fh: u64,
        owner: u64,
    ) -> FsResult<Arc<File>> {
        if let Some(entry) = state.owners.get(&(ino, owner)) {
            return Ok(entry.file.clone());
        }
        let handle = self.handles.get(fh).ok_or(Errno::EBADF)?;
        let backing = handle.backing_file().ok_or(Errno::ENOLCK)?;
        // Reopening through /proc gives a separate open file description
        // (a dup would share one, and with it the locks), and works even if
        // the file was unlinked.
        let proc_path = format!("/proc/self/fd/{}", backing.as_raw_fd());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&proc_path)
            .or_else(|_| File::open(&proc_path))
            .map_err(Errno::from)?;
        let file = Arc::new(file);
        state.owners.insert(
            (ino, owner),
            OwnerFile {
                fh,
                file: file.clone(),
                held: Vec::new(),
            },
        );
        Ok(file)
    }

    /// F_GETLK: the first lock that would conflict, or F_UNLCK.
    pub fn getlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
    ) -> FsResult<(u64, u64, i32)> {
        let mut state = self.locks.shared.lock_state();
        let file = self.lock_owner_file(&mut state, ino, fh, owner)?;
        let mut lock = Range { start, end, typ }.to_flock();
        fcntl(file, FcntlArg::F_OFD_GETLK(&mut lock)).map_err(|e| Errno::from_i32(e as i32))?;
        if i32::from(lock.l_type) == libc::F_UNLCK {
            return Ok((start, end, libc::F_UNLCK));
        }
        let lock_start = lock.l_start as u64;
        let lock_end = if lock.l_len == 0 {
            i64::MAX as u64
        } else {
            lock_start + lock.l_len as u64 - 1
        };
        Ok((lock_start, lock_end, i32::from(lock.l_type)))
    }

    /// F_SETLK and F_SETLKW: takes or releases a lock of `owner` and sends
    /// the outcome with `reply`, at once or, for a request that must
    /// `wait`, once the wait thread has granted it, failed it (EDEADLK) or
    /// seen thread `tid` signalled (EINTR).
    #[allow(clippy::too_many_arguments)]
    pub fn setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        (start, end, typ): (u64, u64, i32),
        wait: bool,
        tid: u32,
        reply: impl FnOnce(FsResult<()>) + Send + 'static,
    ) {
        let want = Range { start, end, typ };
        let mut state = self.locks.shared.lock_state();
        let file = match self.lock_owner_file(&mut state, ino, fh, owner) {
            Ok(file) => file,
            Err(e) => {
                drop(state);
                return reply(Err(e));
            }
        };
        let result = match state.attempt(ino, fh, owner, &file, want, wait) {
            Attempt::Done(result) => result,
            Attempt::Wait => {
                state.waiters.push(Waiter {
                    ino,
                    fh,
                    owner,
                    file,
                    want,
                    tid,
                    reply: Box::new(reply),
                    next_try: Instant::now() + FIRST_BACKOFF,
                    backoff: FIRST_BACKOFF * 2,
                });
                if !state.thread_started {
                    self.start_wait_thread(&mut state);
                }
                drop(state);
                self.locks.shared.changed.notify_all();
                return;
            }
        };
        let released = !state.released.is_empty();
        drop(state);
        if released {
            self.locks.shared.changed.notify_all();
        }
        reply(result);
    }

    /// Starts the wait thread; if it cannot start, fails what is queued
    /// (ENOLCK: out of lock resources) rather than leave it waiting.
    fn start_wait_thread(&self, state: &mut LockState) {
        let shared = self.locks.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("lock-wait".into())
            .spawn(move || serve_waiters(shared));
        match spawned {
            Ok(_) => state.thread_started = true,
            Err(e) => {
                log::error!("cannot start the lock-wait thread ({e}): blocking lock requests fail with ENOLCK");
                for w in state.waiters.drain(..) {
                    (w.reply)(Err(Errno::ENOLCK));
                }
            }
        }
    }

    /// Drops every lock `owner` holds on `ino` (a POSIX owner closing any of
    /// its descriptors of the file loses all its locks on it).
    pub fn release_lock_owner(&self, ino: u64, owner: u64) {
        let mut state = self.locks.shared.lock_state();
        if state.owners.remove(&(ino, owner)).is_some() {
            state.released.insert(ino);
            drop(state);
            self.locks.shared.changed.notify_all();
        }
    }

    /// Drops the lock owners opened through handle `fh` (its OFD locks end
    /// with it).
    pub(super) fn release_locks_of_handle(&self, fh: u64) {
        let mut state = self.locks.shared.lock_state();
        let mut released = Vec::new();
        state.owners.retain(|(ino, _), entry| {
            let keep = entry.fh != fh;
            if !keep {
                released.push(*ino);
            }
            keep
        });
        if released.is_empty() {
            return;
        }
        state.released.extend(released);
        drop(state);
        self.locks.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64, typ: i32) -> Range {
        Range { start, end, typ }
    }

    #[test]
    fn a_granted_request_replaces_what_the_owner_held_in_its_range() {
        let mut held = vec![range(0, 99, libc::F_WRLCK)];
        apply_to_held(&mut held, range(10, 19, libc::F_UNLCK));
        held.sort_by_key(|r| r.start);
        assert_eq!(
            held,
            [range(0, 9, libc::F_WRLCK), range(20, 99, libc::F_WRLCK)]
        );
        apply_to_held(&mut held, range(5, 29, libc::F_RDLCK));
        held.sort_by_key(|r| r.start);
        assert_eq!(
            held,
            [
                range(0, 4, libc::F_WRLCK),
                range(5, 29, libc::F_RDLCK),
                range(30, 99, libc::F_WRLCK)
            ]
        );
        apply_to_held(&mut held, range(0, i64::MAX as u64, libc::F_UNLCK));
        assert!(held.is_empty());
    }

    #[test]
    fn only_overlapping_ranges_with_a_writer_conflict() {
        let read = range(0, 9, libc::F_RDLCK);
        assert!(!read.conflicts_with(&range(5, 20, libc::F_RDLCK)));
        assert!(read.conflicts_with(&range(9, 20, libc::F_WRLCK)));
        assert!(!range(10, 20, libc::F_WRLCK).conflicts_with(&read));
    }
}
