//! The conversion commands refuse while any file of the VM is open through
//! the mount (issue 22, item 4): pass-through disks (a `.vmdk` of a VM
//! without `encrypt-disks`) as well as encrypted files, each held open by
//! a child process. The refusal names the VM home and the count; once the
//! file is closed the same command succeeds, and the content is intact.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{read_control, TestEnv};

/// A child process holding `path` open for reading until killed.
fn hold_open(path: &Path) -> Child {
    Command::new("sh")
        .args(["-c", "exec 3<\"$0\" && exec sleep 60"])
        .arg(path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the VM's `.control` counts `count` open handles.
fn wait_for_handles(control: &Path, count: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_control(control)["open-handles"] != count {
        assert!(
            Instant::now() < deadline,
            "open-handles never reached {count}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_conversion_is_refused_while_a_file_of_the_vm_is_open() {
    let env = TestEnv::new();
    let vm = env.create_vm("vm1", false);
    let vm_arg = vm.to_str().unwrap();
    let ds = env.datastore.to_str().unwrap();
    let mount = env.mount();
    let disk = mount.path("vm1/vm1-flat.vmdk");
    let vmx = mount.path("vm1/vm1.vmx");
    let control = mount.path("vm1/.control");
    let vm_in_mount = mount.path("vm1").display().to_string();
    let disk_bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(&disk, &disk_bytes).unwrap();
    fs::write(&vmx, b"displayName = \"vm1\"\n").unwrap();
    // The disk is stored as is: a pass-through file.
    assert_eq!(fs::read(vm.join("vm1-flat.vmdk")).unwrap(), disk_bytes);
    wait_for_handles(&control, "0");

    let operations: [&[&str]; 5] = [
        &["vm", "encrypt-disks", vm_arg],
        &["vm", "decrypt-disks", vm_arg],
        &["vm", "set-disk-pattern", vm_arg, "*.vmdk,*.qcow2"],
        &["vm", "convert-format", vm_arg, "--content-format", "1"],
        &["rekey", "--deep", ds, "vm1"],
    ];
    for args in operations {
        let disk_encrypted = read_control(&control)["encrypt-disks"] == "yes";
        for held in [&disk, &vmx] {
            let mut holder = hold_open(held);
            wait_for_handles(&control, "1");
            let out = env.run(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{args:?} ran while {held:?} was open"
            );
            assert!(
                stderr.contains(&format!(
                    "1 file handle(s) of VM home {vm_in_mount} are open"
                )),
                "{args:?} (disk encrypted: {disk_encrypted}), {held:?} open: {stderr}"
            );
            holder.kill().unwrap();
            holder.wait().unwrap();
        }
        env.run_ok(args);
        assert_eq!(fs::read(&disk).unwrap(), disk_bytes, "{args:?}");
    }
    // The last pass-through hold was of a plain disk again (after
    // decrypt-disks), and the VM keeps working.
    assert_eq!(fs::read(vm.join("vm1-flat.vmdk")).unwrap(), disk_bytes);
    assert_eq!(fs::read(&vmx).unwrap(), b"displayName = \"vm1\"\n");
    drop(mount);
}
