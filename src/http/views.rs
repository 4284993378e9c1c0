//! How a conversation, a message and a booking read as JSON.

use super::*;

use serde_json::{json, Value};
use threadline_protocol::{ConversationId, ConversationState};

/// One message as the REST API and the agent desktop show it.
pub fn message_json(conv: ConversationId, m: &threadline_protocol::Message) -> Value {
    json!({
        "id": threadline_protocol::MessageId { conversation: conv, seq: m.seq }.to_string(),
        "direction": m.direction.as_str(),
        "channel": m.channel.as_str(),
        "author": m.author.label(),
        "text": m.text,
        "at": rfc3339(m.at),
        "recorded_at": rfc3339(m.recorded_at),
        // Internal entries (notes, dispositions, merge notices) read
        // `internal`, records written before that state existed included.
        "delivery": if m.is_internal() { "internal" } else { m.delivery.as_str() },
        "internal": m.is_internal(),
        "provider_message_id": m.provider_message_id,
        "media": m.media,
    })
}

/// The conversation's appointment (`null` if it never had one): its
/// time, service and status, a time offered while the customer decides,
/// and its pending reminders.
pub fn booking_json(s: &ConversationState) -> Value {
    let Some(b) = &s.journey.booking else {
        return Value::Null;
    };
    json!({
        "service": b.service,
        "journey": b.journey,
        "status": b.status.as_str(),
        "start": b.start.map(rfc3339),
        "offer": b.offer.map(|o| json!({"start": rfc3339(o.start), "held_until": rfc3339(o.until)})),
        "reminders": b.reminders.iter().filter_map(|id| s.timers.iter().find(|t| t.id == *id)).map(|t| json!({
            "id": timer_id_text(t.id),
            "at": rfc3339(t.due),
        })).collect::<Vec<_>>(),
    })
}

pub fn conversation_json(s: &ConversationState) -> Value {
    let messages: Vec<Value> = s.messages.iter().map(|m| message_json(s.id, m)).collect();
    json!({
        "id": s.id.to_string(),
        "tenant": s.tenant,
        "contact": s.contact,
        "identities": {
            "phone": s.identities.phone,
            "whatsapp": s.identities.whatsapp,
            "visitor": s.identities.visitor,
            "email": s.identities.email,
        },
        "status": s.status.as_str(),
        "channels": s.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "messages": messages,
        "captured": {
            "name": s.captured.name,
            "intent": s.captured.intent,
            "slots": s.captured.slots,
            "score": s.captured.score,
            "facts": s.captured.facts,
        },
        "journey": {
            "active": s.journey.active,
            "asking": s.journey.asking,
            "handoff": s.journey.handoff,
        },
        "booking": booking_json(s),
        "assigned_agent": s.assigned_agent,
        "timers": s.timers.iter().map(|t| json!({
            "id": timer_id_text(t.id),
            "at": rfc3339(t.due),
            "kind": t.kind.as_str(),
            "text": t.text,
            "channel": t.channel.map(|c| c.as_str()),
        })).collect::<Vec<_>>(),
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.updated_at),
    })
}
