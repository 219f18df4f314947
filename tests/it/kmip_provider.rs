//! The KMIP provider end to end against a real KMS (PyKMIP over TLS with
//! client certificates): registration, VMs wrapped by the KMS, moving VMs
//! between providers, the two-host lifecycle, a KMS outage, and the errors
//! a misconfigured host gets.

use crate::common;

use common::stderr;

use std::fs;

use common::kms::Kms;
use common::{read_control, snapshot_tree, write_control, TestEnv};

fn bundle_json(env: &TestEnv, vm: &str) -> serde_json::Value {
    let path = env.vm_dir(vm);
    serde_json::from_str(&env.run_ok(&["vm", "status", "--json", path.to_str().unwrap()])).unwrap()
}

fn ds(env: &TestEnv) -> String {
    env.datastore.to_str().unwrap().to_string()
}

/// `provider rotate kms` on `host`, then the `provider accept` it prints
/// on each of `others`, as an administrator would: a version another host
/// created is used only once accepted by its KMIP identifier.
fn rotate_and_accept(host: &TestEnv, others: &[&TestEnv]) {
    let out = host.run_ok(&["provider", "rotate", "kms"]);
    let accept = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("vmcryptfs provider accept "))
        .unwrap_or_else(|| panic!("rotate prints the accept command: {out}"));
    let mut args = vec!["provider", "accept"];
    args.extend(accept.split_whitespace());
    for other in others {
        other.run_ok(&args);
    }
}

#[test]
fn a_kmip_provider_wraps_vms_beside_the_embedded_one() {
    let kms = Kms::start();
    let env = TestEnv::new();
    let out = env.run_strings(&kms.add_args("kms", &["--default"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kms:vmcryptfs-kms v1"), "{text}");

    env.create_vm("on-kms", true);
    let local_vm = env.vm_dir("on-local");
    env.run_ok(&[
        "vm",
        "create",
        "--encrypt-disks",
        "--provider",
        "local",
        local_vm.to_str().unwrap(),
    ]);
    assert_eq!(bundle_json(&env, "on-kms")["provider"], "kms");
    assert_eq!(bundle_json(&env, "on-kms")["kek_id"], "vmcryptfs-kms");
    assert_eq!(bundle_json(&env, "on-local")["provider"], "local");
    // set-default switches where new VM homes go, and refuses unknown names.
    env.run_ok(&["provider", "set-default", "local"]);
    env.create_vm("default-local", false);
    assert_eq!(bundle_json(&env, "default-local")["provider"], "local");
    let out = env.run(&["provider", "set-default", "nowhere"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`nowhere` is not configured"),
        "{}",
        stderr(&out)
    );
    env.run_ok(&["provider", "set-default", "kms"]);

    let secret = b"vTPM NVRAM: endorsement seed 5eed5eed".repeat(100);
    {
        let mount = env.mount();
        for vm in ["on-kms", "on-local"] {
            fs::write(mount.path(&format!("{vm}/{vm}.nvram")), &secret).unwrap();
            fs::write(mount.path(&format!("{vm}/disk.vmdk")), &secret).unwrap();
        }
        let status = read_control(&mount.path("on-kms/.control"));
        assert_eq!(status["state"], "unlocked");
        assert_eq!(status["provider"], "kms");
        assert_eq!(status["needs-rekey"], "no");
    }
    assert!(
        common::tree_contains(&env.datastore, b"endorsement seed").is_none(),
        "plaintext reached the datastore"
    );
    let mount = env.mount();
    assert_eq!(fs::read(mount.path("on-kms/on-kms.nvram")).unwrap(), secret);
    assert_eq!(
        fs::read(mount.path("on-local/on-local.nvram")).unwrap(),
        secret
    );
    drop(mount);

    let list = env.run_ok(&["provider", "list"]);
    assert!(
        list.contains("provider local (embedded): reachable"),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            "provider kms (kmip {}, wrap server, default): reachable",
            kms.server
        )),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["provider", "list", "--json"])).unwrap();
    assert_eq!(json["default"], "kms");
    let kms_entry = &json["providers"][1];
    assert_eq!(kms_entry["name"], "kms");
    assert_eq!(kms_entry["reachable"], true);
    assert_eq!(kms_entry["versions"][0]["vms"], 1);
    assert_eq!(kms_entry["versions"][0]["current"], true);
}

#[test]
fn rekey_provider_moves_a_vm_and_only_its_bundle_changes() {
    let kms = Kms::start();
    let env = TestEnv::new();
    env.run_strings(&kms.add_args("kms", &[]));
    env.create_vm("vm1", false);
    {
        let mount = env.mount();
        fs::write(mount.path("vm1/vm1.vmx"), "displayName = \"vm1\"\n").unwrap();
        fs::write(mount.path("vm1/vm1.nvram"), vec![7u8; 300_000]).unwrap();
    }
    let bundle_name = ".vmcryptfs-bundle";
    let without_bundle = |env: &TestEnv| {
        let mut tree = snapshot_tree(&env.vm_dir("vm1"));
        tree.retain(|path, _| !path.ends_with(bundle_name));
        tree
    };
    let before = without_bundle(&env);

    // Unmounted: the CLI rewrites the bundle itself.
    let out = env.run_ok(&["rekey", "--provider", "kms", &ds(&env), "vm1"]);
    assert!(out.contains("kms:vmcryptfs-kms v1"), "{out}");
    assert_eq!(bundle_json(&env, "vm1")["provider"], "kms");
    assert_eq!(without_bundle(&env), before, "a move is a shallow re-key");

    // Mounted: through the control file, with a file open all along.
    let mount = env.mount();
    let open = fs::File::open(mount.path("vm1/vm1.nvram")).unwrap();
    write_control(&mount.path("vm1/.control"), "rekey-to local\n").unwrap();
    let status = read_control(&mount.path("vm1/.control"));
    assert_eq!(status["provider"], "local");
    assert!(status["last-result"].starts_with("ok:"), "{status:?}");
    let err = write_control(&mount.path("vm1/.control"), "rekey-to nowhere\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(read_control(&mount.path("vm1/.control"))["last-result"]
        .contains("`nowhere` is not configured"),);
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut &open, &mut buf).unwrap();
    assert_eq!(buf, vec![7u8; 300_000], "the open file did not notice");
    drop(open);
    drop(mount);
    assert_eq!(without_bundle(&env), before);
}

/// Two hosts with separate key stores (the second has no embedded store)
/// that share `kms`, registered as each one's default provider `kms`.
fn two_hosts_of(kms: &Kms) -> (TestEnv, TestEnv) {
    let host_a = TestEnv::empty();
    let host_b = host_a.second_host();
    for host in [&host_a, &host_b] {
        let out = host.run_strings(&kms.add_args("kms", &["--default"]));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    (host_a, host_b)
}

/// The lifecycle issue's two-host scenario, with the KEKs in the KMS:
/// host A and host B have separate key stores (B has no embedded store at
/// all) and share the KMS through one client identity.
#[test]
fn two_hosts_share_kmip_keks_through_rotation_destroy_and_rescue() {
    let kms = Kms::start();
    let (host_a, host_b) = two_hosts_of(&kms);
    host_a.create_vm("vm1", false);
    let mount_a = host_a.mount();
    let secret = b"sealed vTPM secret 0123456789abcdef".repeat(300);
    fs::write(mount_a.path("vm1/vm1.nvram"), &secret).unwrap();

    // Rotation on the KMS, seen by both hosts once B accepts it.
    rotate_and_accept(&host_a, &[&host_b]);
    let status_b = host_b.run_ok(&["status", &ds(&host_b)]);
    assert!(status_b.contains("needs-rekey"), "{status_b}");

    // Destroy is guarded until the VM is re-keyed (through A's mount).
    let out = host_a.run(&["provider", "destroy", "--provider", "kms", "1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("still wrapped under it"),
        "{}",
        stderr(&out)
    );
    write_control(&mount_a.path("vm1/.control"), "rekey\n").unwrap();
    assert_eq!(
        read_control(&mount_a.path("vm1/.control"))["kek-version"],
        "2"
    );
    host_a.run_ok(&["provider", "retire", "--provider", "kms", "1"]);
    let list = host_b.run_ok(&["provider", "list"]);
    assert!(list.contains("\n1        retired"), "{list}");
    host_a.run_ok(&["provider", "destroy", "--provider", "kms", "1"]);
    let list = host_b.run_ok(&["provider", "list"]);
    assert!(list.contains("\n1        destroyed"), "{list}");
    {
        let mount_b = host_b.mount();
        assert_eq!(fs::read(mount_b.path("vm1/vm1.nvram")).unwrap(), secret);
    }

    // Failure path: rotate, skip the re-key, force-destroy the VM's KEK.
    rotate_and_accept(&host_a, &[&host_b]);
    let out = host_a.run(&["provider", "destroy", "--provider", "kms", "2", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mount_b = host_b.mount();
    let err = fs::read(mount_b.path("vm1/vm1.nvram")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY));
    let locked = read_control(&mount_b.path("vm1/.control"));
    assert_eq!(locked["state"], "locked");
    assert!(
        locked["locked-reason"].contains("vmcryptfs-kms-v2"),
        "{locked:?}"
    );

    // A still holds the DEK: it serves the VM and rescues it onto v3.
    assert_eq!(fs::read(mount_a.path("vm1/vm1.nvram")).unwrap(), secret);
    write_control(&mount_a.path("vm1/.control"), "rekey\n").unwrap();
    assert_eq!(
        read_control(&mount_a.path("vm1/.control"))["kek-version"],
        "3"
    );
    // B unlocks without a remount.
    assert_eq!(fs::read(mount_b.path("vm1/vm1.nvram")).unwrap(), secret);
    drop(mount_b);
    drop(mount_a);
}

#[test]
fn a_kms_outage_keeps_unlocked_vms_and_locks_the_others_until_it_returns() {
    let kms = Kms::start();
    let env = TestEnv::new();
    let out = env.run_strings(&kms.add_args(
        "kms",
        &["--default", "--retries", "1", "--connect-timeout", "1"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    env.create_vm("busy", false);
    env.create_vm("idle", false);
    {
        let mount = env.mount();
        fs::write(mount.path("busy/busy.vmx"), "a").unwrap();
        fs::write(mount.path("idle/idle.vmx"), "b").unwrap();
    }
    let mount = env.mount();
    assert_eq!(fs::read(mount.path("busy/busy.vmx")).unwrap(), b"a");

    kms.stop();
    // The unlocked VM works from the key cache: reads, writes, new files.
    fs::write(mount.path("busy/busy.log"), "still running").unwrap();
    assert_eq!(
        fs::read(mount.path("busy/busy.log")).unwrap(),
        b"still running"
    );
    // The VM that needs an unwrap is locked, and says why.
    let err = fs::read(mount.path("idle/idle.vmx")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY));
    let status = read_control(&mount.path("idle/.control"));
    assert_eq!(status["state"], "locked");
    assert!(
        status["locked-reason"].contains("KMS unreachable"),
        "{status:?}"
    );
    assert!(status["locked-reason"].contains(&kms.server), "{status:?}");
    let out = env.run(&["provider", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("UNREACHABLE"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    kms.restart();
    assert_eq!(fs::read(mount.path("idle/idle.vmx")).unwrap(), b"b");
    assert_eq!(
        read_control(&mount.path("idle/.control"))["state"],
        "unlocked"
    );
    drop(mount);
}

#[test]
fn misconfigured_hosts_get_one_clear_message_each() {
    let kms = Kms::start();
    let env = TestEnv::new();
    let add = |name: &str, ca: &str, cert: &str, key: &str, server: &str| {
        let args: Vec<String> = [
            "provider",
            "add-kmip",
            name,
            "--server",
            server,
            "--ca",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "--retries",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = env.run_strings(&args);
        assert!(!out.status.success(), "{name} was accepted");
        stderr(&out)
    };
    let (ca, cert, key) = (
        kms.file("ca.pem"),
        kms.file("client.pem"),
        kms.file("client.key"),
    );

    let err = add(
        "rogue",
        &ca,
        &kms.file("rogue.pem"),
        &kms.file("rogue.key"),
        &kms.server,
    );
    assert!(err.contains("refused our client certificate"), "{err}");
    let err = add(
        "wrongca",
        &kms.file("rogue-ca.pem"),
        &cert,
        &key,
        &kms.server,
    );
    assert!(err.contains("server's certificate is not trusted"), "{err}");
    let err = add("down", &ca, &cert, &key, "127.0.0.1:1");
    assert!(
        err.contains("KMS unreachable") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    let err = add("nofile", "/nonexistent/ca.pem", &cert, &key, &kms.server);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let err = add("mixed", &ca, &cert, &kms.file("other.key"), &kms.server);
    assert!(err.contains("does not match the certificate"), "{err}");
    let err = add("Bad Name", &ca, &cert, &key, &kms.server);
    assert!(err.contains("invalid provider name"), "{err}");

    // Another client identity: the KMS hides the cluster's keys from it.
    let out = env.run_strings(&kms.add_args("kms", &["--default"]));
    assert!(out.status.success(), "{}", stderr(&out));
    env.create_vm("vm1", false);
    let stranger = env.second_host();
    let args: Vec<String> = [
        "provider",
        "add-kmip",
        "kms",
        "--server",
        &kms.server,
        "--ca",
        &ca,
        "--cert",
        &kms.file("other.pem"),
        "--key",
        &kms.file("other.key"),
        "--key-series",
        "elsewhere",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = stranger.run_strings(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    // Point it at the cluster's series by hand, as a misconfiguration would.
    let registry = stranger.keystore.join("providers.json");
    let text = fs::read_to_string(&registry)
        .unwrap()
        .replace("elsewhere", "vmcryptfs-kms");
    fs::write(&registry, text).unwrap();
    let out = stranger.run(&["vm", "status", env.vm_dir("vm1").to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        text.contains("holds no key named vmcryptfs-kms-v1"),
        "{text}"
    );
    assert!(text.contains("client identity"), "{text}");
    assert!(!kms.log().is_empty());
}

/// Requests the KMS has received so far, by its own log: every request
/// message, and the Locate operations (one per "which version is current?"
/// asked by a provider).
fn kms_requests(kms: &Kms) -> (usize, usize) {
    let log = kms.log();
    (
        log.matches("Received request at time").count(),
        log.matches("Processing operation: Locate").count(),
    )
}

/// Issue 22: reading status files 1,000 times unwraps no VM and asks the
/// KMS at most once per KEK series every few seconds (CURRENT_KEK_TTL), so
/// whoever may read status cannot turn it into a stream of KMS requests.
#[test]
fn status_read_a_thousand_times_asks_the_kms_a_bounded_number_of_times() {
    use std::time::Instant;
    use vmcryptfs::datastore::current_kek::CURRENT_KEK_TTL;
    let kms = Kms::start();
    let env = TestEnv::new();
    let out = env.run_strings(&kms.add_args("kms", &["--default"]));
    assert!(out.status.success(), "{}", stderr(&out));
    for vm in ["vm1", "vm2", "vm3"] {
        env.create_vm(vm, false);
    }
    let mount = env.mount();
    // The mount reads every VM's status once in the background after
    // mounting; a first read waits for that, then the answers it got are
    // let expire, so that the requests counted are the reads' own and
    // none of the warm-up's straddles the count.
    fs::read_to_string(mount.path(".control")).unwrap();
    std::thread::sleep(CURRENT_KEK_TTL + std::time::Duration::from_millis(300));
    let (requests_before, asks_before) = kms_requests(&kms);
    let started = Instant::now();
    for i in 0..1000 {
        let file = [".control", ".control.json", "vm2/.control"][i % 3];
        let text = fs::read_to_string(mount.path(file)).unwrap();
        assert!(!text.is_empty(), "{file}");
    }
    let elapsed = started.elapsed();
    // PyKMIP writes its log line as it handles a request; give the last one
    // a moment to land.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (requests_after, asks_after) = kms_requests(&kms);
    let (requests, asks) = (requests_after - requests_before, asks_after - asks_before);
    // Two answers are kept: the current KEK of the series the VMs' bundles
    // name, and the default provider's (the root summary); each is asked
    // again once per TTL window the reads spanned.
    let windows = (elapsed.as_secs_f64() / CURRENT_KEK_TTL.as_secs_f64()).floor() as usize + 1;
    eprintln!(
        "1000 status reads in {elapsed:?}: {asks} version lookups, {requests} KMS requests ({windows} TTL windows)"
    );
    assert!(asks >= 1, "the reads never reached the KMS:\n{}", kms.log());
    assert!(
        asks <= 2 * windows,
        "{asks} lookups for {windows} windows of {CURRENT_KEK_TTL:?}"
    );
    // A lookup is a Locate and one Get Attributes per version (one here).
    assert!(
        requests <= 2 * asks,
        "{requests} requests for {asks} lookups"
    );
    // And no VM was unwrapped by reading.
    for vm in ["vm1", "vm2", "vm3"] {
        let status = read_control(&mount.path(&format!("{vm}/.control")));
        assert_eq!(status["state"], "not-loaded", "{vm}: {status:?}");
        assert_eq!(status["dek-fingerprint"], "-", "{vm}");
        assert_eq!(status["provider-current-version"], "1", "{vm}");
    }
    assert!(
        !mount.log_text().contains("unlocked (KEK"),
        "a status read unwrapped a VM:\n{}",
        mount.log_text()
    );
    assert_eq!(read_control(&mount.path(".control"))["unlocked"], "0");
}

/// KMIP identity (issue 22, item 6): a KEK version is the KMIP object a
/// host recorded, not whatever key bears its name. A client that may
/// create keys (here the hosts' own shared identity, the weakest case)
/// names Active keys like the next version and like an existing one:
/// neither ever wraps, accepting one under a recorded version is refused
/// naming both objects, and the legitimate rotation on host A, accepted
/// on host B with the identifier A printed, still works.
#[test]
fn a_key_named_like_a_version_by_another_client_never_becomes_the_kek() {
    use std::time::Duration;
    use vmcryptfs::keys::kmip::client::KmipClient;
    use vmcryptfs::keys::kmip::transport::{ClientIdentity, Deadline, Endpoint};

    let kms = Kms::start();
    let (host_a, host_b) = two_hosts_of(&kms);
    host_a.create_vm("vm1", false);

    let impostor = KmipClient::new(
        Endpoint {
            server: kms.server.clone(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        },
        &ClientIdentity {
            ca: kms.file("ca.pem").into(),
            cert: kms.file("client.pem").into(),
            key: kms.file("client.key").into(),
        },
        0,
    )
    .unwrap();
    let plant = |name: &str| {
        let deadline = Deadline::after(Duration::from_secs(30));
        let uid = impostor
            .create_aes256(&deadline, name, "vmcryptfs-kms")
            .unwrap();
        impostor.activate(&deadline, &uid).unwrap();
        uid
    };
    let next = plant("vmcryptfs-kms-v2");
    let same = plant("vmcryptfs-kms-v1");

    // The highest Active key named vmcryptfs-kms-vN is the impostor's v2;
    // neither host wraps under it, nor under the second "v1".
    host_b.create_vm("vm2", false);
    assert_eq!(bundle_json(&host_b, "vm2")["kek_version"], 1);
    host_a.run_ok(&["rekey", &ds(&host_a), "vm1"]);
    assert_eq!(bundle_json(&host_a, "vm1")["kek_version"], 1);
    let status = host_a.run_ok(&["status", &ds(&host_a)]);
    assert!(!status.contains("needs-rekey: yes"), "{status}");

    // Accepting an impostor: under a recorded version, refused naming both
    // objects; under the wrong version, refused by its name.
    let recorded_uids = |host: &TestEnv| -> Vec<String> {
        let text = fs::read_to_string(host.keystore.join("kmip-versions.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let versions = json["providers"]["kms"]["versions"].as_object().unwrap();
        versions
            .values()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let out = host_a.run(&["provider", "accept", "kms", "1", "--uid", &same]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&same) && err.contains("recorded on this host as KMIP object"),
        "{err}"
    );
    for host in [&host_a, &host_b] {
        let recorded = recorded_uids(host);
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert!(
            !recorded.contains(&same) && !recorded.contains(&next),
            "{recorded:?}"
        );
    }
    let out = host_a.run(&["provider", "accept", "kms", "3", "--uid", &next]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is named vmcryptfs-kms-v2, not vmcryptfs-kms-v3"),
        "{}",
        stderr(&out)
    );

    // Host A rotates past the taken name; host B refuses the new version
    // until it accepts it, with the command saying how.
    let rotated = host_a.run_ok(&["provider", "rotate", "kms"]);
    assert!(rotated.contains("kms:vmcryptfs-kms v3"), "{rotated}");
    host_a.run_ok(&["rekey", &ds(&host_a), "vm1"]);
    assert_eq!(bundle_json(&host_a, "vm1")["kek_version"], 3);
    let out = host_b.run(&["rekey", &ds(&host_b), "vm1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("provider accept kms 3 --uid UID"), "{err}");
    let accept = rotated
        .lines()
        .find_map(|l| l.trim().strip_prefix("vmcryptfs provider accept "))
        .unwrap_or_else(|| panic!("rotate prints the accept command: {rotated}"));
    let uid = accept.split_whitespace().last().unwrap().to_owned();
    assert!(uid != next && uid != same, "{accept}");
    let mut args = vec!["provider", "accept"];
    args.extend(accept.split_whitespace());
    host_b.run_ok(&args);
    host_b.run_ok(&["rekey", &ds(&host_b), "vm1"]);
    host_b.create_vm("vm3", false);
    assert_eq!(bundle_json(&host_b, "vm3")["kek_version"], 3);
    assert_eq!(recorded_uids(&host_b).len(), 2);
    assert!(recorded_uids(&host_b).contains(&uid));
    let mount_b = host_b.mount();
    fs::write(mount_b.path("vm1/vm1.nvram"), b"state").unwrap();
    assert_eq!(fs::read(mount_b.path("vm1/vm1.nvram")).unwrap(), b"state");
}

/// Every KMIP call has an overall deadline, DNS included (issue 22, item
/// 6): a resolver that never answers (a UDP socket that reads nothing, put
/// in /etc/resolv.conf of a private mount namespace, with a 30 s resolver
/// timeout) holds `provider add-kmip` for its 1 s operation timeout only,
/// and the error says so.
#[test]
fn a_resolver_that_never_answers_is_abandoned_at_the_deadline() {
    use std::time::{Duration, Instant};
    let kms = Kms::start();
    let env = TestEnv::new();
    let blackhole = std::net::UdpSocket::bind("127.0.0.2:53").expect("binding 127.0.0.2:53 (root)");
    let resolv = env.dir.path().join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 127.0.0.2\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let mut command = std::process::Command::new("unshare");
    command
        .args([
            "--mount",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
        ])
        .arg(&resolv)
        .arg(common::binary())
        .arg("--keystore")
        .arg(&env.keystore)
        .args([
            "provider",
            "add-kmip",
            "slow",
            "--server",
            "kms.vmcryptfs-test.example:5696",
            "--ca",
            &kms.file("ca.pem"),
            "--cert",
            &kms.file("client.pem"),
            "--key",
            &kms.file("client.key"),
            "--operation-timeout",
            "1",
        ])
        .stdin(std::process::Stdio::null());
    let started = Instant::now();
    let out = command.output().unwrap();
    let waited = started.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("operation timeout"), "{err}");
    assert!(err.contains("kms.vmcryptfs-test.example:5696"), "{err}");
    assert!(
        waited < Duration::from_secs(4),
        "gave up after {waited:?}: {err}"
    );
    drop(blackhole);
}

/// `wrap = local`, as vSphere hosts wrap (the host fetches the KEK with Get
/// and wraps itself): VMs are created, written and read through a mount,
/// and `rekey --all` fetches each KEK version once for the whole batch,
/// so the KMS sees a handful of requests however many VMs there are (it
/// was three per VM). The DEKs, and so the content, survive the re-key,
/// and the old version can then be retired and destroyed.
#[test]
fn a_local_wrap_rekey_of_every_vm_asks_the_kms_per_key_version_not_per_vm() {
    const VMS: usize = 24;
    let kms = Kms::start();
    let env = TestEnv::new();
    let out = env.run_strings(&kms.add_args("kms", &["--default", "--wrap", "local"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrap local"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let names: Vec<String> = (0..VMS).map(|i| format!("vm{i}")).collect();
    for name in &names {
        env.create_vm(name, false);
    }
    let content = |name: &str| format!("vTPM state of {name}: seed {}", name.len() * 7919);
    {
        let mount = env.mount();
        for name in &names {
            fs::write(mount.path(&format!("{name}/{name}.nvram")), content(name)).unwrap();
        }
    }
    assert_eq!(bundle_json(&env, "vm0")["kek_version"], 1);
    env.run_ok(&["provider", "rotate", "kms"]);

    let operations = || kms.log().matches("Processing operation:").count();
    let before = operations();
    let out = env.run_ok(&["rekey", "--all", &ds(&env)]);
    // PyKMIP writes its log line as it handles a request; give the last one
    // a moment to land.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let asked = operations() - before;
    eprintln!("rekey --all of {VMS} VMs with wrap = local: {asked} KMS operations\n{out}");
    assert!(
        asked >= 2,
        "the re-key never reached the KMS:\n{}",
        kms.log()
    );
    // Operations, not messages: the client shares messages between
    // concurrent requests, so only the operations show the work per VM.
    // One listing for the current version (a Locate and a GetAttributes
    // per version), a Get to unwrap under v1, a GetAttributes and a Get to
    // wrap under v2: six, never one per VM (three per VM before).
    assert!(
        asked < VMS / 2,
        "{asked} KMS operations to re-key {VMS} VMs:\n{}",
        kms.log()
    );
    for name in &names {
        assert_eq!(bundle_json(&env, name)["kek_version"], 2, "{name}");
    }

    env.run_ok(&["provider", "retire", "1", "--provider", "kms"]);
    env.run_ok(&["provider", "destroy", "1", "--provider", "kms"]);
    let mount = env.mount();
    for name in &names {
        assert_eq!(
            fs::read_to_string(mount.path(&format!("{name}/{name}.nvram"))).unwrap(),
            content(name),
            "{name}"
        );
    }
}
