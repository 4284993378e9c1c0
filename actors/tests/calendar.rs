//! The calendar invariant, as a property: whatever customers say, in any
//! order, with holds lapsing, the business blocking slots and the node
//! restarting, a slot is held or booked by at most one conversation, and
//! each conversation's booking and the calendar agree.
//!
//! It drives the shipped dental flow's engine with the node's shared
//! calendar (`SharedCalendar` over one map for every conversation); the
//! calendar writes each turn reports are applied to a model of the durable
//! table, and a restart rebuilds the map from that table, as the node
//! does at open. `THREADLINE_PROPTEST_CASES` sets the number of runs (the
//! long mode).

use std::collections::BTreeMap;

use chrono_tz::America::New_York;
use dashmap::DashMap;
use proptest::prelude::*;
use threadline_actors::flows::engine::{Flow, FlowSpec};
use threadline_actors::flows::{block_slot, unblock_slot, SharedCalendar, BLOCKED};
use threadline_actors::store::{slot_key, CalendarWrite, SlotHold};
use threadline_protocol::{Captured, Journey, Timestamp};

const TENANT: &str = "smile";
/// Tuesday 2026-03-03, 10:00 in New York.
const START: i64 = 1_772_550_000_000;
const CONVS: u64 = 4;

fn flow() -> Flow {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/flows/dental.toml"
    ))
    .unwrap();
    let spec: FlowSpec = toml::from_str(&text).unwrap();
    Flow::compile(spec).unwrap()
}

/// Times customers ask for and the business blocks: Thu and Fri, 9 to 12
/// (few, so that they collide).
const TIMES: [&str; 6] = [
    "thursday at 9am",
    "thursday at 10am",
    "thursday at 11am",
    "friday at 9am",
    "friday at 10am",
    "friday at 11am",
];

fn slot_of(i: usize) -> Timestamp {
    // Thu 2026-03-05 and Fri 03-06, 9/10/11 EST (UTC-5).
    let day = if i < 3 { 0 } else { 86_400_000 };
    Timestamp(1_772_719_200_000 + day + (i % 3) as i64 * 3_600_000)
}

#[derive(Debug, Clone)]
enum Step {
    Say(u64, usize, usize),
    /// Minutes pass (holds last 15).
    Wait(u8),
    Block(usize),
    Unblock(usize),
    Restart,
}

fn message(kind: usize, time: usize) -> String {
    let t = TIMES[time];
    match kind {
        0 => format!("I need a cleaning {t}"),
        1 => "yes".into(),
        2 => "no".into(),
        3 => "I'd like to move my appointment".into(),
        4 => format!("can we do {t} instead"),
        5 => "cancel my appointment".into(),
        6 => "I can't make it anymore".into(),
        7 => "when is my appointment?".into(),
        8 => "never mind, keep it".into(),
        9 => t.to_owned(),
        _ => "C".into(),
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1..=CONVS, 0usize..11, 0usize..TIMES.len()).prop_map(|(c, k, t)| Step::Say(c, k, t)),
        2 => (1u8..20).prop_map(Step::Wait),
        1 => (0usize..TIMES.len()).prop_map(Step::Block),
        1 => (0usize..TIMES.len()).prop_map(Step::Unblock),
        1 => Just(Step::Restart),
    ]
}

#[derive(Default, Clone)]
struct Conv {
    captured: Captured,
    journey: Journey,
}

struct World {
    flow: Flow,
    now: Timestamp,
    map: DashMap<String, SlotHold>,
    durable: BTreeMap<String, SlotHold>,
    convs: BTreeMap<u64, Conv>,
}

impl World {
    fn commit(&mut self, writes: Vec<CalendarWrite>) {
        for w in writes {
            match w {
                CalendarWrite::Put(k, h) => {
                    self.durable.insert(k, h);
                }
                CalendarWrite::Delete(k) => {
                    self.durable.remove(&k);
                }
            }
        }
    }

    fn run(&mut self, s: &Step) {
        match *s {
            Step::Say(c, kind, time) => {
                let conv = self.convs.entry(c).or_default().clone();
                let mut writes = Vec::new();
                let mut cal = SharedCalendar {
                    map: &self.map,
                    tenant: TENANT,
                    conv: c,
                    now: self.now,
                    writes: &mut writes,
                };
                let turn = self.flow.turn(
                    &message(kind, time),
                    &conv.captured,
                    &conv.journey,
                    self.now,
                    New_York,
                    &mut cal,
                );
                let conv = self.convs.get_mut(&c).unwrap();
                for (k, v) in &turn.slots {
                    if v.is_empty() {
                        conv.captured.slots.remove(k);
                    } else {
                        conv.captured.slots.insert(k.clone(), v.clone());
                    }
                }
                conv.journey = turn.journey;
                self.commit(writes);
            }
            Step::Wait(m) => self.now = Timestamp(self.now.0 + i64::from(m) * 60_000),
            Step::Block(i) => {
                if let Ok(Some(w)) = block_slot(&self.map, TENANT, slot_of(i), self.now) {
                    self.commit(vec![w]);
                }
            }
            Step::Unblock(i) => {
                if let Some(w) = unblock_slot(&self.map, TENANT, slot_of(i)) {
                    self.commit(vec![w]);
                }
            }
            Step::Restart => {
                self.map.clear();
                for (k, h) in &self.durable {
                    self.map.insert(k.clone(), *h);
                }
            }
        }
    }

    /// The invariant; what is wrong, if anything.
    fn check(&self) -> Result<(), String> {
        // What the map holds is what is durable (a restart loses nothing).
        let live: BTreeMap<String, SlotHold> = self
            .map
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        if live != self.durable {
            return Err(format!("map {live:?} != durable {:?}", self.durable));
        }
        for (c, conv) in &self.convs {
            let Some(b) = &conv.journey.booking else {
                continue;
            };
            if let Some(start) = b.booked() {
                let h = self.map.get(&slot_key(TENANT, start)).map(|h| *h);
                if h != Some(SlotHold {
                    conv: *c,
                    booked: true,
                    until: h.map_or(Timestamp(0), |h| h.until),
                }) {
                    return Err(format!(
                        "conv {c} says booked {start:?}, the calendar has {h:?}"
                    ));
                }
            }
            if let Some(o) = b.offer.filter(|o| o.until.0 > self.now.0) {
                let h = self.map.get(&slot_key(TENANT, o.start)).map(|h| *h);
                if h.map(|h| h.conv) != Some(*c) {
                    return Err(format!("conv {c} is offered {o:?}, the calendar has {h:?}"));
                }
            }
        }
        for e in self.map.iter() {
            let h = *e.value();
            if h.conv == BLOCKED {
                continue;
            }
            let b = self
                .convs
                .get(&h.conv)
                .and_then(|c| c.journey.booking.as_ref());
            let start = Timestamp(i64::from_str_radix(&e.key()[TENANT.len() + 1..], 16).unwrap());
            if h.booked && b.and_then(|b| b.booked()) != Some(start) {
                return Err(format!(
                    "{start:?} is booked by conv {} whose booking is {b:?}",
                    h.conv
                ));
            }
            if !h.booked
                && h.until.0 > self.now.0
                && b.and_then(|b| b.offer).map(|o| o.start) != Some(start)
            {
                return Err(format!(
                    "{start:?} is held by conv {} whose booking is {b:?}",
                    h.conv
                ));
            }
        }
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("THREADLINE_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn a_slot_has_one_holder_and_bookings_agree_with_the_calendar(
        steps in proptest::collection::vec(step(), 1..120)
    ) {
        let mut w = World {
            flow: flow(),
            now: Timestamp(START),
            map: DashMap::new(),
            durable: BTreeMap::new(),
            convs: BTreeMap::new(),
        };
        for (i, s) in steps.iter().enumerate() {
            w.run(s);
            if let Err(e) = w.check() {
                prop_assert!(false, "after step {i} ({s:?}): {e}");
            }
        }
    }
}
