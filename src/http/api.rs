//! The gateway and operator API handlers: inbound messages, contacts, consent,
//! business messages and timers.

use super::*;
use std::sync::atomic::Ordering;

use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use threadline_actors::consent::policy::Purpose;
use threadline_actors::conversation::core::{OutboundSpec, SendOutcome, TimerSpec};
use threadline_actors::Delivered;
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{Channel, ConversationId, ConversationState, TimerKind};

use crate::bodies::{AdvanceBody, ConsentBody, ContactBody, InboundBody, MessageBody, TimerBody};
use crate::config::is_e164;

/// A contact address for the consent API: an E.164 number, a WhatsApp or
/// web-chat id, or an email address.
pub(super) fn valid_contact(address: &str) -> Result<(), ApiError> {
    let ok = is_e164(address)
        || (address.len() <= 64
            && address
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "invalid_path",
            format!("{address:?} is not a contact address"),
        ))
    }
}

pub(super) async fn update_contact(
    app: &App,
    tenant: &str,
    address: &str,
    req: Request<Body>,
) -> Result<Resp, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: ContactBody = parse_json(&body)?;
    field_len("name", b.name.as_deref().unwrap_or(""), 256)?;
    if let Some(z) = &b.timezone {
        if z.parse::<chrono_tz::Tz>().is_err() {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`timezone` {z:?} is not an IANA time zone"),
            ));
        }
    }
    if let Some(r) = &b.region {
        let ok = r.len() >= 4
            && r.len() <= 6
            && r.as_bytes()[2] == b'-'
            && r.bytes()
                .enumerate()
                .all(|(i, c)| i == 2 || c.is_ascii_uppercase() || c.is_ascii_digit());
        if !ok {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`region` {r:?} is not an ISO 3166-2 code like US-FL"),
            ));
        }
    }
    if let Some(e) = &b.email {
        normalize_address(Channel::Email, e)?;
    }
    if b.facts.len() > 50
        || b.facts
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024)
    {
        return Err(ApiError::bad(
            "field_too_long",
            "at most 50 `facts`, keys of 1-64 bytes, values of at most 1024",
        ));
    }
    let reserved = ["timezone", "region"];
    if let Some(k) = b.facts.keys().find(|k| reserved.contains(&k.as_str())) {
        return Err(ApiError::bad(
            "invalid_field",
            format!("set `{k}` as its own field, not as a fact"),
        ));
    }
    let update = threadline_protocol::ConvEvent::ContactUpdated {
        name: b.name,
        timezone: b.timezone,
        region: b.region,
        email: b.email.map(|e| e.to_ascii_lowercase()),
        facts: b.facts,
    };
    let state = app.router.update_contact(tenant, address, update).await?;
    Ok(json_response(StatusCode::OK, &conversation_json(&state)))
}

pub(super) async fn outbound_spec(app: &App, req: Request<Body>) -> Result<OutboundSpec, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: MessageBody = parse_json(&body)?;
    if b.text.trim().is_empty() {
        return Err(ApiError::bad("invalid_field", "`text` must not be empty"));
    }
    field_len("text", &b.text, MAX_TEXT_BYTES)?;
    field_len("subject", b.subject.as_deref().unwrap_or(""), MAX_ID_BYTES)?;
    let purpose = Purpose::parse(&b.purpose).ok_or_else(|| {
        ApiError::bad(
            "invalid_field",
            "`purpose` must be conversational, reminder or marketing",
        )
    })?;
    let channel = optional_channel(b.channel.as_deref())?;
    Ok(OutboundSpec {
        text: b.text,
        channel,
        purpose,
        agent: None,
        requested: false,
        subject: b.subject.filter(|s| !s.trim().is_empty()),
    })
}

pub(crate) fn outcome_json(o: &SendOutcome) -> Value {
    match o {
        SendOutcome::Sent { message, rule } => {
            json!({"decision": "sent", "message_id": message.to_string(), "rule": rule})
        }
        SendOutcome::Deferred { until, timer, rule } => json!({
            "decision": "deferred", "until": rfc3339(*until),
            "timer_id": timer_id_text(*timer), "rule": rule,
        }),
        SendOutcome::Blocked { reason } => json!({"decision": "blocked", "reason": reason}),
    }
}

pub(super) async fn record_consent(
    app: &App,
    tenant: &str,
    address: &str,
    req: Request<Body>,
) -> Result<Resp, ApiError> {
    valid_contact(address)?;
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: ConsentBody = parse_json(&body)?;
    let status = threadline_protocol::ConsentStatus::parse(&b.status)
        .ok_or_else(|| ApiError::bad("invalid_field", "`status` must be opted_in or opted_out"))?;
    let channel = optional_channel(b.channel.as_deref())?;
    if let Some(p) = &b.purpose {
        if threadline_actors::consent::policy::Purpose::parse(p).is_none() {
            return Err(ApiError::bad(
                "invalid_field",
                "`purpose` must be conversational, reminder or marketing",
            ));
        }
    }
    let sources = ["web_form", "verbal", "import", "api", "keyword", "paper"];
    if !sources.contains(&b.source.as_str()) {
        return Err(ApiError::bad(
            "invalid_field",
            format!("`source` must be one of {}", sources.join(", ")),
        ));
    }
    field_len("proof", b.proof.as_deref().unwrap_or(""), MAX_URL_BYTES)?;
    let change = threadline_protocol::ConsentChange {
        status,
        channel,
        purpose: b.purpose,
        source: b.source,
        keyword: None,
        raw_text: None,
        provider_message_id: None,
        proof: b.proof,
        at: app.shared.clock.now(),
    };
    let conv = app.router.record_consent(tenant, address, change).await?;
    let state = app.router.view(tenant, address).await?;
    let mut v = consent_json(state.as_ref());
    v["conversation_id"] = json!(conv.to_string());
    Ok(json_response(StatusCode::CREATED, &v))
}

/// The consent view of a contact: overall status, per channel and purpose,
/// and the full history.
pub fn consent_json(state: Option<&ConversationState>) -> Value {
    use threadline_protocol::ConsentStatus as S;
    const PURPOSES: [&str; 3] = ["conversational", "reminder", "marketing"];
    let Some(s) = state else {
        return json!({"status": "unknown", "channels": {}, "history": []});
    };
    let mut channels = serde_json::Map::new();
    let mut any_out = false;
    let mut any_in = false;
    for ch in Channel::ALL {
        let per: Vec<S> = PURPOSES.iter().map(|p| s.consent_for(ch, p)).collect();
        let status = if per.contains(&S::OptedOut) {
            any_out = true;
            S::OptedOut
        } else if per.contains(&S::OptedIn) {
            any_in = true;
            S::OptedIn
        } else {
            S::Unknown
        };
        let purposes: serde_json::Map<String, Value> = PURPOSES
            .iter()
            .zip(&per)
            .map(|(p, st)| (p.to_string(), json!(st.as_str())))
            .collect();
        channels.insert(
            ch.as_str().into(),
            json!({"status": status.as_str(), "purposes": purposes}),
        );
    }
    let status = if any_out {
        "opted_out"
    } else if any_in {
        "opted_in"
    } else {
        "unknown"
    };
    let history: Vec<Value> = s
        .consent
        .iter()
        .map(|c| {
            let mut v = threadline_actors::audit::consent_change_json(c);
            v["at"] = json!(rfc3339(c.at));
            v
        })
        .collect();
    json!({"status": status, "channels": channels, "history": history})
}

pub fn timer_id_text(id: u64) -> String {
    format!("tmr_{id:016x}")
}

pub(super) fn parse_timer_id(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("tmr_")?;
    (hex.len() == 16
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| u64::from_str_radix(hex, 16).ok())
    .flatten()
}

/// The longest a timer may be scheduled ahead: ten years.
pub(super) const MAX_TIMER_AHEAD_MS: i64 = 10 * 366 * 24 * 3_600_000;

pub(super) async fn schedule_timer(
    app: &App,
    id: ConversationId,
    req: Request<Body>,
) -> Result<Resp, ApiError> {
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let b: TimerBody = parse_json(&body)?;
    let now = app.shared.clock.now();
    let due = match (&b.at, b.in_seconds) {
        (Some(at), None) => {
            field_len("at", at, 64)?;
            parse_rfc3339("at", at)?
        }
        (None, Some(s)) if (0..=MAX_TIMER_AHEAD_MS / 1000).contains(&s) => {
            now.saturating_add_millis(s * 1000)
        }
        (None, Some(_)) => {
            return Err(ApiError::bad(
                "invalid_field",
                "`in_seconds` must be between 0 and 316224000",
            ))
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_field",
                "give exactly one of `at` (RFC 3339) or `in_seconds`",
            ))
        }
    };
    if due.0 > now.0 + MAX_TIMER_AHEAD_MS {
        return Err(ApiError::bad(
            "invalid_field",
            "`at` is more than ten years ahead",
        ));
    }
    let kind = match TimerKind::parse(&b.kind) {
        Some(k @ (TimerKind::FollowUp | TimerKind::Reminder)) => k,
        _ => {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`kind` must be follow_up or reminder (got {:?})", b.kind),
            ))
        }
    };
    let text = b.text.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::bad("invalid_field", "`text` is required"));
    }
    field_len("text", &text, MAX_TEXT_BYTES)?;
    let channel = optional_channel(b.channel.as_deref())?;
    let spec = TimerSpec {
        due,
        kind,
        text: Some(text),
        channel,
    };
    match app.router.schedule_timer(id, spec).await? {
        Some(tid) => Ok(json_response(
            StatusCode::CREATED,
            &json!({"id": timer_id_text(tid), "at": rfc3339(due), "kind": kind.as_str()}),
        )),
        None => Err(ApiError::not_found(format!("no conversation {id}"))),
    }
}

pub(super) async fn advance_clock(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let clock = app.simulated.as_ref().expect("routed only when simulated");
    let body = read_body(req, 4096).await?;
    let b: AdvanceBody = parse_json(&body)?;
    if !(b.seconds.is_finite() && b.seconds >= 0.0 && b.seconds <= 10.0 * 366.0 * 86_400.0) {
        return Err(ApiError::bad(
            "invalid_field",
            "`seconds` must be between 0 and 316224000",
        ));
    }
    let now = clock.advance_millis((b.seconds * 1000.0).round() as i64);
    let fired = app.router.advance_timers().await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"now": rfc3339(now), "fired": fired}),
    ))
}

/// An optional `channel` field of a request body.
pub(super) fn optional_channel(c: Option<&str>) -> Result<Option<Channel>, ApiError> {
    c.map(|c| {
        Channel::parse(c).ok_or_else(|| {
            ApiError::bad("invalid_field", format!("`channel` {c:?} is not a channel"))
        })
    })
    .transpose()
}

/// Checks a sender address for its channel and returns its normalized form:
/// the one identity every door (the gateway API, the webhooks) gives a
/// customer. A WhatsApp sender written as a `wa_id` (`15551234567`) or in
/// E.164 is the phone number `+15551234567`; only a business-scoped user id
/// without a number stays as it is.
pub fn normalize_address(channel: Channel, from: &str) -> Result<String, ApiError> {
    let from = from.trim();
    if channel == Channel::Whatsapp {
        let phone = match from.strip_prefix('+') {
            Some(_) if is_e164(from) => crate::phone::normalize(from),
            Some(_) => None,
            None => crate::phone::from_wa_id(from),
        };
        if let Some(p) = phone {
            return Ok(p);
        }
    }
    let ok = match channel {
        Channel::Sms | Channel::Voice => is_e164(from),
        // E.164, or a business-scoped user id when no number is shared.
        Channel::Whatsapp => {
            is_e164(from)
                || (from.len() <= 64
                    && !from.is_empty()
                    && from
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        }
        Channel::Webchat => {
            !from.is_empty()
                && from.len() <= 64
                && from
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        Channel::Email => {
            from.len() <= 254
                && from.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && d.contains('.') && !from.chars().any(char::is_whitespace)
                })
        }
    };
    if !ok {
        let want = match channel {
            Channel::Sms | Channel::Voice => "an E.164 phone number like +15551234567",
            Channel::Whatsapp => "an E.164 phone number or a WhatsApp user id",
            Channel::Webchat => "a visitor id of 1-64 letters, digits, '-' or '_'",
            Channel::Email => "an email address",
        };
        return Err(ApiError::bad(
            "invalid_field",
            format!("`from` must be {want} for channel {}", channel.as_str()),
        ));
    }
    Ok(if channel == Channel::Email {
        from.to_ascii_lowercase()
    } else {
        from.to_owned()
    })
}

pub(super) async fn inbound(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let token_tenant = match bearer(&req) {
        Some(t) => app
            .gateway_tokens
            .iter()
            .find(|(k, _)| ct_eq(k, t))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the bearer token is not a gateway token",
                )
            })?,
        None => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an `Authorization: Bearer <gateway_token>` header is required",
            ))
        }
    };
    if app.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the node is shutting down",
        ));
    }
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let GatewayInbound { tenant, msg, meta } = parse_inbound(&body)?;
    let tenant = known_tenant(app, &tenant)?;
    if tenant != token_tenant {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this gateway token is not valid for tenant {tenant:?}"),
        ));
    }
    let from = msg.from.clone();
    let delivered = via(app, "api", async {
        app.router.deliver_with(&tenant, &from, msg, meta).await
    })
    .await?;
    match delivered {
        Delivered::Recorded(ack) => Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "conversation_id": ack.conversation.to_string(),
                "message_id": ack.message.to_string(),
                "duplicate": ack.duplicate,
            }),
        )),
        Delivered::DeadLettered { conversation } => Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "conversation_id": conversation.map(|c| c.to_string()),
                "message_id": null,
                "dead_lettered": true,
            }),
        )),
    }
}

/// A gateway API message (`POST /api/v1/inbound`), checked field by field.
pub struct GatewayInbound {
    pub tenant: String,
    pub msg: InboundMessage,
    pub meta: threadline_actors::conversation::InboundMeta,
}

/// Parses and checks a gateway API body (every field's size and form);
/// the tenant is checked against the token by the caller.
pub fn parse_inbound(body: &[u8]) -> Result<GatewayInbound, ApiError> {
    let b: InboundBody = parse_json(body)?;
    field_len("tenant", &b.tenant, 64)?;
    field_len("channel", &b.channel, 16)?;
    field_len("from", &b.from, MAX_ID_BYTES)?;
    field_len("to", b.to.as_deref().unwrap_or(""), MAX_ID_BYTES)?;
    field_len("text", &b.text, MAX_TEXT_BYTES)?;
    field_len(
        "provider_message_id",
        b.provider_message_id.as_deref().unwrap_or(""),
        MAX_ID_BYTES,
    )?;
    field_len("at", b.at.as_deref().unwrap_or(""), 64)?;
    if b.media.len() > MAX_MEDIA {
        return Err(ApiError::bad(
            "field_too_long",
            format!("at most {MAX_MEDIA} `media` entries are accepted"),
        ));
    }
    for m in &b.media {
        field_len("media", m, MAX_URL_BYTES)?;
    }
    let channel = Channel::parse(&b.channel).ok_or_else(|| {
        ApiError::bad(
            "invalid_field",
            format!(
                "`channel` must be one of sms, whatsapp, voice, webchat, email (got {:?})",
                b.channel
            ),
        )
    })?;
    let from = normalize_address(channel, &b.from)?;
    if b.text.trim().is_empty() && b.media.is_empty() {
        return Err(ApiError::bad(
            "invalid_field",
            "`text` must not be empty (unless `media` is given)",
        ));
    }
    if b.provider_message_id.as_deref() == Some("") {
        return Err(ApiError::bad(
            "invalid_field",
            "`provider_message_id` is empty",
        ));
    }
    let at =
        b.at.as_deref()
            .map(|s| parse_rfc3339("at", s))
            .transpose()?;
    use threadline_actors::consent::keywords::Keyword;
    let hint = match b
        .opt_out_type
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("") => None,
        Some("STOP") => Some(Keyword::OptOut),
        Some("START") => Some(Keyword::OptIn),
        Some("HELP") => Some(Keyword::Help),
        Some(other) => {
            return Err(ApiError::bad(
                "invalid_field",
                format!("`opt_out_type` must be STOP, START or HELP (got {other:?})"),
            ))
        }
    };
    if let Some(st) = &b.from_state {
        if st.len() != 2 || !st.bytes().all(|c| c.is_ascii_alphabetic()) {
            return Err(ApiError::bad(
                "invalid_field",
                "`from_state` must be a two-letter state code",
            ));
        }
    }
    let meta = threadline_actors::conversation::InboundMeta {
        hint,
        from_state: b.from_state.clone(),
        ..Default::default()
    };
    let msg = InboundMessage {
        channel,
        from: from.clone(),
        to: b.to,
        text: b.text,
        provider_message_id: b.provider_message_id,
        at,
        media: b.media,
    };
    Ok(GatewayInbound {
        tenant: b.tenant,
        msg,
        meta,
    })
}
