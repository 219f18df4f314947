//! Re-keying never changes what the guest sees, and existing VMs and disks
//! can be encrypted in place: plaintext hashes of every file (a vTPM
//! .nvram, a sparse file, a disk, a file in a subdirectory) are identical
//! before and after a shallow re-key, a rotation plus re-key, a deep
//! re-key, disk encryption and decryption, and `vm encrypt`. Conversions
//! survive a crash and resume; they refuse while files are open.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use common::{read_control, TestEnv};
use sha2::{Digest, Sha256};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-91c2";

/// Creates the sample VM files under `dir` (a mount path or a plain directory).
fn populate(dir: &Path) {
    fs::create_dir_all(dir.join("snapshots")).unwrap();
    fs::write(dir.join("vm.nvram"), MARKER.repeat(300)).unwrap();
    fs::write(
        dir.join("vm.vmx"),
        b"displayName = \"vm\"\nguestOS = \"debian12-64\"\n",
    )
    .unwrap();
    fs::write(dir.join("snapshots/vm-Snapshot1.vmsn"), vec![0x5a; 70_000]).unwrap();
    let sparse = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("sparse.vmem"))
        .unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(MARKER, 0).unwrap();
    sparse.write_all_at(&vec![0x33; 200_000], 20 << 20).unwrap();
    let disk = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("vm-flat.vmdk"))
        .unwrap();
    disk.set_len(32 << 20).unwrap();
    disk.write_all_at(MARKER, 4 << 20).unwrap();
}

/// SHA-256 of every regular file's content under `dir`, by relative path.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    common::snapshot_tree(dir)
        .into_iter()
        .filter(|(p, _)| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !p.to_string_lossy().contains(".vmcryptfs")
                && !matches!(name, ".control" | ".control.json" | ".stats")
        })
        .map(|(p, content)| (p, hex::encode(Sha256::digest(&content))))
        .collect()
}

fn fingerprint(mount: &common::Mount) -> String {
    read_control(&mount.path("vm1/.control"))["dek-fingerprint"].clone()
}

#[test]
fn plaintext_is_invariant_across_every_kind_of_rekey_and_disk_conversion() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let ds = env.datastore.to_str().unwrap().to_string();
    let vm = env.vm_dir("vm1").to_str().unwrap().to_string();
    let mount = env.mount();
    populate(&mount.path("vm1"));
    let expected = hashes(&mount.path("vm1"));
    let fp = fingerprint(&mount);

    write_control_ok(&mount, "rekey");
    assert_eq!(hashes(&mount.path("vm1")), expected, "shallow re-key");
    assert_eq!(fingerprint(&mount), fp, "a shallow re-key keeps the DEK");

    env.run_ok(&["provider", "rotate"]);
    env.run_ok(&["rekey", "--all", &ds]);
    assert_eq!(hashes(&mount.path("vm1")), expected, "rotation + re-key");
    assert_eq!(fingerprint(&mount), fp);

    env.run_ok(&["rekey", "--deep", &ds, "vm1"]);
    assert_eq!(hashes(&mount.path("vm1")), expected, "deep re-key");
    let status = read_control(&mount.path("vm1/.control"));
    assert_ne!(
        status["dek-fingerprint"], fp,
        "a deep re-key replaces the DEK"
    );
    assert_eq!(
        status["dek-generations"], "2",
        "the old generation is gone when done"
    );
    let mut header = [0u8; 12];
    fs::File::open(env.vm_dir("vm1").join("vm.nvram"))
        .unwrap()
        .read_exact_at(&mut header, 0)
        .unwrap();
    assert_eq!(u32::from_be_bytes(header[8..12].try_into().unwrap()), 2);

    env.run_ok(&["vm", "encrypt-disks", &vm]);
    assert_eq!(
        &fs::read(env.vm_dir("vm1").join("vm-flat.vmdk")).unwrap()[..4],
        b"VMCF"
    );
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["encrypt-disks"],
        "yes"
    );
    assert_eq!(hashes(&mount.path("vm1")), expected, "encrypt-disks");
    env.run_ok(&["vm", "decrypt-disks", &vm]);
    let disk = fs::read(env.vm_dir("vm1").join("vm-flat.vmdk")).unwrap();
    assert_eq!(
        &disk[4 << 20..(4 << 20) + MARKER.len()],
        MARKER,
        "the disk passes through again"
    );
    assert_eq!(hashes(&mount.path("vm1")), expected, "decrypt-disks");
    assert!(
        fs::metadata(env.vm_dir("vm1").join("sparse.vmem"))
            .unwrap()
            .blocks()
            * 512
            < 4 << 20,
        "sparse stays sparse"
    );
}

fn write_control_ok(mount: &common::Mount, command: &str) {
    common::write_control(&mount.path("vm1/.control"), command).unwrap();
}

#[test]
fn encrypting_an_existing_vm_in_place_survives_a_crash_and_keeps_sparseness() {
    let env = TestEnv::new();
    let plain = env.vm_dir("vm1");
    populate(&plain);
    let expected = hashes(&plain);
    let vm = plain.to_str().unwrap().to_string();

    // Crash after the first file: the VM is marked as mid-conversion.
    let status = env
        .cmd(&["vm", "encrypt", &vm])
        .env("VMCRYPTFS_TEST_CRASH_AT", "convert-first-file-done")
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9));
    let out = env.run(&["vm", "status", &vm]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("conversion: encrypt"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    {
        let mount = env.mount();
        let err = fs::read(mount.path("vm1/vm.vmx")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENOKEY),
            "a VM mid-conversion stays locked"
        );
    }
    let out = env.run(&["vm", "encrypt-disks", &vm]);
    assert!(
        !out.status.success(),
        "another conversion is refused while one is unfinished"
    );

    env.run_ok(&["vm", "encrypt", &vm]);
    assert!(
        common::tree_contains(&plain, MARKER)
            .unwrap()
            .to_string_lossy()
            .contains("vm-flat.vmdk"),
        "only the pass-through disk holds plaintext"
    );
    assert!(
        fs::metadata(plain.join("sparse.vmem")).unwrap().blocks() * 512 < 4 << 20,
        "sparse stays sparse"
    );
    let mount = env.mount();
    assert_eq!(hashes(&mount.path("vm1")), expected);
    assert_eq!(read_control(&mount.path("vm1/.control"))["conversion"], "-");
}

#[test]
fn deep_rekey_resumes_after_a_crash_and_refuses_open_files() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let ds = env.datastore.to_str().unwrap().to_string();
    let expected = {
        let mount = env.mount();
        populate(&mount.path("vm1"));
        let expected = hashes(&mount.path("vm1"));
        let open = fs::File::open(mount.path("vm1/vm.vmx")).unwrap();
        let out = env.run(&["rekey", "--deep", &ds, "vm1"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("open"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(open);
        expected
    };
    let status = env
        .cmd(&["rekey", "--deep", &ds, "vm1"])
        .env("VMCRYPTFS_TEST_CRASH_AT", "convert-first-file-done")
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9));
    env.run_ok(&["rekey", "--deep", &ds, "vm1"]);
    let mount = env.mount();
    assert_eq!(hashes(&mount.path("vm1")), expected);
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["dek-generations"],
        "2"
    );
}
