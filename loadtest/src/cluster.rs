//! The `cluster` measurement: durable ingest of one node against a cluster
//! of nodes on this machine (replication on), spread over every node, and
//! the cost of a forwarding hop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::client::{Conn, NodeMetrics};
use crate::ingest::{drive_spread, drive_watched, inbound_for, Phase};
use crate::node::{self, SpawnedNode};

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Node binary to start.
    #[arg(long)]
    node: PathBuf,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The cluster's `replication_factor` (2: a replica before each ack).
    #[arg(long, default_value_t = 2)]
    replication_factor: u8,
    /// Concurrent closed-loop clients (spread over the nodes).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per measured phase (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Distinct contacts (conversations) the messages are spread over.
    #[arg(long, default_value_t = 10_000)]
    contacts: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Measure this many times (a fresh node and cluster each time), then
    /// report the cluster/single ratio of each and their median: on a
    /// shared 2-core machine one measurement varies by 10-20%.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

const ADMIN: &str = "bench-admin-token";
const COOKIE: &str = "threadline-bench-cookie";

fn config(cluster: Option<(&str, u16, Option<u16>, u8)>) -> String {
    let mut c = format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n\n[[tenants]]\nid = \"demo\"\nname = \"Demo\"\ntimezone = \"America/New_York\"\ngateway_token = \"gw-demo\"\n"
    );
    if let Some((name, port, seed, rf)) = cluster {
        let seeds = seed.map_or(String::new(), |s| format!("\"127.0.0.1:{s}\""));
        c.push_str(&format!(
            "\n[cluster]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nseeds = [{seeds}]\ncookie = \"{COOKIE}\"\nreplication_factor = {rf}\n"
        ));
    }
    c
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` counts `n` live nodes.
async fn until_live(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    for _ in 0..600 {
        let mut c = Conn::open(addr).await?;
        let (s, body) = c.get_as("/api/v1/cluster", Some(ADMIN)).await?;
        if s == 200 {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            if v["live"].as_array().map_or(0, Vec::len) == n {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the cluster never had {n} live nodes")
}

async fn sum(addrs: &[SocketAddr], name: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for a in addrs {
        let v = NodeMetrics::fetch(*a).await?.value(name);
        if v.is_finite() {
            total += v;
        }
    }
    Ok(total)
}

pub async fn run(a: ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.nodes >= 2, "a cluster needs 2 nodes or more");
    anyhow::ensure!(a.rounds >= 1, "--rounds is at least 1");
    let mut ratios = Vec::new();
    for round in 1..=a.rounds {
        if a.rounds > 1 {
            eprintln!("round {round} of {}", a.rounds);
        }
        ratios.push(run_once(&a).await?);
    }
    if a.rounds > 1 {
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        let median = crate::report::median(&ratios);
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(0.0, f64::max);
        let line = format!(
            "cluster/single over {} rounds: {}; median {median:.3}, min {min:.3}, max {max:.3}",
            a.rounds,
            listed.join(" "),
        );
        if a.json {
            println!("{}", json!({"ratios": ratios, "median": median}));
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// One measurement: a node alone, then a cluster; the cluster/single ratio.
async fn run_once(a: &ClusterArgs) -> anyhow::Result<f64> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let make = || inbound_for("demo", "gw-demo", a.contacts, run_id);

    let (single, single_one, single_commits, single_ops) = {
        let n = node::spawn_with_config(&a.node, &config(None), &[])?;
        eprintln!(
            "one node: {} clients over {} contacts, {} s",
            a.clients, a.contacts, a.seconds
        );
        let one = drive_spread("single-1-client", &[n.addr], 1, 3, make()).await?;
        let pid = [n.child.id()];
        let full =
            drive_watched("single-node", &[n.addr], a.clients, a.seconds, make(), &pid).await?;
        let commits = sum(&[n.addr], "threadline_commit_batch_size_count").await?;
        let ops = sum(&[n.addr], "threadline_commit_batch_size_sum").await?;
        (full, one, commits, ops)
    };
    eprintln!("{}", single_one.line());
    eprintln!("{}", single.line());
    eprintln!(
        "one node: {single_commits:.0} commits of {:.1} operations",
        single_ops / single_commits.max(1.0)
    );

    let ports: Vec<u16> = (0..a.nodes)
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let mut nodes: Vec<SpawnedNode> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let seed = (i > 0).then_some(ports[0]);
        let cfg = config(Some((
            &format!("n{}", i + 1),
            *port,
            seed,
            a.replication_factor,
        )));
        nodes.push(node::spawn_with_config(&a.node, &cfg, &[])?);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    for addr in &addrs {
        until_live(*addr, a.nodes).await?;
    }
    eprintln!(
        "{} nodes, replication factor {}: {} clients spread over them",
        a.nodes, a.replication_factor, a.clients
    );
    // One client: what a message pays for its hop (2 of 3 are forwarded)
    // and its replica, unloaded.
    let cluster_one = drive_spread("cluster-1-client", &addrs[..1], 1, 3, make()).await?;
    eprintln!("{}", cluster_one.line());
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
    let spread = drive_watched(
        "cluster-spread",
        &addrs,
        a.clients,
        a.seconds,
        make(),
        &pids,
    )
    .await?;
    eprintln!("{}", spread.line());
    let forwarded = sum(&addrs, "threadline_cluster_forwarded_total").await?;
    let replicated = sum(&addrs, "threadline_cluster_replicated_total").await?;
    let failures = sum(&addrs, "threadline_cluster_replication_failures_total").await?;
    let commits = sum(&addrs, "threadline_commit_batch_size_count").await?;
    let committed_ops = sum(&addrs, "threadline_commit_batch_size_sum").await?;
    let rounds = sum(&addrs, "threadline_cluster_replication_seconds_count").await?;
    let round_secs = sum(&addrs, "threadline_cluster_replication_seconds_sum").await?;
    // Every client on one node: about (n-1)/n of the messages take a hop.
    let hop = drive_watched(
        "cluster-one-door",
        &addrs[..1],
        a.clients,
        a.seconds,
        make(),
        &pids,
    )
    .await?;
    eprintln!("{}", hop.line());
    // The last node leaves gracefully (SIGTERM): how long it takes to hand
    // every conversation it holds to the others.
    let leaving = nodes.pop().expect("a cluster has nodes");
    let rest: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let promoted_before = sum(&rest, "threadline_cluster_promoted_total").await?;
    let left = leave(leaving, &rest).await?;
    let promoted = sum(&rest, "threadline_cluster_promoted_total").await? - promoted_before;
    let moved = match left.moved {
        Some(m) => format!(
            "handed over in {:.2} s ({:.0}/s)",
            m.as_secs_f64(),
            left.held as f64 / m.as_secs_f64().max(1e-9)
        ),
        None => "not all handed over".to_owned(),
    };
    let leave_line = format!(
        "leave: {} conversations {moved}, the node exited after {:.2} s; {promoted:.0} taken over from replicas",
        left.held,
        left.exited.as_secs_f64(),
    );
    eprintln!("{leave_line}");
    let ratio = spread.rate() / single.rate();
    let per_round_ms = if rounds > 0.0 {
        round_secs / rounds * 1000.0
    } else {
        0.0
    };
    let hop_ms = |p: &Phase, q: f64| p.hist.value_at_quantile(q) as f64 / 1000.0;
    if a.json {
        println!(
            "{}",
            json!({
                "single": single.json(), "cluster": spread.json(), "one_door": hop.json(),
                "nodes": a.nodes, "replication_factor": a.replication_factor,
                "ratio": ratio, "forwarded": forwarded, "replicated": replicated,
                "replication_failures": failures, "replication_round_ms": per_round_ms,
                "commits": commits, "ops_per_commit": committed_ops / commits.max(1.0),
                "single_one_client": single_one.json(), "cluster_one_client": cluster_one.json(),
                "added_unloaded_ms": {"p50": hop_ms(&cluster_one, 0.5) - hop_ms(&single_one, 0.5),
                                      "p99": hop_ms(&cluster_one, 0.99) - hop_ms(&single_one, 0.99)},
                "leave": {"held": left.held, "handed_over_seconds": left.moved.map(|m| m.as_secs_f64()),
                          "exit_seconds": left.exited.as_secs_f64(), "promoted": promoted},
            })
        );
    } else {
        println!("{}", single_one.line());
        println!("{}", cluster_one.line());
        println!("{}", single.line());
        println!("{}", spread.line());
        println!("{}", hop.line());
        println!(
            "cluster/single {ratio:.3}; forwarded {forwarded:.0}, replicated {replicated:.0} ({failures:.0} failed), mean replication round {per_round_ms:.2} ms; {commits:.0} commits of {:.1} operations",
            committed_ops / commits.max(1.0)
        );
        println!("{leave_line}");
    }
    Ok(ratio)
}

/// What a graceful leave took.
struct Left {
    /// Conversations the leaving node held.
    held: u64,
    /// From SIGTERM until the other nodes had received all of them (`None`
    /// if the node exited first).
    moved: Option<Duration>,
    /// From SIGTERM until the process exited.
    exited: Duration,
}

/// SIGTERMs `node` (a cluster member) and waits for it to exit, watching
/// the other nodes (`rest`) receive its conversations.
async fn leave(mut node: SpawnedNode, rest: &[SocketAddr]) -> anyhow::Result<Left> {
    const RECEIVED: &str = "threadline_cluster_received_total";
    let mut c = Conn::open(node.addr).await?;
    let (_, body) = c.get_as("/api/v1/cluster", Some(ADMIN)).await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let held = v["conversations"]["this_node"].as_u64().unwrap_or(0);
    drop(c);
    let before = sum(rest, RECEIVED).await?;
    let started = std::time::Instant::now();
    let exit = tokio::task::spawn_blocking(move || node.terminate(Duration::from_secs(60)));
    let mut moved = None;
    while !exit.is_finished() {
        if sum(rest, RECEIVED).await? - before >= held as f64 {
            moved = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match exit.await? {
        Some(exited) => Ok(Left {
            held,
            moved,
            exited,
        }),
        None => anyhow::bail!("the leaving node did not exit within 60 s"),
    }
}
