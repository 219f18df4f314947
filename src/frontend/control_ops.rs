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
use crate::control::command::{self, ControlScope};
use crate::control::execute::{self, MountContext};
use crate::control::metrics::{self, VmStats};
use crate::control::status::{self, DatastoreSummary};
use crate::control::virtual_file::VirtualFile;
use crate::datastore::fsck::SharedContent;
use crate::datastore::vm_home::{CommandRecord, VmHome};
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

    /// Builds the root `.control` summary (every VM's lines, see
    /// [`RootCache`](crate::control::root_cache::RootCache)) and hands it
    /// to `render`, with the error if the datastore could not be scanned.
    ///
    /// This runs on a thread of its own, started for the read: rendering
    /// the status of ten thousand VM homes (the first read, or one after a
    /// re-key of them all) is a hundred thousand small allocations, and
    /// glibc serves each FUSE thread from its own arena and keeps what was
    /// freed there, so reads landing on different FUSE threads grew the
    /// mount by one full set per thread (tens of MiB at ten thousand VMs).
    /// A thread that has exited leaves its arena free, and the next one
    /// started takes it again, so these allocations, and the kept lines,
    /// stay in one arena. Starting a thread costs tens of microseconds.
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
        let mut cache = self.root_cache.lock().expect("root status cache lock");
        let scan_error = cache.refresh(&self.datastore).err().map(|e| e.to_string());
        let summary = DatastoreSummary {
            root: self.datastore.root().display().to_string(),
            provider: provider.name(),
            provider_current_version: self.datastore.default_current_version().ok(),
            vms: &cache.entries(),
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
        let scrub_content = || -> Arc<dyn SharedContent> { Arc::new(self.mount_content()) };
        let mount = MountContext {
            datastore: &self.datastore,
            scrub_rate: self.scrub_rate,
            scrub_content: &scrub_content,
        };
        for command in commands {
            let (ok, result) = execute::run(&command, vm, &mount);
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
}
