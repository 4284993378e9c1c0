//! Carrying out the routing policy's effects: offers (durable holds and their
//! timers), assignments, desktop events and the queue's figures.

use super::*;

use threadline_protocol::codec::{encode_offer_hold, TimerOwner, TimerRow};
use threadline_protocol::{ConversationId, OfferHold, Timestamp};

use crate::consent::policy::Purpose;
use crate::conversation::core::OutboundSpec;
use crate::persistence::Op;
use crate::pool::routing::{Effect, PoolError};
use crate::store::TimerIndex;

impl PoolState {
    pub(super) fn tell(&self, agent: &str, e: AgentEvent) {
        if let Some(s) = self.sessions.get(agent) {
            for s in s {
                let _ = s.cast(SessionMsg::Deliver(e.clone()));
            }
        }
    }

    /// Carries out what the routing policy decided.
    pub(super) fn apply(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Offer {
                    offer,
                    agent,
                    conv,
                    expires,
                } => {
                    self.offer_opened(offer, &agent, conv, expires);
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let router = self.router.clone();
                    let ttl = expires.0 - self.now().0;
                    self.args.shared.metrics.offers.inc();
                    tokio::spawn(async move {
                        if let Ok(Some(state)) = router.view_by_id(ConversationId(conv)).await {
                            let e = AgentEvent::Offer {
                                offer,
                                conversation: Box::new(state),
                                expires_in_ms: ttl,
                            };
                            for s in sessions {
                                let _ = s.cast(SessionMsg::Deliver(e.clone()));
                            }
                        }
                    });
                }
                Effect::Rescind { offer, agent, conv } => {
                    self.offer_ended(offer);
                    self.tell(
                        &agent,
                        AgentEvent::OfferRescinded {
                            offer,
                            conversation: ConversationId(conv),
                        },
                    )
                }
                Effect::Assigned { agent, conv } => {
                    self.watched().0.insert(conv, ());
                    if let (Some(since), Some(tenant)) =
                        (self.pool.waited_since(conv), self.tenants.get(&conv))
                    {
                        let waited = self.now().0 - since.0;
                        self.args
                            .shared
                            .metrics
                            .outcomes
                            .wait("escalation_wait", tenant, waited);
                    }
                    let sessions = self.sessions.get(&agent).cloned().unwrap_or_default();
                    let _ = self.assignments.send(Write::Assign(
                        ConversationId(conv),
                        Some(agent),
                        sessions,
                    ));
                }
                Effect::Waiting { .. } if self.args.wait_text.is_empty() => {}
                Effect::Waiting { conv, position } => {
                    let router = self.router.clone();
                    let text = self
                        .args
                        .wait_text
                        .replace("{position}", &position.to_string());
                    tokio::spawn(async move {
                        let spec = OutboundSpec {
                            text,
                            channel: None,
                            purpose: Purpose::Conversational,
                            agent: None,
                            requested: false,
                            subject: None,
                        };
                        let _ = router
                            .send_to_conversation(ConversationId(conv), spec)
                            .await;
                    });
                }
                Effect::Released { agent: _, conv } => {
                    self.watched().0.remove(&conv);
                    if !self.pool.is_queued(conv) {
                        self.tenants.remove(&conv);
                    }
                    let _ = self.assignments.send(Write::Assign(
                        ConversationId(conv),
                        None,
                        Vec::new(),
                    ));
                }
            }
        }
    }

    /// An offer's deadline is a durable scheduler timer, written with the
    /// offer (`OfferHold`) so a restart keeps both.
    pub(super) fn offer_opened(&mut self, offer: u64, agent: &str, conv: u64, expires: Timestamp) {
        let shared = &self.args.shared;
        let timer = shared
            .next_timer_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let row = TimerRow {
            id: timer,
            due: expires,
            owner: TimerOwner::Offer {
                conv: ConversationId(conv),
                offer,
            },
        };
        let hold = OfferHold {
            conv: ConversationId(conv),
            agent: agent.to_owned(),
            offer,
            timer,
            expires,
        };
        self.offer_timers.insert(offer, (conv, timer));
        let _ = self.assignments.send(Write::Durable(Box::new(Op::Offer {
            conv: ConversationId(conv),
            hold: Some(encode_offer_hold(&hold)),
            timer: TimerIndex::Put(row),
            done: None,
        })));
        shared.scheduler.add(row);
    }

    /// The offer was accepted, rejected, withdrawn or expired. Called
    /// before the effects that follow it (a new offer of the same
    /// conversation must be written after this one ended).
    pub(super) fn offer_ended(&mut self, offer: u64) {
        let Some((conv, timer)) = self.offer_timers.remove(&offer) else {
            return;
        };
        let _ = self.assignments.send(Write::Durable(Box::new(Op::Offer {
            conv: ConversationId(conv),
            hold: None,
            timer: TimerIndex::Delete(timer),
            done: None,
        })));
        self.args.shared.scheduler.remove(timer);
    }

    pub(super) fn on_time(&mut self) {
        let now = self.now();
        let due: Vec<String> = self
            .grace
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(a, _)| a.clone())
            .collect();
        for agent in due {
            self.grace.remove(&agent);
            tracing::info!(agent, "grace period over; re-queueing what the agent held");
            let effects = self.pool.requeue_all(&agent, now);
            self.apply(effects);
        }
    }

    pub(super) fn error(&self, agent: &str, e: PoolError) {
        let code = match e {
            PoolError::UnknownAgent(_) => "unknown_agent",
            PoolError::NoSuchOffer(_) => "no_such_offer",
            PoolError::NotHolding => "not_yours",
            PoolError::BadTarget(_) => "bad_target",
        };
        self.tell(
            agent,
            AgentEvent::Error {
                code: code.into(),
                message: e.to_string(),
            },
        );
    }

    /// Tells `agent`'s desktops how the queues of their tenants stand. The
    /// desktops ask (every few seconds while open) rather than being told
    /// on every change: a push to every desktop at once stalled the node
    /// for ~20 ms with 1,000 desktops (measured), a pull spreads out.
    pub(super) fn queue_stats(&self, agent: &str, now: Timestamp) {
        let Some(spec) = self.pool.agent(agent) else {
            return;
        };
        for tenant in &spec.tenants {
            self.tell(
                agent,
                AgentEvent::Queue {
                    tenant: tenant.clone(),
                    stats: self.pool.stats(tenant, now),
                },
            );
        }
    }
}
