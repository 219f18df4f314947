//! Bad and awkward input to `.control`: commands split over writes,
//! commands without a newline, huge writes, binary garbage and concurrent
//! writers. Nothing panics, nothing changes on bad input, and good commands
//! run exactly once.

use crate::common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use common::{read_control, write_control, TestEnv};

/// Runs the tests of this file one at a time.
///
/// A command written without its newline waits in the open file until the
/// next FUSE FLUSH, and the kernel sends one at every close(2) of any
/// descriptor of that open file. A test in another thread that starts a
/// process (every mount does) forks a child that holds a copy of our
/// descriptor until its exec closes it (O_CLOEXEC); that close flushes, and
/// runs the half-written command early. So no process may start while one
/// of these tests holds a partial command.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bundle_sequence(mount: &common::Mount) -> u64 {
    read_control(&mount.path("vm1/.control"))["bundle-sequence"]
        .parse()
        .unwrap()
}

fn open_control(mount: &common::Mount) -> std::fs::File {
    OpenOptions::new()
        .write(true)
        .open(mount.path("vm1/.control"))
        .unwrap()
}

#[test]
fn a_command_split_over_writes_runs_once_whole() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let before = bundle_sequence(&mount);
    let mut file = open_control(&mount);
    file.write_all(b"re").unwrap();
    file.write_all(b"ke").unwrap();
    assert_eq!(
        bundle_sequence(&mount),
        before,
        "nothing runs before the line is complete"
    );
    file.write_all(b"y\n").unwrap();
    assert_eq!(bundle_sequence(&mount), before + 1);
    drop(file);
    assert_eq!(bundle_sequence(&mount), before + 1, "and it ran once");
}

#[test]
fn a_command_without_newline_runs_at_close_and_errors_surface_there() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let before = bundle_sequence(&mount);
    let mut file = open_control(&mount);
    file.write_all(b"rekey").unwrap();
    nix::unistd::close(file.into_raw_fd()).expect("close runs the command");
    assert_eq!(bundle_sequence(&mount), before + 1);

    let mut file = open_control(&mount);
    file.write_all(b"bogus").unwrap();
    let err = nix::unistd::close(file.into_raw_fd()).unwrap_err();
    assert_eq!(err, nix::errno::Errno::EINVAL);
    assert!(read_control(&mount.path("vm1/.control"))["last-result"].contains("unknown command"));
    assert_eq!(bundle_sequence(&mount), before + 1);
}

#[test]
fn huge_and_binary_writes_are_refused_without_effect() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let before = bundle_sequence(&mount);
    let huge = vec![b'x'; 10 << 20];
    let err = write_control(
        &mount.path("vm1/.control"),
        std::str::from_utf8(&huge).unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(read_control(&mount.path("vm1/.control"))["last-result"].contains("too long"));
    let mut garbage: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 256) as u8).collect();
    garbage.push(b'\n');
    let mut file = open_control(&mount);
    assert_eq!(
        file.write_all(&garbage).unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    drop(file);
    assert_eq!(bundle_sequence(&mount), before, "bad input changes nothing");
    write_control(&mount.path("vm1/.control"), "rekey\n").expect("the control file still works");
}

#[test]
fn concurrent_writers_each_run_their_commands() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = Arc::new(env.mount());
    let before = bundle_sequence(&mount);
    let writers: Vec<_> = (0..6)
        .map(|_| {
            let mount = mount.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    write_control(&mount.path("vm1/.control"), "rekey\n").unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(
        bundle_sequence(&mount),
        before + 30,
        "every re-key ran, one at a time"
    );
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["state"],
        "unlocked"
    );
}
