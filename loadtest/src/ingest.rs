//! The `ingest` measurement.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::client::{latency_histogram, merge_latencies, Conn, NodeMetrics};
use crate::node;

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Node binary to start (dev config, fresh data dir). Either this or --url.
    #[arg(long)]
    node: Option<PathBuf>,
    /// Address of a running node (host:port) instead of --node.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Tenant and gateway token to post as (the dev node's by default).
    #[arg(long, default_value = "demo")]
    tenant: String,
    #[arg(long, default_value = "gw-demo")]
    token: String,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per measured phase (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Distinct contacts (conversations) the messages are spread over.
    #[arg(long, default_value_t = 10_000)]
    contacts: usize,
    /// Extra arguments for `serve` when --node is given.
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    serve_args: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ResidentArgs {
    /// Node binary to start (dev config, fresh data dir).
    #[arg(long)]
    node: PathBuf,
    /// Conversations to create and keep resident.
    #[arg(long, default_value_t = 100_000)]
    contacts: usize,
    /// Inbound messages per conversation.
    #[arg(long, default_value_t = 10)]
    per_contact: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

/// Fills a node with `contacts` resident conversations of `per_contact`
/// messages each, then reports its RSS.
pub async fn resident(a: ResidentArgs) -> anyhow::Result<()> {
    let extra = vec![
        "--max-resident".to_string(),
        (a.contacts * 2).to_string(),
        "--passivate-after-secs".to_string(),
        "86400".to_string(),
    ];
    let node = node::spawn(&a.node, &extra)?;
    let total = (a.contacts * a.per_contact) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let mut conn = Conn::open(node.addr).await?;
        let (next, contacts) = (next.clone(), a.contacts as u64);
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let body = json!({
                    "tenant": "demo", "channel": "sms",
                    "from": format!("+1555{:07}", n % contacts),
                    "to": "+15550000100",
                    "text": format!("Hello, this is message {} of my conversation", n / contacts),
                    "provider_message_id": format!("res-{n}"),
                })
                .to_string();
                let (status, took, _) = conn.post_json("/api/v1/inbound", "gw-demo", body).await?;
                anyhow::ensure!(status == 202, "status {status}");
                let _ = hist.record(took.as_micros().max(1) as u64);
            }
            anyhow::Ok(hist)
        }));
    }
    let hist = merge_latencies(tasks).await?;
    let took = started.elapsed().as_secs_f64();
    let m = NodeMetrics::fetch(node.addr).await?;
    let pick = |name: &str| m.value(name);
    println!(
        "{} conversations x {} messages in {:.1} s ({:.0} msg/s, p99 {:.2} ms): resident {}, node RSS {:.0} MiB ({:.0} bytes per conversation)",
        a.contacts,
        a.per_contact,
        took,
        total as f64 / took,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        pick("threadline_conversations_resident"),
        pick("threadline_process_resident_memory_bytes") / (1 << 20) as f64,
        pick("threadline_process_resident_memory_bytes") / a.contacts as f64,
    );
    Ok(())
}

pub struct Phase {
    pub name: &'static str,
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
    /// The watched nodes' and the load tester's CPU over the measured
    /// seconds (`drive_watched`).
    pub cpu: Option<crate::cpu::CpuUse>,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn json(&self) -> serde_json::Value {
        json!({
            "name": self.name, "ok": self.ok, "errors": self.errors,
            "seconds": self.seconds, "per_second": self.rate(),
            "latency_ms": {"p50": self.ms(0.5), "p90": self.ms(0.9), "p99": self.ms(0.99),
                           "p999": self.ms(0.999), "max": self.hist.max() as f64 / 1000.0},
            "cpu": self.cpu.as_ref().map(crate::cpu::CpuUse::json),
        })
    }
    pub fn line(&self) -> String {
        let mut l = format!(
            "{:<14} {:>9.0}/s  ok {:>8}  errors {:>5}  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  max {:>7.2} ms",
            self.name,
            self.rate(),
            self.ok,
            self.errors,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.hist.max() as f64 / 1000.0
        );
        if let Some(c) = &self.cpu {
            l.push_str("\n               ");
            l.push_str(&c.line());
        }
        l
    }
}

/// One request of a load phase.
pub struct Req {
    pub path: String,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The status that counts as success.
    pub expect: u16,
}

/// Builds request number `n` (unique across all clients of a phase).
pub type MakeReq = Arc<dyn Fn(usize) -> Req + Send + Sync>;

/// The gateway API request for inbound message `n`.
pub fn inbound_request(a: &IngestArgs, run_id: u64) -> MakeReq {
    inbound_for(&a.tenant, &a.token, a.contacts, run_id)
}

/// The gateway API request for inbound message `n` of `tenant`, from one
/// of `contacts` numbers.
pub fn inbound_for(tenant: &str, token: &str, contacts: usize, run_id: u64) -> MakeReq {
    let (tenant, token) = (tenant.to_owned(), token.to_owned());
    Arc::new(move |n| Req {
        path: "/api/v1/inbound".into(),
        content_type: "application/json",
        headers: vec![("authorization", format!("Bearer {token}"))],
        body: json!({
            "tenant": tenant, "channel": "sms",
            "from": format!("+1555{:07}", n % contacts),
            "to": "+15550000100",
            "text": format!("load message {n}"),
            "provider_message_id": format!("lt-{run_id}-{n}"),
        })
        .to_string(),
        expect: 202,
    })
}

/// Runs `clients` closed-loop clients for warm-up + `seconds`, each
/// sending the requests `make` builds; latency is recorded after the
/// warm-up only.
pub async fn drive(
    name: &'static str,
    addr: SocketAddr,
    clients: usize,
    seconds: u64,
    make: MakeReq,
) -> anyhow::Result<Phase> {
    drive_spread(name, &[addr], clients, seconds, make).await
}

/// `drive`, with client `c` talking to `addrs[c % addrs.len()]`.
pub async fn drive_spread(
    name: &'static str,
    addrs: &[SocketAddr],
    clients: usize,
    seconds: u64,
    make: MakeReq,
) -> anyhow::Result<Phase> {
    drive_watched(name, addrs, clients, seconds, make, &[]).await
}

/// `drive_spread`, also reporting the CPU that processes `watch` (the
/// nodes) and the load tester used per message over the measured seconds.
pub async fn drive_watched(
    name: &'static str,
    addrs: &[SocketAddr],
    clients: usize,
    seconds: u64,
    make: MakeReq,
    watch: &[u32],
) -> anyhow::Result<Phase> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addrs[c % addrs.len()];
        let mut conn = Conn::open(addr).await?;
        let (measuring, stop, ok, errors, make) = (
            measuring.clone(),
            stop.clone(),
            ok.clone(),
            errors.clone(),
            make.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = latency_histogram();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let n = i * clients + c;
                i += 1;
                let r = make(n);
                let headers: Vec<(&str, &str)> =
                    r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                match conn.post(&r.path, r.content_type, &headers, r.body).await {
                    Ok((status, took, _)) if status == r.expect => {
                        if measuring.load(Ordering::Relaxed) {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let _ = hist.record(took.as_micros().max(1) as u64);
                        }
                    }
                    Ok(_) | Err(_) => {
                        if measuring.load(Ordering::Relaxed) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        if conn_broken(&mut conn, addr).await.is_err() {
                            break;
                        }
                    }
                }
            }
            hist
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let cpu_before = (!watch.is_empty())
        .then(|| crate::cpu::Sample::take(watch))
        .flatten();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::SeqCst);
    let cpu_after = cpu_before
        .as_ref()
        .and_then(|_| crate::cpu::Sample::take(watch));
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let mut hist = latency_histogram();
    for t in tasks {
        hist.add(t.await?)?;
    }
    Ok(Phase {
        name,
        ok: ok.load(Ordering::SeqCst),
        errors: errors.load(Ordering::SeqCst),
        seconds,
        hist,
        cpu: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| a.since(&b, ok.load(Ordering::SeqCst))),
    })
}

async fn conn_broken(conn: &mut Conn, addr: SocketAddr) -> anyhow::Result<()> {
    // Reconnect after an error so one failure does not end the client.
    *conn = Conn::open(addr).await?;
    Ok(())
}

pub async fn run(a: IngestArgs) -> anyhow::Result<()> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let bare = {
        let server = node::spawn_bare()?;
        eprintln!(
            "bare hyper endpoint on {}: {} clients, {} s",
            server.addr, a.clients, a.seconds
        );
        drive(
            "bare-hyper",
            server.addr,
            a.clients,
            a.seconds,
            inbound_request(&a, run_id),
        )
        .await?
    };
    eprintln!("{}", bare.line());

    let spawned;
    let node_addr = match (&a.node, a.addr) {
        (Some(bin), _) => {
            spawned = node::spawn(bin, &a.serve_args)?;
            spawned.addr
        }
        (None, Some(addr)) => addr,
        (None, None) => anyhow::bail!("give --node BINARY or --addr HOST:PORT"),
    };
    eprintln!(
        "node on {node_addr}: {} clients over {} contacts, {} s",
        a.clients, a.contacts, a.seconds
    );
    let ingest = drive(
        "node-ingest",
        node_addr,
        a.clients,
        a.seconds,
        inbound_request(&a, run_id),
    )
    .await?;
    eprintln!("{}", ingest.line());
    let m = NodeMetrics::fetch(node_addr).await?;
    let pick = |name: &str| m.value(name);
    let batches = pick("threadline_commit_batch_size_count");
    let ops = pick("threadline_commit_batch_size_sum");
    let rss = pick("threadline_process_resident_memory_bytes");
    let ratio = ingest.rate() / bare.rate();
    if a.json {
        println!(
            "{}",
            json!({"bare": bare.json(), "ingest": ingest.json(), "ratio": ratio,
                   "node": {"commits": batches, "ops_per_commit": ops / batches, "rss_bytes": rss}})
        );
    } else {
        println!("{}", bare.line());
        println!("{}", ingest.line());
        println!(
            "ratio node/bare {:.3}; {} commits, {:.1} ops per commit; node RSS {:.0} MiB",
            ratio,
            batches,
            ops / batches,
            rss / (1 << 20) as f64
        );
    }
    Ok(())
}
