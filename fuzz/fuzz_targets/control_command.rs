//! The `.control` command parser must never panic and must keep its error
//! messages short, whatever is written to the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmcryptfs::control::command::{parse, ControlScope};

fuzz_target!(|data: &[u8]| {
    for scope in [ControlScope::VmHome, ControlScope::Datastore] {
        if let Err(err) = parse(scope, data) {
            assert!(err.to_string().len() < 300, "error messages stay short");
        }
    }
});
