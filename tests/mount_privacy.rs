//! Who may use a mount: only the mounting user, unless `-o allow_other`;
//! and with it, the kernel checks file modes (`default_permissions` is
//! always on), so another user reads only what the modes allow.

mod common;

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
