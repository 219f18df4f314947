//! Who may use a mount: only the mounting user, unless `-o allow_other`;
//! and with it, the kernel checks file modes (`default_permissions` is
//! always on), so another user reads only what the modes allow.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::TestEnv;

/// Runs a command as `nobody` (uid and gid 65534, no groups).
fn as_nobody(program: &str, args: &[&Path]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            program,
        ])
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

fn open_up(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_mount_is_private_unless_allow_other_and_file_modes_apply() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to switch users"
    );
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    // Let nobody reach the mount point at all.
    for dir in [env.dir.path(), &env.mnt, &env.datastore, &env.vm_dir("vm1")] {
        open_up(dir);
    }
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/public.vmx"), b"readable by all").unwrap();
        fs::write(mount.path("vm1/secret.nvram"), b"vTPM state").unwrap();
        fs::set_permissions(
            mount.path("vm1/public.vmx"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        fs::set_permissions(
            mount.path("vm1/secret.nvram"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let out = as_nobody("cat", &[&mount.path("vm1/public.vmx")]);
        assert!(
            !out.status.success(),
            "without allow_other, other users are shut out"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mount = env.mount_with(&["-o", "allow_other"]);
    let out = as_nobody("cat", &[&mount.path("vm1/public.vmx")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"readable by all");
    let out = as_nobody("cat", &[&mount.path("vm1/secret.nvram")]);
    assert!(!out.status.success(), "mode 0600 keeps nobody out");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody("touch", &[&mount.path("vm1/planted.log")]);
    assert!(
        !out.status.success(),
        "the VM home (0755, root) takes no files from nobody"
    );
    assert!(!env.vm_dir("vm1").join("planted.log").exists());
    // The control file is the owner's (0600).
    let out = as_nobody("cat", &[&mount.path("vm1/.control")]);
    assert!(!out.status.success(), "nobody may not read .control");
}

/// Runs a command as uid 65534 with group `gid` as its only group.
fn as_member_of(gid: u32, program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            &format!("--groups={gid}"),
            "--",
            program,
        ])
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

/// Issue 22: status files name VMs, KEKs and providers, so by default only
/// the user the mount runs as reads them, whoever owns the datastore
/// directory; `status_group=GID` lets that group read them, never write
/// commands.
#[test]
fn status_files_are_the_mount_users_and_a_status_group_may_only_read_them() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    for dir in [env.dir.path(), &env.mnt, &env.datastore, &env.vm_dir("vm1")] {
        open_up(dir);
    }
    // The datastore directory belongs to someone else (say, the storage
    // admin): that must not make them the owner of the status files.
    std::os::unix::fs::chown(&env.datastore, Some(4243), Some(4243)).unwrap();
    let files = [
        ".control",
        ".control.json",
        ".stats",
        "vm1/.control",
        "vm1/.control.json",
    ];
    {
        let mount = env.mount_with(&["-o", "allow_other"]);
        for (name, mode) in [
            (".control", 0o600),
            (".control.json", 0o400),
            (".stats", 0o400),
            ("vm1/.control", 0o600),
            ("vm1/.control.json", 0o400),
        ] {
            let meta = fs::metadata(mount.path(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, mode, "{name}");
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{name}");
            let out = as_nobody("cat", &[&mount.path(name)]);
            assert!(!out.status.success(), "nobody read {name}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let mount = env.mount_with(&["-o", "allow_other,status_group=4242"]);
    for name in files {
        let meta = fs::metadata(mount.path(name)).unwrap();
        let expected = if name.ends_with(".control") {
            0o640
        } else {
            0o440
        };
        assert_eq!(meta.permissions().mode() & 0o7777, expected, "{name}");
        assert_eq!((meta.uid(), meta.gid()), (0, 4242), "{name}");
        let path = mount.path(name);
        let out = as_member_of(4242, "cat", &[path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{name}");
        // Another group still reads nothing.
        let out = as_member_of(4241, "cat", &[path.to_str().unwrap()]);
        assert!(!out.status.success(), "group 4241 read {name}");
    }
    let before = fs::read(env.vm_dir("vm1").join(".vmcryptfs-bundle")).unwrap();
    let control = mount.path("vm1/.control");
    let out = as_member_of(
        4242,
        "sh",
        &["-c", &format!("echo rekey > {}", control.display())],
    );
    assert!(!out.status.success(), "the status group wrote a command");
    assert_eq!(
        fs::read(env.vm_dir("vm1").join(".vmcryptfs-bundle")).unwrap(),
        before,
        "no re-key ran"
    );
}
