//! The agent pool: escalations, assignments, notes and agent commands, here
//! or on the cluster's pool home.

use super::*;
use std::sync::Arc;

use ractor::ActorRef;
use threadline_protocol::ConversationId;
use tokio::sync::oneshot;

use crate::cluster::{PoolAsk, SessionHandle};
use crate::command::{ConvAnswer, ConvOp};
use crate::conversation::ConvMsg;

impl Router {
    /// Asks for a person for conversation `conv` (the pool is told once it
    /// is durable). `Some(false)`: an agent already holds it; `None`: no
    /// such conversation.
    pub async fn escalate(
        &self,
        conv: ConversationId,
        reason: &str,
        skills: Vec<String>,
        priority: i32,
    ) -> Result<Option<bool>, DeliverError> {
        let op = ConvOp::Escalate {
            conv,
            reason: reason.to_owned(),
            skills,
            priority,
        };
        Ok(match self.conv_op(op, true).await? {
            Some(ConvAnswer::Escalated(fresh)) => Some(fresh),
            _ => None,
        })
    }

    /// Records who holds conversation `conv`.
    pub async fn assign(
        &self,
        conv: ConversationId,
        agent: Option<String>,
    ) -> Result<(), DeliverError> {
        self.conv_op(ConvOp::Assign(conv, agent), true)
            .await
            .map(|_| ())
    }

    /// A system note in the transcript of `conv`.
    /// A private note on `conv` (an internal entry); false: no such
    /// conversation.
    pub async fn add_note(&self, conv: ConversationId, text: String) -> Result<bool, DeliverError> {
        Ok(self
            .conv_op(ConvOp::Note(conv, text), true)
            .await?
            .is_some())
    }

    pub async fn note(&self, conv: ConversationId, text: String) -> Result<(), DeliverError> {
        self.conv_op(ConvOp::Note(conv, text), true)
            .await
            .map(|_| ())
    }

    /// The business records how the booked appointment of `conv` went.
    /// `None`: no such conversation.
    pub async fn booking_outcome(
        &self,
        conv: ConversationId,
        outcome: crate::conversation::core::BookingOutcome,
    ) -> Result<Option<Result<(), crate::conversation::core::BookingOutcomeError>>, DeliverError>
    {
        Ok(
            match self.conv_op(ConvOp::Outcome(conv, outcome), true).await? {
                Some(ConvAnswer::Outcome(r)) => Some(r),
                _ => None,
            },
        )
    }

    /// An agent closes `conv` with a disposition.
    pub async fn close_by_agent(
        &self,
        conv: ConversationId,
        agent: &str,
        disposition: &str,
    ) -> Result<(), DeliverError> {
        let op = ConvOp::Close {
            conv,
            agent: agent.to_owned(),
            disposition: disposition.to_owned(),
        };
        self.conv_op(op, true).await.map(|_| ())
    }

    /// A write to a conversation by id: here when this node holds it, else
    /// (with `forward`, in a cluster) on the node that does. `None`: no
    /// such conversation.
    pub(crate) async fn conv_op(
        &self,
        op: ConvOp,
        forward: bool,
    ) -> Result<Option<ConvAnswer>, DeliverError> {
        let id = op.conversation();
        let Some(key) = self.key_of(id).await? else {
            return match self.shared.cluster().filter(|_| forward) {
                Some(c) => c.conv_op(op).await,
                None => Ok(None),
            };
        };
        let watched = &self.shared.pool_watched;
        Ok(Some(match op {
            ConvOp::Assign(_, agent) => {
                let taken = agent.is_some();
                self.ask_write(&key, |reply| ConvMsg::Assign {
                    agent: agent.clone(),
                    reply,
                })
                .await?;
                // The feed hands this node's messages of held
                // conversations to the pool, wherever it runs.
                watched.set(id, taken);
                ConvAnswer::Done
            }
            ConvOp::Note(_, text) => {
                self.ask_write(&key, |reply| ConvMsg::Note {
                    text: text.clone(),
                    reply,
                })
                .await?;
                ConvAnswer::Done
            }
            ConvOp::Close {
                agent, disposition, ..
            } => {
                self.ask_write(&key, |reply| ConvMsg::CloseByAgent {
                    agent: agent.clone(),
                    disposition: disposition.clone(),
                    reply,
                })
                .await?;
                watched.set(id, false);
                ConvAnswer::Done
            }
            ConvOp::Send(_, spec) => {
                let sent = self
                    .ask_write(&key, |reply| ConvMsg::SendMessage {
                        spec: spec.clone(),
                        create: false,
                        reply,
                    })
                    .await?;
                match sent {
                    Some((_, outcome)) => ConvAnswer::Sent(outcome),
                    None => return Ok(None),
                }
            }
            ConvOp::Escalate {
                reason,
                skills,
                priority,
                ..
            } => ConvAnswer::Escalated(
                self.ask_write(&key, |reply| ConvMsg::Escalate {
                    reason: reason.clone(),
                    skills: skills.clone(),
                    priority,
                    reply,
                })
                .await?,
            ),
            ConvOp::Outcome(_, outcome) => ConvAnswer::Outcome(
                self.ask_write(&key, |reply| ConvMsg::BookingOutcome { outcome, reply })
                    .await?,
            ),
            ConvOp::Timer(_, spec) => {
                let timer = self
                    .ask_write(&key, |reply| ConvMsg::ScheduleTimer {
                        spec: spec.clone(),
                        reply,
                    })
                    .await?;
                match timer {
                    Some(id) => ConvAnswer::Timer(id),
                    None => return Ok(None),
                }
            }
            ConvOp::Status { seq, report, .. } => {
                let found = self
                    .ask_write(&key, |reply| ConvMsg::ProviderStatus {
                        seq: Some(seq),
                        report: report.clone(),
                        reply,
                    })
                    .await?;
                if !found {
                    return Ok(None);
                }
                ConvAnswer::Done
            }
        }))
    }

    /// The cluster and the agent pool's home, when the home is another node.
    pub(super) fn remote_pool(&self) -> Option<(Arc<crate::cluster::Cluster>, String)> {
        let c = self.shared.cluster()?;
        let home = c.pool_home()?;
        Some((c, home))
    }

    pub(super) fn pool(&self) -> Result<ActorRef<crate::pool::PoolMsg>, DeliverError> {
        self.shared
            .pool
            .read()
            .clone()
            .ok_or_else(|| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// Casts to this node's pool actor (what the cluster passes on to it).
    pub(crate) fn pool_here(&self, msg: crate::pool::PoolMsg) {
        if let Ok(p) = self.pool() {
            let _ = p.cast(msg);
        }
    }

    pub(super) async fn ask_pool<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> crate::pool::PoolMsg,
    ) -> Result<T, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.pool()?
            .cast(make(tx))
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))?;
        rx.await
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// Adds or replaces a human agent (here, and on the pool's home).
    pub fn upsert_agent(&self, spec: crate::pool::routing::AgentSpec) -> Result<(), DeliverError> {
        if let Some((c, home)) = self.remote_pool() {
            c.tell_upsert(&home, spec.clone())?;
        }
        self.shared.remember_agent(Some(&spec), &spec.id);
        self.pool()?
            .cast(crate::pool::PoolMsg::Upsert(spec))
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// Removes a human agent; false if unknown.
    pub async fn remove_agent(&self, id: &str) -> Result<bool, DeliverError> {
        let here = self.remove_agent_here(id).await?;
        match self.remote_pool() {
            Some((c, home)) => c.pool_ask(&home, &PoolAsk::Remove(id.to_owned())).await,
            None => Ok(here),
        }
    }

    pub(crate) async fn remove_agent_here(&self, id: &str) -> Result<bool, DeliverError> {
        self.shared.remember_agent(None, id);
        self.ask_pool(|reply| crate::pool::PoolMsg::Remove(id.to_owned(), reply))
            .await
    }

    /// Every agent with presence and whether a desktop is connected (as
    /// the pool's home knows them).
    pub async fn agents(&self) -> Result<AgentList, DeliverError> {
        match self.remote_pool() {
            Some((c, home)) => c.pool_ask(&home, &PoolAsk::List).await,
            None => self.agents_here().await,
        }
    }

    pub(crate) async fn agents_here(&self) -> Result<AgentList, DeliverError> {
        self.ask_pool(crate::pool::PoolMsg::List).await
    }

    pub async fn queue_stats(
        &self,
        tenant: &str,
    ) -> Result<crate::pool::routing::QueueStats, DeliverError> {
        match self.remote_pool() {
            Some((c, home)) => c.pool_ask(&home, &PoolAsk::Stats(tenant.to_owned())).await,
            None => self.queue_stats_here(tenant).await,
        }
    }

    pub(crate) async fn queue_stats_here(
        &self,
        tenant: &str,
    ) -> Result<crate::pool::routing::QueueStats, DeliverError> {
        self.ask_pool(|reply| crate::pool::PoolMsg::Stats {
            tenant: tenant.to_owned(),
            reply,
        })
        .await
    }

    /// Whether some agent of `tenant` could take a call right now.
    pub async fn can_take_call(&self, tenant: &str) -> Result<bool, DeliverError> {
        match self.remote_pool() {
            Some((c, home)) => {
                c.pool_ask(&home, &PoolAsk::CanTakeCall(tenant.to_owned()))
                    .await
            }
            None => self.can_take_call_here(tenant).await,
        }
    }

    pub(crate) async fn can_take_call_here(&self, tenant: &str) -> Result<bool, DeliverError> {
        self.ask_pool(|reply| crate::pool::PoolMsg::CanTakeCall {
            tenant: tenant.to_owned(),
            reply,
        })
        .await
    }

    /// Starts a desktop session for `agent`; its events arrive on `events`.
    /// In a cluster whose pool runs elsewhere, the session is on the
    /// pool's home and its events are relayed here.
    pub async fn join_agent(
        &self,
        agent: &str,
        events: tokio::sync::mpsc::Sender<crate::pool::AgentEvent>,
    ) -> Result<Result<SessionHandle, String>, DeliverError> {
        if let Some((c, home)) = self.remote_pool() {
            return c.join_relayed(&home, agent, events).await;
        }
        Ok(self
            .join_agent_here(agent, events)
            .await?
            .map(SessionHandle::Local))
    }

    pub(crate) async fn join_agent_here(
        &self,
        agent: &str,
        events: tokio::sync::mpsc::Sender<crate::pool::AgentEvent>,
    ) -> Result<Result<ActorRef<crate::pool::SessionMsg>, String>, DeliverError> {
        self.ask_pool(|reply| crate::pool::PoolMsg::Join {
            agent: agent.to_owned(),
            events,
            reply,
        })
        .await
    }

    /// A command from `agent`'s desktop.
    pub fn agent_command(
        &self,
        agent: &str,
        cmd: crate::pool::AgentCommand,
    ) -> Result<(), DeliverError> {
        if let Some((c, home)) = self.remote_pool() {
            return c.tell_command(&home, agent, cmd);
        }
        self.pool()?
            .cast(crate::pool::PoolMsg::Command {
                agent: agent.to_owned(),
                cmd,
            })
            .map_err(|_| DeliverError::Unavailable("the agent pool is restarting".into()))
    }

    /// A committed escalation, for the pool wherever it runs.
    pub(crate) fn escalated(&self, e: crate::pool::Escalation) {
        match self.remote_pool() {
            Some((c, home)) => c.tell_escalated(&home, e),
            None => self.pool_here(crate::pool::PoolMsg::Escalate(e)),
        }
    }

    /// A committed message of a conversation an agent holds, for the pool
    /// wherever it runs.
    pub(crate) fn published_to_pool(&self, p: &crate::feed::Published) {
        match self.remote_pool() {
            Some((c, home)) => c.tell_published(&home, p.conversation, p.message.clone()),
            None => self.pool_here(crate::pool::PoolMsg::Published {
                conversation: p.conversation,
                message: Box::new(p.message.clone()),
            }),
        }
    }

    /// The pool's rows of the conversations this node holds (not of its
    /// replicas, nor of conversations that moved away).
    pub(crate) async fn held_work(
        &self,
    ) -> Result<Vec<threadline_protocol::AgentWork>, DeliverError> {
        self.blocking(|s| {
            let mut rows = s.agent_work()?;
            let mut held = Vec::with_capacity(rows.len());
            for w in rows.drain(..) {
                if s.contact_of(w.conv)?.is_some() {
                    held.push(w);
                }
            }
            Ok(held)
        })
        .await
    }
}
