//! Commands and reads addressed to one conversation: views, business
//! messages, contact details, deliveries, calls, consent, identity links and
//! timers.

use super::*;

use threadline_protocol::codec::TimerOwner;
use threadline_protocol::{ConversationId, ConversationState};

use crate::command::{ContactAnswer, ContactOp, ContactWrite, ConvAnswer, ConvOp};
use crate::conversation::core::TimerSpec;
use crate::conversation::{ConvKey, ConvMsg};

impl Router {
    /// The contact's current conversation, without creating one (asked of
    /// the node that owns it, in a cluster).
    pub async fn view(
        &self,
        tenant: &str,
        contact: &str,
    ) -> Result<Option<ConversationState>, DeliverError> {
        if let Some(cluster) = self.shared.cluster() {
            let key = self.key(tenant, contact);
            if let Some(owner) = cluster.remote_owner(&key) {
                return cluster.forward_view(&owner, &key).await;
            }
            // Back from a crash: its copy may be older than the one the
            // node that stood in for it holds until it is handed back.
            if let Some(newer) = cluster.newer_copy(&key).await? {
                return cluster.forward_view(&newer, &key).await;
            }
            return match self.view_local(tenant, contact).await? {
                Some(s) => Ok(Some(s)),
                None => cluster.held_by_a_peer(&key).await,
            };
        }
        self.view_local(tenant, contact).await
    }

    /// The contact's conversation on this node.
    pub(crate) async fn view_local(
        &self,
        tenant: &str,
        contact: &str,
    ) -> Result<Option<ConversationState>, DeliverError> {
        let key = self.key(tenant, contact);
        if !self.shared.dir.contains(&key) {
            let (t, c) = (tenant.to_owned(), contact.to_owned());
            if self
                .blocking(move |s| s.conversation_of(&t, &c))
                .await?
                .is_none()
            {
                return Ok(None);
            }
        }
        self.ask(&key, |reply| ConvMsg::View { reply }).await
    }

    pub async fn view_by_id(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationState>, DeliverError> {
        let Some(cluster) = self.shared.cluster() else {
            return self.view_by_id_local(id).await;
        };
        if cluster.remote_creator(id).is_none() {
            // (Its key is looked up only while some copy may be old.)
            let key = if cluster.any_unconfirmed() {
                self.key_of(id).await?
            } else {
                None
            };
            if let Some(key) = key {
                if let Some(newer) = cluster.newer_copy(&key).await? {
                    return cluster.forward_view_by_id(&newer, id).await;
                }
            }
            if let Some(s) = self.view_by_id_local(id).await? {
                return Ok(Some(s));
            }
        }
        // Where it lives: the owner of its key if this node keeps its
        // replica, else the node that created it (which knows where it
        // went if it moved).
        match cluster.replica_owner(id).await {
            Some(node) => cluster.forward_view_by_id(&node, id).await,
            None => match cluster.remote_creator(id) {
                Some(node) => cluster.forward_view_by_id(&node, id).await,
                None => Ok(None),
            },
        }
    }

    /// Conversation `id` as this node knows it.
    pub(crate) async fn view_by_id_local(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationState>, DeliverError> {
        let Some(key) = self.key_of(id).await? else {
            return Ok(None);
        };
        // The contact may since have moved on to a newer conversation.
        Ok(self
            .ask(&key, |reply| ConvMsg::View { reply })
            .await?
            .filter(|s| s.id == id))
    }

    /// Schedules a timer owned by conversation `id`; resolves once durable.
    /// `None` if there is no such conversation.
    pub async fn schedule_timer(
        &self,
        id: ConversationId,
        spec: TimerSpec,
    ) -> Result<Option<u64>, DeliverError> {
        Ok(match self.conv_op(ConvOp::Timer(id, spec), true).await? {
            Some(ConvAnswer::Timer(t)) => Some(t),
            _ => None,
        })
    }

    /// Puts a business-initiated message to conversation `id` through the
    /// gate (on the node that holds it, in a cluster); `None` if there is
    /// no such conversation.
    pub async fn send_to_conversation(
        &self,
        id: ConversationId,
        spec: crate::conversation::core::OutboundSpec,
    ) -> Result<Option<crate::conversation::core::SendOutcome>, DeliverError> {
        Ok(match self.conv_op(ConvOp::Send(id, spec), true).await? {
            Some(ConvAnswer::Sent(o)) => Some(o),
            _ => None,
        })
    }

    /// Like `send_to_conversation`, addressed to a contact (a conversation
    /// is started if the contact has none).
    pub async fn send_to_contact(
        &self,
        tenant: &str,
        contact: &str,
        spec: crate::conversation::core::OutboundSpec,
    ) -> Result<(ConversationId, crate::conversation::core::SendOutcome), DeliverError> {
        match self
            .contact_op(tenant, contact, ContactWrite::Send(spec))
            .await?
        {
            ContactAnswer::Sent(conv, outcome) => Ok((conv, outcome)),
            other => Err(mismatched(other)),
        }
    }

    /// Records what is known of a contact (a `ConvEvent::ContactUpdated`);
    /// resolves with the conversation once durable.
    pub async fn update_contact(
        &self,
        tenant: &str,
        contact: &str,
        update: threadline_protocol::ConvEvent,
    ) -> Result<ConversationState, DeliverError> {
        match self
            .contact_op(tenant, contact, ContactWrite::Update(update))
            .await?
        {
            ContactAnswer::Updated(state) => Ok(*state),
            other => Err(mismatched(other)),
        }
    }

    /// Records the provider outcome of a queued outbound message.
    pub async fn record_delivery(
        &self,
        conv: ConversationId,
        seq: u32,
        outcome: crate::sender::Outcome,
    ) -> Result<(), DeliverError> {
        let Some(key) = self.key_of(conv).await? else {
            return Ok(());
        };
        self.ask(&key, |reply| ConvMsg::Delivery {
            seq,
            outcome: outcome.clone(),
            reply,
        })
        .await
    }

    /// A step of a phone call from `contact`; resolves with what the call
    /// does next once its events are durable.
    pub async fn call(
        &self,
        tenant: &str,
        contact: &str,
        event: crate::conversation::core::CallEvent,
    ) -> Result<(ConversationId, crate::conversation::core::VoiceAction), DeliverError> {
        match self
            .contact_op(tenant, contact, ContactWrite::Call(event))
            .await?
        {
            ContactAnswer::Call(conv, action) => Ok((conv, action)),
            other => Err(mismatched(other)),
        }
    }

    /// A provider's delivery report, for message `seq` of conversation
    /// `conv`. False if there is no such conversation.
    pub async fn provider_status(
        &self,
        conv: ConversationId,
        seq: u32,
        report: crate::conversation::core::DeliveryReport,
    ) -> Result<bool, DeliverError> {
        Ok(self
            .conv_op(ConvOp::Status { conv, seq, report }, true)
            .await?
            .is_some())
    }

    /// A provider's delivery report for the outbound message to `contact`
    /// that carries the report's provider id. False if the contact has no
    /// conversation.
    pub async fn provider_status_for_contact(
        &self,
        tenant: &str,
        contact: &str,
        report: crate::conversation::core::DeliveryReport,
    ) -> Result<bool, DeliverError> {
        match self
            .contact_op(tenant, contact, ContactWrite::Status(report))
            .await?
        {
            ContactAnswer::Found(found) => Ok(found),
            other => Err(mismatched(other)),
        }
    }

    /// Records a consent change for a contact; resolves once durable.
    pub async fn record_consent(
        &self,
        tenant: &str,
        contact: &str,
        change: threadline_protocol::ConsentChange,
    ) -> Result<ConversationId, DeliverError> {
        match self
            .contact_op(tenant, contact, ContactWrite::Consent(change))
            .await?
        {
            ContactAnswer::Conversation(conv) => Ok(conv),
            other => Err(mismatched(other)),
        }
    }

    /// A write to `contact`'s conversation: here, or on the node that owns
    /// the contact (which runs it with `contact_op_here`).
    pub(super) async fn contact_op(
        &self,
        tenant: &str,
        contact: &str,
        write: ContactWrite,
    ) -> Result<ContactAnswer, DeliverError> {
        let op = ContactOp {
            tenant: tenant.to_owned(),
            contact: contact.to_owned(),
            write,
        };
        if let Some(cluster) = self.shared.cluster() {
            if let Some(owner) = cluster.remote_owner(&self.contact_key(&op)) {
                return cluster.contact_op(&owner, op).await;
            }
        }
        self.contact_op_here(op).await
    }

    /// Runs `op` on this node.
    pub(crate) async fn contact_op_here(
        &self,
        op: ContactOp,
    ) -> Result<ContactAnswer, DeliverError> {
        let key = self.contact_key(&op);
        Ok(match op.write {
            ContactWrite::Send(spec) => {
                let (conv, outcome) = self
                    .ask_write(&key, |reply| ConvMsg::SendMessage {
                        spec: spec.clone(),
                        create: true,
                        reply,
                    })
                    .await?
                    .ok_or_else(|| DeliverError::Storage("conversation was not created".into()))?;
                ContactAnswer::Sent(conv, outcome)
            }
            ContactWrite::Consent(change) => ContactAnswer::Conversation(
                self.ask_write(&key, |reply| ConvMsg::RecordConsent {
                    change: change.clone(),
                    reply,
                })
                .await?,
            ),
            ContactWrite::Update(update) => ContactAnswer::Updated(Box::new(
                self.ask_write(&key, |reply| ConvMsg::UpdateContact {
                    update: update.clone(),
                    reply,
                })
                .await?,
            )),
            ContactWrite::Call(event) => {
                let (conv, action) = self
                    .ask_write(&key, |reply| ConvMsg::Call {
                        event: event.clone(),
                        reply,
                    })
                    .await?;
                ContactAnswer::Call(conv, action)
            }
            ContactWrite::Status(report) => ContactAnswer::Found(
                self.ask_write(&key, |reply| ConvMsg::ProviderStatus {
                    seq: None,
                    report: report.clone(),
                    reply,
                })
                .await?,
            ),
            ContactWrite::Merge(m) => ContactAnswer::Conversation(
                self.ask_write(&key, |reply| ConvMsg::Merge {
                    from: m.from,
                    messages: m.messages.clone(),
                    identities: m.identities.clone(),
                    captured: Box::new((m.captured.clone(), m.journey.clone())),
                    reply,
                })
                .await?,
            ),
            ContactWrite::Link { phone } => {
                ContactAnswer::Conversation(self.link_here(&op.tenant, &op.contact, &phone).await?)
            }
        })
    }

    /// The conversation `op` writes to: the one its contact's alias names,
    /// unless it is addressed to the contact itself.
    fn contact_key(&self, op: &ContactOp) -> ConvKey {
        if op.write.unaliased() {
            ConvKey::new(&op.tenant, &op.contact)
        } else {
            self.key(&op.tenant, &op.contact)
        }
    }

    /// Delivers a due timer to its owner; resolves once the owner handled it.
    pub async fn fire_timer(&self, owner: TimerOwner, id: u64) -> Result<(), DeliverError> {
        match owner {
            TimerOwner::Conversation(conv) => {
                let Some(key) = self.key_of(conv).await? else {
                    return Ok(());
                };
                self.ask_write(&key, |reply| ConvMsg::FireTimer { id, reply })
                    .await
            }
            TimerOwner::Offer { conv, offer } => {
                self.ask_pool(|reply| crate::pool::PoolMsg::OfferDue {
                    conv: conv.0,
                    offer,
                    timer: id,
                    reply,
                })
                .await
            }
        }
    }

    /// Cancels a pending timer (on whichever node holds its conversation);
    /// false if unknown or already fired.
    pub async fn cancel_timer(&self, id: u64) -> Result<bool, DeliverError> {
        if self.cancel_timer_here(id).await? {
            return Ok(true);
        }
        Ok(match self.shared.cluster() {
            Some(cluster) => cluster.cancel_timer_elsewhere(id).await,
            None => false,
        })
    }

    /// Cancels a pending timer of a conversation this node holds.
    pub(crate) async fn cancel_timer_here(&self, id: u64) -> Result<bool, DeliverError> {
        let owner = self.shared.scheduler.owner(id).await.map_err(unavailable)?;
        match owner {
            // An offer ends when its agent answers or it expires.
            None | Some(TimerOwner::Offer { .. }) => Ok(false),
            Some(TimerOwner::Conversation(conv)) => {
                let Some(key) = self.key_of(conv).await? else {
                    return Ok(false);
                };
                self.ask_write(&key, |reply| ConvMsg::CancelTimer { id, reply })
                    .await
            }
        }
    }

    /// Simulated clock: fires every timer due at the clock's current time
    /// and returns once all were handled (including timers their handlers
    /// scheduled that were already due). Returns how many fired.
    /// With a simulated clock: handles every timer, offer and grace period
    /// that came due.
    pub async fn advance_timers(&self) -> Result<usize, DeliverError> {
        let fired = self.shared.scheduler.advance().await.map_err(unavailable)?;
        self.ask_pool(crate::pool::PoolMsg::Advance).await?;
        Ok(fired)
    }
}

/// A node answered a contact write with the answer of another kind of
/// write (a node of another version).
pub(super) fn mismatched(answer: ContactAnswer) -> DeliverError {
    DeliverError::Unavailable(format!("the owning node answered {answer:?}"))
}
