//! The pool actor: owns the routing state (`routing::Pool`), the agent
//! desktop sessions (one `AgentSession` actor per WebSocket), and carries
//! out the policy's effects: offers with the conversation's context,
//! assignments recorded in the conversation, honest wait messages, live
//! messages to whoever holds a conversation, and the reconnect grace.
//!
//! # What the pool actor does
//!
//! the pool actor carries out the policy's effects (offers with the
//! conversation, assignment recorded in the conversation with
//! `AgentAssigned`, the wait message, live messages through the feed), owns
//! one `AgentSession` actor per desktop (its events go to the WebSocket task
//! through a bounded channel; a desktop that cannot keep up loses its session
//! and reconnects within the grace). An offer's deadline is a durable
//! scheduler timer (`TimerOwner::Offer`) written with the offer (`offers`
//! row) through the pool's ordered write task; when it fires the pool moves
//! the offer on. Grace periods end on the injected clock (a 100 ms tick, or
//! `clock/advance`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use threadline_protocol::codec::{encode_offer_hold, TimerOwner, TimerRow};
use threadline_protocol::{
    Channel, ConversationId, ConversationState, Message, OfferHold, Timestamp,
};
use tokio::sync::{mpsc, oneshot};

use super::routing::{AgentSpec, Effect, Lane, Pool, PoolError, Presence, QueueStats, Task};
use crate::consent::policy::Purpose;
use crate::conversation::core::{OutboundSpec, SendOutcome};
use crate::feed::{Listener, Published};
use crate::persistence::Op;
use crate::router::Router;
use crate::runtime::Shared;
use crate::store::TimerIndex;

/// What the desktop is told (the WebSocket layer renders it as JSON; in
/// a cluster it crosses to the desktop's node as a wire payload).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AgentEvent {
    Hello {
        agent: AgentSpec,
        status: Presence,
    },
    Offer {
        offer: u64,
        conversation: Box<ConversationState>,
        expires_in_ms: i64,
    },
    OfferRescinded {
        offer: u64,
        conversation: ConversationId,
    },
    Assigned {
        conversation: Box<ConversationState>,
    },
    Message {
        conversation: ConversationId,
        message: Message,
    },
    Transferred {
        conversation: ConversationId,
        to: String,
    },
    Closed {
        conversation: ConversationId,
    },
    /// The outcome of the agent's `send`.
    Sent {
        conversation: ConversationId,
        outcome: SendOutcome,
    },
    Status {
        status: Presence,
    },
    Queue {
        tenant: String,
        stats: QueueStats,
    },
    Error {
        code: String,
        message: String,
    },
}

/// What the desktop asks (parsed from JSON by the WebSocket layer).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AgentCommand {
    Status(Presence),
    /// How the queues of the agent's tenants stand.
    Queue,
    Accept {
        offer: u64,
    },
    Reject {
        offer: u64,
    },
    Send {
        conversation: ConversationId,
        text: String,
    },
    Transfer {
        conversation: ConversationId,
        to_agent: Option<String>,
        to_skill: Option<String>,
        note: Option<String>,
    },
    Close {
        conversation: ConversationId,
        disposition: String,
    },
    /// A private note on a conversation the agent holds (an internal entry
    /// of the transcript, never sent to the customer).
    Note {
        conversation: ConversationId,
        text: String,
    },
}

/// An escalation for the pool.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Escalation {
    pub conv: ConversationId,
    pub tenant: String,
    pub channel: Channel,
    pub skills: Vec<String>,
    pub priority: i32,
}

type Reply<T> = oneshot::Sender<T>;

#[derive(ractor_cluster::RactorMessage)]
pub enum PoolMsg {
    Upsert(AgentSpec),
    Remove(String, Reply<bool>),
    List(Reply<Vec<(AgentSpec, Presence, bool)>>),
    Escalate(Escalation),
    /// A desktop session started for `agent`.
    Join {
        agent: String,
        events: mpsc::Sender<AgentEvent>,
        reply: Reply<Result<ActorRef<SessionMsg>, String>>,
    },
    /// A command from `agent`'s desktop.
    Command {
        agent: String,
        cmd: AgentCommand,
    },
    /// A committed message of a held conversation (boxed: a message is
    /// large next to the other variants).
    Published {
        conversation: ConversationId,
        message: Box<Message>,
    },
    Stats {
        tenant: String,
        reply: Reply<QueueStats>,
    },
    /// Whether some agent of `tenant` could take a call right now.
    CanTakeCall {
        tenant: String,
        reply: Reply<bool>,
    },
    /// The expiry timer `timer` of offer `offer` of `conv` fired.
    OfferDue {
        conv: u64,
        offer: u64,
        timer: u64,
        reply: Reply<()>,
    },
    /// End grace periods due on the injected clock.
    Tick,
    Advance(Reply<()>),
    /// The cluster's pool home moved: every session ends (desktops
    /// reconnect), and the pool starts afresh: on the home, from the work
    /// of every live node; elsewhere, empty.
    Reset,
}

/// A write to a conversation the pool decided, done in decision order.
enum Write {
    /// Who holds it now; the holder's desktops get the conversation.
    Assign(ConversationId, Option<String>, Vec<ActorRef<SessionMsg>>),
    /// A note in the transcript (a transfer note).
    Note(ConversationId, String),
    /// An offer opened or ended (`Op::Offer`), or a stale offer timer's
    /// row dropped (`Op::TimerDelete`).
    Durable(Box<crate::persistence::Op>),
    /// Answers once every write before it is durable.
    Flush(oneshot::Sender<()>),
}

pub struct PoolActor;

pub struct PoolArgs {
    pub shared: Arc<Shared>,
    pub agents: Vec<AgentSpec>,
    pub offer_ttl: Duration,
    pub grace: Duration,
    pub wait_text: String,
}

pub struct PoolState {
    args: PoolArgs,
    pool: Pool,
    /// Sessions per agent.
    sessions: HashMap<String, Vec<ActorRef<SessionMsg>>>,
    /// Agents whose desktop dropped: when their grace period ends.
    grace: HashMap<String, Timestamp>,
    /// Conversation → tenant, for what is queued or held.
    tenants: HashMap<u64, String>,
    /// Who holds a conversation, written to it in the order decided (one
    /// task does them one after another: a release must not overtake the
    /// next assignment).
    assignments: mpsc::UnboundedSender<Write>,
    router: Router,
    /// Open offers: offer → (conversation, its expiry timer).
    offer_timers: HashMap<u64, (u64, u64)>,
}

/// Conversations an agent holds: the feed listener reads it.
#[derive(Default)]
pub struct Watched(DashMap<u64, ()>);

impl Watched {
    pub(crate) fn set(&self, conv: ConversationId, held: bool) {
        if held {
            self.0.insert(conv.0, ());
        } else {
            self.0.remove(&conv.0);
        }
    }
}

/// Hands messages of held conversations to whichever pool actor runs now.
pub struct PoolListener {
    pub watched: Arc<Watched>,
    pub shared: std::sync::Weak<Shared>,
}

/// Whether this node runs the pool (a single node always does).
fn cluster_home(shared: &Shared) -> bool {
    shared
        .cluster
        .get()
        .and_then(|c| c.upgrade())
        .is_none_or(|c| c.pool_home().is_none())
}

impl Listener for PoolListener {
    fn wants(&self, conv: ConversationId, _m: &Message) -> bool {
        self.watched.0.contains_key(&conv.0)
    }
    fn published(&self, p: &Published) {
        if let Some(shared) = self.shared.upgrade() {
            Router { shared }.published_to_pool(p);
        }
    }
}

impl PoolState {
    fn now(&self) -> Timestamp {
        self.args.shared.clock.now()
    }

    fn tell(&self, agent: &str, e: AgentEvent) {
        if let Some(s) = self.sessions.get(agent) {
            for s in s {
                let _ = s.cast(SessionMsg::Deliver(e.clone()));
            }
        }
    }

    fn watched(&self) -> &Watched {
        &self.args.shared.pool_watched
    }

    /// Carries out what the routing policy decided.
    fn apply(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Offer {
                    offer,
                    agent,
                    conv,
                    expires,
                } => {
                    self.offer_opened(offer, &agent, conv, expires);
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let router = self.router.clone();
                    let ttl = expires.0 - self.now().0;
                    self.args.shared.metrics.offers.inc();
                    tokio::spawn(async move {
                        if let Ok(Some(state)) = router.view_by_id(ConversationId(conv)).await {
                            let e = AgentEvent::Offer {
                                offer,
                                conversation: Box::new(state),
                                expires_in_ms: ttl,
                            };
                            for s in sessions {
                                let _ = s.cast(SessionMsg::Deliver(e.clone()));
                            }
                        }
                    });
                }
                Effect::Rescind { offer, agent, conv } => {
                    self.offer_ended(offer);
                    self.tell(
                        &agent,
                        AgentEvent::OfferRescinded {
                            offer,
                            conversation: ConversationId(conv),
                        },
                    )
                }
                Effect::Assigned { agent, conv } => {
                    self.watched().0.insert(conv, ());
                    if let (Some(since), Some(tenant)) =
                        (self.pool.waited_since(conv), self.tenants.get(&conv))
                    {
                        let waited = self.now().0 - since.0;
                        self.args
                            .shared
                            .metrics
                            .outcomes
                            .wait("escalation_wait", tenant, waited);
                    }
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let _ = self.assignments.send(Write::Assign(
                        ConversationId(conv),
                        Some(agent),
                        sessions,
                    ));
                }
                Effect::Waiting { .. } if self.args.wait_text.is_empty() => {}
                Effect::Waiting { conv, position } => {
                    let router = self.router.clone();
                    let text = self
                        .args
                        .wait_text
                        .replace("{position}", &position.to_string());
                    tokio::spawn(async move {
                        let spec = OutboundSpec {
                            text,
                            channel: None,
                            purpose: Purpose::Conversational,
                            agent: None,
                            requested: false,
                            subject: None,
                        };
                        let _ = router
                            .send_to_conversation(ConversationId(conv), spec)
                            .await;
                    });
                }
                Effect::Released { agent: _, conv } => {
                    self.watched().0.remove(&conv);
                    if !self.pool.is_queued(conv) {
                        self.tenants.remove(&conv);
                    }
                    let _ = self.assignments.send(Write::Assign(
                        ConversationId(conv),
                        None,
                        Vec::new(),
                    ));
                }
            }
        }
    }

    /// An offer's deadline is a durable scheduler timer, written with the
    /// offer (`OfferHold`) so a restart keeps both.
    fn offer_opened(&mut self, offer: u64, agent: &str, conv: u64, expires: Timestamp) {
        let shared = &self.args.shared;
        let timer = shared
            .next_timer_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = TimerRow {
            id: timer,
            due: expires,
            owner: TimerOwner::Offer {
                conv: ConversationId(conv),
                offer,
            },
        };
        let hold = OfferHold {
            conv: ConversationId(conv),
            agent: agent.to_owned(),
            offer,
            timer,
            expires,
        };
        self.offer_timers.insert(offer, (conv, timer));
        let _ = self.assignments.send(Write::Durable(Box::new(Op::Offer {
            conv: ConversationId(conv),
            hold: Some(encode_offer_hold(&hold)),
            timer: TimerIndex::Put(row),
            done: None,
        })));
        shared.scheduler.add(row);
    }

    /// The offer was accepted, rejected, withdrawn or expired. Called
    /// before the effects that follow it (a new offer of the same
    /// conversation must be written after this one ended).
    fn offer_ended(&mut self, offer: u64) {
        let Some((conv, timer)) = self.offer_timers.remove(&offer) else {
            return;
        };
        let _ = self.assignments.send(Write::Durable(Box::new(Op::Offer {
            conv: ConversationId(conv),
            hold: None,
            timer: TimerIndex::Delete(timer),
            done: None,
        })));
        self.args.shared.scheduler.remove(timer);
    }

    fn on_time(&mut self) {
        let now = self.now();
        let due: Vec<String> = self
            .grace
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(a, _)| a.clone())
            .collect();
        for agent in due {
            self.grace.remove(&agent);
            tracing::info!(agent, "grace period over; re-queueing what the agent held");
            let effects = self.pool.requeue_all(&agent, now);
            self.apply(effects);
        }
    }

    fn error(&self, agent: &str, e: PoolError) {
        let code = match e {
            PoolError::UnknownAgent(_) => "unknown_agent",
            PoolError::NoSuchOffer(_) => "no_such_offer",
            PoolError::NotHolding => "not_yours",
            PoolError::BadTarget(_) => "bad_target",
        };
        self.tell(
            agent,
            AgentEvent::Error {
                code: code.into(),
                message: e.to_string(),
            },
        );
    }

    /// Tells `agent`'s desktops how the queues of their tenants stand. The
    /// desktops ask (every few seconds while open) rather than being told
    /// on every change: a push to every desktop at once stalled the node
    /// for ~20 ms with 1,000 desktops (measured), a pull spreads out.
    fn queue_stats(&self, agent: &str, now: Timestamp) {
        let Some(spec) = self.pool.agent(agent) else {
            return;
        };
        for tenant in &spec.tenants {
            self.tell(
                agent,
                AgentEvent::Queue {
                    tenant: tenant.clone(),
                    stats: self.pool.stats(tenant, now),
                },
            );
        }
    }

    /// The cluster's pool home moved (see `PoolMsg::Reset`).
    async fn reset(&mut self) {
        let sessions: Vec<ActorRef<SessionMsg>> =
            self.sessions.drain().flat_map(|(_, s)| s).collect();
        for s in &sessions {
            self.args.shared.metrics.agent_sessions.dec();
            s.stop(Some("the agent pool moved; reconnect".into()));
        }
        let open: Vec<u64> = self.offer_timers.keys().copied().collect();
        for offer in open {
            self.offer_ended(offer);
        }
        let now = self.now();
        let agents: Vec<AgentSpec> = self.pool.agents().map(|(s, _, _)| s.clone()).collect();
        let mut pool = Pool::new(self.args.offer_ttl.as_millis() as i64);
        for a in agents {
            pool.upsert_agent(a, now);
        }
        let home = cluster_home(&self.args.shared);
        let rows = match self.args.shared.cluster() {
            Some(c) if home => c.gather_work(&self.router).await,
            _ => self.router.held_work().await.unwrap_or_default(),
        };
        let restored = restore(&self.args, &mut pool, rows, Vec::new(), now, home);
        self.pool = pool;
        self.grace = restored.grace;
        self.tenants = restored.tenants;
        self.offer_timers = restored.offer_timers;
        tracing::info!(home, "agent pool reset");
    }

    async fn command(&mut self, agent: String, cmd: AgentCommand) {
        let now = self.now();
        let r = match cmd {
            AgentCommand::Queue => {
                self.queue_stats(&agent, now);
                Ok(Vec::new())
            }
            AgentCommand::Status(p) => self.pool.set_presence(&agent, p, now).inspect(|_| {
                self.tell(&agent, AgentEvent::Status { status: p });
            }),
            AgentCommand::Accept { offer } => self
                .pool
                .accept(&agent, offer, now)
                .inspect(|_| self.offer_ended(offer)),
            AgentCommand::Reject { offer } => self
                .pool
                .reject(&agent, offer, now)
                .inspect(|_| self.offer_ended(offer)),
            AgentCommand::Send { conversation, text } => {
                if self.pool.holder(conversation.0) != Some(agent.as_str()) {
                    Err(PoolError::NotHolding)
                } else {
                    let router = self.router.clone();
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let author = agent.clone();
                    tokio::spawn(async move {
                        let spec = OutboundSpec {
                            text,
                            channel: None,
                            purpose: Purpose::Conversational,
                            agent: Some(author),
                            requested: false,
                            subject: None,
                        };
                        let e = match router.send_to_conversation(conversation, spec).await {
                            Ok(Some(outcome)) => AgentEvent::Sent {
                                conversation,
                                outcome,
                            },
                            Ok(None) => AgentEvent::Error {
                                code: "not_found".into(),
                                message: format!("no conversation {conversation}"),
                            },
                            Err(e) => AgentEvent::Error {
                                code: "unavailable".into(),
                                message: e.to_string(),
                            },
                        };
                        for s in sessions {
                            let _ = s.cast(SessionMsg::Deliver(e.clone()));
                        }
                    });
                    Ok(Vec::new())
                }
            }
            AgentCommand::Transfer {
                conversation,
                to_agent,
                to_skill,
                note,
            } => {
                let skills: Vec<String> = to_skill.into_iter().collect();
                let to = to_agent
                    .clone()
                    .or_else(|| skills.first().map(|s| format!("skill:{s}")))
                    .unwrap_or_else(|| "queue".into());
                let r = self
                    .pool
                    .transfer(&agent, conversation.0, to_agent, skills, 0, now);
                if r.is_ok() {
                    self.tell(
                        &agent,
                        AgentEvent::Transferred {
                            conversation,
                            to: to.clone(),
                        },
                    );
                    if let Some(note) = note.filter(|n| !n.trim().is_empty()) {
                        let text = format!("[transfer note from agent:{agent} to {to}: {note}]");
                        let _ = self.assignments.send(Write::Note(conversation, text));
                    }
                }
                r
            }
            AgentCommand::Note { conversation, text } => {
                if self.pool.holder(conversation.0) != Some(agent.as_str()) {
                    Err(PoolError::NotHolding)
                } else {
                    let text = format!("[private note from agent:{agent}: {text}]");
                    let _ = self.assignments.send(Write::Note(conversation, text));
                    Ok(Vec::new())
                }
            }
            AgentCommand::Close {
                conversation,
                disposition,
            } => match self.pool.release(&agent, conversation.0, now) {
                Ok(effects) => {
                    // The close itself records that nobody holds it.
                    let effects: Vec<Effect> = effects
                        .into_iter()
                        .filter(|e| !matches!(e, Effect::Released { .. }))
                        .collect();
                    self.watched().0.remove(&conversation.0);
                    self.tenants.remove(&conversation.0);
                    let router = self.router.clone();
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let closer = agent.clone();
                    tokio::spawn(async move {
                        let e = match router
                            .close_by_agent(conversation, &closer, &disposition)
                            .await
                        {
                            Ok(()) => AgentEvent::Closed { conversation },
                            Err(e) => AgentEvent::Error {
                                code: "unavailable".into(),
                                message: e.to_string(),
                            },
                        };
                        for s in sessions {
                            let _ = s.cast(SessionMsg::Deliver(e.clone()));
                        }
                    });
                    Ok(effects)
                }
                Err(e) => Err(e),
            },
        };
        match r {
            Ok(effects) => self.apply(effects),
            Err(e) => self.error(&agent, e),
        }
    }
}

impl Actor for PoolActor {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let now = args.shared.clock.now();
        let mut pool = Pool::new(args.offer_ttl.as_millis() as i64);
        for a in &args.agents {
            pool.upsert_agent(a.clone(), now);
        }
        if !args.shared.simulated_clock {
            myself.send_interval(Duration::from_millis(100), || PoolMsg::Tick);
        }
        let router = Router {
            shared: args.shared.clone(),
        };
        // Unbounded: the pool actor must not wait on its own writes; each
        // is an assignment or release of a conversation, at most a few per
        // offer, and offers are bounded by agents' capacity.
        let (assignments, mut rx) = mpsc::unbounded_channel::<Write>();
        let writer = router.clone();
        tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                let (id, agent, sessions) = match w {
                    Write::Assign(id, agent, sessions) => (id, agent, sessions),
                    Write::Note(id, text) => {
                        let _ = writer.note(id, text).await;
                        continue;
                    }
                    Write::Durable(op) => {
                        let _ = writer.shared.persistence.submit(*op).await;
                        continue;
                    }
                    Write::Flush(done) => {
                        let _ = writer.shared.persistence.barrier().await;
                        let _ = done.send(());
                        continue;
                    }
                };
                let taken = agent.is_some();
                if writer.assign(id, agent).await.is_ok() && taken {
                    if let Ok(Some(state)) = writer.view_by_id(id).await {
                        let e = AgentEvent::Assigned {
                            conversation: Box::new(state),
                        };
                        for s in sessions {
                            let _ = s.cast(SessionMsg::Deliver(e.clone()));
                        }
                    }
                }
            }
        });
        // What waited for or was held by an agent before a restart.
        let store = args.shared.persistence.store.clone();
        let (rows, holds) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((store.agent_work()?, store.offers()?))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let home = cluster_home(&args.shared);
        let restored = restore(&args, &mut pool, rows, holds, now, home);
        // Offers of work that ended meanwhile (or of agents now gone).
        for h in restored.stale {
            let _ = assignments.send(Write::Durable(Box::new(Op::Offer {
                conv: h.conv,
                hold: None,
                timer: TimerIndex::Delete(h.timer),
                done: None,
            })));
        }
        let (grace, tenants, offer_timers) =
            (restored.grace, restored.tenants, restored.offer_timers);
        Ok(PoolState {
            args,
            pool,
            sessions: HashMap::new(),
            grace,
            tenants,
            assignments,
            router,
            offer_timers,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        st: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let now = st.now();
        match msg {
            PoolMsg::Upsert(spec) => {
                let effects = st.pool.upsert_agent(spec, now);
                st.apply(effects);
            }
            PoolMsg::Remove(id, reply) => {
                let known = st.pool.agent(&id).is_some();
                let effects = st.pool.remove_agent(&id, now);
                st.apply(effects);
                if let Some(sessions) = st.sessions.remove(&id) {
                    for s in sessions {
                        s.stop(Some("agent removed".into()));
                    }
                }
                let _ = reply.send(known);
            }
            PoolMsg::List(reply) => {
                let list = st
                    .pool
                    .agents()
                    .map(|(s, p, c)| (s.clone(), p, c))
                    .collect();
                let _ = reply.send(list);
            }
            PoolMsg::Escalate(e) => {
                st.tenants.insert(e.conv.0, e.tenant.clone());
                let effects = st.pool.enqueue(
                    Task {
                        conv: e.conv.0,
                        tenant: e.tenant,
                        lane: Lane::of(e.channel),
                        skills: e.skills,
                        priority: e.priority,
                        target: None,
                        since: now,
                    },
                    now,
                );
                st.apply(effects);
            }
            PoolMsg::Join {
                agent,
                events,
                reply,
            } => {
                let Some(spec) = st.pool.agent(&agent).cloned() else {
                    let _ = reply.send(Err(format!("unknown agent {agent}")));
                    return Ok(());
                };
                let spawned = Actor::spawn_linked(
                    None,
                    AgentSession,
                    SessionArgs {
                        agent: agent.clone(),
                        events,
                    },
                    myself.get_cell(),
                )
                .await;
                let session = match spawned {
                    Ok((s, _)) => s,
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                st.sessions
                    .entry(agent.clone())
                    .or_default()
                    .push(session.clone());
                st.args.shared.metrics.agent_sessions.inc();
                let _ = reply.send(Ok(session.clone()));
                let back = st.grace.remove(&agent).is_some();
                let status = st.pool.presence(&agent).unwrap_or(Presence::Offline);
                let _ = session.cast(SessionMsg::Deliver(AgentEvent::Hello {
                    agent: spec.clone(),
                    status,
                }));
                st.queue_stats(&agent, now);
                let effects = st.pool.set_connected(&agent, true, now);
                st.apply(effects);
                // Back within the grace period, or a second tab: everything
                // the agent holds, with what was missed, and the open offer.
                let held = st.pool.holding(&agent);
                let open = st.pool.open_offer(&agent);
                let router = st.router.clone();
                let s = session.clone();
                // What is left of it (it may have been made before a restart).
                let ttl = open
                    .and_then(|(_, conv)| st.pool.offer_expires(conv))
                    .map_or(0, |t| (t.0 - now.0).max(0));
                tokio::spawn(async move {
                    for conv in held {
                        if let Ok(Some(state)) = router.view_by_id(ConversationId(conv)).await {
                            let _ = s.cast(SessionMsg::Deliver(AgentEvent::Assigned {
                                conversation: Box::new(state),
                            }));
                        }
                    }
                    if let Some((offer, conv)) = open {
                        if let Ok(Some(state)) = router.view_by_id(ConversationId(conv)).await {
                            let _ = s.cast(SessionMsg::Deliver(AgentEvent::Offer {
                                offer,
                                conversation: Box::new(state),
                                expires_in_ms: ttl,
                            }));
                        }
                    }
                });
                if back {
                    tracing::info!(agent, "agent reconnected within the grace period");
                }
            }
            PoolMsg::Command { agent, cmd } => st.command(agent, cmd).await,
            PoolMsg::Published {
                conversation,
                message,
            } => {
                if let Some(agent) = st.pool.holder(conversation.0).map(str::to_owned) {
                    st.tell(
                        &agent,
                        AgentEvent::Message {
                            conversation,
                            message: *message,
                        },
                    );
                }
            }
            PoolMsg::CanTakeCall { tenant, reply } => {
                let _ = reply.send(st.pool.can_take_call(&tenant));
            }
            PoolMsg::Stats { tenant, reply } => {
                let _ = reply.send(st.pool.stats(&tenant, now));
            }
            PoolMsg::OfferDue {
                conv,
                offer,
                timer,
                reply,
            } => {
                if st.offer_timers.get(&offer) == Some(&(conv, timer)) {
                    let effects = st.pool.expire_offer(offer, now);
                    st.apply(effects);
                } else if !st.offer_timers.values().any(|(_, t)| *t == timer) {
                    // An offer that ended before a crash could record it.
                    let _ = st
                        .assignments
                        .send(Write::Durable(Box::new(Op::TimerDelete {
                            id: timer,
                            done: None,
                        })));
                }
                let _ = reply.send(());
            }
            PoolMsg::Tick => st.on_time(),
            PoolMsg::Reset => st.reset().await,
            PoolMsg::Advance(reply) => {
                st.on_time();
                // Simulated time: what the pool decided is durable when
                // the advance returns (offers and their timers included).
                let (tx, rx) = oneshot::channel();
                let _ = st.assignments.send(Write::Flush(tx));
                tokio::spawn(async move {
                    let _ = rx.await;
                    let _ = reply.send(());
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<PoolMsg>,
        evt: SupervisionEvent,
        st: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let gone = match &evt {
            SupervisionEvent::ActorTerminated(cell, _, _)
            | SupervisionEvent::ActorFailed(cell, _) => Some(cell.get_id()),
            _ => None,
        };
        let Some(id) = gone else {
            return Ok(());
        };
        let mut left = None;
        for (agent, sessions) in st.sessions.iter_mut() {
            let before = sessions.len();
            sessions.retain(|s| s.get_id() != id);
            if sessions.len() != before {
                st.args.shared.metrics.agent_sessions.dec();
                if sessions.is_empty() {
                    left = Some(agent.clone());
                }
            }
        }
        if let Some(agent) = left {
            st.sessions.remove(&agent);
            let now = st.now();
            let effects = st.pool.set_connected(&agent, false, now);
            st.apply(effects);
            if !st.pool.holding(&agent).is_empty() {
                let until = now.saturating_add_millis(st.args.grace.as_millis() as i64);
                st.grace.insert(agent, until);
            }
        }
        Ok(())
    }
}

/// What the pool starts from after a restart (or a move of its home).
struct Restored {
    grace: HashMap<String, Timestamp>,
    tenants: HashMap<u64, String>,
    offer_timers: HashMap<u64, (u64, u64)>,
    /// Offers of work that ended meanwhile (or of agents now gone).
    stale: Vec<OfferHold>,
}

/// Puts `rows` back into `pool`: waiting work is queued again, held work
/// goes back to its agent (whose grace period starts now), an open offer
/// (`holds`) stays with its agent until its deadline. On a node that is
/// not the cluster's pool home (`home` false), only which conversations
/// are held is kept: their messages are passed to the home.
fn restore(
    args: &PoolArgs,
    pool: &mut Pool,
    rows: Vec<threadline_protocol::AgentWork>,
    holds: Vec<OfferHold>,
    now: Timestamp,
    home: bool,
) -> Restored {
    args.shared.pool_watched.0.clear();
    let rows = if home {
        rows
    } else {
        for w in rows.iter().filter(|w| w.agent.is_some()) {
            args.shared.pool_watched.0.insert(w.conv.0, ());
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
            args.shared.pool_watched.0.insert(w.conv.0, ());
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

/// One agent desktop connection. The WebSocket layer reads frames into
/// commands and writes the events this actor queues; if the desktop cannot
/// keep up, the session ends (the desktop reconnects within the grace).
pub struct AgentSession;

pub struct SessionArgs {
    pub agent: String,
    pub events: mpsc::Sender<AgentEvent>,
}

#[derive(ractor_cluster::RactorMessage)]
pub enum SessionMsg {
    Deliver(AgentEvent),
}

impl Actor for AgentSession {
    type Msg = SessionMsg;
    type State = SessionArgs;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        st: &mut SessionArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Deliver(e) => {
                if st.events.try_send(e).is_err() {
                    tracing::warn!(
                        agent = st.agent,
                        "agent desktop too slow or gone; ending its session"
                    );
                    myself.stop(Some("desktop gone".into()));
                }
            }
        }
        Ok(())
    }
}
