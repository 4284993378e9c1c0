//! The built-in understanding, measured on customer messages as people
//! write them (`tests/eval/messages.tsv`: category, message, what a person
//! at the front desk would understand). Prints a table of accuracy per
//! category (`cargo test -p threadline-core --test understanding --
//! --nocapture`) and fails when a category falls below its floor, or when
//! a revocation or a request for a person is missed.

use std::collections::BTreeMap;

use chrono::TimeZone;
use chrono_tz::America::New_York;
use threadline_core::consent::keywords::{Keyword, Keywords};
use threadline_core::flows::engine::{Calendar, Flow, FlowSpec};
use threadline_core::flows::nlu::{self, AppointmentAsk, SmallTalk};
use threadline_protocol::{Captured, Journey, Timestamp};

/// Tuesday 2026-03-03 10:00 in New York: the instant the set is labelled at.
const NOW: &str = "2026-03-03T15:00:00Z";

/// The lowest accuracy each category may fall to (what the built-in
/// understanding reached when the floor was set; see the README's table).
const FLOORS: &[(&str, f64)] = &[
    ("time", 0.99),
    ("intent", 0.95),
    ("appointment", 0.98),
    ("person", 0.98),
    ("optout", 0.98),
    ("smalltalk", 0.97),
    ("yesno", 0.97),
];

/// The floors of the held-out set.
const HELD_OUT_FLOORS: &[(&str, f64)] = &[
    ("time", 0.98),
    ("intent", 0.85),
    ("appointment", 0.75),
    ("person", 0.95),
    ("optout", 0.95),
    ("smalltalk", 0.9),
    ("yesno", 0.95),
];

/// A calendar with every slot free (intents only).
struct Free;

impl Calendar for Free {
    fn hold(&mut self, _: Timestamp, _: Timestamp) -> bool {
        true
    }
    fn release(&mut self, _: Timestamp) {}
    fn book(&mut self, _: Timestamp) -> bool {
        true
    }
    fn free(&self, _: Timestamp) -> bool {
        true
    }
}

fn now() -> Timestamp {
    Timestamp(
        chrono::DateTime::parse_from_rfc3339(NOW)
            .unwrap()
            .timestamp_millis(),
    )
}

fn dental() -> Flow {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/flows/dental.toml"
    ))
    .unwrap();
    let spec: FlowSpec = toml::from_str(&src).unwrap();
    Flow::compile(spec).unwrap()
}

/// What the built-in understanding makes of `text` in `category`, in the
/// set's own words.
fn understood(category: &str, text: &str, flow: &Flow, keywords: &Keywords) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    match category {
        "time" => match nlu::when(text, now(), New_York) {
            None => "none".into(),
            Some(w) => {
                let local = New_York.timestamp_millis_opt(w.at.0).unwrap();
                if w.has_time {
                    local.format("%Y-%m-%d %H:%M").to_string()
                } else {
                    local.format("%Y-%m-%d").to_string()
                }
            }
        },
        "intent" => flow
            .turn(
                text,
                &Captured::default(),
                &Journey::default(),
                now(),
                New_York,
                &mut Free,
            )
            .intent
            .unwrap_or_else(|| "none".into()),
        "appointment" => match nlu::appointment_ask(text) {
            Some(AppointmentAsk::Reschedule) => "reschedule".into(),
            Some(AppointmentAsk::Cancel) => "cancel".into(),
            Some(AppointmentAsk::When) => "when".into(),
            None => "none".into(),
        },
        "person" => yes_no(nlu::wants_person(text)),
        "optout" => yes_no(keywords.classify(text, None) == Some(Keyword::OptOut)),
        "smalltalk" => match nlu::small_talk(text) {
            Some(SmallTalk::Thanks) => "thanks".into(),
            Some(SmallTalk::Ack) => "ack".into(),
            Some(SmallTalk::Bye) => "bye".into(),
            Some(SmallTalk::AsksIfBot) => "bot".into(),
            None => "none".into(),
        },
        "yesno" => match nlu::yes_no(text) {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => "none".into(),
        },
        other => panic!("unknown category {other:?}"),
    }
}

#[derive(Default)]
struct Tally {
    total: usize,
    right: usize,
    /// Binary categories: a `yes` read as `no`, and the other way round.
    missed: usize,
    false_alarms: usize,
    wrong: Vec<String>,
}

/// Reads set `file` (in `tests/eval/`) and tallies it by category,
/// printing the table and every message not understood.
fn evaluate(file: &str) -> BTreeMap<String, Tally> {
    let set = std::fs::read_to_string(format!("{}/tests/eval/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let flow = dental();
    let keywords = Keywords::default();
    let mut by: BTreeMap<String, Tally> = BTreeMap::new();
    for (n, line) in set.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 3, "{file} line {}: {line:?}", n + 1);
        let (category, text, want) = (f[0].trim(), f[1], f[2].trim());
        let got = understood(category, text, &flow, &keywords);
        let t = by.entry(category.to_owned()).or_default();
        t.total += 1;
        if got == want {
            t.right += 1;
        } else {
            match (want, got.as_str()) {
                ("yes", "no") => t.missed += 1,
                ("no", "yes") => t.false_alarms += 1,
                _ => {}
            }
            t.wrong.push(format!(
                "  line {}: {text:?}: want {want}, got {got}",
                n + 1
            ));
        }
    }
    println!("{file}:");
    println!("| category | messages | understood | accuracy | missed | false alarms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (c, t) in &by {
        println!(
            "| {c} | {} | {} | {:.1}% | {} | {} |",
            t.total,
            t.right,
            100.0 * t.right as f64 / t.total as f64,
            t.missed,
            t.false_alarms
        );
    }
    for (c, t) in &by {
        if !t.wrong.is_empty() {
            println!("{c}:");
            for w in &t.wrong {
                println!("{w}");
            }
        }
    }
    by
}

/// Fails when a category of `by` is below its floor in `floors`, or a
/// revocation or a request for a person was missed.
fn holds(by: &BTreeMap<String, Tally>, floors: &[(&str, f64)]) {
    for (c, floor) in floors {
        let t = by.get(*c).unwrap_or_else(|| panic!("no {c} messages"));
        let acc = t.right as f64 / t.total as f64;
        assert!(
            acc >= *floor,
            "{c}: {:.1}% is below its floor {:.1}%:\n{}",
            100.0 * acc,
            100.0 * floor,
            t.wrong.join("\n")
        );
    }
    for c in ["optout", "person"] {
        let t = &by[c];
        assert_eq!(t.missed, 0, "{c}: missed\n{}", t.wrong.join("\n"));
    }
}

/// The set the rules were tuned on (`messages.tsv`, 547 messages).
#[test]
fn the_built_in_understanding_reads_customers_as_people_do() {
    let by = evaluate("messages.tsv");
    let total: usize = by.values().map(|t| t.total).sum();
    assert!(total >= 400, "the set has {total} messages");
    holds(&by, FLOORS);
}

/// A held-out set (`heldout.tsv`, written without seeing the code or the
/// other set, after the rules were tuned): how the rules generalize.
#[test]
fn the_built_in_understanding_on_messages_it_was_not_tuned_on() {
    let by = evaluate("heldout.tsv");
    holds(&by, HELD_OUT_FLOORS);
}
