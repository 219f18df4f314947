//! `vm encrypt`, `vm encrypt-disks`, `vm decrypt-disks`, `vm set-disk-pattern`,
//! `vm convert-format` and `rekey --deep`:
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
        check_idle(&mnt.join(name), &operation, mnt)?;
        // Drop the mount's cached keys first: the next access to the VM then
        // sees the conversion journal and finds the VM locked until done.
        flush_mount_keys(mnt)?;
    }
    let sequences = BundleSequences::in_keystore(keystore);
    let done = operation.name();
    let report = convert::run(
        &vm_dir,
        &*provider,
        &sequences,
        operation,
        &mut ConsoleProgress::new(),
    )?;
    println!(
        "{}: {} of VM home {} done: {} file(s) converted ({:.1} MiB), {} already in place, {} extended attribute value(s) rewritten",
        done,
        done,
        crate::format::untrusted::path(&vm_dir),
        report.files,
        report.bytes as f64 / 1048576.0,
        report.skipped,
        report.attributes
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

/// Refuses while any file handle of the VM is open in the mount (as
/// vSphere requires a powered-off VM): encrypted files and pass-through
/// ones alike, as a conversion rewrites both. Fails closed: a status that
/// cannot be read or does not say how many handles are open refuses too.
/// Refuses to turn a plain directory of a mounted datastore into a VM home
/// (the mount would keep treating it as plain).
fn check_idle(vm_mount: &Path, operation: &Operation, mnt: &Path) -> Result<(), CliError> {
    if matches!(operation, Operation::EncryptHome { .. }) {
        return Err(CliError::new(
            ExitKind::Failure,
            format!(
                "the datastore is mounted at {}: unmount it before encrypting a VM home in place",
                mnt.display()
            ),
        ));
    }
    let refuse = |why: String| CliError::new(ExitKind::Failure, why);
    // The kernel reports closes to the mount asynchronously, so a file
    // closed a moment ago may still count: give it a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut open = open_handles(vm_mount).map_err(|why| {
        refuse(format!(
            "cannot tell whether files of VM home {} are open through the mount at {} ({why}); refusing to {} it while it may be in use: unmount the datastore, or fix the mount, and run the command again",
            vm_mount.display(),
            mnt.display(),
            operation.name(),
        ))
    })?;
    while open > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        open = open_handles(vm_mount).unwrap_or(open);
    }
    if open > 0 {
        return Err(refuse(format!(
            "{open} file handle(s) of VM home {} are open through the mount at {} (disks included, encrypted or not): stop the VM and close them first",
            vm_mount.display(),
            mnt.display()
        )));
    }
    Ok(())
}

/// The `open-handles` count of the VM's `.control` in the mount (see
/// `control::status`), or why it could not be had.
fn open_handles(vm_mount: &Path) -> Result<usize, String> {
    let control = vm_mount.join(CONTROL_FILE_NAME);
    let status = std::fs::read_to_string(&control)
        .map_err(|e| format!("reading {}: {e}", control.display()))?;
    parse_open_handles(&status).ok_or_else(|| {
        format!(
            "{} has no valid `open-handles` line; a mount of an older vmcryptfs does not count pass-through handles",
            control.display()
        )
    })
}

/// The count on the `open-handles: N` line of a VM status, if exactly one
/// such line holds a number.
fn parse_open_handles(status: &str) -> Option<usize> {
    let mut counts = status
        .lines()
        .filter_map(|l| l.strip_prefix("open-handles: "));
    let count = counts.next()?.trim().parse().ok()?;
    counts.next().is_none().then_some(count)
}

#[cfg(test)]
mod tests {
    use super::parse_open_handles;

    #[test]
    fn only_one_well_formed_open_handles_line_counts() {
        assert_eq!(
            parse_open_handles("state: unlocked\nopen-handles: 3\n"),
            Some(3)
        );
        assert_eq!(parse_open_handles("open-handles: 0"), Some(0));
        for bad in [
            "",
            "open-files: 0\n",
            "open-handles: \n",
            "open-handles: -1\n",
            "open-handles: many\n",
            "open-handles: 0\nopen-handles: 2\n",
            " open-handles: 0\n",
        ] {
            assert_eq!(parse_open_handles(bad), None, "{bad:?}");
        }
    }
}
