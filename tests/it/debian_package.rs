//! The Debian package: `cargo deb` builds it from the release binary, it
//! holds the binary, man pages, completions and unit and depends on fuse3,
//! and once installed with dpkg, mount(8) mounts through it
//! (`mount -t fuse.vmcryptfs`, the fstab syntax). The package is removed
//! again at the end, even if the test fails.
//!
//! Needs root (dpkg) and cargo-deb (`cargo install cargo-deb`; scripts/test
//! installs it).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{is_mounted, TestEnv, UnmountOnDrop};

const PACKAGE: &str = "vmcryptfs";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the package when dropped, if this test installed it.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-r", PACKAGE]).output();
    }
}

fn build_deb(out_dir: &Path) -> PathBuf {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let version = Command::new("cargo").args(["deb", "--version"]).output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: install it with `cargo install cargo-deb --locked` (scripts/test does)"
    );
    // --no-build: the binary under test (target/release) is what we package.
    let out = run(Command::new("cargo")
        .current_dir(manifest_dir)
        .args(["deb", "--no-build", "--no-strip", "--output"])
        .arg(out_dir));
    PathBuf::from(
        out.lines()
            .last()
            .expect("cargo deb prints the .deb path")
            .trim(),
    )
}

#[test]
fn the_deb_installs_and_mounts_through_fstab_syntax() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "installing a .deb needs root"
    );
    let already = Command::new("dpkg")
        .args(["-s", PACKAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        !already,
        "a {PACKAGE} package is already installed here; remove it first"
    );

    let work = tempfile::tempdir().unwrap();
    let deb = build_deb(work.path());
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/vmcryptfs",
        "./usr/share/man/man1/vmcryptfs.1",
        "./usr/share/man/man1/vmcryptfs-provider-add-kmip.1",
        "./usr/share/bash-completion/completions/vmcryptfs",
        "./usr/share/zsh/vendor-completions/_vmcryptfs",
        "./usr/share/fish/vendor_completions.d/vmcryptfs.fish",
        "./lib/systemd/system/vmcryptfs@.service",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package:\n{contents}"
        );
    }
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    assert!(depends.contains("fuse3"), "Depends: {depends}");
    // dpkg-shlibdeps must have turned the binary's shared libraries into
    // dependencies, or the package installs and then fails to start on a
    // host without them. AWS-LC (content blocks) is linked statically, so
    // no crypto library is among them.
    assert!(depends.contains("libc6"), "Depends: {depends}");
    assert!(!depends.contains("libssl"), "Depends: {depends}");

    run(Command::new("dpkg").arg("-i").arg(&deb));
    let _installed = Installed;
    assert!(Path::new("/usr/bin/vmcryptfs").exists());
    let version = run(Command::new("/usr/bin/vmcryptfs").arg("--version"));
    assert!(version.starts_with("vmcryptfs "), "{version}");

    // fstab syntax through mount(8) and fuse3's helper, with the installed
    // binary (mount.fuse3 searches only the standard directories).
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let options = format!("keystore={},_netdev,noatime", env.keystore.display());
    let _guard = UnmountOnDrop(env.mnt.clone());
    run(Command::new("mount")
        .args(["-t", "fuse.vmcryptfs"])
        .arg(&env.datastore)
        .arg(&env.mnt)
        .args(["-o", &options]));
    assert!(is_mounted(&env.mnt));
    std::fs::write(env.mnt.join("vm1/vm1.vmx"), b"installed from the .deb").unwrap();
    assert_eq!(
        std::fs::read(env.mnt.join("vm1/vm1.vmx")).unwrap(),
        b"installed from the .deb"
    );
    run(Command::new("umount").arg(&env.mnt));
    assert!(!is_mounted(&env.mnt));
    let on_disk = std::fs::read(env.vm_dir("vm1").join("vm1.vmx")).unwrap();
    assert!(
        !on_disk.windows(9).any(|w| w == b"installed"),
        "ciphertext on disk"
    );
}
