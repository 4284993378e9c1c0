//! `crash`: customers and the business keep writing to a node while the
//! load tester SIGKILLs it at random moments, many times, restarting it on
//! the same data each time. Like a provider, every customer sends each text
//! again until it is acknowledged. At the end it checks, over the node's
//! REST API and at the fake providers, that every acknowledged text is
//! stored once and in order, every message the gate decided to send
//! reached the provider exactly once, every acknowledged timer fired once,
//! and the audit chain verifies (`threadline audit verify`).
//!
//! Half the customers text through signed Twilio webhooks, half through
//! the gateway API; the business answers some of them and sets follow-ups.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::Conn;
use crate::fakeprov::{self, Provider};
use crate::node::{self, SpawnedNode};
use crate::sim::{signed_form, sms_params, ADMIN, GATEWAY, NUMBER, PUBLIC_URL, TENANT};

/// The simulated clock's start: a weekday morning in the tenant's zone, so
/// quiet hours never hold a decision back.
const MORNING: &str = "2026-03-10T14:00:00Z";
/// How far in the simulated future each follow-up is set.
const FOLLOW_UP_SECS: u64 = 3600;
/// How long one request may take before the customer gives up on its
/// answer and sends it again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request of the final checks may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a customer keeps retrying one text before the run fails.
const GIVE_UP: Duration = Duration::from_secs(120);

#[derive(clap::Args, Clone)]
pub struct CrashArgs {
    /// The node binary to start (a fresh data directory, kept across kills).
    #[arg(long, default_value = "target/release/threadline")]
    pub node: PathBuf,
    /// SIGKILLs to survive.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Concurrent customers (each texts in a closed loop).
    #[arg(long, default_value_t = 8)]
    pub customers: usize,
    /// Least time between a restart and the next kill, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub min_gap_ms: u64,
    /// Most time between a restart and the next kill, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub max_gap_ms: u64,
    /// The seed of the kill moments (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the report as JSON to this file (`-`: standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What a crash run did and found.
#[derive(Debug, Serialize)]
pub struct CrashReport {
    pub seed: u64,
    /// SIGKILLs the node took (each followed by a restart).
    pub kills: usize,
    /// Customer texts acknowledged.
    pub texts: usize,
    /// Requests sent again because the node died or refused them (503).
    pub retries: u64,
    /// Business messages the gate answered `sent` for.
    pub decided: usize,
    /// Follow-up timers acknowledged (201), all fired at the end.
    pub timers: usize,
    /// Business messages or timers whose answer was lost with the node:
    /// each may have been decided, but at most once.
    pub unknown: usize,
    /// Records in the tenant's audit trail at the end.
    pub audit_records: usize,
    /// From a restart to the node listening again, median and slowest.
    pub restart_ms_median: f64,
    pub restart_ms_max: f64,
    pub seconds: f64,
    /// Everything that broke a promise; empty when the run passed.
    pub failures: Vec<String>,
}

impl CrashReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn text(&self) -> String {
        let mut t = format!(
            "crash: survived {} kills in {:.1} s (seed {}); restart to listening: median {:.0} ms, max {:.0} ms\n\
             \x20 {} texts acknowledged ({} requests sent again), {} decided messages, {} timers fired, {} answers lost with the node, {} audit records\n",
            self.kills,
            self.seconds,
            self.seed,
            self.restart_ms_median,
            self.restart_ms_max,
            self.texts,
            self.retries,
            self.decided,
            self.timers,
            self.unknown,
            self.audit_records,
        );
        if self.passed() {
            t.push_str("  every acknowledged text stored once in order, every decision sent once, every timer fired once, the audit chain verifies\n");
        } else {
            t.push_str(&format!("  FAILED ({}):\n", self.failures.len()));
            for f in self.failures.iter().take(50) {
                t.push_str(&format!("    {f}\n"));
            }
        }
        t
    }
}

fn config(provider_base: &str) -> String {
    format!(
        r#"
[server]
admin_token = "{ADMIN}"
public_url = "{PUBLIC_URL}"

[providers]
retry_base_ms = 10

[providers.twilio]
account_sid = "{sid}"
auth_token = "{auth}"
api_base = "{provider_base}"

[[tenants]]
id = "{TENANT}"
name = "Crash Test Co"
timezone = "America/New_York"
sms_numbers = ["{NUMBER}"]
gateway_token = "{GATEWAY}"
"#,
        sid = fakeprov::SID,
        auth = fakeprov::AUTH_TOKEN,
    )
}

/// The node's current address: it changes with every restart.
type Addr = Arc<RwLock<SocketAddr>>;

/// One customer's connection to whichever node process is running now.
struct Client {
    addr: Addr,
    conn: Option<(SocketAddr, Conn)>,
    retries: Arc<AtomicU64>,
    /// How long one request may take before its answer counts as lost.
    timeout: Duration,
}

impl Client {
    /// POSTs once; `None` when there was no answer (the node died, or the
    /// connection did).
    async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Option<(u16, Bytes)> {
        let now = *self.addr.read().expect("not poisoned");
        if self.conn.as_ref().map(|(a, _)| *a) != Some(now) {
            self.conn = Conn::open(now).await.ok().map(|c| (now, c));
        }
        let (_, c) = self.conn.as_mut()?;
        match tokio::time::timeout(self.timeout, c.post(path, content_type, headers, body)).await {
            Ok(Ok((status, _, body))) => Some((status, body)),
            _ => {
                self.conn = None;
                None
            }
        }
    }

    async fn post_json(&mut self, path: &str, token: &str, body: &Value) -> Option<(u16, Value)> {
        let auth = format!("Bearer {token}");
        let (s, b) = self
            .post(
                path,
                "application/json",
                &[("authorization", &auth)],
                body.to_string(),
            )
            .await?;
        Some((s, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }

    /// Sends until the node answers with anything but a server error or
    /// 429, as a provider retries; the answer.
    async fn until_answered(
        &mut self,
        path: &str,
        content_type: &str,
        header: (&str, &str),
        body: &str,
    ) -> Result<(u16, Bytes), String> {
        let started = Instant::now();
        loop {
            match self
                .post(path, content_type, &[header], body.to_owned())
                .await
            {
                Some((s, b)) if s < 500 && s != 429 => return Ok((s, b)),
                _ if started.elapsed() > GIVE_UP => {
                    return Err(format!("no answer for {} s", GIVE_UP.as_secs()))
                }
                _ => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn get(&mut self, path: &str) -> Option<(u16, Bytes)> {
        let now = *self.addr.read().expect("not poisoned");
        let mut c = Conn::open(now).await.ok()?;
        tokio::time::timeout(self.timeout, c.get_as(path, Some(ADMIN)))
            .await
            .ok()?
            .ok()
    }
}

/// What one customer saw acknowledged.
#[derive(Default)]
struct Seen {
    phone: String,
    /// Inbound provider message ids, in the order they were acknowledged.
    inbound: Vec<String>,
    /// Business messages the gate answered `sent` for.
    sent: Vec<String>,
    /// Timers acknowledged (201), by the text they send.
    timers: Vec<String>,
    /// Business messages or timers whose answer was lost with the node.
    unknown: Vec<String>,
    failures: Vec<String>,
}

/// One customer: texts, and now and then the business writes to them or
/// sets a follow-up, until `stop` (and at least three texts).
async fn customer(c: usize, run: u64, mut client: Client, stop: Arc<AtomicBool>) -> Seen {
    let phone = format!("+1555{:07}", 2000 + c);
    let enc = phone.replace('+', "%2B");
    let mut seen = Seen {
        phone: phone.clone(),
        ..Seen::default()
    };
    let by_webhook = c.is_multiple_of(2);
    let mut conv: Option<String> = None;
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) || k < 3 {
        let text = format!("text {k}");
        let id = format!("r{run:x}c{c}k{k}");
        let answer = if by_webhook {
            let sid = format!("SM{id}");
            let path = "/webhooks/twilio/sms";
            let (body, sig) = signed_form(path, &sms_params(&sid, &phone, &text));
            let form = "application/x-www-form-urlencoded";
            client
                .until_answered(path, form, ("x-twilio-signature", &sig), &body)
                .await
                .map(|(s, b)| (s, 200, b, sid))
        } else {
            let body = json!({"tenant": TENANT, "channel": "sms", "from": phone, "text": text, "provider_message_id": id});
            let auth = format!("Bearer {GATEWAY}");
            client
                .until_answered(
                    "/api/v1/inbound",
                    "application/json",
                    ("authorization", &auth),
                    &body.to_string(),
                )
                .await
                .map(|(s, b)| (s, 202, b, id))
        };
        match answer {
            Ok((s, want, body, stored)) if s == want => {
                seen.inbound.push(stored);
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    if let Some(id) = v["conversation_id"].as_str() {
                        conv = Some(id.to_owned());
                    }
                }
            }
            Ok((s, _, body, _)) => {
                seen.failures.push(format!(
                    "{phone}: text {k} answered {s}: {}",
                    String::from_utf8_lossy(&body)
                ));
                break;
            }
            Err(e) => {
                seen.failures.push(format!("{phone}: text {k}: {e}"));
                break;
            }
        }
        if k % 3 == 1 {
            let text = format!("business {c}.{k}");
            let msg = json!({"text": text, "purpose": "conversational"});
            let path = format!("/api/v1/tenants/{TENANT}/contacts/{enc}/messages");
            match client.post_json(&path, ADMIN, &msg).await {
                Some((202, v)) if v["decision"] == "sent" => seen.sent.push(text),
                Some((202, _)) => {}
                _ => seen.unknown.push(text),
            }
        }
        if k % 5 == 2 {
            if conv.is_none() {
                conv = conversation_id(&mut client, &enc).await;
            }
            let text = format!("follow-up {c}.{k}");
            let timer = json!({"in_seconds": FOLLOW_UP_SECS, "kind": "follow_up", "text": text});
            let acked = match &conv {
                Some(id) => {
                    let path = format!("/api/v1/conversations/{id}/timers");
                    matches!(client.post_json(&path, ADMIN, &timer).await, Some((201, _)))
                }
                None => false,
            };
            if acked {
                seen.timers.push(text);
            } else {
                seen.unknown.push(text);
            }
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

/// The contact's conversation id, read over REST (a webhook's answer is
/// TwiML and names none).
async fn conversation_id(client: &mut Client, enc: &str) -> Option<String> {
    let path = format!("/api/v1/tenants/{TENANT}/contacts/{enc}/conversation");
    let (s, b) = client.get(&path).await?;
    let v: Value = serde_json::from_slice(&b).ok().filter(|_| s == 200)?;
    v["id"].as_str().map(str::to_owned)
}

/// Runs the crash test; the report says whether every promise held.
pub async fn run(a: CrashArgs) -> anyhow::Result<CrashReport> {
    anyhow::ensure!(a.customers >= 1, "--customers is at least 1");
    anyhow::ensure!(
        a.min_gap_ms <= a.max_gap_ms,
        "--min-gap-ms is more than --max-gap-ms"
    );
    let seed = a.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let run_id = rng.u64(..) >> 16;
    let provider = Arc::new(Provider::default());
    let (base, _) = fakeprov::serve(provider.clone(), "127.0.0.1:0".parse()?).await?;
    let mut node = node::spawn_with_config(
        &a.node,
        &config(&base),
        &["--simulated-clock".into(), MORNING.into()],
    )?;
    eprintln!(
        "crash: {} kills, {} customers, seed {seed}, node pid {}",
        a.kills,
        a.customers,
        node.child.id()
    );
    let started = Instant::now();
    let addr: Addr = Arc::new(RwLock::new(node.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..a.customers)
        .map(|c| {
            let client = Client {
                addr: addr.clone(),
                conn: None,
                retries: retries.clone(),
                timeout: REQUEST_TIMEOUT,
            };
            tokio::spawn(customer(c, run_id, client, stop.clone()))
        })
        .collect();
    let mut restarts = Vec::new();
    for i in 0..a.kills {
        tokio::time::sleep(Duration::from_millis(rng.u64(a.min_gap_ms..=a.max_gap_ms))).await;
        let at = Instant::now();
        node = tokio::task::spawn_blocking(move || node.restart().map(|()| node))
            .await?
            .map_err(|e| anyhow::anyhow!("restart after kill {}: {e}", i + 1))?;
        restarts.push(at.elapsed().as_secs_f64() * 1000.0);
        *addr.write().expect("not poisoned") = node.addr;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await?);
    }
    let mut report = CrashReport {
        seed,
        kills: a.kills,
        texts: seen.iter().map(|s| s.inbound.len()).sum(),
        retries: retries.load(Ordering::Relaxed),
        decided: seen.iter().map(|s| s.sent.len()).sum(),
        timers: seen.iter().map(|s| s.timers.len()).sum(),
        unknown: seen.iter().map(|s| s.unknown.len()).sum(),
        audit_records: 0,
        restart_ms_median: crate::report::median(&restarts),
        restart_ms_max: restarts.iter().copied().fold(0.0, f64::max),
        seconds: 0.0,
        failures: seen.iter().flat_map(|s| s.failures.clone()).collect(),
    };
    check(&node, &provider, &seen, &mut report).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The checks at the end, against the node that is running now.
async fn check(
    node: &SpawnedNode,
    provider: &Provider,
    seen: &[Seen],
    report: &mut CrashReport,
) -> anyhow::Result<()> {
    let mut client = Client {
        addr: Arc::new(RwLock::new(node.addr)),
        conn: None,
        retries: Arc::new(AtomicU64::new(0)),
        // The clock's advance answers once every timer due has fired: after
        // a long run, tens of thousands.
        timeout: CHECK_TIMEOUT,
    };
    // The follow-ups come due.
    let advance = json!({"seconds": 2 * FOLLOW_UP_SECS});
    match client
        .post_json("/api/v1/clock/advance", ADMIN, &advance)
        .await
    {
        Some((200, _)) => {}
        other => anyhow::bail!("advancing the clock answered {other:?}"),
    }
    let decided = || seen.iter().flat_map(|s| s.sent.iter().chain(&s.timers));
    // The sender's retries may still be running: wait (bounded) until every
    // decision reached the provider, then count.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !decided().all(|t| provider.times_sent(t) >= 1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in decided() {
        let n = provider.times_sent(t);
        if n != 1 {
            report
                .failures
                .push(format!("{t:?} reached the provider {n} times, not once"));
        }
    }
    for t in seen.iter().flat_map(|s| &s.unknown) {
        let n = provider.times_sent(t);
        if n > 1 {
            report
                .failures
                .push(format!("{t:?} reached the provider {n} times"));
        }
    }
    for s in seen {
        let enc = s.phone.replace('+', "%2B");
        let path = format!("/api/v1/tenants/{TENANT}/contacts/{enc}/conversation");
        let conv: Value = match client.get(&path).await {
            Some((200, b)) => serde_json::from_slice(&b)?,
            other => {
                report.failures.push(format!(
                    "{}: conversation answered {:?}",
                    s.phone,
                    other.map(|(s, _)| s)
                ));
                continue;
            }
        };
        let messages = conv["messages"].as_array().cloned().unwrap_or_default();
        let stored: Vec<&str> = messages
            .iter()
            .filter(|m| m["direction"] == "inbound")
            .filter_map(|m| m["provider_message_id"].as_str())
            .collect();
        if stored != s.inbound {
            report.failures.push(format!(
                "{}: stored texts {stored:?}, acknowledged {:?} (each once, in order)",
                s.phone, s.inbound
            ));
        }
        let outbound: Vec<&str> = messages
            .iter()
            .filter(|m| m["direction"] == "outbound")
            .filter_map(|m| m["text"].as_str())
            .collect();
        let times = |t: &str| outbound.iter().filter(|o| **o == t).count();
        for t in s.sent.iter().chain(&s.timers) {
            if times(t) != 1 {
                report.failures.push(format!(
                    "{}: {t:?} in the transcript {} times, not once",
                    s.phone,
                    times(t)
                ));
            }
        }
        for t in &s.unknown {
            if times(t) > 1 {
                report.failures.push(format!(
                    "{}: {t:?} in the transcript {} times",
                    s.phone,
                    times(t)
                ));
            }
        }
    }
    // The audit chain survived every kill.
    let trail = match client.get(&format!("/api/v1/tenants/{TENANT}/audit")).await {
        Some((200, b)) => b,
        other => anyhow::bail!("the audit export answered {:?}", other.map(|(s, _)| s)),
    };
    report.audit_records = trail
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let file = node.dir().join("audit.ndjson");
    std::fs::write(&file, &trail)?;
    let out = std::process::Command::new(node.program())
        .args(["audit", "verify"])
        .arg(&file)
        .output()?;
    if !out.status.success() {
        report.failures.push(format!(
            "the audit chain does not verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// `threadline-loadtest crash`: runs, prints the report, and fails (exit 1)
/// when a promise broke.
pub async fn main(a: CrashArgs) -> anyhow::Result<bool> {
    let json_to = a.json.clone();
    let started_at = std::time::SystemTime::now();
    let report = run(a).await?;
    // With `--json -` standard output carries only the JSON.
    match json_to.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        true => eprint!("{}", report.text()),
        false => print!("{}", report.text()),
    }
    if let Some(path) = json_to {
        let v = crate::report::envelope("crash", started_at, None, serde_json::to_value(&report)?);
        let v = serde_json::to_string_pretty(&v)?;
        if path.as_os_str() == "-" {
            println!("{v}");
        } else {
            std::fs::write(path, v)?;
        }
    }
    Ok(report.passed())
}
