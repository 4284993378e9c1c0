use std::collections::HashMap;

use chrono::DateTime;
use chrono_tz::America::New_York;

use super::*;

use threadline_protocol::{Booking, BookingStatus, Captured, Journey, Timestamp};

const DENTAL: &str = r#"
persona = { name = "Ava" }
[[intents]]
name = "book"
examples = ["I need a cleaning", "can I book an appointment"]
keywords = ["book", "appointment", "cleaning", "checkup"]
journey = "booking"
[[intents]]
name = "hours"
examples = ["when are you open"]
keywords = ["hours", "open"]
reply = "We're open Monday to Friday, 9 to 5."
[journeys.booking]
booking = true
reminders = ["24h", "2h"]
done = "I can do {when} for your {service}. Reply C to confirm or R for another time."
slots = [
  { name = "service", ask = "What would you like to come in for: cleaning, checkup or whitening?", kind = "choice", options = ["cleaning", "checkup", "whitening"] },
  { name = "when", ask = "What day and time work for you?", kind = "datetime" },
]
[escalation]
keywords = ["emergency", "bleeding"]
[calendar]
days = ["mon", "tue", "wed", "thu", "fri"]
open = "09:00"
close = "17:00"
slot_minutes = 60
"#;

#[test]
fn a_misspelt_placeholder_is_refused_before_it_reaches_a_customer() {
    let bad = DENTAL.replace("for your {service}", "for your {servce}");
    let e = Flow::compile(toml_spec(&bad)).unwrap_err();
    assert!(e.contains("journeys.booking.done"), "{e}");
    assert!(e.contains("{servce}"), "{e}");
    assert!(e.contains("{service}"), "the known ones are listed: {e}");
    let bad = DENTAL.replace("9 to 5.", "9 to 5, {nme}.");
    let e = Flow::compile(toml_spec(&bad)).unwrap_err();
    assert!(e.starts_with("intents[1].reply"), "{e}");
    // The answer for a booked customer may say when; only beside a reply.
    let mut s = toml_spec(DENTAL);
    s.intents[1].reply_when_booked = Some("See you {when}, {nme}.".into());
    let e = Flow::compile(s).unwrap_err();
    assert!(e.starts_with("intents[1].reply_when_booked"), "{e}");
    let mut s = toml_spec(DENTAL);
    s.intents[0].reply_when_booked = Some("See you {when}.".into());
    let e = Flow::compile(s).unwrap_err();
    assert!(e.contains("only beside a `reply`"), "{e}");
    // Braces that are not placeholders stay allowed.
    let fine = DENTAL.replace("9 to 5.", "9 to 5 {see below} or {}.");
    Flow::compile(toml_spec(&fine)).unwrap();
}

fn flow() -> Flow {
    Flow::compile(toml_spec(DENTAL)).unwrap()
}

/// The node reads flow files as TOML in `src/`; the tests do the same
/// with `toml` as a dev-dependency.
fn toml_spec(s: &str) -> FlowSpec {
    toml::from_str(s).unwrap()
}

#[derive(Default)]
struct Cal {
    /// start → (conversation, booked)
    slots: HashMap<i64, (u64, bool)>,
    me: u64,
}

impl Cal {
    /// An empty calendar, as seen by conversation `me`.
    fn of(me: u64) -> Cal {
        Cal {
            me,
            ..Default::default()
        }
    }
}

impl Calendar for Cal {
    fn hold(&mut self, start: Timestamp, _until: Timestamp) -> bool {
        match self.slots.get(&start.0) {
            Some((c, _)) if *c != self.me => false,
            _ => {
                self.slots.insert(start.0, (self.me, false));
                true
            }
        }
    }
    fn release(&mut self, start: Timestamp) {
        if self.slots.get(&start.0).is_some_and(|(c, _)| *c == self.me) {
            self.slots.remove(&start.0);
        }
    }
    fn book(&mut self, start: Timestamp) -> bool {
        match self.slots.get_mut(&start.0) {
            Some((c, b)) if *c == self.me => {
                *b = true;
                true
            }
            _ => false,
        }
    }
    fn free(&self, start: Timestamp) -> bool {
        self.slots.get(&start.0).is_none_or(|(c, _)| *c == self.me)
    }
}

fn t(s: &str) -> Timestamp {
    Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
}

/// What a conversation knows and where it stands, as the core keeps it.
#[derive(Default, Clone)]
struct Conv {
    c: Captured,
    j: Journey,
}

impl Conv {
    /// The customer says `text`; the turn is applied as the core would.
    fn say(&mut self, f: &Flow, text: &str, now: Timestamp, cal: &mut Cal) -> Turn {
        let turn = f.turn(text, &self.c, &self.j, now, New_York, cal);
        for (k, v) in &turn.slots {
            if v.is_empty() {
                self.c.slots.remove(k);
            } else {
                self.c.slots.insert(k.clone(), v.clone());
            }
        }
        if turn.intent.is_some() {
            self.c.intent.clone_from(&turn.intent);
        }
        self.j = turn.journey.clone();
        // The core keeps the reminders it scheduled in the booking.
        if let Some(b) = &mut self.j.booking {
            b.reminders
                .extend((0..turn.reminders.len()).map(|i| 100 + i as u64));
        }
        turn
    }

    fn booking(&self) -> &Booking {
        self.j.booking.as_ref().expect("a booking")
    }
}

const NOW: &str = "2026-03-03T15:00:00Z"; // Tue 10:00 New York

#[test]
fn a_booking_from_intent_to_confirmation_with_reminders() {
    let f = flow();
    let mut cal = Cal::of(1);
    let mut c = Conv::default();
    let now = t(NOW);
    let a = c.say(&f, "Hi, I'm Jordan. I need a cleaning", now, &mut cal);
    assert_eq!(a.intent.as_deref(), Some("book"));
    assert_eq!(a.reply.as_deref(), Some("What day and time work for you?"));
    assert_eq!(c.c.slots["service"], "cleaning");
    assert_eq!(c.c.slots["name"], "Jordan");
    assert_eq!(c.j.active.as_deref(), Some("booking"));
    assert_eq!(c.j.asking.as_deref(), Some("when"));
    let b = c.say(&f, "Tuesday at 3", now, &mut cal);
    assert_eq!(
        b.reply.as_deref(),
        Some("I can do Tue Mar 3 at 3:00 PM for your cleaning. Reply C to confirm or R for another time.")
    );
    // The customer's time, as they would read it: RFC 3339 in their zone.
    assert_eq!(c.c.slots["when"], "2026-03-03T15:00:00-05:00");
    assert_eq!(c.booking().status, BookingStatus::Offered);
    assert_eq!(c.booking().offer.unwrap().start, t("2026-03-03T20:00:00Z"));
    let d = c.say(&f, "C", now, &mut cal);
    assert!(d
        .reply
        .unwrap()
        .starts_with("You're confirmed for Tue Mar 3 at 3:00 PM"));
    assert_eq!(c.booking().status, BookingStatus::Confirmed);
    assert_eq!(c.booking().start, Some(t("2026-03-03T20:00:00Z")));
    assert_eq!(c.j.active, None, "the journey is over");
    // 24 h before is already past; 2 h before is 13:00.
    assert_eq!(d.reminders.len(), 1);
    assert_eq!(d.reminders[0].at, t("2026-03-03T18:00:00Z"));
    assert!(cal.slots[&t("2026-03-03T20:00:00Z").0].1, "booked");
}

#[test]
fn a_slot_is_bookable_only_if_it_ends_by_closing_time_late_evening_too() {
    let f = flow();
    let close = f.spec.calendar.as_ref().unwrap().close.clone();
    assert_eq!(close, "17:00");
    // Thursday 2026-03-05 in New York (UTC-5).
    assert!(f.bookable(t("2026-03-05T21:00:00Z"), New_York), "4 PM");
    assert!(!f.bookable(t("2026-03-05T22:00:00Z"), New_York), "5 PM");
    // 11 PM plus an hour is midnight, which must not count as before 5 PM.
    assert!(!f.bookable(t("2026-03-06T04:00:00Z"), New_York), "11 PM");
    assert!(!f.bookable(t("2026-03-06T04:30:00Z"), New_York), "11:30 PM");
}

#[test]
fn a_taken_slot_offers_the_next_opening_and_two_customers_never_share_one() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut first = Conv::default();
    first.say(&f, "book a checkup thursday at 10am", now, &mut cal);
    let first_offer = first.booking().offer.unwrap().start;
    // The second customer asks for the same time while it is held.
    cal.me = 2;
    let mut second = Conv::default();
    let r = second.say(&f, "book a checkup thursday at 10am", now, &mut cal);
    let reply = r.reply.unwrap();
    assert!(reply.starts_with("Thu Mar 5 at 10:00 AM isn't available, but 9:00 AM is free too if that suits you better. I can do Thu Mar 5 at 11:00 AM"), "{reply}");
    assert_ne!(first_offer, second.booking().offer.unwrap().start);
    // Outside opening hours: the next opening.
    cal.me = 3;
    let r = Conv::default().say(&f, "book a cleaning saturday at 10am", now, &mut cal);
    let reply = r.reply.unwrap();
    assert!(
        reply.starts_with("We're closed on Saturdays. I can do Mon Mar 9 at 9:00 AM"),
        "{reply}"
    );
}

/// Messages as customers type them (issue 22's transcripts): each gets
/// the answer a person at the front desk would give.
#[test]
fn customers_plain_words_get_the_answer_a_person_would_give() {
    let f = flow();
    let now = t(NOW); // Tue Mar 3, 10:00 in New York
    let mut cal = Cal::of(1);
    // "4ish" is 4 PM; "tmrw" is tomorrow; a time alone asks for an
    // appointment.
    let mut c = Conv::default();
    let r = c.say(&f, "can u do tmrw around 4ish?", now, &mut cal);
    assert_eq!(c.j.active.as_deref(), Some("booking"), "{r:?}");
    let r = c.say(&f, "a cleaning", now, &mut cal);
    assert_eq!(
        c.booking().offer.unwrap().start,
        t("2026-03-04T21:00:00Z"),
        "{r:?}"
    );
    // "yea" confirms.
    c.say(&f, "yea", now, &mut cal);
    assert_eq!(c.booking().status, BookingStatus::Confirmed);
    // "push it back an hour" moves it by an hour: 5 PM is past
    // closing, so the nearest opening that day, earlier, is offered.
    let r = c.say(&f, "can we push it back an hour?", now, &mut cal);
    let reply = r.reply.unwrap();
    assert!(
        reply.contains("We're open 9:00 AM to 5:00 PM. I can do Wed Mar 4 at 3:00 PM"),
        "{reply}"
    );
    c.say(&f, "no, keep it", now, &mut cal);
    assert_eq!(c.booking().start, Some(t("2026-03-04T21:00:00Z")));
    // An hour earlier is free: offered as asked.
    let r = c.say(&f, "could we do an hour earlier?", now, &mut cal);
    assert!(r
        .reply
        .unwrap()
        .starts_with("I can do Wed Mar 4 at 3:00 PM"));

    // A taken hour: the nearest either side, the other as an option.
    cal.me = 2;
    let mut d = Conv::default();
    d.say(&f, "book a checkup thursday at 2pm", now, &mut cal);
    d.say(&f, "yes", now, &mut cal);
    cal.me = 3;
    let mut e = Conv::default();
    let r = e.say(&f, "book a checkup thursday at 2pm", now, &mut cal);
    let reply = r.reply.unwrap();
    assert!(reply.starts_with("Thu Mar 5 at 2:00 PM isn't available, but 1:00 PM is free too if that suits you better. I can do Thu Mar 5 at 3:00 PM"), "{reply}");

    // Thanks, goodbyes and "ok" are not misunderstandings: no hand-off
    // however many.
    let mut g = Conv::default();
    for text in ["thx", "thanks so much!", "ok", "👍", "bye!", "thank you"] {
        let r = g.say(&f, text, now, &mut cal);
        assert_eq!(r.escalate, None, "{text}");
        assert_eq!(g.j.misunderstood, 0, "{text}");
    }
    assert_eq!(
        g.say(&f, "thx", now, &mut cal).reply.as_deref(),
        Some("You're welcome! Anything else, just text us.")
    );
    assert_eq!(
        g.say(&f, "ok", now, &mut cal).reply,
        None,
        "nothing to answer"
    );

    // The truth about the assistant, from the persona.
    let r = g.say(&f, "Wait, am I talking to a robot?", now, &mut cal);
    assert!(r
        .reply
        .unwrap()
        .starts_with("I'm Ava, an automated assistant."));
    let r = g.say(&f, "are you a real person", now, &mut cal);
    assert!(r
        .reply
        .unwrap()
        .starts_with("I'm Ava, an automated assistant."));

    // Asking for a person hands over; mentioning one does not.
    for text in [
        "agent please",
        "can I talk to a person",
        "Can I speak with someone real?",
        "a human please",
        "representative",
    ] {
        let r = Conv::default().say(&f, text, now, &mut cal);
        assert_eq!(
            r.escalate.as_deref(),
            Some("the customer asked for a person"),
            "{text}"
        );
    }
    for text in [
        "I'm calling for someone else",
        "I'm a travel agent",
        "my son will talk to his dentist",
    ] {
        let r = Conv::default().say(&f, text, now, &mut cal);
        assert_eq!(r.escalate, None, "{text}");
    }
}

/// Books `when` for the conversation of `cal.me`, confirmed.
fn booked(f: &Flow, cal: &mut Cal, when: &str) -> Conv {
    let mut c = Conv::default();
    c.say(f, &format!("book a cleaning {when}"), t(NOW), cal);
    c.say(f, "yes", t(NOW), cal);
    assert_eq!(c.booking().status, BookingStatus::Confirmed, "{when}");
    c
}

/// The double booking seen on a clinic's line: a move asked in plain
/// words keeps the old time booked until the new one is confirmed, so
/// nobody else can take it meanwhile, and the old time is given back
/// only then.
#[test]
fn a_move_in_plain_words_holds_the_new_time_before_giving_back_the_old() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut a = booked(&f, &mut cal, "thursday at 11am");
    let thu = t("2026-03-05T16:00:00Z");
    assert_eq!(a.booking().start, Some(thu));
    let r = a.say(&f, "I'd like to move my appointment", now, &mut cal);
    assert!(r.reply.unwrap().contains("stays booked until you confirm"));
    assert_eq!(a.booking().status, BookingStatus::Rescheduling);
    assert_eq!(
        cal.slots[&thu.0],
        (1, true),
        "still booked for the customer"
    );
    assert!(r.reminders.is_empty());
    assert_eq!(a.booking().reminders.len(), 2, "reminders kept until moved");
    let r = a.say(&f, "reschedule to friday at 3pm please", now, &mut cal);
    assert!(r.reply.unwrap().contains("Fri Mar 6 at 3:00 PM"));
    let fri = t("2026-03-06T20:00:00Z");
    assert_eq!(a.booking().offer.map(|o| o.start), Some(fri));
    assert_eq!(cal.slots[&thu.0], (1, true));
    // Another customer asks for Thursday 11: it is still taken.
    cal.me = 2;
    let mut b = Conv::default();
    let r = b.say(&f, "book a cleaning thursday at 11am", now, &mut cal);
    assert!(r.reply.unwrap().contains("isn't available"));
    cal.me = 1;
    let r = a.say(&f, "yes", now, &mut cal);
    assert!(
        r.reply.as_deref().unwrap().starts_with(
            "Done: your appointment is moved from Thu Mar 5 at 11:00 AM to Fri Mar 6 at 3:00 PM"
        ),
        "{r:?}"
    );
    assert_eq!(a.booking().status, BookingStatus::Confirmed);
    assert_eq!(a.booking().start, Some(fri));
    assert!(a.booking().reminders.iter().all(|id| *id >= 100));
    assert!(!cal.slots.contains_key(&thu.0), "given back once moved");
    assert_eq!(cal.slots[&fri.0], (1, true));
}

#[test]
fn a_move_never_offers_the_time_already_booked_and_can_be_dropped() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut a = booked(&f, &mut cal, "thursday at 11am");
    let r = a.say(&f, "can we push it back to thursday at 11am", now, &mut cal);
    let reply = r.reply.unwrap();
    assert!(reply.contains("I can do Thu Mar 5 at 12:00 PM"), "{reply}");
    // Changing their mind keeps what they had.
    let r = a.say(&f, "no, never mind", now, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("Okay, I've kept your appointment Thu Mar 5 at 11:00 AM. Anything else I can help with?")
    );
    assert_eq!(a.booking().status, BookingStatus::Confirmed);
    assert_eq!(a.booking().offer, None);
    assert_eq!(cal.slots.len(), 1, "the offered time is free again");
}

/// The phantom cancellation: "I can't make it anymore" cancels for
/// real: the time is free, the reminders go, the reply says so.
#[test]
fn a_cancel_in_plain_words_frees_the_time_and_drops_the_reminders() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut a = booked(&f, &mut cal, "thursday at 11am");
    let r = a.say(&f, "when is my appointment?", now, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("Your appointment is Thu Mar 5 at 11:00 AM. Reply R to reschedule, or tell me if you need to cancel.")
    );
    let r = a.say(&f, "I can't make it anymore", now, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("Done: your appointment Thu Mar 5 at 11:00 AM is cancelled. Text us any time to book again.")
    );
    assert_eq!(a.booking().status, BookingStatus::Cancelled);
    assert!(a.booking().reminders.is_empty());
    assert!(cal.slots.is_empty());
    // And one can book again afterwards.
    let r = a.say(&f, "book a cleaning friday at 10am", now, &mut cal);
    assert!(r.reply.unwrap().contains("Fri Mar 6 at 10:00 AM"));
    assert_eq!(a.booking().status, BookingStatus::Offered);
}

/// The transitions around an offer: no lets it go, another time
/// replaces it, a question is answered, and a time taken meanwhile
/// (the hold lapsed) is said so; a move that loses its new time keeps
/// the old one; a cancel during a move frees both.
#[test]
fn offers_declined_replaced_lost_and_moves_cancelled() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut c = Conv::default();
    c.say(&f, "book a cleaning thursday at 10am", now, &mut cal);
    let r = c.say(&f, "when is my appointment", now, &mut cal);
    assert!(r
        .reply
        .unwrap()
        .starts_with("Nothing is booked yet: I'm holding Thu Mar 5 at 10:00 AM"));
    let r = c.say(&f, "how about friday at 10 instead", now, &mut cal);
    assert!(r.reply.unwrap().contains("Fri Mar 6 at 10:00 AM"));
    assert_eq!(cal.slots.len(), 1, "the first offer is given back");
    let r = c.say(&f, "no", now, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("Okay, I've let that time go. Anything else I can help with?")
    );
    assert_eq!(c.j.booking, None);
    assert!(cal.slots.is_empty());

    // The offered time is taken by someone else before the yes.
    let mut c = booked(&f, &mut cal, "thursday at 11am");
    c.say(&f, "R", now, &mut cal);
    c.say(&f, "friday at 9am", now, &mut cal);
    let fri9 = c.booking().offer.unwrap().start;
    cal.slots.insert(fri9.0, (2, true));
    let r = c.say(&f, "yes", now, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("Sorry, that time was just taken. What other day and time would work?")
    );
    assert_eq!(c.booking().status, BookingStatus::Rescheduling);
    assert_eq!(
        c.booking().start,
        Some(t("2026-03-05T16:00:00Z")),
        "still booked"
    );
    assert_eq!(cal.slots[&t("2026-03-05T16:00:00Z").0], (1, true));
    // A new time, then a cancel while it is offered: both are freed.
    c.say(&f, "friday at 11am", now, &mut cal);
    assert!(c.booking().offer.is_some());
    let r = c.say(&f, "actually just cancel it", now, &mut cal);
    assert!(r.reply.unwrap().contains("is cancelled"));
    assert_eq!(c.booking().status, BookingStatus::Cancelled);
    assert_eq!(
        cal.slots.len(),
        1,
        "only the other customer's booking: {:?}",
        cal.slots
    );
}

/// What customers typed that was misread (found trying the flow as
/// they would): "keep" drops a move even with a day in it, a bare
/// time while moving is on the appointment's own day, an appointment
/// in the past is history, and a reminder is promised only if one
/// will come.
#[test]
fn keeping_moving_to_a_bare_time_past_appointments_and_honest_promises() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut c = booked(&f, &mut cal, "wednesday at 2pm");
    c.say(&f, "actually can i move it", now, &mut cal);
    let r = c.say(&f, "no nvm, ill keep wednesday", now, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("Okay, I've kept your appointment Wed Mar 4 at 2:00 PM.")
    );
    assert_eq!(c.booking().status, BookingStatus::Confirmed);
    c.say(&f, "R", now, &mut cal);
    let r = c.say(&f, "12pm", now, &mut cal);
    assert!(
        r.reply
            .as_deref()
            .unwrap()
            .contains("Wed Mar 4 at 12:00 PM"),
        "the appointment's own day: {r:?}"
    );
    let r = c.say(&f, "forget it ill just keep my wed appt", now, &mut cal);
    assert!(r
        .reply
        .unwrap()
        .starts_with("Okay, I've kept your appointment Wed Mar 4 at 2:00 PM"));
    assert_eq!(cal.slots.len(), 1, "the offered noon is free again");

    // A week later the appointment is history.
    let later = t("2026-03-10T15:00:00Z");
    let r = c.say(&f, "whens my appt", later, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("Your last appointment was Wed Mar 4 at 2:00 PM. Would you like to book another?")
    );
    let r = c.say(&f, "book a cleaning thursday at 10am", later, &mut cal);
    assert!(r.reply.unwrap().contains("Thu Mar 12 at 10:00 AM"));
    assert_eq!(
        c.booking().status,
        BookingStatus::Offered,
        "a new booking, not a move"
    );
    // An hour away: no reminder can come, none is promised.
    let soon = t("2026-03-12T14:00:00Z");
    let mut d = Conv::default();
    cal.me = 2;
    d.say(&f, "book a cleaning today at 10am", soon, &mut cal);
    let r = d.say(&f, "yes", soon, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("You're confirmed for Thu Mar 12 at 11:00 AM. Reply R any time to reschedule.")
    );
    // R on an offer before anything is booked leaves nothing half-made.
    let mut e = Conv::default();
    cal.me = 3;
    e.say(&f, "book a cleaning friday at 10am", now, &mut cal);
    e.say(&f, "R", now, &mut cal);
    assert_eq!(e.j.booking, None);
    assert_eq!(e.j.asking.as_deref(), Some("when"));
}

#[test]
fn reschedule_escalation_and_plain_answers() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut c = booked(&f, &mut cal, "friday at 2pm");
    let old = c.booking().start.unwrap();
    let r = c.say(&f, "R, can we do monday at 11am instead", now, &mut cal);
    assert!(r.reply.unwrap().contains("Mon Mar 9 at 11:00 AM"));
    c.say(&f, "C", now, &mut cal);
    assert!(
        !cal.slots.contains_key(&old.0),
        "the old slot is free again"
    );
    let r = Conv::default().say(&f, "when are you open?", now, &mut cal);
    assert_eq!(
        r.reply.as_deref(),
        Some("We're open Monday to Friday, 9 to 5.")
    );
    let r = Conv::default().say(&f, "it's an emergency, my tooth is bleeding", now, &mut cal);
    assert!(r.escalate.is_some());
    let mut c = Conv::default();
    for _ in 0..2 {
        let r = c.say(&f, "purple monkey dishwasher", now, &mut cal);
        if r.escalate.is_some() {
            return;
        }
    }
    panic!("two misunderstood messages escalate");
}

#[test]
fn bad_flow_files_are_refused_with_a_reason() {
    let mut s = toml_spec(DENTAL);
    s.intents[0].journey = Some("nope".into());
    assert!(Flow::compile(s).unwrap_err().contains("unknown journey"));
    let mut s = toml_spec(DENTAL);
    s.calendar = None;
    assert!(Flow::compile(s).unwrap_err().contains("[calendar]"));
    let mut s = toml_spec(DENTAL);
    s.journeys.get_mut("booking").unwrap().reminders = vec!["soon".into()];
    assert!(Flow::compile(s).unwrap_err().contains("reminder"));
    let mut s = toml_spec(DENTAL);
    s.journeys.get_mut("booking").unwrap().cadence = Some(cadence("soon", "sms", "x"));
    let e = Flow::compile(s).unwrap_err();
    assert!(e.contains("journeys.booking.cadence.steps[0].after"), "{e}");
}

fn cadence(after: &str, channel: &str, text: &str) -> CadenceSpec {
    CadenceSpec {
        steps: vec![CadenceStep {
            after: after.into(),
            channel: channel.into(),
            text: text.into(),
        }],
        unanswered_call: None,
        voicemail: None,
    }
}

#[test]
fn a_journey_follows_up_with_its_own_cadence_and_otherwise_the_flows() {
    let mut s = toml_spec(DENTAL);
    s.cadence = Some(cadence("1d", "sms", "Still there?"));
    s.journeys.get_mut("booking").unwrap().cadence =
        Some(cadence("2h", "whatsapp", "About your booking: {question}"));
    let f = Flow::compile(s).unwrap();
    let now = Timestamp(1_772_550_000_000);
    let c = Captured::default();
    let mut j = Journey::default();
    let general = f.follow_up(0, now, &c, &j, "Anything else?").unwrap();
    assert_eq!(
        (
            general.channel,
            general.due.0 - now.0,
            general.text.as_str()
        ),
        (
            threadline_protocol::Channel::Sms,
            86_400_000,
            "Still there?"
        )
    );
    j.active = Some("booking".into());
    let booking = f.follow_up(0, now, &c, &j, "Which day?").unwrap();
    assert_eq!(
        (
            booking.channel,
            booking.due.0 - now.0,
            booking.text.as_str()
        ),
        (
            threadline_protocol::Channel::Whatsapp,
            7_200_000,
            "About your booking: Which day?"
        )
    );
    assert!(
        f.follow_up(1, now, &c, &j, "Which day?").is_none(),
        "one step"
    );
}

/// Corrections as people write them keep what they do not change: "make
/// it 4" is the offered day at 4, "3 instead" too, "make it Thursday" is
/// Thursday at the time on the table, and after booking, "actually make it
/// 2" moves the appointment to 2 that day.
#[test]
fn a_correction_changes_only_what_it_names() {
    let f = flow();
    let now = t(NOW); // Tue Mar 3, 10:00 in New York
    let mut cal = Cal::of(1);
    let mut c = Conv::default();
    let offered = |c: &Conv| c.booking().offer.map(|o| o.start);
    c.say(&f, "I need a cleaning", now, &mut cal);
    c.say(&f, "tomorrow at 2pm", now, &mut cal);
    assert_eq!(offered(&c), Some(t("2026-03-04T19:00:00Z")));
    let r = c.say(&f, "actually make it 4", now, &mut cal);
    assert_eq!(offered(&c), Some(t("2026-03-04T21:00:00Z")), "{r:?}");
    let r = c.say(&f, "actually can we do 3 instead", now, &mut cal);
    assert_eq!(offered(&c), Some(t("2026-03-04T20:00:00Z")), "{r:?}");
    let r = c.say(&f, "no wait, 11am", now, &mut cal);
    assert_eq!(offered(&c), Some(t("2026-03-04T16:00:00Z")), "{r:?}");
    c.say(&f, "yes", now, &mut cal);
    assert_eq!(c.booking().status, BookingStatus::Confirmed);
    assert_eq!(c.booking().start, Some(t("2026-03-04T16:00:00Z")));
    // Booked: a correction moves it, and it stays booked until confirmed.
    let r = c.say(&f, "actually make it 2", now, &mut cal);
    assert_eq!(c.booking().status, BookingStatus::Rescheduling, "{r:?}");
    assert_eq!(offered(&c), Some(t("2026-03-04T19:00:00Z")), "{r:?}");
    let r = c.say(&f, "make it thursday", now, &mut cal);
    assert_eq!(offered(&c), Some(t("2026-03-05T19:00:00Z")), "{r:?}");
    c.say(&f, "yes", now, &mut cal);
    assert_eq!(c.booking().status, BookingStatus::Confirmed);
    assert_eq!(c.booking().start, Some(t("2026-03-05T19:00:00Z")));
}

#[test]
fn voice_settings_are_checked_and_name_their_key() {
    let with = |voice: &str| format!("{DENTAL}\n[voice]\n{voice}\n");
    let f = Flow::compile(toml_spec(&with(
        "language = \"es-MX\"\nhints = [\"limpieza\"]",
    )))
    .unwrap();
    assert_eq!(f.voice().language, "es-MX");
    assert_eq!(f.voice().hints, vec!["limpieza".to_owned()]);
    assert_eq!(f.voice().timeout_seconds, 6, "the default");
    let f = Flow::compile(toml_spec(DENTAL)).unwrap();
    assert_eq!(f.voice().language, "en-US", "the default");
    for (bad, key) in [
        ("language = \"english please\"", "voice.language"),
        ("hints = [\"cleaning, whitening\"]", "voice.hints[0]"),
        ("hints = [\"\"]", "voice.hints[0]"),
        ("timeout_seconds = 0", "voice.timeout_seconds"),
        ("timeout_seconds = 90", "voice.timeout_seconds"),
    ] {
        let e = Flow::compile(toml_spec(&with(bad))).unwrap_err();
        assert!(e.starts_with(key), "{bad}: {e}");
    }
}

/// A lead whose score crosses the threshold on the journey's last answer
/// is handed off as the rubric says (a call), not also handed to a person
/// by the journey's own completion: before, the completion's hand-off took
/// the turn and no call was placed.
#[test]
fn the_threshold_crossed_on_the_journeys_last_answer_hands_off_once_as_the_rubric_says() {
    let spec = |handoff: &str| {
        format!(
            r#"
persona = {{ name = "Max" }}
[[intents]]
name = "quote"
examples = ["I want a quote"]
keywords = ["quote", "insurance", "bundle"]
journey = "qualify"
[journeys.qualify]
handoff = true
done = "Thanks {{name}}!"
slots = [
  {{ name = "coverage", ask = "What would you like to cover?", kind = "choice", options = ["home", "auto", "bundle"] }},
  {{ name = "timeline", ask = "When do you need it to start?" }},
  {{ name = "name", ask = "And your name?", kind = "name" }},
]
[scoring]
threshold = 70
handoff = "{handoff}"
call_greeting = "Hi {{name}}, this is Max about your quote."
rules = [
  {{ slot = "intent", contains = ["quote"], points = 10 }},
  {{ slot = "coverage", contains = ["bundle"], points = 20 }},
  {{ slot = "timeline", contains = ["next month"], points = 30 }},
  {{ slot = "name", points = 10 }},
]
"#
        )
    };
    for handoff in ["call", "agent"] {
        let f = Flow::compile(toml_spec(&spec(handoff))).unwrap();
        let (mut cal, mut c, now) = (Cal::of(1), Conv::default(), t(NOW));
        c.say(&f, "I want a quote to bundle home and auto", now, &mut cal);
        let before = c.say(&f, "next month", now, &mut cal);
        assert_eq!((before.score, before.call.as_deref()), (Some(60), None));
        let last = c.say(&f, "I'm Jordan", now, &mut cal);
        assert_eq!(last.score, Some(70));
        assert_eq!(last.reply.as_deref(), Some("Thanks Jordan!"));
        assert_eq!(last.journey.handoff.as_deref(), Some("qualified"));
        match handoff {
            "call" => {
                assert_eq!(
                    last.call.as_deref(),
                    Some("Hi Jordan, this is Max about your quote.")
                );
                assert_eq!(last.escalate, None, "no person as well");
            }
            _ => {
                assert_eq!(last.call, None);
                assert_eq!(last.escalate.as_deref(), Some("qualified lead (score 70)"));
            }
        }
    }
}

#[test]
fn the_first_opening_is_asked_in_plain_words() {
    for yes in [
        "as soon as possible",
        "asap please",
        "whatever is earliest",
        "the first available",
        "next opening you have",
        "soonest",
    ] {
        assert!(crate::flows::nlu::soonest(yes), "{yes}");
    }
    for no in [
        "I'll come by soon",
        "next week",
        "is it possible",
        "first thing",
    ] {
        assert!(!crate::flows::nlu::soonest(no), "{no}");
    }
}

#[test]
fn a_key_means_what_the_call_is_waiting_for() {
    let f = flow();
    let mut j = Journey::default();
    // Nothing under way: the menu, intents in order.
    assert_eq!(f.key_answer(1, &j).as_deref(), Some("book"));
    assert!(f
        .key_hint(&j, true)
        .unwrap()
        .starts_with("For book, press 1. For hours, press 2."));
    assert_eq!(f.key_hint(&j, false), None);
    // A choice asked: its options, numbered once each.
    j.active = Some("booking".into());
    j.asking = Some("service".into());
    let hint = f.key_hint(&j, false).unwrap();
    assert!(
        hint.starts_with("Or press 1 for cleaning, 2 for "),
        "{hint}"
    );
    assert_eq!(f.key_answer(1, &j).as_deref(), Some("cleaning"));
    // A time asked: 1 is the first opening.
    j.asking = Some("when".into());
    assert_eq!(
        f.key_answer(1, &j).as_deref(),
        Some(crate::flows::engine::SOONEST)
    );
    assert_eq!(f.key_answer(2, &j), None);
}

/// At any minute of the hour, the first opening is a slot of the grid:
/// at 12:21 "as soon as possible" is 2:00 PM (an hour's notice), not "no
/// opening in two weeks".
#[test]
fn the_first_opening_is_found_whatever_the_minute() {
    let f = flow();
    for (now, want) in [
        ("2026-03-03T17:21:00Z", "I can do Tue Mar 3 at 2:00 PM"),
        ("2026-03-03T15:00:00Z", "I can do Tue Mar 3 at 11:00 AM"),
        ("2026-03-03T21:07:30Z", "I can do Wed Mar 4 at 9:00 AM"),
    ] {
        let mut cal = Cal::of(1);
        let mut c = Conv::default();
        c.say(&f, "I need a cleaning", t(now), &mut cal);
        let r = c.say(&f, "as soon as possible", t(now), &mut cal);
        let reply = r.reply.unwrap();
        assert!(reply.starts_with(want), "{now}: {reply}");
        assert!(r.escalate.is_none(), "{now}: {:?}", r.escalate);
    }
}

/// "Want me to book you in?" answered yes books; no is answered; anything
/// else is read as usual.
#[test]
fn a_yes_to_an_offer_in_a_reply_starts_what_it_offers() {
    let spec = DENTAL.replace(
        "reply = \"We're open Monday to Friday, 9 to 5.\"",
        "reply = \"We're open Monday to Friday, 9 to 5. Want me to book you in?\"\non_yes = \"book\"",
    );
    let f = Flow::compile(toml_spec(&spec)).unwrap();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut c = Conv::default();
    let a = c.say(&f, "what are your hours", now, &mut cal);
    assert!(a.reply.unwrap().ends_with("Want me to book you in?"));
    let b = c.say(&f, "yes please", now, &mut cal);
    assert_eq!(b.intent.as_deref(), Some("book"));
    assert_eq!(c.j.active.as_deref(), Some("booking"));
    let mut c = Conv::default();
    c.say(&f, "what are your hours", now, &mut cal);
    let n = c.say(&f, "no thanks", now, &mut cal);
    assert_eq!(
        n.reply.as_deref(),
        Some("No problem. Anything else I can help with?")
    );
    assert_eq!(c.j.asking, None);
    let mut c = Conv::default();
    c.say(&f, "what are your hours", now, &mut cal);
    let w = c.say(&f, "when are you open on friday", now, &mut cal);
    assert_eq!(w.intent.as_deref(), Some("hours"));
    // An unknown intent is refused at compile.
    let bad = spec.replace("on_yes = \"book\"", "on_yes = \"bok\"");
    assert!(Flow::compile(toml_spec(&bad))
        .unwrap_err()
        .contains("unknown intent"));
}

/// A reminder answered as people answer it: they are coming.
#[test]
fn a_booked_customer_saying_they_will_be_there_is_thanked() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    for said in ["yes I will be there", "yep, I'll be there!", "C"] {
        let mut c = Conv::default();
        c.say(&f, "book a cleaning thursday at 10am", now, &mut cal);
        c.say(&f, "yes", now, &mut cal);
        let r = c.say(&f, said, now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Thanks, see you Thu Mar 5 at 10:00 AM!"),
            "{said}"
        );
        cal = Cal::of(1);
    }
}

/// A service named as people say it: "my teeth cleaned" is a cleaning.
#[test]
fn a_service_is_understood_by_its_stem() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut c = Conv::default();
    c.say(&f, "can I book an appointment", now, &mut cal);
    c.say(&f, "just to get my teeth cleaned", now, &mut cal);
    assert_eq!(
        c.c.slots.get("service").map(String::as_str),
        Some("cleaning")
    );
    let mut c = Conv::default();
    c.say(&f, "can I book an appointment", now, &mut cal);
    c.say(&f, "I want them whitened", now, &mut cal);
    assert_eq!(
        c.c.slots.get("service").map(String::as_str),
        Some("whitening")
    );
}

/// A second visit is not a move of the first: it is said, and a person
/// helps; "book me for friday instead" still moves the visit.
#[test]
fn a_second_visit_is_not_taken_for_a_move() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    let mut c = Conv::default();
    c.say(&f, "book a cleaning thursday at 4pm", now, &mut cal);
    c.say(&f, "yes", now, &mut cal);
    let r = c.say(
        &f,
        "I would also like to book a whitening for my son, Monday at 10",
        now,
        &mut cal,
    );
    assert_eq!(
        r.reply.as_deref(),
        Some("You have a cleaning booked for Thu Mar 5 at 4:00 PM. I can move that visit, but I can't book a second one here, so I'm asking someone from our team to help with that.")
    );
    assert!(r.escalate.is_some());
    assert_eq!(c.booking().status, BookingStatus::Confirmed);
    let r = c.say(
        &f,
        "can I book an appointment for friday at 10 instead",
        now,
        &mut cal,
    );
    assert!(r.reply.unwrap().contains("Fri Mar 6 at 10:00 AM"));
}

/// "When is my appointment?" with nothing booked is answered, and a yes
/// (or "okay") books.
#[test]
fn asking_for_an_appointment_there_is_none_of_is_answered_and_a_yes_books() {
    let f = flow();
    let now = t(NOW);
    let mut cal = Cal::of(1);
    for yes in ["yes", "okay", "sure"] {
        let mut c = Conv::default();
        let r = c.say(&f, "when is my appointment", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("I don't see an appointment booked for you. Would you like to book one?")
        );
        let r = c.say(&f, yes, now, &mut cal);
        assert_eq!(r.intent.as_deref(), Some("book"), "{yes}");
        assert_eq!(c.j.active.as_deref(), Some("booking"), "{yes}");
    }
}
