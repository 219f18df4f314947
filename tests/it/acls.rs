//! POSIX ACLs through the mount behave as on the backing file system: the
//! kernel enforces them on the mount's inodes (FUSE_POSIX_ACL), a parent's
//! default ACL is inherited and overrides the caller's umask, and the
//! umask applies where there is none. Each case runs through the mount,
//! in an encrypted VM home (a VM-home file and a pass-through disk) and a
//! plain directory, and on a reference directory of the backing ext4; the
//! outcomes must match call for call.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_checked, Mount, TestEnv};

/// A key store with VM home `vm1` (encrypted, disks pass through) and a
/// plain directory, mounted with allow_other, and a reference directory on
/// the backing file system; everything open to every user.
fn mounted_for_everyone() -> (TestEnv, Mount, PathBuf) {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    std::fs::create_dir(env.datastore.join("plain")).unwrap();
    let reference = env.dir.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    let mount = env.mount_with(&["-o", "allow_other"]);
    common::open_up(&[
        env.dir.path(),
        &env.mnt,
        &env.datastore,
        &reference,
        &env.vm_dir("vm1"),
        &env.datastore.join("plain"),
    ]);
    (env, mount, reference)
}

/// The places every case runs in: the reference directory first, then
/// the mount's encrypted VM home and plain directory.
fn places(mount: &Mount, reference: &Path) -> Vec<PathBuf> {
    vec![reference.to_owned(), mount.path("vm1"), mount.path("plain")]
}

fn setfacl(args: &[&str], path: &Path) {
    run_checked(Command::new("setfacl").args(args).arg(path));
}

/// `getfacl` of `path` without its `# file:` header, and `stat`'s mode.
fn acl_and_mode(path: &Path) -> String {
    let out = run_checked(
        Command::new("getfacl")
            .args(["--absolute-names", "--omit-header"])
            .arg(path),
    );
    let out2 = run_checked(Command::new("stat").args(["-c", "%A"]).arg(path));
    format!(
        "{}mode {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out2.stdout).trim()
    )
}

/// Whether `nobody` can read `path`, and whether it can append to it.
fn nobody_access(path: &Path) -> (bool, bool) {
    let reads = common::as_nobody("cat")
        .arg(path)
        .output()
        .unwrap()
        .status
        .success();
    let writes = common::as_nobody("sh")
        .arg("-c")
        .arg("printf x >> \"$1\"")
        .arg("sh")
        .arg(path)
        .output()
        .unwrap()
        .status
        .success();
    (reads, writes)
}

#[test]
fn acls_grant_and_deny_access_as_on_the_backing_file_system() {
    let (_env, mount, reference) = mounted_for_everyone();
    // A VM-home file, and a disk that passes through, in the VM home.
    let files: Vec<PathBuf> = places(&mount, &reference)
        .iter()
        .flat_map(|dir| [dir.join("f.vmx"), dir.join("disk.vmdk")])
        .collect();
    for file in &files {
        std::fs::write(file, b"secret").unwrap();
    }
    type Step<'a> = (&'a str, &'a dyn Fn(&Path), (bool, bool));
    let chmod = |mode: &'static str| {
        move |file: &Path| {
            run_checked(Command::new("chmod").arg(mode).arg(file));
        }
    };
    let steps: [Step; 6] = [
        (
            "mode 640, no ACL: nobody is other",
            &chmod("640"),
            (false, false),
        ),
        (
            "a named-user entry grants read",
            &|f| setfacl(&["-m", "u:nobody:r"], f),
            (true, false),
        ),
        (
            "and read-write",
            &|f| setfacl(&["-m", "u:nobody:rw"], f),
            (true, true),
        ),
        ("chmod 600 narrows the mask", &chmod("600"), (false, false)),
        (
            "chmod 664, then an entry denying nobody",
            &|f: &Path| {
                chmod("664")(f);
                setfacl(&["-m", "u:nobody:-"], f);
            },
            (false, false),
        ),
        (
            "the ACL removed: other bits again",
            &|f| setfacl(&["-b"], f),
            (true, false),
        ),
    ];
    for (what, step, expected) in steps {
        let mut seen = Vec::new();
        for file in &files {
            step(file);
            seen.push((nobody_access(file), acl_and_mode(file)));
        }
        assert_eq!(seen[0].0, expected, "{what}: the reference");
        for (file, outcome) in files.iter().zip(&seen).skip(1) {
            assert_eq!(
                outcome,
                &seen[0],
                "{what}: {} differs from the backing file system",
                file.display()
            );
        }
    }
}

#[test]
fn a_default_acl_is_inherited_and_overrides_the_umask_which_applies_elsewhere() {
    let (_env, mount, reference) = mounted_for_everyone();
    let mut outcomes = Vec::new();
    for dir in places(&mount, &reference) {
        let inheriting = dir.join("inheriting");
        std::fs::create_dir(&inheriting).unwrap();
        setfacl(
            &["-d", "-m", "u::rwx,g::r-x,o::---,u:nobody:rw-"],
            &inheriting,
        );
        // The same creations under umask 077, inside the directory with a
        // default ACL (which overrides the umask) and beside it (where the
        // umask applies).
        let script = "umask 077; for d in \"$1\" \"$2\"; do \
                      touch \"$d/file.vmx\" && mkdir \"$d/sub\" && mkfifo \"$d/fifo\" \
                      && : > \"$d/disk.vmdk\" || exit 1; done";
        run_checked(
            Command::new("sh")
                .args(["-c", script, "sh"])
                .arg(&inheriting)
                .arg(&dir),
        );
        let mut outcome = Vec::new();
        for base in [&inheriting, &dir] {
            for name in ["file.vmx", "sub", "fifo", "disk.vmdk"] {
                outcome.push(format!("{name}: {}", acl_and_mode(&base.join(name))));
            }
        }
        // And nobody, through the inherited entry, can write a new file.
        outcome.push(format!(
            "nobody: {:?}",
            nobody_access(&inheriting.join("file.vmx"))
        ));
        outcomes.push((dir, outcome));
    }
    let (_, expected) = &outcomes[0];
    let file_acl = &expected[0];
    assert!(
        file_acl.contains("user:nobody:rw-"),
        "inherited: {file_acl}"
    );
    assert!(
        expected[4].ends_with("mode -rw-------"),
        "umask 077 beside: {}",
        expected[4]
    );
    assert!(
        expected.last().unwrap().ends_with("(true, true)"),
        "{expected:?}"
    );
    for (dir, outcome) in &outcomes[1..] {
        for (got, want) in outcome.iter().zip(expected) {
            assert_eq!(got, want, "in {}", dir.display());
        }
    }
}
