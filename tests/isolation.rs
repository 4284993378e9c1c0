//! Tenant isolation and token separation, written as attacks: every
//! admin read and write path with a gateway's or an agent's token, a
//! gateway posting for another tenant, one phone number or web-chat
//! visitor id used with two tenants, and the wrong kind of token on each
//! door. Each attack checks that nothing was read or changed.

mod common;

use common::ws::*;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const CUSTOMER: &str = "+15551230001";
const ENC: &str = "%2B15551230001";

fn config() -> String {
    format!(
        "{CONFIG}\n[[agents]]\nid = \"ana\"\nname = \"Ana\"\ntoken = \"agent-ana\"\ntenants = [\"acme\"]\n\n[[agents]]\nid = \"ben\"\nname = \"Ben\"\ntoken = \"agent-ben\"\ntenants = [\"beta\"]\n"
    )
}

/// `method path` with `token` (if any) and `body`: status and JSON body.
async fn call(
    node: &Node,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = node.http.request(method, node.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// What a tenant's customer has, as the admin reads it.
async fn snapshot(node: &Node, tenant: &str, address: &str) -> (Option<Value>, Value) {
    let conv = node.conversation_of(tenant, address).await;
    let enc = address.replace('+', "%2B");
    let (s, consent) = node
        .get_admin(&format!("/api/v1/tenants/{tenant}/contacts/{enc}/consent"))
        .await;
    assert_eq!(s, 200, "{consent}");
    (conv, consent)
}

/// `tenant`'s conversation with `contact` once it holds `text`.
async fn recorded(node: &Node, tenant: &str, contact: &str, text: &str) -> Value {
    for _ in 0..100 {
        if let Some(c) = node.conversation_of(tenant, contact).await {
            if texts(&c).iter().any(|t| t == text) {
                return c;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{tenant}'s conversation with {contact} never held {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gateway_or_agent_token_reads_or_writes_through_an_admin_path() {
    let node = Node::start_with_config(&config(), &[]);
    let (s, v) = node
        .inbound(
            "gw-acme",
            &sms("acme", CUSTOMER, "my card ends 4242", Some("p1")),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    let (s, t) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/conversations/{conv}/timers"),
            Some(&json!({"in_seconds": 3600, "kind": "follow_up", "text": "checking in"})),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let timer = t["id"].as_str().unwrap().to_owned();
    let before = snapshot(&node, "acme", CUSTOMER).await;
    let message = json!({"text": "from an intruder", "channel": "sms"});
    let attacks: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/conversations/{conv}"), None),
        (
            Method::GET,
            format!("/api/v1/tenants/acme/contacts/{ENC}/conversation"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/tenants/acme/contacts/{ENC}/consent"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/tenants/acme/contacts/{ENC}/consent"),
            Some(json!({"status": "opted_out", "channel": "sms", "source": "attack"})),
        ),
        (
            Method::PUT,
            format!("/api/v1/tenants/acme/contacts/{ENC}"),
            Some(json!({"name": "Mallory"})),
        ),
        (
            Method::POST,
            format!("/api/v1/tenants/acme/contacts/{ENC}/messages"),
            Some(message.clone()),
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conv}/messages"),
            Some(message.clone()),
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conv}/timers"),
            Some(json!({"in_seconds": 60, "kind": "follow_up", "text": "spam"})),
        ),
        (Method::DELETE, format!("/api/v1/timers/{timer}"), None),
        (
            Method::POST,
            format!("/api/v1/conversations/{conv}/escalate"),
            Some(json!({"reason": "attack"})),
        ),
        (Method::GET, "/api/v1/tenants/acme/audit".into(), None),
        (Method::GET, "/api/v1/tenants/acme/metrics".into(), None),
        (Method::GET, "/api/v1/tenants/acme/queue".into(), None),
        (Method::GET, "/api/v1/tenants/acme/calendar".into(), None),
        (Method::GET, "/api/v1/agents".into(), None),
        (
            Method::POST,
            "/api/v1/agents".into(),
            Some(
                json!({"id": "mallory", "name": "M", "token": "agent-mallory-1",
                        "tenants": ["acme", "beta"], "capacity": {"chat": 1}}),
            ),
        ),
        (Method::DELETE, "/api/v1/agents/ana".into(), None),
        (Method::GET, "/api/v1/dead-letters".into(), None),
        (Method::GET, "/api/v1/cluster".into(), None),
        (Method::POST, "/api/v1/backup".into(), None),
        (Method::POST, "/api/v1/flows/reload".into(), None),
    ];
    for token in [
        None,
        Some("gw-acme"),
        Some("gw-beta"),
        Some("agent-ana"),
        Some("agent-ben"),
        Some("test-admin-token-"),
        Some("test-admin-toke"),
        Some("TEST-ADMIN-TOKEN"),
    ] {
        for (method, path, body) in &attacks {
            let (s, v) = call(&node, method.clone(), path, token, body.as_ref()).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{method} {path} with {token:?}: {v}"
            );
            // The refusal names no secret.
            let text = v.to_string();
            for secret in [ADMIN, "gw-acme", "agent-ana", "4242"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }
    // Nothing was read into an answer or changed.
    assert_eq!(snapshot(&node, "acme", CUSTOMER).await, before);
    let (_, agents) = node.get_admin("/api/v1/agents").await;
    let ids: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ana", "ben"], "{agents}");
    let backups = node.dir.path().join("data").join("backups");
    assert!(!backups.exists() || std::fs::read_dir(&backups).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_door_takes_only_its_own_kind_of_token() {
    let node = Node::start_with_config(&config(), &[]);
    // A gateway posts only for its own tenant; the admin's and agents'
    // tokens are not gateway tokens.
    for (token, tenant, want) in [
        ("gw-acme", "beta", 403),
        ("gw-beta", "acme", 403),
        (ADMIN, "acme", 401),
        ("agent-ana", "acme", 401),
    ] {
        let (s, v) = node
            .inbound(token, &sms(tenant, CUSTOMER, "hello", Some("door")))
            .await;
        assert_eq!(s, want, "{token} for {tenant}: {v}");
    }
    assert!(node.conversation_of("acme", CUSTOMER).await.is_none());
    assert!(node.conversation_of("beta", CUSTOMER).await.is_none());
    // The agent desktop takes only agent tokens.
    for token in [ADMIN, "gw-acme", "agent-nobody"] {
        let r = node
            .http
            .get(node.url("/agent/ws"))
            .bearer_auth(token)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{token} on /agent/ws");
    }
    let url = node.base.replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/agent/ws?token=agent-ana"))
        .await
        .unwrap();
    let hello = next_of(&mut ws, "hello").await;
    assert_eq!(hello["agent"]["id"], "ana", "{hello}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_number_or_visitor_id_with_two_tenants_is_two_separate_customers() {
    let node = Node::start_with_config(&config(), &[]);
    // The same phone number is a customer of both tenants.
    let (s, a) = node
        .inbound(
            "gw-acme",
            &sms("acme", CUSTOMER, "acme secret 1111", Some("a1")),
        )
        .await;
    assert_eq!(s, 202, "{a}");
    let (s, b) = node
        .inbound(
            "gw-beta",
            &sms("beta", CUSTOMER, "beta secret 2222", Some("b1")),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    assert_ne!(a["conversation_id"], b["conversation_id"]);
    // A provider id one tenant used is not a duplicate for the other.
    let (s, b2) = node
        .inbound("gw-beta", &sms("beta", CUSTOMER, "beta again", Some("a1")))
        .await;
    assert_eq!((s, b2["duplicate"].as_bool()), (202, Some(false)), "{b2}");
    let acme = node.conversation_of("acme", CUSTOMER).await.unwrap();
    let beta = node.conversation_of("beta", CUSTOMER).await.unwrap();
    assert_eq!(texts(&acme), ["acme secret 1111"]);
    assert_eq!(texts(&beta), ["beta secret 2222", "beta again"]);

    // STOP to one tenant opts out of that tenant only.
    let (s, _) = node
        .inbound("gw-acme", &sms("acme", CUSTOMER, "STOP", Some("a2")))
        .await;
    assert_eq!(s, 202);
    let (_, ca) = snapshot(&node, "acme", CUSTOMER).await;
    let (_, cb) = snapshot(&node, "beta", CUSTOMER).await;
    assert_eq!(ca["channels"]["sms"]["status"], "opted_out", "{ca}");
    assert_eq!(cb["status"], "unknown", "{cb}");

    // Beta answers its customer: a decision in beta's audit trail.
    let (s, v) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/tenants/beta/contacts/{ENC}/messages"),
            Some(&json!({"text": "beta answers", "purpose": "conversational"})),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    // Each tenant's audit export has only its own records.
    let acme_audit = tenant_audit(&node, "acme", "").await;
    let beta_audit = tenant_audit(&node, "beta", "").await;
    assert!(!acme_audit.is_empty() && !beta_audit.is_empty());
    for (text, own, other) in [
        (&acme_audit, &a["conversation_id"], &b["conversation_id"]),
        (&beta_audit, &b["conversation_id"], &a["conversation_id"]),
    ] {
        let (own, other) = (own.as_str().unwrap(), other.as_str().unwrap());
        assert!(text.contains(own), "{text}");
        assert!(!text.contains(other), "{text}");
    }
    assert!(!beta_audit.contains("\"acme\""), "{beta_audit}");

    // A conversation id is not a key to another tenant's contact paths.
    let (s, _) = node
        .get_admin("/api/v1/tenants/beta/contacts/%2B15559990000/conversation")
        .await;
    assert_eq!(s, 404);

    // A web-chat visitor id reused with another tenant sees nothing of the
    // first tenant's chat.
    let url = node.base.replace("http://", "ws://");
    let (mut v1, _) =
        tokio_tungstenite::connect_async(format!("{url}/chat/ws?tenant=acme&visitor=shared-v"))
            .await
            .unwrap();
    assert_eq!(next_json(&mut v1).await["type"], "hello");
    send_json(
        &mut v1,
        json!({"type": "message", "text": "acme chat secret 3333"}),
    )
    .await;
    recorded(&node, "acme", "shared-v", "acme chat secret 3333").await;
    let (mut v2, _) =
        tokio_tungstenite::connect_async(format!("{url}/chat/ws?tenant=beta&visitor=shared-v"))
            .await
            .unwrap();
    let hello = next_json(&mut v2).await;
    assert_eq!(
        (hello["type"].as_str(), hello["tenant"].as_str()),
        (Some("hello"), Some("beta"))
    );
    send_json(&mut v2, json!({"type": "message", "text": "hi beta"})).await;
    let c = recorded(&node, "beta", "shared-v", "hi beta").await;
    assert!(!c.to_string().contains("3333"), "{c}");
    // Reconnecting to beta, the history is beta's only.
    let (mut v3, _) =
        tokio_tungstenite::connect_async(format!("{url}/chat/ws?tenant=beta&visitor=shared-v"))
            .await
            .unwrap();
    assert_eq!(next_json(&mut v3).await["type"], "hello");
    let history = next_of(&mut v3, "history").await;
    let beta_chat = node.conversation_of("beta", "shared-v").await.unwrap();
    assert_eq!(history["conversation_id"], beta_chat["id"]);
    let said: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(said.contains(&"hi beta"), "{history}");
    assert!(!history.to_string().contains("3333"), "{history}");
}
