//! The message feed: every message a conversation durably records, handed
//! to whoever listens (the web-chat gateway pushes bot and agent messages
//! to visitors' sockets; the agent pool follows its conversations). Called
//! after the commit, so a listener never sees what could still be lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use threadline_protocol::{ConversationId, Identities, Message};

/// One recorded message and where it belongs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub tenant: String,
    pub conversation: ConversationId,
    /// The address the conversation is keyed by.
    pub contact: String,
    pub identities: Identities,
    pub message: Message,
}

pub trait Listener: Send + Sync + 'static {
    /// Whether this listener wants `m` at all; asked before the message is
    /// copied for publishing, on the conversation's own task.
    fn wants(&self, conv: ConversationId, m: &Message) -> bool;
    /// Must not block: it runs on the storage writer's completion path.
    fn published(&self, p: &Published);
    /// Whether it also wants the messages other nodes of the cluster
    /// commit (`Feed::publish_relayed`): the web-chat gateway does, since a
    /// visitor's socket may be on any node.
    fn relayed(&self) -> bool {
        false
    }
}

#[derive(Default)]
pub struct Feed {
    listeners: RwLock<Vec<Arc<dyn Listener>>>,
    any: AtomicBool,
}

impl Feed {
    pub fn subscribe(&self, l: Arc<dyn Listener>) {
        self.listeners.write().push(l);
        self.any.store(true, Ordering::Release);
    }

    /// Whether anyone wants `m` (cheap when nobody listens).
    pub fn wants(&self, conv: ConversationId, m: &Message) -> bool {
        self.any.load(Ordering::Acquire) && self.listeners.read().iter().any(|l| l.wants(conv, m))
    }

    /// A message another node committed, for the listeners that want
    /// those.
    pub fn publish_relayed(&self, p: &Published) {
        for l in self.listeners.read().iter() {
            if l.relayed() && l.wants(p.conversation, &p.message) {
                l.published(p);
            }
        }
    }

    pub fn publish(&self, p: &Published) {
        for l in self.listeners.read().iter() {
            if l.wants(p.conversation, &p.message) {
                l.published(p);
            }
        }
    }
}
