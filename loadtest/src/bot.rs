//! The `bot` measurement: inbound messages answered by a tenant's flow
//! (understanding, a reply through the consent gate, durable state), end
//! to end. The reply is recorded in the same durable commit as the message
//! before the 202 returns, so each acknowledged request is one bot reply.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use crate::client::NodeMetrics;
use crate::ingest::{drive, Req};
use crate::node;

#[derive(clap::Args)]
pub struct BotArgs {
    #[arg(long)]
    node: PathBuf,
    /// The flow file the tenant runs.
    #[arg(long, default_value = "examples/flows/dental.toml")]
    flow: PathBuf,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 10_000)]
    contacts: usize,
}

pub async fn run(a: BotArgs) -> anyhow::Result<()> {
    let flow = std::fs::canonicalize(&a.flow)?;
    let config = format!(
        r#"
[server]
admin_token = "loadtest-admin-token"

[[tenants]]
id = "smile"
name = "Bright Smile Dental"
timezone = "America/New_York"
gateway_token = "gw-smile"
quiet_hours_states = []
flow = "{}"
"#,
        flow.display()
    );
    let spawned = node::spawn_with_config(&a.node, &config, &[])?;
    let addr = spawned.addr;
    eprintln!(
        "node on {addr}: {} clients, customers asking the dental flow, {} s",
        a.clients, a.seconds
    );
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let contacts = a.contacts;
    let questions = [
        "what are your hours?",
        "do you take delta insurance",
        "where are you located",
        "can I book a cleaning",
    ];
    let make = Arc::new(move |n: usize| {
        Req {
        path: "/api/v1/inbound".into(),
        content_type: "application/json",
        headers: vec![("authorization", "Bearer gw-smile".to_owned())],
        body: json!({"tenant": "smile", "channel": "webchat", "from": format!("v{}", n % contacts),
                     "text": questions[n % questions.len()], "provider_message_id": format!("b{run_id}-{n}")})
        .to_string(),
        expect: 202,
    }
    });
    let phase = drive("bot-replies", addr, a.clients, a.seconds, make).await?;
    let m = NodeMetrics::fetch(addr).await?;
    println!("{}", phase.line());
    println!(
        "node: {} inbound messages, each answered by the flow in the same durable commit",
        m.value("threadline_messages_ingested_total")
    );
    Ok(())
}
