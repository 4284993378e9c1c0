//! The config file (TOML): parse, then validate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = threadline::config::Config::parse(text) {
        let _ = cfg.validate();
    }
});
