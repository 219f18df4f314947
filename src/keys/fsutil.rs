//! Small durable-file helpers shared by the master key file, exports and
//! the key store's records, and the flock that serializes a record's
//! read-modify-write across processes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Mode of every file that holds key material, wrapped or not.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `path` (failing if it exists, so nothing is ever overwritten),
/// mode 0600, writes `contents`, and makes both the file and its directory
/// entry durable: a key file that vanishes after a power cut is as bad as a
/// lost key.
pub(crate) fn create_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fsync_parent_dir(path)
}

/// fsyncs the directory holding `path`, so a newly created entry survives a
/// crash.
pub(crate) fn fsync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Builds a [`crate::keys::ProviderError::Io`] that says what we were doing.
pub(crate) fn io_error(context: String) -> impl FnOnce(io::Error) -> super::ProviderError {
    move |source| super::ProviderError::Io { context, source }
}

/// Replaces `path` with `contents` atomically (temporary file, fsync,
/// rename, directory fsync), mode 0600: readers see the old or the new
/// file, never a mix, even after a crash.
pub(crate) fn replace_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".tmp");
    let temp = Path::new(&temp_name);
    let _ = std::fs::remove_file(temp);
    create_private_file(temp, contents)?;
    std::fs::rename(temp, path)?;
    fsync_parent_dir(path)
}

/// Takes an exclusive flock on the lock file `path` (created 0600, never
/// through a symlink), retrying every `retry` until `timeout` has passed.
/// `Ok(Err(waited))` says another holder kept it that long.
pub(crate) fn lock_exclusive_within(
    path: &Path,
    timeout: std::time::Duration,
    retry: std::time::Duration,
) -> io::Result<Result<nix::fcntl::Flock<File>, std::time::Duration>> {
    use nix::fcntl::{Flock, FlockArg};
    let started = std::time::Instant::now();
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Ok(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let waited = started.elapsed();
                if waited >= timeout {
                    return Ok(Err(waited));
                }
                std::thread::sleep(retry.min(timeout - waited));
            }
            Err((_, errno)) => return Err(errno.into()),
        }
    }
}
