//! The human-agent pool: the pure routing policy (`routing`), the pool
//! actor that carries out its effects, and agent desktop sessions.
//!
//! # Agents, escalations and offers
//!
//! An escalation is an `Escalated` event in the conversation (the customer
//! asked for a person, the caller did, or the API); after its commit the pool
//! is told. Who holds a conversation is an `AgentAssigned` event, written by
//! one ordered task so a release never overtakes the next assignment. Both
//! events update the `agent_work` index (conversation → tenant, channel,
//! skills, priority, since, agent) in the same transaction; when the pool
//! starts it reloads it: waiting conversations are queued again, held ones go
//! back to their agent, whose grace period starts then. An open offer is an
//! `offers` row (`OfferHold`: agent, offer id, timer, deadline) plus its
//! timer row, written in one transaction: after a restart the conversation is
//! still offered to the same agent, whose reconnecting desktop gets the same
//! offer with what is left of it, and the restored timer moves it on at the
//! original deadline (at once if it passed while the node was down). Offer
//! rows of work that ended meanwhile are deleted at start. An agent only ever
//! receives offers for their tenants, and every frame naming a conversation
//! is checked against who holds it (`not_yours`). A caller who asks for a
//! person is escalated ahead of text work (priority 100) when some agent with
//! a phone and voice capacity could answer, and holds (`/voice/hold`, a
//! `<Pause>` + `<Redirect>` loop every 3 s); once an agent accepts the offer,
//! the next check dials their phone with the whisper. After 60 s on hold, or
//! when nobody could answer at all, the owner's phone rings instead; with no
//! owner, the conversation stays queued for a call back.

pub mod actor;
mod msg;

pub use threadline_core::pool::routing;

pub use msg::{AgentCommand, AgentEvent, Escalation, PoolMsg, SessionMsg};

/// Conversations an agent holds, on the node that holds them: the feed
/// listener hands their messages to the pool.
#[derive(Default)]
pub struct Watched(dashmap::DashMap<u64, ()>);

impl Watched {
    pub(crate) fn set(&self, conv: threadline_protocol::ConversationId, held: bool) {
        if held {
            self.0.insert(conv.0, ());
        } else {
            self.0.remove(&conv.0);
        }
    }

    pub(crate) fn holds(&self, conv: threadline_protocol::ConversationId) -> bool {
        self.0.contains_key(&conv.0)
    }

    pub(crate) fn clear(&self) {
        self.0.clear();
    }
}
