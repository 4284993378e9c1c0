//! `threadline`: the node binary. Parses the command line and config,
//! starts the actor runtime and the HTTP server, and drains on SIGTERM or
//! Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use threadline_actors::conversation::core::CoreConfig;
use threadline_actors::{Clock, ManualClock, Metrics, Runtime, RuntimeConfig, SystemClock};

use threadline::config::Config;
use threadline::http;

/// mimalloc: the node allocates small short-lived buffers on many threads,
/// where glibc's allocator showed up at 14% of a cluster's CPU profile.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Test hook: this exact inbound text makes the conversation handler panic
/// when the node runs with `--test-hooks`.
const PANIC_TRIGGER: &str = "__threadline_test_panic__";

/// Test hook: the first delivery of this exact outbound text panics inside
/// the sender when the node runs with `--test-hooks`.
const SENDER_PANIC_TRIGGER: &str = "__threadline_test_sender_panic__";

/// The provider, with the sender panic hook.
struct PanicOnce {
    inner: Arc<dyn threadline_actors::sender::Provider>,
    fired: std::sync::atomic::AtomicBool,
}

impl threadline_actors::sender::Provider for PanicOnce {
    fn channels(&self, tenant: &str) -> Vec<threadline_protocol::Channel> {
        self.inner.channels(tenant)
    }
    fn send(
        &self,
        entry: &threadline_protocol::OutboxEntry,
        key: &str,
    ) -> threadline_actors::sender::BoxFuture<threadline_actors::sender::Attempt> {
        if entry.body == SENDER_PANIC_TRIGGER
            && !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("test hook: the sender panics");
        }
        self.inner.send(entry, key)
    }
}

#[derive(Parser)]
#[command(
    name = "threadline",
    version,
    about = "One conversation per customer, whatever the channel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no --config, a development node with a `demo` tenant.
    Serve(ServeArgs),
    /// Validate a config file; exit 0 if valid, 1 otherwise.
    CheckConfig { file: PathBuf },
    /// Print the HTTP API's OpenAPI 3.1 description (also served at
    /// /api/v1/openapi.json).
    Openapi,
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Put a backup (`POST /api/v1/backup`) in place as the database of a
    /// data directory; no node may be running on it.
    Restore {
        /// The backup file.
        backup: PathBuf,
        /// The data directory (server.data_dir) of the node to restore.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Decode every stored record of a data directory (no node may be
    /// running on it) and list the damaged ones by conversation; exit 0 if
    /// none is, 1 otherwise.
    CheckData {
        /// The data directory (server.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an exported trail (`GET /api/v1/tenants/{t}/audit`
    /// without filters); FILE `-` reads standard input. Exit 0 if intact.
    Verify { file: PathBuf },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP listen address (server.http); port 0 picks a free one.
    #[arg(long)]
    http: Option<String>,
    /// Data directory (server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Base URL providers call (server.public_url).
    #[arg(long)]
    public_url: Option<String>,
    /// Admin bearer token (server.admin_token).
    #[arg(long)]
    admin_token: Option<String>,
    /// Resident conversation cap (runtime.max_resident_conversations).
    #[arg(long)]
    max_resident: Option<usize>,
    /// Idle seconds before a conversation is passivated (runtime.passivate_after_secs).
    #[arg(long)]
    passivate_after_secs: Option<u64>,
    /// Run on a simulated clock starting at this RFC 3339 instant; it moves
    /// only through `POST /api/v1/clock/advance`.
    #[arg(long, value_name = "RFC3339")]
    simulated_clock: Option<String>,
    /// Enable test-only hooks (a panic trigger message). Never in production.
    #[arg(long, hide = true)]
    test_hooks: bool,
    /// Log lines as text (for people) or as one JSON object each (for log
    /// collectors); the level filter is `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Openapi => {
            print!("{}", threadline::openapi::document_text());
            ExitCode::SUCCESS
        }
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => audit_verify(&file),
        Command::Restore { backup, data_dir } => {
            match threadline_actors::store::Store::restore(&backup, &data_dir) {
                Ok(done) => {
                    println!("threadline: {done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("threadline: restore refused: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckData { data_dir } => {
            match threadline_actors::replica::check_data(&data_dir) {
                Ok(damage) if damage.is_empty() => {
                    println!(
                        "threadline: every stored record in {} decodes",
                        data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(damage) => {
                    for d in &damage {
                        let conv = d
                            .conversation
                            .map_or_else(|| "-".to_owned(), |c| c.to_string());
                        println!("damaged\t{}\t{conv}\t{}", d.table, d.error);
                    }
                    eprintln!(
                        "threadline: {} damaged records; restore the data directory from a backup (threadline restore)",
                        damage.len()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("threadline: cannot check {}: {e}", data_dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("threadline: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The trace exporter is part of the logging set-up, so it is
            // read before the node starts (`serve` reads the file again
            // and reports its problems).
            let otlp = args
                .config
                .as_ref()
                .and_then(|p| load_config(p).ok())
                .and_then(|c| c.telemetry.otlp);
            let traces =
                match otlp.map(|o| threadline::telemetry::provider(&o, rt.handle().clone())) {
                    None => None,
                    Some(Ok(p)) => Some(p),
                    Some(Err(e)) => {
                        eprintln!("threadline: `telemetry.otlp`: {e:#}");
                        return ExitCode::FAILURE;
                    }
                };
            init_logs(args.log_format, traces.as_ref());
            let result = rt.block_on(serve(args));
            if let Some(t) = traces {
                // The last batch of spans.
                let _ = t.shutdown();
            }
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("threadline: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs to stderr (text, without colour unless stderr is a terminal, or
/// JSON), filtered by `RUST_LOG` (default `info`), and spans to the OTLP
/// exporter when one is configured.
fn init_logs(format: LogFormat, traces: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = matches!(format, LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let json = matches!(format, LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(traces.map(threadline::telemetry::layer))
        .init();
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let src = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let cfg =
        Config::parse_at(&src, base).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    threadline::http::flows::load(&cfg).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(cfg)
}

/// Reports every problem of a config file (and its flow files), each with
/// its key path and line.
fn check_config(file: &std::path::Path) -> ExitCode {
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot read config {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let base = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let mut problems: Vec<String> = Vec::new();
    let cfg = match Config::parse_all(&src, base) {
        Ok(c) => Some(c),
        Err(errors) => {
            problems.extend(errors.iter().map(|e| format!("{}: {e}", file.display())));
            None
        }
    };
    if let Some(c) = &cfg {
        if let Err(e) = threadline::http::flows::load(c) {
            problems.push(format!("{}: {e}", file.display()));
        }
    }
    match (cfg, problems.is_empty()) {
        (Some(c), true) => {
            println!(
                "{}: ok ({} tenants, {} agents)",
                file.display(),
                c.tenants.len(),
                c.agents.len()
            );
            ExitCode::SUCCESS
        }
        _ => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.len());
            ExitCode::FAILURE
        }
    }
}

fn audit_verify(file: &std::path::Path) -> ExitCode {
    use std::io::BufReader;
    let result = if file.as_os_str() == "-" {
        threadline_actors::audit::verify(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => threadline_actors::audit::verify(BufReader::new(f)),
            Err(e) => {
                eprintln!("cannot read {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    };
    match result {
        Ok(v) => {
            println!(
                "audit trail intact: {} records, {} tenant chains",
                v.records, v.tenants
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("audit trail BROKEN at {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let dev = args.config.is_none();
    let mut cfg = match &args.config {
        Some(p) => load_config(p)?,
        None => Config::dev(),
    };
    if let Some(h) = args.http {
        cfg.server.http = h;
    }
    if let Some(d) = args.data_dir {
        cfg.server.data_dir = d;
    }
    if let Some(u) = args.public_url {
        cfg.server.public_url = Some(u);
    }
    if let Some(t) = args.admin_token {
        cfg.server.admin_token = t;
    }
    if let Some(m) = args.max_resident {
        cfg.runtime.max_resident_conversations = m;
    }
    if let Some(s) = args.passivate_after_secs {
        cfg.runtime.passivate_after_secs = s;
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid setting {e}"))?;

    let tls = threadline::tls::http_acceptor(&cfg.server, &cfg.base_dir)?;
    let listener = tokio::net::TcpListener::bind(cfg.http_addr())
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.http))?;
    let addr = listener.local_addr()?;

    let metrics = Arc::new(Metrics::new());
    let mut rcfg = RuntimeConfig::new(&cfg.server.data_dir);
    rcfg.max_resident = cfg.runtime.max_resident_conversations;
    rcfg.gateway_limit = cfg.server.max_in_flight_per_gateway;
    rcfg.passivate_after = Duration::from_secs(cfg.runtime.passivate_after_secs);
    rcfg.snapshot_every = cfg.runtime.snapshot_every_events;
    rcfg.persistence_queue = cfg.runtime.persistence_queue;
    rcfg.storage_cache_bytes = cfg.runtime.storage_cache_mb << 20;
    rcfg.core = CoreConfig {
        panic_trigger: args.test_hooks.then(|| PANIC_TRIGGER.to_owned()),
    };
    rcfg.tenants = cfg.tenant_policies();
    (rcfg.flows, rcfg.responders) =
        threadline::http::flows::load(&cfg).map_err(|e| anyhow::anyhow!(e))?;
    rcfg.agents = cfg.agents.iter().map(|a| a.spec()).collect();
    rcfg.agents.extend(
        threadline::http::agents::stored(&cfg.server.data_dir)?
            .into_iter()
            .map(|a| a.spec()),
    );
    rcfg.offer_ttl = Duration::from_secs(cfg.runtime.offer_timeout_secs);
    rcfg.agent_grace = Duration::from_secs(cfg.runtime.agent_grace_secs);
    rcfg.wait_text = cfg.runtime.agent_wait_text.clone();
    if let Some(p) = threadline::providers::Providers::from_config(&cfg)? {
        rcfg.provider = Some(match args.test_hooks {
            true => Arc::new(PanicOnce {
                inner: p,
                fired: Default::default(),
            }),
            false => p,
        });
    }
    rcfg.retry = threadline_actors::sender::RetryPolicy {
        attempts: cfg.providers.retry_attempts,
        base: Duration::from_millis(cfg.providers.retry_base_ms),
        max: Duration::from_secs(30),
    };
    let manual = match &args.simulated_clock {
        Some(t) => {
            let start = http::parse_rfc3339("--simulated-clock", t)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            Some(Arc::new(ManualClock::new(start)))
        }
        None => None,
    };
    rcfg.simulated_clock = manual.is_some();
    rcfg.id_tag = cfg
        .cluster
        .as_ref()
        .map(|c| threadline_actors::cluster::id_tag(&c.name));
    let clock: Arc<dyn Clock> = match &manual {
        Some(m) => m.clone(),
        None => Arc::new(SystemClock),
    };
    let runtime = Runtime::start(rcfg, clock, metrics)
        .await
        .with_context(|| format!("cannot open data in {}", cfg.server.data_dir.display()))?;
    let r = &runtime.report;
    tracing::info!(
        data_dir = %cfg.server.data_dir.display(),
        replayed = r.log_records_replayed,
        recovered = r.conversations_recovered,
        "storage open"
    );

    if dev {
        println!(
            "threadline: development node (no --config): tenant \"demo\" running the dental example flow, sandbox provider, data in {}",
            cfg.server.data_dir.display()
        );
        println!("  admin token:   {}", cfg.server.admin_token);
        for t in &cfg.tenants {
            println!("  gateway token: {} (tenant {})", t.gateway_token, t.id);
        }
        for a in &cfg.agents {
            println!("  agent token:   {} (agent {})", a.token, a.id);
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("threadline listening on {scheme}://{addr}");

    if let Some(m) = &manual {
        println!("threadline: simulated clock at {}", http::rfc3339(m.now()));
    }
    let cluster = match &cfg.cluster {
        None => None,
        Some(c) => {
            let spec = threadline_actors::cluster::ClusterSpec {
                name: c.name.clone(),
                listen: c.listen.parse().expect("validated"),
                seeds: c
                    .seeds
                    .iter()
                    .map(|s| s.parse().expect("validated"))
                    .collect(),
                cookie: c.cookie.clone(),
                heartbeat: Duration::from_millis(c.heartbeat_ms),
                failure_after: Duration::from_millis(c.failure_after_ms),
                replication_factor: c.replication_factor,
                http: Some(addr),
                tls: threadline::tls::cluster_links(c, &cfg.base_dir)?,
            };
            let cl = threadline_actors::cluster::Cluster::start(
                spec,
                Duration::from_millis(500),
                Arc::new(runtime.router.clone()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the cluster node: {e}"))?;
            println!("threadline: cluster node {} on {}", c.name, c.listen);
            Some(cl)
        }
    };
    let mut app = http::App::new(cfg, &runtime, manual);
    app.cluster = cluster.clone();
    let app = Arc::new(app);
    if let Some(c) = &app.cluster {
        c.serve_requests(http::peer_handler(Arc::downgrade(&app)));
        tokio::spawn(threadline::http::agents::catch_up(Arc::downgrade(&app)));
    }
    http::serve(
        app,
        listener,
        tls,
        shutdown_signal(),
        Duration::from_secs(30),
    )
    .await;
    if let Some(c) = cluster {
        c.leave(Duration::from_secs(20)).await;
        c.stop();
        // Dropped here: the membership holds the runtime's shared state,
        // which the shutdown below waits to see released.
    }
    tracing::info!("draining conversations and flushing storage");
    runtime.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
