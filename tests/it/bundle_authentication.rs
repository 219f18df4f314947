//! Bundle fields are trusted only after they authenticate (issue 22, item
//! 3): a VM whose bundle has not authenticated never decides a new file's
//! class from it, a rescue re-wraps only the bundle that authenticated, and
//! an older authentic bundle is refused as rolled back until an admin
//! accepts it. Real mounts, real key store, bundles edited on disk as
//! whoever can write the datastore would.

use crate::common;

use common::stderr;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use common::{read_control, tree_contains, write_control, TestEnv};

/// Offset of the flags' low byte in a bundle (docs/FORMAT.md §4.1).
const FLAGS_LOW: usize = 11;
const FLAG_ENCRYPT_DISKS: u8 = 0x01;
/// Offset of the last byte of the provider name `local` (provider_len at
/// 52, the name at 53..58).
const PROVIDER_LAST: usize = 57;

fn ds(env: &TestEnv) -> String {
    env.datastore.to_str().unwrap().to_string()
}

fn bundle_path(env: &TestEnv, vm: &str) -> std::path::PathBuf {
    env.vm_dir(vm).join(".vmcryptfs-bundle")
}

fn edit_bundle(env: &TestEnv, vm: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let path = bundle_path(env, vm);
    let mut bytes = fs::read(&path).unwrap();
    edit(&mut bytes);
    fs::write(&path, &bytes).unwrap();
    bytes
}

fn errno(result: std::io::Result<impl Sized>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

/// A VM with encrypted disks whose `encrypt_disks` bit was cleared on disk
/// while its bundle does not authenticate here, for each way that can
/// happen: the bit alone (authentication fails), its KEK version
/// destroyed, its provider name changed, a wrapped DEK corrupted. Through
/// the mount, nothing may be created, linked, renamed into it or written
/// until it authenticates (ENOKEY, logged naming the VM), and no plaintext
/// lands in the datastore; listing and stat still work. An untouched VM
/// beside them stores a new disk encrypted.
#[test]
fn flipped_bundle_fields_on_a_locked_vm_never_decide_a_new_files_class() {
    let env = TestEnv::new();
    env.create_vm("destroyed", true);
    env.run_ok(&["provider", "rotate"]);
    let tampered = ["flipped", "destroyed", "provider", "wrapped"];
    for vm in ["flipped", "provider", "wrapped", "good"] {
        env.create_vm(vm, true);
    }
    {
        let mount = env.mount();
        for vm in tampered.iter().chain(&["good"]) {
            fs::write(mount.path(&format!("{vm}/vm.vmx")), b"config").unwrap();
            fs::write(mount.path(&format!("{vm}/old.vmdk")), vec![7u8; 8192]).unwrap();
        }
    }
    let out = env.run(&["provider", "destroy", "1", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for vm in tampered {
        edit_bundle(&env, vm, |b| {
            b[FLAGS_LOW] ^= FLAG_ENCRYPT_DISKS;
            match vm {
                "provider" => b[PROVIDER_LAST] = b'x',
                "wrapped" => *b.last_mut().unwrap() ^= 0x10,
                _ => {}
            }
        });
    }
    let marker = b"PLAINTEXT-DISK-MARKER-5f3e9a".repeat(100);
    let mount = env.mount();
    for vm in tampered {
        let path = |name: &str| mount.path(&format!("{vm}/{name}"));
        let create = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path("disk.vmdk"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, &marker));
        assert_eq!(errno(create), Some(libc::ENOKEY), "{vm}: create");
        let mknod = nix::sys::stat::mknod(
            &path("made.vmdk"),
            nix::sys::stat::SFlag::S_IFREG,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            0,
        );
        assert_eq!(
            mknod.err().map(|e| e as i32),
            Some(libc::ENOKEY),
            "{vm}: mknod"
        );
        assert_eq!(
            errno(fs::hard_link(path("vm.vmx"), path("link.vmx"))),
            Some(libc::ENOKEY),
            "{vm}: link"
        );
        assert_eq!(
            errno(fs::rename(path("vm.vmx"), path("renamed.vmdk"))),
            Some(libc::ENOKEY),
            "{vm}: rename"
        );
        // An encrypted disk that the flipped bit would call pass-through.
        let write = fs::OpenOptions::new()
            .write(true)
            .open(path("old.vmdk"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, &marker));
        assert_eq!(errno(write), Some(libc::ENOKEY), "{vm}: write old.vmdk");
        let names: Vec<String> = fs::read_dir(mount.path(vm))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"vm.vmx".to_string()), "{vm}: {names:?}");
        assert!(fs::metadata(path("old.vmdk")).is_ok(), "{vm}: stat");
        assert!(!env.vm_dir(vm).join("disk.vmdk").exists(), "{vm}");
        assert!(!env.vm_dir(vm).join("made.vmdk").exists(), "{vm}");
        assert_eq!(read_control(&path(".control"))["state"], "locked", "{vm}");
    }
    fs::write(mount.path("good/disk.vmdk"), &marker).unwrap();
    assert_eq!(fs::read(mount.path("good/disk.vmdk")).unwrap(), marker);
    assert_eq!(
        tree_contains(&env.datastore, &marker[..64]),
        None,
        "no plaintext in the datastore"
    );
    let log = mount.log_text();
    for vm in tampered {
        assert!(
            log.contains(&format!("{vm}/disk.vmdk: refused until the VM's key bundle authenticates: VM {vm} is locked")),
            "{vm}: {log}"
        );
    }
}

/// The rescue of a VM whose KEK version was destroyed (`rekey` on a mount
/// that still holds its DEK) re-wraps only the bundle that authenticated
/// on that mount: a bundle with a flipped policy bit or provider name is
/// refused naming the VM and the field, and stays as it was on disk; put
/// back as it was, the same rescue works and another host reads the VM.
#[test]
fn a_rescue_of_a_tampered_bundle_is_refused_and_of_the_authentic_one_works() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let host_a = env.mount();
    let secret = b"sealed vTPM seed 0123456789".repeat(100);
    fs::write(host_a.path("vm1/vm1.nvram"), &secret).unwrap();
    env.run_ok(&["provider", "rotate"]);
    let out = env.run(&["provider", "destroy", "1", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let authentic = fs::read(bundle_path(&env, "vm1")).unwrap();
    let control = host_a.path("vm1/.control");

    for (field, offset, change) in [
        ("encrypt_disks", FLAGS_LOW, FLAG_ENCRYPT_DISKS),
        ("provider", PROVIDER_LAST, b'l' ^ b'x'),
    ] {
        let tampered = edit_bundle(&env, "vm1", |b| {
            b.copy_from_slice(&authentic);
            b[offset] ^= change;
        });
        let err = write_control(&control, "rekey\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{field}");
        let result = read_control(&control)["last-result"].clone();
        assert!(
            result.starts_with("error") && result.contains("vm1") && result.contains(field),
            "{field}: {result}"
        );
        assert_eq!(
            fs::read(bundle_path(&env, "vm1")).unwrap(),
            tampered,
            "{field}: nothing was re-wrapped"
        );
    }

    fs::write(bundle_path(&env, "vm1"), &authentic).unwrap();
    write_control(&control, "rekey\n").unwrap();
    assert_eq!(read_control(&control)["kek-version"], "2");
    assert_eq!(fs::read(host_a.path("vm1/vm1.nvram")).unwrap(), secret);
    let mnt_b = env.extra_mountpoint("host-b");
    let host_b = env.mount_at(&mnt_b, &[]);
    assert_eq!(fs::read(mnt_b.join("vm1/vm1.nvram")).unwrap(), secret);
    drop(host_b);
    drop(host_a);
}

/// Rollback: an authentic bundle from before `encrypt-disks` and a shallow
/// re-key, put back, is refused by the mount (the VM locked, naming why
/// and the fix; no new disk decided by its stale policy) and by the CLI
/// (naming the VM and both sequences), until `vm accept-rollback` accepts
/// it. A damaged sequence record is refused naming its file.
#[test]
fn a_rolled_back_bundle_is_refused_until_accepted() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let vm = env.vm_dir("vm1");
    let vm_arg = vm.to_str().unwrap().to_string();
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/vm.vmx"), b"config").unwrap();
        fs::write(mount.path("vm1/disk.vmdk"), vec![3u8; 8192]).unwrap();
    }
    let old = fs::read(bundle_path(&env, "vm1")).unwrap();
    env.run_ok(&["vm", "encrypt-disks", &vm_arg]);
    env.run_ok(&["rekey", &ds(&env), "vm1"]);
    fs::write(bundle_path(&env, "vm1"), &old).unwrap();

    // (Not `vm status`: reading status does not unlock a VM.)
    for args in [
        vec!["rekey", ds(&env).as_str(), "vm1"],
        vec!["vm", "rekey", vm_arg.as_str(), "--provider", "local"],
    ] {
        let out = env.run(&args);
        assert!(
            !out.status.success(),
            "{args:?} accepted a rolled-back bundle"
        );
        let message = stderr(&out);
        assert!(
            message.contains("vm1")
                && message.contains("rolled back")
                && message.contains("sequence 1 is older than sequence 3")
                && message.contains("vmcryptfs vm accept-rollback"),
            "{args:?}: {message}"
        );
    }
    assert_eq!(fs::read(bundle_path(&env, "vm1")).unwrap(), old);

    let mount = env.mount();
    assert_eq!(
        errno(fs::read(mount.path("vm1/vm.vmx"))),
        Some(libc::ENOKEY)
    );
    let create = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(mount.path("vm1/new.vmdk"));
    assert_eq!(errno(create), Some(libc::ENOKEY));
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["state"], "locked");
    assert!(
        status["locked-reason"].contains("rolled back")
            && status["locked-reason"].contains("accept-rollback"),
        "{}",
        status["locked-reason"]
    );
    assert!(mount.log_text().contains("rolled back"));

    let out = env.run_ok(&["vm", "accept-rollback", &vm_arg]);
    assert!(
        out.contains("sequence 1") && out.contains("sequence 3"),
        "{out}"
    );
    assert_eq!(fs::read(mount.path("vm1/vm.vmx")).unwrap(), b"config");
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["state"],
        "unlocked"
    );
    drop(mount);
    env.run_ok(&["rekey", &ds(&env), "vm1"]);

    let record = env.keystore.join("bundle-sequences");
    let text = fs::read_to_string(&record).unwrap();
    fs::write(&record, text.replace(" 2\n", " 1\n")).unwrap();
    let out = env.run(&["rekey", &ds(&env), "vm1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(record.to_str().unwrap()) && stderr(&out).contains("damaged"),
        "{}",
        stderr(&out)
    );
    assert!(Path::new(&record).exists());
}

/// A host whose VMs are all wrapped by a KMIP provider has no embedded KEK
/// store, but keeps the rollback record in its key store directory all the
/// same: an older bundle is refused by its mount and CLI, then accepted.
#[test]
fn a_kmip_only_host_refuses_a_rolled_back_bundle_too() {
    let kms = common::kms::Kms::start();
    let env = TestEnv::empty();
    let out = env.run_strings(&kms.add_args("kms", &["--default"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!env.keystore.join("kek.sled").exists(), "KMIP only");
    env.create_vm("vm1", false);
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/vm.vmx"), b"config").unwrap();
    }
    let old = fs::read(bundle_path(&env, "vm1")).unwrap();
    env.run_ok(&["rekey", &ds(&env), "vm1"]);
    assert!(env.keystore.join("bundle-sequences").is_file());
    fs::write(bundle_path(&env, "vm1"), &old).unwrap();

    let out = env.run(&["rekey", &ds(&env), "vm1"]);
    assert!(
        !out.status.success() && stderr(&out).contains("sequence 1 is older than sequence 2"),
        "{}",
        stderr(&out)
    );
    let mount = env.mount();
    assert_eq!(
        errno(fs::read(mount.path("vm1/vm.vmx"))),
        Some(libc::ENOKEY)
    );
    env.run_ok(&["vm", "accept-rollback", env.vm_dir("vm1").to_str().unwrap()]);
    assert_eq!(fs::read(mount.path("vm1/vm.vmx")).unwrap(), b"config");
}

/// A bundle deleted behind a running mount is the cheapest downgrade a
/// datastore writer has: a directory then taken for plain would store the
/// hypervisor's next writes in clear. A VM home the mount has seen (every
/// one, from the scan at mount; vm1 is never touched before the deletion)
/// stays encrypted and locked instead, its `locked-reason` naming the
/// missing bundle: creating, writing and renaming into it fail with
/// ENOKEY and nothing lands in clear. Put back, the bundle unlocks it
/// again and the file reads as before.
#[test]
fn a_bundle_deleted_behind_the_mount_locks_the_vm_and_never_turns_it_plain() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let secret = b"vTPM state, sealed 0123456789".repeat(50);
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/vm1.nvram"), &secret).unwrap();
    }
    let mount = env.mount();
    let bundle = fs::read(bundle_path(&env, "vm1")).unwrap();
    fs::remove_file(bundle_path(&env, "vm1")).unwrap();

    let marker = b"PLAINTEXT-AFTER-DELETE-3c1d7e".repeat(100);
    let path = |name: &str| mount.path(&format!("vm1/{name}"));
    let create = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path("vmware.log"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &marker));
    assert_eq!(errno(create), Some(libc::ENOKEY), "create");
    let rewrite = fs::OpenOptions::new()
        .write(true)
        .open(path("vm1.nvram"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &marker));
    assert_eq!(errno(rewrite), Some(libc::ENOKEY), "write vm1.nvram");
    fs::create_dir(mount.path("elsewhere")).unwrap();
    fs::write(mount.path("elsewhere/moved.log"), &marker).unwrap();
    // Across VM homes a rename is EXDEV (then `mv` copies, and the copy's
    // create is refused as above); within one, ENOKEY.
    let renamed = errno(fs::rename(
        mount.path("elsewhere/moved.log"),
        path("moved.log"),
    ));
    assert!(
        [Some(libc::EXDEV), Some(libc::ENOKEY)].contains(&renamed),
        "rename into: {renamed:?}"
    );
    assert_eq!(
        errno(fs::rename(path("vm1.nvram"), path("moved.vmdk"))),
        Some(libc::ENOKEY),
        "rename within"
    );
    fs::remove_file(env.datastore.join("elsewhere/moved.log")).unwrap();
    let status = read_control(&path(".control"));
    assert_eq!(status["state"], "locked", "{status:?}");
    assert!(
        status["locked-reason"].contains(".vmcryptfs-bundle is missing"),
        "{status:?}"
    );
    assert_eq!(
        tree_contains(&env.datastore, &marker[..64]),
        None,
        "no plaintext in the datastore"
    );
    assert!(!env.vm_dir("vm1").join("vmware.log").exists());

    fs::write(bundle_path(&env, "vm1"), &bundle).unwrap();
    assert_eq!(fs::read(path("vm1.nvram")).unwrap(), secret);
    fs::write(path("vmware.log"), &marker).unwrap();
    assert_eq!(tree_contains(&env.datastore, &marker[..64]), None);
}
