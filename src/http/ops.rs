//! Operations: health, readiness, the audit export, dead letters, backups,
//! the cluster view and outcome figures.

use super::*;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};
use threadline_protocol::Channel;

/// Liveness: 503 while storage is failing (a commit did not go through;
/// the writer opens the database again every 0.5 s until a write works).
/// A supervisor may restart the node meanwhile; that is safe too.
pub(super) fn healthz(app: &App) -> Resp {
    let storage = app.shared.persistence.healthy();
    json_response(
        if storage {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({"status": if storage { "ok" } else { "unhealthy" }, "storage": storage}),
    )
}

pub(super) fn readyz(app: &App) -> Resp {
    let draining = app.draining.load(Ordering::SeqCst);
    let storage = app.shared.persistence.healthy();
    // In a cluster: only while this node can take writes.
    let cluster = app.cluster.as_ref().map(|c| c.ready());
    let ok = app.shared.ready() && !draining && cluster.unwrap_or(true);
    json_response(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({"ready": ok, "storage": storage, "intact": app.shared.persistence.intact(), "draining": draining, "cluster": cluster}),
    )
}

/// At most this many audit records per export request.
pub(super) const MAX_AUDIT_EXPORT: usize = 1_000_000;

pub(super) async fn audit_export(
    app: &App,
    req: &Request<Body>,
    tenant: &str,
    query: &str,
) -> Result<Resp, ApiError> {
    let mut contact = None;
    let mut since = None;
    for (k, v) in query_pairs(query)? {
        match k {
            "contact" if !v.is_empty() => {
                field_len("contact", &v, MAX_ID_BYTES)?;
                contact = Some(v);
            }
            "since" if !v.is_empty() => since = Some(parse_rfc3339("since", &v)?),
            _ => {}
        }
    }
    let store = app.shared.persistence.store.clone();
    let tenant = tenant.to_owned();
    let lines = tokio::task::spawn_blocking(move || {
        store.audit_records(&tenant, contact.as_deref(), since, MAX_AUDIT_EXPORT)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(ApiError::storage)?;
    let Some(cluster) = &app.cluster else {
        let mut body = lines.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        return Ok(text_response(StatusCode::OK, "application/x-ndjson", body));
    };
    // In a cluster each node seals its own chain: its records name it
    // (`node`, outside the hash), and an export not passed on by a peer
    // gathers every live node's.
    let me = serde_json::to_string(&cluster.spec.name).unwrap_or_default();
    let mut body = String::new();
    for l in &lines {
        if let Some(rest) = l.strip_prefix('{') {
            body.push_str(&format!("{{\"node\":{me},{rest}\n"));
        }
    }
    if !passed_on(req) {
        let path = req
            .uri()
            .path_and_query()
            .map_or(req.uri().path(), |p| p.as_str());
        let ask = admin_request(app, Method::GET, path, Bytes::new());
        for peer in cluster.peer_names() {
            match cluster.request(&peer, &ask, PEER_TIMEOUT).await {
                Ok(a) if a.succeeded() => {
                    body.push_str(&String::from_utf8_lossy(&a.body));
                }
                Ok(a) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!(
                            "node {peer} did not give its audit records ({}); try again",
                            String::from_utf8_lossy(&a.body)
                        ),
                    ))
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("node {peer} did not give its audit records ({e}); try again"),
                    ))
                }
            }
        }
    }
    Ok(text_response(StatusCode::OK, "application/x-ndjson", body))
}

pub(super) async fn dead_letters(app: &App) -> Result<Resp, ApiError> {
    let store = app.shared.persistence.store.clone();
    let list = tokio::task::spawn_blocking(move || store.dead_letters(1000))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::storage)?;
    let items: Vec<Value> = list
        .into_iter()
        .map(|(id, d)| {
            json!({
                "id": id,
                "tenant": d.tenant,
                "contact": d.contact,
                "conversation_id": d.conversation.map(|c| c.to_string()),
                "attempts": d.attempts,
                "error": d.error,
                "at": rfc3339(d.at),
                "message": {
                    "channel": d.message.channel.as_str(),
                    "from": d.message.from,
                    "to": d.message.to,
                    "text": d.message.text,
                    "provider_message_id": d.message.provider_message_id,
                    "at": d.message.at.map(rfc3339),
                },
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "dead_letters": items }),
    ))
}

/// `DELETE /api/v1/cluster/members/{name}`: a node removed for good is
/// forgotten here and on every live peer, so the majority a take-over
/// needs is counted without it.
pub(super) async fn forget_node(
    app: &App,
    req: &Request<Body>,
    name: &str,
) -> Result<Resp, ApiError> {
    use threadline_actors::cluster::ForgetError;
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::not_found("this node is not in a cluster"));
    };
    match cluster.forget(name) {
        Err(e @ ForgetError::Live(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "node_live",
                e.to_string(),
            ))
        }
        // Another node asked: it may know a node this one never heard of.
        Err(ForgetError::Unknown(_)) if passed_on(req) => {}
        Err(e @ ForgetError::Unknown(_)) => return Err(ApiError::not_found(e.to_string())),
        Ok(()) => {}
    }
    let failed = match passed_on(req) {
        true => Vec::new(),
        false => {
            let path = req.uri().path().to_owned();
            to_every_peer(app, Method::DELETE, &path, Default::default()).await
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"forgotten": name, "known": cluster.known_names(), "peers_failed": failed}),
    ))
}

/// `POST /api/v1/backup`: a consistent copy of this node's database, made
/// while it runs, in `data_dir/backups/` (the node names the file; a
/// client never chooses a path on the server).
pub(super) async fn backup(app: &App) -> Result<Resp, ApiError> {
    let name = format!(
        "threadline-{}.redb",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    );
    let path = app.cfg.server.data_dir.join("backups").join(name);
    let store = app.shared.persistence.store.clone();
    let to = path.clone();
    let bytes = tokio::task::spawn_blocking(move || store.backup(&to))
        .await
        .map_err(|e| ApiError::storage(e.to_string()))?
        .map_err(|e| ApiError::storage(e.to_string()))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"path": path.display().to_string(), "bytes": bytes}),
    ))
}

/// `GET /api/v1/cluster`: this node, its live peers, and what each holds.
pub(super) async fn cluster_json(app: &App) -> Value {
    let resident = app.router.resident();
    match &app.cluster {
        None => json!({
            "mode": "single",
            "node": null,
            "members": [],
            "conversations": {"this_node": resident},
        }),
        Some(c) => {
            let members: Vec<Value> = c
                .members()
                .into_iter()
                .map(|m| {
                    json!({"name": m.name, "addr": m.addr, "healthy": m.healthy,
                           "member_for_ms": m.since.elapsed().as_millis() as u64,
                           "last_seen_ms_ago": m.last_seen.elapsed().as_millis() as u64})
                })
                .collect();
            let by_node = c.resident_by_node(resident as u64).await;
            json!({
                "mode": "cluster",
                "node": c.spec.name,
                "listen": c.spec.listen.to_string(),
                "members": members,
                "live": c.settled_live(),
                "known": c.known_names(),
                "agent_pool": {"home": c.pool_home().unwrap_or_else(|| c.spec.name.clone())},
                "conversations": {"this_node": resident, "by_node": by_node},
            })
        }
    }
}

/// `GET /tenants/{t}/leakage`: the customers the business is losing, from
/// the summaries of the conversations this node holds. A missed call is
/// lost until the customer writes back; a conversation is stalled when the
/// customer's last message has waited `stalled_after_minutes` for an
/// answer, or the flow's last question (or a time it offered) has waited
/// that long with no follow-up planned. Closed conversations are not
/// counted.
pub(super) async fn leakage(app: &App, tenant: &str) -> Result<Value, ApiError> {
    let store = app.shared.persistence.store.clone();
    let t = tenant.to_owned();
    let summaries = tokio::task::spawn_blocking(move || store.summaries(&t))
        .await
        .map_err(ApiError::storage)?
        .map_err(ApiError::storage)?;
    let now = app.shared.clock.now();
    let after_ms = i64::from(
        app.cfg
            .tenant(tenant)
            .map_or(60, |t| t.stalled_after_minutes),
    ) * 60_000;
    let mut missed = Vec::new();
    let mut stalled = Vec::new();
    let mut missed_by: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut stalled_by: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let row = |s: &threadline_protocol::ConversationSummary, since, channel: Channel, why| {
        json!({
            "conversation_id": s.conv.to_string(),
            "contact": s.contact,
            "name": s.name,
            "channel": channel.as_str(),
            "since": rfc3339(since),
            "waiting_ms": now.0 - since.0,
            "reason": why,
            "assigned_agent": s.assigned_agent,
        })
    };
    for s in summaries
        .iter()
        .filter(|s| s.status != threadline_protocol::Status::Closed)
    {
        if let Some(at) = s.missed_call {
            *missed_by.entry(Channel::Voice.as_str()).or_default() += 1;
            missed.push(row(
                s,
                at,
                Channel::Voice,
                "missed call, no word from the customer since",
            ));
        }
        let waiting = s
            .unanswered
            .map(|(at, ch)| (at, ch, "the customer's last message has no answer"))
            .or(s
                .journey_idle
                .map(|(at, ch)| (at, ch, "the bot's question waits with no follow-up planned")));
        if let Some((at, ch, why)) = waiting.filter(|(at, _, _)| now.0 - at.0 >= after_ms) {
            if ch != Channel::Voice || s.missed_call.is_none() {
                *stalled_by.entry(ch.as_str()).or_default() += 1;
                stalled.push(row(s, at, ch, why));
            }
        }
    }
    let oldest_first = |v: &mut Vec<Value>| {
        v.sort_by(|a, b| a["since"].as_str().cmp(&b["since"].as_str()));
    };
    oldest_first(&mut missed);
    oldest_first(&mut stalled);
    Ok(json!({
        "tenant": tenant,
        "stalled_after_minutes": after_ms / 60_000,
        "missed_calls_not_recovered": {"count": missed.len(), "by_channel": missed_by, "conversations": missed},
        "stalled": {"count": stalled.len(), "by_channel": stalled_by, "conversations": stalled},
    }))
}

/// What a tenant's conversations achieved (`GET /tenants/{t}/metrics`).
/// This node's outcome counts for `tenant`, by name (and the waits as sums
/// and counts), as nodes add them up.
pub(super) fn outcome_counts(app: &App, tenant: &str) -> Value {
    let o = &app.shared.metrics.outcomes;
    let mut counts: serde_json::Map<String, Value> = o
        .counters()
        .into_iter()
        .map(|(name, _, c)| (name.to_owned(), json!(o.get(c, tenant))))
        .collect();
    for which in ["first_response", "escalation_wait"] {
        let (ms, n) = o.wait_sums(which, tenant);
        counts.insert(format!("{which}_ms"), json!(ms));
        counts.insert(format!("{which}_count"), json!(n));
    }
    Value::Object(counts)
}

/// Adds the numbers of `more` into `mine`, key by key (nodes' counts).
pub(super) fn add_counts(mine: &mut Value, more: &Value) {
    if let (Some(mine), Some(more)) = (mine.as_object_mut(), more.as_object()) {
        for (k, n) in more {
            let e = mine.entry(k.clone()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + n.as_u64().unwrap_or(0));
        }
    }
}

/// What a tenant's conversations achieved (`GET /tenants/{t}/metrics`),
/// from the counts of `outcome_counts` (added up over the nodes).
pub(super) fn outcomes_json(tenant: &str, c: &Value) -> Value {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let mean = |sum: &str, count: &str| ratio(n(sum), n(count));
    json!({
        "tenant": tenant,
        "first_response": {
            "mean_ms": mean("first_response_ms", "first_response_count"),
            "conversations": n("first_response_count"),
        },
        "missed_calls": n("missed_calls"),
        "missed_calls_recovered": n("missed_calls_recovered"),
        "bookings": {
            "offered": n("bookings_offered"),
            "confirmed": n("bookings_confirmed"),
            "rescheduled": n("bookings_rescheduled"),
            "rebooked_self_service": n("bookings_rebooked"),
            "cancelled": n("bookings_cancelled"),
            "attended": n("bookings_attended"),
            "no_shows": n("bookings_no_show"),
            "completion_rate": ratio(n("bookings_confirmed"), n("bookings_offered")),
            // Of the bookings customers asked to move, the share they moved
            // themselves to a new confirmed time.
            "reschedule_self_service_rate":
                ratio(n("bookings_rebooked"), n("bookings_rescheduled")),
            // Of the appointments whose outcome was recorded.
            "no_show_rate": ratio(
                n("bookings_no_show"),
                n("bookings_no_show") + n("bookings_attended")
            ),
        },
        "leads_qualified": n("leads_qualified"),
        "leads": {
            "qualified": n("leads_qualified"),
            "met": n("leads_met"),
            "lead_to_meeting_rate": ratio(n("leads_met"), n("leads_qualified")),
        },
        "escalations": {
            "total": n("escalations"),
            "taken": n("escalation_wait_count"),
            "mean_wait_ms": mean("escalation_wait_ms", "escalation_wait_count"),
        },
        // Counts are kept with the data; the escalation wait and the
        // Prometheus histograms since the node started.
        "since": "data created",
    })
}
