//! Crash test: customers and the business keep writing while the node is
//! SIGKILLed at random moments, many times, and restarted each time. At the
//! end every acknowledged inbound message is stored once and in order,
//! every message the gate decided to send reached the provider exactly
//! once, every acknowledged timer fired once, and the audit chain verifies.
//!
//! `THREADLINE_CRASH_KILLS=500 cargo test --release --test crash` runs it
//! long; CI runs 20 kills.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::fake_provider::{FakeTwilio, SID, TOKEN};
use common::*;
use serde_json::{json, Value};

const MORNING: &str = "2026-03-10T14:00:00Z";
const CUSTOMERS: usize = 6;

fn config(twilio: &str) -> String {
    format!(
        r#"
[server]
admin_token = "{ADMIN}"

[providers]
retry_base_ms = 10

[providers.twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{twilio}"

[[tenants]]
id = "acme"
name = "Acme Dental"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"
"#
    )
}

/// A small xorshift generator: the kill moments, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What one customer's task saw acknowledged.
#[derive(Default)]
struct Seen {
    /// Inbound provider ids, in the order they were acknowledged.
    inbound: Vec<String>,
    /// Business messages the gate answered `sent` for.
    sent: Vec<String>,
    /// Business messages whose answer was lost with the node (decided or
    /// not: at most once).
    unknown: Vec<String>,
    /// Timers acknowledged (201), by the text they send.
    timers: Vec<String>,
}

type Base = Arc<RwLock<String>>;

async fn post(
    http: &reqwest::Client,
    base: &Base,
    path: &str,
    token: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    let url = format!("{}{path}", base.read().unwrap());
    let r = http
        .post(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .json(body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// One customer: texts, and now and then the business writes to them or
/// sets a follow-up, until `stop`. Each text is sent again until it is
/// acknowledged, as a provider retries.
async fn customer(c: usize, base: Base, stop: Arc<AtomicBool>) -> Seen {
    let http = reqwest::Client::new();
    let mut seen = Seen::default();
    let contact = phone(100 + c);
    let enc = contact.replace('+', "%2B");
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) || k < 3 {
        let pid = format!("c{c}k{k}");
        let body = sms("acme", &contact, &format!("text {k}"), Some(&pid));
        let conv = loop {
            match post(&http, &base, "/api/v1/inbound", "gw-acme", &body).await {
                Some((202, v)) => break v["conversation_id"].as_str().unwrap().to_owned(),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        seen.inbound.push(pid);
        if k % 3 == 1 {
            let text = format!("business {c}.{k}");
            let msg = json!({"text": text, "purpose": "conversational"});
            let path = format!("/api/v1/tenants/acme/contacts/{enc}/messages");
            match post(&http, &base, &path, ADMIN, &msg).await {
                Some((202, v)) if v["decision"] == "sent" => seen.sent.push(text),
                Some((202, _)) => {}
                _ => seen.unknown.push(text),
            }
        }
        if k % 5 == 2 {
            let text = format!("follow-up {c}.{k}");
            let timer = json!({"in_seconds": 3600, "kind": "follow_up", "text": text});
            let path = format!("/api/v1/conversations/{conv}/timers");
            match post(&http, &base, &path, ADMIN, &timer).await {
                Some((201, _)) => seen.timers.push(text),
                _ => seen.unknown.push(text),
            }
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

fn count(texts: &[String], t: &str) -> usize {
    texts.iter().filter(|x| *x == t).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_under_load_lose_nothing_acknowledged_and_send_nothing_twice() {
    let kills: usize = std::env::var("THREADLINE_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let fake = FakeTwilio::start().await;
    let mut node = Node::start_with_config(&config(&fake.base), &["--simulated-clock", MORNING]);
    let base: Base = Arc::new(RwLock::new(node.base.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CUSTOMERS)
        .map(|c| tokio::spawn(customer(c, base.clone(), stop.clone())))
        .collect();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(50 + rng.next() % 250)).await;
        node.sigkill();
        node.restart();
        *base.write().unwrap() = node.base.clone();
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    println!("crash test: survived {kills} kills");

    // The follow-ups come due.
    node.advance(2.0 * 3600.0).await;

    let mut outbound_expected = 0;
    for (c, s) in seen.iter().enumerate() {
        let conv = node.conversation_of("acme", &phone(100 + c)).await.unwrap();
        let pids: Vec<String> = conv["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["provider_message_id"].as_str())
            .filter(|p| p.starts_with('c'))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            pids, s.inbound,
            "customer {c}: every acknowledged text once, in order"
        );
        let out = texts_where(&conv, "direction", "outbound");
        for t in s.sent.iter().chain(&s.timers) {
            assert_eq!(
                count(&out, t),
                1,
                "customer {c}: {t:?} decided once: {out:?}"
            );
            outbound_expected += 1;
        }
        for t in &s.unknown {
            assert!(count(&out, t) <= 1, "customer {c}: {t:?} at most once");
        }
    }
    // Each decided message reached the provider once (one idempotency key
    // each, whatever was sent again after a crash).
    let mut accepted: HashMap<String, usize> = HashMap::new();
    for _ in 0..500 {
        accepted.clear();
        for b in fake.accepted_bodies() {
            *accepted.entry(b).or_default() += 1;
        }
        let all = seen
            .iter()
            .flat_map(|s| s.sent.iter().chain(&s.timers))
            .all(|t| accepted.contains_key(t));
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in &seen {
        for t in s.sent.iter().chain(&s.timers) {
            assert_eq!(accepted.get(t), Some(&1), "{t:?} sent exactly once");
        }
        for t in &s.unknown {
            assert!(
                accepted.get(t).copied().unwrap_or(0) <= 1,
                "{t:?} at most once"
            );
        }
    }
    assert!(outbound_expected > 0, "the load made decisions");

    // The audit chain survived every kill.
    let trail = audit_export(&node, "").await;
    let out = audit_verify(node.dir.path(), "audit.ndjson", &trail);
    assert!(out.status.success(), "{out:?}");
    println!(
        "crash test: {} texts, {outbound_expected} decided messages, {} audit records",
        seen.iter().map(|s| s.inbound.len()).sum::<usize>(),
        trail.lines().count()
    );
}
