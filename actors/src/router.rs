//! The router: the one way into conversations. (tenant, contact) → the live
//! actor, activating it through the supervisor when it is not resident.
//! Callers never hold actor refs; a later cluster layer can forward to a
//! remote owner here without touching them.
//!
//! Delivery is at-least-once towards the actor and idempotent inside it:
//! when an actor stops with the message still queued (passivation, a
//! restart), the message was not recorded and is sent again. A message that
//! makes the conversation's handler fail `MAX_HANDLER_FAILURES` times is
//! parked in the dead-letter table instead.
//!
//! # Identity
//!
//! A conversation is keyed by (tenant, address); the phone number in E.164 is
//! the address shared by SMS, voice and WhatsApp (`wa_id` digits get their
//! `+`). A WhatsApp user without a number (a business-scoped id) keys their
//! own conversation. A web-chat visitor is keyed by their visitor id until
//! they give a number: then `Router::link` moves their messages into the
//! phone's conversation and stores an alias (visitor → phone) in the same
//! kind of durable write as everything else; from then on every address is
//! resolved through the alias map before routing. The visitor's socket shows
//! only web-chat messages: a typed number proves nothing about who typed it,
//! so SMS and call history stay with the business.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use threadline_protocol::codec::{self, DeadLetter, InboundMessage, TimerOwner};
use threadline_protocol::{ConversationId, ConversationState};
use tokio::sync::oneshot;

use crate::cluster::{ConvAnswer, ConvOp, PoolAsk, SessionHandle};
use crate::conversation::core::TimerSpec;
use crate::conversation::supervisor::SupMsg;
use crate::conversation::{ConvError, ConvKey, ConvMsg, Entry, InboundAck, InboundMeta};
use crate::persistence::Op;
use crate::runtime::Shared;

pub const MAX_HANDLER_FAILURES: u32 = 3;

/// Agents with their presence and whether a desktop is connected.
pub type AgentList = Vec<(
    crate::pool::routing::AgentSpec,
    crate::pool::routing::Presence,
    bool,
)>;
/// Attempts to reach a live actor (stale directory entries, restarts).
const MAX_ROUTING_ATTEMPTS: u32 = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Recorded(InboundAck),
    DeadLettered {
        conversation: Option<ConversationId>,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliverError {
    #[error("the node is not accepting work: {0}")]
    Unavailable(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

/// The scheduler is not running: try again.
fn unavailable(e: crate::scheduler::Stopped) -> DeliverError {
    DeliverError::Unavailable(e.to_string())
}

#[derive(Clone)]
pub struct Router {
    pub(crate) shared: Arc<Shared>,
}

impl Router {
    /// The routing key of `contact`: the address it is an alias of, if any.
    pub fn key(&self, tenant: &str, contact: &str) -> ConvKey {
        if !self.shared.aliases.is_empty() {
            let k = crate::store::contact_key(tenant, contact);
            if let Some(target) = self.shared.aliases.get(&k) {
                return ConvKey::new(tenant, target.value());
            }
        }
        ConvKey::new(tenant, contact)
    }

    async fn entry(&self, key: &ConvKey) -> Result<Entry, DeliverError> {
        if let Some(e) = self.shared.dir.by_key.get(key) {
            return Ok(e.clone());
        }
        let sup = self
            .shared
            .supervisor
            .read()
            .clone()
            .ok_or_else(|| DeliverError::Unavailable("conversations are not running".into()))?;
        let (tx, rx) = oneshot::channel();
        sup.cast(SupMsg::Activate {
            key: key.clone(),
            reply: tx,
        })
        .map_err(|_| DeliverError::Unavailable("conversation supervisor stopped".into()))?;
        match rx.await {
            Ok(Ok(e)) => Ok(e),
            Ok(Err(e)) => Err(DeliverError::Unavailable(e)),
            Err(_) => Err(DeliverError::Unavailable(
                "conversation supervisor stopped".into(),
            )),
        }
    }

    async fn backoff(attempt: u32) {
        if attempt < 3 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)))).await;
        }
    }

    /// Records an inbound message in the contact's conversation; resolves
    /// once it is durable.
    pub async fn deliver(
        &self,
        tenant: &str,
        contact: &str,
        msg: InboundMessage,
    ) -> Result<Delivered, DeliverError> {
        self.deliver_with(tenant, contact, msg, InboundMeta::default())
            .await
    }

    /// `deliver`, with what the provider said beyond the message. In a
    /// cluster, a conversation another node owns is delivered there and
    /// the owner's durable ack returned.
    pub async fn deliver_with(
        &self,
        tenant: &str,
        contact: &str,
        msg: InboundMessage,
        meta: InboundMeta,
    ) -> Result<Delivered, DeliverError> {
        if let Some(cluster) = self.shared.cluster() {
            let key = self.key(tenant, contact);
            if let Some(owner) = cluster.remote_owner(&key) {
                return cluster.forward(&owner, &key, msg, meta).await;
            }
        }
        self.deliver_local(tenant, contact, msg, meta).await
    }

    /// Delivers to the conversation on this node, whoever owns it.
    pub(crate) async fn deliver_local(
        &self,
        tenant: &str,
        contact: &str,
        msg: InboundMessage,
        meta: InboundMeta,
    ) -> Result<Delivered, DeliverError> {
        let key = self.key(tenant, contact);
        if let Some(cluster) = self.shared.cluster() {
            cluster.check_local(&key).await?;
        }
        let mut failures = 0;
        let mut last_failure = String::new();
        for attempt in 0..MAX_ROUTING_ATTEMPTS {
            let entry = self.entry(&key).await?;
            let (tx, rx) = oneshot::channel();
            let sent = entry.actor.cast(ConvMsg::Inbound {
                msg: msg.clone(),
                meta: meta.clone(),
                reply: tx,
            });
            if sent.is_err() {
                Self::backoff(attempt).await;
                continue;
            }
            match rx.await {
                Ok(Ok(ack)) => {
                    tracing::debug!(
                        conv = ack.conversation.0,
                        seq = ack.message.seq,
                        duplicate = ack.duplicate,
                        pid = ?msg.provider_message_id,
                        "inbound recorded"
                    );
                    return Ok(Delivered::Recorded(ack));
                }
                Ok(Err(ConvError::Panicked(why))) => {
                    failures += 1;
                    last_failure = why;
                    if failures >= MAX_HANDLER_FAILURES {
                        return self
                            .dead_letter(tenant, contact, msg, failures, last_failure)
                            .await;
                    }
                }
                Ok(Err(ConvError::Storage(e))) => return Err(DeliverError::Storage(e)),
                Ok(Err(ConvError::Unavailable(e))) => return Err(DeliverError::Unavailable(e)),
                // The actor stopped before handling it: not recorded, resend.
                Err(_) => Self::backoff(attempt).await,
            }
        }
        Err(DeliverError::Unavailable(format!(
            "conversation unreachable after {MAX_ROUTING_ATTEMPTS} attempts {last_failure}"
        )))
    }

    async fn dead_letter(
        &self,
        tenant: &str,
        contact: &str,
        message: InboundMessage,
        attempts: u32,
        error: String,
    ) -> Result<Delivered, DeliverError> {
        let (t, c) = (tenant.to_owned(), contact.to_owned());
        let conversation = self
            .blocking(move |s| s.conversation_of(&t, &c))
            .await
            .ok()
            .flatten();
        let bytes = codec::encode_dead_letter(&DeadLetter {
            tenant: tenant.to_owned(),
            contact: contact.to_owned(),
            conversation,
            message,
            attempts,
            error,
            at: self.shared.clock.now(),
        });
        let (tx, rx) = oneshot::channel();
        self.shared
            .persistence
            .submit(Op::DeadLetter {
                bytes,
                done: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            })
            .await
            .map_err(|e| DeliverError::Unavailable(e.to_string()))?;
        match rx.await {
            Ok(Ok(())) => {
                self.shared.metrics.dead_letters.inc();
                tracing::error!(
                    tenant,
                    contact,
                    "message dead-lettered after {attempts} failures"
                );
                Ok(Delivered::DeadLettered { conversation })
            }
            Ok(Err(e)) => Err(DeliverError::Storage(e.to_string())),
            Err(_) => Err(DeliverError::Unavailable("storage writer stopped".into())),
        }
    }

    /// Sends a request to the conversation of `key` and waits for its
    /// answer, resending when the actor stopped before handling it.
    async fn ask<T>(
        &self,
        key: &ConvKey,
        make: impl Fn(oneshot::Sender<Result<T, ConvError>>) -> ConvMsg,
    ) -> Result<T, DeliverError> {
        for attempt in 0..MAX_ROUTING_ATTEMPTS {
            let entry = self.entry(key).await?;
            let (tx, rx) = oneshot::channel();
            if entry.actor.cast(make(tx)).is_ok() {
                match rx.await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(ConvError::Unavailable(e))) => return Err(DeliverError::Unavailable(e)),
                    Ok(Err(e)) => return Err(DeliverError::Storage(e.to_string())),
                    Err(_) => {}
                }
            }
            Self::backoff(attempt).await;
        }
        Err(DeliverError::Unavailable("conversation unreachable".into()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, DeliverError> {
        let store = self.shared.persistence.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| DeliverError::Storage(e.to_string()))?
            .map_err(|e| DeliverError::Storage(e.to_string()))
    }

    /// The routing key of a conversation id, if the conversation exists.
    async fn key_of(&self, id: ConversationId) -> Result<Option<ConvKey>, DeliverError> {
        if let Some(k) = self.shared.dir.by_id.get(&id.0) {
            return Ok(Some(k.clone()));
        }
        Ok(self
            .blocking(move |s| s.contact_of(id))
            .await?
            .map(|(t, c)| ConvKey::new(&t, &c)))
    }

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
        if !self.shared.dir.by_key.contains_key(&key) {
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
        let Some(key) = self.key_of(id).await? else {
            return Ok(None);
        };
        self.ask(&key, |reply| ConvMsg::ScheduleTimer {
            spec: spec.clone(),
            reply,
        })
        .await
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
        let key = self.key(tenant, contact);
        self.ask(&key, |reply| ConvMsg::SendMessage {
            spec: spec.clone(),
            create: true,
            reply,
        })
        .await?
        .ok_or_else(|| DeliverError::Storage("conversation was not created".into()))
    }

    /// Records what is known of a contact (a `ConvEvent::ContactUpdated`);
    /// resolves with the conversation once durable.
    pub async fn update_contact(
        &self,
        tenant: &str,
        contact: &str,
        update: threadline_protocol::ConvEvent,
    ) -> Result<ConversationState, DeliverError> {
        let key = self.key(tenant, contact);
        self.ask(&key, |reply| ConvMsg::UpdateContact {
            update: update.clone(),
            reply,
        })
        .await
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
        let key = self.key(tenant, contact);
        self.ask(&key, |reply| ConvMsg::Call {
            event: event.clone(),
            reply,
        })
        .await
    }

    /// A provider's delivery report, for message `seq` of conversation
    /// `conv`. False if there is no such conversation.
    pub async fn provider_status(
        &self,
        conv: ConversationId,
        seq: u32,
        report: crate::conversation::core::DeliveryReport,
    ) -> Result<bool, DeliverError> {
        let Some(key) = self.key_of(conv).await? else {
            return Ok(false);
        };
        self.ask(&key, |reply| ConvMsg::ProviderStatus {
            seq: Some(seq),
            report: report.clone(),
            reply,
        })
        .await
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
        let key = self.key(tenant, contact);
        self.ask(&key, |reply| ConvMsg::ProviderStatus {
            seq: None,
            report: report.clone(),
            reply,
        })
        .await
    }

    /// Joins the conversation of `alias` (a web-chat visitor) to the one of
    /// `canonical` (their phone number): the phone conversation takes over
    /// the visitor's messages and addresses, the alias is stored, and the
    /// visitor's own conversation closes. Every step is idempotent, so a
    /// crash part-way is repaired by linking again. Returns the joined
    /// conversation.
    pub async fn link(
        &self,
        tenant: &str,
        alias: &str,
        canonical: &str,
    ) -> Result<ConversationId, DeliverError> {
        let alias_key = ConvKey::new(tenant, alias);
        let target = self.key(tenant, canonical);
        if alias_key == target {
            return self
                .view(tenant, canonical)
                .await?
                .map(|s| s.id)
                .ok_or_else(|| DeliverError::Storage("no conversation to link".into()));
        }
        let before = self
            .ask(&alias_key, |reply| ConvMsg::View { reply })
            .await?;
        let (from, messages, mut identities, captured, journey) = match &before {
            Some(s) => (
                s.id,
                s.messages.clone(),
                s.identities.clone(),
                s.captured.clone(),
                s.journey.clone(),
            ),
            None => (
                ConversationId(0),
                Vec::new(),
                Default::default(),
                Default::default(),
                Default::default(),
            ),
        };
        identities.phone = identities.phone.or(Some(canonical.to_owned()));
        let joined = self
            .ask(&target, |reply| ConvMsg::Merge {
                from,
                messages: messages.clone(),
                identities: identities.clone(),
                captured: Box::new((captured.clone(), journey.clone())),
                reply,
            })
            .await?;
        let (tx, rx) = oneshot::channel();
        let alias_row = crate::store::contact_key(tenant, alias);
        self.shared
            .persistence
            .submit(Op::Alias {
                alias: alias_row.clone(),
                target: target.contact().to_owned(),
                done: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            })
            .await
            .map_err(|e| DeliverError::Unavailable(e.to_string()))?;
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(DeliverError::Storage(e.to_string())),
            Err(_) => return Err(DeliverError::Unavailable("storage writer stopped".into())),
        }
        self.shared
            .aliases
            .insert(alias_row, target.contact().to_owned());
        if before.is_some() {
            self.ask(&alias_key, |reply| ConvMsg::CloseMerged {
                into: joined,
                reply,
            })
            .await?;
            // The closed conversation's actor is no longer routed to.
            if let Some((_, e)) = self.shared.dir.by_key.remove(&alias_key) {
                e.actor.cast(ConvMsg::Passivate { idle_before: None }).ok();
            }
        }
        Ok(joined)
    }

    async fn ask_conv<T>(
        &self,
        conv: ConversationId,
        make: impl Fn(oneshot::Sender<Result<T, ConvError>>) -> ConvMsg,
    ) -> Result<Option<T>, DeliverError> {
        let Some(key) = self.key_of(conv).await? else {
            return Ok(None);
        };
        self.ask(&key, make).await.map(Some)
    }

    /// Asks for a person for conversation `conv` (the pool is told once it
    /// is durable). `Some(false)`: an agent already holds it; `None`: no
    /// such conversation.
    pub async fn escalate(
        &self,
        conv: ConversationId,
        reason: &str,
        skills: Vec<String>,
        priority: i32,
    ) -> Result<Option<bool>, DeliverError> {
        self.ask_conv(conv, |reply| ConvMsg::Escalate {
            reason: reason.to_owned(),
            skills: skills.clone(),
            priority,
            reply,
        })
        .await
    }

    /// Records who holds conversation `conv`.
    pub async fn assign(
        &self,
        conv: ConversationId,
        agent: Option<String>,
    ) -> Result<(), DeliverError> {
        self.conv_op(ConvOp::Assign(conv, agent), true)
            .await
            .map(|_| ())
    }

    /// A system note in the transcript of `conv`.
    /// A private note on `conv` (an internal entry); false: no such
    /// conversation.
    pub async fn add_note(&self, conv: ConversationId, text: String) -> Result<bool, DeliverError> {
        Ok(self
            .conv_op(ConvOp::Note(conv, text), true)
            .await?
            .is_some())
    }

    pub async fn note(&self, conv: ConversationId, text: String) -> Result<(), DeliverError> {
        self.conv_op(ConvOp::Note(conv, text), true)
            .await
            .map(|_| ())
    }

    /// The business records how the booked appointment of `conv` went.
    /// `None`: no such conversation.
    pub async fn booking_outcome(
        &self,
        conv: ConversationId,
        outcome: crate::conversation::core::BookingOutcome,
    ) -> Result<Option<Result<(), crate::conversation::core::BookingOutcomeError>>, DeliverError>
    {
        self.ask_conv(conv, |reply| ConvMsg::BookingOutcome { outcome, reply })
            .await
    }

    /// An agent closes `conv` with a disposition.
    pub async fn close_by_agent(
        &self,
        conv: ConversationId,
        agent: &str,
        disposition: &str,
    ) -> Result<(), DeliverError> {
        let op = ConvOp::Close {
            conv,
            agent: agent.to_owned(),
            disposition: disposition.to_owned(),
        };
        self.conv_op(op, true).await.map(|_| ())
    }

    /// A write the agent pool makes to a conversation: here when this node
    /// holds it, else (with `forward`, in a cluster) on the node that does.
    /// `None`: no such conversation.
    pub(crate) async fn conv_op(
        &self,
        op: ConvOp,
        forward: bool,
    ) -> Result<Option<ConvAnswer>, DeliverError> {
        let id = op.conversation();
        let Some(key) = self.key_of(id).await? else {
            return match self.shared.cluster().filter(|_| forward) {
                Some(c) => c.conv_op(op).await,
                None => Ok(None),
            };
        };
        let watched = &self.shared.pool_watched;
        Ok(Some(match op {
            ConvOp::Assign(_, agent) => {
                let taken = agent.is_some();
                self.ask(&key, |reply| ConvMsg::Assign {
                    agent: agent.clone(),
                    reply,
                })
                .await?;
                // The feed hands this node's messages of held
                // conversations to the pool, wherever it runs.
                watched.set(id, taken);
                ConvAnswer::Done
            }
            ConvOp::Note(_, text) => {
                self.ask(&key, |reply| ConvMsg::Note {
                    text: text.clone(),
                    reply,
                })
                .await?;
                ConvAnswer::Done
            }
            ConvOp::Close {
                agent, disposition, ..
            } => {
                self.ask(&key, |reply| ConvMsg::CloseByAgent {
                    agent: agent.clone(),
                    disposition: disposition.clone(),
                    reply,
                })
                .await?;
                watched.set(id, false);
                ConvAnswer::Done
            }
            ConvOp::Send(_, spec) => {
                let sent = self
                    .ask(&key, |reply| ConvMsg::SendMessage {
                        spec: spec.clone(),
                        create: false,
                        reply,
                    })
                    .await?;
                match sent {
                    Some((_, outcome)) => ConvAnswer::Sent(outcome),
                    None => return Ok(None),
                }
            }
        }))
    }

    /// The cluster and the agent pool's home, when the home is another node.
    fn remote_pool(&self) -> Option<(Arc<crate::cluster::Cluster>, String)> {
        let c = self.shared.cluster()?;
        let home = c.pool_home()?;
        Some((c, home))
    }

    fn pool(&self) -> Result<ActorRef<crate::pool::PoolMsg>, DeliverError> {
        self.shared
            .pool
            .read()
            .clone()
            .ok_or_else(|| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// Casts to this node's pool actor (what the cluster passes on to it).
    pub(crate) fn pool_here(&self, msg: crate::pool::PoolMsg) {
        if let Ok(p) = self.pool() {
            let _ = p.cast(msg);
        }
    }

    async fn ask_pool<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> crate::pool::PoolMsg,
    ) -> Result<T, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.pool()?
            .cast(make(tx))
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))?;
        rx.await
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// Adds or replaces a human agent (here, and on the pool's home).
    pub fn upsert_agent(&self, spec: crate::pool::routing::AgentSpec) -> Result<(), DeliverError> {
        if let Some((c, home)) = self.remote_pool() {
            c.tell_upsert(&home, spec.clone())?;
        }
        self.shared.remember_agent(Some(&spec), &spec.id);
        self.pool()?
            .cast(crate::pool::PoolMsg::Upsert(spec))
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// Removes a human agent; false if unknown.
    pub async fn remove_agent(&self, id: &str) -> Result<bool, DeliverError> {
        let here = self.remove_agent_here(id).await?;
        match self.remote_pool() {
            Some((c, home)) => c.pool_ask(&home, &PoolAsk::Remove(id.to_owned())).await,
            None => Ok(here),
        }
    }

    pub(crate) async fn remove_agent_here(&self, id: &str) -> Result<bool, DeliverError> {
        self.shared.remember_agent(None, id);
        self.ask_pool(|reply| crate::pool::PoolMsg::Remove(id.to_owned(), reply))
            .await
    }

    /// Every agent with presence and whether a desktop is connected (as
    /// the pool's home knows them).
    pub async fn agents(&self) -> Result<AgentList, DeliverError> {
        match self.remote_pool() {
            Some((c, home)) => c.pool_ask(&home, &PoolAsk::List).await,
            None => self.agents_here().await,
        }
    }

    pub(crate) async fn agents_here(&self) -> Result<AgentList, DeliverError> {
        self.ask_pool(crate::pool::PoolMsg::List).await
    }

    pub async fn queue_stats(
        &self,
        tenant: &str,
    ) -> Result<crate::pool::routing::QueueStats, DeliverError> {
        match self.remote_pool() {
            Some((c, home)) => c.pool_ask(&home, &PoolAsk::Stats(tenant.to_owned())).await,
            None => self.queue_stats_here(tenant).await,
        }
    }

    pub(crate) async fn queue_stats_here(
        &self,
        tenant: &str,
    ) -> Result<crate::pool::routing::QueueStats, DeliverError> {
        self.ask_pool(|reply| crate::pool::PoolMsg::Stats {
            tenant: tenant.to_owned(),
            reply,
        })
        .await
    }

    /// Whether some agent of `tenant` could take a call right now.
    pub async fn can_take_call(&self, tenant: &str) -> Result<bool, DeliverError> {
        match self.remote_pool() {
            Some((c, home)) => {
                c.pool_ask(&home, &PoolAsk::CanTakeCall(tenant.to_owned()))
                    .await
            }
            None => self.can_take_call_here(tenant).await,
        }
    }

    pub(crate) async fn can_take_call_here(&self, tenant: &str) -> Result<bool, DeliverError> {
        self.ask_pool(|reply| crate::pool::PoolMsg::CanTakeCall {
            tenant: tenant.to_owned(),
            reply,
        })
        .await
    }

    /// Starts a desktop session for `agent`; its events arrive on `events`.
    /// In a cluster whose pool runs elsewhere, the session is on the
    /// pool's home and its events are relayed here.
    pub async fn join_agent(
        &self,
        agent: &str,
        events: tokio::sync::mpsc::Sender<crate::pool::AgentEvent>,
    ) -> Result<Result<SessionHandle, String>, DeliverError> {
        if let Some((c, home)) = self.remote_pool() {
            return c.join_relayed(&home, agent, events).await;
        }
        Ok(self
            .join_agent_here(agent, events)
            .await?
            .map(SessionHandle::Local))
    }

    pub(crate) async fn join_agent_here(
        &self,
        agent: &str,
        events: tokio::sync::mpsc::Sender<crate::pool::AgentEvent>,
    ) -> Result<Result<ActorRef<crate::pool::SessionMsg>, String>, DeliverError> {
        self.ask_pool(|reply| crate::pool::PoolMsg::Join {
            agent: agent.to_owned(),
            events,
            reply,
        })
        .await
    }

    /// A command from `agent`'s desktop.
    pub fn agent_command(
        &self,
        agent: &str,
        cmd: crate::pool::AgentCommand,
    ) -> Result<(), DeliverError> {
        if let Some((c, home)) = self.remote_pool() {
            return c.tell_command(&home, agent, cmd);
        }
        self.pool()?
            .cast(crate::pool::PoolMsg::Command {
                agent: agent.to_owned(),
                cmd,
            })
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// A committed escalation, for the pool wherever it runs.
    pub(crate) fn escalated(&self, e: crate::pool::Escalation) {
        match self.remote_pool() {
            Some((c, home)) => c.tell_escalated(&home, e),
            None => self.pool_here(crate::pool::PoolMsg::Escalate(e)),
        }
    }

    /// A committed message of a conversation an agent holds, for the pool
    /// wherever it runs.
    pub(crate) fn published_to_pool(&self, p: &crate::feed::Published) {
        match self.remote_pool() {
            Some((c, home)) => c.tell_published(&home, p.conversation, p.message.clone()),
            None => self.pool_here(crate::pool::PoolMsg::Published {
                conversation: p.conversation,
                message: Box::new(p.message.clone()),
            }),
        }
    }

    /// The pool's rows of the conversations this node holds (not of its
    /// replicas, nor of conversations that moved away).
    pub(crate) async fn held_work(
        &self,
    ) -> Result<Vec<threadline_protocol::AgentWork>, DeliverError> {
        self.blocking(|s| {
            let mut rows = s.agent_work()?;
            let mut held = Vec::with_capacity(rows.len());
            for w in rows.drain(..) {
                if s.contact_of(w.conv)?.is_some() {
                    held.push(w);
                }
            }
            Ok(held)
        })
        .await
    }

    /// Records a consent change for a contact; resolves once durable.
    pub async fn record_consent(
        &self,
        tenant: &str,
        contact: &str,
        change: threadline_protocol::ConsentChange,
    ) -> Result<ConversationId, DeliverError> {
        let key = self.key(tenant, contact);
        self.ask(&key, |reply| ConvMsg::RecordConsent {
            change: change.clone(),
            reply,
        })
        .await
    }

    /// Delivers a due timer to its owner; resolves once the owner handled it.
    pub async fn fire_timer(&self, owner: TimerOwner, id: u64) -> Result<(), DeliverError> {
        match owner {
            TimerOwner::Conversation(conv) => {
                let Some(key) = self.key_of(conv).await? else {
                    return Ok(());
                };
                self.ask(&key, |reply| ConvMsg::FireTimer { id, reply })
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

    /// Cancels a pending timer; false if unknown or already fired.
    pub async fn cancel_timer(&self, id: u64) -> Result<bool, DeliverError> {
        let owner = self.shared.scheduler.owner(id).await.map_err(unavailable)?;
        match owner {
            // An offer ends when its agent answers or it expires.
            None | Some(TimerOwner::Offer { .. }) => Ok(false),
            Some(TimerOwner::Conversation(conv)) => {
                let Some(key) = self.key_of(conv).await? else {
                    return Ok(false);
                };
                self.ask(&key, |reply| ConvMsg::CancelTimer { id, reply })
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

    pub fn resident(&self) -> usize {
        self.shared.dir.by_key.len()
    }
}
