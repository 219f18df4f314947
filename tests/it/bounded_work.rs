//! Bounded work (issue 22, item 4): a size an unprivileged caller chooses
//! never makes the mount work, or hold a lock, in proportion to it. Huge
//! extending truncates, writes and fallocates on a mounted encrypted file
//! answer within a second, as ext4 would (EFBIG past its 16 TiB), while
//! another file of the mount keeps answering `stat`; the file's content is
//! intact afterwards.

use crate::common;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestEnv;
use nix::fcntl::{fallocate, FallocateFlags};

const PIB: u64 = 1 << 50;
const EIB: u64 = 1 << 60;

/// One caller-chosen extension of the file at a path; its errno, if any.
type Op = fn(&Path) -> Option<i32>;

fn truncate_cmd(path: &Path, size: &str) -> Option<i32> {
    let out = Command::new("truncate")
        .args(["-s", size])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        return None;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("File too large"),
        "truncate -s {size}: {stderr}"
    );
    Some(libc::EFBIG)
}

fn open_rw(path: &Path) -> File {
    File::options().read(true).write(true).open(path).unwrap()
}

fn errno_of<T>(result: io::Result<T>) -> Option<i32> {
    result.err().map(|e| e.raw_os_error().unwrap())
}

fn fallocate_at(path: &Path, offset: u64, flags: FallocateFlags) -> Option<i32> {
    let file = open_rw(path);
    fallocate(&file, flags, offset as i64, 4096)
        .err()
        .map(|e| e as i32)
}

const OPS: [(&str, Op); 7] = [
    ("truncate -s 4E", |p| truncate_cmd(p, "4E")),
    ("truncate -s 2P", |p| truncate_cmd(p, "2P")),
    ("truncate -s 8T", |p| truncate_cmd(p, "8T")),
    ("write at 1 PiB", |p| {
        errno_of(open_rw(p).write_at(b"x", PIB))
    }),
    ("write at 7 EiB", |p| {
        errno_of(open_rw(p).write_at(b"x", 7 * EIB))
    }),
    ("fallocate at 1 PiB", |p| {
        fallocate_at(p, PIB, FallocateFlags::empty())
    }),
    ("fallocate -n at 1 PiB", |p| {
        fallocate_at(p, PIB, FallocateFlags::FALLOC_FL_KEEP_SIZE)
    }),
];

/// Runs `op` on a thread and gives it one second: a hung operation fails
/// the test instead of the test hanging with it.
fn within_a_second(name: &str, path: &Path, op: Op) -> Option<i32> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    let started = Instant::now();
    std::thread::spawn(move || tx.send(op(&path)));
    let result = rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| panic!("{name} did not answer within 1 s"));
    assert!(started.elapsed() < Duration::from_secs(1), "{name}");
    result
}

/// `stat` of `path` every 20 ms on a thread until `stop`; the slowest
/// answer.
fn watch_stat(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            fs::metadata(&path).unwrap();
            slowest = slowest.max(started.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        slowest
    })
}

fn content() -> Vec<u8> {
    (0..300_007u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn huge_extensions_of_a_mounted_file_answer_at_once_in_both_formats() {
    let env = TestEnv::new();
    // What ext4 itself answers, on a plain file beside the datastore.
    let reference = env.dir.path().join("reference");
    let mut expected = Vec::new();
    for (name, op) in OPS {
        fs::write(&reference, content()).unwrap();
        expected.push(op(&reference));
        assert!(name.contains("8T") || name.contains("-n") || expected.last().unwrap().is_some());
    }
    for format in [1, 2] {
        let vm = format!("vm{format}");
        env.create_vm_in_format(&vm, true, format);
        let mount = env.mount();
        let disk = mount.path(&format!("{vm}/disk-flat.vmdk"));
        let other = mount.path(&format!("{vm}/other-flat.vmdk"));
        fs::write(&other, b"other").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_stat(other.clone(), stop.clone());
        for ((name, op), expected) in OPS.iter().zip(&expected) {
            fs::write(&disk, content()).unwrap();
            let got = within_a_second(name, &disk, *op);
            assert_eq!(
                got, *expected,
                "format {format}: {name} (ext4 answers {expected:?})"
            );
            if expected.is_some() {
                // A refused extension changed nothing.
                assert_eq!(
                    fs::read(&disk).unwrap(),
                    content(),
                    "format {format}: {name}"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        let slowest = watcher.join().unwrap();
        assert!(
            slowest < Duration::from_secs(1),
            "format {format}: stat took {slowest:?}"
        );
        // The one that succeeded: 8 TiB, sparse, and the content before it.
        fs::write(&disk, content()).unwrap();
        assert_eq!(truncate_cmd(&disk, "8T"), None);
        assert_eq!(fs::metadata(&disk).unwrap().len(), 8 << 40);
        let file = File::open(&disk).unwrap();
        let mut head = vec![0u8; content().len()];
        file.read_exact_at(&mut head, 0).unwrap();
        assert!(head == content(), "format {format}");
        let mut tail = [1u8; 10];
        file.read_exact_at(&mut tail, (8 << 40) - 10).unwrap();
        assert_eq!(tail, [0; 10]);
        drop(file);
        mount.unmount();
    }
}
