//! Untrusted WebSocket frames: text envelopes and binary data frames must decode or fail
//! with a typed error, never panic; whatever decodes must re-encode and decode to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{decode_data_frame, Envelope};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let again = Envelope::decode(env.encode().as_bytes()).expect("re-encoded envelope decodes");
        assert_eq!(again, env);
    }
    let _ = decode_data_frame(data);
});
