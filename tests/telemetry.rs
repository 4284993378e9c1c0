//! `[telemetry.otlp]`: request spans reach an OTLP/HTTP collector. The
//! collector here is a loopback HTTP server that records what it is sent;
//! the spans are checked in the protobuf bytes (names and attribute values
//! are plain strings there).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A collector that answers 200 to every POST and keeps (path, content
/// type, body).
async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Received = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let keep = keep.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let keep = keep.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ct = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = req.into_body().collect().await?.to_bytes().to_vec();
                        keep.lock().unwrap().push((path, ct, body));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

#[tokio::test]
async fn request_spans_reach_the_otlp_collector() {
    let (endpoint, got) = collector().await;
    let config = format!(
        "{}\n[telemetry.otlp]\nendpoint = \"{endpoint}\"\nservice_name = \"threadline-test\"\nbatch_delay_ms = 50\n",
        common::CONFIG
    );
    let node = common::Node::start_with_config(&config, &[]);
    let r = node
        .http
        .get(node.url("/api/v1/cluster"))
        .bearer_auth(common::ADMIN)
        .header("x-request-id", "otlp-check-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The batch goes out within its delay; wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let found = got
            .lock()
            .unwrap()
            .iter()
            .find(|(_, _, b)| contains(b, b"otlp-check-1"))
            .cloned();
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "no span reached the collector");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (path, ct, bytes) = body;
    assert_eq!(path, "/v1/traces");
    assert_eq!(ct, "application/x-protobuf");
    for want in [
        &b"GET /api/v1/cluster"[..],
        b"threadline-test",
        b"http.route",
        b"/api/v1/cluster",
    ] {
        assert!(
            contains(&bytes, want),
            "{:?} in the exported span",
            String::from_utf8_lossy(want)
        );
    }
    assert!(
        !contains(&bytes, common::ADMIN.as_bytes()),
        "no token in a span"
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
