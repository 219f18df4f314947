//! `vmcryptfs fsck` on an unmounted datastore, through the real binary,
//! on files written through a real mount, in both content formats: damage
//! is injected one case at a time, and fsck must report exactly it and
//! nothing else, with the same content in `--json` and in the text report,
//! and the documented exit code (0 clean, 6 damaged, 7 could not check).

use crate::common;

use std::fs;
use std::path::Path;

use common::{flip_byte, read_block, stored_block_pieces, write_block, TestEnv};
use serde_json::Value;

const FORMATS: [u16; 2] = [1, 2];
/// Plaintext size of `a.bin`: three full blocks and a partial one.
const A_SIZE: u64 = 3 * 4096 + 100;

/// vm1 with `a.bin` (A_SIZE bytes), `b.bin` (three blocks), a sparse
/// `sparse.bin` (8 MiB, one block written in the middle) and a disk that
/// passes through; vm2 with `a.bin`; a plain directory. All in content
/// format `format`, written through a mount.
fn setup(format: u16) -> TestEnv {
    let env = TestEnv::new();
    env.create_vm_in_format("vm1", false, format);
    env.create_vm_in_format("vm2", false, format);
    fs::create_dir(env.datastore.join("plain")).unwrap();
    fs::write(env.datastore.join("plain/notes.txt"), b"plain").unwrap();
    let mount = env.mount();
    let content =
        |seed: u8, len: u64| -> Vec<u8> { (0..len).map(|i| seed ^ (i % 251) as u8).collect() };
    fs::write(mount.path("vm1/a.bin"), content(0xa1, A_SIZE)).unwrap();
    fs::write(mount.path("vm1/b.bin"), content(0xb2, 3 * 4096)).unwrap();
    fs::write(mount.path("vm2/a.bin"), content(0xc3, A_SIZE)).unwrap();
    fs::write(mount.path("vm1/disk.vmdk"), b"pass-through disk").unwrap();
    let sparse = fs::File::create(mount.path("vm1/sparse.bin")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; 4096], 4 << 20).unwrap();
    drop(sparse);
    assert!(mount.unmount().success());
    env
}

/// Runs `fsck DATASTORE` as text and as JSON; checks that both exit alike
/// and that every finding of the JSON is in the text. Returns the exit
/// code, the findings as sorted lines and the text.
fn fsck(env: &TestEnv) -> (i32, Vec<String>, String) {
    fsck_with(env, &[])
}

/// [`fsck`] with extra arguments (`--repair`): the text run comes first,
/// so a repair is seen done by the JSON run.
fn fsck_with(env: &TestEnv, extra: &[&str]) -> (i32, Vec<String>, String) {
    let ds = env.datastore.to_str().unwrap();
    let text_out = env.run(&[&["fsck", ds], extra].concat());
    let json_out = env.run(&[&["fsck", ds, "--json"], extra].concat());
    let code = text_out.status.code().expect("exit code");
    assert_eq!(
        json_out.status.code(),
        Some(code),
        "text and JSON exit alike"
    );
    let text = String::from_utf8(text_out.stdout).unwrap();
    let doc: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    let (findings, text_lines) = findings_of(&doc);
    for line in text_lines {
        assert!(text.contains(&line), "text lacks {line:?}:\n{text}");
    }
    (code, findings, text)
}

fn ranges(value: &Value) -> String {
    let parts: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}..{}", r[0], r[1]))
        .collect();
    parts.join(", ")
}

/// Every finding of a JSON report as a short line (`vm1/a.bin damaged
/// 0..4096`), sorted, and the lines the text report must hold for them.
fn findings_of(doc: &Value) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut text = Vec::new();
    for vm in doc["vms"].as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        text.push(format!("{name}: {}", vm["state"].as_str().unwrap()));
        if !vm["unchecked"].is_null() {
            out.push(format!("{name} unchecked"));
        }
        for f in vm["findings"].as_array().unwrap() {
            let (kind, path) = (f["kind"].as_str().unwrap(), f["path"].as_str().unwrap());
            out.push(format!("{name} {kind} {path}"));
            text.push(format!(
                "  {kind} {path}: {}",
                f["detail"].as_str().unwrap()
            ));
        }
        for f in vm["files"].as_array().unwrap() {
            let path = format!("{name}/{}", f["path"].as_str().unwrap());
            let short = f["path"].as_str().unwrap();
            if !f["header"].is_null() {
                out.push(format!("{path} header"));
                text.push(format!("file {short}: header does not authenticate"));
            }
            if !f["trailing_fragment"].is_null() {
                out.push(format!("{path} fragment {}", f["trailing_fragment"]));
            }
            for kind in ["damaged", "zeroed"] {
                if !f[kind].as_array().unwrap().is_empty() {
                    out.push(format!("{path} {kind} {}", ranges(&f[kind])));
                    text.push(format!("file {short}: {kind} {}", ranges(&f[kind])));
                }
            }
            if !f["unchecked"].is_null() {
                out.push(format!("{path} unchecked"));
            }
        }
    }
    out.sort();
    (out, text)
}

fn expect(env: &TestEnv, code: i32, findings: &[&str]) -> String {
    let (got_code, got, text) = fsck(env);
    let mut want: Vec<String> = findings.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "report:\n{text}");
    assert_eq!(got_code, code, "exit code; report:\n{text}");
    text
}

#[test]
fn a_clean_datastore_is_clean_and_says_what_it_did_not_check() {
    for format in FORMATS {
        let env = setup(format);
        let text = expect(&env, 0, &[]);
        assert!(text.contains("vm1: clean (content format"), "{text}");
        assert!(
            text.contains("1 pass-through file(s) not checked"),
            "{text}"
        );
        assert!(text.contains("plain: plain"), "{text}");
        // The sparse file's holes were not read: only its written block
        // and the other files' bytes were authenticated.
        let doc: Value = serde_json::from_slice(
            &env.run(&["fsck", env.datastore.to_str().unwrap(), "--json", "vm1"])
                .stdout,
        )
        .unwrap();
        assert_eq!(doc["vms"].as_array().unwrap().len(), 1);
        assert_eq!(doc["vms"][0]["bytes_checked"], A_SIZE + 3 * 4096 + 4096);
    }
}

#[test]
fn a_flipped_bit_in_a_block_tag_slot_or_header_is_exactly_its_range() {
    for format in FORMATS {
        let env = setup(format);
        let a = env.vm_dir("vm1").join("a.bin");
        // Ciphertext of block 1.
        let data = stored_block_pieces(format, 1)[0].0 + 16 + 100;
        flip_byte(&a, data);
        expect(&env, 6, &["vm1/a.bin damaged 4096..8192"]);
        flip_byte(&a, data);
        expect(&env, 0, &[]);
        // Tag of block 2: format 1 at the end of its 4128 bytes, format 2
        // in the second half of its slot.
        let tag = match format {
            1 => 44 + 2 * 4128 + 4128 - 1,
            _ => 64 + 2 * 32 + 31,
        };
        flip_byte(&a, tag);
        expect(&env, 6, &["vm1/a.bin damaged 8192..12288"]);
        flip_byte(&a, tag);
        // Nonce (format 1) or slot (format 2) of the partial last block.
        let nonce = match format {
            1 => 44 + 3 * 4128,
            _ => 64 + 3 * 32,
        };
        flip_byte(&a, nonce);
        expect(&env, 6, &[&format!("vm1/a.bin damaged 12288..{A_SIZE}")]);
        flip_byte(&a, nonce);
        // The header's file id: the whole file.
        flip_byte(&a, 20);
        expect(
            &env,
            6,
            &[
                "vm1/a.bin header",
                &format!("vm1/a.bin damaged 0..{A_SIZE}"),
            ],
        );
    }
}

#[test]
fn blocks_swapped_within_and_between_files_are_their_ranges() {
    for format in FORMATS {
        let env = setup(format);
        let (a, b) = (
            env.vm_dir("vm1").join("a.bin"),
            env.vm_dir("vm1").join("b.bin"),
        );
        let (block0, block1) = (read_block(&a, format, 0), read_block(&a, format, 1));
        write_block(&a, format, 0, &block1);
        write_block(&a, format, 1, &block0);
        expect(&env, 6, &["vm1/a.bin damaged 0..8192"]);
        write_block(&a, format, 0, &block0);
        write_block(&a, format, 1, &block1);
        expect(&env, 0, &[]);
        write_block(&b, format, 2, &read_block(&a, format, 2));
        expect(&env, 6, &["vm1/b.bin damaged 8192..12288"]);
    }
}

/// FORMAT.md §3.5: a full block set to zeros reads as a hole. fsck cannot
/// call it damage, but lists it when it sits in allocated space.
#[test]
fn a_zeroed_block_is_listed_as_zeroed_not_damaged() {
    for format in FORMATS {
        let env = setup(format);
        let a = env.vm_dir("vm1").join("a.bin");
        let zeros = vec![0u8; read_block(&a, format, 1).len()];
        write_block(&a, format, 1, &zeros);
        let text = expect(&env, 0, &["vm1/a.bin zeroed 4096..8192"]);
        assert!(text.contains("fsck cannot tell"), "{text}");
        // The partial last block is never a hole: zeroed, it is damage.
        let stored_len = fs::metadata(&a).unwrap().len();
        for (offset, len) in stored_block_pieces(format, 3) {
            let len = len.min(stored_len - offset) as usize;
            common::patch(&a, offset, &vec![0u8; len]);
        }
        expect(
            &env,
            6,
            &[
                "vm1/a.bin zeroed 4096..8192",
                &format!("vm1/a.bin damaged 12288..{A_SIZE}"),
            ],
        );
    }
}

#[test]
fn a_file_truncated_inside_a_block_is_damaged_from_that_block_on() {
    for format in FORMATS {
        let env = setup(format);
        let a = env.vm_dir("vm1").join("a.bin");
        let file = fs::OpenOptions::new().write(true).open(&a).unwrap();
        // 2000 stored bytes of block 1 are left.
        let block1 = stored_block_pieces(format, 1)[0].0;
        file.set_len(block1 + 2000).unwrap();
        let end = match format {
            1 => 4096 + 2000 - 32,
            _ => 4096 + 2000,
        };
        expect(&env, 6, &[&format!("vm1/a.bin damaged 4096..{end}")]);
        if format == 1 {
            // 10 bytes of block 1: a fragment too short to be a block.
            file.set_len(block1 + 10).unwrap();
            expect(&env, 6, &["vm1/a.bin fragment 10"]);
        }
    }
}

#[test]
fn a_corrupt_deleted_or_rolled_back_bundle_is_damage_and_nothing_is_unlocked() {
    let env = setup(2);
    let bundle = env.vm_dir("vm1").join(".vmcryptfs-bundle");
    let original = fs::read(&bundle).unwrap();
    // The last byte is in the last wrapped DEK: unwrap fails.
    flip_byte(&bundle, original.len() as u64 - 1);
    let text = expect(&env, 6, &["vm1 bundle .vmcryptfs-bundle", "vm1 unchecked"]);
    assert!(text.contains("vm1: damaged"), "{text}");
    fs::remove_file(&bundle).unwrap();
    let text = expect(
        &env,
        6,
        &["vm1 bundle-missing .vmcryptfs-bundle", "vm1 unchecked"],
    );
    assert!(text.contains("bundle was deleted"), "{text}");
    fs::write(&bundle, &original).unwrap();
    expect(&env, 0, &[]);
    // A disk stored encrypted (here: a copy of an encrypted file) in a VM
    // whose disks pass through contradicts the bundle's policy.
    let vm1 = env.vm_dir("vm1");
    fs::copy(vm1.join("a.bin"), vm1.join("copy.vmdk")).unwrap();
    expect(&env, 6, &["vm1 policy copy.vmdk"]);
    fs::remove_file(vm1.join("copy.vmdk")).unwrap();
    // Re-keyed under a new KEK version (sequence 2, recorded by this
    // host), then the old bundle put back: rolled back.
    env.run_ok(&["provider", "rotate"]);
    env.run_ok(&["vm", "rekey", env.vm_dir("vm1").to_str().unwrap()]);
    expect(&env, 0, &[]);
    fs::write(&bundle, &original).unwrap();
    let text = expect(&env, 6, &["vm1 bundle .vmcryptfs-bundle", "vm1 unchecked"]);
    assert!(text.contains("rolled back"), "{text}");
}

#[test]
fn a_stale_journal_and_stray_temps_are_named() {
    let env = setup(1);
    let vm1 = env.vm_dir("vm1");
    fs::write(vm1.join(".vmcryptfs-convert-journal"), b"deep-rekey\n").unwrap();
    let text = expect(&env, 6, &["vm1 journal .vmcryptfs-convert-journal"]);
    assert!(text.contains("rekey --deep"), "{text}");
    fs::remove_file(vm1.join(".vmcryptfs-convert-journal")).unwrap();
    fs::create_dir(vm1.join("logs")).unwrap();
    fs::write(vm1.join("logs/.vmcryptfs-convert.tmp"), b"partial").unwrap();
    fs::write(vm1.join(".vmcryptfs-bundle.tmp.42.0123456789abcdef"), b"x").unwrap();
    fs::write(vm1.join(".vmcryptfs-convert-journal.tmp"), b"").unwrap();
    // Planted, not followed: a symlink at a temp name is still just named.
    std::os::unix::fs::symlink("/etc/shadow", vm1.join("logs/.vmcryptfs-other")).unwrap();
    let temps = [
        "vm1 stray-temp .vmcryptfs-bundle.tmp.42.0123456789abcdef",
        "vm1 stray-temp .vmcryptfs-convert-journal.tmp",
        "vm1 stray-temp logs/.vmcryptfs-convert.tmp",
    ];
    let other = "vm1 stray-temp logs/.vmcryptfs-other";
    expect(&env, 6, &[&temps[..], &[other]].concat());
    // --repair removes exactly vmcryptfs's own temps, says so, and leaves
    // the unknown name (and every other file) alone.
    let before = common::snapshot_tree(&env.datastore);
    let (code, found, text) = fsck_with(&env, &["--repair"]);
    assert_eq!(code, 6, "{text}");
    assert!(found.iter().any(|f| f == other), "{text}");
    for temp in temps {
        let rel = temp.rsplit(' ').next().unwrap();
        assert!(text.contains(&format!("{rel}: removed: ")), "{text}");
        assert!(!vm1.join(rel).exists(), "{rel} removed");
    }
    let after = common::snapshot_tree(&env.datastore);
    let mut expected = before;
    for temp in temps {
        let rel = temp.rsplit(' ').next().unwrap();
        assert!(
            expected.remove(&Path::new("vm1").join(rel)).is_some(),
            "{rel}"
        );
    }
    assert_eq!(after, expected, "nothing but the temps changed");
    assert!(fs::symlink_metadata(vm1.join("logs/.vmcryptfs-other")).is_ok());
    expect(&env, 6, &[other]);
}

#[test]
fn a_kek_this_host_lacks_is_could_not_check_and_a_mounted_datastore_is_refused() {
    let env = setup(2);
    let other = env.second_host();
    other.run_ok(&["provider", "init"]);
    expect(&other, 7, &["vm1 unchecked", "vm2 unchecked"]);
    // Damage still wins over what could not be checked.
    fs::write(env.vm_dir("vm2").join(".vmcryptfs-convert-journal"), b"?").unwrap();
    expect(
        &other,
        6,
        &[
            "vm1 unchecked",
            "vm2 journal .vmcryptfs-convert-journal",
            "vm2 unchecked",
        ],
    );
    fs::remove_file(env.vm_dir("vm2").join(".vmcryptfs-convert-journal")).unwrap();
    // A VM home that is not there is a usage error.
    let ds = env.datastore.to_str().unwrap();
    assert_eq!(env.run(&["fsck", ds, "nope"]).status.code(), Some(2));
    let _mount = env.mount();
    let out = env.run(&["fsck", ds]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("unmount it first"));
}

/// `--repair --zero-damaged-blocks` rewrites exactly the blocks that fail
/// authentication as authenticated zeros and lists each: every other
/// stored byte is unchanged, the file reads back with zeros in the damaged
/// ranges and its content everywhere else, and fsck is then clean. A file
/// whose header does not authenticate is left as it is, still damaged.
/// Without `--repair` the flag is refused.
#[test]
fn zero_damaged_blocks_rewrites_only_the_damaged_blocks() {
    for format in FORMATS {
        let env = setup(format);
        let ds = env.datastore.to_str().unwrap();
        let refused = env.run(&["fsck", ds, "--zero-damaged-blocks"]);
        assert_eq!(refused.status.code(), Some(2), "needs --repair");
        let a = env.vm_dir("vm1").join("a.bin");
        let b = env.vm_dir("vm1").join("b.bin");
        flip_byte(&a, stored_block_pieces(format, 1)[0].0 + 16 + 100);
        let last_slot = match format {
            1 => 44 + 3 * 4128,
            _ => 64 + 3 * 32,
        };
        flip_byte(&a, last_slot);
        let b_tag = match format {
            1 => 44 + 4128 - 1,
            _ => 64 + 31,
        };
        flip_byte(&b, b_tag);
        flip_byte(&env.vm_dir("vm2").join("a.bin"), 20);
        let vm2_header = [
            "vm2/a.bin header".to_string(),
            format!("vm2/a.bin damaged 0..{A_SIZE}"),
        ];
        expect(
            &env,
            6,
            &[
                &format!("vm1/a.bin damaged 4096..8192, 12288..{A_SIZE}"),
                "vm1/b.bin damaged 0..4096",
                &vm2_header[0],
                &vm2_header[1],
            ],
        );
        let before = common::snapshot_tree(&env.datastore);
        let out = env.run(&["fsck", ds, "--repair", "--zero-damaged-blocks"]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(6), "vm2 stays damaged:\n{text}");
        for line in [
            "file a.bin: rewrote block 1 (4096..8192) as authenticated zeros".to_string(),
            format!("file a.bin: rewrote block 3 (12288..{A_SIZE}) as authenticated zeros"),
            "file b.bin: rewrote block 0 (0..4096) as authenticated zeros".to_string(),
        ] {
            assert!(text.contains(&line), "{line:?} missing:\n{text}");
        }
        assert_eq!(text.matches("rewrote block").count(), 3, "{text}");
        assert!(text.contains("vm1: clean"), "{text}");
        // Every stored byte outside the rewritten blocks is as it was.
        let after = common::snapshot_tree(&env.datastore);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        for (path, old) in &before {
            let new = &after[path];
            assert_eq!(old.len(), new.len(), "{}", path.display());
            let rewritten: &[u64] = match path.to_str().unwrap() {
                "vm1/a.bin" => &[1, 3],
                "vm1/b.bin" => &[0],
                _ => &[],
            };
            let pieces: Vec<(u64, u64)> = rewritten
                .iter()
                .flat_map(|&n| stored_block_pieces(format, n))
                .collect();
            let changed: Vec<usize> = (0..old.len()).filter(|&i| old[i] != new[i]).collect();
            for i in &changed {
                let i = *i as u64;
                assert!(
                    pieces
                        .iter()
                        .any(|&(off, len)| (off..off + len).contains(&i)),
                    "{}: byte {i} outside the rewritten blocks changed",
                    path.display()
                );
            }
            assert_eq!(
                changed.is_empty(),
                rewritten.is_empty(),
                "{}",
                path.display()
            );
        }
        let content =
            |seed: u8, len: u64| -> Vec<u8> { (0..len).map(|i| seed ^ (i % 251) as u8).collect() };
        let mount = env.mount();
        let mut want_a = content(0xa1, A_SIZE);
        want_a[4096..8192].fill(0);
        want_a[12288..].fill(0);
        assert!(
            fs::read(mount.path("vm1/a.bin")).unwrap() == want_a,
            "a.bin"
        );
        let mut want_b = content(0xb2, 3 * 4096);
        want_b[..4096].fill(0);
        assert!(
            fs::read(mount.path("vm1/b.bin")).unwrap() == want_b,
            "b.bin"
        );
        assert!(fs::read(mount.path("vm2/a.bin")).is_err());
        assert!(mount.unmount().success());
        expect(&env, 6, &[&vm2_header[0], &vm2_header[1]]);
    }
}

/// `--repair` settles an interrupted conversion by its journal: `vm
/// encrypt` and `vm convert-format` killed after their first file are
/// finished (the files read back as they were, the bundle names the new
/// format, fsck is then clean), and an `encrypt` journal in a directory
/// without a bundle (killed before it wrote the bundle) is rolled back,
/// with every file left as it was. Before the repair, fsck names the
/// journal and leaves everything as it is.
#[test]
fn repair_finishes_or_rolls_back_an_interrupted_conversion() {
    let env = TestEnv::new();
    let ds = env.datastore.to_str().unwrap().to_string();
    let content =
        |seed: u8, len: u64| -> Vec<u8> { (0..len).map(|i| seed ^ (i % 251) as u8).collect() };
    // vm1: a plain directory being encrypted.
    let vm1 = env.vm_dir("vm1");
    fs::create_dir_all(vm1.join("logs")).unwrap();
    let files1 = [
        ("a.bin", content(1, 10_000)),
        ("b.nvram", content(2, 70_000)),
        ("logs/vmware.log", content(3, 5_000)),
    ];
    for (name, data) in &files1 {
        fs::write(vm1.join(name), data).unwrap();
    }
    common::killed_after_first_file(&env, &["vm", "encrypt", vm1.to_str().unwrap()]);
    // vm2: format 1, being converted to format 2.
    env.create_vm_in_format("vm2", false, 1);
    let files2 = [
        ("a.bin", content(4, A_SIZE)),
        ("b.bin", content(5, 3 * 4096)),
        ("c.bin", content(6, 100)),
    ];
    {
        let mount = env.mount();
        for (name, data) in &files2 {
            fs::write(mount.path(&format!("vm2/{name}")), data).unwrap();
        }
        assert!(mount.unmount().success());
    }
    let vm2 = env.vm_dir("vm2");
    common::killed_after_first_file(
        &env,
        &[
            "vm",
            "convert-format",
            vm2.to_str().unwrap(),
            "--content-format",
            "2",
        ],
    );
    // vm3: disks pass through; `set-disk-pattern` to make *.bin disks
    // (decrypting them) killed after its first file.
    env.create_vm("vm3", false);
    let files3 = [("a.bin", content(7, 9_000)), ("b.bin", content(8, 5_000))];
    {
        let mount = env.mount();
        for (name, data) in &files3 {
            fs::write(mount.path(&format!("vm3/{name}")), data).unwrap();
        }
        assert!(mount.unmount().success());
    }
    let vm3 = env.vm_dir("vm3");
    common::killed_after_first_file(
        &env,
        &[
            "vm",
            "set-disk-pattern",
            vm3.to_str().unwrap(),
            "*.vmdk,*.bin",
        ],
    );
    assert_eq!(
        fs::read(vm3.join("a.bin")).unwrap(),
        files3[0].1,
        "a.bin decrypted"
    );
    // plain: an `encrypt` journal and no bundle.
    let plain = env.datastore.join("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("notes.txt"), b"plain notes").unwrap();
    fs::write(plain.join(".vmcryptfs-convert-journal"), b"encrypt\n").unwrap();

    let before = common::snapshot_tree(&env.datastore);
    let (code, found, text) = fsck(&env);
    assert_eq!(code, 6, "{text}");
    for journal in [
        "vm1 journal .vmcryptfs-convert-journal",
        "vm2 journal .vmcryptfs-convert-journal",
    ] {
        assert!(found.iter().any(|f| f == journal), "{journal}: {text}");
    }
    assert!(text.contains("or `vmcryptfs fsck --repair`"), "{text}");
    assert_eq!(
        common::snapshot_tree(&env.datastore),
        before,
        "fsck only reads"
    );

    let out = env.run(&["fsck", &ds, "--repair"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let repaired = text
        .lines()
        .filter(|l| l.contains("journal .vmcryptfs-convert-journal: repaired: "))
        .count();
    assert_eq!(repaired, 4, "one repaired journal per VM home:\n{text}");
    assert!(
        text.contains("`set-disk-pattern` conversion, brought to what the key bundle names"),
        "{text}"
    );
    assert!(
        text.contains("`encrypt` conversion, finished by its journal"),
        "{text}"
    );
    assert!(
        text.contains("`convert-format` conversion, finished by its journal"),
        "{text}"
    );
    assert!(
        text.contains("`encrypt` conversion killed before it wrote the key bundle, rolled back"),
        "{text}"
    );
    for dir in [&vm1, &vm2, &vm3, &plain] {
        assert!(
            !dir.join(".vmcryptfs-convert-journal").exists(),
            "{}",
            dir.display()
        );
    }
    assert_eq!(fs::read(plain.join("notes.txt")).unwrap(), b"plain notes");
    expect(&env, 0, &[]);
    let status = env.run_ok(&["vm", "status", vm2.to_str().unwrap()]);
    assert!(status.contains("content-format: 2"), "{status}");
    let mount = env.mount();
    for (name, data) in &files1 {
        assert!(
            fs::read(mount.path(&format!("vm1/{name}"))).unwrap() == *data,
            "vm1/{name}"
        );
    }
    for (name, data) in &files2 {
        assert!(
            fs::read(mount.path(&format!("vm2/{name}"))).unwrap() == *data,
            "vm2/{name}"
        );
    }
    for (name, data) in &files3 {
        assert!(
            fs::read(mount.path(&format!("vm3/{name}"))).unwrap() == *data,
            "vm3/{name}"
        );
        let stored = fs::read(vm3.join(name)).unwrap();
        assert_eq!(
            &stored[..4],
            b"VMCF",
            "vm3/{name} encrypted again, as the bundle says"
        );
    }
    assert_eq!(
        common::read_control(&mount.path("vm1/.control"))["conversion"],
        "-"
    );
}

/// Sealed extended attribute values (FORMAT.md §7) are checked too: one
/// tampered, one moved to another object and one on a symlink tampered
/// are each an `attribute` finding naming the object and the attribute;
/// the untouched ones are not.
#[test]
fn a_tampered_or_moved_sealed_attribute_is_named_with_its_object() {
    use rustix::fs::{lgetxattr, lsetxattr, XattrFlags};
    let env = setup(2);
    let mount = env.mount();
    fs::create_dir(mount.path("vm1/d")).unwrap();
    std::os::unix::fs::symlink("a.bin", mount.path("vm1/link")).unwrap();
    for (object, name) in [
        ("vm1/a.bin", "user.note"),
        ("vm1/b.bin", "user.note"),
        ("vm1/d", "user.note"),
        ("vm1/link", "trusted.note"),
        ("vm2/a.bin", "trusted.note"),
    ] {
        lsetxattr(
            mount.path(object),
            name,
            object.as_bytes(),
            XattrFlags::empty(),
        )
        .unwrap();
    }
    assert!(mount.unmount().success());
    expect(&env, 0, &[]);

    let stored = |object: &str, name: &str| {
        let mut value = vec![0u8; 4096];
        let len = lgetxattr(env.datastore.join(object), name, &mut value[..]).unwrap();
        value.truncate(len);
        value
    };
    let store = |object: &str, name: &str, value: &[u8]| {
        lsetxattr(env.datastore.join(object), name, value, XattrFlags::empty()).unwrap();
    };
    let flipped = |mut value: Vec<u8>| {
        *value.last_mut().unwrap() ^= 1;
        value
    };
    store(
        "vm1/a.bin",
        "user.note",
        &flipped(stored("vm1/a.bin", "user.note")),
    );
    store("vm1/d", "user.note", &stored("vm1/b.bin", "user.note"));
    store(
        "vm1/link",
        "trusted.note",
        &flipped(stored("vm1/link", "trusted.note")),
    );
    let text = expect(
        &env,
        6,
        &[
            "vm1 attribute a.bin",
            "vm1 attribute d",
            "vm1 attribute link",
        ],
    );
    assert!(
        text.contains("attribute a.bin: extended attribute user.note does not authenticate"),
        "{text}"
    );
    assert!(
        text.contains("attribute link: extended attribute trusted.note does not authenticate"),
        "{text}"
    );
    // --repair leaves the values as they are.
    let (code, _, _) = fsck_with(&env, &["--repair"]);
    assert_eq!(code, 6);
    assert_eq!(
        stored("vm1/d", "user.note"),
        stored("vm1/b.bin", "user.note")
    );
}
