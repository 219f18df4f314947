//! The key bundle parser must never panic, and whatever it accepts must
//! encode back to the same bytes (no two encodings of one bundle).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmcryptfs::format::bundle::KeyBundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = KeyBundle::parse(data) {
        let encoded = bundle.encode().expect("a parsed bundle re-encodes");
        assert_eq!(encoded, data, "parse/encode must round-trip");
        let _ = bundle.wrap_aad(bundle.current_generation);
    }
});
