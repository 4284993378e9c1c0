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

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::client::{latency_histogram, NodeMetrics};
use crate::fakeprov::{self, Provider};
use crate::report::{Report, Sample};
use crate::scenario::{Channel, Model, Scenario};

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

fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(fakeprov::AUTH_TOKEN.as_bytes())
        .expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn meta_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(fakeprov::WA_SECRET.as_bytes())
        .expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
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

fn ack_kind(c: Channel) -> &'static str {
    match c {
        Channel::Sms => "sms.ack",
        Channel::Whatsapp => "whatsapp.ack",
        Channel::Webchat => "webchat.ack",
        Channel::Api => "api.ack",
        Channel::Voice => "voice.ack",
    }
}

fn reply_kind(c: Channel) -> &'static str {
    match c {
        Channel::Sms => "sms.reply",
        Channel::Whatsapp => "whatsapp.reply",
        Channel::Webchat => "webchat.reply",
        Channel::Api => "api.reply",
        Channel::Voice => "voice.missed_call_text.reply",
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(ws: &mut Ws, kind: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let f = tokio::time::timeout(left, ws.next()).await.ok()??.ok()?;
        if let Frame::Text(t) = f {
            let v: Value = serde_json::from_str(&t).ok()?;
            if v["type"] == kind {
                return Some(v);
            }
        }
    }
}

/// The next message from the business on the chat socket.
async fn reply_frame(ws: &mut Ws, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let v = next_frame(ws, "message", left).await?;
        if v["direction"] == "outbound" {
            return Some(Instant::now());
        }
    }
}

async fn send_chat(ws: &mut Ws, id: &str, text: &str, timeout: Duration) -> Result<(), String> {
    ws.send(Frame::text(
        json!({"type": "message", "text": text, "id": id}).to_string(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    match next_frame(ws, "ack", timeout).await {
        Some(_) => Ok(()),
        None => Err("no ack".into()),
    }
}

fn status_ok(r: anyhow::Result<(u16, Bytes)>, want: u16) -> Result<(), String> {
    match r {
        Ok((s, _)) if s == want => Ok(()),
        Ok((s, _)) => Err(format!("status {s}")),
        Err(e) => Err(format!("transport: {e}")),
    }
}

/// The form Twilio posts for a text `sid` from `from` to the tenant.
pub(crate) fn sms_params<'a>(
    sid: &'a str,
    from: &'a str,
    text: &'a str,
) -> [(&'a str, &'a str); 10] {
    [
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", fakeprov::SID),
        ("From", from),
        ("To", NUMBER),
        ("Body", text),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsStatus", "received"),
        ("ApiVersion", "2010-04-01"),
    ]
}

async fn send_sms(sh: &Shared, from: &str, id: &str, text: &str) -> Result<(), String> {
    let sid = format!("SM{id}");
    twilio_post(sh, "/webhooks/twilio/sms", &sms_params(&sid, from, text))
        .await
        .map(|_| ())
}

/// A call nobody answers: it rings the owner, then the dial reports
/// no answer.
async fn missed_call(sh: &Shared, from: &str, id: &str) -> Result<(), String> {
    let sid = format!("CA{id}");
    let mut params = vec![
        ("CallSid", sid.as_str()),
        ("AccountSid", fakeprov::SID),
        ("From", from),
        ("To", NUMBER),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
    ];
    twilio_post(sh, "/webhooks/twilio/voice", &params).await?;
    params.push(("DialCallStatus", "no-answer"));
    twilio_post(sh, "/webhooks/twilio/voice/dial-status", &params).await?;
    Ok(())
}

/// One speech turn of call `call` (turn 1 first answers the call); true
/// if the assistant said something back.
async fn speech(
    sh: &Shared,
    from: &str,
    call: &str,
    turn: usize,
    text: &str,
) -> Result<bool, String> {
    let sid = format!("CA{call}");
    let mut params = vec![
        ("CallSid", sid.as_str()),
        ("AccountSid", fakeprov::SID),
        ("From", from),
        ("To", NUMBER),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
    ];
    if turn == 1 {
        twilio_post(sh, "/webhooks/twilio/voice", &params).await?;
    }
    params.push(("SpeechResult", text));
    params.push(("Confidence", "0.92"));
    let path = format!("/webhooks/twilio/voice/gather?turn={turn}");
    let twiml = twilio_post(sh, &path, &params).await?;
    Ok(twiml.contains("<Say"))
}

/// A Twilio webhook to `path` of the node: its form body and its
/// `X-Twilio-Signature`.
pub(crate) fn signed_form(path: &str, params: &[(&str, &str)]) -> (String, String) {
    let sig = twilio_signature(&format!("{PUBLIC_URL}{path}"), params);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().copied())
        .finish();
    (body, sig)
}

/// A signed Twilio webhook; the TwiML answer.
async fn twilio_post(sh: &Shared, path: &str, params: &[(&str, &str)]) -> Result<String, String> {
    let (body, sig) = signed_form(path, params);
    match sh
        .post(
            path,
            "application/x-www-form-urlencoded",
            &[("x-twilio-signature", sig)],
            body,
        )
        .await
    {
        Ok((200, b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok((s, _)) => Err(format!("status {s}")),
        Err(e) => Err(format!("transport: {e}")),
    }
}

async fn send_whatsapp(
    sh: &Shared,
    from: &str,
    id: &str,
    text: &str,
    name: &str,
) -> Result<(), String> {
    let wa_id = from.trim_start_matches('+');
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": NUMBER.trim_start_matches('+'), "phone_number_id": fakeprov::WA_PHONE_ID},
        "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": format!("wamid.{id}"), "timestamp": "1772550000", "type": "text", "text": {"body": text}}]
    }}]}]})
    .to_string();
    let sig = meta_signature(body.as_bytes());
    status_ok(
        sh.post(
            "/webhooks/whatsapp",
            "application/json",
            &[("x-hub-signature-256", sig)],
            body,
        )
        .await,
        200,
    )
}

async fn send_api(sh: &Shared, from: &str, id: &str, text: &str) -> Result<(), String> {
    let body = json!({"tenant": TENANT, "channel": "sms", "from": from, "text": text, "provider_message_id": id})
        .to_string();
    status_ok(
        sh.post(
            "/api/v1/inbound",
            "application/json",
            &[("authorization", format!("Bearer {GATEWAY}"))],
            body,
        )
        .await,
        202,
    )
}

/// The provider message id the node keeps for inbound `id` of `channel`.
fn stored_id(channel: Channel, id: &str) -> String {
    match channel {
        Channel::Sms => format!("SM{id}"),
        Channel::Whatsapp => format!("wamid.{id}"),
        _ => id.to_owned(),
    }
}

/// An agent desktop: available, accepts every offer, answers once and
/// closes the conversation.
async fn agent(sh: Arc<Shared>, i: usize, offers: Arc<AtomicU64>) {
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
async fn phase(
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
async fn verify(sh: &Shared, all: bool, report: &mut Report) {
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
