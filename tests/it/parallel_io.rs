//! Parallel I/O through the multi-threaded mount, and qemu-img on it.

use crate::common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::sync::Arc;

use common::{need, run_checked, TestEnv};

/// Threads write interleaved, partially overlapping-in-block regions of one
/// encrypted file at once; read-modify-write of shared blocks must lose
/// nothing.
#[test]
fn parallel_writers_to_one_file_lose_nothing() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let path = mount.path("vm1/disk-flat.vmdk");
    const THREADS: u64 = 6;
    const SLICE: u64 = 1000; // several slices share each 4 KiB block
    const ROUNDS: u64 = 200;
    let file = Arc::new(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap(),
    );
    file.set_len(THREADS * SLICE * ROUNDS).unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let file = file.clone();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let offset = (round * THREADS + t) * SLICE;
                    let data = vec![(t as u8 + 1) ^ (round as u8); SLICE as usize];
                    file.write_all_at(&data, offset).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    drop(file);
    let content = fs::read(&path).unwrap();
    for round in 0..ROUNDS {
        for t in 0..THREADS {
            let offset = ((round * THREADS + t) * SLICE) as usize;
            let expected = (t as u8 + 1) ^ (round as u8);
            assert!(
                content[offset..offset + SLICE as usize]
                    .iter()
                    .all(|&b| b == expected),
                "slice of thread {t} round {round} corrupted"
            );
        }
    }
}

/// Many files written and read by parallel threads.
#[test]
fn parallel_io_on_many_files() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", true);
    let mount = Arc::new(env.mount());
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let mount = mount.clone();
            std::thread::spawn(move || {
                let vm = if t % 2 == 0 { "vm1" } else { "vm2" };
                for i in 0..20 {
                    let path = mount.path(&format!("{vm}/file-{t}-{i}.log"));
                    let data: Vec<u8> = (0..(i * 997 + t * 13))
                        .map(|b| (b * 31 + t) as u8)
                        .collect();
                    fs::write(&path, &data).unwrap();
                    assert_eq!(fs::read(&path).unwrap(), data);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // The files, plus the virtual .control and .control.json.
    assert_eq!(fs::read_dir(mount.path("vm1")).unwrap().count(), 4 * 20 + 2);
}

/// A mounted datastore with `vm1`, whose disks pass through, and `vm2`,
/// whose disks are encrypted.
fn mount_plain_and_encrypted_disk_vms() -> (TestEnv, common::Mount) {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", true);
    let mount = env.mount();
    (env, mount)
}

/// `qemu-img create -f vmdk` in a VM home with encrypted disks and one
/// with pass-through disks; a 10 GiB image stays small on disk.
#[test]
fn qemu_img_creates_vmdk_disks_on_the_mount() {
    need("qemu-img", "qemu-utils");
    let (env, mount) = mount_plain_and_encrypted_disk_vms();
    for vm in ["vm1", "vm2"] {
        let disk = mount.path(&format!("{vm}/disk.vmdk"));
        run_checked(
            Command::new("qemu-img")
                .args(["create", "-f", "vmdk"])
                .arg(&disk)
                .arg("10G"),
        );
        let out = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&disk)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&out.stdout);
        assert!(info.contains("\"virtual-size\": 10737418240"), "{info}");
        let out = Command::new("qemu-io")
            .args([
                "-f",
                "vmdk",
                "-c",
                "write -P 0xab 1M 64k",
                "-c",
                "read -P 0xab 1M 64k",
            ])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(
            out.status.success()
                && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
        );
        let backing = env.vm_dir(vm).join("disk.vmdk");
        assert!(
            fs::metadata(&backing).unwrap().blocks() * 512 < 16 << 20,
            "{vm}: 10 GiB image must stay sparse"
        );
    }
    let plain = fs::read(env.vm_dir("vm1").join("disk.vmdk")).unwrap();
    assert_eq!(&plain[..4], b"KDMV", "vm1's disk passes through");
    let encrypted = fs::read(env.vm_dir("vm2").join("disk.vmdk")).unwrap();
    assert_eq!(&encrypted[..4], b"VMCF", "vm2's disk is encrypted");
}

/// Direct I/O from an asynchronous submitter, the way QEMU drives a VM
/// disk with `cache=none,aio=native`: fio with libaio, `O_DIRECT`, 32
/// requests in flight, random writes of 4–64 KiB (aligned, as QEMU's are:
/// a pass-through disk has the backing file system's `O_DIRECT` rules),
/// then every block read back and checked (crc32c), on an encrypted disk
/// and a pass-through one.
/// The mount must have asked the kernel to deliver such requests in
/// parallel (FUSE_ASYNC_DIO), and nothing may be lost or torn when they
/// overlap in blocks and arrive out of order.
#[test]
fn queued_direct_io_keeps_every_block() {
    need("fio", "fio");
    let (env, mount) = mount_plain_and_encrypted_disk_vms();
    assert!(
        mount
            .log_text()
            .contains("asynchronous direct I/O: queued requests reach the mount in parallel"),
        "{}",
        mount.log_text()
    );
    // The encrypted disk also takes unaligned sizes (DESIGN.md §2.7), so
    // requests in flight share blocks and each is a read-modify-write.
    for (disk, sizes) in [
        (
            "vm1/queued-flat.vmdk",
            ["--bsrange=4k-64k", "--bs_unaligned=0"],
        ),
        (
            "vm2/queued-flat.vmdk",
            ["--bsrange=4k-64k", "--bs_unaligned=0"],
        ),
        (
            "vm2/unaligned-flat.vmdk",
            ["--bsrange=512-64k", "--bs_unaligned"],
        ),
    ] {
        let out = Command::new("fio")
            .args([
                "--name=queued",
                "--filesize=24M",
                "--rw=randwrite",
                "--ioengine=libaio",
                "--iodepth=32",
                "--direct=1",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--do_verify=1",
                "--verify_state_save=0",
                "--output-format=terse",
            ])
            .args(sizes)
            .arg(format!("--filename={}", mount.path(disk).display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{disk}: fio failed\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = fs::read(env.vm_dir("vm2").join("queued-flat.vmdk")).unwrap();
    assert_eq!(&stored[..4], b"VMCF", "vm2's disk is stored encrypted");
}
