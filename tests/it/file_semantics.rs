//! POSIX file semantics through the mount, on encrypted files (and where
//! noted pass-through disks and plain directories): open flags, I/O at any
//! offset against an in-memory model, rename, links, metadata, sync, and
//! ioctls. Truncation and shared mmap are covered, on every kind of file,
//! by `posix_semantics.rs`.

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::sync::Arc;

use common::TestEnv;

fn errno(err: std::io::Error) -> i32 {
    err.raw_os_error().unwrap_or(0)
}

#[test]
fn open_flags_create_excl_trunc_append() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let path = mount.path("vm1/vm1.vmx");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.write_all(b"first line\n").unwrap();
    drop(f);
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    let mut a = OpenOptions::new().append(true).open(&path).unwrap();
    let mut b = OpenOptions::new().append(true).open(&path).unwrap();
    a.write_all(b"from a\n").unwrap();
    b.write_all(b"from b\n").unwrap();
    a.write_all(b"a again\n").unwrap();
    drop((a, b));
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "first line\nfrom a\nfrom b\na again\n"
    );

    let mut t = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    t.write_all(b"rewritten").unwrap();
    drop(t);
    assert_eq!(fs::read_to_string(&path).unwrap(), "rewritten");
}

/// Several files written in parallel with random offsets and lengths
/// (unaligned, partial blocks, beyond EOF) and random truncates, each
/// compared with an in-memory model after every step and after a remount.
#[test]
fn random_io_matches_a_model_and_persists() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = Arc::new(env.mount());
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let mount = mount.clone();
            std::thread::spawn(move || {
                let path = mount.path(&format!("vm1/model-{t}.bin"));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .unwrap();
                let mut model: Vec<u8> = Vec::new();
                let mut seed = 0x2545_f491_4f6c_dd1d ^ (t + 1);
                let mut next = |bound: u64| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % bound
                };
                for step in 0..250 {
                    if next(10) < 8 {
                        let offset = next(300 << 10);
                        let len = next(20 << 10) + 1;
                        let data: Vec<u8> = (0..len)
                            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(step as u8))
                            .collect();
                        file.write_all_at(&data, offset).unwrap();
                        let end = (offset + len) as usize;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[offset as usize..end].copy_from_slice(&data);
                    } else {
                        let size = next(320 << 10);
                        file.set_len(size).unwrap();
                        model.resize(size as usize, 0);
                    }
                    let offset = next(model.len() as u64 + 1);
                    let len = next(16 << 10);
                    let mut buf = vec![0u8; len as usize];
                    let n = file.read_at(&mut buf, offset).unwrap();
                    let expect_end = ((offset + len) as usize).min(model.len());
                    assert_eq!(
                        &buf[..n],
                        &model[offset as usize..expect_end.max(offset as usize)],
                        "file {t} step {step}"
                    );
                }
                assert_eq!(fs::read(&path).unwrap(), model, "file {t} whole");
                (path, model)
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    drop(mount);
    let mount = env.mount();
    for (path, model) in results {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            fs::read(mount.path(&format!("vm1/{name}"))).unwrap(),
            model,
            "{name} after remount"
        );
    }
}

#[test]
fn rename_is_atomic_even_over_an_open_file() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let target = mount.path("vm1/tpm2-00.permall");
    fs::write(&target, b"old state").unwrap();
    let mut old_reader = fs::File::open(&target).unwrap();
    let tmp = mount.path("vm1/tpm2-00.permall.tmp");
    fs::write(&tmp, b"new state").unwrap();
    fs::rename(&tmp, &target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"new state");
    assert!(!tmp.exists());
    let mut old = String::new();
    old_reader.read_to_string(&mut old).unwrap();
    assert_eq!(
        old, "old state",
        "an open descriptor keeps the replaced file"
    );

    fs::create_dir(mount.path("vm1/snapshots")).unwrap();
    fs::write(mount.path("vm1/snapshots/s1.vmsn"), b"snapshot").unwrap();
    fs::rename(mount.path("vm1/snapshots"), mount.path("vm1/snaps")).unwrap();
    assert_eq!(
        fs::read(mount.path("vm1/snaps/s1.vmsn")).unwrap(),
        b"snapshot"
    );
}

#[test]
fn directories_links_and_hidden_internal_files() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", false);
    fs::create_dir(env.datastore.join("iso")).unwrap();
    let mount = env.mount();
    let mut names: Vec<String> = fs::read_dir(mount.path("vm1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![".control", ".control.json"],
        "the bundle is hidden; the virtual files are listed"
    );
    assert_eq!(
        errno(fs::metadata(mount.path("vm1/.vmcryptfs-bundle")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs::write(mount.path("vm1/.vmcryptfs-x"), b"x").unwrap_err()),
        libc::EPERM
    );

    fs::create_dir(mount.path("vm1/d")).unwrap();
    fs::write(mount.path("vm1/d/f"), b"in a subdirectory").unwrap();
    assert_eq!(
        errno(fs::remove_dir(mount.path("vm1/d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    fs::remove_file(mount.path("vm1/d/f")).unwrap();
    fs::remove_dir(mount.path("vm1/d")).unwrap();

    std::os::unix::fs::symlink("vm1.vmx", mount.path("vm1/link")).unwrap();
    assert_eq!(
        fs::read_link(mount.path("vm1/link")).unwrap().to_str(),
        Some("vm1.vmx")
    );
    fs::write(mount.path("vm1/vm1.vmx"), b"via symlink").unwrap();
    assert_eq!(fs::read(mount.path("vm1/link")).unwrap(), b"via symlink");

    fs::hard_link(mount.path("vm1/vm1.vmx"), mount.path("vm1/hard")).unwrap();
    fs::write(mount.path("vm1/hard"), b"written through the second name").unwrap();
    assert_eq!(
        fs::read(mount.path("vm1/vm1.vmx")).unwrap(),
        b"written through the second name"
    );
    assert_eq!(fs::metadata(mount.path("vm1/vm1.vmx")).unwrap().nlink(), 2);

    // Across encryption domains: EXDEV, so mv copies and re-encrypts.
    for (from, to) in [
        ("vm1/vm1.vmx", "vm2/vm1.vmx"),
        ("vm1/vm1.vmx", "iso/vm1.vmx"),
        ("vm1/vm1.vmx", "vm1/vm1.vmdk"),
    ] {
        assert_eq!(
            errno(fs::rename(mount.path(from), mount.path(to)).unwrap_err()),
            libc::EXDEV,
            "{from} -> {to}"
        );
        assert_eq!(
            errno(fs::hard_link(mount.path(from), mount.path(to)).unwrap_err()),
            libc::EXDEV,
            "{from} -> {to}"
        );
    }
    let status = std::process::Command::new("mv")
        .arg(mount.path("vm1/vm1.vmx"))
        .arg(mount.path("vm2/moved.vmx"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read(mount.path("vm2/moved.vmx")).unwrap(),
        b"written through the second name"
    );
    let backing = fs::read(env.vm_dir("vm2").join("moved.vmx")).unwrap();
    assert_eq!(
        &backing[..4],
        b"VMCF",
        "moved into vm2 means encrypted under vm2's key"
    );
}

#[test]
fn metadata_sync_and_sizes() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let path = mount.path("vm1/vm1.nvram");
    fs::write(&path, vec![1u8; 5000]).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 5000, "plaintext size");
    assert!(
        fs::metadata(env.vm_dir("vm1").join("vm1.nvram"))
            .unwrap()
            .len()
            > 5000,
        "ciphertext is larger"
    );

    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
    for meta in [
        fs::metadata(&path).unwrap(),
        fs::metadata(env.vm_dir("vm1").join("vm1.nvram")).unwrap(),
    ] {
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        assert_eq!(meta.mtime(), 1_600_000_000);
    }
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    let st = nix::sys::statvfs::statvfs(&mount.mnt).unwrap();
    assert!(st.blocks() > 0 && st.files() > 0);

    // A pass-through disk keeps its raw size and bytes.
    fs::write(mount.path("vm1/disk-flat.vmdk"), vec![9u8; 5000]).unwrap();
    assert_eq!(
        fs::metadata(env.vm_dir("vm1").join("disk-flat.vmdk"))
            .unwrap()
            .len(),
        5000
    );
}

/// ioctls get ENOTTY, quietly: Python's `open()` asks every file whether
/// it is a terminal (TCGETS), and fuser's default answer logged a warning
/// for each one.
#[test]
fn ioctls_are_refused_as_not_a_terminal_without_log_noise() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let file = mount.path("vm1/vm1.vmx");
    fs::write(&file, b"config").unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, os\n\
             f = open(sys.argv[1]); assert f.read() == 'config'\n\
             print(os.isatty(f.fileno()))",
        )
        .arg(&file)
        .output()
        .expect("python3 (the KMIP tests need it too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "False");
    let log = mount.log_text();
    assert!(
        !log.contains("ioctl"),
        "ioctl noise in the mount log:\n{log}"
    );
}

/// `rm` then `df` through the mount, as an admin frees space, and `mv` of
/// a small file over a large one, as a tool replaces a disk image: the
/// space of the file removed or replaced counts as free at the next
/// statfs, although the mount lets the backing file system free it on a
/// thread of its own (`datastore::deferred_release`), and the name is gone
/// from (or new in) the backing directory when the call returns.
#[test]
fn a_removed_file_is_free_space_at_the_next_statfs() {
    const SIZE: u64 = 128 << 20;
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let path = mount.path("vm1/vm1.vmss");
    let small = mount.path("vm1/small.vmss");
    let write_large = || {
        let mut file = fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..SIZE >> 20 {
            file.write_all(&chunk).unwrap();
        }
        file.sync_all().unwrap();
    };
    let free = || {
        let st = nix::sys::statvfs::statvfs(&mount.mnt).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    for round in 0..4 {
        write_large();
        let before = free();
        let how = if round % 2 == 1 {
            fs::remove_file(&path).unwrap();
            assert!(
                !env.vm_dir("vm1").join("vm1.vmss").exists(),
                "the backing name outlived the unlink"
            );
            "removing"
        } else {
            fs::write(&small, b"small").unwrap();
            fs::rename(&small, &path).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"small");
            assert!(!env.vm_dir("vm1").join("small.vmss").exists());
            "renaming a small file over"
        };
        let after = free();
        // Others may allocate on the same disk meanwhile: most of the
        // file's space, not all of it.
        assert!(
            after >= before + SIZE * 3 / 4,
            "{how} {SIZE} bytes freed only {} by the next statfs",
            after.saturating_sub(before)
        );
    }
}
