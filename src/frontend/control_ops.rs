//! The virtual `.control` files.
//!
//! Reading shows a status snapshot taken at open (served with direct I/O,
//! so the kernel never caches it). Writing runs commands at once: the
//! write fails with EINVAL if the command does not parse (nothing changes),
//! and with EIO if it ran and failed; either way the reason is shown as
//! `last-result`.

use std::sync::{Arc, Mutex};

use fuser::Errno;

use super::handles::{Handle, Snapshot};
use super::inodes::NodeInfo;
use super::{FsResult, VmCryptFs};
use crate::control::command::{self, ControlCommand, ControlScope};
use crate::control::metrics::{self, VmStats};
use crate::control::status::{self, DatastoreSummary};
use crate::control::virtual_file::VirtualFile;
use crate::datastore::scrub::{self, Rate};
use crate::datastore::vm_home::{CommandRecord, VmHome};
use crate::datastore::vm_keys::RekeyOutcome;
use crate::datastore::DatastoreError;
use crate::format::untrusted;
use crate::keys::KeyProvider;

/// Shortens what the user wrote for display in `last-command`.
fn describe_input(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(&data[..data.len().min(64)]);
    let text = text.trim().replace(['\n', '\r'], " ");
    if data.len() > 64 {
        format!("{text}…")
    } else {
        text
    }
}

fn describe_rekey(outcome: &RekeyOutcome) -> String {
    format!(
        "ok: shallow re-key: DEK rewrapped under {} (was v{}); only the key bundle changed",
        outcome.to, outcome.from.version
    )
}

impl VmCryptFs {
    /// The current status text of a control file.
    pub(super) fn control_text(&self, scope: ControlScope, vm: Option<&Arc<VmHome>>) -> Vec<u8> {
        match (scope, vm) {
            (ControlScope::VmHome, Some(vm)) => {
                status::render_vm(&self.datastore.status_of(vm)).into_bytes()
            }
            _ => self.with_datastore_summary(|summary, scan_error| {
                let mut text = status::render_datastore(summary);
                if let Some(err) = scan_error {
                    text.push_str(&format!("scan-error: {}\n", untrusted::line(&err)));
                }
                text.into_bytes()
            }),
        }
    }

    /// Builds the root `.control` summary (every VM's status) and hands it
    /// to `render`, with the error if the datastore could not be scanned.
    ///
    /// This runs on a thread of its own, started for the read: the status
    /// of ten thousand VM homes is a hundred thousand small allocations,
    /// and glibc serves each FUSE thread from its own arena and keeps
    /// what was freed there, so reads landing on different FUSE threads
    /// grew the mount by one full set per thread (tens of MiB at ten
    /// thousand VMs). A thread that has exited leaves its arena free, and
    /// the next one started takes it again, so these allocations stay in
    /// one arena. Starting a thread costs tens of microseconds, against
    /// tens of milliseconds for such a read.
    fn with_datastore_summary<R: Send>(
        &self,
        render: impl FnOnce(&DatastoreSummary<'_>, Option<String>) -> R + Send,
    ) -> R {
        // Taken by the thread, or here if no thread could be started.
        let job = Mutex::new(Some(render));
        let take = || {
            job.lock()
                .expect("status job lock")
                .take()
                .expect("one taker")
        };
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("vmcryptfs-status".into())
                .spawn_scoped(scope, || self.build_datastore_summary(take()));
            match thread {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(err) => {
                    log::warn!("no thread for a status read ({err}); reading it here");
                    self.build_datastore_summary(take())
                }
            }
        })
    }

    fn build_datastore_summary<R>(
        &self,
        render: impl FnOnce(&DatastoreSummary<'_>, Option<String>) -> R,
    ) -> R {
        let provider = self.datastore.provider();
        let (statuses, scan_error) = match self.datastore.statuses() {
            Ok(s) => (s, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let summary = DatastoreSummary {
            root: self.datastore.root().display().to_string(),
            provider: provider.name(),
            provider_current_version: self.datastore.default_current_version().ok(),
            vms: &statuses,
            last_command: self
                .root_last_command
                .lock()
                .expect("root command lock")
                .clone(),
        };
        render(&summary, scan_error)
    }

    /// The `.stats` text: counters of every VM home this mount has seen.
    fn stats_text(&self) -> Vec<u8> {
        let vms: Vec<VmStats> = self
            .datastore
            .loaded_vms()
            .iter()
            .map(|vm| VmStats {
                name: vm.display_name(),
                counters: vm.counters().values(),
                locked: vm.is_locked(),
            })
            .collect();
        let mount = metrics::MountStats {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            key_store_opens: crate::keys::embedded::store_opens(),
        };
        metrics::render(&mount, &vms).into_bytes()
    }

    /// What reading a virtual file shows now.
    fn virtual_text(&self, file: VirtualFile, vm: Option<&Arc<VmHome>>) -> Snapshot {
        match (file, vm) {
            (VirtualFile::Control(scope), _) => Snapshot::from(&self.control_text(scope, vm)[..]),
            (VirtualFile::ControlJson(ControlScope::VmHome), Some(vm)) => {
                let json = status::vm_json(&self.datastore.status_of(vm));
                Snapshot::from(format!("{json:#}\n").as_bytes())
            }
            (VirtualFile::ControlJson(_), _) => self.with_datastore_summary(|summary, _| {
                let mut snapshot = Snapshot::default();
                status::write_datastore_json(summary, &mut snapshot).expect("writing to memory");
                snapshot
            }),
            (VirtualFile::Stats, _) => Snapshot::from(&self.stats_text()[..]),
        }
    }

    /// Opens a virtual file and snapshots what it shows.
    pub(super) fn open_virtual(&self, node: &NodeInfo, file: VirtualFile) -> u64 {
        let vm = node.area.vm().cloned();
        let snapshot = self.virtual_text(file, vm.as_ref());
        self.handles.insert(Handle::Control {
            file,
            vm,
            snapshot: Mutex::new(snapshot),
            pending: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, vm: Option<&Arc<VmHome>>, record: CommandRecord) {
        match vm {
            Some(vm) => vm.record_command(record),
            None => *self.root_last_command.lock().expect("root command lock") = Some(record),
        }
    }

    /// A write to a control file. Bytes are collected until a newline, so a
    /// command written in pieces runs once, whole; every complete line runs
    /// now (the write fails with EINVAL if one does not parse, EIO if one
    /// fails). Anything longer than a command can be is refused at once.
    pub(super) fn control_write(
        &self,
        scope: ControlScope,
        vm: Option<&Arc<VmHome>>,
        pending: &Mutex<Vec<u8>>,
        data: &[u8],
    ) -> FsResult<()> {
        let mut buffer = pending.lock().expect("pending lock");
        if buffer.len() + data.len() > command::MAX_COMMAND_BYTES {
            let len = buffer.len() + data.len();
            buffer.clear();
            drop(buffer);
            let err = command::ParseError::TooLong { len };
            log::warn!("rejected control write: {err}");
            self.record(
                vm,
                CommandRecord {
                    command: describe_input(data),
                    result: format!("error: {err}"),
                },
            );
            return Err(Errno::EINVAL);
        }
        buffer.extend_from_slice(data);
        let Some(last_newline) = buffer.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let complete: Vec<u8> = buffer.drain(..=last_newline).collect();
        drop(buffer);
        self.write_control(scope, vm, &complete)
    }

    /// At close: runs a last command written without a trailing newline
    /// (`printf rekey > .control`); its failure is returned by close(2).
    /// The kernel flushes at every close of every descriptor of the open
    /// file, so with a forked copy of the descriptor the first close to
    /// arrive runs the command and sees its error.
    pub(super) fn control_flush(
        &self,
        scope: ControlScope,
        vm: Option<&Arc<VmHome>>,
        pending: &Mutex<Vec<u8>>,
    ) -> FsResult<()> {
        let rest = std::mem::take(&mut *pending.lock().expect("pending lock"));
        if rest.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.write_control(scope, vm, &rest)
    }

    /// Parses and runs complete command lines written to a control file.
    pub(super) fn write_control(
        &self,
        scope: ControlScope,
        vm: Option<&Arc<VmHome>>,
        data: &[u8],
    ) -> FsResult<()> {
        let input = describe_input(data);
        let commands = match command::parse(scope, data) {
            Ok(commands) => commands,
            Err(err) => {
                log::warn!("rejected control command {input:?}: {err}");
                self.record(
                    vm,
                    CommandRecord {
                        command: input,
                        result: format!("error: {err}"),
                    },
                );
                return Err(Errno::EINVAL);
            }
        };
        for command in commands {
            let (ok, result) = match (&command, vm) {
                (ControlCommand::Rekey, Some(vm)) => self.run_rekey(vm, None),
                (ControlCommand::RekeyTo(target), Some(vm)) => self.run_rekey(vm, Some(target)),
                (ControlCommand::FlushKeys, _) => self.run_flush_keys(),
                (ControlCommand::Scrub(rate), Some(vm)) => {
                    self.run_scrub(Ok(vec![vm.clone()]), *rate)
                }
                (ControlCommand::ScrubAll(rate), _) => {
                    self.run_scrub(self.datastore.scan_vm_homes(), *rate)
                }
                _ => self.run_rekey_all(),
            };
            self.record(
                vm,
                CommandRecord {
                    command: command.word().to_string(),
                    result,
                },
            );
            if !ok {
                return Err(Errno::EIO);
            }
        }
        Ok(())
    }

    /// Shallow re-key, moving the VM to provider `target` if given.
    fn run_rekey(&self, vm: &VmHome, target: Option<&str>) -> (bool, String) {
        let providers = match target {
            None => Ok(self.datastore.provider().clone()),
            Some(name) => self.datastore.provider().targeting(name),
        };
        let result = providers
            .map_err(|source| DatastoreError::Provider {
                path: vm.dir(),
                source,
            })
            .and_then(|providers| self.datastore.rekey(vm, &providers));
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

    /// Starts scrubbing `vms` in the background (see `datastore::scrub`)
    /// at `rate`, or the mount's `scrub_rate`.
    fn run_scrub(
        &self,
        vms: Result<Vec<Arc<VmHome>>, DatastoreError>,
        rate: Option<Rate>,
    ) -> (bool, String) {
        let rate = rate.unwrap_or(self.scrub_rate);
        let started = vms.map_err(|err| err.to_string()).and_then(|vms| {
            let content = Arc::new(self.mount_content());
            scrub::start(self.datastore.clone(), vms, content, rate).map_err(|err| err.to_string())
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

    fn run_flush_keys(&self) -> (bool, String) {
        let (flushed, kept) = self.datastore.flush_keys();
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

    fn run_rekey_all(&self) -> (bool, String) {
        let results = match self.datastore.rekey_all() {
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
            if let Some(vm) = self.datastore.vm_home(name) {
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
}
