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

use super::Watched;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use threadline_protocol::{ConversationId, Message, Timestamp};
use tokio::sync::{mpsc, oneshot};

use super::routing::{AgentSpec, Lane, Pool, Presence, Task};
use crate::feed::{Listener, Published};
use crate::persistence::Op;
use crate::router::Router;
use crate::shared::Shared;
use crate::store::TimerIndex;

mod commands;
mod effects;
mod restore;
mod session;

pub use super::msg::{AgentCommand, AgentEvent, Escalation, PoolMsg, SessionMsg};
use restore::restore;
pub use session::{AgentSession, SessionArgs};

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
    /// How the pool writes to conversations.
    pub router: Router,
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

/// Hands messages of held conversations to whichever pool actor runs now.
pub struct PoolListener {
    pub watched: Arc<Watched>,
    pub router: crate::router::WeakRouter,
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
        self.watched.holds(conv)
    }
    fn published(&self, p: &Published) {
        if let Some(router) = self.router.upgrade() {
            router.published_to_pool(p);
        }
    }
}

impl PoolState {
    fn now(&self) -> Timestamp {
        self.args.shared.clock.now()
    }

    fn watched(&self) -> &Watched {
        &self.args.shared.pool_watched
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
        let router = args.router.clone();
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
