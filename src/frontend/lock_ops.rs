//! Byte-range locks (POSIX `fcntl` and OFD), forwarded to the backing files.
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
//! requests), so flock locks hold within one mount only.
//!
//! POSIX locks are dropped when their owner closes any descriptor of the
//! file (FUSE FLUSH, synchronous with close). An OFD lock is dropped when
//! the kernel reports the last close of its open file description (FUSE
//! RELEASE), which arrives asynchronously, shortly after close(2) returns.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use fuser::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use super::{FsResult, VmCryptFs};

/// One lock owner's backing file, and the handle it was opened through.
struct OwnerFile {
    fh: u64,
    file: Arc<File>,
}

/// Lock owners' backing files by (node, owner). One mutex: taken briefly to
/// find or add an entry, never while waiting for a lock.
#[derive(Default)]
pub struct LockTable {
    owners: Mutex<HashMap<(u64, u64), OwnerFile>>,
}

fn to_flock(start: u64, end: u64, typ: i32) -> libc::flock {
    // FUSE ranges are inclusive; an end at the largest offset means "to EOF",
    // which struct flock spells as length 0.
    let len = if end >= i64::MAX as u64 {
        0
    } else {
        (end - start + 1) as i64
    };
    libc::flock {
        l_type: typ as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start as i64,
        l_len: len,
        l_pid: 0,
    }
}

/// Takes or releases a lock on an owner's backing file; waits if `wait`.
/// Runs without any frontend lock held, so it may block in its own thread.
pub fn apply_lock(file: &File, start: u64, end: u64, typ: i32, wait: bool) -> FsResult<()> {
    let lock = to_flock(start, end, typ);
    let arg = if wait {
        FcntlArg::F_OFD_SETLKW(&lock)
    } else {
        FcntlArg::F_OFD_SETLK(&lock)
    };
    fcntl(file.as_raw_fd(), arg)
        .map(|_| ())
        .map_err(|e| Errno::from_i32(e as i32))
}

impl VmCryptFs {
    /// The backing file through which `owner` locks node `ino`, opened on
    /// first use as a new open file description of the handle's file.
    pub fn lock_owner_file(&self, ino: u64, fh: u64, owner: u64) -> FsResult<Arc<File>> {
        let mut owners = self.locks.owners.lock().expect("lock table");
        if let Some(entry) = owners.get(&(ino, owner)) {
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
        owners.insert(
            (ino, owner),
            OwnerFile {
                fh,
                file: file.clone(),
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
        let file = self.lock_owner_file(ino, fh, owner)?;
        let mut lock = to_flock(start, end, typ);
        fcntl(file.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut lock))
            .map_err(|e| Errno::from_i32(e as i32))?;
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

    /// Drops every lock `owner` holds on `ino` (a POSIX owner closing any of
    /// its descriptors of the file loses all its locks on it).
    pub fn release_lock_owner(&self, ino: u64, owner: u64) {
        self.locks
            .owners
            .lock()
            .expect("lock table")
            .remove(&(ino, owner));
    }

    /// Drops the lock owners opened through handle `fh` (its OFD locks end
    /// with it).
    pub(super) fn release_locks_of_handle(&self, fh: u64) {
        self.locks
            .owners
            .lock()
            .expect("lock table")
            .retain(|_, entry| entry.fh != fh);
    }
}
