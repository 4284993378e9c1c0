//! The router: the one way into conversations. (tenant, contact) → the live
//! actor, activating it through the supervisor when it is not resident.
//! Callers never hold actor refs; in a cluster the router alone passes a
//! command on to the node that owns its conversation.
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
//! they prove a number: then `Router::link` (`identity.rs`) moves their
//! messages into the phone's conversation and stores an alias (visitor →
//! phone) durably on every node; from then on every address is resolved
//! through the alias map before routing. The visitor's socket shows
//! only web-chat messages: a typed number proves nothing about who typed it,
//! so SMS and call history stay with the business.

use std::sync::Arc;
use std::time::Duration;

use threadline_protocol::codec::{self, DeadLetter, InboundMessage};
use threadline_protocol::ConversationId;
use tokio::sync::oneshot;

use crate::conversation::SupMsg;
use crate::conversation::{ConvError, ConvKey, ConvMsg, Entry, InboundMeta};
use crate::persistence::Op;
use crate::shared::Shared;

mod agents;
mod conversations;
mod identity;
mod local;

pub use crate::command::{AgentList, DeliverError, Delivered};

pub const MAX_HANDLER_FAILURES: u32 = 3;

/// Attempts to reach a live actor (stale directory entries, restarts).
const MAX_ROUTING_ATTEMPTS: u32 = 50;

/// The scheduler is not running: try again.
fn unavailable(e: crate::scheduler::Stopped) -> DeliverError {
    DeliverError::Unavailable(e.to_string())
}

/// The one way into conversations. Built only by the composition root
/// (`runtime`), and handed to every service that reaches a conversation.
#[derive(Clone)]
pub struct Router {
    pub(crate) shared: Arc<Shared>,
}

/// A router that does not keep the node's context alive (for what the
/// context itself holds, such as the feed's listeners).
#[derive(Clone)]
pub struct WeakRouter(std::sync::Weak<Shared>);

impl WeakRouter {
    /// The router, while the node runs.
    pub fn upgrade(&self) -> Option<Router> {
        self.0.upgrade().map(|shared| Router { shared })
    }
}

impl Router {
    pub fn downgrade(&self) -> WeakRouter {
        WeakRouter(Arc::downgrade(&self.shared))
    }

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
        if let Some(e) = self.shared.dir.get(key) {
            return Ok(e);
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

    /// `ask` for a command that writes (or sends). In a cluster it runs
    /// only where the conversation may be served (`Cluster::check_local`:
    /// joined, a majority of the cluster in reach, not moving): a node cut
    /// off from its cluster must not write, or send a message, for a
    /// conversation the others may have taken over. Refused: 503, the
    /// caller retries (the scheduler a second later).
    pub(super) async fn ask_write<T>(
        &self,
        key: &ConvKey,
        make: impl Fn(oneshot::Sender<Result<T, ConvError>>) -> ConvMsg,
    ) -> Result<T, DeliverError> {
        if let Some(cluster) = self.shared.cluster() {
            cluster.check_local(key).await?;
        }
        self.ask(key, make).await
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
        if let Some(k) = self.shared.dir.key_of(id.0) {
            return Ok(Some(k));
        }
        Ok(self
            .blocking(move |s| s.contact_of(id))
            .await?
            .map(|(t, c)| ConvKey::new(&t, &c)))
    }

    /// Has the supervisor evict and stop `key`'s actor, waiting for it with
    /// `wait`. Nothing to do while the supervisor is not running: its
    /// actors stopped with it, and the one that starts next begins with an
    /// empty directory.
    pub(crate) async fn stop_actor(&self, key: &ConvKey, why: &str, wait: bool) {
        let Some(sup) = self.shared.supervisor.read().clone() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        let stop = SupMsg::Stop {
            key: key.clone(),
            why: why.to_owned(),
            done: wait.then_some(tx),
        };
        if sup.cast(stop).is_ok() && wait {
            let _ = rx.await;
        }
    }

    /// Has the supervisor evict `key`'s actor, which passivates after what
    /// it has queued.
    pub(crate) fn passivate_actor(&self, key: &ConvKey) {
        if let Some(sup) = self.shared.supervisor.read().clone() {
            let _ = sup.cast(SupMsg::Passivate { key: key.clone() });
        }
    }

    pub fn resident(&self) -> usize {
        self.shared.dir.len()
    }
}
