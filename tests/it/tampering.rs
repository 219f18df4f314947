//! Tampering with the datastore while unmounted, one case per attack, in
//! both content formats. Each is either detected (EIO or ENOKEY on the
//! mount, with a log line naming the file and block or the VM) or listed as
//! undetectable in docs/DESIGN.md's threat model, and checked here to
//! behave as documented.

use crate::common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{
    flip_byte, patch, read_block, read_control, stored_block_pieces, write_block, TestEnv,
};

const FORMATS: [u16; 2] = [1, 2];

/// An environment with vm1 and vm2 in content format `format`, each
/// holding `a.bin` and `b.bin` of three full blocks with distinct content.
fn setup(format: u16) -> TestEnv {
    let env = TestEnv::new();
    env.create_vm_in_format("vm1", false, format);
    env.create_vm_in_format("vm2", false, format);
    let mount = env.mount();
    for vm in ["vm1", "vm2"] {
        for (name, byte) in [("a.bin", 0xa1u8), ("b.bin", 0xb2)] {
            fs::write(mount.path(&format!("{vm}/{name}")), vec![byte; 3 * 4096]).unwrap();
        }
    }
    assert!(mount.unmount().success());
    env
}

/// Backing offset where block `n`'s data starts (its nonce in format 1, its
/// data page in format 2).
fn block_off(format: u16, n: u64) -> u64 {
    stored_block_pieces(format, n)[0].0
}

/// Reads plaintext block `n` through the mount: Ok(bytes) or the errno.
fn read_plain_block(path: &Path, n: u64) -> Result<Vec<u8>, i32> {
    let file = fs::File::open(path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut buf = vec![0u8; 4096];
    file.read_exact_at(&mut buf, n * 4096)
        .map(|()| buf)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

#[test]
fn flipped_bit_and_modified_header_are_detected_and_logged() {
    for format in FORMATS {
        flipped_bit_and_modified_header_are_detected_and_logged_in(format);
    }
}

fn flipped_bit_and_modified_header_are_detected_and_logged_in(format: u16) {
    let env = setup(format);
    let a = env.vm_dir("vm1").join("a.bin");
    let b = env.vm_dir("vm1").join("b.bin");
    flip_byte(&a, block_off(format, 2) + 77);
    // The last byte of block 1's stored pieces: its tag (in the slot, in
    // format 2).
    let (offset, len) = *stored_block_pieces(format, 1).last().unwrap();
    flip_byte(&a, offset + len - 1);
    flip_byte(&b, 20); // inside the header's file id
    let mount = env.mount();
    assert_eq!(
        read_plain_block(&mount.path("vm1/a.bin"), 0).unwrap(),
        vec![0xa1; 4096]
    );
    for n in [1, 2] {
        assert_eq!(
            read_plain_block(&mount.path("vm1/a.bin"), n),
            Err(libc::EIO),
            "format {format} block {n}"
        );
    }
    assert_eq!(
        read_plain_block(&mount.path("vm1/b.bin"), 0),
        Err(libc::EIO)
    );
    let log = mount.log_text();
    assert!(
        log.contains("vm1/a.bin") && log.contains("block 2"),
        "{log}"
    );
    assert!(log.contains("vm1/b.bin") && log.contains("header"), "{log}");
}

#[test]
fn truncation_inside_a_block_is_detected_at_a_boundary_it_is_not() {
    for format in FORMATS {
        truncation_inside_a_block_is_detected_at_a_boundary_it_is_not_in(format);
    }
}

fn truncation_inside_a_block_is_detected_at_a_boundary_it_is_not_in(format: u16) {
    let env = setup(format);
    let a = env.vm_dir("vm1").join("a.bin");
    let b = env.vm_dir("vm1").join("b.bin");
    fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .unwrap()
        .set_len(block_off(format, 2) + 100)
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(block_off(format, 2))
        .unwrap();
    let mount = env.mount();
    // Inside a block: the shortened block fails authentication.
    assert_eq!(
        read_plain_block(&mount.path("vm1/a.bin"), 0).unwrap(),
        vec![0xa1; 4096]
    );
    let err = fs::read(mount.path("vm1/a.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // At a block boundary: undetectable (documented); the file is shorter.
    assert_eq!(
        fs::read(mount.path("vm1/b.bin")).unwrap(),
        vec![0xb2; 2 * 4096]
    );
}

#[test]
fn zeroed_block_reads_as_a_hole_as_documented() {
    for format in FORMATS {
        let env = setup(format);
        let a = env.vm_dir("vm1").join("a.bin");
        let len = read_block(&a, format, 1).len();
        write_block(&a, format, 1, &vec![0u8; len]);
        // Zeroing only the data page is not a hole: the slot still holds a
        // nonce and tag.
        if format == 2 {
            patch(&a, block_off(format, 0), &[0u8; 4096]);
        }
        let mount = env.mount();
        // Undetectable by design (a hole): documented in the threat model.
        assert_eq!(
            read_plain_block(&mount.path("vm1/a.bin"), 1).unwrap(),
            vec![0u8; 4096]
        );
        if format == 2 {
            assert_eq!(
                read_plain_block(&mount.path("vm1/a.bin"), 0),
                Err(libc::EIO)
            );
        }
    }
}

#[test]
fn blocks_swapped_within_and_between_files_are_detected() {
    for format in FORMATS {
        let env = setup(format);
        let a = env.vm_dir("vm1").join("a.bin");
        let b = env.vm_dir("vm1").join("b.bin");
        let (a0, a1, b2) = (
            read_block(&a, format, 0),
            read_block(&a, format, 1),
            read_block(&b, format, 2),
        );
        write_block(&a, format, 0, &a1);
        write_block(&a, format, 1, &a0);
        write_block(&a, format, 2, &b2);
        let mount = env.mount();
        for n in 0..3 {
            assert_eq!(
                read_plain_block(&mount.path("vm1/a.bin"), n),
                Err(libc::EIO),
                "format {format} block {n}"
            );
        }
    }
}

/// Format 2 keeps a block's data page and slot apart; moving either one
/// alone to another block is detected too.
#[test]
fn a_data_page_or_slot_moved_alone_is_detected() {
    let env = setup(2);
    let a = env.vm_dir("vm1").join("a.bin");
    let pieces = |n| stored_block_pieces(2, n);
    let read = |(offset, len): (u64, u64)| {
        let mut buf = vec![0u8; len as usize];
        fs::File::open(&a)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    };
    let (data0, slot1) = (read(pieces(0)[0]), read(pieces(1)[1]));
    patch(&a, pieces(2)[0].0, &data0); // block 0's data page into block 2
    patch(&a, pieces(0)[1].0, &slot1); // block 1's slot into block 0
    let mount = env.mount();
    assert_eq!(
        read_plain_block(&mount.path("vm1/a.bin"), 0),
        Err(libc::EIO)
    );
    assert_eq!(
        read_plain_block(&mount.path("vm1/a.bin"), 1).unwrap(),
        vec![0xa1; 4096]
    );
    assert_eq!(
        read_plain_block(&mount.path("vm1/a.bin"), 2),
        Err(libc::EIO)
    );
}

/// A header of the other content format (re-MACed by nobody: the version
/// byte is covered by the header MAC) and a bundle whose format flag was
/// flipped (covered by the DEK wrap AAD) are both refused.
#[test]
fn a_changed_content_format_in_header_or_bundle_is_detected() {
    let env = setup(2);
    let a = env.vm_dir("vm1").join("a.bin");
    patch(&a, 5, &[1]); // header version 2 -> 1
    let bundle = env.vm_dir("vm2").join(".vmcryptfs-bundle");
    let mut bytes = fs::read(&bundle).unwrap();
    bytes[11] ^= 0x02; // flags: page_aligned
    fs::write(&bundle, &bytes).unwrap();
    let mount = env.mount();
    assert_eq!(
        read_plain_block(&mount.path("vm1/a.bin"), 0),
        Err(libc::EIO)
    );
    let err = read_plain_block(&mount.path("vm2/a.bin"), 0).unwrap_err();
    assert_eq!(
        err,
        libc::ENOKEY,
        "a bundle that does not unwrap locks its VM"
    );
    let log = mount.log_text();
    assert!(log.contains("vm1/a.bin") && log.contains("header"), "{log}");
}

#[test]
fn files_swapped_between_vms_are_detected_within_a_vm_they_are_not() {
    let env = setup(common::DEFAULT_CONTENT_FORMAT);
    let a1 = env.vm_dir("vm1").join("a.bin");
    let a2 = env.vm_dir("vm2").join("a.bin");
    let b1 = env.vm_dir("vm1").join("b.bin");
    let (c1, c2) = (fs::read(&a1).unwrap(), fs::read(&a2).unwrap());
    fs::write(&a1, &c2).unwrap();
    fs::write(&a2, &c1).unwrap();
    // Within one VM: rename a.bin and b.bin into each other's place.
    let tmp = env.vm_dir("vm1").join("tmp.bin");
    fs::rename(&b1, &tmp).unwrap();
    let mount = env.mount();
    assert_eq!(
        read_plain_block(&mount.path("vm1/a.bin"), 0),
        Err(libc::EIO)
    );
    assert_eq!(
        read_plain_block(&mount.path("vm2/a.bin"), 0),
        Err(libc::EIO)
    );
    // Renamed within the VM: reads fine under the new name (names are not
    // bound to content; documented).
    assert_eq!(
        read_plain_block(&mount.path("vm1/tmp.bin"), 0).unwrap(),
        vec![0xb2; 4096]
    );
}

#[test]
fn a_bundle_replaced_by_another_vms_bundle_fails_every_file() {
    let env = setup(common::DEFAULT_CONTENT_FORMAT);
    fs::copy(
        env.vm_dir("vm2").join(".vmcryptfs-bundle"),
        env.vm_dir("vm1").join(".vmcryptfs-bundle"),
    )
    .unwrap();
    let mount = env.mount();
    // The bundle itself is valid, but it is vm2's: vm1's files do not open.
    let err = read_plain_block(&mount.path("vm1/a.bin"), 0).unwrap_err();
    assert_eq!(err, libc::EIO, "files are bound to their VM's id and DEK");
    assert_eq!(
        read_plain_block(&mount.path("vm2/a.bin"), 0).unwrap(),
        vec![0xa1; 4096]
    );
}

#[test]
fn an_old_bundle_put_back_after_its_kek_version_was_destroyed_stays_locked() {
    let env = setup(common::DEFAULT_CONTENT_FORMAT);
    let bundle = env.vm_dir("vm1").join(".vmcryptfs-bundle");
    let old = fs::read(&bundle).unwrap();
    env.run_ok(&["provider", "rotate"]);
    env.run_ok(&["rekey", "--all", env.datastore.to_str().unwrap()]);
    env.run_ok(&["provider", "destroy", "1"]);
    fs::write(&bundle, &old).unwrap();
    let mount = env.mount();
    let err = fs::read(mount.path("vm1/a.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY));
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["state"], "locked");
    assert!(
        status["locked-reason"].contains("destroyed"),
        "{}",
        status["locked-reason"]
    );
}
