//! The providers the node sends to, played by the load tester: the Twilio
//! Messages and Calls REST API and the WhatsApp Cloud API messages
//! endpoint, on loopback. Each message is handed to the simulated customer
//! it is addressed to (which measures inbound-to-reply latency), and every
//! idempotency key is remembered, so a message sent twice is counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::{DashMap, DashSet};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::sync::mpsc;

pub const SID: &str = "AC00000000000000000000000000000000";
pub const AUTH_TOKEN: &str = "loadtest-auth-token";
pub const WA_PHONE_ID: &str = "109000000000001";
pub const WA_TOKEN: &str = "loadtest-wa-token";
pub const WA_SECRET: &str = "loadtest-app-secret";

#[derive(Default)]
pub struct Provider {
    /// Customer address (E.164) → their inbox: when each message to them
    /// arrived.
    inboxes: DashMap<String, mpsc::UnboundedSender<Instant>>,
    keys: DashSet<String>,
    /// Each text accepted (once per idempotency key), and how many times:
    /// a text counted twice was decided twice.
    texts: DashMap<String, u32>,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages for nobody the load tester is simulating now (a reply that
    /// came after its customer stopped waiting).
    pub unmatched: AtomicU64,
}

impl Provider {
    /// Where messages to `address` go while the customer runs.
    pub fn inbox(&self, address: &str) -> mpsc::UnboundedReceiver<Instant> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inboxes.insert(address.to_owned(), tx);
        rx
    }

    pub fn close(&self, address: &str) {
        self.inboxes.remove(address);
    }

    /// How many times `text` was accepted.
    pub fn times_sent(&self, text: &str) -> u32 {
        self.texts.get(text).map_or(0, |n| *n)
    }

    fn deliver(&self, to: &str, key: &str, text: &str) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if !key.is_empty() && !self.keys.insert(key.to_owned()) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Most texts repeat (a flow's answers): no copy for those.
        match self.texts.get_mut(text) {
            Some(mut n) => *n += 1,
            None => *self.texts.entry(text.to_owned()).or_default() += 1,
        }
        let a = Instant::now();
        let sent = self
            .inboxes
            .get(to)
            .map(|tx| tx.send(a).is_ok())
            .unwrap_or(false);
        if !sent {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves the fake providers; returns the base URL.
pub async fn serve(p: Arc<Provider>, at: SocketAddr) -> anyhow::Result<(String, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for provider traffic on {at}: {e}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::node::serve_http(listener, move |req| {
        handle(p.clone(), req)
    }));
    Ok((format!("http://{addr}"), addr))
}

fn answer(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    r
}

async fn handle(p: Arc<Provider>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(400, serde_json::json!({"message": "unreadable body"}));
    };
    let n = p.received.load(Ordering::Relaxed);
    // Twilio: a text (Messages) or a call (Calls), to `To`.
    for (resource, sid) in [("Messages", "SM"), ("Calls", "CA")] {
        if path == format!("/2010-04-01/Accounts/{SID}/{resource}.json") {
            let field = |name: &str| {
                form_urlencoded::parse(&body)
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            p.deliver(&field("To"), &key, &field("Body"));
            return answer(
                201,
                serde_json::json!({"sid": format!("{sid}{n:032x}"), "status": "queued"}),
            );
        }
    }
    if path == format!("/{WA_PHONE_ID}/messages") {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let to = format!("+{}", v["to"].as_str().unwrap_or(""));
        p.deliver(&to, &key, v["text"]["body"].as_str().unwrap_or(""));
        return answer(
            200,
            serde_json::json!({"messaging_product": "whatsapp", "messages": [{"id": format!("wamid.{n:x}")}]}),
        );
    }
    answer(404, serde_json::json!({"message": "not found"}))
}
