use serde::{Deserialize, Serialize};

use crate::conversation::{
    Captured, Channel, ConsentChange, ConversationState, Identities, Message, PendingTimer, Status,
    Waiting,
};
use crate::ids::ConversationId;
use crate::time::Timestamp;

#[derive(Deserialize, Serialize)]
pub struct ConversationStateV4 {
    pub id: ConversationId,
    pub tenant: String,
    pub contact: String,
    pub identities: Identities,
    pub status: Status,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub messages: Vec<Message>,
    pub captured: Captured,
    pub channels: Vec<Channel>,
    pub assigned_agent: Option<String>,
    pub timers: Vec<PendingTimer>,
    pub last_seq: u32,
    pub consent: Vec<ConsentChange>,
    pub waiting: Option<Waiting>,
}

/// A conversation written before subjects were kept has none: its
/// earlier messages count towards every subject's cap (the safe side).
pub fn upgrade(s: ConversationStateV4) -> ConversationState {
    ConversationState {
        id: s.id,
        tenant: s.tenant,
        contact: s.contact,
        identities: s.identities,
        status: s.status,
        created_at: s.created_at,
        updated_at: s.updated_at,
        messages: s.messages,
        captured: s.captured,
        channels: s.channels,
        assigned_agent: s.assigned_agent,
        timers: s.timers,
        last_seq: s.last_seq,
        consent: s.consent,
        waiting: s.waiting,
        subjects: Default::default(),
        journey: Default::default(),
    }
}
