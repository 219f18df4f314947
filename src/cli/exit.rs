//! Process exit codes and the CLI's error type.

use std::fmt;

use crate::keys::ProviderError;

/// Which class of failure ended the command; each has its own exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Anything not covered below (exit 1).
    Failure,
    /// Bad command line or arguments (exit 2, as clap uses).
    Usage,
    /// Key provider or key bundle problems (exit 3).
    Key,
    /// I/O errors on the datastore or key store (exit 4).
    Io,
    /// Mounting failed: no /dev/fuse, no fusermount3, busy mountpoint (exit 5).
    Mount,
    /// `fsck` found damage or leftovers (exit 6).
    Damaged,
    /// `fsck` could not check everything (a KEK missing, a provider that
    /// cannot be reached, a file that cannot be read) and found no damage
    /// in the rest (exit 7).
    Unchecked,
}

impl ExitKind {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            ExitKind::Failure => 1,
            ExitKind::Usage => 2,
            ExitKind::Key => 3,
            ExitKind::Io => 4,
            ExitKind::Mount => 5,
            ExitKind::Damaged => 6,
            ExitKind::Unchecked => 7,
        }
    }
}

/// A user-facing error: a message that names the object at fault and the
/// next step, and the exit class.
#[derive(Debug)]
pub struct CliError {
    /// Exit class.
    pub kind: ExitKind,
    /// The message printed after `vmcryptfs: error: `.
    pub message: String,
}

impl CliError {
    /// Builds an error of the given class.
    pub fn new(kind: ExitKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ProviderError> for CliError {
    fn from(err: ProviderError) -> Self {
        let kind = match err {
            ProviderError::Io { .. } => ExitKind::Io,
            _ => ExitKind::Key,
        };
        CliError::new(kind, err.to_string())
    }
}
