//! Running the commands written to a `.control` file ([`super::command`]
//! parses them): each is a call into the datastore, and its one-line result
//! is what status shows as `last-result`. The frontend hands the parsed
//! commands here and records the results; it decides nothing about them.

use std::sync::Arc;

use super::command::ControlCommand;
use crate::datastore::fsck::SharedContent;
use crate::datastore::registry::Datastore;
use crate::datastore::scrub::{self, Rate};
use crate::datastore::vm_home::{CommandRecord, VmHome};
use crate::datastore::vm_keys::RekeyOutcome;
use crate::datastore::DatastoreError;
use crate::format::untrusted;

/// What running a command needs from the mount.
pub struct MountContext<'a> {
    /// The mounted datastore.
    pub datastore: &'a Arc<Datastore>,
    /// The rate of a scrub whose command names none (`-o scrub_rate`).
    pub scrub_rate: Rate,
    /// The content state a scrub reads through (the one the mount's open
    /// files share), made only when a scrub starts.
    pub scrub_content: &'a dyn Fn() -> Arc<dyn SharedContent>,
}

/// Runs `command`, written to the `.control` of `vm` (the root's with
/// `None`): whether it succeeded, and its result line.
pub fn run(
    command: &ControlCommand,
    vm: Option<&Arc<VmHome>>,
    mount: &MountContext<'_>,
) -> (bool, String) {
    match (command, vm) {
        (ControlCommand::Rekey, Some(vm)) => rekey(mount.datastore, vm, None),
        (ControlCommand::RekeyTo(target), Some(vm)) => rekey(mount.datastore, vm, Some(target)),
        (ControlCommand::FlushKeys, _) => flush_keys(mount.datastore),
        (ControlCommand::Scrub(rate), Some(vm)) => start_scrub(mount, Ok(vec![vm.clone()]), *rate),
        (ControlCommand::ScrubAll(rate), _) => {
            start_scrub(mount, mount.datastore.scan_vm_homes(), *rate)
        }
        // `command::parse` allows only `rekey-all` at the root besides.
        _ => rekey_all(mount.datastore),
    }
}

fn describe_rekey(outcome: &RekeyOutcome) -> String {
    format!(
        "ok: shallow re-key: DEK rewrapped under {} (was v{}); only the key bundle changed",
        outcome.to, outcome.from.version
    )
}

/// Shallow re-key, moving the VM to provider `target` if given.
fn rekey(datastore: &Datastore, vm: &VmHome, target: Option<&str>) -> (bool, String) {
    let providers = match target {
        None => Ok(datastore.provider().clone()),
        Some(name) => datastore.provider().targeting(name),
    };
    let result = providers
        .map_err(|source| DatastoreError::Provider {
            path: vm.dir(),
            source,
        })
        .and_then(|providers| datastore.rekey(vm, &providers));
    match result {
        Ok(outcome) => {
            log::info!("VM {}: {}", vm.display_name(), describe_rekey(&outcome));
            (true, describe_rekey(&outcome))
        }
        Err(err) => {
            log::error!("VM {}: re-key failed: {err}", vm.display_name());
            (false, format!("error: {err}"))
        }
    }
}

/// Starts scrubbing `vms` in the background (see `datastore::scrub`) at
/// `rate`, or the mount's `scrub_rate`.
fn start_scrub(
    mount: &MountContext<'_>,
    vms: Result<Vec<Arc<VmHome>>, DatastoreError>,
    rate: Option<Rate>,
) -> (bool, String) {
    let rate = rate.unwrap_or(mount.scrub_rate);
    let started = vms.map_err(|err| err.to_string()).and_then(|vms| {
        let content = (mount.scrub_content)();
        scrub::start(mount.datastore.clone(), vms, content, rate).map_err(|err| err.to_string())
    });
    match started {
        Ok(count) => {
            let result = format!("ok: scrub of {count} VM home(s) started at {rate} bytes a second; progress and findings under `scrub` in each VM home's .control");
            log::info!("{result}");
            (true, result)
        }
        Err(err) => {
            log::error!("scrub not started: {err}");
            (false, format!("error: {err}"))
        }
    }
}

fn flush_keys(datastore: &Datastore) -> (bool, String) {
    let (flushed, kept) = datastore.flush_keys();
    let mut result = format!("ok: flushed the keys of {} VM home(s)", flushed.len());
    if !kept.is_empty() {
        result.push_str(&format!(
            "; kept {} with open files ({})",
            kept.len(),
            kept.join(", ")
        ));
    }
    log::info!("flush-keys: {result}");
    (true, result)
}

/// Re-keys every VM home as one batch; each VM's own `.control` gets its
/// line, the root's the summary.
fn rekey_all(datastore: &Datastore) -> (bool, String) {
    let results = match datastore.rekey_all() {
        Ok(results) => results,
        Err(err) => return (false, format!("error: {err}")),
    };
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| {
            r.as_ref()
                .err()
                .map(|e: &DatastoreError| format!("{}: {e}", untrusted::name(name)))
        })
        .collect();
    let done = results.len() - failures.len();
    for (name, result) in &results {
        let vm_result = match result {
            Ok(outcome) => describe_rekey(outcome),
            Err(err) => format!("error: {err}"),
        };
        if let Some(vm) = datastore.vm_home(name) {
            vm.record_command(CommandRecord {
                command: "rekey-all".into(),
                result: vm_result,
            });
        }
    }
    if failures.is_empty() {
        (
            true,
            format!("ok: {done} of {} VM homes re-keyed", results.len()),
        )
    } else {
        (
            false,
            format!(
                "error: {done} of {} VM homes re-keyed; failed: {}",
                results.len(),
                failures.join("; ")
            ),
        )
    }
}
