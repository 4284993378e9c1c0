//! Committing a turn: its events, outbox rows, timers, audit records and
//! summary in one durable write, then its effects (sends, timers, the feed,
//! escalations) once it is durable.

use super::*;
use std::sync::atomic::Ordering;

use ractor::ActorRef;
use threadline_protocol::codec::{self, LogRecord, TimerOwner, TimerRow};
use threadline_protocol::{Channel, ConvEvent, ConversationId, ConversationState};

use crate::audit::AuditDraft;
use crate::conversation::ConvKey;
use crate::persistence::{Done, Op};
use crate::store::{OutboxWrite, TimerIndex};

impl ConvState {
    /// Queues `events` (already applied to the state) as one durable write,
    /// with the timer index changes they imply; `then` runs once they are
    /// durable (or definitely failed). The scheduler learns of new and
    /// finished timers only after the commit.
    pub(super) async fn commit(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        events: Vec<(u32, ConvEvent)>,
        index: Option<ContactIndex>,
        then: impl FnOnce(Result<(), ConvError>) + Send + 'static,
    ) {
        let Some(conv) = &self.conv else {
            then(Ok(()));
            return;
        };
        let id = conv.id();
        // In a cluster, the calendar's home takes the holds and bookings
        // first; refused, nothing of this change is kept (the conversation
        // reloads its durable state) and the caller retries.
        if !self.pending_calendar.is_empty() {
            if let Some(cluster) = self.args.router.shared.cluster() {
                let tenant = self.args.key.tenant();
                let reserved = cluster
                    .calendar_reserve(tenant, id.0, &self.pending_calendar)
                    .await;
                if let Err(e) = reserved {
                    self.pending_calendar.clear();
                    self.commits.failed.store(true, Ordering::SeqCst);
                    then(Err(ConvError::Unavailable(e)));
                    let _ = myself.cast(ConvMsg::StorageFailed);
                    return;
                }
            }
        }
        let owner = TimerOwner::Conversation(id);
        let mut timers = Vec::new();
        let mut audit = Vec::new();
        let mut outbox = Vec::new();
        let mut records = Vec::with_capacity(events.len());
        // The purpose of the last WhatsApp decision to use a template: the
        // message it let through follows it in the same batch.
        let mut template: Option<String> = None;
        let mut published = Vec::new();
        let mut escalations = Vec::new();
        let mut work: Vec<crate::store::WorkWrite> = Vec::new();
        let closes = events.iter().any(|(_, e)| {
            matches!(
                e,
                ConvEvent::StatusChanged {
                    status: threadline_protocol::Status::Closed,
                    ..
                }
            )
        });
        for (_, e) in events.iter().filter(|_| !self.importing) {
            if let ConvEvent::MessageAppended(m) = e {
                if self.args.router.shared.feed.wants(id, m) {
                    published.push(crate::feed::Published {
                        tenant: self.args.key.tenant().to_owned(),
                        conversation: id,
                        contact: self.args.key.contact().to_owned(),
                        identities: conv.state.identities.clone(),
                        message: m.clone(),
                    });
                }
            }
        }
        let outcomes = if self.importing {
            Vec::new()
        } else {
            record_outcomes(
                &self.args.router.shared.metrics.outcomes,
                &conv.state,
                &events,
                &self.journey_seen,
            )
        };
        // (Most commits do not change the journey: no copy for them.)
        if events
            .iter()
            .any(|(_, e)| matches!(e, ConvEvent::JourneyChanged(_)))
        {
            self.journey_seen.clone_from(&conv.state.journey);
        }
        for (seq, event) in events {
            if let Some(draft) = audit_draft(&self.args.key, id, &event) {
                audit.push(draft);
            }
            let row = |agent: Option<String>, skills: Vec<String>, priority: i32, since| {
                crate::store::WorkWrite::Put(threadline_protocol::AgentWork {
                    conv: id,
                    tenant: self.args.key.tenant().to_owned(),
                    channel: conv.last_inbound_channel(),
                    skills,
                    priority,
                    since,
                    agent,
                })
            };
            match &event {
                ConvEvent::Escalated {
                    skills,
                    priority,
                    at,
                    ..
                } => work.push(row(None, skills.clone(), *priority, *at)),
                // Closed: nobody needs it any more.
                ConvEvent::AgentAssigned { agent: None, .. } if closes => {
                    work.push(crate::store::WorkWrite::Delete(id.0))
                }
                // Released without a close: it waits again (transfer,
                // requeue); taken: it is held.
                ConvEvent::AgentAssigned { agent, at } => {
                    work.push(row(agent.clone(), Vec::new(), 0, *at))
                }
                _ => {}
            }
            if let ConvEvent::Escalated {
                skills, priority, ..
            } = &event
            {
                escalations.push(crate::pool::Escalation {
                    conv: id,
                    tenant: self.args.key.tenant().to_owned(),
                    channel: conv.last_inbound_channel(),
                    skills: skills.clone(),
                    priority: *priority,
                });
            }
            match &event {
                ConvEvent::Decided(d) => {
                    template = d
                        .rule
                        .starts_with(crate::consent::policy::WHATSAPP_TEMPLATE_RULE)
                        .then(|| d.purpose.clone());
                }
                ConvEvent::MessageAppended(m)
                    if m.direction == threadline_protocol::Direction::Outbound
                        && m.delivery == threadline_protocol::Delivery::Queued =>
                {
                    outbox.push(OutboxWrite::Put(threadline_protocol::OutboxEntry {
                        conv: id,
                        seq: m.seq,
                        tenant: self.args.key.tenant().to_owned(),
                        to: conv
                            .state
                            .identities
                            .address_for(m.channel)
                            .unwrap_or(self.args.key.contact())
                            .to_owned(),
                        channel: m.channel,
                        body: m.text.clone(),
                        template: template.take().filter(|_| m.channel == Channel::Whatsapp),
                    }))
                }
                ConvEvent::DeliveryUpdated { seq, .. } => {
                    outbox.push(OutboxWrite::Delete(id.0, *seq))
                }
                _ => {}
            }
            match &event {
                ConvEvent::TimerScheduled(t) => timers.push(TimerIndex::Put(TimerRow {
                    id: t.id,
                    due: t.due,
                    owner,
                })),
                ConvEvent::TimerFired { id, .. } | ConvEvent::TimerCancelled { id } => {
                    timers.push(TimerIndex::Delete(*id))
                }
                _ => {}
            }
            records.push((
                seq,
                codec::encode_log_record(&LogRecord {
                    conv: id,
                    seq,
                    event,
                }),
            ));
        }
        let route =
            self.args
                .router
                .shared
                .persistence
                .replicating()
                .then(|| crate::persistence::Route {
                    key: self.args.key.clone(),
                    epoch: self.epoch,
                    through: conv.state.last_seq,
                });
        if records.is_empty() {
            // Nothing new: answer once everything before is durable (and,
            // in a cluster, once the replica is known to have it all).
            let done: Done = Box::new(move |r| then(r.map_err(conv_error)));
            let op = match route {
                Some(route) => Op::replica_check(id, route, done),
                None => Op::Barrier { done },
            };
            let _ = self.args.router.shared.persistence.submit(op).await;
            return;
        }
        self.since_snapshot += records.len() as u32;
        let commits = self.commits.clone();
        commits.in_flight.fetch_add(1, Ordering::SeqCst);
        let me = myself.clone();
        let shared = self.args.router.shared.clone();
        // Only a commit that escalates reaches the pool.
        let router = (!escalations.is_empty()).then(|| self.args.router.clone());
        let notify = timers.clone();
        let queued: Vec<threadline_protocol::OutboxEntry> = outbox
            .iter()
            .filter_map(|w| match w {
                OutboxWrite::Put(e) => Some(e.clone()),
                OutboxWrite::Delete(..) => None,
            })
            .collect();
        let done: Done = Box::new(move |r| match r {
            Ok(()) => {
                commits.in_flight.fetch_sub(1, Ordering::SeqCst);
                shared.outbox.enqueue(queued);
                for p in &published {
                    shared.feed.publish(p);
                }
                if let Some(router) = &router {
                    for e in escalations {
                        router.escalated(e);
                    }
                }
                for t in notify {
                    match t {
                        TimerIndex::Put(row) => shared.scheduler.add(row),
                        TimerIndex::Delete(id) => shared.scheduler.remove(id),
                    }
                }
                then(Ok(()));
            }
            Err(e) => {
                // Known before anyone hears of the failure: no read
                // answered after this shows the refused events.
                commits.failed.store(true, Ordering::SeqCst);
                commits.in_flight.fetch_sub(1, Ordering::SeqCst);
                then(Err(conv_error(e)));
                let _ = me.cast(ConvMsg::StorageFailed);
            }
        });
        let op = Op::Event {
            conv: id,
            records,
            index,
            timers,
            audit,
            outbox,
            work,
            calendar: std::mem::take(&mut self.pending_calendar),
            outcomes,
            summary: Some((
                conv.state.tenant.clone(),
                threadline_protocol::codec::encode_summary(
                    &threadline_protocol::codec::ConversationSummary::of(&conv.state),
                ),
            )),
            route,
            done: Some(done),
        };
        // If the writer is gone (shutdown) the op and its callback are
        // dropped; the caller sees its reply channel close.
        let _ = self.args.router.shared.persistence.submit(op).await;
        if self.since_snapshot >= self.args.router.shared.snapshot_every {
            self.snapshot(None).await;
        }
    }
}

/// The audit record an event calls for: consent changes and gate decisions.
pub(super) fn audit_draft(
    key: &ConvKey,
    conv: ConversationId,
    e: &ConvEvent,
) -> Option<AuditDraft> {
    let (kind, at, detail) = match e {
        ConvEvent::ConsentChanged(c) => {
            let mut detail = crate::audit::consent_change_json(c);
            detail["conversation_id"] = serde_json::json!(conv.to_string());
            ("consent", c.at, detail)
        }
        ConvEvent::Decided(d) => (
            "decision",
            d.at,
            serde_json::json!({
                "conversation_id": conv.to_string(),
                "channel": d.channel.as_str(),
                "purpose": d.purpose,
                "decision": d.decision,
                "rule": d.rule,
                "until": d.until.map(|t| t.0),
                "text": d.text,
            }),
        ),
        _ => return None,
    };
    Some(AuditDraft {
        tenant: key.tenant().to_owned(),
        contact: key.contact().to_owned(),
        kind,
        detail,
        at,
    })
}

/// Counts what the events achieved (per-tenant outcome metrics). `state`
/// already includes them.
pub(super) fn record_outcomes(
    o: &crate::metrics::Outcomes,
    state: &ConversationState,
    events: &[(u32, ConvEvent)],
    seen: &threadline_protocol::Journey,
) -> Vec<(String, u64)> {
    use threadline_protocol::{Author, BookingStatus as S, Direction};
    let mut t = crate::metrics::Tally::new(o, &state.tenant);
    let mut prev = seen.clone();
    for (_, e) in events {
        match e {
            ConvEvent::MessageAppended(m) => {
                let earlier = || state.messages.iter().take_while(|x| x.seq < m.seq);
                if m.author == Author::System && m.text == "[missed call]" {
                    t.count("missed_calls");
                }
                if m.direction == Direction::Inbound
                    && m.author == Author::Customer
                    && m.channel != Channel::Voice
                    && earlier()
                        .filter(|x| x.direction == Direction::Inbound)
                        .last()
                        .is_some_and(|x| x.author == Author::System && x.text == "[missed call]")
                {
                    t.count("missed_calls_recovered");
                }
                let answers = matches!(m.author, Author::Bot | Author::Agent(_));
                if m.direction == Direction::Outbound && answers {
                    let first_in = earlier().find(|x| x.author == Author::Customer);
                    let answered_before = earlier().any(|x| {
                        x.direction == Direction::Outbound
                            && matches!(x.author, Author::Bot | Author::Agent(_))
                    });
                    if let (Some(first), false) = (first_in, answered_before) {
                        t.first_response(m.recorded_at.0 - first.recorded_at.0);
                    }
                }
            }
            ConvEvent::JourneyChanged(j) => {
                let (b0, b1) = (prev.booking.as_ref(), j.booking.as_ref());
                let offer = |b: Option<&threadline_protocol::Booking>| b.and_then(|b| b.offer);
                if offer(b1).is_some() && offer(b1) != offer(b0) {
                    t.count("bookings_offered");
                }
                let (s0, s1) = (b0.map(|b| b.status), b1.map(|b| b.status));
                let moved = b0.and_then(|b| b.start) != b1.and_then(|b| b.start);
                match s1 {
                    Some(S::Confirmed) if s0 != Some(S::Confirmed) || moved => {
                        if s0 == Some(S::Rescheduling) && !moved {
                            // Kept the old time: nothing new.
                        } else {
                            t.count("bookings_confirmed");
                            if s0 == Some(S::Rescheduling) && state.assigned_agent.is_none() {
                                t.count("bookings_rebooked");
                            }
                        }
                    }
                    Some(S::Rescheduling) if s0 != Some(S::Rescheduling) => {
                        t.count("bookings_rescheduled")
                    }
                    Some(S::Cancelled) if s0 != Some(S::Cancelled) => t.count("bookings_cancelled"),
                    Some(S::Attended) if s0 != Some(S::Attended) => t.count("bookings_attended"),
                    Some(S::NoShow) if s0 != Some(S::NoShow) => t.count("bookings_no_show"),
                    _ => {}
                }
                if j.lead_met && !prev.lead_met {
                    t.count("leads_met");
                }
                if j.handoff.as_deref() == Some("qualified") && prev.handoff.is_none() {
                    t.count("leads_qualified");
                }
                prev = j.clone();
            }
            ConvEvent::Escalated { .. } => t.count("escalations"),
            _ => {}
        }
    }
    t.durable
}
