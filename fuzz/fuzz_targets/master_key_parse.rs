//! A `master.key` file of any content must never make the parser panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmcryptfs::keys::fuzzing::master_key_parse(data);
});
