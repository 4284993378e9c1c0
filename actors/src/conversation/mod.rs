//! Conversations: the pure core, the actor shell around it, the supervisor
//! that activates, restarts and passivates them, and the directory of live
//! actors that the router reads.

pub mod actor;
mod msg;
pub mod supervisor;

pub use threadline_core::conversation::core;

use std::borrow::Borrow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ractor::ActorRef;
use threadline_protocol::Timestamp;

pub use msg::{ConvError, ConvMsg, InboundAck, InboundMeta};

/// The routing key of a conversation: `tenant \0 address`, shared (one
/// allocation) by the directory, the supervisor and the actor.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConvKey(Arc<str>);

impl ConvKey {
    pub fn new(tenant: &str, contact: &str) -> ConvKey {
        ConvKey(crate::store::contact_key(tenant, contact).into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn tenant(&self) -> &str {
        self.0.split_once('\0').map_or("", |(t, _)| t)
    }
    pub fn contact(&self) -> &str {
        self.0.split_once('\0').map_or("", |(_, c)| c)
    }
}

impl Borrow<str> for ConvKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant(), self.contact())
    }
}

/// Live conversation actors. Private to this module: written only by the
/// conversation supervisor (insertions, removal of failed actors), by an
/// actor removing itself when it passivates, and through the evictions
/// below (`stop`, `stop_and_wait`, `passivate`), which only the supervisor
/// calls (others ask it: `SupMsg::Stop`, `SupMsg::Passivate`); read by
/// everyone through its methods.
#[derive(Default)]
pub struct Directory {
    /// `tenant \0 address` → the live actor.
    by_key: DashMap<ConvKey, Entry>,
    /// conversation id → key, for resident conversations.
    by_id: DashMap<u64, ConvKey>,
}

#[derive(Clone)]
pub struct Entry {
    pub actor: ActorRef<ConvMsg>,
    pub meta: Arc<EntryMeta>,
}

#[derive(Default)]
pub struct EntryMeta {
    /// Last time (injected clock, ms) the actor handled a message.
    pub last_active: AtomicI64,
    /// Set once a passivation was requested, so sweeps do not ask twice.
    pub passivating: AtomicBool,
    /// The conversation id once known (0 = none yet).
    pub conv_id: AtomicU64,
}

impl EntryMeta {
    pub fn touch(&self, now: Timestamp) {
        self.last_active.store(now.0, Ordering::Relaxed);
    }
}

impl Directory {
    /// The live actor of `key`, if resident.
    pub fn get(&self, key: &ConvKey) -> Option<Entry> {
        self.by_key.get(key).map(|e| e.value().clone())
    }

    pub fn contains(&self, key: &ConvKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// The key of resident conversation `id`.
    pub fn key_of(&self, id: u64) -> Option<ConvKey> {
        self.by_id.get(&id).map(|k| k.value().clone())
    }

    /// How many conversations are resident.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every resident conversation's actor.
    pub fn actors(&self) -> Vec<ActorRef<ConvMsg>> {
        self.by_key
            .iter()
            .map(|e| e.value().actor.clone())
            .collect()
    }

    /// Evicts `key`'s actor and stops it (it is no longer the owner's:
    /// fenced). Messages it had queued are dropped; their callers retry.
    pub(in crate::conversation) fn stop(&self, key: &ConvKey, why: &str) {
        if let Some(e) = self.get(key) {
            self.remove_if_actor(key, e.actor.get_id());
            e.actor.stop(Some(why.to_owned()));
        }
    }

    /// Evicts `key`'s actor, stops it and waits for it (at most 5 s): its
    /// conversation moves to another node.
    pub(in crate::conversation) async fn stop_and_wait(&self, key: &ConvKey, why: &str) {
        if let Some(e) = self.get(key) {
            self.remove_if_actor(key, e.actor.get_id());
            let _ = e
                .actor
                .stop_and_wait(
                    Some(why.to_owned()),
                    Some(std::time::Duration::from_secs(5)),
                )
                .await;
        }
    }

    /// Evicts `key`'s actor (nothing is routed to it any more) and lets it
    /// passivate after what it has queued.
    pub(in crate::conversation) fn passivate(&self, key: &ConvKey) {
        if let Some(e) = self.get(key) {
            self.remove_if_actor(key, e.actor.get_id());
            e.actor.cast(ConvMsg::Passivate { idle_before: None }).ok();
        }
    }

    /// Removes `key` only if it still maps to the actor `id`.
    pub(in crate::conversation) fn remove_if_actor(
        &self,
        key: &ConvKey,
        id: ractor::ActorId,
    ) -> bool {
        match self.by_key.remove_if(key, |_, e| e.actor.get_id() == id) {
            Some((_, e)) => {
                let conv = e.meta.conv_id.load(Ordering::Relaxed);
                self.by_id.remove_if(&conv, |_, k| k == key);
                true
            }
            None => false,
        }
    }
}

/// What the conversation supervisor (`supervisor.rs`) is asked: the
/// message of its handle, kept here so that what holds the handle does not
/// depend on the supervisor's module.
#[derive(ractor_cluster::RactorMessage)]
pub enum SupMsg {
    Activate {
        key: ConvKey,
        reply: tokio::sync::oneshot::Sender<Result<Entry, String>>,
    },
    /// Passivate idle conversations and enforce the resident cap.
    Sweep,
    /// Evict and stop `key`'s actor (fenced, or moving to another node);
    /// `done` answers once it has stopped (at most 5 s).
    Stop {
        key: ConvKey,
        why: String,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// Evict `key`'s actor and let it passivate after what it has queued.
    Passivate { key: ConvKey },
}
