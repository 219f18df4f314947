//! The key bundle file on disk: read it, and rewrite it atomically.
//!
//! Update protocol (docs/FORMAT.md): flock(LOCK_EX) on the VM home directory,
//! remove stale temp files, write a temp file, fsync it, rename it over the
//! bundle, fsync the directory. The directory lock serializes writers from
//! the CLI and from any number of mounts on this host, and means any temp
//! file seen while holding it was left by a crash, so it never blocks the
//! next update.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::layout::BUNDLE_FILE_NAME;
use super::DatastoreError;
use crate::format::bundle::KeyBundle;

const TEMP_PREFIX: &str = ".vmcryptfs-bundle.tmp.";

/// Path of the bundle inside `vm_dir`.
pub fn bundle_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(BUNDLE_FILE_NAME)
}

/// Whether `vm_dir` is an encrypted VM home.
pub fn has_bundle(vm_dir: &Path) -> bool {
    bundle_path(vm_dir).is_file()
}

/// Reads and parses the bundle of `vm_dir`.
pub fn read(vm_dir: &Path) -> Result<KeyBundle, DatastoreError> {
    let path = bundle_path(vm_dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DatastoreError::NotAVmHome {
                path: vm_dir.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(DatastoreError::io(
                format!("reading key bundle {}", path.display()),
                e,
            ))
        }
    };
    KeyBundle::parse(&bytes).map_err(|source| DatastoreError::BadBundle { path, source })
}

/// Exclusive right to rewrite one VM home's bundle, held until dropped.
pub struct BundleLock {
    vm_dir: PathBuf,
    _dir_lock: Flock<File>,
}

impl BundleLock {
    /// Locks `vm_dir` (blocking while another writer holds it) and removes
    /// temp files left by crashed writers.
    pub fn acquire(vm_dir: &Path) -> Result<Self, DatastoreError> {
        let dir = File::open(vm_dir)
            .map_err(|e| DatastoreError::io(format!("opening VM home {}", vm_dir.display()), e))?;
        let dir_lock = Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| {
            DatastoreError::io(
                format!("locking VM home {} for a bundle update", vm_dir.display()),
                errno.into(),
            )
        })?;
        let lock = Self {
            vm_dir: vm_dir.to_path_buf(),
            _dir_lock: dir_lock,
        };
        lock.remove_stale_temp_files()?;
        Ok(lock)
    }

    fn remove_stale_temp_files(&self) -> Result<(), DatastoreError> {
        let entries = fs::read_dir(&self.vm_dir)
            .map_err(|e| DatastoreError::io(format!("listing {}", self.vm_dir.display()), e))?;
        for entry in entries.flatten() {
            if is_temp_name(&entry.file_name()) {
                log::info!("removing stale bundle temp file {}", entry.path().display());
                fs::remove_file(entry.path()).map_err(|e| {
                    DatastoreError::io(
                        format!("removing stale temp file {}", entry.path().display()),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Replaces the bundle atomically and durably.
    pub fn write(&self, bundle: &KeyBundle) -> Result<(), DatastoreError> {
        let bytes = bundle
            .encode()
            .map_err(|source| DatastoreError::BadBundle {
                path: bundle_path(&self.vm_dir),
                source,
            })?;
        let suffix: [u8; 8] = crate::crypto::random::array();
        let temp = self.vm_dir.join(format!(
            "{TEMP_PREFIX}{}.{}",
            std::process::id(),
            hex::encode(suffix)
        ));
        let io_err = |what: &str, e| DatastoreError::io(format!("{what} {}", temp.display()), e);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_err("creating", e))?;
        file.write_all(&bytes).map_err(|e| io_err("writing", e))?;
        file.sync_all().map_err(|e| io_err("fsyncing", e))?;
        drop(file);
        let target = bundle_path(&self.vm_dir);
        fs::rename(&temp, &target).map_err(|e| io_err("renaming into place", e))?;
        crash_point("bundle-renamed");
        File::open(&self.vm_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                DatastoreError::io(format!("fsyncing directory {}", self.vm_dir.display()), e)
            })
    }
}

fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// Test-only fault injection: if `VMCRYPTFS_TEST_CRASH_AT` names this point,
/// the process kills itself with SIGKILL here, as a crash would. Used by the
/// crash tests to prove that every step of an update is recoverable.
pub(crate) fn crash_point(name: &str) {
    if std::env::var("VMCRYPTFS_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bundle::tests::sample;

    #[test]
    fn write_read_and_stale_temp_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(DatastoreError::NotAVmHome { .. })
        ));
        let stale = dir.path().join(format!("{TEMP_PREFIX}999.deadbeef"));
        fs::write(&stale, b"junk from a crash").unwrap();
        let lock = BundleLock::acquire(dir.path()).unwrap();
        assert!(!stale.exists());
        lock.write(&sample()).unwrap();
        drop(lock);
        assert_eq!(read(dir.path()).unwrap(), sample());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsStr::new(BUNDLE_FILE_NAME).to_owned()]);
    }

    #[test]
    fn corrupt_bundle_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(bundle_path(dir.path()), b"garbage").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains(BUNDLE_FILE_NAME), "{err}");
    }
}
