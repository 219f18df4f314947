//! A key store backup (what `provider import` reads) must never make the
//! parser panic, and what parses re-encodes to one stable text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vmcryptfs::keys::fuzzing::backup_parse(text);
    }
});
