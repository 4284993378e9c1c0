//! What a desktop asks: presence, accepting and rejecting offers, replies,
//! transfers, notes and closing.

use super::*;

use ractor::ActorRef;

use crate::consent::policy::Purpose;
use crate::conversation::core::OutboundSpec;
use crate::pool::routing::{AgentSpec, Effect, Pool, PoolError};

impl PoolState {
    /// The cluster's pool home moved (see `PoolMsg::Reset`).
    pub(super) async fn reset(&mut self) {
        let sessions: Vec<ActorRef<SessionMsg>> =
            self.sessions.drain().flat_map(|(_, s)| s).collect();
        for s in &sessions {
            self.args.shared.metrics.agent_sessions.dec();
            s.stop(Some("the agent pool moved; reconnect".into()));
        }
        let open: Vec<u64> = self.offer_timers.keys().copied().collect();
        for offer in open {
            self.offer_ended(offer);
        }
        let now = self.now();
        let agents: Vec<AgentSpec> = self.pool.agents().map(|(s, _, _)| s.clone()).collect();
        let mut pool = Pool::new(self.args.offer_ttl.as_millis() as i64);
        for a in agents {
            pool.upsert_agent(a, now);
        }
        let home = cluster_home(&self.args.shared);
        let rows = match self.args.shared.cluster() {
            Some(c) if home => c.gather_work(&self.router).await,
            _ => self.router.held_work().await.unwrap_or_default(),
        };
        let restored = restore(&self.args, &mut pool, rows, Vec::new(), now, home);
        self.pool = pool;
        self.grace = restored.grace;
        self.tenants = restored.tenants;
        self.offer_timers = restored.offer_timers;
        tracing::info!(home, "agent pool reset");
    }

    pub(super) async fn command(&mut self, agent: String, cmd: AgentCommand) {
        let now = self.now();
        let r = match cmd {
            AgentCommand::Queue => {
                self.queue_stats(&agent, now);
                Ok(Vec::new())
            }
            AgentCommand::Status(p) => self.pool.set_presence(&agent, p, now).inspect(|_| {
                self.tell(&agent, AgentEvent::Status { status: p });
            }),
            AgentCommand::Accept { offer } => self
                .pool
                .accept(&agent, offer, now)
                .inspect(|_| self.offer_ended(offer)),
            AgentCommand::Reject { offer } => self
                .pool
                .reject(&agent, offer, now)
                .inspect(|_| self.offer_ended(offer)),
            AgentCommand::Send { conversation, text } => {
                if self.pool.holder(conversation.0) != Some(agent.as_str()) {
                    Err(PoolError::NotHolding)
                } else {
                    let router = self.router.clone();
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let author = agent.clone();
                    tokio::spawn(async move {
                        let spec = OutboundSpec {
                            text,
                            channel: None,
                            purpose: Purpose::Conversational,
                            agent: Some(author),
                            requested: false,
                            subject: None,
                        };
                        let e = match router.send_to_conversation(conversation, spec).await {
                            Ok(Some(outcome)) => AgentEvent::Sent {
                                conversation,
                                outcome,
                            },
                            Ok(None) => AgentEvent::Error {
                                code: "not_found".into(),
                                message: format!("no conversation {conversation}"),
                            },
                            Err(e) => AgentEvent::Error {
                                code: "unavailable".into(),
                                message: e.to_string(),
                            },
                        };
                        for s in sessions {
                            let _ = s.cast(SessionMsg::Deliver(e.clone()));
                        }
                    });
                    Ok(Vec::new())
                }
            }
            AgentCommand::Transfer {
                conversation,
                to_agent,
                to_skill,
                note,
            } => {
                let skills: Vec<String> = to_skill.into_iter().collect();
                let to = to_agent
                    .clone()
                    .or_else(|| skills.first().map(|s| format!("skill:{s}")))
                    .unwrap_or_else(|| "queue".into());
                let r = self
                    .pool
                    .transfer(&agent, conversation.0, to_agent, skills, 0, now);
                if r.is_ok() {
                    self.tell(
                        &agent,
                        AgentEvent::Transferred {
                            conversation,
                            to: to.clone(),
                        },
                    );
                    if let Some(note) = note.filter(|n| !n.trim().is_empty()) {
                        let text = format!("[transfer note from agent:{agent} to {to}: {note}]");
                        let _ = self.assignments.send(Write::Note(conversation, text));
                    }
                }
                r
            }
            AgentCommand::Note { conversation, text } => {
                if self.pool.holder(conversation.0) != Some(agent.as_str()) {
                    Err(PoolError::NotHolding)
                } else {
                    let text = format!("[private note from agent:{agent}: {text}]");
                    let _ = self.assignments.send(Write::Note(conversation, text));
                    Ok(Vec::new())
                }
            }
            AgentCommand::Close {
                conversation,
                disposition,
            } => match self.pool.release(&agent, conversation.0, now) {
                Ok(effects) => {
                    // The close itself records that nobody holds it.
                    let effects: Vec<Effect> = effects
                        .into_iter()
                        .filter(|e| !matches!(e, Effect::Released { .. }))
                        .collect();
                    self.watched().0.remove(&conversation.0);
                    self.tenants.remove(&conversation.0);
                    let router = self.router.clone();
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let closer = agent.clone();
                    tokio::spawn(async move {
                        let e = match router
                            .close_by_agent(conversation, &closer, &disposition)
                            .await
                        {
                            Ok(()) => AgentEvent::Closed { conversation },
                            Err(e) => AgentEvent::Error {
                                code: "unavailable".into(),
                                message: e.to_string(),
                            },
                        };
                        for s in sessions {
                            let _ = s.cast(SessionMsg::Deliver(e.clone()));
                        }
                    });
                    Ok(effects)
                }
                Err(e) => Err(e),
            },
        };
        match r {
            Ok(effects) => self.apply(effects),
            Err(e) => self.error(&agent, e),
        }
    }
}
