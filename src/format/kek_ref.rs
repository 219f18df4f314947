//! Which KEK wraps a key bundle: the provider's name, its KEK series id
//! and the version (docs/FORMAT.md §4.1, `provider`, `kek_id`,
//! `kek_version`). It is part of the bundle's format, so it lives here;
//! `keys` re-exports it for the providers, which resolve it.

use std::fmt;

use super::untrusted;

/// Which KEK wraps a bundle: provider name, the provider's KEK id, version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KekRef {
    /// Provider name as recorded in bundles (`local` for the embedded one).
    pub provider: String,
    /// The provider's identifier of the KEK series. For the embedded provider
    /// it is the key store's random id, so bundles from another store are
    /// recognised as foreign rather than failing to unwrap mysteriously.
    pub kek_id: String,
    /// The KEK version, starting at 1, incremented by each rotation.
    pub version: u32,
}

impl fmt::Display for KekRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Both strings come from a bundle, possibly before it authenticated.
        write!(
            f,
            "{}:{} v{}",
            untrusted::field(&self.provider),
            untrusted::field(&self.kek_id),
            self.version
        )
    }
}
