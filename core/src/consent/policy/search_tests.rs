use chrono_tz::America::{Chicago, Denver, Los_Angeles, New_York, Phoenix};
use proptest::prelude::*;

use super::*;

/// The obvious search: every minute until one is allowed.
fn brute(t: Timestamp, loc: &Location, sent: &[Timestamp]) -> Option<Timestamp> {
    let align = |x: i64| (x + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS;
    if capped(t, loc, sent).is_none() && quiet(t, loc).is_none() {
        return Some(t);
    }
    let mut at = Timestamp(align(t.0 + 1));
    while at.0 - t.0 <= HORIZON_MS {
        if let Some((release, _)) = capped(at, loc, sent) {
            at = Timestamp(align(release.0).max(at.0 + MINUTE_MS));
            if capped(release, loc, sent).is_none() && quiet(release, loc).is_none() {
                return Some(release);
            }
            continue;
        }
        if quiet(at, loc).is_none() {
            return Some(at);
        }
        at = Timestamp(at.0 + MINUTE_MS);
    }
    None
}

const ZONES: [Tz; 5] = [New_York, Chicago, Denver, Los_Angeles, Phoenix];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn jumping_search_equals_minute_by_minute(
        // Any second of 2026, DST days included.
        secs in 1_767_225_600i64..1_798_761_600i64,
        rule_mask in 0u8..128,
        zone_mask in 1u8..32,
    ) {
        let mut rules = vec![Rule::Federal];
        rules.extend(STATE_RULES.iter().enumerate().filter(|(i, _)| rule_mask & (1 << i) != 0).map(|(_, r)| *r));
        let zones: Vec<Tz> = ZONES.iter().enumerate().filter(|(i, _)| zone_mask & (1 << i) != 0).map(|(_, z)| *z).collect();
        let loc = Location { rules, zones, source: "prop" };
        let t = Timestamp(secs * 1000 + 123);
        let fast = next_allowed(t, &loc, &[]).map(|(x, _)| x);
        prop_assert_eq!(fast, brute(t, &loc, &[]));
    }
}
