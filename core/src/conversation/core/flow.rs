//! The tenant's flow on a turn: replies, captured facts, the journey and its
//! booking, follow-ups and cadences, the external responder's request.

use super::*;
use std::collections::BTreeMap;

use threadline_protocol::codec::InboundMessage;
use threadline_protocol::ConsentStatus;

use crate::consent::policy::Purpose;
use threadline_protocol::{Author, Channel, ConvEvent, Delivery, Direction, TimerKind, Timestamp};

/// How long after a text reply the call it announces is placed: the text
/// reaches the customer first, and the two are never in flight together.
pub const CALL_AFTER_TEXT_MS: i64 = 30_000;

impl Conversation {
    /// The customer's `text` on `channel` through the tenant's flow (a
    /// text or a speech turn alike): what the conversation keeps of it
    /// (the name it learned, what it understood, the journey it moved to
    /// and its reminders) goes into `events`; the turn, for its reply,
    /// hand-off and call.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flow_turn(
        &mut self,
        flow: &crate::flows::engine::Flow,
        text: &str,
        channel: Channel,
        events: &mut Vec<(u32, ConvEvent)>,
        now: Timestamp,
        tenant: &TenantPolicy,
        cal: &mut dyn crate::flows::engine::Calendar,
        next_id: &mut dyn FnMut() -> u64,
    ) -> crate::flows::engine::Turn {
        let zone = self.zone(tenant);
        let turn = flow.turn(
            text,
            &self.state.captured,
            &self.state.journey,
            now,
            zone,
            cal,
        );
        let ctx = JourneyChange {
            now,
            zone,
            channel: Some(channel),
            business: &tenant.name,
            by: "the customer",
        };
        events.extend(self.absorb_turn(&turn, &ctx, next_id));
        turn
    }

    /// What the conversation keeps of a flow turn: the name it learned,
    /// what it understood, and the journey it moved to (with reminders).
    pub(super) fn absorb_turn(
        &mut self,
        turn: &crate::flows::engine::Turn,
        ctx: &JourneyChange<'_>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if let Some(name) = turn
            .slots
            .get("name")
            .filter(|_| self.state.captured.name.is_none())
        {
            let name = name.clone();
            events.extend(self.note_profile_name(&name));
        }
        if turn.intent.is_some() || !turn.slots.is_empty() || turn.score.is_some() {
            self.push(
                &mut events,
                ConvEvent::Understood {
                    intent: turn.intent.clone(),
                    slots: turn.slots.clone(),
                    score: turn.score.map(|s| s as f32),
                },
            );
        }
        events.extend(self.journey_to(turn.journey.clone(), turn.reminders.clone(), ctx, next_id));
        events
    }

    /// The tenant's flow answers a customer message: what it understood,
    /// its reply (a direct reply, through the gate), reminders it sets,
    /// and an escalation when it hands over to a person. With
    /// `phrase_elsewhere`, the reply is returned as a draft for an external
    /// responder instead of being sent.
    #[allow(clippy::too_many_arguments)]
    pub fn converse(
        &mut self,
        flow: &crate::flows::engine::Flow,
        msg: &InboundMessage,
        now: Timestamp,
        tenant: &TenantPolicy,
        cal: &mut dyn crate::flows::engine::Calendar,
        next_id: &mut dyn FnMut() -> u64,
        phrase_elsewhere: bool,
    ) -> (Vec<(u32, ConvEvent)>, Option<String>) {
        let mut events = Vec::new();
        // The customer answered: any follow-up waiting for them is off.
        events.extend(self.stop_cadence());
        if self.state.journey.asking.as_deref() == Some(REMINDER_OPT_IN) {
            let mut journey = self.state.journey.clone();
            journey.asking = None;
            self.push(&mut events, ConvEvent::JourneyChanged(journey));
            let answer = crate::flows::nlu::yes_no(&msg.text).map(|yes| {
                if yes {
                    // Their own words in the thread are the proof.
                    self.push(
                        &mut events,
                        ConvEvent::ConsentChanged(threadline_protocol::ConsentChange {
                            status: ConsentStatus::OptedIn,
                            channel: Some(Channel::Whatsapp),
                            purpose: Some(Purpose::Reminder.as_str().into()),
                            source: "reply".into(),
                            keyword: None,
                            raw_text: Some(msg.text.chars().take(160).collect()),
                            provider_message_id: msg.provider_message_id.clone(),
                            proof: Some(
                                "answered yes when asked in the WhatsApp thread whether the appointment reminder may come there".into(),
                            ),
                            at: now,
                        }),
                    );
                    "Thanks! Your reminder will come here on WhatsApp."
                } else {
                    "Okay, no reminder on WhatsApp."
                }
            });
            if let Some(text) = answer {
                let spec = OutboundSpec::automated(text, Some(msg.channel));
                events.extend(self.send_message(spec, now, tenant, next_id).1);
                return (events, None);
            }
        }
        let confirmed_before = self.state.journey.booking.as_ref().and_then(|b| b.booked());
        let turn = self.flow_turn(
            flow,
            &msg.text,
            msg.channel,
            &mut events,
            now,
            tenant,
            cal,
            next_id,
        );
        // Reminders on WhatsApp outside the 24-hour window go as the
        // tenant's template, to customers who said yes to them here.
        let mut reply = turn.reply;
        let confirmed_now = self.state.journey.booking.as_ref().and_then(|b| b.booked());
        if confirmed_now.is_some()
            && confirmed_now != confirmed_before
            && msg.channel == Channel::Whatsapp
            && tenant
                .whatsapp_templates
                .iter()
                .any(|p| p == Purpose::Reminder.as_str())
            && self
                .state
                .consent_for(Channel::Whatsapp, Purpose::Reminder.as_str())
                != ConsentStatus::OptedIn
        {
            if let Some(r) = &mut reply {
                r.push_str(" Can we send your reminder here on WhatsApp? Reply YES.");
                let mut journey = self.state.journey.clone();
                journey.asking = Some(REMINDER_OPT_IN.into());
                self.push(&mut events, ConvEvent::JourneyChanged(journey));
            }
        }
        let mut draft = None;
        let waits = self.state.journey.waits_for_answer();
        if let (true, Some(question)) = (waits, reply.clone()) {
            if let Some(f) =
                flow.follow_up(0, now, &self.state.captured, &self.state.journey, &question)
            {
                events.extend(self.schedule_follow_up(f, &question, next_id));
            }
        }
        let texted = reply.is_some() && msg.channel != Channel::Voice;
        if let Some(text) = reply {
            if phrase_elsewhere {
                // An external responder phrases it after the commit.
                draft = Some(text);
            } else {
                let spec = OutboundSpec::automated(text, Some(msg.channel));
                let (_, more) = self.send_message(spec, now, tenant, next_id);
                events.extend(more);
            }
        }
        if let Some(reason) = turn.escalate {
            events.extend(self.escalate(&reason, Vec::new(), 0, now));
        }
        // A conversation people have (waiting for one, or held) gets no
        // automated call: the person decides how to reach the customer.
        let with_people = self.state.waiting.is_some() || self.state.assigned_agent.is_some();
        if let Some(greeting) = turn.call.filter(|_| !with_people) {
            let via = match msg.channel {
                Channel::Sms => "by text",
                Channel::Whatsapp => "on WhatsApp",
                Channel::Webchat => "in our website chat",
                Channel::Voice => "on the phone",
                Channel::Email => "by email",
            };
            let greeting = greeting.replace("{via}", via);
            // A qualified lead gets a call; the call says the greeting (the
            // gate decides, as for any business-initiated call). One
            // channel at a time: after a text reply ("I'll give you a quick
            // call"), the call follows `CALL_AFTER_TEXT_MS` later, as a
            // follow-up that is not placed if people have the conversation
            // by then; with nothing texted, it is placed now.
            if texted {
                let id = next_id();
                events.extend(self.schedule_timer(
                    id,
                    TimerSpec {
                        due: Timestamp(now.0 + CALL_AFTER_TEXT_MS),
                        kind: TimerKind::FollowUp,
                        text: Some(greeting),
                        channel: Some(Channel::Voice),
                    },
                ));
            } else {
                let spec = OutboundSpec::automated(greeting, Some(Channel::Voice));
                let (_, more) = self.send_message(spec, now, tenant, next_id);
                events.extend(more);
            }
        }
        (events, draft)
    }

    /// After delivery `reports`: if one says a call the business placed
    /// was not answered, the flow's text about it, over SMS, through the
    /// gate.
    pub fn after_unanswered_call(
        &mut self,
        flow: &crate::flows::engine::Flow,
        reports: &[(u32, ConvEvent)],
        now: Timestamp,
        tenant: &TenantPolicy,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let unanswered = reports.iter().any(|(_, e)| match e {
            ConvEvent::DeliveryUpdated {
                seq,
                delivery: Delivery::Failed,
                ..
            } => self
                .state
                .messages
                .binary_search_by_key(seq, |m| m.seq)
                .ok()
                .map(|i| &self.state.messages[i])
                .is_some_and(|m| m.channel == Channel::Voice && m.author != Author::Customer),
            _ => false,
        });
        let Some(text) = unanswered
            .then(|| flow.unanswered_call_text(&self.state.captured, &self.state.journey))
            .flatten()
        else {
            return Vec::new();
        };
        let spec = OutboundSpec::automated(text, Some(Channel::Sms));
        self.send_message(spec, now, tenant, next_id).1
    }

    /// Schedules cadence step `f` as this conversation's one follow-up.
    pub(super) fn schedule_follow_up(
        &mut self,
        f: crate::flows::engine::FollowUp,
        question: &str,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let id = next_id();
        // A channel the customer cannot be reached on (a web visitor has no
        // phone) falls back to the one they last used.
        let channel = if self.state.identities.address_for(f.channel).is_some() {
            f.channel
        } else {
            self.channel_or_last_inbound(None)
        };
        let mut events = self.schedule_timer(
            id,
            TimerSpec {
                due: f.due,
                kind: TimerKind::FollowUp,
                text: Some(f.text),
                channel: Some(channel),
            },
        );
        let mut journey = self.state.journey.clone();
        journey.cadence = Some(threadline_protocol::Cadence {
            timer: id,
            step: f.step as u32,
            question: question.chars().take(300).collect(),
        });
        self.push(&mut events, ConvEvent::JourneyChanged(journey));
        events
    }

    /// Moves the conversation to `journey` (what the flow decided): the
    /// reminders of a booking that changed are cancelled, `reminders` (of
    /// the booking now confirmed) are scheduled and kept in it, and each
    /// change of the appointment is noted in the transcript for the people
    /// who read it.
    pub(super) fn journey_to(
        &mut self,
        mut journey: threadline_protocol::Journey,
        reminders: Vec<crate::flows::engine::Reminder>,
        ctx: &JourneyChange<'_>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let before = self.state.journey.booking.clone();
        let kept: Vec<u64> = journey
            .booking
            .as_ref()
            .map(|b| b.reminders.clone())
            .unwrap_or_default();
        for id in before.iter().flat_map(|b| b.reminders.iter()) {
            if !kept.contains(id) {
                if let Some(more) = self.cancel_timer(*id) {
                    events.extend(more);
                }
            }
        }
        for r in reminders {
            let id = next_id();
            // On the channel the customer booked on, in its words if the
            // flow has them.
            let text = ctx
                .channel
                .and_then(|c| r.by_channel.get(&c))
                .unwrap_or(&r.text)
                .replace("{business}", ctx.business);
            events.extend(self.schedule_timer(
                id,
                TimerSpec {
                    due: r.at,
                    kind: TimerKind::Reminder,
                    text: Some(text),
                    channel: ctx.channel,
                },
            ));
            if let Some(b) = &mut journey.booking {
                b.reminders.push(id);
            }
        }
        if let Some(note) =
            booking_note(before.as_ref(), journey.booking.as_ref(), ctx.zone, ctx.by)
        {
            self.note_for_record(&mut events, note, ctx.now);
        }
        if journey != self.state.journey {
            self.push(&mut events, ConvEvent::JourneyChanged(journey));
        }
        events
    }

    /// A keyword opt-out (`keyword`: its events) while an appointment is
    /// booked: the opt-out stands, and the appointment becomes a question
    /// for a person (it stays on the calendar until someone decides).
    pub fn booking_exception(
        &mut self,
        keyword: &[(u32, ConvEvent)],
        now: Timestamp,
        zone: chrono_tz::Tz,
    ) -> Vec<(u32, ConvEvent)> {
        let opted_out = keyword.iter().find_map(|(_, e)| match e {
            ConvEvent::ConsentChanged(c) if c.status == ConsentStatus::OptedOut => {
                Some(c.raw_text.clone().unwrap_or_default())
            }
            _ => None,
        });
        let booked = self
            .state
            .journey
            .booking
            .as_ref()
            .and_then(|b| b.booked().map(|s| (b.service.clone(), s)));
        match (opted_out, booked) {
            (Some(said), Some((service, start))) if self.state.assigned_agent.is_none() => {
                let reason = format!(
                    "opted out ({:?}) with a {service} booked for {}: the opt-out stands; decide whether the appointment stays",
                    said.trim(),
                    crate::flows::engine::spoken(start, zone)
                );
                self.escalate(&reason, Vec::new(), 0, now)
            }
            _ => Vec::new(),
        }
    }

    /// The business says how a booked appointment went (`attended` or
    /// `no_show`, once its time has come) or cancels it (`cancelled`, which
    /// frees its time): a note in the transcript, and the booking is over
    /// (the customer can book again).
    pub fn booking_outcome(
        &mut self,
        outcome: BookingOutcome,
        now: Timestamp,
        zone: chrono_tz::Tz,
        cal: &mut dyn crate::flows::engine::Calendar,
    ) -> Result<Vec<(u32, ConvEvent)>, BookingOutcomeError> {
        let booking = self
            .state
            .journey
            .booking
            .clone()
            .ok_or(BookingOutcomeError::NoBooking)?;
        let booked = booking.booked().ok_or(BookingOutcomeError::NoBooking)?;
        if now.0 < booked.0 && outcome != BookingOutcome::Cancelled {
            return Err(BookingOutcomeError::NotYet(booked));
        }
        let mut journey = self.state.journey.clone();
        journey.booking = Some(threadline_protocol::Booking {
            status: match outcome {
                BookingOutcome::Attended => threadline_protocol::BookingStatus::Attended,
                BookingOutcome::NoShow => threadline_protocol::BookingStatus::NoShow,
                BookingOutcome::Cancelled => threadline_protocol::BookingStatus::Cancelled,
            },
            offer: None,
            reminders: Vec::new(),
            ..booking
        });
        if outcome == BookingOutcome::Cancelled {
            cal.release(booked);
        }
        let ctx = JourneyChange {
            now,
            zone,
            channel: None,
            business: "",
            by: "the business",
        };
        Ok(self.journey_to(journey, Vec::new(), &ctx, &mut || 0))
    }

    /// Records free facts about the contact (a `ContactUpdated` with only
    /// facts).
    pub(super) fn note_facts(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        facts: BTreeMap<String, String>,
    ) {
        self.push(
            events,
            ConvEvent::ContactUpdated {
                name: None,
                timezone: None,
                region: None,
                email: None,
                facts,
            },
        );
    }

    /// Cancels the pending follow-up, if any (the customer answered).
    pub fn stop_cadence(&mut self) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let Some(id) = self.state.journey.cadence.as_ref().map(|c| c.timer) else {
            return events;
        };
        if let Some(more) = self.cancel_timer(id) {
            events.extend(more);
        }
        self.end_cadence(&mut events);
        events
    }

    pub(super) fn end_cadence(&mut self, events: &mut Vec<(u32, ConvEvent)>) {
        let mut journey = self.state.journey.clone();
        journey.cadence = None;
        self.push(events, ConvEvent::JourneyChanged(journey));
    }

    /// After follow-up timer `id` fired: the next step, if the last one
    /// went out (a blocked one, an opt-out say, ends the cadence).
    pub fn cadence_next(
        &mut self,
        flow: &crate::flows::engine::Flow,
        id: u64,
        now: Timestamp,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let Some(cadence) = self.state.journey.cadence.clone().filter(|c| c.timer == id) else {
            return Vec::new();
        };
        let step = cadence.step as usize;
        let question = cadence.question;
        let went_out = self.state.messages.last().is_some_and(|m| {
            m.direction == Direction::Outbound
                && !matches!(m.delivery, Delivery::Blocked | Delivery::Internal)
        });
        // An opt-out on any channel ends it; a step its channel could not
        // carry (a closed WhatsApp window, say) hands over to the next one
        // at once: the customer has already waited that long.
        let opted_out = Channel::ALL.iter().any(|c| {
            self.state.consent_for(*c, Purpose::Conversational.as_str()) == ConsentStatus::OptedOut
        });
        let next = flow
            .follow_up(
                step + 1,
                now,
                &self.state.captured,
                &self.state.journey,
                &question,
            )
            .filter(|_| !opted_out)
            .map(|mut f| {
                if !went_out {
                    f.due = now;
                }
                f
            });
        match next {
            Some(f) => self.schedule_follow_up(f, &question, next_id),
            None => {
                let mut events = Vec::new();
                self.end_cadence(&mut events);
                events
            }
        }
    }

    /// What an external responder gets to phrase a reply: the persona,
    /// what is known, and the last messages.
    pub fn responder_request(
        &self,
        persona: &str,
        draft: String,
    ) -> crate::flows::ResponderRequest {
        let c = &self.state.captured;
        let mut facts: Vec<(String, String)> = Vec::new();
        if let Some(n) = &c.name {
            facts.push(("name".into(), n.clone()));
        }
        if let Some(i) = &c.intent {
            facts.push(("intent".into(), i.clone()));
        }
        for (k, v) in c.slots.iter().chain(c.facts.iter()) {
            facts.push((k.clone(), v.clone()));
        }
        let transcript = self
            .state
            .messages
            .iter()
            .rev()
            .take(12)
            .rev()
            .map(|m| (m.author.label(), m.text.clone()))
            .collect();
        crate::flows::ResponderRequest {
            tenant: self.state.tenant.clone(),
            persona: persona.to_owned(),
            facts,
            transcript,
            draft,
        }
    }
}

/// How a change of the appointment reads in the transcript (an internal
/// note for agents and the business; customers are told in the reply).
pub(super) fn booking_note(
    before: Option<&threadline_protocol::Booking>,
    after: Option<&threadline_protocol::Booking>,
    zone: chrono_tz::Tz,
    by: &str,
) -> Option<String> {
    use threadline_protocol::BookingStatus as S;
    let at = |t: Option<Timestamp>| {
        t.map(|t| crate::flows::engine::spoken(t, zone))
            .unwrap_or_default()
    };
    let (b0, b1) = (before.map(|b| b.status), after.map(|b| b.status));
    let service = after.or(before).map(|b| b.service.as_str()).unwrap_or("");
    let (start0, start1) = (before.and_then(|b| b.start), after.and_then(|b| b.start));
    match (b0, b1) {
        (Some(S::Rescheduling), Some(S::Confirmed)) if start0 == start1 => Some(format!(
            "[reschedule dropped: {service} stays {}]",
            at(start1)
        )),
        (Some(S::Rescheduling), Some(S::Confirmed)) => Some(format!(
            "[booking moved: {service} from {} to {}]",
            at(start0),
            at(start1)
        )),
        (x, Some(S::Confirmed)) if x != Some(S::Confirmed) || start0 != start1 => {
            Some(format!("[booking confirmed: {service} {}]", at(start1)))
        }
        (Some(S::Confirmed), Some(S::Rescheduling)) => Some(format!(
            "[reschedule asked: {service} {} stays booked until a new time is confirmed]",
            at(start0)
        )),
        (Some(x), Some(S::Cancelled)) if x != S::Cancelled => Some(format!(
            "[booking cancelled by {by}: {service} {}]",
            at(start0)
        )),
        (x, Some(S::Attended)) if x != Some(S::Attended) => {
            Some(format!("[attended: appointment {}]", at(start1)))
        }
        (x, Some(S::NoShow)) if x != Some(S::NoShow) => {
            Some(format!("[no-show: appointment {}]", at(start1)))
        }
        _ => None,
    }
}
