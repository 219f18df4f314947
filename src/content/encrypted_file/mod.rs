//! Per-inode state of an encrypted file and the block algorithms.
//!
//! Locking rules, outermost first:
//! 1. `size_lock`: shared by reads and by writes that stay inside the
//!    current size; exclusive for anything that changes the size or the
//!    header (extending writes, truncate). Holding it shared means the size
//!    and header cannot change underneath.
//! 2. `blocks`: a range lock on block numbers, taken under a shared
//!    `size_lock`: readers shared, writers exclusive on exactly the blocks
//!    they touch. Under an exclusive `size_lock` no block lock is needed.
//!
//! So writes to different blocks of one file run in parallel, and the
//! read-modify-write of a partial block never races another writer of that
//! block.
//!
//! The module's files follow its seams, as gocryptfs's `contentenc` keeps
//! blocks apart from the FUSE layer:
//! - [`file_keys`]: a file's header and content cipher; sealing and opening
//!   one block (the only place a block's AAD is built);
//! - `read_path`: reads, for readers, the page cache and fills, and what
//!   they start reading around and ahead;
//! - `write_path`: writes, truncation, and the read-modify-write of partial
//!   blocks;
//! - this file: the per-inode state, its locks, sizes and header.

mod file_keys;
mod read_path;
#[cfg(test)]
mod tests;
mod write_path;

pub(super) use file_keys::FileKeys;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use crate::content::range_lock::BlockRangeLock;
use crate::content::read_ahead::{ReadAhead, ReadAheadState};
use crate::content::read_around::{ReadAround, ReadAroundState};
use crate::crypto::kdf;
use crate::crypto::keyring::VmKeyring;
use crate::format::content_layout::ContentLayout;
use crate::format::file_header::{self, FileHeader, HeaderError, UnverifiedHeader};

/// What went wrong with an encrypted file. The frontend maps every variant
/// to EIO (or the OS error) and logs it with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The backing file could not be read or written.
    #[error("I/O error on backing file: {0}")]
    Io(#[from] io::Error),
    /// The header did not parse or authenticate.
    #[error("{0}")]
    Header(#[from] HeaderError),
    /// The header names a DEK generation the bundle does not hold.
    #[error("file is encrypted under DEK generation {0}, which the VM's key bundle does not hold")]
    UnknownGeneration(u32),
    /// A block failed GCM authentication.
    #[error("block {block_no} failed authentication (modified, moved or truncated ciphertext)")]
    BlockAuthentication {
        /// The block number.
        block_no: u64,
    },
    /// The stored size ends in a fragment too short to be a block.
    #[error("ciphertext ends in a {0}-byte fragment: the file was truncated inside a block")]
    TrailingFragment(u64),
    /// The header's content format is not the one the VM's bundle names.
    #[error("file is stored in content format {file}, but its VM home's key bundle says every file uses format {vm}")]
    FormatMismatch {
        /// The format the file header names.
        file: u16,
        /// The format the key bundle names.
        vm: u16,
    },
}

impl ContentError {
    /// Whether ciphertext or a header failed authentication (tampering,
    /// corruption or a wrong key), as opposed to an I/O error.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            ContentError::BlockAuthentication { .. }
                | ContentError::Header(_)
                | ContentError::FormatMismatch { .. }
        )
    }
}

thread_local! {
    /// Per-thread buffer for ciphertext on its way to or from the backing
    /// file. FUSE worker threads reuse it across requests, so a 1 MiB
    /// request does not allocate (and page-fault in) a fresh buffer. Never
    /// borrowed twice: `read_into` and `seal_and_store` do not call each
    /// other.
    static STORED_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer for the fresh nonces of one store, drawn with one
    /// call to the OS CSPRNG; reused like `STORED_BUFFER`.
    static NONCE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `buf` resized to exactly `len` bytes, growing (zero-filled) only when it
/// is too short, so reuse does not re-zero.
fn sized_scratch(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// Shared state of one open encrypted inode. All handles of the inode (and
/// all hard links to it) share one `EncryptedFile`.
pub struct EncryptedFile {
    /// The VM's DEKs; immutable, shared with the VM's key cache.
    keyring: Arc<VmKeyring>,
    /// The VM's content format (from its key bundle); immutable. Every
    /// header of the file must name it.
    layout: ContentLayout,
    /// See the module docs: shared for in-size I/O, exclusive for size and
    /// header changes.
    pub(super) size_lock: RwLock<()>,
    /// Block-range lock; only taken while holding `size_lock` shared.
    pub(super) blocks: BlockRangeLock,
    /// Header and cipher, loaded on first use. `None` while the file is
    /// empty. Replaced only under an exclusive `size_lock`; read under either.
    keys: RwLock<Option<Arc<FileKeys>>>,
    /// What a read that misses the backing page cache brings in (the
    /// mount's `read_around` option and, when adaptive, what this file's
    /// reads have shown); internally synchronized.
    read_around: ReadAroundState,
    /// How far ahead of a sequential reader backing reads are started, and
    /// where the file's stream of large reads stands; internally
    /// synchronized.
    read_ahead: ReadAheadState,
    /// The largest backing file the backing file system accepts (see
    /// `datastore::file_size_limit`); immutable. An extension whose stored
    /// size would pass it fails with EFBIG before anything is written.
    max_stored_len: u64,
}

/// A backing file's length and the plaintext size it stores.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    stored: u64,
    plain: u64,
}

/// The mount's settings for what reads of encrypted files bring in beyond
/// what they ask for. Immutable once a mount starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSettings {
    /// Around cold small reads (the `read_around` option).
    pub around: ReadAround,
    /// Ahead of sequential large reads (the `read_ahead` option).
    pub ahead: ReadAhead,
}

impl ReadSettings {
    /// Neither: every read brings in only what it asks for.
    pub const NONE: Self = Self {
        around: ReadAround::Off,
        ahead: ReadAhead::Off,
    };
    /// What a mount gets without the options.
    pub const DEFAULT: Self = Self {
        around: ReadAround::DEFAULT,
        ahead: ReadAhead::DEFAULT,
    };
}

impl EncryptedFile {
    /// State for one inode of a VM home whose files use `layout`, with the
    /// VM's keyring.
    pub fn new(keyring: Arc<VmKeyring>, layout: ContentLayout) -> Self {
        Self {
            keyring,
            layout,
            size_lock: RwLock::new(()),
            blocks: BlockRangeLock::default(),
            keys: RwLock::new(None),
            read_around: ReadAroundState::new(ReadSettings::NONE.around),
            read_ahead: ReadAheadState::new(ReadSettings::NONE.ahead),
            max_stored_len: i64::MAX as u64,
        }
    }

    /// The same state, for a backing file system that holds files of at
    /// most `max_stored_len` bytes.
    pub fn with_max_stored_len(self, max_stored_len: u64) -> Self {
        Self {
            max_stored_len,
            ..self
        }
    }

    /// EFBIG if a file of `new_size` plaintext bytes would be stored in a
    /// backing file longer than the backing file system accepts. Checked
    /// before an extension changes anything, so a size a caller chose
    /// beyond the limit costs one comparison and leaves the file as it was.
    pub(super) fn check_reachable(&self, new_size: u64) -> Result<(), ContentError> {
        if self.layout.plain_size_to_cipher_size(new_size) > self.max_stored_len {
            return Err(io::Error::from_raw_os_error(libc::EFBIG).into());
        }
        Ok(())
    }

    /// The same state, with reads that miss the backing page cache
    /// bringing in `settings.around`'s window (partial-block writes still
    /// read only their block), and sequential reads starting the backing
    /// reads `settings.ahead` of them.
    pub fn with_read_settings(self, settings: ReadSettings) -> Self {
        Self {
            read_around: ReadAroundState::new(settings.around),
            read_ahead: ReadAheadState::new(settings.ahead),
            ..self
        }
    }

    /// Read-around windows the file's reads brought in since the last call
    /// (see [`ReadAroundState::take_windows`]).
    pub fn take_read_around_windows(&self) -> u64 {
        self.read_around.take_windows()
    }

    /// Backing bytes whose reads sequential reads of the file started
    /// ahead of them since the last call (see [`super::read_ahead`]).
    pub fn take_read_ahead_bytes(&self) -> u64 {
        self.read_ahead.take_started_bytes()
    }

    /// The content format of the file.
    pub fn layout(&self) -> ContentLayout {
        self.layout
    }

    /// Plaintext size of the backing file.
    pub fn plain_size(&self, backing: &File) -> Result<u64, ContentError> {
        Ok(self.sizes(backing)?.plain)
    }

    /// The backing file's length and plaintext size, from one `fstat`.
    fn sizes(&self, backing: &File) -> Result<Sizes, ContentError> {
        let cipher_size = backing.metadata()?.len();
        let plain = self
            .layout
            .cipher_size_to_plain_size(cipher_size)
            .map_err(|f| {
                ContentError::TrailingFragment(
                    cipher_size
                        - self
                            .layout
                            .plain_size_to_cipher_size(f.plain_size_without_fragment)
                            .max(crate::format::offsets::HEADER_LEN),
                )
            })?;
        Ok(Sizes {
            stored: cipher_size,
            plain,
        })
    }

    /// Plaintext size for `stat` of a file of a VM home using `layout`: a
    /// trailing fragment is ignored (reads of it fail), as a size must
    /// always be reported.
    pub fn plain_size_for_stat(layout: ContentLayout, cipher_size: u64) -> u64 {
        layout
            .cipher_size_to_plain_size(cipher_size)
            .unwrap_or_else(|f| f.plain_size_without_fragment)
    }

    /// Loads (or returns the cached) header keys. Caller holds `size_lock`.
    pub(super) fn keys(&self, backing: &File) -> Result<Arc<FileKeys>, ContentError> {
        if let Some(keys) = self.keys.read().expect("keys lock poisoned").as_ref() {
            return Ok(keys.clone());
        }
        let mut raw = [0u8; file_header::LEN];
        backing.read_exact_at(&mut raw, 0)?;
        let unverified = UnverifiedHeader::parse(&raw)?;
        let generation = unverified.dek_generation();
        let dek = self
            .keyring
            .dek(generation)
            .ok_or(ContentError::UnknownGeneration(generation))?;
        let mac_key = kdf::file_header_mac_key(dek, self.keyring.vm_id(), &unverified.file_id());
        let header = unverified.verify(&mac_key)?;
        if header.layout != self.layout {
            return Err(ContentError::FormatMismatch {
                file: header.layout.format_version(),
                vm: self.layout.format_version(),
            });
        }
        let keys = Arc::new(FileKeys::derive(&self.keyring, header)?);
        *self.keys.write().expect("keys lock poisoned") = Some(keys.clone());
        Ok(keys)
    }

    /// Writes a fresh header (new file id, current generation) into a
    /// backing file of `stored_len` bytes. Caller holds `size_lock`
    /// exclusively and the file holds no data.
    fn create_header(
        &self,
        backing: &File,
        stored_len: u64,
    ) -> Result<Arc<FileKeys>, ContentError> {
        let generation = self.keyring.current_generation();
        let header = FileHeader::new_random(generation, self.layout);
        let dek = self
            .keyring
            .dek(generation)
            .expect("keyring holds its current generation");
        let mac_key = kdf::file_header_mac_key(dek, self.keyring.vm_id(), &header.file_id);
        // A file without data can still hold an old header and tag page
        // (left by a crash between the header's write and the first
        // block's), which are cut. An empty file is not truncated: ext4
        // takes a truncation to 0 for the first half of replacing a file's
        // contents and writes the file back when it is closed
        // (`auto_da_alloc`), which would cost every newly created file a
        // writeback of its own (docs/PERFORMANCE.md, "New files are not
        // truncated").
        if stored_len != 0 {
            backing.set_len(0)?;
        }
        backing.write_all_at(&header.encode(&mac_key), 0)?;
        let keys = Arc::new(FileKeys::derive(&self.keyring, header)?);
        *self.keys.write().expect("keys lock poisoned") = Some(keys.clone());
        Ok(keys)
    }
}
