//! The hostile datastore (issue 22): whoever can write the datastore
//! directory is the adversary. For every name vmcryptfs reads or writes in
//! a datastore, each test plants one hostile object in its place — a
//! symlink to a secret file outside the datastore (a file with a unique
//! marker, and the key store's `master.key`), a symlink to a directory
//! outside it, a FIFO, a directory, a 2 GiB sparse file — then runs every
//! mount operation and CLI command that touches that name, and asserts
//! after each one:
//!
//! - neither the secret's marker nor any 16 hex digits of the master key
//!   appear in its output, in a virtual file, in the mount's log, or in
//!   clear in the datastore;
//! - nothing outside the datastore changed (content, mode, owner, times,
//!   atime included: reading the secret through a planted symlink is
//!   itself the fault);
//! - it returned within 5 s (it is killed and the case fails otherwise),
//!   and the mount answered a `stat` (from a child process, every ~100 ms)
//!   within 1 s throughout;
//! - neither the mount nor a command read a planted file whole (`rchar`);
//! - and at the end, the VM has the outcome its name expects
//!   ([`Name::expected`], the table in docs/RELIABILITY.md): it works (a
//!   file of it that was not planted over reads back), or it is reported as
//!   damaged with a message that names it (`locked-reason` in its
//!   `.control`, or a `vm status` error naming it), or either.
//!
//! A request that hangs aborts the mount's FUSE connection, so a failing
//! case can neither hang the suite nor leave a mount behind.
//!
//! One `#[test]` per name, each running all six plants in fresh
//! environments (a hang or a destroyed key store in one case cannot leak
//! into another); every failure is collected and reported as
//! `[name × plant] operation: what went wrong`.
//!
//! Choices where the expected behaviour could be argued (a security
//! reviewer's reading):
//!
//! - Operations through the mount open the planted name with `O_NOFOLLOW`
//!   and `O_NONBLOCK` (`dd iflag=nofollow,nonblock`): the mount may present
//!   a planted symlink or FIFO as what it is (symlinks and FIFOs are
//!   legitimate in pass-through directories), and what a caller does with
//!   it is the caller's business. What is tested is that *vmcryptfs* — the
//!   daemon and every CLI command — never follows, reads, writes or waits
//!   on it. For the same reason nothing walks through a VM home planted as
//!   a symlink on the mount side.
//! - A bundle replaced by anything but a regular file does not make the VM
//!   home a plain directory: that would downgrade it (new files would land
//!   in clear). It must be reported as damaged, and a file created in it
//!   must not land in clear.
//! - `provider destroy 1` must be refused in every case (a VM is still
//!   wrapped under version 1); a command that cannot read a bundle fails
//!   closed.
//! - A failing CLI command that acts on the VM must name it in its error.
//! - Reads are bounded: a command or the mount that reads more than 1 GiB
//!   (`rchar` of `/proc/PID/io`) read the 2 GiB plant whole, which fails —
//!   except a conversion of a planted content file, for which a 2 GiB
//!   sparse file is simply a large disk (the 5 s limit still applies).
//!   Every process runs with a 3 GiB data limit (RLIMIT_DATA) so that a
//!   runaway cannot take the test machine's memory.

use crate::common;

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Mount, TestEnv};

/// Every command must return within this.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);
/// The mount must answer a `stat` within this, throughout.
const STAT_LIMIT: Duration = Duration::from_secs(1);
/// Cases stop running operations after this many hung ones (each costs
/// [`COMMAND_LIMIT`]); the hangs are already failures.
const MAX_HANGS: usize = 3;
/// Size of the planted sparse file.
const SPARSE_SIZE: u64 = 2 << 30;
/// RLIMIT_DATA of every command and of the mount: room for one whole
/// read of the 2 GiB plant (which [`READ_LIMIT`] then reports), not for a
/// runaway.
const DATA_LIMIT: u64 = 3 << 30;
const DATA_RLIMIT: libc::rlimit = libc::rlimit {
    rlim_cur: DATA_LIMIT,
    rlim_max: DATA_LIMIT,
};
/// Content written through the mount beside the planted name; must never
/// reach an encrypted VM home in clear.
const NEW_FILE_MARKER: &str = "hostile-suite-new-file-plaintext";

/// The hostile object planted in place of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plant {
    /// A symlink to `outside/secret.txt`, a file with a unique marker.
    SymlinkToSecret,
    /// A symlink to the key store's `master.key`.
    SymlinkToMasterKey,
    /// A symlink to `outside/outdir`, a directory outside the datastore
    /// that looks like a VM home this host can unlock (a copy of vm2's
    /// bundle and of its encrypted `vm.vmx`): the most an adversary can
    /// make of a directory symlink.
    SymlinkToDir,
    /// A FIFO (nobody ever opens its other end).
    Fifo,
    /// A directory holding one file.
    Directory,
    /// A 2 GiB sparse file.
    Sparse2GiB,
}

const PLANTS: [Plant; 6] = [
    Plant::SymlinkToSecret,
    Plant::SymlinkToMasterKey,
    Plant::SymlinkToDir,
    Plant::Fifo,
    Plant::Directory,
    Plant::Sparse2GiB,
];

/// A name vmcryptfs reads or writes in a datastore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    /// `.vmcryptfs-bundle`.
    Bundle,
    /// A bundle temp, `.vmcryptfs-bundle.tmp.<pid>.<random>`.
    BundleTemp,
    /// The conversion journal, `.vmcryptfs-convert-journal`.
    Journal,
    /// Its temp, `.vmcryptfs-convert-journal.tmp`.
    JournalTemp,
    /// The conversion temp in the VM home, `.vmcryptfs-convert.tmp`.
    ConvertTemp,
    /// The conversion temp in a subdirectory of the VM home.
    ConvertTempInSubdir,
    /// An encrypted file, `vm.vmx`.
    EncryptedFile,
    /// A pass-through disk, `disk.vmdk` of a VM without `--encrypt-disks`.
    PassThroughDisk,
    /// An encrypted disk, `disk.vmdk` of an `--encrypt-disks` VM.
    EncryptedDisk,
    /// The VM home directory itself.
    VmHome,
}

impl Name {
    /// The VM home the name is in (or is, for [`Name::VmHome`]).
    fn vm(self) -> &'static str {
        match self {
            Name::EncryptedDisk => "vm2",
            _ => "vm1",
        }
    }

    /// The name's path inside its VM home (empty for the VM home itself).
    fn in_vm(self) -> &'static str {
        match self {
            Name::Bundle => ".vmcryptfs-bundle",
            Name::BundleTemp => ".vmcryptfs-bundle.tmp.4242.0123456789abcdef",
            Name::Journal => ".vmcryptfs-convert-journal",
            Name::JournalTemp => ".vmcryptfs-convert-journal.tmp",
            Name::ConvertTemp => ".vmcryptfs-convert.tmp",
            Name::ConvertTempInSubdir => "sub/.vmcryptfs-convert.tmp",
            Name::EncryptedFile => "vm.vmx",
            Name::PassThroughDisk | Name::EncryptedDisk => "disk.vmdk",
            Name::VmHome => "",
        }
    }

    /// The name relative to a datastore: in its VM, or in `vm`.
    fn rel_in(self, vm: &str) -> String {
        match self {
            Name::VmHome => vm.to_string(),
            _ => format!("{vm}/{}", self.in_vm()),
        }
    }

    /// The outcome a plant at this name must have (docs/RELIABILITY.md).
    fn expected(self) -> Expected {
        match self {
            Name::Bundle => Expected::Damaged,
            // A content plant is one file of the VM; a VM home plant
            // leaves the other VM alone.
            Name::EncryptedFile | Name::PassThroughDisk | Name::EncryptedDisk | Name::VmHome => {
                Expected::Works
            }
            // A conversion that refuses a planted temp or journal (a
            // bundle update that cannot clear a stale bundle temp ends
            // one, too) may leave its journal behind: the VM is then
            // locked, and says why.
            Name::BundleTemp
            | Name::Journal
            | Name::JournalTemp
            | Name::ConvertTemp
            | Name::ConvertTempInSubdir => Expected::WorksOrDamaged,
        }
    }

    /// A content file: a planted one is data to the VM (a 2 GiB sparse
    /// disk is a disk), which a conversion legitimately reads whole.
    fn is_content(self) -> bool {
        matches!(
            self,
            Name::EncryptedFile | Name::PassThroughDisk | Name::EncryptedDisk
        )
    }

    /// A file of the VM, other than the planted name, that reads back
    /// when the VM works.
    fn witness(self) -> String {
        match self {
            Name::EncryptedFile => "vm1/vm.nvram".into(),
            Name::VmHome => "vm2/vm.vmx".into(),
            _ => format!("{}/vm.vmx", self.vm()),
        }
    }

    /// Where the plant goes: the VM that holds the name, the plain
    /// directory that `vm encrypt` converts, and for a VM home also the
    /// directory that `vm create` makes.
    fn planted_rels(self) -> Vec<String> {
        let mut vms = vec![self.vm(), "plain3"];
        if self == Name::VmHome {
            vms.push("newvm");
        }
        vms.into_iter().map(|vm| self.rel_in(vm)).collect()
    }
}

/// What must become of the VM that holds the planted name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    /// A file of it that was not planted over reads back.
    Works,
    /// It is reported as damaged, naming it.
    Damaged,
    /// Either.
    WorksOrDamaged,
}

/// The content a file of the setup holds (several blocks, distinct per
/// file).
fn original(rel: &str) -> Vec<u8> {
    format!("{rel}: original content of the hostile-datastore suite\n")
        .repeat(200)
        .into_bytes()
}

/// Files of each VM home, relative to it.
const VM_FILES: [&str; 4] = ["vm.vmx", "vm.nvram", "disk.vmdk", "sub/notes.log"];

/// The most a command or the mount may read in one case (`rchar`):
/// legitimate reads are small files and the key store (the mount reads a
/// few MiB per status read), far below; reading the 2 GiB plant whole is
/// far above.
const READ_LIMIT: u64 = 1 << 30;

/// The `rchar:` value of a `/proc/PID/io` text (0 if absent).
fn read_chars(io: &str) -> u64 {
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// How a command ended.
struct Outcome {
    /// `None` if it was killed at the limit.
    status: Option<ExitStatus>,
    /// Its standard output (lossy UTF-8, at most 4 MiB).
    stdout: String,
    /// Its standard error, likewise.
    stderr: String,
}

impl Outcome {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// The worst `stat` latency seen by the prober, and whether one hung.
#[derive(Default)]
struct ProbeRecord {
    /// The slowest `stat`, killed ones counting as their time to the kill.
    worst: Duration,
    /// How many ran.
    probes: usize,
    /// Whether one was killed at [`STAT_LIMIT`].
    hung: bool,
}

/// Stats the mount root (and a missing name, a lookup the kernel cannot
/// answer from its cache) from a child process every ~100 ms, recording
/// the worst latency; a child past [`STAT_LIMIT`] is killed.
struct Prober {
    /// Set by [`Prober::finish`]; read by the probing thread (relaxed:
    /// the join orders the rest).
    stop: Arc<AtomicBool>,
    /// Written by the probing thread after each probe, under its mutex.
    record: Arc<Mutex<ProbeRecord>>,
    /// The probing thread, joined by [`Prober::finish`].
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(mnt: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(ProbeRecord::default()));
        let (mnt, stop2, record2) = (mnt.to_path_buf(), stop.clone(), record.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let started = Instant::now();
                let child = Command::new("stat")
                    .process_group(0)
                    .arg(&mnt)
                    .arg(mnt.join(".hostile-suite-probe"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawning stat");
                let finished = wait_limited(child, STAT_LIMIT).is_some();
                let mut record = record2.lock().unwrap();
                record.worst = record.worst.max(started.elapsed());
                record.probes += 1;
                record.hung |= !finished;
                drop(record);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Prober {
            stop,
            record,
            thread: Some(thread),
        }
    }

    /// Stops probing; returns the record.
    fn finish(mut self) -> ProbeRecord {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        std::mem::take(&mut *self.record.lock().unwrap())
    }
}

impl Drop for Prober {
    /// Stops the thread if the case ends early (a panic): it must not
    /// outlive the mount it probes.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for `child` up to `limit`; kills it past that (`None`).
fn wait_limited(mut child: Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            // The whole group: a shell's children too.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            // A FUSE request waits killably, a FIFO open interruptibly:
            // the kill ends it. Never block on a child that might not die.
            let reap_deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < reap_deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads at most 4 MiB of a captured stream.
fn read_capture(mut file: fs::File) -> String {
    let mut bytes = Vec::new();
    file.rewind().unwrap();
    file.take(4 << 20).read_to_end(&mut bytes).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Limits a command's data segment, so reading a planted 2 GiB file whole
/// fails instead of taking the machine's memory.
fn limit_data(cmd: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setrlimit(libc::RLIMIT_DATA, &DATA_RLIMIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Metadata (and content) of everything outside the datastore that a
/// plant points at, read without touching access times, so a change —
/// even a read through a symlink, which moves atime — shows.
fn outside_state(outside: &Path, master_key: &Path) -> Vec<String> {
    let entry = |path: &Path, with_atime: bool| -> String {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return format!("{}: missing", path.display());
        };
        let content = if meta.is_file() {
            let mut bytes = Vec::new();
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
                .open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .unwrap();
            format!("{:x?}", fingerprint(&bytes))
        } else {
            String::new()
        };
        let atime = if with_atime {
            format!("{}.{}", meta.atime(), meta.atime_nsec())
        } else {
            "-".into()
        };
        format!(
            "{}: mode {:o} owner {}:{} size {} mtime {}.{} ctime {}.{} atime {atime} content {content}",
            path.display(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
    };
    let mut out: Vec<String> = [
        outside.to_path_buf(),
        outside.join("secret.txt"),
        outside.join("outdir"),
        outside.join("outdir/.vmcryptfs-bundle"),
        outside.join("outdir/vm.vmx"),
    ]
    .iter()
    .map(|p| entry(p, true))
    .collect();
    // The CLI reads master.key legitimately: its atime may move.
    out.push(entry(master_key, false));
    out
}

/// A cheap fingerprint of a small file's content (length and a
/// position-weighted sum), enough to see any change the suite can cause.
fn fingerprint(bytes: &[u8]) -> (usize, u64) {
    let sum = bytes.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_mul(1_000_003)
            .wrapping_add(b as u64 ^ i as u64)
    });
    (bytes.len(), sum)
}

/// One (name, plant) case: a fresh environment with the plant in place,
/// and the failures found. Owned by one test thread; no locking.
struct Case {
    /// Where the plant is.
    name: Name,
    /// What is planted.
    plant: Plant,
    /// Key store, datastore and mount point of this case alone.
    env: TestEnv,
    /// `outside/`: the secret file and the directory the plants point at.
    outside: PathBuf,
    /// The unique marker at the start of the secret file.
    token: String,
    /// The master key in lowercase hex.
    master_hex: String,
    /// The outside state after the last operation that changed it (each
    /// change is reported once, by the operation that made it).
    outside_before: Vec<String>,
    /// `[name × plant] operation: what`, in the order found.
    failures: Vec<String>,
    /// Operations killed at [`COMMAND_LIMIT`] so far.
    hangs: usize,
    /// The mount, once up; kept (unmounted) to the end of the test.
    mount: Option<Mount>,
    /// How much of the mount log was already checked.
    log_checked: usize,
}

impl Case {
    /// Sets up vm1 (disks pass through), vm2 (`--encrypt-disks`), both
    /// encrypted by `vm encrypt` from known plain files and wrapped under
    /// KEK version 1 of 2, and plain3 (a plain directory), then plants.
    fn new(name: Name, plant: Plant) -> Self {
        let env = TestEnv::new();
        for vm in ["vm1", "vm2", "plain3"] {
            for file in VM_FILES {
                let path = env.datastore.join(vm).join(file);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, original(&format!("{vm}/{file}"))).unwrap();
            }
        }
        let ds = env.datastore.to_str().unwrap().to_string();
        env.run_ok(&["vm", "encrypt", &format!("{ds}/vm1")]);
        env.run_ok(&["vm", "encrypt", &format!("{ds}/vm2"), "--encrypt-disks"]);
        env.run_ok(&["provider", "rotate"]);

        let outside = env.dir.path().join("outside");
        fs::create_dir_all(outside.join("outdir")).unwrap();
        let token = format!("SECRET{:016x}", common::rand_suffix());
        fs::write(
            outside.join("secret.txt"),
            format!("{token} a secret outside the datastore\n"),
        )
        .unwrap();
        for file in [".vmcryptfs-bundle", "vm.vmx"] {
            fs::copy(
                env.datastore.join("vm2").join(file),
                outside.join("outdir").join(file),
            )
            .unwrap();
        }
        let master = fs::read_to_string(env.keystore.join("master.key")).unwrap();
        let master_hex = master.lines().nth(1).unwrap().to_ascii_lowercase();
        assert_eq!(master_hex.len(), 64, "master.key format changed");

        let mut case = Case {
            name,
            plant,
            outside_before: Vec::new(),
            env,
            outside,
            token,
            master_hex,
            failures: Vec::new(),
            hangs: 0,
            mount: None,
            log_checked: 0,
        };
        for rel in name.planted_rels() {
            case.plant_at(&rel);
        }
        case.outside_before = case.outside_state();
        case
    }

    fn outside_state(&self) -> Vec<String> {
        outside_state(&self.outside, &self.env.keystore.join("master.key"))
    }

    /// Replaces `rel` (in the datastore) by the plant.
    fn plant_at(&self, rel: &str) {
        let path = self.env.datastore.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path).unwrap(),
            Ok(_) => fs::remove_file(&path).unwrap(),
            Err(_) => fs::create_dir_all(path.parent().unwrap()).unwrap(),
        }
        match self.plant {
            Plant::SymlinkToSecret => {
                std::os::unix::fs::symlink(self.outside.join("secret.txt"), &path).unwrap()
            }
            Plant::SymlinkToMasterKey => {
                std::os::unix::fs::symlink(self.env.keystore.join("master.key"), &path).unwrap()
            }
            Plant::SymlinkToDir => {
                std::os::unix::fs::symlink(self.outside.join("outdir"), &path).unwrap()
            }
            Plant::Fifo => {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
            }
            Plant::Directory => {
                fs::create_dir(&path).unwrap();
                fs::write(path.join("planted.txt"), "planted\n").unwrap();
            }
            Plant::Sparse2GiB => {
                let file = fs::File::create(&path).unwrap();
                file.set_len(SPARSE_SIZE).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
    }

    fn fail(&mut self, op: &str, what: impl std::fmt::Display) {
        self.failures
            .push(format!("[{:?} × {:?}] {op}: {what}", self.name, self.plant));
    }

    /// The places in `text` where a secret shows, if any.
    fn leaks_in(&self, text: &str) -> Option<&'static str> {
        let lower = text.to_ascii_lowercase();
        if lower.contains(&self.token.to_ascii_lowercase()) {
            return Some("the secret file's marker");
        }
        let windows = (0..=48).step_by(8).map(|i| &self.master_hex[i..i + 16]);
        for window in windows {
            if lower.contains(window) {
                return Some("16 hex digits of the master key");
            }
        }
        None
    }

    /// The checks after every operation: no secret in its output or the
    /// new part of the mount log, nothing outside changed.
    fn check_after(&mut self, op: &str, output: &str) {
        if let Some(what) = self.leaks_in(output) {
            let excerpt: String = output.chars().take(600).collect();
            self.fail(op, format!("{what} appears in its output:\n{excerpt}"));
        }
        if let Some(mount) = &self.mount {
            // Bytes, not text: a log that is not UTF-8 must still be read.
            let log = fs::read(&mount.log).unwrap_or_default();
            let new = String::from_utf8_lossy(log.get(self.log_checked..).unwrap_or_default())
                .into_owned();
            self.log_checked = log.len();
            if let Some(what) = self.leaks_in(&new) {
                self.fail(op, format!("{what} appears in the mount's log"));
            }
            let longest_hex = new
                .split(|c: char| !c.is_ascii_hexdigit())
                .map(str::len)
                .max()
                .unwrap_or(0);
            if longest_hex >= 64 {
                self.fail(op, "the mount's log holds a 256-bit hex string");
            }
        }
        let now = self.outside_state();
        if now != self.outside_before {
            let changed: Vec<String> = now
                .iter()
                .zip(&self.outside_before)
                .filter(|(now, before)| now != before)
                .map(|(now, before)| format!("was {before}\n  now {now}"))
                .collect();
            self.fail(
                op,
                format!(
                    "changed something outside the datastore:\n  {}",
                    changed.join("\n  ")
                ),
            );
            self.outside_before = now;
        }
    }

    /// Runs `cmd` (labelled `op`) to the end, within [`COMMAND_LIMIT`],
    /// then checks its output.
    fn run(&mut self, op: &str, mut cmd: Command) -> Outcome {
        if self.hangs >= MAX_HANGS {
            return Outcome {
                status: None,
                stdout: String::new(),
                stderr: String::new(),
            };
        }
        let stdout = tempfile::tempfile().unwrap();
        let stderr = tempfile::tempfile().unwrap();
        cmd.stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stderr.try_clone().unwrap());
        limit_data(&mut cmd);
        cmd.process_group(0);
        let status = wait_limited(cmd.spawn().expect("spawning a command"), COMMAND_LIMIT);
        let outcome = Outcome {
            status,
            stdout: read_capture(stdout),
            stderr: read_capture(stderr),
        };
        if status.is_none() {
            self.hangs += 1;
            self.fail(
                op,
                format!("did not return within {COMMAND_LIMIT:?} (killed)"),
            );
            if let Some(mount) = &self.mount {
                // A request stuck in the daemon would hang every later one.
                mount.abort_connection();
            }
            if self.hangs == MAX_HANGS {
                self.fail(op, "the remaining operations were skipped after 3 hangs");
            }
        } else if let Some(signal) = status.and_then(|s| s.signal()) {
            self.fail(
                op,
                format!("killed by signal {signal} (a crash?): {}", outcome.stderr),
            );
        }
        let text = format!("{}\n{}", outcome.stdout, outcome.stderr);
        self.check_after(op, &text);
        outcome
    }

    /// A `vmcryptfs` command at trace level. It runs under a shell that
    /// records how many bytes it read (the kernel adds a reaped child's
    /// I/O counters to its parent's): past [`READ_LIMIT`] it read a planted
    /// file whole, unless the name is a content file, whose conversion
    /// legitimately reads all of it.
    fn cli(&mut self, args: &[&str]) -> Outcome {
        let op = format!("vmcryptfs {}", args.join(" "));
        let direct = self.env.cmd(args);
        let io = self.env.dir.path().join("cli-io");
        let _ = fs::remove_file(&io);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#""$@"; rc=$?; grep '^rchar' /proc/$$/io > "$H5_IO"; exit $rc"#)
            .arg("sh")
            .arg(direct.get_program())
            .args(direct.get_args())
            .env("RUST_LOG", "vmcryptfs=trace")
            .env("H5_IO", &io);
        for (key, value) in direct.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let outcome = self.run(&op, cmd);
        if let Some(code) = outcome.status.and_then(|s| s.code()).filter(|&c| c > 128) {
            self.fail(
                &op,
                format!(
                    "killed by signal {} (a crash?): {}",
                    code - 128,
                    outcome.stderr
                ),
            );
        }
        let read = read_chars(&fs::read_to_string(&io).unwrap_or_default());
        if read > READ_LIMIT && !self.name.is_content() {
            self.fail(
                &op,
                format!("read {read} bytes: a planted file was read whole"),
            );
        }
        outcome
    }

    /// A `vmcryptfs` command acting on the planted VM: if it fails, its
    /// error must name the VM.
    fn cli_on_vm(&mut self, args: &[&str], vm: &str) -> Outcome {
        let outcome = self.cli(args);
        if outcome.status.is_some() && !outcome.success() && !names(&outcome.stderr, vm) {
            let op = format!("vmcryptfs {}", args.join(" "));
            self.fail(
                &op,
                format!("failed without naming VM {vm}: {}", outcome.stderr.trim()),
            );
        }
        outcome
    }

    /// `sh -c SCRIPT sh ARGS...`.
    fn shell(&mut self, op: &str, script: &str, args: &[&Path]) -> Outcome {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg("sh").args(args);
        self.run(op, cmd)
    }

    fn ds(&self) -> String {
        self.env.datastore.to_str().unwrap().to_string()
    }

    fn mnt(&self) -> PathBuf {
        self.env.mnt.clone()
    }

    /// Mounts, runs every operation (mounted, then unmounted) and records
    /// the failures in `self.failures`.
    fn run_all(&mut self) {
        let ds = self.ds();
        let vm = self.name.vm();
        match self.env.try_mount_within(&[], COMMAND_LIMIT) {
            Ok(mount) => {
                // SAFETY: plain syscall on a child of ours, valid pointer.
                let rc = unsafe {
                    libc::prlimit(
                        mount.pid() as libc::pid_t,
                        libc::RLIMIT_DATA,
                        &DATA_RLIMIT,
                        std::ptr::null_mut(),
                    )
                };
                assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
                self.mount = Some(mount);
            }
            Err(e) => self.fail("vmcryptfs mount", e),
        }
        self.check_after("vmcryptfs mount", "");
        let prober = self.mount.as_ref().map(|m| Prober::start(&m.mnt));

        // Fails closed whatever is planted: vm2 is wrapped under version 1.
        let destroy = self.cli(&["provider", "destroy", "1"]);
        if destroy.success() {
            self.fail(
                "vmcryptfs provider destroy 1",
                "succeeded although VMs are still wrapped under version 1",
            );
        }
        if self.mount.is_some() {
            self.mount_operations();
        }
        self.cli_surveys(&ds, vm);
        self.cli_on_vm(&["rekey", &ds, vm], vm);
        self.cli_on_vm(&["rekey", "--all", &ds], vm);
        self.conversions(&ds, vm);
        self.cli_on_vm(&["rekey", "--deep", &ds, vm], vm);
        if self.mount.is_some() && self.hangs < MAX_HANGS {
            self.verdict_mounted();
        }
        if let Some(pid) = self.mount.as_ref().map(Mount::pid) {
            let read =
                read_chars(&fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default());
            if read > READ_LIMIT {
                self.fail(
                    "the mount (all operations)",
                    format!("read {read} bytes: a planted file was read whole"),
                );
            }
        }
        if let Some(prober) = prober {
            let record = prober.finish();
            if record.hung || record.worst > STAT_LIMIT {
                self.fail(
                    "stat of the mount root (prober)",
                    format!(
                        "worst latency {:?} over {} probes{}",
                        record.worst,
                        record.probes,
                        if record.hung {
                            ", one never returned"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        if let Some(mnt) = self.mount.as_ref().map(|m| m.mnt.clone()) {
            let mut cmd = Command::new("fusermount3");
            cmd.arg("-u").arg(&mnt);
            if !self.run("fusermount3 -u", cmd).success() {
                if let Some(mount) = &self.mount {
                    mount.abort_connection();
                }
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&mnt)
                    .status();
            }
        }

        // Unmounted: the CLI reads the datastore directly.
        self.cli_surveys(&ds, vm);
        self.cli_on_vm(&["fsck", &ds], vm);
        self.cli_on_vm(&["fsck", "--json", &ds], vm);
        self.cli_on_vm(&["rekey", &ds, vm], vm);
        let plain3 = format!("{ds}/plain3");
        self.cli_on_vm(&["vm", "encrypt", &plain3], "plain3");
        let newvm = format!("{ds}/newvm");
        let created = self.cli_on_vm(&["vm", "create", &newvm], "newvm");
        if self.name == Name::VmHome && created.success() {
            self.fail(
                &format!("vmcryptfs vm create {newvm}"),
                "made a VM home of a planted non-directory or non-empty directory",
            );
        }
        self.scan_datastore();
    }

    /// Everything through the mount that touches the name.
    fn mount_operations(&mut self) {
        let mnt = self.mnt();
        let vm = self.name.vm();
        let planted = mnt.join(self.name.rel_in(vm));
        let on_vm_home = self.name == Name::VmHome;
        self.shell("ls -la MNT", "ls -la \"$1\"", &[&mnt]);
        if !on_vm_home {
            self.shell("ls -laR MNT/VM", "ls -laR \"$1\"", &[&mnt.join(vm)]);
        }
        self.shell("stat (lstat) the name", "stat \"$1\"", &[&planted]);
        self.shell(
            "read the name (nofollow, nonblock)",
            "dd if=\"$1\" iflag=nofollow,nonblock bs=65536 count=16 status=none",
            &[&planted],
        );
        self.shell(
            "write the name (nofollow, nonblock)",
            "printf 'hostile write\\n' | dd of=\"$1\" oflag=nofollow,nonblock conv=notrunc,nocreat status=none",
            &[&planted],
        );
        // Beside the name: in the VM home (whose files are encrypted), or
        // for a planted VM home in the datastore root.
        let beside_rel = if on_vm_home {
            "hostile-new.txt".to_string()
        } else {
            format!("{vm}/hostile-new.txt")
        };
        let beside = mnt.join(&beside_rel);
        let created = self.shell(
            "create a new file beside the name",
            "printf '%s' \"$2\" | dd of=\"$1\" oflag=nofollow status=none && dd if=\"$1\" iflag=nofollow status=none",
            &[&beside, Path::new(NEW_FILE_MARKER)],
        );
        if !on_vm_home {
            if created.success() && created.stdout != NEW_FILE_MARKER {
                self.fail(
                    "create a new file beside the name",
                    format!("read back {:?}", created.stdout),
                );
            }
            let backing = self.env.datastore.join(&beside_rel);
            if fs::read(&backing).is_ok_and(|b| b == NEW_FILE_MARKER.as_bytes()) {
                self.fail(
                    "create a new file beside the name",
                    format!(
                        "{} landed in clear in an encrypted VM home",
                        backing.display()
                    ),
                );
            }
        }
        self.virtual_files("before commands");
        self.shell(
            "echo flush-keys > MNT/.control",
            "echo flush-keys > \"$1\"",
            &[&mnt.join(".control")],
        );
        if !on_vm_home {
            self.shell(
                "echo rekey > MNT/VM/.control",
                "echo rekey > \"$1\"",
                &[&mnt.join(vm).join(".control")],
            );
        }
        self.shell(
            "echo rekey-all > MNT/.control",
            "echo rekey-all > \"$1\"",
            &[&mnt.join(".control")],
        );
        self.virtual_files("after commands");
    }

    /// Reads every status file of the mount.
    fn virtual_files(&mut self, when: &str) {
        let mnt = self.mnt();
        let mut files = vec![".control", ".control.json", ".stats"];
        let vm_files = [
            format!("{}/.control", self.name.vm()),
            format!("{}/.control.json", self.name.vm()),
        ];
        if self.name != Name::VmHome {
            files.extend(vm_files.iter().map(String::as_str));
        }
        for file in files {
            self.shell(
                &format!("cat MNT/{file} ({when})"),
                "cat \"$1\"",
                &[&mnt.join(file)],
            );
        }
    }

    /// The read-only commands: status of the datastore and the VM, and
    /// the provider's VM counts.
    fn cli_surveys(&mut self, ds: &str, vm: &str) {
        self.cli_on_vm(&["status", ds], vm);
        self.cli_on_vm(&["status", "--json", ds], vm);
        let vm_dir = format!("{ds}/{vm}");
        self.cli_on_vm(&["vm", "status", &vm_dir], vm);
        self.cli_on_vm(&["vm", "status", "--json", &vm_dir], vm);
        self.cli(&["provider", "list"]);
        self.cli(&["provider", "list", "--json"]);
    }

    /// The in-place conversions, each undone by the next, on the
    /// (mounted) datastore.
    fn conversions(&mut self, ds: &str, vm: &str) {
        let vm_dir = format!("{ds}/{vm}");
        let disks: [&str; 2] = if vm == "vm2" {
            ["decrypt-disks", "encrypt-disks"]
        } else {
            ["encrypt-disks", "decrypt-disks"]
        };
        for op in disks {
            self.cli_on_vm(&["vm", op, &vm_dir], vm);
        }
        self.cli_on_vm(
            &["vm", "convert-format", "--content-format", "1", &vm_dir],
            vm,
        );
        self.cli_on_vm(&["vm", "convert-format", &vm_dir], vm);
    }

    /// At the end, through the mount: the VM's outcome is the one its name
    /// expects ([`Name::expected`]): it works (its witness file reads
    /// back), or it is reported as damaged, naming it.
    fn verdict_mounted(&mut self) {
        let mnt = self.mnt();
        let witness = self.name.witness();
        let read = self.shell(
            &format!("read MNT/{witness} (does the VM work?)"),
            "dd if=\"$1\" iflag=nofollow status=none",
            &[&mnt.join(&witness)],
        );
        let works = read.success() && read.stdout.as_bytes() == original(&witness);
        let expected = self.name.expected();
        if works {
            if expected == Expected::Damaged {
                self.fail(
                    "verdict",
                    format!("{witness} read back although the VM's bundle is gone"),
                );
            }
            return;
        }
        if expected == Expected::Works {
            self.fail(
                "verdict",
                format!(
                    "the VM must keep working, but {witness} read back {}",
                    if read.success() {
                        "other bytes"
                    } else {
                        "nothing"
                    }
                ),
            );
            return;
        }
        let vm = witness.split('/').next().unwrap().to_string();
        let ds = self.ds();
        let status = self.cli(&["vm", "status", &format!("{ds}/{vm}")]);
        let cli_reports = status.status.is_some()
            && ((!status.success() && names(&status.stderr, &vm))
                || gives_locked_reason(&status.stdout));
        let control = self.shell(
            &format!("cat MNT/{vm}/.control (is the damage reported?)"),
            "cat \"$1\"",
            &[&mnt.join(&vm).join(".control")],
        );
        let mount_reports = gives_locked_reason(&control.stdout);
        if !(cli_reports || mount_reports) {
            self.fail(
                "verdict",
                format!(
                    "VM {vm} neither works ({witness} read back {}) nor is reported as damaged \
                     (no locked-reason in MNT/{vm}/.control nor in `vm status`, no error naming it)",
                    if read.success() { "other bytes" } else { "nothing" }
                ),
            );
        }
    }

    /// No secret in clear anywhere in the datastore (a command that read
    /// it through a symlink may have copied it in). Skips non-regular and
    /// large files.
    fn scan_datastore(&mut self) {
        let mut stack = vec![self.env.datastore.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() < (64 << 20)) {
                    let text = String::from_utf8_lossy(&fs::read(entry.path()).unwrap_or_default())
                        .into_owned();
                    if let Some(what) = self.leaks_in(&text) {
                        let op = format!("scan of {}", entry.path().display());
                        self.fail(&op, format!("{what} is in the datastore in clear"));
                    }
                }
            }
        }
    }
}

/// Whether the error in a command's stderr names `vm`: its own message,
/// not the trace log lines around it (`[time LEVEL target] ...`), which
/// name every path they touch.
fn names(stderr: &str, vm: &str) -> bool {
    stderr
        .lines()
        .filter(|line| !line.starts_with('['))
        .any(|line| line.contains(vm))
}

/// Whether a status text (`.control`, `vm status`) says why the VM is
/// locked.
fn gives_locked_reason(status: &str) -> bool {
    status
        .lines()
        .any(|l| l.starts_with("locked-reason: ") && l != "locked-reason: -")
}

/// Runs every plant at `name`; fails naming every (name, plant, operation)
/// that went wrong.
fn suite(name: Name) {
    let mut failures = Vec::new();
    // Kept until the end: their drop checks the mount logs again, which
    // must come after our own, more precise, report.
    let mut cases = Vec::new();
    for plant in PLANTS {
        let mut case = Case::new(name, plant);
        case.run_all();
        failures.append(&mut case.failures);
        cases.push(case);
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) at {name:?}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bundle() {
    suite(Name::Bundle);
}

#[test]
fn bundle_temp() {
    suite(Name::BundleTemp);
}

#[test]
fn journal() {
    suite(Name::Journal);
}

#[test]
fn journal_temp() {
    suite(Name::JournalTemp);
}

#[test]
fn convert_temp() {
    suite(Name::ConvertTemp);
}

#[test]
fn convert_temp_in_subdirectory() {
    suite(Name::ConvertTempInSubdir);
}

#[test]
fn encrypted_file() {
    suite(Name::EncryptedFile);
}

#[test]
fn pass_through_disk() {
    suite(Name::PassThroughDisk);
}

#[test]
fn encrypted_disk() {
    suite(Name::EncryptedDisk);
}

#[test]
fn vm_home() {
    suite(Name::VmHome);
}

/// The harness itself can fail: a command that prints the secret and reads
/// it through its symlink, one that hangs, and a mount that stops
/// answering are each reported. (Without this, a suite that passes could
/// be one whose checks never fire.)
#[test]
fn harness_reports_leaks_changes_hangs_and_a_stalled_mount() {
    let mut case = Case::new(Name::Journal, Plant::SymlinkToSecret);
    let link = case.env.datastore.join(Name::Journal.rel_in("vm1"));
    case.shell("cat through the plant", "cat \"$1\"", &[&link]);
    case.shell("hang", "sleep 30", &[]);
    let reported = case.failures.join("\n");
    for expected in [
        "[Journal × SymlinkToSecret] cat through the plant: the secret file's marker appears",
        "[Journal × SymlinkToSecret] cat through the plant: changed something outside the datastore",
        "[Journal × SymlinkToSecret] hang: did not return within 5s (killed)",
    ] {
        assert!(reported.contains(expected), "{expected:?} not in:\n{reported}");
    }

    let mount = case.env.mount();
    let prober = Prober::start(&mount.mnt);
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mount.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    std::thread::sleep(STAT_LIMIT * 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mount.pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let record = prober.finish();
    assert!(
        record.hung && record.worst >= STAT_LIMIT,
        "a stopped mount went unnoticed: worst {:?}, hung {}",
        record.worst,
        record.hung
    );
    assert!(mount.unmount().success());
}
