//! An audit export (NDJSON) given to `threadline audit verify`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = threadline_actors::audit::verify(std::io::BufReader::new(data));
});
