//! The date and time extractor and the other built-in understanding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use threadline_actors::flows::nlu;
use threadline_protocol::Timestamp;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // 2026-03-10T14:00:00Z, in a zone with DST.
    let now = Timestamp(1_773_151_200_000);
    let _ = nlu::when(text, now, chrono_tz::America::New_York);
    let _ = nlu::yes_no(text);
    let _ = nlu::name(text, true);
    let _ = nlu::email(text);
    let _ = threadline_actors::phone::find_in_text(text);
});
