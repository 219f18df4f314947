//! Converting a VM home in place, file by file: encrypting a plain VM home,
//! encrypting or decrypting its disks, deep re-key (a new DEK, every file
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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bundle_file::{self, crash_point};
use super::layout::{self, ContentClass};
use super::vm_keys::{self, Authenticated};
use super::DatastoreError;
use crate::content::transcode::{transcode, Destination, Source};
use crate::crypto::kdf;
use crate::crypto::keyring::VmKeyring;
use crate::crypto::secret::Dek;
use crate::format::content_layout::ContentLayout;
use crate::format::file_header::{self, UnverifiedHeader};
use crate::keys::bundle_sequences::BundleSequences;
use crate::keys::KeyProvider;

/// The journal: present exactly while a conversion is unfinished.
pub const JOURNAL_FILE_NAME: &str = ".vmcryptfs-convert-journal";
/// The journal while it is written; renamed over [`JOURNAL_FILE_NAME`].
const JOURNAL_TEMP_FILE_NAME: &str = ".vmcryptfs-convert-journal.tmp";
const TEMP_FILE_NAME: &str = ".vmcryptfs-convert.tmp";

/// A conversion of one VM home.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Make a plain directory an encrypted VM home and encrypt its files.
    EncryptHome {
        /// Encrypt the disks too.
        encrypt_disks: bool,
        /// The content format of the encrypted files.
        content_layout: ContentLayout,
    },
    /// Encrypt the VM's `*.vmdk` files and set the disk policy.
    EncryptDisks,
    /// Decrypt the VM's `*.vmdk` files and clear the disk policy.
    DecryptDisks,
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
    pub fn name(self) -> &'static str {
        match self {
            Operation::EncryptHome { .. } => "encrypt",
            Operation::EncryptDisks => "encrypt-disks",
            Operation::DecryptDisks => "decrypt-disks",
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
}

/// The unfinished conversion of `vm_dir`, if any.
pub fn pending(vm_dir: &Path) -> Option<String> {
    fs::read_to_string(vm_dir.join(JOURNAL_FILE_NAME))
        .ok()
        .map(|s| s.trim().to_string())
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
    if let Some(other) = pending(vm_dir).filter(|p| p != operation.name()) {
        return Err(DatastoreError::ConversionPending {
            path: vm_dir.into(),
            operation: other,
        });
    }
    let resuming = pending(vm_dir).is_some();
    if let Operation::EncryptHome {
        encrypt_disks,
        content_layout,
    } = operation
    {
        if bundle_file::has_bundle(vm_dir) && !resuming {
            return Err(DatastoreError::AlreadyVmHome {
                path: vm_dir.into(),
            });
        }
        write_journal(vm_dir, operation)?;
        if !bundle_file::has_bundle(vm_dir) {
            vm_keys::create_bundle(vm_dir, provider, encrypt_disks, content_layout)?;
        }
    } else {
        if !bundle_file::has_bundle(vm_dir) {
            return Err(DatastoreError::NotAVmHome {
                path: vm_dir.into(),
            });
        }
        write_journal(vm_dir, operation)?;
    }
    // Every field the final bundle keeps comes from `bundle`, which
    // authenticated here; each rewrite checks the bundle on disk against it.
    let (mut bundle, mut keyring) = vm_keys::unlock_vm_dir(vm_dir, provider, sequences)?;
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
            bundle.encrypt_disks,
            bundle.content_layout,
        )?;
        keyring = added;
        crash_point("deep-rekey-generation-added");
    }
    let keyring = Arc::new(keyring);
    let encrypt_disks = match operation {
        Operation::EncryptHome { encrypt_disks, .. } => encrypt_disks,
        Operation::EncryptDisks => true,
        Operation::DecryptDisks => false,
        Operation::DeepRekey | Operation::ConvertFormat { .. } => bundle.encrypt_disks,
    };
    let content_layout = match operation {
        Operation::ConvertFormat { to } => to,
        _ => bundle.content_layout,
    };

    let mut plan = Vec::new();
    let mut report = Report::default();
    for path in regular_files(vm_dir)? {
        let name = path.file_name().expect("a file name");
        let wanted = layout::class_in_vm_home(name, encrypt_disks);
        let form = stored_form(&path, &keyring)?;
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
            Some(step) => plan.push((path, step)),
            None => report.skipped += 1,
        }
    }
    let total: u64 = plan
        .iter()
        .map(|(p, _)| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    progress.start(plan.len(), total);
    for (index, (path, step)) in plan.iter().enumerate() {
        report.bytes += convert_file(path, *step, &keyring, content_layout, progress)?;
        report.files += 1;
        progress.file_done(path);
        if index == 0 {
            crash_point("convert-first-file-done");
        }
    }
    // A new VM home's bundle already has its final form; every other
    // operation ends by rewriting it (final disk policy and content format;
    // for a deep re-key, only the new DEK generation).
    if !matches!(operation, Operation::EncryptHome { .. }) {
        let final_keyring = match operation {
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
            encrypt_disks,
            content_layout,
        )?;
    }
    fs::remove_file(vm_dir.join(JOURNAL_FILE_NAME))
        .map_err(io(format!("removing the journal in {}", vm_dir.display())))?;
    // Left by a run killed while writing its journal; harmless, but tidy.
    let _ = fs::remove_file(vm_dir.join(JOURNAL_TEMP_FILE_NAME));
    sync_dir(vm_dir)?;
    progress.finish();
    Ok(report)
}

/// Writes the journal atomically (temp file, fsync, rename, directory
/// fsync): a kill while writing it must leave either no journal or a
/// complete one, never an empty file that names no operation (found by
/// `tests/crash_conversions.rs`).
fn write_journal(vm_dir: &Path, operation: Operation) -> Result<(), DatastoreError> {
    let path = vm_dir.join(JOURNAL_FILE_NAME);
    let temp = vm_dir.join(JOURNAL_TEMP_FILE_NAME);
    let mut text = operation.name().to_string();
    text.push('\n');
    fs::write(&temp, text).map_err(io(format!("writing {}", temp.display())))?;
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::rename(&temp, &path))
        .map_err(io(format!("writing {}", path.display())))?;
    sync_dir(vm_dir)
}

fn sync_dir(dir: &Path) -> Result<(), DatastoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("fsyncing directory {}", dir.display())))
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

/// Every regular file under `dir`, internal files excluded, sorted.
fn regular_files(dir: &Path) -> Result<Vec<PathBuf>, DatastoreError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io(format!("listing {}", d.display())))? {
            let entry = entry.map_err(io(format!("listing {}", d.display())))?;
            if layout::is_internal_name(&entry.file_name()) {
                if entry.file_name() == TEMP_FILE_NAME {
                    // Left by an interrupted run; the original is intact.
                    fs::remove_file(entry.path())
                        .map_err(io(format!("removing {}", entry.path().display())))?;
                }
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(io(format!("stat {}", entry.path().display())))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// How a file is stored now.
enum StoredForm {
    Empty,
    Plain,
    /// Encrypted under DEK generation `generation`, in content format
    /// `layout`.
    Encrypted {
        generation: u32,
        layout: ContentLayout,
    },
}

/// A file is encrypted exactly when it starts with a header that
/// authenticates under this VM's keyring.
fn stored_form(path: &Path, keyring: &VmKeyring) -> Result<StoredForm, DatastoreError> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let len = file
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    if len == 0 {
        return Ok(StoredForm::Empty);
    }
    let mut raw = [0u8; file_header::LEN];
    if len < raw.len() as u64 || file.read_exact_at(&mut raw, 0).is_err() {
        return Ok(StoredForm::Plain);
    }
    let Ok(header) = UnverifiedHeader::parse(&raw) else {
        return Ok(StoredForm::Plain);
    };
    let generation = header.dek_generation();
    let Some(dek) = keyring.dek(generation) else {
        return Ok(StoredForm::Plain);
    };
    let mac_key = kdf::file_header_mac_key(dek, keyring.vm_id(), &header.file_id());
    Ok(match header.verify(&mac_key) {
        Ok(header) => StoredForm::Encrypted {
            generation,
            layout: header.layout,
        },
        Err(_) => StoredForm::Plain,
    })
}

/// What one file needs; the source's content format is the file's own
/// (a format conversion reads files in one format and writes the other).
#[derive(Clone, Copy, Debug)]
enum Step {
    Encrypt,
    Decrypt { from: ContentLayout },
    Reencrypt { from: ContentLayout },
}

/// Converts one file through a temp file and a rename, writing encrypted
/// files in content format `layout`. Returns its plaintext size.
fn convert_file(
    path: &Path,
    step: Step,
    keyring: &Arc<VmKeyring>,
    layout: ContentLayout,
    progress: &mut dyn Progress,
) -> Result<u64, DatastoreError> {
    let dir = path.parent().expect("a file has a directory");
    let temp = dir.join(TEMP_FILE_NAME);
    let _ = fs::remove_file(&temp);
    let source = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let meta = source
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?;
    let dest = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(format!("creating {}", temp.display())))?;
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
    fs::set_permissions(&temp, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io(format!("chmod {}", temp.display())))?;
    std::os::unix::fs::chown(&temp, Some(meta.uid()), Some(meta.gid()))
        .map_err(io(format!("chown {}", temp.display())))?;
    let times = fs::FileTimes::new()
        .set_accessed(
            meta.accessed()
                .map_err(io(format!("stat {}", path.display())))?,
        )
        .set_modified(
            meta.modified()
                .map_err(io(format!("stat {}", path.display())))?,
        );
    dest.set_times(times)
        .map_err(io(format!("setting times of {}", temp.display())))?;
    drop(dest);
    fs::rename(&temp, path).map_err(io(format!(
        "renaming {} over {}",
        temp.display(),
        path.display()
    )))?;
    sync_dir(dir)?;
    Ok(size)
}
