//! The command-line interface: clap definitions and dispatch.
//!
//! Each subcommand group lives in its own module and returns a [`CliError`],
//! whose [`ExitKind`] maps to a distinct process exit code.

pub mod closed_pipe;
pub mod convert_cmd;
pub mod exit;
pub mod fsck_cmd;
pub mod hygiene;
pub mod lifecycle_cmd;
pub mod malloc_settings;
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
    /// Manage key providers (the embedded one and KMIP servers) and their
    /// KEK versions.
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
        /// Move the VMs to this provider's current KEK (default: each VM
        /// stays with the provider that wraps it).
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
    },
    /// Check an unmounted datastore after a storage incident: each VM
    /// home's key bundle, conversion journal and stray temp files, and
    /// every block of every encrypted file. Reports each damaged file with
    /// its damaged plaintext byte ranges and each VM home with its state.
    /// Only reads, unless `--repair` is given.
    #[command(after_long_help = FSCK_EXIT_STATUS)]
    Fsck {
        /// The datastore directory (not mounted).
        datastore: PathBuf,
        /// VM home names to check (directory names in the datastore);
        /// default: every one.
        vms: Vec<std::ffi::OsString>,
        /// Print JSON instead of the report (docs/JSON.md).
        #[arg(long)]
        json: bool,
        /// Remove the stray temp files vmcryptfs leaves (bundle, journal
        /// and conversion temps of interrupted runs; each is listed as
        /// removed), and finish an interrupted conversion by its journal,
        /// as rerunning it would (or roll back an `encrypt` killed before
        /// it wrote the key bundle). Never touches content that
        /// authenticates, an unknown name or a damaged journal. Run it on
        /// an idle datastore: no conversion running.
        #[arg(long)]
        repair: bool,
        /// With --repair: rewrite every block that fails authentication as
        /// authenticated zeros (listing each block rewritten), so that a
        /// VM disk with a few bad sectors boots and a guest fsck can take
        /// over. Every other byte stays as it is. A file whose header does
        /// not authenticate cannot be repaired this way.
        #[arg(long, requires = "repair")]
        zero_damaged_blocks: bool,
    },
}

/// The exit status section of `vmcryptfs fsck --help` and its man page.
const FSCK_EXIT_STATUS: &str = "Exit status:
  0  clean: every VM home was checked and nothing was found
  6  damaged: a damaged file, bundle or journal, a missing bundle, or a
     stray temp file (not removed by --repair) was found (the report
     names each)
  7  could not check: a KEK missing, a provider that cannot be reached,
     a file that cannot be read; nothing damaged was found in the rest
  2  bad arguments, or the datastore is mounted (unmount it first)
  4  the datastore cannot be listed
Damage wins over could-not-check: 6 is returned when both happened.
Pass-through files (disks when encrypt_disks is clear) carry no
authentication and are not checked. A full block zeroed in the backing
file reads as a hole and is not damage as far as the format can tell;
fsck lists such blocks when they sit in allocated space.";

/// `vmcryptfs provider ...`
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Create the embedded key store: a master key file (0600) and KEK version 1.
    Init,
    /// Register a KMIP key management server as provider NAME. Checks that
    /// the server answers and creates KEK version 1 there if the key series
    /// is new.
    AddKmip(AddKmipArgs),
    /// Make NAME the provider that wraps new VM homes (`local` is the
    /// embedded one).
    SetDefault {
        /// A provider name from `vmcryptfs provider list`.
        name: String,
    },
    /// Create a new KEK version and make it current. Existing VMs keep
    /// working; re-key them to move them to the new version.
    Rotate {
        /// The provider (default: the default provider).
        name: Option<String>,
    },
    /// Accept KEK version VERSION of KMIP provider NAME, created by another
    /// host sharing the KMS, as the KMIP object UID (which `provider rotate`
    /// printed on that host). Until then this host neither wraps nor
    /// unwraps with that version: a key name alone is not an identity.
    Accept {
        /// The KMIP provider.
        name: String,
        /// The KEK version.
        #[arg(value_name = "VERSION")]
        kek_version: u32,
        /// The version's KMIP Unique Identifier.
        #[arg(long, value_name = "UID")]
        uid: String,
    },
    /// List every provider: reachability, KEK versions with their state, and
    /// how many VM homes (in the datastores this key store knows) each
    /// version wraps.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Retire a KEK version: it still unwraps existing bundles but no longer
    /// wraps new ones. On KMIP this is Revoke.
    Retire {
        /// The version to retire.
        #[arg(value_name = "VERSION")]
        kek_version: u32,
        /// The provider (default: the default provider).
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
    },
    /// Destroy a KEK version's key material. Refused while any known VM home
    /// is still wrapped under it (re-key them first with `vmcryptfs rekey
    /// --all DATASTORE`), and for the current version. On KMIP this is
    /// Revoke, then Destroy.
    Destroy {
        /// The version to destroy.
        #[arg(value_name = "VERSION")]
        kek_version: u32,
        /// The provider (default: the default provider).
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
        /// Destroy even though VMs still use it; those VMs are locked out on
        /// every host that does not hold their DEK in memory.
        #[arg(long)]
        force: bool,
    },
    /// Write a backup of the embedded key store's KEK versions, still
    /// wrapped under the master key.
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

/// Where DEKs are wrapped with a KMIP provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WrapArg {
    /// KMIP Encrypt/Decrypt (AES-GCM, KMIP 1.4): the KEK never leaves the KMS.
    Server,
    /// KMIP Get, then AES-GCM on this host; the KEK is wiped after each use.
    Local,
}

/// `vmcryptfs provider add-kmip ...`
#[derive(Debug, clap::Args)]
pub struct AddKmipArgs {
    /// Provider name, recorded in the bundles it wraps (a-z, 0-9, '-', '_').
    pub name: String,
    /// The KMS address, HOST:PORT (KMIP's port is usually 5696).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// CA certificate (PEM) that signed the KMS's certificate.
    #[arg(long, value_name = "CA.pem")]
    pub ca: PathBuf,
    /// Client certificate (PEM), with the clientAuth extended key usage.
    #[arg(long, value_name = "CLIENT.pem")]
    pub cert: PathBuf,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "CLIENT.key")]
    pub key: PathBuf,
    /// Also make it the provider that wraps new VM homes.
    #[arg(long)]
    pub default: bool,
    /// Where DEKs are wrapped.
    #[arg(long, value_enum, default_value = "server")]
    pub wrap: WrapArg,
    /// KMIP Name prefix and Object Group of the KEKs (versions are named
    /// SERIES-v1, SERIES-v2, ...). Hosts that share VMs must use the same.
    /// Default: vmcryptfs-NAME.
    #[arg(long, value_name = "SERIES")]
    pub key_series: Option<String>,
    /// TCP connect timeout, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Timeout of each read or write of a request, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Retries of a failed connection or read-only request (backoff 0.1 s,
    /// doubling).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// Limit of one whole provider operation (wrap, unwrap, listing,
    /// rotation), seconds: every KMIP request it makes, with name
    /// resolution, connects, retries and backoff, gives up by then.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub operation_timeout: f64,
}

/// How a new VM home stores its encrypted files.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ContentFormatArg {
    /// Content format of the VM's encrypted files: 2 (page-aligned data,
    /// the default: a 4 KiB write replaces whole backing pages) or 1
    /// (interleaved, readable by vmcryptfs releases before format 2).
    /// docs/FORMAT.md §3 and §3.9.
    #[arg(long = "content-format", value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=2))]
    pub content_format: u16,
}

impl ContentFormatArg {
    /// The layout the user chose.
    pub fn layout(self) -> crate::format::content_layout::ContentLayout {
        crate::format::content_layout::ContentLayout::from_format_version(self.content_format)
            .expect("clap restricts the value to known formats")
    }
}

/// The disk pattern of a new VM home.
#[derive(Debug, Clone, clap::Args)]
pub struct DiskPatternArg {
    /// Which file names are disks: comma-separated `*`-globs matched ASCII
    /// case-insensitively against a file's name, at most 16, each 1..=64 of
    /// a-z 0-9 . _ - + ~ *. An empty text: no file is a disk.
    /// docs/FORMAT.md §2.
    #[arg(long = "disk-pattern", value_name = "PATTERNS",
          default_value_t = crate::format::disk_pattern::DiskPattern::new_vm_default().to_string())]
    pub disk_pattern: String,
}

/// `vmcryptfs vm ...`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Turn an empty or new directory into an encrypted VM home: a random DEK,
    /// wrapped under the current KEK, in a key bundle.
    Create {
        /// The VM home directory (created if missing; must be empty).
        path: PathBuf,
        /// Also encrypt the VM's disks (files matching the disk pattern).
        /// Without it, disks pass through.
        #[arg(long)]
        encrypt_disks: bool,
        /// Which names are disks.
        #[command(flatten)]
        disk_pattern: DiskPatternArg,
        /// The content format of the VM's encrypted files.
        #[command(flatten)]
        format: ContentFormatArg,
        /// The provider that wraps the DEK (default: the default provider).
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
    },
    /// Convert an existing plain VM home in place: a new DEK and bundle,
    /// then every file encrypted, one by one (resumable after a crash).
    Encrypt {
        /// The VM home directory in the datastore.
        path: PathBuf,
        /// Also encrypt the VM's disks (files matching the disk pattern).
        #[arg(long)]
        encrypt_disks: bool,
        /// Which names are disks.
        #[command(flatten)]
        disk_pattern: DiskPatternArg,
        /// The content format of the VM's encrypted files.
        #[command(flatten)]
        format: ContentFormatArg,
    },
    /// Encrypt the VM's disks (files matching its disk pattern) in place and
    /// record the policy.
    EncryptDisks {
        /// The VM home directory in the datastore.
        path: PathBuf,
    },
    /// Decrypt the VM's disks (files matching its disk pattern) in place;
    /// they then pass through.
    DecryptDisks {
        /// The VM home directory in the datastore.
        path: PathBuf,
    },
    /// Change which file names are the VM's disks, converting the files
    /// whose class changes.
    ///
    /// With disks passing through (no `encrypt-disks`), files that become
    /// disks are decrypted and files that stop being disks are encrypted,
    /// one by one, resumable after a crash (rerun the command); the key
    /// bundle then names the new pattern. The VM must be idle. A VM home
    /// made before disk patterns existed counts `*.vmdk` only until this
    /// is run.
    SetDiskPattern {
        /// The VM home directory in the datastore.
        path: PathBuf,
        /// Comma-separated `*`-globs matched ASCII case-insensitively
        /// against a file's name, e.g. `*.vmdk,*.qcow2`; at most 16, each
        /// 1..=64 of a-z 0-9 . _ - + ~ *. An empty text: no file is a disk.
        patterns: String,
    },
    /// Rewrite every encrypted file of the VM in another content format
    /// (default 2, page-aligned), one by one, resumable after a crash; the
    /// key bundle then names the new format. The VM must be idle.
    ConvertFormat {
        /// The VM home directory in the datastore.
        path: PathBuf,
        /// The content format to convert to.
        #[command(flatten)]
        format: ContentFormatArg,
    },
    /// Show the key status of a VM home (works unmounted).
    Status {
        /// The VM home directory in the datastore.
        path: PathBuf,
        /// Print JSON instead of `key: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Accept the VM's key bundle although this host has seen a newer one
    /// (a rolled-back bundle, e.g. one restored from a backup on purpose).
    ///
    /// Without this, an older bundle of a VM is refused as rolled back: a
    /// mount keeps the VM locked and commands fail. The bundle must still
    /// authenticate; this host's record of the VM's bundle sequence (in
    /// the key store) is set back to it, and a running mount unlocks the
    /// VM on its next access.
    AcceptRollback {
        /// The VM home directory in the datastore.
        path: PathBuf,
    },
    /// Shallow re-key: rewrap the VM's DEK under the current KEK version.
    /// Only the key bundle changes. On a mounted datastore prefer
    /// `echo rekey > MNT/VM/.control`.
    Rekey {
        /// The VM home directory in the datastore.
        path: PathBuf,
        /// Move the VM to this provider (still a shallow re-key).
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
    },
}

/// Parses arguments and runs the chosen command. First of all, before
/// any key can be loaded, the process stops being dumpable and takes a
/// private umask ([`hygiene::harden_process`]).
pub fn run(cli: Cli) -> Result<(), CliError> {
    hygiene::harden_process();
    if !matches!(cli.command, Command::Mount(_)) {
        closed_pipe::end_quietly_when_the_reader_goes();
    }
    let keystore = match cli.keystore {
        Some(dir) => dir,
        None => crate::keys::keystore_path::default_keystore_dir()
            .map_err(|err| CliError::new(ExitKind::Usage, err.to_string()))?,
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
            provider,
        } => lifecycle_cmd::rekey(&datastore, &vms, all, provider.as_deref(), &keystore),
        Command::Rekey {
            datastore,
            vms,
            all,
            deep: true,
            provider,
        } => lifecycle_cmd::deep_rekey(&datastore, &vms, all, provider.as_deref(), &keystore),
        Command::Fsck {
            datastore,
            vms,
            json,
            repair,
            zero_damaged_blocks,
        } => {
            let repair = crate::datastore::fsck::Repair {
                enabled: repair,
                zero_damaged_blocks,
            };
            fsck_cmd::run(&datastore, &vms, json, repair, &keystore)
        }
    }
}

/// Opens the key providers (the embedded one and every registered one) for
/// a command that needs them.
pub fn open_provider(
    keystore: &std::path::Path,
) -> Result<std::sync::Arc<crate::keys::provider_set::ProviderSet>, CliError> {
    Ok(std::sync::Arc::new(
        crate::keys::provider_set::ProviderSet::open(keystore)?,
    ))
}

/// [`open_provider`], re-keying and creating VM homes with provider `name`
/// when given (`--provider NAME`).
pub fn open_provider_targeting(
    keystore: &std::path::Path,
    name: Option<&str>,
) -> Result<std::sync::Arc<crate::keys::provider_set::ProviderSet>, CliError> {
    let providers = open_provider(keystore)?;
    match name {
        None => Ok(providers),
        Some(name) => Ok(std::sync::Arc::new(providers.targeting(name)?)),
    }
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
