//! Blocking locks through the mount (issue 23): stress-ng's lock stressors
//! end on time, a waiter that is signalled leaves at once (SIGKILL kills
//! it, a handled signal gives EINTR), a would-be deadlock gets EDEADLK as
//! on a local file system, and a waiter on one mount gets the lock when the
//! holder on another mount lets go.
//!
//! A waiter stuck in the kernel (the bug these tests guard against) would
//! survive SIGKILL and hang the suite, so every process here is reaped by
//! [`Locker`]'s drop, which aborts the FUSE connection through fusectl if
//! the process does not die.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{Mount, TestEnv};

/// Takes write locks on single bytes of a file, one step per argument:
/// `lock:N` prints `asking`, waits for byte N (F_SETLKW, or F_OFD_SETLKW
/// for kind `ofd`) and prints `ok` or the errno's name; `gate` waits for a line on stdin. Then
/// holds its locks until stdin closes. SIGINT and SIGALRM have handlers
/// without SA_RESTART, so a signal ends a wait with EINTR, as in C.
const LOCKER: &str = r#"
import ctypes, errno, fcntl, os, signal, sys
path, kind, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
class Flock(ctypes.Structure):
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_int64), ("l_len", ctypes.c_int64),
                ("l_pid", ctypes.c_int)]
command = {"posix": fcntl.F_SETLKW, "ofd": fcntl.F_OFD_SETLKW}[kind]
for sig in (signal.SIGINT, signal.SIGALRM):
    signal.signal(sig, lambda *_: None)
fd = os.open(path, os.O_RDWR)
for step in steps:
    if step == "gate":
        sys.stdin.readline()
        continue
    lock = Flock(fcntl.F_WRLCK, os.SEEK_SET, int(step.split(":")[1]), 1, 0)
    print("asking", flush=True)
    if libc.fcntl(fd, command, ctypes.byref(lock)) == 0:
        print("ok", flush=True)
    else:
        e = ctypes.get_errno()
        print({errno.EINTR: "EINTR", errno.EDEADLK: "EDEADLK"}.get(e, errno.errorcode[e]), flush=True)
sys.stdin.read()
"#;

/// How long a signalled waiter may take to leave.
const LEAVE_WITHIN: Duration = Duration::from_secs(1);

/// The fusectl file that aborts the FUSE connection of the mount at `mnt`
/// (None for a path that is no FUSE mount, such as a local directory).
fn fuse_abort_file(mnt: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mnt.to_str()?;
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target) && l.contains(" - fuse"))?;
    let minor = line.split(' ').nth(2)?.split(':').nth(1)?;
    Some(
        Path::new("/sys/fs/fuse/connections")
            .join(minor)
            .join("abort"),
    )
}

/// A [`LOCKER`] process; dropping it kills and reaps it, aborting the FUSE
/// connection first if it is stuck in a request.
struct Locker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    abort: Option<PathBuf>,
}

impl Locker {
    fn start(mnt: &Path, file: &Path, kind: &str, steps: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(LOCKER)
            .arg(file)
            .arg(kind)
            .args(steps)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Locker {
            stdin: child.stdin.take(),
            child,
            lines,
            abort: fuse_abort_file(mnt),
        }
    }

    /// The next line it prints, within `within`.
    fn raw_line_within(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// The outcome of its next lock request, within `within`.
    fn line_within(&self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let line = self.raw_line_within(deadline.saturating_duration_since(Instant::now()))?;
            if line != "asking" {
                return Some(line);
            }
        }
    }

    fn expect(&self, expected: &str, within: Duration, what: &str) {
        assert_eq!(
            self.line_within(within).as_deref(),
            Some(expected),
            "{what}"
        );
    }

    /// Checks that it asks for its next lock (it has started, and its
    /// signal handlers are set) and then waits (prints nothing for a while).
    fn expect_waiting(&self, what: &str) {
        assert_eq!(
            self.raw_line_within(Duration::from_secs(10)).as_deref(),
            Some("asking"),
            "{what}: expected to ask for a lock"
        );
        let line = self.line_within(Duration::from_millis(300));
        assert_eq!(line, None, "{what}: expected to wait");
    }

    fn open_gate(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin: it lets its locks go and exits.
    fn finish(&mut self) {
        drop(self.stdin.take());
    }

    fn signal(&self, signal: i32) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let signal = nix::sys::signal::Signal::try_from(signal).unwrap();
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits up to `within` for it to exit; true if it did.
    fn exited_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        self.finish();
        let _ = self.child.kill();
        if !self.exited_within(Duration::from_secs(2)) {
            if let Some(abort) = &self.abort {
                eprintln!("a locker is stuck on the mount: aborting its FUSE connection");
                let _ = std::fs::write(abort, "1");
            }
            let _ = self.child.wait();
        }
    }
}

/// An encrypted VM home (disks encrypted too) on a fresh mount, and a file
/// in it.
fn mounted_vm_file(env: &TestEnv) -> (Mount, PathBuf) {
    env.create_vm("vm1", true);
    let mount = env.mount();
    let file = mount.path("vm1/locked.bin");
    std::fs::write(&file, b"0123456789").unwrap();
    (mount, file)
}

#[test]
fn stress_ng_lock_stressors_end_on_time_in_an_encrypted_vm_home() {
    let env = TestEnv::new();
    let (mount, _) = mounted_vm_file(&env);
    let dir = mount.path("vm1");
    for stressor in ["lockf", "fcntl", "flock"] {
        let (status, output, took) = common::stress_ng_on(&mount, stressor, &dir);
        assert!(
            status.success(),
            "stress-ng --{stressor} failed ({status}): {output}"
        );
        // 4 s of stressing, and the time to stop (on ext4: well under 1 s).
        assert!(
            took < Duration::from_secs(10),
            "stress-ng --{stressor} took {took:?}"
        );
    }
    assert!(
        std::fs::read_dir(&dir).unwrap().count() > 0,
        "the mount still answers"
    );
}

#[test]
fn a_waiter_killed_with_sigkill_is_gone_within_a_second_and_the_mount_still_answers() {
    let env = TestEnv::new();
    let (mount, file) = mounted_vm_file(&env);
    for kind in ["posix", "ofd"] {
        let mut holder = Locker::start(&mount.mnt, &file, "posix", &["lock:0"]);
        holder.expect("ok", Duration::from_secs(5), "the holder locks");
        let mut waiter = Locker::start(&mount.mnt, &file, kind, &["lock:0"]);
        waiter.expect_waiting(&format!("{kind} waiter behind a held lock"));
        waiter.signal(libc::SIGKILL);
        assert!(
            waiter.exited_within(LEAVE_WITHIN),
            "a {kind} waiter killed with SIGKILL is still there after {LEAVE_WITHIN:?}"
        );

        // The mount answers, and the lock goes to the next waiter once the
        // holder lets go (the killed waiter took nothing with it).
        assert!(std::fs::metadata(&file).unwrap().len() == 10);
        let next = Locker::start(&mount.mnt, &file, kind, &["lock:0"]);
        next.expect_waiting("the next waiter");
        holder.finish();
        next.expect(
            "ok",
            Duration::from_secs(2),
            "the next waiter gets the lock when the holder exits",
        );
    }
}

#[test]
fn a_waiter_interrupted_by_a_handled_signal_gets_eintr() {
    let env = TestEnv::new();
    let (mount, file) = mounted_vm_file(&env);
    let mut holder = Locker::start(&mount.mnt, &file, "posix", &["lock:0"]);
    holder.expect("ok", Duration::from_secs(5), "the holder locks");
    for (kind, signal) in [
        ("posix", libc::SIGALRM),
        ("posix", libc::SIGINT),
        ("ofd", libc::SIGALRM),
        ("ofd", libc::SIGINT),
    ] {
        // After its EINTR the waiter asks again, and waits again.
        let mut waiter = Locker::start(&mount.mnt, &file, kind, &["lock:0", "lock:0"]);
        waiter.expect_waiting(kind);
        waiter.signal(signal);
        waiter.expect(
            "EINTR",
            LEAVE_WITHIN,
            &format!("a {kind} waiter given signal {signal}"),
        );
        waiter.expect_waiting(&format!("a {kind} waiter asking again"));
        waiter.signal(libc::SIGKILL);
        assert!(waiter.exited_within(LEAVE_WITHIN));
    }
    holder.finish();
    let next = Locker::start(&mount.mnt, &file, "posix", &["lock:0"]);
    next.expect("ok", Duration::from_secs(2), "the lock is free again");
}

/// Two processes each hold one byte and then ask for the other's: the
/// second to ask closes the cycle. Returns what each got.
fn deadlock_outcome(mnt: &Path, file: &Path) -> (String, String) {
    let mut first = Locker::start(mnt, file, "posix", &["lock:0", "gate", "lock:1"]);
    let mut second = Locker::start(mnt, file, "posix", &["lock:1", "gate", "lock:0"]);
    first.expect("ok", Duration::from_secs(5), "the first takes byte 0");
    second.expect("ok", Duration::from_secs(5), "the second takes byte 1");
    first.open_gate();
    first.expect_waiting("the first, asking for byte 1");
    second.open_gate();
    let second_got = second
        .line_within(LEAVE_WITHIN)
        .unwrap_or_else(|| "nothing within 1 s".into());
    second.finish();
    let first_got = first
        .line_within(Duration::from_secs(2))
        .unwrap_or_else(|| "nothing within 2 s".into());
    (first_got, second_got)
}

#[test]
fn a_would_be_deadlock_gets_edeadlk_as_on_a_local_file_system() {
    let env = TestEnv::new();
    let local = env.dir.path().join("local.bin");
    std::fs::write(&local, b"0123456789").unwrap();
    let on_local = deadlock_outcome(env.dir.path(), &local);
    assert_eq!(
        on_local,
        ("ok".to_string(), "EDEADLK".to_string()),
        "the local file system's behaviour, which the mount must match"
    );

    let (mount, file) = mounted_vm_file(&env);
    assert_eq!(deadlock_outcome(&mount.mnt, &file), on_local);
}

#[test]
fn a_waiter_on_one_mount_gets_the_lock_when_the_holder_on_another_lets_go() {
    let env = TestEnv::new();
    let (host_a, file_a) = mounted_vm_file(&env);
    let mnt_b = env.extra_mountpoint("host-b");
    let _host_b = env.mount_at(&mnt_b, &[]);
    let file_b = mnt_b.join("vm1/locked.bin");
    for kind in ["posix", "ofd"] {
        let mut holder = Locker::start(&host_a.mnt, &file_a, kind, &["lock:0"]);
        holder.expect("ok", Duration::from_secs(5), "host A's holder locks");
        let mut waiter = Locker::start(&mnt_b, &file_b, kind, &["lock:0"]);
        waiter.expect_waiting("host B's waiter, behind host A's lock");
        holder.finish();
        waiter.expect(
            "ok",
            Duration::from_secs(2),
            "host B's waiter gets the lock once host A's holder lets go",
        );
        waiter.finish();
        assert!(waiter.exited_within(Duration::from_secs(2)));
    }
}
