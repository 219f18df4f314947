//! `vmcryptfs provider ...`: manage the embedded key store and the KEK
//! lifecycle.
//!
//! `destroy` is guarded: it scans the bundles of every datastore the key
//! store knows and refuses while any VM is still wrapped under the version,
//! because such a VM would be locked out on every host that reboots (and so
//! loses its key cache). vSphere leaves this to the operator; we do not.

use std::io::{self, Write};
use std::path::Path;

use super::{CliError, ExitKind, ProviderCommand};
use crate::control::timefmt::format_unix_utc;
use crate::datastore::inventory::{scan_all, vms_by_version, VmRecord};
use crate::datastore::known::KnownDatastores;
use crate::keys::embedded::{master_key_path, EmbeddedProvider, ImportSummary};
use crate::keys::{KekVersionInfo, KeyProvider};

/// Runs one provider subcommand against the key store at `keystore`,
/// printing to standard output.
pub fn run(cmd: ProviderCommand, keystore: &Path) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    run_with_output(cmd, keystore, &mut stdout)
}

/// [`run`], writing its report to `out`.
pub fn run_with_output(
    cmd: ProviderCommand,
    keystore: &Path,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let report = match cmd {
        ProviderCommand::Init => init(keystore)?,
        ProviderCommand::Rotate => rotate(keystore)?,
        ProviderCommand::List { json } => list(keystore, json)?,
        ProviderCommand::Retire { kek_version } => retire(keystore, kek_version)?,
        ProviderCommand::Destroy { kek_version, force } => destroy(keystore, kek_version, force)?,
        ProviderCommand::Export { file } => export(keystore, &file)?,
        ProviderCommand::Import { file } => import(keystore, &file)?,
    };
    out.write_all(report.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|err| CliError::new(ExitKind::Io, format!("writing to standard output: {err}")))
}

fn init(keystore: &Path) -> Result<String, CliError> {
    let (_provider, kek) = EmbeddedProvider::init(keystore)?;
    let master = master_key_path(keystore);
    Ok(format!(
        "Created key store {keystore}\n\
         Master key: {master}\n\
         \n\
         The master key file is the root of trust: every KEK is stored wrapped under it,\n\
         and without it no VM of this key store can be unlocked. Back it up now:\n\
         \x20 1. copy {master} somewhere offline (and keep it secret);\n\
         \x20 2. run `vmcryptfs provider export FILE` and keep FILE with that copy.\n\
         \n\
         Current KEK: {kek}\n",
        keystore = keystore.display(),
        master = master.display(),
    ))
}

fn rotate(keystore: &Path) -> Result<String, CliError> {
    let kek = EmbeddedProvider::open(keystore)?.rotate()?;
    Ok(format!(
        "Rotated: the current KEK is now {kek}\n\
         Existing VMs stay wrapped under their old KEK version until re-keyed \
         (`vmcryptfs rekey --all DATASTORE`; `vmcryptfs status DATASTORE` shows which).\n"
    ))
}

/// Every VM home of every known datastore, and the datastores that could
/// not be scanned.
fn known_vms(keystore: &Path) -> Result<(Vec<VmRecord>, Vec<String>), CliError> {
    let known = KnownDatastores::new(keystore).list()?;
    let (records, errors) = scan_all(&known);
    Ok((records, errors.iter().map(ToString::to_string).collect()))
}

fn list(keystore: &Path, as_json: bool) -> Result<String, CliError> {
    let provider = EmbeddedProvider::open(keystore)?;
    let versions = provider.list_versions()?;
    let (records, scan_errors) = known_vms(keystore)?;
    let by_version = vms_by_version(&records, provider.name(), provider.kek_id());
    let count = |v: u32| by_version.get(&v).map_or(0, Vec::len);
    if as_json {
        let doc = serde_json::json!({
            "provider": provider.name(),
            "kek_id": provider.kek_id(),
            "versions": versions.iter().map(|v| serde_json::json!({
                "version": v.version,
                "state": v.state.as_str(),
                "current": v.current,
                "created": format_unix_utc(v.created_unix),
                "vms": count(v.version),
            })).collect::<Vec<_>>(),
            "known_datastores": KnownDatastores::new(keystore).list()?,
            "scan_errors": scan_errors,
        });
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        ));
    }
    let mut out = format!(
        "KEK id: {}\n{}",
        provider.kek_id(),
        version_table(&versions, &count)
    );
    let known = KnownDatastores::new(keystore).list()?;
    out.push_str(&format!(
        "\nVM counts are from the bundles in {} known datastore(s) (recorded by `vm create` and `mount`).\n",
        known.len()
    ));
    for err in scan_errors {
        out.push_str(&format!("warning: {err}\n"));
    }
    Ok(out)
}

fn retire(keystore: &Path, version: u32) -> Result<String, CliError> {
    let provider = EmbeddedProvider::open(keystore)?;
    provider.retire(version)?;
    let (records, _) = known_vms(keystore)?;
    let users = vms_by_version(&records, provider.name(), provider.kek_id())
        .remove(&version)
        .unwrap_or_default();
    let mut out =
        format!("Retired KEK version {version}: it still unwraps, but no longer wraps.\n");
    if !users.is_empty() {
        out.push_str(&format!(
            "{} VM home(s) are still wrapped under it and need a re-key before it can be destroyed:\n",
            users.len()
        ));
        for vm in users {
            out.push_str(&format!("  {}\n", vm.path().display()));
        }
    }
    Ok(out)
}

fn destroy(keystore: &Path, version: u32, force: bool) -> Result<String, CliError> {
    let provider = EmbeddedProvider::open(keystore)?;
    let (records, scan_errors) = known_vms(keystore)?;
    let users = vms_by_version(&records, provider.name(), provider.kek_id())
        .remove(&version)
        .unwrap_or_default();
    let user_paths: Vec<String> = users
        .iter()
        .map(|r| r.path().display().to_string())
        .collect();
    let datastores: std::collections::BTreeSet<String> = users
        .iter()
        .map(|r| r.datastore.display().to_string())
        .collect();
    if !force && (!users.is_empty() || !scan_errors.is_empty()) {
        let mut message = format!("refusing to destroy KEK version {version}");
        if !users.is_empty() {
            message.push_str(&format!(
                ": {} VM home(s) are still wrapped under it and would be locked out on every host that restarts:\n  {}\nRe-key them first: {}",
                users.len(),
                user_paths.join("\n  "),
                datastores
                    .iter()
                    .map(|d| format!("vmcryptfs rekey --all {d}"))
                    .collect::<Vec<_>>()
                    .join(" ; ")
            ));
        }
        if !scan_errors.is_empty() {
            message.push_str(&format!(
                "\ncannot verify that no VM uses it, because these datastores could not be scanned:\n  {}",
                scan_errors.join("\n  ")
            ));
        }
        message.push_str("\n(--force destroys it anyway)");
        return Err(CliError::new(ExitKind::Key, message));
    }
    provider.destroy(version)?;
    let mut out = format!("Destroyed KEK version {version}.\n");
    if !users.is_empty() {
        let warning = format!(
            "WARNING: --force: these {} VM home(s) are now locked out on every host without their DEK in memory:\n  {}\n\
             A mount that still has one unlocked can rescue it: echo rekey > MNT/VM/.control\n",
            users.len(),
            user_paths.join("\n  ")
        );
        eprint!("{warning}");
        out.push_str(&warning);
    }
    Ok(out)
}

fn export(keystore: &Path, file: &Path) -> Result<String, CliError> {
    EmbeddedProvider::open(keystore)?.export(file)?;
    Ok(format!(
        "Exported key store {} to {} (KEKs stay wrapped under the master key; back up master.key separately)\n",
        keystore.display(),
        file.display()
    ))
}

fn import(keystore: &Path, file: &Path) -> Result<String, CliError> {
    let summary = EmbeddedProvider::import(keystore, file)?;
    Ok(format!(
        "Imported {} into key store {}: {}; current KEK {}\n",
        file.display(),
        keystore.display(),
        describe_import(&summary),
        summary.current
    ))
}

fn describe_import(summary: &ImportSummary) -> String {
    let versions: Vec<String> = summary.added_versions.iter().map(u32::to_string).collect();
    match (summary.created_store, versions.is_empty()) {
        (_, true) => "no new KEK versions".to_string(),
        (true, false) => format!("created with versions {}", versions.join(", ")),
        (false, false) => format!("added versions {}", versions.join(", ")),
    }
}

/// `VERSION  STATE  CURRENT  VMS  CREATED`, `*` marking the current version
/// and VMS the number of known VM homes wrapped under each version.
fn version_table(versions: &[KekVersionInfo], vm_count: &dyn Fn(u32) -> usize) -> String {
    let mut table = format!(
        "{:<7}  {:<9}  {:<7}  {:<5}  CREATED\n",
        "VERSION", "STATE", "CURRENT", "VMS"
    );
    for info in versions {
        table.push_str(&format!(
            "{:<7}  {:<9}  {:<7}  {:<5}  {}\n",
            info.version,
            info.state.as_str(),
            if info.current { "*" } else { "-" },
            vm_count(info.version),
            format_unix_utc(info.created_unix)
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KekState;

    #[test]
    fn version_table_marks_current() {
        let table = version_table(
            &[
                KekVersionInfo {
                    version: 1,
                    state: KekState::Retired,
                    created_unix: 0,
                    current: false,
                },
                KekVersionInfo {
                    version: 2,
                    state: KekState::Active,
                    created_unix: 86_400,
                    current: true,
                },
            ],
            &|v| v as usize * 3,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "VERSION  STATE      CURRENT  VMS    CREATED");
        assert_eq!(
            lines[1],
            "1        retired    -        3      1970-01-01T00:00:00Z"
        );
        assert_eq!(
            lines[2],
            "2        active     *        6      1970-01-02T00:00:00Z"
        );
    }

    #[test]
    fn init_then_list_reports_version_one() {
        let dir = tempfile::tempdir().unwrap();
        let keystore = dir.path().join("ks");
        let mut out = Vec::new();
        run_with_output(ProviderCommand::Init, &keystore, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("root of trust"), "{text}");
        assert!(text.contains("provider export"), "{text}");
        assert!(text.contains(" v1\n"), "{text}");
        let mut out = Vec::new();
        run_with_output(ProviderCommand::List { json: false }, &keystore, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\n1        active     *  "), "{text}");
    }
}
