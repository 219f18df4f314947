//! Where the embedded key store lives by default.
use std::path::PathBuf;

use crate::cli::CliError;

/// The default key store directory (placeholder until implemented).
pub fn default_keystore_dir() -> Result<PathBuf, CliError> {
    Ok(PathBuf::from("/var/lib/vmcryptfs"))
}
