//! `cargo bench -p threadline-core --bench consent`: pure gate decisions
//! and keyword classifications per second.

use std::hint::black_box;
use std::time::Instant;

use chrono_tz::America::{Chicago, New_York};
use threadline_core::consent::keywords::Keywords;
use threadline_core::consent::policy::{decide, Consent, Location, Purpose, Request, Rule};
use threadline_protocol::{Channel, Timestamp};

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let florida = Location {
        rules: vec![Rule::Federal, Rule::Florida],
        zones: vec![New_York, Chicago],
        source: "bench",
    };
    let federal = Location {
        rules: vec![Rule::Federal],
        zones: vec![New_York],
        source: "bench",
    };
    let sent = [Timestamp(1_795_600_000_000), Timestamp(1_795_610_000_000)];
    // Noon Eastern on Wednesday 2026-11-25, stepping a second per decision.
    let start = 1_795_626_000_000i64;
    let n = 5_000_000;
    for (name, loc, purpose) in [
        (
            "gate: reminder, Florida panhandle (2 zones, cap)",
            &florida,
            Purpose::Reminder,
        ),
        (
            "gate: marketing, federal only",
            &federal,
            Purpose::Marketing,
        ),
    ] {
        let t0 = Instant::now();
        let mut sends = 0u64;
        for i in 0..n {
            let r = Request {
                now: Timestamp(start + (i as i64 % 3600) * 1000),
                channel: Channel::Sms,
                purpose,
                subject: "appointment",
                consent: Consent::OptedIn,
                confirmation: false,
                direct_reply: false,
                basis: Some(threadline_core::consent::policy::BASIS_CONSENT),
                location: loc,
                sent_on_subject: &sent,
                whatsapp_last_inbound: None,
                whatsapp_template: false,
            };
            if matches!(
                black_box(decide(black_box(&r))),
                threadline_core::consent::policy::Decision::Send { .. }
            ) {
                sends += 1;
            }
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{name:<52} {:>12.0} decisions/s ({sends} sent)",
            n as f64 / s
        );
    }
    // Deferrals search forward minute by minute: the slow path.
    let night = 1_795_662_000_000i64; // 22:00 Eastern
    let n = 20_000;
    let t0 = Instant::now();
    for i in 0..n {
        let r = Request {
            now: Timestamp(night + i as i64 * 1000),
            channel: Channel::Sms,
            purpose: Purpose::Reminder,
            subject: "appointment",
            consent: Consent::OptedIn,
            confirmation: false,
            direct_reply: false,
            basis: Some(threadline_core::consent::policy::BASIS_CONSENT),
            location: &florida,
            sent_on_subject: &[],
            whatsapp_last_inbound: None,
            whatsapp_template: false,
        };
        black_box(decide(black_box(&r)));
    }
    println!(
        "{:<52} {:>12.0} decisions/s",
        "gate: deferral at 22:00 (search to 08:00)",
        n as f64 / t0.elapsed().as_secs_f64()
    );
    let k = Keywords::default();
    let texts = [
        "STOP",
        "please stop texting me",
        "Hi, I'd like to book a cleaning next Tuesday afternoon",
        "ЅТОР",
        "I can't stop laughing",
    ];
    let n = 1_000_000;
    let t0 = Instant::now();
    for i in 0..n {
        black_box(k.classify(black_box(texts[i % texts.len()]), None));
    }
    println!(
        "{:<52} {:>12.0} texts/s",
        "keywords: classify (mixed texts)",
        n as f64 / t0.elapsed().as_secs_f64()
    );
}
