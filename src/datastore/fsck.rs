//! `vmcryptfs fsck`: which VM homes and files of an unmounted datastore
//! are damaged, and which plaintext byte ranges of each file.
//!
//! Per VM home it checks the key bundle (it parses, unwraps under the
//! provider, is not rolled back: [`vm_keys::unlock_vm`]), the conversion
//! journal ([`convert::pending_in`]), stray temp files, the disk policy
//! against the disks' stored form, every sealed extended attribute value
//! (docs/FORMAT.md §7), and every block of every encrypted file
//! ([`crate::content::verify`]). It only reads, except that with `repair`
//! it removes the temp files vmcryptfs itself leaves and finishes or rolls
//! back an interrupted conversion by its journal ([`convert::resume`]),
//! and with `zero_damaged_blocks` too rewrites blocks that fail
//! authentication as authenticated zeros; content that authenticates, a
//! damaged journal and unknown names are never changed.
//!
//! Everything here is reached through [`VmDir`] descriptors (issue 22): no
//! symlink is followed, only regular files are opened, and the bundle and
//! journal reads are bounded. Nothing read from the datastore is echoed
//! into the report: names are escaped ([`untrusted`]) and every finding is
//! a fixed text.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use super::bundle_file;
use super::convert::{
    self, for_each_attribute_holder, stored_form, walk_vm_home, Pending, Progress, Resumed,
    StoredForm, WalkEntry, JOURNAL_FILE_NAME, JOURNAL_TEMP_FILE_NAME, TEMP_FILE_NAME,
};
use super::layout::{ContentClass, BUNDLE_FILE_NAME};
use super::owned_file::{remove_at, VmDir};
use super::vm_home::{StoragePolicy, VmHome};
use super::xattrs::BackingObject;
use super::{vm_keys, DatastoreError};
use crate::content::verify::{check_file, ContentCheck, CHUNK_BLOCKS, SCRUB_CHUNK_BLOCKS};
use crate::content::EncryptedFile;
use crate::crypto::keyring::VmKeyring;
use crate::format::content_layout::ContentLayout;
use crate::format::file_header::{self, UnverifiedHeader};
use crate::format::offsets::{plain_off_to_block_no, plain_size_to_block_count};
use crate::format::untrusted;
use crate::keys::bundle_sequences::BundleSequences;
use crate::keys::{KeyProvider, ProviderError};

/// What `vmcryptfs fsck --repair` may change. Nothing by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repair {
    /// `--repair`: remove the temp files vmcryptfs itself leaves, and
    /// finish or roll back an interrupted conversion by its journal.
    pub enabled: bool,
    /// `--zero-damaged-blocks` (with `--repair`): rewrite each block that
    /// fails authentication as authenticated zeros.
    pub zero_damaged_blocks: bool,
}

/// The verdict on one VM home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Everything checked, nothing found.
    Clean,
    /// Something is damaged or left over (see the findings and files).
    Damaged,
    /// The VM home could not be checked (in whole or in part): its KEK is
    /// missing, the provider cannot be reached, a file cannot be opened.
    Unchecked,
    /// No key bundle and no file that looks encrypted: a plain directory,
    /// passed through and not checked.
    Plain,
}

impl VmState {
    /// The state's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Clean => "clean",
            VmState::Damaged => "damaged",
            VmState::Unchecked => "unchecked",
            VmState::Plain => "plain",
        }
    }
}

/// A finding about a VM home as a whole, or one of its internal files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind: `bundle`, `bundle-missing`, `journal`, `stray-temp`,
    /// `policy`, `attribute` (docs/JSON.md).
    pub kind: &'static str,
    /// The file concerned, relative to the VM home, escaped; if any.
    pub path: Option<String>,
    /// What is wrong and what to do. Built from fixed words, escaped
    /// names and our own errors, never from file content.
    pub detail: String,
    /// Whether `--repair` removed the file (then it is no longer damage).
    pub repaired: bool,
}

/// What fsck found in one encrypted file with any finding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReport {
    /// The file, relative to its VM home, escaped.
    pub path: String,
    /// Plaintext size.
    pub size: u64,
    /// Why the header does not authenticate, if it does not (then the
    /// whole file is damaged).
    pub header: Option<String>,
    /// Bytes of a trailing fragment (truncated inside a block).
    pub trailing_fragment: Option<u64>,
    /// Damaged plaintext byte ranges, ascending.
    pub damaged: Vec<Range<u64>>,
    /// Full blocks stored as zeros in allocated space: they read as zeros;
    /// fsck cannot tell damage from a discarded block (not damage).
    pub zeroed: Vec<Range<u64>>,
    /// Why the file could not be checked, if it could not.
    pub unchecked: Option<String>,
    /// Blocks `--zero-damaged-blocks` rewrote as authenticated zeros.
    pub rewritten: Vec<u64>,
    /// Why a damaged block could not be rewritten, if one could not.
    pub rewrite_error: Option<String>,
}

impl FileReport {
    /// Whether the file is damaged (zeroed blocks are not counted, nor
    /// damaged blocks `--zero-damaged-blocks` rewrote, all of them).
    pub fn is_damaged(&self) -> bool {
        let blocks_left =
            !self.damaged.is_empty() && (self.rewritten.is_empty() || self.rewrite_error.is_some());
        self.header.is_some() || self.trailing_fragment.is_some() || blocks_left
    }
}

/// What fsck found in one VM home.
#[derive(Debug, Clone)]
pub struct VmReport {
    /// The VM home's directory name, escaped.
    pub name: String,
    /// The verdict.
    pub state: VmState,
    /// Content format the bundle names, once it parsed.
    pub content_format: Option<u16>,
    /// Findings about the VM home and its internal files.
    pub findings: Vec<Finding>,
    /// Why the VM home's content could not be checked, if it could not.
    pub unchecked: Option<String>,
    /// Encrypted files with a finding, by path.
    pub files: Vec<FileReport>,
    /// Encrypted files checked.
    pub files_checked: usize,
    /// Pass-through files (names matching the bundle's disk pattern, with
    /// `encrypt_disks` clear): not checked,
    /// they carry no authentication.
    pub files_pass_through: usize,
    /// Plaintext bytes read and authenticated (holes excluded).
    pub bytes_checked: u64,
}

impl VmReport {
    fn new(name: &OsStr) -> Self {
        Self {
            name: untrusted::name(name),
            state: VmState::Clean,
            content_format: None,
            findings: Vec::new(),
            unchecked: None,
            files: Vec::new(),
            files_checked: 0,
            files_pass_through: 0,
            bytes_checked: 0,
        }
    }

    fn finding(&mut self, kind: &'static str, path: Option<&Path>, detail: impl Into<String>) {
        self.findings.push(Finding {
            kind,
            path: path.map(untrusted::path),
            detail: detail.into(),
            repaired: false,
        });
    }

    /// The state from the findings: damage wins over unchecked parts, as
    /// damage found is certain and the rest is reported as unchecked.
    fn settle(&mut self) {
        let damaged = self.findings.iter().any(|f| !f.repaired)
            || self.files.iter().any(FileReport::is_damaged);
        let unchecked =
            self.unchecked.is_some() || self.files.iter().any(|f| f.unchecked.is_some());
        self.state = match (damaged, unchecked) {
            (true, _) => VmState::Damaged,
            (false, true) => VmState::Unchecked,
            (false, false) => VmState::Clean,
        };
    }
}

/// The report of VM home `name` whose content could not be checked, and
/// why.
pub fn unchecked_report(name: &OsStr, why: String) -> VmReport {
    let mut report = VmReport::new(name);
    report.unchecked = Some(why);
    report.settle();
    report
}

/// `a..b, c..d`: half-open plaintext byte ranges.
pub fn ranges_text(ranges: &[Range<u64>]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}..{}", r.start, r.end))
        .collect();
    parts.join(", ")
}

/// What is wrong with a damaged file, on one line: its header, a trailing
/// fragment, its damaged plaintext byte ranges.
pub fn describe_file_damage(file: &FileReport) -> String {
    let mut parts = Vec::new();
    if let Some(why) = &file.header {
        parts.push(format!("header does not authenticate ({why})"));
    }
    if let Some(bytes) = file.trailing_fragment {
        parts.push(format!(
            "ends in a {bytes}-byte fragment after byte {}",
            file.size
        ));
    }
    if !file.damaged.is_empty() {
        parts.push(format!("damaged {}", ranges_text(&file.damaged)));
    }
    parts.join("; ")
}

fn ranges_json(ranges: &[Range<u64>]) -> serde_json::Value {
    ranges.iter().map(|r| json!([r.start, r.end])).collect()
}

/// One VM home's report as JSON (schema: docs/JSON.md, `vmcryptfs fsck
/// --json`; a scrub's findings in `.control.json` have the same form).
pub fn report_json(vm: &VmReport) -> serde_json::Value {
    json!({
        "name": vm.name,
        "state": vm.state.as_str(),
        "content_format": vm.content_format,
        "unchecked": vm.unchecked,
        "files_checked": vm.files_checked,
        "files_pass_through": vm.files_pass_through,
        "bytes_checked": vm.bytes_checked,
        "findings": vm.findings.iter().map(|f| json!({
            "kind": f.kind,
            "path": f.path,
            "detail": f.detail,
            "repaired": f.repaired,
        })).collect::<Vec<_>>(),
        "files": vm.files.iter().map(|f| json!({
            "path": f.path,
            "size": f.size,
            "header": f.header,
            "trailing_fragment": f.trailing_fragment,
            "damaged": ranges_json(&f.damaged),
            "zeroed": ranges_json(&f.zeroed),
            "unchecked": f.unchecked,
            "rewritten_blocks": f.rewritten,
            "rewrite_error": f.rewrite_error,
        })).collect::<Vec<_>>(),
    })
}

/// Why `vmcryptfs fsck` could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// The datastore directory cannot be listed.
    #[error("cannot list datastore {}: {source}", .path.display())]
    Datastore {
        /// The datastore.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A VM home named on the command line is not in the datastore.
    #[error("{} is not a directory in datastore {}: name a VM home of the datastore (see `vmcryptfs status DATASTORE`)", untrusted::name(.name), .datastore.display())]
    NoSuchVm {
        /// The name given.
        name: OsString,
        /// The datastore.
        datastore: PathBuf,
    },
}

/// Checks the VM homes `only` of `datastore` (every direct subdirectory if
/// empty), unlocking bundles with `provider` and checking them against this
/// host's rollback record `sequences`. The datastore must not be mounted
/// (the caller checks): files are read as they are on disk. With `repair`,
/// stray temp files vmcryptfs itself leaves (bundle, journal and
/// conversion temps) are removed; nothing else is ever changed.
pub fn fsck(
    datastore: &Path,
    only: &[OsString],
    repair: Repair,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
    progress: &mut dyn Progress,
) -> Result<Vec<VmReport>, FsckError> {
    let mut names =
        super::registry::subdirectory_names(datastore).map_err(|source| FsckError::Datastore {
            path: datastore.into(),
            source,
        })?;
    if let Some(missing) = only.iter().find(|name| !names.contains(name)) {
        return Err(FsckError::NoSuchVm {
            name: missing.clone(),
            datastore: datastore.into(),
        });
    }
    if !only.is_empty() {
        names.retain(|name| only.contains(name));
    }
    Ok(names
        .iter()
        .map(|name| {
            let path = datastore.join(name);
            check_vm(&path, name, repair, provider, sequences, progress)
        })
        .collect())
}

/// Checks one VM home.
fn check_vm(
    path: &Path,
    name: &OsStr,
    repair: Repair,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
    progress: &mut dyn Progress,
) -> VmReport {
    let mut report = VmReport::new(name);
    let vm = match VmDir::open(path) {
        Ok(vm) => vm,
        Err(err) => {
            report.unchecked = Some(err.to_string());
            report.settle();
            return report;
        }
    };
    let mut not_resumed = None;
    if repair.enabled {
        match convert::resume(path, provider, sequences, progress) {
            Ok(None) => {}
            Ok(Some(resumed)) => {
                report.finding(
                    "journal",
                    Some(Path::new(JOURNAL_FILE_NAME)),
                    describe_resumed(&resumed),
                );
                report.findings.last_mut().expect("just pushed").repaired = true;
            }
            Err(err) => not_resumed = Some(format!("; --repair could not settle it: {err}")),
        }
    }
    if !bundle_file::has_bundle_in(&vm) {
        check_plain_dir(&vm, &mut report);
        return report;
    }
    check_journal(&vm, not_resumed.as_deref().unwrap_or(""), &mut report);
    let unlocked = match vm_keys::unlock_vm(&vm, provider, sequences) {
        Ok((bundle, keyring)) => Some((StoragePolicy::of(&bundle), Arc::new(keyring))),
        Err(err) => {
            if bundle_is_damaged(&err) {
                report.finding("bundle", Some(Path::new(BUNDLE_FILE_NAME)), err.to_string());
                report.unchecked =
                    Some("the key bundle does not authenticate, so no file was checked".into());
            } else {
                report.unchecked = Some(format!("{err}; no file was checked"));
            }
            None
        }
    };
    let plan = walk_and_plan(&vm, unlocked.as_ref(), repair.enabled, &mut report);
    if let Some((policy, keyring)) = &unlocked {
        check_attributes(&vm, policy, keyring, &mut report);
        let layout = policy.content_layout;
        let mut fresh =
            |_: &Path, _: &File| ContentHold::unshared(EncryptedFile::new(keyring.clone(), layout));
        let checker = FileChecker {
            hold: &mut fresh,
            chunk_blocks: CHUNK_BLOCKS,
            zero_damaged_blocks: repair.enabled && repair.zero_damaged_blocks,
        };
        check_files(&vm, &plan, layout, checker, &mut report, progress);
    }
    report.settle();
    report
}

/// Checks the VM home `vm_home` of a mounted datastore, which the mount
/// unlocked with `keyring` and `policy` (a scrub): the journal, internal
/// names and the disk policy as [`fsck`] does, and every block of every
/// encrypted file through `shared`, the content state the mount's handles
/// of each file use, so that the check waits for the VM's writes to the
/// blocks it reads (see [`crate::content::verify::check_file`]). Only
/// reads; nothing is repaired.
pub fn check_mounted_vm(
    vm_home: &Arc<VmHome>,
    keyring: &Arc<VmKeyring>,
    policy: StoragePolicy,
    shared: &dyn SharedContent,
    progress: &mut dyn Progress,
) -> VmReport {
    let mut report = VmReport::new(&vm_home.name());
    report.content_format = Some(policy.content_layout.format_version());
    let vm = match VmDir::open(&vm_home.dir()) {
        Ok(vm) => vm,
        Err(err) => {
            report.unchecked = Some(err.to_string());
            report.settle();
            return report;
        }
    };
    check_journal(&vm, "", &mut report);
    let layout = policy.content_layout;
    let unlocked = (policy, keyring.clone());
    let plan = walk_and_plan(&vm, Some(&unlocked), false, &mut report);
    let policy = &unlocked.0;
    check_attributes(&vm, policy, keyring, &mut report);
    let mut hold = |rel: &Path, file: &File| shared.hold(vm_home, rel, file, keyring, policy);
    let checker = FileChecker {
        hold: &mut hold,
        chunk_blocks: SCRUB_CHUNK_BLOCKS,
        zero_damaged_blocks: false,
    };
    check_files(&vm, &plan, layout, checker, &mut report, progress);
    report.settle();
    report
}

/// The state a file is checked through, held while it is checked: a
/// fresh one offline, the mount's shared one in a scrub; dropping the hold
/// gives a shared one back.
pub struct ContentHold {
    /// The file's content state.
    pub content: Arc<EncryptedFile>,
    /// Gives a shared state back; run once, on drop.
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl ContentHold {
    /// A state of the checker's own, shared with nobody.
    pub fn unshared(content: EncryptedFile) -> Self {
        Self {
            content: Arc::new(content),
            release: None,
        }
    }

    /// A shared state, given back by `release` when the check is done.
    pub fn shared(content: Arc<EncryptedFile>, release: Box<dyn FnOnce() + Send>) -> Self {
        Self {
            content,
            release: Some(release),
        }
    }
}

impl Drop for ContentHold {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Where a mounted datastore keeps the content state its open handles of a
/// file share (the frontend's node table), so that a scrub checks a file
/// through the same locks as the VM's reads and writes of it.
pub trait SharedContent: Send + Sync {
    /// Holds the state of the encrypted file `backing`, at `rel` in VM
    /// home `vm`: the one its open handles share, or, if it has none, a
    /// new one (with `keyring` and `policy`) that handles opened while it
    /// is held share.
    fn hold(
        &self,
        vm: &Arc<VmHome>,
        rel: &Path,
        backing: &File,
        keyring: &Arc<VmKeyring>,
        policy: &StoragePolicy,
    ) -> ContentHold;
}

/// What `--repair` did to an interrupted conversion.
fn describe_resumed(resumed: &Resumed) -> String {
    match resumed {
        Resumed::Finished { operation, report } => format!(
            "an interrupted `{operation}` conversion, finished by its journal ({} file(s) converted, {} already converted)",
            report.files, report.skipped
        ),
        Resumed::ToBundle { operation, report } => format!(
            "an interrupted `{operation}` conversion, brought to what the key bundle names, as what was asked is recorded nowhere else ({} file(s) converted); run it again to apply another pattern",
            report.files
        ),
        Resumed::RolledBack { operation } => format!(
            "an interrupted `{operation}` conversion killed before it wrote the key bundle, rolled back (journal removed; no file had been converted)"
        ),
    }
}

/// Reports an unfinished or damaged conversion journal of `vm`, adding
/// `note` to an unfinished one's finding.
fn check_journal(vm: &VmDir, note: &str, report: &mut VmReport) {
    match convert::pending_in(vm) {
        None => {}
        Some(Pending::Operation(operation)) => report.finding(
            "journal",
            Some(Path::new(JOURNAL_FILE_NAME)),
            format!("an interrupted `{operation}` conversion: run it again to finish it ({}), or `vmcryptfs fsck --repair`; until then files may be in either form{note}", rerun_command(operation)),
        ),
        Some(Pending::Damaged(why)) => report.finding(
            "journal",
            Some(Path::new(JOURNAL_FILE_NAME)),
            format!("damaged conversion journal ({why}): remove it, then, if a conversion of this VM was interrupted, run that conversion again"),
        ),
    }
}

/// Walks `vm`: reports internal names (removing vmcryptfs's own temps if
/// `repair`) and checks pass-through files against the disk policy of
/// `unlocked`; returns the encrypted files to check (none if locked).
fn walk_and_plan(
    vm: &VmDir,
    unlocked: Option<&(StoragePolicy, Arc<VmKeyring>)>,
    repair: bool,
    report: &mut VmReport,
) -> Vec<PathBuf> {
    let mut plan = Vec::new();
    let walked = walk_vm_home(vm, |dir, name, rel, entry| {
        match entry {
            WalkEntry::Internal => {
                let removable = internal_finding(name, rel, report);
                if removable && repair {
                    remove_at(dir, name, &vm.display_path(rel))?;
                    let finding = report.findings.last_mut().expect("just pushed");
                    finding.repaired = true;
                }
            }
            WalkEntry::RegularFile => {
                let Some((policy, keyring)) = unlocked else {
                    return Ok(());
                };
                match policy.class_of(name) {
                    ContentClass::Encrypted => plan.push(rel.to_path_buf()),
                    ContentClass::Plain => {
                        report.files_pass_through += 1;
                        check_pass_through(vm, rel, keyring, report);
                    }
                }
            }
        }
        Ok(())
    });
    if let Err(err) = walked {
        report.unchecked = Some(format!("{err}; the VM home was not walked to the end"));
    }
    if let Some((policy, _)) = unlocked {
        report.content_format = Some(policy.content_layout.format_version());
    }
    plan
}

/// Reports every sealed `user.*` or `trusted.*` value in `vm` that does
/// not open under `keyring` (tampered, moved from another object or name,
/// or sealed under a generation the bundle no longer holds), one
/// `attribute` finding per value. Only reads; `--repair` leaves them (the
/// value is the owner's, and removing it would lose what may be a
/// recoverable backup's data).
fn check_attributes(
    vm: &VmDir,
    policy: &StoragePolicy,
    keyring: &VmKeyring,
    report: &mut VmReport,
) {
    let walked = for_each_attribute_holder(vm, policy, |fd, sealed, rel| {
        if !sealed {
            return Ok(());
        }
        match BackingObject::new(fd).damaged_sealed(keyring) {
            Ok(damaged) => {
                for (name, why) in damaged {
                    report.finding(
                        "attribute",
                        Some(rel),
                        format!("extended attribute {name} does not authenticate: {why}"),
                    );
                }
            }
            Err(errno) => report.finding(
                "attribute",
                Some(rel),
                format!("its extended attributes could not be read: {errno}"),
            ),
        }
        Ok(())
    });
    if let Err(err) = walked {
        report.unchecked = Some(format!("{err}; not every extended attribute was checked"));
    }
}

/// The command that finishes an interrupted conversion.
fn rerun_command(operation: &str) -> &'static str {
    match operation {
        "encrypt" => "`vmcryptfs vm encrypt VM_HOME`",
        "encrypt-disks" => "`vmcryptfs vm encrypt-disks VM_HOME`",
        "decrypt-disks" => "`vmcryptfs vm decrypt-disks VM_HOME`",
        "set-disk-pattern" => {
            "`vmcryptfs vm set-disk-pattern VM_HOME PATTERNS` (the same patterns)"
        }
        "deep-rekey" => "`vmcryptfs rekey --deep DATASTORE VM`",
        _ => "`vmcryptfs vm convert-format VM_HOME`",
    }
}

/// Whether an unlock failure is the bundle's fault (it is damaged, planted,
/// tampered with or rolled back) rather than this host's (its KEK is not
/// here, the provider cannot be reached, the rollback record is unusable).
fn bundle_is_damaged(err: &DatastoreError) -> bool {
    match err {
        DatastoreError::BadBundle { .. }
        | DatastoreError::Owned(_)
        | DatastoreError::RolledBack { .. } => true,
        DatastoreError::Provider { source, .. } => {
            matches!(source, ProviderError::UnwrapFailed { .. })
        }
        _ => false,
    }
}

/// A finding for internal name `name` at `rel`, unless it is the bundle or
/// the journal in the VM home itself (checked on their own); whether it is
/// a temp file vmcryptfs leaves, which `--repair` may remove.
fn internal_finding(name: &OsStr, rel: &Path, report: &mut VmReport) -> bool {
    let at_top = rel.parent() == Some(Path::new(""));
    let what = if at_top && (name == BUNDLE_FILE_NAME || name == JOURNAL_FILE_NAME) {
        return false;
    } else if at_top && bundle_file::is_temp_name(name) {
        "a bundle temp file left by an interrupted bundle update; the bundle itself is intact. Remove it (the next bundle update also does)"
    } else if at_top && name == JOURNAL_TEMP_FILE_NAME {
        "a journal temp file left by a conversion killed while starting; remove it (the next conversion also does)"
    } else if name == TEMP_FILE_NAME {
        "a conversion temp file left by an interrupted conversion; the original beside it is intact. Remove it (rerunning the conversion also does)"
    } else {
        report.finding("stray-temp", Some(rel), "an internal name vmcryptfs does not write here; it was planted or left by another version: inspect and remove it (--repair leaves it)");
        return false;
    };
    report.finding("stray-temp", Some(rel), what);
    true
}

/// A pass-through file (a name matching the authenticated bundle's disk
/// pattern, with `encrypt_disks` clear) that holds a
/// header authenticating under the VM's keys contradicts the bundle's disk
/// policy: the mount would show its ciphertext.
fn check_pass_through(vm: &VmDir, rel: &Path, keyring: &VmKeyring, report: &mut VmReport) {
    let Ok(file) = vm.beneath().open_file(rel, libc::O_RDONLY, 0) else {
        return;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let StoredForm::Encrypted { .. } = stored_form(&file, len, keyring) {
        report.finding(
            "policy",
            Some(rel),
            "a disk (its name matches the key bundle's disk pattern) stored encrypted although the bundle says disks pass through (encrypt_disks clear): an interrupted `vm decrypt-disks` or `vm set-disk-pattern`? Rerun it, or run `vmcryptfs vm decrypt-disks VM_HOME` or `vm encrypt-disks VM_HOME` to settle the policy",
        );
    }
}

/// No bundle: a plain directory, unless files in it start with a content
/// header, which means its bundle was deleted (FORMAT.md §6: the VM home
/// then turns plain, and files written to it would be stored in clear).
fn check_plain_dir(vm: &VmDir, report: &mut VmReport) {
    let mut encrypted = 0usize;
    let _ = walk_vm_home(vm, |_, _, rel, entry| {
        if entry == WalkEntry::RegularFile && looks_encrypted(vm, rel) {
            encrypted += 1;
        }
        Ok(())
    });
    report.state = VmState::Plain;
    if encrypted > 0 {
        report.finding(
            "bundle-missing",
            Some(Path::new(BUNDLE_FILE_NAME)),
            format!("no key bundle, but {encrypted} file(s) start with a vmcryptfs content header: the bundle was deleted, and a mount shows this VM home as plain (files written to it would be stored in clear). Put the bundle back from a backup before mounting"),
        );
        report.unchecked = Some("the key bundle is missing, so no file was checked".into());
        report.settle();
    }
}

/// Whether the file `rel` starts with a header that parses (magic, a known
/// content format, no flags).
fn looks_encrypted(vm: &VmDir, rel: &Path) -> bool {
    let Ok(file) = vm.beneath().open_file(rel, libc::O_RDONLY, 0) else {
        return false;
    };
    let mut raw = [0u8; file_header::LEN];
    file.read_exact_at(&mut raw, 0).is_ok() && UnverifiedHeader::parse(&raw).is_ok()
}

/// How [`check_files`] checks each file: through which content state,
/// and how many blocks at a time.
struct FileChecker<'a> {
    /// The state to check a file (relative path, opened backing file)
    /// through.
    hold: &'a mut dyn FnMut(&Path, &File) -> ContentHold,
    /// Blocks read and checked at a time.
    chunk_blocks: u64,
    /// Rewrite damaged blocks as authenticated zeros (offline only).
    zero_damaged_blocks: bool,
}

/// Checks every encrypted file of `plan` (paths relative to the VM home).
fn check_files(
    vm: &VmDir,
    plan: &[PathBuf],
    layout: ContentLayout,
    checker: FileChecker<'_>,
    report: &mut VmReport,
    progress: &mut dyn Progress,
) {
    let opened: Vec<(PathBuf, std::io::Result<File>)> = plan
        .iter()
        .map(|rel| (rel.clone(), vm.beneath().open_file(rel, libc::O_RDONLY, 0)))
        .collect();
    let total: u64 = opened
        .iter()
        .filter_map(|(_, file)| file.as_ref().ok()?.metadata().ok())
        .map(|m| EncryptedFile::plain_size_for_stat(layout, m.len()))
        .sum();
    // Plaintext bytes: checked ones as they go, holes when a file is done.
    progress.start(plan.len(), total);
    for (rel, file) in opened {
        let mut file_report = FileReport {
            path: untrusted::path(&rel),
            ..FileReport::default()
        };
        let checked = file.and_then(|file| {
            let hold = (checker.hold)(&rel, &file);
            let check = check_file(&hold.content, &file, checker.chunk_blocks, &mut |bytes| {
                progress.advance(bytes)
            })?;
            Ok((check, hold))
        });
        match checked {
            Ok((check, hold)) => {
                progress.skip(check.plain_size.saturating_sub(check.checked_bytes));
                report.files_checked += 1;
                report.bytes_checked += check.checked_bytes;
                fill_file_report(&mut file_report, check);
                let repairable = file_report.header.is_none() && !file_report.damaged.is_empty();
                if checker.zero_damaged_blocks && repairable {
                    zero_damaged_blocks(vm, &rel, &hold.content, &mut file_report);
                }
            }
            Err(err) => {
                file_report.unchecked = Some(format!("cannot be read: {err}"));
            }
        }
        progress.file_done(&vm.display_path(&rel));
        let any = file_report.is_damaged()
            || !file_report.damaged.is_empty()
            || file_report.unchecked.is_some()
            || !file_report.zeroed.is_empty();
        if any {
            report.files.push(file_report);
        }
    }
    progress.finish();
}

/// Rewrites every block of `file`'s damaged ranges as authenticated zeros
/// through `content` (whose header authenticated), listing each block in
/// `file.rewritten`; the first failure stops it and is recorded. Only the
/// damaged blocks are written; every other byte stays as it is.
fn zero_damaged_blocks(vm: &VmDir, rel: &Path, content: &EncryptedFile, file: &mut FileReport) {
    let backing = match vm.beneath().open_file(rel, libc::O_RDWR, 0) {
        Ok(backing) => backing,
        Err(err) => {
            file.rewrite_error = Some(format!("cannot be opened for writing: {err}"));
            return;
        }
    };
    let blocks: Vec<u64> = file
        .damaged
        .iter()
        .flat_map(|range| plain_off_to_block_no(range.start)..plain_size_to_block_count(range.end))
        .collect();
    for block in blocks {
        match content.rewrite_as_zeros(&backing, block) {
            Ok(true) => file.rewritten.push(block),
            Ok(false) => {}
            Err(err) => {
                file.rewrite_error = Some(format!("block {block} could not be rewritten: {err}"));
                return;
            }
        }
    }
    if let Err(err) = backing.sync_data() {
        file.rewrite_error = Some(format!("the rewritten blocks could not be synced: {err}"));
    }
}

fn fill_file_report(report: &mut FileReport, check: ContentCheck) {
    report.size = check.plain_size;
    report.header = check.header_error.map(|err| err.to_string());
    report.trailing_fragment = check.trailing_fragment;
    report.damaged = check.damaged;
    report.zeroed = check.zeroed;
}
