//! Offset arithmetic between plaintext and ciphertext, as small pure
//! functions (the gocryptfs `contentenc/offsets.go` discipline).
//!
//! Layout of an encrypted file: a [`HEADER_LEN`]-byte header, then blocks of
//! [`CIPHER_BLOCK_LEN`] bytes, each holding up to [`PLAIN_BLOCK_LEN`]
//! plaintext bytes. Only the last block may be short.

use crate::crypto::block_aead::OVERHEAD;

/// Plaintext bytes per block.
pub const PLAIN_BLOCK_LEN: u64 = 4096;
/// Stored bytes per block that are not plaintext (nonce and tag).
pub const BLOCK_OVERHEAD: u64 = OVERHEAD as u64;
/// Stored bytes of a full block.
pub const CIPHER_BLOCK_LEN: u64 = PLAIN_BLOCK_LEN + BLOCK_OVERHEAD;
/// Length of the file header.
pub const HEADER_LEN: u64 = 44;

/// The stored size ends in a fragment too short to be a block (1..=32 bytes
/// past the last whole block). The size without the fragment is carried so
/// callers can still report something sensible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailingFragment {
    /// Plaintext size of the whole blocks before the fragment.
    pub plain_size_without_fragment: u64,
}

/// Index of the block holding plaintext byte `offset`.
pub fn plain_off_to_block_no(offset: u64) -> u64 {
    offset / PLAIN_BLOCK_LEN
}

/// Offset of `offset` within its block.
pub fn plain_off_in_block(offset: u64) -> u64 {
    offset % PLAIN_BLOCK_LEN
}

/// Plaintext offset of the first byte of block `block_no`.
pub fn block_no_to_plain_off(block_no: u64) -> u64 {
    block_no * PLAIN_BLOCK_LEN
}

/// Stored offset of the first byte of block `block_no`.
pub fn block_no_to_cipher_off(block_no: u64) -> u64 {
    HEADER_LEN + block_no * CIPHER_BLOCK_LEN
}

/// Number of blocks needed for `plain_size` bytes.
pub fn plain_size_to_block_count(plain_size: u64) -> u64 {
    plain_size.div_ceil(PLAIN_BLOCK_LEN)
}

/// Plaintext length of block `block_no` in a file of `plain_size` bytes
/// (0 if the block lies past the end).
pub fn plain_len_of_block(block_no: u64, plain_size: u64) -> u64 {
    let start = block_no_to_plain_off(block_no);
    plain_size.saturating_sub(start).min(PLAIN_BLOCK_LEN)
}

/// Stored size of a file holding `plain_size` plaintext bytes.
pub fn plain_size_to_cipher_size(plain_size: u64) -> u64 {
    if plain_size == 0 {
        return 0;
    }
    let full_blocks = plain_size / PLAIN_BLOCK_LEN;
    let tail = plain_size % PLAIN_BLOCK_LEN;
    let tail_stored = if tail == 0 { 0 } else { tail + BLOCK_OVERHEAD };
    HEADER_LEN + full_blocks * CIPHER_BLOCK_LEN + tail_stored
}

/// Plaintext size of a file whose stored size is `cipher_size`.
///
/// A file of at most [`HEADER_LEN`] bytes holds no data (an empty file, or a
/// header whose first block was never written).
pub fn cipher_size_to_plain_size(cipher_size: u64) -> Result<u64, TrailingFragment> {
    if cipher_size <= HEADER_LEN {
        return Ok(0);
    }
    let body = cipher_size - HEADER_LEN;
    let full_blocks = body / CIPHER_BLOCK_LEN;
    let tail = body % CIPHER_BLOCK_LEN;
    let whole = full_blocks * PLAIN_BLOCK_LEN;
    match tail {
        0 => Ok(whole),
        t if t <= BLOCK_OVERHEAD => Err(TrailingFragment {
            plain_size_without_fragment: whole,
        }),
        t => Ok(whole + t - BLOCK_OVERHEAD),
    }
}

/// One block's share of a plaintext byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    /// The block.
    pub block_no: u64,
    /// First byte of the range within the block.
    pub start_in_block: usize,
    /// Bytes of the range within the block.
    pub len: usize,
}

/// Splits the plaintext range `[offset, offset + len)` into per-block spans,
/// in ascending block order. An empty range yields no spans.
pub fn split_range_into_blocks(offset: u64, len: u64) -> impl Iterator<Item = BlockSpan> {
    let end = offset + len;
    let first = plain_off_to_block_no(offset);
    let last_exclusive = if len == 0 {
        first
    } else {
        plain_off_to_block_no(end - 1) + 1
    };
    (first..last_exclusive).map(move |block_no| {
        let block_start = block_no_to_plain_off(block_no);
        let span_start = offset.max(block_start);
        let span_end = end.min(block_start + PLAIN_BLOCK_LEN);
        BlockSpan {
            block_no,
            start_in_block: (span_start - block_start) as usize,
            len: (span_end - span_start) as usize,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_mapping_round_trips_exhaustively_over_small_sizes() {
        let mut previous_cipher = 0;
        for plain in 0..=5 * PLAIN_BLOCK_LEN + 7 {
            let cipher = plain_size_to_cipher_size(plain);
            assert_eq!(
                cipher_size_to_plain_size(cipher),
                Ok(plain),
                "plain {plain}"
            );
            assert!(cipher >= previous_cipher, "monotonic at {plain}");
            if plain > 0 {
                assert!(cipher > previous_cipher, "strictly monotonic at {plain}");
            }
            previous_cipher = cipher;
        }
    }

    #[test]
    fn every_cipher_size_maps_to_a_plain_size_or_a_fragment() {
        for cipher in 0..=HEADER_LEN + 4 * CIPHER_BLOCK_LEN + 40 {
            match cipher_size_to_plain_size(cipher) {
                Ok(plain) => {
                    if cipher > HEADER_LEN {
                        assert_eq!(plain_size_to_cipher_size(plain), cipher, "cipher {cipher}");
                    } else {
                        assert_eq!(plain, 0);
                    }
                }
                Err(fragment) => {
                    let tail = (cipher - HEADER_LEN) % CIPHER_BLOCK_LEN;
                    assert!((1..=BLOCK_OVERHEAD).contains(&tail), "cipher {cipher}");
                    assert_eq!(
                        plain_size_to_cipher_size(fragment.plain_size_without_fragment)
                            .max(HEADER_LEN),
                        cipher - tail
                    );
                }
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(plain_size_to_cipher_size(1), HEADER_LEN + 1 + 32);
        assert_eq!(plain_size_to_cipher_size(4096), HEADER_LEN + 4128);
        assert_eq!(plain_size_to_cipher_size(4097), HEADER_LEN + 4128 + 33);
        assert_eq!(cipher_size_to_plain_size(HEADER_LEN), Ok(0));
        assert_eq!(cipher_size_to_plain_size(20), Ok(0));
        assert_eq!(block_no_to_cipher_off(2), HEADER_LEN + 2 * 4128);
        assert_eq!(plain_size_to_block_count(0), 0);
        assert_eq!(plain_size_to_block_count(4096), 1);
        assert_eq!(plain_size_to_block_count(4097), 2);
    }

    #[test]
    fn plain_len_of_block_matches_size() {
        for size in 0..3 * PLAIN_BLOCK_LEN + 5 {
            let total: u64 = (0..plain_size_to_block_count(size) + 1)
                .map(|b| plain_len_of_block(b, size))
                .sum();
            assert_eq!(total, size);
        }
    }

    #[test]
    fn block_spans_cover_the_range_exactly_exhaustive() {
        for offset in 0..2 * PLAIN_BLOCK_LEN + 3 {
            for len in [0, 1, 2, 4095, 4096, 4097, 8193] {
                let spans: Vec<_> = split_range_into_blocks(offset, len).collect();
                let mut cursor = offset;
                for span in &spans {
                    assert_eq!(
                        block_no_to_plain_off(span.block_no) + span.start_in_block as u64,
                        cursor
                    );
                    assert!(span.len > 0);
                    assert!(span.start_in_block + span.len <= PLAIN_BLOCK_LEN as usize);
                    cursor += span.len as u64;
                }
                assert_eq!(cursor, offset + len, "offset {offset} len {len}");
            }
        }
    }
}
