//! Errors a user can hit: each names what is wrong, exits with its own
//! code, and leaves the other VMs working.

use crate::common;

use common::stderr;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Output;

use common::{is_mounted, read_control, TestEnv};

const KEY_ERROR: i32 = 3;
const MOUNT_ERROR: i32 = 5;

fn mount_args(env: &TestEnv) -> Vec<String> {
    vec![
        "mount".into(),
        "--foreground".into(),
        env.datastore.to_str().unwrap().into(),
        env.mnt.to_str().unwrap().into(),
    ]
}

fn try_mount(env: &TestEnv) -> Output {
    let args = mount_args(env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.run(&args);
    assert!(!is_mounted(&env.mnt), "this mount was expected to fail");
    out
}

#[test]
fn missing_or_wrong_master_key_is_named() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let master = env.keystore.join("master.key");
    let saved = fs::read(&master).unwrap();

    fs::remove_file(&master).unwrap();
    let out = try_mount(&env);
    assert_eq!(out.status.code(), Some(KEY_ERROR));
    assert!(
        stderr(&out).contains("master.key") && stderr(&out).contains("missing"),
        "{}",
        stderr(&out)
    );

    let other = TestEnv::new();
    fs::copy(other.keystore.join("master.key"), &master).unwrap();
    let out = try_mount(&env);
    assert_eq!(out.status.code(), Some(KEY_ERROR));
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));

    fs::write(&master, &saved).unwrap();
    drop(env.mount());
}

#[test]
fn no_keystore_says_to_run_provider_init() {
    let env = TestEnv::empty();
    let out = try_mount(&env);
    assert_eq!(out.status.code(), Some(KEY_ERROR));
    assert!(
        stderr(&out).contains("vmcryptfs provider init"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_busy_mountpoint_and_missing_fusermount3_are_explained() {
    let env = TestEnv::new();
    let missing = env.dir.path().join("nope");
    let out = env.run(&[
        "mount",
        env.datastore.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(MOUNT_ERROR));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    let out = env
        .cmd(&[
            "mount",
            "--foreground",
            env.datastore.to_str().unwrap(),
            env.mnt.to_str().unwrap(),
        ])
        .env("PATH", env.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(MOUNT_ERROR));
    assert!(
        stderr(&out).contains("apt-get install fuse3"),
        "{}",
        stderr(&out)
    );

    let _mount = env.mount();
    let out = env.run(&[
        "mount",
        env.datastore.to_str().unwrap(),
        env.mnt.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(MOUNT_ERROR));
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));

    let out = env.run(&["mount", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = env.run(&[
        "mount",
        "-o",
        "frobnicate",
        env.datastore.to_str().unwrap(),
        env.mnt.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("frobnicate"));
    for (option, why) in [
        ("read_around=6", "multiple of 4 KiB"),
        ("read_around=32768", "to 16384 KiB"),
        ("read_around=64k", "expected auto, off, or a window in KiB"),
        ("read_around=on", "not \"on\""),
        ("read_ahead=65", "up to 64, not 65 MiB"),
        ("read_ahead=4m", "expected auto, off, or a distance in MiB"),
    ] {
        let out = env.run(&[
            "mount",
            "-o",
            option,
            env.datastore.to_str().unwrap(),
            env.mnt.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{option}");
        let message = stderr(&out);
        assert!(
            message.contains(option) && message.contains(why),
            "{option}: {message}"
        );
    }
}

#[test]
fn a_tampered_bundle_locks_only_its_vm() {
    let env = TestEnv::new();
    env.create_vm("good", false);
    let bad = env.create_vm("bad", false);
    {
        let mount = env.mount();
        fs::write(mount.path("bad/vm.vmx"), b"bad vm config").unwrap();
    }
    let bundle = bad.join(".vmcryptfs-bundle");
    let mut bytes = fs::read(&bundle).unwrap();
    bytes[20] ^= 0x01; // inside the VM id
    fs::write(&bundle, &bytes).unwrap();

    let mount = env.mount();
    let err = fs::read(mount.path("bad/vm.vmx")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY), "{err}");
    let status = read_control(&mount.path("bad/.control"));
    assert_eq!(status["state"], "locked");
    assert!(
        status["locked-reason"].contains("bundle"),
        "{}",
        status["locked-reason"]
    );
    assert!(
        fs::read_dir(mount.path("bad")).is_ok(),
        "names stay listable"
    );
    fs::write(mount.path("good/vm.vmx"), b"fine").unwrap();
    assert_eq!(fs::read(mount.path("good/vm.vmx")).unwrap(), b"fine");
    assert_eq!(read_control(&mount.path(".control"))["locked"], "1");

    let out = env.run(&["vm", "status", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(KEY_ERROR));
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
}

#[test]
fn a_tampered_block_fails_that_read_with_eio_and_is_logged() {
    let env = TestEnv::new();
    let vm = env.create_vm("vm1", false);
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/disk.nvram"), vec![7u8; 3 * 4096]).unwrap();
    }
    let backing = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vm.join("disk.nvram"))
        .unwrap();
    let offset = common::ciphertext_byte_offset(1, 500);
    let mut byte = [0u8];
    backing.read_exact_at(&mut byte, offset).unwrap();
    backing.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();

    let mount = env.mount();
    let file = fs::File::open(mount.path("vm1/disk.nvram")).unwrap();
    let mut buf = vec![0u8; 4096];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, vec![7u8; 4096], "untouched blocks still read");
    let err = file.read_exact_at(&mut buf, 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let log = mount.log_text();
    assert!(
        log.contains("vm1/disk.nvram") && log.contains("block 1"),
        "log must name file and block:\n{log}"
    );
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mount = env.mount();
        fs::write(mount.path("vm1/f"), b"x").unwrap();
        let status = mount.stop_with(signal);
        assert!(status.success(), "signal {signal}: {status}");
        assert!(!is_mounted(&env.mnt));
    }
}

#[test]
fn background_mount_returns_once_mounted() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let out = env.run(&[
        "mount",
        env.datastore.to_str().unwrap(),
        env.mnt.to_str().unwrap(),
    ]);
    let guard = common::UnmountOnDrop(env.mnt.clone());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(is_mounted(&env.mnt));
    fs::write(env.mnt.join("vm1/a"), b"background").unwrap();
    assert_eq!(fs::read(env.mnt.join("vm1/a")).unwrap(), b"background");
    drop(guard);
    assert!(!is_mounted(&env.mnt));
}

#[test]
fn keys_never_reach_the_log_and_core_dumps_are_off() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let master_hex = fs::read_to_string(env.keystore.join("master.key"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let mount = env.mount_with(&[]);
    fs::write(mount.path("vm1/x.vmdk"), vec![1u8; 10_000]).unwrap();
    env.run_ok(&["provider", "rotate"]);
    common::write_control(&mount.path("vm1/.control"), "rekey").unwrap();
    let limits = fs::read_to_string(format!("/proc/{}/limits", mount.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let log = mount.log_text();
    assert!(!log.contains(&master_hex));
    common::assert_no_key_material_in(&log);
    assert!(log.contains("unlocked"), "debug logging was on:\n{log}");
}

/// A report piped into a reader that has gone (`status --json | head`)
/// ends the command quietly, as `ls | head` does: killed by SIGPIPE at the
/// write, no panic and no error message.
#[test]
fn a_report_whose_reader_has_gone_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let env = TestEnv::new();
    for vm in ["vm1", "vm2"] {
        env.create_vm(vm, false);
    }
    let ds = env.datastore.to_str().unwrap();
    for args in [
        vec!["status", "--json", ds],
        vec!["status", ds],
        vec!["fsck", ds],
    ] {
        // A pipe whose read end is closed before the command starts.
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        drop(read_end);
        let out = env
            .cmd(&args)
            .stdout(std::process::Stdio::from(write_end))
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?} {}",
            out.status,
            stderr(&out)
        );
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
}
