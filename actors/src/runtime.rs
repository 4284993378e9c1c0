//! The composition root: assembles the actor tree and the context it shares
//! (`crate::shared::Shared`). Nothing imports this module.
//!
//! ```text
//! root (RootSupervisor)
//! ├── persistence (PersistenceActor: owns the redb writer thread)
//! ├── conversations (ConversationSupervisor)
//! │   └── one ConversationActor per resident (tenant, contact)
//! └── scheduler (Scheduler: the timing wheel of every pending timer)
//! ```
//! The root also starts and supervises the sender, the channel gateways
//! and the agent pool, and restarts any of them that fails. Each
//! supervisor overrides
//! `handle_supervisor_evt` (ractor's default stops the supervisor when any
//! child exits).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::clock::Clock;
use crate::conversation::core::{CoreConfig, TenantPolicy};
use crate::conversation::supervisor::{sweep_interval_for, ConversationSupervisor, SupMsg};
use crate::conversation::{ConvMsg, Directory};
use crate::metrics::Metrics;
use crate::persistence::{Persistence, WriterThread};
use crate::router::Router;
use crate::scheduler::{SchedArgs, Scheduler, SchedulerHandle, TimerSink};
use crate::sender::{DeliverySink, OutboxHandle, Outcome};
use crate::shared::Shared;
use crate::store::{OpenReport, StoreError};
use threadline_protocol::codec::TimerRow;

#[derive(Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    /// Resident conversation actors at most; beyond it the least recently
    /// active are passivated.
    pub max_resident: usize,
    /// A conversation idle this long is passivated.
    pub passivate_after: Duration,
    /// A resident conversation snapshots after this many events.
    pub snapshot_every: u32,
    /// Bound of the persistence queue (backpressure beyond it).
    pub persistence_queue: usize,
    /// redb page cache.
    pub storage_cache_bytes: usize,
    pub core: CoreConfig,
    /// Consent and lifecycle settings per tenant; `default_tenant` for others.
    pub tenants: HashMap<String, TenantPolicy>,
    pub default_tenant: TenantPolicy,
    /// True with a simulated clock: timers fire only on `Runtime::advance`.
    pub simulated_clock: bool,
    /// The outbound provider; `None` is the sandbox (recorded only).
    pub provider: Option<Arc<dyn crate::sender::Provider>>,
    pub retry: crate::sender::RetryPolicy,
    /// Work in flight each channel gateway admits before answering busy.
    pub gateway_limit: usize,
    /// In a cluster: this node's tag, the top 16 bits of every
    /// conversation id it creates (`cluster::id_tag`), so ids are unique
    /// across nodes and name the node that knows them.
    pub id_tag: Option<u16>,
    /// Each tenant's conversation flow.
    pub flows: HashMap<String, Arc<crate::flows::engine::Flow>>,
    /// Each tenant's external responder.
    pub responders: HashMap<String, Arc<dyn crate::flows::Responder>>,
    /// Human agents known at start.
    pub agents: Vec<crate::pool::routing::AgentSpec>,
    /// How long an offer waits for the agent before it moves on.
    pub offer_ttl: Duration,
    /// How long an agent whose desktop dropped keeps their conversations.
    pub agent_grace: Duration,
    /// Told to a customer when no agent can take their conversation now;
    /// `{position}` is their place in line.
    pub wait_text: String,
}

impl RuntimeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            data_dir: data_dir.into(),
            max_resident: 200_000,
            passivate_after: Duration::from_secs(600),
            snapshot_every: 64,
            persistence_queue: 65_536,
            storage_cache_bytes: 32 << 20,
            core: CoreConfig::default(),
            tenants: HashMap::new(),
            default_tenant: TenantPolicy::default(),
            simulated_clock: false,
            provider: None,
            retry: crate::sender::RetryPolicy::default(),
            gateway_limit: 4096,
            id_tag: None,
            flows: HashMap::new(),
            responders: HashMap::new(),
            agents: Vec::new(),
            offer_ttl: Duration::from_secs(30),
            agent_grace: Duration::from_secs(60),
            wait_text: "All of our team are busy right now. You are number {position} in line; someone will reply here as soon as they are free.".into(),
        }
    }
}

pub struct Runtime {
    pub router: Router,
    pub shared: Arc<Shared>,
    pub report: OpenReport,
    root: ActorRef<RootMsg>,
    root_done: tokio::task::JoinHandle<()>,
}

impl Runtime {
    /// Opens storage (recovering the log tail), starts the writer thread and
    /// the actor tree.
    pub async fn start(
        cfg: RuntimeConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Runtime, StoreError> {
        let dir = cfg.data_dir.clone();
        let cache = cfg.storage_cache_bytes;
        let (store, report) =
            tokio::task::spawn_blocking(move || crate::replica::open(&dir, cache))
                .await
                .map_err(|e| StoreError::Redb(e.to_string()))??;
        let (persistence, writer) =
            Persistence::start(store, &report, cfg.persistence_queue, metrics.clone());
        // The business's outcomes count on from where they were.
        metrics.outcomes.restore(persistence.store.outcomes()?);
        let shared = Arc::new(Shared {
            persistence: persistence.clone(),
            clock,
            metrics: metrics.clone(),
            dir: Directory::default(),
            core: cfg.core.clone(),
            next_conversation: AtomicU64::new(crate::cluster::first_id(
                report.next_conversation,
                cfg.id_tag,
            )),
            snapshot_every: cfg.snapshot_every.max(1),
            max_resident: cfg.max_resident.max(1),
            passivate_after: cfg.passivate_after,
            sweep_interval: sweep_interval_for(cfg.passivate_after),
            // Timer ids carry the node's tag too: a conversation taken over
            // brings its timers along.
            next_timer_id: AtomicU64::new(crate::cluster::first_id(
                report.next_timer_id,
                cfg.id_tag,
            )),
            tenants: cfg
                .tenants
                .iter()
                .map(|(k, v)| {
                    let mut v = v.clone();
                    if let Some(p) = &cfg.provider {
                        v.providers = p.channels(k);
                    }
                    (k.clone(), Arc::new(v))
                })
                .collect(),
            default_tenant: Arc::new(cfg.default_tenant.clone()),
            simulated_clock: cfg.simulated_clock,
            aliases: persistence.store.aliases()?.into_iter().collect(),
            feed: Default::default(),
            calendar: persistence.store.calendar()?.into_iter().collect(),
            flows: RwLock::new(cfg.flows.clone()),
            responders: RwLock::new(cfg.responders.clone()),
            gateways: Arc::new(crate::gateway::Gateways::new(metrics.clone())),
            gateway_limit: cfg.gateway_limit.max(1),
            pool: RwLock::new(None),
            cluster: std::sync::OnceLock::new(),
            pool_watched: Default::default(),
            pool_listening: Default::default(),
            pool_args: Mutex::new(Some((
                cfg.agents.clone(),
                cfg.offer_ttl,
                cfg.agent_grace,
                cfg.wait_text.clone(),
            ))),
            supervisor: RwLock::new(None),
            scheduler: SchedulerHandle::default(),
            outbox: OutboxHandle::default(),
        });
        let (root, root_done) = Actor::spawn(
            None,
            RootSupervisor,
            RootArgs {
                shared: shared.clone(),
                writer: Mutex::new(Some(writer)),
                timers: Mutex::new(Some(report.timers.clone())),
                provider: cfg
                    .provider
                    .clone()
                    .map(|p| (p, cfg.retry, report.outbox.clone())),
            },
        )
        .await
        .map_err(|e| StoreError::Redb(format!("starting the actor tree: {e}")))?;
        Ok(Runtime {
            router: Router {
                shared: shared.clone(),
            },
            shared,
            report,
            root,
            root_done,
        })
    }

    /// Runs an idle-passivation and resident-cap sweep now (it also runs
    /// periodically), judged against the injected clock.
    pub fn sweep_now(&self) {
        if let Some(sup) = self.shared.supervisor.read().as_ref() {
            let _ = sup.cast(SupMsg::Sweep);
        }
    }

    /// Drains every conversation (ractor `drain`: queued messages are
    /// handled, then the actor stops and its `post_stop` snapshots), then
    /// stops the tree; the persistence actor commits the queue and joins the
    /// writer thread last. Nothing is started after this.
    pub async fn shutdown(self) {
        let actors: Vec<ActorRef<ConvMsg>> = self.shared.dir.actors();
        for a in &actors {
            let _ = a.drain();
        }
        for a in &actors {
            let _ = a.wait(Some(Duration::from_secs(30))).await;
        }
        let _ = self.root.stop_and_wait(Some("shutdown".into()), None).await;
        let _ = self.root_done.await;
        // Actors drop their state just after they report stopped: wait
        // for the last reference, so that storage is closed on return.
        let last = Arc::downgrade(&self.shared);
        drop(self.shared);
        drop(self.router);
        for _ in 0..2_000 {
            if last.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::warn!("storage still referenced after shutdown");
    }
}

#[derive(ractor_cluster::RactorMessage)]
pub enum RootMsg {}

struct RootSupervisor;

struct RootArgs {
    shared: Arc<Shared>,
    writer: Mutex<Option<WriterThread>>,
    timers: Mutex<Option<Vec<TimerRow>>>,
    provider: Option<(
        Arc<dyn crate::sender::Provider>,
        crate::sender::RetryPolicy,
        Vec<threadline_protocol::OutboxEntry>,
    )>,
}

struct RootState {
    shared: Arc<Shared>,
    persistence: ActorRef<PersistenceMsg>,
    /// The sender's provider and retries, to start it again.
    provider: Option<(Arc<dyn crate::sender::Provider>, crate::sender::RetryPolicy)>,
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let writer = args.writer.lock().take().ok_or("writer already taken")?;
        let (persistence, _) = Actor::spawn_linked(
            Some(format!("persistence-{}", myself.get_id())),
            PersistenceActor,
            (args.shared.clone(), writer),
            myself.get_cell(),
        )
        .await?;
        spawn_conversations(&myself, &args.shared).await?;
        for name in crate::gateway::GATEWAYS {
            spawn_gateway(&myself, &args.shared, name).await?;
        }
        let agents = args
            .shared
            .pool_args
            .lock()
            .as_ref()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        spawn_pool(&myself, &args.shared, agents).await?;
        let rows = args.timers.lock().take().unwrap_or_default();
        spawn_scheduler(&myself, &args.shared, rows).await?;
        if let Some((provider, retry, backlog)) = args.provider.clone() {
            spawn_sender(&myself, &args.shared, provider, retry, backlog).await?;
        }
        Ok(RootState {
            shared: args.shared,
            persistence,
            provider: args.provider.map(|(p, r, _)| (p, r)),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RootMsg>,
        msg: RootMsg,
        _st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMsg>,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Timers, senders and conversations first (they still write), then
        // the writer. Unsent outbox entries are sent after the next start.
        // Each is waited for, so that nothing holds storage open once
        // `shutdown` returns.
        let mut children: Vec<ractor::ActorCell> = st.shared.gateways.drain();
        children.extend(st.shared.pool.write().take().map(|a| a.get_cell()));
        children.extend(st.shared.outbox.set(None).map(|a| a.get_cell()));
        children.extend(st.shared.scheduler.set(None).map(|a| a.get_cell()));
        children.extend(st.shared.supervisor.write().take().map(|a| a.get_cell()));
        for c in children {
            let _ = c
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
                .await;
        }
        let _ = st
            .persistence
            .stop_and_wait(Some("shutdown".into()), None)
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let id = cell.get_id();
                let is_conversations = is_child(&st.shared.supervisor, id);
                let is_scheduler = st.shared.scheduler.is(id);
                let gateway = st.shared.gateways.named(id);
                let is_pool = is_child(&st.shared.pool, id);
                let is_sender = st.shared.outbox.is(id);
                if is_sender {
                    tracing::error!(error = %err, "sender failed; restarting it from the outbox");
                    st.shared.outbox.set(None);
                    let store = st.shared.persistence.store.clone();
                    let backlog =
                        tokio::task::spawn_blocking(move || store.outbox_entries()).await??;
                    if let Some((provider, retry)) = st.provider.clone() {
                        spawn_sender(&myself, &st.shared, provider, retry, backlog).await?;
                    }
                } else if is_pool {
                    // Agents reconnect; conversations they held keep their
                    // assignment in their own state.
                    tracing::error!(error = %err, "agent pool failed; restarting it");
                    let agents = st
                        .shared
                        .pool_args
                        .lock()
                        .as_ref()
                        .map(|a| a.0.clone())
                        .unwrap_or_default();
                    spawn_pool(&myself, &st.shared, agents).await?;
                } else if let Some(name) = gateway {
                    tracing::error!(error = %err, gateway = name, "gateway failed; restarting it");
                    spawn_gateway(&myself, &st.shared, name).await?;
                } else if is_scheduler {
                    tracing::error!(error = %err, "scheduler failed; reloading timers");
                    st.shared.scheduler.set(None);
                    let store = st.shared.persistence.store.clone();
                    let rows = tokio::task::spawn_blocking(move || store.timer_rows()).await??;
                    spawn_scheduler(&myself, &st.shared, rows).await?;
                } else if is_conversations {
                    tracing::error!(error = %err, "conversation supervisor failed; restarting it");
                    *st.shared.supervisor.write() = None;
                    spawn_conversations(&myself, &st.shared).await?;
                } else if cell.get_id() == st.persistence.get_id() {
                    // A writer that died cannot be resumed safely in-process:
                    // the node reports not ready and keeps serving reads.
                    tracing::error!(error = %err, "persistence failed; node is not ready");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // Shutdown unregisters gateways before stopping them, so a
                // gateway still registered here was killed from outside.
                let gateway = st.shared.gateways.named(cell.get_id());
                if let Some(name) = gateway {
                    tracing::error!(?reason, gateway = name, "gateway stopped; restarting it");
                    spawn_gateway(&myself, &st.shared, name).await?;
                } else {
                    tracing::debug!(actor = %cell.get_id(), ?reason, "root child stopped");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether the child in `slot` is actor `id`.
fn is_child<M: ractor::Message>(slot: &RwLock<Option<ActorRef<M>>>, id: ractor::ActorId) -> bool {
    slot.read().as_ref().is_some_and(|a| a.get_id() == id)
}

async fn spawn_sender(
    root: &ActorRef<RootMsg>,
    shared: &Arc<Shared>,
    provider: Arc<dyn crate::sender::Provider>,
    retry: crate::sender::RetryPolicy,
    backlog: Vec<threadline_protocol::OutboxEntry>,
) -> Result<(), ActorProcessingErr> {
    let (s, _) = Actor::spawn_linked(
        None,
        crate::sender::Sender,
        crate::sender::SenderArgs {
            metrics: shared.metrics.clone(),
            sink: Arc::new(Deliveries {
                router: Router {
                    shared: shared.clone(),
                },
            }),
            provider,
            retry,
            backlog,
        },
        root.get_cell(),
    )
    .await?;
    shared.outbox.set(Some(s));
    Ok(())
}

async fn spawn_conversations(
    root: &ActorRef<RootMsg>,
    shared: &Arc<Shared>,
) -> Result<(), ActorProcessingErr> {
    let (sup, _) = Actor::spawn_linked(
        None,
        ConversationSupervisor,
        Router {
            shared: shared.clone(),
        },
        root.get_cell(),
    )
    .await?;
    *shared.supervisor.write() = Some(sup);
    Ok(())
}

async fn spawn_pool(
    root: &ActorRef<RootMsg>,
    shared: &Arc<Shared>,
    agents: Vec<crate::pool::routing::AgentSpec>,
) -> Result<(), ActorProcessingErr> {
    let (_, ttl, grace, wait_text) = shared
        .pool_args
        .lock()
        .clone()
        .ok_or("pool settings missing")?;
    let (p, _) = Actor::spawn_linked(
        None,
        crate::pool::actor::PoolActor,
        crate::pool::actor::PoolArgs {
            shared: shared.clone(),
            router: Router {
                shared: shared.clone(),
            },
            agents,
            offer_ttl: ttl,
            grace,
            wait_text,
        },
        root.get_cell(),
    )
    .await?;
    let first = shared.pool.read().is_none()
        && !shared
            .pool_listening
            .swap(true, std::sync::atomic::Ordering::SeqCst);
    *shared.pool.write() = Some(p.clone());
    if first {
        shared
            .feed
            .subscribe(Arc::new(crate::pool::actor::PoolListener {
                watched: shared.pool_watched.clone(),
                router: Router {
                    shared: shared.clone(),
                }
                .downgrade(),
            }));
    }
    Ok(())
}

async fn spawn_gateway(
    root: &ActorRef<RootMsg>,
    shared: &Arc<Shared>,
    name: &'static str,
) -> Result<(), ActorProcessingErr> {
    // The gateway registers itself (with its admission) in `pre_start`.
    Actor::spawn_linked(
        None,
        crate::gateway::Gateway,
        crate::gateway::GatewayArgs {
            name,
            max_in_flight: shared.gateway_limit,
            gateways: shared.gateways.clone(),
        },
        root.get_cell(),
    )
    .await?;
    Ok(())
}

async fn spawn_scheduler(
    root: &ActorRef<RootMsg>,
    shared: &Arc<Shared>,
    rows: Vec<TimerRow>,
) -> Result<(), ActorProcessingErr> {
    let (s, _) = Actor::spawn_linked(
        None,
        Scheduler,
        SchedArgs {
            clock: shared.clock.clone(),
            metrics: shared.metrics.clone(),
            sink: Arc::new(Router {
                shared: shared.clone(),
            }),
            rows,
            real_time: !shared.simulated_clock,
        },
        root.get_cell(),
    )
    .await?;
    shared.scheduler.set(Some(s));
    Ok(())
}

/// Due timers go to their owner through the router.
impl TimerSink for Router {
    fn fire(
        &self,
        owner: threadline_protocol::codec::TimerOwner,
        id: u64,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        let router = self.clone();
        Box::pin(async move {
            router
                .fire_timer(owner, id)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The sender's view of the node: the outbox in the store, and the
/// conversations through the router.
struct Deliveries {
    router: Router,
}

impl DeliverySink for Deliveries {
    fn wanted(
        &self,
        conv: threadline_protocol::ConversationId,
        seq: u32,
    ) -> crate::sender::BoxFuture<bool> {
        let store = self.router.shared.persistence.store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.outbox_contains(conv.0, seq))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(true)
        })
    }

    fn record(
        &self,
        conv: threadline_protocol::ConversationId,
        seq: u32,
        outcome: Outcome,
    ) -> crate::sender::BoxFuture<Result<(), String>> {
        let router = self.router.clone();
        Box::pin(async move {
            router
                .record_delivery(conv, seq, outcome)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// Hands memory that is free inside the allocator's arenas back to the OS.
/// Conversations come and go in many size classes; without this, glibc keeps
/// freed pages resident and the node's RSS overstates what it holds.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Owns the writer thread's lifecycle: reports queue depth, notices a dead
/// writer, and on stop commits the queue and joins the thread.
struct PersistenceActor;

#[derive(ractor_cluster::RactorMessage)]
enum PersistenceMsg {
    Tick,
}

struct PersistenceState {
    shared: Arc<Shared>,
    writer: Option<WriterThread>,
}

impl Actor for PersistenceActor {
    type Msg = PersistenceMsg;
    type State = PersistenceState;
    type Arguments = (Arc<Shared>, WriterThread);

    async fn pre_start(
        &self,
        myself: ActorRef<PersistenceMsg>,
        (shared, writer): (Arc<Shared>, WriterThread),
    ) -> Result<PersistenceState, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || PersistenceMsg::Tick);
        Ok(PersistenceState {
            shared,
            writer: Some(writer),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PersistenceMsg>,
        msg: PersistenceMsg,
        st: &mut PersistenceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PersistenceMsg::Tick => {
                release_free_memory();
                let p = &st.shared.persistence;
                st.shared
                    .metrics
                    .persistence_queue
                    .set(p.queue_len() as i64);
                if st.writer.as_ref().is_none_or(WriterThread::finished) {
                    return Err("the storage writer thread has stopped".into());
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PersistenceMsg>,
        st: &mut PersistenceState,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(e) = st.shared.persistence.shutdown().await {
            tracing::warn!(error = %e, "persistence shutdown");
        }
        if let Some(w) = st.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        Ok(())
    }
}
