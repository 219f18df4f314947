//! Unit tests of the encrypted file: random operations against a plain
//! model, tampering, sizes and concurrency.

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
