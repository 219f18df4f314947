//! Both content formats side by side in one datastore, through the mount:
//! format 1 (interleaved, VM homes from before format 2 or made with
//! `--content-format 1`) and format 2 (page-aligned, the default). The same
//! operations must give the same plaintext, the stored sizes must follow
//! each format's rule (docs/FORMAT.md §3.6, §3.9), and sparse files must
//! stay sparse in both.

use crate::common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::{create_empty, data_extents, read_control, TestEnv};
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};
use vmcryptfs::format::content_layout::ContentLayout;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Plaintext bytes of one format 2 group (126 blocks).
const GROUP: u64 = 126 * 4096;

fn layout(format: u16) -> ContentLayout {
    ContentLayout::from_format_version(format).unwrap()
}

/// Applies the same writes, truncates and hole punches to `file` and to
/// the in-memory `model`, around format 2's group boundaries.
fn exercise(file: &File, model: &mut Vec<u8>) {
    let write = |file: &File, model: &mut Vec<u8>, offset: u64, len: u64, byte: u8| {
        file.write_all_at(&vec![byte; len as usize], offset)
            .unwrap();
        let end = (offset + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].fill(byte);
    };
    let truncate = |file: &File, model: &mut Vec<u8>, size: u64| {
        file.set_len(size).unwrap();
        model.resize(size as usize, 0);
    };
    write(file, model, 0, 3 * GROUP + 5000, 0x11);
    write(file, model, GROUP - 100, 200, 0x22); // across the first boundary
    write(file, model, 2 * GROUP - 4096, 8192, 0x33); // whole blocks across one
    truncate(file, model, GROUP + 700); // keeps a tag page with old slots
    truncate(file, model, 4 * GROUP); // grows over them: must read zeros
    write(file, model, 3 * GROUP + 9, 10, 0x44);
    fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        (GROUP / 2) as i64,
        GROUP as i64,
    )
    .unwrap();
    model[(GROUP / 2) as usize..(GROUP / 2 + GROUP) as usize].fill(0);
    write(file, model, 6 * MIB + 3, 4093, 0x55); // past the end: a sparse gap
}

#[test]
fn both_formats_give_the_same_plaintext_sizes_and_holes() {
    let env = TestEnv::new();
    env.create_vm_in_format("f1", true, 1);
    env.create_vm_in_format("f2", true, 2);
    let mut models = Vec::new();
    {
        let mount = env.mount();
        for vm in ["f1", "f2"] {
            let file = create_empty(&mount.path(&format!("{vm}/disk-flat.vmdk")));
            let mut model = Vec::new();
            exercise(&file, &mut model);
            assert_eq!(
                fs::read(mount.path(&format!("{vm}/disk-flat.vmdk"))).unwrap(),
                model,
                "{vm}"
            );
            models.push((vm, model, data_extents(&file)));
        }
        assert_eq!(models[0].1, models[1].1, "same operations, same plaintext");
        assert_eq!(models[0].2, models[1].2, "same holes at block granularity");
        for (vm, format) in [("f1", "1"), ("f2", "2")] {
            let status = read_control(&mount.path(&format!("{vm}/.control")));
            assert_eq!(status["content-format"], format, "{vm}");
        }
        assert!(mount.unmount().success());
    }

    // The stored form follows each format's size rule, stays sparse, and
    // reads back the same after a remount.
    for (vm, format) in [("f1", 1), ("f2", 2)] {
        let backing = fs::metadata(env.vm_dir(vm).join("disk-flat.vmdk")).unwrap();
        let plain = models[0].1.len() as u64;
        assert_eq!(
            backing.len(),
            layout(format).plain_size_to_cipher_size(plain),
            "{vm}"
        );
        assert!(
            backing.blocks() * 512 < plain,
            "{vm}: the gap before 6 MiB is not stored"
        );
        let mut header = [0u8; 6];
        File::open(env.vm_dir(vm).join("disk-flat.vmdk"))
            .unwrap()
            .read_exact_at(&mut header, 0)
            .unwrap();
        assert_eq!(&header[..4], b"VMCF");
        assert_eq!(
            u16::from_be_bytes([header[4], header[5]]),
            format,
            "{vm}: header version"
        );
    }
    let mount = env.mount();
    for (vm, model, _) in &models {
        assert_eq!(
            &fs::read(mount.path(&format!("{vm}/disk-flat.vmdk"))).unwrap(),
            model,
            "{vm}"
        );
    }
}

#[test]
fn format_2_data_pages_are_page_aligned_in_the_backing_file() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let file = create_empty(&mount.path("vm1/disk-flat.vmdk"));
    file.set_len(8 * MIB).unwrap();
    // One block, far in: its ciphertext must be one whole backing page at
    // the documented offset, and nothing else but its tag page stored.
    file.write_all_at(&[0x5a; 4096], 5 * MIB).unwrap();
    file.sync_all().unwrap();
    let backing = File::open(env.vm_dir("vm1").join("disk-flat.vmdk")).unwrap();
    let block = 5 * MIB / 4096;
    let data_off = ContentLayout::PageAligned.block_data_off(block);
    assert_eq!(data_off % 4096, 0);
    assert_eq!(
        lseek(&backing, 4096, Whence::SeekData).unwrap() as u64 / 4096 * 4096,
        ContentLayout::PageAligned.block_slot_off(block).unwrap() / 4096 * 4096,
        "the first stored page after the header's is the block's tag page"
    );
    assert_eq!(
        lseek(&backing, data_off as i64, Whence::SeekHole).unwrap() as u64,
        data_off + 4096,
        "exactly one data page is stored"
    );
    let mut page = vec![0u8; 4096];
    backing.read_exact_at(&mut page, data_off).unwrap();
    assert!(
        page.iter().any(|&b| b != 0x5a) && page.iter().any(|&b| b != 0),
        "ciphertext, not plaintext"
    );
}

#[test]
fn vm_status_names_the_format_and_unknown_formats_are_refused() {
    let env = TestEnv::new();
    env.create_vm_in_format("old", false, 1);
    env.create_vm("new", false);
    for (vm, format) in [("old", 1), ("new", 2)] {
        let out = env.run_ok(&["vm", "status", "--json", env.vm_dir(vm).to_str().unwrap()]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["content_format"], format, "{vm}");
    }
    let bad = env.vm_dir("bad");
    let out = env.run(&[
        "vm",
        "create",
        bad.to_str().unwrap(),
        "--content-format",
        "3",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--content-format"),
        "the error names the option: {stderr}"
    );
    assert!(
        !bad.join(".vmcryptfs-bundle").exists(),
        "nothing was created"
    );
}

/// The content format (version field) in the header of a backing file.
fn header_format(path: &Path) -> u16 {
    let mut header = [0u8; 6];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut header, 0)
        .unwrap();
    u16::from_be_bytes([header[4], header[5]])
}

#[test]
fn vm_convert_format_moves_a_vm_home_between_formats_while_mounted_and_idle() {
    let env = TestEnv::new();
    let vm = env.create_vm_in_format("vm1", true, 1);
    let vm_arg = vm.to_str().unwrap();
    let mount = env.mount();
    let mut expected = Vec::new();
    for (name, len) in [("vm1.nvram", 70_000u64), ("vm1.vmx", 300), ("vm1.log", 0)] {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(mount.path(&format!("vm1/{name}")), &content).unwrap();
        expected.push((name, content));
    }
    let disk = create_empty(&mount.path("vm1/disk-flat.vmdk"));
    disk.set_len(64 * MIB).unwrap();
    disk.write_all_at(&[0x77; 3 * 4096], 40 * MIB + 5).unwrap();
    drop(disk);
    let disk_before = fs::read(mount.path("vm1/disk-flat.vmdk")).unwrap();

    let out = env.run_ok(&["vm", "convert-format", vm_arg]);
    assert!(out.contains("3 file(s) converted"), "{out}");
    for name in ["vm1.nvram", "vm1.vmx", "disk-flat.vmdk"] {
        assert_eq!(header_format(&vm.join(name)), 2, "{name}");
    }
    assert_eq!(
        fs::metadata(vm.join("vm1.log")).unwrap().len(),
        0,
        "empty files stay empty"
    );
    let backing = fs::metadata(vm.join("disk-flat.vmdk")).unwrap();
    assert_eq!(
        backing.len(),
        ContentLayout::PageAligned.plain_size_to_cipher_size(64 * MIB)
    );
    assert!(backing.blocks() * 512 < 2 * MIB, "the disk stays sparse");
    // The mount picks up the new format: same plaintext, and new writes
    // land in format 2.
    for (name, content) in &expected {
        assert_eq!(
            &fs::read(mount.path(&format!("vm1/{name}"))).unwrap(),
            content,
            "{name}"
        );
    }
    assert_eq!(
        fs::read(mount.path("vm1/disk-flat.vmdk")).unwrap(),
        disk_before
    );
    assert_eq!(
        read_control(&mount.path("vm1/.control"))["content-format"],
        "2"
    );
    fs::write(mount.path("vm1/new.vmsd"), b"snapshot list").unwrap();
    assert_eq!(header_format(&vm.join("new.vmsd")), 2);

    let again = env.run_ok(&["vm", "convert-format", vm_arg]);
    assert!(again.contains("0 file(s) converted"), "idempotent: {again}");
    env.run_ok(&["vm", "convert-format", vm_arg, "--content-format", "1"]);
    assert_eq!(header_format(&vm.join("vm1.nvram")), 1);
    assert_eq!(
        fs::read(mount.path("vm1/disk-flat.vmdk")).unwrap(),
        disk_before
    );
    assert_eq!(
        fs::read(mount.path("vm1/new.vmsd")).unwrap(),
        b"snapshot list"
    );
}

/// Sizes of a VM home whose files nobody has opened since the mount
/// started come from the format its bundle names, which the mount keeps
/// once read; a conversion run while mounted must replace it. Stale, it
/// would turn format 2 stored sizes into format 1 plaintext sizes.
#[test]
fn sizes_follow_a_conversion_of_a_vm_home_listed_but_never_opened() {
    let env = TestEnv::new();
    let vm = env.create_vm_in_format("vm1", true, 1);
    let mount = env.mount();
    let sizes = [0u64, 1, 4096, 70_000, 3 * GROUP + 5];
    for size in sizes {
        fs::write(
            mount.path(&format!("vm1/f{size}.log")),
            vec![9u8; size as usize],
        )
        .unwrap();
    }
    assert!(mount.unmount().success());

    let mount = env.mount();
    let check = |when: &str| {
        // Past the kernel's cached attributes (1 s), so the daemon answers.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let listed = fs::read_dir(mount.path("vm1")).unwrap().count();
        assert_eq!(listed, sizes.len() + 2, "{when}: entries");
        for size in sizes {
            let meta = fs::metadata(mount.path(&format!("vm1/f{size}.log"))).unwrap();
            assert_eq!(meta.len(), size, "{when}: size of f{size}.log");
        }
    };
    check("format 1, before any open");
    env.run_ok(&["vm", "convert-format", vm.to_str().unwrap()]);
    assert_eq!(header_format(&vm.join("f70000.log")), 2);
    check("format 2, after the conversion");
    assert_eq!(
        fs::read(mount.path("vm1/f70000.log")).unwrap(),
        vec![9u8; 70_000]
    );
}

#[test]
fn vm_convert_format_refuses_a_vm_with_open_files() {
    let env = TestEnv::new();
    let vm = env.create_vm_in_format("vm1", false, 1);
    let mount = env.mount();
    fs::write(mount.path("vm1/vm1.nvram"), b"tpm state").unwrap();
    let open = File::open(mount.path("vm1/vm1.nvram")).unwrap();
    let out = env.run(&["vm", "convert-format", vm.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open"), "names the reason: {stderr}");
    assert_eq!(header_format(&vm.join("vm1.nvram")), 1, "nothing converted");
    drop(open);
}
