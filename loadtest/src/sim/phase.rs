//! One phase of a run (its customers, arrival model and agents), and the
//! check after it that every acknowledged message is stored once and was
//! answered.

use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::client::{latency_histogram, NodeMetrics};
use crate::fakeprov::Provider;
use crate::report::{Report, Sample};
use crate::scenario::{Channel, Model, Scenario};

/// An agent desktop: available, accepts every offer, answers once and
/// closes the conversation.
pub(super) async fn agent(sh: Arc<Shared>, i: usize, offers: Arc<AtomicU64>) {
    let url = format!("ws://{}/agent/ws?token=agent-token-{i}", sh.addr);
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        sh.error("agent: connect".into());
        return;
    };
    let _ = ws
        .send(Frame::text(
            json!({"type": "status", "status": "available"}).to_string(),
        ))
        .await;
    let reply = sh.scenario.agents.reply.clone();
    let mut offered: BTreeMap<String, Instant> = BTreeMap::new();
    while let Some(Ok(f)) = ws.next().await {
        let Frame::Text(t) = f else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        if std::env::var_os("LT_DEBUG").is_some() {
            eprintln!("agent{i} <- {}", &t[..t.len().min(300)]);
        }
        match v["type"].as_str() {
            Some("offer") => {
                offers.fetch_add(1, Ordering::Relaxed);
                let conv = v["conversation_id"].as_str().unwrap_or("").to_owned();
                offered.insert(conv, Instant::now());
                let _ = ws
                    .send(Frame::text(
                        json!({"type": "accept", "offer_id": v["offer_id"]}).to_string(),
                    ))
                    .await;
            }
            Some("assigned") => {
                let conv = v["conversation"]["id"]
                    .as_str()
                    .or(v["conversation_id"].as_str())
                    .unwrap_or("")
                    .to_owned();
                if let Some(at) = offered.remove(&conv) {
                    sh.record("agent.accept", at.elapsed());
                }
                let _ = ws
                    .send(Frame::text(
                        json!({"type": "send", "conversation_id": conv, "text": reply}).to_string(),
                    ))
                    .await;
                // Done with it: the desktop has room for the next one.
                let _ = ws
                    .send(Frame::text(
                        json!({"type": "close", "conversation_id": conv, "disposition": "answered"})
                            .to_string(),
                    ))
                    .await;
            }
            _ => {}
        }
    }
}

/// Runs the scenario once against a node at `addr` whose providers point
/// at `provider`; the report of that phase.
pub(super) async fn phase(
    scenario: Scenario,
    addr: std::net::SocketAddr,
    provider: Arc<Provider>,
    quiet: bool,
    label: &str,
) -> anyhow::Result<(Report, Arc<Shared>)> {
    let budget = scenario.load.messages;
    let duration = scenario.load.duration_secs;
    let mut http = Client::builder(TokioExecutor::new());
    http.pool_max_idle_per_host(4096);
    let sh = Arc::new(Shared {
        http: http.build_http(),
        addr,
        provider: provider.clone(),
        stop: AtomicBool::new(false),
        next_customer: AtomicU64::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_micros() as u64
                % 5_000_000,
        ),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        extra: AtomicU64::new(0),
        journeys: AtomicU64::new(0),
        budget,
        hists: Mutex::new(BTreeMap::new()),
        window: Mutex::new(latency_histogram()),
        errors: Mutex::new(BTreeMap::new()),
        done: Mutex::new(Vec::new()),
        run_id: fastrand::u64(..),
        scenario,
    });
    let before = NodeMetrics::fetch(addr).await?;
    let offers = Arc::new(AtomicU64::new(0));
    let mut agents = Vec::new();
    for i in 0..sh.scenario.agents.count {
        agents.push(tokio::spawn(agent(sh.clone(), i, offers.clone())));
    }
    let provider_before = (
        provider.duplicates.load(Ordering::Relaxed),
        provider.unmatched.load(Ordering::Relaxed),
    );

    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = match duration {
            Some(d) => indicatif::ProgressBar::new(d.ceil() as u64),
            None => indicatif::ProgressBar::new(budget.unwrap_or(0)),
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("a valid template"),
        );
        b.set_prefix(label.to_owned());
        b
    };

    let start = Instant::now();
    let mut tasks = Vec::new();
    match sh.scenario.load.model {
        Model::Closed => {
            for c in 0..sh.scenario.load.customers {
                let sh = sh.clone();
                tasks.push(tokio::spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(c as u64 ^ sh.run_id);
                    while !sh.over() {
                        let j = sh.scenario.pick(&mut rng);
                        journey(sh.clone(), j, &mut rng).await;
                    }
                }));
            }
        }
        Model::Open => {
            let sh = sh.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(sh.run_id);
                let mut running = Vec::new();
                let mut started = 0u64;
                // Messages per second → journeys per second.
                let rate = sh.scenario.load.rate / sh.scenario.mean_steps();
                let ramp = sh.scenario.load.ramp_secs;
                while !sh.over() {
                    // Journeys due by now: the integral of the (ramped) rate.
                    let t = start.elapsed().as_secs_f64();
                    let due = if ramp > 0.0 && t < ramp {
                        rate * t * t / (2.0 * ramp)
                    } else {
                        rate * (t - ramp / 2.0)
                    };
                    while (started as f64) < due && !sh.over() {
                        started += 1;
                        let j = sh.scenario.pick(&mut rng);
                        let (sh, seed) = (sh.clone(), rng.u64(..));
                        running.push(tokio::spawn(async move {
                            let mut rng = fastrand::Rng::with_seed(seed);
                            journey(sh, j, &mut rng).await;
                        }));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                for r in running {
                    let _ = r.await;
                }
            }));
        }
    }

    // The clock: progress, the timeline, and the end of the run.
    let mut timeline = Vec::new();
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let (sent, replies) = (
            sh.sent.load(Ordering::Relaxed),
            sh.replies.load(Ordering::Relaxed),
        );
        let (p50, p99) = {
            let mut w = sh.window.lock().unwrap();
            let p = (
                w.value_at_quantile(0.5) as f64 / 1000.0,
                w.value_at_quantile(0.99) as f64 / 1000.0,
            );
            w.reset();
            p
        };
        timeline.push(Sample {
            t,
            sent_per_s: (sent - last.0) as f64,
            replies_per_s: (replies - last.1) as f64,
            reply_p50_ms: p50,
            reply_p99_ms: p99,
        });
        last = (sent, replies);
        match duration {
            Some(_) => bar.set_position(t as u64),
            None => bar.set_position(sent),
        }
        bar.set_message(format!(
            "{:.0} msg/s, {:.0} replies/s, reply p99 {p99:.1} ms, lost {}, errors {}",
            timeline.last().map_or(0.0, |s| s.sent_per_s),
            timeline.last().map_or(0.0, |s| s.replies_per_s),
            sh.lost.load(Ordering::Relaxed),
            sh.errors.lock().unwrap().values().sum::<u64>()
        ));
        if duration.is_some_and(|d| t >= d) {
            sh.stop.store(true, Ordering::Relaxed);
        }
        if sh.over() {
            break;
        }
    }
    let sending = start.elapsed().as_secs_f64();
    bar.set_message("waiting for journeys in progress");
    for t in tasks {
        let _ = t.await;
    }
    sh.stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
    for a in agents {
        a.abort();
    }
    // Late replies and repeats land before they are counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = NodeMetrics::fetch(addr).await?;

    let hists = sh.hists.lock().unwrap().clone();
    let report = Report {
        scenario: sh.scenario.name.clone(),
        label: label.to_owned(),
        model: format!("{:?}", sh.scenario.load.model).to_lowercase(),
        seconds: sending,
        journeys: sh.journeys.load(Ordering::Relaxed),
        sent: sh.sent.load(Ordering::Relaxed),
        acked: sh.acked.load(Ordering::Relaxed),
        replies: sh.replies.load(Ordering::Relaxed),
        lost: sh.lost.load(Ordering::Relaxed),
        duplicated: provider.duplicates.load(Ordering::Relaxed) - provider_before.0,
        extra: sh.extra.load(Ordering::Relaxed)
            + (provider.unmatched.load(Ordering::Relaxed) - provider_before.1),
        offers_accepted: offers.load(Ordering::Relaxed),
        errors: sh.errors.lock().unwrap().clone(),
        latencies: hists,
        node_before: before,
        node_after: after,
        timeline,
        verified: 0,
        verify_failures: Vec::new(),
    };
    Ok((report, sh))
}

/// Checks transcripts over the REST API: each inbound message the node
/// acknowledged is stored exactly once, and it holds at least as many
/// answers as were expected.
pub(super) async fn verify(sh: &Shared, all: bool, report: &mut Report) {
    let done = sh.done.lock().unwrap().clone();
    let step = if all { 1 } else { (done.len() / 200).max(1) };
    let channel_of = |addr: &str| {
        if addr.starts_with('+') {
            None
        } else {
            Some(Channel::Webchat)
        }
    };
    for (address, ids, expected) in done.iter().step_by(step) {
        report.verified += 1;
        let path = format!(
            "/api/v1/tenants/{TENANT}/contacts/{}/conversation",
            address.replace('+', "%2B")
        );
        let conv: Value = match sh.get(&path).await {
            Ok((200, b)) => serde_json::from_slice(&b).unwrap_or_default(),
            Ok((404, _)) if ids.is_empty() => continue,
            Ok((s, _)) => {
                report
                    .verify_failures
                    .push(format!("{address}: conversation answered {s}"));
                continue;
            }
            Err(e) => {
                report.verify_failures.push(format!("{address}: {e}"));
                continue;
            }
        };
        let msgs = conv["messages"].as_array().cloned().unwrap_or_default();
        for id in ids {
            let found = msgs
                .iter()
                .filter(|m| {
                    let p = m["provider_message_id"].as_str().unwrap_or("");
                    [Channel::Sms, Channel::Whatsapp, Channel::Api]
                        .iter()
                        .any(|c| p == stored_id(*c, id))
                        || (channel_of(address).is_some() && p.ends_with(id.as_str()))
                })
                .count();
            if found != 1 {
                report
                    .verify_failures
                    .push(format!("{address}: message {id} stored {found} times"));
            }
        }
        let answers = msgs
            .iter()
            .filter(|m| m["direction"] == "outbound" && m["author"] != "system")
            .count();
        if answers < *expected as usize {
            report.verify_failures.push(format!(
                "{address}: {answers} answers stored, {expected} expected"
            ));
        }
    }
}
