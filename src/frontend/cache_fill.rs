//! Copying the plaintext around a read into the kernel's page cache of the
//! file (`FUSE_NOTIFY_STORE`), so that reads of its neighbours never reach
//! the daemon.
//!
//! Why: a read through the page cache that the kernel cannot serve costs a
//! FUSE round trip (about 25 µs here, 94 % of it in the kernel), while one
//! it can serve costs about 1 µs. The kernel reads ahead for sequential
//! readers, but a random reader gets only the page it asked for, so a
//! read-only consumer of a VM disk that reads it at random (a linked
//! clone's base disk opened read-only by QEMU, a backup or inspection
//! tool) pays the round trip for every page. When read-around says a
//! window pays (see `content::read_around`), the daemon copies the
//! window's plaintext into the kernel's cache after replying, as the kernel
//! itself does for page faults of mapped files.
//!
//! **Who fills.** Only reads through a read-only, cached open (neither
//! `FOPEN_DIRECT_IO` nor `O_DIRECT`): a writable open's reads go direct,
//! and filling the cache for it would only cost memory.
//!
//! **Coherence.** A copy must never be older than the file. Writes and
//! truncations need a writable handle (a truncate by path opens one for the
//! duration), so the rule is: **an inode with a writable handle is never
//! filled, and a writable handle is given to the kernel only once no fill
//! of its inode is in flight.** A fill checks for writers and marks itself
//! in flight under one lock, so either the writer sees the fill and waits
//! for it, or the fill sees the writer and does not start. The kernel then
//! drops the inode's cached pages when it opens the writable handle (we
//! never set `FOPEN_KEEP_CACHE`), so nothing filled before it survives.
//!
//! **No deadlock.** A fill blocks in the kernel on any page locked for a
//! read that a FUSE worker has yet to answer, so no worker may wait for a
//! fill. Fills run on one thread of their own; a writable open that finds a
//! fill in flight hands its reply to a short-lived thread that waits for
//! it (`fuse_adapter`). A truncation waits on its worker, but the kernel
//! runs at most one truncation of an inode at a time (under its inode
//! lock) and one inode is filled at a time, so at most one worker waits,
//! and fills are off when the mount has a single worker thread.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};

use fuser::{INodeNo, Notifier};

use super::cache_mode::CacheMode;
use crate::content::EncryptedFile;
use crate::datastore::vm_home::VmHome;

/// Fill requests queued at most; past that a read's fill is dropped (the
/// filler is behind, and the reads it would have saved come to us anyway).
const QUEUE_LEN: usize = 64;

/// What one open handle of an encrypted file means for filling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRole {
    /// A read-only open through the page cache: its reads may fill.
    Fills,
    /// A writable open: while it exists its inode is not filled.
    Writes,
    /// Neither (a read-only direct open).
    Neither,
}

impl CacheRole {
    /// The role of an open with open(2) `flags` that the kernel caches as
    /// `mode`.
    pub fn of_open(flags: i32, mode: CacheMode) -> Self {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            Self::Writes
        } else if mode == CacheMode::PageCache && flags & libc::O_DIRECT == 0 {
            Self::Fills
        } else {
            Self::Neither
        }
    }
}

/// Which inodes have writable handles, and which one is being filled.
#[derive(Debug, Default)]
struct GateState {
    /// Writable handles per inode; an inode is absent at zero.
    writers: HashMap<u64, u32>,
    /// The inode whose fill is in flight, if any (one filler thread).
    filling: Option<u64>,
}

/// The mount's rule between fills and writers (see the module docs).
/// Shared by the frontend and the filler thread.
#[derive(Debug, Default)]
pub struct FillGate {
    /// Locked briefly by opens, closes and each fill's start and end.
    state: Mutex<GateState>,
    /// Signalled when a fill ends.
    fill_ended: Condvar,
}

impl FillGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().expect("fill gate poisoned")
    }

    /// A writable handle of `ino` was created; no fill of `ino` starts
    /// until it is closed. A fill already in flight must be waited out
    /// ([`FillGate::is_filling`], [`FillGate::wait_for_fill`]) before the
    /// handle is used.
    pub fn writer_opened(&self, ino: u64) {
        *self.lock().writers.entry(ino).or_default() += 1;
    }

    /// Whether a fill of `ino` is in flight.
    pub fn is_filling(&self, ino: u64) -> bool {
        self.lock().filling == Some(ino)
    }

    /// A writable handle of `ino` was closed.
    pub fn writer_closed(&self, ino: u64) {
        let mut state = self.lock();
        if let Some(count) = state.writers.get_mut(&ino) {
            *count -= 1;
            if *count == 0 {
                state.writers.remove(&ino);
            }
        }
    }

    /// Waits until no fill of `ino` is in flight.
    pub fn wait_for_fill(&self, ino: u64) {
        let state = self.lock();
        let _ended = self
            .fill_ended
            .wait_while(state, |state| state.filling == Some(ino))
            .expect("fill gate poisoned");
    }

    /// Runs `fill` for `ino` unless it has a writable handle; whether it ran.
    fn fill(&self, ino: u64, fill: impl FnOnce()) -> bool {
        {
            let mut state = self.lock();
            if state.writers.contains_key(&ino) {
                return false;
            }
            state.filling = Some(ino);
        }
        // Clears the mark even if `fill` panics, so no writer waits forever.
        struct Ended<'a>(&'a FillGate);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.lock().filling = None;
                self.0.fill_ended.notify_all();
            }
        }
        let _ended = Ended(self);
        fill();
        true
    }
}

/// One window to copy into the kernel's cache of inode `ino`.
pub struct FillJob {
    /// The FUSE inode.
    pub ino: u64,
    /// The backing file, shared with the handle whose read queued the job.
    pub backing: Arc<File>,
    /// The inode's content state.
    pub content: Arc<EncryptedFile>,
    /// Plaintext range.
    pub window: Range<u64>,
    /// The VM home, whose `.stats` count the bytes copied.
    pub vm: Arc<VmHome>,
}

/// The mount's filler: a queue, and the thread that serves it.
pub struct CacheFiller {
    jobs: SyncSender<FillJob>,
}

/// What a mount needs to start its filler once the FUSE session exists
/// (the notifier comes from the session, which takes the frontend).
pub struct FillerStarter {
    slot: Arc<std::sync::OnceLock<CacheFiller>>,
    gate: Arc<FillGate>,
}

impl FillerStarter {
    /// For a frontend holding `slot` and `gate`.
    pub(super) fn new(slot: Arc<std::sync::OnceLock<CacheFiller>>, gate: Arc<FillGate>) -> Self {
        Self { slot, gate }
    }

    /// Starts the filler, sending with `notifier`. A filler that cannot
    /// start leaves reads as they were, so this only logs.
    pub fn start(self, notifier: Notifier) {
        match CacheFiller::start(notifier, self.gate) {
            Ok(filler) => {
                let _ = self.slot.set(filler);
            }
            Err(e) => log::warn!("not copying read-around windows into the kernel's cache: {e}"),
        }
    }
}

impl CacheFiller {
    /// Starts the filler thread, which sends its copies with `notifier`
    /// and checks `gate` before each.
    fn start(notifier: Notifier, gate: Arc<FillGate>) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE_LEN);
        std::thread::Builder::new()
            .name("cache-fill".into())
            .spawn(move || serve(&queue, &notifier, &gate))?;
        Ok(Self { jobs })
    }

    /// Queues `job`, or drops it if the queue is full.
    pub fn queue(&self, job: FillJob) {
        match self.jobs.try_send(job) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => log::debug!("cache filler has stopped"),
        }
    }
}

/// The filler thread: ends when the mount drops its [`CacheFiller`].
///
/// It takes what is queued in batches: it starts the disk reads of a whole
/// batch first, so that they overlap, and copies each window once however
/// many reads asked for it while it was queued (reads of a window keep
/// reaching us until its copy lands).
fn serve(queue: &Receiver<FillJob>, notifier: &Notifier, gate: &FillGate) {
    let mut plain = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut batch: Vec<FillJob> = Vec::with_capacity(QUEUE_LEN);
        for job in std::iter::once(first).chain(queue.try_iter()) {
            if !batch
                .iter()
                .any(|b| b.ino == job.ino && b.window == job.window)
            {
                job.content
                    .start_reading_fill(&job.backing, job.window.clone());
                batch.push(job);
            }
        }
        for job in batch {
            fill_one(&job, &mut plain, notifier, gate);
        }
    }
}

/// Copies `job`'s window into the kernel's cache, unless its inode has a
/// writer; `plain` is scratch.
fn fill_one(job: &FillJob, plain: &mut Vec<u8>, notifier: &Notifier, gate: &FillGate) {
    gate.fill(job.ino, || {
        let n = match job
            .content
            .read_fill(&job.backing, job.window.clone(), plain)
        {
            Ok(n) => n,
            Err(e) => {
                // The reader's own read succeeded; its neighbour's failure
                // will reach whoever reads it.
                log::debug!("filling inode {}: {e}", job.ino);
                return;
            }
        };
        if n == 0 {
            return;
        }
        match notifier.store(INodeNo(job.ino), job.window.start, &plain[..n]) {
            Ok(()) => job.vm.counters().cache_fill(n as u64),
            Err(e) => log::debug!("copying into the kernel's cache of inode {}: {e}", job.ino),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn roles_follow_access_mode_and_caching() {
        use CacheMode::*;
        use CacheRole::*;
        for (flags, mode, role) in [
            (libc::O_RDONLY, PageCache, Fills),
            (libc::O_RDONLY | libc::O_DIRECT, PageCache, Neither),
            (libc::O_RDONLY, Direct, Neither),
            (libc::O_RDWR, PageCache, Writes),
            (libc::O_WRONLY, PageCache, Writes),
            (libc::O_RDWR, DirectParallelWrites, Writes),
        ] {
            assert_eq!(CacheRole::of_open(flags, mode), role, "{flags:#o} {mode:?}");
        }
    }

    #[test]
    fn an_inode_with_a_writer_is_not_filled_until_the_writer_closes() {
        let gate = FillGate::default();
        gate.writer_opened(7);
        gate.writer_opened(7);
        assert!(!gate.fill(7, || panic!("filled under a writer")));
        assert!(gate.fill(8, || {}), "another inode fills");
        gate.writer_closed(7);
        assert!(!gate.fill(7, || panic!("filled under the second writer")));
        gate.writer_closed(7);
        assert!(gate.fill(7, || {}));
    }

    #[test]
    fn a_writer_that_opens_during_a_fill_waits_for_it() {
        let gate = Arc::new(FillGate::default());
        let (started, finish) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let filler = {
            let (gate, started, finish) = (gate.clone(), started.clone(), finish.clone());
            std::thread::spawn(move || {
                gate.fill(3, || {
                    started.store(true, Ordering::SeqCst);
                    while !finish.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
        };
        while !started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.writer_opened(4);
        assert!(
            !gate.is_filling(4),
            "a fill of another inode is not waited for"
        );
        gate.writer_opened(3);
        assert!(gate.is_filling(3), "the fill in flight is reported");
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait_for_fill(3))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the writer went ahead of the fill");
        finish.store(true, Ordering::SeqCst);
        waiter.join().unwrap();
        assert!(filler.join().unwrap());
        assert!(!gate.fill(3, || panic!("filled under a writer")));
    }
}
