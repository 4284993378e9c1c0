//! The agent pool's routing policy as a pure state machine (sans-IO):
//! agents with skills, capacity per lane and presence; tasks with tenant,
//! skills, lane, priority and age; offers that expire or are rejected and
//! move on. Every operation takes `now` and returns effects for the actor
//! to carry out (send an offer, rescind one, say the customer waits).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use threadline_protocol::{Channel, Timestamp};

/// A capacity lane: what an agent can hold several of at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    Chat,
    Sms,
    Whatsapp,
    Voice,
}

impl Lane {
    pub const ALL: [Lane; 4] = [Lane::Chat, Lane::Sms, Lane::Whatsapp, Lane::Voice];
    pub fn of(c: Channel) -> Lane {
        match c {
            Channel::Sms => Lane::Sms,
            Channel::Whatsapp => Lane::Whatsapp,
            Channel::Voice => Lane::Voice,
            Channel::Webchat | Channel::Email => Lane::Chat,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Chat => "chat",
            Lane::Sms => "sms",
            Lane::Whatsapp => "whatsapp",
            Lane::Voice => "voice",
        }
    }
    pub fn parse(s: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.as_str() == s)
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Presence {
    Available,
    Away,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "available",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }
    pub fn parse(s: &str) -> Option<Presence> {
        match s {
            "available" => Some(Presence::Available),
            "away" => Some(Presence::Away),
            "offline" => Some(Presence::Offline),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentSpec {
    pub id: String,
    pub name: String,
    pub tenants: Vec<String>,
    pub skills: Vec<String>,
    /// Conversations held at once, per lane (`Lane::ALL` order).
    pub capacity: [u32; 4],
    /// Where calls transferred to this agent ring (E.164).
    pub phone: Option<String>,
}

impl AgentSpec {
    pub fn capacity(&self, lane: Lane) -> u32 {
        self.capacity[lane.index()]
    }
}

/// Work for a person: one conversation that needs an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub conv: u64,
    pub tenant: String,
    pub lane: Lane,
    pub skills: Vec<String>,
    /// Higher first.
    pub priority: i32,
    /// Only this agent (a transfer to a named agent).
    pub target: Option<String>,
    pub since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Offer `conv` to `agent` until `expires`.
    Offer {
        offer: u64,
        agent: String,
        conv: u64,
        expires: Timestamp,
    },
    /// The offer is gone (expired, or the agent became unable to take it).
    Rescind {
        offer: u64,
        agent: String,
        conv: u64,
    },
    /// `agent` now holds `conv`.
    Assigned { agent: String, conv: u64 },
    /// Nobody can take `conv` now: it waits at `position` (1-based) of its
    /// tenant's queue. Emitted once per wait.
    Waiting { conv: u64, position: usize },
    /// `agent` no longer holds `conv` (closed, transferred, or re-queued).
    Released { agent: String, conv: u64 },
}

#[derive(Debug, Clone)]
struct AgentState {
    spec: AgentSpec,
    presence: Presence,
    connected: bool,
    /// Held conversations and their lanes.
    holding: BTreeMap<u64, Lane>,
    /// The one outstanding offer: (offer id, conversation).
    offer: Option<(u64, u64)>,
    /// Since when the agent has had nothing (for fairness).
    idle_since: Timestamp,
}

impl AgentState {
    /// Conversations held on `lane` (an open offer blocks new ones anyway).
    fn load(&self, lane: Lane) -> u32 {
        self.holding.values().filter(|l| **l == lane).count() as u32
    }
    fn can_take(&self, t: &Task) -> bool {
        self.presence == Presence::Available
            && self.connected
            && self.offer.is_none()
            && self.spec.tenants.contains(&t.tenant)
            && t.skills.iter().all(|s| self.spec.skills.contains(s))
            && self.load(t.lane) < self.spec.capacity(t.lane)
            && t.target.as_ref().is_none_or(|a| *a == self.spec.id)
            // A call reaches an agent on their phone.
            && (t.lane != Lane::Voice || self.spec.phone.is_some())
    }
}

#[derive(Debug, Clone)]
struct TaskState {
    task: Task,
    offered: Option<(String, u64, Timestamp)>,
    /// Agents who rejected it or let the offer expire, in order.
    declined: Vec<String>,
    /// The customer was told they wait.
    told_waiting: bool,
}

/// Per-tenant queue figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    pub waiting: usize,
    pub offered: usize,
    pub assigned: usize,
    pub oldest_wait_ms: i64,
    pub agents_available: usize,
    pub agents_connected: usize,
}

/// Where a task stands in line: higher priority first, then older.
type QueueKey = (i32, Timestamp, u64);

fn queue_key(t: &Task) -> QueueKey {
    (-t.priority, t.since, t.conv)
}

/// Tasks not offered to anyone now, in line order (all tenants), and the
/// same per tenant: dispatch walks the line without sorting it, and a
/// place in line is counted from the right end.
#[derive(Debug, Default)]
struct Line {
    all: BTreeSet<QueueKey>,
    by_tenant: HashMap<String, BTreeSet<QueueKey>>,
}

impl Line {
    fn join(&mut self, t: &Task) {
        self.all.insert(queue_key(t));
        match self.by_tenant.get_mut(&t.tenant) {
            Some(q) => {
                q.insert(queue_key(t));
            }
            None => {
                self.by_tenant
                    .insert(t.tenant.clone(), BTreeSet::from([queue_key(t)]));
            }
        }
    }

    fn leave(&mut self, t: &Task) {
        self.all.remove(&queue_key(t));
        if let Some(q) = self.by_tenant.get_mut(&t.tenant) {
            q.remove(&queue_key(t));
        }
    }

    /// The first task in line after `cursor` (from the front: `None`).
    fn after(&self, cursor: Option<QueueKey>) -> Option<QueueKey> {
        let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        self.all.range((from, Bound::Unbounded)).next().copied()
    }
}

#[derive(Debug, Default)]
pub struct Pool {
    agents: BTreeMap<String, AgentState>,
    tasks: BTreeMap<u64, TaskState>,
    line: Line,
    /// Tasks whose customer has not been told yet that they wait.
    untold: BTreeSet<u64>,
    /// conversation → the agent holding it, and the task it came from.
    assigned: BTreeMap<u64, (String, Task)>,
    next_offer: u64,
    pub offer_ttl_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    #[error("offer {0} is not open for this agent")]
    NoSuchOffer(u64),
    #[error("this agent does not hold that conversation")]
    NotHolding,
    #[error("no agent {0} can take this tenant")]
    BadTarget(String),
}

impl Pool {
    pub fn new(offer_ttl_ms: i64) -> Pool {
        Pool {
            offer_ttl_ms,
            next_offer: 1,
            ..Default::default()
        }
    }

    /// Adds a task, in line unless it is offered already.
    fn insert_task(&mut self, t: TaskState) {
        if let Some(old) = self.remove_task(t.task.conv) {
            debug_assert!(false, "task {} inserted twice: {old:?}", t.task.conv);
        }
        if t.offered.is_none() {
            self.line.join(&t.task);
        }
        if !t.told_waiting {
            self.untold.insert(t.task.conv);
        }
        self.tasks.insert(t.task.conv, t);
    }

    fn remove_task(&mut self, conv: u64) -> Option<TaskState> {
        let t = self.tasks.remove(&conv)?;
        self.line.leave(&t.task);
        self.untold.remove(&conv);
        Some(t)
    }

    /// The offer of `conv` is made (`Some`) or gone (`None`).
    fn set_offered(&mut self, conv: u64, offered: Option<(String, u64, Timestamp)>) {
        let Some(t) = self.tasks.get_mut(&conv) else {
            return;
        };
        match (t.offered.is_some(), offered.is_some()) {
            (false, true) => self.line.leave(&t.task),
            (true, false) => self.line.join(&t.task),
            _ => {}
        }
        t.offered = offered;
    }

    fn agent_mut(&mut self, id: &str) -> Result<&mut AgentState, PoolError> {
        self.agents
            .get_mut(id)
            .ok_or_else(|| PoolError::UnknownAgent(id.into()))
    }

    pub fn agent(&self, id: &str) -> Option<&AgentSpec> {
        self.agents.get(id).map(|a| &a.spec)
    }

    pub fn agents(&self) -> impl Iterator<Item = (&AgentSpec, Presence, bool)> {
        self.agents
            .values()
            .map(|a| (&a.spec, a.presence, a.connected))
    }

    pub fn presence(&self, id: &str) -> Option<Presence> {
        self.agents.get(id).map(|a| a.presence)
    }

    /// Conversations `agent` holds.
    pub fn holding(&self, agent: &str) -> Vec<u64> {
        self.agents
            .get(agent)
            .map(|a| a.holding.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn holder(&self, conv: u64) -> Option<&str> {
        self.assigned.get(&conv).map(|(a, _)| a.as_str())
    }

    /// Since when the conversation an agent now holds had waited.
    pub fn waited_since(&self, conv: u64) -> Option<Timestamp> {
        self.assigned.get(&conv).map(|(_, t)| t.since)
    }

    pub fn is_queued(&self, conv: u64) -> bool {
        self.tasks.contains_key(&conv)
    }

    /// After a restart: `task` is offered to `agent` until `expires` again
    /// (offer `offer`, as before). False if the agent is unknown or already
    /// has an offer, or the conversation is queued or held.
    pub fn restore_offer(
        &mut self,
        agent: &str,
        task: Task,
        offer: u64,
        expires: Timestamp,
    ) -> bool {
        let conv = task.conv;
        if self.tasks.contains_key(&conv) || self.assigned.contains_key(&conv) {
            return false;
        }
        let Some(a) = self.agents.get_mut(agent).filter(|a| a.offer.is_none()) else {
            return false;
        };
        a.offer = Some((offer, conv));
        self.next_offer = self.next_offer.max(offer + 1);
        self.insert_task(TaskState {
            task,
            offered: Some((agent.to_owned(), offer, expires)),
            declined: Vec::new(),
            told_waiting: true,
        });
        true
    }

    /// Offer `offer` ran out of time (its timer fired): it moves on. Nothing
    /// happens if it already ended.
    pub fn expire_offer(&mut self, offer: u64, now: Timestamp) -> Vec<Effect> {
        let Some(agent) = self
            .agents
            .values()
            .find(|a| a.offer.is_some_and(|(o, _)| o == offer))
            .map(|a| a.spec.id.clone())
        else {
            return Vec::new();
        };
        let mut out = self.withdraw_offer(&agent);
        out.extend(self.dispatch(now));
        out
    }

    /// When the open offer of `conv` expires.
    pub fn offer_expires(&self, conv: u64) -> Option<Timestamp> {
        self.tasks.get(&conv)?.offered.as_ref().map(|o| o.2)
    }

    /// The offer `agent` has open, if any: (offer, conversation).
    pub fn open_offer(&self, agent: &str) -> Option<(u64, u64)> {
        self.agents.get(agent).and_then(|a| a.offer)
    }

    /// Adds or replaces an agent (presence and holdings are kept).
    pub fn upsert_agent(&mut self, spec: AgentSpec, now: Timestamp) -> Vec<Effect> {
        match self.agents.get_mut(&spec.id) {
            Some(a) => a.spec = spec,
            None => {
                self.agents.insert(
                    spec.id.clone(),
                    AgentState {
                        spec,
                        presence: Presence::Offline,
                        connected: false,
                        holding: BTreeMap::new(),
                        offer: None,
                        idle_since: now,
                    },
                );
            }
        }
        self.dispatch(now)
    }

    /// Removes an agent; what they held goes back to the queue.
    pub fn remove_agent(&mut self, id: &str, now: Timestamp) -> Vec<Effect> {
        let mut out = self.requeue_all(id, now);
        if let Some(a) = self.agents.remove(id) {
            if let Some((offer, conv)) = a.offer {
                out.push(Effect::Rescind {
                    offer,
                    agent: id.to_owned(),
                    conv,
                });
                self.set_offered(conv, None);
            }
        }
        out.extend(self.dispatch(now));
        out
    }

    pub fn set_presence(
        &mut self,
        id: &str,
        p: Presence,
        now: Timestamp,
    ) -> Result<Vec<Effect>, PoolError> {
        let a = self.agent_mut(id)?;
        a.presence = p;
        let mut out = Vec::new();
        if p != Presence::Available {
            out.extend(self.withdraw_offer(id));
        }
        out.extend(self.dispatch(now));
        Ok(out)
    }

    /// The agent's desktop connected (`true`) or dropped (`false`). A drop
    /// withdraws their open offer; what they hold stays theirs until
    /// `requeue_all` (the actor calls it after the grace period).
    pub fn set_connected(&mut self, id: &str, connected: bool, now: Timestamp) -> Vec<Effect> {
        let Some(a) = self.agents.get_mut(id) else {
            return Vec::new();
        };
        a.connected = connected;
        let mut out = Vec::new();
        if !connected {
            out.extend(self.withdraw_offer(id));
        }
        out.extend(self.dispatch(now));
        out
    }

    fn withdraw_offer(&mut self, id: &str) -> Vec<Effect> {
        let Some(a) = self.agents.get_mut(id) else {
            return Vec::new();
        };
        let Some((offer, conv)) = a.offer.take() else {
            return Vec::new();
        };
        if let Some(t) = self.tasks.get_mut(&conv) {
            t.declined.push(id.to_owned());
        }
        self.set_offered(conv, None);
        vec![Effect::Rescind {
            offer,
            agent: id.to_owned(),
            conv,
        }]
    }

    /// Queues `task` (ignored if its conversation is queued or held).
    pub fn enqueue(&mut self, task: Task, now: Timestamp) -> Vec<Effect> {
        if self.tasks.contains_key(&task.conv) || self.assigned.contains_key(&task.conv) {
            return Vec::new();
        }
        self.insert_task(TaskState {
            task,
            offered: None,
            declined: Vec::new(),
            told_waiting: false,
        });
        self.dispatch(now)
    }

    pub fn accept(
        &mut self,
        agent: &str,
        offer: u64,
        now: Timestamp,
    ) -> Result<Vec<Effect>, PoolError> {
        let a = self.agent_mut(agent)?;
        let Some((_, conv)) = a.offer.filter(|(o, _)| *o == offer) else {
            return Err(PoolError::NoSuchOffer(offer));
        };
        a.offer = None;
        let t = self.remove_task(conv).expect("an open offer has its task");
        self.agent_mut(agent)?.holding.insert(conv, t.task.lane);
        self.assigned.insert(conv, (agent.to_owned(), t.task));
        let mut out = vec![Effect::Assigned {
            agent: agent.to_owned(),
            conv,
        }];
        out.extend(self.dispatch(now));
        Ok(out)
    }

    pub fn reject(
        &mut self,
        agent: &str,
        offer: u64,
        now: Timestamp,
    ) -> Result<Vec<Effect>, PoolError> {
        let a = self.agent_mut(agent)?;
        if a.offer.is_none_or(|(o, _)| o != offer) {
            return Err(PoolError::NoSuchOffer(offer));
        }
        let mut out = self.withdraw_offer(agent);
        // The agent already knows: no rescind for their own rejection.
        out.retain(|e| !matches!(e, Effect::Rescind { .. }));
        out.extend(self.dispatch(now));
        Ok(out)
    }

    /// `agent` is done with `conv` (closed it, or handed it on).
    pub fn release(
        &mut self,
        agent: &str,
        conv: u64,
        now: Timestamp,
    ) -> Result<Vec<Effect>, PoolError> {
        let a = self.agent_mut(agent)?;
        if a.holding.remove(&conv).is_none() {
            return Err(PoolError::NotHolding);
        }
        if a.holding.is_empty() {
            a.idle_since = now;
        }
        self.assigned.remove(&conv);
        let mut out = vec![Effect::Released {
            agent: agent.to_owned(),
            conv,
        }];
        out.extend(self.dispatch(now));
        Ok(out)
    }

    /// Hands `conv` from `agent` to the queue again, for `to_agent` only or
    /// for agents with `skills`.
    pub fn transfer(
        &mut self,
        agent: &str,
        conv: u64,
        to_agent: Option<String>,
        skills: Vec<String>,
        priority: i32,
        now: Timestamp,
    ) -> Result<Vec<Effect>, PoolError> {
        let held = match self.assigned.get(&conv) {
            Some((holder, t)) if holder == agent => t.clone(),
            _ => return Err(PoolError::NotHolding),
        };
        let (tenant, lane) = (held.tenant, held.lane);
        if let Some(to) = &to_agent {
            let ok = self
                .agents
                .get(to)
                .is_some_and(|a| a.spec.tenants.contains(&tenant));
            if !ok {
                return Err(PoolError::BadTarget(to.clone()));
            }
        }
        let mut out = self.release(agent, conv, now)?;
        let mut task = Task {
            conv,
            tenant,
            lane,
            skills,
            priority,
            target: to_agent,
            since: now,
        };
        // The agent handing it on is not offered it again.
        task.skills.dedup();
        self.insert_task(TaskState {
            task,
            offered: None,
            declined: vec![agent.to_owned()],
            told_waiting: true,
        });
        out.extend(self.dispatch(now));
        Ok(out)
    }

    /// After a restart: `agent` holds `task`'s conversation again (their
    /// desktop is not connected yet). False if the agent is unknown.
    pub fn restore_held(&mut self, agent: &str, task: Task) -> bool {
        let Some(a) = self.agents.get_mut(agent) else {
            return false;
        };
        a.holding.insert(task.conv, task.lane);
        self.assigned.insert(task.conv, (agent.to_owned(), task));
        true
    }

    /// Whether some agent could take a call of `tenant` right now (a
    /// caller is only put on hold when someone could answer).
    pub fn can_take_call(&self, tenant: &str) -> bool {
        let probe = Task {
            conv: u64::MAX,
            tenant: tenant.to_owned(),
            lane: Lane::Voice,
            skills: Vec::new(),
            priority: 0,
            target: None,
            since: Timestamp(0),
        };
        self.agents.values().any(|a| a.can_take(&probe))
    }

    /// Everything `agent` holds goes back to the queue (their grace period
    /// after a disconnect ran out), ahead of newer work.
    pub fn requeue_all(&mut self, agent: &str, now: Timestamp) -> Vec<Effect> {
        let Some(a) = self.agents.get_mut(agent) else {
            return Vec::new();
        };
        let held: Vec<u64> = std::mem::take(&mut a.holding).into_keys().collect();
        a.idle_since = now;
        let mut out = Vec::new();
        for conv in held {
            let Some((_, task)) = self.assigned.remove(&conv) else {
                continue;
            };
            out.push(Effect::Released {
                agent: agent.to_owned(),
                conv,
            });
            self.insert_task(TaskState {
                // Ahead of newer work: it waited already.
                task: Task {
                    target: None,
                    ..task
                },
                offered: None,
                declined: vec![agent.to_owned()],
                told_waiting: true,
            });
        }
        out.extend(self.dispatch(now));
        out
    }

    /// Offers every waiting task it can, most urgent first; tells new
    /// tasks nobody can take now that they wait. Walks the line only while
    /// some agent could take an offer at all.
    fn dispatch(&mut self, now: Timestamp) -> Vec<Effect> {
        let mut out = Vec::new();
        let mut free = self
            .agents
            .values()
            .filter(|a| a.presence == Presence::Available && a.connected && a.offer.is_none())
            .count();
        let mut cursor: Option<QueueKey> = None;
        while free > 0 {
            let Some(key) = self.line.after(cursor) else {
                break;
            };
            cursor = Some(key);
            let conv = key.2;
            let t = &self.tasks[&conv];
            let pick = |skip_declined: bool| {
                self.agents
                    .values()
                    .filter(|a| a.can_take(&t.task))
                    .filter(|a| !skip_declined || !t.declined.contains(&a.spec.id))
                    .filter(|a| t.declined.last() != Some(&a.spec.id))
                    .min_by(|a, b| (a.idle_since, &a.spec.id).cmp(&(b.idle_since, &b.spec.id)))
                    .map(|a| a.spec.id.clone())
            };
            let Some(agent) = pick(true).or_else(|| pick(false)) else {
                continue;
            };
            let offer = self.next_offer;
            self.next_offer += 1;
            let expires = now.saturating_add_millis(self.offer_ttl_ms);
            self.agents.get_mut(&agent).expect("picked").offer = Some((offer, conv));
            free -= 1;
            self.untold.remove(&conv);
            if let Some(t) = self.tasks.get_mut(&conv) {
                t.told_waiting = true;
            }
            self.set_offered(conv, Some((agent.clone(), offer, expires)));
            out.push(Effect::Offer {
                offer,
                agent,
                conv,
                expires,
            });
        }
        // Whoever is still in line and was not told yet waits.
        for conv in std::mem::take(&mut self.untold) {
            let position = self.position(conv);
            if let Some(t) = self.tasks.get_mut(&conv) {
                t.told_waiting = true;
                out.push(Effect::Waiting { conv, position });
            }
        }
        out
    }

    /// 1-based place of `conv` among its tenant's tasks not yet offered
    /// (cheap for the newest, which is where new work lines up).
    pub fn position(&self, conv: u64) -> usize {
        let Some(me) = self.tasks.get(&conv) else {
            return 0;
        };
        let key = queue_key(&me.task);
        let Some(q) = self.line.by_tenant.get(&me.task.tenant) else {
            return 1;
        };
        let offered = usize::from(!q.contains(&key));
        match q.last() {
            Some(last) if *last <= key => q.len() + offered,
            _ => q.range(..=key).count() + offered,
        }
    }

    pub fn stats(&self, tenant: &str, now: Timestamp) -> QueueStats {
        let mine = self.tasks.values().filter(|t| t.task.tenant == tenant);
        let mut s = QueueStats::default();
        for t in mine {
            if t.offered.is_some() {
                s.offered += 1;
            } else {
                s.waiting += 1;
            }
            s.oldest_wait_ms = s.oldest_wait_ms.max(now.0 - t.task.since.0);
        }
        for a in self
            .agents
            .values()
            .filter(|a| a.spec.tenants.iter().any(|x| x == tenant))
        {
            s.assigned += a.holding.len();
            s.agents_connected += usize::from(a.connected);
            s.agents_available += usize::from(a.connected && a.presence == Presence::Available);
        }
        s
    }
}

#[cfg(test)]
mod tests;
