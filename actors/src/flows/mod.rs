//! Conversation flows: built-in understanding (`nlu`) and the flow engine
//! that turns a tenant's flow file into replies, captured facts and
//! escalations.

pub mod engine;
pub mod nlu;

/// What an external responder is asked for one reply.
#[derive(Debug, Clone)]
pub struct ResponderRequest {
    pub tenant: String,
    pub persona: String,
    /// What the conversation knows (name, intent, slots, facts).
    pub facts: Vec<(String, String)>,
    /// Recent transcript, oldest first: (who, text).
    pub transcript: Vec<(String, String)>,
    /// The built-in flow's reply, sent if the responder fails.
    pub draft: String,
}

/// An external responder (an LLM endpoint): only `src/` knows its wire
/// format. Errors and timeouts fall back to the draft.
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, req: ResponderRequest) -> crate::sender::BoxFuture<Result<String, String>>;
    /// How long a reply may take before the draft goes out instead.
    fn timeout(&self) -> std::time::Duration;
}

use dashmap::DashMap;
use threadline_protocol::Timestamp;

use crate::store::{slot_key, CalendarWrite, SlotHold};

/// The node's calendar as one conversation sees it: holds are atomic in
/// the shared map (one customer per slot, across all conversations), and
/// each change becomes a write committed with the conversation's events.
pub struct SharedCalendar<'a> {
    pub map: &'a DashMap<String, SlotHold>,
    pub tenant: &'a str,
    pub conv: u64,
    pub now: Timestamp,
    pub writes: &'a mut Vec<CalendarWrite>,
}

impl engine::Calendar for SharedCalendar<'_> {
    fn hold(&mut self, start: Timestamp, until: Timestamp) -> bool {
        let key = slot_key(self.tenant, start);
        let mine = SlotHold {
            conv: self.conv,
            booked: false,
            until,
        };
        let taken = match self.map.entry(key.clone()) {
            dashmap::Entry::Vacant(v) => {
                v.insert(mine);
                true
            }
            dashmap::Entry::Occupied(mut o) => {
                let h = *o.get();
                if h.conv == self.conv {
                    o.insert(SlotHold {
                        booked: h.booked,
                        ..mine
                    });
                    true
                } else if !h.booked && h.until.0 <= self.now.0 {
                    // Another customer's hold lapsed.
                    o.insert(mine);
                    true
                } else {
                    false
                }
            }
        };
        if taken {
            let h = *self.map.get(&key).expect("just written");
            self.writes.push(CalendarWrite::Put(key, h));
        }
        taken
    }

    fn release(&mut self, start: Timestamp) {
        let key = slot_key(self.tenant, start);
        if self
            .map
            .remove_if(&key, |_, h| h.conv == self.conv)
            .is_some()
        {
            self.writes.push(CalendarWrite::Delete(key));
        }
    }

    fn book(&mut self, start: Timestamp) -> bool {
        let key = slot_key(self.tenant, start);
        let booked = match self.map.get_mut(&key) {
            Some(mut h) if h.conv == self.conv => {
                h.booked = true;
                Some(*h)
            }
            _ => None,
        };
        match booked {
            Some(h) => {
                self.writes.push(CalendarWrite::Put(key, h));
                true
            }
            None => false,
        }
    }
}
