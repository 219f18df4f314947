//! `vmcryptfs provider ...`: manage the embedded key store.
//!
//! Retire and destroy exist on [`EmbeddedProvider`] but are deliberately not
//! offered here yet: destroying a KEK version that a VM still uses locks the
//! VM out, so they wait for an in-use guard.

use std::io::{self, Write};
use std::path::Path;

use super::{CliError, ExitKind, ProviderCommand};
use crate::control::timefmt::format_unix_utc;
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
        ProviderCommand::List => list(keystore)?,
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
         (`vmcryptfs vm rekey DATASTORE/VM`).\n"
    ))
}

fn list(keystore: &Path) -> Result<String, CliError> {
    let provider = EmbeddedProvider::open(keystore)?;
    let versions = provider.list_versions()?;
    Ok(format!(
        "KEK id: {}\n{}",
        provider.kek_id(),
        version_table(&versions)
    ))
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

/// `VERSION  STATE  CURRENT  CREATED`, `*` marking the current version.
fn version_table(versions: &[KekVersionInfo]) -> String {
    let mut table = format!(
        "{:<7}  {:<9}  {:<7}  CREATED\n",
        "VERSION", "STATE", "CURRENT"
    );
    for info in versions {
        table.push_str(&format!(
            "{:<7}  {:<9}  {:<7}  {}\n",
            info.version,
            info.state.as_str(),
            if info.current { "*" } else { "" },
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
        let table = version_table(&[
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
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "VERSION  STATE      CURRENT  CREATED");
        assert_eq!(
            lines[1],
            "1        retired             1970-01-01T00:00:00Z"
        );
        assert_eq!(
            lines[2],
            "2        active     *        1970-01-02T00:00:00Z"
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
        run_with_output(ProviderCommand::List, &keystore, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\n1        active     *  "), "{text}");
    }
}
