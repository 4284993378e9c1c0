//! The business's inbox: the page (`/inbox`) and its live socket
//! (`/inbox/ws`). The page reads the conversation list and each
//! conversation over the REST API with the admin token; the socket tells
//! it which conversations changed, so it reads them again.
//!
//! Changes come from the message feed (after each commit): `Watchers`
//! forwards the tenant and conversation of every recorded message to the
//! open inbox sockets over a bounded broadcast channel; with no socket
//! open it asks for nothing. A socket that falls behind gets `resync`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use hyper::{Request, StatusCode};
use serde_json::json;
use threadline_actors::feed::{Listener, Published};
use threadline_protocol::{ConversationId, Message};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::http::{ApiError, App, Body, Resp};
use crate::webchat::{accept_websocket, close_socket, error_frame, write_frames, Closing, Ws};

/// Changes queued for inbox sockets; one that falls further behind
/// resyncs.
const QUEUE: usize = 1024;

/// The open inbox sockets' view of the message feed.
pub struct Watchers {
    open: AtomicUsize,
    tx: broadcast::Sender<(String, ConversationId)>,
}

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            open: AtomicUsize::new(0),
            tx: broadcast::channel(QUEUE).0,
        }
    }
}

impl Listener for Watchers {
    fn wants(&self, _: ConversationId, _: &Message) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    fn published(&self, p: &Published) {
        let _ = self.tx.send((p.tenant.clone(), p.conversation));
    }
}

/// `GET /inbox/ws?tenant=…` with the admin token (Bearer or `?token=`).
pub fn upgrade(app: Arc<App>, req: Request<Body>) -> Result<Resp, ApiError> {
    let pairs: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let token = crate::http::bearer(&req)
        .map(str::to_owned)
        .or(get("token"));
    if token.as_deref() != Some(app.cfg.server.admin_token.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is required (Authorization: Bearer or ?token=)",
        ));
    }
    let tenant = get("tenant").unwrap_or_default();
    let tenant = crate::http::known_tenant(&app, &tenant)?;
    accept_websocket(req, move |ws| serve(app, ws, tenant))
}

async fn serve(app: Arc<App>, mut ws: Ws, tenant: String) {
    let watchers = app.inbox.clone();
    let mut rx = watchers.tx.subscribe();
    watchers.open.fetch_add(1, Ordering::Relaxed);
    app.shared.metrics.websockets.inc();
    let mut stopping = app.stopping.subscribe();
    let mut why = Closing::Normal;
    let hello = json!({"type": "hello", "tenant": tenant}).to_string();
    if write_frames(&app, &mut ws, [hello]).await {
        loop {
            tokio::select! {
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                    why = Closing::Away;
                    break;
                }
                frame = ws.next() => match frame {
                    Some(Ok(Frame::Close(_))) | None => break,
                    Some(Ok(Frame::Text(_) | Frame::Binary(_))) => {
                        let e = error_frame("unsupported", "the inbox socket only sends");
                        if !write_frames(&app, &mut ws, [e]).await {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {
                        why = Closing::Protocol;
                        break;
                    }
                },
                change = rx.recv() => {
                    // What changed since the last write, once each.
                    let mut ids = Vec::new();
                    let mut resync = false;
                    let mut next = change;
                    loop {
                        match next {
                            Ok((t, id)) if t == tenant && !ids.contains(&id) => ids.push(id),
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => resync = true,
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                        if ids.len() >= 64 {
                            break;
                        }
                        next = match rx.try_recv() {
                            Ok(v) => Ok(v),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Err(broadcast::error::RecvError::Lagged(n))
                            }
                            Err(_) => break,
                        };
                    }
                    let frame = if resync {
                        json!({"type": "resync"})
                    } else if ids.is_empty() {
                        continue;
                    } else {
                        json!({"type": "changed", "conversations": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()})
                    };
                    if !write_frames(&app, &mut ws, [frame.to_string()]).await {
                        break;
                    }
                }
            }
        }
    }
    watchers.open.fetch_sub(1, Ordering::Relaxed);
    app.shared.metrics.websockets.dec();
    close_socket(&app, ws, why).await;
}

pub fn page() -> Resp {
    crate::http::html_page(include_str!("inbox.html").to_owned(), "'none'")
}
