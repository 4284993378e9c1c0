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
