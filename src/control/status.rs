//! What reading a `.control` file shows: `key: value` lines.
//!
//! Keys are stable and lower-case; a value that is unknown is shown as `-`
//! rather than omitted, so scripts can rely on every key being present.

use std::borrow::Cow;
use std::fmt::Write;

use super::timefmt::format_unix_utc;
use crate::datastore::fsck;
use crate::datastore::scrub::{ScrubPhase, ScrubView};
use crate::datastore::vm_home::VmStatus;
use crate::format::disk_pattern::DiskPattern;
use crate::format::untrusted;

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The status text of one VM home's `.control`.
pub fn render_vm(status: &VmStatus) -> String {
    let bundle = status.bundle.as_ref();
    let mut out = String::new();
    // Each value is one line whatever it quotes (see `untrusted::line`);
    // names and bundle fields are escaped where they are read.
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key}: {}", untrusted::line(&value));
    };
    line("vm", status.name.clone());
    line("vm-id", or_dash(bundle.map(|b| hex::encode(b.vm_id))));
    line("state", status.state.to_string());
    line(
        "provider",
        or_dash(bundle.map(|b| untrusted::field(&b.kek.provider))),
    );
    line(
        "kek-id",
        or_dash(bundle.map(|b| untrusted::field(&b.kek.kek_id))),
    );
    line("kek-version", or_dash(bundle.map(|b| b.kek.version)));
    line(
        "provider-current-version",
        or_dash(status.provider_current_version),
    );
    line("needs-rekey", or_dash(status.needs_rekey().map(yes_no)));
    line(
        "encrypt-disks",
        or_dash(bundle.map(|b| yes_no(b.encrypt_disks))),
    );
    line(
        "disk-pattern",
        or_dash(bundle.map(|b| disk_pattern_text(&b.disk_pattern))),
    );
    line(
        "content-format",
        or_dash(bundle.map(|b| b.content_layout.format_version())),
    );
    line("dek-fingerprint", or_dash(status.dek_fingerprint.clone()));
    line(
        "dek-generations",
        or_dash(bundle.map(|b| {
            b.deks
                .iter()
                .map(|d| d.generation.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })),
    );
    line(
        "current-dek-generation",
        or_dash(bundle.map(|b| b.current_generation)),
    );
    line("bundle-sequence", or_dash(bundle.map(|b| b.sequence)));
    line(
        "bundle-created",
        or_dash(bundle.map(|b| format_unix_utc(b.created_unix))),
    );
    line(
        "bundle-updated",
        or_dash(bundle.map(|b| format_unix_utc(b.updated_unix))),
    );
    line("open-files", status.open_files.to_string());
    line("open-handles", status.open_handles.to_string());
    line("conversion", or_dash(status.conversion.clone()));
    line("locked-reason", or_dash(status.locked_reason.clone()));
    line("provider-error", or_dash(status.provider_error.clone()));
    let scrub = &status.scrub;
    line("scrub", scrub.state().to_string());
    line("scrub-rate", scrub.rate.to_string());
    line(
        "scrub-progress",
        format!(
            "{} of {} bytes, {} of {} files",
            scrub.bytes_done, scrub.bytes_total, scrub.files_done, scrub.files_total
        ),
    );
    line("scrub-started", or_dash(scrub.started.map(format_unix_utc)));
    line(
        "scrub-finished",
        or_dash(scrub.finished.map(format_unix_utc)),
    );
    line("scrub-damage", or_dash(scrub_damage(scrub)));
    line(
        "last-command",
        or_dash(status.last_command.as_ref().map(|c| c.command.clone())),
    );
    line(
        "last-result",
        or_dash(status.last_command.as_ref().map(|c| c.result.clone())),
    );
    out
}

/// A bundle's disk pattern for a status line: its patterns, each escaped
/// like any bundle field (a peeked bundle has not authenticated; the
/// parser's character rules already keep them printable, this is the
/// guard should they ever not), comma-separated; `(none)` if empty.
pub fn disk_pattern_text(pattern: &DiskPattern) -> String {
    if pattern.patterns().is_empty() {
        return pattern.to_string();
    }
    disk_pattern_list(pattern).join(",")
}

/// A bundle's disk patterns for JSON, each escaped as in
/// [`disk_pattern_text`].
pub fn disk_pattern_list(pattern: &DiskPattern) -> Vec<Cow<'_, str>> {
    pattern
        .patterns()
        .iter()
        .map(|p| untrusted::field(p))
        .collect()
}

/// What the last scrub found, on one line: each damaged file with its
/// ranges, each finding by kind and file; `None` if nothing (or no scrub
/// finished yet). Names were escaped where they were read.
fn scrub_damage(scrub: &ScrubView) -> Option<String> {
    let report = scrub.report.as_ref()?;
    let mut parts: Vec<String> = report
        .findings
        .iter()
        .filter(|f| !f.repaired)
        .map(|f| format!("{} {}", f.kind, f.path.as_deref().unwrap_or("-")))
        .collect();
    parts.extend(
        report
            .files
            .iter()
            .filter(|f| f.is_damaged())
            .map(|f| format!("{}: {}", f.path, fsck::describe_file_damage(f))),
    );
    if let Some(why) = &report.unchecked {
        parts.push(format!("unchecked: {why}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// A VM home's scrub as JSON (schema: docs/JSON.md); `null` if this
/// mount never scrubbed it, which keeps the root `.control.json` of ten
/// thousand VM homes from growing by a dozen fields each.
fn scrub_json(scrub: &ScrubView) -> serde_json::Value {
    if scrub.phase == ScrubPhase::Never {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "state": scrub.state(),
        "rate": scrub.rate.0,
        "started": scrub.started.map(format_unix_utc),
        "finished": scrub.finished.map(format_unix_utc),
        "bytes_total": scrub.bytes_total,
        "bytes_done": scrub.bytes_done,
        "files_total": scrub.files_total,
        "files_done": scrub.files_done,
        "report": scrub.report.as_ref().map(fsck::report_json),
    })
}

/// One VM home's status as JSON: the fields of [`render_vm`], in the
/// alphabetical order a `serde_json` map writes them in (schema:
/// docs/JSON.md). A struct rather than a `json!` map: the root
/// `.control.json` writes ten thousand of them straight into its text,
/// without building a map of owned keys and values for each first.
#[derive(serde::Serialize)]
struct VmJson<'a> {
    bundle_created: Option<String>,
    bundle_sequence: Option<u64>,
    bundle_updated: Option<String>,
    content_format: Option<u16>,
    conversion: &'a Option<String>,
    current_dek_generation: Option<u32>,
    dek_fingerprint: &'a Option<String>,
    dek_generations: Option<Vec<u32>>,
    disk_pattern: Option<Vec<Cow<'a, str>>>,
    encrypt_disks: Option<bool>,
    kek_id: Option<Cow<'a, str>>,
    kek_version: Option<u32>,
    last_command: Option<&'a str>,
    last_result: Option<&'a str>,
    locked_reason: &'a Option<String>,
    needs_rekey: Option<bool>,
    open_files: usize,
    open_handles: usize,
    provider: Option<Cow<'a, str>>,
    provider_current_version: Option<u32>,
    provider_error: &'a Option<String>,
    scrub: serde_json::Value,
    state: &'a str,
    vm: &'a str,
    vm_id: Option<String>,
}

impl<'a> VmJson<'a> {
    fn of(status: &'a VmStatus) -> Self {
        let bundle = status.bundle.as_ref();
        let last = status.last_command.as_ref();
        Self {
            bundle_created: bundle.map(|b| format_unix_utc(b.created_unix)),
            bundle_sequence: bundle.map(|b| b.sequence),
            bundle_updated: bundle.map(|b| format_unix_utc(b.updated_unix)),
            content_format: bundle.map(|b| b.content_layout.format_version()),
            conversion: &status.conversion,
            current_dek_generation: bundle.map(|b| b.current_generation),
            dek_fingerprint: &status.dek_fingerprint,
            dek_generations: bundle.map(|b| b.deks.iter().map(|d| d.generation).collect()),
            disk_pattern: bundle.map(|b| disk_pattern_list(&b.disk_pattern)),
            encrypt_disks: bundle.map(|b| b.encrypt_disks),
            kek_id: bundle.map(|b| untrusted::field(&b.kek.kek_id)),
            kek_version: bundle.map(|b| b.kek.version),
            last_command: last.map(|c| c.command.as_str()),
            last_result: last.map(|c| c.result.as_str()),
            locked_reason: &status.locked_reason,
            needs_rekey: status.needs_rekey(),
            open_files: status.open_files,
            open_handles: status.open_handles,
            provider: bundle.map(|b| untrusted::field(&b.kek.provider)),
            provider_current_version: status.provider_current_version,
            provider_error: &status.provider_error,
            scrub: scrub_json(&status.scrub),
            state: status.state,
            vm: &status.name,
            vm_id: bundle.map(|b| hex::encode(b.vm_id)),
        }
    }
}

/// The same fields as [`render_vm`], as JSON (schema: docs/JSON.md).
pub fn vm_json(status: &VmStatus) -> serde_json::Value {
    serde_json::to_value(VmJson::of(status)).expect("JSON of plain values")
}

/// One VM home as the datastore root's status files show it: its line of
/// `.control` and of `.control.json`, rendered once, and what the
/// summary counts. The root's status keeps one per VM home while its
/// status does not change (see [`root_cache`](super::root_cache)).
pub struct RootEntry {
    /// Its line of the root `.control`, newline included.
    text: Box<str>,
    /// Its object in the root `.control.json`'s `vms`, on one line,
    /// without separator or newline.
    json: Box<str>,
    /// Its `state`.
    state: &'static str,
    /// Whether it needs a re-key, if known.
    needs_rekey: Option<bool>,
}

impl RootEntry {
    /// Renders `status`.
    pub fn of(status: &VmStatus) -> Self {
        let bundle = status.bundle.as_ref();
        let text = format!(
            "vm {}: state={} kek-version={} needs-rekey={} encrypt-disks={} disk-pattern={} scrub={}\n",
            status.name,
            status.state,
            or_dash(bundle.map(|b| b.kek.version)),
            or_dash(status.needs_rekey().map(yes_no)),
            or_dash(bundle.map(|b| yes_no(b.encrypt_disks))),
            or_dash(bundle.map(|b| disk_pattern_text(&b.disk_pattern))),
            status.scrub.state(),
        );
        let json = serde_json::to_string(&VmJson::of(status)).expect("JSON of plain values");
        Self {
            text: text.into_boxed_str(),
            json: json.into_boxed_str(),
            state: status.state,
            needs_rekey: status.needs_rekey(),
        }
    }
}

/// The summary shown by the datastore root's `.control`.
pub struct DatastoreSummary<'a> {
    /// Datastore directory.
    pub root: String,
    /// Provider name.
    pub provider: &'a str,
    /// Provider's current KEK version, if it answered.
    pub provider_current_version: Option<u32>,
    /// Every VM home, rendered.
    pub vms: &'a [&'a RootEntry],
    /// Last command written to the root `.control`.
    pub last_command: Option<crate::datastore::vm_home::CommandRecord>,
}

/// The root `.control.json` without its `vms` array, keys in alphabetical
/// order as [`VmJson`]'s (`vms`, written after them, comes last).
#[derive(serde::Serialize)]
struct DatastoreJson<'a> {
    datastore: &'a str,
    last_command: Option<&'a str>,
    last_result: Option<&'a str>,
    locked: usize,
    needs_rekey: usize,
    provider: &'a str,
    provider_current_version: Option<u32>,
    unlocked: usize,
}

/// The number of VM homes in `summary` for which `pred` holds.
fn count(summary: &DatastoreSummary<'_>, pred: impl Fn(&RootEntry) -> bool) -> usize {
    summary.vms.iter().filter(|vm| pred(vm)).count()
}

/// Writes the root `.control` as JSON (`.control.json`) to `out`: the
/// summary fields on the first line, then every VM home as in [`vm_json`],
/// one per line, and a final newline.
///
/// Not indented: at ten thousand VM homes indentation doubled the
/// document (to 10 MB) and with it the time to build and read it. A VM per
/// line keeps it usable with `grep` and `less`; to a JSON parser it is the
/// same document.
pub fn write_datastore_json(
    summary: &DatastoreSummary<'_>,
    out: impl std::io::Write,
) -> std::io::Result<()> {
    // Each VM's line is a few hundred bytes: buffered, `out` sees large
    // writes (unbuffered, the calls into the snapshot were a fifth of the
    // time at a thousand VM homes).
    use std::io::Write as _;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let last = summary.last_command.as_ref();
    let doc = DatastoreJson {
        datastore: &summary.root,
        last_command: last.map(|c| c.command.as_str()),
        last_result: last.map(|c| c.result.as_str()),
        locked: count(summary, |vm| vm.state == "locked"),
        needs_rekey: count(summary, |vm| vm.needs_rekey == Some(true)),
        provider: summary.provider,
        provider_current_version: summary.provider_current_version,
        unlocked: count(summary, |vm| vm.state == "unlocked"),
    };
    let head = serde_json::to_vec(&doc)?;
    // The summary object without its closing brace, then the array.
    out.write_all(&head[..head.len() - 1])?;
    out.write_all(b",\"vms\":[")?;
    for (i, vm) in summary.vms.iter().enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        out.write_all(vm.json.as_bytes())?;
    }
    out.write_all(b"\n]}\n")?;
    out.flush()
}

/// The status text of the root `.control`.
pub fn render_datastore(summary: &DatastoreSummary<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "datastore: {}", summary.root);
    let _ = writeln!(out, "provider: {}", summary.provider);
    let _ = writeln!(
        out,
        "provider-current-version: {}",
        or_dash(summary.provider_current_version)
    );
    let _ = writeln!(out, "vms: {}", summary.vms.len());
    let _ = writeln!(
        out,
        "unlocked: {}",
        count(summary, |vm| vm.state == "unlocked")
    );
    let _ = writeln!(out, "locked: {}", count(summary, |vm| vm.state == "locked"));
    let _ = writeln!(
        out,
        "needs-rekey: {}",
        count(summary, |vm| vm.needs_rekey == Some(true))
    );
    let _ = writeln!(
        out,
        "last-command: {}",
        or_dash(summary.last_command.as_ref().map(|c| c.command.clone()))
    );
    let _ = writeln!(
        out,
        "last-result: {}",
        or_dash(summary.last_command.as_ref().map(|c| c.result.clone()))
    );
    for vm in summary.vms {
        out.push_str(&vm.text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bundle::tests::sample;

    #[test]
    fn vm_status_shows_every_key() {
        let status = VmStatus {
            name: "vm1".into(),
            state: "unlocked",
            bundle: Some(sample()),
            provider_current_version: Some(3),
            dek_fingerprint: Some("0011223344556677".into()),
            ..VmStatus::default()
        };
        let text = render_vm(&status);
        assert!(vm_json(&status)["scrub"].is_null(), "never scrubbed: null");
        for expected in [
            "scrub: never\n",
            "scrub-damage: -\n",
            "vm: vm1\n",
            "state: unlocked\n",
            "kek-version: 2\n",
            "provider-current-version: 3\n",
            "needs-rekey: yes\n",
            "encrypt-disks: yes\n",
            "disk-pattern: *.vmdk,*.qcow2,*.raw,*.img,*.vhd,*.vhdx\n",
            "dek-fingerprint: 0011223344556677\n",
            "locked-reason: -\n",
            "last-command: -\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn datastore_summary_counts() {
        let vms = [
            VmStatus {
                name: "a".into(),
                state: "unlocked",
                bundle: Some(sample()),
                provider_current_version: Some(2),
                ..VmStatus::default()
            },
            VmStatus {
                name: "b".into(),
                state: "locked",
                bundle: Some(sample()),
                provider_current_version: Some(3),
                ..VmStatus::default()
            },
        ];
        let entries: Vec<RootEntry> = vms.iter().map(RootEntry::of).collect();
        let text = render_datastore(&DatastoreSummary {
            root: "/ds".into(),
            provider: "local",
            provider_current_version: Some(3),
            vms: &entries.iter().collect::<Vec<_>>(),
            last_command: None,
        });
        assert!(text.contains("vms: 2\n"));
        assert!(text.contains("locked: 1\n"));
        assert!(text.contains("needs-rekey: 1\n"), "{text}");
        assert!(text.contains("vm b: state=locked"));
        assert!(
            text.contains("encrypt-disks=yes disk-pattern=*.vmdk,*.qcow2,"),
            "{text}"
        );
    }

    #[test]
    fn datastore_json_is_one_document_with_a_vm_per_line() {
        let vm = |name: &str| VmStatus {
            name: name.into(),
            state: "unlocked",
            bundle: Some(sample()),
            provider_current_version: Some(3),
            ..VmStatus::default()
        };
        for vms in [vec![], vec![vm("a")], vec![vm("a"), vm("b"), vm("c")]] {
            let mut out = Vec::new();
            let entries: Vec<RootEntry> = vms.iter().map(RootEntry::of).collect();
            write_datastore_json(
                &DatastoreSummary {
                    root: "/ds".into(),
                    provider: "local",
                    provider_current_version: Some(3),
                    vms: &entries.iter().collect::<Vec<_>>(),
                    last_command: None,
                },
                &mut out,
            )
            .unwrap();
            let text = String::from_utf8(out).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(doc["unlocked"], vms.len());
            assert_eq!(doc["needs_rekey"], vms.len());
            let listed = doc["vms"].as_array().unwrap();
            assert_eq!(listed.len(), vms.len());
            for (status, shown) in vms.iter().zip(listed) {
                assert_eq!(shown, &vm_json(status));
            }
            // Summary line, a line per VM, the closing line.
            assert_eq!(text.lines().count(), 2 + vms.len(), "{text}");
            assert!(text.ends_with("\n]}\n"), "{text}");
            let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
            assert_eq!(keys.last().map(|k| k.as_str()), Some("vms"));
        }
    }
}
