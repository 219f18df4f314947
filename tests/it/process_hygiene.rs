//! Issue 22, process hygiene: every command, not only `mount`, runs without
//! core dumps, not dumpable, and under umask 077 from before it loads a
//! key; a background mount's log file is private and only ever a regular
//! file.

use crate::common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, is_mounted, TestEnv, UnmountOnDrop};

/// Every entry under `dir`, `dir` included.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for entry in fs::read_dir(dir).unwrap() {
            out.extend(walk(&entry.unwrap().path()));
        }
    }
    out
}

/// A `/proc/PID/status` field.
fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

#[test]
fn a_command_holding_the_master_key_is_undumpable_and_creates_private_files() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to switch users"
    );
    let env = TestEnv::empty();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // Started under the usual umask 022: sled's files (KEK records, under
    // the master key) still get no group or other bits.
    let out = Command::new("sh")
        .args([
            "-c",
            "umask 022; exec \"$0\" \"$@\"",
            binary(),
            "--keystore",
        ])
        .arg(&env.keystore)
        .args(["provider", "init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in walk(&env.keystore) {
        let mode = fs::symlink_metadata(&path).unwrap().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {:o}", path.display(), mode);
    }

    // A command run by an ordinary user, caught while it waits for the key
    // store's lock: it has read the master key by then.
    for path in walk(&env.keystore) {
        nix::unistd::chown(&path, Some(65534.into()), Some(65534.into())).unwrap();
    }
    let db = fs::File::open(env.keystore.join("kek.sled/db")).unwrap();
    let lock = nix::fcntl::Flock::lock(db, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary())
        .arg("--keystore")
        .arg(&env.keystore)
        .args(["provider", "list"])
        .env("VMCRYPTFS_KEYSTORE_LOCK_TIMEOUT_MS", "20000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_status_field(pid, "Name").as_deref() != Some("vmcryptfs") {
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it should wait for the lock"
    );
    assert_eq!(proc_status_field(pid, "Umask").as_deref(), Some("0077"));
    let uid = proc_status_field(pid, "Uid").unwrap();
    assert!(uid.starts_with("65534"), "{uid}");
    // Not dumpable: the kernel gives its /proc files to root, not to its
    // own user, and nobody else may ptrace it.
    let owner = fs::metadata(format!("/proc/{pid}/status")).unwrap().uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid} belongs to uid {owner}: still dumpable"
    );
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mount` in the background with `--log-file log`: its status once it
/// returns, and its stderr.
fn background_mount(env: &TestEnv, log: &Path) -> (bool, String) {
    let out = env
        .cmd(&["mount", "--log-file"])
        .arg(log)
        .arg(&env.datastore)
        .arg(&env.mnt)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_mount_log_file_is_private_and_never_followed_or_a_fifo() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let log = env.dir.path().join("mount.log");

    // New: created 0600.
    {
        let (ok, err) = background_mount(&env, &log);
        let _guard = UnmountOnDrop(env.mnt.clone());
        assert!(ok, "{err}");
        assert!(is_mounted(&env.mnt));
        assert_eq!(fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    }
    // Existing with a wider mode: narrowed to 0600, appended to.
    fs::write(&log, b"earlier run\n").unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o644)).unwrap();
    {
        let (ok, err) = background_mount(&env, &log);
        let _guard = UnmountOnDrop(env.mnt.clone());
        assert!(ok, "{err}");
        assert_eq!(fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
        assert!(fs::read_to_string(&log)
            .unwrap()
            .starts_with("earlier run\n"));
    }
    // A symlink is not followed: the mount refuses, the target is untouched.
    let target = env.dir.path().join("elsewhere");
    fs::write(&target, b"not a log").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    let link = env.dir.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (ok, err) = background_mount(&env, &link);
    let _guard = UnmountOnDrop(env.mnt.clone());
    assert!(!ok, "mounted with a symlinked log file");
    assert!(err.contains("log file"), "{err}");
    assert!(!is_mounted(&env.mnt));
    assert_eq!(fs::read(&target).unwrap(), b"not a log");
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
    // A FIFO is refused at once, not waited on.
    let fifo = env.dir.path().join("fifo.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = Instant::now();
    let (ok, err) = background_mount(&env, &fifo);
    assert!(!ok, "mounted with a FIFO as log file");
    assert!(err.contains("log file"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!is_mounted(&env.mnt));
}
