//! Nobody takes over a customer's thread from web chat: a number given in
//! a chat is a claim until the code texted to it comes back. Written as the
//! attack: an anonymous visitor claims a real customer's number and tries
//! to read their messages, opt them out and guess the code, and floods
//! claims; every step fails.

mod common;

use common::ws::*;
use common::*;
use reqwest::Method;
use serde_json::json;

const MORNING: &str = "2026-03-10T14:00:00Z";
const CUSTOMER: &str = "+15551238888";

async fn visitor(node: &Node, id: &str) -> Ws {
    let url = node
        .url(&format!("/chat/ws?tenant=acme&visitor={id}"))
        .replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    ws
}

/// The next frame, after everything the server sent before a ping: proves
/// nothing else was pushed in between.
async fn only_pong(ws: &mut Ws) {
    send_json(ws, json!({"type": "ping"})).await;
    let f = next_json(ws).await;
    assert_eq!(f["type"], "pong", "nothing else reaches the socket: {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_visitor_cannot_take_over_a_customers_thread() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    // The real customer texts the business.
    let (s, _) = node
        .inbound(
            "gw-acme",
            &sms("acme", CUSTOMER, "Hi, is my crown ready?", Some("r1")),
        )
        .await;
    assert_eq!(s, 202);

    // The attacker claims the number: the code goes to the customer's
    // phone, not to the attacker.
    let mut evil = visitor(&node, "evil-1").await;
    send_json(&mut evil, json!({"type": "identify", "phone": CUSTOMER})).await;
    let f = next_json(&mut evil).await;
    assert_eq!(f["type"], "code_sent", "{f}");
    assert!(
        !f.to_string().contains("code is"),
        "the code is not shown: {f}"
    );
    let code = chat_code(&node, "acme", CUSTOMER).await;

    // Business messages and agent replies meant for the number never reach
    // the unverified socket.
    let (s, v) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551238888/messages",
            Some(
                &json!({"text": "Your balance is $120", "purpose": "conversational",
                         "channel": "webchat"}),
            ),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    only_pong(&mut evil).await;

    // The visitor's STOP is the visitor's: the customer's consent is untouched.
    send_json(
        &mut evil,
        json!({"type": "message", "text": "STOP", "id": "s1"}),
    )
    .await;
    assert_eq!(next_of(&mut evil, "ack").await["id"], "s1");
    let (_, consent) = node
        .get_admin("/api/v1/tenants/acme/contacts/%2B15551238888/consent")
        .await;
    assert_ne!(consent["status"], "opted_out", "{consent}");

    // Guessing the code: four wrong tries are refused, the fifth ends the
    // claim, and then even the right code links nothing.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for k in 0..5 {
        send_json(&mut evil, json!({"type": "verify", "code": wrong})).await;
        let f = next_of(&mut evil, "error").await;
        let want = if k < 4 {
            "invalid_code"
        } else {
            "too_many_attempts"
        };
        assert_eq!(f["code"], want, "try {k}: {f}");
    }
    send_json(&mut evil, json!({"type": "verify", "code": code})).await;
    assert_eq!(next_of(&mut evil, "error").await["code"], "no_claim");
    let c = node.conversation_of("acme", CUSTOMER).await.unwrap();
    assert_eq!(c["identities"]["visitor"], serde_json::Value::Null, "{c}");
    let by_visitor = node.conversation_of("acme", "evil-1").await.unwrap();
    assert_ne!(
        by_visitor["id"], c["id"],
        "the visitor stays a contact of its own"
    );

    // A flood of claims: five per socket, ten an hour per address.
    let mut sent = 0;
    let mut refused = 0;
    for s in 0..3 {
        let mut ws = visitor(&node, &format!("evil-flood-{s}")).await;
        for k in 0..100 {
            send_json(
                &mut ws,
                json!({"type": "identify", "phone": phone(2000 + s * 100 + k)}),
            )
            .await;
            let f = next_json(&mut ws).await;
            match (f["type"].as_str(), f["code"].as_str()) {
                (Some("code_sent"), _) => sent += 1,
                (Some("error"), Some("too_many_claims")) => refused += 1,
                _ => panic!("{f}"),
            }
        }
    }
    // The attacker's socket above made one claim this hour too.
    assert_eq!(
        sent, 9,
        "ten codes an hour from one address, one already used"
    );
    assert_eq!(refused, 300 - 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_who_reads_the_code_joins_their_thread() {
    let node = Node::start(&["--simulated-clock", MORNING]);
    node.inbound(
        "gw-acme",
        &sms("acme", CUSTOMER, "Hi, is my crown ready?", Some("r1")),
    )
    .await;
    let mut me = visitor(&node, "me-1").await;
    send_json(
        &mut me,
        json!({"type": "message", "text": "it's me, my number is (555) 123-8888", "id": "m1"}),
    )
    .await;
    assert_eq!(next_of(&mut me, "code_sent").await["phone"], CUSTOMER);
    // Not linked yet: a business message for the number does not come here.
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551238888/messages",
            Some(&json!({"text": "Before", "purpose": "conversational", "channel": "webchat"})),
        )
        .await;
    assert_eq!(s, 202);
    only_pong(&mut me).await;
    let code = chat_code(&node, "acme", CUSTOMER).await;
    send_json(&mut me, json!({"type": "verify", "code": code})).await;
    let linked = next_of(&mut me, "linked").await;
    assert_eq!(linked["phone"], CUSTOMER);
    let c = node.conversation_of("acme", CUSTOMER).await.unwrap();
    assert_eq!(linked["conversation_id"], c["id"]);
    // Now the thread is theirs: the next message comes to the chat.
    let (s, _) = node
        .send_admin(
            Method::POST,
            "/api/v1/tenants/acme/contacts/%2B15551238888/messages",
            Some(&json!({"text": "Yes, it is ready", "purpose": "conversational", "channel": "webchat"})),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(
        next_of(&mut me, "message").await["text"],
        "Yes, it is ready"
    );
}
