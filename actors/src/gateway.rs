//! Channel gateways: one supervised actor per inbound channel family
//! (`twilio`, `whatsapp`, `webchat`, `api`). The HTTP and WebSocket layer
//! (which alone knows the wire formats) parses and authenticates provider
//! traffic, then runs each normalized piece of work through its gateway.
//! The gateway admits at most `max_in_flight` at a time; beyond that the
//! caller answers 503 with Retry-After (backpressure where load enters,
//! instead of an unbounded queue). Admission is a semaphore the gateway
//! actor owns, so the hot path costs one atomic operation and no actor
//! round trip (measured: a message hop per request cost 18% of ingest).
//!
//! A gateway that fails or is killed is restarted by the root supervisor
//! with fresh admission (until then callers get 503 with Retry-After);
//! work already admitted finishes on its callers' tasks. Work
//! is acknowledged only once durable, so nothing acknowledged depends on
//! the gateway, and work that fails unacknowledged is retried by its
//! provider (provider message ids make the retry idempotent).
//!
//! # Gateways
//!
//! the channel gateway actors (`api`, `twilio`, `whatsapp`, `webchat`),
//! supervised by the root. Each owns an admission semaphore: inbound work
//! beyond its in-flight limit is refused (503, Retry-After) instead of
//! queueing without bound. A gateway that fails or is killed is restarted by
//! the root with fresh admission; until then it admits nothing (503); work it
//! had admitted finishes on its callers' tasks and is acked only once
//! durable. Root shutdown waits for each child, and `Runtime::shutdown` for
//! the last reference to the node's shared state.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};
use tokio::sync::Semaphore;

use parking_lot::RwLock;

use crate::metrics::Metrics;

/// The gateways every node runs.
pub const GATEWAYS: [&str; 4] = ["api", "twilio", "whatsapp", "webchat"];

/// What callers need of a running gateway.
#[derive(Clone)]
pub struct GatewayHandle {
    pub actor: ActorRef<GatewayMsg>,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl GatewayHandle {
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// False once the gateway actor has stopped or failed.
    pub fn running(&self) -> bool {
        matches!(
            self.actor.get_status(),
            ActorStatus::Running | ActorStatus::Starting | ActorStatus::Upgrading
        )
    }
}

#[derive(ractor_cluster::RactorMessage)]
pub enum GatewayMsg {
    /// Reports the gateway's work in flight as a metric.
    Tick,
}

pub struct Gateway;

pub struct GatewayArgs {
    pub name: &'static str,
    pub max_in_flight: usize,
    /// Where the gateway registers itself, and the metrics it reports to.
    pub gateways: Arc<Gateways>,
}

/// The running gateways by name (`GATEWAYS`): each registers itself when it
/// starts; callers run work through `run`.
pub struct Gateways {
    running: RwLock<HashMap<&'static str, GatewayHandle>>,
    metrics: Arc<Metrics>,
}

impl Gateways {
    pub fn new(metrics: Arc<Metrics>) -> Gateways {
        Gateways {
            running: RwLock::new(HashMap::new()),
            metrics,
        }
    }

    /// Which gateway actor `id` is, if it is a registered one.
    pub(crate) fn named(&self, id: ractor::ActorId) -> Option<&'static str> {
        self.running
            .read()
            .iter()
            .find(|(_, g)| g.actor.get_id() == id)
            .map(|(n, _)| *n)
    }

    /// The running gateway `name`, if any.
    pub fn get(&self, name: &str) -> Option<GatewayHandle> {
        self.running.read().get(name).cloned()
    }

    /// Unregisters every gateway (shutdown): their actors.
    pub(crate) fn drain(&self) -> Vec<ractor::ActorCell> {
        self.running
            .write()
            .drain()
            .map(|(_, g)| g.actor.get_cell())
            .collect()
    }

    /// Runs `work` through gateway `name`, on the caller's task, if the
    /// gateway has room for it.
    pub async fn run<T>(
        &self,
        name: &'static str,
        work: impl Future<Output = T>,
    ) -> Result<T, GatewayError> {
        // A gateway that died admits nothing until the root has restarted it.
        let permits = self
            .running
            .read()
            .get(name)
            .filter(|g| g.running())
            .map(|g| g.permits.clone())
            .ok_or(GatewayError::Unavailable(name))?;
        let Ok(_permit) = permits.try_acquire_owned() else {
            self.metrics.gateway_busy.inc();
            return Err(GatewayError::Busy(name));
        };
        Ok(work.await)
    }
}

pub struct GatewayState {
    args: GatewayArgs,
    permits: Arc<Semaphore>,
}

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        let permits = Arc::new(Semaphore::new(args.max_in_flight));
        args.gateways.running.write().insert(
            args.name,
            GatewayHandle {
                actor: myself.clone(),
                permits: permits.clone(),
                limit: args.max_in_flight,
            },
        );
        myself.send_interval(Duration::from_secs(1), || GatewayMsg::Tick);
        Ok(GatewayState { args, permits })
    }

    async fn handle(
        &self,
        _myself: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        st: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Tick => {
                let in_flight = st.args.max_in_flight - st.permits.available_permits();
                st.args
                    .gateways
                    .metrics
                    .gateway_in_flight
                    .get_or_create(&crate::metrics::GatewayLabel {
                        gateway: st.args.name.to_owned(),
                    })
                    .set(in_flight as i64);
            }
        }
        Ok(())
    }
}

/// Why a gateway did not run a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("the {0} gateway is at its limit of work in flight; retry shortly")]
    Busy(&'static str),
    #[error("the {0} gateway is restarting; retry shortly")]
    Unavailable(&'static str),
}
