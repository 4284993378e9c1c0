//! The agent pool across nodes. One node routes for the whole cluster:
//! the pool's *home*, the first node of `ranked(POOL_KEY, live)`. Every
//! other node passes its escalations, its desktops' commands and the
//! messages of held conversations on to the home, and relays the home's
//! events to the desktops connected to it. The home reaches the
//! conversations where they live (`ConvOp`), so an agent connected to any
//! node is offered, holds and answers conversations owned by any node.
//!
//! When the home changes (it is lost, or a node that outranks it joins),
//! every node resets its pool: desktops are disconnected and reconnect
//! (within the grace, as after a restart), and the new home rebuilds the
//! queue from the `agent_work` rows of every live node, each reporting the
//! conversations it holds.
//!
//! # The pool across nodes
//!
//! the agent pool across nodes. The pool's home is the first node of
//! `ranked(POOL_KEY, live)` as the heartbeats last settled it (`pool_home`:
//! routing follows the pools' state, not a fresh look at the live set).
//! `RouterMsg::PoolAsk` (RPC) and `PoolTell` (cast, in order per sender)
//! carry a wire `PoolAsk` / `PoolTell`: escalations, desktop commands,
//! held conversations' messages, agent upserts, joins, lists and stats go to
//! the home; `ConvOp` (assign, note, send, close) goes to the node that holds
//! the conversation (`locate`); `Work` asks a node for the `agent_work` rows
//! of the conversations it holds. A desktop on a node that is not the home is
//! *relayed*: the node keeps its event queue under a relay id
//! (`SessionHandle::Relayed`), the home runs a proxy session whose events go
//! back in bursts (`PoolTell::Events`), ended by `Leave`, `Ended` or the node
//! leaving the live set. When the home moves, every node drops its relayed
//! desktops and casts `PoolMsg::Reset` to its pool: sessions end (desktops
//! reconnect), open offers end, and the new home rebuilds from `gather_work`
//! (held work back to its agent with the grace period). The feed listener of
//! every node passes messages of held conversations (`Watched`, kept by the
//! node that holds the conversation: set by `ConvOp::Assign`/`Close`, by an
//! install, by the pool's restore) to the home.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use threadline_protocol::{AgentWork, ConversationId, Message};
use tokio::sync::mpsc;

use super::LocalNode;
use super::{unwire, wire, Cluster, RouterMsg};
use crate::command::DeliverError;
use crate::command::{ContactAnswer, ContactOp, ConvAnswer, ConvOp};
use crate::pool::routing::AgentSpec;
use crate::pool::{AgentCommand, AgentEvent, Escalation, SessionMsg};

/// The key whose first node in hash order is the pool's home.
const POOL_KEY: &str = "\0threadline.agent-pool";
/// How long the home may take to answer a pool request.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node holding a conversation may take to run a write to it
/// (a call's turn may wait for the tenant's responder).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Events queued for one relayed desktop on the home (as on the node a
/// desktop is connected to: a desktop that cannot keep up is dropped).
const PROXY_QUEUE: usize = 256;

/// Requests that want an answer (a wire `Result<T, String>`).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) enum PoolAsk {
    /// A desktop of `agent` connected to `node`, which relays its events
    /// under `relay`. Answers `Result<(), String>` (unknown agent).
    Join {
        agent: String,
        node: String,
        relay: u64,
    },
    /// `Vec<(AgentSpec, Presence, bool)>`.
    List,
    /// `QueueStats` of a tenant.
    Stats(String),
    /// `bool`: some agent of the tenant could take a call now.
    CanTakeCall(String),
    /// `bool`: whether the agent was known.
    Remove(String),
    /// `Vec<AgentWork>`: the pool's rows of conversations this node holds.
    Work,
    /// A write to a conversation this node holds: `Option<ConvAnswer>`
    /// (`None`: no such conversation here).
    Conv(ConvOp),
    /// A write to a contact this node owns: `ContactAnswer`.
    Contact(ContactOp),
    /// `bool`: a timer of a conversation this node holds was cancelled.
    CancelTimer(u64),
    /// `()`: the alias is stored here (`aliases.rs`).
    Alias { alias: String, target: String },
    /// `Vec<(String, String)>`: a page of this node's aliases after `after`.
    Aliases { after: Option<String> },
}

/// One-way messages, in order per sender.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum PoolTell {
    Escalate(Escalation),
    Command {
        agent: String,
        cmd: AgentCommand,
    },
    /// A committed message of a conversation an agent holds.
    Published {
        conv: ConversationId,
        message: Message,
    },
    /// The relayed desktop `relay` of `node` disconnected.
    Leave {
        node: String,
        relay: u64,
    },
    Upsert(AgentSpec),
    /// Events for desktops the receiving node relays.
    Events(Vec<(u64, AgentEvent)>),
    /// The session of relayed desktop `relay` ended on the home (the
    /// pool moved, the agent was removed): its socket is closed, and the
    /// desktop reconnects.
    Ended(u64),
    /// A web-chat message the sending node committed, for the visitor's
    /// sockets on this node (`chat.rs`).
    Chat(Box<crate::feed::Published>),
}

/// This node's side of the cluster-wide pool.
#[derive(Default)]
pub(super) struct PoolLinks {
    /// The pool's home as last seen (empty before the first look).
    home: parking_lot::Mutex<String>,
    /// Desktops connected here whose pool is elsewhere: relay id → their
    /// event queue.
    relays: DashMap<u64, mpsc::Sender<AgentEvent>>,
    next_relay: AtomicU64,
    /// On the home: the sessions of desktops connected to other nodes.
    proxies: DashMap<(String, u64), ractor::ActorRef<SessionMsg>>,
}

/// A desktop's session, however it reaches the pool. Stopped when the
/// desktop disconnects.
pub enum SessionHandle {
    Local(ractor::ActorRef<SessionMsg>),
    Relayed {
        cluster: std::sync::Weak<Cluster>,
        home: String,
        relay: u64,
    },
}

impl SessionHandle {
    pub fn stop(self) {
        match self {
            SessionHandle::Local(s) => s.stop(Some("desktop disconnected".into())),
            SessionHandle::Relayed {
                cluster,
                home,
                relay,
            } => {
                if let Some(c) = cluster.upgrade() {
                    c.pool.relays.remove(&relay);
                    let node = c.spec.name.clone();
                    let _ = c.pool_tell(&home, PoolTell::Leave { node, relay });
                }
            }
        }
    }
}

impl Cluster {
    /// The pool's home when it is another node. It is the home the
    /// heartbeats last settled on (the pools reset for it), not a fresh
    /// look at the live set: routing follows the pools' state.
    pub fn pool_home(&self) -> Option<String> {
        let home = self.pool.home.lock();
        (!home.is_empty() && *home != self.spec.name).then(|| home.clone())
    }

    /// Called on every change of the live set: when the home moved, every
    /// desktop relayed from here is dropped (it reconnects to the new
    /// home) and this node's pool starts afresh.
    pub(super) fn pool_membership_changed(&self) {
        let live = self.live_names();
        let Some(home) = super::ranked(POOL_KEY, &live)
            .first()
            .map(|h| h.to_string())
        else {
            return;
        };
        let old = std::mem::replace(&mut *self.pool.home.lock(), home.clone());
        // The pool started as its own home: only a move to another node,
        // or any later move, starts it afresh.
        if old == home || (old.is_empty() && home == self.spec.name) {
            return;
        }
        tracing::info!(home, previous = old, "the agent pool's home moved");
        self.pool.relays.clear();
        if let Some(p) = self.node.pool().as_ref() {
            let _ = p.cast(crate::pool::PoolMsg::Reset);
        }
    }

    /// Asks the home's router; transport failures are `Unavailable`.
    pub(crate) async fn pool_ask<T: DeserializeOwned>(
        &self,
        node: &str,
        ask: &PoolAsk,
    ) -> Result<T, DeliverError> {
        self.ask(node, ask, POOL_TIMEOUT).await
    }

    /// `ask` of `node`'s router, answered within `timeout`.
    pub(super) async fn ask<T: DeserializeOwned>(
        &self,
        node: &str,
        ask: &PoolAsk,
        timeout: Duration,
    ) -> Result<T, DeliverError> {
        let unavailable = |why: String| DeliverError::Unavailable(format!("node {node}: {why}"));
        let bytes = wire(ask);
        let answer = self
            .rpc(node, timeout, |reply| RouterMsg::PoolAsk(bytes, reply))
            .await
            .map_err(unavailable)?;
        match unwire::<Result<T, String>>(&answer) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(unavailable(e)),
            None => Err(unavailable("unreadable answer".into())),
        }
    }

    /// Casts to `node`'s router (in order with this node's other casts).
    pub(super) fn pool_tell(&self, node: &str, tell: PoolTell) -> Result<(), DeliverError> {
        let target = self.view.read().routers.get(node).cloned();
        let Some(t) = target else {
            return Err(DeliverError::Unavailable(format!(
                "agent pool: node {node} is not reachable"
            )));
        };
        t.cast(RouterMsg::PoolTell(wire(&tell)))
            .map_err(|e| DeliverError::Unavailable(format!("agent pool: {e}")))
    }

    pub(crate) fn tell_escalated(&self, home: &str, e: Escalation) {
        if let Err(err) = self.pool_tell(home, PoolTell::Escalate(e)) {
            tracing::warn!(home, error = %err, "escalation not passed to the pool's home; it is restored when the home changes");
        }
    }

    pub(crate) fn tell_command(
        &self,
        home: &str,
        agent: &str,
        cmd: AgentCommand,
    ) -> Result<(), DeliverError> {
        self.pool_tell(
            home,
            PoolTell::Command {
                agent: agent.to_owned(),
                cmd,
            },
        )
    }

    pub(crate) fn tell_published(&self, home: &str, conv: ConversationId, message: Message) {
        let _ = self.pool_tell(home, PoolTell::Published { conv, message });
    }

    pub(crate) fn tell_upsert(&self, home: &str, spec: AgentSpec) -> Result<(), DeliverError> {
        self.pool_tell(home, PoolTell::Upsert(spec))
    }

    /// A desktop connected here joins the pool on `home`; its events come
    /// back through this node's router.
    pub(crate) async fn join_relayed(
        self: &std::sync::Arc<Self>,
        home: &str,
        agent: &str,
        events: mpsc::Sender<AgentEvent>,
    ) -> Result<Result<SessionHandle, String>, DeliverError> {
        let relay = self.pool.next_relay.fetch_add(1, Ordering::Relaxed);
        self.pool.relays.insert(relay, events);
        let ask = PoolAsk::Join {
            agent: agent.to_owned(),
            node: self.spec.name.clone(),
            relay,
        };
        match self.pool_ask::<Result<(), String>>(home, &ask).await {
            Ok(Ok(())) => Ok(Ok(SessionHandle::Relayed {
                cluster: std::sync::Arc::downgrade(self),
                home: home.to_owned(),
                relay,
            })),
            other => {
                self.pool.relays.remove(&relay);
                other.map(|r| r.map(|()| unreachable!("handled above")))
            }
        }
    }

    /// On the home: a session for a desktop connected to `node`; what the
    /// pool tells it is passed to `node` in bursts until the desktop
    /// leaves, the session ends, or `node` is gone.
    async fn proxy(
        self: std::sync::Arc<Self>,
        router: std::sync::Arc<dyn LocalNode>,
        agent: String,
        node: String,
        relay: u64,
    ) -> Result<(), String> {
        let (tx, mut rx) = mpsc::channel(PROXY_QUEUE);
        let session = match router.join_agent_here(&agent, tx).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.to_string()),
        };
        self.pool
            .proxies
            .insert((node.clone(), relay), session.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = rx.recv() => {
                        let Some(e) = e else { break };
                        let mut burst = vec![(relay, e)];
                        while burst.len() < 64 {
                            match rx.try_recv() {
                                Ok(e) => burst.push((relay, e)),
                                Err(_) => break,
                            }
                        }
                        if self.pool_tell(&node, PoolTell::Events(burst)).is_err() {
                            break;
                        }
                    }
                    () = self.gone(&node) => break,
                }
            }
            session.stop(Some("relayed desktop gone".into()));
            self.pool.proxies.remove(&(node.clone(), relay));
            let _ = self.pool_tell(&node, PoolTell::Ended(relay));
        });
        Ok(())
    }

    /// What the router actor does with a `PoolTell`.
    pub(super) fn on_pool_tell(
        self: &std::sync::Arc<Self>,
        router: &dyn LocalNode,
        tell: PoolTell,
    ) {
        match tell {
            PoolTell::Events(events) => {
                for (relay, e) in events {
                    let full = match self.pool.relays.get(&relay) {
                        Some(q) => q.try_send(e).is_err(),
                        None => continue,
                    };
                    if full {
                        // Too slow (or gone): dropping its queue ends the
                        // desktop's socket; it reconnects.
                        tracing::warn!(relay, "relayed agent desktop too slow; ending it");
                        self.pool.relays.remove(&relay);
                        let home = self.pool.home.lock().clone();
                        let node = self.spec.name.clone();
                        let _ = self.pool_tell(&home, PoolTell::Leave { node, relay });
                    }
                }
            }
            PoolTell::Chat(p) => router.feed().publish_relayed(&p),
            PoolTell::Ended(relay) => {
                self.pool.relays.remove(&relay);
            }
            PoolTell::Leave { node, relay } => {
                if let Some((_, s)) = self.pool.proxies.remove(&(node, relay)) {
                    s.stop(Some("relayed desktop disconnected".into()));
                }
            }
            PoolTell::Escalate(e) => router.pool_here(crate::pool::PoolMsg::Escalate(e)),
            PoolTell::Command { agent, cmd } => {
                router.pool_here(crate::pool::PoolMsg::Command { agent, cmd })
            }
            PoolTell::Published { conv, message } => {
                router.pool_here(crate::pool::PoolMsg::Published {
                    conversation: conv,
                    message: Box::new(message),
                })
            }
            PoolTell::Upsert(spec) => {
                router.remember_agent(Some(&spec), &spec.id);
                router.pool_here(crate::pool::PoolMsg::Upsert(spec));
            }
        }
    }

    /// What the router actor answers to a `PoolAsk` (a wire
    /// `Result<T, String>`).
    pub(super) async fn on_pool_ask(
        self: std::sync::Arc<Self>,
        router: std::sync::Arc<dyn LocalNode>,
        ask: PoolAsk,
    ) -> Vec<u8> {
        fn answer<T: serde::Serialize>(r: Result<T, DeliverError>) -> Vec<u8> {
            wire(&r.map_err(|e| e.to_string()))
        }
        match ask {
            PoolAsk::Join { agent, node, relay } => {
                let joined = self.proxy(router, agent, node, relay).await;
                answer(Ok(joined))
            }
            PoolAsk::List => answer(router.agents_here().await),
            PoolAsk::Stats(t) => answer(router.queue_stats_here(&t).await),
            PoolAsk::CanTakeCall(t) => answer(router.can_take_call_here(&t).await),
            PoolAsk::Remove(id) => answer(router.remove_agent_here(&id).await),
            PoolAsk::Work => answer(router.held_work().await),
            PoolAsk::Conv(op) => answer(router.conv_op_here(op).await),
            PoolAsk::Contact(op) => answer(router.contact_op_here(op).await),
            PoolAsk::CancelTimer(id) => answer(router.cancel_timer_here(id).await),
            PoolAsk::Alias { alias, target } => {
                answer(super::aliases::store_alias(router.as_ref(), alias, target).await)
            }
            PoolAsk::Aliases { after } => {
                answer(super::aliases::aliases_after(router.as_ref(), after).await)
            }
        }
    }

    /// The pool's rows of every live node (this one's included), each
    /// node reporting the conversations it holds; a node that does not
    /// answer is left out (its work comes back when the home changes).
    pub(crate) async fn gather_work(&self, router: &dyn LocalNode) -> Vec<AgentWork> {
        let mut rows = router.held_work().await.unwrap_or_default();
        let peers: Vec<String> = self
            .live_names()
            .into_iter()
            .filter(|n| *n != self.spec.name)
            .collect();
        let asks = peers
            .iter()
            .map(|n| self.pool_ask::<Vec<AgentWork>>(n, &PoolAsk::Work));
        for (node, r) in peers.iter().zip(futures_util::future::join_all(asks).await) {
            match r {
                Ok(more) => rows.extend(more),
                Err(e) => tracing::warn!(node, error = %e, "agent work of a node not gathered"),
            }
        }
        rows
    }

    /// A write to conversation `op` names, on the node that holds it.
    pub(crate) async fn conv_op(&self, op: ConvOp) -> Result<Option<ConvAnswer>, DeliverError> {
        let Some(node) = self.locate(op.conversation()).await else {
            return Ok(None);
        };
        self.ask(&node, &PoolAsk::Conv(op), COMMAND_TIMEOUT).await
    }

    /// Runs `op` on `owner`, the node that owns its contact.
    pub(crate) async fn contact_op(
        &self,
        owner: &str,
        op: ContactOp,
    ) -> Result<ContactAnswer, DeliverError> {
        self.ask(owner, &PoolAsk::Contact(op), COMMAND_TIMEOUT)
            .await
    }

    /// Asks the other live nodes in turn to cancel timer `id` (only the
    /// node holding its conversation can): whether one did.
    pub(crate) async fn cancel_timer_elsewhere(&self, id: u64) -> bool {
        for peer in self.peer_names() {
            let ask = PoolAsk::CancelTimer(id);
            if let Ok(true) = self.ask::<bool>(&peer, &ask, COMMAND_TIMEOUT).await {
                return true;
            }
        }
        false
    }
}
