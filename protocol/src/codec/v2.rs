use serde::{Deserialize, Serialize};

use crate::conversation::{
    Captured, Channel, ConversationState, Identities, Message, PendingTimer, Status,
};
use crate::ids::ConversationId;
use crate::time::Timestamp;

#[derive(Deserialize, Serialize)]
pub struct ConversationStateV2 {
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
}

pub fn upgrade(s: ConversationStateV2) -> ConversationState {
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
        consent: Vec::new(),
        waiting: None,
        subjects: Default::default(),
        journey: Default::default(),
    }
}
