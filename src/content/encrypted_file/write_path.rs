//! The write path of an encrypted file: writes, truncation, and the
//! read-modify-write of partial blocks, under the locks the module docs of
//! `encrypted_file` describe.

use std::fs::File;

use super::{
    sized_scratch, ContentError, EncryptedFile, FileKeys, Sizes, NONCE_BUFFER, STORED_BUFFER,
};
use crate::content::parallel::try_for_each_block;
use crate::content::sealed_region::{self, SealedRegion};
use crate::crypto::block_aead::NONCE_LEN;
use crate::format::content_layout::ContentLayout;
use crate::format::offsets::{
    plain_len_of_block, plain_off_in_block, plain_off_to_block_no, plain_size_to_block_count,
    split_range_into_blocks, BlockSpan, PLAIN_BLOCK_LEN,
};

impl EncryptedFile {
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
    pub(in crate::content) fn truncate_locked(
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
    pub(in crate::content) fn write_blocks(
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
