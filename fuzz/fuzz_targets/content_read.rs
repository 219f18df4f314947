//! Reading an encrypted file whose stored bytes are arbitrary must never
//! panic, in either content format: every read, seek and size either
//! answers or fails with an error. This exercises the block layout
//! arithmetic (tag pages, slots, short last blocks, fragments) on stored
//! sizes and contents no writer produced.
#![no_main]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmcryptfs::content::{EncryptedFile, SeekTarget};
use vmcryptfs::crypto::keyring::VmKeyring;
use vmcryptfs::crypto::secret::Dek;
use vmcryptfs::format::content_layout::ContentLayout;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stored)) = data.split_first() else {
        return;
    };
    let layout = if control & 1 == 0 {
        ContentLayout::Interleaved
    } else {
        ContentLayout::PageAligned
    };
    let mut file = tempfile_in_memory();
    file.write_all(stored).unwrap();
    // Stretch the file so format 2's later groups are reached too.
    let stretch = u64::from(control >> 1) * 65_536;
    file.set_len(stored.len() as u64 + stretch).unwrap();

    let mut deks = BTreeMap::new();
    deks.insert(1, Dek::from_bytes([7; 32]));
    let content = EncryptedFile::new(Arc::new(VmKeyring::new([1; 16], 1, deks)), layout);
    let size = content.plain_size(&file).unwrap_or(0);
    for offset in [0, 1, 4095, 4096, size / 2, size.saturating_sub(1), size] {
        let _ = content.read(&file, offset, 9000);
        let _ = content.seek(&file, offset, SeekTarget::Data);
        let _ = content.seek(&file, offset, SeekTarget::Hole);
    }
});

/// An anonymous file in memory (memfd), so runs do not touch the disk.
fn tempfile_in_memory() -> std::fs::File {
    let fd = rustix::fs::memfd_create("content_read", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    std::fs::File::from(fd)
}
