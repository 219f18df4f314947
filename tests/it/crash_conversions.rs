//! Crash safety of the resumable operations: the `vmcryptfs` process doing
//! an in-place encryption of a VM home, a disk encryption or decryption, or
//! a deep re-key is killed with SIGKILL at random moments. After each kill:
//! * the bundle still opens, or the VM reports the unfinished conversion;
//! * running the same command again completes it (it resumes);
//! * no temp file or journal is left behind afterwards;
//! * every file reads back exactly, through a fresh mount.
//!
//! The seed is printed; set VMCRYPTFS_CRASH_SEED to replay a run.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{no_leftovers, TestEnv};

/// Rounds of disk conversion / deep re-key on one VM, plus one in-place
/// encryption per plain VM home.
const ROUNDS: usize = 30;
const PLAIN_VMS: usize = 20;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Fills a VM home (plain backing files, or through a mount).
fn populate(dir: &Path, rng: &mut XorShift) {
    for (name, len) in [
        ("vm.vmx", 3_000),
        ("vm.nvram", 300_000),
        ("vmware.log", 1_500_000),
        ("vm-Snapshot1.vmsn", 2_000_000),
    ] {
        fs::write(dir.join(name), rng.bytes(len)).unwrap();
    }
    let disk = fs::File::create(dir.join("vm-flat.vmdk")).unwrap();
    disk.set_len(48 << 20).unwrap();
    for i in 0..24u64 {
        disk.write_all_at(&rng.bytes(65_536), i * (2 << 20) + 4096)
            .unwrap();
    }
}

/// Content of every file of a VM home as seen through a mount.
fn contents(env: &TestEnv, vm: &str) -> BTreeMap<String, Vec<u8>> {
    let mount = env.mount();
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(mount.path(vm)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".control") {
            out.insert(name, fs::read(entry.path()).unwrap());
        }
    }
    out
}

/// Runs a command, killing it after `delay` if it is still running.
/// Returns whether it was killed mid-run.
fn run_and_kill(env: &TestEnv, args: &[&str], delay: Duration) -> bool {
    let mut child = env
        .cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    if let Some(status) = child.try_wait().unwrap() {
        assert!(status.success(), "{args:?} failed without a kill");
        return false;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

/// Runs a command to completion; returns how long it took.
fn run_timed(env: &TestEnv, args: &[&str]) -> Duration {
    let started = Instant::now();
    env.run_ok(args);
    started.elapsed()
}

fn random_delay(rng: &mut XorShift, typical: Duration) -> Duration {
    let max = typical.as_micros().max(1000) as u64;
    Duration::from_micros(rng.next() % max)
}

#[test]
fn sigkill_during_conversions_and_deep_rekeys_resumes_and_loses_nothing() {
    let seed = std::env::var("VMCRYPTFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("VMCRYPTFS_CRASH_SEED={seed}");
    let mut rng = XorShift(seed);
    let env = TestEnv::new();
    let ds = env.datastore.to_str().unwrap().to_string();
    let mut interrupted = 0;

    // Disk encryption, disk decryption, deep re-key and content format
    // conversions, in turn, on one VM.
    env.create_vm("vm1", false);
    {
        let mount = env.mount();
        populate(&mount.path("vm1"), &mut rng);
    }
    let expected = contents(&env, "vm1");
    let vm1 = env.vm_dir("vm1");
    let vm1 = vm1.to_str().unwrap();
    let operations: [&[&str]; 6] = [
        &["vm", "encrypt-disks", vm1],
        &["vm", "convert-format", vm1, "--content-format", "1"],
        &["rekey", "--deep", &ds, "vm1"],
        &["vm", "decrypt-disks", vm1],
        &["vm", "convert-format", vm1],
        &["rekey", "--deep", &ds, "vm1"],
    ];
    let mut typical = [Duration::from_millis(300); 6];
    for round in 0..ROUNDS {
        let which = round % operations.len();
        let args = operations[which];
        if run_and_kill(&env, args, random_delay(&mut rng, typical[which])) {
            interrupted += 1;
            // The VM reports the unfinished conversion, or is consistent.
            let status = env.run(&["vm", "status", vm1]);
            let text = String::from_utf8_lossy(&status.stdout).into_owned()
                + &String::from_utf8_lossy(&status.stderr);
            assert!(
                status.status.success() || text.contains("unfinished"),
                "round {round}: {text}"
            );
            typical[which] = run_timed(&env, args);
        }
        no_leftovers(&env.vm_dir("vm1"));
        assert_eq!(contents(&env, "vm1"), expected, "round {round} ({args:?})");
    }

    // In-place encryption of plain VM homes.
    let mut typical = Duration::from_millis(200);
    for i in 0..PLAIN_VMS {
        let name = format!("plain{i}");
        let dir = env.vm_dir(&name);
        fs::create_dir(&dir).unwrap();
        populate(&dir, &mut rng);
        let before: BTreeMap<String, Vec<u8>> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        let path = dir.to_str().unwrap().to_string();
        let args = ["vm", "encrypt", "--encrypt-disks", path.as_str()];
        if run_and_kill(&env, &args, random_delay(&mut rng, typical)) {
            interrupted += 1;
            // The journal is written before the bundle and removed last:
            // a bundle without a journal means the kill came after the
            // work was done, and a second `vm encrypt` would (rightly)
            // refuse an encrypted VM home.
            let done = dir.join(".vmcryptfs-bundle").exists()
                && !dir.join(".vmcryptfs-convert-journal").exists();
            if !done {
                typical = run_timed(&env, &args);
            }
        }
        no_leftovers(&dir);
        assert_eq!(contents(&env, &name), before, "{name}");
        assert!(dir.join(".vmcryptfs-bundle").exists());
    }
    eprintln!(
        "{interrupted} of {} runs were killed mid-operation",
        ROUNDS + PLAIN_VMS
    );
    assert!(
        interrupted >= (ROUNDS + PLAIN_VMS) / 5,
        "too few kills landed mid-operation ({interrupted}) for the test to mean much"
    );
}
