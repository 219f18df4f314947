//! The datastores this host's key store knows about.
//!
//! Recorded when a VM home is created or a datastore is mounted, so that
//! `provider list` can count bundles per KEK version and `provider destroy`
//! can refuse to destroy a version a VM still needs. The bundles themselves
//! stay the source of truth: this list only says where to look.
//!
//! Format: `<keystore>/known-datastores`, one absolute path per line,
//! rewritten through a temp file and a rename under an flock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::DatastoreError;

const FILE_NAME: &str = "known-datastores";
const LOCK_NAME: &str = "known-datastores.lock";

/// The list of known datastores of one key store directory.
pub struct KnownDatastores {
    keystore: PathBuf,
}

impl KnownDatastores {
    /// The list kept in `keystore`.
    pub fn new(keystore: &Path) -> Self {
        Self {
            keystore: keystore.to_path_buf(),
        }
    }

    fn file(&self) -> PathBuf {
        self.keystore.join(FILE_NAME)
    }

    /// Every known datastore, in the order they were first recorded.
    pub fn list(&self) -> Result<Vec<PathBuf>, DatastoreError> {
        match fs::read_to_string(self.file()) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(DatastoreError::io(
                format!("reading {}", self.file().display()),
                e,
            )),
        }
    }

    /// Adds `datastore` (made absolute) if it is not listed yet.
    pub fn record(&self, datastore: &Path) -> Result<(), DatastoreError> {
        let datastore = std::path::absolute(datastore)
            .map_err(|e| DatastoreError::io(format!("resolving {}", datastore.display()), e))?;
        if datastore.as_os_str().to_string_lossy().contains('\n') {
            return Ok(()); // cannot be represented in the list; scanning it directly still works
        }
        let lock_path = self.keystore.join(LOCK_NAME);
        let io = |what: &str, e| DatastoreError::io(format!("{what} {}", lock_path.display()), e);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("opening", e))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io("locking", e.into()))?;
        let mut known = self.list()?;
        if known.contains(&datastore) {
            return Ok(());
        }
        known.push(datastore);
        let temp = self.keystore.join(format!("{FILE_NAME}.tmp"));
        let mut text = String::new();
        for path in &known {
            text.push_str(&path.to_string_lossy());
            text.push('\n');
        }
        let write = |file: &mut File| {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
        };
        File::create(&temp)
            .and_then(|mut f| write(&mut f))
            .and_then(|()| fs::rename(&temp, self.file()))
            .map_err(|e| DatastoreError::io(format!("updating {}", self.file().display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_once_and_lists_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownDatastores::new(dir.path());
        assert!(known.list().unwrap().is_empty());
        known.record(Path::new("/ds/a")).unwrap();
        known.record(Path::new("/ds/b")).unwrap();
        known.record(Path::new("/ds/a")).unwrap();
        assert_eq!(
            known.list().unwrap(),
            vec![PathBuf::from("/ds/a"), PathBuf::from("/ds/b")]
        );
    }
}
