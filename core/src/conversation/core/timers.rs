//! Timers the conversation owns: scheduling, cancelling, the lifecycle timer
//! and what each does when it fires.

use super::*;

use crate::consent::policy::{Decision, Purpose};
use threadline_protocol::{
    Author, Channel, ConvEvent, Delivery, PendingTimer, Status, TimerKind, Timestamp,
};

impl Conversation {
    /// Schedules a timer with id `id`; returns its event.
    pub fn schedule_timer(&mut self, id: u64, spec: TimerSpec) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::with_capacity(1);
        self.push(
            &mut events,
            ConvEvent::TimerScheduled(PendingTimer {
                id,
                due: spec.due,
                kind: spec.kind,
                text: spec.text,
                channel: spec.channel,
            }),
        );
        events
    }

    /// Cancels pending timer `id`; `None` if it is not pending.
    pub fn cancel_timer(&mut self, id: u64) -> Option<Vec<(u32, ConvEvent)>> {
        self.state.pending_timer(id)?;
        let mut events = Vec::with_capacity(1);
        self.push(&mut events, ConvEvent::TimerCancelled { id });
        Some(events)
    }

    /// Keeps exactly one lifecycle timer pending, due no later than the
    /// silence that would make this conversation inactive.
    pub fn ensure_lifecycle(
        &mut self,
        now: Timestamp,
        policy: &Lifecycle,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if self.state.status == Status::Closed {
            return events;
        }
        let target = now.saturating_add_millis(policy.inactive_after_ms);
        let current = self
            .state
            .timers
            .iter()
            .find(|t| t.kind == TimerKind::Lifecycle)
            .map(|t| (t.id, t.due));
        match current {
            Some((_, due)) if due <= target => return events,
            Some((id, _)) => self.push(&mut events, ConvEvent::TimerCancelled { id }),
            None => {}
        }
        let id = next_id();
        self.push(
            &mut events,
            ConvEvent::TimerScheduled(PendingTimer {
                id,
                due: target,
                kind: TimerKind::Lifecycle,
                text: None,
                channel: None,
            }),
        );
        events
    }

    /// Timer `id` came due. Returns `None` when it is not pending (already
    /// handled, cancelled, or never acknowledged): firing is idempotent.
    /// Effects are computed at the timer's due time, so a simulated jump of
    /// the clock has the same outcome as time passing.
    pub fn fire_timer(
        &mut self,
        id: u64,
        now: Timestamp,
        tenant: &TenantPolicy,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Option<Vec<(u32, ConvEvent)>> {
        let policy = &tenant.lifecycle;
        let timer = self.state.pending_timer(id)?.clone();
        let at = timer.due;
        let mut events = Vec::with_capacity(3);
        match timer.kind {
            TimerKind::FollowUp
                if self.channel_or_last_inbound(timer.channel) == Channel::Voice
                    && (self.state.waiting.is_some() || self.state.assigned_agent.is_some()) =>
            {
                // The cadence's call, while people have the conversation:
                // not placed (they decide how to reach the customer).
                self.push(&mut events, ConvEvent::TimerFired { id, at: now });
            }
            TimerKind::FollowUp | TimerKind::Reminder | TimerKind::Marketing => {
                let channel = self.channel_or_last_inbound(timer.channel);
                let purpose = match timer.kind {
                    TimerKind::Reminder => Purpose::Reminder,
                    TimerKind::Marketing => Purpose::Marketing,
                    _ => Purpose::Conversational,
                };
                let text = timer.text.clone().unwrap_or_default();
                self.push(&mut events, ConvEvent::TimerFired { id, at: now });
                // Judged at the due time, as if the clock had stopped there.
                let decision = self.gate(channel, purpose, purpose.as_str(), at, tenant, false);
                self.record_decision(&mut events, channel, purpose, &decision, &text, at);
                match decision {
                    Decision::Send { .. } => {
                        let seq = self.state.next_seq();
                        self.outbound(
                            &mut events,
                            channel,
                            Author::Bot,
                            text,
                            at,
                            now,
                            tenant.delivery_for(channel),
                        );
                        self.push(
                            &mut events,
                            ConvEvent::SubjectNoted {
                                seq,
                                subject: purpose.as_str().to_owned(),
                            },
                        );
                    }
                    Decision::Block { reason } => {
                        // A reminder its channel cannot carry goes on the
                        // next channel the gate allows; if none does, the
                        // business is told (never silently dropped).
                        let fallback = (purpose == Purpose::Reminder)
                            .then(|| {
                                [Channel::Sms, Channel::Whatsapp, Channel::Webchat]
                                    .into_iter()
                                    .filter(|c| {
                                        *c != channel
                                            && self.state.identities.address_for(*c).is_some()
                                    })
                                    .find_map(|c| {
                                        let d = self.gate(
                                            c,
                                            purpose,
                                            purpose.as_str(),
                                            at,
                                            tenant,
                                            false,
                                        );
                                        matches!(d, Decision::Send { .. }).then_some((c, d))
                                    })
                            })
                            .flatten();
                        self.outbound(
                            &mut events,
                            channel,
                            Author::Bot,
                            text.clone(),
                            at,
                            now,
                            Delivery::Blocked,
                        );
                        match fallback {
                            Some((c, d)) => {
                                self.record_decision(&mut events, c, purpose, &d, &text, at);
                                let seq = self.state.next_seq();
                                self.outbound(
                                    &mut events,
                                    c,
                                    Author::Bot,
                                    text,
                                    at,
                                    now,
                                    tenant.delivery_for(c),
                                );
                                self.push(
                                    &mut events,
                                    ConvEvent::SubjectNoted {
                                        seq,
                                        subject: purpose.as_str().to_owned(),
                                    },
                                );
                            }
                            None if purpose == Purpose::Reminder
                                && self.state.assigned_agent.is_none() =>
                            {
                                let why = format!(
                                    "an appointment reminder could not go out on any channel ({reason}): tell the customer another way"
                                );
                                events.extend(self.escalate(&why, Vec::new(), 0, now));
                            }
                            None => {}
                        }
                    }
                    // Held, not dropped: the same message waits as a new timer.
                    Decision::Defer { until, rule } => {
                        // A booking's reminder held past the appointment
                        // (less than half an hour before it) is useless:
                        // it is noted, not sent.
                        let mine = self
                            .state
                            .journey
                            .booking
                            .as_ref()
                            .filter(|b| b.reminders.contains(&id))
                            .cloned();
                        let start = mine.as_ref().and_then(|b| b.booked());
                        if let Some(start) = start.filter(|s| until.0 > s.0 - 30 * 60_000) {
                            let zone = self.zone(tenant);
                            self.note_for_record(
                                &mut events,
                                format!(
                                    "[reminder not sent: {rule} held it until {}, too close to the appointment {}]",
                                    crate::flows::engine::spoken(until, zone),
                                    crate::flows::engine::spoken(start, zone)
                                ),
                                now,
                            );
                        } else {
                            let new_id = next_id();
                            self.push(
                                &mut events,
                                ConvEvent::TimerScheduled(PendingTimer {
                                    id: new_id,
                                    due: until,
                                    kind: timer.kind,
                                    text: timer.text.clone(),
                                    channel: Some(channel),
                                }),
                            );
                            // Still what the journey held it as (a
                            // booking's reminder, the cadence's follow-up):
                            // a move, a cancel or an answer cancels it too.
                            let mut journey = self.state.journey.clone();
                            if let Some(b) = &mut journey.booking {
                                for r in b.reminders.iter_mut().filter(|r| **r == id) {
                                    *r = new_id;
                                }
                            }
                            if let Some(c) = journey.cadence.as_mut().filter(|c| c.timer == id) {
                                c.timer = new_id;
                            }
                            if journey != self.state.journey {
                                self.push(&mut events, ConvEvent::JourneyChanged(journey));
                            }
                        }
                    }
                }
            }
            TimerKind::Lifecycle => {
                self.push(&mut events, ConvEvent::TimerFired { id, at: now });
                let last = self.state.last_message_at();
                let inactive_at = last.saturating_add_millis(policy.inactive_after_ms);
                let close_at = inactive_at.saturating_add_millis(policy.close_after_ms);
                let (change, next) = match self.state.status {
                    Status::Active if at >= close_at => (Some(Status::Closed), None),
                    Status::Active if at >= inactive_at => (Some(Status::Inactive), Some(close_at)),
                    Status::Active => (None, Some(inactive_at)),
                    Status::Inactive if at >= close_at => (Some(Status::Closed), None),
                    Status::Inactive => (None, Some(close_at)),
                    Status::Closed => (None, None),
                };
                if let Some(status) = change {
                    self.push(&mut events, ConvEvent::StatusChanged { status, at });
                }
                if let Some(due) = next {
                    let id = next_id();
                    self.push(
                        &mut events,
                        ConvEvent::TimerScheduled(PendingTimer {
                            id,
                            due,
                            kind: TimerKind::Lifecycle,
                            text: None,
                            channel: None,
                        }),
                    );
                }
            }
        }
        Some(events)
    }
}
