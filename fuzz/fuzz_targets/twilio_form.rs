//! Twilio webhook bodies (form-encoded) and their X-Twilio-Signature.
#![no_main]
use libfuzzer_sys::fuzz_target;
use threadline::twilio;

const TOKEN: &str = "12345";
const PUBLIC: &str = "https://hooks.example.com";

fuzz_target!(|data: &[u8]| {
    let Ok(params) = twilio::parse_form(data) else {
        return;
    };
    let _ = twilio::param(&params, "Body");
    // The signature of what was parsed verifies; one of another path does not.
    let path = "/webhooks/twilio/sms";
    let sig = twilio::signature(TOKEN, &format!("{PUBLIC}{path}"), &params);
    assert!(twilio::verify(TOKEN, PUBLIC, path, &params, &sig));
    assert!(!twilio::verify(TOKEN, PUBLIC, "/webhooks/twilio/voice", &params, &sig));
    // Whatever the header says, checking it never panics.
    let header = String::from_utf8_lossy(data);
    let _ = twilio::verify(TOKEN, PUBLIC, path, &params, &header);
});
