//! A local fake of the Twilio Messages REST API: a real HTTP server on
//! loopback that checks basic auth, records each message once per
//! idempotency key, and can be told to fail, to refuse a number with
//! 21610, or to hold a request unanswered (a lost response).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub const SID: &str = "AC00000000000000000000000000000000";
pub const TOKEN: &str = "fake-auth-token";

#[derive(Default)]
pub struct State {
    /// Every request received, in order: (idempotency key, form).
    pub requests: Vec<(String, HashMap<String, String>)>,
    /// Accepted messages, once per key.
    pub accepted: Vec<(String, HashMap<String, String>)>,
    keys: HashSet<String>,
    pub fail_next: usize,
    /// Call updates to answer 503 before taking one.
    pub fail_updates: usize,
    pub hold_next: usize,
    pub opted_out: HashSet<String>,
}

#[derive(Clone)]
pub struct FakeTwilio {
    pub base: String,
    pub state: Arc<Mutex<State>>,
}

impl FakeTwilio {
    pub async fn start() -> FakeTwilio {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeTwilio { base, state }
    }

    pub fn accepted_bodies(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.accepted
            .iter()
            .filter_map(|(_, f)| f.get("Body").cloned())
            .collect()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

fn reply(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

async fn handle(
    st: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    use base64::Engine;
    let messages = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    let calls = format!("/2010-04-01/Accounts/{SID}/Calls.json");
    let updated = req
        .uri()
        .path()
        .strip_prefix(&format!("/2010-04-01/Accounts/{SID}/Calls/"))
        .and_then(|rest| rest.strip_suffix(".json"))
        .map(str::to_owned);
    let resource = if req.uri().path() == messages {
        "Messages"
    } else if req.uri().path() == calls {
        "Calls"
    } else if updated.is_some() {
        // An update of a call in progress (new TwiML).
        "CallUpdate"
    } else {
        return Ok(reply(
            404,
            serde_json::json!({"code": 20404, "message": "not found"}),
        ));
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    if auth != want {
        return Ok(reply(
            401,
            serde_json::json!({"code": 20003, "message": "Authenticate"}),
        ));
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    // Which REST resource was called, for tests that place calls.
    form.insert("_resource".into(), resource.into());
    if let Some(sid) = &updated {
        form.insert("_call".into(), sid.clone());
    }
    let hold = {
        let mut s = st.lock().unwrap();
        s.requests.push((key.clone(), form.clone()));
        if let Some(sid) = &updated {
            if s.fail_updates > 0 {
                s.fail_updates -= 1;
                return Ok(reply(
                    503,
                    serde_json::json!({"code": 20503, "message": "Service unavailable"}),
                ));
            }
            // Updates carry no idempotency key: each one is kept.
            let n = s.accepted.len();
            s.accepted.push((format!("update-{sid}-{n}"), form.clone()));
            return Ok(reply(
                200,
                serde_json::json!({"sid": sid, "status": "in-progress"}),
            ));
        }
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Ok(reply(
                503,
                serde_json::json!({"code": 20503, "message": "Service unavailable"}),
            ));
        }
        if s.opted_out.contains(&form["To"]) {
            return Ok(reply(
                400,
                serde_json::json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}),
            ));
        }
        if s.keys.insert(key.clone()) {
            s.accepted.push((key.clone(), form.clone()));
        }
        if s.hold_next > 0 {
            s.hold_next -= 1;
            true
        } else {
            false
        }
    };
    if hold {
        // Accepted, but the answer never comes back.
        std::future::pending::<()>().await;
    }
    Ok(reply(
        201,
        serde_json::json!({"sid": format!("{}{}", if resource == "Calls" { "CA" } else { "SM" }, key.replace(['_', '.'], "")), "status": "queued"}),
    ))
}

/// A local fake of the WhatsApp Cloud API messages endpoint.
#[derive(Clone)]
pub struct FakeWhatsapp {
    pub base: String,
    /// (idempotency key, JSON body) of every accepted request.
    pub sent: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

pub const WA_TOKEN: &str = "EAAB-fake-token";
pub const WA_PHONE_ID: &str = "106540352242922";

impl FakeWhatsapp {
    pub async fn start() -> FakeWhatsapp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v21.0", listener.local_addr().unwrap());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s2 = sent.clone();
        serve(listener, move |req: Request<hyper::body::Incoming>| {
            let sent = s2.clone();
            async move {
                let ok_path = req.uri().path() == format!("/v21.0/{WA_PHONE_ID}/messages");
                let ok_auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {WA_TOKEN}"));
                let key = req
                    .headers()
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if !ok_path || !ok_auth {
                    return Ok::<_, Infallible>(reply(
                        401,
                        serde_json::json!({"error": {"code": 190, "message": "Invalid OAuth access token"}}),
                    ));
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                sent.lock().unwrap().push((key.clone(), v));
                Ok(reply(
                    200,
                    serde_json::json!({
                        "messaging_product": "whatsapp",
                        "messages": [{"id": format!("wamid.{key}")}],
                    }),
                ))
            }
        });
        FakeWhatsapp { base, sent }
    }
}

/// Serves HTTP/1.1 on `listener` with `handler`, one task per connection.
fn serve<F, Fut>(listener: tokio::net::TcpListener, handler: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
}

/// A local fake of an OpenAI-compatible chat-completions endpoint.
#[derive(Clone)]
pub struct FakeResponder {
    pub url: String,
    /// Every request body received.
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
    /// How long it takes to answer (past the node's timeout: a fallback).
    pub delay: Arc<Mutex<std::time::Duration>>,
    /// What it answers.
    pub answer: Arc<Mutex<String>>,
}

pub const RESPONDER_KEY: &str = "sk-test-key";

impl FakeResponder {
    pub async fn start() -> FakeResponder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().unwrap()
        );
        let me = FakeResponder {
            url,
            requests: Arc::new(Mutex::new(Vec::new())),
            delay: Arc::new(Mutex::new(std::time::Duration::ZERO)),
            answer: Arc::new(Mutex::new(String::new())),
        };
        let fake = me.clone();
        serve(listener, move |req: Request<hyper::body::Incoming>| {
            let fake = fake.clone();
            async move {
                let ok_auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {RESPONDER_KEY}"));
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if !ok_auth {
                    return Ok::<_, Infallible>(reply(
                        401,
                        serde_json::json!({"error": {"message": "bad key"}}),
                    ));
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                fake.requests.lock().unwrap().push(v);
                let delay = *fake.delay.lock().unwrap();
                tokio::time::sleep(delay).await;
                let answer = fake.answer.lock().unwrap().clone();
                Ok(reply(
                    200,
                    serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}]}),
                ))
            }
        });
        me
    }
}
