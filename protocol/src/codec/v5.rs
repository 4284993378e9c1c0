use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::conversation::{
    Captured, Channel, ConsentChange, ConversationState, Identities, Message, PendingTimer, Status,
    Waiting,
};
use crate::ids::ConversationId;
use crate::time::Timestamp;

#[derive(Deserialize, Serialize)]
pub struct ConversationStateV5 {
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
    pub subjects: BTreeMap<u32, String>,
}

pub fn upgrade(s: ConversationStateV5) -> ConversationState {
    journey_from_slots(ConversationState {
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
        subjects: s.subjects,
        journey: Default::default(),
    })
}

/// The journey, the booking and the cadence out of the slots where
/// older versions kept them.
pub fn journey_from_slots(mut s: ConversationState) -> ConversationState {
    s.journey.absorb_legacy(&mut s.captured.slots);
    s
}
