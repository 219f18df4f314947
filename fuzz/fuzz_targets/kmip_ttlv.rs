//! The KMIP TTLV decoder reads bytes from the network: it must never panic
//! (nor allocate without bound), whatever it accepts must encode back to the
//! same bytes, and the response parser on top must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmcryptfs::keys::kmip::message::decode_response;
use vmcryptfs::keys::kmip::tags::operation;
use vmcryptfs::keys::kmip::ttlv::Item;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = Item::decode(data) {
        assert_eq!(item.encode(), data, "decode/encode must round-trip");
    }
    for op in [operation::DECRYPT, operation::GET, operation::LOCATE] {
        let _ = decode_response(data, op);
    }
});
