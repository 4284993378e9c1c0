//! `threadline-loadtest`: load generator for Threadline nodes.
//!
//! `ingest` measures, in one run and with the same clients, a bare hyper
//! endpoint (the ceiling of HTTP on this machine) and the node's durable
//! `POST /api/v1/inbound`, and reports throughput, latency percentiles and
//! their ratio.

use threadline_loadtest::*;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "threadline-loadtest",
    version,
    about = "Load generator for Threadline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulated customers run a scenario's journeys against a node over
    /// its real interfaces; the load tester is the providers too, and fails
    /// (exit 1) when a reply is lost or sent twice.
    Run(sim::RunArgs),
    /// Print the node config a scenario needs (for `run --url`).
    NodeConfig(sim::NodeConfigArgs),
    /// Durable ingest throughput against a bare hyper endpoint, in one run.
    Ingest(ingest::IngestArgs),
    /// Outbound gate decisions per second, durable with their audit records.
    Outbound(outbound::OutboundArgs),
    /// Durable timer scheduling and firing lateness.
    Timers(timers::TimerArgs),
    /// Inbound messages answered by a tenant's flow, durable.
    Bot(bot::BotArgs),
    /// Connected agent desktops: offer latency and message fan-out.
    Agents(agents::AgentArgs),
    /// Signed Twilio SMS webhooks per second, durable before the 200.
    Webhooks(webhooks::WebhookArgs),
    /// A cluster of nodes on this machine against one node: durable ingest
    /// with replication, and what forwarding adds per hop.
    Cluster(cluster::ClusterArgs),
    /// SIGKILL a node at random moments under load, many times, restarting
    /// it each time; fails (exit 1) unless every acknowledged text is stored
    /// once, every decision sent once, every timer fired once, and the
    /// audit chain verifies.
    Crash(crash::CrashArgs),
    /// Resident memory of a node holding many conversations.
    Resident(ingest::ResidentArgs),
    /// Resident memory of a node holding many idle web-chat sockets.
    Sockets(sockets::SocketArgs),
    /// Serve the bare hyper endpoint (started by `ingest` as its own process).
    #[command(hide = true)]
    BareServer,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::NodeConfig(a) => sim::node_config(a),
        Command::Run(a) => {
            if !rt.block_on(sim::run(a))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Ingest(a) => rt.block_on(ingest::run(a)),
        Command::Cluster(a) => rt.block_on(cluster::run(a)),
        Command::Outbound(a) => rt.block_on(outbound::run(a)),
        Command::Timers(a) => rt.block_on(timers::run(a)),
        Command::Resident(a) => rt.block_on(ingest::resident(a)),
        Command::Sockets(a) => rt.block_on(sockets::run(a)),
        Command::Webhooks(a) => rt.block_on(webhooks::run(a)),
        Command::Agents(a) => rt.block_on(agents::run(a)),
        Command::Bot(a) => rt.block_on(bot::run(a)),
        Command::Crash(a) => {
            if !rt.block_on(crash::main(a))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::BareServer => rt.block_on(node::serve_bare()),
    }
}
