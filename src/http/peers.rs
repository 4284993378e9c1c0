//! In a cluster: requests every node answers (admin changes, a node's part
//! of a cluster-wide answer) and requests for a tenant's calendar, passed on
//! to its home. Writes to conversations are not passed on here: the router
//! runs them where the conversation lives.

use super::*;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use threadline_actors::cluster::{PeerAnswer, PeerRequest, RequestHandler};

/// Marks a request another node passed on (over the cluster link): it is
/// never passed on again. An extension, so no client can set it.
#[derive(Clone, Copy)]
pub(super) struct PassedOn;

/// How long a node waits for a peer's answer to a request passed on.
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `req` was passed on by another node of the cluster.
pub(crate) fn passed_on(req: &Request<Body>) -> bool {
    req.extensions().get::<PassedOn>().is_some()
}

/// `req` (its method, path and query, authorization and content type)
/// with `body`, to pass on to a peer.
pub(super) fn peer_request(req: &Request<Body>, body: Bytes) -> PeerRequest {
    let path = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path(), |p| p.as_str());
    PeerRequest {
        method: req.method().to_string(),
        path: path.to_owned(),
        headers: [AUTHORIZATION, CONTENT_TYPE]
            .iter()
            .filter_map(|h| Some((h.to_string(), req.headers().get(h)?.as_bytes().to_vec())))
            .collect(),
        body: body.to_vec(),
    }
}

/// An admin request of this node's own (the admin token, a JSON body) to
/// pass on to a peer.
pub(crate) fn admin_request(app: &App, method: Method, path: &str, body: Bytes) -> PeerRequest {
    PeerRequest {
        method: method.to_string(),
        path: path.to_owned(),
        headers: vec![
            (CONTENT_TYPE.to_string(), b"application/json".to_vec()),
            (
                AUTHORIZATION.to_string(),
                format!("Bearer {}", app.cfg.server.admin_token).into_bytes(),
            ),
        ],
        body: body.to_vec(),
    }
}

/// Serves the requests peers pass on to this node, through the same
/// routes (and authorization) as a client's.
pub fn peer_handler(app: std::sync::Weak<App>) -> RequestHandler {
    Arc::new(move |r: PeerRequest| {
        let app = app.upgrade();
        Box::pin(async move {
            let Some(app) = app else {
                return answer_of(error_response(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the node is stopping",
                )))
                .await;
            };
            let mut req = Request::new(body_of(Bytes::from(r.body)));
            match (r.method.parse::<Method>(), r.path.parse::<hyper::Uri>()) {
                (Ok(m), Ok(u)) => {
                    *req.method_mut() = m;
                    *req.uri_mut() = u;
                }
                _ => {
                    return answer_of(error_response(ApiError::bad(
                        "invalid_request",
                        "a peer passed on an unreadable request",
                    )))
                    .await
                }
            }
            for (k, v) in r.headers {
                if let (Ok(k), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_bytes(&v),
                ) {
                    req.headers_mut().insert(k, v);
                }
            }
            req.extensions_mut().insert(PassedOn);
            let path = req.uri().path().to_owned();
            let found = crate::routes::find(req.method(), &path);
            let resp = route(&app, req, found).await.unwrap_or_else(error_response);
            answer_of(resp).await
        })
    })
}

pub(super) async fn answer_of(resp: Resp) -> PeerAnswer {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(never) => match never {},
    };
    PeerAnswer {
        status,
        content_type,
        body,
    }
}

/// A peer's answer as this node's response.
pub(super) fn response_of(a: PeerAnswer) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(a.body)));
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(v) = a.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// Sends one admin request to every other live node (marked as passed on,
/// so it goes no further): each peer's name and answer. Nothing in a
/// single node.
pub(super) async fn ask_every_peer(
    app: &App,
    method: Method,
    path: &str,
    body: bytes::Bytes,
) -> Vec<(String, Result<PeerAnswer, String>)> {
    let Some(cluster) = &app.cluster else {
        return Vec::new();
    };
    let ask = admin_request(app, method, path, body);
    let asks = cluster.peer_names().into_iter().map(|peer| {
        let ask = &ask;
        async move {
            let answer = cluster
                .request(&peer, ask, PEER_TIMEOUT)
                .await
                .map_err(|e| e.to_string());
            (peer, answer)
        }
    });
    futures_util::future::join_all(asks).await
}

/// Sends the same admin change to every other live node; the nodes that
/// did not take it (not 2xx), by name.
pub(crate) async fn to_every_peer(
    app: &App,
    method: Method,
    path: &str,
    body: bytes::Bytes,
) -> Vec<String> {
    let mut refused = Vec::new();
    for (peer, answer) in ask_every_peer(app, method, path, body).await {
        match answer {
            Ok(a) if a.succeeded() => {}
            Ok(a) => {
                tracing::warn!(peer, status = a.status, "a peer refused an admin change");
                refused.push(peer);
            }
            Err(e) => {
                tracing::warn!(peer, error = %e, "a peer did not take an admin change");
                refused.push(peer);
            }
        }
    }
    refused
}

/// Asks every other live node for `path` (an admin GET): the JSON bodies
/// of the nodes that answered 2xx, and the names of those that did not.
pub(crate) async fn from_every_peer(app: &App, path: &str) -> (Vec<Value>, Vec<String>) {
    let mut out = (Vec::new(), Vec::new());
    for (peer, answer) in ask_every_peer(app, Method::GET, path, Bytes::new()).await {
        match answer
            .ok()
            .filter(PeerAnswer::succeeded)
            .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok())
        {
            Some(v) => out.0.push(v),
            None => out.1.push(peer),
        }
    }
    out
}

/// Whether the query asks for this node's own part only (`?node=this`,
/// how nodes ask each other for what they hold).
pub(super) fn this_node_only(req: &Request<Body>) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "node=this"))
}

/// Sends `req` on to `owner` (a node's name), over the cluster link, and
/// relays the answer.
pub(super) async fn pass_on(app: &App, req: Request<Body>, owner: &str) -> Result<Resp, ApiError> {
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::not_found("this node is not in a cluster"));
    };
    let (parts, body) = req.into_parts();
    let body = read_body(
        Request::from_parts(parts.clone(), body),
        app.cfg.server.max_body_bytes,
    )
    .await?;
    let ask = peer_request(&Request::from_parts(parts, body_of(Bytes::new())), body);
    let answer = cluster
        .request(owner, &ask, PEER_TIMEOUT)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("node {owner}, which this request is for, did not answer: {e}"),
            )
        })?;
    Ok(response_of(answer))
}
