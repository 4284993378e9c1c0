//! Conversation flows: built-in understanding (`nlu`) and the flow engine
//! that turns a tenant's flow file into replies, captured facts and
//! escalations.
//!
//! # Where flows attach
//!
//! The flow engine runs inside the conversation actor after the keyword check
//! (`Conversation::converse`); its replies are direct replies through the
//! gate, its reminders are the conversation's timers, its hand-offs are
//! `Escalated` events. An external responder (`flows::Responder`, the HTTP
//! side in `src/http/flows.rs`) phrases a reply after the inbound is durable, on a
//! spawned task with a timeout, and sends it back to the conversation as a
//! `SendMessage`; on timeout the built-in draft goes. Outcome metrics are
//! derived from the committed events (`record_outcomes` in the actor; the
//! escalation wait in the pool). A cadence is one pending `FollowUp` timer
//! named in the journey (`Journey::cadence`): a customer message cancels
//! it, a fired step schedules the next if it went out.
//! Provider webhooks live in `src/` and reach conversations only through a
//! gateway and `Router`.

pub use threadline_core::flows::{engine, nlu};

pub use threadline_core::flows::ResponderRequest;

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

/// The holder of a slot the business blocked (no conversation has this id).
pub const BLOCKED: u64 = u64::MAX;

/// A calendar slot as the business sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Free,
    /// Offered to the customer of this conversation, until they answer.
    Held(u64),
    Booked(u64),
    Blocked,
}

impl SlotState {
    pub fn of(
        map: &DashMap<String, SlotHold>,
        tenant: &str,
        at: Timestamp,
        now: Timestamp,
    ) -> Self {
        match map.get(&slot_key(tenant, at)).map(|h| *h) {
            Some(h) if h.conv == BLOCKED => SlotState::Blocked,
            Some(h) if h.booked => SlotState::Booked(h.conv),
            Some(h) if h.until.0 > now.0 => SlotState::Held(h.conv),
            _ => SlotState::Free,
        }
    }
}

/// The business blocks a slot: nobody is offered it. Refused (with what
/// holds it) if a customer holds or booked it; the write to commit if it
/// changed.
pub fn block_slot(
    map: &DashMap<String, SlotHold>,
    tenant: &str,
    at: Timestamp,
    now: Timestamp,
) -> Result<Option<CalendarWrite>, SlotState> {
    let key = slot_key(tenant, at);
    let blocked = SlotHold {
        conv: BLOCKED,
        booked: true,
        until: Timestamp(i64::MAX),
    };
    match map.entry(key.clone()) {
        dashmap::Entry::Occupied(o) if o.get().conv == BLOCKED => Ok(None),
        dashmap::Entry::Occupied(mut o) => {
            let h = *o.get();
            if h.booked {
                Err(SlotState::Booked(h.conv))
            } else if h.until.0 > now.0 {
                Err(SlotState::Held(h.conv))
            } else {
                o.insert(blocked);
                Ok(Some(CalendarWrite::Put(key, blocked)))
            }
        }
        dashmap::Entry::Vacant(v) => {
            v.insert(blocked);
            Ok(Some(CalendarWrite::Put(key, blocked)))
        }
    }
}

/// The business opens a slot it blocked again; the write, if it was.
pub fn unblock_slot(
    map: &DashMap<String, SlotHold>,
    tenant: &str,
    at: Timestamp,
) -> Option<CalendarWrite> {
    let key = slot_key(tenant, at);
    map.remove_if(&key, |_, h| h.conv == BLOCKED)
        .map(|_| CalendarWrite::Delete(key))
}

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
                } else if h.takeable_by(self.conv, self.now) {
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

    fn free(&self, start: Timestamp) -> bool {
        self.map
            .get(&slot_key(self.tenant, start))
            .is_none_or(|h| h.conv == self.conv || h.takeable_by(self.conv, self.now))
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::engine::Calendar;
    use super::*;

    #[test]
    fn concurrent_holds_on_one_slot_give_it_to_exactly_one_customer() {
        let map = Arc::new(DashMap::new());
        let start = Timestamp(1_772_650_800_000);
        let now = Timestamp(1_772_550_000_000);
        for round in 0..50 {
            let slot = Timestamp(start.0 + round * 3_600_000);
            let barrier = Arc::new(Barrier::new(8));
            let winners: Vec<bool> = (0..8u64)
                .map(|conv| {
                    let (map, barrier) = (map.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut writes = Vec::new();
                        let mut cal = SharedCalendar {
                            map: &map,
                            tenant: "smile",
                            conv,
                            now,
                            writes: &mut writes,
                        };
                        barrier.wait();
                        let got = cal.hold(slot, Timestamp(now.0 + 900_000));
                        // Whoever holds it writes it durably; nobody else does.
                        assert_eq!(got, !writes.is_empty());
                        got
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            assert_eq!(winners.iter().filter(|w| **w).count(), 1, "round {round}");
        }
    }

    #[test]
    fn a_lapsed_hold_can_be_taken_and_a_booking_cannot() {
        let map = DashMap::new();
        let slot = Timestamp(1_772_650_800_000);
        let mut writes = Vec::new();
        let mut first = SharedCalendar {
            map: &map,
            tenant: "smile",
            conv: 1,
            now: Timestamp(0),
            writes: &mut writes,
        };
        assert!(first.hold(slot, Timestamp(1_000)));
        let mut w2 = Vec::new();
        let mut second = SharedCalendar {
            map: &map,
            tenant: "smile",
            conv: 2,
            now: Timestamp(500),
            writes: &mut w2,
        };
        assert!(!second.hold(slot, Timestamp(2_000)), "still held");
        second.now = Timestamp(1_000);
        assert!(second.hold(slot, Timestamp(2_000)), "the first hold lapsed");
        assert!(second.book(slot));
        let mut w3 = Vec::new();
        let mut third = SharedCalendar {
            map: &map,
            tenant: "smile",
            conv: 3,
            now: Timestamp(1_000_000),
            writes: &mut w3,
        };
        assert!(
            !third.hold(slot, Timestamp(2_000_000)),
            "a booking never lapses"
        );
        third.release(slot);
        assert!(
            map.contains_key(&slot_key("smile", slot)),
            "only its holder releases it"
        );
    }
}
