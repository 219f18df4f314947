//! Backups of the embedded key store: `provider export` writes one, and
//! `provider import` restores it, merging into an existing store of the
//! same id (versions it lacks are added, versions it has are kept). The
//! file format is `backup`'s; this is what is done with it.

use std::fs;
use std::path::Path;

use super::backup::Backup;
use super::store::{Changes, Session, META_CHECK, META_KEYSTORE_ID};
use super::{
    discard, kek_db_path, lock_timeout_from_env, master_key_path, EmbeddedProvider, ImportSummary,
    Keystore,
};
use crate::crypto::secret::MasterKey;
use crate::keys::fsutil::{create_private_file, io_error};
use crate::keys::master_key;
use crate::keys::{KekState, ProviderError};

impl EmbeddedProvider {
    /// Writes a backup of the store to `file` (created, never overwritten,
    /// mode 0600, fsynced). KEKs stay wrapped under the master key.
    pub fn export(&self, file: &Path) -> Result<(), ProviderError> {
        let backup = {
            let session = self.session()?;
            Backup {
                keystore_id: session.keystore_id()?,
                check: session.check_value()?,
                current: session.current_version()?,
                records: session
                    .records()?
                    .into_iter()
                    .map(|(version, record)| (version, (record, 0)))
                    .collect(),
            }
        };
        create_private_file(file, backup.to_text().as_bytes()).map_err(io_error(format!(
            "writing key store backup {}",
            file.display()
        )))
    }

    /// Restores a backup made by [`export`](Self::export) into `keystore`.
    ///
    /// The master key the backup was made under must already be at
    /// `<keystore>/master.key`. Creates the KEK database if there is none;
    /// otherwise it must be the same store (same id), versions it lacks are
    /// added, versions it has are kept, and the current version becomes the
    /// higher of the two. Durable before it returns.
    pub fn import(keystore: &Path, file: &Path) -> Result<ImportSummary, ProviderError> {
        let text = fs::read_to_string(file).map_err(io_error(format!(
            "reading key store backup {}",
            file.display()
        )))?;
        let backup = Backup::parse(file, &text)?;
        let master = load_master_for_import(keystore, file)?;
        let store = Keystore::new(keystore, lock_timeout_from_env());
        let provider = Self::from_parts(store, backup.keystore_id);
        provider.verify_check_value(&master, &backup.check)?;
        provider.verify_backup_keks(&master, file, &backup)?;
        let created_store = !kek_db_path(keystore).exists();
        let result = provider.merge_backup(&master, file, &backup, created_store);
        if result.is_err() && created_store {
            // Leave no half-made store that later opens would call corrupt.
            discard(&kek_db_path(keystore), |p| fs::remove_dir_all(p));
        }
        result
    }

    /// Every non-destroyed KEK in the backup must unwrap under the master
    /// key: finding a bad one now beats finding it when a VM will not open.
    fn verify_backup_keks(
        &self,
        master: &MasterKey,
        file: &Path,
        backup: &Backup,
    ) -> Result<(), ProviderError> {
        for (&version, (record, line)) in &backup.records {
            let usable = record.state == KekState::Destroyed
                || record
                    .unwrap_kek(master, &self.keystore_id, version)
                    .is_some();
            if !usable {
                return Err(ProviderError::BackupMalformed {
                    file: file.to_path_buf(),
                    line: *line,
                    reason: format!(
                        "KEK version {version} does not decrypt under master key {} (modified backup?)",
                        master_key_path(&self.keystore.dir).display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn merge_backup(
        &self,
        master: &MasterKey,
        file: &Path,
        backup: &Backup,
        created_store: bool,
    ) -> Result<ImportSummary, ProviderError> {
        let session = self.new_or_existing_session()?;
        let mut changes = Changes::default();
        let (existing, store_current) = if created_store {
            changes.set_meta(META_KEYSTORE_ID, backup.keystore_id.to_vec());
            changes.set_meta(META_CHECK, backup.check.clone());
            (Default::default(), 0)
        } else {
            self.verify_same_store(master, &session, file)?;
            (session.records()?, session.current_version()?)
        };
        let mut added_versions = Vec::new();
        for (&version, (record, _)) in &backup.records {
            if !existing.contains_key(&version) {
                changes.put_version(version, record);
                added_versions.push(version);
            }
        }
        let current = store_current.max(backup.current);
        if current != store_current {
            changes.set_current_version(current);
        }
        if !changes.is_empty() {
            session.commit(&changes)?;
        }
        Ok(ImportSummary {
            created_store,
            added_versions,
            current: self.kek_ref(current),
        })
    }

    fn verify_same_store(
        &self,
        master: &MasterKey,
        session: &Session<'_>,
        file: &Path,
    ) -> Result<(), ProviderError> {
        let store_id = session.keystore_id()?;
        if store_id != self.keystore_id {
            return Err(ProviderError::KeystoreIdMismatch {
                file: file.to_path_buf(),
                keystore: self.keystore.dir.clone(),
                backup_id: self.kek_id.clone(),
                store_id: hex::encode(store_id),
            });
        }
        self.verify_check_value(master, &session.check_value()?)
    }
}

/// Loads the master key that an import needs, saying how to restore it if
/// it is not there.
fn load_master_for_import(keystore: &Path, file: &Path) -> Result<MasterKey, ProviderError> {
    let path = master_key_path(keystore);
    master_key::load(&path).map_err(|err| match err {
        ProviderError::MasterKeyMissing { path } => ProviderError::ImportNeedsMasterKey {
            file: file.to_path_buf(),
            path,
        },
        other => other,
    })
}
