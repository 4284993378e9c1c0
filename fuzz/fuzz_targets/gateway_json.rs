//! The gateway API body (`POST /api/v1/inbound`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = threadline::http::parse_inbound(data) {
        // What is accepted is within the documented limits.
        assert!(g.msg.text.len() <= threadline::http::MAX_TEXT_BYTES);
        assert!(!g.msg.from.is_empty());
    }
});
