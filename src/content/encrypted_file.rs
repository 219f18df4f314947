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

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use super::parallel::try_for_each_block;
use super::prefetch;
use super::range_lock::BlockRangeLock;
use super::read_ahead::{ReadAhead, ReadAheadState};
use super::read_around::{AroundRead, ReadAround, ReadAroundState};
use super::sealed_region::{self, SealedBlock, SealedBlockMut, SealedRegion};
use crate::crypto::block_aead::{BlockAead, NONCE_LEN, TAG_LEN};
use crate::crypto::kdf;
use crate::crypto::keyring::VmKeyring;
use crate::format::content_layout::ContentLayout;
use crate::format::file_header::{self, FileHeader, HeaderError, UnverifiedHeader};
use crate::format::offsets::{
    plain_len_of_block, plain_off_in_block, plain_off_to_block_no, plain_size_to_block_count,
    split_range_into_blocks, BlockSpan, PLAIN_BLOCK_LEN,
};

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

/// The header and content cipher of a non-empty file.
pub(super) struct FileKeys {
    header: FileHeader,
    aead: BlockAead,
}

impl FileKeys {
    fn derive(keyring: &VmKeyring, header: FileHeader) -> Result<Self, ContentError> {
        let dek = keyring
            .dek(header.dek_generation)
            .ok_or(ContentError::UnknownGeneration(header.dek_generation))?;
        let key = kdf::file_content_key(dek, keyring.vm_id(), &header.file_id);
        Ok(Self {
            header,
            aead: BlockAead::new(&key),
        })
    }

    /// AAD of one block: file id || block number.
    fn block_aad(&self, block_no: u64) -> [u8; 24] {
        let mut aad = [0u8; 24];
        aad[..16].copy_from_slice(&self.header.file_id);
        aad[16..].copy_from_slice(&block_no.to_be_bytes());
        aad
    }

    /// Seals one block into its stored form under a fresh `nonce`.
    fn seal_block(
        &self,
        block_no: u64,
        nonce: &[u8; NONCE_LEN],
        plain: &[u8],
        sealed: SealedBlockMut<'_>,
    ) {
        sealed.nonce.copy_from_slice(nonce);
        let tag: &mut [u8; TAG_LEN] = sealed.tag.try_into().expect("TAG_LEN bytes");
        self.aead.seal_detached(
            nonce,
            &self.block_aad(block_no),
            plain,
            sealed.ciphertext,
            tag,
        );
    }

    /// Opens one stored block into `plain` (as long as its ciphertext). A
    /// hole reads as zeros.
    pub(super) fn open_block(
        &self,
        block_no: u64,
        sealed: &SealedBlock<'_>,
        plain: &mut [u8],
    ) -> Result<(), ContentError> {
        if sealed.is_hole() {
            plain.fill(0);
            return Ok(());
        }
        self.aead
            .open_detached(
                &self.block_aad(block_no),
                sealed.nonce,
                sealed.ciphertext,
                sealed.tag,
                plain,
            )
            .map_err(|_| ContentError::BlockAuthentication { block_no })
    }

    /// Opens the part `span` of a block into `dest` (`span.len` bytes).
    fn open_span(
        &self,
        span: &BlockSpan,
        sealed: &SealedBlock<'_>,
        dest: &mut [u8],
    ) -> Result<(), ContentError> {
        let whole = sealed.ciphertext.len();
        if span.start_in_block == 0 && span.len == whole {
            return self.open_block(span.block_no, sealed, dest);
        }
        let mut plain = [0u8; PLAIN_BLOCK_LEN as usize];
        let plain = &mut plain[..whole];
        self.open_block(span.block_no, sealed, plain)?;
        let piece = plain
            .get(span.start_in_block..span.start_in_block + span.len)
            .ok_or(ContentError::BlockAuthentication {
                block_no: span.block_no,
            })?;
        dest.copy_from_slice(piece);
        Ok(())
    }
}

/// Cuts `buf` into consecutive pieces of the given lengths (which must add
/// up to at most `buf.len()`), lazily, so each piece can go to a different
/// thread without collecting them first.
fn pieces<'a>(
    buf: &'a mut [u8],
    lens: impl Iterator<Item = usize> + 'a,
) -> impl Iterator<Item = &'a mut [u8]> + 'a {
    let mut rest = buf;
    lens.map(move |len| {
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        piece
    })
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

/// Who a read is for, as far as what it brings in and counts is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// A reader's request that the kernel does not cache (direct I/O).
    Uncached,
    /// A reader's request through the kernel's page cache of the file.
    PageCache,
    /// A copy into the kernel's page cache that no reader asked for.
    Fill,
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

    /// Reads up to `len` plaintext bytes at `offset` (short at end of file).
    pub fn read(&self, backing: &File, offset: u64, len: u64) -> Result<Vec<u8>, ContentError> {
        let mut out = Vec::new();
        let n = self.read_into(backing, offset, len, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// [`EncryptedFile::read`] into the scratch buffer `out`: the plaintext
    /// is `out[..n]` for the returned `n`. `out` only ever grows, so a
    /// caller that reuses it across requests neither allocates nor zeroes
    /// it again (a fresh 1 MiB buffer per request costs page faults that
    /// show up in profiles). Large reads decrypt on every core.
    pub fn read_into(
        &self,
        backing: &File,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<usize, ContentError> {
        self.read_as(ReadKind::Uncached, backing, offset, len, out)
            .map(|(n, _)| n)
    }

    /// [`EncryptedFile::read_into`] for a read through the kernel's page
    /// cache of the file, which also returns the plaintext range worth
    /// copying into that cache now, if any (see
    /// [`ReadAroundState::fill_window`]; the caller copies it with
    /// [`EncryptedFile::read_fill`]).
    pub fn read_into_page_cache(
        &self,
        backing: &File,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(usize, Option<Range<u64>>), ContentError> {
        self.read_as(ReadKind::PageCache, backing, offset, len, out)
    }

    /// Starts reading the backing bytes of plaintext `range`, which
    /// [`EncryptedFile::read_fill`] will read later, so that several fills'
    /// disk reads overlap (the filler serves one at a time).
    pub fn start_reading_fill(&self, backing: &File, range: Range<u64>) {
        let span = self.layout.stored_span_starting_in(range);
        prefetch::start_reading(backing, span.start, span.end - span.start);
    }

    /// Reads `range` to copy it into the kernel's page cache: neither
    /// counted by nor bringing in anything for read-around or read-ahead,
    /// as no reader asked for it.
    pub fn read_fill(
        &self,
        backing: &File,
        range: Range<u64>,
        out: &mut Vec<u8>,
    ) -> Result<usize, ContentError> {
        let len = range.end.saturating_sub(range.start);
        self.read_as(ReadKind::Fill, backing, range.start, len, out)
            .map(|(n, _)| n)
    }

    fn read_as(
        &self,
        kind: ReadKind,
        backing: &File,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(usize, Option<Range<u64>>), ContentError> {
        let _size = self.size_lock.read().expect("size lock poisoned");
        let size = self.plain_size(backing)?;
        if offset >= size || len == 0 {
            return Ok((0, None));
        }
        let end = size.min(offset + len);
        let first = plain_off_to_block_no(offset);
        let last = plain_off_to_block_no(end - 1);
        let _blocks = self.blocks.lock(first, last, false);
        let keys = self.keys(backing)?;

        let region = SealedRegion::new(
            self.layout,
            first,
            last - first + 1,
            plain_len_of_block(last, size),
        );
        let (around, fill) = match kind {
            ReadKind::Uncached => {
                let around = AroundRead {
                    state: &self.read_around,
                    counted: true,
                    brings_in: true,
                };
                (Some(around), None)
            }
            ReadKind::PageCache => {
                let fill = self.read_around.fill_window(offset, end - offset, size);
                let around = AroundRead {
                    state: &self.read_around,
                    counted: self.read_around.counts_cached_read_at(offset),
                    brings_in: fill.is_none(),
                };
                (Some(around), fill)
            }
            ReadKind::Fill => (None, None),
        };
        let plain_len = (end - offset) as usize;
        let out = sized_scratch(out, plain_len);
        STORED_BUFFER
            .with_borrow_mut(|stored| {
                let stored = sized_scratch(stored, region.buffer_len());
                region.read(backing, stored, around)?;
                // After this request's own read, so that it does not wait
                // behind the next ones; before decrypting, which the disk
                // then overlaps.
                if kind != ReadKind::Fill {
                    self.start_reading_ahead(backing, offset, end, size);
                }
                let spans = || split_range_into_blocks(offset, end - offset);
                let work = spans()
                    .zip(region.blocks(stored))
                    .zip(pieces(out, spans().map(|span| span.len)));
                try_for_each_block(work, |((span, sealed), dest)| {
                    keys.open_span(&span, &sealed, dest)
                })
            })
            .inspect_err(|_| out.fill(0))?;
        Ok((plain_len, fill))
    }

    /// Tells the read-ahead stream about a read of `offset..end` (of a file
    /// of `size` bytes) and starts the backing reads it says to.
    fn start_reading_ahead(&self, backing: &File, offset: u64, end: u64, size: u64) {
        if let Some(ahead) = self.read_ahead.on_read(offset, end, size) {
            // The block a range starts inside of was in the range before
            // (or is this read's last): each byte once.
            let span = self.layout.stored_span_starting_in(ahead.clone());
            log::trace!("read-ahead of plaintext {ahead:?}: backing {span:?}");
            prefetch::start_reading(backing, span.start, span.end - span.start);
            self.read_ahead.count_started(span.end - span.start);
        }
    }

    /// Writes `data` at `offset`, extending the file if needed.
    pub fn write(&self, backing: &File, offset: u64, data: &[u8]) -> Result<(), ContentError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        {
            let _size = self.size_lock.read().expect("size lock poisoned");
            let size = self.plain_size(backing)?;
            if end <= size {
                let first = plain_off_to_block_no(offset);
                let last = plain_off_to_block_no(end - 1);
                let _blocks = self.blocks.lock(first, last, true);
                let keys = self.keys(backing)?;
                return self.write_blocks(backing, &keys, offset, data, size);
            }
        }
        self.check_reachable(end)?;
        let _size = self.size_lock.write().expect("size lock poisoned");
        let Sizes {
            stored,
            plain: size,
        } = self.sizes(backing)?;
        let keys = if size == 0 {
            self.create_header(backing, stored)?
        } else {
            self.keys(backing)?
        };
        self.pad_last_block_before(backing, &keys, size, plain_off_to_block_no(offset))?;
        self.write_blocks(backing, &keys, offset, data, size)
    }

    /// Rewrites block `block_no` as authenticated zeros, whatever it holds
    /// now, without reading it (`vmcryptfs fsck --repair
    /// --zero-damaged-blocks`, for a block that fails authentication, so
    /// that the rest of the file can be read and a guest fsck take over).
    /// The header must authenticate. A block past the end is left alone:
    /// `Ok(false)`.
    pub fn rewrite_as_zeros(&self, backing: &File, block_no: u64) -> Result<bool, ContentError> {
        let _size = self.size_lock.write().expect("size lock poisoned");
        let size = self.plain_size(backing)?;
        if block_no >= plain_size_to_block_count(size) {
            return Ok(false);
        }
        let keys = self.keys(backing)?;
        let zeros = vec![0u8; plain_len_of_block(block_no, size) as usize];
        self.seal_and_store(backing, &keys, block_no, &[&zeros])?;
        Ok(true)
    }

    /// Sets the plaintext size, keeping the file sparse when it grows.
    pub fn truncate(&self, backing: &File, new_size: u64) -> Result<(), ContentError> {
        let _size = self.size_lock.write().expect("size lock poisoned");
        self.truncate_locked(backing, new_size)
    }

    /// [`EncryptedFile::truncate`] for a caller that holds `size_lock`
    /// exclusively.
    pub(super) fn truncate_locked(
        &self,
        backing: &File,
        new_size: u64,
    ) -> Result<(), ContentError> {
        let Sizes {
            stored,
            plain: size,
        } = self.sizes(backing)?;
        if new_size == size {
            return Ok(());
        }
        if new_size > size {
            self.check_reachable(new_size)?;
        }
        if new_size == 0 {
            backing.set_len(0)?;
            *self.keys.write().expect("keys lock poisoned") = None;
            return Ok(());
        }
        let keys = if size == 0 {
            self.create_header(backing, stored)?
        } else {
            self.keys(backing)?
        };
        if new_size < size {
            self.shrink(backing, &keys, size, new_size)
        } else {
            self.grow(backing, &keys, size, new_size)
        }
    }

    fn shrink(
        &self,
        backing: &File,
        keys: &FileKeys,
        size: u64,
        new_size: u64,
    ) -> Result<(), ContentError> {
        let tail = plain_off_in_block(new_size);
        if tail != 0 {
            let block_no = plain_off_to_block_no(new_size);
            let mut plain = self.read_block(backing, keys, block_no, size)?;
            plain.truncate(tail as usize);
            self.seal_and_store(backing, keys, block_no, &[&plain])?;
        }
        backing.set_len(self.layout.plain_size_to_cipher_size(new_size))?;
        Ok(())
    }

    fn grow(
        &self,
        backing: &File,
        keys: &FileKeys,
        size: u64,
        new_size: u64,
    ) -> Result<(), ContentError> {
        let new_last = plain_off_to_block_no(new_size - 1);
        self.pad_last_block_before(backing, keys, size, new_last)?;
        if size > 0 && plain_off_to_block_no(size - 1) == new_last {
            // Growth inside the old last block: rewrite it longer.
            let mut plain = self.read_block(backing, keys, new_last, size)?;
            plain.resize(plain_len_of_block(new_last, new_size) as usize, 0);
            return self.seal_and_store(backing, keys, new_last, &[&plain]);
        }
        let tail = plain_off_in_block(new_size);
        if tail == 0 {
            // Every new block is a full hole: just extend the backing file.
            self.clear_stale_slots(backing, new_last, new_last + 1)?;
            backing.set_len(self.layout.plain_size_to_cipher_size(new_size))?;
            Ok(())
        } else {
            let zeros = vec![0u8; tail as usize];
            self.seal_and_store(backing, keys, new_last, &[&zeros])
        }
    }

    /// Prepares a file of `size` bytes to be extended at `block_no`: pads a
    /// partial last block that lies before it to a full block, and clears
    /// stale slots of the blocks in between, so that the gap up to
    /// `block_no` is whole blocks that read as holes. Caller holds
    /// `size_lock` exclusively.
    fn pad_last_block_before(
        &self,
        backing: &File,
        keys: &FileKeys,
        size: u64,
        block_no: u64,
    ) -> Result<(), ContentError> {
        self.clear_stale_slots(backing, plain_size_to_block_count(size), block_no)?;
        if size == 0 || plain_off_in_block(size) == 0 {
            return Ok(());
        }
        let last = plain_off_to_block_no(size - 1);
        if last >= block_no {
            return Ok(());
        }
        let mut plain = self.read_block(backing, keys, last, size)?;
        plain.resize(PLAIN_BLOCK_LEN as usize, 0);
        self.seal_and_store(backing, keys, last, &[&plain])
    }

    /// Format 2: zeroes the slots of blocks `from..to`, which lie past the
    /// end of the file and are about to become holes inside it.
    ///
    /// Why: a block is a hole only if its slot is zero too. A slot past the
    /// end can still hold an old value, left by a shrink (which keeps the
    /// tag page of the new last group) or by a crash between the data and
    /// slot writes of an extending write. Only slots inside the backing
    /// file can be non-zero, so tag pages past its end are neither written
    /// (growing a file by 100 GiB allocates nothing) nor visited: the work
    /// is bounded by the backing file, not by `to`, which a caller chose.
    fn clear_stale_slots(&self, backing: &File, from: u64, to: u64) -> Result<(), ContentError> {
        if self.layout != ContentLayout::PageAligned || from >= to {
            return Ok(());
        }
        let stored_len = backing.metadata()?.len();
        sealed_region::zero_slots(backing, self.layout, from, to, stored_len)?;
        Ok(())
    }

    /// The plaintext of one existing block (empty if it lies past `size`).
    fn read_block(
        &self,
        backing: &File,
        keys: &FileKeys,
        block_no: u64,
        size: u64,
    ) -> Result<Vec<u8>, ContentError> {
        let plain_len = plain_len_of_block(block_no, size);
        let mut plain = Vec::with_capacity(PLAIN_BLOCK_LEN as usize);
        if plain_len == 0 {
            return Ok(plain);
        }
        let region = SealedRegion::new(self.layout, block_no, 1, plain_len);
        let mut stored = vec![0u8; region.buffer_len()];
        region.read(backing, &mut stored, None)?;
        plain.resize(plain_len as usize, 0);
        let sealed = region
            .blocks(&stored)
            .next()
            .expect("a region of one block");
        keys.open_block(block_no, &sealed, &mut plain)?;
        Ok(plain)
    }

    /// Seals consecutive blocks starting at `first_block` (on every core
    /// when there are many) and stores them with one write.
    fn seal_and_store(
        &self,
        backing: &File,
        keys: &FileKeys,
        first_block: u64,
        blocks: &[&[u8]],
    ) -> Result<(), ContentError> {
        let last_len = blocks.last().map_or(0, |plain| plain.len()) as u64;
        debug_assert!(
            blocks[..blocks.len() - 1]
                .iter()
                .all(|plain| plain.len() as u64 == PLAIN_BLOCK_LEN),
            "only the last block of a store can be short"
        );
        let region = SealedRegion::new(self.layout, first_block, blocks.len() as u64, last_len);
        // Before sealing, so the reads overlap the encryption.
        region.start_reading_partial_pages(backing);
        NONCE_BUFFER.with_borrow_mut(|nonces| {
            let nonces = sized_scratch(nonces, blocks.len() * NONCE_LEN);
            crate::crypto::random::fill(nonces);
            STORED_BUFFER.with_borrow_mut(|stored| {
                let stored = sized_scratch(stored, region.buffer_len());
                let work = (first_block..)
                    .zip(blocks)
                    .zip(nonces.chunks_exact(NONCE_LEN))
                    .zip(region.blocks_mut(stored));
                try_for_each_block(work, |(((block_no, plain), nonce), sealed)| {
                    let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("chunk of NONCE_LEN");
                    keys.seal_block(block_no, nonce, plain, sealed);
                    Ok::<(), std::convert::Infallible>(())
                })
                .unwrap_or_else(|never| match never {});
                region.write(backing, stored)
            })
        })?;
        Ok(())
    }

    /// Merges `data` (at plaintext `offset`) into the blocks it covers and
    /// stores them. Partial blocks are read, merged and re-sealed. Caller
    /// holds exclusive access to those blocks.
    pub(super) fn write_blocks(
        &self,
        backing: &File,
        keys: &FileKeys,
        offset: u64,
        data: &[u8],
        size: u64,
    ) -> Result<(), ContentError> {
        let spans: Vec<BlockSpan> = split_range_into_blocks(offset, data.len() as u64).collect();
        let mut merged: Vec<Vec<u8>> = Vec::new();
        let mut plains: Vec<&[u8]> = Vec::with_capacity(spans.len());
        let mut cursor = 0usize;
        // First pass: build merged copies of partial blocks.
        for span in &spans {
            if span.len != PLAIN_BLOCK_LEN as usize {
                let mut plain = self.read_block(backing, keys, span.block_no, size)?;
                let needed = span.start_in_block + span.len;
                if plain.len() < needed {
                    plain.resize(needed, 0);
                }
                plain[span.start_in_block..needed]
                    .copy_from_slice(&data[cursor..cursor + span.len]);
                merged.push(plain);
            }
            cursor += span.len;
        }
        // Second pass: full blocks borrow straight from `data`.
        let mut merged_iter = merged.iter();
        cursor = 0;
        for span in &spans {
            if span.len == PLAIN_BLOCK_LEN as usize {
                plains.push(&data[cursor..cursor + span.len]);
            } else {
                plains.push(
                    merged_iter
                        .next()
                        .expect("one merged block per partial span"),
                );
            }
            cursor += span.len;
        }
        self.seal_and_store(backing, keys, spans[0].block_no, &plains)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::Dek;
    use crate::format::content_layout::GROUP_BLOCKS;
    use crate::format::offsets::HEADER_LEN;
    use std::collections::BTreeMap;

    const LAYOUTS: [ContentLayout; 2] = [ContentLayout::Interleaved, ContentLayout::PageAligned];

    fn keyring() -> Arc<VmKeyring> {
        let mut deks = BTreeMap::new();
        deks.insert(1, Dek::from_bytes([9; 32]));
        Arc::new(VmKeyring::new([4; 16], 1, deks))
    }

    fn backing() -> File {
        tempfile::tempfile().unwrap()
    }

    /// Applies random operations to both an encrypted file and a plain
    /// `Vec<u8>` model, comparing the whole content after each one. Offsets
    /// and sizes spread over `span_blocks` blocks.
    fn random_operations_match_a_plain_model(layout: ContentLayout, span_blocks: u64, steps: u32) {
        let file = backing();
        let enc = EncryptedFile::new(keyring(), layout);
        let mut model: Vec<u8> = Vec::new();
        let mut seed = 0x1234_5678_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let span = span_blocks * 4096;
        for step in 0..steps {
            match next(10) {
                0..=5 => {
                    let offset = next(span + 100);
                    let len = next(3 * 4096 + 10) + 1;
                    let byte = (step % 250 + 1) as u8;
                    let data = vec![byte; len as usize];
                    enc.write(&file, offset, &data).unwrap();
                    let end = (offset + len) as usize;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                6..=7 => {
                    let new_size = next(span + 4096 + 50);
                    enc.truncate(&file, new_size).unwrap();
                    model.resize(new_size as usize, 0);
                }
                _ => {
                    let offset = next(span + 4096);
                    let len = next(9000);
                    let got = enc.read(&file, offset, len).unwrap();
                    let start = (offset as usize).min(model.len());
                    let stop = ((offset + len) as usize).min(model.len());
                    assert_eq!(got, model[start..stop], "{layout:?} step {step}");
                }
            }
            assert_eq!(
                enc.plain_size(&file).unwrap(),
                model.len() as u64,
                "{layout:?} step {step}"
            );
            let all = enc.read(&file, 0, model.len() as u64 + 10).unwrap();
            assert!(
                all == model,
                "{layout:?}: content differs after step {step}"
            );
        }
    }

    #[test]
    fn random_operations_within_a_few_blocks_match_a_plain_model() {
        for layout in LAYOUTS {
            random_operations_match_a_plain_model(layout, 5, 400);
        }
    }

    /// Across format 2 group boundaries, where shrinking keeps a tag page
    /// with old slots that a later growth must not read as data.
    #[test]
    fn random_operations_across_groups_match_a_plain_model() {
        for layout in LAYOUTS {
            random_operations_match_a_plain_model(layout, 2 * GROUP_BLOCKS + 10, 300);
        }
    }

    #[test]
    fn shrinking_then_growing_reads_zeros_past_the_old_end() {
        for layout in LAYOUTS {
            let file = backing();
            let enc = EncryptedFile::new(keyring(), layout);
            enc.write(&file, 0, &vec![3u8; 10 * 4096]).unwrap();
            enc.truncate(&file, 2 * 4096).unwrap();
            enc.truncate(&file, 10 * 4096).unwrap();
            let all = enc.read(&file, 0, 10 * 4096).unwrap();
            assert!(all[..2 * 4096].iter().all(|&b| b == 3), "{layout:?}");
            assert!(all[2 * 4096..].iter().all(|&b| b == 0), "{layout:?}");
            enc.truncate(&file, 4096).unwrap();
            enc.write(&file, 8 * 4096, b"x").unwrap();
            let all = enc.read(&file, 0, 8 * 4096 + 1).unwrap();
            assert!(all[4096..8 * 4096].iter().all(|&b| b == 0), "{layout:?}");
        }
    }

    #[test]
    fn growing_truncate_stays_sparse_and_reads_zeros() {
        for layout in LAYOUTS {
            let file = backing();
            let enc = EncryptedFile::new(keyring(), layout);
            enc.truncate(&file, 1 << 30).unwrap();
            assert_eq!(enc.plain_size(&file).unwrap(), 1 << 30);
            use std::os::unix::fs::MetadataExt;
            assert!(file.metadata().unwrap().blocks() * 512 < 1 << 20);
            assert_eq!(enc.read(&file, 12345, 10000).unwrap(), vec![0u8; 10000]);
        }
    }

    /// ext4's limit with 4 KiB blocks: what the mount probes on the
    /// machines the tests run on.
    const EXT4_MAX: u64 = (16 << 40) - 4096;

    fn is_efbig(result: Result<(), ContentError>) -> bool {
        matches!(result, Err(ContentError::Io(e)) if e.raw_os_error() == Some(libc::EFBIG))
    }

    /// Every byte of a backing file.
    fn stored_bytes(file: &File) -> Vec<u8> {
        let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    /// Extensions to sizes past what the backing file system holds fail at
    /// once with EFBIG and leave the file exactly as it was: same stored
    /// bytes, same size, same content. Format 2 with a stale tag page past
    /// the end, whose slots an extension clears first.
    #[test]
    fn extensions_past_the_backing_limit_fail_at_once_and_change_nothing() {
        for layout in LAYOUTS {
            let file = backing();
            let enc = EncryptedFile::new(keyring(), layout).with_max_stored_len(EXT4_MAX);
            enc.write(&file, 0, &vec![5u8; 300 * 4096 + 5]).unwrap();
            enc.truncate(&file, 4096 + 7).unwrap();
            let before = stored_bytes(&file);
            let started = std::time::Instant::now();
            let huge = [1u64 << 62, 2 << 50, 8 << 60, EXT4_MAX, i64::MAX as u64];
            for size in huge {
                assert!(is_efbig(enc.truncate(&file, size)), "{layout:?} -s {size}");
                assert!(
                    is_efbig(enc.write(&file, size - 1, b"x")),
                    "{layout:?} {size}"
                );
                assert!(is_efbig(enc.allocate(&file, size - 1, 1, false)));
                assert!(is_efbig(enc.allocate(&file, size - 1, 1, true)));
                assert!(is_efbig(enc.zero_range(&file, size - 1, 1, false)));
            }
            assert!(started.elapsed() < std::time::Duration::from_millis(100));
            let after = stored_bytes(&file);
            assert!(before == after, "{layout:?}: the backing file changed");
            assert_eq!(enc.plain_size(&file).unwrap(), 4096 + 7);
            // Within the limit, far past the end: works, and fast.
            let started = std::time::Instant::now();
            enc.truncate(&file, 8 << 40).unwrap();
            enc.write(&file, (8 << 40) + 10, b"end").unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
            assert_eq!(
                enc.read(&file, (8 << 40) - 2, 20).unwrap(),
                b"\0\0\0\0\0\0\0\0\0\0\0\0end"
            );
            assert_eq!(
                enc.read(&file, 0, 4096 + 8).unwrap()[4096..],
                [5, 5, 5, 5, 5, 5, 5, 0]
            );
        }
    }

    /// Without a known limit (a file system that cannot be probed), a huge
    /// extension still costs work in proportion to what the backing file
    /// holds: format 2's stale slots are cleared only inside it. The
    /// backing file system (ext4 here) refuses the size itself.
    #[test]
    fn growing_without_a_known_limit_visits_only_the_backing_file() {
        for layout in LAYOUTS {
            let file = backing();
            let enc = EncryptedFile::new(keyring(), layout);
            enc.write(&file, 0, &vec![6u8; 200 * 4096]).unwrap();
            enc.truncate(&file, 4096).unwrap();
            let started = std::time::Instant::now();
            // 4 EiB: 2^50 groups of tag pages to visit before the clamp.
            assert!(enc.truncate(&file, 4 << 60).is_err(), "{layout:?}");
            assert!(enc.write(&file, 1 << 50, b"x").is_err(), "{layout:?}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
            assert_eq!(enc.read(&file, 0, 8192).unwrap(), vec![6u8; 4096]);
        }
    }

    /// The backing offsets of every stored byte of block `block_no` (a
    /// full block): nonce, ciphertext and tag.
    fn stored_offsets(layout: ContentLayout, block_no: u64) -> Vec<u64> {
        let data = layout.block_data_off(block_no);
        match layout.block_slot_off(block_no) {
            Some(slot) => (data..data + 4096).chain(slot..slot + 32).collect(),
            None => (data..data + 4128).collect(),
        }
    }

    #[test]
    fn a_flipped_nonce_ciphertext_or_tag_byte_fails_with_the_block_number() {
        for layout in LAYOUTS {
            let file = backing();
            let enc = EncryptedFile::new(keyring(), layout);
            enc.write(&file, 0, &vec![7u8; 3 * 4096]).unwrap();
            let offsets = stored_offsets(layout, 1);
            // Nonce, first and last ciphertext bytes, tag.
            let data = layout.block_data_off(1);
            let probes = [
                offsets[0],
                offsets[20],
                offsets[4095],
                *offsets.last().unwrap(),
                data + 100,
            ];
            for off in probes {
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, off).unwrap();
                file.write_all_at(&[byte[0] ^ 1], off).unwrap();
                let fresh = EncryptedFile::new(keyring(), layout);
                assert_eq!(fresh.read(&file, 0, 4096).unwrap(), vec![7u8; 4096]);
                match fresh.read(&file, 4096, 10) {
                    Err(ContentError::BlockAuthentication { block_no: 1 }) => {}
                    other => {
                        panic!("{layout:?} offset {off}: expected block 1 failure, got {other:?}")
                    }
                }
                file.write_all_at(&byte, off).unwrap();
            }
        }
    }

    #[test]
    fn swapped_blocks_fail() {
        for layout in LAYOUTS {
            let file = backing();
            let enc = EncryptedFile::new(keyring(), layout);
            enc.write(&file, 0, &[1u8; 4096]).unwrap();
            enc.write(&file, 4096, &[2u8; 4096]).unwrap();
            enc.write(&file, 8192, &[3u8; 4096]).unwrap();
            let read_all = |offsets: &[u64]| -> Vec<u8> {
                offsets
                    .iter()
                    .map(|&o| {
                        let mut b = [0u8];
                        file.read_exact_at(&mut b, o).unwrap();
                        b[0]
                    })
                    .collect()
            };
            let (o0, o1) = (stored_offsets(layout, 0), stored_offsets(layout, 1));
            let (b0, b1) = (read_all(&o0), read_all(&o1));
            for (o, b) in o0.iter().zip(&b1).chain(o1.iter().zip(&b0)) {
                file.write_all_at(&[*b], *o).unwrap();
            }
            let fresh = EncryptedFile::new(keyring(), layout);
            assert!(fresh.read(&file, 0, 10).is_err(), "{layout:?}");
            assert!(fresh.read(&file, 4096, 10).is_err(), "{layout:?}");
            assert_eq!(fresh.read(&file, 8192, 1).unwrap(), [3], "{layout:?}");
        }
    }

    #[test]
    fn header_tamper_and_wrong_keyring_fail() {
        for layout in LAYOUTS {
            let file = backing();
            EncryptedFile::new(keyring(), layout)
                .write(&file, 0, b"secret")
                .unwrap();
            let mut other = BTreeMap::new();
            other.insert(1, Dek::from_bytes([8; 32]));
            let wrong = Arc::new(VmKeyring::new([4; 16], 1, other));
            assert!(matches!(
                EncryptedFile::new(wrong, layout).read(&file, 0, 6),
                Err(ContentError::Header(HeaderError::MacMismatch))
            ));
            file.write_all_at(&[0, 0, 0, 2], 8).unwrap();
            assert!(matches!(
                EncryptedFile::new(keyring(), layout).read(&file, 0, 6),
                Err(ContentError::UnknownGeneration(2))
            ));
        }
    }

    /// A backing file can hold a header and no data (a crash between the
    /// header's write and the first block's; in format 2 also with its
    /// first tag page and stale slots). The first write gives it a new
    /// header (a new file id), and the blocks before it read as a hole.
    #[test]
    fn a_header_without_data_is_replaced_by_the_first_write() {
        for layout in LAYOUTS {
            let stale_lens = match layout {
                ContentLayout::Interleaved => vec![HEADER_LEN],
                ContentLayout::PageAligned => vec![HEADER_LEN, 4096],
            };
            for stale_len in stale_lens {
                let file = backing();
                EncryptedFile::new(keyring(), layout)
                    .write(&file, 0, &[7u8; 5000])
                    .unwrap();
                file.set_len(stale_len).unwrap();
                let mut old_header = [0u8; HEADER_LEN as usize];
                file.read_exact_at(&mut old_header, 0).unwrap();
                let enc = EncryptedFile::new(keyring(), layout);
                assert_eq!(enc.plain_size(&file).unwrap(), 0, "{layout:?} {stale_len}");
                // Past the stale blocks, which must read as the hole they now are.
                enc.write(&file, 9000, b"fresh").unwrap();
                let mut new_header = [0u8; HEADER_LEN as usize];
                file.read_exact_at(&mut new_header, 0).unwrap();
                assert_ne!(old_header, new_header, "{layout:?} {stale_len}");
                let reopened = EncryptedFile::new(keyring(), layout);
                assert_eq!(reopened.plain_size(&file).unwrap(), 9005);
                let mut expected = vec![0u8; 9000];
                expected.extend_from_slice(b"fresh");
                assert_eq!(reopened.read(&file, 0, 10_000).unwrap(), expected);
            }
        }
    }

    #[test]
    fn a_file_in_the_other_content_format_is_refused() {
        let file = backing();
        EncryptedFile::new(keyring(), ContentLayout::PageAligned)
            .write(&file, 0, b"secret")
            .unwrap();
        let err = EncryptedFile::new(keyring(), ContentLayout::Interleaved)
            .read(&file, 0, 6)
            .unwrap_err();
        assert!(
            matches!(err, ContentError::FormatMismatch { file: 2, vm: 1 }),
            "{err:?}"
        );
        assert!(err.is_authentication_failure());
    }

    /// Format 2's reason to exist: a block rewrite stores whole,
    /// page-aligned backing pages plus one slot.
    #[test]
    fn page_aligned_blocks_fill_whole_backing_pages() {
        let file = backing();
        let enc = EncryptedFile::new(keyring(), ContentLayout::PageAligned);
        enc.write(&file, 0, &vec![1u8; 3 * 4096]).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4 * 4096);
        enc.write(&file, 3 * 4096, b"abc").unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4 * 4096 + 3);
        assert_eq!(enc.plain_size(&file).unwrap(), 3 * 4096 + 3);
    }

    #[test]
    fn concurrent_writers_of_different_and_same_blocks() {
        for layout in LAYOUTS {
            let file = Arc::new(backing());
            let enc = Arc::new(EncryptedFile::new(keyring(), layout));
            enc.truncate(&file, 64 * 4096).unwrap();
            let threads: Vec<_> = (0..4u8)
                .map(|t| {
                    let (file, enc) = (file.clone(), enc.clone());
                    std::thread::spawn(move || {
                        for round in 0..50u64 {
                            // Each thread owns bytes t*1000.. of every block: partial-block RMW
                            // on shared blocks must not lose other threads' bytes.
                            let block = round % 64;
                            let offset = block * 4096 + t as u64 * 1000;
                            enc.write(&file, offset, &[t + 1; 1000]).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let all = enc.read(&file, 0, 64 * 4096).unwrap();
            for block in 0..50u64 {
                for t in 0..4u8 {
                    let start = (block * 4096 + t as u64 * 1000) as usize;
                    assert!(
                        all[start..start + 1000].iter().all(|&b| b == t + 1),
                        "{layout:?} block {block} thread {t}"
                    );
                }
            }
        }
    }
}
