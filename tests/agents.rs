//! End-to-end tests of the agent pool and the agent desktop WebSocket,
//! with real WebSocket clients, a fake Twilio server for the replies, and
//! the simulated clock for offer timeouts and the reconnect grace.

mod common;

use std::time::Duration;

use common::fake_provider::{FakeTwilio, SID, TOKEN};
use common::ws::*;
use common::*;
use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

const MORNING: &str = "2026-03-10T14:00:00Z";
const JORDAN: &str = "+15551230001";

fn config(twilio: &str) -> String {
    format!(
        r#"
[server]
admin_token = "test-admin-token"

[runtime]
offer_timeout_secs = 30
agent_grace_secs = 60
agent_wait_text = "Everyone is busy; you are number {{position}} in line."

[providers]
retry_base_ms = 10

[providers.twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{twilio}"

[[tenants]]
id = "acme"
name = "Acme Insurance"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"

[[tenants]]
id = "beta"
name = "Beta Dental"
timezone = "America/New_York"
gateway_token = "gw-beta"

[[agents]]
id = "sarah"
name = "Sarah"
token = "agent-sarah"
tenants = ["acme"]
skills = ["en"]
capacity = {{ chat = 3, voice = 1 }}

[[agents]]
id = "omar"
name = "Omar"
token = "agent-omar"
tenants = ["acme"]
skills = ["en"]

[[agents]]
id = "bob"
name = "Bob"
token = "agent-bob"
tenants = ["beta"]
"#
    )
}

async fn start() -> (FakeTwilio, Node) {
    let fake = FakeTwilio::start().await;
    let node = Node::start_with_config(&config(&fake.base), &["--simulated-clock", MORNING]);
    (fake, node)
}

async fn desktop(node: &Node, token: &str) -> Ws {
    let url = node
        .url(&format!("/agent/ws?token={token}"))
        .replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    send_json(ws, v).await
}

async fn available(ws: &mut Ws) {
    send(ws, json!({"type": "status", "status": "available"})).await;
    assert_eq!(next_of(ws, "status").await["status"], "available");
}

async fn text(node: &Node, from: &str, body: &str, pid: &str) {
    let (s, v) = node
        .inbound("gw-acme", &sms("acme", from, body, Some(pid)))
        .await;
    assert_eq!(s, 202, "{v}");
}

/// Waits until the node has seen `agent`'s desktop go (the grace period
/// starts then, on the node's clock).
async fn disconnected(node: &Node, agent: &str) {
    for _ in 0..500 {
        let (_, list) = node.get_admin("/api/v1/agents").await;
        let gone = list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == agent && a["connected"] == false);
        if gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{agent} never showed as disconnected");
}

/// Waits until the fake Twilio has accepted `body`.
async fn texted(fake: &FakeTwilio, body: &str) -> bool {
    for _ in 0..500 {
        if fake.accepted_bodies().iter().any(|b| b == body) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_asks_for_a_person_gets_an_agent_who_opens_mid_conversation() {
    let (fake, node) = start().await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    available(&mut sarah).await;
    text(
        &node,
        JORDAN,
        "Hi, I'm Jordan. Moving next month, want to bundle home and auto",
        "m1",
    )
    .await;
    text(&node, JORDAN, "Can I talk to a person?", "m2").await;

    let offer = next_of(&mut sarah, "offer").await;
    let transcript: Vec<&str> = offer["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        transcript,
        vec![
            "Hi, I'm Jordan. Moving next month, want to bundle home and auto",
            "Can I talk to a person?",
            "[handed to a person: the customer asked for a person]"
        ],
        "the agent reads why, as an internal entry"
    );
    assert_eq!(offer["summary"]["current_channel"], "sms");
    assert_eq!(offer["expires_in_ms"], 30_000);
    let conv = offer["conversation_id"].as_str().unwrap().to_owned();
    send(
        &mut sarah,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    let assigned = next_of(&mut sarah, "assigned").await;
    assert_eq!(assigned["conversation_id"], conv.as_str());
    assert_eq!(
        assigned["conversation"]["messages"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "the two messages and why it came to a person"
    );

    // The customer's next message reaches the agent live.
    text(&node, JORDAN, "Are you there?", "m3").await;
    let live = next_of(&mut sarah, "message").await;
    assert_eq!(live["conversation_id"], conv.as_str());
    assert_eq!(live["message"]["text"], "Are you there?");

    // The agent's reply goes out on SMS through the gate.
    send(
        &mut sarah,
        json!({"type": "send", "conversation_id": conv, "text": "Hi Jordan, bundling home and auto before the move - let's do it."}),
    )
    .await;
    let sent = next_of(&mut sarah, "sent").await;
    assert_eq!(sent["decision"], "sent", "{sent}");
    assert!(
        texted(
            &fake,
            "Hi Jordan, bundling home and auto before the move - let's do it."
        )
        .await
    );
    let c = node.conversation_of("acme", JORDAN).await.unwrap();
    assert_eq!(c["assigned_agent"], "sarah");
    assert_eq!(
        texts_where(&c, "author", "agent:sarah"),
        vec!["Hi Jordan, bundling home and auto before the move - let's do it."]
    );

    send(
        &mut sarah,
        json!({"type": "close", "conversation_id": conv, "disposition": "quoted"}),
    )
    .await;
    assert_eq!(
        next_of(&mut sarah, "conversation_closed").await["conversation_id"],
        conv.as_str()
    );
    let c = node.conversation_of("acme", JORDAN).await.unwrap();
    assert_eq!(c["status"], "closed");
    assert_eq!(c["assigned_agent"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_offer_moves_to_the_next_agent_and_a_rejected_one_at_once() {
    let (_fake, node) = start().await;
    let mut omar = desktop(&node, "agent-omar").await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    available(&mut omar).await;
    available(&mut sarah).await;
    text(&node, JORDAN, "I need a human", "m1").await;
    // Equally idle: the first by id gets it.
    let first = next_of(&mut omar, "offer").await;
    node.advance(29.0).await;
    node.advance(1.0).await;
    let rescinded = next_of(&mut omar, "offer_rescinded").await;
    assert_eq!(rescinded["offer_id"], first["offer_id"]);
    let second = next_of(&mut sarah, "offer").await;
    assert_eq!(second["conversation_id"], first["conversation_id"]);
    // Sarah rejects: it moves on at once (back to Omar: nobody else).
    send(
        &mut sarah,
        json!({"type": "reject", "offer_id": second["offer_id"]}),
    )
    .await;
    let third = next_of(&mut omar, "offer").await;
    assert_eq!(third["conversation_id"], first["conversation_id"]);
    // Accepting a stale offer is an error frame; the socket stays usable.
    send(
        &mut sarah,
        json!({"type": "accept", "offer_id": second["offer_id"]}),
    )
    .await;
    assert_eq!(next_of(&mut sarah, "error").await["code"], "no_such_offer");
    send(
        &mut omar,
        json!({"type": "accept", "offer_id": third["offer_id"]}),
    )
    .await;
    assert_eq!(
        next_of(&mut omar, "assigned").await["conversation_id"],
        first["conversation_id"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_desktop_keeps_its_conversations_for_the_grace_period() {
    let (_fake, node) = start().await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    available(&mut sarah).await;
    text(&node, JORDAN, "talk to a person please", "m1").await;
    let offer = next_of(&mut sarah, "offer").await;
    let conv = offer["conversation_id"].clone();
    send(
        &mut sarah,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    next_of(&mut sarah, "assigned").await;
    drop(sarah);
    disconnected(&node, "sarah").await;
    // Missed while away.
    text(&node, JORDAN, "hello? still there?", "m2").await;
    node.advance(30.0).await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    let back = next_of(&mut sarah, "assigned").await;
    assert_eq!(back["conversation_id"], conv);
    let texts: Vec<&str> = back["conversation"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"hello? still there?"), "{texts:?}");
    let c = node.conversation_of("acme", JORDAN).await.unwrap();
    assert_eq!(c["assigned_agent"], "sarah");

    // Dropped for longer than the grace: the conversation is re-queued
    // and offered to someone else.
    drop(sarah);
    disconnected(&node, "sarah").await;
    let mut omar = desktop(&node, "agent-omar").await;
    available(&mut omar).await;
    node.advance(61.0).await;
    let offer = next_of(&mut omar, "offer").await;
    assert_eq!(offer["conversation_id"], conv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_never_touch_another_tenants_conversation() {
    let (fake, node) = start().await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    let mut bob = desktop(&node, "agent-bob").await;
    available(&mut bob).await;
    // Nobody of acme is available: the customer is told honestly.
    text(&node, JORDAN, "I want to speak to someone", "m1").await;
    assert!(texted(&fake, "Everyone is busy; you are number 1 in line.").await);
    let (s, q) = node.get_admin("/api/v1/tenants/acme/queue").await;
    assert_eq!((s, q["waiting"].as_u64()), (200, Some(1)), "{q}");
    // The desktops see their own tenants' queues.
    send(&mut sarah, json!({"type": "queue"})).await;
    loop {
        let q = next_of(&mut sarah, "queue").await;
        assert_eq!(q["tenant"], "acme");
        if q["waiting"] == 1 {
            break;
        }
    }
    send(&mut bob, json!({"type": "queue"})).await;
    let q = next_of(&mut bob, "queue").await;
    assert_eq!(
        (q["tenant"].as_str(), q["waiting"].as_u64()),
        (Some("beta"), Some(0))
    );
    let c = node.conversation_of("acme", JORDAN).await.unwrap();
    let conv = c["id"].as_str().unwrap().to_owned();
    // Bob (beta only) forges acme's conversation id: refused every time.
    for frame in [
        json!({"type": "send", "conversation_id": conv, "text": "hi from beta"}),
        json!({"type": "close", "conversation_id": conv, "disposition": "x"}),
        json!({"type": "transfer", "conversation_id": conv, "to_agent": "bob"}),
    ] {
        send(&mut bob, frame).await;
        assert_eq!(next_of(&mut bob, "error").await["code"], "not_yours");
    }
    // Malformed frames get error frames; the connection survives.
    bob.send(Frame::text("{oops")).await.unwrap();
    assert_eq!(next_of(&mut bob, "error").await["code"], "invalid_json");
    send(&mut bob, json!({"type": "status", "status": "dancing"})).await;
    assert_eq!(next_of(&mut bob, "error").await["code"], "invalid_field");
    // Sarah of acme gets it once available; Bob never saw an offer.
    available(&mut sarah).await;
    let offer = next_of(&mut sarah, "offer").await;
    assert_eq!(offer["conversation_id"], conv.as_str());
    send(&mut bob, json!({"type": "status", "status": "away"})).await;
    let frames_bob = next_of(&mut bob, "status").await;
    assert_eq!(frames_bob["status"], "away");
    let c = node.conversation_of("acme", JORDAN).await.unwrap();
    assert!(texts_where(&c, "author", "agent:bob").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_managed_over_rest_and_bad_tokens_are_refused() {
    let (_fake, node) = start().await;
    let body = json!({"id": "lena", "name": "Lena", "token": "agent-lena", "tenants": ["acme"],
                      "skills": ["es"], "capacity": {"chat": 2}});
    let (s, v) = node
        .send_admin(Method::POST, "/api/v1/agents", Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["capacity"],
        json!({"chat": 2, "sms": 2, "whatsapp": 2, "voice": 0})
    );
    let (_, list) = node.get_admin("/api/v1/agents").await;
    let ids: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"lena") && ids.contains(&"sarah"), "{list}");
    // The new agent can log in at once.
    let mut lena = desktop(&node, "agent-lena").await;
    available(&mut lena).await;
    for (bad, why) in [
        (
            json!({"id": "x y", "token": "tok-123456", "tenants": ["acme"]}),
            "bad id",
        ),
        (
            json!({"id": "z", "token": "agent-sarah", "tenants": ["acme"]}),
            "duplicate token",
        ),
        (
            json!({"id": "z", "token": "gw-beta", "tenants": ["acme"]}),
            "another tenant's gateway token",
        ),
        (
            json!({"id": "z", "token": "test-admin-token", "tenants": ["acme"]}),
            "the admin token",
        ),
        (
            json!({"id": "z", "token": "tok-123456", "tenants": ["nope"]}),
            "unknown tenant",
        ),
        (
            json!({"id": "z", "token": "tok-123456", "tenants": ["acme"], "capacity": {"fax": 1}}),
            "bad lane",
        ),
        (
            json!({"id": "z", "token": "tok-123456", "tenants": ["acme"], "extra": 1}),
            "unknown field",
        ),
    ] {
        let (s, v) = node
            .send_admin(Method::POST, "/api/v1/agents", Some(&bad))
            .await;
        assert!(s == 400 || s == 404, "{why}: {s} {v}");
    }
    let (s, _) = node
        .send_admin(Method::DELETE, "/api/v1/agents/sarah", None)
        .await;
    assert_eq!(s, 409, "config agents are removed in the config");
    let (s, _) = node
        .send_admin(Method::DELETE, "/api/v1/agents/lena", None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = node
        .send_admin(Method::DELETE, "/api/v1/agents/lena", None)
        .await;
    assert_eq!(s, 404);
    // A removed agent's token no longer opens a desktop; nor does a wrong one.
    for token in ["agent-lena", "nope"] {
        let url = node
            .url(&format!("/agent/ws?token={token}"))
            .replace("http://", "ws://");
        assert!(
            tokio_tungstenite::connect_async(&url).await.is_err(),
            "{token}"
        );
    }
    // API agents survive a restart.
    let body = json!({"id": "mia", "token": "agent-mia", "tenants": ["acme"]});
    assert_eq!(
        node.send_admin(Method::POST, "/api/v1/agents", Some(&body))
            .await
            .0,
        201
    );
    let mut node = node;
    node.restart();
    let (_, list) = node.get_admin("/api/v1/agents").await;
    let ids: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"mia") && !ids.contains(&"lena"), "{list}");
    desktop(&node, "agent-mia").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_and_held_conversations_survive_a_crash() {
    let (_fake, mut node) = start().await;
    // One customer waits (nobody available), one is held by Sarah.
    text(&node, "+15551230002", "I want to talk to a person", "w1").await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    available(&mut sarah).await;
    let offer = next_of(&mut sarah, "offer").await;
    send(
        &mut sarah,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    let held = next_of(&mut sarah, "assigned").await["conversation_id"].clone();
    send(&mut sarah, json!({"type": "status", "status": "away"})).await;
    next_of(&mut sarah, "status").await;
    text(&node, JORDAN, "Can I talk to a person?", "w2").await;
    let waiting = node.conversation_of("acme", JORDAN).await.unwrap()["id"].clone();
    let (_, q) = node.get_admin("/api/v1/tenants/acme/queue").await;
    assert_eq!(
        (q["waiting"].as_u64(), q["assigned"].as_u64()),
        (Some(1), Some(1)),
        "{q}"
    );
    drop(sarah);

    node.restart(); // SIGKILL, then start on the same data
    let (_, q) = node.get_admin("/api/v1/tenants/acme/queue").await;
    assert_eq!(
        (q["waiting"].as_u64(), q["assigned"].as_u64()),
        (Some(1), Some(1)),
        "{q}"
    );
    // Sarah gets her conversation back; the waiting one is offered.
    let mut sarah = desktop(&node, "agent-sarah").await;
    let back = next_of(&mut sarah, "assigned").await;
    assert_eq!(back["conversation_id"], held);
    let mut omar = desktop(&node, "agent-omar").await;
    available(&mut omar).await;
    let offer = next_of(&mut omar, "offer").await;
    assert_eq!(offer["conversation_id"], waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_hands_the_conversation_on_with_a_note() {
    let (_fake, node) = start().await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    available(&mut sarah).await;
    text(
        &node,
        JORDAN,
        "I'd like to speak to someone about my claim",
        "t1",
    )
    .await;
    let offer = next_of(&mut sarah, "offer").await;
    let conv = offer["conversation_id"].clone();
    send(
        &mut sarah,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    next_of(&mut sarah, "assigned").await;
    let mut omar = desktop(&node, "agent-omar").await;
    available(&mut omar).await;
    send(
        &mut sarah,
        json!({"type": "transfer", "conversation_id": conv, "to_agent": "omar", "note": "claim #4411, wants a callback"}),
    )
    .await;
    let t = next_of(&mut sarah, "transferred").await;
    assert_eq!(
        (t["conversation_id"].clone(), t["to"].as_str()),
        (conv.clone(), Some("omar"))
    );
    let offer = next_of(&mut omar, "offer").await;
    assert_eq!(offer["conversation_id"], conv);
    send(
        &mut omar,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    let assigned = next_of(&mut omar, "assigned").await;
    let texts: Vec<&str> = assigned["conversation"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("claim #4411, wants a callback")),
        "the note travels with it: {texts:?}"
    );
    // Sarah no longer holds it.
    send(
        &mut sarah,
        json!({"type": "send", "conversation_id": conv, "text": "still me"}),
    )
    .await;
    assert_eq!(next_of(&mut sarah, "error").await["code"], "not_yours");
    let c = node.conversation_of("acme", JORDAN).await.unwrap();
    assert_eq!(c["assigned_agent"], "omar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_open_at_a_crash_keeps_its_agent_and_its_deadline() {
    let (_fake, mut node) = start().await;
    let mut omar = desktop(&node, "agent-omar").await;
    available(&mut omar).await;
    text(&node, JORDAN, "I need a human", "d1").await;
    let offer = next_of(&mut omar, "offer").await;
    assert_eq!(offer["expires_in_ms"], 30_000);
    // 10 s later the node is killed; it comes back at that moment.
    node.advance(10.0).await;
    drop(omar);
    node.extra = vec!["--simulated-clock".into(), "2026-03-10T14:00:10Z".into()];
    node.restart();

    // The offer is still Omar's, with what is left of it.
    let mut omar = desktop(&node, "agent-omar").await;
    let again = next_of(&mut omar, "offer").await;
    assert_eq!(again["offer_id"], offer["offer_id"]);
    assert_eq!(again["conversation_id"], offer["conversation_id"]);
    assert_eq!(again["expires_in_ms"], 20_000);
    let mut sarah = desktop(&node, "agent-sarah").await;
    available(&mut sarah).await;
    let (_, q) = node.get_admin("/api/v1/tenants/acme/queue").await;
    assert_eq!(q["offered"], 1, "{q}");
    // It expires at the original deadline (not 30 s after the restart)
    // and moves on to Sarah.
    node.advance(19.0).await;
    let (_, q) = node.get_admin("/api/v1/tenants/acme/queue").await;
    assert_eq!(q["offered"], 1, "{q}");
    node.advance(1.0).await;
    let gone = next_of(&mut omar, "offer_rescinded").await;
    assert_eq!(gone["offer_id"], offer["offer_id"]);
    let moved = next_of(&mut sarah, "offer").await;
    assert_eq!(moved["conversation_id"], offer["conversation_id"]);
    assert_eq!(moved["expires_in_ms"], 30_000);
    send(
        &mut sarah,
        json!({"type": "accept", "offer_id": moved["offer_id"]}),
    )
    .await;
    assert_eq!(
        next_of(&mut sarah, "assigned").await["conversation_id"],
        offer["conversation_id"]
    );

    // Nothing of the ended offers comes back after another restart.
    drop((omar, sarah));
    node.extra = vec!["--simulated-clock".into(), "2026-03-10T14:00:40Z".into()];
    node.restart();
    let (_, q) = node.get_admin("/api/v1/tenants/acme/queue").await;
    assert_eq!(
        (q["offered"].as_u64(), q["assigned"].as_u64()),
        (Some(0), Some(1)),
        "{q}"
    );
}

/// Transfer notes and dispositions are for the business: the customer in
/// web chat sees the agent's words, never a note, live or in the history
/// after a reconnect; REST shows the notes as internal entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_notes_never_reach_the_web_chat_customer() {
    let (_fake, node) = start().await;
    let mut sarah = desktop(&node, "agent-sarah").await;
    available(&mut sarah).await;
    let url = node
        .url("/chat/ws?tenant=acme&visitor=visitor-notes")
        .replace("http://", "ws://");
    let (mut visitor, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut visitor).await["type"], "hello");
    send_json(
        &mut visitor,
        json!({"type": "message", "text": "I'd like to speak to someone please"}),
    )
    .await;
    let offer = next_of(&mut sarah, "offer").await;
    let conv = offer["conversation_id"].clone();
    send(
        &mut sarah,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    next_of(&mut sarah, "assigned").await;
    send(
        &mut sarah,
        json!({"type": "send", "conversation_id": conv, "text": "Hi, Sarah here."}),
    )
    .await;
    let mut omar = desktop(&node, "agent-omar").await;
    available(&mut omar).await;
    send(
        &mut sarah,
        json!({"type": "transfer", "conversation_id": conv, "to_agent": "omar",
               "note": "INTERNAL: customer is difficult"}),
    )
    .await;
    let offer = next_of(&mut omar, "offer").await;
    send(
        &mut omar,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    let assigned = next_of(&mut omar, "assigned").await;
    assert!(
        assigned
            .to_string()
            .contains("INTERNAL: customer is difficult"),
        "the next agent reads the note: {assigned}"
    );
    // Private notes: from the desktop, and from the business over REST
    // (not by an agent who does not hold it: an error frame).
    send(
        &mut omar,
        json!({"type": "note", "conversation_id": conv, "text": "PRIVATE: prefers Fridays"}),
    )
    .await;
    send(
        &mut sarah,
        json!({"type": "note", "conversation_id": conv, "text": "PRIVATE: not mine any more"}),
    )
    .await;
    assert_eq!(next_of(&mut sarah, "error").await["code"], "not_yours");
    let path = format!("/api/v1/conversations/{}/notes", conv.as_str().unwrap());
    let (s, v) = node
        .send_admin(
            Method::POST,
            &path,
            Some(&json!({"text": "PRIVATE: VIP, be kind", "author": "the owner"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["note"],
        "[private note from the owner: PRIVATE: VIP, be kind]"
    );
    let (s, v) = node
        .send_admin(Method::POST, &path, Some(&json!({"text": "  "})))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/conversations/cnv_00000000deadbeef/notes",
            Some(&json!({"text": "nobody"})),
        )
        .await;
    assert_eq!(s, 404);
    send(
        &mut omar,
        json!({"type": "close", "conversation_id": conv, "disposition": "booked"}),
    )
    .await;
    next_of(&mut omar, "conversation_closed").await;
    // A last business message: everything the visitor is pushed before it
    // is what they may see.
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/visitor-notes/messages",
            Some(&json!({"text": "Thanks for chatting", "purpose": "conversational", "channel": "webchat"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let mut seen = Vec::new();
    loop {
        let f = next_json(&mut visitor).await;
        if f["type"] == "message" {
            let t = f["text"].as_str().unwrap().to_owned();
            let last = t == "Thanks for chatting";
            seen.push(t);
            if last {
                break;
            }
        }
    }
    assert!(seen.iter().any(|t| t == "Hi, Sarah here."), "{seen:?}");
    for t in &seen {
        assert!(
            !t.contains("INTERNAL")
                && !t.contains("PRIVATE")
                && !t.contains("[closed by")
                && !t.contains("[transfer"),
            "the customer was shown {t:?}"
        );
    }
    // Nor in the history a reconnecting page gets.
    drop(visitor);
    let (mut again, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let history = next_of(&mut again, "history").await;
    let h = history.to_string();
    assert!(h.contains("Hi, Sarah here."), "{h}");
    assert!(
        !h.contains("INTERNAL") && !h.contains("PRIVATE") && !h.contains("[closed by"),
        "{h}"
    );
    // Over REST they are internal entries, not sent messages.
    let c = node.conversation_of("acme", "visitor-notes").await.unwrap();
    let notes: Vec<&Value> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author"] == "system" && m["text"].as_str().unwrap().starts_with('['))
        .collect();
    assert_eq!(
        notes.len(),
        5,
        "why it was handed over, the transfer note, two private notes and the disposition: {c}"
    );
    for n in notes {
        assert_eq!(
            (n["delivery"].as_str(), n["internal"].as_bool()),
            (Some("internal"), Some(true)),
            "{n}"
        );
    }
}
