//! `vmcryptfs provider ...` through the real binary.

use crate::common;

use common::stderr;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Exit code of key provider errors (`ExitKind::Key`).
const KEY_ERROR: i32 = 3;

fn vmcryptfs(keystore: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmcryptfs"));
    cmd.arg("--keystore")
        .arg(keystore)
        .args(args)
        .env_remove("VMCRYPTFS_KEYSTORE")
        .env_remove("VMCRYPTFS_TEST_CRASH_AFTER")
        .env_remove("VMCRYPTFS_KEYSTORE_LOCK_TIMEOUT_MS");
    cmd
}

fn run(keystore: &Path, args: &[&str]) -> Output {
    vmcryptfs(keystore, args).output().unwrap()
}

/// Runs a command that must succeed and returns its stdout.
fn run_ok(keystore: &Path, args: &[&str]) -> String {
    let out = run(keystore, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The table rows of `provider list`, as (version, state, is_current).
fn list_rows(keystore: &Path) -> Vec<(u32, String, bool)> {
    let text = run_ok(keystore, &["provider", "list"]);
    let mut lines = text
        .lines()
        .skip_while(|line| !line.starts_with("VERSION"))
        .take_while(|line| !line.is_empty());
    assert!(lines.next().is_some(), "no table header in:\n{text}");
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let current = fields[2] == "*";
            (fields[0].parse().unwrap(), fields[1].to_string(), current)
        })
        .collect()
}

fn new_keystore() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let keystore = dir.path().join("ks");
    (dir, keystore)
}

#[test]
fn init_prints_guidance_and_refuses_a_second_init() {
    let (_dir, keystore) = new_keystore();
    let text = run_ok(&keystore, &["provider", "init"]);
    assert!(text.contains(&keystore.display().to_string()), "{text}");
    assert!(text.contains("master.key"), "{text}");
    assert!(text.contains("root of trust"), "{text}");
    assert!(text.contains("vmcryptfs provider export"), "{text}");
    assert!(text.contains("Current KEK: local:"), "{text}");
    assert!(text.contains(" v1"), "{text}");

    let again = run(&keystore, &["provider", "init"]);
    assert_eq!(again.status.code(), Some(KEY_ERROR));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn list_shows_v1_and_rotate_makes_v2_current() {
    let (_dir, keystore) = new_keystore();
    run_ok(&keystore, &["provider", "init"]);
    assert_eq!(list_rows(&keystore), [(1, "active".into(), true)]);

    let text = run_ok(&keystore, &["provider", "rotate"]);
    assert!(text.contains(" v2"), "{text}");
    assert!(text.contains("vmcryptfs rekey --all"), "{text}");
    assert_eq!(
        list_rows(&keystore),
        [(1, "active".into(), false), (2, "active".into(), true)]
    );
}

#[test]
fn export_import_round_trip() {
    let (dir, keystore) = new_keystore();
    run_ok(&keystore, &["provider", "init"]);
    run_ok(&keystore, &["provider", "rotate"]);
    let backup = dir.path().join("backup.txt");
    let backup_arg = backup.to_str().unwrap();
    run_ok(&keystore, &["provider", "export", backup_arg]);

    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(keystore.join("master.key"), restored.join("master.key")).unwrap();
    let text = run_ok(&restored, &["provider", "import", backup_arg]);
    assert!(text.contains("versions 1, 2"), "{text}");

    assert_eq!(
        run_ok(&restored, &["provider", "list"]),
        run_ok(&keystore, &["provider", "list"])
    );
}

#[test]
fn list_without_a_store_says_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["provider", "list"]);
    assert_eq!(out.status.code(), Some(KEY_ERROR));
    assert!(
        stderr(&out).starts_with("vmcryptfs: error: "),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("provider init"), "{}", stderr(&out));
}

#[test]
fn rotate_is_durable_when_the_process_is_killed_right_after() {
    let (_dir, keystore) = new_keystore();
    run_ok(&keystore, &["provider", "init"]);
    let out = vmcryptfs(&keystore, &["provider", "rotate"])
        .env("VMCRYPTFS_TEST_CRASH_AFTER", "rotate")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "rotate was not killed: {out:?}"
    );
    assert_eq!(
        list_rows(&keystore),
        [(1, "active".into(), false), (2, "active".into(), true)]
    );
}

#[test]
fn held_store_lock_gives_busy_after_the_env_timeout() {
    let (_dir, keystore) = new_keystore();
    run_ok(&keystore, &["provider", "init"]);
    let held = sled::open(keystore.join("kek.sled")).unwrap();
    let started = Instant::now();
    let out = vmcryptfs(&keystore, &["provider", "list"])
        .env("VMCRYPTFS_KEYSTORE_LOCK_TIMEOUT_MS", "300")
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(KEY_ERROR));
    assert!(
        stderr(&out).contains("locked by another process"),
        "{}",
        stderr(&out)
    );
    drop(held);
    assert_eq!(list_rows(&keystore).len(), 1);
}
