//! One connected desktop: the actor between its WebSocket and the pool.

use super::*;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// One agent desktop connection. The WebSocket layer reads frames into
/// commands and writes the events this actor queues; if the desktop cannot
/// keep up, the session ends (the desktop reconnects within the grace).
pub struct AgentSession;

pub struct SessionArgs {
    pub agent: String,
    pub events: mpsc::Sender<AgentEvent>,
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
