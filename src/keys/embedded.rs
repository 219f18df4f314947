//! The embedded key provider (`local`): versioned KEKs in a sled database,
//! each wrapped under the master key file.
//!
//! Layout of a key store directory (mode 0700):
//!
//! * `master.key`: the root of trust ([`crate::keys::master_key`]).
//! * `kek.sled/`: the sled database, with two trees:
//!   * `meta`: `keystore_id` (16 random bytes; its hex is the `kek_id` of
//!     every [`KekRef`]), `check` (a random key wrapped under the master key,
//!     to recognise a wrong master key), `current_version` (u32 BE).
//!   * `kek_versions`: version (u32 BE) → record (see `record.rs`).
//!
//! The database is opened only for the duration of one key operation (see
//! `store.rs`), so the CLI and several mounts can share one store.

pub(crate) mod backup;
mod batch;
mod record;
mod restore;
mod store;
mod unlock_cache;

pub use self::store::store_opens;
pub use self::unlock_cache::UNLOCK_KEK_TTL;

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::record::{check_value_matches, new_check_value, KekRecord, KeystoreId};
use self::store::{Changes, Session, META_CHECK, META_KEYSTORE_ID};
use super::fetched_keks::{unwrap_under, wrap_under, KekUse};
use super::fsutil::io_error;
use super::master_key::{self, MASTER_KEY_FILE_NAME};
use super::{KekRef, KekState, KekVersionInfo, KeyProvider, ProviderError};
use crate::crypto::random;
use crate::crypto::secret::{Dek, Kek, MasterKey};

/// Provider name of the embedded provider, as recorded in bundles.
pub const EMBEDDED_PROVIDER_NAME: &str = "local";
/// Directory name of the KEK database inside the key store.
pub const KEK_DB_DIR_NAME: &str = "kek.sled";
/// Environment variable: how long (ms) to wait for another process's lock on
/// the key store before giving up with [`ProviderError::StoreBusy`].
pub const LOCK_TIMEOUT_ENV: &str = "VMCRYPTFS_KEYSTORE_LOCK_TIMEOUT_MS";
/// Lock wait when [`LOCK_TIMEOUT_ENV`] is unset.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// TEST-ONLY: environment variable naming a point at which the process kills
/// itself with SIGKILL, to prove that state changes are durable before they
/// return. The only point is `rotate` (right after the durability step,
/// before sled is closed). Never set it in production.
const TEST_CRASH_AFTER_ENV: &str = "VMCRYPTFS_TEST_CRASH_AFTER";

/// Permission bits of the key store directory.
const KEYSTORE_DIR_MODE: u32 = 0o700;

/// Path of the master key file in a key store directory.
pub fn master_key_path(keystore: &Path) -> PathBuf {
    keystore.join(MASTER_KEY_FILE_NAME)
}

/// Path of the KEK database in a key store directory.
pub fn kek_db_path(keystore: &Path) -> PathBuf {
    keystore.join(KEK_DB_DIR_NAME)
}

/// Where the store is and how long to wait for its lock: what a session
/// needs to open it and to word its errors.
struct Keystore {
    /// The key store directory.
    dir: PathBuf,
    /// How long an open waits for another holder of the sled lock.
    lock_timeout: Duration,
    /// Openings through this value (the process's total is
    /// [`store_opens`]); only counted up.
    opens: std::sync::atomic::AtomicU64,
}

impl Keystore {
    fn new(dir: &Path, lock_timeout: Duration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            lock_timeout,
            opens: Default::default(),
        }
    }

    fn corrupt(&self, reason: String) -> ProviderError {
        ProviderError::StoreCorrupt {
            keystore: self.dir.clone(),
            reason: format!("{reason}; restore it from a backup with `vmcryptfs provider import`"),
        }
    }
}

/// What [`EmbeddedProvider::import`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSummary {
    /// Whether the KEK database was created from the backup.
    pub created_store: bool,
    /// Versions added from the backup (versions already present are kept).
    pub added_versions: Vec<u32>,
    /// The current version after the import.
    pub current: KekRef,
}

/// The embedded key provider. All fields are set at construction and never
/// change, so the provider is shared across threads without a lock; the
/// sled database itself is guarded per operation by the process-wide store
/// mutex and sled's file lock (see `store.rs`).
///
/// It holds no key. The master key is read from `master.key` for each
/// operation that needs it, checked against the store's check value, and
/// wiped when the operation ends, like the KEK it unwraps (DESIGN.md §2.6):
/// a long-running mount keeps only the DEKs of its unlocked VMs in memory,
/// not the key that opens every KEK of the store.
pub struct EmbeddedProvider {
    /// Directory and lock timeout. Immutable.
    keystore: Keystore,
    /// This store's identity. Immutable: a store never changes id.
    keystore_id: KeystoreId,
    /// Hex of `keystore_id`, the `kek_id` of every [`KekRef`]. Immutable.
    kek_id: String,
}

impl EmbeddedProvider {
    /// Creates a key store in `keystore`: the master key file, a new store
    /// id, and KEK version 1 (active, current), durably. Refuses if a master
    /// key or KEK database is already there.
    pub fn init(keystore: &Path) -> Result<(Self, KekRef), ProviderError> {
        if master_key_path(keystore).exists() || kek_db_path(keystore).exists() {
            return Err(ProviderError::AlreadyInitialized {
                keystore: keystore.to_path_buf(),
            });
        }
        create_keystore_dir(keystore)?;
        let master = master_key::create(&master_key_path(keystore))?;
        let provider = Self::from_parts(
            Keystore::new(keystore, lock_timeout_from_env()),
            random::array(),
        );
        match provider.write_first_version(&master) {
            Ok(kek) => Ok((provider, kek)),
            Err(err) => {
                // Nothing is wrapped under this master key yet; remove the
                // half-made store so `init` can simply be run again.
                discard(&kek_db_path(keystore), |p| fs::remove_dir_all(p));
                discard(&master_key_path(keystore), |p| fs::remove_file(p));
                Err(err)
            }
        }
    }

    /// Opens an existing key store: loads the master key and checks that it
    /// is the one this store was made with.
    pub fn open(keystore: &Path) -> Result<Self, ProviderError> {
        if !kek_db_path(keystore).exists() {
            return Err(ProviderError::NotInitialized {
                keystore: keystore.to_path_buf(),
            });
        }
        let master = master_key::load(&master_key_path(keystore))?;
        let store = Keystore::new(keystore, lock_timeout_from_env());
        let (keystore_id, check) = {
            let session = Session::open(&store)?;
            (session.keystore_id()?, session.check_value()?)
        };
        let provider = Self::from_parts(store, keystore_id);
        provider.verify_check_value(&master, &check)?;
        Ok(provider)
    }

    /// Sets how long operations wait for another process's lock on the
    /// store (default [`DEFAULT_LOCK_TIMEOUT`] or [`LOCK_TIMEOUT_ENV`]).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.keystore.lock_timeout = timeout;
        self
    }

    /// The key store directory.
    pub fn keystore_dir(&self) -> &Path {
        &self.keystore.dir
    }

    /// The `kek_id` of this store's KEKs (hex of the store id).
    pub fn kek_id(&self) -> &str {
        &self.kek_id
    }

    fn from_parts(keystore: Keystore, keystore_id: KeystoreId) -> Self {
        Self {
            keystore,
            keystore_id,
            kek_id: hex::encode(keystore_id),
        }
    }

    /// Opens the store for one operation. Refuses if the database directory
    /// has gone (sled would silently create an empty one, which would then
    /// shadow the real store when it comes back).
    fn session(&self) -> Result<Session<'_>, ProviderError> {
        if !kek_db_path(&self.keystore.dir).is_dir() {
            return Err(ProviderError::NotInitialized {
                keystore: self.keystore.dir.clone(),
            });
        }
        self.new_or_existing_session()
    }

    /// Opens the store, creating the database if needed (init and import).
    fn new_or_existing_session(&self) -> Result<Session<'_>, ProviderError> {
        Session::open(&self.keystore)
    }

    fn kek_ref(&self, version: u32) -> KekRef {
        KekRef {
            provider: EMBEDDED_PROVIDER_NAME.to_string(),
            kek_id: self.kek_id.clone(),
            version,
        }
    }

    /// The master key, read from its file for one operation of `session`
    /// and checked against the store's check value (so a `master.key`
    /// replaced while a mount runs is reported as such).
    fn master(&self, session: &Session<'_>) -> Result<MasterKey, ProviderError> {
        let master = master_key::load(&master_key_path(&self.keystore.dir))?;
        self.verify_check_value(&master, &session.check_value()?)?;
        Ok(master)
    }

    fn write_first_version(&self, master: &MasterKey) -> Result<KekRef, ProviderError> {
        let mut changes = Changes::default();
        changes.set_meta(META_KEYSTORE_ID, self.keystore_id.to_vec());
        changes.set_meta(META_CHECK, new_check_value(master, &self.keystore_id));
        changes.put_version(1, &self.new_kek_record(master, 1));
        changes.set_current_version(1);
        self.new_or_existing_session()?.commit(&changes)?;
        Ok(self.kek_ref(1))
    }

    fn new_kek_record(&self, master: &MasterKey, version: u32) -> KekRecord {
        KekRecord::generate(master, &self.keystore_id, version, now_unix())
    }

    fn verify_check_value(&self, master: &MasterKey, check: &[u8]) -> Result<(), ProviderError> {
        match check_value_matches(master, &self.keystore_id, check) {
            true => Ok(()),
            false => Err(ProviderError::WrongMasterKey {
                path: master_key_path(&self.keystore.dir),
                keystore: self.keystore.dir.clone(),
            }),
        }
    }

    /// Refuses KEK refs this store cannot serve.
    fn check_owner(&self, kek: &KekRef) -> Result<(), ProviderError> {
        if kek.provider != EMBEDDED_PROVIDER_NAME {
            return Err(ProviderError::UnknownProvider {
                name: kek.provider.clone(),
            });
        }
        if kek.kek_id != self.kek_id {
            return Err(ProviderError::ForeignKek {
                kek_id: kek.kek_id.clone(),
                store_kek_id: self.kek_id.clone(),
            });
        }
        Ok(())
    }

    /// The plaintext KEK of `kek`, if its state allows `usage`.
    fn kek_for(&self, kek: &KekRef, usage: KekUse) -> Result<Kek, ProviderError> {
        self.check_owner(kek)?;
        self.kek_in(&self.session()?, kek, usage)
    }

    /// The current KEK and its plaintext for wrapping, from one opening of
    /// the store: what a batch asks first (see `batch.rs`), since every
    /// create or re-key wraps under the current KEK next.
    fn current_for_wrap(&self) -> Result<(KekRef, Kek), ProviderError> {
        let session = self.session()?;
        let current = self.kek_ref(session.current_version()?);
        let plain = self.kek_in(&session, &current, KekUse::Wrap)?;
        Ok((current, plain))
    }

    /// [`EmbeddedProvider::kek_for`] within an open `session`.
    fn kek_in(
        &self,
        session: &Session<'_>,
        kek: &KekRef,
        usage: KekUse,
    ) -> Result<Kek, ProviderError> {
        let record = session.record(kek.version)?;
        let record = record.ok_or_else(|| self.unknown_version(kek.version))?;
        match (record.state, usage) {
            (KekState::Destroyed, _) => Err(self.destroyed(kek.version)),
            (KekState::Retired, KekUse::Wrap) => Err(ProviderError::KekNotActive {
                kek_id: self.kek_id.clone(),
                version: kek.version,
                state: record.state.as_str(),
            }),
            _ => self.unwrap_kek(&self.master(session)?, kek.version, &record),
        }
    }

    /// `master` was verified by the check value, so a record that does not
    /// unwrap has been modified.
    fn unwrap_kek(
        &self,
        master: &MasterKey,
        version: u32,
        record: &KekRecord,
    ) -> Result<Kek, ProviderError> {
        record
            .unwrap_kek(master, &self.keystore_id, version)
            .ok_or_else(|| {
                self.keystore.corrupt(format!(
                    "the record of KEK version {version} does not decrypt under the master key (it was modified)"
                ))
            })
    }

    /// Applies a lifecycle transition to a non-current version. `next`
    /// returns the new record, or `None` if nothing needs to change.
    fn change_state(
        &self,
        version: u32,
        action: &'static str,
        next: impl FnOnce(&KekRecord) -> Result<Option<KekRecord>, ProviderError>,
    ) -> Result<(), ProviderError> {
        let session = self.session()?;
        if version == session.current_version()? {
            return Err(ProviderError::CurrentKekVersion {
                kek_id: self.kek_id.clone(),
                version,
                action,
            });
        }
        let record = session
            .record(version)?
            .ok_or_else(|| self.unknown_version(version))?;
        if let Some(updated) = next(&record)? {
            let mut changes = Changes::default();
            changes.put_version(version, &updated);
            session.commit(&changes)?;
        }
        Ok(())
    }

    fn unknown_version(&self, version: u32) -> ProviderError {
        ProviderError::UnknownKekVersion {
            kek_id: self.kek_id.clone(),
            version,
        }
    }

    fn destroyed(&self, version: u32) -> ProviderError {
        ProviderError::KekDestroyed {
            kek_id: self.kek_id.clone(),
            version,
        }
    }
}

impl KeyProvider for EmbeddedProvider {
    fn name(&self) -> &str {
        EMBEDDED_PROVIDER_NAME
    }

    fn current_kek(&self) -> Result<KekRef, ProviderError> {
        let current = self.session()?.current_version()?;
        Ok(self.kek_ref(current))
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        Ok(wrap_under(&self.kek_for(kek, KekUse::Wrap)?, dek, aad))
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        unwrap_under(&self.kek_for(kek, KekUse::Unwrap)?, kek, wrapped, aad)
    }

    fn list_versions(&self) -> Result<Vec<KekVersionInfo>, ProviderError> {
        let session = self.session()?;
        let current = session.current_version()?;
        let versions = session
            .records()?
            .into_iter()
            .map(|(version, record)| KekVersionInfo {
                version,
                state: record.state,
                created_unix: record.created_unix,
                current: version == current,
            })
            .collect();
        Ok(versions)
    }

    /// Retires an active version: it still unwraps but no longer wraps.
    /// Refuses the current version. Retiring a retired version is a no-op.
    fn retire(&self, version: u32) -> Result<(), ProviderError> {
        self.change_state(version, "retired", |record| match record.state {
            KekState::Active => Ok(Some(record.with_state(KekState::Retired))),
            KekState::Retired => Ok(None),
            KekState::Destroyed => Err(self.destroyed(version)),
        })
    }

    /// Destroys a version: its wrapped key material is deleted, and bundles
    /// still wrapped under it can no longer be unlocked. Refuses the current
    /// version. Destroying a destroyed version is a no-op.
    ///
    /// sled is log-structured: the old record bytes may linger in its log
    /// files until sled reuses that space. They are still wrapped under the
    /// master key, so this is only a loss of secrecy if the master key leaks
    /// too.
    fn destroy(&self, version: u32) -> Result<(), ProviderError> {
        self.change_state(version, "destroyed", |record| match record.state {
            KekState::Destroyed => Ok(None),
            KekState::Active | KekState::Retired => {
                Ok(Some(record.with_state(KekState::Destroyed)))
            }
        })
    }

    fn rotate(&self) -> Result<KekRef, ProviderError> {
        let session = self.session()?;
        let newest = session.records()?.last_key_value().map_or(0, |(v, _)| *v);
        let next = newest
            .checked_add(1)
            .ok_or_else(|| self.keystore.corrupt("KEK versions are exhausted".into()))?;
        let mut changes = Changes::default();
        changes.put_version(next, &self.new_kek_record(&self.master(&session)?, next));
        changes.set_current_version(next);
        session.commit(&changes)?;
        crash_here_if_testing("rotate");
        drop(session);
        Ok(self.kek_ref(next))
    }

    fn batch(self: Arc<Self>) -> Option<Arc<dyn KeyProvider>> {
        Some(Arc::new(batch::EmbeddedBatch::new(self)))
    }

    fn caching_unlocks(self: Arc<Self>) -> Option<Arc<dyn KeyProvider>> {
        Some(Arc::new(unlock_cache::UnlockCache::new(
            self,
            UNLOCK_KEK_TTL,
        )))
    }
}

/// TEST-ONLY crash hook, see [`TEST_CRASH_AFTER_ENV`].
fn crash_here_if_testing(point: &str) {
    if std::env::var_os(TEST_CRASH_AFTER_ENV).is_some_and(|value| value == point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Creates the key store directory 0700 (the master key in it is the root
/// of trust). An existing directory is kept as it is, with a warning if
/// others can enter it.
fn create_keystore_dir(keystore: &Path) -> Result<(), ProviderError> {
    DirBuilder::new()
        .recursive(true)
        .mode(KEYSTORE_DIR_MODE)
        .create(keystore)
        .map_err(io_error(format!(
            "creating key store directory {}",
            keystore.display()
        )))?;
    let mode = fs::metadata(keystore)
        .map_err(io_error(format!("inspecting {}", keystore.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        log::warn!(
            "key store directory {} has mode {:03o}; run `chmod 700 {}`",
            keystore.display(),
            mode & 0o777,
            keystore.display()
        );
    }
    Ok(())
}

/// Best-effort removal of a half-made store; the original error is what
/// the user needs to see, so a failure here is only logged.
fn discard(path: &Path, remove: impl FnOnce(&Path) -> std::io::Result<()>) {
    if let Err(err) = remove(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            log::warn!(
                "could not remove {} after a failed operation: {err}",
                path.display()
            );
        }
    }
}

/// The lock timeout from [`LOCK_TIMEOUT_ENV`], or the default; also the
/// bundle sequence record's (`bundle_sequences.rs`).
pub(crate) fn lock_timeout_from_env() -> Duration {
    let Some(value) = std::env::var_os(LOCK_TIMEOUT_ENV) else {
        return DEFAULT_LOCK_TIMEOUT;
    };
    match value.to_str().and_then(|text| text.trim().parse().ok()) {
        Some(millis) => Duration::from_millis(millis),
        None => {
            log::warn!(
                "ignoring {LOCK_TIMEOUT_ENV}={value:?}: not a number of milliseconds; using {} ms",
                DEFAULT_LOCK_TIMEOUT.as_millis()
            );
            DEFAULT_LOCK_TIMEOUT
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::keys::embedded::store::VERSIONS_TREE;

    const AAD: &[u8] = b"vm-home-1 bundle";

    /// A temp dir with a fresh key store in its `ks` subdirectory.
    fn new_store() -> (tempfile::TempDir, PathBuf, EmbeddedProvider) {
        let dir = tempfile::tempdir().unwrap();
        let keystore = dir.path().join("ks");
        let (provider, _) = EmbeddedProvider::init(&keystore).unwrap();
        (dir, keystore, provider)
    }

    fn version(provider: &EmbeddedProvider, version: u32) -> KekRef {
        provider.kek_ref(version)
    }

    fn wrap_random_dek(provider: &EmbeddedProvider, kek: &KekRef) -> (Dek, Vec<u8>) {
        let dek = Dek::generate();
        let wrapped = provider.wrap_dek(kek, &dek, AAD).unwrap();
        (dek, wrapped)
    }

    fn assert_unwraps(provider: &EmbeddedProvider, kek: &KekRef, dek: &Dek, wrapped: &[u8]) {
        let unwrapped = provider.unwrap_dek(kek, wrapped, AAD).unwrap();
        assert_eq!(unwrapped.expose(), dek.expose());
    }

    /// A batch wraps and unwraps interchangeably with the provider, reads
    /// the master key once per KEK version (it still works with
    /// `master.key` gone, where the provider no longer does), still
    /// refuses a retired version for wrapping, and asks the store again
    /// once dropped.
    #[test]
    fn a_batch_fetches_each_kek_once_and_wraps_like_the_provider() {
        let (_dir, keystore, provider) = new_store();
        let provider = Arc::new(provider);
        let v1 = version(&provider, 1);
        provider.rotate().unwrap();
        provider.retire(1).unwrap();
        let v2 = version(&provider, 2);
        let (dek, wrapped) = wrap_random_dek(&provider, &v2);
        let batch = provider
            .clone()
            .batch()
            .expect("the embedded provider batches");
        assert_eq!(batch.current_kek().unwrap(), v2);
        let rewrapped = batch.wrap_dek(&v2, &dek, AAD).unwrap();
        assert_unwraps(&provider, &v2, &dek, &rewrapped);
        assert_eq!(
            batch.unwrap_dek(&v2, &wrapped, AAD).unwrap().expose(),
            dek.expose()
        );
        assert!(matches!(
            batch.wrap_dek(&v1, &dek, AAD),
            Err(ProviderError::KekNotActive { .. })
        ));
        let master = fs::read(master_key_path(&keystore)).unwrap();
        fs::remove_file(master_key_path(&keystore)).unwrap();
        assert!(batch.wrap_dek(&v2, &dek, AAD).is_ok(), "fetched once");
        assert!(matches!(
            batch.unwrap_dek(&v2, &rewrapped[..rewrapped.len() - 1], AAD),
            Err(ProviderError::UnwrapFailed { .. })
        ));
        assert!(matches!(
            provider.wrap_dek(&v2, &dek, AAD),
            Err(ProviderError::MasterKeyMissing { .. })
        ));
        drop(batch);
        let batch = provider.clone().batch().unwrap();
        assert!(matches!(
            batch.wrap_dek(&v2, &dek, AAD),
            Err(ProviderError::MasterKeyMissing { .. })
        ));
        fs::write(master_key_path(&keystore), master).unwrap();
        assert!(batch.wrap_dek(&v2, &dek, AAD).is_ok());
    }

    /// A batch answers with the current KEK it read first, whatever
    /// happens to the store meanwhile, and forgets it, with the KEKs it
    /// fetched, when it changes the provider itself.
    #[test]
    fn a_batch_keeps_its_current_kek_until_it_changes_the_provider() {
        let (_dir, _keystore, provider) = new_store();
        let provider = Arc::new(provider);
        let v1 = version(&provider, 1);
        let batch = provider.clone().batch().unwrap();
        assert_eq!(batch.current_kek().unwrap(), v1);
        let v2 = provider.rotate().unwrap();
        assert_eq!(batch.current_kek().unwrap(), v1, "as of its first read");
        let v3 = batch.rotate().unwrap();
        assert_eq!(v3, version(&provider, 3));
        assert_eq!(batch.current_kek().unwrap(), v3, "its own rotation");
        let dek = Dek::generate();
        batch.wrap_dek(&v2, &dek, AAD).unwrap();
        batch.retire(2).unwrap();
        assert!(
            matches!(
                batch.wrap_dek(&v2, &dek, AAD),
                Err(ProviderError::KekNotActive { .. })
            ),
            "the wrapping KEK it fetched is forgotten once it retired it"
        );
        assert_eq!(provider.current_kek().unwrap(), v3);
    }

    /// DESIGN.md §2.6: an open provider holds no key; each operation reads
    /// `master.key` and checks it against the store.
    #[test]
    fn the_master_key_is_read_for_each_operation_not_kept() {
        let (_dir, keystore, provider) = new_store();
        let v1 = version(&provider, 1);
        let (dek, wrapped) = wrap_random_dek(&provider, &v1);
        let saved = fs::read(master_key_path(&keystore)).unwrap();
        fs::remove_file(master_key_path(&keystore)).unwrap();
        assert!(matches!(
            provider.unwrap_dek(&v1, &wrapped, AAD),
            Err(ProviderError::MasterKeyMissing { .. })
        ));
        assert!(matches!(
            provider.rotate(),
            Err(ProviderError::MasterKeyMissing { .. })
        ));
        master_key::create(&master_key_path(&keystore)).unwrap();
        assert!(matches!(
            provider.unwrap_dek(&v1, &wrapped, AAD),
            Err(ProviderError::WrongMasterKey { .. })
        ));
        fs::remove_file(master_key_path(&keystore)).unwrap();
        fs::write(master_key_path(&keystore), &saved).unwrap();
        assert_unwraps(&provider, &v1, &dek, &wrapped);
    }

    /// Rewrites one stored KEK record with sled directly, as an attacker or
    /// a disk error would.
    fn edit_record(keystore: &Path, version: u32, edit: impl FnOnce(&mut Vec<u8>)) {
        let db = sled::open(kek_db_path(keystore)).unwrap();
        let tree = db.open_tree(VERSIONS_TREE).unwrap();
        let mut bytes = tree.get(version.to_be_bytes()).unwrap().unwrap().to_vec();
        edit(&mut bytes);
        tree.insert(version.to_be_bytes(), bytes).unwrap();
        db.flush().unwrap();
    }

    fn replace_master_key(keystore: &Path) {
        fs::remove_file(master_key_path(keystore)).unwrap();
        master_key::create(&master_key_path(keystore)).unwrap();
    }

    #[test]
    fn init_creates_layout_and_version_one() {
        let dir = tempfile::tempdir().unwrap();
        let keystore = dir.path().join("ks");
        let (provider, kek) = EmbeddedProvider::init(&keystore).unwrap();
        assert_eq!(kek.provider, EMBEDDED_PROVIDER_NAME);
        assert_eq!(kek.version, 1);
        assert_eq!(kek.kek_id.len(), 32);
        assert_eq!(kek.kek_id, provider.kek_id());
        let mode = fs::metadata(&keystore).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(master_key_path(&keystore).is_file());
        assert!(kek_db_path(&keystore).is_dir());
        let listed = provider.list_versions().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, KekState::Active);
        assert!(listed[0].current);
        assert!(listed[0].created_unix > 1_600_000_000);
    }

    #[test]
    fn open_sees_what_init_made() {
        let (_dir, keystore, provider) = new_store();
        let reopened = EmbeddedProvider::open(&keystore).unwrap();
        assert_eq!(reopened.kek_id(), provider.kek_id());
        assert_eq!(reopened.current_kek().unwrap(), version(&provider, 1));
        let (dek, wrapped) = wrap_random_dek(&provider, &version(&provider, 1));
        assert_unwraps(&reopened, &version(&provider, 1), &dek, &wrapped);
    }

    #[test]
    fn init_refuses_an_existing_store() {
        let (_dir, keystore, _provider) = new_store();
        assert!(matches!(
            EmbeddedProvider::init(&keystore),
            Err(ProviderError::AlreadyInitialized { .. })
        ));
        fs::remove_dir_all(kek_db_path(&keystore)).unwrap();
        assert!(matches!(
            EmbeddedProvider::init(&keystore),
            Err(ProviderError::AlreadyInitialized { .. })
        ));
    }

    #[test]
    fn open_without_store_says_not_initialized() {
        let dir = tempfile::tempdir().unwrap();
        let err = EmbeddedProvider::open(dir.path()).err().unwrap();
        assert!(matches!(err, ProviderError::NotInitialized { .. }));
        assert!(err.to_string().contains("provider init"));
    }

    #[test]
    fn replaced_master_key_is_wrong_master_key() {
        let (_dir, keystore, _provider) = new_store();
        replace_master_key(&keystore);
        assert!(matches!(
            EmbeddedProvider::open(&keystore),
            Err(ProviderError::WrongMasterKey { .. })
        ));
    }

    #[test]
    fn missing_master_key_is_reported() {
        let (_dir, keystore, _provider) = new_store();
        fs::remove_file(master_key_path(&keystore)).unwrap();
        assert!(matches!(
            EmbeddedProvider::open(&keystore),
            Err(ProviderError::MasterKeyMissing { .. })
        ));
    }

    #[test]
    fn malformed_master_key_is_reported() {
        let (_dir, keystore, _provider) = new_store();
        fs::write(master_key_path(&keystore), "not a key\n").unwrap();
        assert!(matches!(
            EmbeddedProvider::open(&keystore),
            Err(ProviderError::MasterKeyMalformed { .. })
        ));
    }

    #[test]
    fn wrong_aad_or_tampered_dek_fails_to_unwrap() {
        let (_dir, _keystore, provider) = new_store();
        let kek = version(&provider, 1);
        let (_dek, mut wrapped) = wrap_random_dek(&provider, &kek);
        let err = provider
            .unwrap_dek(&kek, &wrapped, b"other vm")
            .err()
            .unwrap();
        assert!(matches!(err, ProviderError::UnwrapFailed { kek: k } if k == kek));
        wrapped[20] ^= 1;
        assert!(matches!(
            provider.unwrap_dek(&kek, &wrapped, AAD),
            Err(ProviderError::UnwrapFailed { .. })
        ));
    }

    #[test]
    fn rotate_makes_v2_current_and_v1_still_works() {
        let (_dir, _keystore, provider) = new_store();
        let v1 = version(&provider, 1);
        let (dek, wrapped) = wrap_random_dek(&provider, &v1);
        let v2 = provider.rotate().unwrap();
        assert_eq!(v2, version(&provider, 2));
        assert_eq!(provider.current_kek().unwrap(), v2);
        assert_unwraps(&provider, &v1, &dek, &wrapped);
        // v1 is still active, so it may still wrap (e.g. a re-key in flight).
        let (dek1, wrapped1) = wrap_random_dek(&provider, &v1);
        assert_unwraps(&provider, &v1, &dek1, &wrapped1);
        let (dek2, wrapped2) = wrap_random_dek(&provider, &v2);
        assert_unwraps(&provider, &v2, &dek2, &wrapped2);
        assert!(provider.unwrap_dek(&v1, &wrapped2, AAD).is_err());
        let current: Vec<bool> = provider
            .list_versions()
            .unwrap()
            .iter()
            .map(|info| info.current)
            .collect();
        assert_eq!(current, [false, true]);
    }

    #[test]
    fn retired_version_unwraps_but_does_not_wrap() {
        let (_dir, _keystore, provider) = new_store();
        let v1 = version(&provider, 1);
        let (dek, wrapped) = wrap_random_dek(&provider, &v1);
        provider.rotate().unwrap();
        provider.retire(1).unwrap();
        provider.retire(1).unwrap();
        assert_unwraps(&provider, &v1, &dek, &wrapped);
        assert!(matches!(
            provider.wrap_dek(&v1, &dek, AAD),
            Err(ProviderError::KekNotActive {
                version: 1,
                state: "retired",
                ..
            })
        ));
        assert_eq!(
            provider.list_versions().unwrap()[0].state,
            KekState::Retired
        );
    }

    #[test]
    fn destroyed_version_is_locked_out() {
        let (_dir, keystore, provider) = new_store();
        let v1 = version(&provider, 1);
        let (dek, wrapped) = wrap_random_dek(&provider, &v1);
        provider.rotate().unwrap();
        provider.destroy(1).unwrap();
        provider.destroy(1).unwrap();
        assert!(matches!(
            provider.unwrap_dek(&v1, &wrapped, AAD),
            Err(ProviderError::KekDestroyed { version: 1, .. })
        ));
        assert!(matches!(
            provider.wrap_dek(&v1, &dek, AAD),
            Err(ProviderError::KekDestroyed { version: 1, .. })
        ));
        assert!(matches!(
            provider.retire(1),
            Err(ProviderError::KekDestroyed { .. })
        ));
        assert_eq!(
            provider.list_versions().unwrap()[0].state,
            KekState::Destroyed
        );
        // The key material is gone from the record, and survives reopening.
        let reopened = EmbeddedProvider::open(&keystore).unwrap();
        let record = reopened.session().unwrap().record(1).unwrap().unwrap();
        assert!(record.wrapped.is_empty());
    }

    #[test]
    fn current_and_unknown_versions_cannot_change_state() {
        let (_dir, _keystore, provider) = new_store();
        for result in [provider.retire(1), provider.destroy(1)] {
            let err = result.err().unwrap();
            assert!(matches!(
                err,
                ProviderError::CurrentKekVersion { version: 1, .. }
            ));
            assert!(err.to_string().contains("provider rotate"));
        }
        assert!(matches!(
            provider.retire(7),
            Err(ProviderError::UnknownKekVersion { version: 7, .. })
        ));
    }

    #[test]
    fn foreign_and_unknown_kek_refs_are_refused() {
        let (_dir, _keystore, provider) = new_store();
        let dek = Dek::generate();
        let mut foreign = version(&provider, 1);
        foreign.kek_id = "00".repeat(16);
        assert!(matches!(
            provider.wrap_dek(&foreign, &dek, AAD),
            Err(ProviderError::ForeignKek { .. })
        ));
        let mut other_provider = version(&provider, 1);
        other_provider.provider = "kmip-prod".into();
        assert!(matches!(
            provider.unwrap_dek(&other_provider, &[0; 60], AAD),
            Err(ProviderError::UnknownProvider { name }) if name == "kmip-prod"
        ));
        assert!(matches!(
            provider.wrap_dek(&version(&provider, 9), &dek, AAD),
            Err(ProviderError::UnknownKekVersion { version: 9, .. })
        ));
    }

    #[test]
    fn tampered_kek_record_is_store_corrupt() {
        let (_dir, keystore, provider) = new_store();
        let v1 = version(&provider, 1);
        let (dek, _wrapped) = wrap_random_dek(&provider, &v1);
        edit_record(&keystore, 1, |bytes| {
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
        });
        let err = provider.wrap_dek(&v1, &dek, AAD).err().unwrap();
        assert!(matches!(err, ProviderError::StoreCorrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("KEK version 1"), "{err}");
        edit_record(&keystore, 1, |bytes| bytes.truncate(20));
        let err = provider.list_versions().err().unwrap();
        assert!(matches!(err, ProviderError::StoreCorrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("KEK version 1"), "{err}");
    }

    #[test]
    fn export_import_round_trip_into_fresh_dir() {
        let (dir, keystore, provider) = new_store();
        let (dek1, wrapped1) = wrap_random_dek(&provider, &version(&provider, 1));
        let v2 = provider.rotate().unwrap();
        let (dek2, wrapped2) = wrap_random_dek(&provider, &v2);
        let backup = dir.path().join("backup.txt");
        provider.export(&backup).unwrap();
        let mode = fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            provider.export(&backup).is_err(),
            "export must not overwrite"
        );

        let restored_dir = dir.path().join("restored");
        fs::create_dir(&restored_dir).unwrap();
        fs::copy(master_key_path(&keystore), master_key_path(&restored_dir)).unwrap();
        let summary = EmbeddedProvider::import(&restored_dir, &backup).unwrap();
        assert!(summary.created_store);
        assert_eq!(summary.added_versions, [1, 2]);
        assert_eq!(summary.current, v2);

        let restored = EmbeddedProvider::open(&restored_dir).unwrap();
        assert_eq!(restored.kek_id(), provider.kek_id());
        assert_eq!(restored.current_kek().unwrap(), v2);
        assert_eq!(
            restored.list_versions().unwrap(),
            provider.list_versions().unwrap()
        );
        assert_unwraps(&restored, &version(&provider, 1), &dek1, &wrapped1);
        assert_unwraps(&restored, &v2, &dek2, &wrapped2);
    }

    #[test]
    fn import_merges_missing_versions_and_keeps_existing_ones() {
        let (dir, keystore, provider) = new_store();
        let old_backup = dir.path().join("old.txt");
        provider.export(&old_backup).unwrap();
        provider.rotate().unwrap();
        let new_backup = dir.path().join("new.txt");
        provider.export(&new_backup).unwrap();

        // An older backup adds nothing and does not move `current` back.
        let summary = EmbeddedProvider::import(&keystore, &old_backup).unwrap();
        assert!(!summary.created_store);
        assert!(summary.added_versions.is_empty());
        assert_eq!(summary.current.version, 2);

        let stale_dir = dir.path().join("stale");
        fs::create_dir(&stale_dir).unwrap();
        fs::copy(master_key_path(&keystore), master_key_path(&stale_dir)).unwrap();
        EmbeddedProvider::import(&stale_dir, &old_backup).unwrap();
        let summary = EmbeddedProvider::import(&stale_dir, &new_backup).unwrap();
        assert_eq!(summary.added_versions, [2]);
        assert_eq!(summary.current.version, 2);
    }

    #[test]
    fn import_with_wrong_or_missing_master_key_fails() {
        let (dir, _keystore, provider) = new_store();
        let backup = dir.path().join("backup.txt");
        provider.export(&backup).unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        let err = EmbeddedProvider::import(&target, &backup).err().unwrap();
        assert!(matches!(err, ProviderError::ImportNeedsMasterKey { .. }));
        assert!(err.to_string().contains("restore master.key"), "{err}");
        master_key::create(&master_key_path(&target)).unwrap();
        assert!(matches!(
            EmbeddedProvider::import(&target, &backup),
            Err(ProviderError::WrongMasterKey { .. })
        ));
        assert!(
            !kek_db_path(&target).exists(),
            "a failed import leaves no store"
        );
    }

    #[test]
    fn import_refuses_another_store_and_bad_keks() {
        let (dir, keystore, provider) = new_store();
        let backup = dir.path().join("backup.txt");
        provider.export(&backup).unwrap();

        // Same master key, different store id.
        let other_dir = dir.path().join("other");
        fs::create_dir(&other_dir).unwrap();
        fs::copy(master_key_path(&keystore), master_key_path(&other_dir)).unwrap();
        let master = master_key::load(&master_key_path(&other_dir)).unwrap();
        let other = EmbeddedProvider::from_parts(
            Keystore::new(&other_dir, DEFAULT_LOCK_TIMEOUT),
            random::array(),
        );
        other.write_first_version(&master).unwrap();
        let err = EmbeddedProvider::import(&other_dir, &backup).err().unwrap();
        assert!(
            matches!(err, ProviderError::KeystoreIdMismatch { .. }),
            "{err:?}"
        );

        // A KEK line whose wrapped key was altered is caught before import.
        let text = fs::read_to_string(&backup).unwrap();
        let kek_line = text.lines().position(|l| l.starts_with("kek: 1 ")).unwrap();
        let tampered: String = text
            .lines()
            .enumerate()
            .map(|(i, line)| match i == kek_line {
                true => {
                    let (head, last) = line.split_at(line.len() - 1);
                    let flipped = if last == "0" { "1" } else { "0" };
                    format!("{head}{flipped}\n")
                }
                false => format!("{line}\n"),
            })
            .collect();
        let tampered_file = dir.path().join("tampered.txt");
        fs::write(&tampered_file, tampered).unwrap();
        let err = EmbeddedProvider::import(&keystore, &tampered_file)
            .err()
            .unwrap();
        assert!(
            matches!(err, ProviderError::BackupMalformed { line, .. } if line == kek_line + 1),
            "{err:?}"
        );
    }

    #[test]
    fn held_store_lock_gives_store_busy_after_the_timeout() {
        let (_dir, keystore, provider) = new_store();
        let provider = provider.with_lock_timeout(Duration::from_millis(300));
        let held = sled::open(kek_db_path(&keystore)).unwrap();
        let started = Instant::now();
        let err = provider.list_versions().err().unwrap();
        let elapsed = started.elapsed();
        assert!(matches!(err, ProviderError::StoreBusy { .. }), "{err:?}");
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        drop(held);
        assert_eq!(provider.list_versions().unwrap().len(), 1);
    }

    #[test]
    fn threads_of_one_process_share_the_store() {
        let (_dir, _keystore, provider) = new_store();
        let kek = version(&provider, 1);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        let (dek, wrapped) = wrap_random_dek(&provider, &kek);
                        assert_unwraps(&provider, &kek, &dek, &wrapped);
                    }
                });
            }
        });
    }
}
