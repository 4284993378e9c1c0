//! Threadline's shared vocabulary: identifiers, conversation state and
//! events, and the versioned binary formats they are stored in.
//!
//! Architecture invariant: this crate depends on nothing of ours, does no IO
//! and knows nothing of async runtimes, HTTP or providers. It is plain data
//! plus deterministic functions over that data.

pub mod codec;
pub mod conversation;
pub mod ids;
pub mod time;

pub use codec::{
    AgentWork, ConversationSummary, DeadLetter, InboundMessage, LogRecord, OfferHold, OutboxEntry,
    TimerOwner, TimerRow,
};
pub use conversation::{
    Author, Booking, BookingStatus, Cadence, Captured, Channel, ConsentChange, ConsentStatus,
    ConvEvent, ConversationState, Delivery, Direction, GateDecision, Identities, Journey, Message,
    Offer, PendingTimer, Status, TimerKind, Waiting,
};
pub use ids::{ConversationId, MessageId};
pub use time::Timestamp;
