//! Key providers: who holds the KEKs, and how DEKs are wrapped under them.
//!
//! A provider holds versioned KEKs. A VM's key bundle names the provider, the
//! KEK id and the KEK version that wrapped its DEKs ([`KekRef`]). The
//! embedded provider ([`embedded`]) keeps its KEKs in a local sled store,
//! wrapped under a master key file ([`master_key`]). External KMIP providers
//! sit behind the same trait.

mod batch;
pub mod bundle_sequences;
pub mod embedded;
pub(crate) mod fetched_keks;
mod fsutil;
pub mod fuzzing;
pub mod keystore_path;
pub mod kmip;
pub mod master_key;
pub mod provider_set;
pub mod registry;

use std::path::PathBuf;

use crate::crypto::secret::Dek;

/// A bundle's reference to its KEK lives with the bundle's format (the
/// format layer sits below the providers); providers take it as is.
pub use crate::format::kek_ref::KekRef;

/// Lifecycle state of one KEK version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekState {
    /// Wraps and unwraps. Only the current version wraps new bundles.
    Active,
    /// Unwraps only.
    Retired,
    /// Key material is gone; bundles still wrapped under it are locked out.
    Destroyed,
}

impl KekState {
    /// Stable lower-case name, as shown by `provider list` and `.control`.
    pub fn as_str(self) -> &'static str {
        match self {
            KekState::Active => "active",
            KekState::Retired => "retired",
            KekState::Destroyed => "destroyed",
        }
    }
}

/// What `provider list` shows for one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KekVersionInfo {
    /// Version number.
    pub version: u32,
    /// Lifecycle state.
    pub state: KekState,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Whether this is the provider's current (wrapping) version.
    pub current: bool,
}

/// Everything that can go wrong talking to a key provider. Messages name the
/// object at fault and the next step; none ever contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No key store has been initialised at this path.
    #[error("no key store at {keystore}: run `vmcryptfs provider init` first (or pass --keystore / set VMCRYPTFS_KEYSTORE)")]
    NotInitialized {
        /// The key store directory.
        keystore: PathBuf,
    },
    /// `provider init` on a directory that already holds a key store.
    #[error("a key store already exists at {keystore}; refusing to overwrite it")]
    AlreadyInitialized {
        /// The key store directory.
        keystore: PathBuf,
    },
    /// The master key file is missing.
    #[error("master key file {path} is missing: restore it from your backup (it is the root of trust; without it the KEKs cannot be decrypted)")]
    MasterKeyMissing {
        /// Expected path of the master key file.
        path: PathBuf,
    },
    /// The master key file exists but is malformed.
    #[error("master key file {path} is malformed: {reason}")]
    MasterKeyMalformed {
        /// Path of the master key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The master key does not open this key store.
    #[error("master key {path} does not match the key store at {keystore}: wrong or replaced master key file")]
    WrongMasterKey {
        /// Path of the master key file.
        path: PathBuf,
        /// The key store directory.
        keystore: PathBuf,
    },
    /// The bundle names a provider this host does not have.
    #[error("key provider `{}` is not configured on this host", crate::format::untrusted::field(.name))]
    UnknownProvider {
        /// Provider name from the bundle.
        name: String,
    },
    /// The bundle's KEK id belongs to another key store.
    #[error("KEK `{}` is not held by this key store (its KEK id is `{store_kek_id}`): the VM was created with another key store; import it with `vmcryptfs provider import`", crate::format::untrusted::field(.kek_id))]
    ForeignKek {
        /// KEK id from the bundle.
        kek_id: String,
        /// This store's KEK id.
        store_kek_id: String,
    },
    /// The KEK version does not exist in the provider.
    #[error("KEK version {version} of `{}` does not exist in the key provider", crate::format::untrusted::field(.kek_id))]
    UnknownKekVersion {
        /// KEK id.
        kek_id: String,
        /// Missing version.
        version: u32,
    },
    /// The KEK version was destroyed.
    #[error("KEK version {version} of `{}` has been destroyed; VMs still wrapped under it cannot be unlocked", crate::format::untrusted::field(.kek_id))]
    KekDestroyed {
        /// KEK id.
        kek_id: String,
        /// Destroyed version.
        version: u32,
    },
    /// The KEK version may unwrap but no longer wrap.
    #[error("KEK version {version} of `{}` is {state} and cannot wrap new keys; use the current version", crate::format::untrusted::field(.kek_id))]
    KekNotActive {
        /// KEK id.
        kek_id: String,
        /// Version asked for.
        version: u32,
        /// Its state.
        state: &'static str,
    },
    /// The wrapped DEK did not authenticate under the KEK and context.
    #[error("the wrapped DEK does not authenticate under KEK {kek}: the key bundle was modified or belongs to another VM")]
    UnwrapFailed {
        /// The KEK named by the bundle.
        kek: KekRef,
    },
    /// Another process holds the key store lock for too long.
    #[error("key store {keystore} is locked by another process (waited {waited_ms} ms); retry, or find the process holding it with `fuser -v {keystore}/kek.sled/db`")]
    StoreBusy {
        /// The key store directory.
        keystore: PathBuf,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The key store's contents are inconsistent.
    #[error("key store {keystore} is corrupt: {reason}")]
    StoreCorrupt {
        /// The key store directory.
        keystore: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Retire or destroy was asked of the version that wraps new bundles.
    #[error("KEK version {version} of `{}` is the current version and cannot be {action}; run `vmcryptfs provider rotate` first", crate::format::untrusted::field(.kek_id))]
    CurrentKekVersion {
        /// KEK id.
        kek_id: String,
        /// The current version.
        version: u32,
        /// What was refused (`retired`, `destroyed`).
        action: &'static str,
    },
    /// A key store backup file does not parse or does not verify.
    #[error("key store backup {file}, line {line}: {reason}")]
    BackupMalformed {
        /// The backup file.
        file: PathBuf,
        /// 1-based line number at fault (the last line for missing entries).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Import needs the master key the backup was made under, and it is not
    /// in the key store directory.
    #[error("cannot import {file}: master key file {path} is missing; restore master.key from your offline backup to {path} first, then rerun `vmcryptfs provider import`")]
    ImportNeedsMasterKey {
        /// The backup file.
        file: PathBuf,
        /// Where the master key must be.
        path: PathBuf,
    },
    /// Import into a store that is a different key store than the backup.
    #[error("cannot import {file} into {keystore}: the backup is of key store `{backup_id}` but this key store is `{store_id}`; import into an empty directory (holding only the backup's master.key) instead")]
    KeystoreIdMismatch {
        /// The backup file.
        file: PathBuf,
        /// The key store directory.
        keystore: PathBuf,
        /// Key store id in the backup.
        backup_id: String,
        /// Key store id of the existing store.
        store_id: String,
    },
    /// The KMS of a KMIP provider could not be reached (down, network, or
    /// timeout). Transient: VMs unlock once it answers again.
    #[error("key provider `{provider}`: KMS unreachable: {reason}; VMs already unlocked keep working from the key cache, the others stay locked until the KMS answers again")]
    KmsUnreachable {
        /// Provider name.
        provider: String,
        /// The operation, server and failure.
        reason: String,
    },
    /// The TLS session to the KMS failed: a certificate was refused.
    #[error("key provider `{provider}`: {reason}")]
    KmsTls {
        /// Provider name.
        provider: String,
        /// Which side refused which certificate, and what to check.
        reason: String,
    },
    /// The KMS answered, and refused the operation.
    #[error("key provider `{provider}`: {reason}{hint}")]
    KmsRefused {
        /// Provider name.
        provider: String,
        /// The operation, server, result reason and message.
        reason: String,
        /// What to do about it, if we know.
        hint: &'static str,
    },
    /// A KEK version's KMIP object is not the one this host recorded.
    #[error("key provider `{provider}`: KEK version {version} is recorded on this host as KMIP object {recorded}, not {found}: another key was given that version's name (an impostor, or a KMS restored from another backup). The recorded object stays the version; check the KMS's audit log for who created {found}")]
    KekIdentityMismatch {
        /// Provider name.
        provider: String,
        /// The KEK version.
        version: u32,
        /// The Unique Identifier this host recorded.
        recorded: String,
        /// The other Unique Identifier.
        found: String,
    },
    /// A KEK version exists by name on the KMS but this host has not
    /// accepted its KMIP object.
    #[error("key provider `{provider}`: KEK version {version} ({name}) is not known to this host; the KMS holds {candidates}. If another host created it (`provider rotate` there prints its identifier), accept it here with `vmcryptfs provider accept {provider} {version} --uid UID`")]
    KekVersionNotAccepted {
        /// Provider name.
        provider: String,
        /// The KEK version.
        version: u32,
        /// Its KMIP Name.
        name: String,
        /// The objects of that name on the KMS, described.
        candidates: String,
    },
    /// The KMS has no key of that name that this host may see.
    #[error("key provider `{provider}`: the KMS at {server} holds no key named {name} that this host's client identity may use: it was destroyed, or the KMS does not let this identity see it (hosts sharing VMs need a shared client identity or a KMS policy granting access; docs/KMIP.md)")]
    KmsKeyNotFound {
        /// Provider name.
        provider: String,
        /// HOST:PORT.
        server: String,
        /// The KMIP Name looked for.
        name: String,
    },
    /// A provider's configuration cannot be used.
    #[error("key provider `{provider}`: {reason}")]
    ProviderConfig {
        /// Provider name.
        provider: String,
        /// What is wrong, naming the file or setting.
        reason: String,
    },
    /// An I/O error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A holder of versioned KEKs that wraps and unwraps DEKs.
///
/// Implementations must make every state change durable before returning,
/// because a bundle may refer to a new KEK version as soon as `rotate`
/// returns.
pub trait KeyProvider: Send + Sync {
    /// The provider name recorded in bundles.
    fn name(&self) -> &str;

    /// The KEK that wraps new bundles now.
    fn current_kek(&self) -> Result<KekRef, ProviderError>;

    /// The KEK a re-key of a bundle now wrapped under `existing` moves it
    /// to. One provider: its current KEK. A set of providers keeps each VM
    /// with the provider that wraps it (see [`provider_set`]).
    fn current_kek_for(&self, existing: &KekRef) -> Result<KekRef, ProviderError> {
        let _ = existing;
        self.current_kek()
    }

    /// Wraps `dek` under the given KEK version, binding `aad`. Fails unless
    /// that version is active.
    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError>;

    /// Unwraps a DEK wrapped under `kek` with the same `aad`.
    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError>;

    /// All KEK versions with their states.
    fn list_versions(&self) -> Result<Vec<KekVersionInfo>, ProviderError>;

    /// Creates a new KEK version and makes it current (durably).
    fn rotate(&self) -> Result<KekRef, ProviderError>;

    /// Retires a version: it keeps unwrapping but no longer wraps. Refuses
    /// the current version; retiring a retired version does nothing.
    fn retire(&self, version: u32) -> Result<(), ProviderError>;

    /// Destroys a version's key material; bundles still wrapped under it
    /// can no longer be unlocked. Refuses the current version. This is the
    /// raw operation: callers check first that no bundle still uses the
    /// version (see `datastore::inventory`).
    fn destroy(&self, version: u32) -> Result<(), ProviderError>;

    /// This provider for one batch of wraps and unwraps (a re-key of every
    /// VM home), or `None` if it has no cheaper way than one operation at
    /// a time. A batch may keep what it fetched for a KEK version (the
    /// embedded store keeps the plaintext KEK, in a zeroizing type) until
    /// it is dropped, so it must be dropped when the batch ends; it sees
    /// the provider's state as of its first use of each version.
    fn batch(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn KeyProvider>> {
        None
    }

    /// This provider for a mount's unlocks, or `None` if it has no cheaper
    /// way than one operation each. It may keep what an unwrap fetched for
    /// a bounded time (the embedded store: the plaintext KEK for
    /// [`embedded::UNLOCK_KEK_TTL`]), so that many VMs unlocked together
    /// share one fetch; everything but unwrapping behaves as the provider
    /// itself, and its `batch` is the provider's.
    fn caching_unlocks(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn KeyProvider>> {
        None
    }

    /// Drops whatever this provider keeps from earlier operations (the
    /// KEKs of [`KeyProvider::caching_unlocks`]): the next unwrap asks the
    /// store. Nothing to drop by default.
    fn forget_cached(&self) {}
}
