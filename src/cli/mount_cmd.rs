//! `vmcryptfs mount` (placeholder).
use std::path::{Path, PathBuf};

use super::{CliError, ExitKind};

/// Arguments of `vmcryptfs mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The datastore directory.
    pub datastore: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
}

/// Runs the subcommand.
pub fn run(_args: MountArgs, _keystore: &Path) -> Result<(), CliError> {
    Err(CliError::new(ExitKind::Failure, "not implemented yet"))
}
