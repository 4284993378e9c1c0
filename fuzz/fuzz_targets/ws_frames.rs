//! WebSocket frames: the agent desktop's and the web-chat visitor's.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for answer in [
        threadline::http::agents::parse_frame(text).err(),
        threadline::http::webchat::parse_frame(text).err(),
    ]
    .into_iter()
    .flatten()
    {
        // Every refusal is an error frame the client can read.
        let v: serde_json::Value = serde_json::from_str(&answer).expect("error frames are JSON");
        assert_eq!(v["type"], "error");
    }
});
