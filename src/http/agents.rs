//! Human agents over HTTP: the agents REST API, queue stats, escalation,
//! and the agent desktop WebSocket (`GET /agent/ws`) with its JSON frames
//! (docs/http-api.md). The pool actor decides; this module only speaks JSON.
//!
//! # The agents API and desktop
//!
//! the agents REST API (`data_dir/agents.json` for API-made agents, with a
//! version every change raises; in a cluster `catch_up` compares (version,
//! digest) with each peer every 2 s over `GET /api/v1/cluster/agents`, which
//! only a peer can ask, and adopts a greater list), queue stats, escalation,
//! and the agent desktop WebSocket: JSON frames parsed into `AgentCommand`s,
//! `AgentEvent`s rendered as JSON; the desktop page is plain HTML and
//! JavaScript.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bodies::EscalateBody;
use crate::http::Body;
use futures_util::StreamExt;
use hyper::{Method, Request, StatusCode};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::{json, Value};
use threadline_actors::pool::routing::{Lane, Presence, QueueStats};
use threadline_actors::pool::{AgentCommand, AgentEvent};
use threadline_protocol::{ConversationId, ConversationState};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::config::{Agent, Config};
use crate::http::webchat::{
    accept_websocket, close_socket, error_frame, write_frames, Closing, Ws,
};
use crate::http::{
    admin, bearer, ct_eq, json_response, known_tenant, message_json, parse_json, read_body,
    ApiError, App, Resp,
};

/// Agent tokens and where each agent was defined.
pub struct AgentDirectory {
    /// token → agent id
    tokens: RwLock<HashMap<String, String>>,
    /// Agents created over the API (persisted in `agents.json`), and the
    /// version of that list.
    api: RwLock<ApiAgents>,
    config_ids: Vec<String>,
    file: PathBuf,
}

/// The API-made agents as stored: every change adds one to `version`. In a
/// cluster the nodes compare (version, digest) and the greater list wins,
/// so a node that was down while the list changed catches up.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
struct ApiAgents {
    version: u64,
    agents: Vec<Agent>,
}

impl ApiAgents {
    /// A digest of the list (independent of its order).
    fn digest(&self) -> String {
        use sha2::Digest;
        let mut sorted: Vec<&Agent> = self.agents.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let bytes = serde_json::to_vec(&sorted).expect("agents serialize");
        format!("{:x}", sha2::Sha256::digest(bytes))
    }
}

/// How often a clustered node compares its agent list with its peers'.
const AGENT_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Events queued for one desktop before it counts as too slow.
const DESKTOP_QUEUE: usize = 1024;

/// Agents created over the API, as last saved.
pub fn stored(data_dir: &Path) -> anyhow::Result<Vec<Agent>> {
    Ok(stored_list(data_dir)?.agents)
}

/// The stored list with its version (a file from before versions, a bare
/// array, is version 0).
fn stored_list(data_dir: &Path) -> anyhow::Result<ApiAgents> {
    let file = data_dir.join("agents.json");
    let bad =
        |e: serde_json::Error| anyhow::anyhow!("{} is not a valid agent list: {e}", file.display());
    match std::fs::read(&file) {
        Ok(b) if b.trim_ascii_start().starts_with(b"[") => Ok(ApiAgents {
            version: 0,
            agents: serde_json::from_slice(&b).map_err(bad)?,
        }),
        Ok(b) => serde_json::from_slice(&b).map_err(bad),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApiAgents::default()),
        Err(e) => Err(e.into()),
    }
}

impl AgentDirectory {
    pub fn new(cfg: &Config) -> AgentDirectory {
        let api = stored_list(&cfg.server.data_dir).unwrap_or_default();
        let tokens = cfg
            .agents
            .iter()
            .chain(api.agents.iter())
            .map(|a| (a.token.clone(), a.id.clone()))
            .collect();
        AgentDirectory {
            tokens: RwLock::new(tokens),
            api: RwLock::new(api),
            config_ids: cfg.agents.iter().map(|a| a.id.clone()).collect(),
            file: cfg.server.data_dir.join("agents.json"),
        }
    }

    fn agent_of(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .iter()
            .find(|(t, _)| ct_eq(t, token))
            .map(|(_, a)| a.clone())
    }

    /// Writes the API agents durably (temp file, fsync, rename).
    fn save(&self, list: &ApiAgents) -> std::io::Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(list).expect("agents serialize"))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.file)
    }

    /// Makes `next` the API agent list (durably first), at `version` (the
    /// next one when `None`); the previous list.
    fn replace(&self, next: Vec<Agent>, version: Option<u64>) -> std::io::Result<Vec<Agent>> {
        let mut api = self.api.write();
        let list = ApiAgents {
            version: version.unwrap_or(api.version + 1),
            agents: next,
        };
        self.save(&list)?;
        let old = std::mem::replace(&mut *api, list);
        let mut tokens = self.tokens.write();
        tokens.retain(|_, id| self.config_ids.contains(id));
        for a in &api.agents {
            tokens.insert(a.token.clone(), a.id.clone());
        }
        Ok(old.agents)
    }
}

fn presence_str(p: Presence) -> &'static str {
    p.as_str()
}

fn capacity_json(c: &[u32; 4]) -> Value {
    let mut m = serde_json::Map::new();
    for lane in Lane::ALL {
        m.insert(lane.as_str().into(), json!(c[lane as usize]));
    }
    Value::Object(m)
}

/// `GET/POST /api/v1/agents`, `DELETE /api/v1/agents/{id}`.
pub async fn rest(app: &App, req: Request<Body>, id: Option<&str>) -> Result<Resp, ApiError> {
    admin(app, &req)?;
    // In a cluster every node keeps the agent list (a desktop may connect
    // to any of them): a change made here is made on each live peer too.
    let relay = !crate::http::passed_on(&req);
    let path = req.uri().path().to_owned();
    match (req.method().clone(), id) {
        (Method::GET, None) => {
            let list = app.router.agents().await?;
            let config_ids = &app.agents.config_ids;
            let out: Vec<Value> = list
                .into_iter()
                .map(|(a, p, connected)| {
                    json!({
                        "id": a.id, "name": a.name, "tenants": a.tenants, "skills": a.skills,
                        "capacity": capacity_json(&a.capacity), "status": presence_str(p),
                        "connected": connected,
                        "source": if config_ids.contains(&a.id) { "config" } else { "api" },
                    })
                })
                .collect();
            Ok(json_response(StatusCode::OK, &json!({"agents": out})))
        }
        (Method::POST, None) => {
            let body = read_body(req, app.cfg.server.max_body_bytes).await?;
            let a: Agent = parse_json(&body)?;
            validate(app, &a)?;
            if app.agents.config_ids.contains(&a.id) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("agent {} is defined in the config file", a.id),
                ));
            }
            let spec = a.spec();
            let mut next = app.agents.api.read().agents.clone();
            next.retain(|x| x.id != a.id);
            next.push(a.clone());
            app.agents
                .replace(next, None)
                .map_err(|e| ApiError::storage(format!("cannot save the agent list: {e}")))?;
            app.router.upsert_agent(spec.clone())?;
            let failed = match relay {
                true => crate::http::to_every_peer(app, Method::POST, &path, body).await,
                false => Vec::new(),
            };
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"id": spec.id, "name": spec.name, "tenants": spec.tenants,
                        "skills": spec.skills, "capacity": capacity_json(&spec.capacity),
                        "peers_failed": failed}),
            ))
        }
        (Method::DELETE, Some(id)) => {
            if app.agents.config_ids.iter().any(|c| c == id) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("agent {id} is defined in the config file; remove it there"),
                ));
            }
            let api = app.agents.api.read().agents.clone();
            if !api.iter().any(|a| a.id == id) {
                return Err(ApiError::not_found(format!("no agent {id}")));
            }
            let next: Vec<Agent> = api.into_iter().filter(|a| a.id != id).collect();
            app.agents
                .replace(next, None)
                .map_err(|e| ApiError::storage(format!("cannot save the agent list: {e}")))?;
            app.router.remove_agent(id).await?;
            let failed = match relay {
                true => {
                    crate::http::to_every_peer(app, Method::DELETE, &path, Default::default()).await
                }
                false => Vec::new(),
            };
            Ok(json_response(
                StatusCode::OK,
                &json!({"id": id, "deleted": true, "peers_failed": failed}),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET or POST /api/v1/agents, DELETE /api/v1/agents/{id}",
        )),
    }
}

fn validate(app: &App, a: &Agent) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::bad("invalid_field", m));
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !id_ok(&a.id) {
        return bad("`id` must be 1-64 letters, digits, '-' or '_'".into());
    }
    if a.token.len() < 6 || a.token.len() > 256 {
        return bad("`token` must be 6-256 characters".into());
    }
    // Unique across every kind of token, however it was made: an agent
    // token equal to a gateway's would let that gateway's integrator sign
    // in as an agent.
    if ct_eq(&a.token, &app.cfg.server.admin_token)
        || app
            .cfg
            .tenants
            .iter()
            .any(|t| ct_eq(&a.token, &t.gateway_token))
        || app
            .agents
            .agent_of(&a.token)
            .is_some_and(|other| other != a.id)
    {
        return bad("`token` must be unique among all tokens".into());
    }
    if a.name.len() > 128 || a.skills.len() > 64 || a.skills.iter().any(|s| s.len() > 64) {
        return bad("`name` is at most 128 bytes; at most 64 `skills` of 64 bytes".into());
    }
    if a.tenants.is_empty() {
        return bad("`tenants` must name at least one tenant".into());
    }
    if a.phone.as_ref().is_some_and(|p| !crate::config::is_e164(p)) {
        return bad("`phone` must be an E.164 number like +15550001111".into());
    }
    for t in &a.tenants {
        known_tenant(app, t)?;
    }
    for (k, v) in &a.capacity {
        if Lane::parse(k).is_none() || *v > 1000 {
            return bad(format!(
                "`capacity.{k}`: channels are chat, sms, whatsapp, voice; at most 1000"
            ));
        }
    }
    Ok(())
}

/// `GET /api/v1/cluster/agents`, asked by a peer only: this node's API
/// agent list version and digest, and with `?full` the list itself.
pub fn peer_view(app: &App, full: bool) -> Resp {
    let api = app.agents.api.read();
    let mut v = json!({"version": api.version, "digest": api.digest()});
    if full {
        v["agents"] = json!(api.agents);
    }
    json_response(StatusCode::OK, &v)
}

/// In a cluster: every few seconds, compares this node's API agent list
/// with each live peer's and takes a greater one (by version, then
/// digest), so a node that missed changes (it was down, or a change did
/// not reach it) catches up, and every node ends with the same list.
pub async fn catch_up(app: std::sync::Weak<App>) {
    loop {
        tokio::time::sleep(AGENT_SYNC_EVERY).await;
        let Some(app) = app.upgrade() else { return };
        let Some(cluster) = app.cluster.clone() else {
            return;
        };
        let ask = |full: bool| {
            let path = format!("/api/v1/cluster/agents{}", if full { "?full" } else { "" });
            crate::http::admin_request(&app, Method::GET, &path, Default::default())
        };
        let timeout = std::time::Duration::from_secs(5);
        for peer in cluster.peer_names() {
            let mine = {
                let api = app.agents.api.read();
                (api.version, api.digest())
            };
            let theirs = match cluster.request(&peer, &ask(false), timeout).await {
                Ok(a) if a.succeeded() => serde_json::from_slice::<Value>(&a.body).ok(),
                _ => None,
            };
            let Some(t) = theirs else { continue };
            let theirs = (
                t["version"].as_u64().unwrap_or(0),
                t["digest"].as_str().unwrap_or("").to_owned(),
            );
            if theirs <= mine {
                continue;
            }
            let full = match cluster.request(&peer, &ask(true), timeout).await {
                Ok(a) if a.succeeded() => serde_json::from_slice::<ApiAgents>(&a.body).ok(),
                _ => None,
            };
            if let Some(list) = full {
                adopt(&app, list, &peer).await;
            }
        }
    }
}

/// Takes a peer's newer API agent list: saved, tokens replaced, the pool
/// told of every agent added, changed or removed.
async fn adopt(app: &App, list: ApiAgents, peer: &str) {
    // Config agents stay as the config says.
    let next: Vec<Agent> = list
        .agents
        .into_iter()
        .filter(|a| !app.agents.config_ids.contains(&a.id))
        .collect();
    let old = match app.agents.replace(next.clone(), Some(list.version)) {
        Ok(old) => old,
        Err(e) => {
            tracing::warn!(error = %e, "cannot save the agent list learned from a peer");
            return;
        }
    };
    let same = |a: &Agent, b: &Agent| serde_json::to_value(a).ok() == serde_json::to_value(b).ok();
    for a in &next {
        if !old.iter().any(|o| same(o, a)) {
            if let Err(e) = app.router.upsert_agent(a.spec()) {
                tracing::warn!(agent = a.id, error = %e, "agent learned from a peer not added");
            }
        }
    }
    for o in old.iter().filter(|o| !next.iter().any(|a| a.id == o.id)) {
        if let Err(e) = app.router.remove_agent(&o.id).await {
            tracing::warn!(agent = o.id, error = %e, "agent removed on a peer not removed here");
        }
    }
    tracing::info!(
        peer,
        version = list.version,
        agents = next.len(),
        "agent list caught up from a peer"
    );
}

pub fn stats_json(tenant: &str, s: &QueueStats) -> Value {
    json!({
        "tenant": tenant, "waiting": s.waiting, "offered": s.offered, "assigned": s.assigned,
        "oldest_wait_ms": s.oldest_wait_ms, "agents_available": s.agents_available,
        "agents_connected": s.agents_connected,
    })
}

/// `GET /api/v1/tenants/{t}/queue`.
pub async fn queue(app: &App, tenant: &str) -> Result<Resp, ApiError> {
    let tenant = known_tenant(app, tenant)?;
    let s = app.router.queue_stats(&tenant).await?;
    Ok(json_response(StatusCode::OK, &stats_json(&tenant, &s)))
}

/// `POST /api/v1/conversations/{id}/escalate`.
pub async fn escalate(app: &App, id: ConversationId, req: Request<Body>) -> Result<Resp, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: EscalateBody = if body.is_empty() {
        EscalateBody::default()
    } else {
        parse_json(&body)?
    };
    if b.skills.len() > 16
        || b.skills.iter().any(|s| s.len() > 64)
        || b.reason.as_ref().is_some_and(|r| r.len() > 512)
    {
        return Err(ApiError::bad(
            "invalid_field",
            "at most 16 `skills` of 64 bytes and a `reason` of 512 bytes",
        ));
    }
    let reason = b
        .reason
        .unwrap_or_else(|| "escalated through the API".into());
    match app
        .router
        .escalate(id, &reason, b.skills, b.priority)
        .await?
    {
        Some(queued) => Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"conversation_id": id.to_string(), "queued": queued}),
        )),
        None => Err(ApiError::not_found(format!("no conversation {id}"))),
    }
}

/// A short summary for the offer: who, what they want, what is known.
fn summary(s: &ConversationState) -> Value {
    let last = s
        .messages
        .iter()
        .rev()
        .find(|m| m.author == threadline_protocol::Author::Customer)
        .map(|m| m.text.clone());
    json!({
        "contact": s.contact,
        "name": s.captured.name,
        "phone": s.identities.phone,
        "channels": s.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "current_channel": s.messages.iter().rev().find(|m| m.direction == threadline_protocol::Direction::Inbound).map(|m| m.channel.as_str()),
        "intent": s.captured.intent,
        "facts": s.captured.facts,
        "slots": s.captured.slots,
        "booking": crate::http::booking_json(s),
        "last_customer_message": last,
        "messages": s.messages.len(),
    })
}

fn event_json(e: &AgentEvent) -> Value {
    match e {
        AgentEvent::Hello { agent, status } => json!({
            "type": "hello",
            "agent": {"id": agent.id, "name": agent.name, "tenants": agent.tenants, "skills": agent.skills},
            "status": status.as_str(),
            "capacity": capacity_json(&agent.capacity),
        }),
        AgentEvent::Offer {
            offer,
            conversation,
            expires_in_ms,
        } => json!({
            "type": "offer",
            "offer_id": offer.to_string(),
            "conversation_id": conversation.id.to_string(),
            "tenant": conversation.tenant,
            "summary": summary(conversation),
            "transcript": conversation.messages.iter().map(|m| message_json(conversation.id, m)).collect::<Vec<_>>(),
            "expires_in_ms": expires_in_ms,
        }),
        AgentEvent::OfferRescinded {
            offer,
            conversation,
        } => {
            json!({"type": "offer_rescinded", "offer_id": offer.to_string(), "conversation_id": conversation.to_string()})
        }
        AgentEvent::Assigned { conversation } => json!({
            "type": "assigned",
            "conversation_id": conversation.id.to_string(),
            "summary": summary(conversation),
            "conversation": crate::http::conversation_json(conversation),
        }),
        AgentEvent::Message {
            conversation,
            message,
        } => {
            json!({"type": "message", "conversation_id": conversation.to_string(), "message": message_json(*conversation, message)})
        }
        AgentEvent::Transferred { conversation, to } => {
            json!({"type": "transferred", "conversation_id": conversation.to_string(), "to": to})
        }
        AgentEvent::Closed { conversation } => {
            json!({"type": "conversation_closed", "conversation_id": conversation.to_string()})
        }
        AgentEvent::Sent {
            conversation,
            outcome,
        } => {
            let mut v = crate::http::outcome_json(outcome);
            v["type"] = json!("sent");
            v["conversation_id"] = json!(conversation.to_string());
            v
        }
        AgentEvent::Status { status } => json!({"type": "status", "status": status.as_str()}),
        AgentEvent::Queue { tenant, stats } => {
            let mut v = stats_json(tenant, stats);
            v["type"] = json!("queue");
            v
        }
        AgentEvent::Error { code, message } => {
            json!({"type": "error", "code": code, "message": message})
        }
    }
}

/// `GET /agent/ws`: the token (Bearer or `?token=`) names the agent.
pub fn upgrade(app: Arc<App>, req: Request<Body>) -> Result<Resp, ApiError> {
    let query_token = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let token = bearer(&req).map(str::to_owned).or(query_token);
    let Some(agent) = token.as_deref().and_then(|t| app.agents.agent_of(t)) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an agent token is required (Authorization: Bearer or ?token=)",
        ));
    };
    accept_websocket(req, move |ws| serve(app, ws, agent))
}

async fn serve(app: Arc<App>, mut ws: Ws, agent: String) {
    let (tx, mut rx) = mpsc::channel(DESKTOP_QUEUE);
    let session = match app.router.join_agent(&agent, tx).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            write_frames(&app, &mut ws, [error_frame("unknown_agent", e)]).await;
            close_socket(&app, ws, Closing::Normal).await;
            return;
        }
        Err(e) => {
            write_frames(&app, &mut ws, [error_frame("unavailable", e.to_string())]).await;
            close_socket(&app, ws, Closing::Normal).await;
            return;
        }
    };
    app.shared.metrics.websockets.inc();
    let mut stopping = app.stopping.subscribe();
    let mut why = Closing::Normal;
    loop {
        tokio::select! {
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                why = Closing::Away;
                break;
            }
            frame = ws.next() => match frame {
                Some(Ok(Frame::Text(t))) => {
                    if let Err(e) = on_frame(&app, &agent, t.as_str()) {
                        if !write_frames(&app, &mut ws, [e]).await {
                            break;
                        }
                    }
                }
                Some(Ok(Frame::Binary(_))) => {
                    if !write_frames(&app, &mut ws, [error_frame("unsupported", "send JSON text frames")]).await {
                        break;
                    }
                }
                Some(Ok(Frame::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    write_frames(&app, &mut ws, [error_frame("protocol", e.to_string())]).await;
                    why = Closing::Protocol;
                    break;
                }
            },
            event = rx.recv() => match event {
                Some(e) => {
                    // Send what is queued together: one write per burst.
                    let mut burst = vec![e];
                    while burst.len() < 64 {
                        match rx.try_recv() {
                            Ok(e) => burst.push(e),
                            Err(_) => break,
                        }
                    }
                    let frames: Vec<String> =
                        burst.iter().map(|e| event_json(e).to_string()).collect();
                    if !write_frames(&app, &mut ws, frames).await {
                        break;
                    }
                }
                None => break, // the session ended (too slow, or the agent was removed)
            },
        }
    }
    session.stop();
    app.shared.metrics.websockets.dec();
    close_socket(&app, ws, why).await;
}

fn conversation_field(v: &Value) -> Result<ConversationId, String> {
    v["conversation_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            error_frame(
                "invalid_field",
                "`conversation_id` must be a conversation id",
            )
        })
}

fn offer_field(v: &Value) -> Result<u64, String> {
    v["offer_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["offer_id"].as_u64())
        .ok_or_else(|| error_frame("invalid_field", "`offer_id` must be an offer id"))
}

fn text_field(v: &Value, name: &str, max: usize) -> Result<String, String> {
    match v[name].as_str() {
        Some(t) if !t.trim().is_empty() && t.len() <= max => Ok(t.to_owned()),
        _ => Err(error_frame(
            "invalid_field",
            format!("`{name}` must be a non-empty string of at most {max} bytes"),
        )),
    }
}

/// Parses one desktop frame into a command for the pool; `Err` is the
/// error frame to answer with.
fn on_frame(app: &App, agent: &str, text: &str) -> Result<(), String> {
    let cmd = parse_frame(text)?;
    app.router
        .agent_command(agent, cmd)
        .map_err(|e| error_frame("unavailable", e.to_string()))
}

/// An agent desktop's frame as a command, or the error frame to answer.
pub fn parse_frame(text: &str) -> Result<AgentCommand, String> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(error_frame(
                "invalid_json",
                "frames are JSON objects with a \"type\"",
            ))
        }
    };
    let cmd = match v["type"].as_str() {
        Some("status") => match v["status"].as_str().and_then(Presence::parse) {
            Some(p) => AgentCommand::Status(p),
            None => {
                return Err(error_frame(
                    "invalid_field",
                    "`status` must be available, away or offline",
                ))
            }
        },
        Some("queue") => AgentCommand::Queue,
        Some("accept") => AgentCommand::Accept {
            offer: offer_field(&v)?,
        },
        Some("reject") => AgentCommand::Reject {
            offer: offer_field(&v)?,
        },
        Some("send") => AgentCommand::Send {
            conversation: conversation_field(&v)?,
            text: text_field(&v, "text", crate::http::MAX_TEXT_BYTES)?,
        },
        Some("transfer") => {
            let to_agent = v["to_agent"].as_str().map(str::to_owned);
            let to_skill = v["to_skill"].as_str().map(str::to_owned);
            if to_agent.is_none() && to_skill.is_none() {
                return Err(error_frame(
                    "invalid_field",
                    "`to_agent` or `to_skill` is required",
                ));
            }
            AgentCommand::Transfer {
                conversation: conversation_field(&v)?,
                to_agent,
                to_skill,
                note: v["note"].as_str().map(|n| n.chars().take(1000).collect()),
            }
        }
        Some("note") => AgentCommand::Note {
            conversation: conversation_field(&v)?,
            text: text_field(&v, "text", 2000)?,
        },
        Some("close") => AgentCommand::Close {
            conversation: conversation_field(&v)?,
            disposition: v["disposition"]
                .as_str()
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.chars().take(200).collect())
                .unwrap_or_else(|| "resolved".into()),
        },
        Some(other) => {
            return Err(error_frame(
                "unknown_type",
                format!(
                    "unknown frame type {other:?} (status, accept, reject, send, transfer, close, queue)"
                ),
            ))
        }
        None => return Err(error_frame("invalid_frame", "the frame has no \"type\"")),
    };
    Ok(cmd)
}

/// `GET /agent`: the desktop.
/// `GET /agent`: the desktop, which nobody may frame (clickjacking).
pub fn page() -> Resp {
    crate::http::html_page(include_str!("agent.html").to_owned(), "'none'")
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn a_list_saved_before_versions_reads_as_version_zero_and_the_digest_ignores_order() {
        let dir = tempfile::tempdir().unwrap();
        let agent = |id: &str| Agent {
            id: id.into(),
            name: String::new(),
            token: format!("agent-{id}"),
            tenants: vec!["acme".into()],
            skills: Vec::new(),
            capacity: Default::default(),
            phone: None,
        };
        let old = serde_json::to_vec(&vec![agent("a"), agent("b")]).unwrap();
        std::fs::write(dir.path().join("agents.json"), old).unwrap();
        let list = stored_list(dir.path()).unwrap();
        assert_eq!(list.version, 0);
        assert_eq!(list.agents.len(), 2);
        let swapped = ApiAgents {
            version: 0,
            agents: vec![agent("b"), agent("a")],
        };
        assert_eq!(list.digest(), swapped.digest());
        let versioned = ApiAgents {
            version: 7,
            agents: vec![agent("c")],
        };
        std::fs::write(
            dir.path().join("agents.json"),
            serde_json::to_vec(&versioned).unwrap(),
        )
        .unwrap();
        let back = stored_list(dir.path()).unwrap();
        assert_eq!((back.version, back.agents.len()), (7, 1));
        assert_ne!(back.digest(), list.digest());
    }
}
