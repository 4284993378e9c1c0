//! `run`: simulated customers run a scenario's journeys against a node
//! started for the run, over its real interfaces (signed Twilio and
//! WhatsApp webhooks, the web chat WebSocket, the gateway API, voice
//! webhooks), with agent desktops taking escalations. The load tester is
//! also the providers the node sends to, so it measures the whole loop
//! (inbound webhook to the reply reaching the provider) and checks that
//! every expected reply came, once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use serde_json::json;

use crate::client::latency_histogram;
use crate::fakeprov::{self, Provider};
use crate::scenario::{Channel, Model, Scenario};

mod channels;
mod phase;

use channels::*;
pub(crate) use channels::{signed_form, sms_params};
use phase::*;

pub(crate) const ADMIN: &str = "loadtest-admin-token";
pub(crate) const GATEWAY: &str = "gw-loadtest";
pub(crate) const TENANT: &str = "lt";
pub(crate) const NUMBER: &str = "+15557654321";
pub(crate) const PUBLIC_URL: &str = "https://hooks.loadtest.example";

#[derive(clap::Args)]
pub struct RunArgs {
    /// The scenario file (see loadtest/scenarios/).
    #[arg(long)]
    pub scenario: PathBuf,
    /// The node binary to start for the run (a fresh data directory and a
    /// config generated from the scenario).
    #[arg(long, default_value = "target/release/threadline")]
    pub node: PathBuf,
    /// Override the scenario: concurrent customers (closed model).
    #[arg(long)]
    pub customers: Option<usize>,
    /// Override the scenario: journeys started per second (open model).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Override the scenario: seconds to run.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Override the scenario: customer messages to send.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Check every conversation's transcript over REST (default: 200).
    #[arg(long)]
    pub verify_all: bool,
    /// Write the report as JSON to this file (`-`: standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a chart of throughput and latency over time (SVG).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Find the knee: open model, the rate raised by a quarter every
    /// `--duration` seconds until p99 inbound-to-reply crosses this many
    /// milliseconds or errors appear.
    #[arg(long)]
    pub find_knee: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Drive a node that is already running here (host:port) instead of
    /// starting one; it must run the config `node-config` prints for this
    /// scenario, with its providers pointing at `--provider-listen`.
    #[arg(long)]
    pub url: Option<std::net::SocketAddr>,
    /// Where the fake providers listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub provider_listen: std::net::SocketAddr,
}

#[derive(clap::Args)]
pub struct NodeConfigArgs {
    /// The scenario file.
    #[arg(long)]
    pub scenario: PathBuf,
    /// Where the load tester's providers will listen (`run --provider-listen`).
    #[arg(long)]
    pub provider_base: String,
}

/// Prints the node config a scenario needs, for `run --url`.
pub fn node_config(a: NodeConfigArgs) -> anyhow::Result<()> {
    let s = Scenario::load(&a.scenario)?;
    print!("{}", config(&s, a.provider_base.trim_end_matches('/')));
    eprintln!(
        "run the node with --simulated-clock {} so quiet hours never hold an answer back",
        s.clock
    );
    Ok(())
}

/// Everything the customers of one run share.
pub struct Shared {
    scenario: Scenario,
    addr: std::net::SocketAddr,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    provider: Arc<Provider>,
    stop: AtomicBool,
    next_customer: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub replies: AtomicU64,
    pub lost: AtomicU64,
    pub extra: AtomicU64,
    pub journeys: AtomicU64,
    budget: Option<u64>,
    hists: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    /// Reply latencies of the current second (for the timeline).
    window: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Conversations to check at the end: (address, inbound message ids).
    done: Mutex<Vec<(String, Vec<String>, u32)>>,
    run_id: u64,
}

impl Shared {
    fn record(&self, kind: &'static str, d: Duration) {
        let us = d.as_micros().clamp(1, 60_000_000) as u64;
        let mut h = self.hists.lock().unwrap();
        h.entry(kind)
            .or_insert_with(latency_histogram)
            .saturating_record(us);
        if kind.ends_with(".reply") {
            self.window.lock().unwrap().saturating_record(us);
        }
    }

    fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }

    /// True once no new message may start.
    fn over(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self
                .budget
                .is_some_and(|b| self.sent.load(Ordering::Relaxed) >= b)
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut req = hyper::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = self
            .http
            .request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let req = hyper::Request::get(format!("http://{}{path}", self.addr))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Full::new(Bytes::new()))?;
        let resp = self.http.request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

/// The node's config for a scenario, its providers pointing here.
pub fn config(s: &Scenario, provider_base: &str) -> String {
    let mut c = format!(
        r#"
[server]
admin_token = "{ADMIN}"
public_url = "{PUBLIC_URL}"

[runtime]
agent_wait_text = ""

[providers]
retry_base_ms = 50

[providers.twilio]
account_sid = "{sid}"
auth_token = "{auth}"
api_base = "{provider_base}"

[providers.whatsapp]
app_secret = "{secret}"
verify_token = "loadtest-verify"
access_token = "{wa_token}"
api_base = "{provider_base}"

[[tenants]]
id = "{TENANT}"
name = "Load Test Co"
timezone = "{zone}"
sms_numbers = ["{NUMBER}"]
whatsapp_phone_number_id = "{wa_id}"
gateway_token = "{GATEWAY}"
quiet_hours_states = []
owner_phone = "+15550000199"
missed_call_text = "Sorry we missed your call! How can we help?"
voice_assistant = {assistant}
"#,
        assistant = s.voice_assistant,
        sid = fakeprov::SID,
        auth = fakeprov::AUTH_TOKEN,
        secret = fakeprov::WA_SECRET,
        wa_token = fakeprov::WA_TOKEN,
        wa_id = fakeprov::WA_PHONE_ID,
        zone = s.timezone,
    );
    if let Some(f) = &s.flow {
        c.push_str(&format!("flow = \"{}\"\n", f.display()));
    }
    for i in 0..s.agents.count {
        c.push_str(&format!(
            "\n[[agents]]\nid = \"agent{i}\"\nname = \"Agent {i}\"\ntoken = \"agent-token-{i}\"\ntenants = [\"{TENANT}\"]\ncapacity = {{ chat = 50, sms = 50, whatsapp = 50, voice = 1 }}\n"
        ));
    }
    c
}

/// One journey by one new customer.
async fn journey(sh: Arc<Shared>, j: usize, rng: &mut fastrand::Rng) {
    let n = sh.next_customer.fetch_add(1, Ordering::Relaxed);
    let who = match sh.scenario.load.identities {
        Some(k) => rng.u64(..k),
        None => n,
    };
    let phone = format!("+1555{:07}", who % 10_000_000);
    let jr = &sh.scenario.journeys[j];
    let name = ["Dana", "Jordan", "Sam", "Alex", "Priya", "Luis"][n as usize % 6];
    let timeout = Duration::from_millis(sh.scenario.load.reply_timeout_ms);
    let mut inbox = sh.provider.inbox(&phone);
    let mut ws = None;
    let mut address = phone.clone();
    if jr.channel == Channel::Webchat {
        let url = format!("ws://{}/chat/ws?tenant={TENANT}", sh.addr);
        match tokio_tungstenite::connect_async(&url).await {
            Ok((mut s, _)) => {
                match next_frame(&mut s, "hello", timeout).await {
                    Some(h) => address = h["visitor"].as_str().unwrap_or_default().to_owned(),
                    None => sh.error("webchat: no hello".into()),
                }
                ws = Some(s);
            }
            Err(e) => {
                sh.error(format!("webchat: connect: {e}"));
                sh.provider.close(&phone);
                return;
            }
        }
    }
    let mut ids = Vec::new();
    let mut expected = 0;
    // What the assistant said back to the last speech turn.
    let mut spoken = false;
    let mut begun = false;
    for (i, step) in jr.steps.iter().enumerate() {
        let [lo, hi] = sh.scenario.load.think_ms;
        if hi > 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(lo..=hi))).await;
        }
        if i == 0 {
            if sh.over() {
                break;
            }
            begun = true;
            sh.journeys.fetch_add(1, Ordering::Relaxed);
        }
        let id = format!("lt{:x}-{n:x}-{i}", sh.run_id);
        let text = step.say.clone().unwrap_or_default().replace("{name}", name);
        let kind = jr.channel.as_str();
        sh.sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let ok = match jr.channel {
            Channel::Sms => send_sms(&sh, &phone, &id, &text).await,
            Channel::Whatsapp => send_whatsapp(&sh, &phone, &id, &text, name).await,
            Channel::Api => send_api(&sh, &phone, &id, &text).await,
            Channel::Voice if step.missed_call => missed_call(&sh, &phone, &id).await,
            Channel::Voice => {
                let call = format!("lt{:x}-{n:x}", sh.run_id);
                match speech(&sh, &phone, &call, i + 1, &text).await {
                    Ok(said) => {
                        spoken = said;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Channel::Webchat => match ws.as_mut() {
                Some(s) => send_chat(s, &id, &text, timeout).await,
                None => Err("no socket".into()),
            },
        };
        match ok {
            Ok(()) => {
                sh.acked.fetch_add(1, Ordering::Relaxed);
                sh.record(ack_kind(jr.channel), started.elapsed());
                if jr.channel != Channel::Voice {
                    ids.push(id);
                }
            }
            Err(e) => {
                sh.error(format!("{kind}: {e}"));
                continue;
            }
        }
        expected += step.replies;
        if jr.channel == Channel::Voice && !step.missed_call {
            // The answer to a speech turn is in the webhook's TwiML.
            if step.replies > 0 {
                if spoken {
                    sh.replies.fetch_add(1, Ordering::Relaxed);
                    sh.record("voice.speech.reply", started.elapsed());
                } else {
                    sh.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        for r in 0..step.replies {
            let got = match ws.as_mut() {
                Some(s) => reply_frame(s, timeout).await,
                None => tokio::time::timeout(timeout, inbox.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match got {
                Some(at) => {
                    sh.replies.fetch_add(1, Ordering::Relaxed);
                    if r == 0 {
                        sh.record(
                            reply_kind(jr.channel),
                            at.saturating_duration_since(started),
                        );
                    }
                }
                None => {
                    sh.lost
                        .fetch_add((step.replies - r) as u64, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    // Anything more that came for this customer is extra (an agent's
    // answer, a wait message), not lost and not a duplicate.
    tokio::time::sleep(Duration::from_millis(50)).await;
    while inbox.try_recv().is_ok() {
        sh.extra.fetch_add(1, Ordering::Relaxed);
    }
    sh.provider.close(&phone);
    if let Some(mut s) = ws {
        let _ = s.close(None).await;
    }
    if begun {
        sh.done.lock().unwrap().push((address, ids, expected));
    }
}

pub async fn run(a: RunArgs) -> anyhow::Result<bool> {
    let started_at = std::time::SystemTime::now();
    let mut s = Scenario::load(&a.scenario)?;
    if let Some(c) = a.customers {
        s.load.customers = c;
    }
    if let Some(r) = a.rate {
        s.load.rate = r;
    }
    if let Some(d) = a.duration {
        s.load.duration_secs = Some(d);
        s.load.messages = None;
    }
    if let Some(m) = a.messages {
        s.load.messages = Some(m);
        s.load.duration_secs = None;
    }
    let provider = Arc::new(Provider::default());
    let (base, _) = fakeprov::serve(provider.clone(), a.provider_listen).await?;
    let node = match a.url {
        Some(_) => None,
        None => Some(crate::node::spawn_with_config(
            &a.node,
            &config(&s, &base),
            &["--simulated-clock".into(), s.clock.clone()],
        )?),
    };
    let addr = match (&node, a.url) {
        (Some(n), _) => n.addr,
        (None, Some(u)) => u,
        (None, None) => unreachable!("a node is started without --url"),
    };
    eprintln!(
        "scenario {:?}: node on {addr}{}, providers on {base}",
        s.name,
        node.as_ref()
            .map(|n| format!(" (pid {})", n.child.id()))
            .unwrap_or_default()
    );
    let mut reports = Vec::new();
    if let Some(bound) = a.find_knee {
        // Open model, the rate raised until the bound or errors.
        s.load.model = Model::Open;
        if s.load.duration_secs.is_none() {
            s.load.duration_secs = Some(10.0);
            s.load.messages = None;
        }
        let mut rate = s.load.rate.max(1.0);
        loop {
            let mut step = s.clone();
            step.load.rate = rate;
            step.load.ramp_secs = 0.0;
            let (r, _) = phase(
                step,
                addr,
                provider.clone(),
                a.quiet,
                &format!("{rate:.0}/s"),
            )
            .await?;
            let p99 = r.p99_reply_ms();
            let bad = p99 > bound || r.error_count() > 0 || r.lost > 0;
            eprintln!(
                "  {rate:>8.0} journeys/s: {:.0} msg/s, p99 {p99:.1} ms, errors {}, lost {}{}",
                r.sent as f64 / r.seconds,
                r.error_count(),
                r.lost,
                if bad { "  <- past the knee" } else { "" }
            );
            reports.push(r);
            if bad || rate > 1e6 {
                break;
            }
            rate *= 1.25;
        }
        let knee = reports
            .iter()
            .rev()
            .nth(1)
            .map(|r| r.sent as f64 / r.seconds);
        match knee {
            Some(k) => eprintln!("knee: about {k:.0} messages/s with p99 under {bound} ms"),
            None => eprintln!("knee: the first step already crossed {bound} ms"),
        }
    } else {
        let (mut r, sh) = phase(s, addr, provider.clone(), a.quiet, "run").await?;
        verify(&sh, a.verify_all, &mut r).await;
        reports.push(r);
    }
    let rss = reports.last().map(|r| {
        r.node_after
            .value("threadline_process_resident_memory_bytes")
    });
    let node_version = node_version(addr).await;
    drop(node);
    // With `--json -` standard output carries only the JSON; the human
    // report goes to standard error.
    let json_on_stdout = a.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    for r in &reports {
        match json_on_stdout {
            true => eprint!("{}", r.text(rss)),
            false => print!("{}", r.text(rss)),
        }
    }
    if let Some(path) = &a.json {
        let v = crate::report::envelope(
            "run",
            started_at,
            node_version,
            json!({"reports": reports.iter().map(|r| r.json(rss)).collect::<Vec<_>>()}),
        );
        if path.as_os_str() == "-" {
            println!("{v}");
        } else {
            std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
        }
    }
    if let Some(path) = &a.chart {
        crate::report::chart(&reports, path)?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(reports.iter().all(|r| r.passed()))
}

/// The node's version, from its `threadline_build_info` metric.
pub async fn node_version(addr: std::net::SocketAddr) -> Option<String> {
    let mut c = crate::client::Conn::open(addr).await.ok()?;
    let (_, body) = c.get("/metrics").await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let line = text
        .lines()
        .find(|l| l.starts_with("threadline_build_info{"))?;
    let v = line.split("version=\"").nth(1)?;
    Some(v[..v.find('"')?].to_owned())
}
