//! Arbitrary UTF-8 to `rendezvous_protocol::decode_client`: never panic, and never
//! echo an unbounded amount of the input back in the error message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendezvous_protocol::decode_client;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(e) = decode_client(text) {
        assert!(e.message.len() <= 1024, "error message of {} bytes", e.message.len());
        let _ = e.to_frame();
    }
});
