//! The `outbound` measurement: business-initiated messages through the
//! consent gate over the REST API, each decision durable with its audit
//! record (and its message or held timer).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::client::{latency_histogram, Conn, NodeMetrics};
use crate::node;

#[derive(clap::Args)]
pub struct OutboundArgs {
    /// Node binary to start (dev config, sandbox provider, fresh data dir).
    #[arg(long)]
    node: Option<PathBuf>,
    /// A running dev node instead (host:port).
    #[arg(long)]
    addr: Option<std::net::SocketAddr>,
    /// Decisions to request.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Contacts they are spread over.
    #[arg(long, default_value_t = 10_000)]
    contacts: u64,
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

pub async fn run(a: OutboundArgs) -> anyhow::Result<()> {
    let spawned;
    let addr = match (&a.node, a.addr) {
        (Some(bin), _) => {
            spawned = node::spawn(bin, &[])?;
            spawned.addr
        }
        (None, Some(addr)) => addr,
        (None, None) => anyhow::bail!("give --node BINARY or --addr HOST:PORT"),
    };
    // Every contact has consent on record (a web form, say), so the gate
    // decides real sends: without a basis it would refuse them all.
    let seeded = Arc::new(AtomicU64::new(0));
    let mut seeders = Vec::new();
    for _ in 0..a.clients {
        let mut conn = Conn::open(addr).await?;
        let (seeded, contacts) = (seeded.clone(), a.contacts);
        seeders.push(tokio::spawn(async move {
            loop {
                let c = seeded.fetch_add(1, Ordering::Relaxed);
                if c >= contacts {
                    break;
                }
                let path = format!("/api/v1/tenants/demo/contacts/%2B1557{c:07}/consent");
                let body =
                    json!({"status": "opted_in", "source": "import", "proof": "loadtest seed"});
                let (s, _, b) = conn
                    .post_json(&path, "dev-admin-token", body.to_string())
                    .await?;
                anyhow::ensure!(
                    s == 201,
                    "consent answered {s}: {}",
                    String::from_utf8_lossy(&b)
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in seeders {
        t.await??;
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let mut conn = Conn::open(addr).await?;
        let (next, total, contacts) = (next.clone(), a.messages, a.contacts);
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut decisions: HashMap<String, u64> = HashMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let purpose = ["conversational", "reminder", "marketing"][(i % 3) as usize];
                let path = format!(
                    "/api/v1/tenants/demo/contacts/%2B1557{:07}/messages",
                    i % contacts
                );
                let body = json!({"text": format!("message {i}"), "purpose": purpose});
                let (s, took, b) = conn
                    .post_json(&path, "dev-admin-token", body.to_string())
                    .await?;
                anyhow::ensure!(s == 202, "answered {s}");
                let v: serde_json::Value = serde_json::from_slice(&b)?;
                *decisions
                    .entry(v["decision"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
                let _ = hist.record(took.as_micros().max(1) as u64);
            }
            anyhow::Ok((hist, decisions))
        }));
    }
    let mut hist = latency_histogram();
    let mut decisions: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        let (h, d) = t.await??;
        hist.add(h)?;
        for (k, v) in d {
            *decisions.entry(k).or_default() += v;
        }
    }
    let took = started.elapsed().as_secs_f64();
    let m = NodeMetrics::fetch(addr).await?;
    println!(
        "outbound decisions: {} in {:.2} s = {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); {:?}; {:.1} ops per commit",
        a.messages,
        took,
        a.messages as f64 / took,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        decisions,
        m.value("threadline_commit_batch_size_sum") / m.value("threadline_commit_batch_size_count"),
    );
    Ok(())
}
