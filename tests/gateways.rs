//! End-to-end tests of the channel gateways with real provider wire
//! formats: Twilio SMS, status and voice webhooks signed like Twilio signs
//! them, WhatsApp Cloud API notifications signed like Meta signs them, and
//! the web-chat WebSocket. Outbound texts reach a local fake Twilio.
//!
//! Over 800 lines on purpose: every file under `tests/` is its own test
//! binary, linked against the whole node, and the tests here share one
//! harness (node configs, waits, fake providers); one file per area keeps
//! CI's link time and that harness in one place. Each test reads alone.

mod common;

use std::time::Duration;

use common::fake_provider::{FakeTwilio, FakeWhatsapp, SID, TOKEN, WA_PHONE_ID, WA_TOKEN};
use common::webhooks::*;
use common::ws::*;
use common::*;
use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

const MORNING: &str = "2026-03-10T14:00:00Z";
const CUSTOMER: &str = "+15551234567";
const ACME_NUMBER: &str = "+15557654321";
const CLINIC_NUMBER: &str = "+15557650000";
const OWNER: &str = "+15550001111";
const APP_SECRET: &str = "test_app_secret";

fn config(twilio: &str, whatsapp: &str) -> String {
    format!(
        r#"
[server]
admin_token = "test-admin-token"
public_url = "{PUBLIC_URL}"

[providers]
retry_base_ms = 10

[providers.twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{twilio}"

[providers.whatsapp]
app_secret = "{APP_SECRET}"
verify_token = "verify-me"
access_token = "{WA_TOKEN}"
api_base = "{whatsapp}"

[[tenants]]
id = "acme"
name = "Acme Dental"
timezone = "America/New_York"
sms_numbers = ["{ACME_NUMBER}"]
whatsapp_phone_number_id = "{WA_PHONE_ID}"
owner_phone = "{OWNER}"
gateway_token = "gw-acme"
missed_call_text = "Sorry we missed your call! Text us here."

[[tenants]]
id = "clinic"
name = "Bright Clinic"
timezone = "America/New_York"
sms_numbers = ["{CLINIC_NUMBER}"]
owner_phone = "{OWNER}"
gateway_token = "gw-clinic"
voice_assistant = true

[[agents]]
id = "vera"
name = "Vera"
token = "agent-vera"
tenants = ["clinic"]
phone = "+15550003333"
capacity = {{ chat = 2, voice = 1 }}
"#
    )
}

struct Env {
    twilio: FakeTwilio,
    whatsapp: FakeWhatsapp,
    node: Node,
}

async fn start() -> Env {
    let twilio = FakeTwilio::start().await;
    let whatsapp = FakeWhatsapp::start().await;
    let node = Node::start_with_config(
        &config(&twilio.base, &whatsapp.base),
        &["--simulated-clock", MORNING],
    );
    Env {
        twilio,
        whatsapp,
        node,
    }
}

fn sms_params<'a>(
    sid: &'a str,
    from: &'a str,
    to: &'a str,
    body: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", SID),
        ("From", from),
        ("To", to),
        ("Body", body),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsStatus", "received"),
        ("ApiVersion", "2010-04-01"),
        ("FromCountry", "US"),
        ("FromState", "NY"),
    ]
}

fn call_params<'a>(sid: &'a str, from: &'a str, to: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CallSid", sid),
        ("AccountSid", SID),
        ("From", from),
        ("To", to),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
    ]
}

async fn conversation(node: &Node, tenant: &str, who: &str) -> Value {
    node.conversation_of(tenant, who)
        .await
        .unwrap_or_else(|| panic!("{who} has no conversation"))
}

/// Waits for the fake Twilio to have accepted a message with this body.
async fn texted(fake: &FakeTwilio, body: &str) -> std::collections::HashMap<String, String> {
    for _ in 0..500 {
        let found = fake
            .state
            .lock()
            .unwrap()
            .accepted
            .iter()
            .find(|(_, f)| f.get("Body").map(String::as_str) == Some(body))
            .map(|(_, f)| f.clone());
        if let Some(f) = found {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{body:?} never reached the fake Twilio");
}

#[test]
fn the_signing_helpers_match_the_published_vectors() {
    let params = [
        ("From", "+15551234567"),
        ("To", "+15557654321"),
        ("Body", "Hello"),
        ("MessageSid", "SM123"),
    ];
    assert_eq!(
        twilio_signature("12345", "https://example.com/webhooks/twilio/sms", &params),
        "Z5F7eJI8UI3tSdmo4x+GNuNuox8="
    );
    assert_ne!(
        twilio_signature("12345", "http://example.com/webhooks/twilio/sms", &params),
        "Z5F7eJI8UI3tSdmo4x+GNuNuox8="
    );
    assert_eq!(
        meta_signature(
            "test_app_secret",
            br#"{"object":"whatsapp_business_account","entry":[]}"#
        ),
        "sha256=dec6a680679a968e7e0319355b23599cbfc54502c0784668e9618baa0c633756"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_webhooks_with_a_bad_signature_get_403_and_store_nothing() {
    let env = start().await;
    let node = &env.node;
    let params = sms_params("SM1", CUSTOMER, ACME_NUMBER, "Hello");
    let body = form_body(&params).into_bytes();
    let path = "/webhooks/twilio/sms";
    let good = twilio_signature(TOKEN, &format!("{PUBLIC_URL}{path}"), &params);
    let wrong_secret = twilio_signature("not-the-token", &format!("{PUBLIC_URL}{path}"), &params);
    let wrong_scheme =
        twilio_signature(TOKEN, &format!("http://hooks.example.test{path}"), &params);
    let mut tampered = params.clone();
    tampered[5].1 = "Hello!";
    for (what, body, sig) in [
        ("no header", body.clone(), None),
        ("wrong secret", body.clone(), Some(wrong_secret.as_str())),
        (
            "a proxy changed the scheme",
            body.clone(),
            Some(wrong_scheme.as_str()),
        ),
        (
            "tampered body",
            form_body(&tampered).into_bytes(),
            Some(good.as_str()),
        ),
    ] {
        let (s, text) = node.twilio_raw(path, body, sig).await;
        assert_eq!(s, 403, "{what}: {text}");
        assert!(
            text.contains("\"forbidden\""),
            "{what}: a JSON error: {text}"
        );
    }
    assert!(node.conversation_of("acme", CUSTOMER).await.is_none());
    assert!(node.metric("threadline_webhooks_rejected_total").await >= 4.0);

    // Signed for the URL with its explicit default port: accepted, once.
    let with_port = twilio_signature(
        TOKEN,
        &format!("https://hooks.example.test:443{path}"),
        &params,
    );
    for _ in 0..2 {
        let (s, text) = node.twilio_raw(path, body.clone(), Some(&with_port)).await;
        assert_eq!(s, 200, "{text}");
        assert!(text.contains("<Response/>"), "TwiML: {text}");
    }
    let c = conversation(node, "acme", CUSTOMER).await;
    assert_eq!(
        texts(&c),
        vec!["Hello"],
        "a repeated webhook is recorded once"
    );

    // Parameters Twilio adds without notice are accepted and signed over.
    let mut more = sms_params("SM2", CUSTOMER, ACME_NUMBER, "Second");
    more.push(("AddOns", r#"{"status":"successful"}"#));
    more.push(("MediaUrl0", "https://api.twilio.com/media/ME1"));
    more.push(("MediaContentType0", "image/jpeg"));
    more[6].1 = "1"; // NumMedia
    let (s, text) = node.twilio(TOKEN, path, &more).await;
    assert_eq!(s, 200, "{text}");
    let c = conversation(node, "acme", CUSTOMER).await;
    let m = &c["messages"].as_array().unwrap()[1];
    assert_eq!(
        m["media"],
        json!(["https://api.twilio.com/media/ME1"]),
        "{m}"
    );
    // Twilio's Advanced Opt-Out classification is honoured even when our
    // own classifier would not read the words as a revocation.
    let mut hinted = sms_params("SM3", CUSTOMER, ACME_NUMBER, "ok bye for now");
    hinted.push(("OptOutType", "STOP"));
    assert_eq!(node.twilio(TOKEN, path, &hinted).await.0, 200);
    let (_, consent) = node
        .get_admin("/api/v1/tenants/acme/contacts/%2B15551234567/consent")
        .await;
    assert_eq!(consent["status"], "opted_out", "{consent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_calls_whatsapp_and_web_chat_are_one_conversation() {
    let env = start().await;
    let node = &env.node;
    let (s, _) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/sms",
            &sms_params(
                "SM10",
                CUSTOMER,
                ACME_NUMBER,
                "Do you have openings next week?",
            ),
        )
        .await;
    assert_eq!(s, 200);

    // The call rings the owner first, with a dial action to learn the outcome.
    let (s, twiml) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/voice",
            &call_params("CA10", CUSTOMER, ACME_NUMBER),
        )
        .await;
    assert_eq!(s, 200, "{twiml}");
    assert!(
        twiml.contains(r#"<Dial action="/webhooks/twilio/voice/dial-status""#),
        "{twiml}"
    );
    assert!(twiml.contains(&format!(">{OWNER}</Number>")), "{twiml}");
    // Nobody answered: a missed call, and the follow-up text goes out.
    let mut dial = call_params("CA10", CUSTOMER, ACME_NUMBER);
    dial.push(("DialCallStatus", "no-answer"));
    dial.push(("DialCallSid", "CA11"));
    let (s, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/dial-status", &dial)
        .await;
    assert_eq!(s, 200, "{twiml}");
    let sent = texted(&env.twilio, "Sorry we missed your call! Text us here.").await;
    assert_eq!(sent["To"], CUSTOMER);
    assert_eq!(sent["From"], ACME_NUMBER);
    // The same dial-status again changes nothing.
    node.twilio(TOKEN, "/webhooks/twilio/voice/dial-status", &dial)
        .await;

    // WhatsApp: wa_id is the same number without the plus.
    let wa = whatsapp_text(
        WA_PHONE_ID,
        "15551234567",
        "wamid.1",
        "Here on WhatsApp now",
        "Dana",
    );
    let (s, v) = node.whatsapp(APP_SECRET, &wa).await;
    assert_eq!(s, 200, "{v}");

    let c = conversation(node, "acme", CUSTOMER).await;
    assert_eq!(c["channels"], json!(["sms", "voice", "whatsapp"]), "{c}");
    let (_, m) = node.get_admin("/api/v1/tenants/acme/metrics").await;
    assert_eq!(
        (
            m["missed_calls"].as_u64(),
            m["missed_calls_recovered"].as_u64()
        ),
        (Some(1), Some(1)),
        "{m}"
    );
    assert_eq!(c["captured"]["name"], "Dana", "the WhatsApp profile name");
    let order: Vec<(String, String)> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("sms".into(), "Do you have openings next week?".into()),
            ("voice".into(), "[incoming call]".into()),
            ("voice".into(), "[missed call]".into()),
            (
                "sms".into(),
                "Sorry we missed your call! Text us here.".into()
            ),
            ("whatsapp".into(), "Here on WhatsApp now".into()),
        ],
        "{c}"
    );

    // A web-chat visitor who gives their number joins the conversation.
    let ws_url = node.url("/chat/ws?tenant=acme").replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    let visitor = hello["visitor"].as_str().unwrap().to_owned();
    ws.send(Frame::text(
        json!({"type": "message", "text": "Hi! I'd like to book", "id": "c1"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ack");
    ws.send(Frame::text(
        json!({"type": "message", "text": "my number is (555) 123-4567", "id": "c2"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ack");
    // A claim: a code goes to the number by SMS, and the visitor types it.
    let sent = next_json(&mut ws).await;
    assert_eq!(
        (sent["type"].as_str(), sent["phone"].as_str()),
        (Some("code_sent"), Some(CUSTOMER)),
        "{sent}"
    );
    let code = chat_code(node, "acme", CUSTOMER).await;
    ws.send(Frame::text(
        json!({"type": "message", "text": code, "id": "c3"}).to_string(),
    ))
    .await
    .unwrap();
    let linked = next_json(&mut ws).await;
    assert_eq!(linked["type"], "linked", "{linked}");
    assert_eq!(linked["phone"], CUSTOMER);
    assert_eq!(linked["conversation_id"], c["id"]);
    let c = conversation(node, "acme", CUSTOMER).await;
    assert_eq!(
        c["channels"],
        json!(["sms", "voice", "whatsapp", "webchat"]),
        "{c}"
    );
    let web = texts_where(&c, "channel", "webchat");
    assert_eq!(
        web,
        vec!["Hi! I'd like to book", "my number is (555) 123-4567"]
    );
    // The visitor's address now leads to the same conversation.
    let by_visitor = conversation(node, "acme", &visitor).await;
    assert_eq!(by_visitor["id"], c["id"]);
    // And the next text from the phone continues it.
    node.twilio(
        TOKEN,
        "/webhooks/twilio/sms",
        &sms_params("SM11", CUSTOMER, ACME_NUMBER, "Thursday works"),
    )
    .await;
    let c = conversation(node, "acme", CUSTOMER).await;
    assert_eq!(texts(&c).last().unwrap(), "Thursday works");
    drop(ws);

    // Reconnecting with the visitor id resumes the chat with its history.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}&visitor={visitor}"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["visitor"], visitor.as_str());
    let history = next_json(&mut ws).await;
    assert_eq!(history["type"], "history");
    assert_eq!(history["conversation_id"], c["id"]);
    let said: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        said,
        vec!["Hi! I'd like to book", "my number is (555) 123-4567"],
        "web chat shows web chat only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_voice_assistant_greets_with_what_the_customer_texted_and_transfers_warm() {
    let env = start().await;
    let node = &env.node;
    node.twilio(
        TOKEN,
        "/webhooks/twilio/sms",
        &sms_params(
            "SM20",
            CUSTOMER,
            CLINIC_NUMBER,
            "I need a cleaning next week",
        ),
    )
    .await;
    let (s, twiml) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/voice",
            &call_params("CA20", CUSTOMER, CLINIC_NUMBER),
        )
        .await;
    assert_eq!(s, 200, "{twiml}");
    assert!(
        twiml.contains(r#"action="/webhooks/twilio/voice/gather?turn=1""#)
            && twiml.contains(r#"<Gather input="speech dtmf""#),
        "{twiml}"
    );
    assert!(
        twiml.contains("You mentioned over text that &quot;I need a cleaning next week&quot;"),
        "the greeting uses what the conversation knows: {twiml}"
    );
    let mut turn = call_params("CA20", CUSTOMER, CLINIC_NUMBER);
    turn.push(("SpeechResult", "Tuesday morning if possible"));
    turn.push(("Confidence", "0.91"));
    let (_, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/gather?turn=1", &turn)
        .await;
    assert!(twiml.contains("gather?turn=2"), "{twiml}");
    let mut ask = call_params("CA20", CUSTOMER, CLINIC_NUMBER);
    ask.push(("SpeechResult", "Can I talk to a person please"));
    let (_, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/gather?turn=2", &ask)
        .await;
    assert!(
        twiml.contains(&format!(">{OWNER}</Number>")),
        "a transfer: {twiml}"
    );
    let c = conversation(node, "clinic", CUSTOMER).await;
    let whisper = format!(
        "/webhooks/twilio/voice/whisper?conversation={}",
        conv_number(&c)
    );
    assert!(
        twiml.contains(&format!("url=\"{}\"", whisper.replace('&', "&amp;"))),
        "{twiml}"
    );
    // The person answering hears the context first.
    let (s, said) = node
        .twilio(TOKEN, &whisper, &call_params("CA21", OWNER, CLINIC_NUMBER))
        .await;
    assert_eq!(s, 200, "{said}");
    assert!(said.contains("I need a cleaning next week"), "{said}");
    assert!(said.contains("Tuesday morning if possible"), "{said}");
    let customer_turns = texts_where(&c, "author", "customer");
    assert_eq!(
        customer_turns,
        vec![
            "I need a cleaning next week",
            "[incoming call]",
            "Tuesday morning if possible",
            "Can I talk to a person please"
        ]
    );
    assert_eq!(
        texts_where(&c, "author", "bot").len(),
        3,
        "greeting and two answers: {c}"
    );

    // "Stop calling me" in a speech turn is a revocation.
    let (_, twiml) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/voice",
            &call_params("CA30", CUSTOMER, CLINIC_NUMBER),
        )
        .await;
    assert!(twiml.contains("<Gather"), "{twiml}");
    let mut stop = call_params("CA30", CUSTOMER, CLINIC_NUMBER);
    stop.push(("SpeechResult", "please stop calling me"));
    let (_, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/gather?turn=1", &stop)
        .await;
    assert!(twiml.contains("<Hangup/>"), "{twiml}");
    let (_, consent) = node
        .get_admin("/api/v1/tenants/clinic/contacts/%2B15551234567/consent")
        .await;
    assert_eq!(consent["status"], "opted_out", "{consent}");
}

fn conv_number(c: &Value) -> u64 {
    let id: threadline_protocol::ConversationId = c["id"].as_str().unwrap().parse().unwrap();
    id.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callbacks_out_of_order_end_in_the_right_state() {
    let env = start().await;
    let node = &env.node;
    node.twilio(
        TOKEN,
        "/webhooks/twilio/sms",
        &sms_params("SM40", CUSTOMER, ACME_NUMBER, "Are you open Saturday?"),
    )
    .await;
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551234567/messages",
            Some(&json!({"text": "Yes, 9 to 1.", "purpose": "conversational"})),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    let sent = texted(&env.twilio, "Yes, 9 to 1.").await;
    let callback = sent["StatusCallback"].clone();
    let path = callback
        .strip_prefix(PUBLIC_URL)
        .expect("the callback is on the public URL");
    assert!(path.starts_with("/webhooks/twilio/status?c="), "{path}");
    let sid = wait_for_delivery(node, "Yes, 9 to 1.", |m| m["delivery"] == "sent").await
        ["provider_message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = |st: &'static str| {
        vec![
            ("MessageSid", sid.clone()),
            ("MessageStatus", st.to_owned()),
            ("AccountSid", SID.to_owned()),
            ("From", ACME_NUMBER.to_owned()),
            ("To", CUSTOMER.to_owned()),
            ("ApiVersion", "2010-04-01".to_owned()),
        ]
    };
    for st in ["delivered", "sent", "queued", "sent"] {
        let p = status(st);
        let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, _) = node.twilio(TOKEN, path, &p).await;
        assert_eq!(s, 200);
    }
    let m = wait_for_delivery(node, "Yes, 9 to 1.", |_| true).await;
    assert_eq!(
        m["delivery"], "delivered",
        "a late `sent` does not move it back: {m}"
    );
    let p = status("read");
    let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    node.twilio(TOKEN, path, &p).await;
    let m = wait_for_delivery(node, "Yes, 9 to 1.", |_| true).await;
    assert_eq!(m["delivery"], "read");

    // A later message fails because the carrier says the number opted out
    // (Twilio 21610): the message is failed and the ledger learns it.
    let (_, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551234567/messages",
            Some(&json!({"text": "Did you get our note?", "purpose": "conversational"})),
        )
        .await;
    assert_eq!(v["decision"], "sent", "{v}");
    let sent = texted(&env.twilio, "Did you get our note?").await;
    let path = sent["StatusCallback"]
        .strip_prefix(PUBLIC_URL)
        .unwrap()
        .to_owned();
    let sid = wait_for_delivery(node, "Did you get our note?", |m| m["delivery"] == "sent").await
        ["provider_message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "21610"),
        ("AccountSid", SID),
        ("From", ACME_NUMBER),
        ("To", CUSTOMER),
    ];
    assert_eq!(node.twilio(TOKEN, &path, &failed).await.0, 200);
    let m = wait_for_delivery(node, "Did you get our note?", |m| m["delivery"] == "failed").await;
    assert_eq!(m["delivery"], "failed");
    let (_, consent) = node
        .get_admin("/api/v1/tenants/acme/contacts/%2B15551234567/consent")
        .await;
    assert_eq!(consent["status"], "opted_out", "{consent}");
}

async fn wait_for_delivery(node: &Node, text: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let c = conversation(node, "acme", CUSTOMER).await;
        if let Some(m) = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["text"] == text)
        {
            if m["delivery"] != "queued" && done(m) {
                return m.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{text:?} never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_input_gets_clear_errors_and_never_crashes() {
    let env = start().await;
    let node = &env.node;
    // Invalid UTF-8 in a form: 400 before any signature is computed.
    let (s, text) = node
        .twilio_raw(
            "/webhooks/twilio/sms",
            b"Body=%FF%FE&From=x".to_vec(),
            Some("sig"),
        )
        .await;
    assert_eq!(s, 400, "{text}");
    // A body over the limit: 413.
    let huge = vec![b'a'; 200 * 1024];
    let (s, _) = node
        .twilio_raw("/webhooks/twilio/sms", huge, Some("sig"))
        .await;
    assert_eq!(s, 413);
    // Signed, but for a number no tenant owns: refused with a reason.
    let (s, text) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/sms",
            &sms_params("SM50", CUSTOMER, "+15559990000", "hello?"),
        )
        .await;
    assert_eq!(s, 404, "{text}");
    assert!(text.contains("unknown_number"), "{text}");
    // Signed, but `From` is not a phone number.
    let (s, text) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/sms",
            &sms_params("SM51", "not-a-phone", ACME_NUMBER, "hi"),
        )
        .await;
    assert_eq!(s, 400, "{text}");

    // WhatsApp: wrong signature, no signature, not the Meta shape, not JSON.
    let wa = whatsapp_text(WA_PHONE_ID, "15551234567", "wamid.9", "hi", "Dana");
    let bytes = wa.to_string().into_bytes();
    let (s, _) = node
        .whatsapp_raw(bytes.clone(), Some(&meta_signature("wrong", &bytes)))
        .await;
    assert_eq!(s, 403);
    let (s, _) = node.whatsapp_raw(bytes.clone(), None).await;
    assert_eq!(s, 403);
    let (s, v) = node.whatsapp(APP_SECRET, &json!({"hello": "world"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_notification")),
        "{v}"
    );
    let junk = b"{not json".to_vec();
    let (s, _) = node
        .whatsapp_raw(junk.clone(), Some(&meta_signature(APP_SECRET, &junk)))
        .await;
    assert_eq!(s, 400);
    assert!(
        node.conversation_of("acme", CUSTOMER).await.is_none(),
        "nothing stored"
    );
    // Duplicates: acknowledged, recorded once.
    for _ in 0..2 {
        assert_eq!(node.whatsapp(APP_SECRET, &wa).await.0, 200);
    }
    assert_eq!(
        texts(&conversation(node, "acme", CUSTOMER).await),
        vec!["hi"]
    );

    // Meta's verification handshake.
    let ok = node
        .http
        .get(node.url("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    let bad = node
        .http
        .get(
            node.url("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    assert_eq!(node.get_admin("/healthz").await.0, 200, "still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_chat_messages_flow_both_ways_and_bad_frames_get_error_frames() {
    let env = start().await;
    let node = &env.node;
    let url = node
        .url("/chat/ws?tenant=acme&visitor=visitor-42")
        .replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["visitor"], "visitor-42");
    ws.send(Frame::text("not json")).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_json"))
    );
    ws.send(Frame::text(r#"{"type": "dance"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "unknown_type");
    ws.send(Frame::text(r#"{"type": "message", "text": ""}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "invalid_field");
    // Still open: HELP gets the tenant's help text pushed in real time.
    ws.send(Frame::text(r#"{"type": "message", "text": "HELP"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ack");
    let help = next_json(&mut ws).await;
    assert_eq!(help["type"], "message", "{help}");
    assert_eq!(help["author"], "system");
    assert!(help["text"].as_str().unwrap().contains("STOP"), "{help}");
    // A business message on web chat reaches the open socket.
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/visitor-42/messages",
            Some(&json!({"text": "An agent will be with you shortly", "purpose": "conversational", "channel": "webchat"})),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["author"].as_str(), m["text"].as_str()),
        (Some("bot"), Some("An agent will be with you shortly"))
    );
    // An oversized frame breaks the protocol limit: error, then close.
    ws.send(Frame::text("x".repeat(64 * 1024))).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["code"], "protocol", "{e}");
    // Bad upgrade requests are refused with JSON errors.
    let r = node
        .http
        .get(node.url("/chat/ws?tenant=acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = node
        .http
        .get(node.url("/chat/ws?tenant=nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The widget page.
    let page = node
        .http
        .get(node.url("/chat?tenant=acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Acme Dental") && html.contains("/chat/ws"),
        "{html}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_message_on_the_voice_channel_places_a_twilio_call_that_says_it() {
    let env = start().await;
    let node = &env.node;
    // The customer agreed to be called (a web form): the basis a call
    // to a number that never contacted the business needs.
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551234567/consent",
            Some(
                &json!({"status": "opted_in", "channel": "voice", "purpose": "reminder",
                         "source": "web_form", "proof": "form 9"}),
            ),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551234567/messages",
            Some(&json!({"text": "Your appointment is tomorrow at 10", "purpose": "reminder", "channel": "voice"})),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    let call = loop {
        let c = env
            .twilio
            .state
            .lock()
            .unwrap()
            .accepted
            .iter()
            .find(|(_, f)| f["_resource"] == "Calls")
            .map(|(_, f)| f.clone());
        if let Some(c) = c {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (call["To"].as_str(), call["From"].as_str()),
        (CUSTOMER, ACME_NUMBER)
    );
    let path = call["Url"].strip_prefix(PUBLIC_URL).unwrap().to_owned();
    assert!(
        path.starts_with("/webhooks/twilio/voice/outbound?c="),
        "{path}"
    );
    // Twilio fetches the call's TwiML: it says the message.
    let mut p = call_params("CA60", ACME_NUMBER, CUSTOMER);
    p[5] = ("Direction", "outbound-api");
    let (s, twiml) = node.twilio(TOKEN, &path, &p).await;
    assert_eq!(s, 200, "{twiml}");
    assert!(
        twiml.contains("<Say>Your appointment is tomorrow at 10</Say>"),
        "{twiml}"
    );
    let _ = &env.whatsapp;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_asks_for_a_person_holds_until_an_agent_accepts_then_their_phone_rings() {
    let env = start().await;
    let node = &env.node;
    let url = node
        .url("/agent/ws?token=agent-vera")
        .replace("http://", "ws://");
    let (mut vera, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut vera).await["type"], "hello");
    vera.send(Frame::text(
        json!({"type": "status", "status": "available"}).to_string(),
    ))
    .await
    .unwrap();
    next_of(&mut vera, "status").await;
    node.twilio(
        TOKEN,
        "/webhooks/twilio/sms",
        &sms_params("SM70", CUSTOMER, CLINIC_NUMBER, "My crown came off"),
    )
    .await;
    node.twilio(
        TOKEN,
        "/webhooks/twilio/voice",
        &call_params("CA70", CUSTOMER, CLINIC_NUMBER),
    )
    .await;
    let mut ask = call_params("CA70", CUSTOMER, CLINIC_NUMBER);
    ask.push(("SpeechResult", "I need to speak to a human"));
    let (s, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/gather?turn=1", &ask)
        .await;
    assert_eq!(s, 200, "{twiml}");
    let hold = redirect_of(&twiml);
    assert!(
        hold.starts_with("/webhooks/twilio/voice/hold?conversation="),
        "{hold}"
    );
    // Still holding while nobody accepted.
    let (_, twiml) = node
        .twilio(TOKEN, &hold, &call_params("CA70", CUSTOMER, CLINIC_NUMBER))
        .await;
    assert!(
        twiml.contains("<Pause") && twiml.contains("<Redirect"),
        "{twiml}"
    );
    // Vera gets the offer with the call's transcript and accepts it.
    let offer = next_of(&mut vera, "offer").await;
    assert_eq!(offer["summary"]["current_channel"], "voice");
    let said: Vec<&str> = offer["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(
        said.contains(&"My crown came off") && said.contains(&"I need to speak to a human"),
        "{said:?}"
    );
    vera.send(Frame::text(
        json!({"type": "accept", "offer_id": offer["offer_id"]}).to_string(),
    ))
    .await
    .unwrap();
    next_of(&mut vera, "assigned").await;
    // The next hold check rings Vera's phone, with the whisper first.
    let (_, twiml) = node
        .twilio(TOKEN, &hold, &call_params("CA70", CUSTOMER, CLINIC_NUMBER))
        .await;
    assert!(twiml.contains(">+15550003333</Number>"), "{twiml}");
    assert!(
        twiml.contains("/webhooks/twilio/voice/whisper?conversation="),
        "{twiml}"
    );
    assert_eq!(
        conversation(node, "clinic", CUSTOMER).await["assigned_agent"],
        "vera"
    );

    // Another caller nobody accepts rings the owner after the hold limit.
    let other = "+15551239999";
    node.twilio(
        TOKEN,
        "/webhooks/twilio/voice",
        &call_params("CA80", other, CLINIC_NUMBER),
    )
    .await;
    // Vera's voice capacity is used: nobody could answer, the owner rings.
    let mut ask = call_params("CA80", other, CLINIC_NUMBER);
    ask.push(("SpeechResult", "Can I talk to a person"));
    let (_, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/gather?turn=1", &ask)
        .await;
    assert!(twiml.contains(&format!(">{OWNER}</Number>")), "{twiml}");

    // Vera finishes the first call; a third caller holds, nobody accepts,
    // and after the hold limit the owner's phone rings.
    let first = conversation(node, "clinic", CUSTOMER).await["id"].clone();
    vera.send(Frame::text(
        json!({"type": "close", "conversation_id": first, "disposition": "booked"}).to_string(),
    ))
    .await
    .unwrap();
    next_of(&mut vera, "conversation_closed").await;
    let third = "+15551238888";
    node.twilio(
        TOKEN,
        "/webhooks/twilio/voice",
        &call_params("CA90", third, CLINIC_NUMBER),
    )
    .await;
    let mut ask = call_params("CA90", third, CLINIC_NUMBER);
    ask.push(("SpeechResult", "talk to a person"));
    let (_, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/gather?turn=1", &ask)
        .await;
    let hold = redirect_of(&twiml);
    node.advance(61.0).await;
    let (_, twiml) = node
        .twilio(TOKEN, &hold, &call_params("CA90", third, CLINIC_NUMBER))
        .await;
    assert!(
        twiml.contains(&format!(">{OWNER}</Number>")),
        "after the hold limit: {twiml}"
    );
    let _ = &env.twilio;
}

/// The URL a TwiML `<Redirect>` continues the call at.
fn redirect_of(twiml: &str) -> String {
    twiml
        .split("<Redirect method=\"POST\">")
        .nth(1)
        .and_then(|r| r.split("</Redirect>").next())
        .unwrap_or_else(|| panic!("the caller holds: {twiml}"))
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_be_json_lines_and_never_carry_the_secrets() {
    let twilio = FakeTwilio::start().await;
    let whatsapp = FakeWhatsapp::start().await;
    let node = Node::start_with_config(
        &config(&twilio.base, &whatsapp.base),
        &["--simulated-clock", MORNING, "--log-format", "json"],
    );
    let params = sms_params("SM1", CUSTOMER, ACME_NUMBER, "Hello");
    let forged = twilio_signature(
        "not-the-token",
        &format!("{PUBLIC_URL}/webhooks/twilio/sms"),
        &params,
    );
    let (s, _) = node
        .twilio_raw(
            "/webhooks/twilio/sms",
            form_body(&params).into_bytes(),
            Some(&forged),
        )
        .await;
    assert_eq!(s, 403);
    let mut found = None;
    for _ in 0..100 {
        found = node
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "refused a Twilio webhook with a wrong signature");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let line = found.expect("the refusal is logged as a JSON line");
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["path"], "/webhooks/twilio/sms", "{line}");
    // Every line is JSON, and none carries a token or a signature.
    for l in node.stderr().lines() {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
        for secret in [TOKEN, forged.as_str(), "test-admin-token"] {
            assert!(!l.contains(secret), "a secret in the log: {l}");
        }
    }
}

/// The leakage a business asks about: a missed call nobody heard back
/// from, and a customer's message left unanswered past the tenant's
/// stalled time, counted by channel and listed; each leaves the list once
/// the customer writes back or is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_calls_and_stalled_conversations_are_counted_and_listed() {
    let env = start().await;
    let node = &env.node;
    let caller = "+15551239901";
    // A call nobody answered.
    node.twilio(
        TOKEN,
        "/webhooks/twilio/voice",
        &call_params("CA90", caller, ACME_NUMBER),
    )
    .await;
    let mut dial = call_params("CA90", caller, ACME_NUMBER);
    dial.push(("DialCallStatus", "no-answer"));
    dial.push(("DialCallSid", "CA91"));
    let (s, _) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/dial-status", &dial)
        .await;
    assert_eq!(s, 200);
    // A text nobody answers (acme has no flow: a person must).
    let texter = "+15551239902";
    let (s, _) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/sms",
            &sms_params(
                "SM90",
                texter,
                ACME_NUMBER,
                "Is my bill from March paid already?",
            ),
        )
        .await;
    assert_eq!(s, 200);
    // Not stalled yet.
    let (s, v) = node.get_admin("/api/v1/tenants/acme/leakage").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stalled_after_minutes"], 60);
    assert_eq!(v["missed_calls_not_recovered"]["count"], 1, "{v}");
    assert_eq!(
        v["missed_calls_not_recovered"]["by_channel"],
        json!({"voice": 1})
    );
    assert_eq!(
        v["missed_calls_not_recovered"]["conversations"][0]["contact"],
        caller
    );
    assert_eq!(v["stalled"]["count"], 0, "{v}");
    // Two hours pass.
    node.advance(2.0 * 3600.0).await;
    let (_, v) = node.get_admin("/api/v1/tenants/acme/leakage").await;
    assert_eq!(v["stalled"]["count"], 1, "{v}");
    assert_eq!(v["stalled"]["by_channel"], json!({"sms": 1}));
    let row = &v["stalled"]["conversations"][0];
    assert_eq!(row["contact"], texter);
    assert_eq!(row["reason"], "the customer's last message has no answer");
    assert_eq!(row["waiting_ms"], 7_200_000);
    // The caller writes back and the texter is answered: nothing leaks.
    let (s, _) = node
        .twilio(
            TOKEN,
            "/webhooks/twilio/sms",
            &sms_params("SM91", caller, ACME_NUMBER, "Hi, I just called"),
        )
        .await;
    assert_eq!(s, 200);
    let body = json!({"text": "Sure, calling you now.", "purpose": "conversational"});
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551239902/messages",
            Some(&body),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (_, v) = node.get_admin("/api/v1/tenants/acme/leakage").await;
    assert_eq!(v["missed_calls_not_recovered"]["count"], 0, "{v}");
    assert_eq!(v["stalled"]["count"], 0, "the caller's text is fresh: {v}");
    // The caller's own text, unanswered two hours, stalls in turn.
    node.advance(2.0 * 3600.0).await;
    let (_, before) = node.get_admin("/api/v1/tenants/acme/leakage").await;
    assert_eq!(before["stalled"]["count"], 1, "{before}");
}
