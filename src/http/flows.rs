//! Flow files: each tenant's conversation flow, read as TOML (relative to
//! the config file), compiled by `threadline_actors::flows::engine`, and
//! reloadable while the node runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use threadline_actors::flows::engine::{Flow, FlowSpec, ResponderSpec};
use threadline_actors::flows::{Responder, ResponderRequest};
use threadline_actors::sender::BoxFuture;

use crate::bodies::OutcomeBody;
use crate::config::Config;

pub type Flows = HashMap<String, Arc<Flow>>;
pub type Responders = HashMap<String, Arc<dyn Responder>>;

/// Every tenant's compiled flow, and the external responders they name;
/// the error names the tenant key, the file and what is wrong.
pub fn load(cfg: &Config) -> Result<(Flows, Responders), String> {
    let mut out = HashMap::new();
    let mut responders: Responders = HashMap::new();
    for (i, t) in cfg.tenants.iter().enumerate() {
        let key = format!("tenants[{i}].flow");
        let (path, src) = match (&t.flow, t.builtin_flow) {
            (Some(rel), _) => {
                let path = cfg.base_dir.join(rel);
                let src = std::fs::read_to_string(&path)
                    .map_err(|e| format!("`{key}`: cannot read {}: {e}", path.display()))?;
                (path, src)
            }
            (None, Some((name, text))) => (std::path::PathBuf::from(name), text.to_owned()),
            (None, None) => continue,
        };
        if src.len() > 1 << 20 {
            return Err(format!("`{key}`: {} is larger than 1 MiB", path.display()));
        }
        let spec: FlowSpec = toml::from_str(&src).map_err(|e| {
            let line = e
                .span()
                .map(|r| src[..r.start].matches('\n').count() + 1)
                .map(|l| format!(" line {l}:"))
                .unwrap_or_default();
            format!("`{key}`: {}:{line} {}", path.display(), e.message().trim())
        })?;
        let flow = Flow::compile(spec).map_err(|e| format!("`{key}`: {}: {e}", path.display()))?;
        if let Some(r) = &flow.spec.responder {
            let responder = ChatCompletions::new(r)
                .map_err(|e| format!("`{key}`: {}: responder: {e}", path.display()))?;
            responders.insert(t.id.clone(), Arc::new(responder));
        }
        out.insert(t.id.clone(), Arc::new(flow));
    }
    Ok((out, responders))
}

/// An OpenAI-compatible chat-completions endpoint as a responder.
struct ChatCompletions {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<String>,
    timeout: Duration,
}

impl ChatCompletions {
    fn new(r: &ResponderSpec) -> Result<ChatCompletions, String> {
        let key = match (&r.api_key, &r.api_key_env) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(env)) => Some(
                std::env::var(env)
                    .map_err(|_| format!("the environment variable {env} is not set"))?,
            ),
            (None, None) => None,
        };
        let timeout = Duration::from_millis(r.timeout_ms);
        Ok(ChatCompletions {
            http: {
                crate::tls::install_default_provider();
                reqwest::Client::builder()
            }
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?,
            url: r.url.clone(),
            model: r.model.clone(),
            key,
            timeout,
        })
    }
}

/// The chat-completions request for one reply.
fn messages(req: &ResponderRequest) -> Value {
    let facts: Vec<String> = req.facts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let system = format!(
        "You are {}, replying to a customer of this business by text message. Keep the same \
         name and tone on every channel, be brief (at most two sentences), never invent \
         prices, times or policies. What we know about the customer:\n{}\n\nA suggested \
         reply that is correct in substance (keep its facts, times and instructions such as \
         'Reply C to confirm'): {}",
        req.persona,
        if facts.is_empty() {
            "(nothing yet)".into()
        } else {
            facts.join("\n")
        },
        req.draft
    );
    let mut msgs = vec![json!({"role": "system", "content": system})];
    for (who, text) in &req.transcript {
        let role = if who == "customer" {
            "user"
        } else {
            "assistant"
        };
        msgs.push(json!({"role": role, "content": text}));
    }
    Value::Array(msgs)
}

impl Responder for ChatCompletions {
    fn respond(&self, req: ResponderRequest) -> BoxFuture<Result<String, String>> {
        let mut r = self
            .http
            .post(&self.url)
            .json(&json!({"model": self.model, "messages": messages(&req), "max_tokens": 200}));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        Box::pin(async move {
            let resp = r.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("responder answered {}", resp.status()));
            }
            let v: Value = resp.json().await.map_err(|e| e.to_string())?;
            v["choices"][0]["message"]["content"]
                .as_str()
                .map(|s| s.trim().to_owned())
                .ok_or_else(|| "no choices[0].message.content in the answer".into())
        })
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

// ---- The booking API: the calendar and appointment outcomes ----

use crate::http::Body;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use threadline_actors::conversation::core::{BookingOutcome, BookingOutcomeError};
use threadline_actors::flows::{block_slot, unblock_slot, SlotState};
use threadline_protocol::{ConversationId, Timestamp};

use crate::http::{
    json_response, parse_json, parse_rfc3339, query_pairs, read_body, rfc3339, ApiError, App,
};

/// At most this many days of slots in one calendar read.
const MAX_CALENDAR_DAYS: i64 = 31;

fn calendar_flow(app: &App, tenant: &str) -> Result<Arc<Flow>, ApiError> {
    app.shared
        .flow(tenant)
        .filter(|f| f.spec.calendar.is_some())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "tenant {tenant:?} has no calendar (its flow file has no [calendar])"
            ))
        })
}

fn slot_json(at: Timestamp, state: SlotState) -> Value {
    let (status, conv) = match state {
        SlotState::Free => ("free", None),
        SlotState::Held(c) => ("held", Some(c)),
        SlotState::Booked(c) => ("booked", Some(c)),
        SlotState::Blocked => ("blocked", None),
    };
    json!({
        "start": rfc3339(at),
        "status": status,
        "conversation_id": conv.map(|c| ConversationId(c).to_string()),
    })
}

/// In a cluster, the node whose rows of `tenant`'s calendar decide, when a
/// calendar request should go there; on that node itself (or for a request
/// passed on to it) the rows are first made current.
pub async fn calendar_home(
    app: &App,
    req: &Request<Body>,
    tenant: &str,
) -> Result<Option<String>, ApiError> {
    let Some(cluster) = &app.cluster else {
        return Ok(None);
    };
    calendar_flow(app, tenant)?;
    if let Some(home) = cluster
        .calendar_home(tenant)
        .filter(|_| !crate::http::passed_on(req))
    {
        return Ok(Some(home));
    }
    cluster.calendar_ready(tenant).await?;
    Ok(None)
}

/// At most this many days of appointments in one bookings read.
const MAX_BOOKINGS_DAYS: i64 = 92;

/// `GET /tenants/{t}/bookings?from=&to=`: the booked appointments that
/// start in [`from`, `to`) (default: from now, 31 days), earliest first,
/// each with its conversation's contact, service and status. Read from the
/// calendar's rows (each booked slot names its conversation), then from
/// each conversation.
pub async fn bookings(
    app: &App,
    tenant: &str,
    query: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    calendar_flow(app, tenant)?;
    let now = app.shared.clock.now();
    let (mut from, mut to) = (now, None);
    for (k, v) in query_pairs(query)? {
        match k {
            "from" if !v.is_empty() => from = parse_rfc3339("from", &v)?,
            "to" if !v.is_empty() => to = Some(parse_rfc3339("to", &v)?),
            _ => {}
        }
    }
    let to = to.unwrap_or(from.saturating_add_millis(31 * 86_400_000));
    if to.0 <= from.0 || to.0 - from.0 > MAX_BOOKINGS_DAYS * 86_400_000 {
        return Err(ApiError::bad(
            "invalid_query",
            format!("`to` must be after `from`, at most {MAX_BOOKINGS_DAYS} days later"),
        ));
    }
    let (low, high) = (
        threadline_actors::store::slot_key(tenant, from),
        threadline_actors::store::slot_key(tenant, to),
    );
    let mut booked: Vec<(String, u64)> = app
        .shared
        .calendar
        .iter()
        .filter(|e| e.key().as_str() >= low.as_str() && e.key().as_str() < high.as_str())
        .filter(|e| e.value().booked && e.value().conv != threadline_actors::flows::BLOCKED)
        .map(|e| (e.key().clone(), e.value().conv))
        .collect();
    booked.sort();
    let mut out = Vec::with_capacity(booked.len());
    for (key, conv) in booked {
        let start = key
            .rsplit('\0')
            .next()
            .and_then(|h| i64::from_str_radix(h, 16).ok())
            .map(Timestamp)
            .unwrap_or(from);
        let id = ConversationId(conv);
        let s = app.router.view_by_id(id).await?;
        let b = s.as_ref().and_then(|s| s.journey.booking.as_ref());
        out.push(json!({
            "start": rfc3339(start),
            "conversation_id": id.to_string(),
            "contact": s.as_ref().map(|s| s.contact.clone()),
            "name": s.as_ref().and_then(|s| s.captured.name.clone()),
            "service": b.map(|b| b.service.clone()),
            "status": b.map(|b| b.status.as_str()),
            "moving_to": b.and_then(|b| b.offer).map(|o| rfc3339(o.start)),
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "tenant": tenant,
            "timezone": app.shared.tenant(tenant).zone.name(),
            "from": rfc3339(from),
            "to": rfc3339(to),
            "bookings": out,
        }),
    ))
}

/// `GET /tenants/{t}/calendar?from=&days=`: every bookable slot in the
/// range (default: from now, 7 days) and who has it.
pub fn calendar(app: &App, tenant: &str, query: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let flow = calendar_flow(app, tenant)?;
    let now = app.shared.clock.now();
    let mut from = now;
    let mut days = 7;
    for (k, v) in query_pairs(query)? {
        match k {
            "from" if !v.is_empty() => from = parse_rfc3339("from", &v)?,
            "days" if !v.is_empty() => {
                days = v
                    .parse::<i64>()
                    .ok()
                    .filter(|d| (1..=MAX_CALENDAR_DAYS).contains(d))
                    .ok_or_else(|| {
                        ApiError::bad(
                            "invalid_query",
                            format!("`days` is a whole number from 1 to {MAX_CALENDAR_DAYS}"),
                        )
                    })?
            }
            _ => {}
        }
    }
    let zone = app.shared.tenant(tenant).zone;
    let to = from.saturating_add_millis(days * 86_400_000);
    let slots: Vec<Value> = flow
        .slot_starts(from, to, zone)
        .into_iter()
        .map(|at| slot_json(at, SlotState::of(&app.shared.calendar, tenant, at, now)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "tenant": tenant,
            "timezone": zone.name(),
            // In a cluster: the node whose rows decide (answering here).
            "home": app.cluster.as_ref().map(|c| c.spec.name.clone()),
            "from": rfc3339(from),
            "to": rfc3339(to),
            "slots": slots,
        }),
    ))
}

/// `PUT` (block) or `DELETE` (open again) `/tenants/{t}/calendar/slots/{start}`;
/// answers once durable.
pub async fn set_slot(
    app: &App,
    tenant: &str,
    at: Timestamp,
    block: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let flow = calendar_flow(app, tenant)?;
    let zone = app.shared.tenant(tenant).zone;
    if !flow.bookable(at, zone) {
        return Err(ApiError::bad(
            "not_a_slot",
            format!(
                "{} is not the start of a bookable slot in {}",
                rfc3339(at),
                zone.name()
            ),
        ));
    }
    let now = app.shared.clock.now();
    let map = &app.shared.calendar;
    let write = if block {
        block_slot(map, tenant, at, now).map_err(|taken| {
            ApiError::new(
                StatusCode::CONFLICT,
                "slot_taken",
                format!(
                    "a customer {} this slot: {}",
                    if matches!(taken, SlotState::Held(_)) {
                        "is being offered"
                    } else {
                        "booked"
                    },
                    slot_json(at, taken)
                ),
            )
        })?
    } else {
        unblock_slot(map, tenant, at)
    };
    if let Some(w) = write {
        app.shared
            .persistence
            .calendar(vec![w])
            .await
            .map_err(ApiError::storage)?;
        // In a cluster (this is the calendar's home): the replica gets it.
        if let Some(cluster) = &app.cluster {
            cluster.calendar_changed(tenant).await?;
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &slot_json(at, SlotState::of(map, tenant, at, now)),
    ))
}

/// `POST /conversations/{id}/booking` `{"outcome": "attended" | "no_show"}`:
/// how the booked appointment went, once its time has come.
pub async fn booking_outcome(
    app: &App,
    id: ConversationId,
    req: Request<Body>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: OutcomeBody = parse_json(&body)?;
    let outcome = BookingOutcome::parse(&b.outcome).ok_or_else(|| {
        ApiError::bad(
            "invalid_field",
            "`outcome` is \"attended\", \"no_show\" or \"cancelled\"",
        )
    })?;
    match app.router.booking_outcome(id, outcome).await? {
        None => Err(ApiError::not_found(format!("no conversation {id}"))),
        Some(Err(e @ BookingOutcomeError::NoBooking)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_booking",
            e.to_string(),
        )),
        Some(Err(BookingOutcomeError::NotYet(at))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_yet",
            format!("the appointment starts at {}", rfc3339(at)),
        )),
        Some(Ok(())) => Ok(json_response(
            StatusCode::OK,
            &json!({"conversation_id": id.to_string(), "outcome": outcome.as_str()}),
        )),
    }
}
