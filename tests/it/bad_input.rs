//! Bad input beyond the control files: awkward names, symlinks that point
//! out of the datastore, a full datastore, a read-only datastore, and a
//! corrupt or full key store. Each gets a clear error and loses nothing.

use crate::common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{write_control, SmallFs, TestEnv};

fn errno(err: &std::io::Error) -> i32 {
    err.raw_os_error().unwrap_or(0)
}

#[test]
fn long_newline_and_non_utf8_names_work_and_overlong_names_are_refused() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let vm = mount.path("vm1");
    let long = "n".repeat(251) + ".log"; // 255 bytes, the ext4/tmpfs limit
    let newline = "line\nbreak.vmx";
    let invalid = OsStr::from_bytes(b"bad-\xff\xfe-utf8.nvram");
    for (i, name) in [OsStr::new(&long), OsStr::new(newline), invalid]
        .into_iter()
        .enumerate()
    {
        let data = vec![i as u8 + 1; 5000];
        fs::write(vm.join(name), &data).unwrap();
        assert_eq!(fs::read(vm.join(name)).unwrap(), data, "{name:?}");
        assert!(env.vm_dir("vm1").join(name).exists(), "names stay in clear");
        let stored = fs::read(env.vm_dir("vm1").join(name)).unwrap();
        assert_ne!(stored, data, "{name:?} is encrypted on disk");
    }
    let listed: Vec<_> = fs::read_dir(&vm)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == invalid), "{listed:?}");
    let too_long = "n".repeat(256);
    assert_eq!(
        errno(&fs::write(vm.join(&too_long), b"x").unwrap_err()),
        libc::ENAMETOOLONG
    );
    let renamed = OsStr::from_bytes(b"renamed-\x80.vmx");
    fs::rename(vm.join(newline), vm.join(renamed)).unwrap();
    assert_eq!(fs::read(vm.join(renamed)).unwrap(), vec![2u8; 5000]);
}

#[test]
fn symlinks_and_dotdot_never_lead_vmcryptfs_outside_the_datastore() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let outside = env.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let secret = outside.join("host-secret.vmx");
    fs::write(&secret, b"host file, not part of any VM").unwrap();
    let original = fs::read(&secret).unwrap();

    // A plain VM home with symlinks out of the datastore, then encrypted in
    // place: the conversion must not follow them.
    let plain = env.datastore.join("plain-vm");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("plain-vm.vmx"), b"displayName = \"p\"").unwrap();
    std::os::unix::fs::symlink(&secret, plain.join("link.vmx")).unwrap();
    std::os::unix::fs::symlink(&outside, plain.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("../../outside/host-secret.vmx", plain.join("rel.vmx")).unwrap();
    env.run_ok(&["vm", "encrypt", plain.to_str().unwrap()]);
    env.run_ok(&["vm", "encrypt-disks", plain.to_str().unwrap()]);
    env.run_ok(&[
        "rekey",
        "--deep",
        env.datastore.to_str().unwrap(),
        "plain-vm",
    ]);
    assert_eq!(
        fs::read(&secret).unwrap(),
        original,
        "conversions left the host file alone"
    );

    let mount = env.mount();
    // Symlinks are stored verbatim, never rewritten or resolved by us.
    std::os::unix::fs::symlink("../../../../etc/hostname", mount.path("vm1/up.log")).unwrap();
    assert_eq!(
        fs::read_link(env.vm_dir("vm1").join("up.log")).unwrap(),
        Path::new("../../../../etc/hostname")
    );
    // `..` is resolved by the kernel against the mount: it stays inside.
    assert_eq!(
        fs::canonicalize(mount.path("vm1/../vm1/..")).unwrap(),
        fs::canonicalize(mount.path("")).unwrap()
    );
    // A file replaced by a symlink behind the mount, while the kernel still
    // has it cached: vmcryptfs refuses to follow it (O_NOFOLLOW).
    fs::write(mount.path("vm1/swap.vmx"), b"in the VM").unwrap();
    let backing = env.vm_dir("vm1").join("swap.vmx");
    fs::remove_file(&backing).unwrap();
    std::os::unix::fs::symlink(&secret, &backing).unwrap();
    let result = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("vm1/swap.vmx"))
        .and_then(|mut f| f.write_all(b"overwrite"));
    if let Err(err) = &result {
        assert!(
            [libc::ELOOP, libc::ENOENT, libc::ESTALE, libc::EIO].contains(&errno(err)),
            "{err}"
        );
    }
    assert_eq!(
        fs::read(&secret).unwrap(),
        original,
        "nothing was written outside the datastore"
    );

    // A directory replaced by a symlink behind the mount, in a VM home and
    // outside any (where files pass through unencrypted, so following the
    // link would have written the host file).
    fs::write(outside.join("secret.vmx"), b"host copy").unwrap();
    for dir in ["vm1/sub", "isos/sub"] {
        fs::create_dir_all(mount.path(dir)).unwrap();
        let file = mount.path(&format!("{dir}/secret.vmx"));
        fs::write(&file, b"in the datastore").unwrap();
        swap_dir_for_symlink_then_write(&env.datastore.join(dir), &outside, &file);
    }
    drop(mount);
}

/// Replaces backing directory `dir` by a symlink to `outside` while the
/// kernel still has `file` (a file below it, through the mount) cached,
/// then writes `file` once through the mount: refused, and the host file
/// of the same name unchanged. Only one access: a later lookup would see
/// the symlink and the kernel would follow it itself, as on any file
/// system. ELOOP comes from openat2 beneath the root; EIO when the kernel
/// sees a cached node change type; ENOENT/ESTALE when the stale node is
/// noticed first.
fn swap_dir_for_symlink_then_write(dir: &Path, outside: &Path, file: &Path) {
    let host_file = outside.join(file.file_name().unwrap());
    let before = fs::read(&host_file).unwrap();
    fs::rename(dir, dir.with_extension("moved")).unwrap();
    std::os::unix::fs::symlink(outside, dir).unwrap();
    let err = fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|mut f| f.write_all(b"overwrite"))
        .expect_err("a path through a swapped-in symlink");
    assert!(
        [
            libc::ELOOP,
            libc::EXDEV,
            libc::EIO,
            libc::ENOENT,
            libc::ESTALE
        ]
        .contains(&errno(&err)),
        "{}: {err}",
        file.display()
    );
    assert_eq!(
        fs::read(&host_file).unwrap(),
        before,
        "the host file is unchanged"
    );
}

/// An operation through the mount, given the swapped directory and the VM
/// home (descriptors opened through the mount before the swap).
type DirOp = fn(BorrowedFd<'_>, BorrowedFd<'_>) -> rustix::io::Result<()>;

/// A VM subdirectory replaced by a symlink to a host directory behind the
/// mount, while the kernel holds it cached: every metadata operation through
/// it is refused (by vmcryptfs, which does them as `*at` calls on parents
/// opened beneath the root), and the host directory is unchanged.
#[test]
fn metadata_operations_through_a_swapped_directory_never_reach_outside() {
    use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let outside = env.dir.path().join("outside");
    make_swap_targets(&outside);
    fs::write(outside.join("host-only.vmx"), b"never looked up").unwrap();
    let before = describe_tree(&outside);
    let mount = env.mount();
    // Names the kernel has cached (created through the mount just before
    // the swap) reach vmcryptfs's operation itself; fresh names reach its
    // lookup. Each must fail, whichever refuses it.
    let ops: &[(&str, DirOp)] = &[
        ("stat (fresh name)", |dir, _| {
            rustix::fs::statat(dir, "host-only.vmx", AtFlags::SYMLINK_NOFOLLOW).map(drop)
        }),
        ("stat (cached name, forced to ask)", |dir, _| {
            rustix::fs::statx(
                dir,
                "f.vmx",
                AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_FORCE_SYNC,
                rustix::fs::StatxFlags::BASIC_STATS,
            )
            .map(drop)
        }),
        ("chmod", |dir, _| {
            rustix::fs::chmodat(dir, "f.vmx", Mode::from_raw_mode(0o777), AtFlags::empty())
        }),
        ("chmod of a directory", |dir, _| {
            rustix::fs::chmodat(dir, "d", Mode::from_raw_mode(0o777), AtFlags::empty())
        }),
        ("chown to our own ids", |dir, _| {
            let uid = rustix::fs::Uid::from_raw(nix::unistd::getuid().as_raw());
            let gid = rustix::fs::Gid::from_raw(nix::unistd::getgid().as_raw());
            rustix::fs::chownat(
                dir,
                "f.vmx",
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
        }),
        ("utimes", |dir, _| {
            let long_ago = Timespec {
                tv_sec: 1000,
                tv_nsec: 0,
            };
            let times = Timestamps {
                last_access: long_ago,
                last_modification: long_ago,
            };
            rustix::fs::utimensat(dir, "f.vmx", &times, AtFlags::SYMLINK_NOFOLLOW)
        }),
        ("touch (now)", |dir, _| {
            let now = Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            };
            let times = Timestamps {
                last_access: now,
                last_modification: now,
            };
            rustix::fs::utimensat(dir, "f.vmx", &times, AtFlags::empty())
        }),
        ("unlink", |dir, _| {
            rustix::fs::unlinkat(dir, "f.vmx", AtFlags::empty())
        }),
        ("unlink of a symlink", |dir, _| {
            rustix::fs::unlinkat(dir, "l", AtFlags::empty())
        }),
        ("rmdir", |dir, _| {
            rustix::fs::unlinkat(dir, "d", AtFlags::REMOVEDIR)
        }),
        ("mkdir", |dir, _| {
            rustix::fs::mkdirat(dir, "newdir", Mode::from_raw_mode(0o755))
        }),
        ("rename within", |dir, _| {
            rustix::fs::renameat(dir, "f.vmx", dir, "other.vmx")
        }),
        ("rename out into the VM home", |dir, vm| {
            rustix::fs::renameat(dir, "f.vmx", vm, "moved-out.vmx")
        }),
        ("rename in from the VM home", |dir, vm| {
            rustix::fs::renameat(vm, "inside.vmx", dir, "other.vmx")
        }),
        ("rename exchange", |dir, vm| {
            rustix::fs::renameat_with(vm, "inside.vmx", dir, "f.vmx", RenameFlags::EXCHANGE)
        }),
        ("link out into the VM home", |dir, vm| {
            rustix::fs::linkat(dir, "f.vmx", vm, "linked-out.vmx", AtFlags::empty())
        }),
        ("link in from the VM home", |dir, vm| {
            rustix::fs::linkat(vm, "inside.vmx", dir, "linked-in.vmx", AtFlags::empty())
        }),
        ("symlink", |dir, _| {
            rustix::fs::symlinkat("f.vmx", dir, "newlink")
        }),
        ("readlink", |dir, _| {
            rustix::fs::readlinkat(dir, "l", Vec::new()).map(drop)
        }),
        ("readdir of the swapped directory", |dir, _| {
            let fd =
                rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
            rustix::fs::Dir::new(fd)?.next().transpose().map(drop)
        }),
        ("readdir below it", |dir, _| {
            let fd =
                rustix::fs::openat(dir, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
            rustix::fs::Dir::new(fd)?.next().transpose().map(drop)
        }),
    ];
    for (i, (what, op)) in ops.iter().enumerate() {
        // ELOOP comes from vmcryptfs (openat2 beneath the root). EIO means
        // the kernel asked for the directory's attributes after the swap
        // after all (only if more than the 1 s attribute TTL passed since
        // the refresh below, on a very busy machine) and refused by itself,
        // so vmcryptfs's operation was not tested: try again.
        let mut errnos = Vec::new();
        for attempt in 0..3 {
            let sub = format!("vm1/sub{i}-{attempt}");
            let errno = swap_dir_then(&env, &mount, &sub, &outside, *op, what);
            assert_eq!(
                describe_tree(&outside),
                before,
                "{what} changed the host directory"
            );
            assert_eq!(
                fs::read(mount.path("vm1/inside.vmx")).unwrap(),
                b"VM file",
                "{what}"
            );
            for name in ["moved-out.vmx", "linked-out.vmx"] {
                assert!(!env.vm_dir("vm1").join(name).exists(), "{what}");
            }
            errnos.push(errno);
            if errno != libc::EIO {
                break;
            }
        }
        assert!(
            [libc::ELOOP, libc::EXDEV].contains(errnos.last().unwrap()),
            "{what}: errnos {errnos:?}"
        );
    }
    drop(mount);
}

/// Makes `sub` (a VM subdirectory) through the mount, swaps its backing
/// directory for a symlink to `outside` while the kernel holds it cached,
/// and runs `op` through it once; returns the errno it failed with.
fn swap_dir_then(
    env: &TestEnv,
    mount: &common::Mount,
    sub: &str,
    outside: &Path,
    op: DirOp,
    what: &str,
) -> i32 {
    use rustix::fs::{AtFlags, Mode, OFlags};
    // Through the mount: the names the outside directory has, so that the
    // kernel holds them (and the directory) cached when the swap happens,
    // and a file of the VM home to move or link.
    make_swap_targets(&mount.path(sub));
    fs::write(mount.path("vm1/inside.vmx"), b"VM file").unwrap();
    // The operations go through descriptors of the directories opened
    // before the swap: a path through the mount would make the kernel look
    // the directory up again once its 1 s entry TTL is over, see the
    // symlink and follow it itself, straight to the host directory without
    // asking vmcryptfs (as on any file system).
    let open_dir = |path: PathBuf| {
        rustix::fs::open(&path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    };
    let dir = open_dir(mount.path(sub));
    let vm = open_dir(mount.path("vm1"));
    // And fresh attributes of both: creating entries made the kernel drop
    // them, and asking again after the swap would show it a symlink where
    // it has a directory, so it would fail everything with EIO before
    // vmcryptfs's operation is even reached.
    for fd in [&dir, &vm] {
        rustix::fs::statx(
            fd,
            "",
            AtFlags::EMPTY_PATH | AtFlags::STATX_FORCE_SYNC,
            rustix::fs::StatxFlags::BASIC_STATS,
        )
        .unwrap();
    }
    let backing = env.datastore.join(sub);
    fs::rename(&backing, backing.with_extension("moved")).unwrap();
    std::os::unix::fs::symlink(outside, &backing).unwrap();
    match op(dir.as_fd(), vm.as_fd()) {
        Ok(()) => panic!("{what} through the swapped directory succeeded"),
        Err(errno) => errno.raw_os_error(),
    }
}

/// The entries the swapped directory and the host directory both hold: a
/// file, another file, an empty directory, a symlink.
fn make_swap_targets(dir: &Path) {
    fs::create_dir_all(dir.join("d")).unwrap();
    fs::write(dir.join("f.vmx"), b"file").unwrap();
    fs::write(dir.join("other.vmx"), b"other file").unwrap();
    std::os::unix::fs::symlink("f.vmx", dir.join("l")).unwrap();
}

/// Everything an escaped operation could change in `dir`, recursively:
/// names, types, modes, owners, link counts, times (but access), contents
/// and link targets.
fn describe_tree(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut lines = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let content = if meta.is_dir() {
            lines.extend(describe_tree(&path));
            String::new()
        } else if meta.is_symlink() {
            format!("-> {:?}", fs::read_link(&path).unwrap())
        } else {
            format!("{:?}", String::from_utf8_lossy(&fs::read(&path).unwrap()))
        };
        lines.push(format!(
            "{} mode {:o} owner {}:{} links {} mtime {}.{} ctime {}.{} {content}",
            path.display(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.nlink(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        ));
    }
    lines.sort();
    lines
}

#[test]
fn a_full_datastore_gives_enospc_and_damages_nothing() {
    let env = TestEnv::new();
    let small = env.dir.path().join("small");
    let _fs = SmallFs::mount(&small, "4m");
    let vm = small.join("vm1");
    env.run_ok(&["vm", "create", vm.to_str().unwrap()]);
    let mnt = env.extra_mountpoint("small-mnt");
    let mount = {
        let env_small = TestEnv {
            dir: tempfile::tempdir().unwrap(),
            keystore: env.keystore.clone(),
            datastore: small.clone(),
            mnt: mnt.clone(),
        };
        let m = env_small.mount();
        (env_small, m)
    };
    let kept = vec![7u8; 1 << 20];
    fs::write(mnt.join("vm1/kept.nvram"), &kept).unwrap();
    fs::File::open(mnt.join("vm1/kept.nvram"))
        .unwrap()
        .sync_all()
        .unwrap();

    let mut filler = fs::File::create(mnt.join("vm1/filler.log")).unwrap();
    let chunk = vec![1u8; 256 << 10];
    let err = loop {
        if let Err(err) = filler.write_all(&chunk).and_then(|()| filler.sync_all()) {
            break err;
        }
    };
    assert_eq!(errno(&err), libc::ENOSPC);
    drop(filler);
    assert_eq!(
        fs::read(mnt.join("vm1/kept.nvram")).unwrap(),
        kept,
        "existing data intact"
    );
    // A re-key needs room for the new bundle: it fails cleanly or succeeds,
    // and the VM stays usable either way.
    let _ = write_control(&mnt.join("vm1/.control"), "rekey\n");
    fs::remove_file(mnt.join("vm1/filler.log")).unwrap();
    write_control(&mnt.join("vm1/.control"), "rekey\n").unwrap();
    assert_eq!(fs::read(mnt.join("vm1/kept.nvram")).unwrap(), kept);
    drop(mount);
    assert!(
        !fs::read_dir(&vm).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "no temp file left"
    );
}

#[test]
fn a_read_only_datastore_mounts_read_only() {
    let env = TestEnv::new();
    let small = env.dir.path().join("ro");
    let fs_guard = SmallFs::mount(&small, "8m");
    let env_ro = TestEnv {
        dir: tempfile::tempdir().unwrap(),
        keystore: env.keystore.clone(),
        datastore: small.clone(),
        mnt: env.extra_mountpoint("ro-mnt"),
    };
    env_ro.create_vm("vm1", false);
    {
        let mount = env_ro.mount();
        fs::write(mount.path("vm1/vm1.vmx"), b"written before ro").unwrap();
    }
    fs_guard.remount("ro");
    let mount = env_ro.mount();
    assert_eq!(
        fs::read(mount.path("vm1/vm1.vmx")).unwrap(),
        b"written before ro"
    );
    let err = fs::write(mount.path("vm1/new.log"), b"x").unwrap_err();
    assert_eq!(errno(&err), libc::EROFS);
    let err = fs::OpenOptions::new()
        .write(true)
        .open(mount.path("vm1/vm1.vmx"))
        .unwrap_err();
    assert_eq!(errno(&err), libc::EROFS);
    let err = write_control(&mount.path("vm1/.control"), "rekey\n").unwrap_err();
    assert!(
        read_last_result(&mount.path("vm1/.control")).contains("Read-only file system"),
        "{err}"
    );
    drop(mount);
}

fn read_last_result(control: &Path) -> String {
    common::read_control(control)["last-result"].clone()
}

#[test]
fn a_corrupt_or_full_key_store_gets_a_clear_error_and_loses_nothing() {
    // Full: a key store on a tiny tmpfs that is then filled up.
    let env = TestEnv::empty();
    let small = env.dir.path().join("ks-fs");
    let _fs = SmallFs::mount(&small, "2m");
    let ks = small.join("keystore");
    let run = |args: &[&str]| {
        Command::new(common::binary())
            .arg("--keystore")
            .arg(&ks)
            .args(args)
            .env_remove("VMCRYPTFS_KEYSTORE")
            .output()
            .unwrap()
    };
    assert!(run(&["provider", "init"]).status.success());
    let mut filler = fs::File::create(small.join("filler")).unwrap();
    while filler.write_all(&[0u8; 65536]).is_ok() {}
    let _ = filler.sync_all();
    // Rotations either fail with a clear error, or succeed for real (sled
    // may still have room in its own segments): afterwards the store holds
    // exactly version 1 plus the rotations that reported success.
    let mut rotated = 0;
    let mut failure = None;
    for _ in 0..40 {
        let out = run(&["provider", "rotate"]);
        if out.status.success() {
            rotated += 1;
        } else {
            failure = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    if let Some(err) = &failure {
        assert!(
            err.contains(ks.to_str().unwrap()) && err.contains("No space left"),
            "the error names the key store and the cause: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    drop(filler);
    fs::remove_file(small.join("filler")).unwrap();
    let out = run(&["provider", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions = json["providers"][0]["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 1 + rotated, "failure: {failure:?}");
    assert_eq!(versions.last().unwrap()["current"], true);
    eprintln!("full key store: {rotated} rotation(s) succeeded, then: {failure:?}");

    // Corrupt: the KEK database overwritten with garbage.
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let db_dir = env.keystore.join("kek.sled");
    for entry in fs::read_dir(&db_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let len = fs::metadata(&path).unwrap().len().max(64) as usize;
            fs::write(&path, vec![0x5a; len]).unwrap();
        }
    }
    let out = env.run(&["provider", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(env.keystore.to_str().unwrap()),
        "names the key store: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let vm = env.vm_dir("vm1");
    let out = env.run(&["vm", "status", vm.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        vm.join(".vmcryptfs-bundle").exists(),
        "the VM's bundle is untouched"
    );
}
