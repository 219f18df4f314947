//! Crash safety: the mount process is killed with SIGKILL at random moments
//! while clients write in parallel, rename over existing files and re-key.
//! After each kill the datastore is remounted and checked:
//! * every bundle still opens (the DEK is never lost);
//! * every file whose write finished (and was fsynced) reads back exactly;
//! * a file that was being written when the process died is either intact
//!   or fails authentication only in the blocks being written (the
//!   documented bound), never with a wrong plaintext;
//! * a re-key either happened or did not, and no temp file blocks the next.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{read_control, write_control, TestEnv};

const KILLS: u64 = 60;
const FILE_LEN: usize = 3 * 4096 + 1000;

/// Content of version `v` of file `name`: every byte depends on both, so a
/// block from another version or file is recognisable.
fn content(name: &str, v: u64) -> Vec<u8> {
    let seed = name.bytes().fold(v.wrapping_mul(0x9e37_79b9), |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    });
    (0..FILE_LEN)
        .map(|i| (seed.wrapping_add(i as u64 / 7) % 251) as u8)
        .collect()
}

/// What the clients know: per file, the last version whose write finished
/// and was fsynced, and the version being written, if any.
#[derive(Default, Clone)]
struct Ledger {
    durable: BTreeMap<String, u64>,
    in_flight: BTreeMap<String, u64>,
}

type SharedLedger = Arc<Mutex<Ledger>>;

fn client(dir: PathBuf, id: usize, round: u64, ledger: SharedLedger, stop: Arc<AtomicBool>) {
    let mut v = round * 1000;
    while !stop.load(Ordering::Relaxed) {
        v += 1;
        // Clients 2 and 3 write disk images, which are served direct with
        // parallel writes (frontend::cache_mode); 0 and 1 ordinary files.
        let name = if id >= 2 {
            format!("c{id}-{}-flat.vmdk", v % 3)
        } else {
            format!("c{id}-{}.dat", v % 3)
        };
        let path = dir.join(&name);
        ledger.lock().unwrap().in_flight.insert(name.clone(), v);
        let result = (|| -> std::io::Result<()> {
            if id % 2 == 0 {
                // In-place rewrite in two block-aligned requests, so a kill
                // can land between them (each block comes from one request).
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                let data = content(&name, v);
                f.write_all_at(&data[..8192], 0)?;
                f.write_all_at(&data[8192..], 8192)?;
                f.sync_all()
            } else {
                // swtpm's pattern: write a temp file, rename over the target.
                let tmp = dir.join(format!("{name}.tmp"));
                let mut f = fs::File::create(&tmp)?;
                f.write_all(&content(&name, v))?;
                f.sync_all()?;
                fs::rename(&tmp, &path)
            }
        })();
        let mut ledger = ledger.lock().unwrap();
        match result {
            Ok(()) => {
                ledger.in_flight.remove(&name);
                ledger.durable.insert(name, v);
            }
            Err(_) => return, // the mount died under us; the write stays in flight
        }
    }
}

fn rekeyer(control: PathBuf, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if write_control(&control, "rekey\n").is_err() {
            return;
        }
    }
}

/// Checks one file block by block after a crash. A file with no write in
/// flight must hold exactly its durable version. A file being written may
/// mix blocks of the durable and the in-flight version, and only its
/// blocks may fail authentication (EIO). Returns the number of failed blocks.
fn check_file(path: &Path, name: &str, durable: Option<u64>, in_flight: Option<u64>) -> usize {
    let file = fs::File::open(path).unwrap();
    let mut failed = 0;
    for block in 0..FILE_LEN.div_ceil(4096) {
        let start = block * 4096;
        let len = 4096.min(FILE_LEN - start);
        let mut buf = vec![0u8; len];
        match file.read_exact_at(&mut buf, start as u64) {
            Ok(()) => {
                let is_version = |v: u64| content(name, v)[start..start + len] == buf[..];
                let ok = durable.is_some_and(is_version) || in_flight.is_some_and(is_version);
                assert!(ok, "{name} block {block}: plaintext from nowhere (durable {durable:?}, in flight {in_flight:?})");
            }
            Err(e) => {
                assert!(
                    in_flight.is_some(),
                    "{name} block {block}: {e}, but no write was in flight"
                );
                failed += 1;
            }
        }
    }
    failed
}

#[test]
fn sigkill_during_writes_renames_and_rekeys_loses_nothing_durable() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    let (mut checked, mut torn_blocks) = (0, 0);
    for round in 0..KILLS {
        let mount = env.mount();
        let dir = mount.path("vm1");
        let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for id in 0..4 {
            let (dir, ledger, stop) = (dir.clone(), ledger.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                client(dir, id, round, ledger, stop)
            }));
        }
        if round % 3 == 0 {
            env.run_ok(&["provider", "rotate"]);
            let (control, stop) = (mount.path("vm1/.control"), stop.clone());
            workers.push(std::thread::spawn(move || rekeyer(control, stop)));
        }
        // A pseudo-random moment within the first 150 ms of activity.
        std::thread::sleep(Duration::from_millis(10 + (round * 37) % 140));
        let _ = std::process::Command::new("kill")
            .args(["-9", &mount.pid().to_string()])
            .status();
        stop.store(true, Ordering::Relaxed);
        drop(mount); // lazy unmount of the dead mount, reap the process
        for w in workers {
            let _ = w.join();
        }

        // The bundle opens and the VM unlocks.
        let vm = env.vm_dir("vm1");
        env.run_ok(&["vm", "status", vm.to_str().unwrap()]);
        let mount = env.mount();
        let ledger = ledger.lock().unwrap().clone();
        for (name, version) in &ledger.durable {
            checked += 1;
            torn_blocks += check_file(
                &mount.path(&format!("vm1/{name}")),
                name,
                Some(*version),
                ledger.in_flight.get(name).copied(),
            );
        }
        // Reading the files unlocked the VM (status alone never does).
        if !ledger.durable.is_empty() {
            assert_eq!(
                read_control(&mount.path("vm1/.control"))["state"],
                "unlocked",
                "round {round}"
            );
        }
        // A re-key works after the crash: no leftover temp file blocks it.
        write_control(&mount.path("vm1/.control"), "rekey").expect("re-key after the crash");
        drop(mount);
    }
    assert!(checked >= KILLS, "the workload must have produced files");
    eprintln!("{KILLS} kills, {checked} file checks, {torn_blocks} blocks torn by a kill mid-write (allowed: in flight)");
}
