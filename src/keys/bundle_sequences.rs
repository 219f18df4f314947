//! The highest key bundle `sequence` this host has seen, per VM id: what
//! refuses an older but authentic bundle put back into a datastore
//! (rollback, docs/FORMAT.md §5.6).
//!
//! An older bundle of the same VM still authenticates (its KEK version may
//! still exist), yet it can undo a policy change (`encrypt-disks`) or bring
//! back a KEK binding the admin moved away from. The bundle cannot tell by
//! itself; only state outside the datastore can, so the key store keeps it.
//!
//! The record is a file in the key store directory, not in the sled
//! database: a host whose VMs are all wrapped by a KMIP provider has no
//! sled store, but always has the key store directory (it holds
//! `providers.json`). Mounts and CLI commands of one host update it
//! concurrently: every read-modify-write holds an flock on a lock file
//! beside it, waited for up to the key store's lock timeout (as the sled
//! store is, see `embedded/store.rs`), and replaces the file atomically.
//! Nothing in it is secret.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

use super::fsutil::{lock_exclusive_within, replace_private_file};

/// File name of the record inside the key store directory.
pub const SEQUENCES_FILE_NAME: &str = "bundle-sequences";
/// The lock file that serializes updates of the record.
const LOCK_FILE_NAME: &str = "bundle-sequences.lock";
/// First line of the record: its format and version.
const HEADER: &str = "vmcryptfs-bundle-sequences v1";
/// Prefix of the last line, which holds the SHA-256 of every line above.
const CHECKSUM_PREFIX: &str = "sha256 ";
/// The record is trusted local state, but a read is bounded all the same:
/// at about 50 bytes a line this is room for far more VMs than a host has.
const MAX_LEN: u64 = 16 << 20;
/// Pause between attempts to take a held lock.
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Serializes updates within this process, so threads of one mount wait
/// on a mutex instead of spinning on the flock (which two descriptors of
/// one process contend for just like two processes).
static PROCESS_LOCK: Mutex<()> = Mutex::new(());

/// Why the record refused or failed. Messages name the record file and say
/// what to do; none holds key material (there is none in the record).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SequenceError {
    /// The bundle is older than one this host has already seen.
    #[error("bundle sequence {found} is older than sequence {recorded}, which this host has already seen")]
    RolledBack {
        /// The highest sequence recorded for the VM.
        recorded: u64,
        /// The sequence of the bundle being checked.
        found: u64,
    },
    /// Another process held the lock for longer than the lock timeout.
    #[error("the bundle sequence record {path} is locked by another process (waited {waited_ms} ms); retry, or find the holder with `fuser -v {path}.lock`")]
    Busy {
        /// The record file.
        path: PathBuf,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The record does not parse or its checksum does not match.
    #[error("the bundle sequence record {path} is damaged ({reason}); restore it from a backup, or remove it to forget every recorded sequence (rollback protection then starts again from the bundles this host sees next)")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the file.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The per-VM sequence record of one key store directory: its location and
/// lock timeout (immutable), and the record as last read. Every check looks
/// at the file's stamp and reads it again if another process (or this
/// one) replaced it, so mounts and CLI commands always see each other's
/// updates.
#[derive(Debug, Clone)]
pub struct BundleSequences {
    /// The key store directory. Immutable.
    keystore: PathBuf,
    /// How long an update waits for another holder of the lock. Immutable.
    lock_timeout: Duration,
    /// The record as last read, with the file's stamp taken just before
    /// that read. Why: at ten thousand VMs the record is 500 KB, and
    /// reading and hashing it for each of a host's VMs powering on cost
    /// more than their unlocks. Shared by clones; held only to look up or
    /// replace it.
    last_read: Arc<Mutex<Option<LastRead>>>,
}

/// The record: the highest sequence seen, per VM id.
type Records = BTreeMap<[u8; 16], u64>;

/// The record file's stamp, taken before a read, and what that read found.
type LastRead = (FileStamp, Arc<Records>);

impl BundleSequences {
    /// The record of the key store at `keystore`, waiting as long for its
    /// lock as the embedded store does for its own.
    pub fn in_keystore(keystore: &Path) -> Self {
        Self {
            keystore: keystore.to_path_buf(),
            lock_timeout: super::embedded::lock_timeout_from_env(),
            last_read: Arc::default(),
        }
    }

    /// Sets how long an update waits for another process's lock.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Path of the record file.
    pub fn path(&self) -> PathBuf {
        self.keystore.join(SEQUENCES_FILE_NAME)
    }

    /// The highest sequence recorded for `vm_id`, if any.
    pub fn recorded(&self, vm_id: &[u8; 16]) -> Result<Option<u64>, SequenceError> {
        Ok(self.current()?.get(vm_id).copied())
    }

    /// The record as on disk: as last read if the file's stamp has not
    /// changed since (every update replaces the file, so its inode
    /// changes), else read again. Updates still read it under the lock.
    fn current(&self) -> Result<Arc<Records>, SequenceError> {
        let stamp = stamp_of(&self.path());
        let mut last_read = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((read_at, records)) = &*last_read {
            if stamp.is_some() && *read_at == stamp {
                return Ok(records.clone());
            }
        }
        let records = Arc::new(self.load()?);
        *last_read = Some((stamp, records.clone()));
        Ok(records)
    }

    /// Checks an authenticated bundle's `sequence` against the record and
    /// raises the record to it: refuses a sequence lower than recorded
    /// ([`SequenceError::RolledBack`]), and a record that cannot be read
    /// (nobody can tell then). Writes only when the record grows; if that
    /// write fails (lock held too long, key store full or read-only), the
    /// bundle is still no older than anything recorded, so this only warns
    /// instead of locking VMs out: the next unlock tries again.
    pub fn observe(&self, vm_id: &[u8; 16], sequence: u64) -> Result<(), SequenceError> {
        // Most unlocks see the sequence already recorded: answer those
        // without the lock (the file is replaced atomically, so a read
        // never sees half an update).
        match self.recorded(vm_id)? {
            Some(recorded) if recorded == sequence => return Ok(()),
            Some(recorded) if recorded > sequence => {
                return Err(SequenceError::RolledBack {
                    recorded,
                    found: sequence,
                })
            }
            _ => {}
        }
        let raised = self.update(|records| match records.get(vm_id) {
            Some(&recorded) if recorded > sequence => Err(SequenceError::RolledBack {
                recorded,
                found: sequence,
            }),
            Some(&recorded) if recorded == sequence => Ok(false),
            _ => {
                records.insert(*vm_id, sequence);
                Ok(true)
            }
        });
        match raised {
            Err(err @ (SequenceError::Busy { .. } | SequenceError::Io { .. })) => {
                log::warn!("bundle sequence {sequence} was checked but not recorded: {err}");
                Ok(())
            }
            other => other,
        }
    }

    /// Sets the record of `vm_id` to `sequence` even if that is lower: an
    /// admin accepting a rolled-back bundle. Returns the previous record.
    pub fn accept(&self, vm_id: &[u8; 16], sequence: u64) -> Result<Option<u64>, SequenceError> {
        let mut previous = None;
        self.update(|records| {
            previous = records.insert(*vm_id, sequence);
            Ok(previous != Some(sequence))
        })?;
        Ok(previous)
    }

    /// Runs `change` on the records under the lock; writes them back if it
    /// returns `Ok(true)`.
    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<[u8; 16], u64>) -> Result<bool, SequenceError>,
    ) -> Result<(), SequenceError> {
        let _process = PROCESS_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let _lock = self.lock()?;
        let mut records = self.load()?;
        if change(&mut records)? {
            replace_private_file(&self.path(), encode(&records).as_bytes()).map_err(|source| {
                SequenceError::Io {
                    context: format!("writing {}", self.path().display()),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Takes the flock on the lock file, retrying until the lock timeout.
    fn lock(&self) -> Result<Flock<File>, SequenceError> {
        let path = self.keystore.join(LOCK_FILE_NAME);
        match lock_exclusive_within(&path, self.lock_timeout, LOCK_RETRY_INTERVAL) {
            Ok(Ok(lock)) => Ok(lock),
            Ok(Err(waited)) => Err(SequenceError::Busy {
                path: self.path(),
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            }),
            Err(source) => Err(SequenceError::Io {
                context: format!("locking {}", path.display()),
                source,
            }),
        }
    }

    /// Reads the record; a missing file is an empty record.
    fn load(&self) -> Result<BTreeMap<[u8; 16], u64>, SequenceError> {
        let path = self.path();
        let io_err = |source| SequenceError::Io {
            context: format!("reading {}", path.display()),
            source,
        };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io_err(e)),
        };
        let mut text = String::new();
        let read = io::Read::read_to_string(&mut io::Read::take(&file, MAX_LEN + 1), &mut text);
        match read {
            Ok(_) if text.len() as u64 > MAX_LEN => Err(SequenceError::Corrupt {
                path: path.clone(),
                reason: format!("larger than {MAX_LEN} bytes"),
            }),
            Ok(_) => decode(&text).map_err(|reason| SequenceError::Corrupt {
                path: path.clone(),
                reason,
            }),
            Err(e) if e.kind() == ErrorKind::InvalidData => Err(SequenceError::Corrupt {
                path: path.clone(),
                reason: "not UTF-8 text".into(),
            }),
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Where an authenticated bundle's sequence is checked against this host's
/// record and raised: the record itself ([`BundleSequences`], one rewrite
/// per raise) or a [`SequenceBatch`] (one rewrite per batch).
pub trait SequenceCheck: Sync {
    /// As [`BundleSequences::observe`]: refuses a sequence lower than
    /// recorded, and raises the record to it.
    fn observe(&self, vm_id: &[u8; 16], sequence: u64) -> Result<(), SequenceError>;
}

impl SequenceCheck for BundleSequences {
    fn observe(&self, vm_id: &[u8; 16], sequence: u64) -> Result<(), SequenceError> {
        BundleSequences::observe(self, vm_id, sequence)
    }
}

/// Identity and version of the record file as last read: a change of
/// inode (every update replaces the file), size or modification time
/// means another process updated it.
type FileStamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp_of(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some((
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len(),
    ))
}

/// A batch of checks and raises (a re-key of every VM home): each check
/// compares with the record as on disk, read again whenever another
/// process has replaced it since, and with the raises of this batch; the
/// raises are written in one update by [`SequenceBatch::commit`], which the
/// batch must call before it reports success. Rollback detection is that
/// of [`BundleSequences::observe`]; only the write is deferred, and a crash
/// before it leaves what a failed write of `observe` leaves: bundles newer
/// than the record, which the next unlock records.
pub struct SequenceBatch<'a> {
    /// The record. Immutable.
    record: &'a BundleSequences,
    /// What was read and raised; held for each check.
    state: Mutex<BatchState>,
}

/// The mutable part of a [`SequenceBatch`]; the record as read is the
/// record's own ([`BundleSequences::current`]).
struct BatchState {
    /// Raises of this batch, not written yet.
    raised: BTreeMap<[u8; 16], u64>,
}

impl BundleSequences {
    /// A batch over this record; fails if the record cannot be read (the
    /// callers then check one VM at a time, each failing as it would).
    pub fn batch(&self) -> Result<SequenceBatch<'_>, SequenceError> {
        self.current()?;
        Ok(SequenceBatch {
            record: self,
            state: Mutex::new(BatchState {
                raised: BTreeMap::new(),
            }),
        })
    }
}

impl SequenceCheck for SequenceBatch<'_> {
    fn observe(&self, vm_id: &[u8; 16], sequence: u64) -> Result<(), SequenceError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let read = self.record.current()?;
        let recorded = read.get(vm_id).max(state.raised.get(vm_id)).copied();
        match recorded {
            Some(recorded) if recorded > sequence => Err(SequenceError::RolledBack {
                recorded,
                found: sequence,
            }),
            Some(recorded) if recorded == sequence => Ok(()),
            _ => {
                state.raised.insert(*vm_id, sequence);
                Ok(())
            }
        }
    }
}

impl SequenceBatch<'_> {
    /// Writes every raise of the batch in one update of the record (never
    /// lowering a sequence another process recorded meanwhile). Returns how
    /// many VMs were raised.
    pub fn commit(self) -> Result<usize, SequenceError> {
        let raised = self
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .raised;
        if raised.is_empty() {
            return Ok(0);
        }
        self.record.update(|records| {
            let mut changed = false;
            for (vm_id, &sequence) in &raised {
                if records.get(vm_id).is_none_or(|&r| r < sequence) {
                    records.insert(*vm_id, sequence);
                    changed = true;
                }
            }
            Ok(changed)
        })?;
        Ok(raised.len())
    }
}

/// The record's text: the header, one `<vm id hex> <sequence>` line per VM
/// in ascending VM id order, and the checksum line.
fn encode(records: &BTreeMap<[u8; 16], u64>) -> String {
    let mut text = format!("{HEADER}\n");
    for (vm_id, sequence) in records {
        text.push_str(&format!("{} {sequence}\n", hex::encode(vm_id)));
    }
    let checksum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str(&format!("{CHECKSUM_PREFIX}{checksum}\n"));
    text
}

/// Parses [`encode`]'s text, refusing anything it would not have written.
fn decode(text: &str) -> Result<BTreeMap<[u8; 16], u64>, String> {
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or("no checksum line")?;
    let (body, last) = text.split_at(body_end);
    let checksum = last
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix(CHECKSUM_PREFIX))
        .ok_or("the last line is not the checksum line")?;
    if hex::encode(Sha256::digest(body.as_bytes())) != checksum {
        return Err("its checksum does not match its content (edited or damaged)".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("the first line is not `{HEADER}`"));
    }
    let mut records = BTreeMap::new();
    for (index, line) in lines.enumerate() {
        let bad = || format!("line {} is not `<32 hex digits> <sequence>`", index + 2);
        let (id, sequence) = line.split_once(' ').ok_or_else(bad)?;
        let mut vm_id = [0u8; 16];
        hex::decode_to_slice(id, &mut vm_id).map_err(|_| bad())?;
        let sequence: u64 = sequence.parse().map_err(|_| bad())?;
        if records
            .last_key_value()
            .is_some_and(|(last, _)| *last >= vm_id)
        {
            return Err(format!(
                "line {}: VM ids are not in ascending order",
                index + 2
            ));
        }
        records.insert(vm_id, sequence);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::FlockArg;
    use std::time::Instant;

    const VM_A: [u8; 16] = [0xaa; 16];
    const VM_B: [u8; 16] = [0x0b; 16];

    fn record() -> (tempfile::TempDir, BundleSequences) {
        let dir = tempfile::tempdir().unwrap();
        let record = BundleSequences::in_keystore(dir.path());
        (dir, record)
    }

    /// A batch refuses what `observe` refuses, sees what another process
    /// recorded meanwhile, writes nothing until its commit, and its commit
    /// never lowers a record.
    #[test]
    fn a_batch_checks_like_observe_and_writes_once_at_commit() {
        let (_dir, record) = record();
        record.observe(&VM_A, 5).unwrap();
        let batch = record.batch().unwrap();
        assert!(matches!(
            SequenceCheck::observe(&batch, &VM_A, 4),
            Err(SequenceError::RolledBack {
                recorded: 5,
                found: 4
            })
        ));
        SequenceCheck::observe(&batch, &VM_A, 6).unwrap();
        SequenceCheck::observe(&batch, &VM_B, 1).unwrap();
        // Its own raises count for its later checks...
        assert!(matches!(
            SequenceCheck::observe(&batch, &VM_B, 0),
            Err(SequenceError::RolledBack {
                recorded: 1,
                found: 0
            })
        ));
        // ...but are not written yet.
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(5));
        assert_eq!(record.recorded(&VM_B).unwrap(), None);
        // Another process records a newer sequence during the batch.
        record.observe(&VM_A, 9).unwrap();
        assert!(matches!(
            SequenceCheck::observe(&batch, &VM_A, 7),
            Err(SequenceError::RolledBack {
                recorded: 9,
                found: 7
            })
        ));
        assert_eq!(batch.commit().unwrap(), 2);
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(9), "never lowered");
        assert_eq!(record.recorded(&VM_B).unwrap(), Some(1));
    }

    /// A batch over a damaged record cannot start: its VMs are then checked
    /// one at a time and each fails as it would.
    #[test]
    fn a_batch_over_a_damaged_record_is_refused() {
        let (_dir, record) = record();
        record.observe(&VM_A, 1).unwrap();
        std::fs::write(record.path(), "vmcryptfs-bundle-sequences v1\nsha256 00\n").unwrap();
        assert!(matches!(record.batch(), Err(SequenceError::Corrupt { .. })));
    }

    /// The record as last read serves checks only while the file is
    /// unchanged: a raise by another process (another instance, with a
    /// cache of its own) is seen at the next check.
    #[test]
    fn a_raise_by_another_process_is_seen_at_the_next_check() {
        let (dir, here) = record();
        let elsewhere = BundleSequences::in_keystore(dir.path());
        let vm = [7u8; 16];
        here.observe(&vm, 2).unwrap();
        here.observe(&vm, 2).unwrap();
        elsewhere.observe(&vm, 3).unwrap();
        assert!(matches!(
            here.observe(&vm, 2),
            Err(SequenceError::RolledBack {
                recorded: 3,
                found: 2
            })
        ));
        assert_eq!(here.recorded(&vm).unwrap(), Some(3));
    }

    #[test]
    fn observe_raises_the_record_and_refuses_older_sequences() {
        let (_dir, record) = record();
        assert_eq!(record.recorded(&VM_A).unwrap(), None);
        record.observe(&VM_A, 3).unwrap();
        record.observe(&VM_A, 3).unwrap();
        record.observe(&VM_B, 1).unwrap();
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(3));
        let err = record.observe(&VM_A, 2).unwrap_err();
        assert!(
            matches!(
                err,
                SequenceError::RolledBack {
                    recorded: 3,
                    found: 2
                }
            ),
            "{err:?}"
        );
        record.observe(&VM_A, 7).unwrap();
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(7));
        assert_eq!(record.recorded(&VM_B).unwrap(), Some(1));
    }

    #[test]
    fn accept_lowers_the_record_on_purpose() {
        let (_dir, record) = record();
        record.observe(&VM_A, 9).unwrap();
        assert_eq!(record.accept(&VM_A, 4).unwrap(), Some(9));
        record.observe(&VM_A, 4).unwrap();
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(4));
        assert_eq!(record.accept(&VM_B, 2).unwrap(), None);
    }

    #[test]
    fn the_file_is_private_and_replaced_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, record) = record();
        record.observe(&VM_A, 5).unwrap();
        let mode = std::fs::metadata(record.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(record.path()).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(
            text.contains(&format!("{} 5\n", hex::encode(VM_A))),
            "{text}"
        );
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [SEQUENCES_FILE_NAME, LOCK_FILE_NAME]);
    }

    /// Tamper test: any change to the stored record (a lowered number, a
    /// removed line, a new header, junk) is refused naming the file, never
    /// read as "nothing recorded".
    #[test]
    fn a_damaged_or_edited_record_is_refused_naming_the_file() {
        let (_dir, record) = record();
        record.observe(&VM_B, 2).unwrap();
        record.observe(&VM_A, 12).unwrap();
        let good = std::fs::read_to_string(record.path()).unwrap();
        let a_line = format!("{} 12\n", hex::encode(VM_A));
        let edits = [
            good.replace(&a_line, &format!("{} 11\n", hex::encode(VM_A))),
            good.replace(&a_line, ""),
            good.replace("v1", "v2"),
            good.lines().take(2).collect::<Vec<_>>().join("\n"),
            String::from("junk"),
            good.replace('\n', "\r\n"),
        ];
        for edited in edits {
            std::fs::write(record.path(), &edited).unwrap();
            for err in [
                record.observe(&VM_A, 12).unwrap_err(),
                record.recorded(&VM_A).unwrap_err(),
            ] {
                assert!(
                    matches!(&err, SequenceError::Corrupt { .. })
                        && err.to_string().contains(SEQUENCES_FILE_NAME),
                    "{edited:?}: {err}"
                );
            }
        }
        std::fs::write(record.path(), &good).unwrap();
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(12));
    }

    /// A lock held past the timeout: an admin's accept fails as busy; an
    /// unlock's check still answers (it reads without the lock) and only
    /// its raise of the record is skipped, so a stuck process elsewhere
    /// never locks VMs out.
    #[test]
    fn a_held_lock_gives_busy_after_the_timeout() {
        let (dir, record) = record();
        let record = record.with_lock_timeout(Duration::from_millis(200));
        record.observe(&VM_A, 4).unwrap();
        let held = Flock::lock(
            File::create(dir.path().join(LOCK_FILE_NAME)).unwrap(),
            FlockArg::LockExclusive,
        )
        .unwrap();
        let started = Instant::now();
        let err = record.accept(&VM_A, 1).unwrap_err();
        assert!(matches!(err, SequenceError::Busy { .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        record.observe(&VM_A, 5).unwrap();
        assert!(matches!(
            record.observe(&VM_A, 3),
            Err(SequenceError::RolledBack { .. })
        ));
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(4));
        drop(held);
        record.observe(&VM_A, 5).unwrap();
        assert_eq!(record.recorded(&VM_A).unwrap(), Some(5));
    }

    /// Concurrent updates from many threads (and, through the flock, many
    /// processes) lose none of them.
    #[test]
    fn concurrent_updates_are_all_kept() {
        let (_dir, record) = record();
        std::thread::scope(|scope| {
            for thread in 0..4u8 {
                let record = record.clone();
                scope.spawn(move || {
                    for sequence in 1..=5 {
                        record.observe(&[thread; 16], sequence).unwrap();
                    }
                });
            }
        });
        for thread in 0..4u8 {
            assert_eq!(record.recorded(&[thread; 16]).unwrap(), Some(5));
        }
    }
}
