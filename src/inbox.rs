//! The business's inbox: the page (`src/http/inbox.html`, served at `/inbox`)
//! reads the conversation list and each conversation over the REST API
//! with the admin token; its socket (`/inbox/ws`, in `webchat/inbox.rs` beside the
//! other sockets) tells it which conversations changed, so it reads them
//! again.
//!
//! Changes come from the message feed (after each commit): `Watchers`
//! forwards the tenant and conversation of every recorded message to the
//! open inbox sockets over a bounded broadcast channel; with no socket
//! open it asks for nothing. A socket that falls behind gets `resync`.

use std::sync::atomic::{AtomicUsize, Ordering};

use threadline_actors::feed::{Listener, Published};
use threadline_protocol::{ConversationId, Message};
use tokio::sync::broadcast;

/// Changes queued for inbox sockets; one that falls further behind
/// resyncs.
const QUEUE: usize = 1024;

/// The open inbox sockets' view of the message feed.
pub struct Watchers {
    open: AtomicUsize,
    tx: broadcast::Sender<(String, ConversationId)>,
}

impl Watchers {
    /// A socket's view of the changes, counted as open until dropped.
    pub fn watch(&self) -> Watch<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        Watch {
            watchers: self,
            rx: self.tx.subscribe(),
        }
    }
}

/// One open inbox socket's changes.
pub struct Watch<'a> {
    watchers: &'a Watchers,
    pub rx: broadcast::Receiver<(String, ConversationId)>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.watchers.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            open: AtomicUsize::new(0),
            tx: broadcast::channel(QUEUE).0,
        }
    }
}

impl Listener for Watchers {
    fn wants(&self, _: ConversationId, _: &Message) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    fn published(&self, p: &Published) {
        let _ = self.tx.send((p.tenant.clone(), p.conversation));
    }
}
