//! Slow and greedy clients against the real binary: a body that arrives
//! too slowly is cut off at its deadline while others are served, and
//! connections beyond the cap wait for a free slot instead of being
//! refused or costing a log line each.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(node: &Node) -> std::net::SocketAddr {
    node.base.trim_start_matches("http://").parse().unwrap()
}

/// Reads what the node sends on `s` until it closes the connection.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("the node closed the connection")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_too_slowly_is_cut_off_at_the_deadline_while_others_are_served() {
    let node = Node::start_with_config(&config_with_server("body_timeout_ms = 1000"), &[]);
    let mut slow = tokio::net::TcpStream::connect(addr(&node)).await.unwrap();
    slow.write_all(
        b"POST /api/v1/inbound HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer gw-acme\r\n\
          Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"tenant\":",
    )
    .await
    .unwrap();
    // One byte at a time, never the whole body.
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..400 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Meanwhile another client is served.
    let (s, v) = node
        .inbound(
            "gw-acme",
            &sms("acme", "+15550001234", "hello", Some("fast-1")),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut got))
        .await
        .expect("the slow client was cut off")
        .unwrap();
    trickle.abort();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"code\":\"body_timeout\""), "{got}");
    // Nothing of it was stored.
    assert!(node.conversation_of("acme", "+15550009999").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_and_are_served_when_another_closes() {
    let node = Node::start_with_config(&config_with_server("max_connections = 3"), &[]);
    let get = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    // Three clients keep their connections open after a request.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr(&node)).await.unwrap();
        s.write_all(get).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(s);
    }
    // A fourth is not accepted yet: its request waits.
    let mut waiting = tokio::net::TcpStream::connect(addr(&node)).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf))
            .await
            .is_err(),
        "not served while three connections are open"
    );
    // One closes: the fourth is served.
    drop(open.pop());
    let got = read_to_close(&mut waiting).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        !node.stderr().contains("accepting connections failed"),
        "{}",
        node.stderr()
    );
}

/// A web-chat socket to `node` from loopback address `source`.
async fn chat_from(
    node: &Node,
    source: [u8; 4],
    visitor: &str,
) -> Result<common::ws::Ws, tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let stream = socket.connect(addr(node)).await.unwrap();
    let url = node
        .url(&format!("/chat/ws?tenant=acme&visitor={visitor}"))
        .replace("http://", "ws://");
    tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_chat_socket_is_closed_at_the_idle_timeout_while_one_that_pings_stays() {
    use common::ws::*;
    use serde_json::json;
    let node =
        Node::start_with_config(&config_with_server("websocket_idle_timeout_ms = 1000"), &[]);
    let mut silent = chat_from(&node, [127, 0, 0, 1], "silent").await.unwrap();
    let mut talking = chat_from(&node, [127, 0, 0, 1], "talking").await.unwrap();
    assert_eq!(next_json(&mut silent).await["type"], "hello");
    assert_eq!(next_json(&mut talking).await["type"], "hello");
    // One visitor pings now and then, as the widget does...
    let pinging = tokio::spawn(async move {
        for _ in 0..10 {
            send_json(&mut talking, json!({"type": "ping"})).await;
            assert_eq!(next_of(&mut talking, "pong").await["type"], "pong");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        talking
    });
    // ...the silent one is told and closed...
    let idle = next_of(&mut silent, "error").await;
    assert_eq!(idle["code"], "idle", "{idle}");
    // ...and the other is still served after it.
    let mut talking = pinging.await.unwrap();
    send_json(&mut talking, json!({"type": "ping"})).await;
    assert_eq!(next_of(&mut talking, "pong").await["type"], "pong");
    assert_eq!(node.metric("threadline_websockets_open").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_its_share_of_chat_sockets() {
    use common::ws::*;
    let node = Node::start_with_config(&config_with_server("websockets_per_source = 3"), &[]);
    let mut held = Vec::new();
    for k in 0..3 {
        let mut ws = chat_from(&node, [127, 0, 0, 1], &format!("v{k}"))
            .await
            .unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "hello");
        held.push(ws);
    }
    // A fourth from the same address is refused with 429.
    match chat_from(&node, [127, 0, 0, 1], "v3").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 429);
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("too_many_sockets"), "{body}");
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // Another address is not held back by it.
    let mut other = chat_from(&node, [127, 0, 0, 2], "w0").await.unwrap();
    assert_eq!(next_json(&mut other).await["type"], "hello");
    // Once one closes, the first address may open another.
    held.pop().unwrap().close(None).await.unwrap();
    let mut again = None;
    for _ in 0..100 {
        if let Ok(ws) = chat_from(&node, [127, 0, 0, 1], "v4").await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = again.expect("a slot came free");
    assert_eq!(next_json(&mut again).await["type"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_frames_count_against_the_source_rate_and_a_socket_gives_a_number_five_times_at_most()
{
    use common::ws::*;
    use serde_json::json;
    let node = Node::start_with_config(
        &config_with_server("rate_limit_per_second = 5\nrate_limit_burst = 5"),
        &[],
    );
    let mut ws = chat_from(&node, [127, 0, 0, 3], "fast").await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    for k in 0..30 {
        send_json(
            &mut ws,
            json!({"type": "message", "text": format!("m{k}"), "id": format!("m{k}")}),
        )
        .await;
    }
    let (mut acks, mut limited) = (0, 0);
    for _ in 0..30 {
        let f = next_json(&mut ws).await;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("ack"), _) => acks += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("{f}"),
        }
    }
    assert!(limited >= 10, "{acks} acknowledged, {limited} limited");
    // The burst of five, less the upgrade request itself.
    assert!(acks >= 4, "the burst went through: {acks}");

    // Identity claims: five per socket.
    let node = Node::start(&[]);
    let mut ws = chat_from(&node, [127, 0, 0, 1], "claims").await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    for k in 0..5 {
        send_json(
            &mut ws,
            json!({"type": "identify", "phone": phone(900 + k)}),
        )
        .await;
        assert_eq!(next_json(&mut ws).await["type"], "code_sent");
    }
    send_json(&mut ws, json!({"type": "identify", "phone": phone(999)})).await;
    let f = next_json(&mut ws).await;
    assert_eq!(f["code"], "too_many_claims", "{f}");
}
