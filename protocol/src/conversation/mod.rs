//! Conversation state and the events that change it.
//!
//! A conversation's state is a fold of its events: `ConversationState::apply`
//! is the only function that changes it, both when the owning actor handles
//! a command and when a snapshot is rebuilt from the log after a crash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, MessageId};
use crate::time::Timestamp;

mod journey;
pub use journey::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Channel {
    Sms,
    Whatsapp,
    Voice,
    Webchat,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Sms,
        Channel::Whatsapp,
        Channel::Voice,
        Channel::Webchat,
        Channel::Email,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Voice => "voice",
            Channel::Webchat => "webchat",
            Channel::Email => "email",
        }
    }
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Author {
    Customer,
    Bot,
    Agent(String),
    System,
}

impl Author {
    pub fn label(&self) -> String {
        match self {
            Author::Customer => "customer".into(),
            Author::Bot => "bot".into(),
            Author::Agent(id) => format!("agent:{id}"),
            Author::System => "system".into(),
        }
    }
}

/// Delivery state of a message as far as the node knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// An inbound message, durably recorded.
    Received,
    Queued,
    Sent,
    Delivered,
    Read,
    Failed,
    /// Not sent: the outbound gate refused it (consent, WhatsApp window).
    Blocked,
    /// An internal entry (a transfer note, a disposition, a merge notice):
    /// for the business and its agents, never sent to the customer on any
    /// channel, never counted as sent. Appended last, so records written
    /// before it existed decode unchanged.
    Internal,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Received => "received",
            Delivery::Queued => "queued",
            Delivery::Sent => "sent",
            Delivery::Delivered => "delivered",
            Delivery::Read => "read",
            Delivery::Failed => "failed",
            Delivery::Blocked => "blocked",
            Delivery::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Active,
    Inactive,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Closed => "closed",
        }
    }
}

/// Every address by which the customer has reached this conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identities {
    /// E.164, with the leading `+`.
    pub phone: Option<String>,
    /// WhatsApp id (`wa_id` digits, or a business-scoped user id).
    pub whatsapp: Option<String>,
    /// Web-chat visitor id.
    pub visitor: Option<String>,
    pub email: Option<String>,
}

impl Identities {
    /// Where a message on `channel` reaches this customer, if known.
    pub fn address_for(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Sms | Channel::Voice => self.phone.as_deref(),
            Channel::Whatsapp => self.whatsapp.as_deref(),
            Channel::Webchat => self.visitor.as_deref(),
            Channel::Email => self.email.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub seq: u32,
    pub direction: Direction,
    pub channel: Channel,
    pub author: Author,
    pub text: String,
    /// When the message happened according to its source (the provider's or
    /// gateway's timestamp, else the time it was received).
    pub at: Timestamp,
    /// When this node recorded it.
    pub recorded_at: Timestamp,
    pub provider_message_id: Option<String>,
    pub delivery: Delivery,
    pub media: Vec<String>,
}

/// The system notes of records written before `Delivery::Internal`
/// existed (stored as outbound `sent`), by how they begin.
const LEGACY_NOTES: [&str; 3] = [
    "[transfer note from ",
    "[closed by ",
    "[continued in conversation ",
];

impl Message {
    /// Whether this entry is internal: for the business and its agents,
    /// never for the customer (see `Delivery::Internal`; older records'
    /// system notes included).
    pub fn is_internal(&self) -> bool {
        self.delivery == Delivery::Internal
            || (self.author == Author::System
                && self.direction == Direction::Outbound
                && LEGACY_NOTES.iter().any(|p| self.text.starts_with(p)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimerKind {
    /// A business-initiated follow-up message.
    FollowUp,
    /// A reminder message.
    Reminder,
    /// The conversation's own status timer (active → inactive → closed).
    Lifecycle,
    /// A marketing message held by the gate until it may go out.
    Marketing,
}

impl TimerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimerKind::FollowUp => "follow_up",
            TimerKind::Reminder => "reminder",
            TimerKind::Lifecycle => "lifecycle",
            TimerKind::Marketing => "marketing",
        }
    }
    pub fn parse(s: &str) -> Option<TimerKind> {
        [
            TimerKind::FollowUp,
            TimerKind::Reminder,
            TimerKind::Lifecycle,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A timer a conversation is waiting for. The conversation's list of
/// pending timers is what makes firing idempotent: a fire for an id that is
/// not pending (already handled, cancelled, or never acknowledged) is ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingTimer {
    pub id: u64,
    pub due: Timestamp,
    pub kind: TimerKind,
    pub text: Option<String>,
    pub channel: Option<Channel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConsentStatus {
    Unknown,
    OptedIn,
    OptedOut,
}

impl ConsentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Unknown => "unknown",
            ConsentStatus::OptedIn => "opted_in",
            ConsentStatus::OptedOut => "opted_out",
        }
    }
    pub fn parse(s: &str) -> Option<ConsentStatus> {
        match s {
            "opted_in" => Some(ConsentStatus::OptedIn),
            "opted_out" => Some(ConsentStatus::OptedOut),
            _ => None,
        }
    }
}

/// One recorded consent change: who, on what scope, how, and the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentChange {
    pub status: ConsentStatus,
    /// `None`: every channel.
    pub channel: Option<Channel>,
    /// `None`: every purpose (`conversational`, `reminder`, `marketing`).
    pub purpose: Option<String>,
    /// `keyword`, `web_form`, `verbal`, `import`, `api`, `provider` ...
    pub source: String,
    /// The keyword class or words matched, when a message caused it.
    pub keyword: Option<String>,
    pub raw_text: Option<String>,
    pub provider_message_id: Option<String>,
    pub proof: Option<String>,
    pub at: Timestamp,
}

impl ConsentChange {
    pub fn covers(&self, channel: Channel, purpose: &str) -> bool {
        self.channel.is_none_or(|c| c == channel)
            && self.purpose.as_deref().is_none_or(|p| p == purpose)
    }
}

/// One decision of the outbound gate, kept in the log and the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub channel: Channel,
    pub purpose: String,
    /// `sent`, `deferred` or `blocked`.
    pub decision: String,
    /// The rule that allowed, held or refused it.
    pub rule: String,
    pub until: Option<Timestamp>,
    pub text: String,
    pub at: Timestamp,
}

/// Everything that can happen to a conversation. Appended to the log in the
/// order the owning actor decided them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConvEvent {
    Created {
        id: ConversationId,
        tenant: String,
        contact: String,
        identities: Identities,
        at: Timestamp,
    },
    MessageAppended(Message),
    // New variants go at the end: the encodings store the variant index.
    TimerScheduled(PendingTimer),
    /// Timer `id` came due and its effects (events after it) were applied.
    TimerFired {
        id: u64,
        at: Timestamp,
    },
    TimerCancelled {
        id: u64,
    },
    StatusChanged {
        status: Status,
        at: Timestamp,
    },
    ConsentChanged(ConsentChange),
    Decided(GateDecision),
    /// What became of outbound message `seq` at its provider.
    DeliveryUpdated {
        seq: u32,
        delivery: Delivery,
        provider_message_id: Option<String>,
        error: Option<String>,
        at: Timestamp,
    },
    /// What is known of the contact, as set through the API. `None` leaves
    /// a field as it was; facts are merged.
    ContactUpdated {
        name: Option<String>,
        timezone: Option<String>,
        region: Option<String>,
        email: Option<String>,
        facts: BTreeMap<String, String>,
    },
    /// Another address of the same customer became known (a WhatsApp id
    /// for a phone, a phone number a web-chat visitor gave). Fields that
    /// are `None` leave the identity as it was.
    IdentityLinked(Identities),
    /// The conversation asked for a person (the customer said so, the bot
    /// gave up, or an operator escalated it).
    Escalated {
        reason: String,
        skills: Vec<String>,
        priority: i32,
        at: Timestamp,
    },
    /// The human agent now holding the conversation (`None`: nobody).
    AgentAssigned {
        agent: Option<String>,
        at: Timestamp,
    },
    /// What the conversation logic understood: the intent, slots it
    /// filled (merged; an empty value removes a slot) and the lead score.
    Understood {
        intent: Option<String>,
        slots: BTreeMap<String, String>,
        score: Option<f32>,
    },
    /// The subject of business-initiated message `seq` (frequency caps
    /// count messages on the same subject). Appended last: records written
    /// before it existed decode unchanged.
    SubjectNoted {
        seq: u32,
        subject: String,
    },
    /// The conversation's progress in its flow, replaced whole.
    JourneyChanged(Journey),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationState {
    pub id: ConversationId,
    pub tenant: String,
    /// The address this conversation is keyed by within its tenant.
    pub contact: String,
    pub identities: Identities,
    pub status: Status,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub messages: Vec<Message>,
    pub captured: Captured,
    /// Channels in the order the conversation first used them.
    pub channels: Vec<Channel>,
    pub assigned_agent: Option<String>,
    /// Timers this conversation is waiting for, in scheduling order.
    pub timers: Vec<PendingTimer>,
    /// Sequence number of the last event applied (`Created` is 1).
    pub last_seq: u32,
    /// Every consent change for this contact, oldest first.
    pub consent: Vec<ConsentChange>,
    /// Waiting for a person: from an escalation (or an agent letting it
    /// go) until an agent takes it or it closes.
    pub waiting: Option<Waiting>,
    /// The subject of each business-initiated message the gate let out, by
    /// message `seq` (messages recorded before subjects were kept have none).
    pub subjects: BTreeMap<u32, String>,
    /// Where the conversation stands in its flow (journey, booking).
    pub journey: Journey,
}

/// What a conversation waiting for a person asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub skills: Vec<String>,
    pub priority: i32,
    pub since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event {got} applied out of order (expected {expected})")]
    OutOfOrder { expected: u32, got: u32 },
    #[error("the first event of a conversation must be Created")]
    NotCreated,
}

impl ConversationState {
    /// Builds the state from its first event.
    pub fn from_created(event: &ConvEvent) -> Result<Self, ApplyError> {
        match event {
            ConvEvent::Created {
                id,
                tenant,
                contact,
                identities,
                at,
            } => Ok(ConversationState {
                id: *id,
                tenant: tenant.clone(),
                contact: contact.clone(),
                identities: identities.clone(),
                status: Status::Active,
                created_at: *at,
                updated_at: *at,
                messages: Vec::new(),
                captured: Captured::default(),
                channels: Vec::new(),
                assigned_agent: None,
                timers: Vec::new(),
                last_seq: 1,
                consent: Vec::new(),
                waiting: None,
                subjects: BTreeMap::new(),
                journey: Journey::default(),
            }),
            _ => Err(ApplyError::NotCreated),
        }
    }

    pub fn next_seq(&self) -> u32 {
        self.last_seq + 1
    }

    /// Applies event number `seq`. Events must be applied in order.
    pub fn apply(&mut self, seq: u32, event: &ConvEvent) -> Result<(), ApplyError> {
        if seq != self.next_seq() {
            return Err(ApplyError::OutOfOrder {
                expected: self.next_seq(),
                got: seq,
            });
        }
        match event {
            ConvEvent::Created { .. } => return Err(ApplyError::NotCreated),
            ConvEvent::MessageAppended(m) => {
                if !self.channels.contains(&m.channel) {
                    self.channels.push(m.channel);
                }
                self.updated_at = self.updated_at.max(m.recorded_at);
                if m.direction == Direction::Inbound {
                    self.status = Status::Active;
                }
                // Most conversations are short and many are resident: grow
                // exactly while small instead of doubling.
                if self.messages.len() < 16 {
                    self.messages.reserve_exact(1);
                }
                self.messages.push(m.clone());
            }
            ConvEvent::TimerScheduled(t) => {
                self.timers.retain(|p| p.id != t.id);
                self.timers.push(t.clone());
            }
            ConvEvent::TimerFired { id, .. } | ConvEvent::TimerCancelled { id } => {
                self.timers.retain(|p| p.id != *id);
            }
            ConvEvent::StatusChanged { status, .. } => {
                self.status = *status;
                if *status == Status::Closed {
                    self.waiting = None;
                }
            }
            ConvEvent::ConsentChanged(c) => self.consent.push(c.clone()),
            // A record of a decision; its effects are their own events.
            ConvEvent::Decided(_) => {}
            ConvEvent::DeliveryUpdated {
                seq,
                delivery,
                provider_message_id,
                ..
            } => {
                if let Ok(i) = self.messages.binary_search_by_key(seq, |m| m.seq) {
                    let m = &mut self.messages[i];
                    m.delivery = *delivery;
                    if provider_message_id.is_some() {
                        m.provider_message_id = provider_message_id.clone();
                    }
                }
            }
            ConvEvent::ContactUpdated {
                name,
                timezone,
                region,
                email,
                facts,
            } => {
                if let Some(n) = name {
                    self.captured.name = Some(n.clone());
                }
                if let Some(z) = timezone {
                    self.captured.facts.insert("timezone".into(), z.clone());
                }
                if let Some(r) = region {
                    self.captured.facts.insert("region".into(), r.clone());
                }
                if let Some(e) = email {
                    self.identities.email = Some(e.clone());
                }
                for (k, v) in facts {
                    self.captured.facts.insert(k.clone(), v.clone());
                }
            }
            ConvEvent::Escalated {
                skills,
                priority,
                at,
                ..
            } => {
                self.status = Status::Active;
                self.waiting = Some(Waiting {
                    skills: skills.clone(),
                    priority: *priority,
                    since: *at,
                });
            }
            ConvEvent::SubjectNoted { seq, subject } => {
                self.subjects.insert(*seq, subject.clone());
            }
            ConvEvent::JourneyChanged(j) => self.journey = j.clone(),
            ConvEvent::Understood {
                intent,
                slots,
                score,
            } => {
                if intent.is_some() {
                    self.captured.intent.clone_from(intent);
                }
                let mut legacy = BTreeMap::new();
                for (k, v) in slots {
                    if Journey::is_legacy_key(k) {
                        legacy.insert(k.clone(), v.clone());
                    } else if v.is_empty() {
                        self.captured.slots.remove(k);
                    } else {
                        self.captured.slots.insert(k.clone(), v.clone());
                    }
                }
                if !legacy.is_empty() {
                    self.journey.absorb_legacy(&mut legacy);
                }
                if score.is_some() {
                    self.captured.score = *score;
                }
            }
            ConvEvent::AgentAssigned { agent, at } => {
                self.assigned_agent.clone_from(agent);
                // Taken: nobody waits. Let go without a close (a transfer,
                // a requeue): it waits again, as the pool's row says.
                self.waiting = match agent {
                    Some(_) => None,
                    None if self.status == Status::Closed => None,
                    None => Some(Waiting {
                        skills: Vec::new(),
                        priority: 0,
                        since: *at,
                    }),
                };
            }
            ConvEvent::IdentityLinked(ids) => {
                let mine = &mut self.identities;
                for (slot, new) in [
                    (&mut mine.phone, &ids.phone),
                    (&mut mine.whatsapp, &ids.whatsapp),
                    (&mut mine.visitor, &ids.visitor),
                    (&mut mine.email, &ids.email),
                ] {
                    if new.is_some() {
                        slot.clone_from(new);
                    }
                }
            }
        }
        self.last_seq = seq;
        Ok(())
    }

    /// Consent for one channel and purpose: the latest change covering it.
    pub fn consent_for(&self, channel: Channel, purpose: &str) -> ConsentStatus {
        self.consent
            .iter()
            .rev()
            .find(|c| c.covers(channel, purpose))
            .map_or(ConsentStatus::Unknown, |c| c.status)
    }

    pub fn pending_timer(&self, id: u64) -> Option<&PendingTimer> {
        self.timers.iter().find(|t| t.id == id)
    }

    /// When the last message (either direction) was recorded.
    pub fn last_message_at(&self) -> Timestamp {
        self.messages
            .last()
            .map_or(self.created_at, |m| m.recorded_at)
    }

    pub fn message_id(&self, seq: u32) -> MessageId {
        MessageId {
            conversation: self.id,
            seq,
        }
    }
}

#[cfg(test)]
mod tests;
