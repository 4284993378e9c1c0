//! One customer turn: what was understood (intent, slots, small talk) and the
//! reply it leads to.

use super::*;
use std::collections::BTreeMap;

use chrono_tz::Tz;
use threadline_protocol::{Booking, BookingStatus, Captured, Journey, Timestamp};

use crate::flows::nlu::{self, SmallTalk};

/// `Journey::asking` while a reply's offer of an intent waits for a yes
/// (then the intent's name).
pub(super) const OFFERED: &str = "@offered:";

/// The reply just offered intent `name`: a yes next starts it.
pub(super) fn offer_intent(journey: &mut Journey, name: &str) {
    journey.asking = Some(format!("{OFFERED}{name}"));
}

impl Flow {
    /// One customer message, given what the conversation knows and where
    /// it stands. The returned turn carries the journey as it is after
    /// the message (`Turn::journey`).
    pub fn turn(
        &self,
        text: &str,
        captured: &Captured,
        journey: &Journey,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) -> Turn {
        let mut t = Turn {
            journey: journey.clone(),
            ..Turn::default()
        };
        // The last reply offered an intent ("Want me to book you in?"): a
        // yes is that intent, a no is answered.
        let offered = journey
            .asking
            .as_deref()
            .and_then(|a| a.strip_prefix(OFFERED))
            .and_then(|name| self.spec.intents.iter().find(|i| i.name == name));
        let mut said = text;
        if let Some(intent) = offered {
            t.journey.asking = None;
            match nlu::yes_no(text) {
                Some(true) => {
                    if let Some(k) = intent.keywords.first().or(intent.examples.first()) {
                        said = k;
                    }
                }
                Some(false) => {
                    t.reply = Some("No problem. Anything else I can help with?".into());
                    return t;
                }
                None => {}
            }
        }
        self.understand(&mut t, said, captured, now, tz, cal);
        let Some(scoring) = &self.spec.scoring else {
            return t;
        };
        let mut slots = captured.slots.clone();
        for (k, v) in &t.slots {
            slots.insert(k.clone(), v.clone());
        }
        let intent = t.intent.as_deref().or(captured.intent.as_deref());
        let score = scoring.score(intent, &slots);
        let before = captured.score.map(|s| s as u32);
        if before != Some(score) {
            t.score = Some(score);
        }
        // The scoring hand-off happens on whichever turn crosses the
        // threshold, the journey's last included: there it replaces the
        // journey's own hand-off (one hand-off, the one the rubric asks for).
        let free = t.escalate.is_none() || t.completion_handoff;
        if score >= scoring.threshold && t.journey.handoff.is_none() && free {
            t.escalate = None;
            t.journey.handoff = Some("qualified".into());
            match scoring.handoff {
                Handoff::Agent => t.escalate = Some(format!("qualified lead (score {score})")),
                Handoff::Call => {
                    let mut merged = captured.clone();
                    merged.slots = slots;
                    t.call = Some(fill(
                        &scoring.call_greeting,
                        &merged,
                        &BTreeMap::new(),
                        self.persona(),
                    ));
                }
            }
        }
        t
    }

    pub(super) fn understand(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        let slots = &captured.slots;
        let words = crate::consent::keywords::normalize(text);
        if let Some(k) = self
            .escalate_words
            .iter()
            .find(|k| words.windows(k.len()).any(|w| w == k.as_slice()))
        {
            t.escalate = Some(format!("the customer mentioned {:?}", k.join(" ")));
            t.reply = Some(
                "I'm connecting you with someone from our team who can help with that.".into(),
            );
            return;
        }
        // "Are you a real person?" asks about the assistant; "can I talk
        // to a real person" asks for one.
        if self.small_talk(t, &words, text) {
            return;
        }
        if nlu::wants_person_words(&words, text) {
            t.escalate = Some("the customer asked for a person".into());
            t.reply = Some("Of course: I'm connecting you with someone from our team.".into());
            return;
        }
        // Someone's name, wherever it comes up.
        if captured.name.is_none() && !slots.contains_key("name") {
            if let Some(n) = nlu::name(text, false) {
                t.slots.insert("name".into(), n);
            }
        }
        // And their contact details.
        for (slot, found) in [
            ("phone", crate::phone::find_in_text(text)),
            ("email", nlu::email(text)),
        ] {
            if let Some(v) = found.filter(|v| slots.get(slot) != Some(v)) {
                t.slots.insert(slot.into(), v);
            }
        }
        if self.appointment_turn(t, text, captured, now, tz, cal) {
            return;
        }
        // In a journey: fill what it asked for, then what else is missing.
        if t.journey.active.is_some() {
            let mut merged = captured.clone();
            merged.slots.extend(t.slots.clone());
            let mut more = Turn {
                journey: t.journey.clone(),
                ..Turn::default()
            };
            self.continue_journey(&mut more, text, &merged, now, tz, cal);
            if more.reply.is_some() || more.escalate.is_some() {
                t.slots.extend(more.slots);
                t.reply = more.reply;
                t.escalate = more.escalate;
                t.completion_handoff = more.completion_handoff;
                t.reminders = more.reminders;
                t.journey = more.journey;
                return;
            }
        }
        let intent = nlu::classify_words(&self.intents, &words, self.spec.min_confidence)
            .map(|(name, _)| name)
            .or_else(|| self.asks_for_a_time(text, now, tz));
        match intent {
            Some(name) => {
                let intent = self
                    .spec
                    .intents
                    .iter()
                    .find(|i| i.name == name)
                    .expect("compiled");
                t.intent = Some(name.to_owned());
                t.journey.misunderstood = 0;
                if let Some(j) = &intent.journey {
                    if self.spec.journeys.get(j).is_some_and(|s| s.booking) {
                        if let Some(start) = t.journey.upcoming(now) {
                            // A second visit (for someone else, or another
                            // service) is not a move of the first: one
                            // visit per conversation, so a person helps.
                            if let Some(b) = t.journey.booking.as_ref() {
                                if self.asks_a_second_visit(&words, &b.service) {
                                    t.reply = Some(format!(
                                        "You have a {} booked for {}. I can move that visit, but I can't book a second one here, so I'm asking someone from our team to help with that.",
                                        b.service,
                                        spoken(start, tz)
                                    ));
                                    t.escalate = Some("a second visit was asked for".into());
                                    return;
                                }
                            }
                            // Booking again while booked is moving it.
                            self.start_reschedule(t, text, captured, start, now, tz, cal);
                            return;
                        }
                    }
                    t.journey.active = Some(j.clone());
                    // A new booking asks its time afresh (not the last
                    // booking's).
                    t.slots.extend(self.datetime_cleared(j));
                    let mut merged = captured.clone();
                    merged.slots.extend(t.slots.clone());
                    merged.slots.retain(|_, v| !v.is_empty());
                    self.continue_journey(t, text, &merged, now, tz, cal);
                } else if let Some(r) = &intent.reply {
                    t.reply = Some(match (&intent.reply_when_booked, t.journey.upcoming(now)) {
                        (Some(booked), Some(start)) => {
                            let mut extra = t.slots.clone();
                            extra.insert("when".into(), spoken(start, tz));
                            fill(booked, captured, &extra, self.persona())
                        }
                        _ => {
                            if let Some(next) = &intent.on_yes {
                                offer_intent(&mut t.journey, next);
                            }
                            fill(r, captured, &t.slots, self.persona())
                        }
                    });
                }
            }
            None => {
                let misses = t.journey.misunderstood + 1;
                t.journey.misunderstood = misses;
                if misses >= self.spec.escalation.max_misunderstood {
                    t.escalate = Some(format!("{misses} messages in a row not understood"));
                    t.reply =
                        Some("Let me get someone from our team to help you with this.".into());
                    t.journey.misunderstood = 0;
                } else {
                    t.reply = Some(fill(
                        &self.spec.fallback,
                        captured,
                        &t.slots,
                        self.persona(),
                    ));
                }
            }
        }
    }

    /// Whether `words` ask for a visit besides the one booked (of
    /// `service`): for someone else ("for my son"), or naming another
    /// service than the booked one ("also a whitening").
    fn asks_a_second_visit(&self, words: &[String], service: &str) -> bool {
        const OTHERS: [&str; 14] = [
            "son", "daughter", "kid", "kids", "child", "wife", "husband", "mom", "mother", "dad",
            "father", "partner", "friend", "brother",
        ];
        let for_other = words.windows(2).any(|w| {
            matches!(w[0].as_str(), "my" | "for" | "our") && OTHERS.contains(&w[1].as_str())
        }) || words
            .windows(2)
            .any(|w| w[0] == "for" && matches!(w[1].as_str(), "him" | "her" | "them"));
        let also = words
            .iter()
            .any(|w| w == "also" || w == "another" || w == "second");
        let other_service = self
            .spec
            .journeys
            .values()
            .flat_map(|j| j.slots.iter())
            .filter(|s| s.kind == SlotKind::Choice && s.name == "service")
            .flat_map(|s| s.options.iter())
            .any(|o| o != service && words.iter().any(|w| w == o));
        for_other || (also && other_service)
    }

    /// "Can u do tmrw around 4ish?" with nothing else said: a customer
    /// naming a clock time asks for an appointment, when the flow books
    /// through exactly one intent. That intent's name.
    pub(super) fn asks_for_a_time(&self, text: &str, now: Timestamp, tz: Tz) -> Option<&str> {
        nlu::when(text, now, tz).filter(|w| w.has_time)?;
        let mut booking = self.spec.intents.iter().filter(|i| {
            i.journey
                .as_ref()
                .and_then(|j| self.spec.journeys.get(j))
                .is_some_and(|j| j.booking)
        });
        match (booking.next(), booking.next()) {
            (Some(i), None) => Some(i.name.as_str()),
            _ => None,
        }
    }

    /// Answers small talk (`nlu::small_talk`) without counting it as a
    /// message not understood: the truth about the assistant, thanks and
    /// goodbyes; a bare "ok" or 👍 gets no reply unless it answers
    /// something pending (a question, an offer, a booking). True when
    /// handled.
    pub(super) fn small_talk(&self, t: &mut Turn, words: &[String], text: &str) -> bool {
        let pending = t.journey.active.is_some()
            || t.journey.asking.is_some()
            || t.journey
                .booking
                .as_ref()
                .is_some_and(|b| b.offer.is_some() || b.status == BookingStatus::Rescheduling);
        match nlu::small_talk_words(words, text) {
            Some(SmallTalk::AsksIfBot) => {
                t.reply = Some(format!(
                    "I'm {}, an automated assistant. If you'd rather talk to a person, just say so and I'll get someone from our team.",
                    self.persona()
                ));
                true
            }
            Some(SmallTalk::Thanks) if !pending => {
                t.reply = Some("You're welcome! Anything else, just text us.".into());
                true
            }
            Some(SmallTalk::Thanks) => {
                t.reply = Some("You're welcome!".into());
                true
            }
            Some(SmallTalk::Bye) if !pending => {
                t.reply = Some("Talk soon!".into());
                true
            }
            Some(SmallTalk::Ack)
                if !pending
                    && t.journey
                        .booking
                        .as_ref()
                        .and_then(Booking::booked)
                        .is_none() =>
            {
                true
            }
            _ => false,
        }
    }
}
