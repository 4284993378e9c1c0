//! The appointment journey: offering, holding, confirming, moving and
//! cancelling a booking.

use super::*;
use std::collections::BTreeMap;

use chrono::TimeZone;
use chrono_tz::Tz;
use threadline_protocol::{Booking, BookingStatus, Captured, Offer, Timestamp};

use crate::flows::nlu::{self, AppointmentAsk};

impl Flow {
    /// The appointment's lifecycle: a time offered waits for yes (or C),
    /// another time, or no; a booked appointment can be moved, cancelled
    /// or asked about, in plain words. True if the message was about it.
    pub(super) fn appointment_turn(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) -> bool {
        let ask = nlu::appointment_ask(text);
        let Some(b) = t.journey.booking.clone() else {
            if ask != Some(AppointmentAsk::When) {
                return false;
            }
            // "When is my appointment?" with none: said so, and a yes books.
            if let Some(i) = self.booking_intent() {
                super::turn::offer_intent(&mut t.journey, i);
            }
            t.reply = Some(
                "I don't see an appointment booked for you. Would you like to book one?".into(),
            );
            return true;
        };
        // An appointment whose time has passed is history: asking about
        // it, moving it or cancelling it starts from nothing booked.
        let past = b.booked().filter(|s| s.0 <= now.0);
        let booked = b.booked().filter(|s| s.0 > now.0);
        let words = crate::consent::keywords::normalize(text);
        if let (Some(AppointmentAsk::When), Some(p), None) = (ask, past, b.offer) {
            t.reply = Some(format!(
                "Your last appointment was {}. Would you like to book another?",
                spoken(p, tz)
            ));
            return true;
        }
        if ask == Some(AppointmentAsk::When) {
            // A hold that ran out is not offered again.
            let offer = b.offer.filter(|o| o.until.0 > now.0);
            t.reply = Some(match (booked, offer) {
                (Some(s), Some(o)) => format!(
                    "Your appointment is {}. I'm holding {} for you as the new time: reply C to move it there.",
                    spoken(s, tz),
                    spoken(o.start, tz)
                ),
                (Some(s), None) => format!(
                    "Your appointment is {}. Reply R to reschedule, or tell me if you need to cancel.",
                    spoken(s, tz)
                ),
                (None, Some(o)) => format!(
                    "Nothing is booked yet: I'm holding {} for you. Reply C to confirm it.",
                    spoken(o.start, tz)
                ),
                (None, None) => {
                    // A yes books (the booking intent, as `on_yes`).
                    if let Some(i) = self.booking_intent() {
                        super::turn::offer_intent(&mut t.journey, i);
                    }
                    "I don't see an appointment booked for you. Would you like to book one?".into()
                }
            });
            return true;
        }
        if ask == Some(AppointmentAsk::Cancel) && (booked.is_some() || b.offer.is_some()) {
            if let Some(o) = b.offer {
                cal.release(o.start);
            }
            let journey = b.journey.clone();
            if let Some(s) = booked {
                cal.release(s);
                t.journey.booking = Some(Booking {
                    status: BookingStatus::Cancelled,
                    offer: None,
                    reminders: Vec::new(),
                    ..b
                });
                t.reply = Some(format!(
                    "Done: your appointment {} is cancelled. Text us any time to book again.",
                    spoken(s, tz)
                ));
            } else {
                t.journey.booking = None;
                t.reply =
                    Some("Okay, I've let that time go. Anything else I can help with?".into());
            }
            t.journey.active = None;
            t.journey.asking = None;
            t.slots.extend(self.datetime_cleared(&journey));
            return true;
        }
        if let Some(offer) = b.offer {
            let keeps = nlu::keeps(text);
            let yes = nlu::yes_no(text) == Some(true) && ask.is_none() && !keeps;
            let w = nlu::when(text, now, tz).filter(|w| w.has_day || w.has_time);
            if yes && w.is_none() {
                self.confirm(t, &b, offer, captured, now, tz, cal);
                return true;
            }
            if !keeps && (ask == Some(AppointmentAsk::Reschedule) || w.is_some()) {
                // Another time than the one offered.
                cal.release(offer.start);
                t.journey.booking = booked.map(|_| Booking {
                    offer: None,
                    ..b.clone()
                });
                // A correction keeps what it does not change: "make it 4"
                // is the offered day at 4, "make it Thursday" Thursday at
                // the offered time.
                let at = w.map(|w| keeping(&w, offer.start, tz));
                self.ask_new_time_at(t, text, at, captured, now, tz, cal, &b.journey);
                return true;
            }
            if nlu::yes_no(text) == Some(false) || keeps {
                cal.release(offer.start);
                match booked {
                    Some(s) => {
                        t.journey.booking = Some(Booking {
                            status: BookingStatus::Confirmed,
                            offer: None,
                            ..b
                        });
                        t.reply = Some(format!(
                            "Okay, I've kept your appointment {}. Anything else I can help with?",
                            spoken(s, tz)
                        ));
                    }
                    None => {
                        t.journey.booking = None;
                        t.reply = Some(
                            "Okay, I've let that time go. Anything else I can help with?".into(),
                        );
                    }
                }
                t.journey.active = None;
                t.journey.asking = None;
                return true;
            }
            return false;
        }
        let Some(start) = booked else {
            return false;
        };
        if b.status == BookingStatus::Rescheduling {
            let keep = nlu::yes_no(text) == Some(false) || nlu::keeps(text);
            if keep {
                t.journey.booking = Some(Booking {
                    status: BookingStatus::Confirmed,
                    ..b
                });
                t.journey.active = None;
                t.journey.asking = None;
                t.reply = Some(format!(
                    "Okay, I've kept your appointment {}.",
                    spoken(start, tz)
                ));
                return true;
            }
            // A time answers the reschedule (the journey asks for it).
            return false;
        }
        if ask == Some(AppointmentAsk::Reschedule) {
            self.start_reschedule(t, text, captured, start, now, tz, cal);
            return true;
        }
        // "C", "yes", "yes I will be there", "see you then": coming.
        let phrase = |p: &[&str]| words.windows(p.len()).any(|w| w == p);
        if words.first().is_some_and(|w| w == "c")
            || nlu::yes_no(text) == Some(true) && words.len() <= 6
            || phrase(&["be", "there"])
            || phrase(&["see", "you"])
        {
            t.reply = Some(format!("Thanks, see you {}!", spoken(start, tz)));
            return true;
        }
        false
    }

    /// The intent that starts a booking journey, if exactly one does.
    pub(super) fn booking_intent(&self) -> Option<&str> {
        let mut booking = self.spec.intents.iter().filter(|i| {
            i.journey
                .as_ref()
                .is_some_and(|j| self.spec.journeys.get(j).is_some_and(|s| s.booking))
        });
        match (booking.next(), booking.next()) {
            (Some(i), None) => Some(&i.name),
            _ => None,
        }
    }

    /// The customer wants to move their appointment at `start`: it stays
    /// theirs until a new time is confirmed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_reschedule(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        start: Timestamp,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        let Some(mut b) = t.journey.booking.clone() else {
            return;
        };
        b.status = BookingStatus::Rescheduling;
        let journey = b.journey.clone();
        t.journey.booking = Some(b);
        t.reply = Some(format!(
            "Sure, let's find a new time. Your appointment {} stays booked until you confirm a new one. What day and time work for you?",
            spoken(start, tz)
        ));
        // "Push it back an hour": the time is the booked one, moved.
        let moved = nlu::shift_minutes(text).map(|m| Timestamp(start.0 + m * 60_000));
        self.ask_new_time_at(t, text, moved, captured, now, tz, cal, &journey);
    }

    /// Asks for a new time in `journey`, or offers one at once if `text`
    /// names it, or `at` (a time the customer gave relative to their
    /// booking or to the offer on the table) when given.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ask_new_time_at(
        &self,
        t: &mut Turn,
        text: &str,
        at: Option<Timestamp>,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
        journey: &str,
    ) {
        t.journey.active = Some(journey.to_owned());
        let cleared = self.datetime_cleared(journey);
        let slot = cleared.keys().next().cloned();
        t.slots.extend(cleared);
        t.journey.asking = slot.clone();
        if t.reply.is_none() {
            t.reply = Some("No problem. What day and time would work better?".into());
        }
        let at = at
            .zip(slot)
            .and_then(|(at, slot)| Some((slot, slot_time_text(at, tz)?)));
        if at.is_some() || nlu::when(text, now, tz).is_some_and(|w| w.has_day || w.has_time) {
            let mut merged = captured.clone();
            merged.slots.extend(t.slots.clone());
            merged.slots.retain(|_, v| !v.is_empty());
            let text = match at {
                Some((slot, v)) => {
                    merged.slots.insert(slot, v);
                    ""
                }
                None => text,
            };
            let mut more = Turn {
                journey: t.journey.clone(),
                ..Turn::default()
            };
            self.continue_journey(&mut more, text, &merged, now, tz, cal);
            if more.reply.is_some() {
                t.reply = more.reply;
                t.escalate = more.escalate;
                t.completion_handoff = more.completion_handoff;
                t.slots.extend(more.slots);
                t.journey = more.journey;
            }
        }
    }

    /// The datetime slot of `journey`, emptied (to ask again).
    pub(super) fn datetime_cleared(&self, journey: &str) -> BTreeMap<String, String> {
        self.spec
            .journeys
            .get(journey)
            .and_then(|j| j.slots.iter().find(|s| s.kind == SlotKind::Datetime))
            .map(|s| (s.name.clone(), String::new()))
            .into_iter()
            .collect()
    }

    /// The customer said yes to `offer`: booked (and, for a move, the old
    /// time given back and its reminders replaced), or taken meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn confirm(
        &self,
        t: &mut Turn,
        b: &Booking,
        offer: Offer,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        if !cal.book(offer.start) {
            t.journey.booking = Some(Booking {
                offer: None,
                ..b.clone()
            })
            .filter(|b| b.booked().is_some());
            t.journey.active = Some(b.journey.clone());
            let cleared = self.datetime_cleared(&b.journey);
            t.journey.asking = cleared.keys().next().cloned();
            t.slots.extend(cleared);
            t.reply =
                Some("Sorry, that time was just taken. What other day and time would work?".into());
            return;
        }
        let moved_from = b.booked().filter(|s| *s != offer.start);
        if let Some(old) = moved_from {
            cal.release(old);
        }
        t.journey.booking = Some(Booking {
            journey: b.journey.clone(),
            service: b.service.clone(),
            status: BookingStatus::Confirmed,
            start: Some(offer.start),
            offer: None,
            // New reminders replace the old (the caller cancels those).
            reminders: Vec::new(),
        });
        t.journey.active = None;
        t.journey.asking = None;
        // A qualified lead that became a meeting.
        if t.journey.handoff.as_deref() == Some("qualified") {
            t.journey.lead_met = true;
        }
        let when = spoken(offer.start, tz);
        let plan = self
            .reminders
            .get(&(b.journey.clone(), b.service.clone()))
            .or_else(|| self.reminders.get(&(b.journey.clone(), String::new())));
        if let Some(plan) = plan {
            let mut extra = BTreeMap::new();
            extra.insert("when".to_owned(), when.clone());
            extra.insert("service".to_owned(), b.service.clone());
            let text = |t: &str| fill(t, captured, &extra, self.persona());
            for before in &plan.leads {
                let at = Timestamp(offer.start.0 - before);
                if at.0 > now.0 {
                    t.reminders.push(Reminder {
                        at,
                        text: text(&plan.text),
                        by_channel: plan.by_channel.iter().map(|(c, t)| (*c, text(t))).collect(),
                    });
                }
            }
        }
        // A reminder is promised only if one will come.
        let remind = if t.reminders.is_empty() {
            ""
        } else {
            " We'll send you a reminder."
        };
        t.reply = Some(match moved_from {
            Some(old) => format!(
                "Done: your appointment is moved from {} to {when}.{remind} Reply R any time to reschedule.",
                spoken(old, tz)
            ),
            None => format!("You're confirmed for {when}.{remind} Reply R any time to reschedule."),
        });
    }

    /// Fills the current journey's slots from `text`, asks for the next
    /// missing one, or completes it (offering a booking slot).
    pub(super) fn continue_journey(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        let Some(jname) = t.journey.active.clone() else {
            return;
        };
        let Some(j) = self.spec.journeys.get(&jname) else {
            return;
        };
        let hold_until = now.saturating_add_millis(
            i64::from(self.spec.calendar.as_ref().map_or(15, |c| c.hold_minutes)) * 60_000,
        );
        let asking = t.journey.asking.clone().unwrap_or_default();
        let moving_from = t
            .journey
            .booking
            .as_ref()
            .filter(|b| b.status == BookingStatus::Rescheduling)
            .and_then(Booking::booked)
            .filter(|s| s.0 > now.0);
        let contact_given =
            crate::phone::find_in_text(text).is_some() || nlu::email(text).is_some();
        let mut have: BTreeMap<String, String> = captured.slots.clone();
        if let Some(n) = &captured.name {
            have.entry("name".into()).or_insert_with(|| n.clone());
        }
        let mut got_any = false;
        for s in &j.slots {
            if have.get(&s.name).is_some_and(|v| !v.is_empty()) {
                continue;
            }
            let asked = asking == s.name;
            let value = match s.kind {
                SlotKind::Datetime => nlu::when(text, now, tz)
                    .filter(|w| w.has_day || w.has_time)
                    // "12pm" while moving Friday's appointment is Friday;
                    // "Thursday" is Thursday at the booked time.
                    .map(|w| moving_from.map_or(w.at, |from| keeping(&w, from, tz)))
                    // "As soon as possible": from now, the first opening.
                    .or_else(|| nlu::soonest(text).then_some(now))
                    .and_then(|at| slot_time_text(at, tz)),
                SlotKind::Name => nlu::name(text, asked),
                SlotKind::Email => nlu::email(text),
                SlotKind::Phone => crate::phone::find_in_text(text),
                SlotKind::Choice => {
                    // The option the customer names first ("bundle home and
                    // auto" is a bundle).
                    let words = crate::consent::keywords::normalize(text);
                    s.options
                        .iter()
                        .filter_map(|o| {
                            let ow = crate::consent::keywords::normalize(o);
                            if ow.is_empty() {
                                return None;
                            }
                            words
                                .windows(ow.len())
                                .position(|w| w == ow.as_slice())
                                // "my teeth cleaned" names a cleaning,
                                // "whitened" whitening: one-word options
                                // by their stem too.
                                .or_else(|| match ow.as_slice() {
                                    [one] if one.len() >= 5 => {
                                        let want = stem(one);
                                        words.iter().position(|w| w.len() >= 5 && stem(w) == want)
                                    }
                                    _ => None,
                                })
                                .map(|at| (at, o))
                        })
                        .min_by_key(|(at, _)| *at)
                        .map(|(_, o)| o.clone())
                }
                // Contact details are not an answer to a free question.
                SlotKind::Text if asked && !contact_given => {
                    Some(text.trim().chars().take(200).collect())
                }
                SlotKind::Text => None,
            };
            if let Some(v) = value {
                have.insert(s.name.clone(), v.clone());
                t.slots.insert(s.name.clone(), v);
                got_any = true;
            }
        }
        let missing = j
            .slots
            .iter()
            .find(|s| have.get(&s.name).is_none_or(|v| v.is_empty()));
        if let Some(s) = missing {
            if contact_given && !got_any {
                // "Here's my number": noted (see `understand`), then the
                // same question again.
                t.journey.asking = Some(s.name.clone());
                t.reply = Some(format!(
                    "Thanks, noted. {}",
                    fill(&s.ask, captured, &t.slots, self.persona())
                ));
                return;
            }
            if !asking.is_empty() && asking == s.name && !got_any {
                let misses = t.journey.misunderstood + 1;
                t.journey.misunderstood = misses;
                if misses > self.spec.escalation.max_misunderstood {
                    t.escalate = Some(format!("could not get the customer's {}", s.name));
                    t.reply =
                        Some("Let me get someone from our team to help you with this.".into());
                    return;
                }
            }
            t.journey.asking = Some(s.name.clone());
            t.reply = Some(fill(&s.ask, captured, &t.slots, self.persona()));
            return;
        }
        t.journey.asking = None;
        t.journey.misunderstood = 0;
        let mut shown = t.slots.clone();
        if j.booking {
            let slot = j
                .slots
                .iter()
                .find(|s| s.kind == SlotKind::Datetime)
                .expect("compiled: a booking has a datetime slot");
            let wanted = have
                .get(&slot.name)
                .and_then(|v| slot_time(v))
                .unwrap_or(now);
            // A move never offers the time already booked.
            let current = t.journey.upcoming(now);
            if let Some(old) = t.journey.booking.as_ref().and_then(|b| b.offer) {
                cal.release(old.start);
            }
            let exact = self.bookable(wanted, tz)
                && wanted.0 > now.0
                && Some(wanted) != current
                && cal.hold(wanted, hold_until);
            // A time the customer named that is taken: the nearest opening
            // that day, either side, with the other side as an
            // alternative; else the next one after it.
            let named_time = wanted.0 > now.0
                && tz
                    .timestamp_millis_opt(wanted.0)
                    .single()
                    .is_some_and(|d| d.time() != self.open);
            let mut alternative = None;
            let held = if exact {
                Some(wanted)
            } else if let Some((h, other)) = named_time
                .then(|| self.nearest_free(wanted, tz, now, cal, hold_until, current))
                .flatten()
            {
                alternative = other;
                Some(h)
            } else {
                self.next_free(wanted, tz, now, cal, hold_until, current)
            };
            match held {
                Some(h) => {
                    let offer = Offer {
                        start: h,
                        until: hold_until,
                    };
                    t.journey.booking = Some(match t.journey.booking.take() {
                        Some(b) if b.booked().is_some_and(|s| s.0 > now.0) => Booking {
                            offer: Some(offer),
                            ..b
                        },
                        _ => Booking {
                            journey: jname.clone(),
                            service: have
                                .get("service")
                                .filter(|v| !v.is_empty())
                                .cloned()
                                .unwrap_or_else(|| jname.clone()),
                            status: BookingStatus::Offered,
                            start: None,
                            offer: Some(offer),
                            reminders: Vec::new(),
                        },
                    });
                    if let Some(v) = slot_time_text(h, tz) {
                        t.slots.insert(slot.name.clone(), v);
                    }
                    shown.insert(slot.name.clone(), spoken(h, tz));
                    // Why the time named is not the one offered: the day
                    // is closed, the time is outside the hours, or it is
                    // taken.
                    let why = || match self.closed_because(wanted, tz) {
                        Some(closed) => closed,
                        None => format!("{} isn't available", spoken(wanted, tz)),
                    };
                    let lead = match (exact, alternative) {
                        (true, _) => String::new(),
                        // Asked for the first opening: it is what they asked.
                        (false, _) if wanted.0 <= now.0 => String::new(),
                        // The offer says the time held; the lead says
                        // why, and the other side's opening, if any.
                        (false, Some(other)) => format!(
                            "{}, but {} is free too if that suits you better. ",
                            why(),
                            spoken_time(other, tz)
                        ),
                        (false, None) => format!("{}. ", why()),
                    };
                    let mut merged = captured.clone();
                    merged.slots.extend(t.slots.clone());
                    merged.slots.insert(slot.name.clone(), spoken(h, tz));
                    let offer = fill(&j.done, &merged, &shown, self.persona());
                    // After "isn't available", no "Great!".
                    let offer = match lead.is_empty() {
                        true => offer.as_str(),
                        false => offer
                            .strip_prefix("Great! ")
                            .or_else(|| offer.strip_prefix("Great, "))
                            .unwrap_or(&offer),
                    };
                    t.reply = Some(format!("{lead}{offer}"));
                }
                None => {
                    if let Some(b) = &mut t.journey.booking {
                        b.offer = None;
                    }
                    t.journey.booking = t.journey.booking.take().filter(|b| b.booked().is_some());
                    t.slots.insert(slot.name.clone(), String::new());
                    t.journey.asking = Some(slot.name.clone());
                    t.reply = Some("I couldn't find an opening in the next two weeks. Let me get someone to help.".into());
                    t.escalate = Some("no bookable slot in two weeks".into());
                }
            }
            return;
        }
        let mut merged = captured.clone();
        merged.slots.extend(t.slots.clone());
        t.reply = Some(fill(&j.done, &merged, &shown, self.persona()));
        t.journey.active = None;
        // Unless the lead was already handed over when its score crossed
        // the threshold.
        if j.handoff && t.journey.handoff.is_none() {
            t.escalate = Some(format!("{jname} complete"));
            t.completion_handoff = true;
        }
    }
}

/// A word without its ending ("cleaning", "cleaned", "cleans" → "clean").
fn stem(w: &str) -> &str {
    for end in ["ing", "ed", "es", "s"] {
        if let Some(base) = w.strip_suffix(end) {
            if base.len() >= 4 {
                return base;
            }
        }
    }
    w
}
