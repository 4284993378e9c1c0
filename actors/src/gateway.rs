//! Channel gateways: one supervised actor per inbound channel family
//! (`twilio`, `whatsapp`, `webchat`, `api`). The HTTP and WebSocket layer
//! (which alone knows the wire formats) parses and authenticates provider
//! traffic, then hands each normalized piece of work to its gateway. The
//! gateway admits at most `max_in_flight` at a time (beyond that the
//! caller answers 503 with Retry-After: backpressure where load enters)
//! and runs each on its own task, so one slow conversation does not hold
//! up the channel.
//!
//! A gateway that fails is restarted by the root supervisor. Work it had
//! admitted but not finished is abandoned with it: none of it was
//! acknowledged (an acknowledgment is sent only once the work is durable),
//! so the provider retries it, and provider message ids make the retry
//! idempotent. Nothing acknowledged is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::runtime::Shared;

/// The gateways every node runs.
pub const GATEWAYS: [&str; 4] = ["api", "twilio", "whatsapp", "webchat"];

pub type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

pub enum GatewayMsg {
    /// Runs `job` if there is room; says whether it was admitted.
    Admit {
        job: Job,
        admitted: oneshot::Sender<bool>,
    },
    /// A job ended (sent by the job's own task).
    Finished,
}

pub struct Gateway;

pub struct GatewayArgs {
    pub name: &'static str,
    pub max_in_flight: usize,
    pub shared: Arc<Shared>,
}

pub struct GatewayState {
    args: GatewayArgs,
    jobs: JoinSet<()>,
}

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        Ok(GatewayState {
            args,
            jobs: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        st: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Admit { job, admitted } => {
                while st.jobs.try_join_next().is_some() {}
                if st.jobs.len() >= st.args.max_in_flight {
                    st.args.shared.metrics.gateway_busy.inc();
                    let _ = admitted.send(false);
                    return Ok(());
                }
                let me = myself.clone();
                st.jobs.spawn(async move {
                    job.await;
                    let _ = me.cast(GatewayMsg::Finished);
                });
                let _ = admitted.send(true);
            }
            GatewayMsg::Finished => while st.jobs.try_join_next().is_some() {},
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

/// Runs `work` on gateway `name` and returns its result once it finished.
pub async fn run<T: Send + 'static>(
    shared: &Shared,
    name: &'static str,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, GatewayError> {
    let gateway = shared
        .gateways
        .read()
        .get(name)
        .cloned()
        .ok_or(GatewayError::Unavailable(name))?;
    let (tx, rx) = oneshot::channel();
    let (admit_tx, admit_rx) = oneshot::channel();
    let job: Job = Box::pin(async move {
        let _ = tx.send(work.await);
    });
    gateway
        .cast(GatewayMsg::Admit {
            job,
            admitted: admit_tx,
        })
        .map_err(|_| GatewayError::Unavailable(name))?;
    match admit_rx.await {
        Ok(true) => rx.await.map_err(|_| GatewayError::Unavailable(name)),
        Ok(false) => Err(GatewayError::Busy(name)),
        Err(_) => Err(GatewayError::Unavailable(name)),
    }
}
