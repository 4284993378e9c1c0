//! End-to-end tests of consent: keywords over the gateway, the gate on
//! business-initiated messages, and the consent API.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Tuesday 2026-03-10 10:00 EDT.
const MORNING: &str = "2026-03-10T14:00:00Z";

fn system_texts(conv: &Value) -> Vec<String> {
    texts_where(conv, "author", "system")
}

async fn consent(node: &Node, address: &str) -> Value {
    let enc = address.replace('+', "%2B");
    let (s, v) = node
        .get_admin(&format!("/api/v1/tenants/acme/contacts/{enc}/consent"))
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn follow_up(node: &Node, conv: &str, secs: u64, text: &str) -> String {
    let (s, v) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"in_seconds": secs, "kind": "follow_up", "text": text})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_blocks_follow_ups_with_exactly_one_confirmation_and_start_reopens() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    let who = "+15551240001";
    let (s, ack) = node
        .inbound("gw-acme", &sms("acme", who, "hi", Some("m1")))
        .await;
    assert_eq!(s, 202);
    let conv = ack["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(consent(&node, who).await["status"], "unknown");

    node.inbound("gw-acme", &sms("acme", who, "Stop!", Some("m2")))
        .await;
    let c = consent(&node, who).await;
    assert_eq!(c["status"], "opted_out");
    assert_eq!(c["channels"]["sms"]["status"], "opted_out");
    assert_eq!(
        c["channels"]["whatsapp"]["status"], "opted_out",
        "revoke-all"
    );
    let h = &c["history"][0];
    assert_eq!(
        (h["source"].as_str(), h["keyword"].as_str()),
        (Some("keyword"), Some("opt_out"))
    );
    assert_eq!(h["raw_text"], "Stop!");
    assert_eq!(h["provider_message_id"], "m2");
    // A repeated STOP is recorded but gets no second confirmation.
    node.inbound("gw-acme", &sms("acme", who, "STOP", Some("m3")))
        .await;
    assert_eq!(
        consent(&node, who).await["history"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let conv_view = node.conversation_of("acme", who).await.unwrap();
    let confirmations = system_texts(&conv_view);
    assert_eq!(confirmations.len(), 1, "{confirmations:?}");
    assert!(confirmations[0].contains("unsubscribed"));

    // A follow-up after the opt-out is blocked, not sent.
    follow_up(&node, &conv, 60, "Did you want that appointment?").await;
    node.advance(120.0).await;
    let c = node.conversation_of("acme", who).await.unwrap();
    let last = c["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["author"].as_str(), last["delivery"].as_str()),
        (Some("bot"), Some("blocked"))
    );

    // START restores what the STOP took (every channel, under
    // revoke-all), with its confirmation: the customer who just
    // resubscribed reads as opted in. Marketing is not a keyword's to
    // grant: it goes back to needing a written opt-in.
    node.inbound("gw-acme", &sms("acme", who, "START", Some("m4")))
        .await;
    let c = consent(&node, who).await;
    assert_eq!(c["status"], "opted_in", "{c}");
    for ch in ["sms", "whatsapp", "voice"] {
        assert_eq!(c["channels"][ch]["status"], "opted_in", "{ch}: {c}");
        assert_eq!(c["channels"][ch]["purposes"]["conversational"], "opted_in");
        assert_eq!(c["channels"][ch]["purposes"]["reminder"], "opted_in");
        assert_eq!(c["channels"][ch]["purposes"]["marketing"], "unknown");
    }
    let enc = who.replace('+', "%2B");
    let (s, v) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/tenants/acme/contacts/{enc}/messages"),
            Some(&json!({"text": "20% off whitening!", "purpose": "marketing"})),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("blocked")), "{v}");
    follow_up(&node, &conv, 60, "Welcome back").await;
    node.advance(120.0).await;
    let c = node.conversation_of("acme", who).await.unwrap();
    let last = c["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["text"].as_str(), last["delivery"].as_str()),
        (Some("Welcome back"), Some("sent"))
    );
    assert_eq!(system_texts(&c).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_answers_with_the_tenant_text_and_leaves_consent_alone() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    let who = "+15551240002";
    node.inbound("gw-acme", &sms("acme", who, "help", None))
        .await;
    let c = node.conversation_of("acme", who).await.unwrap();
    assert_eq!(system_texts(&c), ["Acme Dental: reply STOP to opt out."]);
    assert_eq!(consent(&node, who).await["status"], "unknown");
    // Spanish is off unless the tenant enables it.
    node.inbound("gw-acme", &sms("acme", who, "PARAR", None))
        .await;
    assert_eq!(consent(&node, who).await["status"], "unknown");
    // Sentences that merely contain a keyword are not opt-outs.
    node.inbound("gw-acme", &sms("acme", who, "I can't stop laughing", None))
        .await;
    assert_eq!(consent(&node, who).await["status"], "unknown");
    node.inbound("gw-acme", &sms("acme", who, "please stop texting me", None))
        .await;
    assert_eq!(consent(&node, who).await["status"], "opted_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_due_at_2230_is_held_until_0800_and_sent_then() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    // A Miami number: Florida rules, Eastern time, 08:00-20:00.
    let who = "+13055551234";
    let (_, ack) = node
        .inbound("gw-acme", &sms("acme", who, "book me in", None))
        .await;
    let conv = ack["conversation_id"].as_str().unwrap();
    let (s, _) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"at": "2026-03-11T02:30:00Z", "kind": "reminder", "text": "See you tomorrow at 9"})),
        )
        .await;
    assert_eq!(s, 201);
    // 23:00 EDT: it came due at 22:30 and is being held.
    node.advance(13.0 * 3600.0).await;
    let c = node.conversation_of("acme", who).await.unwrap();
    assert!(c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["text"] != "See you tomorrow at 9"));
    let held: Vec<&Value> = c["timers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "reminder")
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["at"], "2026-03-11T12:00:00.000Z", "08:00 EDT");
    // The morning comes: sent once, at 08:00.
    node.advance(10.0 * 3600.0).await;
    let c = node.conversation_of("acme", who).await.unwrap();
    let sent: Vec<&Value> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "See you tomorrow at 9")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0]["at"].as_str(), sent[0]["delivery"].as_str()),
        (Some("2026-03-11T12:00:00.000Z"), Some("sent"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_recorded_through_the_api_with_its_proof() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    let who = "+15551240003";
    let path = "/api/v1/tenants/acme/contacts/%2B15551240003/consent";
    let (s, v) = node
        .send_admin(
            Method::POST,
            path,
            Some(
                &json!({"status": "opted_in", "channel": "sms", "purpose": "marketing",
                         "source": "web_form", "proof": "https://acme.example/form/123"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(v["conversation_id"].as_str().unwrap().starts_with("cnv_"));
    let c = consent(&node, who).await;
    assert_eq!(c["channels"]["sms"]["purposes"]["marketing"], "opted_in");
    assert_eq!(c["channels"]["sms"]["purposes"]["reminder"], "unknown");
    assert_eq!(c["history"][0]["proof"], "https://acme.example/form/123");
    assert_eq!(c["history"][0]["at"], "2026-03-10T14:00:00.000Z");
    for bad in [
        json!({"status": "maybe", "source": "web_form"}),
        json!({"status": "opted_in", "source": "rumour"}),
        json!({"status": "opted_in", "source": "web_form", "channel": "fax"}),
        json!({"status": "opted_in", "source": "web_form", "purpose": "spam"}),
        json!({"status": "opted_in"}),
    ] {
        let (s, v) = node.send_admin(Method::POST, path, Some(&bad)).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/nope/contacts/%2B15551240003/consent",
            Some(&json!({"status": "opted_in", "source": "web_form"})),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_consent_and_decisions_and_detects_an_edit() {
    let mut node = Node::start(&["--simulated-clock", MORNING]);
    let who = "+15551240009";
    let (_, ack) = node
        .inbound("gw-acme", &sms("acme", who, "hello", None))
        .await;
    let conv = ack["conversation_id"].as_str().unwrap().to_owned();
    follow_up(&node, &conv, 60, "first follow-up").await;
    node.advance(61.0).await;
    node.inbound("gw-acme", &sms("acme", who, "STOP", Some("a1")))
        .await;
    // Another contact's records share the tenant's chain.
    node.inbound("gw-acme", &sms("acme", "+15551240010", "stop", None))
        .await;
    // The chain continues across a crash.
    node.sigkill();
    node.restart();
    follow_up(&node, &conv, 60, "second follow-up").await;
    node.advance(61.0).await;

    let text = audit_export(&node, "").await;
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["detail"]["decision"]
                    .as_str()
                    .or(r["detail"]["status"].as_str())
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("decision", "sent"),
            ("consent", "opted_out"),
            ("consent", "opted_out"),
            ("decision", "blocked")
        ],
        "{text}"
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(records[1]["detail"]["provider_message_id"], "a1");
    assert_eq!(records[3]["detail"]["rule"], "recipient opted out");

    let ok = audit_verify(node.dir.path(), "audit.ndjson", &text);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("4 records"));

    // Someone edits the opt-out into an opt-in: detected.
    let edited = text.replacen("\"status\":\"opted_out\"", "\"status\":\"opted_in\"", 1);
    let bad = audit_verify(node.dir.path(), "edited.ndjson", &edited);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Filters select records (such an export is not a whole chain).
    let one = audit_export(&node, "?contact=%2B15551240010").await;
    assert_eq!(one.lines().count(), 1);
    // The two opt-outs came at 14:01:01; both decisions are stamped 14:01:00
    // (the clock restarts from the flag after the crash).
    let later = audit_export(&node, "?since=2026-03-10T14:01:01Z").await;
    assert_eq!(later.lines().count(), 2);
}

async fn send(node: &Node, address: &str, body: Value) -> Value {
    let enc = address.replace('+', "%2B");
    let (s, v) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/tenants/acme/contacts/{enc}/messages"),
            Some(&body),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_messages_get_the_gates_decision() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    // A Miami number: Florida rules, 08:00-20:00 Eastern.
    let who = "+13055550001";
    let promo = json!({"text": "20% off whitening this week", "purpose": "marketing"});
    let v = send(&node, who, promo.clone()).await;
    assert_eq!(v["decision"], "blocked", "{v}");
    assert_eq!(v["reason"], "marketing requires an opt-in");
    assert!(v["conversation_id"].as_str().unwrap().starts_with("cnv_"));

    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B13055550001/consent",
            Some(&json!({"status": "opted_in", "purpose": "marketing", "source": "web_form"})),
        )
        .await;
    assert_eq!(s, 201);
    let v = send(&node, who, promo.clone()).await;
    assert_eq!(v["decision"], "sent", "{v}");
    assert!(v["message_id"].as_str().unwrap().starts_with("msg_"));

    // 22:30 Eastern: held until 08:00, then sent.
    node.advance(12.5 * 3600.0).await;
    let v = send(
        &node,
        who,
        json!({"text": "Last chance!", "purpose": "marketing"}),
    )
    .await;
    assert_eq!(
        (v["decision"].as_str(), v["until"].as_str()),
        (Some("deferred"), Some("2026-03-11T12:00:00.000Z")),
        "{v}"
    );
    node.advance(10.0 * 3600.0).await;
    let c = node.conversation_of("acme", who).await.unwrap();
    let last = c["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["text"].as_str(), last["delivery"].as_str()),
        (Some("Last chance!"), Some("sent"))
    );
    assert_eq!(last["at"], "2026-03-11T12:00:00.000Z");

    // After STOP nothing business-initiated goes out.
    node.inbound("gw-acme", &sms("acme", who, "STOP", None))
        .await;
    let v = send(&node, who, promo).await;
    assert_eq!(
        (v["decision"].as_str(), v["reason"].as_str()),
        (Some("blocked"), Some("recipient opted out"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_reply_goes_out_at_night_but_a_later_follow_up_waits() {
    let node = Node::start(&["--simulated-clock", "2026-03-11T02:30:00Z"]); // 22:30 EDT
    let who = "+13055550002";
    node.inbound("gw-acme", &sms("acme", who, "are you open tomorrow?", None))
        .await;
    let reply = json!({"text": "Yes, from 8am!", "purpose": "conversational"});
    let v = send(&node, who, reply.clone()).await;
    assert_eq!(
        (v["decision"].as_str(), v["rule"].as_str()),
        (Some("sent"), Some("direct reply")),
        "{v}"
    );
    // Twenty minutes later it is no longer a reply to anything.
    node.advance(20.0 * 60.0).await;
    let v = send(
        &node,
        who,
        json!({"text": "Anything else?", "purpose": "conversational"}),
    )
    .await;
    assert_eq!(v["decision"], "deferred", "{v}");
    for bad in [
        json!({"text": "", "purpose": "marketing"}),
        json!({"text": "x", "purpose": "spam"}),
        json!({"text": "x"}),
        json!({"text": "x", "purpose": "marketing", "channel": "fax"}),
    ] {
        let (s, _) = node
            .send_admin(
                Method::POST,
                "/api/v1/tenants/acme/contacts/%2B13055550002/messages",
                Some(&bad),
            )
            .await;
        assert_eq!(s, 400, "{bad}");
    }
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/conversations/cnv_00000000000000ff/messages",
            Some(&reply),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_contact_location_beats_the_area_code() {
    // 14:00 UTC on Tuesday: 10:00 in Miami, but 07:00 in Los Angeles.
    let node = Node::start(&["--simulated-clock", MORNING]);
    let who = "+13055550003";
    let (s, v) = node
        .send_admin(
            Method::PUT,
            "/api/v1/tenants/acme/contacts/%2B13055550003",
            Some(
                &json!({"name": "Jordan", "timezone": "America/Los_Angeles", "region": "US-WA",
                         "email": "Jordan@Example.com", "facts": {"pet": "dog"}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["captured"]["name"], "Jordan");
    assert_eq!(v["captured"]["facts"]["pet"], "dog");
    assert_eq!(v["identities"]["email"], "jordan@example.com");
    // Reminders by text agreed on a web form: the basis.
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B13055550003/consent",
            Some(
                &json!({"status": "opted_in", "channel": "sms", "purpose": "reminder",
                         "source": "web_form", "proof": "form 3"}),
            ),
        )
        .await;
    assert_eq!(s, 201);
    let r = send(
        &node,
        who,
        json!({"text": "Reminder: cleaning tomorrow", "purpose": "reminder"}),
    )
    .await;
    // Washington, Pacific time: 08:00 PDT is 15:00 UTC.
    assert_eq!(
        (r["decision"].as_str(), r["until"].as_str()),
        (Some("deferred"), Some("2026-03-10T15:00:00.000Z")),
        "{r}"
    );
    for bad in [
        json!({"timezone": "Mars/Olympus"}),
        json!({"region": "Florida"}),
        json!({"email": "not-an-email"}),
        json!({"facts": {"timezone": "UTC"}}),
        json!({"nickname": "J"}),
    ] {
        let (s, _) = node
            .send_admin(
                Method::PUT,
                "/api/v1/tenants/acme/contacts/%2B13055550003",
                Some(&bad),
            )
            .await;
        assert_eq!(s, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_hints_and_from_state_reach_the_ledger_and_the_gate() {
    // Sunday 2026-03-15 15:00 UTC: 10:00 in Texas (Central), 09:00 Mountain.
    let node = Node::start(&["--simulated-clock", "2026-03-15T15:00:00Z"]);
    let mut m = sms("acme", "+15551240020", "whatever", None);
    m["opt_out_type"] = json!("STOP");
    let (s, _) = node.inbound("gw-acme", &m).await;
    assert_eq!(s, 202);
    assert_eq!(consent(&node, "+15551240020").await["status"], "opted_out");

    // A New York area code, but the provider says Texas: Texas rules.
    let who = "+12125550001";
    let mut m = sms("acme", who, "hi", None);
    m["from_state"] = json!("TX");
    node.inbound("gw-acme", &m).await;
    let c = node.conversation_of("acme", who).await.unwrap();
    assert_eq!(c["captured"]["facts"]["provider_state"], "TX");
    let r = send(
        &node,
        who,
        json!({"text": "Reminder", "purpose": "reminder"}),
    )
    .await;
    // Sundays start at noon in Texas, in both of its zones: 12:00 MDT.
    assert_eq!(r["until"], "2026-03-15T18:00:00.000Z", "{r}");

    for (k, v) in [("opt_out_type", "MAYBE"), ("from_state", "Texas")] {
        let mut bad = sms("acme", who, "x", None);
        bad[k] = json!(v);
        let (s, _) = node.inbound("gw-acme", &bad).await;
        assert_eq!(s, 400, "{k}");
    }
}

/// The gateway API gives a WhatsApp customer the identity the webhook
/// does: `15554440001` (a wa_id) and `+15554440001` are one conversation,
/// and a STOP through one form leaves the other unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_customer_is_one_identity_whichever_form_the_gateway_sends() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    let wa = |from: &str, text: &str, pid: &str| {
        json!({"tenant": "acme", "channel": "whatsapp", "from": from, "text": text,
               "provider_message_id": pid})
    };
    let (s, a) = node
        .inbound("gw-acme", &wa("15554440001", "hi", "w1"))
        .await;
    assert_eq!(s, 202, "{a}");
    let (s, b) = node
        .inbound("gw-acme", &wa("+15554440001", "still me", "w2"))
        .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(
        a["conversation_id"], b["conversation_id"],
        "one conversation"
    );
    let (s, _) = node
        .inbound("gw-acme", &wa("15554440001", "STOP", "w3"))
        .await;
    assert_eq!(s, 202);
    assert_eq!(consent(&node, "+15554440001").await["status"], "opted_out");
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15554440001/messages",
            Some(&json!({"text": "Sale!", "purpose": "conversational", "channel": "whatsapp"})),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("blocked")), "{v}");
}

/// A business-initiated message or call needs a basis: a number that never
/// contacted the business and has no consent on record gets nothing (no
/// text, no automated call); once the customer has written, or consent is
/// recorded, it goes, and the decision names the basis it used, in the
/// answer and in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outreach_needs_a_basis_and_the_decision_names_it() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    let send = |who: &'static str, channel: &'static str| {
        let node = &node;
        async move {
            let enc = who.replace('+', "%2B");
            node.send_admin(
                Method::POST,
                &format!("/api/v1/tenants/acme/contacts/{enc}/messages"),
                Some(
                    &json!({"text": "Your balance is $120", "purpose": "conversational",
                             "channel": channel}),
                ),
            )
            .await
        }
    };
    // A stranger: neither a text nor a call.
    for channel in ["sms", "voice"] {
        let (s, v) = send("+15551249001", channel).await;
        assert_eq!(
            (s, v["decision"].as_str()),
            (202, Some("blocked")),
            "{channel}: {v}"
        );
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("no consent on record"),
            "{v}"
        );
    }
    let c = node.conversation_of("acme", "+15551249001").await.unwrap();
    assert!(
        c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["delivery"] == "blocked"),
        "nothing went out: {c}"
    );

    // A customer who texted the business: an existing relationship.
    node.inbound(
        "gw-acme",
        &sms("acme", "+15551249002", "hi, any news on my claim?", None),
    )
    .await;
    node.advance(3600.0).await;
    let (s, v) = send("+15551249002", "sms").await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .contains("basis: the customer contacted"),
        "{v}"
    );

    // Consent recorded through the API (a web form): consent on record.
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551249003/consent",
            Some(
                &json!({"status": "opted_in", "channel": "sms", "source": "web_form",
                         "proof": "form 77"}),
            ),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = send("+15551249003", "sms").await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .contains("basis: consent on record"),
        "{v}"
    );

    // The audit trail verifies and names each basis, and the missing one:
    // every decision that let a message out says what it rests on.
    let audit = tenant_audit(&node, "acme", "").await;
    let out = audit_verify(node.dir.path(), "audit.ndjson", &audit);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut decisions = 0;
    for line in audit.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let d = &r["detail"];
        if r["kind"] == "decision" {
            decisions += 1;
        }
        if d["decision"] == "sent" || d["decision"] == "deferred" {
            let rule = d["rule"].as_str().unwrap();
            assert!(
                rule.contains("basis: ") || rule.starts_with("direct reply"),
                "a decision without its basis: {r}"
            );
        }
    }
    assert!(decisions >= 4, "{audit}");
    assert!(audit.contains("no basis: no consent on record"), "{audit}");
    assert!(
        audit.contains("basis: the customer contacted the business"),
        "{audit}"
    );
    assert!(audit.contains("basis: consent on record"), "{audit}");
}

/// Every number gets the rules of its place: a New York number is judged by
/// New York's (federal) hours, not the strictest set the tenant enables
/// for unknown places; a +91 number of a clinic in Kolkata gets the
/// tenant's hours abroad in Kolkata time, never a US state's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_number_gets_the_rules_of_its_place() {
    // 08:00 in New York (EDT).
    let node = Node::start(&["--simulated-clock", "2026-03-10T12:00:00Z"]);
    let ny = "+12125550147";
    node.inbound("gw-acme", &sms("acme", ny, "hi", Some("ny1")))
        .await;
    node.advance(1800.0).await;
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B12125550147/messages",
            Some(&json!({"text": "Your cleaning is tomorrow", "purpose": "reminder"})),
        )
        .await;
    // 08:30 is inside the federal window (Connecticut's, the strictest
    // enabled, opens at 09:00).
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");

    let config = r#"
[server]
admin_token = "test-admin-token"

[[tenants]]
id = "smile"
name = "Smile Kolkata"
timezone = "Asia/Kolkata"
gateway_token = "gw-smile"
quiet_hours_abroad = "09:00-20:00"
"#;
    // 21:00 in Kolkata.
    let node = Node::start_with_config(config, &["--simulated-clock", "2026-03-10T15:30:00Z"]);
    let consent = json!({"status": "opted_in", "channel": "sms", "purpose": "reminder",
                         "source": "web_form", "proof": "form 1"});
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/smile/contacts/%2B919876543210/consent",
            Some(&consent),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/smile/contacts/%2B919876543210/messages",
            Some(&json!({"text": "Your cleaning is tomorrow", "purpose": "reminder"})),
        )
        .await;
    assert_eq!(
        (s, v["decision"].as_str(), v["until"].as_str()),
        (202, Some("deferred"), Some("2026-03-11T03:30:00.000Z")),
        "09:00 Kolkata the next morning: {v}"
    );
    let rule = v["rule"].as_str().unwrap();
    assert!(rule.contains("outside the US"), "{rule}");
    for state in ["Florida", "Texas", "Connecticut", "federal"] {
        assert!(!rule.contains(state), "{rule}");
    }
}

/// Florida caps three business-initiated messages a day on the same
/// subject: a fourth on that subject waits, one on another subject goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn florida_caps_count_messages_on_the_same_subject_only() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    let who = "+13055550177";
    node.inbound("gw-acme", &sms("acme", who, "hi", Some("fl1")))
        .await;
    node.advance(3600.0).await;
    let send = |subject: &'static str| {
        let node = &node;
        async move {
            node.send_admin(
                Method::POST,
                "/api/v1/tenants/acme/contacts/%2B13055550177/messages",
                Some(
                    &json!({"text": format!("About {subject}"), "purpose": "reminder",
                             "subject": subject}),
                ),
            )
            .await
            .1
        }
    };
    for k in 0..3 {
        let v = send("cleaning").await;
        assert_eq!(v["decision"], "sent", "{k}: {v}");
    }
    let v = send("cleaning").await;
    assert_eq!(v["decision"], "deferred", "{v}");
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .contains("Florida frequency cap"),
        "{v}"
    );
    let v = send("billing").await;
    assert_eq!(v["decision"], "sent", "another subject is not capped: {v}");
}
