//! The `webhooks` measurement: signed Twilio SMS webhooks end to end (the
//! node checks each X-Twilio-Signature, records the message durably and
//! only then answers 200 with TwiML).

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;

use crate::client::NodeMetrics;
use crate::ingest::{drive, Req};
use crate::node;

#[derive(clap::Args)]
pub struct WebhookArgs {
    /// Node binary to start (fresh data dir, a config with Twilio).
    #[arg(long)]
    node: PathBuf,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Distinct customers (conversations) the texts come from.
    #[arg(long, default_value_t = 10_000)]
    contacts: usize,
    #[arg(long)]
    json: bool,
}

const TOKEN: &str = "loadtest-auth-token";
const PUBLIC_URL: &str = "https://hooks.loadtest.example";
const NUMBER: &str = "+15557654321";

fn config() -> String {
    format!(
        r#"
[server]
admin_token = "loadtest-admin-token"
public_url = "{PUBLIC_URL}"

[providers.twilio]
account_sid = "AC00000000000000000000000000000000"
auth_token = "{TOKEN}"
# Nothing is sent in this measurement.
api_base = "http://127.0.0.1:9"

[[tenants]]
id = "acme"
name = "Acme Dental"
timezone = "America/New_York"
sms_numbers = ["{NUMBER}"]
gateway_token = "gw-acme"
"#
    )
}

fn sign(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub async fn run(a: WebhookArgs) -> anyhow::Result<()> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let spawned = node::spawn_with_config(&a.node, &config(), &[])?;
    let addr = spawned.addr;
    eprintln!(
        "node on {addr}: {} clients posting signed Twilio SMS webhooks from {} customers, {} s",
        a.clients, a.contacts, a.seconds
    );
    let contacts = a.contacts;
    let url = format!("{PUBLIC_URL}/webhooks/twilio/sms");
    let make = Arc::new(move |n: usize| {
        let sid = format!("SM{run_id:x}{n:012x}");
        let from = format!("+1555{:07}", n % contacts);
        let body = format!("Hi, is there an opening on day {n}?");
        let params = [
            ("MessageSid", sid.as_str()),
            ("SmsSid", sid.as_str()),
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("From", from.as_str()),
            ("To", NUMBER),
            ("Body", body.as_str()),
            ("NumMedia", "0"),
            ("NumSegments", "1"),
            ("SmsStatus", "received"),
            ("ApiVersion", "2010-04-01"),
            ("FromCountry", "US"),
            ("FromState", "NY"),
        ];
        let signature = sign(&url, &params);
        Req {
            path: "/webhooks/twilio/sms".into(),
            content_type: "application/x-www-form-urlencoded",
            headers: vec![("x-twilio-signature", signature)],
            body: form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params)
                .finish(),
            expect: 200,
        }
    });
    let phase = drive("twilio-sms", addr, a.clients, a.seconds, make).await?;
    let m = NodeMetrics::fetch(addr).await?;
    let rejected = m.value("threadline_webhooks_rejected_total");
    let ingested = m.value("threadline_messages_ingested_total");
    if a.json {
        println!(
            "{}",
            json!({"webhooks": phase.json(), "rejected": rejected, "ingested": ingested})
        );
    } else {
        println!("{}", phase.line());
        println!("node: {ingested} messages ingested, {rejected} webhooks rejected");
    }
    Ok(())
}
