//! At start: the waiting and held conversations and the open offers, from
//! the `agent_work` and `offers` tables.

use super::*;
use std::collections::HashMap;

use threadline_protocol::{OfferHold, Timestamp};

use crate::pool::routing::{Lane, Pool, Task};

/// What the pool starts from after a restart (or a move of its home).
pub(super) struct Restored {
    pub(super) grace: HashMap<String, Timestamp>,
    pub(super) tenants: HashMap<u64, String>,
    pub(super) offer_timers: HashMap<u64, (u64, u64)>,
    /// Offers of work that ended meanwhile (or of agents now gone).
    pub(super) stale: Vec<OfferHold>,
}

/// Puts `rows` back into `pool`: waiting work is queued again, held work
/// goes back to its agent (whose grace period starts now), an open offer
/// (`holds`) stays with its agent until its deadline. On a node that is
/// not the cluster's pool home (`home` false), only which conversations
/// are held is kept: their messages are passed to the home.
pub(super) fn restore(
    args: &PoolArgs,
    pool: &mut Pool,
    rows: Vec<threadline_protocol::AgentWork>,
    holds: Vec<OfferHold>,
    now: Timestamp,
    home: bool,
) -> Restored {
    args.shared.pool_watched.clear();
    let rows = if home {
        rows
    } else {
        for w in rows.iter().filter(|w| w.agent.is_some()) {
            args.shared.pool_watched.set(w.conv, true);
        }
        Vec::new()
    };
    let mut holds: HashMap<u64, OfferHold> = holds.into_iter().map(|h| (h.conv.0, h)).collect();
    let mut offer_timers = HashMap::new();
    let mut tenants = HashMap::new();
    let mut grace = HashMap::new();
    let until = now.saturating_add_millis(args.grace.as_millis() as i64);
    let mut restored = (0, 0, 0);
    for w in rows {
        let task = Task {
            conv: w.conv.0,
            tenant: w.tenant.clone(),
            lane: Lane::of(w.channel),
            skills: w.skills,
            priority: w.priority,
            target: None,
            since: w.since,
        };
        tenants.insert(w.conv.0, w.tenant);
        let held = match &w.agent {
            Some(a) => pool.restore_held(a, task.clone()),
            None => false,
        };
        if held {
            let agent = w.agent.expect("held");
            args.shared.pool_watched.set(w.conv, true);
            // Their desktop is not back yet: the grace period runs.
            grace.insert(agent, until);
            restored.1 += 1;
        } else if holds
            .get(&w.conv.0)
            .is_some_and(|h| pool.restore_offer(&h.agent, task.clone(), h.offer, h.expires))
        {
            // Still offered to the same agent until the same deadline;
            // its timer was restored by the scheduler.
            let h = holds.remove(&w.conv.0).expect("checked");
            offer_timers.insert(h.offer, (h.conv.0, h.timer));
            restored.2 += 1;
        } else {
            pool.enqueue(task, now);
            restored.0 += 1;
        }
    }
    if restored != (0, 0, 0) {
        tracing::info!(
            waiting = restored.0,
            held = restored.1,
            offered = restored.2,
            "agent pool restored its work"
        );
    }
    Restored {
        grace,
        tenants,
        offer_timers,
        stale: holds.into_values().collect(),
    }
}
