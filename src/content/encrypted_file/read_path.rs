//! The read path of an encrypted file: reads for readers (direct or
//! through the page cache) and for cache fills, and the backing reads
//! they start around and ahead.

use std::fs::File;
use std::ops::Range;

use super::{sized_scratch, ContentError, EncryptedFile, STORED_BUFFER};
use crate::content::parallel::try_for_each_block;
use crate::content::prefetch;
use crate::content::read_around::AroundRead;
use crate::content::sealed_region::SealedRegion;
use crate::format::offsets::{plain_len_of_block, plain_off_to_block_no, split_range_into_blocks};

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

impl EncryptedFile {
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
}
