//! Cluster membership as a pure state machine (sans-IO): which peers are
//! live, when a joining node has settled, whether this node may serve, and
//! whether a peer is gone for a majority (so its conversations may be
//! taken over). It is fed what the network said (sessions opening and
//! closing, heartbeat answers) and the time, and it answers; the cluster
//! shell in `threadline_actors::cluster` does the talking.
//!
//! Time is milliseconds on a monotonic clock the caller chooses (the shell
//! counts from the node's start), so pauses and partitions are simulated
//! in plain unit tests by choosing `now`.
//!
//! The rules:
//! - A peer is live while its session is open, it answered a heartbeat
//!   within `failure_after`, and it does not say it is leaving. It counts
//!   only once it answered at all (only then can work be forwarded to it).
//! - A node that finds its own ticks `failure_after` apart was paused: its
//!   peers' silence says nothing about them, so their clocks start again.
//! - A node with seeds has joined once every node its peers vouch for
//!   answers it too, or `failure_after` after the first answer; with no
//!   answer at all, it goes on alone after `2 × failure_after`.
//! - It serves once it has heard from a peer and settled the live set with
//!   it (or it is the first node, or alone too long), and takes writes
//!   while it sees a majority of the nodes it has known.
//! - A peer is gone for a majority when this node and enough live peers
//!   (by their latest answers) leave it out: only then are its
//!   conversations taken over.

use std::collections::{BTreeMap, BTreeSet};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// This node's name.
    pub name: String,
    /// A peer silent this long is not live.
    pub failure_after: Millis,
    /// This node starts a cluster (no seeds, no data of one): it needs
    /// nobody to serve.
    pub first_node: bool,
}

/// One authenticated session with a peer (a peer may have two for a
/// moment, while both connect at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    /// The peer's address as the session sees it.
    pub addr: String,
    pub since: Millis,
    /// Answered a heartbeat within the failure time.
    pub healthy: bool,
    /// When it last answered (or joined).
    pub last_seen: Millis,
}

/// A peer's answer to a heartbeat, as far as membership is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    /// It is leaving the cluster.
    pub leaving: bool,
    /// The nodes it counts live.
    pub live: Vec<String>,
}

/// What a heartbeat tick found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tick {
    /// This node was paused this long (its ticks came this far apart):
    /// its peers were judged afresh.
    pub paused: Option<Millis>,
    /// Peers that stopped answering, and peers that answer again.
    pub stopped: Vec<String>,
    pub resumed: Vec<String>,
    /// Still joining: nothing is settled.
    pub joining: bool,
    /// The live set now (this node included), and whether it differs from
    /// the one last settled (or a session opened or closed since).
    pub live: Vec<String>,
    pub changed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForgetError {
    #[error("node {0} is live (or is this node): stop it before forgetting it")]
    Live(String),
    #[error("no node {0} is known")]
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Membership {
    cfg: MembershipConfig,
    /// Authenticated sessions by session id.
    sessions: BTreeMap<String, Session>,
    /// When each peer (by name) last answered a heartbeat.
    answered: BTreeMap<String, Millis>,
    /// Peers whose router answered (work can be forwarded to them).
    reachable: BTreeSet<String>,
    /// Peers whose answers say they are leaving.
    leaving: BTreeSet<String>,
    /// The nodes each peer counts live, from its latest answer.
    vouched: BTreeMap<String, Vec<String>>,
    first_answer: Option<Millis>,
    joined: bool,
    /// The live set as last settled.
    settled: Vec<String>,
    /// A session opened or closed since the last tick.
    sessions_changed: bool,
    /// This node left the cluster.
    left: bool,
    last_tick: Option<Millis>,
}

impl Membership {
    /// A node starting at time 0 of its clock.
    pub fn new(cfg: MembershipConfig) -> Membership {
        Membership {
            cfg,
            sessions: BTreeMap::new(),
            answered: BTreeMap::new(),
            reachable: BTreeSet::new(),
            leaving: BTreeSet::new(),
            vouched: BTreeMap::new(),
            first_answer: None,
            joined: false,
            settled: Vec::new(),
            sessions_changed: false,
            left: false,
            last_tick: None,
        }
    }

    /// Whether this node starts a cluster (known only once its data is
    /// read: a node that keeps replicas has had peers, and waits for them).
    pub fn set_first_node(&mut self, first: bool) {
        self.cfg.first_node = first;
    }

    /// A peer's session authenticated.
    pub fn session_opened(&mut self, id: &str, name: &str, addr: &str, now: Millis) {
        self.sessions_changed = true;
        self.sessions.insert(
            id.to_owned(),
            Session {
                name: name.to_owned(),
                addr: addr.to_owned(),
                since: now,
                healthy: true,
                last_seen: now,
            },
        );
    }

    /// A peer's session closed: gone for good, so what it had not handed
    /// over is taken over (it is no longer counted as leaving).
    pub fn session_closed(&mut self, id: &str) -> Option<Session> {
        self.sessions_changed = true;
        let gone = self.sessions.remove(id)?;
        self.leaving.remove(&gone.name);
        Some(gone)
    }

    /// A peer answered a heartbeat. True when it is not in the settled
    /// live set: settle now rather than at the next tick.
    pub fn on_answer(&mut self, a: Answer, now: Millis) -> bool {
        self.vouched.insert(a.name.clone(), a.live);
        self.first_answer.get_or_insert(now);
        if a.leaving {
            self.leaving.insert(a.name.clone());
        } else {
            self.leaving.remove(&a.name);
        }
        self.answered.insert(a.name.clone(), now);
        let new = !self.settled.contains(&a.name);
        self.reachable.insert(a.name);
        new
    }

    /// A heartbeat tick: notices this node's own pause, judges each
    /// peer's health, and (once joined) says the live set and whether it
    /// changed. Call `settle` with it once acted on.
    pub fn on_tick(&mut self, now: Millis) -> Tick {
        let mut tick = Tick::default();
        if let Some(last) = self.last_tick {
            if now.saturating_sub(last) > self.cfg.failure_after {
                tick.paused = Some(now - last);
                for t in self.answered.values_mut() {
                    *t = now;
                }
            }
        }
        self.last_tick = Some(now);
        for s in self.sessions.values_mut() {
            let seen = self
                .answered
                .get(&s.name)
                .copied()
                .unwrap_or(s.since)
                .max(s.since);
            s.last_seen = seen;
            let healthy = now.saturating_sub(seen) < self.cfg.failure_after;
            if s.healthy && !healthy {
                tick.stopped.push(s.name.clone());
                self.leaving.remove(&s.name);
            } else if !s.healthy && healthy {
                tick.resumed.push(s.name.clone());
            }
            s.healthy = healthy;
        }
        let live = self.live();
        if !self.joined(&live, now) {
            tick.joining = true;
            return tick;
        }
        let rejoined = std::mem::take(&mut self.sessions_changed);
        tick.changed = self.settled != live || rejoined;
        tick.live = live;
        tick
    }

    /// The live set placement and the pool's home now follow.
    pub fn settle(&mut self, live: Vec<String>) {
        self.settled = live;
    }

    /// The live set as last settled, sorted.
    pub fn settled(&self) -> &[String] {
        &self.settled
    }

    /// This node leaves: it no longer counts itself live.
    pub fn leave(&mut self) {
        self.left = true;
    }

    /// The authenticated peers, one per name, by name.
    pub fn members(&self) -> Vec<Session> {
        let mut by_name: BTreeMap<&str, &Session> = BTreeMap::new();
        for s in self.sessions.values() {
            by_name.entry(&s.name).or_insert(s);
        }
        by_name.into_values().cloned().collect()
    }

    /// Whether a session to `addr` (as the session sees it) or to a peer
    /// for which `linked` holds is open.
    pub fn has_session(&self, addr: &str, linked: impl Fn(&str) -> bool) -> bool {
        self.sessions
            .values()
            .any(|s| linked(&s.name) || s.addr == addr)
    }

    /// Every live node (this one included), sorted.
    pub fn live(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .members()
            .into_iter()
            .filter(|m| {
                m.healthy && self.reachable.contains(&m.name) && !self.leaving.contains(&m.name)
            })
            .map(|m| m.name)
            .collect();
        if !self.left {
            names.push(self.cfg.name.clone());
        }
        names.sort();
        names.dedup();
        names
    }

    /// Every node this one has heard from (itself included), sorted.
    pub fn known(&self) -> Vec<String> {
        let mut names: Vec<String> = self.answered.keys().cloned().collect();
        names.push(self.cfg.name.clone());
        names.sort();
        names.dedup();
        names
    }

    /// Forgets node `name` for good: it no longer counts towards a
    /// majority. A live node, or this one, cannot be forgotten.
    pub fn forget(&mut self, name: &str) -> Result<(), ForgetError> {
        if name == self.cfg.name || self.live().iter().any(|n| n == name) {
            return Err(ForgetError::Live(name.to_owned()));
        }
        if self.answered.remove(name).is_none() {
            return Err(ForgetError::Unknown(name.to_owned()));
        }
        self.reachable.remove(name);
        self.leaving.remove(name);
        Ok(())
    }

    /// Whether this node has settled with the cluster it joins (see the
    /// module's rules); once true, it stays true.
    pub fn joined(&mut self, live: &[String], now: Millis) -> bool {
        if self.joined || self.cfg.first_node {
            self.joined = true;
            return true;
        }
        let alone = self.alone_too_long(now);
        let Some(first) = self.first_answer else {
            self.joined = alone;
            return alone;
        };
        let me = &self.cfg.name;
        let all = self
            .vouched
            .values()
            .flatten()
            .filter(|n| *n != me && !self.leaving.contains(*n))
            .all(|n| live.contains(n));
        if (all && live.len() > 1) || now.saturating_sub(first) > self.cfg.failure_after {
            self.joined = true;
        }
        self.joined
    }

    /// Whether this node serves: it heard from a peer and settled the
    /// live set with it, or it is the first node, or alone too long.
    pub fn serving(&self, now: Millis) -> bool {
        let settled = !self.answered.is_empty() && self.settled.len() > 1;
        self.cfg.first_node || settled || self.alone_too_long(now)
    }

    /// No peer answered in twice the failure time since the start.
    pub fn alone_too_long(&self, now: Millis) -> bool {
        now > 2 * self.cfg.failure_after
    }

    /// Whether it takes writes: serving, a majority of the nodes it has
    /// known live, and (with replicas) a live node to keep them.
    pub fn ready(&self, now: Millis, replication_factor: u8) -> bool {
        let live = self.live();
        self.serving(now) && self.has_majority(&live) && (replication_factor < 2 || live.len() >= 2)
    }

    /// Whether `live` is a majority of the nodes this one has known.
    pub fn has_majority(&self, live: &[String]) -> bool {
        live.len() * 2 > self.known_count()
    }

    fn known_count(&self) -> usize {
        self.answered
            .keys()
            .filter(|n| **n != self.cfg.name)
            .count()
            + 1
    }

    /// Whether `node` is gone as far as this node can tell: not live, not
    /// leaving (a leaving node hands its conversations over itself), and
    /// either it was heard from once or the start is long past.
    pub fn known_gone(&self, node: &str, live: &[String], now: Millis) -> bool {
        !live.iter().any(|n| n == node)
            && !self.leaving.contains(node)
            && (self.answered.contains_key(node) || now > 3 * self.cfg.failure_after)
    }

    /// Whether `node` is gone for a majority of the known nodes: this one,
    /// and each live peer whose latest answer leaves it out.
    pub fn gone_for_a_majority(&self, node: &str, live: &[String], now: Millis) -> bool {
        if !self.known_gone(node, live, now) {
            return false;
        }
        let agree = 1 + live
            .iter()
            .filter(|p| **p != self.cfg.name)
            .filter(|p| {
                self.vouched
                    .get(*p)
                    .is_some_and(|theirs| !theirs.iter().any(|n| n == node))
            })
            .count();
        agree * 2 > self.known_count()
    }
}

#[cfg(test)]
mod tests;
