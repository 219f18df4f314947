//! Freeing removed files off the remover's path.
//!
//! When the last link of a file goes and nothing holds it open, `unlinkat`
//! itself frees the inode: on ext4 it truncates the file, frees its blocks
//! and inode and takes it off the orphan list, about 90 % of an unlink's
//! time (`rm -rf` of 5,000 files of 4 KiB on this machine's ext4: 12–13 k
//! files/s, against 120–160 k with every file held open, and 70–85 µs per
//! file for the closes afterwards). An `rm -rf` through the mount waits
//! for each of those one after another.
//!
//! So the mount unlinks a file while holding an `O_PATH` descriptor of it
//! ([`BackingRoot::unlink_holding`](super::backing_root::BackingRoot::unlink_holding)),
//! and likewise holds a file that a rename replaces
//! ([`BackingRoot::rename_holding`](super::backing_root::BackingRoot::rename_holding):
//! a disk image replaced by a converted copy can be large), answers, and
//! hands the descriptor to a [`DeferredRelease`], whose own thread closes a
//! batch of them a moment later: the file system frees the
//! inodes there, on the other core, while the next unlinks go on. The
//! name is gone when the unlink answers, as before; only the space comes
//! back a few milliseconds later, and [`DeferredRelease::wait_idle`] lets
//! `statfs` report it as freed. A crash in between leaves the inodes on
//! the file system's orphan list, which it frees when it is next mounted,
//! as for any file unlinked while open.
//!
//! At most [`MAX_HELD`] descriptors wait at a time: they count against
//! the mount's descriptor limit (1,024 by default under systemd) with the
//! files it holds open. A batch gathers for a millisecond, and `rm -rf`
//! through the mount removes a file every 100 µs or more, so a batch is
//! a few dozen at most; past the limit a descriptor is closed at once, on
//! the caller's path, as without this.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The most descriptors waiting to be closed at a time.
pub const MAX_HELD: usize = 64;

/// How long the closer lets descriptors gather after the first one
/// arrives, so that an `rm -rf` wakes it once per batch, not per file.
const GATHER: Duration = Duration::from_millis(1);

/// Whether a descriptor handed over while `waiting` others wait (out of
/// at most `max`) is kept for the closer rather than closed at once.
fn keeps(waiting: usize, max: usize) -> bool {
    waiting < max
}

#[derive(Default)]
struct State {
    /// Descriptors not yet closed.
    held: Vec<OwnedFd>,
    /// How many descriptors were ever kept for the closer.
    kept: u64,
    /// How many of those the closer has closed. Descriptors are closed in
    /// the order they were kept, so every one of the first `closed` is.
    closed: u64,
    /// Set when the owner goes: the closer closes what is left and stops.
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when descriptors arrive or the owner stops.
    arrived: Condvar,
    /// Signalled when the closer has closed a batch.
    batch_closed: Condvar,
}

/// Closes descriptors of unlinked files on a thread of its own; see the
/// module documentation.
pub struct DeferredRelease {
    shared: Arc<Shared>,
    /// The closer; `None` if it could not be started (then every
    /// descriptor is closed at once).
    closer: Option<JoinHandle<()>>,
    max: usize,
}

impl DeferredRelease {
    /// A releaser with its closer thread, holding at most [`MAX_HELD`].
    pub fn new() -> Self {
        Self::with_max(MAX_HELD)
    }

    fn with_max(max: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let closer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("release".into())
                .spawn(move || close_batches(&shared))
        };
        let closer = match closer {
            Ok(handle) => Some(handle),
            Err(e) => {
                log::warn!(
                    "no thread to free removed files ({e}): each unlink frees its file itself"
                );
                None
            }
        };
        Self {
            shared,
            closer,
            max,
        }
    }

    /// Takes `fd` (of a file just unlinked) to close later, or closes it
    /// now if too many wait already or there is no closer.
    pub fn hold(&self, fd: OwnedFd) {
        if self.closer.is_none() {
            return;
        }
        let mut state = self.shared.state.lock().expect("release lock");
        if !keeps(state.held.len(), self.max) {
            drop(state);
            drop(fd);
            return;
        }
        let first = state.held.is_empty();
        state.held.push(fd);
        state.kept += 1;
        drop(state);
        if first {
            self.shared.arrived.notify_one();
        }
    }

    /// Returns once every descriptor handed over so far is closed (the
    /// file system has freed those files). Descriptors handed over while it
    /// waits are not waited for, so a `df` during a long `rm -rf` waits for
    /// one batch, not for the whole removal.
    pub fn wait_idle(&self) {
        let state = self.shared.state.lock().expect("release lock");
        let until = state.kept;
        let _done = self
            .shared
            .batch_closed
            .wait_while(state, |s| s.closed < until)
            .expect("release lock");
    }
}

impl Default for DeferredRelease {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DeferredRelease {
    fn drop(&mut self) {
        self.shared.state.lock().expect("release lock").stop = true;
        self.shared.arrived.notify_one();
        if let Some(closer) = self.closer.take() {
            let _ = closer.join();
        }
    }
}

/// The closer: waits for descriptors, lets more gather for [`GATHER`],
/// closes them all; until stopped, and then closes what is left.
fn close_batches(shared: &Shared) {
    loop {
        let state = shared.state.lock().expect("release lock");
        let state = shared
            .arrived
            .wait_while(state, |s| s.held.is_empty() && !s.stop)
            .expect("release lock");
        let stopping = state.stop;
        drop(state);
        if !stopping {
            std::thread::sleep(GATHER);
        }
        let batch = std::mem::take(&mut shared.state.lock().expect("release lock").held);
        let count = batch.len() as u64;
        drop(batch);
        let mut state = shared.state.lock().expect("release lock");
        state.closed += count;
        shared.batch_closed.notify_all();
        if state.stop && state.held.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A pipe: the write end to hand over, and a reader that sees EOF
    /// once that end is closed.
    fn pipe() -> (std::fs::File, OwnedFd) {
        let (read, write) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(read), write)
    }

    fn closed(mut reader: std::fs::File) -> bool {
        let mut byte = [0u8; 1];
        reader.read(&mut byte).unwrap() == 0
    }

    #[test]
    fn keeps_until_the_limit() {
        assert!(keeps(0, 2));
        assert!(keeps(1, 2));
        assert!(!keeps(2, 2));
        assert!(!keeps(0, 0));
    }

    #[test]
    fn held_descriptors_are_closed_by_the_closer() {
        let release = DeferredRelease::new();
        let ends: Vec<_> = (0..10).map(|_| pipe()).collect();
        let mut readers = Vec::new();
        for (reader, writer) in ends {
            release.hold(writer);
            readers.push(reader);
        }
        release.wait_idle();
        assert_eq!(release.shared.state.lock().unwrap().held.len(), 0);
        // Each read returns EOF at once: every write end is closed.
        assert!(readers.into_iter().all(closed));
    }

    /// A wait covers what was handed over before it, not what arrives
    /// while it waits: `df` during a long `rm -rf` is not held up by it.
    #[test]
    fn a_wait_is_not_extended_by_later_arrivals() {
        let release = Arc::new(DeferredRelease::new());
        let (reader, writer) = pipe();
        release.hold(writer);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let feeder = {
            let (release, stop) = (release.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    release.hold(pipe().1);
                }
            })
        };
        release.wait_idle();
        assert!(closed(reader));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        feeder.join().unwrap();
    }

    #[test]
    fn past_the_limit_a_descriptor_is_closed_at_once() {
        let release = DeferredRelease::with_max(0);
        let (reader, writer) = pipe();
        release.hold(writer);
        assert!(closed(reader));
    }

    #[test]
    fn dropping_closes_what_is_left() {
        let release = DeferredRelease::new();
        let (reader, writer) = pipe();
        release.hold(writer);
        drop(release);
        assert!(closed(reader));
    }
}
