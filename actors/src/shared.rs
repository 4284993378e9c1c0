//! The context every actor of the node shares: storage, clock, metrics,
//! the directory of live conversations, tenants' policies and flows, and
//! the handles of the node's services. `runtime` builds it (the one
//! composition root) and nothing imports `runtime`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use ractor::ActorRef;

use crate::clock::Clock;
use crate::conversation::core::{CoreConfig, TenantPolicy};
use crate::conversation::Directory;
use crate::conversation::SupMsg;
use crate::metrics::Metrics;
use crate::persistence::Persistence;
use crate::scheduler::SchedulerHandle;
use crate::sender::OutboxHandle;

/// What the agent pool (re)starts with: agents, offer TTL, grace, wait text.
pub(crate) type PoolSettings = (
    Vec<crate::pool::routing::AgentSpec>,
    Duration,
    Duration,
    String,
);

/// What every actor of the node shares.
pub struct Shared {
    pub persistence: Persistence,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub dir: Directory,
    pub core: CoreConfig,
    pub next_conversation: AtomicU64,
    pub snapshot_every: u32,
    pub max_resident: usize,
    pub passivate_after: Duration,
    pub sweep_interval: Duration,
    pub next_timer_id: AtomicU64,
    pub tenants: HashMap<String, Arc<TenantPolicy>>,
    pub default_tenant: Arc<TenantPolicy>,
    pub simulated_clock: bool,
    /// `tenant \0 address` → the address whose conversation it continues.
    pub aliases: dashmap::DashMap<String, String>,
    /// Recorded messages, for the gateways and the agent pool.
    pub feed: crate::feed::Feed,
    /// Calendar slots held or booked: `tenant \0 start` → who.
    pub calendar: dashmap::DashMap<String, crate::store::SlotHold>,
    /// Each tenant's compiled flow (replaced on reload).
    pub flows: RwLock<HashMap<String, Arc<crate::flows::engine::Flow>>>,
    /// Each tenant's external responder, if its flow names one.
    pub responders: RwLock<HashMap<String, Arc<dyn crate::flows::Responder>>>,
    pub(crate) supervisor: RwLock<Option<ActorRef<SupMsg>>>,
    pub scheduler: SchedulerHandle,
    pub outbox: OutboxHandle,
    /// The channel gateways by name (`crate::gateway::GATEWAYS`).
    pub gateways: Arc<crate::gateway::Gateways>,
    /// Work in flight each gateway admits.
    pub gateway_limit: usize,
    pub(crate) pool: RwLock<Option<ActorRef<crate::pool::PoolMsg>>>,
    /// This node's cluster membership, when it runs in a cluster.
    pub(crate) cluster: std::sync::OnceLock<std::sync::Weak<crate::cluster::Cluster>>,
    /// Conversations an agent holds (the pool's feed listener reads it).
    pub(crate) pool_watched: Arc<crate::pool::Watched>,
    pub(crate) pool_listening: std::sync::atomic::AtomicBool,
    pub(crate) pool_args: Mutex<Option<PoolSettings>>,
}

impl Shared {
    /// True while storage commits succeed and the actor tree is up.
    pub fn ready(&self) -> bool {
        self.persistence.healthy() && self.persistence.intact() && self.supervisor.read().is_some()
    }

    /// Keeps the agent list the pool restarts with in step with the API.
    pub(crate) fn remember_agent(&self, spec: Option<&crate::pool::routing::AgentSpec>, id: &str) {
        if let Some(args) = self.pool_args.lock().as_mut() {
            args.0.retain(|a| a.id != id);
            if let Some(s) = spec {
                args.0.push(s.clone());
            }
        }
    }

    /// This node's cluster membership, when it runs in one.
    pub fn cluster(&self) -> Option<Arc<crate::cluster::Cluster>> {
        self.cluster.get().and_then(|c| c.upgrade())
    }

    /// The tenant's flow, if it has one.
    pub fn flow(&self, tenant: &str) -> Option<Arc<crate::flows::engine::Flow>> {
        self.flows.read().get(tenant).cloned()
    }

    /// Replaces every tenant's flow and responder (a reload).
    pub fn set_flows(
        &self,
        flows: HashMap<String, Arc<crate::flows::engine::Flow>>,
        responders: HashMap<String, Arc<dyn crate::flows::Responder>>,
    ) {
        *self.flows.write() = flows;
        *self.responders.write() = responders;
    }

    pub fn responder(&self, tenant: &str) -> Option<Arc<dyn crate::flows::Responder>> {
        self.responders.read().get(tenant).cloned()
    }

    pub fn tenant(&self, tenant: &str) -> Arc<TenantPolicy> {
        self.tenants
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.default_tenant.clone())
    }
}
