//! The command-line interface: clap definitions and dispatch.
//!
//! Each subcommand group lives in its own module and returns a [`CliError`],
//! whose [`ExitKind`] maps to a distinct process exit code.

pub mod convert_cmd;
pub mod exit;
pub mod lifecycle_cmd;
pub mod mount_cmd;
pub mod mount_helper;
pub mod mountinfo;
pub mod progress;
pub mod provider_cmd;
pub mod vm_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use exit::{CliError, ExitKind};

/// vmcryptfs: encrypted VM homes over FUSE, vSphere VM Encryption style.
///
/// Each encrypted VM home holds a random DEK, wrapped by a KEK that a key
/// provider holds. `mount` presents the datastore as plain files.
#[derive(Debug, Parser)]
#[command(name = "vmcryptfs", version, propagate_version = true)]
pub struct Cli {
    /// Directory of the embedded key provider's key store (master key and
    /// KEK database). Default: /var/lib/vmcryptfs for root, else
    /// $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs).
    #[arg(long, global = true, env = "VMCRYPTFS_KEYSTORE", value_name = "DIR")]
    pub keystore: Option<PathBuf>,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the key provider and its KEK versions.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Create and inspect encrypted VM homes.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Mount a datastore: its VM homes appear as plain files at MOUNTPOINT.
    Mount(mount_cmd::MountArgs),
    /// List every VM home of a datastore with its provider, KEK version and
    /// disk policy, flagging those still wrapped under an old KEK version.
    Status {
        /// The datastore directory.
        datastore: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shallow re-key of VM homes: rewrap their DEKs under the current KEK
    /// version. On a mounted datastore this goes through the mount's
    /// control files, so the mount's key cache stays consistent.
    Rekey {
        /// The datastore directory.
        datastore: PathBuf,
        /// VM home names to re-key (directory names in the datastore).
        vms: Vec<String>,
        /// Re-key every VM home of the datastore.
        #[arg(long, conflicts_with = "vms")]
        all: bool,
        /// Deep re-key: a new DEK, and every encrypted file re-encrypted
        /// under it (resumable; the VM's files must not be open).
        #[arg(long)]
        deep: bool,
    },
}

/// `vmcryptfs provider ...`
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Create the embedded key store: a master key file (0600) and KEK version 1.
    Init,
    /// Create a new KEK version and make it current. Existing VMs keep
    /// working; re-key them to move them to the new version.
    Rotate,
    /// List KEK versions with their state and how many VM homes (in the
    /// datastores this key store knows) each one wraps.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retire a KEK version: it still unwraps existing bundles but no longer
    /// wraps new ones.
    Retire {
        /// The version to retire.
        #[arg(value_name = "VERSION")]
        kek_version: u32,
    },
    /// Destroy a KEK version's key material. Refused while any known VM home
    /// is still wrapped under it (re-key them first with `vmcryptfs rekey
    /// --all DATASTORE`), and for the current version.
    Destroy {
        /// The version to destroy.
        #[arg(value_name = "VERSION")]
        kek_version: u32,
        /// Destroy even though VMs still use it; those VMs are locked out on
        /// every host that does not hold their DEK in memory.
        #[arg(long)]
        force: bool,
    },
    /// Write a backup of all KEK versions, still wrapped under the master key.
    Export {
        /// File to write (created with mode 0600; refuses to overwrite).
        file: PathBuf,
    },
    /// Restore KEK versions from a backup made by `provider export`.
    Import {
        /// Backup file to read.
        file: PathBuf,
    },
}

/// `vmcryptfs vm ...`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Turn an empty or new directory into an encrypted VM home: a random DEK,
    /// wrapped under the current KEK, in a key bundle.
    Create {
        /// The VM home directory (created if missing; must be empty).
        path: PathBuf,
        /// Also encrypt the VM's disks (*.vmdk). Without it, disks pass through.
        #[arg(long)]
        encrypt_disks: bool,
    },
    /// Convert an existing plain VM home in place: a new DEK and bundle,
    /// then every file encrypted, one by one (resumable after a crash).
    Encrypt {
        /// The VM home directory in the datastore.
        path: PathBuf,
        /// Also encrypt the VM's disks (*.vmdk).
        #[arg(long)]
        encrypt_disks: bool,
    },
    /// Encrypt the VM's disks (*.vmdk) in place and record the policy.
    EncryptDisks {
        /// The VM home directory in the datastore.
        path: PathBuf,
    },
    /// Decrypt the VM's disks (*.vmdk) in place; they then pass through.
    DecryptDisks {
        /// The VM home directory in the datastore.
        path: PathBuf,
    },
    /// Show the key status of a VM home (works unmounted).
    Status {
        /// The VM home directory in the datastore.
        path: PathBuf,
        /// Print JSON instead of `key: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Shallow re-key: rewrap the VM's DEK under the current KEK version.
    /// Only the key bundle changes. On a mounted datastore prefer
    /// `echo rekey > MNT/VM/.control`.
    Rekey {
        /// The VM home directory in the datastore.
        path: PathBuf,
    },
}

/// Parses arguments and runs the chosen command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let keystore = match cli.keystore {
        Some(dir) => dir,
        None => crate::keys::keystore_path::default_keystore_dir()?,
    };
    match cli.command {
        Command::Provider(cmd) => provider_cmd::run(cmd, &keystore),
        Command::Vm(cmd) => vm_cmd::run(cmd, &keystore),
        Command::Mount(args) => mount_cmd::run(args, &keystore),
        Command::Status { datastore, json } => lifecycle_cmd::status(&datastore, json, &keystore),
        Command::Rekey {
            datastore,
            vms,
            all,
            deep: false,
        } => lifecycle_cmd::rekey(&datastore, &vms, all, &keystore),
        Command::Rekey {
            datastore,
            vms,
            all,
            deep: true,
        } => lifecycle_cmd::deep_rekey(&datastore, &vms, all, &keystore),
    }
}

/// Opens the key provider for a command that needs one.
pub fn open_provider(
    keystore: &std::path::Path,
) -> Result<std::sync::Arc<dyn crate::keys::KeyProvider>, CliError> {
    let provider = crate::keys::embedded::EmbeddedProvider::open(keystore)?;
    Ok(std::sync::Arc::new(provider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand (duplicate
    /// names, conflicting flags), which otherwise fire only at run time.
    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "`{name}` has no help text");
                walk(sub, &name);
            }
        }
        walk(&Cli::command(), "vmcryptfs");
    }
}
