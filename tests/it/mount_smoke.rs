//! Mount, write, read back, see ciphertext on disk, unmount.

use crate::common;

use std::fs;

use common::TestEnv;

#[test]
fn plaintext_through_mount_ciphertext_on_disk() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let marker = b"MARKER-4b1d-secret-vtpm-seed-0123456789";
    let mut content = Vec::new();
    for i in 0..2000 {
        content.extend_from_slice(marker);
        content.extend_from_slice(format!("{i}\n").as_bytes());
    }
    fs::write(mount.path("vm1/vm1.nvram"), &content).unwrap();
    assert_eq!(fs::read(mount.path("vm1/vm1.nvram")).unwrap(), content);
    assert_eq!(
        fs::metadata(mount.path("vm1/vm1.nvram")).unwrap().len(),
        content.len() as u64
    );
    assert!(
        common::tree_contains(&env.datastore, marker).is_none(),
        "marker leaked"
    );
    let status = mount.unmount();
    assert!(status.success());
    assert!(common::tree_contains(&env.datastore, marker).is_none());
}
