//! `.control.json` (the status as JSON) and `.stats` (live counters in the
//! Prometheus text format), read through a real mount.

use crate::common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{read_control, write_control, TestEnv};

/// The samples of a Prometheus text file: `name{labels}` → value.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("numeric value"))
        })
        .collect()
}

#[test]
fn stats_count_io_keys_rekeys_auth_failures_and_locked_vms() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", false);
    {
        let mount = env.mount();
        fs::write(mount.path("vm2/vm2.vmx"), vec![5u8; 10_000]).unwrap();
    }
    // Tamper with one block of vm2's file, and lock nothing yet.
    let backing = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.vm_dir("vm2").join("vm2.vmx"))
        .unwrap();
    let mut byte = [0u8; 1];
    let offset = common::ciphertext_byte_offset(1, 50);
    backing.read_exact_at(&mut byte, offset).unwrap();
    backing.write_all_at(&[byte[0] ^ 1], offset).unwrap();

    let mount = env.mount();
    fs::write(mount.path("vm1/vm1.nvram"), vec![1u8; 8192]).unwrap();
    let mut buf = Vec::new();
    fs::File::open(mount.path("vm1/vm1.nvram"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert_eq!(buf.len(), 8192);
    write_control(&mount.path("vm1/.control"), "rekey\n").unwrap();
    let err = fs::read(mount.path("vm2/vm2.vmx")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));

    let stats = scrape(&fs::read_to_string(mount.path(".stats")).unwrap());
    let get = |series: &str| {
        *stats
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {stats:?}"))
    };
    assert!(get("vmcryptfs_write_bytes_total{vm=\"vm1\"}") >= 8192.0);
    assert!(get("vmcryptfs_write_operations_total{vm=\"vm1\"}") >= 1.0);
    assert_eq!(get("vmcryptfs_read_bytes_total{vm=\"vm1\"}"), 8192.0);
    assert_eq!(get("vmcryptfs_rekeys_total{vm=\"vm1\"}"), 1.0);
    assert_eq!(get("vmcryptfs_key_cache_misses_total{vm=\"vm1\"}"), 1.0);
    assert!(get("vmcryptfs_key_cache_hits_total{vm=\"vm1\"}") >= 1.0);
    assert!(get("vmcryptfs_authentication_failures_total{vm=\"vm2\"}") >= 1.0);
    assert_eq!(
        get("vmcryptfs_authentication_failures_total{vm=\"vm1\"}"),
        0.0
    );
    assert_eq!(
        get("vmcryptfs_read_bytes_total"),
        get("vmcryptfs_read_bytes_total{vm=\"vm1\"}")
            + get("vmcryptfs_read_bytes_total{vm=\"vm2\"}"),
        "the unlabelled series is the total"
    );
    assert_eq!(get("vmcryptfs_locked_vms"), 0.0);
    assert!(get("vmcryptfs_uptime_seconds") > 0.0);

    // A VM whose bundle no longer unwraps shows as locked.
    let bundle = env.vm_dir("vm2").join(".vmcryptfs-bundle");
    let mut bytes = fs::read(&bundle).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&bundle, bytes).unwrap();
    write_control(&mount.path(".control"), "flush-keys\n").unwrap();
    assert!(fs::read(mount.path("vm2/vm2.vmx")).is_err());
    let stats = scrape(&fs::read_to_string(mount.path(".stats")).unwrap());
    assert_eq!(stats["vmcryptfs_vm_locked{vm=\"vm2\"}"], 1.0);
    assert_eq!(stats["vmcryptfs_locked_vms"], 1.0);

    // Read-only, root only, listed.
    let err = fs::write(mount.path(".stats"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    assert!(!mount.path("vm1/.stats").exists());
    let names: Vec<String> = fs::read_dir(mount.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in [".control", ".control.json", ".stats"] {
        assert!(names.contains(&name.to_string()), "{names:?}");
    }
    let err = fs::remove_file(mount.path(".stats")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
}

#[test]
fn control_json_matches_the_text_status() {
    let env = TestEnv::new();
    env.create_vm("vm1", true);
    env.run_ok(&["provider", "rotate"]);
    let mount = env.mount();
    fs::write(mount.path("vm1/vm1.vmx"), b"config").unwrap();
    let text = read_control(&mount.path("vm1/.control"));
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(mount.path("vm1/.control.json")).unwrap())
            .unwrap();
    assert_eq!(json["vm"], "vm1");
    assert_eq!(json["state"], text["state"]);
    assert_eq!(json["kek_version"].to_string(), text["kek-version"]);
    assert_eq!(json["needs_rekey"], true);
    assert_eq!(json["encrypt_disks"], true);
    assert_eq!(json["dek_fingerprint"], text["dek-fingerprint"]);

    let root: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(mount.path(".control.json")).unwrap()).unwrap();
    assert_eq!(root["provider"], "local");
    assert_eq!(root["needs_rekey"], 1);
    assert_eq!(root["vms"][0]["vm"], "vm1");
    let err = fs::write(mount.path("vm1/.control.json"), "rekey\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    write_control(&mount.path("vm1/.control"), "rekey\n").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(mount.path("vm1/.control.json")).unwrap())
            .unwrap();
    assert_eq!(json["needs_rekey"], false);
    assert_eq!(json["last_command"], "rekey");
}

/// A virtual file shows the same owner and times whether the kernel got
/// them from a directory listing or asks later: they are the datastore
/// root's, even where the VM home's own differ.
#[test]
fn virtual_files_keep_their_attributes_between_a_listing_and_a_stat() {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, SystemTime};

    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let set_mtime = |dir: &std::path::Path, secs: u64| {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        fs::File::open(dir)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(time))
            .unwrap();
    };
    set_mtime(&env.datastore, 1_000_000_000);
    set_mtime(&env.vm_dir("vm1"), 1_500_000_000);

    let listed: Vec<_> = fs::read_dir(mount.path("vm1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == ".control"), "{listed:?}");
    let from_listing = fs::metadata(mount.path("vm1/.control")).unwrap();
    let open = fs::File::open(mount.path("vm1/.control")).unwrap();
    // Past the kernel's attribute lifetime (1 s): the daemon answers, to
    // `fstat` with a GETATTR and to `stat` of the name with a LOOKUP.
    std::thread::sleep(Duration::from_millis(1500));
    let from_getattr = open.metadata().unwrap();
    let from_lookup = fs::metadata(mount.path("vm1/.control")).unwrap();
    for (source, meta) in [("fstat", &from_getattr), ("stat", &from_lookup)] {
        for (what, listing, now) in [
            ("mtime", from_listing.mtime(), meta.mtime()),
            ("uid", from_listing.uid().into(), meta.uid().into()),
            ("ino", from_listing.ino() as i64, meta.ino() as i64),
        ] {
            assert_eq!(listing, now, ".control {what}: listing, then {source}");
        }
    }
    assert_eq!(from_getattr.mtime(), 1_000_000_000, "the root's mtime");
}

/// Issue 22: names in the datastore are chosen by whoever writes it; what
/// status, `.stats` and the log show of them is escaped, so a name cannot
/// forge a status line, a Prometheus series or a terminal escape.
#[test]
fn hostile_vm_home_names_are_shown_escaped() {
    let env = TestEnv::new();
    let name = "vm\nstate: unlocked\x1b[2J\"}";
    env.create_vm(name, false);
    let shown = r#"vm\x0astate: unlocked\x1b[2J"}"#;
    let mount = env.mount();
    fs::write(mount.path(&format!("{name}/vm.vmx")), b"config").unwrap();
    let text = fs::read_to_string(mount.path(&format!("{name}/.control"))).unwrap();
    assert!(text.contains(&format!("vm: {shown}\n")), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("state:")).count(),
        1,
        "{text}"
    );
    let root = fs::read_to_string(mount.path(".control")).unwrap();
    assert!(
        root.contains(&format!("vm {shown}: state=unlocked")),
        "{root}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(mount.path(".control.json")).unwrap()).unwrap();
    assert_eq!(json["vms"][0]["vm"], shown);
    let stats = fs::read_to_string(mount.path(".stats")).unwrap();
    assert!(
        stats.contains(
            r#"vmcryptfs_write_operations_total{vm="vm\\x0astate: unlocked\\x1b[2J\"}"} "#
        ),
        "{stats}"
    );
    write_control(&mount.path(&format!("{name}/.control")), "rekey\n").unwrap();
    let log = mount.log_text();
    for raw in [name, "\x1b"] {
        assert!(!log.contains(raw), "raw name in the log:\n{log}");
    }
    assert!(log.contains(shown), "{log}");
    // The CLI's views of the datastore escape it the same way.
    for args in [
        vec!["status", env.datastore.to_str().unwrap()],
        vec!["rekey", "--all", env.datastore.to_str().unwrap()],
    ] {
        let out = env.run(&args);
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(text.contains(shown), "{args:?}: {text}");
        assert!(
            !text.contains(name) && !text.contains('\x1b'),
            "{args:?}: {text}"
        );
    }
}

/// VM home `name` as the root `.control.json` `doc` lists it; null if it
/// does not.
fn listed_vm(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["vm"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The root `.control` keeps what it read from disk between reads (see
/// `datastore::status_view`) but follows every change made behind the
/// mount, also once its view has settled: a VM home created, a bundle
/// replaced, a conversion journal appearing, a bundle removed (the VM home
/// stays one, without bundle fields).
#[test]
fn the_root_status_follows_changes_made_behind_the_mount() {
    use std::time::Duration;
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let mount = env.mount();
    let root_json = || -> serde_json::Value {
        serde_json::from_slice(&fs::read(mount.path(".control.json")).unwrap()).unwrap()
    };
    let vm_of = listed_vm;
    let first = root_json();
    let vm1_id = vm_of(&first, "vm1")["vm_id"].clone();
    assert!(vm1_id.is_string(), "{first}");
    env.create_vm("vm2", false);
    assert_eq!(read_control(&mount.path(".control"))["vms"], "2");
    // Past the window in which a directory's stamp is not trusted.
    std::thread::sleep(Duration::from_millis(1500));
    let settled = root_json();
    let vm2_id = vm_of(&settled, "vm2")["vm_id"].clone();
    assert_eq!(vm_of(&settled, "vm1")["vm_id"], vm1_id);
    assert_eq!(
        vm_of(&settled, "vm1")["conversion"],
        serde_json::Value::Null
    );

    // vm1's bundle replaced (as another host or an intruder could): a VM
    // not unlocked shows the bundle now on disk.
    let bundle = ".vmcryptfs-bundle";
    fs::copy(
        env.vm_dir("vm2").join(bundle),
        env.vm_dir("vm1").join("copy"),
    )
    .unwrap();
    fs::rename(
        env.vm_dir("vm1").join("copy"),
        env.vm_dir("vm1").join(bundle),
    )
    .unwrap();
    assert_eq!(vm_of(&root_json(), "vm1")["vm_id"], vm2_id);
    // A conversion journal appears in vm2.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        vm_of(&root_json(), "vm2")["conversion"],
        serde_json::Value::Null
    );
    fs::write(
        env.vm_dir("vm2").join(".vmcryptfs-convert-journal"),
        "encrypt\n",
    )
    .unwrap();
    assert_eq!(vm_of(&root_json(), "vm2")["conversion"], "encrypt");
    // vm2's bundle is removed: the mount still counts it (a VM home it
    // has seen never turns plain), and shows no bundle fields for it.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vm_of(&root_json(), "vm2")["vm_id"], vm2_id);
    fs::remove_file(env.vm_dir("vm2").join(bundle)).unwrap();
    assert_eq!(read_control(&mount.path(".control"))["vms"], "2");
    assert_eq!(vm_of(&root_json(), "vm2")["vm_id"], serde_json::Value::Null);
}

/// The root status files keep each VM home's lines until its status
/// changes (`control::root_cache`), and every change made through the
/// mount shows at the very next read of the root `.control.json`, the same
/// as the VM home's own `.control.json` shows it: a file opened and closed,
/// a re-key, a rotation seen through a re-key, `rekey-all`, a scrub, a
/// flush of the keys, a rename of the VM home.
#[test]
fn the_root_status_shows_every_change_at_the_next_read() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    env.create_vm("vm2", false);
    let mount = env.mount();
    fs::write(mount.path("vm1/vm1.nvram"), b"nvram").unwrap();
    fs::write(mount.path("vm2/vm2.nvram"), b"nvram").unwrap();
    let root_json = || -> serde_json::Value {
        serde_json::from_slice(&fs::read(mount.path(".control.json")).unwrap()).unwrap()
    };
    let vm_of = |name: &str| listed_vm(&root_json(), name);
    // What the VM home's own file shows, but for the fields the root's
    // line leaves out nowhere: they must be equal.
    let own = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(mount.path(&format!("{name}/.control.json"))).unwrap())
            .unwrap()
    };
    let root_line = |name: &str| -> String {
        fs::read_to_string(mount.path(".control"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("vm {name}:")))
            .unwrap_or_default()
            .to_string()
    };
    // Past the window in which a VM home's directory is looked at again
    // at every read, so that the reads below use the kept lines.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..2 {
        assert_eq!(vm_of("vm1"), own("vm1"));
    }

    let file = fs::File::open(mount.path("vm1/vm1.nvram")).unwrap();
    let shown = vm_of("vm1");
    assert_eq!(
        (&shown["open_files"], &shown["open_handles"]),
        (&1.into(), &1.into())
    );
    drop(file);
    // The close reaches the mount as FUSE release, after close(2) returns.
    let closed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        vm_of("vm1")["open_handles"] == 0
    });
    assert!(closed, "{}", vm_of("vm1"));
    assert_eq!(vm_of("vm1")["open_files"], 0);

    // A rotation by another process shows within the provider answer's
    // lifetime; a re-key through the mount asks again at once.
    env.run_ok(&["provider", "rotate"]);
    write_control(&mount.path("vm2/.control"), "rekey\n").unwrap();
    let shown = vm_of("vm2");
    assert_eq!(
        (&shown["kek_version"], &shown["last_command"]),
        (&2.into(), &"rekey".into())
    );
    assert_eq!(shown["needs_rekey"], false);
    assert_eq!(vm_of("vm1")["needs_rekey"], true);
    assert!(
        root_line("vm1").contains("kek-version=1 needs-rekey=yes"),
        "{}",
        root_line("vm1")
    );
    write_control(&mount.path(".control"), "rekey-all\n").unwrap();
    assert_eq!(vm_of("vm1")["kek_version"], 2);
    assert!(
        root_line("vm1").contains("kek-version=2 needs-rekey=no"),
        "{}",
        root_line("vm1")
    );
    assert_eq!(vm_of("vm1"), own("vm1"));

    // A scrub paced to take about a second: its progress and its end
    // come from the scrub's own thread, with nothing else changing.
    fs::write(mount.path("vm1/data.bin"), vec![7u8; 2 << 20]).unwrap();
    write_control(&mount.path("vm1/.control"), "scrub rate=2M\n").unwrap();
    let mut states = Vec::new();
    for _ in 0..1000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let state = vm_of("vm1")["scrub"]["state"].clone();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if !matches!(state.as_str(), Some("queued" | "running")) {
            break;
        }
    }
    assert!(
        states.len() >= 2 && states.last().unwrap() == "clean",
        "{states:?}"
    );
    assert_eq!(vm_of("vm1")["scrub"], own("vm1")["scrub"]);
    assert_eq!(vm_of("vm1")["scrub"]["state"], "clean");
    assert!(
        root_line("vm1").ends_with("scrub=clean"),
        "{}",
        root_line("vm1")
    );

    write_control(&mount.path(".control"), "flush-keys\n").unwrap();
    assert_eq!(vm_of("vm1")["state"], "not-loaded");
    assert_eq!(vm_of("vm1"), own("vm1"));

    fs::rename(mount.path("vm2"), mount.path("vm3")).unwrap();
    assert_eq!(vm_of("vm2"), serde_json::Value::Null);
    assert_eq!(vm_of("vm3"), own("vm3"));
}

/// Whoever writes the datastore may plant files under the virtual files'
/// names, and under the datastore's own (`.vmcryptfs*`). Through the
/// mount, a virtual file hides a planted file of its name: each is listed
/// once, and reads as itself. Internal names are never listed nor found,
/// in any directory. Elsewhere (below a VM home, a plain directory, `.stats`
/// in a VM home) the same names are ordinary files, listed and read as
/// they are. The in-process table of these rules is `frontend::names`.
#[test]
fn planted_files_under_virtual_and_internal_names_are_listed_as_the_rules_say() {
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let planted = [".control", ".control.json", ".stats", ".vmcryptfs-planted"];
    let dirs = ["", "vm1", "vm1/sub", "plain"];
    for dir in &dirs[2..] {
        fs::create_dir(env.datastore.join(dir)).unwrap();
    }
    let mount = env.mount();
    // `name` in directory `dir` of the mount ("" is its root).
    let at = |dir: &str, name: &str| mount.path(&Path::new(dir).join(name).to_string_lossy());
    let virtual_names = |dir: &str| -> &[&str] {
        match dir {
            "" => &[".control", ".control.json", ".stats"],
            "vm1" => &[".control", ".control.json"],
            _ => &[],
        }
    };
    for dir in dirs {
        for name in planted {
            let through_mount =
                !name.starts_with(".vmcryptfs") && !virtual_names(dir).contains(&name);
            if through_mount {
                // An ordinary name: in the VM home it is an encrypted file,
                // so it is written as a VM's file would be.
                fs::write(at(dir, name), b"planted\n").unwrap();
            } else {
                if name.starts_with(".vmcryptfs") {
                    let err = fs::write(at(dir, name), b"x").expect_err(&format!("{dir}/{name}"));
                    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{dir}/{name}: {err}");
                }
                // The datastore's writer needs no mount.
                fs::write(env.datastore.join(dir).join(name), b"planted\n").unwrap();
            }
        }
    }
    for dir in dirs {
        let mut listed: Vec<String> = fs::read_dir(mount.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with('.'))
            .collect();
        listed.sort();
        // Every name once; no internal name.
        let expected = [".control", ".control.json", ".stats"];
        assert_eq!(listed, expected, "listing of {dir:?}");
        for name in expected {
            let text = fs::read(at(dir, name));
            let text = text.unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
            assert_eq!(
                text == b"planted\n",
                !virtual_names(dir).contains(&name),
                "{dir}/{name} reads as {}",
                String::from_utf8_lossy(&text)
            );
        }
        let internal = at(dir, ".vmcryptfs-planted");
        assert_eq!(
            fs::metadata(&internal).unwrap_err().raw_os_error(),
            Some(libc::ENOENT),
            "{}",
            internal.display()
        );
    }
}
