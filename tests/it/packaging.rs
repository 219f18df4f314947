//! Packaging artefacts: the systemd unit passes `systemd-analyze verify`.

use crate::common;

use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/vmcryptfs@.service"
    ))
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/vmcryptfs "),
        "the unit runs the installed binary"
    );
    // Verify the unit as it would run this build: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmcryptfs@ci.service");
    std::fs::write(&path, unit.replace("/usr/bin/vmcryptfs", common::binary())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze not available ({e}): install the systemd package")
        });
    let messages = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && messages.trim().is_empty(),
        "systemd-analyze verify: {messages}"
    );
}
