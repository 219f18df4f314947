//! `vmcryptfs status` and `vmcryptfs rekey`: the datastore-wide view of
//! which KEK version wraps each VM, and moving VMs to the current version.

use crate::format::untrusted;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::mountinfo::vmcryptfs_mount_of;
use super::{open_provider, open_provider_targeting, CliError, ExitKind};
use crate::control::status::{disk_pattern_list, disk_pattern_text};
use crate::datastore::inventory::{scan_datastore, wrap_health, VmRecord, WrapHealth};
use crate::datastore::known::KnownDatastores;
use crate::datastore::{rekey_batch, vm_keys};
use crate::keys::bundle_sequences::BundleSequences;
use crate::keys::provider_set::ProviderSet;
use crate::keys::{KekVersionInfo, KeyProvider};
use std::collections::HashMap;

/// `path` made absolute, for reports and for matching mounts.
pub(super) fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path)
        .map_err(|e| CliError::new(ExitKind::Io, format!("resolving {}: {e}", path.display())))
}

/// Scans a datastore and classifies each VM against the versions of the
/// provider that wraps it. A provider that does not answer (or is not
/// configured here) leaves its VMs `unknown`.
fn classify(
    datastore: &Path,
    providers: &ProviderSet,
) -> Result<Vec<(VmRecord, WrapHealth)>, CliError> {
    let records = scan_datastore(datastore)?;
    let mut versions_of: HashMap<String, Option<(String, Vec<KekVersionInfo>)>> = HashMap::new();
    Ok(records
        .into_iter()
        .map(|record| {
            let Ok(bundle) = &record.bundle else {
                return (record, WrapHealth::Unknown);
            };
            let name = bundle.kek.provider.clone();
            let known = versions_of.entry(name.clone()).or_insert_with(|| {
                let provider = providers.get(&name).ok()?;
                let kek_id = provider.current_kek().ok()?.kek_id;
                Some((kek_id, provider.list_versions().ok()?))
            });
            let health = match known {
                Some((kek_id, versions)) => wrap_health(&record, &name, kek_id, versions),
                None => WrapHealth::Unknown,
            };
            (record, health)
        })
        .collect())
}

/// `vmcryptfs status DATASTORE [--json]`.
pub fn status(datastore: &Path, as_json: bool, keystore: &Path) -> Result<(), CliError> {
    let datastore = absolute(datastore)?;
    let provider = open_provider(keystore)?;
    KnownDatastores::new(keystore).record(&datastore)?;
    let vms = classify(&datastore, &provider)?;
    let current = provider.current_kek();
    if as_json {
        let vms_json: Vec<_> = vms
            .iter()
            .map(|(record, health)| {
                let bundle = record.bundle.as_ref().ok();
                json!({
                    "name": record.name,
                    "path": record.path(),
                    "provider": bundle.map(|b| untrusted::field(&b.kek.provider)),
                    "kek_id": bundle.map(|b| untrusted::field(&b.kek.kek_id)),
                    "kek_version": bundle.map(|b| b.kek.version),
                    "encrypt_disks": bundle.map(|b| b.encrypt_disks),
                    "disk_pattern": bundle.map(|b| disk_pattern_list(&b.disk_pattern)),
                    "status": health.as_str(),
                    "error": record.bundle.as_ref().err(),
                })
            })
            .collect();
        let doc = json!({
            "datastore": datastore,
            "provider": provider.name(),
            "kek_id": current.as_ref().ok().map(|k| k.kek_id.clone()),
            "current_version": current.as_ref().ok().map(|k| k.version),
            "provider_error": current.as_ref().err().map(ToString::to_string),
            "mounted_at": vmcryptfs_mount_of(&datastore),
            "vms": vms_json,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        );
        return Ok(());
    }
    println!("datastore: {}", datastore.display());
    match &current {
        Ok(kek) => println!(
            "default provider: {} (KEK {}, current version {})",
            provider.name(),
            kek.kek_id,
            kek.version
        ),
        Err(err) => println!("default provider: {} ({err})", provider.name()),
    }
    if let Some(mnt) = vmcryptfs_mount_of(&datastore) {
        println!("mounted at: {}", mnt.display());
    }
    println!(
        "{:<24}  {:<8}  {:<7}  {:<13}  {:<22}  STATUS",
        "VM", "PROVIDER", "KEK-VER", "ENCRYPT-DISKS", "DISK-PATTERN"
    );
    for (record, health) in &vms {
        match &record.bundle {
            Ok(b) => println!(
                "{:<24}  {:<8}  {:<7}  {:<13}  {:<22}  {}",
                untrusted::escape(record.name.as_bytes(), untrusted::NAME_LIMIT),
                untrusted::field(&b.kek.provider),
                b.kek.version,
                if b.encrypt_disks { "yes" } else { "no" },
                disk_pattern_text(&b.disk_pattern),
                health.as_str()
            ),
            Err(err) => println!(
                "{:<24}  {:<8}  {:<7}  {:<13}  {:<22}  unknown: {}",
                untrusted::escape(record.name.as_bytes(), untrusted::NAME_LIMIT),
                "-",
                "-",
                "-",
                "-",
                untrusted::line(&err.to_string())
            ),
        }
    }
    let stale = vms
        .iter()
        .filter(|(_, h)| *h == WrapHealth::NeedsRekey)
        .count();
    let locked = vms.iter().filter(|(_, h)| *h == WrapHealth::Locked).count();
    if stale > 0 {
        println!(
            "\n{stale} VM(s) need a re-key: vmcryptfs rekey --all {}",
            datastore.display()
        );
    }
    if locked > 0 {
        println!("{locked} VM(s) are wrapped under a destroyed or unknown KEK version and cannot be unlocked by a host without their DEK in memory");
    }
    Ok(())
}

/// The VM homes a command acts on: those named, or with `--all` every VM
/// home of the datastore. Naming none without `--all` is a usage error.
fn vm_names(
    datastore: &Path,
    names: &[String],
    all: bool,
    what: &str,
) -> Result<Vec<String>, CliError> {
    if all {
        return Ok(scan_datastore(datastore)?
            .into_iter()
            .map(|r| r.name)
            .collect());
    }
    if names.is_empty() {
        return Err(CliError::new(
            ExitKind::Usage,
            format!(
                "name the VM homes to {what}, or pass --all for every VM home in the datastore"
            ),
        ));
    }
    Ok(names.to_vec())
}

/// `vmcryptfs rekey DATASTORE [VM...] [--all] [--provider NAME]`.
pub fn rekey(
    datastore: &Path,
    names: &[String],
    all: bool,
    target: Option<&str>,
    keystore: &Path,
) -> Result<(), CliError> {
    let datastore = absolute(datastore)?;
    let names = vm_names(&datastore, names, all, "re-key")?;
    let provider = open_provider_targeting(keystore, target)?;
    KnownDatastores::new(keystore).record(&datastore)?;
    let mount = vmcryptfs_mount_of(&datastore);
    let sequences = BundleSequences::in_keystore(keystore);
    let results: Vec<Result<String, String>> = match &mount {
        Some(mnt) if all && target.is_none() => rekey_all_through_mount(mnt, &names),
        Some(mnt) => names
            .iter()
            .map(|name| rekey_through_mount(&mnt.join(name), target))
            .collect(),
        None => rekey_batch::rekey_each(&names, &provider, &sequences, |name, provider, seq| {
            vm_keys::shallow_rekey(&datastore.join(name), provider, seq)
                .map(|o| format!("DEK rewrapped under {} (was v{})", o.to, o.from.version))
                .map_err(|e| e.to_string())
        }),
    };
    let mut failures = Vec::new();
    for (name, result) in names.iter().zip(results) {
        let shown = untrusted::escape(name.as_bytes(), untrusted::NAME_LIMIT);
        match result {
            Ok(done) => println!("{shown}: {done}"),
            Err(err) => {
                eprintln!("{shown}: re-key failed: {}", untrusted::line(&err));
                failures.push(shown);
            }
        }
    }
    if let Some(mnt) = &mount {
        println!("(re-keyed through the mount at {})", mnt.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            ExitKind::Key,
            format!(
                "{} of {} VM homes could not be re-keyed: {}",
                failures.len(),
                names.len(),
                failures.join(", ")
            ),
        ))
    }
}

/// Re-keys every VM of a mounted datastore with one `rekey-all` written to
/// the mount's root `.control`: the mount re-keys them as one batch
/// (parallel, one rollback-record update), where a write to each VM's
/// `.control` would re-key them one after another. Each VM's result is
/// then read from its own `.control`, and counts only if its bundle
/// sequence moved past the one read before: a `rekey-all` result left by
/// an earlier run is never taken for this one's.
fn rekey_all_through_mount(mnt: &Path, names: &[String]) -> Vec<Result<String, String>> {
    let control_of = |name: &str| {
        mnt.join(name)
            .join(crate::datastore::layout::CONTROL_FILE_NAME)
    };
    let field = |status: &str, key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": ").map(str::to_owned))
    };
    let sequence =
        |status: &str| field(status, "bundle-sequence").and_then(|s| s.parse::<u64>().ok());
    let before: Vec<Option<u64>> = names
        .iter()
        .map(|name| sequence(&std::fs::read_to_string(control_of(name)).unwrap_or_default()))
        .collect();
    let root = mnt.join(crate::datastore::layout::CONTROL_FILE_NAME);
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(&root)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"rekey-all\n"));
    names
        .iter()
        .zip(before)
        .map(|(name, before)| {
            let status = std::fs::read_to_string(control_of(name)).unwrap_or_default();
            let ours = field(&status, "last-command").as_deref() == Some("rekey-all");
            let result = field(&status, "last-result").unwrap_or_default();
            let moved = matches!((before, sequence(&status)), (Some(b), Some(a)) if a > b);
            match (ours, result.strip_prefix("ok: ")) {
                (true, Some(done)) if moved => Ok(done.to_owned()),
                (true, None) if result.starts_with("error") => Err(result),
                _ => Err(match &write {
                    Err(e) => format!("{}: {e}", root.display()),
                    Ok(()) => "the mount's rekey-all did not re-key it".to_owned(),
                }),
            }
        })
        .collect()
}

/// Re-keys one VM of a mounted datastore by writing to its `.control`, so
/// the mount's key cache and status stay consistent; returns the mount's
/// `last-result`.
fn rekey_through_mount(vm_mount: &Path, target: Option<&str>) -> Result<String, String> {
    let control = vm_mount.join(crate::datastore::layout::CONTROL_FILE_NAME);
    let command = match target {
        Some(name) => format!("rekey-to {name}\n"),
        None => "rekey\n".to_owned(),
    };
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(&control)
        .and_then(|mut f| std::io::Write::write_all(&mut f, command.as_bytes()));
    let status = std::fs::read_to_string(&control).unwrap_or_default();
    let last = status
        .lines()
        .find_map(|l| l.strip_prefix("last-result: "))
        .unwrap_or("-")
        .to_string();
    match write {
        Ok(()) => Ok(last.trim_start_matches("ok: ").to_string()),
        Err(_) if last.starts_with("error") => Err(last),
        Err(e) => Err(format!("{}: {e}", control.display())),
    }
}

/// `vmcryptfs rekey --deep DATASTORE VM... | --all`.
pub fn deep_rekey(
    datastore: &Path,
    names: &[String],
    all: bool,
    target: Option<&str>,
    keystore: &Path,
) -> Result<(), CliError> {
    let datastore = absolute(datastore)?;
    let names = vm_names(&datastore, names, all, "deep re-key")?;
    for name in &names {
        super::convert_cmd::run(
            &datastore,
            name,
            crate::datastore::convert::Operation::DeepRekey,
            target,
            keystore,
        )?;
    }
    Ok(())
}
