//! `vmcryptfs provider ...`: manage the embedded key store, register KMIP
//! providers, and the KEK lifecycle of any provider.
//!
//! `destroy` is guarded: it scans the bundles of every datastore the key
//! store knows and refuses while any VM is still wrapped under the version,
//! because such a VM would be locked out on every host that reboots (and so
//! loses its key cache). vSphere leaves this to the operator; we do not.

use crate::format::untrusted;
use std::io::{self, Write};
use std::path::Path;

use super::{open_provider, AddKmipArgs, CliError, ExitKind, ProviderCommand, WrapArg};
use crate::control::timefmt::format_unix_utc;
use crate::datastore::inventory::{scan_all, vms_by_version, VmRecord};
use crate::datastore::known::KnownDatastores;
use crate::keys::embedded::{
    master_key_path, EmbeddedProvider, ImportSummary, EMBEDDED_PROVIDER_NAME,
};
use crate::keys::kmip::{KmipConfig, KmipProvider, WrapMode};
use crate::keys::provider_set::ProviderSet;
use crate::keys::registry::{self, ProviderEntry, Registry};
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
        ProviderCommand::AddKmip(args) => add_kmip(keystore, args)?,
        ProviderCommand::SetDefault { name } => set_default(keystore, &name)?,
        ProviderCommand::Rotate { name } => rotate(keystore, name.as_deref())?,
        ProviderCommand::Accept {
            name,
            kek_version,
            uid,
        } => accept(keystore, &name, kek_version, &uid)?,
        ProviderCommand::List { json } => list(keystore, json)?,
        ProviderCommand::Retire {
            kek_version,
            provider,
        } => retire(keystore, provider.as_deref(), kek_version)?,
        ProviderCommand::Destroy {
            kek_version,
            provider,
            force,
        } => destroy(keystore, provider.as_deref(), kek_version, force)?,
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

/// The provider named `name`, or the default one.
fn provider_named(
    keystore: &Path,
    name: Option<&str>,
) -> Result<std::sync::Arc<dyn KeyProvider>, CliError> {
    let providers = open_provider(keystore)?;
    Ok(providers.get(name.unwrap_or(providers.default_name()))?)
}

fn seconds_to_ms(what: &str, seconds: f64) -> Result<u64, CliError> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        return Err(CliError::new(
            ExitKind::Usage,
            format!("--{what} must be between 0 and 3600 seconds (got {seconds})"),
        ));
    }
    Ok((seconds * 1000.0).ceil() as u64)
}

fn add_kmip(keystore: &Path, args: AddKmipArgs) -> Result<String, CliError> {
    registry::check_name(&args.name).map_err(|e| CliError::new(ExitKind::Usage, e))?;
    let mut registry = Registry::load(keystore)?;
    if registry.providers.contains_key(&args.name) {
        return Err(CliError::new(
            ExitKind::Failure,
            format!(
                "a provider named `{}` is already registered in {}",
                args.name,
                registry::registry_path(keystore).display()
            ),
        ));
    }
    let absolute = |path: &Path| {
        std::path::absolute(path)
            .map_err(|e| CliError::new(ExitKind::Io, format!("resolving {}: {e}", path.display())))
    };
    let config = KmipConfig {
        server: args.server.clone(),
        ca: absolute(&args.ca)?,
        cert: absolute(&args.cert)?,
        key: absolute(&args.key)?,
        key_series: args
            .key_series
            .clone()
            .unwrap_or_else(|| format!("vmcryptfs-{}", args.name)),
        wrap: match args.wrap {
            WrapArg::Server => WrapMode::Server,
            WrapArg::Local => WrapMode::Local,
        },
        connect_timeout_ms: seconds_to_ms("connect-timeout", args.connect_timeout)?,
        request_timeout_ms: seconds_to_ms("request-timeout", args.request_timeout)?,
        retries: args.retries,
        operation_timeout_ms: seconds_to_ms("operation-timeout", args.operation_timeout)?,
    };
    if !args.server.contains(':') {
        return Err(CliError::new(
            ExitKind::Usage,
            format!(
                "--server {:?} must be HOST:PORT (KMIP's port is usually 5696)",
                args.server
            ),
        ));
    }
    std::fs::create_dir_all(keystore).map_err(|e| {
        CliError::new(
            ExitKind::Io,
            format!("creating {}: {e}", keystore.display()),
        )
    })?;
    // Registration is this host's first use of the provider: it records
    // the KMIP objects of the versions the KMS holds now (docs/KMIP.md).
    let provider = KmipProvider::new(&args.name, config.clone()).recording_in(keystore);
    provider.ping()?;
    let current = provider.ensure_current()?;
    registry
        .providers
        .insert(args.name.clone(), ProviderEntry::Kmip(config.clone()));
    if args.default {
        registry.default = Some(args.name.clone());
    }
    registry.save(keystore)?;
    Ok(format!(
        "Registered KMIP provider `{name}`: server {server}, KEKs named {series}-vN, wrap {wrap}.
         Current KEK: {current}
         {default}         Every host that mounts these VMs needs the same provider name and key series,
         and a client identity the KMS lets use the keys (docs/KMIP.md).
",
        name = args.name,
        server = config.server,
        series = config.key_series,
        wrap = config.wrap.as_str(),
        default = if args.default {
            "It is now the default provider: new VM homes are wrapped by it.
"
        } else {
            ""
        },
    ))
}

fn set_default(keystore: &Path, name: &str) -> Result<String, CliError> {
    let mut registry = Registry::load(keystore)?;
    if name != EMBEDDED_PROVIDER_NAME && !registry.providers.contains_key(name) {
        return Err(crate::keys::ProviderError::UnknownProvider { name: name.into() }.into());
    }
    registry.default = (name != EMBEDDED_PROVIDER_NAME).then(|| name.to_owned());
    registry.save(keystore)?;
    Ok(format!(
        "The default provider is now `{name}`: new VM homes are wrapped by it.
"
    ))
}

fn rotate(keystore: &Path, name: Option<&str>) -> Result<String, CliError> {
    let kek = provider_named(keystore, name)?.rotate()?;
    // Other hosts sharing a KMS accept the new version by its identifier.
    let accept = match kmip_named(keystore, &kek.provider)? {
        Some(kmip) => match kmip.recorded_uid(kek.version)? {
            Some(uid) => format!(
                "Its KMIP object is {uid}. On every other host that shares this KMS, run:\n\
                 \x20 vmcryptfs provider accept {name} {version} --uid {uid}\n",
                name = kek.provider,
                version = kek.version,
            ),
            None => String::new(),
        },
        None => String::new(),
    };
    Ok(format!(
        "Rotated: the current KEK is now {kek}\n\
         {accept}\
         Existing VMs stay wrapped under their old KEK version until re-keyed \
         (`vmcryptfs rekey --all DATASTORE`; `vmcryptfs status DATASTORE` shows which).\n"
    ))
}

/// The registered KMIP provider `name`, recording in `keystore`; `None`
/// for another kind of provider.
fn kmip_named(keystore: &Path, name: &str) -> Result<Option<KmipProvider>, CliError> {
    let registry = Registry::load(keystore)?;
    Ok(registry.providers.get(name).map(|entry| match entry {
        ProviderEntry::Kmip(config) => {
            KmipProvider::new(name, config.clone()).recording_in(keystore)
        }
    }))
}

fn accept(keystore: &Path, name: &str, version: u32, uid: &str) -> Result<String, CliError> {
    let kmip = kmip_named(keystore, name)?.ok_or_else(|| {
        CliError::new(
            ExitKind::Failure,
            format!("`{name}` is not a registered KMIP provider (`vmcryptfs provider list`)"),
        )
    })?;
    let kek = kmip.accept(version, uid)?;
    Ok(format!(
        "Accepted: {kek} is KMIP object {uid} on this host.\n"
    ))
}

/// Every VM home of every known datastore, and the datastores that could
/// not be scanned.
fn known_vms(keystore: &Path) -> Result<(Vec<VmRecord>, Vec<String>), CliError> {
    let known = KnownDatastores::new(keystore).list()?;
    let (records, errors) = scan_all(&known);
    Ok((records, errors.iter().map(ToString::to_string).collect()))
}

/// What `provider list` shows of one provider.
struct ProviderReport {
    name: String,
    kind: &'static str,
    server: Option<String>,
    wrap: Option<&'static str>,
    /// KEK id and versions, or why the provider did not answer.
    versions: Result<(String, Vec<KekVersionInfo>), String>,
}

fn report(name: &str, providers: &ProviderSet, registry: &Registry) -> ProviderReport {
    let kmip = registry
        .providers
        .get(name)
        .cloned()
        .map(|ProviderEntry::Kmip(config)| config);
    let versions = providers.get(name).and_then(|p| {
        let versions = p.list_versions()?;
        let kek_id = match &kmip {
            Some(config) => config.key_series.clone(),
            None => p.current_kek()?.kek_id,
        };
        Ok((kek_id, versions))
    });
    ProviderReport {
        name: name.to_owned(),
        kind: if kmip.is_some() { "kmip" } else { "embedded" },
        server: kmip.as_ref().map(|c| c.server.clone()),
        wrap: kmip.as_ref().map(|c| c.wrap.as_str()),
        versions: versions.map_err(|e| e.to_string()),
    }
}

fn list(keystore: &Path, as_json: bool) -> Result<String, CliError> {
    let providers = open_provider(keystore)?;
    let registry = Registry::load(keystore)?;
    let reports: Vec<ProviderReport> = providers
        .names()
        .iter()
        .map(|name| report(name, &providers, &registry))
        .collect();
    let (records, scan_errors) = known_vms(keystore)?;
    let known = KnownDatastores::new(keystore).list()?;
    let counts = |r: &ProviderReport| match &r.versions {
        Ok((kek_id, _)) => vms_by_version(&records, &r.name, kek_id),
        Err(_) => Default::default(),
    };
    if as_json {
        let docs: Vec<_> = reports
            .iter()
            .map(|r| {
                let by_version = counts(r);
                let count = |v: u32| by_version.get(&v).map_or(0, Vec::len);
                serde_json::json!({
                    "name": r.name,
                    "type": r.kind,
                    "default": r.name == providers.default_name(),
                    "server": r.server,
                    "wrap": r.wrap,
                    "reachable": r.versions.is_ok(),
                    "error": r.versions.as_ref().err(),
                    "kek_id": r.versions.as_ref().ok().map(|(id, _)| id),
                    "versions": r.versions.as_ref().map(|(_, versions)| versions.iter().map(|v| serde_json::json!({
                        "version": v.version,
                        "state": v.state.as_str(),
                        "current": v.current,
                        "created": format_unix_utc(v.created_unix),
                        "vms": count(v.version),
                    })).collect::<Vec<_>>()).unwrap_or_default(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "default": providers.default_name(),
            "providers": docs,
            "known_datastores": known,
            "scan_errors": scan_errors,
        });
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        ));
    }
    let mut out = String::new();
    for r in &reports {
        let mut title = format!("provider {} ({}", r.name, r.kind);
        if let (Some(server), Some(wrap)) = (&r.server, r.wrap) {
            title.push_str(&format!(" {server}, wrap {wrap}"));
        }
        if r.name == providers.default_name() {
            title.push_str(", default");
        }
        title.push(')');
        match &r.versions {
            Ok((kek_id, versions)) => {
                let by_version = counts(r);
                let count = |v: u32| by_version.get(&v).map_or(0, Vec::len);
                out.push_str(&format!(
                    "{title}: reachable\nKEK id: {kek_id}\n{}\n",
                    version_table(versions, &count)
                ));
            }
            Err(err) => out.push_str(&format!("{title}: UNREACHABLE\n  {err}\n\n")),
        }
    }
    out.push_str(&format!(
        "VM counts are from the bundles in {} known datastore(s) (recorded by `vm create` and `mount`).\n",
        known.len()
    ));
    for err in scan_errors {
        out.push_str(&format!("warning: {err}\n"));
    }
    Ok(out)
}

/// The VM homes wrapped under `version` of `provider`, in known datastores.
fn users_of(
    keystore: &Path,
    provider: &dyn KeyProvider,
    version: u32,
) -> Result<(Vec<VmRecord>, Vec<String>), CliError> {
    let kek_id = provider.current_kek()?.kek_id;
    let (records, scan_errors) = known_vms(keystore)?;
    let users = vms_by_version(&records, provider.name(), &kek_id)
        .remove(&version)
        .unwrap_or_default()
        .into_iter()
        .cloned()
        .collect();
    Ok((users, scan_errors))
}

fn retire(keystore: &Path, name: Option<&str>, version: u32) -> Result<String, CliError> {
    let provider = provider_named(keystore, name)?;
    provider.retire(version)?;
    let (users, _) = users_of(keystore, &*provider, version)?;
    let mut out = format!(
        "Retired KEK version {version} of provider `{}`: it still unwraps, but no longer wraps.\n",
        provider.name()
    );
    if !users.is_empty() {
        out.push_str(&format!(
            "{} VM home(s) are still wrapped under it and need a re-key before it can be destroyed:\n",
            users.len()
        ));
        for vm in users {
            out.push_str(&format!("  {}\n", untrusted::path(&vm.path())));
        }
    }
    Ok(out)
}

fn destroy(
    keystore: &Path,
    name: Option<&str>,
    version: u32,
    force: bool,
) -> Result<String, CliError> {
    let provider = provider_named(keystore, name)?;
    let (users, scan_errors) = users_of(keystore, &*provider, version)?;
    let user_paths: Vec<String> = users.iter().map(|r| untrusted::path(&r.path())).collect();
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
    let mut out = format!(
        "Destroyed KEK version {version} of provider `{}`.\n",
        provider.name()
    );
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
        assert!(
            text.contains("provider local (embedded, default): reachable"),
            "{text}"
        );
        assert!(text.contains("\n1        active     *  "), "{text}");
    }
}
