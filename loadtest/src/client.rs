//! Closed-loop HTTP/1.1 clients: each holds one keep-alive connection and
//! sends its next request when the previous answer arrived.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;

pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, addr })
    }

    /// POSTs JSON; returns the status and how long the round trip took.
    pub async fn post_json(
        &mut self,
        path: &str,
        token: &str,
        body: String,
    ) -> anyhow::Result<(u16, Duration, Bytes)> {
        let auth = format!("Bearer {token}");
        self.post(path, "application/json", &[("authorization", &auth)], body)
            .await
    }

    /// POSTs `body` with its content type and extra headers.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> anyhow::Result<(u16, Duration, Bytes)> {
        let mut req = Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let start = Instant::now();
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, start.elapsed(), body))
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.get_as(path, None).await
    }

    /// GETs `path`, with a bearer token when one is given.
    pub async fn get_as(
        &mut self,
        path: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut req = Request::get(path).header("host", self.addr.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::new()))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

/// A node's `/metrics`, fetched once.
pub struct NodeMetrics(String);

impl NodeMetrics {
    pub async fn fetch(addr: SocketAddr) -> anyhow::Result<NodeMetrics> {
        let (_, body) = Conn::open(addr).await?.get("/metrics").await?;
        Ok(NodeMetrics(String::from_utf8_lossy(&body).into_owned()))
    }

    /// Every sample whose series starts with `name`: (series, value).
    pub fn samples(&self, name: &str) -> Vec<(String, f64)> {
        self.0
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// The value of the series exactly named `name` (NaN if absent).
    pub fn value(&self, name: &str) -> f64 {
        self.samples(name)
            .into_iter()
            .find(|(k, _)| k == name)
            .map_or(f64::NAN, |(_, v)| v)
    }
}

/// A latency histogram in microseconds, from 1 µs to 60 s.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Waits for closed-loop client tasks and merges their latencies.
pub async fn merge_latencies(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<hdrhistogram::Histogram<u64>>>>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut hist = latency_histogram();
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok(hist)
}
