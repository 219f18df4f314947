//! Converting a VM home in place, file by file: encrypting a plain VM home,
//! encrypting or decrypting its disks, changing which names are disks,
//! deep re-key (a new DEK, every file
//! re-encrypted under it), and moving to another content format.
//!
//! Each file goes through a temp file in its own directory (an internal
//! name, hidden by the mount) that is written sparse, fsynced, given the
//! original's mode, owner and times, and renamed over the original; then
//! the directory is fsynced. A journal file in the VM home names the
//! operation while it runs, so an interrupted conversion is visible
//! (`conversion:` in status) and a rerun of the same command finishes it:
//! every step is idempotent, because each file's form is recognised (an
//! encrypted file has a header that authenticates under the VM's keyring,
//! and names its DEK generation).
//!
//! Hard links inside the VM home are replaced by independent copies.
//!
//! Extended attributes go with each file (copied as stored onto its temp
//! file), and after the last file one pass brings the `user.*` and
//! `trusted.*` values of every directory and regular file to the form the
//! VM home's final policy gives them (docs/FORMAT.md §7.4): sealed under
//! the current DEK generation where the object's attributes are sealed,
//! plaintext where they are not. A value's form is recognised by whether
//! it opens under the VM's keyring, so that pass is repeatable too.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, OFlags};

use super::bundle_file::{self, crash_point};
use super::layout::{self, ContentClass, StoragePolicy};
use super::owned_file::{
    copy_metadata, create_exclusive_at, list_dir, open_regular_at, remove_at, EntryKind,
    OwnedFileError, VmDir,
};
use super::vm_keys::{self, Authenticated};
use super::xattrs::{self, BackingObject, XattrError};
use super::DatastoreError;
use crate::content::transcode::{transcode, Destination, Source};
use crate::crypto::kdf;
use crate::crypto::keyring::VmKeyring;
use crate::crypto::secret::Dek;
use crate::format::content_layout::ContentLayout;
use crate::format::disk_pattern::DiskPattern;
use crate::format::file_header::{self, UnverifiedHeader};
use crate::keys::bundle_sequences::BundleSequences;
use crate::keys::KeyProvider;

/// The journal: present exactly while a conversion is unfinished.
pub const JOURNAL_FILE_NAME: &str = ".vmcryptfs-convert-journal";
/// The journal while it is written; renamed over [`JOURNAL_FILE_NAME`].
pub(super) const JOURNAL_TEMP_FILE_NAME: &str = ".vmcryptfs-convert-journal.tmp";
pub(super) const TEMP_FILE_NAME: &str = ".vmcryptfs-convert.tmp";
/// The most a journal legitimately holds: one operation name and a newline.
const MAX_JOURNAL_LEN: u64 = 64;
/// Every name [`Operation::name`] gives, the only texts a journal may hold.
const OPERATION_NAMES: [&str; 6] = [
    "encrypt",
    "encrypt-disks",
    "decrypt-disks",
    "set-disk-pattern",
    "deep-rekey",
    "convert-format",
];

/// A conversion of one VM home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Make a plain directory an encrypted VM home and encrypt its files.
    /// A rerun that finds the bundle already written (resuming) follows
    /// that bundle's policy, which is what the mount will read.
    EncryptHome {
        /// The new bundle's policy: whether disks are encrypted too, which
        /// names are disks, the content format of the encrypted files.
        policy: StoragePolicy,
    },
    /// Encrypt the VM's disk files and set the disk policy.
    EncryptDisks,
    /// Decrypt the VM's disk files and clear the disk policy.
    DecryptDisks,
    /// Make `pattern` the VM's disk pattern: files whose class it changes
    /// (with disks passing through) are encrypted or decrypted, then the
    /// bundle names it. A rerun with another pattern converges to that one
    /// instead, as each file's form is recognised.
    SetDiskPattern {
        /// The new disk pattern.
        pattern: DiskPattern,
    },
    /// New DEK generation; every encrypted file re-encrypted under it.
    DeepRekey,
    /// Every encrypted file rewritten in content format `to`, which the
    /// bundle then names.
    ConvertFormat {
        /// The content format to convert to.
        to: ContentLayout,
    },
}

impl Operation {
    /// The name written in the journal and shown in status.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::EncryptHome { .. } => "encrypt",
            Operation::EncryptDisks => "encrypt-disks",
            Operation::DecryptDisks => "decrypt-disks",
            Operation::SetDiskPattern { .. } => "set-disk-pattern",
            Operation::DeepRekey => "deep-rekey",
            Operation::ConvertFormat { .. } => "convert-format",
        }
    }
}

/// Progress callbacks for a terminal or a log.
pub trait Progress {
    /// Work is known: this many files and plaintext bytes to convert.
    fn start(&mut self, files: usize, bytes: u64);
    /// `bytes` more plaintext bytes were converted.
    fn advance(&mut self, bytes: u64);
    /// `bytes` more plaintext bytes were passed over without being read
    /// (holes of a checked file); by default, the same as `advance`.
    fn skip(&mut self, bytes: u64) {
        self.advance(bytes);
    }
    /// One more file is done.
    fn file_done(&mut self, path: &Path);
    /// All done.
    fn finish(&mut self);
}

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Files converted.
    pub files: usize,
    /// Files already in the target form (skipped).
    pub skipped: usize,
    /// Plaintext bytes converted.
    pub bytes: u64,
    /// Extended attribute values sealed, re-sealed or unsealed.
    pub attributes: usize,
}

/// An unfinished conversion, as its journal records it. Never carries the
/// journal's bytes: the datastore is untrusted, and a journal that is a
/// symlink to a key file must not bring the key into a status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// A conversion this build knows, by its [`Operation::name`].
    Operation(&'static str),
    /// The journal is not one vmcryptfs wrote; why, in fixed words.
    Damaged(&'static str),
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pending::Operation(name) => f.write_str(name),
            Pending::Damaged(why) => write!(f, "damaged ({why})"),
        }
    }
}

/// The unfinished conversion of `vm_dir`, if any.
pub fn pending(vm_dir: &Path) -> Option<Pending> {
    match VmDir::open(vm_dir) {
        Ok(vm) => pending_in(&vm),
        Err(OwnedFileError::Missing { .. }) => None,
        Err(_) => Some(Pending::Damaged("the VM home cannot be opened")),
    }
}

/// The unfinished conversion of the opened VM home `vm`, if any: the
/// journal is read only if it is a regular file of at most
/// [`MAX_JOURNAL_LEN`] bytes, and must name a known operation.
pub fn pending_in(vm: &VmDir) -> Option<Pending> {
    let why = match vm.read_owned(OsStr::new(JOURNAL_FILE_NAME), MAX_JOURNAL_LEN) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
            return Some(match OPERATION_NAMES.iter().find(|name| **name == text) {
                Some(name) => Pending::Operation(name),
                None => Pending::Damaged("names no known conversion"),
            });
        }
        Err(OwnedFileError::Missing { .. }) => return None,
        Err(OwnedFileError::WrongKind { .. }) => "not a regular file",
        Err(OwnedFileError::TooLarge { .. }) => "larger than a journal can be",
        Err(err) => {
            log::warn!("{err}");
            "unreadable"
        }
    };
    // Every status read asks; the VM's lock reason is what gets logged.
    log::debug!(
        "VM home {}: damaged conversion journal ({why})",
        vm.path().display()
    );
    Some(Pending::Damaged(why))
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> DatastoreError {
    move |e| DatastoreError::io(context, e)
}

/// Runs `operation` on the VM home `vm_dir` (which must not be in use:
/// the caller checks that no file of it is open in a mount), checking its
/// bundle against this host's sequence record `sequences`.
pub fn run(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
    operation: Operation,
    progress: &mut dyn Progress,
) -> Result<Report, DatastoreError> {
    let vm = VmDir::open(vm_dir)?;
    let resuming = match pending_in(&vm) {
        None => false,
        Some(Pending::Operation(name)) if name == operation.name() => true,
        Some(Pending::Operation(other)) => {
            return Err(DatastoreError::ConversionPending {
                path: vm_dir.into(),
                operation: other.to_string(),
            })
        }
        Some(Pending::Damaged(why)) => {
            return Err(DatastoreError::DamagedJournal {
                path: vm_dir.into(),
                why,
            })
        }
    };
    // Every field the final bundle keeps comes from `bundle`, which
    // authenticated here; each rewrite checks the bundle on disk against it.
    let (mut bundle, mut keyring) = if let Operation::EncryptHome { policy } = &operation {
        if bundle_file::has_bundle_in(&vm) && !resuming {
            return Err(DatastoreError::AlreadyVmHome {
                path: vm_dir.into(),
            });
        }
        write_journal(&vm, &operation)?;
        if !bundle_file::has_bundle_in(&vm) {
            vm_keys::create_bundle(vm_dir, provider, policy)?;
        }
        vm_keys::unlock_vm(&vm, provider, sequences)?
    } else {
        if !bundle_file::has_bundle_in(&vm) {
            return Err(DatastoreError::NotAVmHome {
                path: vm_dir.into(),
            });
        }
        // Unlocked before the journal is written: a VM whose key cannot be
        // had (KEK destroyed, provider down, bundle rolled back) is refused
        // with nothing left behind, rather than left "unfinished".
        let unlocked = vm_keys::unlock_vm(&vm, provider, sequences)?;
        write_journal(&vm, &operation)?;
        unlocked
    };
    if operation == Operation::DeepRekey && bundle.deks.len() == 1 {
        let added = add_generation(&keyring);
        bundle = vm_keys::rewrite_bundle(
            vm_dir,
            provider,
            sequences,
            Authenticated {
                bundle: &bundle,
                keyring: &keyring,
            },
            &added,
            &StoragePolicy::of(&bundle),
        )?;
        keyring = added;
        crash_point("deep-rekey-generation-added");
    }
    let keyring = Arc::new(keyring);
    // The policy the VM home ends with: the authenticated bundle's, with
    // the one field the operation changes.
    let mut target = StoragePolicy::of(&bundle);
    match &operation {
        Operation::EncryptDisks => target.encrypt_disks = true,
        Operation::DecryptDisks => target.encrypt_disks = false,
        Operation::SetDiskPattern { pattern } => target.disk_pattern = pattern.clone(),
        Operation::ConvertFormat { to } => target.content_layout = *to,
        Operation::EncryptHome { .. } | Operation::DeepRekey => {}
    }
    let content_layout = target.content_layout;

    let mut plan = Vec::new();
    let mut report = Report::default();
    walk_stored_forms(&vm, &keyring, |name, rel, len, form| {
        let wanted = target.class_of(name);
        let step = match (wanted, form) {
            (_, StoredForm::Empty) => None,
            (ContentClass::Encrypted, StoredForm::Plain) => Some(Step::Encrypt),
            (ContentClass::Plain, StoredForm::Encrypted { layout, .. }) => {
                Some(Step::Decrypt { from: layout })
            }
            (ContentClass::Encrypted, StoredForm::Encrypted { generation, layout })
                if generation != keyring.current_generation() || layout != content_layout =>
            {
                Some(Step::Reencrypt { from: layout })
            }
            _ => None,
        };
        match step {
            Some(step) => plan.push((rel.to_path_buf(), step, len)),
            None => report.skipped += 1,
        }
        Ok(())
    })?;
    plan.sort_by(|a, b| a.0.cmp(&b.0));
    let total: u64 = plan.iter().map(|(_, _, len)| len).sum();
    progress.start(plan.len(), total);
    for (index, (rel, step, _)) in plan.iter().enumerate() {
        report.bytes += convert_file(&vm, rel, *step, &keyring, content_layout, progress)?;
        report.files += 1;
        progress.file_done(&vm.display_path(rel));
        if index == 0 {
            crash_point("convert-first-file-done");
        }
    }
    // While the journal still stands, so that a crash here is finished by
    // the next run; before a deep re-key's last bundle rewrite drops the
    // old generation its values may still be sealed under.
    report.attributes = reform_attributes(&vm, &keyring, &target)?;
    // A new VM home's bundle already has its final form; every other
    // operation ends by rewriting it (final disk policy and content format;
    // for a deep re-key, only the new DEK generation).
    if !matches!(operation, Operation::EncryptHome { .. }) {
        let final_keyring = match &operation {
            Operation::DeepRekey => only_current_generation(&keyring),
            _ => copy_keyring(&keyring),
        };
        vm_keys::rewrite_bundle(
            vm_dir,
            provider,
            sequences,
            Authenticated {
                bundle: &bundle,
                keyring: &keyring,
            },
            &final_keyring,
            &target,
        )?;
    }
    vm.remove(OsStr::new(JOURNAL_FILE_NAME))?;
    // Left by a run killed while writing its journal; harmless, but tidy.
    let _ = vm.remove(OsStr::new(JOURNAL_TEMP_FILE_NAME));
    vm.sync()?;
    progress.finish();
    Ok(report)
}

/// How [`resume`] settled an interrupted conversion.
#[derive(Debug)]
pub enum Resumed {
    /// Finished, exactly as rerunning the conversion does.
    Finished {
        /// The conversion, by its [`Operation::name`].
        operation: &'static str,
        /// What the finishing run did.
        report: Report,
    },
    /// Brought to what the key bundle names, as what was asked is
    /// recorded nowhere else (`set-disk-pattern`: files converge to the
    /// bundle's pattern, which is the new one if the bundle was rewritten).
    ToBundle {
        /// The conversion, by its [`Operation::name`].
        operation: &'static str,
        /// What the settling run did.
        report: Report,
    },
    /// Killed before it changed anything but its journal, which was
    /// removed.
    RolledBack {
        /// The conversion, by its [`Operation::name`].
        operation: &'static str,
    },
}

/// Finishes or rolls back the interrupted conversion of `vm_dir` that its
/// journal names (`vmcryptfs fsck --repair`); `None` if there is none, or
/// the journal is damaged (not one vmcryptfs wrote: it is left alone).
///
/// A conversion is finished by [`run`] itself, the code a rerun takes,
/// with the parameters the journal does not hold recovered from the
/// authenticated bundle: `encrypt` writes its bundle, disk policy and
/// content format included, before it converts any file; a format
/// conversion's target is the format of any file already converted, else
/// the bundle's own (no file converted yet, or every file and the bundle:
/// finishing then only rewrites the bundle and removes the journal). A
/// `set-disk-pattern` is brought to the pattern the bundle names. An
/// `encrypt` killed before its bundle was written converted nothing, and
/// what it was asked for is recorded nowhere: it is rolled back.
pub fn resume(
    vm_dir: &Path,
    provider: &dyn KeyProvider,
    sequences: &BundleSequences,
    progress: &mut dyn Progress,
) -> Result<Option<Resumed>, DatastoreError> {
    let vm = VmDir::open(vm_dir)?;
    let Some(Pending::Operation(name)) = pending_in(&vm) else {
        return Ok(None);
    };
    if !bundle_file::has_bundle_in(&vm) {
        if name != "encrypt" {
            return Err(DatastoreError::NotAVmHome {
                path: vm_dir.into(),
            });
        }
        vm.remove(OsStr::new(JOURNAL_FILE_NAME))?;
        vm.sync()?;
        return Ok(Some(Resumed::RolledBack { operation: name }));
    }
    let (bundle, keyring) = vm_keys::unlock_vm(&vm, provider, sequences)?;
    let operation = match name {
        "encrypt" => Operation::EncryptHome {
            policy: StoragePolicy::of(&bundle),
        },
        "encrypt-disks" => Operation::EncryptDisks,
        "decrypt-disks" => Operation::DecryptDisks,
        "set-disk-pattern" => {
            // The pattern asked for is recorded nowhere until the bundle
            // names it; a run with the bundle's own pattern converges every
            // file to it (finishing, if the bundle was already rewritten).
            let pattern = bundle.disk_pattern.clone();
            drop(vm);
            let report = run(
                vm_dir,
                provider,
                sequences,
                Operation::SetDiskPattern { pattern },
                progress,
            )?;
            return Ok(Some(Resumed::ToBundle {
                operation: name,
                report,
            }));
        }
        "deep-rekey" => Operation::DeepRekey,
        _ => Operation::ConvertFormat {
            to: format_target(&vm, bundle.content_layout, &keyring)?,
        },
    };
    drop(vm);
    let report = run(vm_dir, provider, sequences, operation, progress)?;
    Ok(Some(Resumed::Finished {
        operation: name,
        report,
    }))
}

/// The target of an interrupted format conversion of `vm`, whose bundle
/// names `bundle_layout`: the format of any file already converted, else
/// `bundle_layout`.
fn format_target(
    vm: &VmDir,
    bundle_layout: ContentLayout,
    keyring: &VmKeyring,
) -> Result<ContentLayout, DatastoreError> {
    let mut target = bundle_layout;
    walk_stored_forms(vm, keyring, |_, _, _, form| {
        if let StoredForm::Encrypted { layout, .. } = form {
            if layout != bundle_layout {
                target = layout;
            }
        }
        Ok(())
    })?;
    Ok(target)
}

/// Writes the journal atomically (temp file, fsync, rename, directory
/// fsync): a kill while writing it must leave either no journal or a
/// complete one, never an empty file that names no operation (found by
/// `tests/it/crash_conversions.rs`). The temp file is created exclusively, so
/// nothing planted at its name is written through.
fn write_journal(vm: &VmDir, operation: &Operation) -> Result<(), DatastoreError> {
    let temp = OsStr::new(JOURNAL_TEMP_FILE_NAME);
    // Left by a run killed while writing it.
    vm.remove(temp)?;
    let mut file = vm.create_exclusive(temp, 0o600)?;
    let mut text = operation.name().to_string();
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", vm.display_path(temp).display())))?;
    drop(file);
    vm.rename(temp, OsStr::new(JOURNAL_FILE_NAME))?;
    Ok(vm.sync()?)
}

fn add_generation(keyring: &VmKeyring) -> VmKeyring {
    let next = keyring.deks().map(|(g, _)| g).max().unwrap_or(0) + 1;
    let mut deks: BTreeMap<u32, Dek> = keyring.deks().map(|(g, d)| (g, d.clone())).collect();
    deks.insert(next, Dek::generate());
    VmKeyring::new(*keyring.vm_id(), next, deks)
}

fn only_current_generation(keyring: &VmKeyring) -> VmKeyring {
    let current = keyring.current_generation();
    let deks = keyring
        .deks()
        .filter(|(g, _)| *g == current)
        .map(|(g, d)| (g, d.clone()))
        .collect();
    VmKeyring::new(*keyring.vm_id(), current, deks)
}

fn copy_keyring(keyring: &VmKeyring) -> VmKeyring {
    VmKeyring::new(
        *keyring.vm_id(),
        keyring.current_generation(),
        keyring.deks().map(|(g, d)| (g, d.clone())).collect(),
    )
}

/// Calls `visit` with (directory, name, path relative to the VM home) for
/// every regular file in the VM home, internal files excluded (see
/// [`walk`]).
fn walk_regular_files(
    vm: &VmDir,
    mut visit: impl FnMut(BorrowedFd<'_>, &OsStr, &Path) -> Result<(), DatastoreError>,
) -> Result<(), DatastoreError> {
    walk(vm, |entry| match entry {
        Visited::RegularFile { dir, name, rel } => visit(dir, name, rel),
        Visited::Directory { .. } | Visited::Special { .. } | Visited::Internal { .. } => Ok(()),
    })
}

/// Calls `visit` with (name, path relative to the VM home, length, how it
/// is stored under `keyring`) for every regular file of `vm` (see
/// [`walk_regular_files`]); a file removed since it was listed is skipped,
/// as there is nothing to do for it.
fn walk_stored_forms(
    vm: &VmDir,
    keyring: &VmKeyring,
    mut visit: impl FnMut(&OsStr, &Path, u64, StoredForm) -> Result<(), DatastoreError>,
) -> Result<(), DatastoreError> {
    walk_regular_files(vm, |dir, name, rel| {
        let path = vm.display_path(rel);
        let (file, stat) = match open_regular_at(dir, name, OFlags::RDONLY, &path) {
            Ok(opened) => opened,
            Err(OwnedFileError::Missing { .. }) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        let len = u64::try_from(stat.st_size).unwrap_or(0);
        visit(name, rel, len, stored_form(&file, len, keyring))
    })
}

/// What [`walk`] and [`walk_all`] visit.
enum Visited<'a> {
    /// A directory (the VM home itself first), opened for reading.
    Directory {
        /// The directory's own descriptor.
        fd: BorrowedFd<'a>,
        /// Its path relative to the VM home (empty for the VM home).
        rel: &'a Path,
    },
    /// A regular file, named in its directory.
    RegularFile {
        /// Its directory's descriptor.
        dir: BorrowedFd<'a>,
        /// Its name there.
        name: &'a OsStr,
        /// Its path relative to the VM home.
        rel: &'a Path,
    },
    /// A symlink, FIFO, device or socket at an ordinary name, named in its
    /// directory: never followed or opened.
    Special {
        /// Its directory's descriptor.
        dir: BorrowedFd<'a>,
        /// Its name there.
        name: &'a OsStr,
        /// Its path relative to the VM home.
        rel: &'a Path,
    },
    /// Anything at an internal name (`.vmcryptfs*`), of any kind, named
    /// in its directory: never followed or descended into. Only
    /// [`walk_all`] visits these.
    Internal {
        /// Its directory's descriptor.
        dir: BorrowedFd<'a>,
        /// Its name there.
        name: &'a OsStr,
        /// Its path relative to the VM home.
        rel: &'a Path,
    },
}

/// Calls `visit` for every directory, regular file and special object in
/// the VM home, internal files excluded, removing the conversion temps an interrupted
/// run left (the originals are intact).
fn walk(
    vm: &VmDir,
    mut visit: impl FnMut(Visited<'_>) -> Result<(), DatastoreError>,
) -> Result<(), DatastoreError> {
    walk_all(vm, |entry| match entry {
        Visited::Internal { dir, name, rel } => {
            if name == TEMP_FILE_NAME {
                remove_at(dir, name, &vm.display_path(rel))?;
            }
            Ok(())
        }
        entry => visit(entry),
    })
}

/// What [`walk_vm_home`] found at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WalkEntry {
    /// A regular file with an ordinary name.
    RegularFile,
    /// Anything with an internal name (`.vmcryptfs*`), of any kind.
    Internal,
}

/// [`walk_all`] without the directories: `visit` gets (directory, name,
/// path relative to the VM home, what it is) for every regular file and
/// every internal name, as fsck walks a VM home.
pub(super) fn walk_vm_home(
    vm: &VmDir,
    mut visit: impl FnMut(BorrowedFd<'_>, &OsStr, &Path, WalkEntry) -> Result<(), DatastoreError>,
) -> Result<(), DatastoreError> {
    walk_all(vm, |entry| match entry {
        Visited::Directory { .. } | Visited::Special { .. } => Ok(()),
        Visited::RegularFile { dir, name, rel } => visit(dir, name, rel, WalkEntry::RegularFile),
        Visited::Internal { dir, name, rel } => visit(dir, name, rel, WalkEntry::Internal),
    })
}

/// Calls `visit` for every entry of the VM home, each directory's entries
/// in name order. Each directory is opened beneath the VM home with no
/// symlink followed and listed through that descriptor; a symlink, FIFO,
/// device or socket is visited by name only, and a symlink to a directory
/// is not descended into.
fn walk_all(
    vm: &VmDir,
    mut visit: impl FnMut(Visited<'_>) -> Result<(), DatastoreError>,
) -> Result<(), DatastoreError> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = vm.display_path(&rel);
        let dir = vm
            .beneath()
            .open_dir(&rel)
            .map_err(io(format!("opening directory {}", path.display())))?;
        visit(Visited::Directory {
            fd: dir.as_fd(),
            rel: &rel,
        })?;
        let mut entries = list_dir(dir.as_fd(), &path)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in entries {
            let entry_rel = rel.join(&name);
            let (dir, name, rel_ref) = (dir.as_fd(), name.as_os_str(), entry_rel.as_path());
            if layout::is_internal_name(name) {
                visit(Visited::Internal {
                    dir,
                    name,
                    rel: rel_ref,
                })?;
                continue;
            }
            match kind {
                EntryKind::Directory => stack.push(entry_rel.clone()),
                EntryKind::RegularFile => visit(Visited::RegularFile {
                    dir,
                    name,
                    rel: rel_ref,
                })?,
                EntryKind::Other => visit(Visited::Special {
                    dir,
                    name,
                    rel: rel_ref,
                })?,
            }
        }
    }
    Ok(())
}

/// Brings the `user.*` and `trusted.*` values of every object of `vm` to
/// their final form: sealed under `keyring`'s current generation for
/// directories, symlinks, FIFOs, devices and sockets, and for files whose
/// class under `policy` is encrypted; plaintext for the other files.
/// Returns how many values were rewritten.
fn reform_attributes(
    vm: &VmDir,
    keyring: &VmKeyring,
    policy: &StoragePolicy,
) -> Result<usize, DatastoreError> {
    let mut rewritten = 0;
    walk(vm, |entry| {
        let Some((fd, sealed, rel)) = attribute_holder(vm, policy, entry)? else {
            return Ok(());
        };
        let path = vm.display_path(rel);
        let context = || format!("sealing the extended attributes of {}", path.display());
        rewritten += BackingObject::new(fd.as_fd())
            .reform(keyring, sealed)
            .map_err(|e| match e {
                XattrError::Backing(errno) => DatastoreError::io(context(), errno.into()),
                other => DatastoreError::io(context(), std::io::Error::other(other.to_string())),
            })?;
        if rewritten > 0 {
            crash_point("convert-first-attributes-done");
        }
        Ok(())
    })?;
    Ok(rewritten)
}

/// Calls `visit` with every object of `vm` that carries extended
/// attributes (see [`attribute_holder`]), changing nothing: internal
/// names are not visited, nor temps removed (fsck and scrub).
pub(super) fn for_each_attribute_holder(
    vm: &VmDir,
    policy: &StoragePolicy,
    mut visit: impl FnMut(BorrowedFd<'_>, bool, &Path) -> Result<(), DatastoreError>,
) -> Result<(), DatastoreError> {
    walk_all(vm, |entry| match attribute_holder(vm, policy, entry)? {
        Some((fd, sealed, rel)) => visit(fd.as_fd(), sealed, rel),
        None => Ok(()),
    })
}

/// The object `entry` names as an `O_PATH` descriptor, with whether its
/// `user.*` and `trusted.*` values are sealed under `policy` (directories,
/// symlinks, FIFOs, devices and sockets always; files whose class is
/// encrypted) and its path; `None` for an internal name, or an object
/// removed or swapped since it was listed.
fn attribute_holder<'a>(
    vm: &VmDir,
    policy: &StoragePolicy,
    entry: Visited<'a>,
) -> Result<Option<(OwnedFd, bool, &'a Path)>, DatastoreError> {
    let opened = match entry {
        Visited::Directory { fd, rel } => {
            let fd = fd.try_clone_to_owned().map_err(|e| {
                DatastoreError::io(format!("opening {}", vm.display_path(rel).display()), e)
            })?;
            Some((fd, true, rel))
        }
        Visited::Internal { .. } => None,
        Visited::Special { dir, name, rel } => open_listed(vm, dir, name, rel, |kind| {
            !matches!(kind, FileType::RegularFile | FileType::Directory)
        })?
        .map(|fd| (fd, true, rel)),
        Visited::RegularFile { dir, name, rel } => {
            open_listed(vm, dir, name, rel, |kind| kind == FileType::RegularFile)?
                .map(|fd| (fd, policy.class_of(name) == ContentClass::Encrypted, rel))
        }
    };
    Ok(opened)
}

/// An `O_PATH` descriptor of `name` in `dir` (listed at `rel`), opened
/// without following a symlink, if what is there now is of a kind
/// `expected` accepts; `None` if it was removed or swapped since it was
/// listed (not ours to change).
fn open_listed(
    vm: &VmDir,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    expected: impl FnOnce(FileType) -> bool,
) -> Result<Option<OwnedFd>, DatastoreError> {
    let opened = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .and_then(|fd| Ok((rustix::fs::fstat(&fd)?, fd)));
    match opened {
        Ok((stat, fd)) if expected(FileType::from_raw_mode(stat.st_mode)) => Ok(Some(fd)),
        Ok(_) | Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(DatastoreError::io(
            format!("opening {}", vm.display_path(rel).display()),
            e.into(),
        )),
    }
}

/// How a file is stored now.
pub(super) enum StoredForm {
    Empty,
    Plain,
    /// Encrypted under DEK generation `generation`, in content format
    /// `layout`.
    Encrypted {
        generation: u32,
        layout: ContentLayout,
    },
}

/// A file (`len` bytes long) is encrypted exactly when it starts with a
/// header that authenticates under this VM's keyring.
pub(super) fn stored_form(file: &File, len: u64, keyring: &VmKeyring) -> StoredForm {
    if len == 0 {
        return StoredForm::Empty;
    }
    let mut raw = [0u8; file_header::LEN];
    if len < raw.len() as u64 || file.read_exact_at(&mut raw, 0).is_err() {
        return StoredForm::Plain;
    }
    let Ok(header) = UnverifiedHeader::parse(&raw) else {
        return StoredForm::Plain;
    };
    let generation = header.dek_generation();
    let Some(dek) = keyring.dek(generation) else {
        return StoredForm::Plain;
    };
    let mac_key = kdf::file_header_mac_key(dek, keyring.vm_id(), &header.file_id());
    match header.verify(&mac_key) {
        Ok(header) => StoredForm::Encrypted {
            generation,
            layout: header.layout,
        },
        Err(_) => StoredForm::Plain,
    }
}

/// What one file needs; the source's content format is the file's own
/// (a format conversion reads files in one format and writes the other).
#[derive(Clone, Copy, Debug)]
enum Step {
    Encrypt,
    Decrypt { from: ContentLayout },
    Reencrypt { from: ContentLayout },
}

/// Converts the file `rel` of `vm` through a temp file and a rename,
/// writing encrypted files in content format `layout`. Returns its
/// plaintext size. Every step is an `*at` call or a descriptor call on the
/// file's directory, opened beneath the VM home without following symlinks.
fn convert_file(
    vm: &VmDir,
    rel: &Path,
    step: Step,
    keyring: &Arc<VmKeyring>,
    layout: ContentLayout,
    progress: &mut dyn Progress,
) -> Result<u64, DatastoreError> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().expect("a file has a name");
    let path = vm.display_path(rel);
    let dir_path = vm.display_path(parent);
    let temp = dir_path.join(TEMP_FILE_NAME);
    let temp_name = OsStr::new(TEMP_FILE_NAME);
    let dir = vm
        .beneath()
        .open_dir(parent)
        .map_err(io(format!("opening directory {}", dir_path.display())))?;
    remove_at(dir.as_fd(), temp_name, &temp)?;
    let (source, meta) = open_regular_at(dir.as_fd(), name, OFlags::RDONLY, &path)?;
    let dest = create_exclusive_at(dir.as_fd(), temp_name, 0o600, &temp)?;
    let mut done = 0;
    let mut on_progress = |now: u64| {
        progress.advance(now.saturating_sub(done));
        done = now;
    };
    let (src, dst) = match step {
        Step::Encrypt => (
            Source::Plain(&source),
            Destination::Encrypted(&dest, keyring.clone(), layout),
        ),
        Step::Decrypt { from } => (
            Source::Encrypted(&source, keyring.clone(), from),
            Destination::Plain(&dest),
        ),
        Step::Reencrypt { from } => (
            Source::Encrypted(&source, keyring.clone(), from),
            Destination::Encrypted(&dest, keyring.clone(), layout),
        ),
    };
    let size = transcode(src, dst, &mut on_progress).map_err(|e| {
        DatastoreError::io(
            format!("converting {}", path.display()),
            std::io::Error::other(e.to_string()),
        )
    })?;
    dest.sync_all()
        .map_err(io(format!("fsyncing {}", temp.display())))?;
    copy_metadata(&dest, &meta, &temp)?;
    // As stored; `reform_attributes` then gives them their final form.
    xattrs::copy_all(&source, &dest, &path)?;
    drop(dest);
    rustix::fs::renameat(&dir, temp_name, &dir, name).map_err(|e| {
        DatastoreError::io(
            format!("renaming {} over {}", temp.display(), path.display()),
            e.into(),
        )
    })?;
    rustix::fs::fsync(&dir).map_err(|e| {
        DatastoreError::io(
            format!("fsyncing directory {}", dir_path.display()),
            e.into(),
        )
    })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::owned_file::tests::{Outside, PLANTS, SECRET};
    use crate::keys::embedded::EmbeddedProvider;
    use std::fs;

    struct Quiet;

    impl Progress for Quiet {
        fn start(&mut self, _: usize, _: u64) {}
        fn advance(&mut self, _: u64) {}
        fn file_done(&mut self, _: &Path) {}
        fn finish(&mut self) {}
    }

    fn all_operations() -> [Operation; 6] {
        [
            Operation::EncryptHome {
                policy: StoragePolicy::new_vm(true, ContentLayout::PageAligned),
            },
            Operation::EncryptDisks,
            Operation::DecryptDisks,
            Operation::SetDiskPattern {
                pattern: DiskPattern::legacy(),
            },
            Operation::DeepRekey,
            Operation::ConvertFormat {
                to: ContentLayout::Interleaved,
            },
        ]
    }

    #[test]
    fn pending_is_a_known_operation_or_damaged_never_the_journals_text() {
        let outside = Outside::new();
        let vm = outside.base.path().join("ds/vm");
        fs::create_dir_all(&vm).unwrap();
        let journal = vm.join(JOURNAL_FILE_NAME);
        assert_eq!(pending(&vm), None);
        for operation in all_operations() {
            fs::write(&journal, format!("{}\n", operation.name())).unwrap();
            assert_eq!(pending(&vm), Some(Pending::Operation(operation.name())));
        }
        fs::write(&journal, "vmcryptfs-master-key v1\n0123").unwrap();
        assert_eq!(
            pending(&vm),
            Some(Pending::Damaged("names no known conversion"))
        );
        for plant in PLANTS {
            fs::remove_file(&journal)
                .or_else(|_| fs::remove_dir(&journal))
                .unwrap();
            outside.plant(plant, &journal);
            let shown = pending(&vm).expect(plant).to_string();
            assert!(shown.starts_with("damaged ("), "{plant}: {shown}");
            assert!(!shown.contains("0123456789"), "{plant}: {shown}");
        }
    }

    /// A key store outside any datastore, with its provider and record.
    fn key_store() -> (Outside, EmbeddedProvider, BundleSequences) {
        let outside = Outside::new();
        let keystore = outside.base.path().join("ks");
        let provider = EmbeddedProvider::init(&keystore).unwrap().0;
        (outside, provider, BundleSequences::in_keystore(&keystore))
    }

    /// [`key_store`] and an empty encrypted VM home `ds/vm` beside it.
    fn new_vm_home() -> (Outside, EmbeddedProvider, BundleSequences, PathBuf) {
        let (outside, provider, sequences) = key_store();
        let vm = outside.base.path().join("ds/vm");
        let policy = StoragePolicy::new_vm(false, ContentLayout::PageAligned);
        vm_keys::create_vm_home(&vm, &provider, &policy).unwrap();
        (outside, provider, sequences, vm)
    }

    #[test]
    fn a_damaged_journal_stops_every_conversion_naming_the_vm_home() {
        let (outside, provider, sequences, vm) = new_vm_home();
        std::os::unix::fs::symlink(outside.secret(), vm.join(JOURNAL_FILE_NAME)).unwrap();
        let before = outside.snapshot();
        for operation in all_operations() {
            let err = run(&vm, &provider, &sequences, operation, &mut Quiet).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, DatastoreError::DamagedJournal { .. }),
                "{message}"
            );
            assert!(message.contains(&vm.display().to_string()), "{message}");
            assert!(!message.contains("0123456789"), "{message}");
        }
        assert_eq!(outside.snapshot(), before, "nothing outside changed");
    }

    #[test]
    fn a_conversion_refused_for_want_of_the_key_leaves_no_journal() {
        use crate::keys::KeyProvider;
        let (_outside, provider, sequences, vm) = new_vm_home();
        provider.rotate().unwrap();
        provider.destroy(1).unwrap();
        for operation in all_operations()
            .into_iter()
            .filter(|op| op.name() != "encrypt")
        {
            let name = operation.name();
            let err = run(&vm, &provider, &sequences, operation, &mut Quiet).unwrap_err();
            assert!(
                matches!(err, DatastoreError::Provider { .. }),
                "{name}: {err}"
            );
            assert_eq!(pending(&vm), None, "{name}");
        }
    }

    #[test]
    fn conversions_never_follow_a_planted_temp_source_or_directory() {
        let (outside, provider, sequences) = key_store();
        let vm = outside.base.path().join("ds/vm");
        fs::create_dir_all(vm.join("sub")).unwrap();
        fs::write(vm.join("vm.nvram"), b"nvram content").unwrap();
        fs::write(vm.join("sub/disk.vmdk"), b"disk content").unwrap();
        let link = |target: PathBuf, at: &str| std::os::unix::fs::symlink(target, vm.join(at));
        link(outside.secret(), "secret.nvram").unwrap();
        link(outside.secret(), JOURNAL_TEMP_FILE_NAME).unwrap();
        link(outside.secret(), TEMP_FILE_NAME).unwrap();
        link(outside.secret(), &format!("sub/{TEMP_FILE_NAME}")).unwrap();
        link(outside.base.path().join("outside/dir"), "linked-dir").unwrap();
        fs::write(
            outside.base.path().join("outside/dir/host.vmdk"),
            b"host disk",
        )
        .unwrap();
        outside.snapshot(); // sets the access times its own reads change
        let before = outside.snapshot();
        let operation = Operation::EncryptHome {
            policy: StoragePolicy::new_vm(true, ContentLayout::PageAligned),
        };
        let report = run(&vm, &provider, &sequences, operation, &mut Quiet).unwrap();
        assert_eq!(report.files, 2, "{report:?}");
        let report = run(
            &vm,
            &provider,
            &sequences,
            Operation::DecryptDisks,
            &mut Quiet,
        )
        .unwrap();
        assert_eq!(report.files, 1, "{report:?}");
        run(&vm, &provider, &sequences, Operation::DeepRekey, &mut Quiet).unwrap();
        assert_eq!(outside.snapshot(), before, "nothing outside changed");
        assert_eq!(
            fs::read(outside.base.path().join("outside/dir/host.vmdk")).unwrap(),
            b"host disk"
        );
        assert_eq!(fs::read(vm.join("sub/disk.vmdk")).unwrap(), b"disk content");
        assert_ne!(fs::read(vm.join("vm.nvram")).unwrap(), b"nvram content");
        assert!(fs::symlink_metadata(vm.join("secret.nvram"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(outside.secret()).unwrap(), SECRET);
        assert_eq!(pending(&vm), None);
    }

    #[test]
    fn every_operation_name_is_one_a_journal_may_hold() {
        for operation in all_operations() {
            assert!(OPERATION_NAMES.contains(&operation.name()));
        }
        assert!(OPERATION_NAMES
            .iter()
            .all(|name| name.len() < MAX_JOURNAL_LEN as usize));
    }
}
