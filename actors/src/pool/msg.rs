//! What the agent pool and a desktop's session are asked (`PoolMsg`,
//! `SessionMsg`), what a desktop asks and is told: the messages of their
//! handles, apart from the actors (`actor/`), so that what holds the
//! handles (the shared context, the router, the cluster) does not depend
//! on the actors.

use ractor::ActorRef;
use threadline_protocol::{Channel, ConversationId, ConversationState, Message};
use tokio::sync::{mpsc, oneshot};

use super::routing::{AgentSpec, Presence, QueueStats};
use crate::conversation::core::SendOutcome;

/// What the desktop is told (the WebSocket layer renders it as JSON; in
/// a cluster it crosses to the desktop's node as a wire payload).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AgentEvent {
    Hello {
        agent: AgentSpec,
        status: Presence,
    },
    Offer {
        offer: u64,
        conversation: Box<ConversationState>,
        expires_in_ms: i64,
    },
    OfferRescinded {
        offer: u64,
        conversation: ConversationId,
    },
    Assigned {
        conversation: Box<ConversationState>,
    },
    Message {
        conversation: ConversationId,
        message: Message,
    },
    Transferred {
        conversation: ConversationId,
        to: String,
    },
    Closed {
        conversation: ConversationId,
    },
    /// The outcome of the agent's `send`.
    Sent {
        conversation: ConversationId,
        outcome: SendOutcome,
    },
    Status {
        status: Presence,
    },
    Queue {
        tenant: String,
        stats: QueueStats,
    },
    Error {
        code: String,
        message: String,
    },
}

/// What the desktop asks (parsed from JSON by the WebSocket layer).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AgentCommand {
    Status(Presence),
    /// How the queues of the agent's tenants stand.
    Queue,
    Accept {
        offer: u64,
    },
    Reject {
        offer: u64,
    },
    Send {
        conversation: ConversationId,
        text: String,
    },
    Transfer {
        conversation: ConversationId,
        to_agent: Option<String>,
        to_skill: Option<String>,
        note: Option<String>,
    },
    Close {
        conversation: ConversationId,
        disposition: String,
    },
    /// A private note on a conversation the agent holds (an internal entry
    /// of the transcript, never sent to the customer).
    Note {
        conversation: ConversationId,
        text: String,
    },
}

/// An escalation for the pool.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Escalation {
    pub conv: ConversationId,
    pub tenant: String,
    pub channel: Channel,
    pub skills: Vec<String>,
    pub priority: i32,
}

pub(crate) type Reply<T> = oneshot::Sender<T>;

#[derive(ractor_cluster::RactorMessage)]
pub enum PoolMsg {
    Upsert(AgentSpec),
    Remove(String, Reply<bool>),
    List(Reply<Vec<(AgentSpec, Presence, bool)>>),
    Escalate(Escalation),
    /// A desktop session started for `agent`.
    Join {
        agent: String,
        events: mpsc::Sender<AgentEvent>,
        reply: Reply<Result<ActorRef<SessionMsg>, String>>,
    },
    /// A command from `agent`'s desktop.
    Command {
        agent: String,
        cmd: AgentCommand,
    },
    /// A committed message of a held conversation (boxed: a message is
    /// large next to the other variants).
    Published {
        conversation: ConversationId,
        message: Box<Message>,
    },
    Stats {
        tenant: String,
        reply: Reply<QueueStats>,
    },
    /// Whether some agent of `tenant` could take a call right now.
    CanTakeCall {
        tenant: String,
        reply: Reply<bool>,
    },
    /// The expiry timer `timer` of offer `offer` of `conv` fired.
    OfferDue {
        conv: u64,
        offer: u64,
        timer: u64,
        reply: Reply<()>,
    },
    /// End grace periods due on the injected clock.
    Tick,
    Advance(Reply<()>),
    /// The cluster's pool home moved: every session ends (desktops
    /// reconnect), and the pool starts afresh: on the home, from the work
    /// of every live node; elsewhere, empty.
    Reset,
}

#[derive(ractor_cluster::RactorMessage)]
pub enum SessionMsg {
    Deliver(AgentEvent),
}
