//! Which VM homes exist, and which KEK version wraps each: the scan behind
//! `vmcryptfs status`, the per-version counts of `provider list`, and the
//! in-use guard of `provider destroy`.
//!
//! Scanning bundles needs no key: the KEK reference is in clear in every
//! bundle, so an audit works even when the provider is down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::owned_file::VmDir;
use super::{bundle_file, DatastoreError};
use crate::format::bundle::KeyBundle;
use crate::keys::{KekState, KekVersionInfo};

/// One VM home found by a scan.
#[derive(Debug, Clone)]
pub struct VmRecord {
    /// The datastore it is in.
    pub datastore: PathBuf,
    /// The VM home's directory name.
    pub name: String,
    /// The bundle, or why it could not be read.
    pub bundle: Result<KeyBundle, String>,
}

impl VmRecord {
    /// `DATASTORE/NAME`.
    pub fn path(&self) -> PathBuf {
        self.datastore.join(&self.name)
    }
}

/// Every VM home (directory holding a key bundle) directly under
/// `datastore`, sorted by name.
pub fn scan_datastore(datastore: &Path) -> Result<Vec<VmRecord>, DatastoreError> {
    let entries = std::fs::read_dir(datastore)
        .map_err(|e| DatastoreError::io(format!("listing datastore {}", datastore.display()), e))?;
    // A symlink is never a VM home: its entry is not a directory, and the
    // VM home is opened O_NOFOLLOW in case it was swapped since.
    let mut records: Vec<VmRecord> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let vm = VmDir::open(&e.path()).ok()?;
            bundle_file::has_bundle_in(&vm).then(|| VmRecord {
                datastore: datastore.to_path_buf(),
                name: e.file_name().to_string_lossy().into_owned(),
                bundle: bundle_file::read_in(&vm).map_err(|err| err.to_string()),
            })
        })
        .collect();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

/// Scans several datastores. A datastore that cannot be listed (unmounted
/// NFS, removed) is reported in the second value rather than failing the
/// whole scan.
pub fn scan_all(datastores: &[PathBuf]) -> (Vec<VmRecord>, Vec<DatastoreError>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for datastore in datastores {
        match scan_datastore(datastore) {
            Ok(found) => records.extend(found),
            Err(err) => errors.push(err),
        }
    }
    (records, errors)
}

/// What one VM's KEK version means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapHealth {
    /// Wrapped under the provider's current version.
    Current,
    /// Wrapped under an older version that still unwraps: re-key it.
    NeedsRekey,
    /// Wrapped under a destroyed or unknown version: no host without the
    /// DEK in its cache can open it.
    Locked,
    /// The bundle could not be read, or it belongs to another provider or KEK.
    Unknown,
}

impl WrapHealth {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            WrapHealth::Current => "ok",
            WrapHealth::NeedsRekey => "needs-rekey",
            WrapHealth::Locked => "locked",
            WrapHealth::Unknown => "unknown",
        }
    }
}

/// Classifies a VM against the provider's versions.
pub fn wrap_health(
    record: &VmRecord,
    provider: &str,
    kek_id: &str,
    versions: &[KekVersionInfo],
) -> WrapHealth {
    let Ok(bundle) = &record.bundle else {
        return WrapHealth::Unknown;
    };
    if bundle.kek.provider != provider || bundle.kek.kek_id != kek_id {
        return WrapHealth::Unknown;
    }
    match versions.iter().find(|v| v.version == bundle.kek.version) {
        Some(v) if v.current => WrapHealth::Current,
        Some(v) if v.state != KekState::Destroyed => WrapHealth::NeedsRekey,
        _ => WrapHealth::Locked,
    }
}

/// VM homes by the KEK version that wraps them (only bundles of this
/// provider and KEK id).
pub fn vms_by_version<'a>(
    records: &'a [VmRecord],
    provider: &str,
    kek_id: &str,
) -> BTreeMap<u32, Vec<&'a VmRecord>> {
    let mut map: BTreeMap<u32, Vec<&VmRecord>> = BTreeMap::new();
    for record in records {
        if let Ok(bundle) = &record.bundle {
            if bundle.kek.provider == provider && bundle.kek.kek_id == kek_id {
                map.entry(bundle.kek.version).or_default().push(record);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bundle::tests::sample;

    fn record(name: &str, version: u32) -> VmRecord {
        let mut bundle = sample();
        bundle.kek.version = version;
        VmRecord {
            datastore: "/ds".into(),
            name: name.into(),
            bundle: Ok(bundle),
        }
    }

    fn versions() -> Vec<KekVersionInfo> {
        let v = |version, state, current| KekVersionInfo {
            version,
            state,
            created_unix: 0,
            current,
        };
        vec![
            v(1, KekState::Destroyed, false),
            v(2, KekState::Retired, false),
            v(3, KekState::Active, true),
        ]
    }

    #[test]
    fn health_and_grouping() {
        let records = vec![
            record("a", 1),
            record("b", 2),
            record("c", 3),
            record("d", 3),
        ];
        let health: Vec<_> = records
            .iter()
            .map(|r| wrap_health(r, "local", "abcd", &versions()))
            .collect();
        assert_eq!(
            health,
            vec![
                WrapHealth::Locked,
                WrapHealth::NeedsRekey,
                WrapHealth::Current,
                WrapHealth::Current
            ]
        );
        let grouped = vms_by_version(&records, "local", "abcd");
        assert_eq!(grouped[&3].len(), 2);
        assert_eq!(grouped[&1][0].name, "a");
        assert!(vms_by_version(&records, "local", "other").is_empty());
        assert_eq!(
            wrap_health(&records[0], "kmip", "abcd", &versions()),
            WrapHealth::Unknown
        );
    }
}
