//! Subcommands (placeholder).
use std::path::Path;

use super::{CliError, ExitKind, VmCommand};

/// Runs the subcommand.
pub fn run(_cmd: VmCommand, _keystore: &Path) -> Result<(), CliError> {
    Err(CliError::new(ExitKind::Failure, "not implemented yet"))
}
