//! `vmcryptfs fsck DATASTORE [VM…] [--json]`: the report of
//! [`crate::datastore::fsck`], as text or JSON, and its exit code.

use std::ffi::OsString;
use std::path::Path;

use serde_json::json;

use super::mountinfo::vmcryptfs_mount_of;
use super::progress::ConsoleProgress;
use super::{open_provider, CliError, ExitKind};
use crate::content::verify::blocks_to_plain_range;
use crate::datastore::fsck::{self, ranges_text, FileReport, FsckError, VmReport, VmState};
use crate::keys::bundle_sequences::BundleSequences;

/// Runs fsck and prints its report; the exit kind says clean, damaged or
/// could not check (see `FSCK_EXIT_STATUS` in `cli/mod.rs`).
pub fn run(
    datastore: &Path,
    vms: &[OsString],
    as_json: bool,
    repair: fsck::Repair,
    keystore: &Path,
) -> Result<(), CliError> {
    let datastore = &super::lifecycle_cmd::absolute(datastore)?;
    if let Some(mnt) = vmcryptfs_mount_of(datastore) {
        return Err(CliError::new(
            ExitKind::Usage,
            format!(
                "datastore {} is mounted at {}: fsck reads an unmounted datastore; unmount it first",
                datastore.display(),
                mnt.display()
            ),
        ));
    }
    // Without the key store nothing can be unlocked: could not check.
    let provider =
        open_provider(keystore).map_err(|err| CliError::new(ExitKind::Unchecked, err.message))?;
    let sequences = BundleSequences::in_keystore(keystore);
    let reports = fsck::fsck(
        datastore,
        vms,
        repair,
        provider.as_ref(),
        &sequences,
        &mut ConsoleProgress::for_check(),
    )
    .map_err(|err| {
        let kind = match err {
            FsckError::NoSuchVm { .. } => ExitKind::Usage,
            FsckError::Datastore { .. } => ExitKind::Io,
        };
        CliError::new(kind, err.to_string())
    })?;
    let verdict = overall(&reports);
    if as_json {
        let doc = json!({
            "datastore": datastore,
            "state": verdict.as_str(),
            "vms": reports.iter().map(fsck::report_json).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        );
    } else {
        print_text(datastore, &reports);
    }
    // The VM homes by name, so that a log of stderr alone says which.
    let names = |state| {
        let names: Vec<&str> = reports
            .iter()
            .filter(|r| r.state == state)
            .map(|r| r.name.as_str())
            .collect();
        names.join(", ")
    };
    let unchecked = match names(VmState::Unchecked) {
        none if none.is_empty() => String::new(),
        some => format!("; could not check: {some}"),
    };
    match verdict {
        VmState::Damaged => Err(CliError::new(
            ExitKind::Damaged,
            format!(
                "damaged VM homes in {}: {}{unchecked} (see the report)",
                datastore.display(),
                names(VmState::Damaged)
            ),
        )),
        VmState::Unchecked => Err(CliError::new(
            ExitKind::Unchecked,
            format!(
                "VM homes of {} that could not be checked: {} (see the report)",
                datastore.display(),
                names(VmState::Unchecked)
            ),
        )),
        VmState::Clean | VmState::Plain => Ok(()),
    }
}

/// The datastore's verdict: damaged if any VM home is, else unchecked if
/// any is, else clean.
fn overall(reports: &[VmReport]) -> VmState {
    let any = |state| reports.iter().any(|r| r.state == state);
    if any(VmState::Damaged) {
        VmState::Damaged
    } else if any(VmState::Unchecked) {
        VmState::Unchecked
    } else {
        VmState::Clean
    }
}

fn print_text(datastore: &Path, reports: &[VmReport]) {
    println!("datastore: {}", datastore.display());
    for vm in reports {
        match vm.state {
            VmState::Plain if vm.findings.is_empty() => {
                println!(
                    "{}: plain (no key bundle; passed through, not checked)",
                    vm.name
                );
                continue;
            }
            _ => {}
        }
        let format = vm
            .content_format
            .map(|f| format!("content format {f}, "))
            .unwrap_or_default();
        println!(
            "{}: {} ({format}{} encrypted file(s) checked, {} bytes authenticated, {} pass-through file(s) not checked)",
            vm.name,
            vm.state.as_str(),
            vm.files_checked,
            vm.bytes_checked,
            vm.files_pass_through
        );
        if let Some(why) = &vm.unchecked {
            println!("  unchecked: {why}");
        }
        for finding in &vm.findings {
            let removed = match (finding.repaired, finding.kind) {
                (false, _) => "",
                (true, "journal") => "repaired: ",
                (true, _) => "removed: ",
            };
            match &finding.path {
                Some(path) => println!("  {} {path}: {removed}{}", finding.kind, finding.detail),
                None => println!("  {}: {removed}{}", finding.kind, finding.detail),
            }
        }
        for file in &vm.files {
            print_file(file);
        }
    }
}

fn print_file(file: &FileReport) {
    let path = &file.path;
    if let Some(why) = &file.unchecked {
        println!("  file {path}: unchecked: {why}");
    }
    if let Some(why) = &file.header {
        println!("  file {path}: header does not authenticate: {why}");
    }
    if let Some(bytes) = file.trailing_fragment {
        println!(
            "  file {path}: ends in a {bytes}-byte fragment after byte {}: truncated inside a block",
            file.size
        );
    }
    if !file.damaged.is_empty() {
        println!("  file {path}: damaged {}", ranges_text(&file.damaged));
    }
    for block in &file.rewritten {
        let bytes = blocks_to_plain_range(*block..block + 1, file.size);
        println!(
            "  file {path}: rewrote block {block} ({}..{}) as authenticated zeros",
            bytes.start, bytes.end
        );
    }
    if let Some(why) = &file.rewrite_error {
        println!("  file {path}: not repaired: {why}");
    }
    if !file.zeroed.is_empty() {
        println!(
            "  file {path}: zeroed {} (read as zeros; damage or a discarded block, fsck cannot tell)",
            ranges_text(&file.zeroed)
        );
    }
}
