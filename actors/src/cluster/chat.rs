//! Web chat across nodes: a visitor's socket is on whichever node their
//! connection reached, and their conversation on its owner. What the owner
//! commits for the visitor (a bot or agent message on the web-chat channel,
//! never an internal entry) is cast to every live peer (`PoolTell::Chat`,
//! in order per sender), whose feed hands it to the listeners that want
//! relayed messages: the web-chat gateway, which pushes it to the sockets
//! it holds for that visitor, if any. Only web-chat outbound messages
//! travel, once per peer; a peer without the visitor's socket drops it.

use std::sync::{Arc, Weak};

use threadline_protocol::{Channel, ConversationId, Direction, Message};

use super::pool::PoolTell;
use super::Cluster;
use crate::feed::{Listener, Published};

/// Subscribed to this node's feed by `Cluster::start`.
pub(super) struct ChatRelay(pub(super) Weak<Cluster>);

impl Listener for ChatRelay {
    fn wants(&self, _: ConversationId, m: &Message) -> bool {
        m.channel == Channel::Webchat && m.direction == Direction::Outbound && !m.is_internal()
    }

    fn published(&self, p: &Published) {
        let Some(cluster) = self.0.upgrade() else {
            return;
        };
        let peers = cluster.peer_names();
        if peers.is_empty() {
            return;
        }
        let p = Box::new(p.clone());
        for peer in peers {
            // A peer that cannot be reached has no socket to push to.
            let _ = cluster.pool_tell(&peer, PoolTell::Chat(p.clone()));
        }
    }
}

impl Cluster {
    pub(super) fn relay_chat(self: &Arc<Self>) {
        self.node
            .feed()
            .subscribe(Arc::new(ChatRelay(Arc::downgrade(self))));
    }
}
