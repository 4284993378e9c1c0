//! Conversations: the pure core, the actor shell around it, the supervisor
//! that activates, restarts and passivates them, and the directory of live
//! actors that the router reads.

pub mod actor;
pub mod core;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ractor::ActorRef;
use threadline_protocol::Timestamp;

pub use actor::{ConvError, ConvMsg, InboundAck};

/// Live conversation actors. Written only by the conversation supervisor
/// (insertions, removal of failed actors) and by an actor removing itself
/// when it passivates; read by everyone.
#[derive(Default)]
pub struct Directory {
    /// `tenant \0 address` → the live actor.
    pub by_key: DashMap<String, Entry>,
    /// conversation id → `tenant \0 address`, for resident conversations.
    pub by_id: DashMap<u64, String>,
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
    /// Removes `key` only if it still maps to the actor `id`.
    pub fn remove_if_actor(&self, key: &str, id: ractor::ActorId) -> bool {
        let removed = self
            .by_key
            .remove_if(key, |_, e| e.actor.get_id() == id)
            .is_some();
        if removed {
            self.by_id.retain(|_, k| k != key);
        }
        removed
    }
}
