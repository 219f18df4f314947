//! Every external tool a test runs is installed by `scripts/test`, the
//! README's test command, so that a fresh machine never meets a missing
//! one halfway through the suite. (It once did: fio was installed only by
//! a CI-only step, so CI passed while a new user's `scripts/test` failed.)
//!
//! The tools are found the way a reader would find them: each
//! `Command::new` of a string literal, and the tool checks `need(TOOL, ...)`
//! and `require(TOOL, ...)` with a literal TOOL, in every
//! source under `tests/` (each area's module in `tests/it/` and its
//! `common/`, however deep), plus tpm2-tools' commands, which the vTPM test names as string
//! literals. Each must be a base tool of every Debian system (or of the
//! toolchain that runs the tests at all), or be named by `scripts/test`.

use std::collections::BTreeSet;
use std::path::Path;

/// Tools every machine that can run the suite has: Debian's essential
/// packages (coreutils, util-linux's mount, procps, dpkg, bash) and the
/// toolchain itself. Each entry says where it comes from.
const BASE_TOOLS: &[(&str, &str)] = &[
    ("bash", "bash (essential)"),
    ("cargo", "the Rust toolchain that runs the tests"),
    ("cat", "coreutils (essential)"),
    ("chmod", "coreutils (essential)"),
    ("cp", "coreutils (essential)"),
    ("dd", "coreutils (essential)"),
    ("dpkg", "dpkg (essential)"),
    ("dpkg-deb", "dpkg (essential)"),
    ("false", "coreutils (essential)"),
    ("kill", "procps (essential)"),
    ("ln", "coreutils (essential)"),
    ("mkfifo", "coreutils (essential)"),
    ("mount", "mount (essential)"),
    ("mv", "coreutils (essential)"),
    (
        "python3",
        "python3, which scripts/kmip-server needs before any test runs",
    ),
    ("sh", "dash (essential)"),
    ("sleep", "coreutils (essential)"),
    ("stat", "coreutils (essential)"),
    ("sync", "coreutils (essential)"),
    ("timeout", "coreutils (essential)"),
    ("true", "coreutils (essential)"),
    ("truncate", "coreutils (essential)"),
    ("umount", "mount (essential)"),
];

/// Tools that come in the same Debian package as one `scripts/test`
/// checks for: (tool, the tool whose `ensure_tool` line installs it).
const SAME_PACKAGE_AS: &[(&str, &str)] = &[
    ("qemu-io", "qemu-img"),
    ("swtpm_ioctl", "swtpm_setup"),
    ("fusermount3", "fusermount3"),
    ("getfattr", "setfattr"),
];

/// String literals that follow `prefix` in `text`, up to the closing quote.
fn literals_after<'t>(text: &'t str, prefix: &str) -> Vec<&'t str> {
    text.match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// Every tool the test sources run.
fn tools_run_by_tests() -> BTreeSet<String> {
    let mut tools = BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") || path.ends_with("test_tools.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for prefix in ["Command::new(\"", "need(\"", "require(\""] {
                // An absolute path names the same tool (`/bin/mv`).
                tools.extend(
                    literals_after(&text, prefix)
                        .into_iter()
                        .map(|tool| tool.rsplit('/').next().unwrap_or(tool).to_string()),
                );
            }
            tools.extend(
                literals_after(&text, "\"tpm2_")
                    .into_iter()
                    .map(|rest| format!("tpm2_{rest}")),
            );
        }
    }
    tools
}

/// The tools `scripts/test` installs when missing: its `ensure_tool TOOL
/// PACKAGE` lines, and fusermount3 through `ensure_fuse3`.
fn tools_installed_by_scripts_test() -> BTreeSet<String> {
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test"))
            .unwrap();
    let mut tools: BTreeSet<String> = script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ensure_tool "))
        .filter_map(|args| args.split_whitespace().next())
        .map(String::from)
        .collect();
    if script.lines().any(|line| line.trim() == "ensure_fuse3") {
        tools.insert("fusermount3".into());
    }
    tools
}

#[test]
fn every_tool_a_test_runs_is_installed_by_scripts_test() {
    let run = tools_run_by_tests();
    assert!(
        run.contains("fio") && run.contains("qemu-img"),
        "the scan found no tools at all: {run:?}"
    );
    let installed = tools_installed_by_scripts_test();
    let missing: Vec<&String> = run
        .iter()
        // Our own binary: the package test installs it before running it.
        .filter(|tool| tool.as_str() != "vmcryptfs")
        .filter(|tool| !BASE_TOOLS.iter().any(|(base, _)| base == tool))
        .filter(|tool| {
            let installer = SAME_PACKAGE_AS
                .iter()
                .find(|(same, _)| same == tool)
                .map_or(tool.as_str(), |(_, by)| by);
            let installer = if tool.starts_with("tpm2_") {
                "tpm2_createprimary"
            } else {
                installer
            };
            !installed.contains(installer)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "tests run {missing:?}, which scripts/test does not install: add an `ensure_tool TOOL PACKAGE` line for each (or, for a tool of an essential package, a BASE_TOOLS entry here)"
    );
}
