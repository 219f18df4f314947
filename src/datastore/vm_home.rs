//! One encrypted VM home inside a mount: its cached keys and status.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::convert::Pending;
use super::counters::VmCounters;
use super::current_kek::{CurrentKekCache, ReadVersions};
pub use super::layout::StoragePolicy;
use super::layout::{self, ContentClass, BUNDLE_FILE_NAME};
use super::scrub::{ScrubSlot, ScrubView};
use super::vm_keys::{self, Authenticated, RekeyOutcome};
use super::write_counted::WriteCounted;
use super::{bundle_file, DatastoreError};
use crate::crypto::keyring::VmKeyring;
use crate::format::bundle::KeyBundle;
use crate::format::content_layout::ContentLayout;
use crate::format::untrusted;
use crate::keys::bundle_sequences::{BundleSequences, SequenceCheck};
use crate::keys::KeyProvider;

/// The key cache state of one VM home.
enum KeyState {
    /// Nothing unwrapped yet (the next access unwraps through the provider).
    NotLoaded {
        /// The bundle as last read for its policy fields (disk policy,
        /// content format), which every `stat` of the VM's files needs:
        /// without it, listing a VM home nobody has opened a file of yet
        /// read and parsed the bundle for each entry. Not authenticated,
        /// like any bundle before its DEKs are unwrapped. Dropped with the
        /// keys ([`VmHome::flush_keys`]), which every conversion that
        /// changes those fields asks the mount for.
        peeked: Option<KeyBundle>,
    },
    /// DEKs are in memory. `bundle` authenticated on this host (it
    /// unwrapped to `keyring`, or this mount wrote it), so its policy
    /// fields decide how new files are stored.
    Unlocked {
        keyring: Arc<VmKeyring>,
        bundle: KeyBundle,
    },
    /// The DEKs could not be unwrapped; `reason` says why.
    Locked {
        reason: String,
        bundle: Option<KeyBundle>,
    },
}

impl KeyState {
    /// The bundle this state holds, if any.
    fn bundle(&self) -> Option<&KeyBundle> {
        match self {
            KeyState::NotLoaded { peeked } => peeked.as_ref(),
            KeyState::Unlocked { bundle, .. } => Some(bundle),
            KeyState::Locked { bundle, .. } => bundle.as_ref(),
        }
    }
}

/// The VM's DEKs cannot be unwrapped; opens of its encrypted files fail
/// with ENOKEY and its `.control` shows `reason`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("VM {vm} is locked: {}", untrusted::line(.reason))]
pub struct VmLocked {
    /// VM home name, escaped.
    pub vm: String,
    /// Why.
    pub reason: String,
}

/// A control command and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// The command as written.
    pub command: String,
    /// `ok: ...` or `error: ...`.
    pub result: String,
}

/// Everything `.control` shows for a VM home.
#[derive(Debug, Clone, Default)]
pub struct VmStatus {
    /// Directory name, escaped ([`untrusted::name`]).
    pub name: String,
    /// `unlocked`, `locked` or `not-loaded`.
    pub state: &'static str,
    /// Why the VM is locked.
    pub locked_reason: Option<String>,
    /// The bundle, if it parsed.
    pub bundle: Option<KeyBundle>,
    /// The provider's current KEK version, if the provider answered.
    pub provider_current_version: Option<u32>,
    /// Error from the provider, if it did not answer.
    pub provider_error: Option<String>,
    /// Fingerprint of the current DEK, when unlocked.
    pub dek_fingerprint: Option<String>,
    /// Open encrypted files in this mount.
    pub open_files: usize,
    /// Open file handles of this VM in this mount, encrypted and
    /// pass-through alike: what the conversion commands wait on.
    pub open_handles: usize,
    /// An unfinished in-place conversion, by name, or `damaged (why)`
    /// (never the journal's own text).
    pub conversion: Option<String>,
    /// The last control command.
    pub last_command: Option<CommandRecord>,
    /// The VM home's scrub in this mount.
    pub scrub: ScrubView,
}

impl VmStatus {
    /// Whether the bundle is wrapped under a KEK version other than the
    /// provider's current one.
    pub fn needs_rekey(&self) -> Option<bool> {
        let bundle = self.bundle.as_ref()?;
        let current = self.provider_current_version?;
        Some(bundle.kek.version != current)
    }
}

/// Everything a VM home's [`VmStatus`] is made of, in a form cheap to
/// read and compare: while two stamps of one VM home are equal, so are the
/// statuses built from them (see [`VmHome::status_from`]). The root
/// status files keep each VM home's rendered lines with its stamp and
/// render them again only when the stamp changed.
///
/// The state behind locks (keys and bundle, name, last command, scrub) is
/// stood for by the count of writes to each lock, which only grows (see
/// [`WriteCounted`]); values that can go back to an earlier one (the open
/// counts, the conversion, the provider's answer) are in the stamp
/// themselves, and the status shows exactly the stamp's, so a value that
/// changed and changed back cannot leave an old line looking current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusStamp {
    /// Which VM home: unique in the process, never reused.
    vm: u64,
    /// Writes to its keys, location, last command and scrub view.
    writes: [u64; 4],
    open_files: usize,
    open_handles: usize,
    conversion: Option<String>,
    /// The provider's current KEK version for the VM's KEK series.
    current: Result<u32, String>,
}

impl StatusStamp {
    /// The VM home it is of (unique in the process, never reused).
    pub fn vm(&self) -> u64 {
        self.vm
    }
}

/// The next [`VmHome`]'s [`StatusStamp::vm`].
static NEXT_VM_ID: AtomicU64 = AtomicU64::new(0);

/// One open file handle of a VM home, counted in its `open_handles` for
/// as long as this lives. Why a count of its own beside `open_files`: a
/// pass-through file (a disk of a VM without `encrypt-disks`) uses no key,
/// yet a conversion must not rewrite it under a running VM, so every
/// handle counts, and the count cannot be forgotten on any close path.
pub struct OpenHandle {
    /// The VM whose count this holds; immutable.
    vm: Arc<VmHome>,
}

impl Drop for OpenHandle {
    fn drop(&mut self) {
        self.vm.open_handles.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One encrypted VM home of a mounted datastore.
pub struct VmHome {
    /// Identity for [`StatusStamp`]s. Immutable.
    id: u64,
    /// Directory name and full path; changed only by a rename of the VM
    /// home through the mount (write lock), read everywhere else.
    location: WriteCounted<(OsString, PathBuf)>,
    /// Key cache. Read-locked on the fast path of every open; write-locked
    /// while unwrapping or re-keying, so a re-key and an unlock never
    /// interleave.
    keys: WriteCounted<KeyState>,
    /// Last control command; its own lock, never held with `keys`.
    last_command: WriteCounted<Option<CommandRecord>>,
    /// Open encrypted-file handles using the cached keyring. Incremented
    /// while holding `keys` (read or write), so `flush_keys`, which holds
    /// `keys` for writing, sees a stable count.
    open_files: AtomicUsize,
    /// Open file handles of the VM's files, encrypted and pass-through
    /// (see [`OpenHandle`]); an atomic of its own, under no lock: a count
    /// that a conversion reads, not a guard of the keys.
    open_handles: AtomicUsize,
    /// Live counters for `.stats`; relaxed atomics, no lock.
    counters: VmCounters,
    /// The VM home's scrub in this mount; locks itself (see
    /// [`ScrubSlot`]).
    scrub: ScrubSlot,
    /// This host's record of the highest bundle sequence per VM, checked
    /// at every unlock. Immutable handle; the record locks itself.
    sequences: Arc<BundleSequences>,
}

impl VmHome {
    /// A VM home whose keys are not loaded yet; unlocks check its bundle
    /// against `sequences`.
    pub fn new(name: OsString, dir: PathBuf, sequences: Arc<BundleSequences>) -> Self {
        Self {
            sequences,
            id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
            location: WriteCounted::new((name, dir)),
            keys: WriteCounted::new(KeyState::NotLoaded { peeked: None }),
            last_command: WriteCounted::new(None),
            open_files: AtomicUsize::new(0),
            open_handles: AtomicUsize::new(0),
            counters: VmCounters::default(),
            scrub: ScrubSlot::default(),
        }
    }

    /// The VM's live counters.
    pub fn counters(&self) -> &VmCounters {
        &self.counters
    }

    /// The VM home's scrub state in this mount.
    pub fn scrub(&self) -> &ScrubSlot {
        &self.scrub
    }

    /// Whether the VM's DEKs could not be unwrapped at the last attempt.
    pub fn is_locked(&self) -> bool {
        matches!(*self.keys.read(), KeyState::Locked { .. })
    }

    /// Directory name.
    pub fn name(&self) -> OsString {
        self.location.read().0.clone()
    }

    /// The directory name for status, logs and messages: chosen by
    /// whoever writes the datastore, so escaped.
    pub fn display_name(&self) -> String {
        untrusted::name(&self.name())
    }

    /// Directory path in the datastore.
    pub fn dir(&self) -> PathBuf {
        self.location.read().1.clone()
    }

    /// Records a rename of the VM home directory.
    pub fn set_location(&self, name: &OsStr, dir: PathBuf) {
        *self.location.write() = (name.to_owned(), dir);
    }

    /// The class of the VM's existing file named `name`, from the bundle's
    /// disk policy: authenticated once unlocked, else as peeked, so only for
    /// showing existing files (stat, listing, reading). A new or written
    /// file's class comes from [`VmHome::authenticated_policy`]. An
    /// unreadable bundle means we cannot know, and treating every file as
    /// encrypted fails safe.
    pub fn content_class(&self, name: &OsStr) -> ContentClass {
        self.bundle_field(|b| layout::class_in_vm_home(name, &b.disk_pattern, b.encrypt_disks))
            .unwrap_or(ContentClass::Encrypted)
    }

    /// The content format of the VM's encrypted files, from the bundle. An
    /// unreadable bundle also leaves the keys locked, so no content is read
    /// or written; only `stat` sizes use the fallback.
    pub fn content_layout(&self) -> ContentLayout {
        self.bundle_field(|b| b.content_layout)
            .unwrap_or(ContentLayout::PageAligned)
    }

    /// A field of the VM's bundle: the cached one, else parsed from disk
    /// and kept while the keys are not loaded; `None` if it cannot be read.
    fn bundle_field<T>(&self, field: impl Fn(&KeyBundle) -> T) -> Option<T> {
        if let Some(bundle) = self.keys.read().bundle() {
            return Some(field(bundle));
        }
        self.peek().as_ref().map(field)
    }

    /// The bundle as on disk, kept as `peeked` while the keys are not
    /// loaded; `None` if it cannot be read. Unwraps nothing.
    fn peek(&self) -> Option<KeyBundle> {
        let bundle = bundle_file::read(&self.dir()).ok()?;
        if let KeyState::NotLoaded { peeked } = &mut *self.keys.write() {
            *peeked = Some(bundle.clone());
        }
        Some(bundle)
    }

    /// Forgets the bundle peeked for status while the keys are not loaded:
    /// the VM home changed on disk, so the next status reads it again.
    pub fn forget_peeked(&self) {
        if let KeyState::NotLoaded { peeked } = &mut *self.keys.write() {
            *peeked = None;
        }
    }

    /// The VM's keyring, unwrapping through the provider on first use.
    pub fn keyring(&self, provider: &dyn KeyProvider) -> Result<Arc<VmKeyring>, VmLocked> {
        Ok(self.keyring_counting(provider, false)?.0)
    }

    /// The VM's storage policy from its authenticated bundle, unlocking it
    /// first: a VM whose bundle does not authenticate on this host has no
    /// policy to decide a new file's class with.
    pub fn authenticated_policy(
        &self,
        provider: &dyn KeyProvider,
    ) -> Result<StoragePolicy, VmLocked> {
        Ok(self.keyring_counting(provider, false)?.1)
    }

    /// [`VmHome::keyring`] for a file being opened, with the policy of the
    /// same authenticated bundle: counts the open file, which keeps
    /// `flush-keys` from dropping keys still in use. Pair with
    /// [`VmHome::file_closed`].
    pub fn keyring_for_open_file(
        &self,
        provider: &dyn KeyProvider,
    ) -> Result<(Arc<VmKeyring>, StoragePolicy), VmLocked> {
        self.keyring_counting(provider, true)
    }

    /// An encrypted file opened with [`VmHome::keyring_for_open_file`] closed.
    pub fn file_closed(&self) {
        self.open_files.fetch_sub(1, Ordering::SeqCst);
    }

    fn keyring_counting(
        &self,
        provider: &dyn KeyProvider,
        count: bool,
    ) -> Result<(Arc<VmKeyring>, StoragePolicy), VmLocked> {
        let take = |keyring: &Arc<VmKeyring>, bundle: &KeyBundle| {
            if count {
                self.open_files.fetch_add(1, Ordering::SeqCst);
            }
            (keyring.clone(), StoragePolicy::of(bundle))
        };
        // Hits are counted for file opens only (status reads also look the
        // keys up); every unwrap through the provider is a miss.
        if let KeyState::Unlocked { keyring, bundle } = &*self.keys.read() {
            if count {
                self.counters.key_lookup(true);
            }
            return Ok(take(keyring, bundle));
        }
        let mut state = self.keys.write();
        if let KeyState::Unlocked { keyring, bundle } = &*state {
            if count {
                self.counters.key_lookup(true);
            }
            return Ok(take(keyring, bundle));
        }
        self.counters.key_lookup(false);
        let dir = self.dir();
        let bundle = match bundle_file::read(&dir) {
            Ok(bundle) => bundle,
            // Only a VM home this mount saw with a bundle gets here without
            // one (see `Datastore::vm_home`).
            Err(DatastoreError::NotAVmHome { .. }) => {
                let reason = format!(
                    "its key bundle {BUNDLE_FILE_NAME} is missing (it was removed from the datastore while mounted); put it back, e.g. from a backup: until then the VM stays locked and nothing is created in it, in clear or otherwise"
                );
                return Err(self.lock_with(&mut state, reason, None));
            }
            Err(err) => return Err(self.lock_with(&mut state, err.to_string(), None)),
        };
        if let Some(pending) = super::convert::pending(&dir) {
            let reason = match pending {
                Pending::Operation(operation) => format!(
                    "a `{operation}` conversion is unfinished; run it again to complete it"
                ),
                Pending::Damaged(why) => format!(
                    "its conversion journal {} is damaged ({why}); remove it, then run the interrupted conversion again if there was one",
                    super::convert::JOURNAL_FILE_NAME
                ),
            };
            return Err(self.lock_with(&mut state, reason, Some(bundle)));
        }
        match vm_keys::unlock(&bundle, provider) {
            Ok(keyring) => {
                // Authentic, but maybe older than a bundle this host saw.
                if let Err(err) = vm_keys::check_sequence(&dir, &bundle, &*self.sequences) {
                    return Err(self.lock_with(&mut state, err.to_string(), Some(bundle)));
                }
                let keyring = Arc::new(keyring);
                log::info!("VM {}: unlocked (KEK {})", self.display_name(), bundle.kek);
                let taken = take(&keyring, &bundle);
                *state = KeyState::Unlocked { keyring, bundle };
                Ok(taken)
            }
            Err(err) => {
                if matches!(err, crate::keys::ProviderError::UnwrapFailed { .. }) {
                    self.counters.auth_failure();
                }
                let reason = format!("cannot unwrap DEK under KEK {}: {err}", bundle.kek);
                Err(self.lock_with(&mut state, reason, Some(bundle)))
            }
        }
    }

    /// Drops the cached DEKs unless files are open, as a host reboot empties
    /// its key cache. Returns whether they were dropped.
    pub fn flush_keys(&self) -> bool {
        let mut state = self.keys.write();
        if self.open_files.load(Ordering::SeqCst) > 0 {
            return false;
        }
        *state = KeyState::NotLoaded { peeked: None };
        log::info!("VM {}: key cache flushed", self.display_name());
        true
    }

    /// Number of open encrypted files.
    pub fn open_files(&self) -> usize {
        self.open_files.load(Ordering::SeqCst)
    }

    /// Counts a file handle of this VM opened in the mount, until the
    /// returned value is dropped (with the handle).
    pub fn handle_opened(self: &Arc<Self>) -> OpenHandle {
        self.open_handles.fetch_add(1, Ordering::SeqCst);
        OpenHandle { vm: self.clone() }
    }

    /// Number of open file handles of this VM, encrypted and pass-through.
    pub fn open_handles(&self) -> usize {
        self.open_handles.load(Ordering::SeqCst)
    }

    fn lock_with(
        &self,
        state: &mut KeyState,
        reason: String,
        bundle: Option<KeyBundle>,
    ) -> VmLocked {
        log::error!(
            "VM {} is locked: {}",
            self.display_name(),
            untrusted::line(&reason)
        );
        *state = KeyState::Locked {
            reason: reason.clone(),
            bundle,
        };
        VmLocked {
            vm: self.display_name(),
            reason,
        }
    }

    /// Shallow re-key through the provider's current KEK version. The cached
    /// keyring is kept (the DEKs do not change), so open files are not
    /// disturbed.
    pub fn rekey(&self, provider: &dyn KeyProvider) -> Result<RekeyOutcome, DatastoreError> {
        self.rekey_with(provider, &*self.sequences)
    }

    /// [`VmHome::rekey`] checking and raising the bundle's sequence in
    /// `sequences`: this mount's record, or a batch over it (re-key of
    /// every VM home, see `rekey_batch`).
    pub fn rekey_with(
        &self,
        provider: &dyn KeyProvider,
        sequences: &dyn SequenceCheck,
    ) -> Result<RekeyOutcome, DatastoreError> {
        let mut state = self.keys.write();
        // Only an unlocked VM's bundle authenticated here; a locked one's
        // was merely parsed and must never be re-wrapped from memory.
        let known = match &*state {
            KeyState::Unlocked { keyring, bundle } => Some(Authenticated { bundle, keyring }),
            _ => None,
        };
        let outcome = vm_keys::shallow_rekey_with_cache(&self.dir(), provider, sequences, known)?;
        let keyring = match &*state {
            KeyState::Unlocked { keyring, .. }
                if keyring.current_fingerprint() == outcome.keyring.current_fingerprint() =>
            {
                keyring.clone()
            }
            _ => outcome.keyring.clone(),
        };
        *state = KeyState::Unlocked {
            keyring,
            bundle: outcome.bundle.clone(),
        };
        self.counters.rekeyed();
        Ok(outcome)
    }

    /// Records the last control command.
    pub fn record_command(&self, record: CommandRecord) {
        *self.last_command.write() = Some(record);
    }

    /// Everything `.control` shows. Never unwraps: a VM nobody has opened
    /// a file of is `not-loaded`, with its bundle's fields as read from
    /// disk (unauthenticated, like any bundle before its DEKs unwrap), so
    /// that an unprivileged reader of a status file cannot make the mount
    /// ask a key provider for keys. The provider's current KEK version
    /// comes from `versions`, which asks the provider at most once per
    /// KEK series every few seconds; a provider failure is reported, not
    /// fatal.
    pub fn status(&self, provider: &dyn KeyProvider, versions: &CurrentKekCache) -> VmStatus {
        let conversion = super::convert::pending(&self.dir()).map(|p| p.to_string());
        let mut current = versions.for_read(provider);
        let stamp = self.status_stamp(conversion, &mut current);
        self.status_from(&stamp, &mut current)
    }

    /// What this VM home's status is made of now: `conversion` as the
    /// caller read it (the root's status view reads it only when the VM
    /// home changed), the current KEK version from `current`. Build the
    /// status with [`VmHome::status_from`], after this and with the same
    /// `current`.
    pub fn status_stamp(
        &self,
        conversion: Option<String>,
        current: &mut ReadVersions<'_>,
    ) -> StatusStamp {
        // A bundle not read yet is read (and kept) before the counts:
        // keeping it is a write, which after them would make the next
        // stamp differ and the VM home be rendered twice.
        if matches!(*self.keys.read(), KeyState::NotLoaded { peeked: None }) {
            self.peek();
        }
        // The counts before what they count (see `WriteCounted`).
        let writes = [
            self.keys.writes(),
            self.location.writes(),
            self.last_command.writes(),
            self.scrub.writes(),
        ];
        let open_files = self.open_files();
        let open_handles = self.open_handles();
        // A series this read already asked about is answered under the
        // lock; a new one is asked after it (that may be a round trip to a
        // KMS), with the KEK reference copied out.
        let answered = {
            let keys = self.keys.read();
            let kek = keys.bundle().map(|b| &b.kek);
            current.known(kek).ok_or_else(|| kek.cloned())
        };
        let current = answered.unwrap_or_else(|kek| current.current_version(kek.as_ref()));
        StatusStamp {
            vm: self.id,
            writes,
            open_files,
            open_handles,
            conversion,
            current,
        }
    }

    /// The status `stamp` stands for: its open counts and conversion, and
    /// the rest as it is now, which is what the stamp's counts stood for
    /// unless they have moved since (then the next stamp differs).
    pub fn status_from(&self, stamp: &StatusStamp, current: &mut ReadVersions<'_>) -> VmStatus {
        let mut status = VmStatus {
            name: self.display_name(),
            last_command: self.last_command.read().clone(),
            open_files: stamp.open_files,
            open_handles: stamp.open_handles,
            scrub: self.scrub.view(),
            conversion: stamp.conversion.clone(),
            ..VmStatus::default()
        };
        let not_loaded = match &*self.keys.read() {
            KeyState::NotLoaded { peeked } => {
                status.state = "not-loaded";
                status.bundle = peeked.clone();
                peeked.is_none()
            }
            KeyState::Unlocked { keyring, bundle } => {
                status.state = "unlocked";
                status.bundle = Some(bundle.clone());
                status.dek_fingerprint = Some(keyring.current_fingerprint());
                false
            }
            KeyState::Locked { reason, bundle } => {
                status.state = "locked";
                status.locked_reason = Some(reason.clone());
                status.bundle = bundle.clone();
                false
            }
        };
        if not_loaded {
            status.bundle = self.peek();
        }
        // The stamp's answer while the bundle is the stamp's: one read
        // asks each series once.
        match current.current_version(status.bundle.as_ref().map(|b| &b.kek)) {
            Ok(version) => status.provider_current_version = Some(version),
            Err(err) => status.provider_error = Some(err),
        }
        status
    }
}
