//! The vTPM round trip: swtpm keeps its state in an encrypted VM home on
//! the mount; a secret sealed to the TPM and an NV index survive a KEK
//! rotation, a shallow re-key and the destruction of the old KEK version,
//! and the secret never appears in the datastore.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{need, tree_contains, TestEnv};

const SECRET: &[u8] = b"vTPM-sealed-secret-7f3a9c-do-not-leak";
const PERSISTENT: &str = "0x81010001";
const NV_INDEX: &str = "0x1500016";

/// Two consecutive free ports: the swtpm TCTI expects the control channel
/// on the server port + 1.
fn free_port_pair() -> (u16, u16) {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return (port, port + 1);
        }
    }
}

struct Swtpm {
    child: Child,
    port: u16,
    ctrl: u16,
}

impl Swtpm {
    fn start(state: &Path) -> Self {
        let (port, ctrl) = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Swtpm { child, port, ctrl }
    }

    /// Runs a tpm2-tools command against this swtpm, then flushes transient
    /// objects (swtpm has 3 slots and there is no resource manager).
    fn tpm2(&self, args: &[&str], cwd: &Path) -> Output {
        let tcti = format!("swtpm:host=127.0.0.1,port={}", self.port);
        let out = Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", &tcti)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flush = Command::new("tpm2_flushcontext")
            .arg("-t")
            .env("TPM2TOOLS_TCTI", &tcti)
            .output()
            .unwrap();
        assert!(flush.status.success());
        out
    }

    fn stop(mut self) {
        let status = Command::new("swtpm_ioctl")
            .arg("--tcp")
            .arg(format!("127.0.0.1:{}", self.ctrl))
            .arg("-s")
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sealed_secret_and_nv_index_survive_rotation_rekey_and_destroy() {
    need("swtpm", "swtpm");
    need("swtpm_setup", "swtpm-tools");
    need("tpm2_createprimary", "tpm2-tools");
    let env = TestEnv::new();
    env.create_vm("vm1", false);
    let work: PathBuf = env.dir.path().join("tpm2-work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("secret.bin"), SECRET).unwrap();

    let mount = env.mount();
    let state = mount.path("vm1/tpm2");
    std::fs::create_dir(&state).unwrap();
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--config", "/dev/null", "--tpmstate"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swtpm_setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tpm = Swtpm::start(&state);
    tpm.tpm2(
        &["tpm2_createprimary", "-C", "o", "-c", "primary.ctx", "-Q"],
        &work,
    );
    tpm.tpm2(
        &[
            "tpm2_create",
            "-C",
            "primary.ctx",
            "-i",
            "secret.bin",
            "-u",
            "seal.pub",
            "-r",
            "seal.priv",
            "-Q",
        ],
        &work,
    );
    tpm.tpm2(
        &[
            "tpm2_load",
            "-C",
            "primary.ctx",
            "-u",
            "seal.pub",
            "-r",
            "seal.priv",
            "-c",
            "seal.ctx",
            "-Q",
        ],
        &work,
    );
    tpm.tpm2(
        &["tpm2_evictcontrol", "-C", "o", "-c", "seal.ctx", PERSISTENT],
        &work,
    );
    let size = SECRET.len().to_string();
    tpm.tpm2(
        &[
            "tpm2_nvdefine",
            NV_INDEX,
            "-C",
            "o",
            "-s",
            &size,
            "-a",
            "ownerread|ownerwrite",
        ],
        &work,
    );
    tpm.tpm2(
        &["tpm2_nvwrite", NV_INDEX, "-C", "o", "-i", "secret.bin"],
        &work,
    );
    tpm.stop();
    assert!(mount.unmount().success());

    // Rotate, shallow re-key, destroy the old KEK version.
    env.run_ok(&["provider", "rotate"]);
    env.run_ok(&["rekey", "--all", env.datastore.to_str().unwrap()]);
    env.run_ok(&["provider", "destroy", "1"]);

    let mount = env.mount();
    let tpm = Swtpm::start(&mount.path("vm1/tpm2"));
    let unsealed = tpm.tpm2(&["tpm2_unseal", "-c", PERSISTENT], &work).stdout;
    assert_eq!(unsealed, SECRET, "the sealed secret survives");
    let nv = tpm
        .tpm2(&["tpm2_nvread", NV_INDEX, "-C", "o", "-s", &size], &work)
        .stdout;
    assert_eq!(nv, SECRET, "the NV index survives");
    tpm.stop();
    drop(mount);

    assert!(
        tree_contains(&env.datastore, SECRET).is_none(),
        "the secret leaked into the datastore"
    );
    let permall = std::fs::read(env.vm_dir("vm1").join("tpm2/tpm2-00.permall")).unwrap();
    assert_eq!(&permall[..4], b"VMCF", "the vTPM state is stored encrypted");
}
