//! `vmcryptfs vm create | status | rekey`: VM homes on an unmounted (or
//! mounted) datastore, straight on the backing directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{open_provider, CliError, ContentFormatArg, DiskPatternArg, ExitKind, VmCommand};
use crate::control::status::{render_vm, vm_json};
use crate::datastore::convert::Operation;
use crate::datastore::current_kek::CurrentKekCache;
use crate::datastore::known::KnownDatastores;
use crate::datastore::layout::StoragePolicy;
use crate::datastore::vm_home::VmHome;
use crate::datastore::vm_keys;
use crate::datastore::DatastoreError;
use crate::format::disk_pattern::DiskPattern;
use crate::keys::bundle_sequences::BundleSequences;
use crate::keys::KeyProvider;

impl From<DatastoreError> for CliError {
    fn from(err: DatastoreError) -> Self {
        let kind = match &err {
            DatastoreError::Io { .. } | DatastoreError::Owned(_) => ExitKind::Io,
            DatastoreError::NotAVmHome { .. }
            | DatastoreError::DamagedJournal { .. }
            | DatastoreError::AlreadyVmHome { .. }
            | DatastoreError::NotEmpty { .. } => ExitKind::Failure,
            _ => ExitKind::Key,
        };
        CliError::new(kind, err.to_string())
    }
}

/// Creates the directory of a new VM home if it is missing, with the mode
/// `mkdir` would have given it under the caller's umask (commands run
/// under a private one, see [`super::hygiene`]): hypervisors reach the VM's
/// files through it.
fn create_home_dir(path: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.exists() {
        return Ok(());
    }
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| {
            std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(super::hygiene::caller_dir_mode()),
            )
        });
    made.map_err(|e| {
        CliError::new(
            ExitKind::Io,
            format!("creating VM home {}: {e}", path.display()),
        )
    })
}

/// Runs a `vm` subcommand.
pub fn run(cmd: VmCommand, keystore: &Path) -> Result<(), CliError> {
    let provider = open_provider(keystore)?;
    match cmd {
        VmCommand::Create {
            path,
            encrypt_disks,
            disk_pattern,
            format,
            provider: name,
        } => {
            let policy = new_vm_policy(&path, encrypt_disks, &disk_pattern, format)?;
            // The set opened above, not a second one: each opening of the
            // embedded store costs two fsyncs, a third of a `vm create`.
            let provider = match name {
                Some(name) => std::sync::Arc::new(provider.targeting(&name)?),
                None => provider,
            };
            create_home_dir(&path)?;
            // Batched: the current KEK and its plaintext in one opening of
            // the store; the batch (and that KEK) is dropped right after.
            let batch = provider.batched();
            let bundle = vm_keys::create_vm_home(&path, &batch, &policy)?;
            drop(batch);
            let (datastore, _) = split_vm_path(&path)?;
            KnownDatastores::new(keystore).record(&datastore)?;
            println!(
                "created encrypted VM home {} (vm-id {}, KEK {}, disks {}: {})",
                path.display(),
                hex::encode(bundle.vm_id),
                bundle.kek,
                bundle.disk_pattern,
                if encrypt_disks {
                    "encrypted"
                } else {
                    "pass through"
                }
            );
            Ok(())
        }
        VmCommand::Status { path, json } => {
            let vm = vm_home_at(&path, keystore)?;
            // Asked for by the admin on the command line: unwrap, so the
            // status shows whether the VM unlocks (a mount's status files
            // never unwrap).
            let _ = vm.keyring(&*provider);
            let status = vm.status(&*provider, &CurrentKekCache::new());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&vm_json(&status)).expect("JSON of plain values")
                );
            } else {
                print!("{}", render_vm(&status));
            }
            match status.locked_reason {
                Some(reason) => Err(CliError::new(
                    ExitKind::Key,
                    format!("VM home {} is locked: {reason}", path.display()),
                )),
                None => Ok(()),
            }
        }
        VmCommand::Encrypt {
            path,
            encrypt_disks,
            disk_pattern,
            format,
        } => {
            let policy = new_vm_policy(&path, encrypt_disks, &disk_pattern, format)?;
            convert(&path, Operation::EncryptHome { policy }, keystore)
        }
        VmCommand::EncryptDisks { path } => convert(&path, Operation::EncryptDisks, keystore),
        VmCommand::DecryptDisks { path } => convert(&path, Operation::DecryptDisks, keystore),
        VmCommand::SetDiskPattern { path, patterns } => {
            let pattern = disk_pattern_arg(&path, &patterns)?;
            convert(&path, Operation::SetDiskPattern { pattern }, keystore)
        }
        VmCommand::ConvertFormat { path, format } => convert(
            &path,
            Operation::ConvertFormat {
                to: format.layout(),
            },
            keystore,
        ),
        VmCommand::AcceptRollback { path } => accept_rollback(&path, &*provider, keystore),
        VmCommand::Rekey { path, provider } => {
            let (datastore, name) = split_vm_path(&path)?;
            super::lifecycle_cmd::rekey(&datastore, &[name], false, provider.as_deref(), keystore)
        }
    }
}

/// The policy of the new VM home `path` from its options.
fn new_vm_policy(
    path: &Path,
    encrypt_disks: bool,
    disk_pattern: &DiskPatternArg,
    format: ContentFormatArg,
) -> Result<StoragePolicy, CliError> {
    Ok(StoragePolicy {
        encrypt_disks,
        disk_pattern: disk_pattern_arg(path, &disk_pattern.disk_pattern)?,
        content_layout: format.layout(),
    })
}

/// The disk pattern an operator gave for the VM home `path`; a usage error
/// naming the VM home and the pattern if it breaks a rule.
fn disk_pattern_arg(path: &Path, text: &str) -> Result<DiskPattern, CliError> {
    DiskPattern::parse_list(text).map_err(|err| {
        CliError::new(
            ExitKind::Usage,
            format!(
                "VM home {}: {err}; give comma-separated patterns such as *.vmdk,*.qcow2 (docs/FORMAT.md §2)",
                path.display()
            ),
        )
    })
}

fn convert(path: &Path, operation: Operation, keystore: &Path) -> Result<(), CliError> {
    let (datastore, name) = split_vm_path(path)?;
    super::convert_cmd::run(&datastore, &name, operation, None, keystore)
}

/// `DATASTORE/VM` → (absolute DATASTORE, VM name).
fn split_vm_path(path: &Path) -> Result<(PathBuf, String), CliError> {
    let absolute = std::path::absolute(path)
        .map_err(|e| CliError::new(ExitKind::Io, format!("resolving {}: {e}", path.display())))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => {
            Ok((parent.to_path_buf(), name.to_string_lossy().into_owned()))
        }
        _ => Err(CliError::new(
            ExitKind::Usage,
            format!(
                "{} is not a VM home inside a datastore (expected DATASTORE/VM)",
                path.display()
            ),
        )),
    }
}

/// `vm accept-rollback PATH`: the admin accepts the VM's bundle although
/// this host has seen a newer one.
fn accept_rollback(
    path: &Path,
    provider: &dyn KeyProvider,
    keystore: &Path,
) -> Result<(), CliError> {
    let sequences = BundleSequences::in_keystore(keystore);
    let (bundle, previous) = vm_keys::accept_rollback(path, provider, &sequences)?;
    match previous {
        Some(seen) if seen > bundle.sequence => println!(
            "VM home {}: accepted its key bundle at sequence {} (this host had seen sequence {seen}); it unlocks again, here and in a running mount",
            path.display(),
            bundle.sequence
        ),
        _ => println!(
            "VM home {}: its key bundle (sequence {}) was not rolled back; nothing to accept",
            path.display(),
            bundle.sequence
        ),
    }
    Ok(())
}

fn vm_home_at(path: &Path, keystore: &Path) -> Result<VmHome, CliError> {
    let name = path.file_name().ok_or_else(|| {
        CliError::new(
            ExitKind::Usage,
            format!("{} does not name a VM home directory", path.display()),
        )
    })?;
    if !crate::datastore::bundle_file::has_bundle(path) {
        return Err(DatastoreError::NotAVmHome { path: path.into() }.into());
    }
    Ok(VmHome::new(
        name.to_owned(),
        path.to_path_buf(),
        Arc::new(BundleSequences::in_keystore(keystore)),
    ))
}
