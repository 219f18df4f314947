//! POSIX semantics through a real FUSE mount, for several files at once:
//! encrypted files in a VM home, pass-through disks (`*.vmdk` in a VM
//! created without --encrypt-disks) and files in a plain directory.
//!
//! Reads that must reach the daemon (not the kernel's page cache) drop the
//! cached pages first with `posix_fadvise(DONTNEED)`; content that must
//! persist is read again after an unmount and a fresh mount.

use crate::common;

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{drop_cache, TestEnv};
use vmcryptfs::format::content_layout::ContentLayout;

const KIB: u64 = 1024;
const BLOCK: u64 = 4096;

/// How a file is stored, which decides what its backing file must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Encrypted content in a VM home.
    Encrypted,
    /// Stored as is: a pass-through disk or a file in a plain directory.
    Clear,
}

/// Datastore-relative files covering every storage kind (set up by
/// [`setup`]): two encrypted files, one in a subdirectory, a pass-through
/// disk, and a plain-directory file.
const SAMPLE_FILES: [(&str, Kind); 4] = [
    ("vm1/vm1.nvram", Kind::Encrypted),
    ("vm1/sub/vmware.log", Kind::Encrypted),
    ("vm1/vm1-flat.vmdk", Kind::Clear),
    ("plain/notes.txt", Kind::Clear),
];

/// A datastore with `vm1` (encrypted, disks pass through), `vm1/sub` and a
/// plain directory `plain`, made before mounting.
fn setup() -> TestEnv {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    fs::create_dir(env.vm_dir("vm1").join("sub")).unwrap();
    fs::create_dir(env.datastore.join("plain")).unwrap();
    env
}

/// Fixed-seed xorshift64: reproducible randomness without a crate.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Up to `len` bytes at `offset`, short only at end of file.
fn read_at_most(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file
            .read_at(&mut out[filled..], offset + filled as u64)
            .unwrap()
        {
            0 => break,
            n => filled += n,
        }
    }
    out.truncate(filled);
    out
}

/// The whole file, read from the daemon.
fn read_uncached(path: &Path) -> Vec<u8> {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    drop_cache(&file);
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    out
}

/// Compares without dumping megabytes of bytes into the failure message.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: content differs (got {} bytes, want {}; first differing byte at {first:?})",
            got.len(),
            want.len()
        );
    }
}

/// Asserts that `result` failed with `expected`.
#[track_caller]
fn assert_errno<T: std::fmt::Debug>(result: std::io::Result<T>, expected: i32, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected errno {expected}, got Ok({v:?})"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(expected), "{what}: {e}"),
    }
}

/// Applies a write to the model, growing it with zeros (a hole) as needed.
fn model_write(model: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[offset as usize..end].copy_from_slice(data);
}

/// Checks the backing file of `rel` against the plaintext `content`:
/// identical for clear files; for encrypted files the stored size of that
/// plaintext, and (when non-empty) different bytes.
#[track_caller]
fn assert_backing(env: &TestEnv, rel: &str, kind: Kind, content: &[u8]) {
    let backing = env.datastore.join(rel);
    let stored = fs::read(&backing).unwrap_or_else(|e| panic!("backing {rel}: {e}"));
    match kind {
        Kind::Clear => assert_same(&stored, content, &format!("backing of {rel}")),
        Kind::Encrypted => {
            assert_eq!(
                stored.len() as u64,
                plain_size_to_cipher_size(content.len() as u64),
                "backing size of {rel}"
            );
            // A distinctive 16-byte piece of plaintext (not zeros, which
            // holes and header fields hold too) must not be stored.
            let distinctive = content.chunks_exact(16).find(|w| {
                let mut seen = w.to_vec();
                seen.sort_unstable();
                seen.dedup();
                seen.len() >= 8
            });
            if let Some(piece) = distinctive {
                assert!(
                    !stored.windows(16).any(|w| w == piece),
                    "backing of {rel} holds plaintext"
                );
            }
        }
    }
}

/// The plaintext of `path` must be `want` through the mount, read from the
/// daemon, and its size `want.len()`.
#[track_caller]
fn assert_content(path: &Path, want: &[u8]) {
    let what = path.display().to_string();
    assert_eq!(
        fs::metadata(path).unwrap().len(),
        want.len() as u64,
        "size of {what}"
    );
    assert_same(&read_uncached(path), want, &what);
}

// 1. Open flags.

fn check_open_flags(mnt: &Path, rel: &str) -> Vec<u8> {
    let path = mnt.join(rel);
    let what = rel;

    // O_CREAT makes an empty file; O_CREAT on an existing file keeps it.
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0, "{what}: new file size");
    drop(f);
    fs::write(&path, b"0123456789").unwrap();
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    drop(f);
    assert_content(&path, b"0123456789");

    // O_EXCL: the second exclusive create fails and leaves the file alone.
    assert_errno(
        OpenOptions::new().write(true).create_new(true).open(&path),
        libc::EEXIST,
        &format!("{what}: O_CREAT|O_EXCL on existing file"),
    );
    assert_content(&path, b"0123456789");

    // O_TRUNC on a multi-block file: empty at once, then writable again.
    let big = XorShift::new(rel.len() as u64 + 7).bytes(3 * BLOCK as usize + 100);
    fs::write(&path, &big).unwrap();
    assert_content(&path, &big);
    let mut t = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert_eq!(
        t.metadata().unwrap().len(),
        0,
        "{what}: fstat after O_TRUNC"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        0,
        "{what}: stat after O_TRUNC"
    );
    assert!(
        read_uncached(&path).is_empty(),
        "{what}: content after O_TRUNC"
    );
    t.write_all(b"rewritten").unwrap();
    drop_cache(&t);
    assert_eq!(read_at_most(&t, 0, 100), b"rewritten", "{what}: via handle");
    drop(t);
    assert_content(&path, b"rewritten");

    // O_APPEND from two handles: every write lands at the current end,
    // whatever the handle's own offset, including writes crossing blocks.
    let mut a = OpenOptions::new().append(true).open(&path).unwrap();
    let mut b = OpenOptions::new().append(true).open(&path).unwrap();
    let mut want = b"rewritten".to_vec();
    let long = vec![b'L'; 5000];
    for (use_a, data) in [
        (true, &b"-A1"[..]),
        (false, &b"-B1"[..]),
        (true, &long[..]),
        (false, &b"-B2"[..]),
    ] {
        let handle = if use_a { &mut a } else { &mut b };
        handle.write_all(data).unwrap();
        want.extend_from_slice(data);
    }
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"-A2").unwrap();
    want.extend_from_slice(b"-A2");
    drop((a, b));
    assert_content(&path, &want);
    want
}

/// Stored size of an encrypted file of `plain` bytes in a VM home created
/// with the default content format.
fn plain_size_to_cipher_size(plain: u64) -> u64 {
    ContentLayout::from_format_version(common::DEFAULT_CONTENT_FORMAT)
        .unwrap()
        .plain_size_to_cipher_size(plain)
}

#[test]
fn open_flags_creat_excl_trunc_append() {
    let env = setup();
    let mount = env.mount();
    let results: Vec<(&str, Kind, Vec<u8>)> = std::thread::scope(|s| {
        let threads: Vec<_> = SAMPLE_FILES
            .iter()
            .map(|&(rel, kind)| {
                let mnt = &mount.mnt;
                s.spawn(move || (rel, kind, check_open_flags(mnt, rel)))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (rel, kind, content) in &results {
        assert_backing(&env, rel, *kind, content);
    }

    // O_CREAT|O_EXCL on a new name succeeds; O_RDONLY|O_CREAT creates too.
    let fresh = mount.path("vm1/fresh.vmsd");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&fresh)
        .unwrap();
    assert!(fresh.exists());
    let ro = mount.path("vm1/readonly-created.vmxf");
    let fd = nix::fcntl::open(
        &ro,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CREAT,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("O_RDONLY|O_CREAT");
    nix::unistd::close(fd).unwrap();
    let meta = fs::metadata(&ro).unwrap();
    assert_eq!((meta.len(), meta.mode() & 0o777), (0, 0o600));
}

// 2. Reads and writes at any offset and length, against a model.

/// A random new size, often a block multiple or one off it.
fn random_size(rng: &mut XorShift) -> u64 {
    match rng.below(4) {
        0 => (rng.below(80) * BLOCK + rng.below(3)).saturating_sub(1),
        1 => 0,
        _ => rng.below(320 * KIB),
    }
}

/// Compares `[start, end)` of the file (clamped to the model's size), read
/// from the daemon, with the model.
#[track_caller]
fn check_range(file: &File, model: &[u8], start: u64, end: u64, what: &str) {
    let start = (start as usize).min(model.len());
    let end = (end as usize).min(model.len());
    drop_cache(file);
    let got = read_at_most(file, start as u64, end - start);
    assert_same(
        &got,
        &model[start..end],
        &format!("{what} [{start}, {end})"),
    );
}

/// The edges of a changed range `[start, end)`: from the start of its first
/// block a little way in, and from a little before its end to the end of
/// its last block, where a partial-block read-modify-write could damage
/// neighbouring bytes. (Bytes far from the edges are covered by the
/// periodic whole-file check.)
fn edges(start: u64, end: u64) -> [(u64, u64); 2] {
    let head = (start / BLOCK * BLOCK, start + 16);
    let tail = (end.saturating_sub(16), end.div_ceil(BLOCK) * BLOCK + 1);
    [head, tail]
}

/// Runs `ops` random operations on `path` and on a model. After every one
/// the size and the edges of what changed, read from the daemon, must
/// match the model; every 25 operations (and at the end) the whole file.
/// (A whole-file read after every operation costs too much decryption in a
/// debug build.)
fn run_model(path: &Path, seed: u64, ops: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    for step in 0..ops {
        let roll = rng.below(100);
        let (op, touched) = if roll < 60 {
            let offset = rng.below(300 * KIB);
            let len = 1 + rng.below(20 * KIB);
            let data = rng.bytes(len as usize);
            file.write_all_at(&data, offset).unwrap();
            model_write(&mut model, offset, &data);
            (
                format!("pwrite {len} @ {offset}"),
                edges(offset, offset + len).to_vec(),
            )
        } else if roll < 75 {
            let old_len = model.len() as u64;
            let new_len = random_size(&mut rng);
            file.set_len(new_len).unwrap();
            model.resize(new_len as usize, 0);
            let low = old_len.min(new_len);
            let high = old_len.max(new_len);
            let mut ranges = edges(low, low).to_vec();
            ranges.extend(edges(high, high));
            (format!("set_len {old_len} -> {new_len}"), ranges)
        } else {
            let offset = rng.below(330 * KIB);
            let len = 1 + rng.below(40 * KIB);
            (
                format!("pread {len} @ {offset}"),
                vec![(offset, offset + len)],
            )
        };
        let what = format!("{} after step {step} ({op})", path.display());
        assert_eq!(file.metadata().unwrap().len(), model.len() as u64, "{what}");
        for (start, end) in touched {
            check_range(&file, &model, start, end, &what);
        }
        if step % 25 == 24 || step + 1 == ops {
            check_range(&file, &model, 0, u64::MAX, &what);
            assert_eq!(
                read_at_most(&file, model.len() as u64, 10),
                b"",
                "{what}: EOF"
            );
        }
    }
    file.sync_all().unwrap();
    model
}

#[test]
fn random_io_in_parallel_matches_a_model_and_persists() {
    let env = setup();
    let files = [
        ("vm1/vm1.nvram", Kind::Encrypted),
        ("vm1/vm1.vmx", Kind::Encrypted),
        ("vm1/sub/vmware.log", Kind::Encrypted),
        ("vm1/vm1.vmem", Kind::Encrypted),
        ("vm1/vm1-flat.vmdk", Kind::Clear),
    ];
    let mount = env.mount();
    let models: Vec<Vec<u8>> = std::thread::scope(|s| {
        let threads: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, &(rel, _))| {
                let path = mount.path(rel);
                s.spawn(move || run_model(&path, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1), 300))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for ((rel, _), model) in files.iter().zip(&models) {
        assert_content(&mount.path(rel), model);
    }
    assert!(mount.unmount().success());
    for ((rel, kind), model) in files.iter().zip(&models) {
        assert_backing(&env, rel, *kind, model);
    }
    let mount = env.mount();
    for ((rel, _), model) in files.iter().zip(&models) {
        assert_content(&mount.path(rel), model);
    }
}

// 3. Truncate.

#[test]
fn truncate_shrinks_and_grows_with_zeros() {
    let env = setup();
    let mount = env.mount();
    let mut files: Vec<(&str, Kind)> = SAMPLE_FILES.to_vec();
    files.push(("vm1/vm1.vmsn", Kind::Encrypted));
    let sizes = [
        8193, 8192, 8191, 4097, 4096, 4095, 1, 0, 4095, 4096, 4097, 8191, 8192, 8193, 20000, 12288,
        0, 5000, 12289, 4096,
    ];
    std::thread::scope(|s| {
        for (i, &(rel, kind)) in files.iter().enumerate() {
            let (env, path) = (&env, mount.path(rel));
            s.spawn(move || {
                let mut rng = XorShift::new(i as u64 + 99);
                let mut model = rng.bytes(3 * BLOCK as usize + 100);
                fs::write(&path, &model).unwrap();
                let held = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                for (step, &size) in sizes.iter().enumerate() {
                    // Alternate truncate(2) by path and ftruncate(2) on a
                    // held handle.
                    if step % 2 == 0 {
                        nix::unistd::truncate(&path, size as i64).unwrap();
                    } else {
                        held.set_len(size).unwrap();
                    }
                    model.resize(size as usize, 0);
                    assert_content(&path, &model);
                    drop_cache(&held);
                    let what = format!("{rel} via held handle after truncate to {size}");
                    assert_same(&read_at_most(&held, 0, model.len() + 10), &model, &what);
                    assert_backing(env, rel, kind, &model);
                    // Fill the last few bytes, so a later grow after a
                    // shrink shows whether stale bytes come back.
                    if size > 3 {
                        let data = rng.bytes(3);
                        held.write_all_at(&data, size - 3).unwrap();
                        model_write(&mut model, size - 3, &data);
                    }
                }
                // A write inside a region made by growing.
                held.set_len(30000).unwrap();
                model.resize(30000, 0);
                held.write_all_at(b"middle", 20000).unwrap();
                model_write(&mut model, 20000, b"middle");
                drop(held);
                assert_content(&path, &model);
                assert_backing(env, rel, kind, &model);
            });
        }
    });
}

// 4. Rename.

#[test]
fn rename_over_existing_file_is_atomic_swtpm_pattern() {
    let env = setup();
    let mount = env.mount();
    fs::create_dir(mount.path("vm1/tpm")).unwrap();
    let targets = [
        (
            "vm1/tpm/tpm2-00.permall",
            "vm1/tpm/tpm2-00.permall.tmp",
            Kind::Encrypted,
        ),
        (
            "vm1/tpm2-00.volatilestate",
            "vm1/tpm2-00.volatilestate.tmp",
            Kind::Encrypted,
        ),
        // A disk's temporary must be a disk name too, or the rename would
        // change its class (EXDEV, tested elsewhere).
        ("vm1/vm1.vmdk", "vm1/vm1.tmp.vmdk", Kind::Clear),
        ("plain/state", "plain/state.tmp", Kind::Clear),
    ];
    let mut finals = Vec::new();
    for (i, &(rel, tmp_rel, kind)) in targets.iter().enumerate() {
        let mut rng = XorShift::new(i as u64 + 1234);
        let path = mount.path(rel);
        let tmp = mount.path(tmp_rel);
        let old = rng.bytes(2 * BLOCK as usize + 17);
        let new = rng.bytes(3 * BLOCK as usize + 5);
        fs::write(&path, &old).unwrap();
        let old_fd = File::open(&path).unwrap();
        assert_eq!(read_at_most(&old_fd, 0, 10), old[..10]);
        let old_ino = old_fd.metadata().unwrap().ino();

        let mut t = File::create(&tmp).unwrap();
        t.write_all(&new).unwrap();
        t.sync_all().unwrap();
        drop(t);
        fs::rename(&tmp, &path).unwrap();

        assert!(!tmp.exists(), "{tmp_rel} still there");
        assert_content(&path, &new);
        assert_ne!(fs::metadata(&path).unwrap().ino(), old_ino, "{rel}");
        // The open descriptor still reads the replaced file, from the daemon.
        drop_cache(&old_fd);
        assert_eq!(old_fd.metadata().unwrap().len(), old.len() as u64, "{rel}");
        assert_same(
            &read_at_most(&old_fd, 0, old.len() + 10),
            &old,
            &format!("old fd of {rel}"),
        );
        drop(old_fd);
        assert_backing(&env, rel, kind, &new);
        assert!(!env.datastore.join(tmp_rel).exists());
        finals.push((rel, new));
    }

    // A plain rename to a new name.
    fs::write(mount.path("vm1/a.nvram"), b"moved content").unwrap();
    fs::rename(mount.path("vm1/a.nvram"), mount.path("vm1/b.nvram")).unwrap();
    assert_errno(
        fs::metadata(mount.path("vm1/a.nvram")),
        libc::ENOENT,
        "old name",
    );
    assert_content(&mount.path("vm1/b.nvram"), b"moved content");

    // renameat2: NOREPLACE refuses an existing target; EXCHANGE swaps two
    // files atomically, and each keeps reading its own content afterwards.
    let rename2 = |from: &str, to: &str, flags| {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &mount.path(from),
            nix::fcntl::AT_FDCWD,
            &mount.path(to),
            flags,
        )
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
    };
    fs::write(mount.path("vm1/c.nvram"), b"c content, a bit longer").unwrap();
    assert_errno(
        rename2(
            "vm1/b.nvram",
            "vm1/c.nvram",
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ),
        libc::EEXIST,
        "RENAME_NOREPLACE over an existing file",
    );
    rename2(
        "vm1/b.nvram",
        "vm1/c.nvram",
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_content(&mount.path("vm1/b.nvram"), b"c content, a bit longer");
    assert_content(&mount.path("vm1/c.nvram"), b"moved content");
    fs::write(mount.path("vm1/b.nvram"), b"rewritten b").unwrap();
    assert_content(&mount.path("vm1/b.nvram"), b"rewritten b");
    assert_content(&mount.path("vm1/c.nvram"), b"moved content");

    assert!(mount.unmount().success());
    let mount = env.mount();
    assert_content(&mount.path("vm1/b.nvram"), b"rewritten b");
    assert_content(&mount.path("vm1/c.nvram"), b"moved content");
    for (rel, content) in &finals {
        assert_content(&mount.path(rel), content);
    }
}

#[test]
fn rename_directory_with_files_inside() {
    let env = setup();
    let mount = env.mount();
    let mut rng = XorShift::new(77);
    fs::create_dir_all(mount.path("vm1/snap/deep")).unwrap();
    let files = [
        ("snap/a.vmsn", rng.bytes(5000)),
        ("snap/deep/b.nvram", rng.bytes(9000)),
        ("snap/deep/c-flat.vmdk", rng.bytes(4096)),
    ];
    for (rel, content) in &files {
        fs::write(mount.path(&format!("vm1/{rel}")), content).unwrap();
    }
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.path("vm1/snap/deep/b.nvram"))
        .unwrap();

    fs::rename(mount.path("vm1/snap"), mount.path("vm1/snap2")).unwrap();
    assert_errno(
        fs::metadata(mount.path("vm1/snap")),
        libc::ENOENT,
        "old dir",
    );
    for (rel, content) in &files {
        let new_rel = rel.replacen("snap", "snap2", 1);
        assert_content(&mount.path(&format!("vm1/{new_rel}")), content);
    }
    // The descriptor opened before the rename writes to the moved file.
    held.write_all_at(b"after-rename", 100).unwrap();
    drop(held);
    let mut b = files[1].1.clone();
    model_write(&mut b, 100, b"after-rename");
    assert_content(&mount.path("vm1/snap2/deep/b.nvram"), &b);
    fs::write(mount.path("vm1/snap2/deep/new.log"), b"created after").unwrap();

    // Over an empty directory: allowed; over a non-empty one: ENOTEMPTY.
    fs::create_dir(mount.path("vm1/empty")).unwrap();
    fs::create_dir(mount.path("vm1/full")).unwrap();
    fs::write(mount.path("vm1/full/x"), b"x").unwrap();
    assert_errno(
        fs::rename(mount.path("vm1/snap2"), mount.path("vm1/full")),
        libc::ENOTEMPTY,
        "rename over non-empty dir",
    );
    fs::rename(mount.path("vm1/snap2"), mount.path("vm1/empty")).unwrap();
    assert_content(&mount.path("vm1/empty/deep/b.nvram"), &b);

    assert!(mount.unmount().success());
    let mount = env.mount();
    assert_content(&mount.path("vm1/empty/a.vmsn"), &files[0].1);
    assert_content(&mount.path("vm1/empty/deep/b.nvram"), &b);
    assert_content(&mount.path("vm1/empty/deep/c-flat.vmdk"), &files[2].1);
    assert_content(&mount.path("vm1/empty/deep/new.log"), b"created after");
    assert_backing(&env, "vm1/empty/deep/b.nvram", Kind::Encrypted, &b);
    assert_backing(&env, "vm1/empty/deep/c-flat.vmdk", Kind::Clear, &files[2].1);
}

// 5. unlink, mkdir, rmdir, readdir and internal names.

fn names(dir: &Path) -> Vec<String> {
    listing(dir).into_iter().map(|(name, ..)| name).collect()
}

#[test]
fn directories_unlink_and_internal_names() {
    let env = setup();
    assert!(env.vm_dir("vm1").join(".vmcryptfs-bundle").exists());
    let mount = env.mount();
    fs::create_dir(mount.path("vm1/dir")).unwrap();
    fs::create_dir(mount.path("made-at-root")).unwrap();
    for rel in ["vm1/vm1.vmx", "vm1/vm1-flat.vmdk", "vm1/dir/inner.nvram"] {
        fs::write(mount.path(rel), rel.as_bytes()).unwrap();
    }

    assert_eq!(
        names(&mount.path("vm1")),
        [
            ".control",
            ".control.json",
            "dir",
            "sub",
            "vm1-flat.vmdk",
            "vm1.vmx"
        ]
    );
    assert_eq!(names(&mount.path("vm1/dir")), ["inner.nvram"]);
    assert_eq!(names(&mount.path("plain")), Vec::<String>::new());
    let root = names(&mount.mnt);
    for name in [".control", ".stats", "vm1", "plain", "made-at-root"] {
        assert!(root.contains(&name.to_string()), "root lists {root:?}");
    }
    assert!(env.datastore.join("made-at-root").is_dir());

    // The bundle is invisible and untouchable; our prefix cannot be created.
    assert_errno(
        fs::metadata(mount.path("vm1/.vmcryptfs-bundle")),
        libc::ENOENT,
        "lookup of the bundle",
    );
    assert_errno(
        File::open(mount.path("vm1/.vmcryptfs-bundle")),
        libc::ENOENT,
        "open of the bundle",
    );
    assert!(fs::remove_file(mount.path("vm1/.vmcryptfs-bundle")).is_err());
    for rel in [
        "vm1/.vmcryptfs-bundle",
        "vm1/.vmcryptfs-x",
        "vm1/dir/.vmcryptfs",
        "plain/.vmcryptfs-y",
    ] {
        assert_errno(File::create(mount.path(rel)), libc::EPERM, rel);
        assert_errno(fs::create_dir(mount.path(rel)), libc::EPERM, rel);
        assert_errno(
            std::os::unix::fs::symlink("target", mount.path(rel)),
            libc::EPERM,
            rel,
        );
    }
    assert_errno(
        fs::rename(
            mount.path("vm1/vm1.vmx"),
            mount.path("vm1/.vmcryptfs-bundle"),
        ),
        libc::EPERM,
        "rename over the bundle",
    );
    assert_errno(
        fs::hard_link(mount.path("vm1/vm1.vmx"), mount.path("vm1/.vmcryptfs-z")),
        libc::EPERM,
        "link to an internal name",
    );
    assert_errno(
        fs::remove_file(mount.path("vm1/.control")),
        libc::EPERM,
        "unlink .control",
    );
    assert!(env.vm_dir("vm1").join(".vmcryptfs-bundle").exists());
    assert_content(&mount.path("vm1/vm1.vmx"), b"vm1/vm1.vmx");

    // rmdir and unlink errors, then success.
    assert_errno(
        fs::remove_dir(mount.path("vm1/dir")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    );
    assert_errno(
        fs::remove_dir(mount.path("vm1/vm1.vmx")),
        libc::ENOTDIR,
        "rmdir a file",
    );
    assert_errno(
        fs::remove_file(mount.path("vm1/dir")),
        libc::EISDIR,
        "unlink a directory",
    );
    assert_errno(
        fs::remove_file(mount.path("vm1/missing")),
        libc::ENOENT,
        "unlink missing",
    );
    fs::remove_file(mount.path("vm1/dir/inner.nvram")).unwrap();
    fs::remove_dir(mount.path("vm1/dir")).unwrap();
    fs::remove_file(mount.path("vm1/vm1-flat.vmdk")).unwrap();
    fs::remove_dir(mount.path("made-at-root")).unwrap();
    assert!(!env.vm_dir("vm1").join("dir").exists());
    assert!(!env.vm_dir("vm1").join("vm1-flat.vmdk").exists());
    assert!(!env.datastore.join("made-at-root").exists());
    assert_eq!(
        names(&mount.path("vm1")),
        [".control", ".control.json", "sub", "vm1.vmx"]
    );

    // An unlinked file stays usable through its open descriptor.
    let content = XorShift::new(5).bytes(10000);
    fs::write(mount.path("vm1/doomed.nvram"), &content).unwrap();
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.path("vm1/doomed.nvram"))
        .unwrap();
    fs::remove_file(mount.path("vm1/doomed.nvram")).unwrap();
    assert_errno(
        fs::metadata(mount.path("vm1/doomed.nvram")),
        libc::ENOENT,
        "stat after unlink",
    );
    assert!(!env.vm_dir("vm1").join("doomed.nvram").exists());
    drop_cache(&held);
    assert_same(
        &read_at_most(&held, 0, 20000),
        &content,
        "unlinked file via fd",
    );
    held.write_all_at(b"still writable", 9995).unwrap();
    drop_cache(&held);
    assert_eq!(read_at_most(&held, 9995, 100), b"still writable");
    assert_eq!(held.metadata().unwrap().len(), 9995 + 14);
}

/// One directory entry as `readdir` gives it: name, `d_ino`, and type.
fn listing(dir: &Path) -> Vec<(String, u64, fs::FileType)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            (name, entry.ino(), entry.file_type().unwrap())
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// What a listing of a fresh mount (nothing looked up yet) must agree
/// with: each entry's `d_ino` and type are what `lstat` then says, sizes
/// are plaintext sizes, and the node ids stay the same once the kernel's
/// cached attributes expire. The listing spans many reply pages (long
/// names), so entries that did not fit one page are exercised too; a
/// mistake in counting the kernel's references would make a node vanish
/// and come back with a new id.
#[test]
fn listing_carries_the_attributes_stat_sees() {
    let env = setup();
    let mount = env.mount();
    let mut sizes = std::collections::BTreeMap::new();
    for i in 0..300u64 {
        let name = format!("a-file-with-a-rather-long-name-to-fill-pages-{i:04}.log");
        let size = (i * 977) % 9000;
        fs::write(
            mount.path(&format!("vm1/{name}")),
            vec![b'x'; size as usize],
        )
        .unwrap();
        sizes.insert(name, size);
    }
    fs::write(mount.path("vm1/vm1.nvram"), b"nvram").unwrap();
    sizes.insert("vm1.nvram".into(), 5);
    fs::hard_link(mount.path("vm1/vm1.nvram"), mount.path("vm1/linked.nvram")).unwrap();
    sizes.insert("linked.nvram".into(), 5);
    std::os::unix::fs::symlink("vm1.nvram", mount.path("vm1/link")).unwrap();
    assert!(mount.unmount().success());

    let mount = env.mount();
    let dir = mount.path("vm1");
    let listed = listing(&dir);
    let check = |when: &str| {
        for (name, d_ino, kind) in &listed {
            let meta = fs::symlink_metadata(dir.join(name)).unwrap();
            assert_eq!(meta.ino(), *d_ino, "{when}: st_ino and d_ino of {name}");
            assert_eq!(meta.file_type(), *kind, "{when}: type of {name}");
            if let Some(size) = sizes.get(name) {
                assert_eq!(meta.len(), *size, "{when}: plaintext size of {name}");
            }
        }
    };
    check("right after the listing");
    let names: Vec<&str> = listed.iter().map(|(name, ..)| name.as_str()).collect();
    for name in [".control", "link", "linked.nvram", "sub", "vm1.nvram"] {
        assert!(names.contains(&name), "{name} listed");
    }
    assert_eq!(listed.len(), sizes.len() + 4, "entries: {names:?}");
    let nvram = |name: &str| listed.iter().find(|(n, ..)| n == name).unwrap().1;
    assert_eq!(
        nvram("vm1.nvram"),
        nvram("linked.nvram"),
        "hard links share a node"
    );

    // Past the kernel's attribute and entry lifetime (1 s) every stat goes
    // back to the daemon, which must still know each node by its id.
    std::thread::sleep(Duration::from_millis(1500));
    check("after the cached attributes expired");
    assert_eq!(listing(&dir), listed, "a second listing");
    assert_content(&dir.join("link"), b"nvram");
}

/// An entry removed from the datastore behind the mount, after the
/// directory was opened and before its entries were read, is left out of
/// the listing instead of failing it.
#[test]
fn entry_removed_behind_the_mount_during_a_listing_is_left_out() {
    let env = setup();
    let mount = env.mount();
    for name in ["a.log", "b.log", "c.log"] {
        fs::write(mount.path(&format!("vm1/{name}")), name).unwrap();
    }
    assert!(mount.unmount().success());
    let mount = env.mount();
    let mut entries = fs::read_dir(mount.path("vm1")).unwrap();
    fs::remove_file(env.vm_dir("vm1").join("b.log")).unwrap();
    let mut names = Vec::new();
    for entry in entries.by_ref() {
        names.push(entry.unwrap().file_name().into_string().unwrap());
    }
    names.sort();
    assert_eq!(
        names,
        [".control", ".control.json", "a.log", "c.log", "sub"],
        "listing after b.log went away"
    );
}

// 6. Symlinks, hard links, EXDEV and mv across VM homes.

#[test]
fn symlinks_and_hard_links() {
    let env = setup();
    let mount = env.mount();
    let content = XorShift::new(3).bytes(9000);
    fs::write(mount.path("vm1/a.nvram"), &content).unwrap();

    std::os::unix::fs::symlink("a.nvram", mount.path("vm1/link")).unwrap();
    std::os::unix::fs::symlink("../vm1/sub", mount.path("plain/to-sub")).unwrap();
    assert_eq!(
        fs::read_link(mount.path("vm1/link")).unwrap(),
        PathBuf::from("a.nvram")
    );
    assert_eq!(
        fs::read_link(env.vm_dir("vm1").join("link")).unwrap(),
        PathBuf::from("a.nvram")
    );
    assert!(fs::symlink_metadata(mount.path("vm1/link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_content(&mount.path("vm1/link"), &content);
    fs::write(mount.path("plain/to-sub/through-link.log"), b"via link").unwrap();
    assert_content(&mount.path("vm1/sub/through-link.log"), b"via link");

    // A hard link: one file under two names, one node.
    fs::hard_link(mount.path("vm1/a.nvram"), mount.path("vm1/b.nvram")).unwrap();
    let (ma, mb) = (
        fs::metadata(mount.path("vm1/a.nvram")).unwrap(),
        fs::metadata(mount.path("vm1/b.nvram")).unwrap(),
    );
    assert_eq!((ma.nlink(), mb.nlink()), (2, 2));
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(
        env.vm_dir("vm1")
            .join("b.nvram")
            .metadata()
            .unwrap()
            .nlink(),
        2
    );
    let mut model = content.clone();
    let via_b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.path("vm1/b.nvram"))
        .unwrap();
    let via_a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mount.path("vm1/a.nvram"))
        .unwrap();
    via_b.write_all_at(b"written via b", 4090).unwrap();
    model_write(&mut model, 4090, b"written via b");
    drop_cache(&via_a);
    assert_same(
        &read_at_most(&via_a, 0, 20000),
        &model,
        "a after write via b",
    );
    via_a.write_all_at(&[0xAB; 5000], 8000).unwrap();
    model_write(&mut model, 8000, &[0xAB; 5000]);
    drop_cache(&via_b);
    assert_same(
        &read_at_most(&via_b, 0, 20000),
        &model,
        "b after write via a",
    );
    drop((via_a, via_b));
    assert_content(&mount.path("vm1/a.nvram"), &model);
    // rename(2) between two links of one file does nothing (POSIX).
    fs::rename(mount.path("vm1/a.nvram"), mount.path("vm1/b.nvram")).unwrap();
    assert_content(&mount.path("vm1/a.nvram"), &model);
    assert_content(&mount.path("vm1/b.nvram"), &model);
    assert_eq!(fs::metadata(mount.path("vm1/b.nvram")).unwrap().nlink(), 2);
    fs::remove_file(mount.path("vm1/a.nvram")).unwrap();
    assert_eq!(fs::metadata(mount.path("vm1/b.nvram")).unwrap().nlink(), 1);
    assert_content(&mount.path("vm1/b.nvram"), &model);

    assert!(mount.unmount().success());
    let mount = env.mount();
    assert_content(&mount.path("vm1/b.nvram"), &model);
    // The symlink now dangles: its target name was unlinked.
    assert_errno(
        fs::metadata(mount.path("vm1/link")),
        libc::ENOENT,
        "dangling link",
    );
}

#[test]
fn cross_domain_link_and_rename_fail_with_exdev_and_mv_copies() {
    let env = setup();
    env.create_vm("vm2", false);
    env.create_vm("vm3", true);
    let mount = env.mount();
    let content = XorShift::new(11).bytes(3 * BLOCK as usize + 500);
    for rel in [
        "vm1/x.nvram",
        "vm1/a.bin",
        "vm1/disk.vmdk",
        "vm3/a.bin",
        "plain/p.txt",
    ] {
        fs::write(mount.path(rel), &content).unwrap();
    }
    fs::create_dir(mount.path("vm1/dir")).unwrap();

    let exdev = |result: std::io::Result<()>, what: &str| {
        assert_errno(result, libc::EXDEV, what);
    };
    let m = |rel: &str| mount.path(rel);
    exdev(
        fs::hard_link(m("vm1/x.nvram"), m("vm2/x.nvram")),
        "link vm1→vm2",
    );
    exdev(
        fs::rename(m("vm1/x.nvram"), m("vm2/x.nvram")),
        "rename vm1→vm2",
    );
    exdev(
        fs::hard_link(m("vm1/x.nvram"), m("plain/x")),
        "link vm→plain",
    );
    exdev(
        fs::rename(m("vm1/x.nvram"), m("plain/x")),
        "rename vm→plain",
    );
    exdev(
        fs::rename(m("plain/p.txt"), m("vm1/p.txt")),
        "rename plain→vm",
    );
    exdev(fs::rename(m("vm1/dir"), m("vm2/dir")), "rename dir vm1→vm2");
    exdev(
        fs::rename(m("vm1/dir"), m("plain/dir")),
        "rename dir vm→plain",
    );
    exdev(
        fs::rename(m("vm1/a.bin"), m("vm1/a.vmdk")),
        "class change bin→vmdk",
    );
    exdev(
        fs::rename(m("vm1/disk.vmdk"), m("vm1/disk.bin")),
        "class change vmdk→bin",
    );
    exdev(
        fs::hard_link(m("vm1/a.bin"), m("vm1/a.vmdk")),
        "link bin→vmdk",
    );
    for rel in [
        "vm2/x.nvram",
        "plain/x",
        "vm1/p.txt",
        "vm1/a.vmdk",
        "vm1/disk.bin",
    ] {
        assert!(!m(rel).exists(), "{rel} exists after a failed move");
    }
    assert_content(&m("vm1/x.nvram"), &content);
    assert_content(&m("vm1/a.bin"), &content);
    assert_content(&m("vm1/disk.vmdk"), &content);

    // With --encrypt-disks both names are encrypted: the rename is fine.
    fs::rename(m("vm3/a.bin"), m("vm3/a.vmdk")).unwrap();
    assert_content(&m("vm3/a.vmdk"), &content);
    assert_backing(&env, "vm3/a.vmdk", Kind::Encrypted, &content);

    // mv falls back to copying: re-encrypted under vm2's keys, or stored in
    // clear in the plain directory.
    let mtime = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::set_permissions(m("vm1/x.nvram"), fs::Permissions::from_mode(0o640)).unwrap();
    File::options()
        .write(true)
        .open(m("vm1/x.nvram"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let status = std::process::Command::new("/bin/mv")
        .arg(m("vm1/x.nvram"))
        .arg(m("vm2/x.nvram"))
        .status()
        .unwrap();
    assert!(status.success(), "mv vm1→vm2: {status}");
    assert!(!m("vm1/x.nvram").exists());
    assert!(!env.vm_dir("vm1").join("x.nvram").exists());
    assert_content(&m("vm2/x.nvram"), &content);
    assert_backing(&env, "vm2/x.nvram", Kind::Encrypted, &content);
    let backing = fs::read(env.vm_dir("vm2").join("x.nvram")).unwrap();
    assert_ne!(backing, content);
    let meta = fs::metadata(m("vm2/x.nvram")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "mv keeps the mode");
    assert_eq!(meta.mtime(), 1_600_000_000, "mv keeps the mtime");

    let status = std::process::Command::new("/bin/mv")
        .arg(m("vm2/x.nvram"))
        .arg(m("plain/x.nvram"))
        .status()
        .unwrap();
    assert!(status.success(), "mv vm2→plain: {status}");
    assert_content(&m("plain/x.nvram"), &content);
    assert_backing(&env, "plain/x.nvram", Kind::Clear, &content);
}

// 7. chmod, chown, utimens.

fn times(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

#[test]
fn chmod_chown_and_utimens() {
    let env = setup();
    let mount = env.mount();
    let mut targets: Vec<&str> = SAMPLE_FILES.iter().map(|(rel, _)| *rel).collect();
    for rel in &targets {
        fs::write(mount.path(rel), b"some content").unwrap();
    }
    targets.push("vm1/sub");
    let both = |rel: &str| {
        [
            fs::metadata(mount.path(rel)).unwrap(),
            fs::metadata(env.datastore.join(rel)).unwrap(),
        ]
    };
    for rel in &targets {
        let path = mount.path(rel);
        // By path, then through a descriptor (setattr with a handle).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        for meta in both(rel) {
            assert_eq!(meta.mode() & 0o7777, 0o640, "{rel}");
        }
        File::open(&path)
            .unwrap()
            .set_permissions(fs::Permissions::from_mode(0o2751))
            .unwrap();
        for meta in both(rel) {
            assert_eq!(meta.mode() & 0o7777, 0o2751, "{rel}");
        }

        std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
        for meta in both(rel) {
            assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{rel}");
        }
        std::os::unix::fs::fchown(File::open(&path).unwrap(), Some(4321), None).unwrap();
        for meta in both(rel) {
            assert_eq!((meta.uid(), meta.gid()), (4321, 5678), "{rel}");
        }

        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &nix::sys::time::TimeSpec::new(1_400_000_000, 987_654_321),
            &nix::sys::time::TimeSpec::new(1_500_000_000, 123_456_789),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        for meta in both(rel) {
            assert_eq!(
                (meta.mtime(), meta.mtime_nsec()),
                (1_500_000_000, 123_456_789)
            );
            assert_eq!(
                (meta.atime(), meta.atime_nsec()),
                (1_400_000_000, 987_654_321)
            );
        }
        if !path.is_dir() {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_times(FileTimes::new().set_modified(times(1_300_000_000, 5)))
                .unwrap();
            for meta in both(rel) {
                assert_eq!(
                    (meta.mtime(), meta.mtime_nsec()),
                    (1_300_000_000, 5),
                    "{rel}"
                );
                assert_eq!(meta.atime(), 1_400_000_000, "{rel}: atime kept");
            }
            // A write moves mtime to now.
            file.write_all_at(b"x", 3).unwrap();
            drop(file);
            for meta in both(rel) {
                assert!(meta.mtime() > 1_600_000_000, "{rel}: mtime after write");
            }
            assert_content(&path, b"somx content");
        }
    }
}

// 8. statfs and sync.

#[test]
fn statfs_and_fsync() {
    let env = setup();
    let mount = env.mount();
    let backing = nix::sys::statvfs::statvfs(&env.datastore).unwrap();
    for dir in ["", "vm1", "plain"] {
        let st = nix::sys::statvfs::statvfs(&mount.path(dir)).unwrap();
        assert!(st.blocks() > 0, "statfs {dir:?}: no blocks");
        assert!(st.fragment_size() > 0 && st.block_size() > 0);
        assert_eq!(
            st.blocks() * st.fragment_size(),
            backing.blocks() * backing.fragment_size(),
            "total size of {dir:?}"
        );
        assert_eq!(st.files(), backing.files());
        assert_eq!(st.name_max(), 255);
    }

    let mut files: Vec<(&str, Kind)> = SAMPLE_FILES.to_vec();
    files.push(("vm1/vm1.vmss", Kind::Encrypted));
    for (i, &(rel, kind)) in files.iter().enumerate() {
        let content = XorShift::new(i as u64 + 40).bytes(10000 + i * 1000);
        let mut file = File::create(mount.path(rel)).unwrap();
        file.write_all(&content).unwrap();
        file.sync_all().unwrap();
        file.write_all(b"more").unwrap();
        file.sync_data().unwrap();
        drop(file);
        // On a read-only descriptor too.
        let ro = File::open(mount.path(rel)).unwrap();
        ro.sync_all().unwrap();
        ro.sync_data().unwrap();
        let mut want = content;
        want.extend_from_slice(b"more");
        assert_backing(&env, rel, kind, &want);
        assert_content(&mount.path(rel), &want);
    }
    for dir in ["", "vm1", "vm1/sub", "plain"] {
        File::open(mount.path(dir)).unwrap().sync_all().unwrap();
    }
}

// 9. Sizes.

#[test]
fn sizes_are_plaintext_for_encrypted_and_raw_for_pass_through() {
    let env = setup();
    env.create_vm("vm2", true);
    let mount = env.mount();
    let sizes = [0usize, 1, 4095, 4096, 4097, 5000, 8192, 100_000];
    let mut written = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let rel = format!("vm1/file-{size}.nvram");
        let content = XorShift::new(i as u64 + 500).bytes(size);
        fs::write(mount.path(&rel), &content).unwrap();
        written.push((rel, Kind::Encrypted, content));
    }
    let mut rng = XorShift::new(8);
    let disk = rng.bytes((1 << 20) + 123);
    for (rel, kind) in [
        ("vm1/disk-flat.vmdk", Kind::Clear),
        ("vm2/disk-flat.vmdk", Kind::Encrypted),
        ("plain/disk.img", Kind::Clear),
    ] {
        // Written in unaligned pieces, at increasing offsets.
        let file = File::create(mount.path(rel)).unwrap();
        let mut offset = 0;
        for chunk in disk.chunks(70_001) {
            file.write_all_at(chunk, offset).unwrap();
            offset += chunk.len() as u64;
        }
        drop(file);
        written.push((rel.to_string(), kind, disk.clone()));
    }
    let check = |mount: &common::Mount| {
        for (rel, kind, content) in &written {
            let through = fs::metadata(mount.path(rel)).unwrap().len();
            let stored = fs::metadata(env.datastore.join(rel)).unwrap().len();
            assert_eq!(
                through,
                content.len() as u64,
                "size of {rel} through the mount"
            );
            match kind {
                Kind::Clear => assert_eq!(stored, through, "{rel}"),
                Kind::Encrypted if content.is_empty() => assert_eq!(stored, 0, "{rel}"),
                Kind::Encrypted => assert!(stored > through, "{rel}: {stored} ≤ {through}"),
            }
            assert_backing(&env, rel, *kind, content);
            assert_content(&mount.path(rel), content);
        }
    };
    check(&mount);
    assert_eq!(
        fs::metadata(mount.path("vm1/file-5000.nvram"))
            .unwrap()
            .len(),
        5000
    );
    assert!(
        fs::metadata(env.vm_dir("vm1").join("file-5000.nvram"))
            .unwrap()
            .len()
            > 5000
    );
    assert!(mount.unmount().success());
    check(&env.mount());
}

// 10. Shared writable mmap.

#[test]
fn shared_writable_mmap_reaches_the_datastore() {
    let env = setup();
    let mount = env.mount();
    let files = [
        ("vm1/vm1.vmem", Kind::Encrypted),
        ("vm1/sub/other.vmem", Kind::Encrypted),
        ("vm1/mapped-flat.vmdk", Kind::Clear),
    ];
    let edits: [(usize, &[u8]); 6] = [
        (0, b"start"),
        (4090, b"across-block-0-1"),
        (5000, &[0xEE; 100]),
        (8191, b"Z"),
        (8192, b"block two"),
        (12280, b"the-end!"),
    ];
    let mut models = Vec::new();
    for (i, (rel, _)) in files.iter().enumerate() {
        let mut model = XorShift::new(i as u64 + 321).bytes(3 * BLOCK as usize);
        fs::write(mount.path(rel), &model).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mount.path(rel))
            .unwrap();
        // SAFETY: nothing else resizes the file while it is mapped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        assert_same(&map, &model, &format!("{rel} through the map"));
        for (offset, bytes) in edits {
            map[offset..offset + bytes.len()].copy_from_slice(bytes);
            model_write(&mut model, offset as u64, bytes);
        }
        map.flush().unwrap();
        drop(map);
        drop(file);
        assert_same(
            &fs::read(mount.path(rel)).unwrap(),
            &model,
            &format!("{rel} after flush"),
        );
        models.push(model);
    }
    assert!(mount.unmount().success());
    let mount = env.mount();
    for ((rel, kind), model) in files.iter().zip(&models) {
        assert_backing(&env, rel, *kind, model);
        assert_content(&mount.path(rel), model);
    }
}

// 11. Sparse files.

#[test]
fn huge_sparse_file_stays_sparse() {
    let env = setup();
    let mount = env.mount();
    const SIZE: u64 = 100 << 30;
    const MIB: usize = 1 << 20;
    // An empty file, and one ending in a partial block.
    let files = ["vm1/big.vmem", "vm1/sub/big-with-head.nvram"];
    File::create(mount.path(files[0])).unwrap();
    fs::write(mount.path(files[1]), vec![0x5A; 5000]).unwrap();
    for rel in files {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(mount.path(rel))
            .unwrap();
        file.set_len(SIZE).unwrap();
        assert_eq!(fs::metadata(mount.path(rel)).unwrap().len(), SIZE, "{rel}");
        let backing = fs::metadata(env.datastore.join(rel)).unwrap();
        assert_eq!(backing.len(), plain_size_to_cipher_size(SIZE), "{rel}");
        assert!(
            backing.blocks() * 512 < 1 << 20,
            "{rel}: {} bytes allocated",
            backing.blocks() * 512
        );
        drop_cache(&file);
        assert!(
            read_at_most(&file, 50 << 30, MIB) == vec![0u8; MIB],
            "{rel}: 1 MiB at 50 GiB is not zeros"
        );
        // Writes far out stay local; the end of the file reads back.
        file.write_all_at(b"far out", (99 << 30) + 3).unwrap();
        file.write_all_at(b"tail", SIZE - 4).unwrap();
        drop_cache(&file);
        assert_eq!(read_at_most(&file, (99 << 30) + 3, 7), b"far out");
        assert_eq!(read_at_most(&file, SIZE - 10, 100), b"\0\0\0\0\0\0tail");
        assert_eq!(file.metadata().unwrap().len(), SIZE);
        let allocated = fs::metadata(env.datastore.join(rel)).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "{rel}: {allocated} bytes allocated");
    }
    let head = read_at_most(&File::open(mount.path(files[1])).unwrap(), 0, 8192);
    assert!(head[..5000].iter().all(|&b| b == 0x5A) && head[5000..].iter().all(|&b| b == 0));

    assert!(mount.unmount().success());
    let mount = env.mount();
    for rel in files {
        let file = File::open(mount.path(rel)).unwrap();
        assert_eq!(file.metadata().unwrap().len(), SIZE);
        assert!(read_at_most(&file, 50 << 30, MIB) == vec![0u8; MIB]);
        assert_eq!(read_at_most(&file, SIZE - 4, 100), b"tail");
    }
}
