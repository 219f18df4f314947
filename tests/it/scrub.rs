//! Scrub on a mounted datastore (`echo scrub > MNT/VM/.control`,
//! `scrub-all` at the root), on real mounts: it finds injected damage
//! with its range, reports nothing while the VM writes the same files,
//! holds its rate limit, and killing the mount during one loses nothing.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    flip_byte, read_control, stored_block_pieces, vm_counter, write_control, Mount, TestEnv,
};
use serde_json::Value;

/// Plaintext of `seed`, `len` bytes long.
fn content(seed: u8, len: u64) -> Vec<u8> {
    (0..len).map(|i| seed ^ (i % 251) as u8).collect()
}

/// Waits until the scrub of `vm` is done (neither queued nor running) and
/// returns its `.control`.
fn wait_scrubbed(
    mount: &Mount,
    vm: &str,
    limit: Duration,
) -> std::collections::HashMap<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let control = read_control(&mount.path(&format!("{vm}/.control")));
        let state = control["scrub"].clone();
        if state != "queued" && state != "running" {
            return control;
        }
        assert!(
            Instant::now() < deadline,
            "scrub of {vm} not done within {limit:?}: {control:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrub_json(mount: &Mount, vm: &str) -> Value {
    let text = fs::read(mount.path(&format!("{vm}/.control.json"))).unwrap();
    let doc: Value = serde_json::from_slice(&text).unwrap();
    doc["scrub"].clone()
}

/// A flipped bit in one block of a file is found by a scrub, reported
/// with exactly that block's plaintext range in `.control` and
/// `.control.json`, counted in `.stats` and logged once (a second scrub
/// finding the same damage does not log it again); the other VM, scrubbed
/// by `scrub-all`, is clean. Both content formats.
#[test]
fn a_flipped_bit_is_found_with_its_range() {
    for format in [1u16, 2] {
        let env = TestEnv::new();
        env.create_vm_in_format("vm1", false, format);
        env.create_vm_in_format("vm2", false, format);
        let mount = env.mount();
        fs::write(mount.path("vm1/a.bin"), content(0xa1, 3 * 4096 + 100)).unwrap();
        fs::write(mount.path("vm1/b.bin"), content(0xb2, 2 * 4096)).unwrap();
        fs::write(mount.path("vm2/a.bin"), content(0xc3, 4096)).unwrap();
        assert_eq!(read_control(&mount.path("vm1/.control"))["scrub"], "never");
        let (offset, _) = stored_block_pieces(format, 1)[0];
        flip_byte(&env.vm_dir("vm1").join("a.bin"), offset + 10);

        write_control(&mount.path(".control"), "scrub-all rate=unlimited\n").unwrap();
        let control = wait_scrubbed(&mount, "vm1", Duration::from_secs(30));
        assert_eq!(control["scrub"], "damaged", "format {format}: {control:?}");
        assert_eq!(
            control["scrub-damage"], "a.bin: damaged 4096..8192",
            "{control:?}"
        );
        assert_eq!(control["scrub-rate"], "unlimited");
        assert!(
            control["scrub-progress"].starts_with("20580 of 20580 bytes, 2 of 2 files"),
            "{control:?}"
        );
        let json = scrub_json(&mount, "vm1");
        assert_eq!(json["state"], "damaged");
        let files = json["report"]["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{json}");
        assert_eq!(files[0]["path"], "a.bin");
        assert_eq!(files[0]["damaged"], serde_json::json!([[4096, 8192]]));
        let vm2 = wait_scrubbed(&mount, "vm2", Duration::from_secs(30));
        assert_eq!(vm2["scrub"], "clean", "{vm2:?}");
        assert_eq!(vm2["scrub-damage"], "-");
        assert_eq!(
            vm_counter(&mount.mnt, "scrub_damaged_files_total", "vm1"),
            1
        );
        assert_eq!(vm_counter(&mount.mnt, "scrubs_total", "vm1"), 1);
        assert_eq!(vm_counter(&mount.mnt, "scrub_bytes_total", "vm1"), 20580);
        let root = fs::read_to_string(mount.path(".control")).unwrap();
        assert!(root.contains("scrub=damaged"), "{root}");

        // Again, through the VM's own .control: the same damage is not
        // logged twice.
        write_control(&mount.path("vm1/.control"), "scrub\n").unwrap();
        let again = wait_scrubbed(&mount, "vm1", Duration::from_secs(30));
        assert_eq!(again["scrub"], "damaged");
        assert_eq!(vm_counter(&mount.mnt, "scrubs_total", "vm1"), 2);
        let log = mount.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("is damaged")).collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains("file a.bin is damaged: damaged 4096..8192"),
            "{}",
            lines[0]
        );
        // A scrub reports; it never changes what reads return.
        assert!(fs::read(mount.path("vm1/a.bin")).is_err());
        assert_eq!(
            fs::read(mount.path("vm1/b.bin")).unwrap(),
            content(0xb2, 2 * 4096)
        );
    }
}

/// A bad command argument is refused (EINVAL) and says why; a scrub of a
/// VM home already being scrubbed is refused (EIO) and says so.
#[test]
fn bad_or_doubled_scrubs_are_refused_with_a_reason() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount_with(&["-o", "scrub_rate=1M"]);
    fs::write(mount.path("vm1/big.bin"), content(1, 8 << 20)).unwrap();
    let control = mount.path("vm1/.control");
    let err = write_control(&control, "scrub rate=fast\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(read_control(&control)["last-result"].contains("optional rate=RATE"));
    write_control(&control, "scrub\n").unwrap();
    let err = write_control(&control, "scrub\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let status = read_control(&control);
    assert!(
        status["last-result"].contains("already queued or running"),
        "{status:?}"
    );
    assert_eq!(status["scrub-rate"], "1M", "the mount option's rate");
}

/// The rate limit holds: a scrub of 24 MiB at `scrub_rate=8M` (the mount
/// option) takes about 3 s, not much less and not much more. Its bytes
/// a second, measured from the command to the end, are within bounds that
/// leave room for a loaded machine.
#[test]
fn the_rate_limit_holds() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount_with(&["-o", "scrub_rate=8M"]);
    const SIZE: u64 = 24 << 20;
    fs::write(mount.path("vm1/disk-flat.vmdk"), content(7, SIZE)).unwrap();
    let start = Instant::now();
    write_control(&mount.path("vm1/.control"), "scrub\n").unwrap();
    let control = wait_scrubbed(&mount, "vm1", Duration::from_secs(60));
    let took = start.elapsed();
    assert_eq!(control["scrub"], "clean", "{control:?}");
    let rate = SIZE as f64 / took.as_secs_f64() / (1 << 20) as f64;
    eprintln!("scrub of 24 MiB at 8M: {took:?}, {rate:.1} MiB/s");
    assert!(rate <= 8.0 * 1.05, "faster than the limit: {rate:.1} MiB/s");
    assert!(
        rate >= 8.0 / 3.0,
        "far slower than the limit: {rate:.1} MiB/s"
    );
}

/// Holes are neither read nor paced: a 256 MiB sparse disk holding 1 MiB
/// scrubs at `rate=4M` in well under the minute its size would take, its
/// progress counts every byte, and `.stats` only the bytes read.
#[test]
fn holes_are_not_paced() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let disk = fs::File::create(mount.path("vm1/sparse-flat.vmdk")).unwrap();
    disk.set_len(256 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&disk, &content(9, 1 << 20), 100 << 20).unwrap();
    drop(disk);
    let start = Instant::now();
    write_control(&mount.path("vm1/.control"), "scrub rate=4M\n").unwrap();
    let control = wait_scrubbed(&mount, "vm1", Duration::from_secs(60));
    assert_eq!(control["scrub"], "clean", "{control:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        control["scrub-progress"],
        "268435456 of 268435456 bytes, 1 of 1 files"
    );
    assert_eq!(vm_counter(&mount.mnt, "scrub_bytes_total", "vm1"), 1 << 20);
}

/// Scrubs while fio writes the same encrypted disk (random writes of
/// unaligned sizes, so requests share blocks and rewrite them in place,
/// 16 in flight, direct I/O, verified when written): every scrub that
/// finishes is clean, fio verifies every block, and the scrubs did read
/// the disk while it was written.
#[test]
fn a_scrub_under_fio_reports_nothing_and_fio_verifies() {
    assert!(
        Command::new("fio").arg("--version").output().is_ok(),
        "fio not found: install fio (apt-get install fio)"
    );
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let disk = mount.path("vm1/busy-flat.vmdk");
    let mut fio = Command::new("fio")
        .args([
            "--name=busy",
            "--filesize=16M",
            "--rw=randwrite",
            "--bsrange=512-64k",
            "--bs_unaligned",
            "--ioengine=libaio",
            "--iodepth=16",
            "--direct=1",
            "--loops=6",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=terse",
        ])
        .arg(format!("--filename={}", disk.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let control = mount.path("vm1/.control");
    let mut scrubs = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while fio.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "fio did not finish");
        if !disk.exists() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        write_control(&control, "scrub rate=unlimited\n").unwrap();
        let status = wait_scrubbed(&mount, "vm1", Duration::from_secs(60));
        assert_eq!(
            status["scrub"], "clean",
            "a scrub under fio reported: {status:?}"
        );
        scrubs += 1;
    }
    let out = fio.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fio failed\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(scrubs >= 3, "only {scrubs} scrub(s) ran while fio wrote");
    assert!(vm_counter(&mount.mnt, "scrub_bytes_total", "vm1") > 0);
    assert!(
        !mount.log_text().contains("is damaged"),
        "{}",
        mount.log_text()
    );
    // And the disk is clean once fio is done.
    write_control(&control, "scrub rate=unlimited\n").unwrap();
    assert_eq!(
        wait_scrubbed(&mount, "vm1", Duration::from_secs(60))["scrub"],
        "clean"
    );
}

/// SIGKILL of the mount during a scrub loses nothing: after a remount
/// every file reads back as written, and fsck of the unmounted datastore
/// is clean.
#[test]
fn sigkill_during_a_scrub_loses_nothing() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let files: Vec<(String, Vec<u8>)> = (0..4u8)
        .map(|i| (format!("vm1/f{i}-flat.vmdk"), content(i, (4 << 20) + 777)))
        .collect();
    for (path, data) in &files {
        fs::write(mount.path(path), data).unwrap();
    }
    write_control(&mount.path("vm1/.control"), "scrub rate=2M\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = read_control(&mount.path("vm1/.control"));
        if status["scrub"] == "running" && !status["scrub-progress"].starts_with("0 of") {
            break;
        }
        assert!(Instant::now() < deadline, "scrub did not start: {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mnt = mount.mnt.clone();
    let status = mount.stop_with(libc::SIGKILL);
    assert!(!status.success());
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();

    let mount = env.mount();
    for (path, data) in &files {
        assert!(
            fs::read(mount.path(path)).unwrap() == *data,
            "{path} changed"
        );
    }
    assert!(mount.unmount().success());
    let out = env.run(&["fsck", env.datastore.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "fsck after the kill: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!Path::new(&env.vm_dir("vm1"))
        .join(".vmcryptfs-journal")
        .exists());
}
