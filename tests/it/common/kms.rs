//! A real KMIP server (PyKMIP, started by `scripts/kmip-server`) for one
//! test, stopped when dropped, even if the test fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PyKMIP server and the certificate files of its clients.
pub struct Kms {
    /// Directory of certificates, database, log and configuration.
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub server: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kmip-server")
}

impl Kms {
    /// Starts a fresh server with its own CA and database.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut kms = Kms {
            server: String::new(),
            dir,
        };
        kms.server = kms.run("start");
        kms
    }

    fn run(&self, action: &str) -> String {
        let out = Command::new(script())
            .arg(action)
            .arg(self.dir.path())
            .output()
            .expect("running scripts/kmip-server");
        assert!(
            out.status.success(),
            "scripts/kmip-server {action} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        vars.get("KMIP_SERVER").cloned().unwrap_or_default()
    }

    /// Stops the server (an outage); `restart` brings it back.
    pub fn stop(&self) {
        self.run("stop");
    }

    /// The server's process group (it leads one: `setsid` in the script),
    /// while it runs.
    pub fn process_group(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("server.pid"))
            .expect("server.pid while the server runs")
            .trim()
            .parse()
            .expect("server.pid holds a pid")
    }

    /// Starts it again with the same keys, certificates and port.
    pub fn restart(&self) {
        let server = self.run("start");
        assert_eq!(server, self.server, "the restarted server keeps its port");
    }

    /// A file of the server directory (`ca.pem`, `client.pem`, ...).
    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `provider add-kmip NAME` arguments for the shared cluster identity,
    /// followed by `extra`.
    pub fn add_args(&self, name: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "provider".into(),
            "add-kmip".into(),
            name.into(),
            "--server".into(),
            self.server.clone(),
            "--ca".into(),
            self.file("ca.pem"),
            "--cert".into(),
            self.file("client.pem"),
            "--key".into(),
            self.file("client.key"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// The live processes in process group `group`, from /proc (fields 3 and 5
/// of /proc/PID/stat: state and pgrp). Zombies do not count: they have
/// exited and only wait for init to reap them.
pub fn processes_in_group(group: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // state, ppid, pgrp, ...
        if fields.get(2) == Some(&group.to_string().as_str()) && fields.first() != Some(&"Z") {
            members.push(pid);
        }
    }
    members
}
