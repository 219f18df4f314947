//! One short-lived open of the sled KEK database.
//!
//! Why short-lived: sled 0.34 holds an exclusive flock on its db file for as
//! long as it is open, and the CLI and several mount processes on one host
//! share one key store. So every key operation opens the store, does its
//! work and closes it again, and an open that finds the lock held retries
//! for a while before reporting [`ProviderError::StoreBusy`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sled::transaction::{TransactionError, Transactional};

use super::record::{KekRecord, KeystoreId};
use super::{kek_db_path, Keystore};
use crate::keys::fsutil::io_error;
use crate::keys::ProviderError;

/// Pause between attempts to take a held store lock.
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(20);

const META_TREE: &[u8] = b"meta";
pub(super) const VERSIONS_TREE: &[u8] = b"kek_versions";
pub(super) const META_KEYSTORE_ID: &[u8] = b"keystore_id";
pub(super) const META_CHECK: &[u8] = b"check";
const META_CURRENT_VERSION: &[u8] = b"current_version";

/// Serializes store access within this process. sled's flock is per open
/// file description, so two opens in one process conflict just like two
/// processes do; waiting here instead of spinning on the flock keeps threads
/// of one mount from timing each other out.
static PROCESS_STORE_LOCK: Mutex<()> = Mutex::new(());

/// Successful openings of a key store by this process, for `.stats`: each
/// costs sled's segment read and two fsyncs, so this is what shows whether
/// a burst of unlocks shared its openings (`unlock_cache.rs`).
static STORE_OPENS: AtomicU64 = AtomicU64::new(0);

/// How many times this process has opened a key store.
pub fn store_opens() -> u64 {
    STORE_OPENS.load(Ordering::Relaxed)
}

/// The open store. Dropping it closes sled and releases both locks.
pub(super) struct Session<'a> {
    keystore: &'a Keystore,
    /// The `meta` tree. Only touched while this session (and so both
    /// locks) is alive.
    meta: sled::Tree,
    /// The `kek_versions` tree. Same rule as `meta`.
    versions: sled::Tree,
    /// The database; must drop after the trees and before the process lock
    /// (fields drop in declaration order), so the flock is released while we
    /// still hold the mutex and the next waiter finds the file free.
    db: sled::Db,
    /// Held for the whole session; see [`PROCESS_STORE_LOCK`].
    _process_lock: MutexGuard<'static, ()>,
}

/// A set of writes that [`Session::commit`] applies atomically and durably.
#[derive(Default)]
pub(super) struct Changes {
    /// `meta` entries to set.
    meta: Vec<(&'static [u8], Vec<u8>)>,
    /// Encoded version records to set.
    versions: Vec<(u32, Vec<u8>)>,
}

impl Changes {
    /// Sets a `meta` entry.
    pub fn set_meta(&mut self, key: &'static [u8], value: Vec<u8>) {
        self.meta.push((key, value));
    }

    /// Makes `version` the current (wrapping) version.
    pub fn set_current_version(&mut self, version: u32) {
        self.set_meta(META_CURRENT_VERSION, version.to_be_bytes().to_vec());
    }

    /// Stores a KEK version record.
    pub fn put_version(&mut self, version: u32, record: &KekRecord) {
        self.versions.push((version, record.to_bytes()));
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty() && self.versions.is_empty()
    }
}

impl<'a> Session<'a> {
    /// Opens (creating if needed) the store, waiting up to the key store's
    /// lock timeout for another process to let go of it.
    pub fn open(keystore: &'a Keystore) -> Result<Self, ProviderError> {
        let process_lock = PROCESS_STORE_LOCK
            .lock()
            // The mutex guards no data, so a panic elsewhere cannot have
            // left anything inconsistent behind it.
            .unwrap_or_else(PoisonError::into_inner);
        let db = open_db_waiting(keystore)?;
        STORE_OPENS.fetch_add(1, Ordering::Relaxed);
        keystore.opens.fetch_add(1, Ordering::Relaxed);
        let open_tree = |name: &[u8]| {
            db.open_tree(name)
                .map_err(sled_error(&keystore.dir, "opening a tree of"))
        };
        Ok(Self {
            meta: open_tree(META_TREE)?,
            versions: open_tree(VERSIONS_TREE)?,
            keystore,
            db,
            _process_lock: process_lock,
        })
    }

    /// The store's id.
    pub fn keystore_id(&self) -> Result<KeystoreId, ProviderError> {
        let value = self.required_meta(META_KEYSTORE_ID)?;
        value
            .as_ref()
            .try_into()
            .map_err(|_| self.corrupt("the keystore id is not 16 bytes".into()))
    }

    /// The master key check value.
    pub fn check_value(&self) -> Result<Vec<u8>, ProviderError> {
        Ok(self.required_meta(META_CHECK)?.to_vec())
    }

    /// The version that wraps new bundles.
    pub fn current_version(&self) -> Result<u32, ProviderError> {
        let value = self.required_meta(META_CURRENT_VERSION)?;
        let bytes = value
            .as_ref()
            .try_into()
            .map_err(|_| self.corrupt("the current version is not a 4-byte number".into()))?;
        Ok(u32::from_be_bytes(bytes))
    }

    /// One version's record, `None` if the version does not exist.
    pub fn record(&self, version: u32) -> Result<Option<KekRecord>, ProviderError> {
        let value = self
            .versions
            .get(version.to_be_bytes())
            .map_err(sled_error(&self.keystore.dir, "reading"))?;
        value
            .map(|bytes| self.decode_record(version, &bytes))
            .transpose()
    }

    /// All version records, by version.
    pub fn records(&self) -> Result<BTreeMap<u32, KekRecord>, ProviderError> {
        let mut records = BTreeMap::new();
        for entry in self.versions.iter() {
            let (key, value) = entry.map_err(sled_error(&self.keystore.dir, "reading"))?;
            let key: [u8; 4] = key
                .as_ref()
                .try_into()
                .map_err(|_| self.corrupt("a KEK version key is not 4 bytes".into()))?;
            let version = u32::from_be_bytes(key);
            records.insert(version, self.decode_record(version, &value)?);
        }
        Ok(records)
    }

    /// Applies `changes` atomically, then makes them durable. Every writer
    /// goes through here, so no state change can return before it is on
    /// stable storage: a bundle may be rewrapped under a new KEK version the
    /// moment `rotate` returns, and losing that version would lose the VM.
    pub fn commit(&self, changes: &Changes) -> Result<(), ProviderError> {
        (&self.meta, &self.versions)
            .transaction(|(meta, versions)| {
                for (key, value) in &changes.meta {
                    meta.insert(*key, value.as_slice())?;
                }
                for (version, value) in &changes.versions {
                    versions.insert(&version.to_be_bytes(), value.as_slice())?;
                }
                Ok(())
            })
            .map_err(|err: TransactionError<()>| match err {
                TransactionError::Storage(err) => sled_error(&self.keystore.dir, "writing")(err),
                TransactionError::Abort(()) => self.corrupt("a write transaction aborted".into()),
            })?;
        self.make_durable()
    }

    /// sled's `flush` alone is not durable: it uses sync_file_range, which
    /// neither flushes the drive cache nor covers file metadata (sled issue
    /// #1452). syncfs(2) on the store's filesystem does both.
    fn make_durable(&self) -> Result<(), ProviderError> {
        let dir = &self.keystore.dir;
        self.db.flush().map_err(sled_error(dir, "flushing"))?;
        let db_path = kek_db_path(dir);
        let db_dir = File::open(&db_path).map_err(io_error(format!(
            "opening {} to sync it",
            db_path.display()
        )))?;
        rustix::fs::syncfs(&db_dir).map_err(|errno| ProviderError::Io {
            context: format!("syncing the filesystem of {}", db_path.display()),
            source: io::Error::from(errno),
        })
    }

    fn required_meta(&self, key: &[u8]) -> Result<sled::IVec, ProviderError> {
        self.meta
            .get(key)
            .map_err(sled_error(&self.keystore.dir, "reading"))?
            .ok_or_else(|| {
                self.corrupt(format!(
                    "its `{}` entry is missing (an interrupted init or import?)",
                    String::from_utf8_lossy(key)
                ))
            })
    }

    fn decode_record(&self, version: u32, bytes: &[u8]) -> Result<KekRecord, ProviderError> {
        KekRecord::from_bytes(bytes).ok_or_else(|| {
            self.corrupt(format!("the record of KEK version {version} is malformed"))
        })
    }

    fn corrupt(&self, reason: String) -> ProviderError {
        self.keystore.corrupt(reason)
    }
}

/// Opens sled, retrying while another process (or session) holds its lock.
fn open_db_waiting(keystore: &Keystore) -> Result<sled::Db, ProviderError> {
    let started = Instant::now();
    let config = sled::Config::new()
        .path(kek_db_path(&keystore.dir))
        // Writers flush explicitly (see `commit`); a background flusher
        // thread would only delay closing the store.
        .flush_every_ms(None);
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(err) if is_lock_held(&err) => {
                let waited = started.elapsed();
                if waited >= keystore.lock_timeout {
                    return Err(ProviderError::StoreBusy {
                        keystore: keystore.dir.clone(),
                        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                std::thread::sleep(LOCK_RETRY_INTERVAL.min(keystore.lock_timeout - waited));
            }
            Err(err) => return Err(sled_error(&keystore.dir, "opening")(err)),
        }
    }
}

/// Whether `err` is sled 0.34.7 saying another holder has the db file lock.
///
/// sled (config.rs, `Config::try_lock`) calls fs2's `try_lock_exclusive`
/// (flock LOCK_EX|LOCK_NB) and on failure returns
/// `Error::Io(io::Error::new(ErrorKind::Other, format!("could not acquire
/// lock on {path:?}: {e:?}")))`, where `e` is the flock error, EWOULDBLOCK
/// (Debug: `Os { .., kind: WouldBlock, .. }`). Only that shape is "busy";
/// anything else (including other flock failures such as ENOLCK) is a real
/// error that retrying would only delay.
fn is_lock_held(err: &sled::Error) -> bool {
    let sled::Error::Io(io_err) = err else {
        return false;
    };
    let message = io_err.to_string();
    io_err.kind() == ErrorKind::Other
        && message.starts_with("could not acquire lock on")
        && message.contains("WouldBlock")
}

/// Maps a sled error: I/O stays I/O (exit code 4), anything else means the
/// store's contents are damaged.
fn sled_error<'a>(
    dir: &'a Path,
    doing: &'static str,
) -> impl Fn(sled::Error) -> ProviderError + 'a {
    move |err| match err {
        sled::Error::Io(source) => ProviderError::Io {
            context: format!("{doing} key store {}", kek_db_path(dir).display()),
            source,
        },
        other => ProviderError::StoreCorrupt {
            keystore: dir.to_path_buf(),
            reason: format!("{doing} the KEK database failed: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lock_is_recognised_and_other_errors_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let held = sled::open(&path).unwrap();
        let err = sled::open(&path).unwrap_err();
        assert!(is_lock_held(&err), "{err:?}");
        drop(held);
        let other = sled::Error::Io(io::Error::other("disk on fire"));
        assert!(!is_lock_held(&other));
        assert!(!is_lock_held(&sled::Error::Unsupported("x".into())));
    }

    /// A dropped database gives its lock back promptly, so the next
    /// operation's open (one per operation, by design) does not wait out
    /// the lock timeout. Not always at the very instant of the drop: sled's
    /// own threads may hold the database a moment longer (seen once in CI),
    /// which the store's open absorbs by retrying; here, within 1 s.
    #[test]
    fn dropped_db_releases_its_lock_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let db = loop {
                match sled::Config::new().path(&path).flush_every_ms(None).open() {
                    Ok(db) => break db,
                    Err(err) if is_lock_held(&err) && started.elapsed().as_secs() < 1 => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(err) => panic!("{err:?} after {:?}", started.elapsed()),
                }
            };
            drop(db);
        }
    }
}
