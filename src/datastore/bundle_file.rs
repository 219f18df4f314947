//! The key bundle file on disk: read it, and rewrite it atomically.
//!
//! Update protocol (docs/FORMAT.md): flock(LOCK_EX) on the VM home directory,
//! remove stale temp files, write a temp file, fsync it, rename it over the
//! bundle, fsync the directory. The directory lock serializes writers from
//! the CLI and from any number of mounts on this host, and means any temp
//! file seen while holding it was left by a crash, so it never blocks the
//! next update.
//!
//! The VM home is opened once, with `O_NOFOLLOW`, and every step is a `*at`
//! call on that descriptor. A VM home swapped for a symlink (behind a
//! mount, by someone with write access to the datastore) is refused, so a
//! re-key can never write a bundle or remove files in a directory outside
//! the datastore, and every step of one update acts on the same directory.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::layout::BUNDLE_FILE_NAME;
use super::owned_file::{list_dir, OwnedFileError, VmDir};
use super::DatastoreError;
use crate::format::bundle::{KeyBundle, MAX_ENCODED_LEN};

const TEMP_PREFIX: &str = ".vmcryptfs-bundle.tmp.";

/// Path of the bundle inside `vm_dir`.
pub fn bundle_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(BUNDLE_FILE_NAME)
}

/// Whether `vm_dir` is an encrypted VM home: a directory itself (a
/// symlink to one never is) with something at the bundle's name.
pub fn has_bundle(vm_dir: &Path) -> bool {
    VmDir::open(vm_dir).is_ok_and(|vm| has_bundle_in(&vm))
}

/// Whether the opened VM home `vm` has an entry at the bundle's name. Any
/// kind counts, the entry itself and not what a symlink points to: a
/// bundle swapped for a symlink, FIFO or directory makes the VM damaged
/// (its [`read`] fails naming the file, so it stays locked and status says
/// why), not a plain directory whose new files would be stored in clear.
pub fn has_bundle_in(vm: &VmDir) -> bool {
    vm.stat_entry(OsStr::new(BUNDLE_FILE_NAME)).is_some()
}

/// Opens the VM home directory itself, never through a symlink.
fn open_vm_dir(vm_dir: &Path) -> Result<VmDir, DatastoreError> {
    VmDir::open(vm_dir).map_err(|err| match err {
        OwnedFileError::Missing { .. } => DatastoreError::NotAVmHome {
            path: vm_dir.to_path_buf(),
        },
        err => err.into(),
    })
}

/// Reads and parses the bundle of `vm_dir`.
pub fn read(vm_dir: &Path) -> Result<KeyBundle, DatastoreError> {
    read_in(&open_vm_dir(vm_dir)?)
}

/// Reads and parses the bundle of the opened VM home `vm`: only a regular
/// file, and at most [`MAX_ENCODED_LEN`] bytes of it.
pub fn read_in(vm: &VmDir) -> Result<KeyBundle, DatastoreError> {
    let bytes = vm
        .read_owned(OsStr::new(BUNDLE_FILE_NAME), MAX_ENCODED_LEN as u64)
        .map_err(|err| match err {
            OwnedFileError::Missing { .. } => DatastoreError::NotAVmHome {
                path: vm.path().to_path_buf(),
            },
            err => err.into(),
        })?;
    KeyBundle::parse(&bytes).map_err(|source| DatastoreError::BadBundle {
        path: bundle_path(vm.path()),
        source,
    })
}

/// Exclusive right to rewrite one VM home's bundle, held until dropped.
pub struct BundleLock {
    /// The VM home, opened without following symlinks; every step of an
    /// update is relative to it. Immutable.
    vm: VmDir,
    /// The flock on `vm` (taken on a duplicate of its descriptor, which
    /// shares the lock), released when dropped.
    _locked: Flock<File>,
}

impl BundleLock {
    /// Locks `vm_dir` (blocking while another writer holds it) and removes
    /// temp files left by crashed writers.
    pub fn acquire(vm_dir: &Path) -> Result<Self, DatastoreError> {
        let vm = open_vm_dir(vm_dir)?;
        let dup = vm
            .fd()
            .try_clone_to_owned()
            .map_err(|e| DatastoreError::io(format!("locking VM home {}", vm_dir.display()), e))?;
        let locked =
            Flock::lock(File::from(dup), FlockArg::LockExclusive).map_err(|(_, errno)| {
                DatastoreError::io(
                    format!("locking VM home {} for a bundle update", vm_dir.display()),
                    errno.into(),
                )
            })?;
        let lock = Self {
            vm,
            _locked: locked,
        };
        lock.remove_stale_temp_files()?;
        Ok(lock)
    }

    /// The locked VM home.
    pub fn vm(&self) -> &VmDir {
        &self.vm
    }

    fn remove_stale_temp_files(&self) -> Result<(), DatastoreError> {
        let entries = list_dir(self.vm.fd(), self.vm.path())?;
        for (name, _) in entries.iter().filter(|(name, _)| is_temp_name(name)) {
            log::info!(
                "removing stale bundle temp file {}",
                crate::format::untrusted::path(&self.vm.display_path(name))
            );
            self.vm.remove(name)?;
        }
        Ok(())
    }

    /// Replaces the bundle atomically and durably.
    pub fn write(&self, bundle: &KeyBundle) -> Result<(), DatastoreError> {
        let bytes = bundle
            .encode()
            .map_err(|source| DatastoreError::BadBundle {
                path: bundle_path(self.vm.path()),
                source,
            })?;
        let suffix: [u8; 8] = crate::crypto::random::array();
        let temp_name = format!(
            "{TEMP_PREFIX}{}.{}",
            std::process::id(),
            hex::encode(suffix)
        );
        let temp = self.vm.display_path(&temp_name);
        let io_err = |what: &str, e| DatastoreError::io(format!("{what} {}", temp.display()), e);
        let mut file = self.vm.create_exclusive(OsStr::new(&temp_name), 0o600)?;
        file.write_all(&bytes).map_err(|e| io_err("writing", e))?;
        file.sync_all().map_err(|e| io_err("fsyncing", e))?;
        drop(file);
        self.vm
            .rename(OsStr::new(&temp_name), OsStr::new(BUNDLE_FILE_NAME))?;
        crash_point("bundle-renamed");
        Ok(self.vm.sync()?)
    }
}

/// Whether `name` is a bundle temp file's (FORMAT.md §1).
pub(super) fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// Test-only fault injection: if `VMCRYPTFS_TEST_CRASH_AT` names this point,
/// the process kills itself with SIGKILL here, as a crash would. Used by the
/// crash tests to prove that every step of an update is recoverable.
pub(crate) fn crash_point(name: &str) {
    if std::env::var("VMCRYPTFS_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bundle::tests::sample;
    use std::fs;

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
    fn a_vm_home_swapped_for_a_symlink_is_never_followed() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let stale = outside.join(format!("{TEMP_PREFIX}1.cafe"));
        fs::write(&stale, b"a host file that looks like a temp file").unwrap();
        fs::write(bundle_path(&outside), sample().encode().unwrap()).unwrap();
        let vm = base.path().join("vm");
        std::os::unix::fs::symlink(&outside, &vm).unwrap();

        let err = BundleLock::acquire(&vm).err().expect("a symlinked VM home");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(read(&vm).is_err());
        assert!(stale.exists(), "nothing outside may be removed");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 2);
    }

    #[test]
    fn a_planted_bundle_or_vm_home_is_never_followed_nor_read_unbounded() {
        use crate::datastore::owned_file::tests::{Outside, PLANTS};
        let outside = Outside::new();
        let ds = outside.base.path().join("ds");
        fs::create_dir(&ds).unwrap();
        let before = outside.snapshot();
        for (i, plant) in PLANTS.iter().enumerate() {
            // At the bundle's name.
            let vm = ds.join(format!("vm{i}"));
            fs::create_dir(&vm).unwrap();
            outside.plant(plant, &bundle_path(&vm));
            assert!(has_bundle(&vm), "{plant}: damaged, not plain");
            let started = std::time::Instant::now();
            let err = read(&vm).expect_err(plant).to_string();
            assert!(started.elapsed().as_secs() < 1, "{plant}: slow");
            assert!(
                err.contains(&format!("vm{i}/{BUNDLE_FILE_NAME}")),
                "{plant}: {err}"
            );
            // As the VM home itself (a real VM home elsewhere).
            let linked = ds.join(format!("linked{i}"));
            outside.plant(plant, &linked);
            assert!(!has_bundle(&linked), "{plant}");
            assert!(read(&linked).is_err(), "{plant}");
        }
        // A bundle of the largest valid size is read; one byte more is not.
        let vm = ds.join("big");
        fs::create_dir(&vm).unwrap();
        fs::write(bundle_path(&vm), vec![0; MAX_ENCODED_LEN]).unwrap();
        assert!(matches!(read(&vm), Err(DatastoreError::BadBundle { .. })));
        fs::write(bundle_path(&vm), vec![0; MAX_ENCODED_LEN + 1]).unwrap();
        assert!(matches!(
            read(&vm),
            Err(DatastoreError::Owned(OwnedFileError::TooLarge { .. }))
        ));
        assert_eq!(outside.snapshot(), before, "nothing outside changed");
    }

    #[test]
    fn corrupt_bundle_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(bundle_path(dir.path()), b"garbage").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains(BUNDLE_FILE_NAME), "{err}");
    }
}
