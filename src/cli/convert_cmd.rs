//! `vm encrypt`, `vm encrypt-disks`, `vm decrypt-disks` and `rekey --deep`:
//! in-place conversions of a VM home (see `datastore::convert`).

use std::path::Path;

use super::mountinfo::vmcryptfs_mount_of;
use super::progress::ConsoleProgress;
use super::{open_provider_targeting, CliError, ExitKind};
use crate::datastore::convert::{self, Operation};
use crate::datastore::known::KnownDatastores;
use crate::datastore::layout::CONTROL_FILE_NAME;
use crate::keys::bundle_sequences::BundleSequences;

/// Runs one conversion of the VM home `datastore/name`; the new bundle is
/// wrapped by provider `target` if given, else by the VM's own provider
/// (the default provider for a VM home being encrypted).
pub fn run(
    datastore: &Path,
    name: &str,
    operation: Operation,
    target: Option<&str>,
    keystore: &Path,
) -> Result<(), CliError> {
    let vm_dir = datastore.join(name);
    let provider = open_provider_targeting(keystore, target)?;
    KnownDatastores::new(keystore).record(datastore)?;
    let mount = vmcryptfs_mount_of(datastore);
    if let Some(mnt) = &mount {
        check_idle(&mnt.join(name), operation, mnt)?;
        // Drop the mount's cached keys first: the next access to the VM then
        // sees the conversion journal and finds the VM locked until done.
        flush_mount_keys(mnt)?;
    }
    let sequences = BundleSequences::in_keystore(keystore);
    let report = convert::run(
        &vm_dir,
        &*provider,
        &sequences,
        operation,
        &mut ConsoleProgress::new(),
    )?;
    println!(
        "{}: {} of VM home {} done: {} file(s) converted ({:.1} MiB), {} already in place",
        operation.name(),
        operation.name(),
        crate::format::untrusted::path(&vm_dir),
        report.files,
        report.bytes as f64 / 1048576.0,
        report.skipped
    );
    if let Some(mnt) = mount {
        flush_mount_keys(&mnt)?;
    }
    Ok(())
}

/// Makes the mount drop cached keys and disk policies of idle VMs.
fn flush_mount_keys(mnt: &Path) -> Result<(), CliError> {
    std::fs::write(mnt.join(CONTROL_FILE_NAME), "flush-keys\n").map_err(|e| {
        CliError::new(
            ExitKind::Io,
            format!(
                "telling the mount at {} to flush its keys: {e}",
                mnt.display()
            ),
        )
    })
}

/// Refuses while the VM's files are open in the mount (as vSphere requires
/// a powered-off VM); refuses to turn a plain directory of a mounted
/// datastore into a VM home (the mount would keep treating it as plain).
fn check_idle(vm_mount: &Path, operation: Operation, mnt: &Path) -> Result<(), CliError> {
    if matches!(operation, Operation::EncryptHome { .. }) {
        return Err(CliError::new(
            ExitKind::Failure,
            format!(
                "the datastore is mounted at {}: unmount it before encrypting a VM home in place",
                mnt.display()
            ),
        ));
    }
    // The kernel reports closes to the mount asynchronously, so a file
    // closed a moment ago may still count: give it a few seconds.
    let open_files = || -> usize {
        let status = std::fs::read_to_string(vm_mount.join(CONTROL_FILE_NAME)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("open-files: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut open = open_files();
    while open > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        open = open_files();
    }
    if open > 0 {
        return Err(CliError::new(
            ExitKind::Failure,
            format!(
                "{open} file(s) of {} are open through the mount at {}: stop the VM first",
                vm_mount.display(),
                mnt.display()
            ),
        ));
    }
    Ok(())
}
