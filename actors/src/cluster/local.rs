//! What the cluster needs of the node it runs on, passed down to
//! `Cluster::start`: the node's storage and services, and the local side of
//! every request a peer makes. The router implements it
//! (`router/local.rs`); the cluster never reaches up to the router or the
//! shared context, so the module graph runs one way: router → cluster.

use std::sync::{Arc, OnceLock, Weak};

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use ractor::ActorRef;
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{AgentWork, ConversationId, ConversationState};
use tokio::sync::mpsc;

use super::Cluster;
use crate::clock::Clock;
use crate::command::{
    AgentList, ContactAnswer, ContactOp, ConvAnswer, ConvOp, DeliverError, Delivered,
};
use crate::conversation::{ConvKey, Directory, InboundMeta};
use crate::metrics::Metrics;
use crate::persistence::Persistence;
use crate::pool::routing::{AgentSpec, QueueStats};
use crate::pool::{AgentEvent, PoolMsg, SessionMsg, Watched};
use crate::scheduler::SchedulerHandle;
use crate::sender::OutboxHandle;
use crate::store::SlotHold;

/// The node a cluster member runs on.
pub trait LocalNode: Send + Sync + 'static {
    // Its storage and services.
    fn persistence(&self) -> &Persistence;
    /// The conversations resident here.
    fn dir(&self) -> &Directory;
    fn scheduler(&self) -> &SchedulerHandle;
    fn outbox(&self) -> &OutboxHandle;
    fn metrics(&self) -> &Arc<Metrics>;
    fn clock(&self) -> &Arc<dyn Clock>;
    /// Calendar slots held or booked: `tenant \0 start` → who.
    fn calendar(&self) -> &DashMap<String, SlotHold>;
    /// Conversations held here that an agent holds.
    fn pool_watched(&self) -> &Watched;
    /// The agent pool actor running here, if any.
    fn pool(&self) -> Option<ActorRef<PoolMsg>>;
    /// Keeps the agent list the pool restarts with in step.
    fn remember_agent(&self, spec: Option<&AgentSpec>, id: &str);
    /// Aliases (`tenant \0 address` → the address it continues), as the
    /// router resolves them.
    fn aliases(&self) -> &DashMap<String, String>;
    /// The message feed of what this node commits.
    fn feed(&self) -> &crate::feed::Feed;
    /// Where the node keeps its membership (set by `Cluster::start`).
    fn cluster_slot(&self) -> &OnceLock<Weak<Cluster>>;

    // The local side of peers' requests.
    /// Conversations resident here now.
    fn resident(&self) -> usize;
    /// Has the conversation supervisor stop `key`'s actor (waiting for it
    /// with `wait`).
    fn stop_actor<'a>(&'a self, key: &'a ConvKey, why: &'a str, wait: bool) -> BoxFuture<'a, ()>;
    fn view_local<'a>(
        &'a self,
        tenant: &'a str,
        contact: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConversationState>, DeliverError>>;
    fn view_by_id_local(
        &self,
        id: ConversationId,
    ) -> BoxFuture<'_, Result<Option<ConversationState>, DeliverError>>;
    /// An inbound message for a conversation this node owns.
    fn deliver_local<'a>(
        &'a self,
        tenant: &'a str,
        contact: &'a str,
        msg: InboundMessage,
        meta: InboundMeta,
    ) -> BoxFuture<'a, Result<Delivered, DeliverError>>;
    /// Runs a write to a conversation held here (never passed on again).
    fn conv_op_here(&self, op: ConvOp) -> BoxFuture<'_, Result<Option<ConvAnswer>, DeliverError>>;
    fn contact_op_here(&self, op: ContactOp) -> BoxFuture<'_, Result<ContactAnswer, DeliverError>>;
    fn cancel_timer_here(&self, id: u64) -> BoxFuture<'_, Result<bool, DeliverError>>;
    /// The pool's rows of the conversations held here.
    fn held_work(&self) -> BoxFuture<'_, Result<Vec<AgentWork>, DeliverError>>;

    // The agent pool running here (on the pool's home).
    fn pool_here(&self, msg: PoolMsg);
    fn agents_here(&self) -> BoxFuture<'_, Result<AgentList, DeliverError>>;
    fn queue_stats_here<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<QueueStats, DeliverError>>;
    fn can_take_call_here<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<bool, DeliverError>>;
    fn remove_agent_here<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, DeliverError>>;
    fn join_agent_here<'a>(
        &'a self,
        agent: &'a str,
        events: mpsc::Sender<AgentEvent>,
    ) -> BoxFuture<'a, Result<Result<ActorRef<SessionMsg>, String>, DeliverError>>;
}
