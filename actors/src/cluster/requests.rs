//! HTTP requests one node passes on to another: an admin change every node
//! must make (agents), a request for a tenant's calendar to the calendar's
//! home, a node's part of a cluster-wide answer (the audit export). Writes
//! to conversations never take this way: the router sends them as typed
//! commands (`crate::command`).
//!
//! They travel over the cluster link (the same authenticated session as
//! everything else between nodes, TLS when the cluster has it), not over
//! the nodes' HTTP listeners: those may serve HTTPS with a certificate the
//! peers cannot check, and are open to every client. The answering node
//! runs the request through its own HTTP routes (the binary's handler),
//! authorization included.
//!
//! # Requests between nodes
//!
//! HTTP requests passed between nodes as `RouterMsg::Request` (a wire
//! `PeerRequest`: method, path, the authorization and content-type headers,
//! body; answered by a `PeerAnswer`), never over the peers' HTTP listeners.
//! The binary sets the handler (`http::peer_handler`): the request runs
//! through the same routes and authorization as a client's, marked with the
//! `PassedOn` extension (no client can set it) so it is never passed on
//! again. Bodies over 12 MiB are refused both ways (a frame over
//! ractor_cluster's 16 MiB would drop the session).

use std::sync::Arc;
use std::time::Duration;

use super::{unwire, wire, Cluster, RouterMsg};

/// Bodies larger than this are not sent over a link (a frame beyond
/// ractor_cluster's 16 MiB would drop the whole session).
pub const MAX_LINK_BODY: usize = 12 << 20;

/// A request as another node received it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PeerRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The headers the answering node needs (authorization, content type).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The answering node's response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PeerAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl PeerAnswer {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Serves a request a peer passed on.
pub type RequestHandler =
    Arc<dyn Fn(PeerRequest) -> futures_util::future::BoxFuture<'static, PeerAnswer> + Send + Sync>;

impl Cluster {
    /// Sets what serves the requests peers pass on to this node (until
    /// then they are refused).
    pub fn serve_requests(&self, handler: RequestHandler) {
        let _ = self.requests.set(handler);
    }

    /// Passes `req` on to `node` and waits (up to `timeout`, or until the
    /// node is found gone) for its answer.
    pub async fn request(
        &self,
        node: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerAnswer, String> {
        if req.body.len() > MAX_LINK_BODY {
            return Err(format!(
                "a request of {} bytes is too large to pass on",
                req.body.len()
            ));
        }
        let bytes = wire(req);
        let answer = self
            .rpc(node, timeout, |reply| RouterMsg::Request(bytes, reply))
            .await?;
        unwire::<Result<PeerAnswer, String>>(&answer)
            .ok_or_else(|| format!("node {node} gave an unreadable answer"))?
            .map_err(|e| format!("node {node}: {e}"))
    }

    /// Answers a request a peer passed on (a wire `PeerRequest`).
    pub(super) async fn on_request(&self, bytes: Vec<u8>) -> Vec<u8> {
        let answer = match (unwire::<PeerRequest>(&bytes), self.requests.get()) {
            (None, _) => Err("unreadable request".to_owned()),
            (_, None) => Err("this node does not take requests yet".to_owned()),
            (Some(r), Some(serve)) => {
                let a = serve(r).await;
                if a.body.len() > MAX_LINK_BODY {
                    Err(format!(
                        "the answer ({} bytes) is too large to pass back; ask for less",
                        a.body.len()
                    ))
                } else {
                    Ok(a)
                }
            }
        };
        wire(&answer)
    }

    /// The other live nodes, by name.
    pub fn peer_names(&self) -> Vec<String> {
        self.live_names()
            .into_iter()
            .filter(|n| *n != self.spec.name)
            .collect()
    }
}
