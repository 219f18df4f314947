//! Extended attributes through the mount (issue 23 part 2, docs/FORMAT.md
//! §7): round trips per namespace on files and directories of every kind
//! of VM home, through a remount, re-keys and conversions; libvirt's DAC
//! pattern; flags, error codes and size limits compared with the same
//! calls on the backing file system; sealed values stored only as
//! ciphertext, and every kind of tampering detected; stress-ng's `xattr`
//! stressor.

use crate::common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_checked, Mount, TestEnv};

const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;
/// Bytes sealing adds to a value (docs/FORMAT.md §7.2).
const SEALED_OVERHEAD: usize = 37;

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn cname(name: &str) -> CString {
    CString::new(name).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// Calls `call` (a `getxattr`/`listxattr`-style system call) with a
/// `size`-byte buffer (a null one for 0): the length it returns and the
/// bytes, or the errno.
fn sized(
    size: usize,
    call: impl FnOnce(*mut libc::c_void, usize) -> isize,
) -> Result<(usize, Vec<u8>), i32> {
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    let n = call(ptr, size);
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(if size == 0 { 0 } else { n as usize });
    Ok((n as usize, buf))
}

// Every call acts on the object at the path itself, a symlink included
// (the l* calls), as the mount must.

/// `lgetxattr(2)` with a `size`-byte buffer.
fn get(path: &Path, name: &str, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let (path, name) = (cpath(path), cname(name));
    sized(size, |ptr, size| unsafe {
        libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, size)
    })
}

/// The whole value of `name`.
fn value(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    get(path, name, 65536).map(|(_, v)| v)
}

fn set(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let rc = unsafe {
        libc::lsetxattr(
            cpath(path).as_ptr(),
            cname(name).as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn remove(path: &Path, name: &str) -> Result<(), i32> {
    let rc = unsafe { libc::lremovexattr(cpath(path).as_ptr(), cname(name).as_ptr()) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `llistxattr(2)` with a `size`-byte buffer.
fn list(path: &Path, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let path = cpath(path);
    sized(size, |ptr, size| unsafe {
        libc::llistxattr(path.as_ptr(), ptr.cast(), size)
    })
}

/// The names `listxattr` gives for `path`.
fn names(path: &Path) -> Vec<String> {
    let (_, raw) = list(path, 65536).unwrap();
    raw.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// Fails the test, naming the reason, unless the file system holding
/// `dir` stores `user.*` attributes (tmpfs before Linux 6.6 does not):
/// every test here would otherwise pass or fail for the wrong reason.
fn require_user_xattrs(dir: &Path) {
    let probe = dir.join("xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    if let Err(e) = set(&probe, "user.probe", b"1", 0) {
        panic!(
            "the file system of {} does not store user extended attributes (errno {e}); run the tests where it does (ext4, xfs, tmpfs on Linux 6.6+), e.g. with TMPDIR=/var/tmp",
            dir.display()
        );
    }
    std::fs::remove_file(probe).unwrap();
}

/// A key store with VM home `vm1` (encrypted, disks pass through) and a
/// plain directory `plain`, on a file system that stores user attributes.
fn env_with_homes() -> TestEnv {
    let env = TestEnv::new();
    require_user_xattrs(env.dir.path());
    env.create_vm("vm1", false);
    std::fs::create_dir(env.datastore.join("plain")).unwrap();
    env
}

fn setfattr(path: &Path, name: &str, value: &str) {
    run_checked(
        Command::new("setfattr")
            .args(["--no-dereference", "-n", name, "-v", value])
            .arg(path),
    );
}

fn getfattr(path: &Path, name: &str) -> String {
    let out = run_checked(
        Command::new("getfattr")
            .args([
                "--no-dereference",
                "--only-values",
                "--absolute-names",
                "-n",
                name,
            ])
            .arg(path),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A POSIX ACL value as `setfacl -m u:1000:r` stores it (user::rw-,
/// user:1000:r--, group::r--, mask::r--, other::r--): one that is not
/// equivalent to the mode bits, so the backing file system keeps it.
const ACL: &str =
    "0x0200000001000600ffffffff02000400e803000004000400ffffffff10000400ffffffff20000400ffffffff";

/// (mount path, whether its user/trusted values are sealed)
fn objects() -> [(&'static str, bool); 11] {
    [
        ("vm1", true),
        ("vm1/f.vmx", true),
        ("vm1/empty.nvram", true),
        ("vm1/d", true),
        ("vm1/disk-flat.vmdk", false),
        ("vm1/link", true),
        ("vm1/fifo", true),
        ("vm1/null", true),
        ("plain/f", false),
        ("plain/d", false),
        ("plain/link", false),
    ]
}

/// Whether `object` is a symlink, a FIFO or a device, which the kernel
/// lets carry `trusted.*` and `security.*` attributes but not `user.*`.
fn is_special(object: &str) -> bool {
    ["link", "fifo", "null"]
        .iter()
        .any(|special| object.ends_with(special))
}

fn make_objects(mount: &Mount) {
    std::fs::write(mount.path("vm1/f.vmx"), b"encrypted content").unwrap();
    std::fs::write(mount.path("vm1/empty.nvram"), b"").unwrap();
    std::fs::create_dir(mount.path("vm1/d")).unwrap();
    std::fs::write(mount.path("vm1/disk-flat.vmdk"), b"disk").unwrap();
    std::fs::write(mount.path("plain/f"), b"plain").unwrap();
    std::fs::create_dir(mount.path("plain/d")).unwrap();
    for link in ["vm1/link", "plain/link"] {
        std::os::unix::fs::symlink("f.vmx", mount.path(link)).unwrap();
    }
    nix::unistd::mkfifo(&mount.path("vm1/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    // A device node like /dev/null (1:3), never opened.
    nix::sys::stat::mknod(
        &mount.path("vm1/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
}

/// Every namespace `object` can carry, with a value that names it.
fn attributes(object: &str) -> Vec<(&'static str, String)> {
    let user = ("user.h7.note", format!("user value of {object}"));
    let mut all = if is_special(object) {
        vec![]
    } else {
        vec![user]
    };
    all.extend([
        (
            "trusted.libvirt.security.dac",
            format!("+107:+107 of {object}"),
        ),
        ("security.h7test", format!("label of {object}")),
    ]);
    all
}

/// Whether `object` can carry an ACL (a symlink cannot).
fn takes_acl(object: &str) -> bool {
    !object.ends_with("link")
}

/// Sets [`attributes`] and an ACL on every one of [`objects`] with
/// `setfattr`.
fn set_all(mount: &Mount) {
    for (object, _) in objects() {
        let path = mount.path(object);
        for (name, value) in attributes(object) {
            setfattr(&path, name, &value);
        }
        if takes_acl(object) {
            setfattr(&path, "system.posix_acl_access", ACL);
        }
    }
}

/// Reads every attribute [`set_all`] set back with `getfattr`, checks the
/// backing form of each (sealed or passed through) and the listing.
fn check_all(mount: &Mount, env: &TestEnv) {
    for (object, sealed) in objects() {
        let path = mount.path(object);
        let backing = env.datastore.join(object);
        for (name, expected) in attributes(object) {
            assert_eq!(getfattr(&path, name), expected, "{object} {name}");
            let stored = value(&backing, name).unwrap();
            let sealed_here = sealed && !name.starts_with("security.");
            if sealed_here {
                assert_eq!(
                    stored.len(),
                    expected.len() + SEALED_OVERHEAD,
                    "{object} {name}"
                );
                assert!(
                    !stored
                        .windows(8)
                        .any(|w| expected.as_bytes().windows(8).any(|e| e == w)),
                    "{object} {name}: the backing value holds plaintext"
                );
            } else {
                assert_eq!(
                    stored,
                    expected.as_bytes(),
                    "{object} {name} passes through"
                );
            }
        }
        if takes_acl(object) {
            assert_eq!(
                value(&path, "system.posix_acl_access").map(|v| v.len()),
                Ok(44),
                "{object}: the ACL passes through"
            );
        }
        let mut shown = names(&path);
        shown.sort();
        assert!(
            shown.iter().all(|n| !n.contains("vmcryptfs")),
            "{object}: internal names are hidden: {shown:?}"
        );
        for (name, _) in attributes(object) {
            assert!(shown.iter().any(|n| n == name), "{object}: {shown:?}");
        }
    }
}

#[test]
fn every_namespace_round_trips_on_every_kind_of_object_and_through_a_remount() {
    let env = env_with_homes();
    let mount = env.mount();
    make_objects(&mount);
    set_all(&mount);
    check_all(&mount, &env);
    drop(mount);
    let mount = env.mount();
    check_all(&mount, &env);
    // Removal, and what is left is listed.
    let file = mount.path("vm1/f.vmx");
    run_checked(
        Command::new("setfattr")
            .args(["-x", "user.h7.note"])
            .arg(&file),
    );
    assert_eq!(value(&file, "user.h7.note"), Err(libc::ENODATA));
    assert!(!names(&file).contains(&"user.h7.note".to_string()));
}

#[test]
fn internal_attributes_and_virtual_files_answer_as_ext4_would() {
    let env = env_with_homes();
    let mount = env.mount();
    let file = mount.path("vm1/f");
    std::fs::write(&file, b"x").unwrap();
    set(&file, "user.a", b"1", 0).unwrap();
    assert!(value(&env.vm_dir("vm1").join("f"), "user.vmcryptfs.id").is_ok());
    assert_eq!(value(&file, "user.vmcryptfs.id"), Err(libc::ENODATA));
    assert_eq!(set(&file, "user.vmcryptfs.id", b"x", 0), Err(libc::EPERM));
    assert_eq!(remove(&file, "user.vmcryptfs.id"), Err(libc::EPERM));
    for control in [mount.path(".control"), mount.path("vm1/.control")] {
        assert_eq!(value(&control, "user.a"), Err(libc::ENODATA));
        assert_eq!(list(&control, 0), Ok((0, vec![])));
        assert_eq!(set(&control, "user.a", b"1", 0), Err(libc::EACCES));
    }
}

/// libvirt's DAC driver (virSecurityDACRememberLabel and its restore):
/// the first user of an image records its original owner, a reference
/// count and the host's boot time in `trusted.libvirt.security.*`; each
/// further user raises the count; the last one to let go reads the owner
/// back and removes all three.
#[test]
fn libvirt_dac_remembers_and_restores_owners() {
    let env = env_with_homes();
    let mount = env.mount();
    let disk = mount.path("vm1/disk.qcow2");
    std::fs::write(&disk, b"qcow").unwrap();
    const DAC: &str = "trusted.libvirt.security.dac";
    const REF: &str = "trusted.libvirt.security.ref_dac";
    const STAMP: &str = "trusted.libvirt.security.timestamp_dac";
    let remember = |owner: &str| match value(&disk, REF) {
        Err(libc::ENODATA) => {
            set(&disk, DAC, owner.as_bytes(), 0).unwrap();
            set(&disk, STAMP, b"1733500000", 0).unwrap();
            set(&disk, REF, b"1", 0).unwrap();
        }
        Ok(count) => {
            let count: u32 = String::from_utf8(count).unwrap().parse().unwrap();
            set(
                &disk,
                REF,
                (count + 1).to_string().as_bytes(),
                XATTR_REPLACE,
            )
            .unwrap();
        }
        Err(e) => panic!("get {REF}: errno {e}"),
    };
    let recall = || -> Option<String> {
        let count: u32 = String::from_utf8(value(&disk, REF).unwrap())
            .unwrap()
            .parse()
            .unwrap();
        if count > 1 {
            set(
                &disk,
                REF,
                (count - 1).to_string().as_bytes(),
                XATTR_REPLACE,
            )
            .unwrap();
            return None;
        }
        let owner = String::from_utf8(value(&disk, DAC).unwrap()).unwrap();
        for name in [DAC, REF, STAMP] {
            remove(&disk, name).unwrap();
        }
        Some(owner)
    };
    remember("+0:+0");
    remember("+107:+107");
    assert_eq!(value(&disk, REF).unwrap(), b"2");
    assert_eq!(value(&disk, DAC).unwrap(), b"+0:+0");
    drop(mount);
    let mount = env.mount();
    let disk = mount.path("vm1/disk.qcow2");
    assert_eq!(value(&disk, STAMP).unwrap(), b"1733500000");
    assert_eq!(recall(), None);
    assert_eq!(recall().as_deref(), Some("+0:+0"));
    for name in [DAC, REF, STAMP] {
        assert_eq!(value(&disk, name), Err(libc::ENODATA), "{name}");
    }
    assert!(
        names(&disk).iter().all(|n| !n.starts_with("trusted.")),
        "{:?}",
        names(&disk)
    );
}

/// The outcome of one call, comparable between two file systems.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Len(usize),
    Value(Vec<u8>),
    Names(Vec<u8>),
    Errno(i32),
}

fn outcome<T>(result: Result<T, i32>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
    match result {
        Ok(v) => ok(v),
        Err(e) => Outcome::Errno(e),
    }
}

/// The same sequence of calls, as a tool would make them, on `path`.
fn call_sequence(path: &Path) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    let mut note = |what: &str, o: Outcome| out.push((what.to_string(), o));
    note(
        "get missing",
        outcome(get(path, "user.a", 64), |_| Outcome::Ok),
    );
    note(
        "replace missing",
        outcome(set(path, "user.a", b"v1", XATTR_REPLACE), |_| Outcome::Ok),
    );
    note(
        "remove missing",
        outcome(remove(path, "user.a"), |_| Outcome::Ok),
    );
    note(
        "create",
        outcome(set(path, "user.a", b"value one", XATTR_CREATE), |_| {
            Outcome::Ok
        }),
    );
    note(
        "create again",
        outcome(set(path, "user.a", b"v2", XATTR_CREATE), |_| Outcome::Ok),
    );
    note(
        "both flags",
        outcome(
            set(path, "user.a", b"v2", XATTR_CREATE | XATTR_REPLACE),
            |_| Outcome::Ok,
        ),
    );
    note(
        "size probe",
        outcome(get(path, "user.a", 0), |(n, _)| Outcome::Len(n)),
    );
    note(
        "short buffer",
        outcome(get(path, "user.a", 3), |_| Outcome::Ok),
    );
    note(
        "exact buffer",
        outcome(get(path, "user.a", 9), |(_, v)| Outcome::Value(v)),
    );
    note(
        "replace",
        outcome(set(path, "user.a", b"two", XATTR_REPLACE), |_| Outcome::Ok),
    );
    note(
        "read back",
        outcome(get(path, "user.a", 100), |(_, v)| Outcome::Value(v)),
    );
    note(
        "empty value",
        outcome(set(path, "user.empty", b"", 0), |_| Outcome::Ok),
    );
    note(
        "read empty",
        outcome(get(path, "user.empty", 10), |(n, v)| {
            Outcome::Names([vec![n as u8], v].concat())
        }),
    );
    note(
        "list probe",
        outcome(list(path, 0), |(n, _)| Outcome::Len(n)),
    );
    note("list short", outcome(list(path, 4), |_| Outcome::Ok));
    note(
        "list",
        outcome(list(path, 4096), |(_, v)| Outcome::Names(v)),
    );
    let long_name = format!("user.{}", "n".repeat(251));
    note(
        "name of 256 bytes",
        outcome(set(path, &long_name, b"v", 0), |_| Outcome::Ok),
    );
    let max_name = format!("user.{}", "n".repeat(250));
    note(
        "name of 255 bytes",
        outcome(set(path, &max_name, b"v", 0), |_| Outcome::Ok),
    );
    note(
        "remove it",
        outcome(remove(path, &max_name), |_| Outcome::Ok),
    );
    note(
        "value past 64 KiB",
        outcome(set(path, "user.big", &vec![1; 65537], 0), |_| Outcome::Ok),
    );
    note(
        "unknown namespace",
        outcome(set(path, "nonsense.a", b"v", 0), |_| Outcome::Ok),
    );
    note(
        "empty name",
        outcome(set(path, "", b"v", 0), |_| Outcome::Ok),
    );
    note("remove", outcome(remove(path, "user.a"), |_| Outcome::Ok));
    note(
        "remove again",
        outcome(remove(path, "user.a"), |_| Outcome::Ok),
    );
    note(
        "get removed",
        outcome(get(path, "user.a", 64), |_| Outcome::Ok),
    );
    note(
        "remove empty",
        outcome(remove(path, "user.empty"), |_| Outcome::Ok),
    );
    out
}

/// The largest `user.big` value `path` accepts (binary search), and the
/// errno for one byte more.
fn largest_value(path: &Path) -> (usize, i32) {
    let (mut fits, mut fails) = (0usize, 65537usize);
    while fails - fits > 1 {
        let mid = (fits + fails) / 2;
        match set(path, "user.big", &vec![7; mid], 0) {
            Ok(()) => fits = mid,
            Err(_) => fails = mid,
        }
    }
    let errno = set(path, "user.big", &vec![7; fits + 1], 0).unwrap_err();
    let _ = remove(path, "user.big");
    (fits, errno)
}

/// Symlinks, FIFOs and devices answer `user.*` calls as on ext4 (EPERM,
/// from the kernel) and keep `trusted.*` values, which in an encrypted VM
/// home are sealed like any other.
#[test]
fn special_objects_answer_as_ext4_would() {
    let env = env_with_homes();
    let reference = env.dir.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    std::os::unix::fs::symlink("f.vmx", reference.join("link")).unwrap();
    nix::unistd::mkfifo(&reference.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mount = env.mount();
    make_objects(&mount);
    let calls = |path: &Path| {
        vec![
            set(path, "user.a", b"1", 0),
            set(path, "trusted.a", b"1", XATTR_CREATE),
            set(path, "trusted.a", b"2", XATTR_CREATE),
            remove(path, "user.a"),
            get(path, "trusted.missing", 64).map(|_| ()),
            value(path, "trusted.a").map(|v| assert_eq!(v, b"1")),
            remove(path, "trusted.a"),
        ]
    };
    for (special, on_mount) in [
        ("link", "vm1/link"),
        ("link", "plain/link"),
        ("fifo", "vm1/fifo"),
    ] {
        let expected = calls(&reference.join(special));
        assert_eq!(
            expected[0],
            Err(libc::EPERM),
            "ext4 refuses user.* on a {special}"
        );
        assert_eq!(calls(&mount.path(on_mount)), expected, "{on_mount}");
    }
    // The symlink's attributes are its own, not its target's.
    set(&mount.path("vm1/link"), "trusted.own", b"link", 0).unwrap();
    assert_eq!(
        value(&mount.path("vm1/f.vmx"), "trusted.own"),
        Err(libc::ENODATA)
    );
    let stored = value(&env.datastore.join("vm1/link"), "trusted.own").unwrap();
    assert_eq!(stored.len(), 4 + SEALED_OVERHEAD, "sealed in the VM home");
}

#[test]
fn flags_errors_and_size_limits_match_the_backing_file_system() {
    let env = env_with_homes();
    let reference_dir = env.dir.path().join("reference");
    std::fs::create_dir(&reference_dir).unwrap();
    let reference = reference_dir.join("f");
    std::fs::write(&reference, b"x").unwrap();
    let expected = call_sequence(&reference);
    let mount = env.mount();
    for object in ["vm1/f.vmx", "vm1/disk.vmdk", "plain/f"] {
        std::fs::write(mount.path(object), b"x").unwrap();
    }
    std::fs::create_dir(mount.path("vm1/d")).unwrap();
    for object in ["vm1/f.vmx", "vm1/d", "vm1/disk.vmdk", "plain/f"] {
        let got = call_sequence(&mount.path(object));
        for ((what, want), (_, have)) in expected.iter().zip(&got) {
            assert_eq!(have, want, "{object}: {what}");
        }
    }

    // Size limits. The reference gets an attribute laid out like the
    // attribute id a sealed object holds, so both have the same room.
    set(&reference, "user.vmcryptfs.id", &[0; 16], 0).unwrap();
    let (backing_max, backing_errno) = largest_value(&reference);
    let plain = largest_value(&mount.path("plain/f"));
    assert_eq!(plain.1, backing_errno);
    let sealed = largest_value(&mount.path("vm1/f.vmx"));
    assert_eq!(
        sealed,
        (
            (backing_max - SEALED_OVERHEAD).min(65536 - SEALED_OVERHEAD),
            if backing_max >= 65536 { libc::E2BIG } else { backing_errno }
        ),
        "a sealed value fits exactly when its sealed form fits the backing file system (which takes {backing_max} bytes)"
    );
    // Past the sealed limit but within the kernel's: E2BIG, as ext4 gives
    // past its own.
    assert_eq!(
        set(
            &mount.path("vm1/f.vmx"),
            "user.big",
            &vec![1; 65536 - SEALED_OVERHEAD + 1],
            0
        ),
        Err(libc::E2BIG)
    );
}

/// A change made to a stored value on disk, as a datastore writer would.
type ValueChange<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;

/// The stored value of `user.x` of backing file `path`, changed by
/// `change`, and what reading it through the mount gives.
fn tampered_read(
    mount: &Mount,
    backing: &Path,
    object: &str,
    name: &str,
    change: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, i32> {
    let mut stored = value(backing, name).unwrap();
    let original = stored.clone();
    change(&mut stored);
    set(backing, name, &stored, 0).unwrap();
    let result = value(&mount.path(object), name);
    set(backing, name, &original, 0).unwrap();
    result
}

#[test]
fn every_tampered_field_of_a_sealed_value_is_detected_and_logged() {
    let env = env_with_homes();
    let mount = env.mount();
    std::fs::write(mount.path("vm1/a.vmx"), b"a").unwrap();
    std::fs::write(mount.path("vm1/b.vmx"), b"b").unwrap();
    let (a, b) = (
        env.vm_dir("vm1").join("a.vmx"),
        env.vm_dir("vm1").join("b.vmx"),
    );
    set(&mount.path("vm1/a.vmx"), "user.x", b"the value of a", 0).unwrap();
    set(&mount.path("vm1/a.vmx"), "user.y", b"another value", 0).unwrap();
    set(&mount.path("vm1/a.vmx"), "trusted.x", b"trusted value", 0).unwrap();
    set(&mount.path("vm1/b.vmx"), "user.x", b"the value of b", 0).unwrap();
    assert_eq!(
        value(&mount.path("vm1/a.vmx"), "user.x").unwrap(),
        b"the value of a"
    );

    // Each field of §7.2: version, generation, nonce, ciphertext, tag.
    for (field, at) in [
        ("version", 0usize),
        ("generation", 4),
        ("nonce", 5),
        ("ciphertext", 21),
        ("tag", 21 + 14),
    ] {
        let got = tampered_read(&mount, &a, "vm1/a.vmx", "user.x", |v| v[at] ^= 0x01);
        assert_eq!(got, Err(libc::EIO), "{field}");
    }
    // Cut, extended, and moved from another name, another namespace or
    // another file.
    let y = value(&a, "user.y").unwrap();
    let t = value(&a, "trusted.x").unwrap();
    let from_b = value(&b, "user.x").unwrap();
    let changes: [(&str, ValueChange); 5] = [
        ("cut", Box::new(|v| v.truncate(36))),
        ("extended", Box::new(|v| v.push(0))),
        ("other name", Box::new(|v| *v = y.clone())),
        ("other namespace", Box::new(|v| *v = t.clone())),
        ("other file", Box::new(|v| *v = from_b.clone())),
    ];
    for (what, change) in &changes {
        assert_eq!(
            tampered_read(&mount, &a, "vm1/a.vmx", "user.x", change),
            Err(libc::EIO),
            "{what}"
        );
    }
    // The attribute id: changed, cut, removed.
    for (what, change) in [
        (
            "id changed",
            (|v: &mut Vec<u8>| v[0] ^= 1) as fn(&mut Vec<u8>),
        ),
        ("id cut", |v: &mut Vec<u8>| v.truncate(15)),
    ] {
        let got = tampered_read(&mount, &a, "vm1/a.vmx", "user.vmcryptfs.id", change);
        assert_eq!(
            got,
            Err(libc::ENODATA),
            "{what}: the id itself is never shown"
        );
        let mut id = value(&a, "user.vmcryptfs.id").unwrap();
        let original = id.clone();
        change(&mut id);
        set(&a, "user.vmcryptfs.id", &id, 0).unwrap();
        assert_eq!(
            value(&mount.path("vm1/a.vmx"), "user.x"),
            Err(libc::EIO),
            "{what}"
        );
        set(&a, "user.vmcryptfs.id", &original, 0).unwrap();
    }
    let id = value(&a, "user.vmcryptfs.id").unwrap();
    remove(&a, "user.vmcryptfs.id").unwrap();
    assert_eq!(
        value(&mount.path("vm1/a.vmx"), "user.x"),
        Err(libc::EIO),
        "id removed"
    );
    set(&a, "user.vmcryptfs.id", &id, 0).unwrap();
    // Untouched, everything reads again: the failures were the tampering.
    assert_eq!(
        value(&mount.path("vm1/a.vmx"), "user.x").unwrap(),
        b"the value of a"
    );
    assert_eq!(
        value(&mount.path("vm1/b.vmx"), "user.x").unwrap(),
        b"the value of b"
    );
    let log = mount.log_text();
    assert!(
        log.contains("vm1/a.vmx") && log.contains("extended attribute user.x"),
        "{log}"
    );
    assert!(log.contains("attribute id"), "{log}");
}

/// Every stored value of every object of `dir`, recursively.
fn all_stored_values(dir: &Path) -> Vec<(PathBuf, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for name in names(&path) {
            out.push((path.clone(), name.clone(), value(&path, &name).unwrap()));
        }
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                let entry = entry.unwrap();
                if !entry.file_type().unwrap().is_symlink() {
                    stack.push(entry.path());
                }
            }
        }
    }
    out
}

#[test]
fn sealed_values_are_only_ciphertext_on_disk() {
    let env = env_with_homes();
    let mount = env.mount();
    let secret = b"SECRET-attribute-value-0123456789";
    std::fs::create_dir(mount.path("vm1/d")).unwrap();
    std::fs::write(mount.path("vm1/d/f.vmx"), b"x").unwrap();
    for object in ["vm1", "vm1/d", "vm1/d/f.vmx"] {
        set(&mount.path(object), "user.s", secret, 0).unwrap();
        set(&mount.path(object), "trusted.s", secret, 0).unwrap();
    }
    let stored = all_stored_values(&env.vm_dir("vm1"));
    assert!(stored.len() >= 6, "{stored:?}");
    for (path, name, value) in stored {
        assert!(
            !value.windows(8).any(|w| secret.windows(8).any(|s| s == w)),
            "{} {name} holds plaintext",
            path.display()
        );
    }
}

/// [`env_with_homes`] with every object made and every attribute set
/// through a mount, then unmounted.
fn env_with_attributes() -> TestEnv {
    let env = env_with_homes();
    let mount = env.mount();
    make_objects(&mount);
    set_all(&mount);
    drop(mount);
    env
}

/// The DEK generation a sealed backing value names (§7.2).
fn sealed_generation(stored: &[u8]) -> u32 {
    assert_eq!(stored[0], 1, "sealed layout version");
    u32::from_be_bytes(stored[1..5].try_into().unwrap())
}

#[test]
fn re_keys_keep_attributes_and_a_deep_re_key_re_seals_them() {
    let env = env_with_attributes();
    let ds = env.datastore.to_str().unwrap();
    let before = sealed_generation(&value(&env.vm_dir("vm1/f.vmx"), "user.h7.note").unwrap());
    env.run_ok(&["rekey", ds, "vm1"]);
    let mount = env.mount();
    check_all(&mount, &env);
    drop(mount);
    env.run_ok(&["rekey", "--deep", ds, "vm1"]);
    for (object, sealed) in objects() {
        if sealed {
            for (name, _) in attributes(object) {
                if name.starts_with("security.") {
                    continue;
                }
                let stored = value(&env.datastore.join(object), name).unwrap();
                assert_eq!(sealed_generation(&stored), before + 1, "{object} {name}");
            }
        }
    }
    let mount = env.mount();
    check_all(&mount, &env);
}

#[test]
fn conversions_seal_and_unseal_attributes_as_the_class_changes() {
    let env = TestEnv::new();
    require_user_xattrs(env.dir.path());
    // A plain VM home with attributes, encrypted in place.
    let vm = env.datastore.join("vm2");
    std::fs::create_dir_all(vm.join("logs")).unwrap();
    std::fs::write(vm.join("vm2.vmx"), b"config").unwrap();
    std::fs::write(vm.join("disk.vmdk"), b"disk").unwrap();
    std::fs::write(vm.join("empty.log"), b"").unwrap();
    for object in ["", "logs", "vm2.vmx", "disk.vmdk", "empty.log"] {
        set(
            &vm.join(object),
            "user.origin",
            format!("of {object}").as_bytes(),
            0,
        )
        .unwrap();
        set(&vm.join(object), "security.h7test", b"label", 0).unwrap();
    }
    let vm_arg = vm.to_str().unwrap();
    env.run_ok(&["vm", "encrypt", vm_arg]);
    let stored = |object: &str| value(&vm.join(object), "user.origin").unwrap();
    for object in ["", "logs", "vm2.vmx", "empty.log"] {
        assert_ne!(
            stored(object),
            format!("of {object}").as_bytes(),
            "{object} sealed"
        );
        assert_eq!(
            value(&vm.join(object), "security.h7test").unwrap(),
            b"label"
        );
    }
    assert_eq!(
        stored("disk.vmdk"),
        b"of disk.vmdk",
        "a pass-through disk keeps plain values"
    );
    let check = |env: &TestEnv| {
        let mount = env.mount();
        for object in ["", "logs", "vm2.vmx", "disk.vmdk", "empty.log"] {
            let path = mount.path(&format!("vm2/{object}"));
            assert_eq!(
                value(&path, "user.origin").unwrap(),
                format!("of {object}").as_bytes(),
                "{object}"
            );
            assert_eq!(
                value(&path, "security.h7test").unwrap(),
                b"label",
                "{object}"
            );
        }
    };
    check(&env);
    env.run_ok(&["vm", "encrypt-disks", vm_arg]);
    assert_ne!(
        stored("disk.vmdk"),
        b"of disk.vmdk",
        "an encrypted disk's values are sealed"
    );
    assert_eq!(
        value(&vm.join("disk.vmdk"), "security.h7test").unwrap(),
        b"label"
    );
    check(&env);
    env.run_ok(&["vm", "convert-format", vm_arg, "--content-format", "1"]);
    check(&env);
    env.run_ok(&["vm", "decrypt-disks", vm_arg]);
    assert_eq!(
        stored("disk.vmdk"),
        b"of disk.vmdk",
        "a decrypted disk's values are plain again"
    );
    assert_eq!(
        value(&vm.join("disk.vmdk"), "user.vmcryptfs.id"),
        Err(libc::ENODATA)
    );
    check(&env);
}

#[test]
fn stress_ng_xattr_stressor_ends_on_an_encrypted_vm_home() {
    let env = env_with_homes();
    let mount = env.mount();
    let (status, text, _) = common::stress_ng_on(&mount, "xattr", &mount.path("vm1"));
    assert!(
        status.success(),
        "stress-ng --xattr failed ({status}): {text}"
    );
    // A stressor that finds no attribute support skips and still exits 0.
    assert!(
        !text.contains("skipped") && !text.contains("not supported"),
        "{text}"
    );
    let bogo_ops: u64 = text
        .lines()
        .find_map(|line| line.split("] xattr ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no xattr metrics line: {text}"));
    assert!(bogo_ops > 0, "{text}");
    let log = mount.log_text();
    assert!(!log.contains("ERROR vmcryptfs"), "{log}");
}

/// Runs `program` with `args` as `nobody`, which must succeed.
fn as_nobody(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = run_checked(common::as_nobody(program).args(args));
    String::from_utf8(out.stdout).unwrap()
}

/// `getfattr -d -m -` (every name, with values) of `path` as `nobody`.
fn dump_as_nobody(path: &Path) -> String {
    let text = as_nobody(
        "getfattr",
        &[
            "--absolute-names".as_ref(),
            "-d".as_ref(),
            "-m".as_ref(),
            "-".as_ref(),
            path.as_os_str(),
        ],
    );
    // Drop the `# file: PATH` header; the rest must match.
    text.lines()
        .filter(|line| !line.starts_with("# file:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `env` mounted with allow_other, and a reference directory on the
/// backing file system beside it, both open to every user (with `extra`).
fn mounted_for_everyone(env: &TestEnv, extra: &[&Path]) -> (PathBuf, Mount) {
    let reference = env.dir.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    let mount = env.mount_with(&["-o", "allow_other"]);
    let mut dirs = vec![env.dir.path(), &env.mnt, &env.datastore, &reference];
    let vm1 = env.vm_dir("vm1");
    dirs.push(&vm1);
    dirs.extend_from_slice(extra);
    common::open_up(&dirs);
    (reference, mount)
}

#[test]
fn an_unprivileged_caller_sees_what_it_would_see_on_the_backing_file_system() {
    let env = env_with_homes();
    let (reference, mount) = mounted_for_everyone(&env, &[]);
    let through_mount = mount.path("vm1/f.vmx");
    let on_backing = reference.join("f.vmx");
    for path in [&through_mount, &on_backing] {
        std::fs::write(path, b"x").unwrap();
        chmod(path, 0o644);
        set(path, "user.visible", b"to all readers", 0).unwrap();
        set(path, "trusted.hidden", b"root only", 0).unwrap();
    }
    let expected = dump_as_nobody(&on_backing);
    assert!(
        expected.contains("user.visible") && !expected.contains("trusted"),
        "{expected}"
    );
    assert_eq!(dump_as_nobody(&through_mount), expected);
    // Root sees both, through the mount as on the backing file system.
    assert_eq!(names(&through_mount), names(&on_backing));
}

/// The permission bits (set-id bits included) of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Sets the permission bits of `path` (as root).
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The mount clears set-id bits on a write or truncate by a process
/// without CAP_FSETID itself (the kernel leaves it to the mount under
/// FUSE_HANDLE_KILLPRIV_V2, which spares every write a lookup of
/// `security.capability`): each file ends with the mode the same calls
/// leave on the backing file system.
#[test]
fn set_id_bits_are_cleared_by_unprivileged_writes_and_truncates_as_on_the_backing_file_system() {
    let env = env_with_homes();
    let (reference, mount) = mounted_for_everyone(&env, &[&env.datastore.join("plain")]);
    let files = [
        reference.join("f"),
        mount.path("vm1/f.vmx"),
        mount.path("vm1/disk.vmdk"),
        mount.path("plain/f"),
    ];
    for file in &files {
        std::fs::write(file, b"0123456789").unwrap();
    }
    let write = |file: &Path| {
        let of = format!("of={}", file.display());
        let args = [
            "if=/dev/zero",
            &of,
            "bs=1",
            "count=1",
            "conv=notrunc",
            "status=none",
        ];
        as_nobody("dd", &args.map(std::ffi::OsStr::new));
    };
    let truncate = |file: &Path| {
        as_nobody("truncate", &["-s".as_ref(), "3".as_ref(), file.as_os_str()]);
    };
    let root_write = |file: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .and_then(|f| std::os::unix::fs::FileExt::write_at(&f, b"r", 0))
            .unwrap();
    };
    // The files' group: nobody's own (65534), or root's, which nobody is
    // outside of. ext4 keeps set-group-id without group execute for a
    // writer in the file's group and drops it for anyone else.
    const NOBODYS: u32 = 65534;
    type Step<'a> = (&'a str, u32, u32, &'a dyn Fn(&Path));
    let steps: [Step; 7] = [
        ("write, set-uid and set-gid", 0o6777, NOBODYS, &write),
        ("truncate, set-uid and set-gid", 0o6777, NOBODYS, &truncate),
        (
            "write, set-gid without group execute, kept",
            0o2766,
            NOBODYS,
            &write,
        ),
        (
            "write, set-gid without group execute, writer outside the group",
            0o2766,
            0,
            &write,
        ),
        (
            "truncate, set-gid without group execute, writer outside the group",
            0o2766,
            0,
            &truncate,
        ),
        ("truncate, set-uid", 0o4777, NOBODYS, &truncate),
        ("write by root", 0o6777, NOBODYS, &root_write),
    ];
    for (what, mode, group, step) in steps {
        let mut modes = Vec::new();
        for file in &files {
            std::os::unix::fs::chown(file, None, Some(group)).unwrap();
            chmod(file, mode);
            step(file);
            modes.push(mode_of(file));
        }
        let shown: Vec<String> = modes.iter().map(|m| format!("{m:o}")).collect();
        assert!(
            modes.iter().all(|m| *m == modes[0]),
            "{what}: modes {shown:?} (reference, encrypted, pass-through disk, plain)"
        );
        if what.ends_with("root") || what.ends_with("kept") {
            assert_eq!(modes[0], mode, "{what}");
        } else {
            assert_ne!(modes[0], mode, "{what}: the reference must clear a bit");
        }
    }
}

/// A conversion killed in the middle of its attribute pass, with some
/// values re-sealed and others not, is finished by running it again: every
/// value reads back, each in its final form.
#[test]
fn a_conversion_killed_among_the_attributes_is_finished_by_running_it_again() {
    use std::os::unix::process::ExitStatusExt;
    let env = env_with_attributes();
    let ds = env.datastore.to_str().unwrap();
    let generation = |object: &str| {
        let stored = value(&env.datastore.join(object), "trusted.libvirt.security.dac");
        sealed_generation(&stored.unwrap())
    };
    let before = generation("vm1/f.vmx");
    let status = env
        .cmd(&["rekey", "--deep", ds, "vm1"])
        .env("VMCRYPTFS_TEST_CRASH_AT", "convert-first-attributes-done")
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "killed at the crash point");
    let sealed: Vec<&str> = objects().iter().filter(|o| o.1).map(|o| o.0).collect();
    let generations: Vec<u32> = sealed.iter().map(|o| generation(o)).collect();
    assert!(
        generations.contains(&before) && generations.contains(&(before + 1)),
        "killed halfway: {generations:?}"
    );
    env.run_ok(&["rekey", "--deep", ds, "vm1"]);
    for object in &sealed {
        assert_eq!(generation(object), before + 1, "{object}");
    }
    let mount = env.mount();
    check_all(&mount, &env);
    drop(mount);

    // The same for an in-place encryption of a plain VM home.
    let vm = env.datastore.join("vm2");
    std::fs::create_dir_all(vm.join("a/b")).unwrap();
    std::fs::write(vm.join("a/b/f.vmx"), b"x").unwrap();
    for object in ["", "a", "a/b", "a/b/f.vmx"] {
        set(&vm.join(object), "user.origin", object.as_bytes(), 0).unwrap();
    }
    let vm_arg = vm.to_str().unwrap();
    let status = env
        .cmd(&["vm", "encrypt", vm_arg])
        .env("VMCRYPTFS_TEST_CRASH_AT", "convert-first-attributes-done")
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "killed at the crash point");
    env.run_ok(&["vm", "encrypt", vm_arg]);
    let mount = env.mount();
    for object in ["", "a", "a/b", "a/b/f.vmx"] {
        let stored = value(&vm.join(object), "user.origin").unwrap();
        assert_eq!(
            stored.len(),
            object.len() + SEALED_OVERHEAD,
            "{object} sealed"
        );
        let path = mount.path(&format!("vm2/{object}"));
        assert_eq!(
            value(&path, "user.origin").unwrap(),
            object.as_bytes(),
            "{object}"
        );
    }
}
