//! What a conversation actor is asked (`ConvMsg`) and answers with: the
//! messages of its handle, apart from the actor (`actor/`), so that what
//! sends them (the router, the supervisor) does not depend on the actor.

use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{
    ConsentChange, ConvEvent, ConversationId, ConversationState, Identities, MessageId, Timestamp,
};
use tokio::sync::oneshot;

use super::core::{CallEvent, DeliveryReport, OutboundSpec, SendOutcome, TimerSpec, VoiceAction};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundAck {
    pub conversation: ConversationId,
    pub message: MessageId,
    pub duplicate: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConvError {
    #[error("the conversation handler failed: {0}")]
    Panicked(String),
    #[error("{0}")]
    Storage(String),
    /// Not acknowledged: the cluster could not replicate it (retry).
    #[error("{0}")]
    Unavailable(String),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ConvError>>;

/// What a provider said about an inbound message beyond the message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundMeta {
    /// The provider's own keyword classification (Twilio `OptOutType`).
    pub hint: Option<crate::consent::keywords::Keyword>,
    /// The sender's state as the provider knows it (Twilio `FromState`).
    pub from_state: Option<String>,
    /// Addresses of the sender this message revealed (a WhatsApp id).
    pub identities: Option<Identities>,
    /// The sender's name as the provider knows it (WhatsApp profile name);
    /// kept unless a name is already known.
    pub profile_name: Option<String>,
}

#[derive(ractor_cluster::RactorMessage)]
pub enum ConvMsg {
    Inbound {
        msg: InboundMessage,
        meta: InboundMeta,
        reply: Reply<InboundAck>,
    },
    /// The conversation's current state, `None` if the contact has none.
    View {
        reply: Reply<Option<ConversationState>>,
    },
    /// Schedules a timer; `None` if the contact has no conversation.
    ScheduleTimer {
        spec: TimerSpec,
        reply: Reply<Option<u64>>,
    },
    /// Timer `id` came due (delivered at least once; handled at most once).
    FireTimer { id: u64, reply: Reply<()> },
    /// Cancels timer `id`; false if it is not pending here.
    CancelTimer { id: u64, reply: Reply<bool> },
    /// Puts a business-initiated message through the gate. With `create`,
    /// a contact without a conversation gets one; otherwise `None`.
    SendMessage {
        spec: OutboundSpec,
        create: bool,
        reply: Reply<Option<(ConversationId, SendOutcome)>>,
    },
    /// Records what is known of the contact (creates the conversation if
    /// needed); the event is `ConvEvent::ContactUpdated`.
    UpdateContact {
        update: ConvEvent,
        reply: Reply<ConversationState>,
    },
    /// The provider outcome of queued outbound message `seq`.
    Delivery {
        seq: u32,
        outcome: crate::sender::Outcome,
        reply: Reply<()>,
    },
    /// Records a consent change (creates the conversation if needed).
    RecordConsent {
        change: ConsentChange,
        reply: Reply<ConversationId>,
    },
    /// A step of a phone call (creates the conversation if needed).
    Call {
        event: CallEvent,
        reply: Reply<(ConversationId, VoiceAction)>,
    },
    /// A provider's delivery report on outbound message `seq` (or the one
    /// carrying the report's provider id). False if no conversation.
    ProviderStatus {
        seq: Option<u32>,
        report: DeliveryReport,
        reply: Reply<bool>,
    },
    /// Takes over another conversation's messages and addresses (creates
    /// the conversation if needed).
    Merge {
        from: ConversationId,
        messages: Vec<threadline_protocol::Message>,
        identities: Identities,
        /// What the other conversation knew, and where it stood.
        captured: Box<(threadline_protocol::Captured, threadline_protocol::Journey)>,
        reply: Reply<ConversationId>,
    },
    /// Asks for a person; false if an agent already holds it.
    Escalate {
        reason: String,
        skills: Vec<String>,
        priority: i32,
        reply: Reply<bool>,
    },
    /// Records who holds the conversation.
    Assign {
        agent: Option<String>,
        reply: Reply<()>,
    },
    /// A system note in the transcript.
    Note { text: String, reply: Reply<()> },
    /// How its booked appointment went.
    BookingOutcome {
        outcome: crate::conversation::core::BookingOutcome,
        reply: Reply<Result<(), crate::conversation::core::BookingOutcomeError>>,
    },
    /// An agent closes it with a disposition.
    CloseByAgent {
        agent: String,
        disposition: String,
        reply: Reply<()>,
    },
    /// This conversation continues in `into`: close it.
    CloseMerged {
        into: ConversationId,
        reply: Reply<()>,
    },
    /// Snapshot, leave the directory and stop. With `idle_before`, only if
    /// the actor has not been active since that instant.
    Passivate { idle_before: Option<Timestamp> },
    /// A queued write failed: drop in-memory state and stop.
    StorageFailed,
}

impl ConvMsg {
    /// Answers the request with `e` on whatever reply channel it carries.
    pub(crate) fn fail(self, e: ConvError) {
        match self {
            ConvMsg::Inbound { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::View { reply } => drop(reply.send(Err(e))),
            ConvMsg::ScheduleTimer { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::FireTimer { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::CancelTimer { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::SendMessage { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Delivery { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::UpdateContact { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::RecordConsent { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Call { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::ProviderStatus { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Merge { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::CloseMerged { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Escalate { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Assign { reply, .. } | ConvMsg::Note { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::CloseByAgent { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::BookingOutcome { reply, .. } => drop(reply.send(Err(e))),
            ConvMsg::Passivate { .. } | ConvMsg::StorageFailed => {}
        }
    }
}
