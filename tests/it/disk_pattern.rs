//! Which names are disks is the VM's own authenticated policy (issue 24
//! §1): a new VM home counts QEMU's and Hyper-V's formats as disks, a
//! bundle written before disk patterns still means `.vmdk` only, `vm
//! set-disk-pattern` converts the files whose class changes and survives a
//! kill, status shows the pattern, and a pattern forged on disk decides
//! nothing. Real mounts, real key store.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{
    killed_after_first_file, no_leftovers, read_control, run_checked, stderr, tree_contains,
    TestEnv,
};

/// The pattern of a VM home made without `--disk-pattern`.
const DEFAULT: &str = "*.vmdk,*.qcow2,*.raw,*.img,*.vhd,*.vhdx";
/// The first bytes of every encrypted file (docs/FORMAT.md §3).
const ENCRYPTED_MAGIC: &[u8] = b"VMCF";

/// Distinct, recognisable content for `name`: a marker that must never
/// reach the datastore where the file is encrypted, then filler.
fn content(name: &str, len: usize) -> Vec<u8> {
    let mut out = format!("PLAINTEXT-MARKER-{name}-").into_bytes();
    out.extend((0..len).map(|i| (i % 251) as u8 ^ name.len() as u8));
    out
}

fn is_encrypted(path: &Path) -> bool {
    fs::read(path).unwrap().starts_with(ENCRYPTED_MAGIC)
}

fn bundle_version(env: &TestEnv, vm: &str) -> u16 {
    let bytes = fs::read(env.vm_dir(vm).join(".vmcryptfs-bundle")).unwrap();
    u16::from_be_bytes([bytes[8], bytes[9]])
}

fn vm_status_json(env: &TestEnv, vm: &str) -> serde_json::Value {
    let out = env.run_ok(&["vm", "status", "--json", env.vm_dir(vm).to_str().unwrap()]);
    serde_json::from_str(&out).unwrap()
}

fn patterns(json: &serde_json::Value) -> Vec<&str> {
    json["disk_pattern"]
        .as_array()
        .unwrap_or_else(|| panic!("no disk_pattern array in {json}"))
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect()
}

/// A `.qcow2` in a new VM home is a disk: without `--encrypt-disks` it
/// passes through (the backing file is the image itself, which qemu-img
/// checks straight in the datastore), with it it is encrypted. Other files
/// stay encrypted either way. `.control`, `.control.json`, `vm status` and
/// `status` show the pattern.
#[test]
fn a_qcow2_in_a_new_vm_home_passes_through_unless_disks_are_encrypted() {
    let env = TestEnv::new();
    env.create_vm("pass", false);
    env.create_vm("enc", true);
    assert_eq!(bundle_version(&env, "pass"), 2);
    let mount = env.mount();
    for vm in ["pass", "enc"] {
        let image = mount.path(&format!("{vm}/vm.qcow2"));
        run_checked(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&image)
                .arg("64M"),
        );
        run_checked(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 256k"])
                .arg(&image),
        );
        fs::write(
            mount.path(&format!("{vm}/root.img")),
            content("root.img", 100_000),
        )
        .unwrap();
        fs::write(
            mount.path(&format!("{vm}/vm.nvram")),
            content("vm.nvram", 9_000),
        )
        .unwrap();
    }
    // Pass-through: the backing bytes are the plaintext.
    for name in ["vm.qcow2", "root.img"] {
        assert_eq!(
            fs::read(env.vm_dir("pass").join(name)).unwrap(),
            fs::read(mount.path(&format!("pass/{name}"))).unwrap(),
            "{name}"
        );
    }
    run_checked(
        Command::new("qemu-img")
            .args(["check", "-q", "-f", "qcow2"])
            .arg(env.vm_dir("pass").join("vm.qcow2")),
    );
    assert!(is_encrypted(&env.vm_dir("pass").join("vm.nvram")));
    // Encrypted disks: nothing of them in clear.
    for name in ["vm.qcow2", "root.img", "vm.nvram"] {
        assert!(is_encrypted(&env.vm_dir("enc").join(name)), "{name}");
    }
    assert_eq!(tree_contains(&env.vm_dir("enc"), b"PLAINTEXT-MARKER"), None);
    assert_eq!(tree_contains(&env.vm_dir("enc"), &[0x5a; 4096]), None);
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 0x5a 1M 256k"])
        .arg(mount.path("enc/vm.qcow2"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    for vm in ["pass", "enc"] {
        let control = read_control(&mount.path(&format!("{vm}/.control")));
        assert_eq!(control["disk-pattern"], DEFAULT, "{vm}");
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(mount.path(&format!("{vm}/.control.json"))).unwrap())
                .unwrap();
        assert_eq!(patterns(&json), DEFAULT.split(',').collect::<Vec<_>>());
    }
    let root = fs::read_to_string(mount.path(".control")).unwrap();
    assert!(
        root.contains("encrypt-disks=no disk-pattern=*.vmdk,*.qcow2,"),
        "{root}"
    );
    drop(mount);
    assert_eq!(
        patterns(&vm_status_json(&env, "pass")),
        DEFAULT.split(',').collect::<Vec<_>>()
    );
    let ds = env.datastore.to_str().unwrap();
    let text = env.run_ok(&["status", ds]);
    assert!(
        text.contains("DISK-PATTERN") && text.contains(DEFAULT),
        "{text}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["status", "--json", ds])).unwrap();
    for vm in doc["vms"].as_array().unwrap() {
        assert_eq!(patterns(vm).len(), 6, "{vm}");
    }
}

/// A bundle of the format before disk patterns (version 1, no pattern
/// field: what `--disk-pattern '*.vmdk'` writes, byte for byte as older
/// builds did) means `.vmdk` only: a `.qcow2` is encrypted even with disks
/// passing through, and a re-key keeps the bundle at version 1.
#[test]
fn an_old_format_bundle_still_means_vmdk_only() {
    let env = TestEnv::new();
    let vm = env.vm_dir("old");
    env.run_ok(&[
        "vm",
        "create",
        vm.to_str().unwrap(),
        "--disk-pattern",
        "*.VMDK",
    ]);
    assert_eq!(bundle_version(&env, "old"), 1);
    {
        let mount = env.mount();
        fs::write(mount.path("old/vm.qcow2"), content("vm.qcow2", 50_000)).unwrap();
        fs::write(mount.path("old/disk-flat.vmdk"), content("disk", 50_000)).unwrap();
        assert_eq!(
            read_control(&mount.path("old/.control"))["disk-pattern"],
            "*.vmdk"
        );
        assert_eq!(
            fs::read(mount.path("old/vm.qcow2")).unwrap(),
            content("vm.qcow2", 50_000)
        );
    }
    assert!(is_encrypted(&vm.join("vm.qcow2")));
    assert_eq!(
        fs::read(vm.join("disk-flat.vmdk")).unwrap(),
        content("disk", 50_000)
    );
    env.run_ok(&["provider", "rotate"]);
    env.run_ok(&["vm", "rekey", vm.to_str().unwrap()]);
    assert_eq!(bundle_version(&env, "old"), 1);
    assert_eq!(patterns(&vm_status_json(&env, "old")), ["*.vmdk"]);
}

/// `vm encrypt` of a plain VM home takes `--disk-pattern` too: the files
/// it names stay as they are, every other file is encrypted.
#[test]
fn vm_encrypt_in_place_follows_the_given_disk_pattern() {
    let env = TestEnv::new();
    let vm = env.vm_dir("plain");
    fs::create_dir(&vm).unwrap();
    let files: Vec<(&str, Vec<u8>)> = ["boot.raw", "vm.qcow2", "vm.nvram"]
        .into_iter()
        .map(|name| (name, content(name, 20_000)))
        .collect();
    for (name, data) in &files {
        fs::write(vm.join(name), data).unwrap();
    }
    env.run_ok(&[
        "vm",
        "encrypt",
        vm.to_str().unwrap(),
        "--disk-pattern",
        "*.RAW",
    ]);
    assert_eq!(fs::read(vm.join("boot.raw")).unwrap(), files[0].1);
    assert!(is_encrypted(&vm.join("vm.qcow2")) && is_encrypted(&vm.join("vm.nvram")));
    assert_eq!(patterns(&vm_status_json(&env, "plain")), ["*.raw"]);
    assert_contents(&env, "plain", &files, "after vm encrypt");
}

/// Every file of `vm` read through a fresh mount equals what was written.
fn assert_contents(env: &TestEnv, vm: &str, files: &[(&str, Vec<u8>)], when: &str) {
    let mount = env.mount();
    for (name, data) in files {
        assert_eq!(
            &fs::read(mount.path(&format!("{vm}/{name}"))).unwrap(),
            data,
            "{when}: {name}"
        );
    }
}

/// `vm set-disk-pattern` rewrites exactly the files whose class changes
/// and then the bundle; killed after its first file it leaves the VM
/// marked as mid-conversion (locked in a mount, other conversions
/// refused), and a rerun finishes it. A bad pattern is refused naming the
/// VM home and the pattern, with nothing changed.
#[test]
fn set_disk_pattern_converts_changed_classes_and_survives_a_kill() {
    let env = TestEnv::new();
    let vm = env.create_vm("vm1", false);
    let vm_arg = vm.to_str().unwrap();
    let files: Vec<(&str, Vec<u8>)> = ["disk.qcow2", "disk-flat.vmdk", "root.img", "vm.nvram"]
        .into_iter()
        .map(|name| (name, content(name, 300_000)))
        .collect();
    {
        let mount = env.mount();
        for (name, data) in &files {
            fs::write(mount.path(&format!("vm1/{name}")), data).unwrap();
        }
    }
    let stored = |name: &str| is_encrypted(&vm.join(name));
    assert!(!stored("disk.qcow2") && !stored("root.img") && !stored("disk-flat.vmdk"));

    let bundle = fs::read(vm.join(".vmcryptfs-bundle")).unwrap();
    for (bad, shown) in [
        ("*", "\"*\""),
        ("*.vmdk,*.QCOW2,*.qcow2", "\"*.qcow2\""),
        ("a/b", "\"a/b\""),
    ] {
        let out = env.run(&["vm", "set-disk-pattern", vm_arg, bad]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains(&format!("VM home {vm_arg}")) && err.contains(shown),
            "{bad}: {err}"
        );
    }
    assert_eq!(fs::read(vm.join(".vmcryptfs-bundle")).unwrap(), bundle);

    // Killed after its first file (disk.qcow2, in name order).
    killed_after_first_file(&env, &["vm", "set-disk-pattern", vm_arg, "*.vmdk,*.raw"]);
    assert!(stored("disk.qcow2") && !stored("root.img"));
    let out = env.run(&["vm", "status", vm_arg]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("conversion: set-disk-pattern"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    {
        let mount = env.mount();
        let err = fs::read(mount.path("vm1/vm.nvram")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENOKEY),
            "mid-conversion: locked"
        );
    }
    let out = env.run(&["vm", "encrypt-disks", vm_arg]);
    assert!(
        !out.status.success(),
        "another conversion is refused meanwhile"
    );
    let out = env.run_ok(&["vm", "set-disk-pattern", vm_arg, "*.vmdk,*.raw"]);
    assert!(out.contains("1 file(s) converted"), "{out}");
    no_leftovers(&vm);
    assert!(stored("disk.qcow2") && stored("root.img") && stored("vm.nvram"));
    assert_eq!(fs::read(vm.join("disk-flat.vmdk")).unwrap(), files[1].1);
    assert_eq!(tree_contains(&vm, b"PLAINTEXT-MARKER-disk.qcow2"), None);
    assert_eq!(tree_contains(&vm, b"PLAINTEXT-MARKER-root.img"), None);
    assert_eq!(patterns(&vm_status_json(&env, "vm1")), ["*.vmdk", "*.raw"]);
    assert_contents(&env, "vm1", &files, "after *.vmdk,*.raw");

    // A rerun after a kill may name another pattern: the VM home ends in
    // that one's classes.
    killed_after_first_file(&env, &["vm", "set-disk-pattern", vm_arg, "*.img"]);
    env.run_ok(&["vm", "set-disk-pattern", vm_arg, DEFAULT]);
    no_leftovers(&vm);
    for (name, data) in &files[..3] {
        assert_eq!(
            &fs::read(vm.join(name)).unwrap(),
            data,
            "{name} passes through"
        );
    }
    assert!(stored("vm.nvram"));
    assert_eq!(bundle_version(&env, "vm1"), 2);
    assert_contents(&env, "vm1", &files, "after the default");

    // Back to `.vmdk` only: a version-1 bundle again. And no disks at all.
    env.run_ok(&["vm", "set-disk-pattern", vm_arg, "*.vmdk"]);
    assert_eq!(bundle_version(&env, "vm1"), 1);
    assert!(stored("disk.qcow2") && stored("root.img") && !stored("disk-flat.vmdk"));
    env.run_ok(&["vm", "set-disk-pattern", vm_arg, ""]);
    assert!(files.iter().all(|(name, _)| stored(name)));
    let mount = env.mount();
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["disk-pattern"],
        "(none)"
    );
    drop(mount);
    assert_contents(&env, "vm1", &files, "with no disks");
    let fsck = env.run(&["fsck", env.datastore.to_str().unwrap()]);
    assert!(fsck.status.success(), "{}", stderr(&fsck));
}

/// Whoever writes the datastore widens a VM's pattern on disk (`*.raw`
/// becomes `*.vmx`, so that a new `.vmx` would be a pass-through disk):
/// the bundle no longer authenticates, the VM is locked, and nothing is
/// created or written in it, so no plaintext lands in the datastore.
#[test]
fn a_pattern_forged_on_disk_never_decides_a_new_files_class() {
    let env = TestEnv::new();
    let vm = env.create_vm("vm1", false);
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/vm.vmx"), b"config").unwrap();
    }
    let path = vm.join(".vmcryptfs-bundle");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(5).position(|w| w == b"*.raw").unwrap();
    bytes[at..at + 5].copy_from_slice(b"*.vmx");
    fs::write(&path, &bytes).unwrap();
    let marker = b"PLAINTEXT-VMX-MARKER-77c1".repeat(50);
    let mount = env.mount();
    let create = fs::write(mount.path("vm1/new.vmx"), &marker);
    assert_eq!(create.unwrap_err().raw_os_error(), Some(libc::ENOKEY));
    let write = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("vm1/vm.vmx"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &marker));
    assert_eq!(write.unwrap_err().raw_os_error(), Some(libc::ENOKEY));
    assert_eq!(read_control(&mount.path("vm1/.control"))["state"], "locked");
    assert_eq!(tree_contains(&env.datastore, &marker[..25]), None);
    assert!(!vm.join("new.vmx").exists());
    drop(mount);
    let out = env.run(&["vm", "set-disk-pattern", vm.to_str().unwrap(), DEFAULT]);
    assert!(!out.status.success(), "a forged bundle is never rewritten");
    assert_eq!(fs::read(&path).unwrap(), bytes);

    // A pattern that is not canonical does not even parse: the error names
    // the bundle and the pattern.
    let mut upper = bytes.clone();
    upper[at..at + 5].copy_from_slice(b"*.VMX");
    fs::write(&path, &upper).unwrap();
    let out = env.run(&["vm", "status", vm.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("key bundle {}", path.display()))
            && err.contains("disk_pattern")
            && err.contains("\"*.VMX\""),
        "{err}"
    );
}
