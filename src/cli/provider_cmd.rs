//! Subcommands (placeholder).
use std::path::Path;

use super::{CliError, ExitKind, ProviderCommand};

/// Runs the subcommand.
pub fn run(_cmd: ProviderCommand, _keystore: &Path) -> Result<(), CliError> {
    Err(CliError::new(ExitKind::Failure, "not implemented yet"))
}
