//! How a simulated customer reaches the node on each channel: signed Twilio
//! SMS and voice webhooks, signed WhatsApp notifications, the web-chat socket
//! and the gateway API, and how each is acknowledged and answered.

use super::*;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::fakeprov::{self};
use crate::scenario::Channel;

pub(super) fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(fakeprov::AUTH_TOKEN.as_bytes())
        .expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub(super) fn meta_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(fakeprov::WA_SECRET.as_bytes())
        .expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

pub(super) fn ack_kind(c: Channel) -> &'static str {
    match c {
        Channel::Sms => "sms.ack",
        Channel::Whatsapp => "whatsapp.ack",
        Channel::Webchat => "webchat.ack",
        Channel::Api => "api.ack",
        Channel::Voice => "voice.ack",
    }
}

pub(super) fn reply_kind(c: Channel) -> &'static str {
    match c {
        Channel::Sms => "sms.reply",
        Channel::Whatsapp => "whatsapp.reply",
        Channel::Webchat => "webchat.reply",
        Channel::Api => "api.reply",
        Channel::Voice => "voice.missed_call_text.reply",
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(super) async fn next_frame(ws: &mut Ws, kind: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let f = tokio::time::timeout(left, ws.next()).await.ok()??.ok()?;
        if let Frame::Text(t) = f {
            let v: Value = serde_json::from_str(&t).ok()?;
            if v["type"] == kind {
                return Some(v);
            }
        }
    }
}

/// The next message from the business on the chat socket.
pub(super) async fn reply_frame(ws: &mut Ws, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let v = next_frame(ws, "message", left).await?;
        if v["direction"] == "outbound" {
            return Some(Instant::now());
        }
    }
}

pub(super) async fn send_chat(
    ws: &mut Ws,
    id: &str,
    text: &str,
    timeout: Duration,
) -> Result<(), String> {
    ws.send(Frame::text(
        json!({"type": "message", "text": text, "id": id}).to_string(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    match next_frame(ws, "ack", timeout).await {
        Some(_) => Ok(()),
        None => Err("no ack".into()),
    }
}

pub(super) fn status_ok(r: anyhow::Result<(u16, Bytes)>, want: u16) -> Result<(), String> {
    match r {
        Ok((s, _)) if s == want => Ok(()),
        Ok((s, _)) => Err(format!("status {s}")),
        Err(e) => Err(format!("transport: {e}")),
    }
}

/// The form Twilio posts for a text `sid` from `from` to the tenant.
pub(crate) fn sms_params<'a>(
    sid: &'a str,
    from: &'a str,
    text: &'a str,
) -> [(&'a str, &'a str); 10] {
    [
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", fakeprov::SID),
        ("From", from),
        ("To", NUMBER),
        ("Body", text),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsStatus", "received"),
        ("ApiVersion", "2010-04-01"),
    ]
}

pub(super) async fn send_sms(sh: &Shared, from: &str, id: &str, text: &str) -> Result<(), String> {
    let sid = format!("SM{id}");
    twilio_post(sh, "/webhooks/twilio/sms", &sms_params(&sid, from, text))
        .await
        .map(|_| ())
}

/// A call nobody answers: it rings the owner, then the dial reports
/// no answer.
pub(super) async fn missed_call(sh: &Shared, from: &str, id: &str) -> Result<(), String> {
    let sid = format!("CA{id}");
    let mut params = vec![
        ("CallSid", sid.as_str()),
        ("AccountSid", fakeprov::SID),
        ("From", from),
        ("To", NUMBER),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
    ];
    twilio_post(sh, "/webhooks/twilio/voice", &params).await?;
    params.push(("DialCallStatus", "no-answer"));
    twilio_post(sh, "/webhooks/twilio/voice/dial-status", &params).await?;
    Ok(())
}

/// One speech turn of call `call` (turn 1 first answers the call); true
/// if the assistant said something back.
pub(super) async fn speech(
    sh: &Shared,
    from: &str,
    call: &str,
    turn: usize,
    text: &str,
) -> Result<bool, String> {
    let sid = format!("CA{call}");
    let mut params = vec![
        ("CallSid", sid.as_str()),
        ("AccountSid", fakeprov::SID),
        ("From", from),
        ("To", NUMBER),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
    ];
    if turn == 1 {
        twilio_post(sh, "/webhooks/twilio/voice", &params).await?;
    }
    params.push(("SpeechResult", text));
    params.push(("Confidence", "0.92"));
    let path = format!("/webhooks/twilio/voice/gather?turn={turn}");
    let twiml = twilio_post(sh, &path, &params).await?;
    Ok(twiml.contains("<Say"))
}

/// A Twilio webhook to `path` of the node: its form body and its
/// `X-Twilio-Signature`.
pub(crate) fn signed_form(path: &str, params: &[(&str, &str)]) -> (String, String) {
    let sig = twilio_signature(&format!("{PUBLIC_URL}{path}"), params);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().copied())
        .finish();
    (body, sig)
}

/// A signed Twilio webhook; the TwiML answer.
pub(super) async fn twilio_post(
    sh: &Shared,
    path: &str,
    params: &[(&str, &str)],
) -> Result<String, String> {
    let (body, sig) = signed_form(path, params);
    match sh
        .post(
            path,
            "application/x-www-form-urlencoded",
            &[("x-twilio-signature", sig)],
            body,
        )
        .await
    {
        Ok((200, b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok((s, _)) => Err(format!("status {s}")),
        Err(e) => Err(format!("transport: {e}")),
    }
}

pub(super) async fn send_whatsapp(
    sh: &Shared,
    from: &str,
    id: &str,
    text: &str,
    name: &str,
) -> Result<(), String> {
    let wa_id = from.trim_start_matches('+');
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": NUMBER.trim_start_matches('+'), "phone_number_id": fakeprov::WA_PHONE_ID},
        "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": format!("wamid.{id}"), "timestamp": "1772550000", "type": "text", "text": {"body": text}}]
    }}]}]})
    .to_string();
    let sig = meta_signature(body.as_bytes());
    status_ok(
        sh.post(
            "/webhooks/whatsapp",
            "application/json",
            &[("x-hub-signature-256", sig)],
            body,
        )
        .await,
        200,
    )
}

pub(super) async fn send_api(sh: &Shared, from: &str, id: &str, text: &str) -> Result<(), String> {
    let body = json!({"tenant": TENANT, "channel": "sms", "from": from, "text": text, "provider_message_id": id})
        .to_string();
    status_ok(
        sh.post(
            "/api/v1/inbound",
            "application/json",
            &[("authorization", format!("Bearer {GATEWAY}"))],
            body,
        )
        .await,
        202,
    )
}

/// The provider message id the node keeps for inbound `id` of `channel`.
pub(super) fn stored_id(channel: Channel, id: &str) -> String {
    match channel {
        Channel::Sms => format!("SM{id}"),
        Channel::Whatsapp => format!("wamid.{id}"),
        _ => id.to_owned(),
    }
}
