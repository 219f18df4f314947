//! mount(8) and fstab: `mount -t fuse.vmcryptfs DS MNT -o keystore=...`
//! goes through fuse3's mount.fuse3 helper to `vmcryptfs DS MNT -o ...`.

use crate::common;

use std::process::Command;

use common::{is_mounted, TestEnv, UnmountOnDrop};

/// mount(8) runs mount.fuse3 with a sanitized environment, which finds
/// `vmcryptfs` only in the standard directories (the .deb installs it in
/// /usr/bin). For the test, the binary under test is linked into
/// /usr/local/sbin, unless something else is already there.
struct InstalledLink(Option<&'static str>);

impl InstalledLink {
    fn new() -> Self {
        let link = "/usr/local/sbin/vmcryptfs";
        match std::fs::symlink_metadata(link) {
            Ok(_) => InstalledLink(None),
            Err(_) => {
                std::os::unix::fs::symlink(common::binary(), link).unwrap();
                InstalledLink(Some(link))
            }
        }
    }
}

impl Drop for InstalledLink {
    fn drop(&mut self) {
        if let Some(link) = self.0 {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// Both forms in one test: they share the installed link.
#[test]
fn mount_8_and_fstab_forms_work() {
    let _link = InstalledLink::new();
    mount_t_fuse_vmcryptfs_works();
    an_fstab_line_mounts();
}

fn mount_t_fuse_vmcryptfs_works() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let options = format!(
        "keystore={},allow_other,noatime,_netdev",
        env.keystore.display()
    );
    let out = Command::new("mount")
        .args(["-t", "fuse.vmcryptfs"])
        .arg(&env.datastore)
        .arg(&env.mnt)
        .args(["-o", &options])
        .output()
        .unwrap();
    let _guard = UnmountOnDrop(env.mnt.clone());
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&env.mnt));
    std::fs::write(env.mnt.join("vm1/vm1.vmx"), b"via mount(8)").unwrap();
    assert_eq!(
        std::fs::read(env.mnt.join("vm1/vm1.vmx")).unwrap(),
        b"via mount(8)"
    );
    let status = Command::new("umount").arg(&env.mnt).status().unwrap();
    assert!(status.success());
}

fn an_fstab_line_mounts() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let fstab = env.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.vmcryptfs noauto,x-systemd.automount,_netdev,keystore={},allow_other 0 0\n",
            env.datastore.display(),
            env.mnt.display(),
            env.keystore.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(&env.mnt)
        .output()
        .unwrap();
    let _guard = UnmountOnDrop(env.mnt.clone());
    assert!(
        out.status.success(),
        "mount --fstab failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&env.mnt));
    std::fs::write(env.mnt.join("vm1/vm1.vmx"), b"config").unwrap();
    assert_eq!(
        common::read_control(&env.mnt.join("vm1/.control"))["state"],
        "unlocked"
    );
}
