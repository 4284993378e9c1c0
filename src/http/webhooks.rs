//! Provider webhooks: Twilio SMS, status and voice callbacks, and the
//! WhatsApp Cloud API. Each request's signature is checked before anything
//! is recorded (403, nothing stored, otherwise), its tenant is found by the
//! number it was sent to, and the answer (200, TwiML) goes out only once
//! what it reports is durable.

use crate::http::Body;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use threadline_actors::conversation::core::{CallEvent, DeliveryReport, VoiceAction};
use threadline_actors::conversation::InboundMeta;
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{Author, Channel, ConversationId, Delivery, Identities, Timestamp};

use crate::http::{
    field_len, json_response, read_body, text_response, via, ApiError, App, Resp, MAX_ID_BYTES,
    MAX_MEDIA, MAX_TEXT_BYTES, MAX_URL_BYTES,
};
use crate::twilio::{self, param, Twiml};
use crate::{phone, providers, whatsapp};

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn twiml(t: Twiml) -> Resp {
    text_response(StatusCode::OK, "text/xml", t.render())
}

/// The query string of `uri` as pairs.
fn query_pairs(req: &Request<Body>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads and authenticates a Twilio webhook: its form parameters, once the
/// `X-Twilio-Signature` over `public_url` + path + query checks out.
async fn twilio_form(
    app: &App,
    req: Request<Body>,
) -> Result<(Vec<(String, String)>, Vec<(String, String)>), ApiError> {
    let Some(tw) = &app.cfg.providers.twilio else {
        return Err(forbidden(
            "Twilio webhooks need [providers.twilio] (its auth_token signs them)",
        ));
    };
    let Some(public_url) = &app.cfg.server.public_url else {
        return Err(forbidden(
            "Twilio webhooks need server.public_url: the signature covers the URL Twilio called",
        ));
    };
    let header = req
        .headers()
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            app.shared.metrics.webhook_rejected.inc();
            forbidden("the X-Twilio-Signature header is missing")
        })?;
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let query = query_pairs(&req);
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    let params =
        twilio::parse_form(&body).map_err(|e| ApiError::bad("invalid_form", e.to_string()))?;
    if !twilio::verify(
        &tw.auth_token,
        public_url,
        &path_and_query,
        &params,
        &header,
    ) {
        app.shared.metrics.webhook_rejected.inc();
        tracing::warn!(path = %path_and_query, "refused a Twilio webhook with a wrong signature");
        return Err(forbidden(
            "the X-Twilio-Signature does not match this request (URL, parameters or auth token)",
        ));
    }
    Ok((params, query))
}

fn required<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    match param(params, name) {
        Some(v) if !v.is_empty() => {
            field_len(name, v, MAX_ID_BYTES)?;
            Ok(v)
        }
        _ => Err(ApiError::bad(
            "missing_field",
            format!("the `{name}` parameter is required"),
        )),
    }
}

/// The tenant owning Twilio number `to`; refused (and logged) if none.
fn tenant_by_number(app: &App, to: &str) -> Result<String, ApiError> {
    let to = phone::normalize(to).unwrap_or_else(|| to.to_owned());
    match app.cfg.tenants.iter().find(|t| t.sms_numbers.contains(&to)) {
        Some(t) => Ok(t.id.clone()),
        None => {
            app.shared.metrics.webhook_rejected.inc();
            tracing::warn!(to = %to, "refused an inbound for a number no tenant owns");
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_number",
                format!("no tenant owns the number {to}"),
            ))
        }
    }
}

fn phone_param(params: &[(String, String)], name: &str) -> Result<String, ApiError> {
    let raw = required(params, name)?;
    phone::normalize(raw).ok_or_else(|| {
        ApiError::bad(
            "invalid_field",
            format!("`{name}` is not a phone number: {raw:?}"),
        )
    })
}

/// `POST /webhooks/twilio/sms`: an inbound SMS or MMS.
pub async fn twilio_sms(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, _) = twilio_form(app, req).await?;
    let tenant = tenant_by_number(app, required(&params, "To")?)?;
    let from = phone_param(&params, "From")?;
    let sid = required(&params, "MessageSid")?.to_owned();
    let body = param(&params, "Body").unwrap_or("").to_owned();
    field_len("Body", &body, MAX_TEXT_BYTES)?;
    let num_media: usize = param(&params, "NumMedia")
        .unwrap_or("0")
        .parse()
        .map_err(|_| ApiError::bad("invalid_field", "`NumMedia` is not a number"))?;
    if num_media > MAX_MEDIA {
        return Err(ApiError::bad(
            "invalid_field",
            format!("at most {MAX_MEDIA} media are accepted"),
        ));
    }
    let mut media = Vec::with_capacity(num_media);
    for i in 0..num_media {
        if let Some(url) = param(&params, &format!("MediaUrl{i}")) {
            field_len("MediaUrl", url, MAX_URL_BYTES)?;
            media.push(url.to_owned());
        }
    }
    if body.trim().is_empty() && media.is_empty() {
        // Nothing to record (Twilio does not send these; a fake might).
        return Ok(twiml(Twiml::new()));
    }
    use threadline_actors::consent::keywords::Keyword;
    let hint = match param(&params, "OptOutType")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("STOP") => Some(Keyword::OptOut),
        Some("START") => Some(Keyword::OptIn),
        Some("HELP") => Some(Keyword::Help),
        _ => None,
    };
    let from_state = param(&params, "FromState")
        .filter(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(str::to_owned);
    let msg = InboundMessage {
        channel: Channel::Sms,
        from: from.clone(),
        to: param(&params, "To").map(str::to_owned),
        text: body,
        provider_message_id: Some(sid),
        at: None,
        media,
    };
    let meta = InboundMeta {
        hint,
        from_state,
        ..Default::default()
    };
    via(app, "twilio", async {
        app.router.deliver_with(&tenant, &from, msg, meta).await
    })
    .await?;
    Ok(twiml(Twiml::new()))
}

/// A Twilio message or call status as a delivery state (`None`: not a
/// change worth recording, such as `queued`).
fn twilio_delivery(status: &str) -> Option<Delivery> {
    Some(match status {
        "sent" | "ringing" | "in-progress" | "answered" => Delivery::Sent,
        "delivered" | "completed" => Delivery::Delivered,
        "read" => Delivery::Read,
        "failed" | "undelivered" | "canceled" | "busy" | "no-answer" => Delivery::Failed,
        _ => return None,
    })
}

/// Our reference to an outbound message, as put on its callback URL
/// (`?c=<conversation>&m=<seq>`) or WhatsApp's `biz_opaque_callback_data`.
fn message_ref(c: Option<&str>, m: Option<&str>) -> Option<(ConversationId, u32)> {
    Some((ConversationId(c?.parse().ok()?), m?.parse().ok()?))
}

fn query<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    param(q, name)
}

/// `POST /webhooks/twilio/status`: a message status callback.
pub async fn twilio_status(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, q) = twilio_form(app, req).await?;
    let sid = required(&params, "MessageSid")?.to_owned();
    let status = required(&params, "MessageStatus")?.to_ascii_lowercase();
    let error_code = param(&params, "ErrorCode").filter(|c| !c.is_empty());
    let Some(delivery) = twilio_delivery(&status) else {
        return Ok(twiml(Twiml::new()));
    };
    let report = DeliveryReport {
        delivery,
        provider_message_id: Some(sid),
        error: error_code.map(|c| format!("Twilio error {c} ({status})")),
        opted_out: error_code == Some(&providers::TWILIO_OPTED_OUT.to_string()),
    };
    record_status(
        app,
        message_ref(query(&q, "c"), query(&q, "m")),
        &params,
        report,
    )
    .await?;
    Ok(twiml(Twiml::new()))
}

/// Applies a status report to the message it names, or else to the
/// outbound message to `To` carrying its provider id.
async fn record_status(
    app: &App,
    target: Option<(ConversationId, u32)>,
    params: &[(String, String)],
    report: DeliveryReport,
) -> Result<(), ApiError> {
    let found = match target {
        Some((conv, seq)) => {
            via(app, "twilio", async {
                app.router.provider_status(conv, seq, report).await
            })
            .await?
        }
        None => match (
            param(params, "From"),
            param(params, "To").and_then(phone::normalize),
        ) {
            (Some(from), Some(to)) => match tenant_by_number(app, from) {
                Ok(tenant) => {
                    via(app, "twilio", async {
                        app.router
                            .provider_status_for_contact(&tenant, &to, report)
                            .await
                    })
                    .await?
                }
                Err(_) => false,
            },
            _ => false,
        },
    };
    if !found {
        tracing::info!("a status callback named no known message; ignored");
    }
    Ok(())
}

/// Where the voice webhooks send Twilio next.
const DIAL_STATUS: &str = "/webhooks/twilio/voice/dial-status";
const GATHER: &str = "/webhooks/twilio/voice/gather";
const WHISPER: &str = "/webhooks/twilio/voice/whisper";
const HOLD: &str = "/webhooks/twilio/voice/hold";
/// A caller on hold is ahead of text conversations in the queue.
const LIVE_CALL_PRIORITY: i32 = 100;
/// How long a caller holds for an agent before the owner's phone rings.
const HOLD_LIMIT_MS: i64 = 60_000;
/// Seconds between checks while a caller holds.
const HOLD_POLL_SECS: u32 = 3;

/// How the tenant's voice assistant listens (its flow's `[voice]`).
fn listen(app: &App, tenant: &str) -> crate::twilio::Listen {
    app.shared
        .flow(tenant)
        .map(|f| f.voice().clone())
        .unwrap_or_default()
}

fn render(action: VoiceAction, conv: ConversationId, listen: &crate::twilio::Listen) -> Resp {
    let t = match action {
        VoiceAction::Dial { number, whisper } => {
            let w = whisper.then(|| format!("{WHISPER}?conversation={}", conv.0));
            Twiml::new().dial(DIAL_STATUS, &number, w.as_deref())
        }
        VoiceAction::Gather {
            prompt,
            turn,
            silence,
        } => {
            let action = format!("{GATHER}?turn={turn}");
            // If the caller says nothing, the same turn again, counted.
            let silent = format!("{GATHER}?turn={turn}&silence={}", silence + 1);
            Twiml::new()
                .gather_speech(&action, &prompt, listen)
                .redirect(&silent)
        }
        VoiceAction::Transfer {
            fallback: Some(owner),
            ..
        } => ring_owner(HOLD_ON, &owner, conv),
        VoiceAction::Transfer { fallback: None, .. } => Twiml::new()
            .say("Nobody can take your call right now. Someone will get back to you soon. Goodbye.")
            .hangup(),
        VoiceAction::Hangup { text } => {
            let t = match text {
                Some(text) => Twiml::new().say(&text),
                None => Twiml::new(),
            };
            t.hangup()
        }
    };
    twiml(t)
}

/// The tenant and caller of a voice webhook.
fn call_parties(
    app: &App,
    params: &[(String, String)],
) -> Result<(String, String, String), ApiError> {
    let sid = required(params, "CallSid")?.to_owned();
    // A call the business placed: its number is `From`, the customer `To`.
    if param(params, "Direction").is_some_and(|d| d.starts_with("outbound")) {
        let tenant = tenant_by_number(app, required(params, "From")?)?;
        let to = phone_param(params, "To")?;
        return Ok((tenant, to, sid));
    }
    let tenant = tenant_by_number(app, required(params, "To")?)?;
    let from = phone_param(params, "From")?;
    Ok((tenant, from, sid))
}

/// Records a step of a call through the Twilio gateway.
async fn call(
    app: &App,
    tenant: String,
    from: String,
    event: CallEvent,
) -> Result<(ConversationId, VoiceAction), ApiError> {
    via(app, "twilio", async {
        app.router.call(&tenant, &from, event).await
    })
    .await
}

/// `POST /webhooks/twilio/voice`: an inbound call.
pub async fn twilio_voice(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, _) = twilio_form(app, req).await?;
    let (tenant, from, call_sid) = call_parties(app, &params)?;
    let listen = listen(app, &tenant);
    let (conv, action) = call(app, tenant, from, CallEvent::Incoming { call_sid }).await?;
    Ok(render(action, conv, &listen))
}

/// `POST /webhooks/twilio/voice/dial-status`: how ringing the owner ended.
pub async fn twilio_dial_status(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, _) = twilio_form(app, req).await?;
    let (tenant, from, call_sid) = call_parties(app, &params)?;
    let status = required(&params, "DialCallStatus")?.to_ascii_lowercase();
    let answered = matches!(status.as_str(), "completed" | "answered");
    let listen = listen(app, &tenant);
    let (conv, action) = call(
        app,
        tenant,
        from,
        CallEvent::DialStatus { call_sid, answered },
    )
    .await?;
    Ok(render(action, conv, &listen))
}

/// `POST /webhooks/twilio/voice/gather?turn=N`: a speech turn.
pub async fn twilio_gather(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, q) = twilio_form(app, req).await?;
    let (tenant, from, call_sid) = call_parties(app, &params)?;
    let turn = query(&q, "turn").and_then(|t| t.parse().ok()).unwrap_or(1);
    let silence = query(&q, "silence")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut text = param(&params, "SpeechResult").unwrap_or("").to_owned();
    field_len("SpeechResult", &text, MAX_TEXT_BYTES)?;
    if text.trim().is_empty() {
        // A key instead of words; the conversation reads what it means
        // where the call stands (0 is always a person).
        text = match param(&params, "Digits").unwrap_or("").trim() {
            "" => String::new(),
            keys => format!("(pressed {})", keys.chars().take(8).collect::<String>()),
        };
    }
    let spoke = !text.trim().is_empty();
    let (conv, action) = call(
        app,
        tenant.clone(),
        from,
        CallEvent::Speech {
            call_sid,
            turn,
            text,
            silence: if spoke { 0 } else { silence },
        },
    )
    .await?;
    if let VoiceAction::Transfer { fallback, reason } = &action {
        // What the conversation said on handing over (its last line on
        // the call) is what the caller hears before waiting or ringing.
        let said = app
            .router
            .view_by_id(conv)
            .await?
            .and_then(|s| {
                s.messages
                    .into_iter()
                    .rev()
                    .find(|m| m.channel == Channel::Voice && m.author == Author::Bot)
                    .map(|m| m.text)
            })
            .unwrap_or_else(|| HOLD_ON.to_owned());
        // A person: if an agent could answer, the call is offered like any
        // conversation (live calls first) and the caller holds until one
        // accepts; otherwise the owner, or a call back later.
        if app.router.can_take_call(&tenant).await? {
            app.router
                .escalate(conv, reason, Vec::new(), LIVE_CALL_PRIORITY)
                .await?;
            let since = app.shared.clock.now().0;
            let hold = format!("{HOLD}?conversation={}&since={since}", conv.0);
            return Ok(twiml(Twiml::new().say(&said).redirect(&hold)));
        }
        if let Some(owner) = fallback {
            return Ok(twiml(ring_owner(&said, owner, conv)));
        }
        app.router.escalate(conv, reason, Vec::new(), 0).await?;
    }
    Ok(render(action, conv, &listen(app, &tenant)))
}

/// `said`, then the owner rings, hearing the whisper when they answer.
fn ring_owner(said: &str, owner: &str, conv: ConversationId) -> Twiml {
    let w = format!("{WHISPER}?conversation={}", conv.0);
    Twiml::new().say(said).dial(DIAL_STATUS, owner, Some(&w))
}

/// What a caller hears before being connected to a person.
const HOLD_ON: &str = "Please hold while I connect you with someone.";

/// `POST /webhooks/twilio/voice/hold?conversation=&since=`: a caller
/// waiting for an agent. Once an agent accepted the offer, their phone
/// rings (with the whisper); after `HOLD_LIMIT_MS`, the owner's; else the
/// caller hears that they are still being connected.
pub async fn twilio_hold(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, q) = twilio_form(app, req).await?;
    let (tenant, _, _) = call_parties(app, &params)?;
    let conv = query(&q, "conversation")
        .and_then(|c| c.parse().ok())
        .map(ConversationId)
        .ok_or_else(|| ApiError::bad("invalid_field", "`conversation` is required"))?;
    let since: i64 = query(&q, "since")
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ApiError::bad("invalid_field", "`since` is required"))?;
    let whisper = format!("{WHISPER}?conversation={}", conv.0);
    let state = app
        .router
        .view_by_id(conv)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no conversation {conv}")))?;
    if let Some(agent) = &state.assigned_agent {
        let phone = app
            .router
            .agents()
            .await?
            .into_iter()
            .find(|(a, _, _)| &a.id == agent)
            .and_then(|(a, _, _)| a.phone);
        if let Some(phone) = phone {
            return Ok(twiml(Twiml::new().dial(
                DIAL_STATUS,
                &phone,
                Some(&whisper),
            )));
        }
    }
    if app.shared.clock.now().0 - since >= HOLD_LIMIT_MS {
        let owner = app.cfg.tenant(&tenant).and_then(|t| t.owner_phone.clone());
        return Ok(twiml(match owner {
            Some(o) => Twiml::new().dial(DIAL_STATUS, &o, Some(&whisper)),
            None => Twiml::new()
                .say("Sorry, nobody could take your call. Someone will get back to you soon. Goodbye.")
                .hangup(),
        }));
    }
    let again = format!("{HOLD}?conversation={}&since={since}", conv.0);
    Ok(twiml(
        Twiml::new()
            .say("Thanks for holding, connecting you now.")
            .pause(HOLD_POLL_SECS)
            .redirect(&again),
    ))
}

/// `POST /webhooks/twilio/voice/status`: a call status callback. For calls
/// the node placed (`?c=&m=`), it is the delivery of that message.
pub async fn twilio_call_status(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, q) = twilio_form(app, req).await?;
    let status = required(&params, "CallStatus")?.to_ascii_lowercase();
    if let (Some(target), Some(delivery)) = (
        message_ref(query(&q, "c"), query(&q, "m")),
        twilio_delivery(&status),
    ) {
        let report = DeliveryReport {
            delivery,
            provider_message_id: param(&params, "CallSid").map(str::to_owned),
            error: (delivery == Delivery::Failed).then(|| format!("call {status}")),
            opted_out: false,
        };
        record_status(app, Some(target), &params, report).await?;
    }
    Ok(twiml(Twiml::new()))
}

/// `POST /webhooks/twilio/voice/whisper?conversation=ID`: what the person
/// taking a transferred call hears before being connected.
pub async fn twilio_whisper(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (_, q) = twilio_form(app, req).await?;
    let id = query(&q, "conversation")
        .and_then(|c| c.parse().ok())
        .map(ConversationId)
        .ok_or_else(|| ApiError::bad("invalid_field", "`conversation` is required"))?;
    let text = match app.router.view_by_id(id).await? {
        Some(s) => {
            let zone = app
                .cfg
                .tenant(&s.tenant)
                .and_then(|t| t.timezone.parse().ok())
                .unwrap_or(chrono_tz::UTC);
            threadline_actors::conversation::core::Conversation::from_state(s).whisper(zone)
        }
        None => "Incoming call.".into(),
    };
    Ok(twiml(Twiml::new().say(&text)))
}

/// `POST /webhooks/twilio/voice/outbound?c=&m=`: what a call the node
/// placed says (the business-initiated message `m` of conversation `c`).
pub async fn twilio_outbound_call(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, q) = twilio_form(app, req).await?;
    let (conv, seq) = message_ref(query(&q, "c"), query(&q, "m"))
        .ok_or_else(|| ApiError::bad("invalid_field", "`c` and `m` are required"))?;
    // Who answered (Twilio's answering-machine detection); with the call's
    // parties, the conversation decides: a conversation, or a voicemail.
    let machine =
        param(&params, "AnsweredBy").is_some_and(|a| a.starts_with("machine") || a == "fax");
    if let Ok((tenant, contact, call_sid)) = call_parties(app, &params) {
        let listen = listen(app, &tenant);
        let (id, action) = call(
            app,
            tenant,
            contact,
            CallEvent::Answered {
                call_sid,
                seq,
                machine,
            },
        )
        .await?;
        if id == conv {
            return Ok(render(action, conv, &listen));
        }
    }
    let text = app
        .router
        .view_by_id(conv)
        .await?
        .and_then(|s| s.messages.into_iter().find(|m| m.seq == seq))
        .map(|m| m.text)
        .ok_or_else(|| ApiError::not_found(format!("no message {conv}/{seq}")))?;
    Ok(twiml(Twiml::new().say(&text).hangup()))
}

/// `POST /webhooks/twilio/voice/amd?c=&m=`: who answered a call the node
/// placed (asynchronous answering-machine detection; the call has been
/// talking since it was answered). A person, or a verdict Twilio could not
/// make: nothing changes. A machine, after its greeting: the conversation
/// records the voicemail and queues the unanswered-call text through the
/// gate (once, however often this is posted), and the call in progress is
/// given the voicemail to say before it hangs up. A call already over is
/// left alone; Twilio unreachable answers 503, so the verdict is posted
/// again.
pub async fn twilio_amd(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let (params, q) = twilio_form(app, req).await?;
    let (conv, seq) = message_ref(query(&q, "c"), query(&q, "m"))
        .ok_or_else(|| ApiError::bad("invalid_field", "`c` and `m` are required"))?;
    let answered_by = required(&params, "AnsweredBy")?;
    let machine = answered_by.starts_with("machine") || answered_by == "fax";
    if !machine {
        return Ok(twiml(Twiml::new()));
    }
    let (tenant, contact, call_sid) = call_parties(app, &params)?;
    let event = CallEvent::Answered {
        call_sid: call_sid.clone(),
        seq,
        machine: true,
    };
    let (id, action) = call(app, tenant, contact, event).await?;
    let (true, VoiceAction::Hangup { text: Some(said) }) = (id == conv, action) else {
        return Ok(twiml(Twiml::new()));
    };
    let Some(providers) = &app.calls else {
        return Ok(twiml(Twiml::new()));
    };
    let voicemail = Twiml::new().say(&said).hangup().render();
    match providers.update_call(&call_sid, &voicemail).await {
        Ok(()) => {}
        Err(crate::providers::CallUpdate::Gone(why)) => {
            tracing::info!(call_sid, why, "no voicemail left: the call is over");
        }
        Err(crate::providers::CallUpdate::Retry(why)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                format!("the call could not be given its voicemail: {why}"),
            ));
        }
    }
    Ok(twiml(Twiml::new()))
}

/// `GET /webhooks/whatsapp`: Meta's verification handshake.
pub fn whatsapp_verify(app: &App, req: &Request<Body>) -> Result<Resp, ApiError> {
    let Some(wa) = &app.cfg.providers.whatsapp else {
        return Err(forbidden("WhatsApp webhooks need [providers.whatsapp]"));
    };
    let q = query_pairs(req);
    let token = query(&q, "hub.verify_token").unwrap_or("");
    if query(&q, "hub.mode") == Some("subscribe") && crate::http::ct_eq(token, &wa.verify_token) {
        let challenge = query(&q, "hub.challenge").unwrap_or("");
        field_len("hub.challenge", challenge, MAX_ID_BYTES)?;
        return Ok(text_response(
            StatusCode::OK,
            "text/plain",
            challenge.to_owned(),
        ));
    }
    Err(forbidden(
        "hub.mode must be subscribe with the configured verify token",
    ))
}

/// `POST /webhooks/whatsapp`: `messages` and `statuses` notifications.
pub async fn whatsapp_notify(app: &App, req: Request<Body>) -> Result<Resp, ApiError> {
    let Some(wa) = &app.cfg.providers.whatsapp else {
        return Err(forbidden("WhatsApp webhooks need [providers.whatsapp]"));
    };
    let header = req
        .headers()
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            app.shared.metrics.webhook_rejected.inc();
            forbidden("the X-Hub-Signature-256 header is missing")
        })?;
    let body = read_body(req, app.cfg.server.max_body_bytes).await?;
    if !whatsapp::verify(&wa.app_secret, &body, &header) {
        app.shared.metrics.webhook_rejected.inc();
        tracing::warn!("refused a WhatsApp webhook with a wrong signature");
        return Err(forbidden(
            "the X-Hub-Signature-256 does not match this body and app secret",
        ));
    }
    let v: Value = crate::http::parse_json(&body)?;
    let n = whatsapp::parse(&v).map_err(|e| ApiError::bad("invalid_notification", e))?;
    let mut refused = 0;
    for m in n.messages {
        let Some(tenant) =
            app.cfg.tenants.iter().find(|t| {
                t.whatsapp_phone_number_id.as_deref() == Some(m.phone_number_id.as_str())
            })
        else {
            app.shared.metrics.webhook_rejected.inc();
            tracing::warn!(phone_number_id = %m.phone_number_id, "refused a WhatsApp message for a number no tenant owns");
            refused += 1;
            continue;
        };
        field_len("text.body", &m.text, MAX_TEXT_BYTES)?;
        field_len("id", &m.id, MAX_ID_BYTES)?;
        field_len("from", &m.from, MAX_ID_BYTES)?;
        // The phone number is the identity; a business-scoped id without
        // one keys its own conversation.
        let contact = crate::http::normalize_address(Channel::Whatsapp, &m.from)?;
        let msg = InboundMessage {
            channel: Channel::Whatsapp,
            from: contact.clone(),
            to: Some(m.phone_number_id.clone()),
            text: m.text,
            provider_message_id: Some(m.id),
            at: m.timestamp.map(|s| Timestamp(s.saturating_mul(1000))),
            media: m.media,
        };
        let meta = InboundMeta {
            identities: Some(Identities {
                whatsapp: Some(m.from.clone()),
                ..Default::default()
            }),
            profile_name: m.profile_name.filter(|n| n.len() <= 256),
            ..Default::default()
        };
        via(app, "whatsapp", async {
            app.router
                .deliver_with(&tenant.id, &contact, msg, meta)
                .await
        })
        .await?;
    }
    for st in n.statuses {
        let delivery = match st.status.as_str() {
            "sent" => Delivery::Sent,
            "delivered" => Delivery::Delivered,
            "read" => Delivery::Read,
            "failed" => Delivery::Failed,
            _ => continue,
        };
        let report = DeliveryReport {
            delivery,
            provider_message_id: Some(st.id.clone()),
            error: st.error.clone(),
            opted_out: false,
        };
        let target = st
            .callback_data
            .as_deref()
            .and_then(|d| d.split_once(':'))
            .and_then(|(c, m)| message_ref(Some(c), Some(m)));
        let found = match target {
            Some((conv, seq)) => {
                via(app, "whatsapp", async {
                    app.router.provider_status(conv, seq, report).await
                })
                .await?
            }
            None => {
                let tenant = app.cfg.tenants.iter().find(|t| {
                    t.whatsapp_phone_number_id.as_deref() == Some(st.phone_number_id.as_str())
                });
                match (tenant, st.recipient.as_deref().and_then(phone::from_wa_id)) {
                    (Some(t), Some(to)) => {
                        via(app, "whatsapp", async {
                            app.router
                                .provider_status_for_contact(&t.id, &to, report)
                                .await
                        })
                        .await?
                    }
                    _ => false,
                }
            }
        };
        if !found {
            tracing::info!(id = %st.id, "a WhatsApp status named no known message; ignored");
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "ok", "refused": refused}),
    ))
}
