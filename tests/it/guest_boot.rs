//! A real Linux guest boots under qemu-system-x86_64 from an encrypted VM
//! home: its disk and its vTPM (swtpm, state in the same VM home) survive a
//! KEK rotation, a shallow re-key through `.control`, a deep re-key, the
//! destruction of the old KEK version and a remount; after a `kill -9` of
//! QEMU in a write burst, the guest's journal replays, its fsck is clean
//! and every write it fsynced is there. A second test boots the guest on
//! raw, qcow2 and vmdk images, with and without `--encrypt-disks`, attached
//! with `cache=none,aio=native` (O_DIRECT) and `cache=writeback`.
//!
//! The guest is built by `scripts/build-guest` (Debian's kernel and an
//! initramfs; cached). Its /init runs the task named on the kernel command
//! line and reports on the serial console, which QEMU writes to a file:
//! the guest's half of each check is in that script, the host's is here.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{need, rand_suffix, read_control, run_checked, tree_contains, write_control, TestEnv};
use sha2::{Digest, Sha256};

/// How long the guest's pattern is (scripts/build-guest: `PATTERN_MIB`).
const PATTERN_LEN: usize = 4 << 20;
/// Virtual size of every disk image.
const DISK_SIZE: &str = "64M";
/// A boot that takes longer is hung: TCG boots the guest in about 10 s.
const BOOT_LIMIT: Duration = Duration::from_secs(150);

/// The guest's pattern for `seed`, as its /init makes it: `yes LINE | head
/// -c 4M`.
fn pattern(seed: u64) -> Vec<u8> {
    let line = pattern_line(seed);
    line.iter().copied().cycle().take(PATTERN_LEN).collect()
}

fn pattern_line(seed: u64) -> Vec<u8> {
    format!("vmcryptfs-guest-pattern {seed}\n").into_bytes()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The kernel and initramfs `scripts/build-guest` built (once per test
/// binary).
struct GuestImage {
    kernel: PathBuf,
    initrd: PathBuf,
}

fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-guest");
        let out = run_checked(&mut Command::new(script));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let dir = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build-guest printed no directory"),
        );
        GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        }
    })
}

/// How QEMU runs the guest: KVM when a short probe boot under it succeeds,
/// TCG otherwise (nested KVM can abort or hang in early boot).
fn accelerator() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        let probe_dir = tempfile::tempdir().unwrap();
        let kvm_usable = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let chosen = if kvm_usable
            && Boot::new("kvm", "probe", probe_dir.path())
                .run_within(Duration::from_secs(12))
                .is_ok_and(|report| report.has("probe ok"))
        {
            "kvm"
        } else {
            "tcg"
        };
        println!(
            "guest accelerator: {chosen} (KVM usable: {kvm_usable}){}",
            if chosen == "tcg" { why_not_kvm() } else { "" }
        );
        chosen
    })
}

/// Why a host whose /dev/kvm opens may still fail the probe. A host that is
/// itself a guest without VMX or SVM can offer KVM through kvm-pvm, which
/// runs only kernels built as PVM guests; Debian's kernel is not one, so it
/// hangs in early boot there.
fn why_not_kvm() -> &'static str {
    let cpu_has_virtualization = fs::read_to_string("/proc/cpuinfo").is_ok_and(|cpuinfo| {
        cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| {
                line.split_whitespace()
                    .any(|flag| flag == "vmx" || flag == "svm")
            })
    });
    if !cpu_has_virtualization && Path::new("/sys/module/kvm_pvm").exists() {
        "; /dev/kvm here is kvm-pvm (the CPU has no VMX or SVM), which boots only PVM guest kernels"
    } else {
        ""
    }
}

/// How QEMU attaches a disk: `cache=none,aio=native` opens the image with
/// O_DIRECT; `cache=writeback` goes through the host's page cache.
#[derive(Clone, Copy, Debug)]
enum Cache {
    Direct,
    Writeback,
}

impl Cache {
    fn drive_options(self) -> &'static str {
        match self {
            Cache::Direct => "cache=none,aio=native",
            Cache::Writeback => "cache=writeback,aio=threads",
        }
    }
}

/// An image format, as qemu-img and `-drive format=` name it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Raw,
    Qcow2,
    Vmdk,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
        }
    }
}

/// How the datastore stores a disk image's bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stored {
    /// Encrypted: a vmcryptfs file header, no guest byte in the clear.
    Encrypted,
    /// Passed through: the guest's bytes as they are.
    AsIs,
}

/// How a disk image of `format` is stored in a VM home made by `vm create`
/// with or without `--encrypt-disks`: raw, qcow2 and vmdk names are all
/// disks under a new VM's default disk pattern, so they follow the disk
/// policy alike.
fn expected_backing_class(format: Format, encrypt_disks: bool) -> Stored {
    match (format, encrypt_disks) {
        (_, true) => Stored::Encrypted,
        (Format::Raw | Format::Qcow2 | Format::Vmdk, false) => Stored::AsIs,
    }
}

/// Checks the backing file of a disk the guest wrote `pattern(seed)` to
/// against `expected`.
fn assert_stored(backing: &Path, expected: Stored, seed: u64) {
    let bytes = fs::read(backing).unwrap();
    let line = pattern_line(seed);
    let in_clear = bytes.windows(line.len()).any(|w| w == line.as_slice());
    match expected {
        Stored::Encrypted => {
            assert_eq!(&bytes[..4], b"VMCF", "{} is encrypted", backing.display());
            assert!(
                !in_clear,
                "{} holds the guest's pattern in the clear",
                backing.display()
            );
        }
        Stored::AsIs => assert!(
            in_clear,
            "{} is passed through, so it holds the guest's pattern as is",
            backing.display()
        ),
    }
}

/// A disk attached to a boot.
struct Disk {
    path: PathBuf,
    format: Format,
    cache: Cache,
}

/// Creates an image of `format` at `path` (on the mount).
fn create_image(path: &Path, format: Format) {
    run_checked(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", format.name()])
            .arg(path)
            .arg(DISK_SIZE),
    );
}

/// swtpm serving a state directory (in a VM home on the mount) to one QEMU
/// over a Unix socket; it exits when QEMU lets go (`--terminate`).
struct Swtpm {
    child: Child,
    socket: PathBuf,
    /// Keeps the socket's directory (short path, outside the mount).
    _dir: tempfile::TempDir,
}

impl Swtpm {
    /// Manufactures a TPM 2.0 in `state` (EK seed and all).
    fn setup(state: &Path) {
        fs::create_dir_all(state).unwrap();
        run_checked(
            Command::new("swtpm_setup")
                .args(["--tpm2", "--config", "/dev/null", "--tpmstate"])
                .arg(state),
        );
    }

    fn start(state: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("swtpm")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("sock");
        let child = Command::new("swtpm")
            .args([
                "socket",
                "--tpm2",
                "--terminate",
                "--flags",
                "startup-clear",
            ])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "swtpm did not start on {}",
                state.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Swtpm {
            child,
            socket,
            _dir: dir,
        }
    }

    /// Waits for swtpm to exit after QEMU did (it writes its state out).
    fn wait(mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "swtpm outlived QEMU by 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the guest reported: its `vmcryptfs-guest: ...` console lines.
struct Report {
    lines: Vec<String>,
    console: String,
}

impl Report {
    fn from_console(console: String) -> Self {
        let lines = console
            .lines()
            .filter_map(|l| l.strip_prefix("vmcryptfs-guest: "))
            .map(|l| l.trim_end().to_string())
            .collect();
        Report { lines, console }
    }

    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    /// The values of the lines `KEY VALUE`, in order.
    fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key} ");
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect()
    }

    /// The one value of `KEY VALUE`.
    fn value(&self, key: &str) -> &str {
        match self.values(key).as_slice() {
            [one] => one,
            other => panic!(
                "the guest reported {key} {other:?}; console:\n{}",
                self.console
            ),
        }
    }
}

/// One boot of the guest: a task, its arguments, disks and TPM.
struct Boot<'a> {
    accel: &'a str,
    task: &'a str,
    args: Vec<(&'a str, String)>,
    disks: Vec<Disk>,
    tpm: Option<(&'a Swtpm, TpmInterface)>,
    console: PathBuf,
}

/// QEMU's two TPM 2.0 front ends. The TPM's state is the same whichever the
/// guest talks through, so one VM's state can be attached by either.
#[derive(Clone, Copy, Debug)]
enum TpmInterface {
    /// The Command Response Buffer interface, `tpm_crb` in the guest.
    Crb,
    /// The TPM Interface Specification FIFO, `tpm_tis` in the guest; libvirt's
    /// default model on x86.
    Tis,
}

impl TpmInterface {
    fn device(self) -> &'static str {
        match self {
            TpmInterface::Crb => "tpm-crb",
            TpmInterface::Tis => "tpm-tis",
        }
    }
}

impl<'a> Boot<'a> {
    /// A boot whose console goes to a file in `dir`.
    fn new(accel: &'a str, task: &'a str, dir: &Path) -> Self {
        Boot {
            accel,
            task,
            args: Vec::new(),
            disks: Vec::new(),
            tpm: None,
            console: dir.join(format!("console-{task}-{}.log", rand_suffix())),
        }
    }

    fn arg(mut self, key: &'a str, value: impl ToString) -> Self {
        self.args.push((key, value.to_string()));
        self
    }

    fn disk(mut self, path: &Path, format: Format, cache: Cache) -> Self {
        self.disks.push(Disk {
            path: path.to_path_buf(),
            format,
            cache,
        });
        self
    }

    fn tpm(mut self, tpm: &'a Swtpm, interface: TpmInterface) -> Self {
        self.tpm = Some((tpm, interface));
        self
    }

    fn spawn(&self) -> Child {
        let image = guest_image();
        let mut append = format!("console=ttyS0 quiet panic=-1 vmtask={}", self.task);
        for (key, value) in &self.args {
            append.push_str(&format!(" vmarg.{key}={value}"));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            self.accel,
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-monitor", "none", "-serial"])
        .arg(format!("file:{}", self.console.display()))
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", &append]);
        if let Some((tpm, interface)) = self.tpm {
            cmd.arg("-chardev")
                .arg(format!("socket,id=chrtpm,path={}", tpm.socket.display()))
                .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                .arg("-device")
                .arg(format!("{},tpmdev=tpm0", interface.device()));
        }
        for disk in &self.disks {
            cmd.arg("-drive").arg(format!(
                "file={},format={},if=virtio,{}",
                disk.path.display(),
                disk.format.name(),
                disk.cache.drive_options()
            ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run qemu-system-x86_64: {e}"))
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Boots and waits for the guest to power off, up to `limit`. `Err`
    /// holds what went wrong and the console.
    fn run_within(&self, limit: Duration) -> Result<Report, String> {
        let mut qemu = self.spawn();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = qemu.try_wait().unwrap() {
                let report = Report::from_console(self.console_text());
                let mut stderr = String::new();
                std::io::Read::read_to_string(qemu.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                if !status.success() {
                    return Err(format!(
                        "QEMU exited with {status}: {stderr}\nconsole:\n{}",
                        report.console
                    ));
                }
                return Ok(report);
            }
            if Instant::now() > deadline {
                let _ = qemu.kill();
                let _ = qemu.wait();
                return Err(format!(
                    "the guest ({}) did not power off within {limit:?}; console:\n{}",
                    self.accel,
                    self.console_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Boots, runs the task to its end, and checks that it did.
    fn run(&self) -> Report {
        let report = self
            .run_within(BOOT_LIMIT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.has(&format!("end {}", self.task)) && report.values("fail").is_empty(),
            "the guest's {} task failed; console:\n{}",
            self.task,
            report.console
        );
        report
    }

    /// Boots and `kill -9`s QEMU once the console shows `until`; returns
    /// the console as it stands after the kill.
    fn kill_when(&self, until: impl Fn(&Report) -> bool) -> Report {
        let mut qemu = self.spawn();
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            let report = Report::from_console(self.console_text());
            if until(&report) {
                qemu.kill().unwrap();
                qemu.wait().unwrap();
                return Report::from_console(self.console_text());
            }
            let stopped = qemu.try_wait().unwrap().is_some();
            if stopped || !report.values("fail").is_empty() || Instant::now() > deadline {
                let _ = qemu.kill();
                let _ = qemu.wait();
                panic!(
                    "the guest's {} task stopped, failed or hung before it was killed; console:\n{}",
                    self.task, report.console
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `vmcryptfs fsck DATASTORE` and asserts that it finds it clean.
fn assert_host_fsck_clean(env: &TestEnv) {
    let out = env.run(&["fsck", env.datastore.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "vmcryptfs fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn guest_disk_and_vtpm_survive_key_operations_and_a_crash() {
    need("qemu-system-x86_64", "qemu-system-x86");
    need("qemu-img", "qemu-utils");
    need("swtpm", "swtpm");
    need("swtpm_setup", "swtpm-tools");
    let accel = accelerator();
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let logs = env.dir.path();
    let seed = rand_suffix() % 1_000_000;
    let secret = format!("nv-secret-{:016x}", rand_suffix());
    let ds = env.datastore.to_str().unwrap().to_string();

    // First boot: pattern, ext4 and files, EK name, NV secret.
    let mount = env.mount();
    let disk = mount.path("vm1/guest.vmdk");
    create_image(&disk, Format::Vmdk);
    Swtpm::setup(&mount.path("vm1/tpm2"));
    let tpm = Swtpm::start(&mount.path("vm1/tpm2"));
    let first = Boot::new(accel, "first", logs)
        .arg("seed", seed)
        .arg("secret", &secret)
        .disk(&disk, Format::Vmdk, Cache::Direct)
        .tpm(&tpm, TpmInterface::Crb)
        .run();
    tpm.wait();
    assert_eq!(first.value("pattern"), sha256_hex(&pattern(seed)));
    let files = first.values("file");
    assert_eq!(files.len(), 4, "{}", first.console);
    let ek_name = first.value("ek-name");
    assert!(ek_name.len() >= 64, "EK name {ek_name}");

    // Host: rotate, shallow re-key through .control, deep re-key, retire and
    // destroy the old KEK version, remount.
    env.run_ok(&["provider", "rotate"]);
    let control = mount.path("vm1/.control");
    let sequence = read_control(&control)["bundle-sequence"].clone();
    write_control(&control, "rekey").unwrap();
    assert_ne!(
        read_control(&control)["bundle-sequence"],
        sequence,
        "the shallow re-key rewrote the bundle"
    );
    env.run_ok(&["rekey", "--deep", &ds, "vm1"]);
    env.run_ok(&["provider", "retire", "1"]);
    env.run_ok(&["provider", "destroy", "1"]);
    assert!(mount.unmount().success());
    let mount = env.mount();

    // Second boot: everything is still there. The same vTPM state is
    // attached through the other interface, so both of QEMU's TPM 2.0 front
    // ends are covered: the EK and the NV index must not depend on it.
    let tpm = Swtpm::start(&mount.path("vm1/tpm2"));
    let second = Boot::new(accel, "second", logs)
        .arg("seed", seed)
        .disk(&disk, Format::Vmdk, Cache::Direct)
        .tpm(&tpm, TpmInterface::Tis)
        .run();
    tpm.wait();
    assert_eq!(second.value("fsck-exit"), "0");
    assert_eq!(second.value("pattern"), sha256_hex(&pattern(seed)));
    assert_eq!(second.values("file"), files, "the guest's files survive");
    assert_eq!(second.value("ek-name"), ek_name, "the EK is the same");
    assert_eq!(second.value("nv"), secret, "the NV index survives");

    // Crash: kill -9 in a write burst, with each cache mode: through the
    // host's page cache, the guest's fsyncs become flushes of it; with
    // O_DIRECT, its writes reach the mount as they are issued.
    for cache in [Cache::Writeback, Cache::Direct] {
        let burst = Boot::new(accel, "burst", logs)
            .disk(&disk, Format::Vmdk, cache)
            .kill_when(|report| report.values("fsynced").len() >= 20);
        let fsynced: u64 = burst.values("fsynced").last().unwrap().parse().unwrap();
        let after = Boot::new(accel, "after-crash", logs)
            .disk(&disk, Format::Vmdk, cache)
            .run();
        let records: u64 = after.value("records").parse().unwrap();
        assert!(
            records > fsynced,
            "{cache:?}: record {fsynced} was fsynced, but only {records} records survived the crash"
        );
        assert_eq!(after.value("fsck-exit"), "0", "{cache:?}");
        println!("{cache:?}: killed after record {fsynced}, {records} records survived");
    }
    assert!(mount.unmount().success());
    assert_host_fsck_clean(&env);

    // Nothing the guest wrote is in the clear in the datastore.
    assert_stored(
        &env.vm_dir("vm1").join("guest.vmdk"),
        Stored::Encrypted,
        seed,
    );
    let permall = fs::read(env.vm_dir("vm1").join("tpm2/tpm2-00.permall")).unwrap();
    assert_eq!(&permall[..4], b"VMCF", "the vTPM state is stored encrypted");
    assert!(
        tree_contains(&env.datastore, secret.as_bytes()).is_none(),
        "the NV secret leaked into the datastore"
    );
    println!("guest boot cycle under {accel}: first, second, then a burst killed and an after-crash boot per cache mode");
}

#[test]
fn every_image_format_and_cache_mode_boots_from_the_mount() {
    need("qemu-system-x86_64", "qemu-system-x86");
    need("qemu-img", "qemu-utils");
    let accel = accelerator();
    let env = TestEnv::new();
    let seed = rand_suffix() % 1_000_000;
    let homes = [("plain-disks", false), ("encrypted-disks", true)];
    for (vm, encrypt_disks) in homes {
        env.create_vm(vm, encrypt_disks);
    }
    let mut disks = Vec::new();
    for (vm, encrypt_disks) in homes {
        for format in [Format::Raw, Format::Qcow2, Format::Vmdk] {
            for cache in [Cache::Direct, Cache::Writeback] {
                let name = format!("{vm}/{cache:?}.{}", format.name()).to_lowercase();
                disks.push((name, format, cache, encrypt_disks));
            }
        }
    }

    let expected = sha256_hex(&pattern(seed));
    let logs = env.dir.path();
    // Boots with every disk attached, and checks that the guest read the
    // pattern back from each.
    let boot_all = |task: &str, mount: &common::Mount| {
        let mut boot = Boot::new(accel, task, logs).arg("seed", seed);
        for (name, format, cache, _) in &disks {
            boot = boot.disk(&mount.path(name), *format, *cache);
        }
        let report = boot.run();
        let read = report.values("disk");
        assert_eq!(read.len(), disks.len(), "{}", report.console);
        for ((name, ..), line) in disks.iter().zip(read) {
            assert!(
                line.ends_with(&expected),
                "{name}: {line}; console:\n{}",
                report.console
            );
        }
    };

    let mount = env.mount();
    for (name, format, ..) in &disks {
        create_image(&mount.path(name), *format);
    }
    boot_all("disks-write", &mount);
    assert!(mount.unmount().success());
    let mount = env.mount();
    boot_all("disks-check", &mount);
    drop(mount);

    for (name, format, _, encrypt_disks) in &disks {
        assert_stored(
            &env.datastore.join(name),
            expected_backing_class(*format, *encrypt_disks),
            seed,
        );
    }
    println!("{} disks (raw, qcow2, vmdk; O_DIRECT and writeback; with and without --encrypt-disks) under {accel}", disks.len());
}
