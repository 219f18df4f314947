//! Copying read-around windows into the kernel's page cache of a file
//! (`frontend::cache_fill`): a small read through a read-only cached open
//! fills its 128 KiB window, whose other pages are then served by the
//! kernel without reaching the daemon; control windows are never filled;
//! and a file open for writing is never filled, so no reader sees data
//! older than a write or a truncation that has finished.

use crate::common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestEnv;
use vmcryptfs::content::read_around::is_control_window;

/// The default read-around window: what a fill copies.
const WINDOW: u64 = 128 << 10;
const PAGES_PER_WINDOW: u64 = WINDOW / 4096;
/// Windows are on from the first read, so each test decides when.
const ALWAYS: &[&str] = &["-o", "read_around=128"];

/// Reads of encrypted files that reached the daemon, for `vm`.
fn reads_served(mnt: &Path, vm: &str) -> u64 {
    common::vm_counter(mnt, "read_operations_total", vm)
}

/// The first `count` windows from 1 on that are control windows
/// (`control`) or not.
fn windows(control: bool, count: usize) -> Vec<u64> {
    (1..)
        .filter(|&w| is_control_window(w) == control)
        .take(count)
        .collect()
}

/// The pages of window `w`.
fn pages_of(w: u64) -> Vec<u64> {
    (w * PAGES_PER_WINDOW..(w + 1) * PAGES_PER_WINDOW).collect()
}

/// Opens `path` read-only (so through the page cache) and asks the kernel
/// not to read ahead for it, so that only our fills bring in neighbours.
fn open_random_reader(path: &Path) -> fs::File {
    let file = fs::File::open(path).unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    )
    .unwrap();
    file
}

/// Waits up to 5 s for all of `pages` of `file` to be in the page cache;
/// those that are.
fn wait_for_pages(file: &fs::File, pages: &[u64]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cached = common::cached_pages(file, pages);
        if cached.len() == pages.len() || Instant::now() > deadline {
            return cached;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `content` to `path` through the mount, then waits out the
/// attribute timeout and stats the file: the kernel's first attribute
/// refresh after a write may invalidate the file's cached pages (its
/// mtime differs from the one the kernel kept), and it must happen before
/// a test looks at what a read cached, not in the middle (on a loaded
/// machine it came seconds later and emptied the cache under the check).
fn write_and_settle(path: &Path, content: &[u8]) {
    fs::write(path, content).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    fs::metadata(path).unwrap();
}

/// Page `page` of `file`, checked to be 4 KiB.
fn read_page(file: &fs::File, page: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    file.read_exact_at(&mut buf, page * 4096).unwrap();
    buf
}

/// Reads page `page` of `disk` (checked against `content`) and checks that
/// 300 ms later no other page of its window is cached.
fn read_without_fill(disk: &fs::File, content: &[u8], page: u64, what: &str) {
    assert_eq!(
        read_page(disk, page),
        content[(page * 4096) as usize..][..4096],
        "{what}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let window = pages_of(page / PAGES_PER_WINDOW);
    assert_eq!(common::cached_pages(disk, &window), vec![page], "{what}");
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i % 251) as u8).collect()
}

/// In both content formats: a 4 KiB read fills the rest of its window (and
/// nothing of the next), whose pages then read back right without reaching
/// the daemon; a read in a control window fills nothing; and a mount with
/// one worker thread never fills.
#[test]
fn a_cached_read_fills_its_window_and_the_neighbours_never_reach_the_daemon() {
    let content = pattern(4 << 20);
    let filled = windows(false, 1)[0];
    let control = windows(true, 1)[0];
    for format in [1u16, 2] {
        for (options, fills) in [
            (ALWAYS, true),
            (&["-o", "read_around=128,threads=1"][..], false),
        ] {
            let what = format!("format {format}, options {options:?}");
            let env = TestEnv::new();
            env.create_vm_in_format("vm1", true, format);
            let mount = env.mount_with(options);
            let path = mount.path("vm1/disk-flat.vmdk");
            write_and_settle(&path, &content);
            let disk = open_random_reader(&path);

            let read = filled * PAGES_PER_WINDOW + 2;
            assert_eq!(
                read_page(&disk, read),
                content[(read * 4096) as usize..][..4096]
            );
            let window = pages_of(filled);
            let cached = wait_for_pages(&disk, &window);
            let filled_bytes =
                || common::vm_counter(&mount.path(""), "cache_fill_bytes_total", "vm1");
            if !fills {
                assert_eq!(cached, vec![read], "{what}: only the page read");
                assert_eq!(filled_bytes(), 0, "{what}: bytes filled");
                drop(disk);
                assert!(mount.unmount().success());
                continue;
            }
            assert_eq!(cached, window, "{what}: the window is filled");
            assert_eq!(
                filled_bytes(),
                WINDOW,
                "{what}: `.stats` counts the bytes filled"
            );
            assert_eq!(
                common::cached_pages(&disk, &pages_of(filled + 1)),
                Vec::<u64>::new(),
                "{what}: nothing of the next window"
            );
            let served = reads_served(&mount.path(""), "vm1");
            for page in window {
                let expected = &content[(page * 4096) as usize..][..4096];
                assert!(
                    read_page(&disk, page) == expected,
                    "{what}: page {page} of the fill"
                );
            }
            assert_eq!(
                reads_served(&mount.path(""), "vm1"),
                served,
                "{what}: the kernel served the window's pages itself"
            );

            let what = format!("{what}: a control window is not filled");
            read_without_fill(&disk, &content, control * PAGES_PER_WINDOW + 5, &what);
            assert_eq!(filled_bytes(), WINDOW, "{what}");
            drop(disk);
            assert!(mount.unmount().success());
        }
    }
}

/// While a file is open for writing nothing fills it, a write through that
/// open is what cached readers see next, and once it is closed reads fill
/// again.
#[test]
fn a_file_open_for_writing_is_not_filled() {
    let content = pattern(4 << 20);
    let [first, second, third] = windows(false, 3)[..] else {
        unreachable!()
    };
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount_with(ALWAYS);
    let path = mount.path("vm1/disk-flat.vmdk");
    write_and_settle(&path, &content);
    let disk = open_random_reader(&path);
    read_page(&disk, first * PAGES_PER_WINDOW);
    assert_eq!(wait_for_pages(&disk, &pages_of(first)), pages_of(first));

    let writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let changed = first * PAGES_PER_WINDOW + 3;
    writer.write_all_at(&[0xee; 4096], changed * 4096).unwrap();
    assert_eq!(
        read_page(&disk, changed),
        vec![0xee; 4096],
        "a filled page after a write"
    );

    let what = "no fill while the file is open for writing";
    read_without_fill(&disk, &content, second * PAGES_PER_WINDOW + 7, what);

    drop(writer);
    read_page(&disk, third * PAGES_PER_WINDOW);
    assert_eq!(
        wait_for_pages(&disk, &pages_of(third)),
        pages_of(third),
        "fills again once the writer is closed"
    );
    assert_eq!(read_page(&disk, changed), vec![0xee; 4096]);
    drop(disk);
    assert!(mount.unmount().success());
}

/// Cached readers hammer the first windows of a disk (each read that
/// reaches the daemon fills its window) while a writer opens it, writes a
/// page with the next version number and closes it, 250 times: no read
/// that starts after a write has finished returns an older version, and a
/// read right after each close returns that version. Then a truncation by
/// path while the readers go on: the size stays what was set, and reads
/// past it that start after it return nothing. With fills and without
/// (`read_around=0`), which must behave the same.
///
/// A read past the new end that runs *during* the truncation is not
/// checked: the kernel zero-fills the page of a read we answer short
/// (the backing file is already shorter) while its own size is not yet
/// updated, so such a read returns zeros, with or without fills.
#[test]
fn readers_never_see_data_older_than_a_finished_write_or_truncation() {
    for options in [ALWAYS, &["-o", "read_around=0"][..]] {
        hammer_while_writing(options);
    }
}

fn hammer_while_writing(options: &[&str]) {
    const PAGES: u64 = 8 * PAGES_PER_WINDOW;
    const TRUNCATED_TO: u64 = 2 * WINDOW;
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let mount = env.mount_with(options);
    let path = mount.path("vm1/disk-flat.vmdk");
    fs::write(&path, vec![0u8; (PAGES * 4096) as usize]).unwrap();
    // The newest finished version of each page.
    let finished: Arc<Vec<AtomicU8>> = Arc::new((0..PAGES).map(|_| AtomicU8::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // Set before the truncation starts, and after it has finished.
    let truncating = Arc::new(AtomicBool::new(false));
    let truncated = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|seed| {
            let (finished, stop) = (finished.clone(), stop.clone());
            let (truncating, truncated) = (truncating.clone(), truncated.clone());
            let disk = open_random_reader(&path);
            let what = format!("{options:?}");
            std::thread::spawn(move || {
                let mut state = seed * 7919 + 1;
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    state = next_random(state);
                    let page = (state >> 33) % PAGES;
                    let was_truncated = truncated.load(Ordering::SeqCst);
                    let oldest = finished[page as usize].load(Ordering::SeqCst);
                    let mut buf = vec![0u8; 4096];
                    let n = disk.read_at(&mut buf, page * 4096).unwrap();
                    let past_end = page * 4096 >= TRUNCATED_TO;
                    if was_truncated && past_end {
                        assert_eq!(n, 0, "{what}: page {page} read past the end after truncation");
                    } else if past_end && truncating.load(Ordering::SeqCst) {
                        // During the truncation: see the test's docs.
                    } else {
                        assert_eq!(n, 4096, "{what}: page {page}");
                        assert!(buf.iter().all(|&b| b == buf[0]), "{what}: page {page} is torn");
                        assert!(
                            buf[0] >= oldest,
                            "{what}: page {page}: read version {} after version {oldest} was written",
                            buf[0]
                        );
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let checker = open_random_reader(&path);
    let mut state = 12345u64;
    for version in 1..=250u8 {
        state = next_random(state);
        let page = (state >> 33) % PAGES;
        let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all_at(&[version; 4096], page * 4096).unwrap();
        drop(writer);
        finished[page as usize].store(version, Ordering::SeqCst);
        assert_eq!(
            read_page(&checker, page),
            vec![version; 4096],
            "{options:?}: page {page} right after version {version}"
        );
    }
    truncating.store(true, Ordering::SeqCst);
    nix::unistd::truncate(&path, TRUNCATED_TO as i64).unwrap();
    truncated.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            TRUNCATED_TO,
            "size after truncation"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        let reads = reader.join().expect("a reader failed");
        assert!(reads > 100, "{options:?}: a reader read only {reads} times");
    }
    drop(checker);
    assert!(mount.unmount().success());
}

/// A 64-bit linear congruential step (Knuth's MMIX constants): enough to
/// spread test reads, and the same sequence every run.
fn next_random(state: u64) -> u64 {
    state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
}
