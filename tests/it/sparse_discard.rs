//! Sparse files through the mount: SEEK_DATA/SEEK_HOLE (and so `qemu-img
//! map`) match a plain file system at block granularity; fallocate
//! preallocates, punches holes that free datastore space, and zeroes.

use crate::common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::{create_empty, data_extents, run_checked, TestEnv};
use nix::fcntl::{fallocate, FallocateFlags};

const MIB: u64 = 1 << 20;

/// Writes the same sparse pattern into `file`: 64 MiB with data at a few
/// places, including unaligned ones.
fn write_pattern(file: &File) {
    file.set_len(64 * MIB).unwrap();
    for (offset, len) in [
        (0, 4096),
        (MIB + 100, 10_000),
        (10 * MIB, 3 * MIB),
        (40 * MIB - 1, 2),
        (63 * MIB, MIB),
    ] {
        file.write_all_at(&vec![0xa5; len as usize], offset)
            .unwrap();
    }
}

#[test]
fn seek_data_and_hole_match_a_plain_file_system() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let plain = create_empty(&env.dir.path().join("plain.img"));
    let encrypted = create_empty(&mount.path("vm1/disk-flat.vmdk"));
    write_pattern(&plain);
    write_pattern(&encrypted);
    let expected = data_extents(&plain);
    assert!(
        expected.len() >= 4,
        "the plain file system must be sparse: {expected:?}"
    );
    assert_eq!(data_extents(&encrypted), expected);
    assert!(
        fs::metadata(env.vm_dir("vm1").join("disk-flat.vmdk"))
            .unwrap()
            .blocks()
            * 512
            < 8 * MIB
    );
}

#[test]
fn qemu_img_map_matches_a_plain_file_system() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let map = |path: &Path| {
        write_pattern(&create_empty(path));
        let out = run_checked(
            Command::new("qemu-img")
                .args(["map", "--output=json", "-f", "raw"])
                .arg(path),
        );
        let extents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        extents
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["data"].as_bool().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let plain = map(&env.dir.path().join("plain.raw"));
    let encrypted = map(&mount.path("vm1/disk.raw"));
    assert_eq!(encrypted, plain);
}

#[test]
fn fallocate_preallocates_punches_and_zeroes() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let file = create_empty(&mount.path("vm1/vm1.vmem"));
    let backing = env.vm_dir("vm1").join("vm1.vmem");
    let fd = &file;

    fallocate(fd, FallocateFlags::empty(), 0, (16 * MIB) as i64).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 16 * MIB, "mode 0 extends");
    fallocate(
        fd,
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        (32 * MIB) as i64,
    )
    .unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        16 * MIB,
        "KEEP_SIZE keeps the size"
    );

    file.write_all_at(&vec![0x11; (16 * MIB) as usize], 0)
        .unwrap();
    file.sync_all().unwrap();
    let used = fs::metadata(&backing).unwrap().blocks() * 512;
    fallocate(
        fd,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        (MIB + 123) as i64,
        (8 * MIB) as i64,
    )
    .unwrap();
    file.sync_all().unwrap();
    let after = fs::metadata(&backing).unwrap().blocks() * 512;
    assert!(
        after + 7 * MIB < used,
        "punching 8 MiB must free space: {used} -> {after}"
    );
    let mut buf = vec![0u8; (16 * MIB) as usize];
    file.read_exact_at(&mut buf, 0).unwrap();
    let hole = (MIB + 123) as usize..(9 * MIB + 123) as usize;
    assert!(buf[hole.clone()].iter().all(|&b| b == 0));
    assert!(
        buf[..hole.start].iter().all(|&b| b == 0x11) && buf[hole.end..].iter().all(|&b| b == 0x11)
    );

    fallocate(
        fd,
        FallocateFlags::FALLOC_FL_ZERO_RANGE,
        (15 * MIB) as i64,
        (2 * MIB) as i64,
    )
    .unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        17 * MIB,
        "ZERO_RANGE past EOF extends"
    );
    let mut tail = vec![1u8; (2 * MIB) as usize];
    file.read_exact_at(&mut tail, 15 * MIB).unwrap();
    assert!(tail.iter().all(|&b| b == 0));

    let err = fallocate(fd, FallocateFlags::FALLOC_FL_COLLAPSE_RANGE, 0, MIB as i64).unwrap_err();
    assert_eq!(err, nix::errno::Errno::EOPNOTSUPP);
    let err = fallocate(fd, FallocateFlags::FALLOC_FL_PUNCH_HOLE, 0, MIB as i64).unwrap_err();
    assert_eq!(
        err,
        nix::errno::Errno::EOPNOTSUPP,
        "PUNCH_HOLE needs KEEP_SIZE, as on Linux"
    );
}
