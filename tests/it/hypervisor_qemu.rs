//! QEMU's tools on the mount, in a VM home with encrypted disks: VMDK
//! (monolithicSparse and monolithicFlat) and qcow2 images built, written,
//! checked and converted exactly as on a plain directory; O_DIRECT
//! (cache=none); and kernel passthrough for unencrypted disks.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_checked, TestEnv};

fn run(program: &str, args: &[&str], paths: &[&Path]) -> String {
    let out = run_checked(Command::new(program).args(args).args(paths));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn qemu_img_on_encrypted_disks_matches_a_plain_directory() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let plain_dir = env.dir.path().join("plain");
    fs::create_dir(&plain_dir).unwrap();
    let plain = build_images(&plain_dir, "256M");
    let encrypted = build_images(&mount.path("vm1"), "256M");
    for (p, e) in plain.iter().zip(&encrypted) {
        let text = run("qemu-img", &["compare"], &[p, e]);
        assert!(
            text.contains("identical"),
            "{} vs {}: {text}",
            p.display(),
            e.display()
        );
    }
    let backing = env.vm_dir("vm1").join("flat-flat.vmdk");
    assert_eq!(
        &fs::read(&backing).unwrap()[..4],
        b"VMCF",
        "the flat extent is encrypted"
    );
}

/// The same deterministic steps, run in `dir`: create images of `size`,
/// write patterns at pseudo-random offsets with qemu-io (the first half with
/// cache=none, i.e. O_DIRECT), check them, convert to raw and back.
fn build_images(dir: &Path, size: &str) -> Vec<PathBuf> {
    let mut images = Vec::new();
    for (name, format, options) in [
        ("sparse.vmdk", "vmdk", "subformat=monolithicSparse"),
        ("flat.vmdk", "vmdk", "subformat=monolithicFlat"),
        ("disk.qcow2", "qcow2", "cluster_size=65536"),
    ] {
        let image = dir.join(name);
        run_checked(
            Command::new("qemu-img")
                .args(["create", "-f", format, "-o", options])
                .arg(&image)
                .arg(size),
        );
        let mut seed: u64 = 0x9e37_79b9;
        let mut commands = Vec::new();
        for i in 0..24 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = (seed >> 20) % (250 << 20) / 512 * 512;
            let len = ((seed >> 8) % 64 + 1) * 4096;
            commands.push(format!("write -P {} {offset} {len}", i + 1));
        }
        for (i, chunk) in commands.chunks(12).enumerate() {
            let cache = if i == 0 { "none" } else { "writeback" };
            let mut args = vec!["-f", format, "-t", cache];
            for c in chunk {
                args.push("-c");
                args.push(c);
            }
            run("qemu-io", &args, &[&image]);
        }
        run("qemu-img", &["check", "-f", format], &[&image]);
        let raw = dir.join(format!("{name}.raw"));
        run(
            "qemu-img",
            &["convert", "-f", format, "-O", "raw"],
            &[&image, &raw],
        );
        let back = dir.join(format!("{name}.back.{format}"));
        run(
            "qemu-img",
            &["convert", "-f", "raw", "-O", format],
            &[&raw, &back],
        );
        images.extend([image, raw, back]);
    }
    images
}

#[test]
fn ten_gib_images_stay_small_in_the_datastore() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    for (name, format) in [
        ("big.vmdk", "vmdk"),
        ("big.qcow2", "qcow2"),
        ("big.raw", "raw"),
    ] {
        let out = Command::new("qemu-img")
            .args(["create", "-f", format])
            .arg(mount.path(&format!("vm1/{name}")))
            .arg("10G")
            .output()
            .unwrap();
        assert!(out.status.success());
        let used = fs::metadata(env.vm_dir("vm1").join(name)).unwrap().blocks() * 512;
        assert!(used < 4 << 20, "{name} uses {used} bytes in the datastore");
    }
}

#[test]
fn unencrypted_disks_use_kernel_passthrough_where_available() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(mount.path("vm1/disk-flat.vmdk"), &data).unwrap();
    assert_eq!(
        fs::read(env.vm_dir("vm1").join("disk-flat.vmdk")).unwrap(),
        data,
        "a pass-through disk is stored as is"
    );
    assert_eq!(fs::read(mount.path("vm1/disk-flat.vmdk")).unwrap(), data);
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let log = mount.log_text();
    if version >= (6, 9) {
        assert!(
            log.contains("unencrypted files use kernel passthrough"),
            "{log}"
        );
    } else {
        assert!(log.contains("kernel passthrough unavailable"), "{log}");
    }
}
