//! Locks through the mount: OFD and POSIX locks conflict between owners,
//! flock works, QEMU's image locking refuses a second writer, and locks are
//! forwarded to the backing files so they hold across two mounts of one
//! datastore (two hosts on shared storage).

use crate::common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_checked, TestEnv};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

fn write_lock(start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

#[test]
fn ofd_locks_conflict_within_a_mount_and_across_two_mounts() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let host_a = env.mount();
    let mnt_b = env.extra_mountpoint("host-b");
    let _host_b = env.mount_at(&mnt_b, &[]);
    let path = host_a.path("vm1/vm1.vmx");
    std::fs::write(&path, b"config").unwrap();

    let holder = open_rw(&path);
    fcntl(&holder, FcntlArg::F_OFD_SETLK(&write_lock(0, 100))).unwrap();
    let same_mount = open_rw(&path);
    assert_eq!(
        fcntl(&same_mount, FcntlArg::F_OFD_SETLK(&write_lock(50, 10))),
        Err(Errno::EAGAIN)
    );
    fcntl(&same_mount, FcntlArg::F_OFD_SETLK(&write_lock(100, 10)))
        .expect("disjoint range is free");

    let other_host = open_rw(&mnt_b.join("vm1/vm1.vmx"));
    assert_eq!(
        fcntl(&other_host, FcntlArg::F_OFD_SETLK(&write_lock(0, 1))),
        Err(Errno::EAGAIN),
        "the lock must hold on the other mount too"
    );
    let mut query = write_lock(0, 1);
    fcntl(&other_host, FcntlArg::F_OFD_GETLK(&mut query)).unwrap();
    assert_eq!(
        i32::from(query.l_type),
        libc::F_WRLCK,
        "F_GETLK reports the conflicting lock"
    );

    // The kernel tells the file system about the last close of an open
    // file description asynchronously (FUSE RELEASE), so an OFD lock is
    // given back on the backing file shortly after close(2) returns.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fcntl(&other_host, FcntlArg::F_OFD_SETLK(&write_lock(0, 1))) == Err(Errno::EAGAIN) {
        assert!(
            Instant::now() < deadline,
            "the lock was not released after close"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn posix_locks_conflict_between_processes() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let path = mount.path("vm1/lockfile");
    std::fs::write(&path, b"x").unwrap();
    // `flock(1)` from util-linux takes flock locks; python's fcntl.lockf takes
    // POSIX locks. Use a child process for the holder so the owners differ.
    let mut holder = Command::new("python3")
        .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut holder, "locked");
    let probe = open_rw(&path);
    let err = fcntl(&probe, FcntlArg::F_SETLK(&write_lock(0, 0))).unwrap_err();
    assert!(matches!(err, Errno::EAGAIN | Errno::EACCES), "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    fcntl(&probe, FcntlArg::F_SETLK(&write_lock(0, 0))).expect("free after the holder died");

    let status = Command::new("flock")
        .arg("-n")
        .arg(&path)
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success(), "flock works through the mount");
}

fn wait_for_line(child: &mut Child, expected: &str) {
    use std::io::BufRead;
    let stdout = child.stdout.as_mut().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), expected);
}

/// Starts `qemu-io` on `image` and keeps it open (and so locked) until the
/// returned child's stdin is closed.
fn hold_image_open(image: &Path) -> Child {
    let mut child = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"write -P 7 0 4k\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn second_writer_is_refused(image: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write 0 4k"])
            .arg(image)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("lock") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "second writer was not refused: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn qemu_image_locking_refuses_a_second_writer_on_one_and_two_mounts() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let host_a = env.mount();
    let mnt_b = env.extra_mountpoint("host-b");
    let _host_b = env.mount_at(&mnt_b, &[]);
    let image = host_a.path("vm1/disk.qcow2");
    run_checked(
        Command::new("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(&image)
            .arg("64M"),
    );

    let mut holder = hold_image_open(&image);
    second_writer_is_refused(&image);
    second_writer_is_refused(&mnt_b.join("vm1/disk.qcow2"));
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 7 0 4k"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "image usable after the holder exits"
    );
}
