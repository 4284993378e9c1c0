//! WhatsApp Cloud API notifications and X-Hub-Signature-256.
#![no_main]
use libfuzzer_sys::fuzz_target;
use threadline::whatsapp;

const SECRET: &str = "test_app_secret";

fuzz_target!(|data: &[u8]| {
    let sig = format!("sha256={}", whatsapp::signature(SECRET, data));
    assert!(whatsapp::verify(SECRET, data, &sig));
    let header = String::from_utf8_lossy(&data[..data.len().min(80)]);
    let _ = whatsapp::verify(SECRET, data, &header);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = whatsapp::parse(&v);
    }
});
