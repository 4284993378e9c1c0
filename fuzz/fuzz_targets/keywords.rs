//! The keyword normalizer and classifier (STOP/START/HELP in any guise).
#![no_main]
use libfuzzer_sys::fuzz_target;
use threadline_actors::consent::keywords::{normalize, Keywords};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = normalize(text);
    let k = Keywords::default();
    let _ = k.classify(text, None);
});
