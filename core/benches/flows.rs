//! `cargo bench -p threadline-core --bench flows`: built-in understanding
//! turns per second (intent classification and slot extraction) and whole
//! flow-engine turns, pure.

use std::hint::black_box;
use std::time::Instant;

use chrono_tz::America::New_York;
use threadline_core::flows::engine::{Calendar, Flow, FlowSpec};
use threadline_core::flows::nlu;
use threadline_protocol::{Captured, Timestamp};

struct NoCalendar;

impl Calendar for NoCalendar {
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

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/flows/dental.toml"
    ))
    .expect("the example flow");
    let spec: FlowSpec = toml::from_str(&src).expect("valid flow");
    let flow = Flow::compile(spec).expect("compiles");
    let texts = [
        "Hi, I'm Jordan. I need a cleaning next Tuesday afternoon",
        "can I book a checkup tomorrow at 3?",
        "what are your hours on friday",
        "do you take delta dental insurance",
        "R - could we do Friday at 10am instead?",
        "yes please",
        "where do I park",
        "purple monkey dishwasher",
    ];
    let now = Timestamp(1_772_550_000_000);
    let n = 400_000usize;
    let started = Instant::now();
    for i in 0..n {
        let t = texts[i % texts.len()];
        black_box(nlu::when(black_box(t), now, New_York));
        black_box(nlu::yes_no(t));
        black_box(nlu::name(t, false));
        black_box(nlu::email(t));
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "slot extraction (when, yes/no, name, email): {:.0} turns/s",
        n as f64 / s
    );
    let started = Instant::now();
    let c = Captured::default();
    for i in 0..n {
        let t = texts[i % texts.len()];
        black_box(flow.turn(
            black_box(t),
            &c,
            &threadline_protocol::Journey::default(),
            now,
            New_York,
            &mut NoCalendar,
        ));
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "flow engine turns (understanding + journey + reply), dental flow: {:.0} turns/s",
        n as f64 / s
    );
}
