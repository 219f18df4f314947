//! The access rule for the files vmcryptfs owns in a VM home (issue 22,
//! item 1): a planted journal, journal temp, conversion temp or source file
//! is never followed, read unbounded or written through, by the mount or by
//! any conversion command. Real mounts, real files, the real binary.

use crate::common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_no_master_key_in, read_control, write_control, TestEnv};

const JOURNAL: &str = ".vmcryptfs-convert-journal";
const JOURNAL_TEMP: &str = ".vmcryptfs-convert-journal.tmp";
const CONVERT_TEMP: &str = ".vmcryptfs-convert.tmp";
/// The first line of `master.key`, which must show nowhere.
const MASTER_KEY_LINE: &str = "vmcryptfs-master-key";

/// Content, mode, owner and modification time of a file outside the
/// datastore, to check that nothing changed it.
fn fingerprint(path: &Path) -> (Vec<u8>, u32, u32, i64, i64) {
    let meta = fs::symlink_metadata(path).unwrap();
    (
        fs::read(path).unwrap(),
        meta.mode(),
        meta.uid(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

fn assert_shows_no_key(env: &TestEnv, what: &str, text: &str) {
    assert_no_master_key_in(&env.keystore, text);
    assert!(!text.contains(MASTER_KEY_LINE), "{what}:\n{text}");
}

#[test]
fn the_issue_22_reproduction_shows_the_master_key_nowhere() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", false);
    let master_key = env.keystore.join("master.key");
    let before = fingerprint(&master_key);
    let mount = env.mount();
    fs::write(mount.path("vm1/a.nvram"), b"still works").unwrap();
    fs::write(mount.path("vm2/b.nvram"), b"locked next").unwrap();
    symlink(&master_key, env.vm_dir("vm2").join(JOURNAL)).unwrap();
    write_control(&mount.path(".control"), "flush-keys\n").unwrap();
    // Status never unlocks a VM; an open does, and finds the journal.
    assert!(
        fs::read(mount.path("vm2/b.nvram")).is_err(),
        "vm2 is locked"
    );

    for file in [".control.json", ".control", "vm1/.control", "vm2/.control"] {
        let text = fs::read_to_string(mount.path(file)).unwrap();
        assert_shows_no_key(&env, file, &text);
    }
    let vm2 = read_control(&mount.path("vm2/.control"));
    assert_eq!(vm2["conversion"], "damaged (not a regular file)");
    assert_eq!(vm2["state"], "locked");
    assert!(vm2["locked-reason"].contains(JOURNAL), "{vm2:?}");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(mount.path(".control.json")).unwrap()).unwrap();
    let text = json.to_string();
    assert!(text.contains("damaged (not a regular file)"), "{text}");
    assert!(
        fs::read(mount.path("vm2/b.nvram")).is_err(),
        "vm2 is locked"
    );
    assert_eq!(fs::read(mount.path("vm1/a.nvram")).unwrap(), b"still works");

    // The CLI's views of the same datastore (TestEnv::run checks every
    // output for the master key too).
    let status = env.run(&["status", env.datastore.to_str().unwrap()]);
    assert_shows_no_key(&env, "status", &String::from_utf8_lossy(&status.stdout));
    let vm_status = env.run(&["vm", "status", env.vm_dir("vm2").to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&vm_status.stdout);
    assert!(shown.contains("damaged (not a regular file)"), "{shown}");
    assert_shows_no_key(&env, "vm status", &shown);

    let log = mount.log_text();
    assert!(mount.unmount().success());
    assert_shows_no_key(&env, "the mount's log", &log);
    assert_eq!(fingerprint(&master_key), before);
}

/// Every conversion command, as arguments, for VM home `vm`.
fn conversions(env: &TestEnv, vm: &Path) -> Vec<Vec<String>> {
    let vm = vm.to_str().unwrap().to_string();
    let name = Path::new(&vm)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let datastore = env.datastore.to_str().unwrap().to_string();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        args(&["vm", "encrypt", &vm]),
        args(&["vm", "encrypt-disks", &vm]),
        args(&["vm", "convert-format", &vm, "--content-format", "1"]),
        args(&["rekey", "--deep", &datastore, &name]),
        args(&["vm", "decrypt-disks", &vm]),
    ]
}

/// A plain VM directory with a config-like file and a disk.
fn plain_vm(env: &TestEnv, name: &str) -> PathBuf {
    let vm = env.vm_dir(name);
    fs::create_dir_all(vm.join("sub")).unwrap();
    fs::write(vm.join("vm.nvram"), b"nvram").unwrap();
    fs::write(vm.join("sub/disk.vmdk"), vec![7u8; 10_000]).unwrap();
    vm
}

fn run_timed(env: &TestEnv, args: &[String]) -> std::process::Output {
    let started = Instant::now();
    let out = env.run_strings(args);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{args:?} took {:?}",
        started.elapsed()
    );
    out
}

#[test]
fn a_journal_symlinked_to_the_master_key_stops_every_conversion_naming_the_vm() {
    let env = TestEnv::new();
    let master_key = env.keystore.join("master.key");
    let before = fingerprint(&master_key);
    let vm = plain_vm(&env, "vm");
    symlink(&master_key, vm.join(JOURNAL)).unwrap();
    for args in conversions(&env, &vm) {
        let out = run_timed(&env, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("damaged conversion journal") && stderr.contains(vm.to_str().unwrap()),
            "{args:?}: {stderr}"
        );
        assert_shows_no_key(&env, "stderr", &stderr);
        assert!(fs::symlink_metadata(vm.join(JOURNAL)).unwrap().is_symlink());
    }
    assert_eq!(fingerprint(&master_key), before);
}

#[test]
fn conversions_never_write_through_a_planted_temp_nor_read_a_planted_source() {
    let env = TestEnv::new();
    let secret = env.dir.path().join("host-secret");
    fs::write(&secret, b"a host file outside the datastore").unwrap();
    let before = fingerprint(&secret);
    for (plant, at) in [
        ("journal temp", JOURNAL_TEMP),
        ("conversion temp", CONVERT_TEMP),
        (
            "conversion temp in a subdirectory",
            "sub/.vmcryptfs-convert.tmp",
        ),
        ("source", "leak.nvram"),
        ("source disk", "sub/leak.vmdk"),
    ] {
        let vm = plain_vm(&env, &format!("vm-{}", plant.replace(' ', "-")));
        for args in conversions(&env, &vm) {
            let planted = vm.join(at);
            if fs::symlink_metadata(&planted).is_err() {
                symlink(&secret, &planted).unwrap();
            }
            let out = run_timed(&env, &args);
            assert!(
                out.status.success(),
                "{plant}: {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(fingerprint(&secret), before, "{plant}: {args:?}");
        }
        if plant.starts_with("source") {
            assert!(fs::symlink_metadata(vm.join(at)).unwrap().is_symlink());
        }
        // The VM's own files went through every conversion and back.
        let mount = env.mount();
        let name = vm.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            fs::read(mount.path(&format!("{name}/vm.nvram"))).unwrap(),
            b"nvram",
            "{plant}"
        );
        assert_eq!(
            fs::read(mount.path(&format!("{name}/sub/disk.vmdk"))).unwrap(),
            vec![7u8; 10_000],
            "{plant}"
        );
        assert!(mount.unmount().success());
    }
}

#[test]
fn status_never_waits_on_a_planted_fifo_or_reads_a_huge_file() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", false);
    nix::unistd::mkfifo(
        &env.vm_dir("vm1").join(JOURNAL),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let bundle = env.vm_dir("vm2").join(".vmcryptfs-bundle");
    fs::remove_file(&bundle).unwrap();
    fs::File::create(&bundle).unwrap().set_len(2 << 30).unwrap();
    let datastore = env.datastore.to_str().unwrap().to_string();
    let out = run_timed(&env, &["status".to_string(), datastore]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("vm1") && shown.contains("vm2"), "{shown}");
    let vm1 = env.vm_dir("vm1").to_str().unwrap().to_string();
    let out = run_timed(&env, &["vm".into(), "status".into(), vm1]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("damaged (not a regular file)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let vm2 = env.vm_dir("vm2").to_str().unwrap().to_string();
    let out = run_timed(&env, &["vm".into(), "status".into(), vm2]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("vm2/.vmcryptfs-bundle"), "{stderr}");
}

#[test]
fn a_bundle_swapped_for_a_symlink_to_the_master_key_locks_the_vm_naming_the_bundle() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let master_key = env.keystore.join("master.key");
    let mount = env.mount();
    fs::write(mount.path("vm1/a.nvram"), b"sealed").unwrap();
    let bundle = env.vm_dir("vm1").join(".vmcryptfs-bundle");
    fs::remove_file(&bundle).unwrap();
    symlink(&master_key, &bundle).unwrap();
    write_control(&mount.path(".control"), "flush-keys\n").unwrap();
    // Status never unlocks a VM; an open tries, and finds the bundle.
    assert!(fs::read(mount.path("vm1/a.nvram")).is_err());
    let vm1 = read_control(&mount.path("vm1/.control"));
    assert_eq!(vm1["state"], "locked", "{vm1:?}");
    let reason = &vm1["locked-reason"];
    assert!(
        reason.contains("vm1/.vmcryptfs-bundle") && reason.contains("a symlink"),
        "{reason}"
    );
    // Locked, not plain: nothing is read or written in clear.
    assert!(fs::read(mount.path("vm1/a.nvram")).is_err());
    assert!(fs::write(mount.path("vm1/new.nvram"), b"would be clear").is_err());
    for file in [".control.json", ".control", "vm1/.control"] {
        let text = fs::read_to_string(mount.path(file)).unwrap();
        assert_shows_no_key(&env, file, &text);
    }
    let log = mount.log_text();
    assert!(mount.unmount().success());
    assert_shows_no_key(&env, "the mount's log", &log);
    let out = env.run(&["status", env.datastore.to_str().unwrap()]);
    assert_shows_no_key(&env, "status", &String::from_utf8_lossy(&out.stdout));
}
