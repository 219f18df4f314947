//! Scrub: checking VM homes of a mounted datastore in the background, while
//! their VMs run (`echo scrub > MNT/VM/.control`, `scrub-all` at the root).
//!
//! A scrub checks what `vmcryptfs fsck` checks of a VM home the mount has
//! unlocked, through the same code ([`fsck::check_mounted_vm`], which
//! reads every block through [`crate::content::verify`]): the journal,
//! internal names, the disk policy and every block of every encrypted
//! file. Each file is checked through the content state the mount's
//! handles of it share, a chunk at a time under the same shared locks a
//! read takes, so a block the VM is rewriting is waited for and never
//! reported as damage.
//!
//! It yields to the VM's I/O two ways: it reads at most `rate` plaintext
//! bytes a second (mount option `scrub_rate`, or `rate=` on the command),
//! and it pauses briefly after every chunk during which the VM did I/O;
//! and as each chunk is 1 MiB, a VM write waits for at most one chunk's
//! read. It only reads: killing the mount during a scrub loses nothing.
//!
//! Damage found is logged once per file, with its ranges, and kept for
//! `.control` / `.control.json` until the next scrub of the VM home.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::convert::Progress;
use super::fsck::{self, SharedContent, VmReport, VmState};
use super::registry::Datastore;
use super::vm_home::VmHome;
use super::write_counted::WriteCounted;

/// Default `scrub_rate`: plaintext bytes checked per second.
pub const DEFAULT_RATE: u64 = 64 << 20;
/// How long a scrub pauses after a chunk during which the VM did I/O.
const YIELD_PAUSE: Duration = Duration::from_millis(5);

/// Plaintext bytes a second a scrub reads at most; `None` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

impl Rate {
    /// Parses `50M`, `512K`, `1G`, a plain number of bytes, or `0` /
    /// `unlimited` for no limit. Multiples are binary (M = 2^20).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "unlimited" || text == "0" {
            return Ok(Rate(None));
        }
        let (digits, shift) = match text.char_indices().last() {
            Some((at, 'K' | 'k')) => (&text[..at], 10),
            Some((at, 'M' | 'm')) => (&text[..at], 20),
            Some((at, 'G' | 'g')) => (&text[..at], 30),
            _ => (text, 0),
        };
        let bad = || {
            format!("bad scrub rate {text:?}: give bytes per second as a number with an optional K, M or G suffix (50M), or unlimited")
        };
        let value: u64 = digits.parse().map_err(|_| bad())?;
        let bytes = value.checked_mul(1 << shift).ok_or_else(bad)?;
        Ok(Rate((bytes > 0).then_some(bytes)))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("unlimited"),
            Some(bytes) if bytes % (1 << 20) == 0 => write!(f, "{}M", bytes >> 20),
            Some(bytes) => write!(f, "{bytes}"),
        }
    }
}

/// Where a VM home's scrub stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubPhase {
    /// Never scrubbed by this mount.
    Never,
    /// Waiting for the scrubs before it (`scrub-all`).
    Queued,
    /// Running now.
    Running,
    /// Finished; the verdict is in the report.
    Done,
}

/// What `.control` shows of a VM home's scrub.
#[derive(Debug, Clone)]
pub struct ScrubView {
    /// Where it stands.
    pub phase: ScrubPhase,
    /// The rate limit it runs at.
    pub rate: Rate,
    /// When it started and finished (Unix seconds).
    pub started: Option<u64>,
    /// See `started`.
    pub finished: Option<u64>,
    /// Encrypted files to check and checked so far.
    pub files_total: usize,
    /// See `files_total`.
    pub files_done: usize,
    /// Plaintext bytes to check (holes included) and done so far.
    pub bytes_total: u64,
    /// See `bytes_total`.
    pub bytes_done: u64,
    /// The findings, once done.
    pub report: Option<VmReport>,
}

impl Default for ScrubView {
    fn default() -> Self {
        Self {
            phase: ScrubPhase::Never,
            rate: Rate(Some(DEFAULT_RATE)),
            started: None,
            finished: None,
            files_total: 0,
            files_done: 0,
            bytes_total: 0,
            bytes_done: 0,
            report: None,
        }
    }
}

impl ScrubView {
    /// The state's name in `.control`: the phase, or once done the
    /// verdict (`clean`, `damaged`, `unchecked`).
    pub fn state(&self) -> &'static str {
        match (self.phase, &self.report) {
            (ScrubPhase::Never, _) => "never",
            (ScrubPhase::Queued, _) => "queued",
            (ScrubPhase::Running, _) => "running",
            (ScrubPhase::Done, Some(report)) => report.state.as_str(),
            (ScrubPhase::Done, None) => "unchecked",
        }
    }
}

/// One VM home's scrub state in a mount.
#[derive(Default)]
pub struct ScrubSlot {
    /// What `.control` shows; held briefly, by the scrub thread after each
    /// chunk and by status reads. Its writes are counted for status
    /// stamps.
    view: WriteCounted<ScrubView>,
    /// The damaged ranges last logged per file (escaped path), so that a
    /// scrub logs a file's damage once, and again only if it changed.
    logged: Mutex<HashMap<String, Vec<Range<u64>>>>,
}

impl ScrubSlot {
    /// A copy of what `.control` shows.
    pub fn view(&self) -> ScrubView {
        self.view.read().clone()
    }

    /// Changes to the view so far (see `WriteCounted`).
    pub fn writes(&self) -> u64 {
        self.view.writes()
    }

    fn update(&self, change: impl FnOnce(&mut ScrubView)) {
        change(&mut self.view.write());
    }

    /// Marks the slot queued at `rate`, unless a scrub is queued or running.
    fn claim(&self, rate: Rate) -> bool {
        let mut view = self.view.write();
        if matches!(view.phase, ScrubPhase::Queued | ScrubPhase::Running) {
            return false;
        }
        *view = ScrubView {
            phase: ScrubPhase::Queued,
            rate,
            ..ScrubView::default()
        };
        true
    }
}

/// Why a scrub could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    /// Every VM home named is being scrubbed already.
    #[error("a scrub of VM home {0} is already queued or running: wait for it (see `scrub` in .control)")]
    AlreadyRunning(String),
    /// No thread could be started.
    #[error("cannot start the scrub thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Starts scrubbing `vms` one after the other on a thread of its own, at
/// `rate`; VM homes already being scrubbed are skipped. Returns how many
/// were queued (an error if none could be).
pub fn start(
    datastore: Arc<Datastore>,
    vms: Vec<Arc<VmHome>>,
    shared: Arc<dyn SharedContent>,
    rate: Rate,
) -> Result<usize, ScrubError> {
    let busy: Vec<String> = vms
        .iter()
        .filter(|vm| !vm.scrub().claim(rate))
        .map(|vm| vm.display_name())
        .collect();
    let queued: Vec<Arc<VmHome>> = vms
        .into_iter()
        .filter(|vm| !busy.contains(&vm.display_name()))
        .collect();
    if queued.is_empty() && !busy.is_empty() {
        return Err(ScrubError::AlreadyRunning(busy.join(", ")));
    }
    let count = queued.len();
    let thread_vms = queued.clone();
    let spawned = std::thread::Builder::new()
        .name("vmcryptfs-scrub".into())
        .spawn(move || {
            let mut pacer = Pacer::new(rate);
            for vm in thread_vms {
                scrub_vm(&datastore, &vm, shared.as_ref(), &mut pacer);
            }
        });
    if let Err(err) = spawned {
        for vm in &queued {
            vm.scrub().update(|view| *view = ScrubView::default());
        }
        return Err(ScrubError::Thread(err));
    }
    Ok(count)
}

/// Scrubs one VM home and records and logs what it found.
fn scrub_vm(
    datastore: &Datastore,
    vm: &Arc<VmHome>,
    shared: &dyn SharedContent,
    pacer: &mut Pacer,
) {
    let slot = vm.scrub();
    slot.update(|view| {
        view.phase = ScrubPhase::Running;
        view.started = Some(unix_now());
    });
    let name = vm.display_name();
    log::info!("scrub of VM {name} started ({} a second)", pacer.rate);
    let unlocked = vm.keyring(datastore.provider()).and_then(|keyring| {
        let policy = vm.authenticated_policy(datastore.provider())?;
        Ok((keyring, policy))
    });
    let report = match unlocked {
        Ok((keyring, policy)) => {
            let mut progress = ScrubProgress { vm, pacer };
            fsck::check_mounted_vm(vm, &keyring, policy, shared, &mut progress)
        }
        Err(locked) => fsck::unchecked_report(&vm.name(), format!("{locked}; no file was checked")),
    };
    log_damage(&name, slot, &report);
    let damaged_files = report.files.iter().filter(|f| f.is_damaged()).count();
    vm.counters().scrubbed(damaged_files as u64);
    log::info!(
        "scrub of VM {name} finished: {} ({} encrypted file(s), {} bytes authenticated)",
        report.state.as_str(),
        report.files_checked,
        report.bytes_checked
    );
    slot.update(|view| {
        view.phase = ScrubPhase::Done;
        view.finished = Some(unix_now());
        view.report = Some(report);
    });
}

/// Logs each damaged file of `report` once, with its ranges, unless the
/// last scrub logged the same damage; and each finding about the VM home.
fn log_damage(name: &str, slot: &ScrubSlot, report: &VmReport) {
    let mut logged = slot.logged.lock().expect("scrub log lock");
    for file in &report.files {
        if !file.is_damaged() {
            continue;
        }
        if logged.get(&file.path) == Some(&file.damaged) {
            continue;
        }
        logged.insert(file.path.clone(), file.damaged.clone());
        log::error!(
            "scrub of VM {name}: file {} is damaged: {}",
            file.path,
            fsck::describe_file_damage(file)
        );
    }
    if report.state == VmState::Damaged {
        for finding in &report.findings {
            log::error!(
                "scrub of VM {name}: {} {}: {}",
                finding.kind,
                finding.path.as_deref().unwrap_or("-"),
                finding.detail
            );
        }
    }
}

/// Paces a scrub: at most `rate` bytes a second over the whole run, and a
/// pause after each chunk during which a scrubbed VM did I/O.
struct Pacer {
    /// The limit.
    rate: Rate,
    /// When pacing started, and the bytes checked since.
    since: Instant,
    bytes: u64,
    /// The VM's read and write operations at the last chunk.
    vm_ops: u64,
}

impl Pacer {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            since: Instant::now(),
            bytes: 0,
            vm_ops: 0,
        }
    }

    /// `bytes` more were read; sleeps as long as the limit and the VM's
    /// I/O (`vm_ops`, its operations so far) ask for.
    fn pace(&mut self, bytes: u64, vm_ops: u64) {
        self.bytes += bytes;
        if vm_ops != self.vm_ops {
            self.vm_ops = vm_ops;
            std::thread::sleep(YIELD_PAUSE);
        }
        if let Some(rate) = self.rate.0 {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let elapsed = self.since.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
}

/// Progress of one VM home's scrub: into its slot, paced.
struct ScrubProgress<'a> {
    vm: &'a Arc<VmHome>,
    pacer: &'a mut Pacer,
}

impl Progress for ScrubProgress<'_> {
    fn start(&mut self, files: usize, bytes: u64) {
        self.vm.scrub().update(|view| {
            view.files_total = files;
            view.bytes_total = bytes;
        });
    }

    fn advance(&mut self, bytes: u64) {
        self.vm.scrub().update(|view| view.bytes_done += bytes);
        self.vm.counters().scrub_read(bytes);
        let values = self.vm.counters().values();
        self.pacer.pace(bytes, values.read_ops + values.write_ops);
    }

    /// Holes: progress, but neither read nor paced (a sparse disk of
    /// 100 GiB holding 1 GiB takes as long as 1 GiB).
    fn skip(&mut self, bytes: u64) {
        self.vm.scrub().update(|view| view.bytes_done += bytes);
    }

    fn file_done(&mut self, _path: &Path) {
        self.vm.scrub().update(|view| view.files_done += 1);
    }

    fn finish(&mut self) {}
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_suffixes() {
        assert_eq!(Rate::parse("50M"), Ok(Rate(Some(50 << 20))));
        assert_eq!(Rate::parse("512k"), Ok(Rate(Some(512 << 10))));
        assert_eq!(Rate::parse("1G"), Ok(Rate(Some(1 << 30))));
        assert_eq!(Rate::parse("4096"), Ok(Rate(Some(4096))));
        assert_eq!(Rate::parse("unlimited"), Ok(Rate(None)));
        assert_eq!(Rate::parse("0"), Ok(Rate(None)));
        for bad in ["", "M", "-1M", "5X", "99999999999G", "1.5M"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rate(Some(50 << 20)).to_string(), "50M");
        assert_eq!(Rate(None).to_string(), "unlimited");
    }

    #[test]
    fn the_pacer_holds_the_rate() {
        let mut pacer = Pacer::new(Rate(Some(10 << 20)));
        let start = Instant::now();
        for _ in 0..5 {
            pacer.pace(1 << 20, 0);
        }
        // 5 MiB at 10 MiB/s: half a second, not less.
        assert!(start.elapsed() >= Duration::from_millis(490));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
