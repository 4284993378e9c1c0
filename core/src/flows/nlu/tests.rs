use chrono::DateTime;
use chrono_tz::America::{Los_Angeles, New_York};

use super::*;
use chrono::TimeZone;
use chrono_tz::Tz;
use threadline_protocol::Timestamp;

fn t(s: &str) -> Timestamp {
    Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
}

fn at(text: &str, now: &str, tz: Tz) -> String {
    let w = when(text, t(now), tz).unwrap_or_else(|| panic!("no time in {text:?}"));
    tz.timestamp_millis_opt(w.at.0)
        .unwrap()
        .format("%a %Y-%m-%d %H:%M %Z")
        .to_string()
}

// Tuesday 2026-03-03, 10:00 in New York.
const NOW: &str = "2026-03-03T15:00:00Z";

#[test]
fn days_and_times_in_the_customers_zone() {
    for (text, want) in [
        ("tomorrow at 3", "Wed 2026-03-04 15:00 EST"),
        ("Tuesday at 3", "Tue 2026-03-03 15:00 EST"),
        ("next Tuesday afternoon", "Tue 2026-03-10 14:00 EDT"),
        // "Next <weekday>" is that day of next week (Monday to Sunday).
        ("next wednesday at 3", "Wed 2026-03-11 15:00 EDT"),
        ("next monday morning", "Mon 2026-03-09 09:00 EDT"),
        ("this friday at 2", "Fri 2026-03-06 14:00 EST"),
        ("can I come thursday at 10am?", "Thu 2026-03-05 10:00 EST"),
        ("friday 3:30pm works", "Fri 2026-03-06 15:30 EST"),
        ("today at noon", "Tue 2026-03-03 12:00 EST"),
        // 8-11 without am/pm is business hours: 9 has passed, so tomorrow.
        ("at 9", "Wed 2026-03-04 09:00 EST"),
        ("at 4", "Tue 2026-03-03 16:00 EST"),
        ("can u do tmrw around 4ish?", "Wed 2026-03-04 16:00 EST"),
        ("thursday 11ish", "Thu 2026-03-05 11:00 EST"),
        ("friday 2 ish", "Fri 2026-03-06 14:00 EST"),
        ("March 14th at 11am", "Sat 2026-03-14 11:00 EDT"),
        ("the 20th in the morning", "Fri 2026-03-20 09:00 EDT"),
        ("Monday", "Mon 2026-03-09 09:00 EDT"),
        ("tonight", "Tue 2026-03-03 19:00 EST"),
    ] {
        assert_eq!(at(text, NOW, New_York), want, "{text:?}");
    }
    // The same words mean the customer's own wall clock elsewhere.
    assert_eq!(
        at("tomorrow at 3", NOW, Los_Angeles),
        "Wed 2026-03-04 15:00 PST"
    );
    assert!(when("I have a question about my bill", t(NOW), New_York).is_none());
    assert!(when("I need 2 crowns", t(NOW), New_York).is_none());
    assert!(when("my budget is 1500 a year", t(NOW), New_York).is_none());
}

#[test]
fn a_weekday_said_on_that_day_for_a_time_gone_is_next_week() {
    // Tuesday 16:00: "Tuesday at 3" has passed today.
    assert_eq!(
        at("Tuesday at 3", "2026-03-03T21:00:00Z", New_York),
        "Tue 2026-03-10 15:00 EDT"
    );
}

#[test]
fn dst_gaps_and_overlaps_resolve_without_crashing() {
    // 2026-03-08 02:30 does not exist in New York: moved past the gap.
    assert_eq!(
        at("Sunday at 2:30am", "2026-03-05T15:00:00Z", New_York),
        "Sun 2026-03-08 03:00 EDT"
    );
    // 2026-11-01 01:30 exists twice: the first (EDT).
    assert_eq!(
        at("Sunday at 1:30am", "2026-10-29T15:00:00Z", New_York),
        "Sun 2026-11-01 01:30 EDT"
    );
    // After fall back, "tomorrow at 3" is on standard time.
    assert_eq!(
        at("tomorrow at 3", "2026-10-31T15:00:00Z", New_York),
        "Sun 2026-11-01 15:00 EST"
    );
}

#[test]
fn yes_no_names_and_emails() {
    for y in ["Yes", "yeah sure", "C", "ok sounds good", "Confirm"] {
        assert_eq!(yes_no(y), Some(true), "{y}");
    }
    for n in ["no", "Nope", "not really", "cancel it"] {
        assert_eq!(yes_no(n), Some(false), "{n}");
    }
    assert_eq!(yes_no("what time is it"), None);
    assert_eq!(
        name("Hi, I'm Jordan Lee and I need help", false).as_deref(),
        Some("Jordan Lee")
    );
    assert_eq!(
        name("my name is dana", false),
        None,
        "uncapitalized in a sentence"
    );
    assert_eq!(name("dana", true).as_deref(), Some("Dana"));
    assert_eq!(name("I'm looking for a quote", false), None);
    assert_eq!(name("This is Sam", false).as_deref(), Some("Sam"));
    assert_eq!(
        email("reach me at Jo.Lee@Example.com, thanks").as_deref(),
        Some("jo.lee@example.com")
    );
    assert_eq!(email("no email here @ all"), None);
}

#[test]
fn intents_by_keywords_and_similar_phrases() {
    let models = vec![
        IntentModel::new(
            "book",
            &[
                "I need a cleaning".into(),
                "can I book an appointment".into(),
            ],
            &["book".into(), "appointment".into(), "schedule".into()],
        ),
        IntentModel::new(
            "hours",
            &["when are you open".into(), "what are your hours".into()],
            &["hours".into(), "open".into()],
        ),
        IntentModel::new(
            "quote",
            &[
                "how much is home insurance".into(),
                "I want a quote for auto insurance".into(),
            ],
            &["quote".into(), "price".into()],
        ),
    ];
    assert_eq!(
        classify(&models, "I'd like to schedule a cleaning", 0.3).map(|x| x.0),
        Some("book")
    );
    assert_eq!(
        classify(&models, "Are you OPEN on Saturdays?", 0.3).map(|x| x.0),
        Some("hours")
    );
    assert_eq!(
        classify(&models, "need cleanings for my kids", 0.3).map(|x| x.0),
        Some("book")
    );
    assert_eq!(
        classify(&models, "how much would auto insurance cost", 0.3).map(|x| x.0),
        Some("quote")
    );
    assert_eq!(classify(&models, "the weather is nice", 0.3), None);
}
