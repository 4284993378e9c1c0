//! The `timers` measurement: durable scheduling throughput over the REST
//! API, then firing at a fixed rate on the real clock, with the node's own
//! lateness histogram (dispatch time minus due time).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::client::{latency_histogram, merge_latencies, Conn, NodeMetrics};
use crate::node;

#[derive(clap::Args)]
pub struct TimerArgs {
    /// Node binary to start (dev config, fresh data dir).
    #[arg(long)]
    node: PathBuf,
    /// Timers to schedule.
    #[arg(long, default_value_t = 100_000)]
    timers: u64,
    /// Rate at which they come due, per second.
    #[arg(long, default_value_t = 10_000)]
    fire_rate: u64,
    /// Conversations that own them.
    #[arg(long, default_value_t = 1_000)]
    conversations: u64,
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub async fn run(a: TimerArgs) -> anyhow::Result<()> {
    let node = node::spawn(&a.node, &[])?;
    let mut conn = Conn::open(node.addr).await?;
    // Conversations to own the timers.
    let mut convs = Vec::new();
    for c in 0..a.conversations {
        let body = json!({"tenant": "demo", "channel": "sms", "from": format!("+1556{c:07}"), "text": "hi"});
        let (s, _, b) = conn
            .post_json("/api/v1/inbound", "gw-demo", body.to_string())
            .await?;
        anyhow::ensure!(s == 202, "inbound {s}");
        let v: serde_json::Value = serde_json::from_slice(&b)?;
        convs.push(v["conversation_id"].as_str().unwrap_or_default().to_owned());
    }
    let convs = Arc::new(convs);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    // Due after scheduling is surely over: schedule at >= 10k/s takes at
    // most timers/10k seconds.
    let first_due = now_ms + 5_000 + a.timers * 1000 / 10_000;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let mut conn = Conn::open(node.addr).await?;
        let (next, convs, total, rate) = (next.clone(), convs.clone(), a.timers, a.fire_rate);
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let conv = &convs[(i % convs.len() as u64) as usize];
                let due = first_due + i * 1000 / rate;
                let body =
                    json!({"at": rfc3339(due), "kind": "follow_up", "text": format!("timer {i}")});
                let path = format!("/api/v1/conversations/{conv}/timers");
                let (s, took, _) = conn
                    .post_json(&path, "dev-admin-token", body.to_string())
                    .await?;
                anyhow::ensure!(s == 201, "schedule answered {s}");
                let _ = hist.record(took.as_micros().max(1) as u64);
            }
            anyhow::Ok(hist)
        }));
    }
    let hist = merge_latencies(tasks).await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "durable scheduling: {} timers in {:.2} s = {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
        a.timers,
        took,
        a.timers as f64 / took,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0
    );
    let last_due = first_due + a.timers * 1000 / a.fire_rate;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    anyhow::ensure!(now_ms < first_due, "scheduling ran into the firing window");
    eprintln!(
        "waiting {:.1} s for {} timers to fire at {}/s",
        (last_due + 3_000 - now_ms) as f64 / 1000.0,
        a.timers,
        a.fire_rate
    );
    tokio::time::sleep(Duration::from_millis(last_due + 3_000 - now_ms)).await;
    let m = NodeMetrics::fetch(node.addr).await?;
    let fired = m.value("threadline_timers_fired_total");
    let buckets = m.samples("threadline_timer_lateness_seconds_bucket");
    let count = m.value("threadline_timer_lateness_seconds_count");
    let quantile = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map(|(k, _)| k.split('"').nth(1).unwrap_or("?").to_owned())
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "firing at {}/s: {} fired; lateness p50 <= {} s, p99 <= {} s, p99.9 <= {} s (histogram bucket bounds)",
        a.fire_rate,
        fired,
        quantile(0.5),
        quantile(0.99),
        quantile(0.999)
    );
    Ok(())
}
