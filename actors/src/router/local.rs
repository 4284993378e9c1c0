//! The router as the node a cluster member runs on (`cluster::LocalNode`).

use std::sync::{Arc, OnceLock, Weak};

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use ractor::ActorRef;
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{AgentWork, ConversationId, ConversationState};
use tokio::sync::mpsc;

use super::Router;
use crate::clock::Clock;
use crate::cluster::{Cluster, LocalNode};
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

impl LocalNode for Router {
    fn persistence(&self) -> &Persistence {
        &self.shared.persistence
    }
    fn aliases(&self) -> &DashMap<String, String> {
        &self.shared.aliases
    }
    fn feed(&self) -> &crate::feed::Feed {
        &self.shared.feed
    }
    fn dir(&self) -> &Directory {
        &self.shared.dir
    }
    fn scheduler(&self) -> &SchedulerHandle {
        &self.shared.scheduler
    }
    fn outbox(&self) -> &OutboxHandle {
        &self.shared.outbox
    }
    fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }
    fn calendar(&self) -> &DashMap<String, SlotHold> {
        &self.shared.calendar
    }
    fn pool_watched(&self) -> &Watched {
        &self.shared.pool_watched
    }
    fn pool(&self) -> Option<ActorRef<PoolMsg>> {
        self.shared.pool.read().clone()
    }
    fn remember_agent(&self, spec: Option<&AgentSpec>, id: &str) {
        self.shared.remember_agent(spec, id)
    }
    fn cluster_slot(&self) -> &OnceLock<Weak<Cluster>> {
        &self.shared.cluster
    }

    fn resident(&self) -> usize {
        Router::resident(self)
    }
    fn stop_actor<'a>(&'a self, key: &'a ConvKey, why: &'a str, wait: bool) -> BoxFuture<'a, ()> {
        Box::pin(Router::stop_actor(self, key, why, wait))
    }
    fn view_local<'a>(
        &'a self,
        tenant: &'a str,
        contact: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConversationState>, DeliverError>> {
        Box::pin(Router::view_local(self, tenant, contact))
    }
    fn view_by_id_local(
        &self,
        id: ConversationId,
    ) -> BoxFuture<'_, Result<Option<ConversationState>, DeliverError>> {
        Box::pin(Router::view_by_id_local(self, id))
    }
    fn deliver_local<'a>(
        &'a self,
        tenant: &'a str,
        contact: &'a str,
        msg: InboundMessage,
        meta: InboundMeta,
    ) -> BoxFuture<'a, Result<Delivered, DeliverError>> {
        Box::pin(Router::deliver_local(self, tenant, contact, msg, meta))
    }
    fn conv_op_here(&self, op: ConvOp) -> BoxFuture<'_, Result<Option<ConvAnswer>, DeliverError>> {
        Box::pin(Router::conv_op(self, op, false))
    }
    fn contact_op_here(&self, op: ContactOp) -> BoxFuture<'_, Result<ContactAnswer, DeliverError>> {
        Box::pin(Router::contact_op_here(self, op))
    }
    fn cancel_timer_here(&self, id: u64) -> BoxFuture<'_, Result<bool, DeliverError>> {
        Box::pin(Router::cancel_timer_here(self, id))
    }
    fn held_work(&self) -> BoxFuture<'_, Result<Vec<AgentWork>, DeliverError>> {
        Box::pin(Router::held_work(self))
    }

    fn pool_here(&self, msg: PoolMsg) {
        Router::pool_here(self, msg)
    }
    fn agents_here(&self) -> BoxFuture<'_, Result<AgentList, DeliverError>> {
        Box::pin(Router::agents_here(self))
    }
    fn queue_stats_here<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<QueueStats, DeliverError>> {
        Box::pin(Router::queue_stats_here(self, tenant))
    }
    fn can_take_call_here<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<bool, DeliverError>> {
        Box::pin(Router::can_take_call_here(self, tenant))
    }
    fn remove_agent_here<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, DeliverError>> {
        Box::pin(Router::remove_agent_here(self, id))
    }
    fn join_agent_here<'a>(
        &'a self,
        agent: &'a str,
        events: mpsc::Sender<AgentEvent>,
    ) -> BoxFuture<'a, Result<Result<ActorRef<SessionMsg>, String>, DeliverError>> {
        Box::pin(Router::join_agent_here(self, agent, events))
    }
}
