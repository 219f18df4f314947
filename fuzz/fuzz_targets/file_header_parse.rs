//! The file header parser must never panic; verification with any key must
//! only ever accept headers it produced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmcryptfs::crypto::secret::DerivedKey;
use vmcryptfs::format::file_header::UnverifiedHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = UnverifiedHeader::parse(data) {
        let _ = header.dek_generation();
        let _ = header.file_id();
        let _ = header.layout();
        // A fixed key: random input must essentially never verify.
        let _ = header.verify(&DerivedKey::from_bytes([0x42; 32]));
    }
});
