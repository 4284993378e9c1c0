//! The `agents` measurement: many connected agent desktops and a stream of
//! customers asking for a person. Offer latency is from the customer's
//! request being sent to the offer frame arriving at an agent's socket;
//! fan-out latency is from a customer message being sent to it arriving
//! at the agent holding the conversation.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::Mutex;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::client::{latency_histogram, Conn};
use crate::node;

#[derive(clap::Args)]
pub struct AgentArgs {
    #[arg(long)]
    node: PathBuf,
    /// Connected agent desktops.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Customers asking for a person, per second.
    #[arg(long, default_value_t = 200)]
    escalations_per_sec: u64,
    /// Messages each customer sends once an agent holds the conversation.
    #[arg(long, default_value_t = 5)]
    messages: usize,
    /// Customer messages per second in the fan-out phase.
    #[arg(long, default_value_t = 1000)]
    messages_per_sec: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn config(agents: usize) -> String {
    let mut c = String::from(
        r#"
[server]
admin_token = "loadtest-admin-token"

[runtime]
offer_timeout_secs = 30
agent_wait_text = ""

[[tenants]]
id = "acme"
name = "Acme"
timezone = "America/New_York"
gateway_token = "gw-acme"
"#,
    );
    for i in 0..agents {
        let _ = write!(
            c,
            "\n[[agents]]\nid = \"a{i}\"\ntoken = \"agent-token-{i}\"\ntenants = [\"acme\"]\ncapacity = {{ chat = 4 }}\n"
        );
    }
    c
}

struct Shared {
    /// customer number → when its escalation was sent
    escalated: DashMap<u64, Instant>,
    /// message tag → when it was sent
    sent: DashMap<String, Instant>,
    offers: Mutex<Histogram<u64>>,
    /// The escalating request's own round trip (durable before its 202).
    acks: Mutex<Histogram<u64>>,
    fanout: Mutex<Histogram<u64>>,
    /// conversation id → customer number, once accepted
    assigned: DashMap<String, u64>,
    accepted: AtomicU64,
}

pub async fn run(a: AgentArgs) -> anyhow::Result<()> {
    let spawned = node::spawn_with_config(&a.node, &config(a.agents), &[])?;
    let addr = spawned.addr;
    let shared = Arc::new(Shared {
        escalated: DashMap::new(),
        sent: DashMap::new(),
        offers: Mutex::new(latency_histogram()),
        acks: Mutex::new(latency_histogram()),
        fanout: Mutex::new(latency_histogram()),
        assigned: DashMap::new(),
        accepted: AtomicU64::new(0),
    });
    eprintln!("node on {addr}: connecting {} agent desktops", a.agents);
    let started = Instant::now();
    let mut desks = Vec::new();
    for i in 0..a.agents {
        let url = format!("ws://{addr}/agent/ws?token=agent-token-{i}");
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
        ws.send(Frame::text(
            json!({"type": "status", "status": "available"}).to_string(),
        ))
        .await?;
        let shared = shared.clone();
        desks.push(tokio::spawn(async move { desk(ws, shared).await }));
    }
    eprintln!(
        "{} desktops connected in {:.1} s; {} escalations/s for {} s, then {} messages each at {}/s",
        a.agents,
        started.elapsed().as_secs_f64(),
        a.escalations_per_sec,
        a.seconds,
        a.messages,
        a.messages_per_sec
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Customers: ask for a person at a steady rate.
    let total = a.escalations_per_sec * a.seconds;
    let interval = Duration::from_secs_f64(1.0 / a.escalations_per_sec as f64);
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(Arc::new(tokio::sync::Mutex::new(Conn::open(addr).await?)));
    }
    let mut tick = tokio::time::interval(interval);
    let mut tasks = Vec::new();
    for n in 0..total {
        tick.tick().await;
        let conn = conns[n as usize % conns.len()].clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"tenant": "acme", "channel": "webchat", "from": format!("cust-{n}"),
                              "text": format!("I want to talk to a person (esc-{n})"),
                              "provider_message_id": format!("e{n}")})
            .to_string();
            let mut c = conn.lock().await;
            shared.escalated.insert(n, Instant::now());
            if let Ok((_, took, _)) = c.post_json("/api/v1/inbound", "gw-acme", body).await {
                let _ = shared
                    .acks
                    .lock()
                    .unwrap()
                    .record(took.as_micros().max(1) as u64);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Then every customer writes, once an agent holds their conversation.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.accepted.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the customers write, at `messages_per_sec`, round-robin.
    let customers: Vec<u64> = shared.assigned.iter().map(|e| *e.value()).collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.messages_per_sec as f64));
    let mut tasks = Vec::new();
    for k in 0..a.messages {
        for (i, n) in customers.iter().copied().enumerate() {
            tick.tick().await;
            let conn = conns[i % conns.len()].clone();
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let tag = format!("msg-{n}-{k}");
                let body = json!({"tenant": "acme", "channel": "webchat", "from": format!("cust-{n}"),
                                  "text": format!("question {k} ({tag})"), "provider_message_id": tag})
                .to_string();
                let mut c = conn.lock().await;
                shared.sent.insert(tag, Instant::now());
                let _ = c.post_json("/api/v1/inbound", "gw-acme", body).await;
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let offers = shared.offers.lock().unwrap().clone();
    let fanout = shared.fanout.lock().unwrap().clone();
    let acks = shared.acks.lock().unwrap().clone();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} agents; offers: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms); message fan-out: {} (p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)",
        a.agents,
        offers.len(),
        ms(&offers, 0.5),
        ms(&offers, 0.99),
        offers.max() as f64 / 1000.0,
        fanout.len(),
        ms(&fanout, 0.5),
        ms(&fanout, 0.99),
        fanout.max() as f64 / 1000.0,
    );
    println!(
        "  (the escalating request itself, durable before its 202: p50 {:.2} ms, p99 {:.2} ms)",
        ms(&acks, 0.5),
        ms(&acks, 0.99)
    );
    for d in desks {
        d.abort();
    }
    Ok(())
}

fn tag_in(text: &str, prefix: &str) -> Option<String> {
    let i = text.find(prefix)?;
    let rest = &text[i..];
    let end = rest.find(')').unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

async fn desk(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    shared: Arc<Shared>,
) {
    while let Some(Ok(f)) = ws.next().await {
        let Frame::Text(t) = f else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        match v["type"].as_str() {
            Some("offer") => {
                let text = v["summary"]["last_customer_message"].as_str().unwrap_or("");
                if let Some(n) = tag_in(text, "esc-").and_then(|t| t[4..].parse::<u64>().ok()) {
                    if let Some(at) = shared.escalated.get(&n) {
                        let _ = shared
                            .offers
                            .lock()
                            .unwrap()
                            .record(at.elapsed().as_micros().max(1) as u64);
                    }
                    let conv = v["conversation_id"].as_str().unwrap_or("").to_owned();
                    shared.assigned.insert(conv, n);
                }
                let accept = json!({"type": "accept", "offer_id": v["offer_id"]}).to_string();
                if ws.send(Frame::text(accept)).await.is_err() {
                    return;
                }
            }
            Some("assigned") => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Some("message") => {
                let text = v["message"]["text"].as_str().unwrap_or("");
                if let Some(tag) = tag_in(text, "msg-") {
                    if let Some((_, at)) = shared.sent.remove(&tag) {
                        let _ = shared
                            .fanout
                            .lock()
                            .unwrap()
                            .record(at.elapsed().as_micros().max(1) as u64);
                    }
                }
            }
            _ => {}
        }
    }
}
