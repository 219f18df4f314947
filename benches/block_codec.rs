//! Micro-benchmark of the block codec: sealing and opening 4 KiB blocks
//! and 1 MiB requests through `EncryptedFile`, the hot path of every read
//! and write. Run with `cargo bench --bench block_codec`; the reference
//! numbers are in docs/PERFORMANCE.md ("The block codec micro-benchmark"),
//! to catch regressions.

use std::collections::BTreeMap;
use std::sync::Arc;

use divan::counter::BytesCount;
use divan::Bencher;
use vmcryptfs::content::EncryptedFile;
use vmcryptfs::crypto::block_aead::{BlockAead, NONCE_LEN};
use vmcryptfs::crypto::keyring::VmKeyring;
use vmcryptfs::crypto::secret::{Dek, DerivedKey};
use vmcryptfs::format::content_layout::ContentLayout;

fn main() {
    divan::main();
}

#[divan::bench]
fn seal_4k(bencher: Bencher) {
    let aead = BlockAead::new(&DerivedKey::from_bytes([1; 32]));
    let plain = vec![0x5a; 4096];
    let mut out = Vec::with_capacity(4096 + 32);
    bencher.counter(BytesCount::new(4096usize)).bench_local(|| {
        out.clear();
        aead.seal_append(&[7; NONCE_LEN], b"aad", divan::black_box(&plain), &mut out);
    });
}

#[divan::bench]
fn open_4k(bencher: Bencher) {
    let aead = BlockAead::new(&DerivedKey::from_bytes([1; 32]));
    let mut sealed = Vec::new();
    aead.seal_append(&[7; NONCE_LEN], b"aad", &[0x5a; 4096], &mut sealed);
    let mut out = Vec::with_capacity(4096);
    bencher.counter(BytesCount::new(4096usize)).bench_local(|| {
        out.clear();
        aead.open_append(b"aad", divan::black_box(&sealed), &mut out)
            .unwrap();
    });
}

/// The same 4 KiB seal with RustCrypto's `aes-gcm` (the reference
/// implementation the unit tests compare against), to keep the reason for
/// AWS-LC on the hot path measurable in one harness.
#[divan::bench]
fn seal_4k_rustcrypto_reference(bencher: Bencher) {
    use aes_gcm::aead::array::Array;
    use aes_gcm::aead::consts::U16;
    use aes_gcm::aead::inout::InOutBuf;
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use aes_gcm::aes::Aes256;
    use aes_gcm::AesGcm;
    let cipher: AesGcm<Aes256, U16> = AesGcm::new(&Array::from([1; 32]));
    let plain = vec![0x5a; 4096];
    let mut out = vec![0; 4096];
    bencher.counter(BytesCount::new(4096usize)).bench_local(|| {
        let buffer = InOutBuf::new(divan::black_box(&plain[..]), &mut out[..]).unwrap();
        cipher
            .encrypt_inout_detached(&Array::from([7; NONCE_LEN]), b"aad", buffer)
            .unwrap()
    });
}

fn keyring() -> Arc<VmKeyring> {
    let mut deks = BTreeMap::new();
    deks.insert(1, Dek::from_bytes([9; 32]));
    Arc::new(VmKeyring::new([4; 16], 1, deks))
}

/// The content layer in content format `format` (1 or 2).
fn content(format: u16) -> EncryptedFile {
    EncryptedFile::new(
        keyring(),
        ContentLayout::from_format_version(format).expect("a known format"),
    )
}

/// A 1 MiB aligned write and read through the content layer, on a temp
/// file (page cache), as a FUSE request would do them, in both content
/// formats.
#[divan::bench(args = [1, 2])]
fn write_1m(bencher: Bencher, format: u16) {
    let file = tempfile::tempfile().unwrap();
    let enc = content(format);
    let data = vec![0x33; 1 << 20];
    enc.write(&file, 0, &data).unwrap();
    bencher
        .counter(BytesCount::new(1usize << 20))
        .bench_local(|| {
            enc.write(&file, 0, divan::black_box(&data)).unwrap();
        });
}

#[divan::bench(args = [1, 2])]
fn read_1m(bencher: Bencher, format: u16) {
    let file = tempfile::tempfile().unwrap();
    let enc = content(format);
    enc.write(&file, 0, &vec![0x33; 1 << 20]).unwrap();
    bencher
        .counter(BytesCount::new(1usize << 20))
        .bench_local(|| {
            divan::black_box(enc.read(&file, 0, 1 << 20).unwrap());
        });
}
