//! The provider registry: which key providers this host knows, stored as
//! `<keystore>/providers.json`.
//!
//! The embedded provider (`local`) is implicit: it is the key store itself.
//! The registry adds named external providers and says which provider wraps
//! new VM homes (`default`, `local` when unset). It holds paths and server
//! addresses, never key material. A missing file means "only `local`".
//!
//! ```json
//! { "format": 1, "default": "kms",
//!   "providers": { "kms": { "type": "kmip", "server": "kms.example:5696",
//!     "ca": "/etc/vmcryptfs/ca.pem", "cert": "...", "key": "...",
//!     "key_series": "vmcryptfs-kms", "wrap": "server",
//!     "connect_timeout_ms": 5000, "request_timeout_ms": 10000, "retries": 3,
//!     "operation_timeout_ms": 30000 } } }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::embedded::EMBEDDED_PROVIDER_NAME;
use super::fsutil::replace_private_file;
use super::kmip::KmipConfig;
use super::ProviderError;

/// File name of the registry inside the key store directory.
pub const REGISTRY_FILE_NAME: &str = "providers.json";
/// The registry format this build reads and writes.
pub const REGISTRY_FORMAT: u32 = 1;

/// One registered external provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProviderEntry {
    /// A KMIP key management server.
    Kmip(KmipConfig),
}

/// The registered providers and the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Always [`REGISTRY_FORMAT`].
    pub format: u32,
    /// The provider that wraps new VM homes; `local` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// External providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderEntry>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            format: REGISTRY_FORMAT,
            default: None,
            providers: BTreeMap::new(),
        }
    }
}

/// Path of the registry in a key store directory.
pub fn registry_path(keystore: &Path) -> PathBuf {
    keystore.join(REGISTRY_FILE_NAME)
}

/// Checks a provider name: 1 to 32 of `a-z 0-9 - _`, starting with a
/// letter, and not `local` (the embedded provider's). Names are recorded in
/// bundles and typed in commands, so they stay short and shell-safe.
pub fn check_name(name: &str) -> Result<(), String> {
    if name == EMBEDDED_PROVIDER_NAME {
        return Err(format!(
            "`{name}` is the embedded provider's name; choose another"
        ));
    }
    let valid = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid provider name {name:?}: use 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter"
        ))
    }
}

impl Registry {
    /// Reads the registry of `keystore`; a missing file is an empty one.
    pub fn load(keystore: &Path) -> Result<Self, ProviderError> {
        let path = registry_path(keystore);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ProviderError::Io {
                    context: format!("reading the provider registry {}", path.display()),
                    source,
                })
            }
        };
        let malformed = |reason: String| ProviderError::StoreCorrupt {
            keystore: keystore.into(),
            reason: format!("{}: {reason}", path.display()),
        };
        let registry: Registry =
            serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        if registry.format != REGISTRY_FORMAT {
            return Err(malformed(format!(
                "format {} is not supported by this vmcryptfs (it reads format {REGISTRY_FORMAT})",
                registry.format
            )));
        }
        for name in registry.providers.keys() {
            check_name(name).map_err(malformed)?;
        }
        if let Some(default) = &registry.default {
            if default != EMBEDDED_PROVIDER_NAME && !registry.providers.contains_key(default) {
                return Err(malformed(format!(
                    "the default provider `{default}` is not registered"
                )));
            }
        }
        Ok(registry)
    }

    /// Writes the registry atomically.
    pub fn save(&self, keystore: &Path) -> Result<(), ProviderError> {
        let path = registry_path(keystore);
        let mut text = serde_json::to_string_pretty(self).expect("JSON of plain values");
        text.push('\n');
        replace_private_file(&path, text.as_bytes()).map_err(|source| ProviderError::Io {
            context: format!("writing the provider registry {}", path.display()),
            source,
        })
    }

    /// The provider that wraps new VM homes.
    pub fn default_name(&self) -> &str {
        self.default.as_deref().unwrap_or(EMBEDDED_PROVIDER_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::kmip::WrapMode;

    fn kmip() -> ProviderEntry {
        ProviderEntry::Kmip(KmipConfig {
            server: "127.0.0.1:5696".into(),
            ca: "/ca.pem".into(),
            cert: "/c.pem".into(),
            key: "/c.key".into(),
            key_series: "vmcryptfs-kms".into(),
            wrap: WrapMode::Server,
            connect_timeout_ms: 1,
            request_timeout_ms: 2,
            retries: 0,
            operation_timeout_ms: 3,
        })
    }

    #[test]
    fn round_trips_and_missing_is_local_only() {
        let dir = tempfile::tempdir().unwrap();
        let empty = Registry::load(dir.path()).unwrap();
        assert_eq!(empty.default_name(), "local");
        let mut registry = Registry::default();
        registry.providers.insert("kms".into(), kmip());
        registry.default = Some("kms".into());
        registry.save(dir.path()).unwrap();
        assert_eq!(Registry::load(dir.path()).unwrap(), registry);
    }

    #[test]
    fn bad_files_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = registry_path(dir.path());
        for (text, fault) in [
            ("{", "EOF"),
            (r#"{"format": 2}"#, "format 2"),
            (
                r#"{"format": 1, "default": "nope"}"#,
                "`nope` is not registered",
            ),
            (r#"{"format": 1, "surprise": 1}"#, "unknown field"),
            (
                r#"{"format": 1, "providers": {"Bad Name": {"type": "kmip"}}}"#,
                "missing field",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Registry::load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains("providers.json") && err.contains(fault),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["kms", "kms-1", "a_b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["local", "", "Kms", "1kms", "k ms", "k/ms", &"k".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
