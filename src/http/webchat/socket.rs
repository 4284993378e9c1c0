//! What every WebSocket of the node shares (web chat, agent desktops, the
//! inbox): the handshake with its deadline, error frames, bounded writes
//! and closing.

use super::*;
use std::time::Duration;

use crate::http::Body;
use futures_util::SinkExt;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;

use crate::http::{ApiError, App, Resp};

/// Answers a WebSocket upgrade (101) and runs `serve` on the socket; a
/// request that is not an upgrade gets a 400 JSON error.
pub fn accept_websocket<F, Fut>(mut req: Request<Body>, serve: F) -> Result<Resp, ApiError>
where
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let is_ws = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .cloned()
        .filter(|_| is_ws)
    else {
        return Err(ApiError::bad(
            "websocket_required",
            "this endpoint speaks WebSocket: send an Upgrade: websocket request",
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The socket keeps its connection's slot of `server.max_connections`.
    let slot = req.extensions().get::<crate::http::ConnPermit>().cloned();
    tokio::spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_FRAME_BYTES))
                    .max_frame_size(Some(MAX_FRAME_BYTES))
                    .read_buffer_size(READ_BUFFER);
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve(ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut r = Response::new(Default::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("a base64 accept key is a valid header value"),
    );
    Ok(r)
}

pub fn error_frame(code: &str, message: impl Into<String>) -> String {
    json!({"type": "error", "code": code, "message": message.into()}).to_string()
}

pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Writes `frames` to `ws` with one flush; false if the socket failed or
/// the client did not take them within `server.websocket_write_timeout_ms`
/// (it stopped reading: it is dropped rather than holding its task and
/// its queue).
pub async fn write_frames(
    app: &App,
    ws: &mut Ws,
    frames: impl IntoIterator<Item = String>,
) -> bool {
    let deadline = write_deadline(app);
    let write = async {
        for f in frames {
            ws.feed(Frame::text(f)).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(deadline, write).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            tracing::debug!("a WebSocket client stopped reading; disconnecting it");
            false
        }
    }
}

/// Why a socket ends, as its close frame says it.
#[derive(Debug, Clone, Copy)]
pub enum Closing {
    /// The client closed, went idle, or the session ended: 1000.
    Normal,
    /// The node is draining: 1001, reconnect (elsewhere or later).
    Away,
    /// The client broke the protocol (a frame too large...): 1002.
    Protocol,
}

/// Closes `ws` with a close code (a client that closed first gets its
/// close answered), waiting no longer than the write deadline.
pub async fn close_socket(app: &App, mut ws: Ws, why: Closing) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let (code, reason) = match why {
        Closing::Normal => (CloseCode::Normal, ""),
        Closing::Away => (CloseCode::Away, "the node is restarting; reconnect"),
        Closing::Protocol => (CloseCode::Protocol, "protocol error"),
    };
    let deadline = write_deadline(app);
    let close = async {
        // A close the client started is answered by tungstenite on the
        // next flush; one the node starts carries its code.
        if ws.flush().await.is_ok() {
            let _ = ws
                .close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
                .await;
        }
    };
    let _ = tokio::time::timeout(deadline, close).await;
}

/// How long a client may take to accept a frame
/// (`server.websocket_write_timeout_ms`).
pub(super) fn write_deadline(app: &App) -> Duration {
    Duration::from_millis(app.cfg.server.websocket_write_timeout_ms)
}
