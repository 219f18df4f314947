//! Which KMIP object is each KEK version, as this host knows it: the
//! Unique Identifier recorded when this host created the version (rotate),
//! found it at its first use of the provider, or an administrator accepted
//! it (`vmcryptfs provider accept`). Stored in `<keystore>/kmip-versions.json`
//! (docs/FORMAT.md §5.4.1, docs/KMIP.md).
//!
//! Why: a KMIP Name is only an attribute. Any identity that may create keys
//! on the KMS can create one named `SERIES-vN` in Object Group `SERIES`; if
//! versions were found by name, its key would become the wrapping KEK and
//! its owner could read every DEK wrapped from then on. A Unique Identifier
//! is chosen by the server and never reused, so a key that an impostor
//! creates cannot take the place of the one recorded here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::fsutil::{lock_exclusive_within, replace_private_file};
use crate::keys::ProviderError;

/// The file's name in the key store.
pub const FILE_NAME: &str = "kmip-versions.json";
/// The lock file that serializes updates of the records across processes
/// (a mount recording a first use while `provider rotate` records a new
/// version would otherwise lose one of the two).
const LOCK_FILE_NAME: &str = "kmip-versions.json.lock";
/// The only format this build reads and writes.
const FORMAT: u32 = 1;

/// The recorded versions of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderVersions {
    /// The key series the UIDs belong to; records of another series (the
    /// provider re-registered with a different one) do not count.
    pub key_series: String,
    /// KEK version → KMIP Unique Identifier.
    pub versions: BTreeMap<u32, String>,
}

/// The contents of the file: every provider's records.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsFile {
    format: u32,
    providers: BTreeMap<String, ProviderVersions>,
}

/// Where the records live: a key store directory, or (for a provider used
/// as a library without one) this process's memory.
#[derive(Debug)]
pub enum Records {
    /// `<dir>/kmip-versions.json`, read afresh on every lookup, so a
    /// version accepted by the CLI is seen by a running mount.
    KeyStore(PathBuf),
    /// Memory only; immutable location, contents under the mutex.
    Memory(std::sync::Mutex<RecordsFile>),
}

impl Records {
    /// Records kept in the key store `keystore`.
    pub fn in_keystore(keystore: &Path) -> Self {
        Records::KeyStore(keystore.join(FILE_NAME))
    }

    /// Records kept in memory.
    pub fn in_memory() -> Self {
        Records::Memory(std::sync::Mutex::new(RecordsFile {
            format: FORMAT,
            ..RecordsFile::default()
        }))
    }

    /// The versions recorded for provider `name` of series `series`;
    /// `None` if this host never used the provider (or only with another
    /// series).
    pub fn get(&self, name: &str, series: &str) -> Result<Option<ProviderVersions>, ProviderError> {
        let file = self.load()?;
        Ok(file
            .providers
            .get(name)
            .filter(|p| p.key_series == series)
            .cloned())
    }

    /// Records `uid` as version `version` of provider `name` (series
    /// `series`), starting the provider's entry if needed. Refuses to
    /// replace a different UID already recorded for the version.
    pub fn record(
        &self,
        name: &str,
        series: &str,
        version: u32,
        uid: &str,
    ) -> Result<(), ProviderError> {
        self.update(name, series, |versions| {
            match versions.versions.get(&version) {
                Some(recorded) if recorded != uid => {
                    return Err(ProviderError::KekIdentityMismatch {
                        provider: name.to_owned(),
                        version,
                        recorded: recorded.clone(),
                        found: uid.to_owned(),
                    })
                }
                _ => {}
            }
            versions.versions.insert(version, uid.to_owned());
            Ok(())
        })
    }

    /// Starts provider `name`'s entry with `found` (version → UID) if it
    /// has none: the first use of a provider on this host trusts what the
    /// KMS holds then. Returns the entry, new or not.
    pub fn first_use(
        &self,
        name: &str,
        series: &str,
        found: &BTreeMap<u32, String>,
    ) -> Result<ProviderVersions, ProviderError> {
        if let Some(known) = self.get(name, series)? {
            return Ok(known);
        }
        let mut started = None;
        self.update(name, series, |versions| {
            if versions.versions.is_empty() {
                versions.versions = found.clone();
                for (version, uid) in found {
                    log::warn!("key provider `{name}`: first use on this host: KEK version {version} of series {series} is KMIP object {uid}");
                }
            }
            started = Some(versions.clone());
            Ok(())
        })?;
        Ok(started.expect("set by the update"))
    }

    fn update(
        &self,
        name: &str,
        series: &str,
        change: impl FnOnce(&mut ProviderVersions) -> Result<(), ProviderError>,
    ) -> Result<(), ProviderError> {
        let _lock = self.lock()?;
        let mut file = self.load()?;
        let entry = file
            .providers
            .entry(name.to_owned())
            .or_insert_with(ProviderVersions::default);
        if entry.key_series != series {
            *entry = ProviderVersions {
                key_series: series.to_owned(),
                versions: BTreeMap::new(),
            };
        }
        change(entry)?;
        self.store(file)
    }

    /// Holds the records' lock file for an update (nothing for records in
    /// memory, whose mutex `load` and `store` take).
    fn lock(&self) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, ProviderError> {
        let Records::KeyStore(path) = self else {
            return Ok(None);
        };
        let lock_path = path.with_file_name(LOCK_FILE_NAME);
        match lock_exclusive_within(
            &lock_path,
            crate::keys::embedded::lock_timeout_from_env(),
            std::time::Duration::from_millis(20),
        ) {
            Ok(Ok(lock)) => Ok(Some(lock)),
            Ok(Err(waited)) => Err(ProviderError::StoreBusy {
                keystore: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            }),
            Err(source) => Err(ProviderError::Io {
                context: format!("locking {}", lock_path.display()),
                source,
            }),
        }
    }

    fn load(&self) -> Result<RecordsFile, ProviderError> {
        let path = match self {
            Records::Memory(file) => {
                let file = file.lock().expect("KMIP records lock");
                return Ok(RecordsFile {
                    format: file.format,
                    providers: file.providers.clone(),
                });
            }
            Records::KeyStore(path) => path,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RecordsFile {
                    format: FORMAT,
                    ..RecordsFile::default()
                })
            }
            Err(source) => {
                return Err(ProviderError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        let corrupt = |reason: String| ProviderError::StoreCorrupt {
            keystore: path.parent().unwrap_or(path).into(),
            reason: format!("{}: {reason}", path.display()),
        };
        let file: RecordsFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FORMAT {
            return Err(corrupt(format!(
                "format {} is not supported by this vmcryptfs (it reads format {FORMAT})",
                file.format
            )));
        }
        Ok(file)
    }

    fn store(&self, file: RecordsFile) -> Result<(), ProviderError> {
        match self {
            Records::Memory(slot) => {
                *slot.lock().expect("KMIP records lock") = file;
                Ok(())
            }
            Records::KeyStore(path) => {
                let mut text = serde_json::to_string_pretty(&file).expect("JSON of plain values");
                text.push('\n');
                replace_private_file(path, text.as_bytes()).map_err(|source| ProviderError::Io {
                    context: format!("writing {}", path.display()),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> (tempfile::TempDir, [Records; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let records = [Records::in_keystore(dir.path()), Records::in_memory()];
        (dir, records)
    }

    #[test]
    fn concurrent_records_from_many_writers_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            for version in 1..=16u32 {
                let path = dir.path();
                // One Records each, as separate processes would have.
                scope.spawn(move || {
                    Records::in_keystore(path)
                        .record("kms", "s", version, &format!("uid-{version}"))
                        .unwrap()
                });
            }
        });
        let kept = Records::in_keystore(dir.path())
            .get("kms", "s")
            .unwrap()
            .unwrap();
        assert_eq!(kept.versions.len(), 16, "{kept:?}");
    }

    #[test]
    fn first_use_records_once_and_records_never_change_a_uid() {
        let (_dir, all) = both();
        for records in all {
            assert_eq!(records.get("kms", "s").unwrap(), None);
            let found = BTreeMap::from([(1, "uid-1".to_owned())]);
            let started = records.first_use("kms", "s", &found).unwrap();
            assert_eq!(started.versions, found);
            // A second first use (another key named s-v2 appeared) adds nothing.
            let more = BTreeMap::from([(1, "uid-1".to_owned()), (2, "impostor".to_owned())]);
            assert_eq!(
                records.first_use("kms", "s", &more).unwrap().versions,
                found
            );
            records.record("kms", "s", 2, "uid-2").unwrap();
            records.record("kms", "s", 2, "uid-2").unwrap();
            let err = records.record("kms", "s", 2, "impostor").unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("uid-2") && text.contains("impostor") && text.contains("`kms`"),
                "{text}"
            );
            assert_eq!(records.get("kms", "s").unwrap().unwrap().versions.len(), 2);
            // Another series starts afresh; the old records do not count.
            assert_eq!(records.get("kms", "other").unwrap(), None);
        }
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "{\"format\": 2, \"providers\": {}}",
        )
        .unwrap();
        let err = Records::in_keystore(dir.path())
            .get("kms", "s")
            .unwrap_err();
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }
}
