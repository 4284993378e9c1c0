//! Resident memory of idle web-chat sockets: a node (dev config) before
//! and after `count` visitors open `/chat/ws` and stay silent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::client::NodeMetrics;
use crate::node;

#[derive(clap::Args)]
pub struct SocketArgs {
    /// Node binary to start (dev config, fresh data dir).
    #[arg(long)]
    node: PathBuf,
    /// Idle sockets to open.
    #[arg(long, default_value_t = 4000)]
    count: usize,
}

/// Sockets opened from one loopback address (under the node's default
/// `server.websockets_per_source`).
const PER_SOURCE: usize = 60;

pub async fn run(a: SocketArgs) -> anyhow::Result<()> {
    let node = node::spawn(&a.node, &[])?;
    let rss = |m: &NodeMetrics| m.value("threadline_process_resident_memory_bytes");
    // One socket first, so what every server pays once is not counted.
    let mut open = vec![connect(node.addr, 0).await?];
    let before = NodeMetrics::fetch(node.addr).await?;
    let started = Instant::now();
    for k in 1..a.count {
        open.push(connect(node.addr, k).await?);
    }
    let mut after = NodeMetrics::fetch(node.addr).await?;
    for _ in 0..100 {
        if after.value("threadline_websockets_open") as usize >= a.count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = NodeMetrics::fetch(node.addr).await?;
    }
    let added = rss(&after) - rss(&before);
    println!(
        "{} idle web-chat sockets opened in {:.1} s: node RSS {:.0} -> {:.0} MiB, {:.0} bytes per socket",
        a.count,
        started.elapsed().as_secs_f64(),
        rss(&before) / (1 << 20) as f64,
        rss(&after) / (1 << 20) as f64,
        added / (a.count - 1) as f64,
    );
    drop(open);
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Visitor `k`'s socket, from loopback address 127.0.(k / PER_SOURCE).
async fn connect(addr: std::net::SocketAddr, k: usize) -> anyhow::Result<Socket> {
    let n = k / PER_SOURCE;
    let source = std::net::Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let stream = socket.connect(addr).await?;
    let url = format!("ws://{addr}/chat/ws?tenant=demo&visitor=idle{k}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    // The hello frame: the socket is served.
    ws.next().await.ok_or_else(|| anyhow::anyhow!("closed"))??;
    Ok(ws)
}
