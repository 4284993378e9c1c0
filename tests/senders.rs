//! End-to-end tests of outbound delivery through a local fake Twilio REST
//! server: one decision reaches the customer exactly once.

mod common;

use std::time::Duration;

use common::fake_provider::{FakeTwilio, SID, TOKEN};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const MORNING: &str = "2026-03-10T14:00:00Z";
const WHO: &str = "+13055559999";

fn config(api_base: &str) -> String {
    format!(
        r#"
[server]
admin_token = "test-admin-token"

[providers]
retry_attempts = 5
retry_base_ms = 10

[providers.twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{api_base}"

[[tenants]]
id = "acme"
name = "Acme Dental"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"
"#
    )
}

async fn start() -> (FakeTwilio, Node) {
    let fake = FakeTwilio::start().await;
    let node = Node::start_with_config(&config(&fake.base), &["--simulated-clock", MORNING]);
    (fake, node)
}

async fn opt_in(node: &Node) {
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B13055559999/consent",
            Some(&json!({"status": "opted_in", "source": "web_form"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

async fn send(node: &Node, text: &str, purpose: &str) -> Value {
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B13055559999/messages",
            Some(&json!({"text": text, "purpose": purpose})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    v
}

/// Waits until message `text` has left `queued` and returns its delivery.
async fn delivery_of(node: &Node, text: &str) -> Value {
    for _ in 0..500 {
        let c = node.conversation_of("acme", WHO).await.unwrap();
        if let Some(m) = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["text"] == text)
        {
            if m["delivery"] != "queued" {
                return m.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{text:?} never left the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_exactly_one_confirmation_and_then_nothing_else_goes_out() {
    let (fake, node) = start().await;
    opt_in(&node).await;
    send(&node, "Spring cleaning special", "marketing").await;
    let m = delivery_of(&node, "Spring cleaning special").await;
    assert_eq!(m["delivery"], "sent");
    assert!(m["provider_message_id"].as_str().unwrap().starts_with("SM"));

    node.inbound("gw-acme", &sms("acme", WHO, "STOP", Some("in-1")))
        .await;
    node.inbound("gw-acme", &sms("acme", WHO, "stop", Some("in-2")))
        .await;
    let confirmation = node.conversation_of("acme", WHO).await.unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["author"] == "system")
        .unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    delivery_of(&node, &confirmation).await;
    let v = send(&node, "Last chance!", "marketing").await;
    assert_eq!(v["decision"], "blocked");
    let bodies = fake.accepted_bodies();
    assert_eq!(
        bodies,
        ["Spring cleaning special".to_owned(), confirmation],
        "{bodies:?}"
    );
    let form = &fake.state.lock().unwrap().accepted[0].1;
    assert_eq!(
        (form["To"].as_str(), form["From"].as_str()),
        (WHO, "+15557654321")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_fails_twice_then_succeeds_receives_one_message() {
    let (fake, node) = start().await;
    opt_in(&node).await;
    fake.state.lock().unwrap().fail_next = 2;
    send(&node, "Your cleaning is confirmed", "conversational").await;
    assert_eq!(
        delivery_of(&node, "Your cleaning is confirmed").await["delivery"],
        "sent"
    );
    assert_eq!(fake.requests(), 3, "two failures, one success");
    assert_eq!(fake.accepted_bodies(), ["Your cleaning is confirmed"]);
    let keys: Vec<String> = fake
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert!(
        keys.iter().all(|k| k == &keys[0] && k.starts_with("msg_")),
        "one idempotency key: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_decision_and_answer_sends_once() {
    let (fake, mut node) = start().await;
    opt_in(&node).await;
    // The provider takes the message but its answer is lost in the crash.
    fake.state.lock().unwrap().hold_next = 1;
    send(&node, "See you at 3", "conversational").await;
    for _ in 0..500 {
        if fake.requests() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.requests(), 1);
    node.sigkill();
    node.restart();
    // The outbox survives; the message goes again with the same key.
    assert_eq!(delivery_of(&node, "See you at 3").await["delivery"], "sent");
    assert_eq!(fake.requests(), 2);
    assert_eq!(
        fake.accepted_bodies(),
        ["See you at 3"],
        "the provider saw one message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_21610_fails_the_message_and_records_the_opt_out() {
    let (fake, node) = start().await;
    opt_in(&node).await;
    fake.state.lock().unwrap().opted_out.insert(WHO.to_owned());
    send(&node, "Hello again", "conversational").await;
    assert_eq!(
        delivery_of(&node, "Hello again").await["delivery"],
        "failed"
    );
    let (_, c) = node
        .get_admin("/api/v1/tenants/acme/contacts/%2B13055559999/consent")
        .await;
    assert_eq!(c["channels"]["sms"]["status"], "opted_out", "{c}");
    assert_eq!(
        c["history"].as_array().unwrap().last().unwrap()["source"],
        "provider"
    );
    let v = send(&node, "Are you there?", "conversational").await;
    assert_eq!(v["decision"], "blocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_is_withdrawn_when_the_customer_opts_out() {
    let (fake, node) = start().await;
    opt_in(&node).await;
    // The provider is down: the message waits in the outbox, retrying.
    fake.state.lock().unwrap().fail_next = 1_000;
    send(&node, "Reminder: 20% off", "conversational").await;
    node.inbound("gw-acme", &sms("acme", WHO, "STOP", None))
        .await;
    let m = delivery_of(&node, "Reminder: 20% off").await;
    assert_eq!(m["delivery"], "blocked", "{m}");
    fake.state.lock().unwrap().fail_next = 0;
    // Whatever the sender was doing with it, it stops: withdrawn, never sent.
    for _ in 0..500 {
        if node.metric("threadline_outbound_withdrawn_total").await == 1.0
            && node.metric("threadline_outbound_in_flight").await == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node.metric("threadline_outbound_withdrawn_total").await,
        1.0
    );
    assert!(!fake
        .accepted_bodies()
        .contains(&"Reminder: 20% off".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_messages_go_to_the_cloud_api_inside_the_window_only() {
    use common::fake_provider::{FakeWhatsapp, WA_PHONE_ID, WA_TOKEN};
    let wa = FakeWhatsapp::start().await;
    let cfg = format!(
        r#"
[server]
admin_token = "test-admin-token"

[providers]
retry_base_ms = 10

[providers.whatsapp]
app_secret = "test_app_secret"
verify_token = "verify-me"
access_token = "{WA_TOKEN}"
api_base = "{}"

[[tenants]]
id = "acme"
name = "Acme Dental"
timezone = "America/New_York"
whatsapp_phone_number_id = "{WA_PHONE_ID}"
gateway_token = "gw-acme"

[tenants.whatsapp_templates]
reminder = {{ name = "appointment_reminder", language = "en_US" }}
"#,
        wa.base
    );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", MORNING]);
    let mut m = sms("acme", WHO, "Hi from WhatsApp", None);
    m["channel"] = json!("whatsapp");
    assert_eq!(node.inbound("gw-acme", &m).await.0, 202);
    let body =
        json!({"text": "Hello on WhatsApp", "purpose": "conversational", "channel": "whatsapp"});
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B13055559999/messages",
            Some(&body),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    let m = delivery_of(&node, "Hello on WhatsApp").await;
    assert_eq!(m["delivery"], "sent");
    assert!(m["provider_message_id"]
        .as_str()
        .unwrap()
        .starts_with("wamid."));
    let sent = wa.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let id: threadline_protocol::MessageId = m["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        sent[0].1,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "13055559999",
               "biz_opaque_callback_data": format!("{}:{}", id.conversation.0, id.seq),
               "type": "text", "text": {"body": "Hello on WhatsApp"}})
    );
    assert!(sent[0].0.starts_with("msg_"));
    // A day and an hour later the customer service window is closed.
    node.advance(25.0 * 3600.0).await;
    let (_, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B13055559999/messages",
            Some(&body),
        )
        .await;
    assert_eq!(v["decision"], "blocked", "{v}");
    assert_eq!(wa.sent.lock().unwrap().len(), 1);
    // Outside the window, only an approved template to an opted-in user.
    let reminder = json!({"text": "Your cleaning is tomorrow at 3pm", "purpose": "reminder", "channel": "whatsapp"});
    let url = "/api/v1/tenants/acme/contacts/%2B13055559999/messages";
    let (_, v) = node.send_admin(Method::POST, url, Some(&reminder)).await;
    assert_eq!(v["decision"], "blocked", "not opted in yet: {v}");
    let optin = json!({"status": "opted_in", "channel": "whatsapp", "source": "web_form", "proof": "https://acme.example/form/7"});
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B13055559999/consent",
            Some(&optin),
        )
        .await;
    assert_eq!(s, 201);
    let (_, v) = node.send_admin(Method::POST, url, Some(&reminder)).await;
    assert_eq!(v["decision"], "sent", "{v}");
    delivery_of(&node, "Your cleaning is tomorrow at 3pm").await;
    let sent = wa.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].1["type"], "template");
    assert_eq!(
        sent[1].1["template"],
        json!({"name": "appointment_reminder", "language": {"code": "en_US"},
               "components": [{"type": "body", "parameters": [{"type": "text", "text": "Your cleaning is tomorrow at 3pm"}]}]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_panics_is_restarted_and_every_queued_message_goes_out_once() {
    let fake = FakeTwilio::start().await;
    let node = Node::start_with_config(
        &config(&fake.base),
        &["--simulated-clock", MORNING, "--test-hooks"],
    );
    opt_in(&node).await;
    // Its first delivery panics inside the sender (a bug in a provider).
    send(&node, "__threadline_test_sender_panic__", "conversational").await;
    send(&node, "Your cleaning is confirmed", "conversational").await;
    // A new sender takes over from the outbox: both go out, once each.
    for text in [
        "__threadline_test_sender_panic__",
        "Your cleaning is confirmed",
    ] {
        assert_eq!(delivery_of(&node, text).await["delivery"], "sent", "{text}");
    }
    send(&node, "See you Tuesday", "conversational").await;
    assert_eq!(
        delivery_of(&node, "See you Tuesday").await["delivery"],
        "sent"
    );
    let mut bodies = fake.accepted_bodies();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "See you Tuesday",
            "Your cleaning is confirmed",
            "__threadline_test_sender_panic__"
        ],
        "{bodies:?}"
    );
    assert!(
        node.stderr().contains("sender failed; restarting it"),
        "{}",
        node.stderr()
    );
}
