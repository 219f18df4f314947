//! `.control` files and shallow re-key through a real mount and the CLI.

use crate::common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use common::{read_control, snapshot_tree, write_control, TestEnv};
use vmcryptfs::datastore::current_kek::CURRENT_KEK_TTL;

const BUNDLE: &str = ".vmcryptfs-bundle";

#[test]
fn control_shows_key_status_and_rekey_moves_to_current_version() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", true);
    let mount = env.mount();
    // Reading status unwraps nothing: the bundle's fields show, the keys
    // are not loaded until a file of the VM is used.
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["vm"], "vm1");
    assert_eq!(status["state"], "not-loaded");
    assert_eq!(status["kek-version"], "1");
    assert_eq!(status["dek-fingerprint"], "-");
    fs::write(mount.path("vm1/vm1.vmx"), b"config").unwrap();
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["state"], "unlocked");
    assert_eq!(status["provider"], "local");
    assert_eq!(status["kek-version"], "1");
    assert_eq!(status["provider-current-version"], "1");
    assert_eq!(status["needs-rekey"], "no");
    assert_eq!(status["encrypt-disks"], "no");
    assert_eq!(status["vm-id"].len(), 32);
    assert_eq!(status["dek-fingerprint"].len(), 16);
    assert_eq!(
        read_control(&mount.path("vm2/.control"))["encrypt-disks"],
        "yes"
    );

    env.run_ok(&["provider", "rotate"]);
    // Status asks the provider at most every CURRENT_KEK_TTL: a rotation
    // by another process shows once that has passed.
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["provider-current-version"],
        "1"
    );
    std::thread::sleep(CURRENT_KEK_TTL + std::time::Duration::from_millis(200));
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["provider-current-version"], "2");
    assert_eq!(status["needs-rekey"], "yes");
    let fingerprint = status["dek-fingerprint"].clone();

    write_control(&mount.path("vm1/.control"), "rekey\n").unwrap();
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["kek-version"], "2");
    assert_eq!(status["needs-rekey"], "no");
    assert_eq!(
        status["dek-fingerprint"], fingerprint,
        "a shallow re-key keeps the DEK"
    );
    assert_eq!(status["last-command"], "rekey");
    assert!(
        status["last-result"].starts_with("ok:"),
        "{}",
        status["last-result"]
    );
    assert_eq!(
        read_control(&mount.path("vm2/.control"))["needs-rekey"],
        "yes"
    );

    let root = read_control(&mount.path(".control"));
    assert_eq!(root["vms"], "2");
    assert_eq!(root["needs-rekey"], "1");
    write_control(&mount.path(".control"), "rekey-all\n").unwrap();
    let root = read_control(&mount.path(".control"));
    assert_eq!(root["needs-rekey"], "0");
    assert!(
        root["last-result"].starts_with("ok: 2 of 2"),
        "{}",
        root["last-result"]
    );
    assert_eq!(
        read_control(&mount.path("vm2/.control"))["kek-version"],
        "2"
    );
}

#[test]
fn shallow_rekey_changes_only_the_bundle_and_open_files_keep_working() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    fs::write(mount.path("vm1/vm1.vmx"), b"displayName = \"vm1\"\n").unwrap();
    fs::write(mount.path("vm1/big.bin"), vec![0x5au8; 300_000]).unwrap();
    let mut nvram = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mount.path("vm1/vm1.nvram"))
        .unwrap();
    nvram.write_all(b"before-rekey|").unwrap();
    nvram.sync_all().unwrap();
    let mut reader = fs::File::open(mount.path("vm1/big.bin")).unwrap();

    env.run_ok(&["provider", "rotate"]);
    let before = snapshot_tree(&env.datastore);
    write_control(&mount.path("vm1/.control"), "rekey").unwrap();
    let after = snapshot_tree(&env.datastore);

    let bundle = PathBuf::from("vm1").join(BUNDLE);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, content) in &before {
        if *path == bundle {
            assert_ne!(content, &after[path], "the bundle must be rewritten");
        } else {
            assert!(
                content == &after[path],
                "{} changed during a shallow re-key",
                path.display()
            );
        }
    }

    // Handles opened before the re-key keep reading and writing.
    nvram.write_all(b"after-rekey").unwrap();
    nvram.seek(SeekFrom::Start(0)).unwrap();
    let mut text = String::new();
    nvram.read_to_string(&mut text).unwrap();
    assert_eq!(text, "before-rekey|after-rekey");
    let mut big = Vec::new();
    reader.read_to_end(&mut big).unwrap();
    assert_eq!(big, vec![0x5au8; 300_000]);
    drop((nvram, reader));
    assert!(mount.unmount().success());

    // And after a remount (fresh key cache, unwrap under the new version).
    let mount = env.mount();
    assert_eq!(
        fs::read_to_string(mount.path("vm1/vm1.nvram")).unwrap(),
        "before-rekey|after-rekey"
    );
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["kek-version"],
        "2"
    );
}

#[test]
fn malformed_commands_fail_with_einval_and_change_nothing() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let bundle_before = fs::read(env.vm_dir("vm1").join(BUNDLE)).unwrap();
    for bad in [
        "bogus\n",
        "rekey now\n",
        "rekey-all\n",
        "\n",
        "rekey\nbogus\n",
    ] {
        let err = write_control(&mount.path("vm1/.control"), bad).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "command {bad:?}");
        let status = read_control(&mount.path("vm1/.control"));
        assert!(
            status["last-result"].starts_with("error:"),
            "{bad:?}: {}",
            status["last-result"]
        );
    }
    let err = write_control(&mount.path(".control"), "rekey\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let binary: Vec<u8> = (0..=255u8).collect();
    let err = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("vm1/.control"))
        .unwrap()
        .write_all(&binary)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(
        fs::read(env.vm_dir("vm1").join(BUNDLE)).unwrap(),
        bundle_before
    );
    let status = read_control(&mount.path("vm1/.control"));
    assert!(
        status["last-result"].contains("UTF-8"),
        "{}",
        status["last-result"]
    );
}

#[test]
fn cli_status_and_rekey_work_unmounted_and_clean_stale_temp_files() {
    let env = TestEnv::new();
    let vm = env.create_vm("vm1", true);
    let vm_str = vm.to_str().unwrap();
    let status = env.run_ok(&["vm", "status", vm_str]);
    assert!(status.contains("kek-version: 1\n"), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["vm", "status", "--json", vm_str])).unwrap();
    assert_eq!(json["kek_version"], 1);
    assert_eq!(json["encrypt_disks"], true);
    assert_eq!(json["state"], "unlocked");
    assert_eq!(json["dek_generations"], serde_json::json!([1]));
    assert!(status.contains("encrypt-disks: yes\n"), "{status}");

    let stale = vm.join(".vmcryptfs-bundle.tmp.99999.0011223344556677");
    fs::write(&stale, b"left by a crash").unwrap();
    env.run_ok(&["provider", "rotate"]);
    let out = env.run_ok(&["vm", "rekey", vm_str]);
    assert!(out.contains("v2"), "{out}");
    assert!(!stale.exists(), "stale temp file must be cleaned up");
    assert!(env
        .run_ok(&["vm", "status", vm_str])
        .contains("kek-version: 2\n"));

    let out = env.run(&["vm", "status", env.datastore.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an encrypted VM home"));
}

#[test]
fn a_crash_right_after_the_bundle_rename_leaves_a_working_vm() {
    let env = TestEnv::new();
    let vm = env.create_vm("vm1", false);
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/vm1.vmx"), b"config").unwrap();
    }
    env.run_ok(&["provider", "rotate"]);
    use std::os::unix::process::ExitStatusExt;
    let status = env
        .cmd(&["vm", "rekey", vm.to_str().unwrap()])
        .env("VMCRYPTFS_TEST_CRASH_AT", "bundle-renamed")
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "the crash hook must have fired");
    let out = env.run_ok(&["vm", "status", vm.to_str().unwrap()]);
    assert!(out.contains("kek-version: 2\n"), "{out}");
    let mount = env.mount();
    assert_eq!(fs::read(mount.path("vm1/vm1.vmx")).unwrap(), b"config");
}

/// `vmcryptfs rekey --all` on a mounted datastore hands the whole job to
/// the mount as one `rekey-all` (a batch), then reports each VM from its
/// own `.control`: every VM moves to the current KEK version, each gets its
/// line, and a VM the batch could not re-key is named as failed, never
/// reported with an earlier run's result.
#[test]
fn cli_rekey_all_on_a_mounted_datastore_is_one_batch_with_a_line_per_vm() {
    let env = TestEnv::new();
    for vm in ["vm1", "vm2", "vm3"] {
        env.create_vm(vm, vm == "vm2");
    }
    let mount = env.mount();
    env.run_ok(&["provider", "rotate"]);
    let ds = env.datastore.to_str().unwrap().to_string();
    let out = env.run_ok(&["rekey", "--all", &ds]);
    for vm in ["vm1", "vm2", "vm3"] {
        assert!(
            out.contains(&format!("{vm}: shallow re-key: DEK rewrapped under")),
            "{out}"
        );
        let status = read_control(&mount.path(&format!("{vm}/.control")));
        assert_eq!(status["kek-version"], "2", "{vm}: {status:?}");
        assert_eq!(status["last-command"], "rekey-all", "{vm}: one batch");
    }
    assert!(out.contains("re-keyed through the mount"), "{out}");

    // vm3's bundle swapped for a FIFO behind the mount: the batch cannot
    // re-key it, and its earlier `rekey-all` success must not be reported.
    env.run_ok(&["provider", "rotate"]);
    let bundle = env.vm_dir("vm3").join(BUNDLE);
    fs::remove_file(&bundle).unwrap();
    nix::unistd::mkfifo(&bundle, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let failed = env.run(&["rekey", "--all", &ds]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains("vm3: re-key failed"), "{stderr}");
    assert!(
        stderr.contains("1 of 3 VM homes could not be re-keyed: vm3"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(!stdout.contains("vm3:"), "{stdout}");
    for vm in ["vm1", "vm2"] {
        let status = read_control(&mount.path(&format!("{vm}/.control")));
        assert_eq!(status["kek-version"], "3", "{vm}: {status:?}");
    }
}
