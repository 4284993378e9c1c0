//! The web-chat gateway: `GET /chat/ws?tenant=T&visitor=V` (WebSocket) and
//! the `/chat` widget page.
//!
//! A visitor without an id gets one in the `hello` frame; reconnecting with
//! it resumes the conversation and its history. Messages the visitor sends
//! are acknowledged once durable. Bot, agent and system messages on the
//! web-chat channel reach every open socket of the visitor through the
//! runtime's message feed. A visitor who writes their phone number (or
//! sends `{"type": "identify", "phone": ...}`) makes a claim: a one-time
//! code goes to that number by SMS, and only once the visitor sends it back
//! (`{"type": "verify", "code": ...}`, or types it) is the chat joined to
//! the phone's conversation, so SMS and voice continue it. Until then the
//! visitor is a contact of their own: nothing meant for the number reaches
//! the socket, and nothing the visitor types changes the number's consent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::Body;
use dashmap::DashMap;
use futures_util::StreamExt;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use threadline_actors::feed::{Listener, Published};
use threadline_actors::Delivered;
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{Channel, Direction, Message};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::http::{known_tenant, via, ApiError, App, Resp, MAX_ID_BYTES, MAX_TEXT_BYTES};
use crate::phone;

mod claims;
mod inbox;
mod socket;

use claims::{claim, verify};
pub use inbox::inbox_upgrade;
pub use socket::*;

/// Largest frame a visitor may send.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// Frames queued for one socket before it counts as too slow and is closed.
const SOCKET_QUEUE: usize = 256;

/// Identity claims (a phone number given) one socket may make.
const CLAIMS_PER_SOCKET: u32 = 5;
/// Claims (codes sent) one source address may make per hour.
const CLAIMS_PER_SOURCE_PER_HOUR: u32 = 10;
/// How long a code is good for, and how many wrong tries it takes.
const CODE_TTL_MS: i64 = 10 * 60 * 1000;
const CODE_ATTEMPTS: u32 = 5;
/// Pending claims and per-source counts kept at most (beyond: new claims
/// wait until old ones expire).
const MAX_PENDING_CLAIMS: usize = 100_000;
/// A socket's read buffer: small, since most sockets are idle most of the
/// time (tungstenite's default of 128 KiB per socket was most of an idle
/// socket's memory). Larger frames are still read whole.
const READ_BUFFER: usize = 4096;

/// Open visitor sockets: `tenant \0 visitor` → (socket id, its queue);
/// and how many each source holds open.
#[derive(Default)]
pub struct Hub {
    sockets: DashMap<String, Vec<(u64, mpsc::Sender<String>)>>,
    next: AtomicU64,
    per_source: DashMap<std::net::IpAddr, usize>,
    /// Claims waiting for their code: `tenant \0 visitor` → claim.
    claims: DashMap<String, PendingClaim>,
    /// Codes sent per source in the current hour: (hour start, count).
    claims_per_source: DashMap<std::net::IpAddr, (i64, u32)>,
}

/// A phone number a visitor said is theirs, and the code sent to it.
struct PendingClaim {
    phone: String,
    code: String,
    expires: i64,
    attempts: u32,
}

/// One source's open socket, counted until dropped.
struct SourceSlot {
    hub: Arc<Hub>,
    ip: std::net::IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.hub.per_source.get_mut(&self.ip) {
            *n -= 1;
        }
        self.hub.per_source.remove_if(&self.ip, |_, n| *n == 0);
    }
}

impl Hub {
    /// A slot for one more socket of `ip`, if it holds fewer than `max`.
    fn take_slot(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let mut n = self.per_source.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            hub: self.clone(),
            ip,
        })
    }
}

fn hub_key(tenant: &str, visitor: &str) -> String {
    format!("{tenant}\0{visitor}")
}

pub fn message_frame(m: &Message) -> Value {
    json!({
        "type": "message",
        "id": m.seq,
        "author": m.author.label(),
        "direction": m.direction.as_str(),
        "text": m.text,
        "at": crate::http::rfc3339(m.at),
    })
}

impl Hub {
    fn add(&self, key: &str) -> (u64, mpsc::Receiver<String>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        self.sockets
            .entry(key.to_owned())
            .or_default()
            .push((id, tx));
        (id, rx)
    }

    fn remove(&self, key: &str, id: u64) {
        if let Some(mut v) = self.sockets.get_mut(key) {
            v.retain(|(i, _)| *i != id);
        }
        self.sockets.remove_if(key, |_, v| v.is_empty());
    }

    pub fn open_sockets(&self) -> usize {
        self.sockets.iter().map(|e| e.value().len()).sum()
    }
}

impl Listener for Hub {
    fn wants(&self, _conv: threadline_protocol::ConversationId, m: &Message) -> bool {
        // Internal entries (transfer notes, dispositions, merge notices)
        // never reach the visitor.
        m.channel == Channel::Webchat && m.direction == Direction::Outbound && !m.is_internal()
    }

    fn published(&self, p: &Published) {
        let m = &p.message;
        let Some(visitor) = &p.identities.visitor else {
            return;
        };
        if let Some(mut socks) = self.sockets.get_mut(&hub_key(&p.tenant, visitor)) {
            let frame = message_frame(m).to_string();
            // A socket that cannot keep up is dropped; the visitor
            // reconnects and gets the history.
            socks.retain(|(_, tx)| tx.try_send(frame.clone()).is_ok());
        }
    }

    /// A visitor's socket may be on any node of a cluster.
    fn relayed(&self) -> bool {
        true
    }
}

fn valid_visitor(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `GET /chat/ws`: checks the request, answers 101 and serves the socket.
pub fn upgrade(app: Arc<App>, req: Request<Body>) -> Result<Resp, ApiError> {
    let q: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let tenant = known_tenant(&app, get("tenant").unwrap_or(""))?;
    let visitor = match get("visitor").filter(|v| !v.is_empty()) {
        Some(v) if valid_visitor(v) => v.to_owned(),
        Some(_) => {
            return Err(ApiError::bad(
                "invalid_field",
                "`visitor` must be 1-64 letters, digits, '-' or '_'",
            ))
        }
        None => format!("v_{}", uuid::Uuid::new_v4().simple()),
    };
    let ip = req
        .extensions()
        .get::<crate::http::ClientAddr>()
        .map(|a| a.0.ip());
    let slot = match ip {
        Some(ip) => Some(
            app.chat
                .take_slot(ip, app.cfg.server.websockets_per_source)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_sockets",
                        format!(
                            "{ip} holds {} web-chat sockets already",
                            app.cfg.server.websockets_per_source
                        ),
                    )
                })?,
        ),
        None => None,
    };
    accept_websocket(req, move |ws| async move {
        let _slot = slot;
        serve(app, ws, tenant, visitor, ip).await
    })
}

async fn serve(
    app: Arc<App>,
    mut ws: Ws,
    tenant: String,
    visitor: String,
    ip: Option<std::net::IpAddr>,
) {
    let key = hub_key(&tenant, &visitor);
    let (sock, mut outbox) = app.chat.add(&key);
    app.shared.metrics.websockets.inc();
    let hello = json!({"type": "hello", "tenant": tenant, "visitor": visitor});
    let mut ok = write_frames(&app, &mut ws, [hello.to_string()]).await;
    if ok {
        ok = match Box::pin(history(&app, &tenant, &visitor)).await {
            Ok(Some(h)) => write_frames(&app, &mut ws, [h.to_string()]).await,
            Ok(None) => true,
            Err(e) => write_frames(&app, &mut ws, [error_frame("unavailable", e.message())]).await,
        };
    }
    let idle = Duration::from_millis(app.cfg.server.websocket_idle_timeout_ms);
    let mut idle_until = tokio::time::Instant::now() + idle;
    let mut me = Visitor {
        tenant: &tenant,
        visitor: &visitor,
        ip,
        claims: 0,
    };
    let mut stopping = app.stopping.subscribe();
    let mut why = Closing::Normal;
    while ok {
        tokio::select! {
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                why = Closing::Away;
                break;
            }
            frame = ws.next() => {
                idle_until = tokio::time::Instant::now() + idle;
                let answer = match frame {
                    Some(Ok(Frame::Text(_))) if ip.is_some_and(|ip| !app.source_allows(ip)) => {
                        vec![error_frame("rate_limited", "too many frames from this address; slow down")]
                    }
                    // Boxed, like the history below: a task is sized by
                    // the largest future it may hold, and an idle socket
                    // would pay for the router's.
                    Some(Ok(Frame::Text(t))) => {
                        Box::pin(on_frame(&app, &mut me, t.as_str())).await
                    }
                    Some(Ok(Frame::Binary(_))) => vec![error_frame("unsupported", "send JSON text frames")],
                    Some(Ok(Frame::Close(_))) | None => break,
                    Some(Ok(_)) => vec![], // ping/pong are answered by tungstenite
                    Some(Err(e)) => {
                        // A protocol violation (oversized frame...): say why, then close.
                        write_frames(&app, &mut ws, [error_frame("protocol", e.to_string())]).await;
                        why = Closing::Protocol;
                        break;
                    }
                };
                if !answer.is_empty() {
                    ok = write_frames(&app, &mut ws, answer).await;
                }
            }
            out = outbox.recv() => match out {
                Some(f) => ok = write_frames(&app, &mut ws, [f]).await,
                None => break, // dropped as too slow
            },
            _ = tokio::time::sleep_until(idle_until) => {
                write_frames(&app, &mut ws, [error_frame("idle", "no frame for too long; reconnect to go on")]).await;
                break;
            }
        }
    }
    app.chat.remove(&key, sock);
    app.shared.metrics.websockets.dec();
    close_socket(&app, ws, why).await;
}

/// The `history` frame: what the visitor said and was told in web chat
/// (messages of other channels stay with the business: linking a number
/// proves nothing about who typed it).
async fn history(app: &App, tenant: &str, visitor: &str) -> Result<Option<Value>, ApiError> {
    let Some(state) = app.router.view(tenant, visitor).await? else {
        return Ok(None);
    };
    let messages: Vec<Value> = state
        .messages
        .iter()
        .filter(|m| m.channel == Channel::Webchat && !m.is_internal())
        .map(message_frame)
        .collect();
    Ok(Some(json!({
        "type": "history",
        "conversation_id": state.id.to_string(),
        "messages": messages,
    })))
}

/// What a web-chat visitor sends, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum VisitorFrame {
    /// A message, with the client's id for it (resends are idempotent).
    Message {
        text: String,
        id: Option<String>,
    },
    /// The visitor gives their phone number (E.164).
    Identify(String),
    /// The code sent to the number the visitor gave.
    Verify(String),
    Ping,
}

/// A visitor's frame, or the error frame to answer.
pub fn parse_frame(text: &str) -> Result<VisitorFrame, String> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(error_frame(
                "invalid_json",
                "frames are JSON objects with a \"type\"",
            ))
        }
    };
    match v["type"].as_str() {
        Some("message") => {
            let Some(text) = v["text"].as_str().filter(|t| !t.trim().is_empty()) else {
                return Err(error_frame(
                    "invalid_field",
                    "`text` must be a non-empty string",
                ));
            };
            if text.len() > MAX_TEXT_BYTES {
                return Err(error_frame(
                    "field_too_long",
                    format!("`text` exceeds {MAX_TEXT_BYTES} bytes"),
                ));
            }
            let id = v["id"]
                .as_str()
                .filter(|i| !i.is_empty() && i.len() <= MAX_ID_BYTES)
                .map(str::to_owned);
            Ok(VisitorFrame::Message {
                text: text.to_owned(),
                id,
            })
        }
        Some("identify") => match v["phone"].as_str().and_then(phone::normalize) {
            Some(p) => Ok(VisitorFrame::Identify(p)),
            None => Err(error_frame(
                "invalid_field",
                "`phone` must be a phone number",
            )),
        },
        Some("verify") => match v["code"].as_str().map(str::trim) {
            Some(c) if c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(VisitorFrame::Verify(c.to_owned()))
            }
            _ => Err(error_frame(
                "invalid_field",
                "`code` must be the 6 digits sent",
            )),
        },
        Some("ping") => Ok(VisitorFrame::Ping),
        Some(other) => Err(error_frame(
            "unknown_type",
            format!("unknown frame type {other:?} (message, identify, verify, ping)"),
        )),
        None => Err(error_frame("invalid_frame", "the frame has no \"type\"")),
    }
}

/// Who is on the other end of a socket, and what it has claimed.
struct Visitor<'a> {
    tenant: &'a str,
    visitor: &'a str,
    ip: Option<std::net::IpAddr>,
    /// Identity claims this socket made.
    claims: u32,
}

/// A frame's answers.
async fn on_frame(app: &App, v: &mut Visitor<'_>, text: &str) -> Vec<String> {
    match parse_frame(text) {
        Err(e) => vec![e],
        Ok(VisitorFrame::Message { text, id }) => {
            // The code, typed as a message while a claim waits for it.
            let t = text.trim();
            if t.len() == 6
                && t.bytes().all(|b| b.is_ascii_digit())
                && app.chat.claims.contains_key(&hub_key(v.tenant, v.visitor))
            {
                return vec![verify(app, v, t).await];
            }
            on_message(app, v, &text, id.as_deref()).await
        }
        Ok(VisitorFrame::Identify(p)) => vec![claim(app, v, &p).await],
        Ok(VisitorFrame::Verify(code)) => vec![verify(app, v, &code).await],
        Ok(VisitorFrame::Ping) => vec![json!({"type": "pong"}).to_string()],
    }
}

async fn on_message(
    app: &App,
    v: &mut Visitor<'_>,
    text: &str,
    client_id: Option<&str>,
) -> Vec<String> {
    let (tenant, visitor) = (v.tenant, v.visitor);
    let pid = match client_id {
        Some(id) => format!("wc:{visitor}:{id}"),
        None => format!("wc:{}", uuid::Uuid::new_v4().simple()),
    };
    let msg = InboundMessage {
        channel: Channel::Webchat,
        from: visitor.to_owned(),
        to: None,
        text: text.to_owned(),
        provider_message_id: Some(pid),
        at: None,
        media: vec![],
    };
    let delivered = via(app, "webchat", app.router.deliver(tenant, visitor, msg)).await;
    let mut out = match delivered {
        Ok(Delivered::Recorded(ack)) => vec![json!({
            "type": "ack",
            "id": client_id,
            "conversation_id": ack.conversation.to_string(),
            "message_id": ack.message.to_string(),
            "duplicate": ack.duplicate,
        })
        .to_string()],
        Ok(Delivered::DeadLettered { .. }) => {
            vec![error_frame(
                "dead_lettered",
                "the message was parked for an operator",
            )]
        }
        Err(e) => return vec![error_frame("unavailable", e.message())],
    };
    if let Some(p) = phone::find_in_text(text) {
        out.push(claim(app, v, &p).await);
    }
    out
}

/// `GET /chat?tenant=T`: the widget demo page.
pub fn page(app: &App, req: &Request<Body>) -> Result<Resp, ApiError> {
    let tenant = req
        .uri()
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "tenant")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let tenant = known_tenant(app, &tenant)?;
    let name = app
        .cfg
        .tenant(&tenant)
        .map(|t| {
            if t.name.is_empty() {
                t.id.clone()
            } else {
                t.name.clone()
            }
        })
        .unwrap_or_default();
    let html = include_str!("../chat.html")
        .replace("{{TENANT}}", &quick_xml::escape::escape(tenant.as_str()))
        .replace("{{NAME}}", &quick_xml::escape::escape(name.as_str()));
    let ancestors = app
        .cfg
        .tenant(&tenant)
        .map(|t| t.chat_frame_ancestors.join(" "))
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "'self'".to_owned());
    Ok(crate::http::html_page(html, &ancestors))
}

// ---- The inbox socket (`/inbox/ws`): which conversations changed ----
