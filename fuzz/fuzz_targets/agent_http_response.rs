//! The agent's HTTP/1.1 response reader on untrusted daemon bytes: heads, chunked,
//! length-delimited and read-to-end bodies, in reads of every size. Never a panic, never more
//! body than the limit.
#![no_main]

use agent_lite::daemon::http::{Framing, ResponseReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte picks the read size (1..=64), so split reads are explored too.
    let read_size = (data[0] as usize % 64) + 1;
    let head_request = data[0] & 0x80 != 0;
    let mut r = ResponseReader::new(std::io::Cursor::new(&data[1..])).with_read_size(read_size);
    for _ in 0..4 {
        let Ok(head) = r.read_head() else { return };
        let Ok(framing) = Framing::of(head_request, &head) else { return };
        let mut seen = 0usize;
        let limit = 1 << 20;
        if r.read_body(framing, limit, &mut |d| seen += d.len()).is_err() {
            return;
        }
        assert!(seen <= limit);
    }
});
