//! The caller's umask, applied to the backing entry a create, mkdir or
//! mknod makes.
//!
//! The mount negotiates `FUSE_POSIX_ACL` so that the kernel enforces ACLs
//! on the mount's inodes, and with it `FUSE_DONT_MASK`: the kernel then
//! sends the caller's mode and umask unmasked and leaves the umask to the
//! mount. It has to: POSIX says the umask does not apply when the parent
//! directory has a default ACL (the ACL's mask governs instead), and only
//! the backing directory knows whether it has one.
//!
//! The mount creates every backing entry itself, so the exact rule is the
//! backing file system's own: each creation runs with the caller's umask
//! as this thread's umask, and the backing file system applies it, or the
//! parent's default ACL, as it does for a local process. A umask belongs to
//! a process's fs context, which its threads share; each worker thread
//! therefore takes a private fs context (`unshare(CLONE_FS)`) the first
//! time it creates something, so a caller's umask never reaches another
//! thread's creation, and puts the mount's own umask (0, see `mount_cmd`)
//! back after each creation.

use std::cell::Cell;

use nix::sched::CloneFlags;
use rustix::fs::Mode;
use rustix::process::umask;

thread_local! {
    /// Whether this thread has its own fs context: unknown (`None`) until
    /// its first creation. Only this thread reads or writes it.
    static OWN_FS_CONTEXT: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether this thread's umask is its own, taking a private fs context on
/// first use.
fn own_fs_context() -> bool {
    OWN_FS_CONTEXT.with(|own| {
        if let Some(known) = own.get() {
            return known;
        }
        // nix's, as rustix's safe `unshare` is deprecated for its unsafe
        // twin (because of CLONE_FILES); CLONE_FS alone is safe.
        let unshared = nix::sched::unshare(CloneFlags::CLONE_FS);
        if let Err(err) = &unshared {
            log::warn!(
                "cannot give a worker thread its own umask ({err}): creations get mode & ~umask, \
                 so a parent's default ACL no longer overrides the caller's umask"
            );
        }
        own.set(Some(unshared.is_ok()));
        unshared.is_ok()
    })
}

/// Puts this thread's umask back when dropped, even if the creation
/// panicked.
struct RestoreUmask(Mode);

impl Drop for RestoreUmask {
    fn drop(&mut self) {
        umask(self.0);
    }
}

/// Runs `create` with the mode to create a backing entry with, under the
/// caller's `caller_umask` as the kernel would apply it to a local
/// creation: by the backing file system (the mode is passed unmasked and
/// this thread's umask is the caller's), or, if this thread cannot have a
/// umask of its own, by masking the mode here.
pub fn create_with_umask<T>(caller_umask: u32, mode: u32, create: impl FnOnce(u32) -> T) -> T {
    let caller_umask = caller_umask & 0o777;
    if !own_fs_context() {
        return create(mode & !caller_umask);
    }
    let _restore = RestoreUmask(umask(Mode::from_raw_mode(caller_umask)));
    create(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    fn mode_of(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// The calling thread's umask, read without changing it.
    fn thread_umask() -> u32 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let octal = status
            .lines()
            .find_map(|line| line.strip_prefix("Umask:"))
            .unwrap();
        u32::from_str_radix(octal.trim(), 8).unwrap()
    }

    fn make_dir(path: &std::path::Path, mode: u32) {
        std::fs::DirBuilder::new().mode(mode).create(path).unwrap();
    }

    #[test]
    fn the_callers_umask_applies_to_that_creation_only_and_only_in_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (masked, other) = (dir.path().join("masked"), dir.path().join("other"));
        let process_umask = thread_umask();
        assert_ne!(process_umask, 0o077, "the test needs a different umask");
        std::thread::scope(|scope| {
            let masked = &masked;
            let (inside, creating) = std::sync::mpsc::channel::<()>();
            let (created_other, other_done) = std::sync::mpsc::channel::<()>();
            let creator = scope.spawn(move || {
                create_with_umask(0o077, 0o777, |mode| {
                    assert_eq!(mode, 0o777, "passed on unmasked");
                    assert_eq!(thread_umask(), 0o077);
                    inside.send(()).unwrap();
                    other_done.recv().unwrap();
                    make_dir(masked, mode);
                });
                thread_umask()
            });
            // While the caller's umask is in force there, this thread
            // still creates under the process's.
            creating.recv().unwrap();
            assert_eq!(thread_umask(), process_umask);
            make_dir(&other, 0o777);
            created_other.send(()).unwrap();
            assert_eq!(
                creator.join().unwrap(),
                process_umask,
                "put back afterwards"
            );
        });
        assert_eq!(mode_of(&masked), 0o700);
        assert_eq!(mode_of(&other), 0o777 & !process_umask);
    }
}
