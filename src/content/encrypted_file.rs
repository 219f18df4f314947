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
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use super::parallel::try_for_each_block;
use super::prefetch;
use super::range_lock::BlockRangeLock;
use crate::crypto::block_aead::{BlockAead, NONCE_LEN, OVERHEAD};
use crate::crypto::kdf;
use crate::crypto::keyring::VmKeyring;
use crate::format::file_header::{self, FileHeader, HeaderError, UnverifiedHeader};
use crate::format::offsets::{
    self, block_no_to_cipher_off, plain_len_of_block, plain_off_in_block, plain_off_to_block_no,
    split_range_into_blocks, BlockSpan, CIPHER_BLOCK_LEN, HEADER_LEN, PLAIN_BLOCK_LEN,
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
}

impl ContentError {
    /// Whether ciphertext or a header failed authentication (tampering,
    /// corruption or a wrong key), as opposed to an I/O error.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            ContentError::BlockAuthentication { .. } | ContentError::Header(_)
        )
    }

    /// The errno a FUSE reply should carry.
    pub fn errno(&self) -> i32 {
        match self {
            ContentError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
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

    /// Seals one block into `sealed` (`plain.len() + OVERHEAD` bytes).
    fn seal_block(&self, block_no: u64, nonce: &[u8; NONCE_LEN], plain: &[u8], sealed: &mut [u8]) {
        self.aead
            .seal_into(nonce, &self.block_aad(block_no), plain, sealed);
    }

    /// Opens one stored block into `plain` (`stored.len() - OVERHEAD`
    /// bytes). A full block of zero bytes is a hole and reads as zeros.
    fn open_block(
        &self,
        block_no: u64,
        stored: &[u8],
        plain: &mut [u8],
    ) -> Result<(), ContentError> {
        if is_hole(stored) {
            plain.fill(0);
            return Ok(());
        }
        self.aead
            .open_into(&self.block_aad(block_no), stored, plain)
            .map_err(|_| ContentError::BlockAuthentication { block_no })
    }

    /// Opens the part `span` of a block into `dest` (`span.len` bytes).
    fn open_span(
        &self,
        span: &BlockSpan,
        stored: &[u8],
        dest: &mut [u8],
    ) -> Result<(), ContentError> {
        let whole = stored.len().saturating_sub(OVERHEAD);
        if span.start_in_block == 0 && span.len == whole {
            return self.open_block(span.block_no, stored, dest);
        }
        let mut plain = [0u8; PLAIN_BLOCK_LEN as usize];
        let plain = plain
            .get_mut(..whole)
            .ok_or(ContentError::BlockAuthentication {
                block_no: span.block_no,
            })?;
        self.open_block(span.block_no, stored, plain)?;
        dest.copy_from_slice(&plain[span.start_in_block..span.start_in_block + span.len]);
        Ok(())
    }
}

/// Whether a stored block is a hole: a full cipher block of zero bytes.
/// The nonce is checked first, so a real block is rejected after 16 bytes.
fn is_hole(stored: &[u8]) -> bool {
    stored.len() as u64 == CIPHER_BLOCK_LEN
        && stored[..NONCE_LEN].iter().all(|&b| b == 0)
        && stored.iter().all(|&b| b == 0)
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
    /// See the module docs: shared for in-size I/O, exclusive for size and
    /// header changes.
    pub(super) size_lock: RwLock<()>,
    /// Block-range lock; only taken while holding `size_lock` shared.
    blocks: BlockRangeLock,
    /// Header and cipher, loaded on first use. `None` while the file is
    /// empty. Replaced only under an exclusive `size_lock`; read under either.
    keys: RwLock<Option<Arc<FileKeys>>>,
}

impl EncryptedFile {
    /// State for one inode, using the VM's keyring.
    pub fn new(keyring: Arc<VmKeyring>) -> Self {
        Self {
            keyring,
            size_lock: RwLock::new(()),
            blocks: BlockRangeLock::default(),
            keys: RwLock::new(None),
        }
    }

    /// Plaintext size of the backing file.
    pub fn plain_size(backing: &File) -> Result<u64, ContentError> {
        let cipher_size = backing.metadata()?.len();
        offsets::cipher_size_to_plain_size(cipher_size).map_err(|f| {
            ContentError::TrailingFragment(
                cipher_size
                    - offsets::plain_size_to_cipher_size(f.plain_size_without_fragment)
                        .max(HEADER_LEN),
            )
        })
    }

    /// Plaintext size for `stat`: a trailing fragment is ignored (reads of it
    /// fail), as a size must always be reported.
    pub fn plain_size_for_stat(cipher_size: u64) -> u64 {
        offsets::cipher_size_to_plain_size(cipher_size)
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
        let keys = Arc::new(FileKeys::derive(&self.keyring, header)?);
        *self.keys.write().expect("keys lock poisoned") = Some(keys.clone());
        Ok(keys)
    }

    /// Writes a fresh header (new file id, current generation). Caller holds
    /// `size_lock` exclusively and the file holds no data.
    fn create_header(&self, backing: &File) -> Result<Arc<FileKeys>, ContentError> {
        let generation = self.keyring.current_generation();
        let header = FileHeader::new_random(generation);
        let dek = self
            .keyring
            .dek(generation)
            .expect("keyring holds its current generation");
        let mac_key = kdf::file_header_mac_key(dek, self.keyring.vm_id(), &header.file_id);
        backing.set_len(0)?;
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
        let _size = self.size_lock.read().expect("size lock poisoned");
        let size = Self::plain_size(backing)?;
        if offset >= size || len == 0 {
            return Ok(0);
        }
        let end = size.min(offset + len);
        let first = plain_off_to_block_no(offset);
        let last = plain_off_to_block_no(end - 1);
        let _blocks = self.blocks.lock(first, last, false);
        let keys = self.keys(backing)?;

        let stored_start = block_no_to_cipher_off(first);
        let stored_end =
            offsets::plain_size_to_cipher_size(size).min(block_no_to_cipher_off(last + 1));
        let plain_len = (end - offset) as usize;
        let out = sized_scratch(out, plain_len);
        STORED_BUFFER
            .with_borrow_mut(|stored| {
                let stored = sized_scratch(stored, (stored_end - stored_start) as usize);
                backing.read_exact_at(stored, stored_start)?;
                let spans = || split_range_into_blocks(offset, end - offset);
                let work = spans()
                    .zip(stored.chunks(CIPHER_BLOCK_LEN as usize))
                    .zip(pieces(out, spans().map(|span| span.len)));
                try_for_each_block(work, |((span, chunk), dest)| {
                    keys.open_span(&span, chunk, dest)
                })
            })
            .inspect_err(|_| out.fill(0))?;
        Ok(plain_len)
    }

    /// Writes `data` at `offset`, extending the file if needed.
    pub fn write(&self, backing: &File, offset: u64, data: &[u8]) -> Result<(), ContentError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        {
            let _size = self.size_lock.read().expect("size lock poisoned");
            let size = Self::plain_size(backing)?;
            if end <= size {
                let first = plain_off_to_block_no(offset);
                let last = plain_off_to_block_no(end - 1);
                let _blocks = self.blocks.lock(first, last, true);
                let keys = self.keys(backing)?;
                return self.write_blocks(backing, &keys, offset, data, size);
            }
        }
        let _size = self.size_lock.write().expect("size lock poisoned");
        let size = Self::plain_size(backing)?;
        let keys = if size == 0 {
            self.create_header(backing)?
        } else {
            self.keys(backing)?
        };
        self.pad_last_block_before(backing, &keys, size, plain_off_to_block_no(offset))?;
        self.write_blocks(backing, &keys, offset, data, size)
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
        let size = Self::plain_size(backing)?;
        if new_size == size {
            return Ok(());
        }
        if new_size == 0 {
            backing.set_len(0)?;
            *self.keys.write().expect("keys lock poisoned") = None;
            return Ok(());
        }
        let keys = if size == 0 {
            self.create_header(backing)?
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
        backing.set_len(offsets::plain_size_to_cipher_size(new_size))?;
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
            backing.set_len(offsets::plain_size_to_cipher_size(new_size))?;
            Ok(())
        } else {
            let zeros = vec![0u8; tail as usize];
            self.seal_and_store(backing, keys, new_last, &[&zeros])
        }
    }

    /// If the file's last block is partial and lies before `block_no`, pads
    /// it to a full block, so that the gap up to `block_no` is whole blocks
    /// (holes). Caller holds `size_lock` exclusively.
    fn pad_last_block_before(
        &self,
        backing: &File,
        keys: &FileKeys,
        size: u64,
        block_no: u64,
    ) -> Result<(), ContentError> {
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
        let mut stored = vec![0u8; (plain_len + offsets::BLOCK_OVERHEAD) as usize];
        backing.read_exact_at(&mut stored, block_no_to_cipher_off(block_no))?;
        plain.resize(plain_len as usize, 0);
        keys.open_block(block_no, &stored, &mut plain)?;
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
        let mut nonces = vec![0u8; blocks.len() * NONCE_LEN];
        crate::crypto::random::fill(&mut nonces);
        STORED_BUFFER.with_borrow_mut(|stored| {
            let sealed_lens = blocks.iter().map(|plain| plain.len() + OVERHEAD);
            let stored_len: usize = sealed_lens.clone().sum();
            let stored_off = block_no_to_cipher_off(first_block);
            // Before sealing, so the reads overlap the encryption.
            prefetch::start_reading_partial_pages(backing, stored_off, stored_len as u64);
            let stored = sized_scratch(stored, stored_len);
            let work = (first_block..)
                .zip(blocks)
                .zip(nonces.chunks_exact(NONCE_LEN))
                .zip(pieces(stored, sealed_lens));
            try_for_each_block(work, |(((block_no, plain), nonce), sealed)| {
                let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("chunk of NONCE_LEN");
                keys.seal_block(block_no, nonce, plain, sealed);
                Ok::<(), std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
            backing.write_all_at(stored, stored_off)
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
    use std::collections::BTreeMap;

    fn keyring() -> Arc<VmKeyring> {
        let mut deks = BTreeMap::new();
        deks.insert(1, Dek::from_bytes([9; 32]));
        Arc::new(VmKeyring::new([4; 16], 1, deks))
    }

    fn backing() -> File {
        tempfile::tempfile().unwrap()
    }

    /// Applies random operations to both an encrypted file and a plain
    /// `Vec<u8>` model, comparing the whole content after each one.
    #[test]
    fn random_operations_match_a_plain_model() {
        let file = backing();
        let enc = EncryptedFile::new(keyring());
        let mut model: Vec<u8> = Vec::new();
        let mut seed = 0x1234_5678_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for step in 0..400 {
            match next(10) {
                0..=5 => {
                    let offset = next(5 * 4096 + 100);
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
                    let new_size = next(6 * 4096 + 50);
                    enc.truncate(&file, new_size).unwrap();
                    model.resize(new_size as usize, 0);
                }
                _ => {
                    let offset = next(6 * 4096);
                    let len = next(9000);
                    let got = enc.read(&file, offset, len).unwrap();
                    let start = (offset as usize).min(model.len());
                    let stop = ((offset + len) as usize).min(model.len());
                    assert_eq!(got, model[start..stop], "step {step}");
                }
            }
            assert_eq!(
                EncryptedFile::plain_size(&file).unwrap(),
                model.len() as u64,
                "step {step}"
            );
            let all = enc.read(&file, 0, model.len() as u64 + 10).unwrap();
            assert!(all == model, "content differs after step {step}");
        }
    }

    #[test]
    fn growing_truncate_stays_sparse_and_reads_zeros() {
        let file = backing();
        let enc = EncryptedFile::new(keyring());
        enc.truncate(&file, 1 << 30).unwrap();
        assert_eq!(EncryptedFile::plain_size(&file).unwrap(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(file.metadata().unwrap().blocks() * 512 < 1 << 20);
        assert_eq!(enc.read(&file, 12345, 10000).unwrap(), vec![0u8; 10000]);
    }

    #[test]
    fn tampered_block_fails_with_its_number() {
        let file = backing();
        let enc = EncryptedFile::new(keyring());
        enc.write(&file, 0, &vec![7u8; 3 * 4096]).unwrap();
        let off = block_no_to_cipher_off(1) + 100;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, off).unwrap();
        file.write_all_at(&[byte[0] ^ 1], off).unwrap();
        let fresh = EncryptedFile::new(keyring());
        assert_eq!(fresh.read(&file, 0, 4096).unwrap(), vec![7u8; 4096]);
        match fresh.read(&file, 4096, 10) {
            Err(ContentError::BlockAuthentication { block_no: 1 }) => {}
            other => panic!("expected block 1 failure, got {other:?}"),
        }
    }

    #[test]
    fn swapped_blocks_fail() {
        let file = backing();
        let enc = EncryptedFile::new(keyring());
        enc.write(&file, 0, &[1u8; 4096]).unwrap();
        enc.write(&file, 4096, &[2u8; 4096]).unwrap();
        let mut b0 = vec![0u8; CIPHER_BLOCK_LEN as usize];
        let mut b1 = vec![0u8; CIPHER_BLOCK_LEN as usize];
        file.read_exact_at(&mut b0, block_no_to_cipher_off(0))
            .unwrap();
        file.read_exact_at(&mut b1, block_no_to_cipher_off(1))
            .unwrap();
        file.write_all_at(&b1, block_no_to_cipher_off(0)).unwrap();
        file.write_all_at(&b0, block_no_to_cipher_off(1)).unwrap();
        assert!(EncryptedFile::new(keyring()).read(&file, 0, 10).is_err());
    }

    #[test]
    fn header_tamper_and_wrong_keyring_fail() {
        let file = backing();
        EncryptedFile::new(keyring())
            .write(&file, 0, b"secret")
            .unwrap();
        let mut other = BTreeMap::new();
        other.insert(1, Dek::from_bytes([8; 32]));
        let wrong = Arc::new(VmKeyring::new([4; 16], 1, other));
        assert!(matches!(
            EncryptedFile::new(wrong).read(&file, 0, 6),
            Err(ContentError::Header(HeaderError::MacMismatch))
        ));
        file.write_all_at(&[0, 0, 0, 2], 8).unwrap();
        assert!(matches!(
            EncryptedFile::new(keyring()).read(&file, 0, 6),
            Err(ContentError::UnknownGeneration(2))
        ));
    }

    #[test]
    fn concurrent_writers_of_different_and_same_blocks() {
        let file = Arc::new(backing());
        let enc = Arc::new(EncryptedFile::new(keyring()));
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
                    "block {block} thread {t}"
                );
            }
        }
    }
}
