//! WebSocket clients for the tests: agent desktops and web-chat visitors.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as Frame;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame (10 s at most).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .unwrap();
        if let Frame::Text(t) = f {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// The next frame of type `kind`, skipping others.
pub async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    for _ in 0..50 {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
    panic!("no {kind} frame");
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Frame::text(v.to_string())).await.unwrap();
}
