//! The business inbox's socket: which conversations changed (see
//! `crate::inbox`).

use super::*;
use std::sync::Arc;

use crate::http::Body;
use futures_util::StreamExt;
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::http::{ApiError, App, Resp};

/// `GET /inbox/ws?tenant=…` with the admin token (Bearer or `?token=`).
pub fn inbox_upgrade(app: Arc<App>, req: Request<Body>) -> Result<Resp, ApiError> {
    let pairs: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let token = crate::http::bearer(&req)
        .map(str::to_owned)
        .or(get("token"));
    // The inbox only reads: the supervisor token will do.
    let allowed = token.as_deref().is_some_and(|t| {
        crate::http::ct_eq(t, &app.cfg.server.admin_token) || crate::http::is_supervisor(&app, t)
    });
    if !allowed {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin or supervisor token is required (Authorization: Bearer or ?token=)",
        ));
    }
    let tenant = get("tenant").unwrap_or_default();
    let tenant = crate::http::known_tenant(&app, &tenant)?;
    accept_websocket(req, move |ws| serve_inbox(app, ws, tenant))
}

pub(super) async fn serve_inbox(app: Arc<App>, mut ws: Ws, tenant: String) {
    let watchers = app.inbox.clone();
    let mut watch = watchers.watch();
    let rx = &mut watch.rx;
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
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => resync = true,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        }
                        if ids.len() >= 64 {
                            break;
                        }
                        next = match rx.try_recv() {
                            Ok(v) => Ok(v),
                            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(n))
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
    drop(watch);
    app.shared.metrics.websockets.dec();
    close_socket(&app, ws, why).await;
}
