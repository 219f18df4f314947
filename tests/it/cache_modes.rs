//! The kernel cache policy (frontend::cache_mode): writable opens of
//! encrypted files are direct, everything else goes through the page
//! cache, and the two modes always see the same bytes. And what reads
//! bring into the backing file's page cache (`-o read_around`), or start
//! reading ahead of a sequential reader (`-o read_ahead`).

use crate::common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{SmallFs, TestEnv};

/// Plaintext bytes the mount has served for `vm`.
fn bytes_read_by_mount(mnt: &Path, vm: &str) -> u64 {
    common::vm_counter(mnt, "read_bytes_total", vm)
}

/// Reads the first 4 KiB of `file` `times` times and returns how many bytes
/// reached the mount meanwhile.
fn bytes_served_for_rereads(mnt: &Path, file: &fs::File, times: usize) -> u64 {
    let before = bytes_read_by_mount(mnt, "vm1");
    let mut buf = [0u8; 4096];
    for _ in 0..times {
        file.read_exact_at(&mut buf, 0).unwrap();
    }
    bytes_read_by_mount(mnt, "vm1") - before
}

#[test]
fn writable_encrypted_opens_are_direct_and_other_opens_are_cached() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let disk = mount.path("vm1/disk-flat.vmdk");
    let config = mount.path("vm1/vm1.vmx");
    for file in [&disk, &config] {
        fs::write(file, vec![0x5a; 4096]).unwrap();
    }
    let read_write = |path: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    };

    // A writable open of an encrypted file, a disk or any other: every
    // read reaches the mount.
    for (file, what) in [(&disk, "disk"), (&config, ".vmx")] {
        let rw = read_write(file);
        assert_eq!(
            bytes_served_for_rereads(&mount.path(""), &rw, 10),
            10 * 4096,
            "reads of a writable {what} open must not be cached"
        );
    }

    // Read-only opens of the same files: the page cache serves the
    // re-reads.
    for (file, what) in [(&disk, "disk"), (&config, ".vmx")] {
        let ro = fs::File::open(file).unwrap();
        let served = bytes_served_for_rereads(&mount.path(""), &ro, 10);
        assert!(
            served <= 4096,
            "read-only {what} open re-read {served} bytes"
        );
    }
}

#[test]
fn cached_readers_direct_writers_and_mappings_see_the_same_bytes() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    let disk = mount.path("vm1/disk-flat.vmdk");
    fs::write(&disk, vec![b'A'; 64 * 1024]).unwrap();

    let cached = fs::File::open(&disk).unwrap();
    let mut buf = [0u8; 8];
    cached.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"AAAAAAAA");

    let direct = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    direct.write_all_at(b"BBBBBBBB", 4096).unwrap();
    cached.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(
        &buf, b"BBBBBBBB",
        "a cached reader saw stale data after a direct write"
    );

    // A shared mapping of the direct open writes through to both opens,
    // and sees a later direct write.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&direct) }.unwrap();
    map[..4].copy_from_slice(b"MMAP");
    map.flush().unwrap();
    let mut head = [0u8; 4];
    direct.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"MMAP");
    cached.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"MMAP");
    direct.write_all_at(b"CCCC", 0).unwrap();
    assert_eq!(&map[..4], b"CCCC", "the mapping missed a direct write");
    drop(map);
    drop(direct);
    drop(cached);

    // And what reached the backing file is what a fresh mount reads.
    mount.unmount();
    let mount = env.mount();
    let content = fs::read(mount.path("vm1/disk-flat.vmdk")).unwrap();
    assert_eq!(&content[..4], b"CCCC");
    assert_eq!(&content[4096..4104], b"BBBBBBBB");
    assert!(content[4104..].iter().all(|&b| b == b'A'));
}

/// Sequential reads through the page cache get a 1 MiB readahead window
/// (cli::mount_cmd::widen_readahead), the largest request the mount takes,
/// instead of the 128 KiB the kernel gives a new FUSE mount. The kernel
/// lowers the window at FUSE init to the mount's max_readahead, so reading
/// it back after the mount serves proves both agree.
#[test]
fn the_mount_reads_ahead_one_whole_request() {
    use std::os::unix::fs::MetadataExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "the readahead window is set through sysfs, which needs root (as the tests run in CI)"
    );
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount();
    fs::write(mount.path("vm1/disk-flat.vmdk"), vec![1; 8192]).unwrap();
    let dev = fs::metadata(mount.path("vm1")).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let window = fs::read_to_string(&knob).unwrap();
    assert_eq!(window.trim(), "1024", "{knob}");
    assert_eq!(
        fs::read(mount.path("vm1/disk-flat.vmdk")).unwrap(),
        vec![1; 8192]
    );
}

/// What a cold 4 KiB read of an encrypted disk brings in, in both content
/// formats: with `-o read_around=64` the whole aligned 64 KiB window of the
/// backing file around the pages it needs, but not the next window; with
/// `read_around=0` only those pages; and with the default (`auto`) only
/// those pages on a file whose reads have not yet come back to cached
/// pages, but the 128 KiB window once an epoch of 4,096 small reads found
/// more than a sixteenth of their pages cached.
///
/// The page cache is the kernel's: under memory pressure from the rest of
/// the suite it may evict what a case brought in (or fail to allocate a
/// readahead page) before the case looks. So a case that sees the wrong
/// pages runs again on a new mount, up to three times, and fails only if
/// every attempt does; each failed attempt is printed. A broken window
/// fails all three.
#[test]
fn read_around_brings_in_the_aligned_window_of_a_cold_read() {
    let content: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    // (options, reads before the cold one, pages of the window expected)
    let cases: [(&[&str], bool, Option<u64>); 5] = [
        (&["-o", "read_around=64"], false, Some(16)),
        (&["-o", "read_around=0"], false, None),
        (&["-o", "read_around=0"], true, None),
        (&[], false, None),
        (&[], true, Some(32)),
    ];
    for format in [1u16, 2] {
        for (options, warm_up, window_expected) in cases {
            let case = ReadAroundCase {
                format,
                options,
                warm_up,
                window_expected,
            };
            let mut failures = Vec::new();
            while failures.len() < 3 {
                match case.run(&content) {
                    Ok(()) => break,
                    Err(failure) => {
                        eprintln!("{case:?}, attempt {}: {failure}", failures.len() + 1);
                        failures.push(failure);
                    }
                }
            }
            assert!(failures.len() < 3, "{case:?}: {failures:#?}");
        }
    }
}

/// One case of [`read_around_brings_in_the_aligned_window_of_a_cold_read`].
#[derive(Debug, Clone, Copy)]
struct ReadAroundCase {
    format: u16,
    options: &'static [&'static str],
    /// Whether 4,096 reads that mostly hit come before the cold one.
    warm_up: bool,
    /// Pages of the window a cold read brings in, if any.
    window_expected: Option<u64>,
}

impl ReadAroundCase {
    /// Block read cold.
    const BLOCK: u64 = 100;

    /// Mounts a new datastore, writes `content` as an encrypted disk and
    /// reads block [`Self::BLOCK`] of it cold. Data read back wrong panics;
    /// pages cached other than as expected are an `Err` naming them.
    fn run(&self, content: &[u8]) -> Result<(), String> {
        let format = self.format;
        // Pages the read needs anyway: those holding the block's stored
        // pieces, and in format 2 the page after its data page (read with
        // it, see content::sealed_region).
        let pieces = common::stored_block_pieces(format, Self::BLOCK);
        let mut needed: Vec<u64> = pieces
            .iter()
            .flat_map(|&(off, len)| off / 4096..(off + len).div_ceil(4096))
            .collect();
        if format == 2 {
            needed.push(pieces[0].0 / 4096 + 1);
        }
        needed.sort();
        let first = pieces[0].0 / 4096;
        // Without a window, nothing of the default's 128 KiB one.
        let window_pages = self.window_expected.unwrap_or(32);
        let window = first - first % window_pages..first - first % window_pages + window_pages;
        let rest_of_window: Vec<u64> = window.clone().filter(|p| !needed.contains(p)).collect();
        let next_window: Vec<u64> = (window.end..window.end + window_pages).collect();

        let env = TestEnv::new();
        env.create_vm_in_format("vm1", true, format);
        let mount = env.mount_with(self.options);
        fs::write(mount.path("vm1/disk-flat.vmdk"), content).unwrap();
        let backing = fs::File::open(env.vm_dir("vm1").join("disk-flat.vmdk")).unwrap();
        backing.sync_all().unwrap();
        // A writable open of an encrypted disk is direct: each read
        // reaches the daemon whatever the mount's page cache holds.
        let disk = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(mount.path("vm1/disk-flat.vmdk"))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        if self.warm_up {
            // 4,096 reads of 512 blocks: all but the first of each hit.
            for i in 0..4096u64 {
                disk.read_exact_at(&mut buf, (i % 512) * 4096).unwrap();
            }
        }
        common::drop_cache(&backing);
        let all: Vec<u64> = (0..window.end + window_pages).collect();
        assert_eq!(
            common::cached_pages(&backing, &all),
            Vec::<u64>::new(),
            "the backing file system evicts clean pages on request (not a tmpfs TMPDIR)"
        );

        disk.read_exact_at(&mut buf, Self::BLOCK * 4096).unwrap();
        assert_eq!(buf, content[(Self::BLOCK * 4096) as usize..][..4096]);

        // `.stats` counts the windows, so an operator can see them; read
        // first, as it does not depend on what the kernel keeps.
        let windows = common::vm_counter(&mount.path(""), "read_around_windows_total", "vm1");
        // The window's read is started, not waited for: give it time to
        // land (and the default time to show it brings nothing).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let window_cached = loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let cached = common::cached_pages(&backing, &rest_of_window);
            let settled = self.window_expected.is_none() || cached.len() == rest_of_window.len();
            if settled || std::time::Instant::now() > deadline {
                break cached;
            }
        };
        let expected_window = if self.window_expected.is_some() {
            rest_of_window.clone()
        } else {
            Vec::new()
        };
        let next_window_cached = common::cached_pages(&backing, &next_window);
        let needed_cached = common::cached_pages(&backing, &needed);
        drop(disk);
        assert!(mount.unmount().success());

        let mut wrong = Vec::new();
        if windows != u64::from(self.window_expected.is_some()) {
            wrong.push(format!("{windows} windows counted"));
        }
        if window_cached != expected_window {
            wrong.push(format!("pages of the window cached: {window_cached:?}"));
        }
        if !next_window_cached.is_empty() {
            wrong.push(format!(
                "pages of the next window cached: {next_window_cached:?}"
            ));
        }
        if needed_cached != needed {
            wrong.push(format!(
                "of the pages read {needed:?}, cached: {needed_cached:?}"
            ));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}

/// Whether `read_ahead=auto` reads ahead for files in `dir`: when its
/// device reads ahead less than 4 MiB by itself, or cannot be found.
fn auto_reads_ahead_in(dir: &Path) -> bool {
    vmcryptfs::datastore::backing_device::readahead_bytes(dir).is_none_or(|ra| ra < 4 << 20)
}

/// Writes `content` as `vm`'s disk through `mount` and opens it writable:
/// such an open of an encrypted disk is direct, so each read reaches the
/// daemon, in order.
fn write_direct_disk(mount: &common::Mount, vm: &str, content: &[u8]) -> fs::File {
    let path = mount.path(&format!("{vm}/disk-flat.vmdk"));
    fs::write(&path, content).unwrap();
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap()
}

/// Reads `disk` from start to end in 1 MiB reads into a buffer `misalign`
/// bytes past a page boundary, checking each against `content`.
fn read_disk_in_order(disk: &fs::File, content: &[u8], misalign: usize) {
    const MIB: usize = 1 << 20;
    let mut aligned = vec![0u8; MIB + 8192];
    let skip = aligned.as_ptr().align_offset(4096);
    let buf = &mut aligned[skip + misalign..][..MIB];
    for (mib, expected) in content.chunks(MIB).enumerate() {
        disk.read_exact_at(buf, (mib * MIB) as u64).unwrap();
        assert!(*buf == *expected, "MiB {mib} read back differently");
    }
}

/// Backing offset of block `n`'s stored bytes (its nonce in format 1, its
/// data page in format 2), from docs/FORMAT.md §3 and §3.9.
fn stored_data_off(format: u16, n: u64) -> u64 {
    match format {
        1 => 44 + n * 4128,
        _ => (n / 126) * 127 * 4096 + 4096 + (n % 126) * 4096,
    }
}

/// `-o read_ahead=4`: 1 MiB reads from start to end start the backing
/// reads of the next 4 MiB from the third read on, each backing byte once,
/// up to the end of the file, whether or not the kernel splits the reads
/// off block boundaries; 1 MiB reads at random start nothing; with
/// `read_ahead=off` nothing either; and the default (`auto`) reads ahead
/// exactly when the datastore's device reads ahead less than 4 MiB
/// itself. Counted by `.stats`, in both content formats.
#[test]
fn read_ahead_starts_the_backing_reads_ahead_of_a_sequential_reader() {
    const MIB: u64 = 1 << 20;
    let blocks_per_mib = MIB / 4096;
    let content: Vec<u8> = (0..16 * MIB).map(|i| (i % 253) as u8).collect();
    let default_reads_ahead = auto_reads_ahead_in(&TestEnv::new().datastore);
    // Sequential, then these far-apart MiBs (no two within 4 MiB in a row).
    let random = [9, 2, 14, 5, 11, 0, 7, 15, 3, 12, 1, 8];
    let cases: [(&[&str], bool); 3] = [
        (&["-o", "read_ahead=4"], true),
        (&["-o", "read_ahead=off"], false),
        (&[], default_reads_ahead),
    ];
    for format in [1u16, 2] {
        for (options, reads_ahead) in cases {
            let what = format!("format {format}, options {options:?}");
            let env = TestEnv::new();
            env.create_vm_in_format("vm1", true, format);
            let mount = env.mount_with(options);
            let disk = write_direct_disk(&mount, "vm1", &content);
            let started = || common::vm_counter(&mount.path(""), "read_ahead_bytes_total", "vm1");
            let mut expected = 0;
            // Into a page-aligned buffer, each 1 MiB read is one request.
            // 512 bytes into a page, the kernel splits it (the buffer
            // straddles one page more than a request holds): requests of
            // 1 MiB - 512 bytes that end inside a block, each followed by
            // one of 512 bytes, too small to take part.
            let mut buf = vec![0u8; MIB as usize];
            for misalign in [0, 512] {
                read_disk_in_order(&disk, &content, misalign);
                // From the block where the third read ends (3 MiB) to the
                // end of the file, each backing byte once.
                if reads_ahead {
                    expected += stored_data_off(format, 16 * blocks_per_mib)
                        - stored_data_off(format, 3 * blocks_per_mib);
                }
                let what = format!("{what}, buffer {misalign} bytes into a page");
                assert_eq!(started(), expected, "{what}: bytes started, sequential");
                for mib in random {
                    disk.read_exact_at(&mut buf, mib * MIB).unwrap();
                }
                assert_eq!(started(), expected, "{what}: bytes started, random");
            }
            drop(disk);
            assert!(mount.unmount().success());
        }
    }
}

/// `content::prefetch::start_reading` of 0 bytes starts nothing (to
/// `posix_fadvise` a length of 0 means "to the end of the file"; a
/// read-ahead range that holds no whole block maps to 0 bytes), while
/// 4 pages bring in exactly those.
#[test]
fn starting_to_read_nothing_reads_nothing() {
    use std::io::Write;
    let env = TestEnv::new();
    let path = env.datastore.join("prefetched");
    let mut file = fs::File::create(&path).unwrap();
    file.write_all(&vec![7u8; 64 * 4096]).unwrap();
    file.sync_all().unwrap();
    let file = fs::File::open(&path).unwrap();
    common::drop_cache(&file);
    let all: Vec<u64> = (0..64).collect();
    assert_eq!(
        common::cached_pages(&file, &all),
        Vec::<u64>::new(),
        "the backing file system evicts clean pages on request (not a tmpfs TMPDIR)"
    );
    vmcryptfs::content::prefetch::start_reading(&file, 4096, 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        common::cached_pages(&file, &all),
        Vec::<u64>::new(),
        "after 0 bytes"
    );
    vmcryptfs::content::prefetch::start_reading(&file, 4096, 4 * 4096);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while common::cached_pages(&file, &all).len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        common::cached_pages(&file, &all),
        vec![1, 2, 3, 4],
        "after 4 pages"
    );
}

/// The default `read_ahead=auto` is decided for each file by the device it
/// lives on: a VM home that is a tmpfs mounted inside the datastore (no
/// block device, so taken to read ahead as little as the kernel's default)
/// reads ahead, and one on the datastore's own device does so exactly when
/// that device reads ahead less than 4 MiB. Needs root (mount(8)).
#[test]
fn read_ahead_auto_is_decided_by_the_device_of_each_file() {
    const MIB: u64 = 1 << 20;
    let content: Vec<u8> = (0..16 * MIB).map(|i| (i % 251) as u8).collect();
    let env = TestEnv::new();
    let own_fs = SmallFs::mount(&env.vm_dir("on-tmpfs"), "64m");
    env.create_vm_in_format("on-tmpfs", true, 2);
    env.create_vm_in_format("on-datastore", true, 2);
    let datastore_reads_ahead = auto_reads_ahead_in(&env.datastore);
    assert_eq!(
        vmcryptfs::datastore::backing_device::readahead_bytes(&env.vm_dir("on-tmpfs")),
        None,
        "a tmpfs has no device readahead"
    );
    let mount = env.mount();
    for (vm, reads_ahead) in [("on-tmpfs", true), ("on-datastore", datastore_reads_ahead)] {
        let disk = write_direct_disk(&mount, vm, &content);
        read_disk_in_order(&disk, &content, 0);
        let started = common::vm_counter(&mount.path(""), "read_ahead_bytes_total", vm);
        assert_eq!(started > 0, reads_ahead, "{vm}: {started} bytes started");
    }
    assert!(mount.unmount().success());
    drop(own_fs);
}

/// With the default (`auto`) read-around, a mount whose memory cgroup
/// cannot hold a disk never brings in windows of it, however much memory
/// the host has free: the cache would be reclaimed at the cgroup's limit
/// before the window is read again. The same disk and reads in a mount
/// outside any limit do get a window, so the case can fail.
#[test]
fn read_around_stays_off_for_a_disk_larger_than_the_mounts_memory_cgroup() {
    let content: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    let windows_with = |limit: Option<u64>| -> u64 {
        let env = TestEnv::new();
        env.create_vm_in_format("vm1", true, 2);
        let mount = env.mount();
        let _cgroup = limit.map(|bytes| MemoryCgroup::holding(mount.pid(), bytes));
        fs::write(mount.path("vm1/disk-flat.vmdk"), &content).unwrap();
        let disk = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(mount.path("vm1/disk-flat.vmdk"))
            .unwrap();
        let backing = fs::File::open(env.vm_dir("vm1").join("disk-flat.vmdk")).unwrap();
        // Dirty pages survive the drop below: written back first, the cold
        // read is cold whatever the host's writeback settings.
        backing.sync_all().unwrap();
        let mut buf = vec![0u8; 4096];
        // An epoch of reads that mostly hit, as in
        // read_around_brings_in_the_aligned_window_of_a_cold_read.
        for i in 0..4096u64 {
            disk.read_exact_at(&mut buf, (i % 512) * 4096).unwrap();
        }
        common::drop_cache(&backing);
        disk.read_exact_at(&mut buf, 100 * 4096).unwrap();
        assert_eq!(buf, content[100 * 4096..][..4096]);
        let windows = common::vm_counter(&mount.path(""), "read_around_windows_total", "vm1");
        drop(disk);
        assert!(mount.unmount().success());
        windows
    };
    // The control: without a limit the window comes (retried as the
    // other read-around test is, for the kernel's page cache).
    let unlimited: Vec<u64> = (0..3)
        .map(|_| windows_with(None))
        .take_while(|&w| w == 0)
        .collect();
    assert!(
        unlimited.len() < 3,
        "no window in three mounts without a cgroup limit"
    );
    // The mount is charged for the page cache of what it writes and reads
    // from when it joins; 32 MiB holds the warm-up's 2 MiB easily but not
    // the 64 MiB disk.
    assert_eq!(
        windows_with(Some(32 << 20)),
        0,
        "a window was brought in under a 32 MiB memory cgroup for a 64 MiB disk"
    );
}

/// A memory cgroup made for one test, with a limit, holding one process;
/// removed when dropped (after that process has exited). cgroup v1's
/// memory controller where the host mounts it (a hybrid host, as this
/// project's machines are), else cgroup v2's unified hierarchy.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn holding(pid: u32, limit: u64) -> Self {
        let name = format!("vmcryptfs-test-{:x}", common::rand_suffix());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else {
            (Path::new("/sys/fs/cgroup").join(&name), "memory.max")
        };
        fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot make the memory cgroup {} for this test (it needs root and a memory controller): {e}",
                dir.display()
            )
        });
        let cgroup = Self { dir };
        fs::write(cgroup.dir.join(limit_file), limit.to_string())
            .unwrap_or_else(|e| panic!("cannot set {limit_file} of {}: {e}", cgroup.dir.display()));
        fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string()).unwrap();
        cgroup
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The process has exited or is about to: retry briefly.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!(
            "could not remove the test's memory cgroup {}",
            self.dir.display()
        );
    }
}
