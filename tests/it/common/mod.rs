//! Shared harness for the integration tests: a temp key store, datastore
//! and mountpoint, the real `vmcryptfs` binary, and real FUSE mounts that
//! are always unmounted, even when a test fails.

#![allow(dead_code)]

pub mod kms;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Drops the kernel's cached pages of `file` (`posix_fadvise(DONTNEED)`):
/// for a file of the mount, the next read reaches the daemon; for a
/// backing file, its clean pages leave the page cache.
pub fn drop_cache(file: &fs::File) {
    nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// Counter `name` (after `vmcryptfs_`) of `vm`, from the root `.stats`.
pub fn vm_counter(mnt: &Path, name: &str, vm: &str) -> u64 {
    stats_value(mnt, &format!("{name}{{vm=\"{vm}\"}}"))
}

/// Counter `name` (after `vmcryptfs_`) of the whole mount, from the root
/// `.stats`.
pub fn mount_counter(mnt: &Path, name: &str) -> u64 {
    stats_value(mnt, name)
}

/// The value of series `series` (after `vmcryptfs_`) in the root `.stats`.
fn stats_value(mnt: &Path, series: &str) -> u64 {
    let stats = fs::read_to_string(mnt.join(".stats")).unwrap();
    let prefix = format!("vmcryptfs_{series} ");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in .stats:\n{stats}"))
        .trim()
        .parse()
        .unwrap()
}

/// Which of the pages `pages` (page numbers) of `file` are in the page
/// cache, by `mincore(2)` on a mapping, which, unlike a read, brings
/// nothing in.
pub fn cached_pages(file: &fs::File, pages: &[u64]) -> Vec<u64> {
    let map = unsafe { memmap2::Mmap::map(file) }.unwrap();
    let mut resident = vec![0u8; map.len().div_ceil(4096)];
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), resident.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    pages
        .iter()
        .copied()
        .filter(|&p| resident[p as usize] & 1 == 1)
        .collect()
}

/// A command's standard error, as text (lossy), for assertions and
/// failure messages.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `command` (an external tool: qemu-img, qemu-io, ...) to the end
/// and asserts that it succeeded, naming it and showing its output if not.
pub fn run_checked(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command running `program` as `nobody` (uid and gid 65534, no
/// supplementary groups), for what an unprivileged caller of the mount
/// sees.
#[allow(dead_code)]
pub fn as_nobody(program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ]);
    command
}

/// Opens `dirs` to everyone, so that `nobody` reaches what is in them.
#[allow(dead_code)]
pub fn open_up(dirs: &[&Path]) {
    use std::os::unix::fs::PermissionsExt;
    for dir in dirs {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The content format `vm create` uses without `--content-format`.
pub const DEFAULT_CONTENT_FORMAT: u16 = 2;

/// Where block `n` (< 126) of an encrypted file stores its bytes, as
/// `(offset, len)` pieces of the backing file (docs/FORMAT.md §3.4, §3.9):
/// format 1 keeps `nonce || ciphertext || tag` together; format 2 has a
/// data page and a slot `nonce || tag` in the first tag page.
#[allow(dead_code)]
pub fn stored_block_pieces(format: u16, n: u64) -> Vec<(u64, u64)> {
    assert!(n < 126, "only the first group is modelled here");
    match format {
        1 => vec![(44 + n * 4128, 4128)],
        2 => vec![(4096 + n * 4096, 4096), (64 + n * 32, 32)],
        other => panic!("unknown content format {other}"),
    }
}

/// Writes `bytes` at `offset` of the backing file `path`.
#[allow(dead_code)]
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Flips one bit of the byte at `offset` of the backing file `path`.
#[allow(dead_code)]
pub fn flip_byte(path: &Path, offset: u64) {
    let mut byte = [0u8];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut byte, offset)
        .unwrap();
    patch(path, offset, &[byte[0] ^ 0x04]);
}

/// All stored bytes of block `n` (every piece, concatenated).
#[allow(dead_code)]
pub fn read_block(path: &Path, format: u16, n: u64) -> Vec<u8> {
    let file = fs::File::open(path).unwrap();
    let mut out = Vec::new();
    for (offset, len) in stored_block_pieces(format, n) {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

/// Stores `bytes` (as returned by [`read_block`]) as block `n`.
#[allow(dead_code)]
pub fn write_block(path: &Path, format: u16, n: u64, bytes: &[u8]) {
    let mut rest = bytes;
    for (offset, len) in stored_block_pieces(format, n) {
        let (piece, tail) = rest.split_at(len as usize);
        patch(path, offset, piece);
        rest = tail;
    }
}

/// Backing offset of byte `i` of block `n`'s ciphertext, in the default
/// content format.
#[allow(dead_code)]
pub fn ciphertext_byte_offset(n: u64, i: u64) -> u64 {
    match DEFAULT_CONTENT_FORMAT {
        1 => 44 + n * 4128 + 16 + i,
        _ => 4096 + n * 4096 + i,
    }
}

/// Runs `stress-ng --STRESSOR 4 --timeout 4 --metrics-brief --temp-path
/// DIR` (a directory of `mount`) under a hard limit of 30 s: past it, the
/// mount's FUSE connection is aborted (so that nothing stays hung on it),
/// stress-ng is killed and the test fails. Returns its exit status, its
/// output, and how long it ran.
pub fn stress_ng_on(mount: &Mount, stressor: &str, dir: &Path) -> (ExitStatus, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new("stress-ng")
        .arg(format!("--{stressor}"))
        .args(["4", "--timeout", "4", "--metrics-brief", "--temp-path"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run stress-ng: {e}"));
    let deadline = started + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            mount.abort_connection();
            let _ = child.kill();
            let _ = child.wait();
            panic!("stress-ng --{stressor} still runs after 30 s: its processes hang on the mount");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text, started.elapsed())
}

/// Fails the test, naming the Debian package, when `tool` is missing:
/// scripts/test installs it, so on a machine without it the test says so
/// loudly instead of passing without having run.
pub fn need(tool: &str, package: &str) {
    if Command::new(tool).arg("--version").output().is_err() {
        panic!("{tool} not found: install {package} (apt-get install {package}; scripts/test does this)");
    }
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_vmcryptfs")
}

/// A key store, a datastore and a mountpoint in one temp directory.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub keystore: PathBuf,
    pub datastore: PathBuf,
    pub mnt: PathBuf,
}

impl TestEnv {
    /// Creates the directories; the key store is not initialised.
    pub fn empty() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keystore = dir.path().join("keystore");
        let datastore = dir.path().join("datastore");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&datastore).unwrap();
        fs::create_dir(&mnt).unwrap();
        Self {
            dir,
            keystore,
            datastore,
            mnt,
        }
    }

    /// Creates the directories and runs `provider init`.
    pub fn new() -> Self {
        let env = Self::empty();
        env.run_ok(&["provider", "init"]);
        env
    }

    /// A `vmcryptfs --keystore K ARGS...` command with a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("--keystore").arg(&self.keystore).args(args);
        for var in [
            "VMCRYPTFS_KEYSTORE",
            "VMCRYPTFS_TEST_CRASH_AFTER",
            "VMCRYPTFS_TEST_CRASH_AT",
            "VMCRYPTFS_KEYSTORE_LOCK_TIMEOUT_MS",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Another "host" on the same datastore: its own key store and mount
    /// point (in a temp directory of its own), nothing initialised.
    pub fn second_host(&self) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let keystore = dir.path().join("keystore");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        TestEnv {
            dir,
            keystore,
            datastore: self.datastore.clone(),
            mnt,
        }
    }

    /// Runs a command given as owned strings.
    pub fn run_strings(&self, args: &[String]) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// Runs a command and returns its output, after checking that neither
    /// its output nor its trace-level log holds key material.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self
            .cmd(args)
            .env("RUST_LOG", "vmcryptfs=trace")
            .output()
            .expect("running vmcryptfs");
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert_no_key_material_in(&text);
            assert_no_master_key_in(&self.keystore, &text);
        }
        out
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vmcryptfs {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Path of a VM home in the datastore.
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.datastore.join(name)
    }

    /// `vm create` in the datastore.
    pub fn create_vm(&self, name: &str, encrypt_disks: bool) -> PathBuf {
        self.create_vm_in_format(name, encrypt_disks, DEFAULT_CONTENT_FORMAT)
    }

    /// [`TestEnv::create_vm`] with `--content-format FORMAT`.
    pub fn create_vm_in_format(&self, name: &str, encrypt_disks: bool, format: u16) -> PathBuf {
        let path = self.vm_dir(name);
        let path_str = path.to_str().unwrap().to_string();
        let format = format.to_string();
        let mut args = vec![
            "vm",
            "create",
            path_str.as_str(),
            "--content-format",
            &format,
        ];
        if encrypt_disks {
            args.push("--encrypt-disks");
        }
        self.run_ok(&args);
        path
    }

    /// Mounts the datastore in the foreground (a child process), waiting
    /// until the mount is live.
    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    /// Mounts with extra `mount` arguments (e.g. `-o allow_other`).
    pub fn mount_with(&self, extra: &[&str]) -> Mount {
        self.mount_at(&self.mnt.clone(), extra)
    }

    /// A second mount point in the temp dir (created), e.g. for a second
    /// "host" mounting the same datastore.
    pub fn extra_mountpoint(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path
    }

    /// Mounts the datastore at `mnt` with extra `mount` arguments.
    pub fn mount_at(&self, mnt: &Path, extra: &[&str]) -> Mount {
        let mut mount = self.spawn_mount(mnt, extra);
        if let Err(e) = mount.wait_mounted(Duration::from_secs(20)) {
            panic!("{e}");
        }
        mount
    }

    /// Mounts at the default mount point, giving up after `limit`: for a
    /// test where a mount that does not come up is a finding to report,
    /// not a broken harness. The `Err` holds the reason and the log.
    pub fn try_mount_within(&self, extra: &[&str], limit: Duration) -> Result<Mount, String> {
        let mut mount = self.spawn_mount(&self.mnt.clone(), extra);
        mount.wait_mounted(limit).map(|()| mount)
    }

    /// Starts `mount --foreground` at `mnt`, logging at trace level.
    fn spawn_mount(&self, mnt: &Path, extra: &[&str]) -> Mount {
        let log = self.dir.path().join(format!("mount-{}.log", rand_suffix()));
        let log_file = fs::File::create(&log).unwrap();
        let mut cmd = self.cmd(&["mount", "--foreground"]);
        cmd.arg(&self.datastore)
            .arg(mnt)
            .args(extra)
            // fuser's own warnings too (requests it answered by default).
            .env("RUST_LOG", "vmcryptfs=trace,fuser=warn")
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("spawning mount");
        Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
            keystore: self.keystore.clone(),
        }
    }
}

/// A random number (for unique names and markers).
pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// Whether `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == target)
}

/// A live FUSE mount served by a child process. Dropping it unmounts
/// (lazily, so a failing test with open files still cleans up) and reaps
/// the process.
pub struct Mount {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub log: PathBuf,
    /// The key store, whose master key must not appear in the log.
    keystore: PathBuf,
}

impl Mount {
    fn wait_mounted(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if is_mounted(&self.mnt) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!(
                    "mount process exited with {status} before mounting; log:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "mount did not appear within {limit:?}; log:\n{}",
            self.log_text()
        ))
    }

    /// Aborts the mount's FUSE connection through
    /// `/sys/fs/fuse/connections/DEV/abort`: every pending and later
    /// request fails with ENOTCONN, so a daemon stuck in a request can no
    /// longer hang its callers, and teardown cannot hang either. Found
    /// from mountinfo, never by a `stat` of the (possibly hung) mount.
    pub fn abort_connection(&self) {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let target = self.mnt.to_string_lossy();
        let minor = info.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(4) == Some(&target.as_ref()))
                .then(|| fields.get(2)?.split_once(':').map(|(_, m)| m.to_string()))
                .flatten()
        });
        let Some(minor) = minor else { return };
        let abort = PathBuf::from(format!("/sys/fs/fuse/connections/{minor}/abort"));
        if !abort.exists() {
            // fusectl is not always mounted (containers); mounting it is
            // harmless and needs root, as these tests do.
            let _ = Command::new("mount")
                .args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::write(abort, "1");
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// What the mount process has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The mount process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Asks the mount process to stop with `signal` and waits for it.
    pub fn stop_with(mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix_kill(child.id(), signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "mount process ignored signal {signal}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unmounts with fusermount3 and waits for the process to exit.
    ///
    /// A busy mount is retried for up to 3 s: a parallel test that starts a
    /// process forks a child that briefly holds copies of this test's open
    /// descriptors (until its exec closes them), which makes the mount busy.
    pub fn unmount(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
            assert!(
                busy && Instant::now() < deadline,
                "fusermount3 -u failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut child = self.child.take().unwrap();
        child.wait().unwrap()
    }
}

fn nix_kill(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Fails the test if the mount's log holds anything shaped like a key: a
/// run of 64 or more hex digits (a 256-bit key in hex, like master.key).
/// Every integration test runs its mounts at trace level, so this checks
/// the whole suite's logs.
/// The master key of `keystore` (hex, as stored in master.key) must never
/// be printed or logged, by the CLI or a mount.
pub fn assert_no_master_key_in(keystore: &Path, text: &str) {
    let Ok(file) = fs::read_to_string(keystore.join("master.key")) else {
        return;
    };
    if let Some(key_hex) = file.lines().nth(1).filter(|l| l.len() == 64) {
        assert!(
            !text
                .to_ascii_lowercase()
                .contains(&key_hex.to_ascii_lowercase()),
            "the master key appears in output or a log:\n{text}"
        );
    }
}

pub fn assert_no_key_material_in(log: &str) {
    let longest = log
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest < 64,
        "the mount log holds a 256-bit hex string:\n{log}"
    );
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let log = self.log_text();
            assert_no_key_material_in(&log);
            assert_no_master_key_in(&self.keystore, &log);
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every regular file under `dir`, relative path → content.
pub fn snapshot_tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.insert(
                    entry.path().strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(entry.path()).unwrap(),
                );
            }
        }
    }
    out
}

/// Whether `needle` occurs in any file under `dir`.
pub fn tree_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    snapshot_tree(dir)
        .into_iter()
        .find(|(_, content)| content.windows(needle.len()).any(|w| w == needle))
        .map(|(path, _)| path)
}

/// Runs a conversion that kills itself (SIGKILL) after its first file.
#[allow(dead_code)]
pub fn killed_after_first_file(env: &TestEnv, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let status = env
        .cmd(args)
        .env("VMCRYPTFS_TEST_CRASH_AT", "convert-first-file-done")
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "{args:?}");
}

/// Asserts that no conversion temp or journal is left in the VM home
/// `dir` (its top level), after a conversion finished.
pub fn no_leftovers(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains("convert") && !name.ends_with(".tmp"),
            "{name} left in {}",
            dir.display()
        );
    }
}

/// Parses `key: value` lines of a `.control` file.
pub fn read_control(path: &Path) -> std::collections::HashMap<String, String> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes a command to a `.control` file the way `echo cmd > file` does,
/// returning the OS error of the write, if any.
pub fn write_control(path: &Path, command: &str) -> Result<(), std::io::Error> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(command.as_bytes())
}

/// Lazily unmounts a path on drop (for mounts made by the background mode,
/// which have no child process of ours).
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_mounted(&self.0) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_mounted(&self.0) {
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&self.0)
                    .status();
            }
        }
    }
}

/// Waits (up to 5 s) until the VM's `.control` shows `open-files: N`: the
/// kernel reports closes asynchronously, so a file closed just now may
/// still count for a moment.
pub fn wait_for_open_files(control: &Path, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = read_control(control)["open-files"].clone();
        if open == expected.to_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "open-files stayed {open}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens `path` for reading and writing, created empty (truncated if it
/// exists).
#[allow(dead_code)]
pub fn create_empty(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

/// (data start, hole start) pairs of `file`, found by alternating
/// SEEK_DATA/SEEK_HOLE.
#[allow(dead_code)]
pub fn data_extents(file: &std::fs::File) -> Vec<(i64, i64)> {
    use nix::unistd::{lseek, Whence};
    let fd = file;
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(data) = lseek(fd, pos, Whence::SeekData) {
        let hole = lseek(fd, data, Whence::SeekHole).unwrap();
        out.push((data, hole));
        pos = hole;
    }
    out
}

/// A size-limited tmpfs at `path`, unmounted when dropped (needs root).
#[allow(dead_code)]
pub struct SmallFs(PathBuf);

#[allow(dead_code)]
impl SmallFs {
    /// Mounts a tmpfs of `size` (as mount(8) takes it: `64m`) at `path`,
    /// creating the directory.
    pub fn mount(path: &Path, size: &str) -> Self {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount(8)");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallFs(path.to_path_buf())
    }

    /// Remounts it with `options` (`ro`, `rw`, ...).
    pub fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
