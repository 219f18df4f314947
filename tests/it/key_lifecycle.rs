//! The key lifecycle: rotation, finding stale VMs, re-keying them, guarded
//! retirement and destruction, the key cache, locked VMs and their rescue,
//! across two independent mounts (two "hosts") of one datastore.

use crate::common;

use common::stderr;

use std::fs;

use common::{mount_counter, read_control, write_control, TestEnv};

fn ds(env: &TestEnv) -> String {
    env.datastore.to_str().unwrap().to_string()
}

#[test]
fn status_finds_stale_vms_and_rekey_all_fixes_them() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", true);
    fs::create_dir(env.datastore.join("plain-vm")).unwrap();
    env.run_ok(&["provider", "rotate"]);
    let out = env.run_ok(&["status", &ds(&env)]);
    assert!(out.contains("vm1") && out.contains("needs-rekey"), "{out}");
    assert!(
        !out.contains("plain-vm"),
        "only encrypted VM homes are listed:\n{out}"
    );
    assert!(out.contains("vmcryptfs rekey --all"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["status", "--json", &ds(&env)])).unwrap();
    assert_eq!(json["current_version"], 2);
    let vms = json["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 2);
    assert_eq!(vms[1]["name"], "vm2");
    assert_eq!(vms[1]["encrypt_disks"], true);
    assert_eq!(vms[1]["kek_version"], 1);
    assert_eq!(vms[1]["status"], "needs-rekey");

    let list = env.run_ok(&["provider", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("1 ") && l.split_whitespace().nth(3) == Some("2")),
        "{list}"
    );

    let out = env.run(&["rekey", &ds(&env)]);
    assert_eq!(out.status.code(), Some(2), "rekey needs VM names or --all");
    env.run_ok(&["rekey", &ds(&env), "vm1"]);
    let json: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["status", "--json", &ds(&env)])).unwrap();
    assert_eq!(json["vms"][0]["status"], "ok");
    assert_eq!(json["vms"][1]["status"], "needs-rekey");
    env.run_ok(&["rekey", "--all", &ds(&env)]);
    let out = env.run_ok(&["status", &ds(&env)]);
    assert!(!out.contains("needs-rekey"), "{out}");
}

#[test]
fn rekey_of_a_mounted_datastore_goes_through_the_mount() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    fs::write(mount.path("vm1/vm1.vmx"), b"x").unwrap();
    env.run_ok(&["provider", "rotate"]);
    let out = env.run_ok(&["rekey", "--all", &ds(&env)]);
    assert!(out.contains("through the mount"), "{out}");
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["kek-version"], "2");
    // --all is one batch through the root `.control`; named VMs go through
    // their own.
    assert_eq!(status["last-command"], "rekey-all");
    env.run_ok(&["provider", "rotate"]);
    let out = env.run_ok(&["rekey", &ds(&env), "vm1"]);
    assert!(out.contains("through the mount"), "{out}");
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["kek-version"], "3");
    assert_eq!(status["last-command"], "rekey");
}

#[test]
fn destroy_is_guarded_and_force_names_the_victims() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", false);
    env.run_ok(&["provider", "rotate"]);

    let out = env.run(&["provider", "destroy", "2"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("current"), "{}", stderr(&out));

    let out = env.run(&["provider", "destroy", "1"]);
    assert_eq!(out.status.code(), Some(3));
    let message = stderr(&out);
    assert!(
        message.contains("vm1") && message.contains("vm2"),
        "{message}"
    );
    assert!(
        message.contains(&format!("vmcryptfs rekey --all {}", ds(&env))),
        "{message}"
    );

    let out = env.run_ok(&["provider", "retire", "1"]);
    assert!(
        out.contains("vm1"),
        "retire lists the VMs still on it:\n{out}"
    );
    assert!(env.run_ok(&["provider", "list"]).contains("retired"));
    // A retired version still unwraps: the VMs open fine.
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/a"), b"still works").unwrap();
        assert_eq!(
            read_control(&mount.path("vm1/.control"))["state"],
            "unlocked"
        );
    }

    env.run_ok(&["rekey", &ds(&env), "vm1"]);
    let out = env
        .cmd(&["provider", "destroy", "1", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains("WARNING") && warning.contains("vm2") && !warning.contains("vm1"),
        "{warning}"
    );
    let list = env.run_ok(&["provider", "list"]);
    assert!(list.contains("destroyed"), "{list}");
    let out = env.run_ok(&["status", &ds(&env)]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("vm2") && l.ends_with("locked")),
        "{out}"
    );
}

/// The verification scenario: two hosts share the datastore and the key
/// provider. Success path, then the failure path and its rescue.
#[test]
fn two_hosts_rotation_rekey_destroy_and_rescue() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mnt_a = env.extra_mountpoint("host-a");
    let mnt_b = env.extra_mountpoint("host-b");
    let host_a = env.mount_at(&mnt_a, &[]);
    let secret = b"vTPM state: sealed seed 0123456789abcdef".repeat(200);
    fs::write(mnt_a.join("vm1/vm1.nvram"), &secret).unwrap();

    // Success path: rotate, re-key through A, destroy the old version,
    // a freshly started host B reads identical data.
    env.run_ok(&["provider", "rotate"]);
    write_control(&mnt_a.join("vm1/.control"), "rekey").unwrap();
    env.run_ok(&["provider", "destroy", "1"]);
    {
        let host_b = env.mount_at(&mnt_b, &[]);
        assert_eq!(fs::read(mnt_b.join("vm1/vm1.nvram")).unwrap(), secret);
        drop(host_b);
    }

    // Failure path: rotate again, skip the re-key, force-destroy v2.
    env.run_ok(&["provider", "rotate"]);
    let out = env
        .cmd(&["provider", "destroy", "2", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let host_b = env.mount_at(&mnt_b, &[]);
    let err = fs::read(mnt_b.join("vm1/vm1.nvram")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY));
    let status_b = read_control(&mnt_b.join("vm1/.control"));
    assert_eq!(status_b["state"], "locked");
    assert!(
        status_b["locked-reason"].contains("v2"),
        "{}",
        status_b["locked-reason"]
    );
    assert!(
        host_b.log_text().contains("v2"),
        "B's log names the KEK version"
    );

    // Host A still has the DEK cached: it serves the VM and rescues it.
    assert_eq!(fs::read(mnt_a.join("vm1/vm1.nvram")).unwrap(), secret);
    write_control(&mnt_a.join("vm1/.control"), "rekey").unwrap();
    assert_eq!(
        read_control(&mnt_a.join("vm1/.control"))["kek-version"],
        "3"
    );

    // B unlocks without a remount: a locked VM retries on the next access.
    assert_eq!(fs::read(mnt_b.join("vm1/vm1.nvram")).unwrap(), secret);
    assert_eq!(
        read_control(&mnt_b.join("vm1/.control"))["state"],
        "unlocked"
    );
    drop(host_b);
    drop(host_a);
}

#[test]
fn flush_keys_drops_idle_vms_and_keeps_vms_with_open_files() {
    let env = TestEnv::new();
    env.create_vm("idle", false);
    env.create_vm("busy", false);
    let mount = env.mount();
    fs::write(mount.path("idle/a"), b"idle data").unwrap();
    fs::write(mount.path("busy/b"), b"busy data").unwrap();
    let open = fs::File::open(mount.path("busy/b")).unwrap();
    common::wait_for_open_files(&mount.path("busy/.control"), 1);
    common::wait_for_open_files(&mount.path("idle/.control"), 0);

    // Take the provider away (as an unreachable KMS would be), then flush.
    let sled = env.keystore.join("kek.sled");
    let hidden = env.keystore.join("kek.sled.away");
    fs::rename(&sled, &hidden).unwrap();
    write_control(&mount.path(".control"), "flush-keys").unwrap();
    let root = read_control(&mount.path(".control"));
    assert!(
        root["last-result"].contains("kept 1") && root["last-result"].contains("busy"),
        "{}",
        root["last-result"]
    );

    let err = fs::read(mount.path("idle/a")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOKEY),
        "idle VM lost its cached key"
    );
    assert_eq!(
        fs::read(mount.path("busy/b")).unwrap(),
        b"busy data",
        "busy VM kept its key"
    );
    assert_eq!(
        read_control(&mount.path("idle/.control"))["state"],
        "locked"
    );

    // The provider comes back: the VM unlocks on the next access, no remount.
    fs::rename(&hidden, &sled).unwrap();
    assert_eq!(fs::read(mount.path("idle/a")).unwrap(), b"idle data");
    drop(open);
}

/// A host's VMs powering on together after a reboot: the first unlocks of
/// many VM homes in one mount, in parallel, share their key store openings
/// (each reads sled's database and syncs twice, one at a time per process)
/// instead of opening the store once per VM. Counted, not timed: `.stats`
/// counts the openings. Without the mount's KEK cache this is one opening
/// per VM.
#[test]
fn a_burst_of_first_unlocks_shares_key_store_openings() {
    const VMS: usize = 24;
    let env = TestEnv::new();
    let name = |i: usize| format!("vm{i}/vm.nvram");
    for i in 0..VMS {
        env.create_vm(&format!("vm{i}"), false);
    }
    let mount = env.mount();
    for i in 0..VMS {
        fs::write(mount.path(&name(i)), [i as u8; 4096]).unwrap();
    }
    mount.unmount();

    // A fresh mount: no VM unlocked yet.
    let mount = env.mount();
    let root = mount.path("");
    let opens_before = mount_counter(&root, "key_store_opens_total");
    std::thread::scope(|scope| {
        for i in 0..VMS {
            let path = mount.path(&name(i));
            scope.spawn(move || assert_eq!(fs::read(path).unwrap(), [i as u8; 4096]));
        }
    });
    let opened = mount_counter(&root, "key_store_opens_total") - opens_before;
    assert_eq!(
        mount_counter(&root, "key_cache_misses_total"),
        VMS as u64,
        "each VM unwrapped its DEKs through the provider once"
    );
    // One fetch of the KEK; one more if the burst outlasted the KEK's
    // second, and one for the status read the mount starts by itself.
    assert!(
        opened <= 3,
        "{VMS} first unlocks opened the key store {opened} times"
    );
}
