//! Writes addressed to one conversation, as values: the router runs each
//! one here when this node holds the conversation, or sends it to the node
//! that does (a wire `PoolAsk::Conv` / `PoolAsk::Contact`). Callers (the
//! HTTP layer, the agent pool) call the router's methods and never decide
//! where a write runs: the router is the one way into a conversation.
//!
//! - `ConvOp`: a write addressed by conversation id; it runs on the node
//!   that holds the conversation (`Cluster::locate`).
//! - `ContactOp`: a write addressed by (tenant, contact); it runs on the
//!   contact's owner (`Cluster::remote_owner`), which starts the
//!   conversation if the contact has none.
//!
//! Both are part of the cluster wire (`WIRE_VERSION`): variants are only
//! ever added at the end, and each has a golden fixture.

use threadline_protocol::{ConsentChange, ConvEvent, ConversationId, ConversationState};

use crate::conversation::core::{
    BookingOutcome, BookingOutcomeError, CallEvent, DeliveryReport, OutboundSpec, SendOutcome,
    TimerSpec, VoiceAction,
};
use crate::conversation::InboundAck;

/// A write to a conversation by id, wherever it lives.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ConvOp {
    Assign(ConversationId, Option<String>),
    Note(ConversationId, String),
    Send(ConversationId, OutboundSpec),
    Close {
        conv: ConversationId,
        agent: String,
        disposition: String,
    },
    /// Ask for a person (`ConvAnswer::Escalated`).
    Escalate {
        conv: ConversationId,
        reason: String,
        skills: Vec<String>,
        priority: i32,
    },
    /// How the booked appointment went (`ConvAnswer::Outcome`).
    Outcome(ConversationId, BookingOutcome),
    /// A timer the conversation owns (`ConvAnswer::Timer`).
    Timer(ConversationId, TimerSpec),
    /// A provider's report on message `seq` (`ConvAnswer::Done`).
    Status {
        conv: ConversationId,
        seq: u32,
        report: DeliveryReport,
    },
}

impl ContactWrite {
    /// Whether the write is addressed to the contact itself rather than
    /// to the conversation its alias names.
    pub fn unaliased(&self) -> bool {
        matches!(self, ContactWrite::Link { .. })
    }
}

impl ConvOp {
    pub fn conversation(&self) -> ConversationId {
        match self {
            ConvOp::Assign(c, _)
            | ConvOp::Note(c, _)
            | ConvOp::Send(c, _)
            | ConvOp::Outcome(c, _)
            | ConvOp::Timer(c, _) => *c,
            ConvOp::Close { conv, .. }
            | ConvOp::Escalate { conv, .. }
            | ConvOp::Status { conv, .. } => *conv,
        }
    }
}

/// What a `ConvOp` did (`None` beside it: no such conversation).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ConvAnswer {
    Done,
    Sent(SendOutcome),
    /// False: an agent already holds it.
    Escalated(bool),
    Outcome(Result<(), BookingOutcomeError>),
    /// The new timer's id.
    Timer(u64),
}

/// A write addressed to a contact of a tenant, run on the contact's owner.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContactOp {
    pub tenant: String,
    pub contact: String,
    pub write: ContactWrite,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ContactWrite {
    /// A business message (`ContactAnswer::Sent`); starts a conversation
    /// if the contact has none.
    Send(OutboundSpec),
    /// A consent change (`ContactAnswer::Conversation`).
    Consent(ConsentChange),
    /// What is known of the contact, a `ConvEvent::ContactUpdated`
    /// (`ContactAnswer::Updated`).
    Update(ConvEvent),
    /// A step of a phone call (`ContactAnswer::Call`).
    Call(CallEvent),
    /// A provider's report on the outbound message carrying its id
    /// (`ContactAnswer::Found`).
    Status(DeliveryReport),
    /// Another conversation of the same person joins this contact's
    /// (`ContactAnswer::Conversation`: the joined one); idempotent per
    /// `from`.
    Merge(Box<Merge>),
    /// The contact (a web-chat visitor) proved it is `phone`: addressed to
    /// the visitor itself, not through an alias, it runs on the visitor's
    /// owner, which joins its conversation to the phone's and makes the
    /// alias known to every node (`ContactAnswer::Conversation`).
    Link { phone: String },
}

/// What a conversation that joins another brings with it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Merge {
    pub from: ConversationId,
    pub messages: Vec<threadline_protocol::Message>,
    pub identities: threadline_protocol::Identities,
    pub captured: threadline_protocol::Captured,
    pub journey: threadline_protocol::Journey,
}

/// What a `ContactOp` did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ContactAnswer {
    Sent(ConversationId, SendOutcome),
    Conversation(ConversationId),
    Updated(Box<ConversationState>),
    Call(ConversationId, VoiceAction),
    /// Whether the contact has a conversation.
    Found(bool),
}

/// How an inbound message ended: recorded, or parked in the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Recorded(InboundAck),
    DeadLettered {
        conversation: Option<ConversationId>,
    },
}

/// Why a command did not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliverError {
    #[error("the node is not accepting work: {0}")]
    Unavailable(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Agents with their presence and whether a desktop is connected.
pub type AgentList = Vec<(
    crate::pool::routing::AgentSpec,
    crate::pool::routing::Presence,
    bool,
)>;
