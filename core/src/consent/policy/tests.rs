use chrono_tz::America::{Chicago, Denver, Los_Angeles, New_York, Phoenix};

use super::*;

fn t(s: &str) -> Timestamp {
    Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
}

fn loc(rules: &[Rule], zones: &[Tz]) -> Location {
    Location {
        rules: rules.to_vec(),
        zones: zones.to_vec(),
        source: "test",
    }
}

fn req<'a>(now: Timestamp, purpose: Purpose, l: &'a Location) -> Request<'a> {
    Request {
        now,
        channel: Channel::Sms,
        purpose,
        subject: "appointment",
        consent: Consent::OptedIn,
        confirmation: false,
        direct_reply: false,
        basis: Some(BASIS_CONSENT),
        location: l,
        sent_on_subject: &[],
        whatsapp_last_inbound: None,
        whatsapp_template: false,
    }
}

fn decide_at(now: &str, rules: &[Rule], zones: &[Tz]) -> Decision {
    let l = loc(rules, zones);
    decide(&req(t(now), Purpose::Reminder, &l))
}

fn until(d: Decision) -> Timestamp {
    match d {
        Decision::Defer { until, .. } => until,
        other => panic!("expected a deferral, got {other:?}"),
    }
}

#[test]
fn federal_window_is_half_open_in_local_time() {
    let f = [Rule::Federal];
    // 2026-11-22 is a Sunday, after DST ended (EST = UTC-5).
    assert!(matches!(
        decide_at("2026-11-23T13:00:00Z", &f, &[New_York]),
        Decision::Send { .. }
    ));
    assert!(
        matches!(
            decide_at("2026-11-24T01:59:59Z", &f, &[New_York]),
            Decision::Send { .. }
        ),
        "20:59:59"
    );
    // 21:00:00 local is outside; next allowed is 08:00 local.
    let d = decide_at("2026-11-24T02:00:00Z", &f, &[New_York]);
    assert_eq!(until(d), t("2026-11-24T13:00:00Z"));
    // 07:59 local: deferred to 08:00 exactly.
    assert_eq!(
        until(decide_at("2026-11-24T12:59:00Z", &f, &[New_York])),
        t("2026-11-24T13:00:00Z")
    );
}

#[test]
fn a_reminder_at_2230_is_deferred_to_the_states_start() {
    // Tuesday 2026-11-24 22:30 Eastern.
    let at = "2026-11-25T03:30:00Z";
    let fed = until(decide_at(at, &[Rule::Federal], &[New_York]));
    assert_eq!(fed, t("2026-11-25T13:00:00Z"), "08:00 EST");
    let ct = until(decide_at(
        at,
        &[Rule::Federal, Rule::Connecticut],
        &[New_York],
    ));
    assert_eq!(ct, t("2026-11-25T14:00:00Z"), "09:00 EST in Connecticut");
    let fl = until(decide_at(
        "2026-11-25T01:30:00Z",
        &[Rule::Federal, Rule::Florida],
        &[New_York],
    ));
    assert_eq!(
        fl,
        t("2026-11-25T13:00:00Z"),
        "20:30 is already quiet in Florida"
    );
}

#[test]
fn dst_transitions_of_2026_in_several_zones() {
    let f = [Rule::Federal];
    // Spring forward 2026-03-08: 08:00 EDT is 12:00 UTC (not 13:00).
    assert_eq!(
        until(decide_at("2026-03-08T07:30:00Z", &f, &[New_York])),
        t("2026-03-08T12:00:00Z")
    );
    // The night of the change (02:30 local does not exist): no crash,
    // deferral lands on 08:00 local the same morning.
    assert_eq!(
        until(decide_at("2026-03-08T07:30:00Z", &f, &[Chicago])),
        t("2026-03-08T13:00:00Z")
    );
    assert_eq!(
        until(decide_at("2026-03-08T09:30:00Z", &f, &[Denver])),
        t("2026-03-08T14:00:00Z")
    );
    assert_eq!(
        until(decide_at("2026-03-08T09:30:00Z", &f, &[Los_Angeles])),
        t("2026-03-08T15:00:00Z")
    );
    // Arizona has no DST.
    assert_eq!(
        until(decide_at("2026-03-08T09:30:00Z", &f, &[Phoenix])),
        t("2026-03-08T15:00:00Z")
    );
    // Fall back 2026-11-01: 01:30 happens twice; 08:00 EST is 13:00 UTC.
    assert_eq!(
        until(decide_at("2026-11-01T05:30:00Z", &f, &[New_York])),
        t("2026-11-01T13:00:00Z")
    );
    assert_eq!(
        until(decide_at("2026-11-01T06:30:00Z", &f, &[New_York])),
        t("2026-11-01T13:00:00Z")
    );
    // A fixed UTC offset would be wrong half the year: summer 08:00 EDT.
    assert_eq!(
        until(decide_at("2026-07-01T03:00:00Z", &f, &[New_York])),
        t("2026-07-01T12:00:00Z")
    );
}

#[test]
fn texas_sundays_start_at_noon_and_alabama_has_no_sundays_or_holidays() {
    let tx = [Rule::Federal, Rule::Texas];
    // Sunday 2026-11-22 10:00 CST → noon.
    assert_eq!(
        until(decide_at("2026-11-22T16:00:00Z", &tx, &[Chicago])),
        t("2026-11-22T18:00:00Z")
    );
    // Monday 08:30 CST → 09:00.
    assert_eq!(
        until(decide_at("2026-11-23T14:30:00Z", &tx, &[Chicago])),
        t("2026-11-23T15:00:00Z")
    );
    let al = [Rule::Federal, Rule::Alabama];
    // Sunday noon in Alabama → Monday 08:00.
    assert_eq!(
        until(decide_at("2026-11-22T18:00:00Z", &al, &[Chicago])),
        t("2026-11-23T14:00:00Z")
    );
    // Thanksgiving 2026-11-26 (Thursday) → Friday 08:00.
    assert_eq!(
        until(decide_at("2026-11-26T18:00:00Z", &al, &[Chicago])),
        t("2026-11-27T14:00:00Z")
    );
    // Christmas 2027 falls on a Saturday: observed Friday the 24th.
    assert!(us_holiday(NaiveDate::from_ymd_opt(2027, 12, 24).unwrap()));
    assert!(!us_holiday(NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()));
}

#[test]
fn the_panhandle_must_be_allowed_in_both_of_its_zones() {
    let l = locate(
        None,
        None,
        None,
        Some("+18505551234"),
        New_York,
        &[],
        &AbroadHours::default(),
    );
    assert_eq!(l.zones, vec![New_York, Chicago]);
    assert!(l.rules.contains(&Rule::Florida));
    // 08:30 Eastern is 07:30 Central: wait for 08:00 Central (09:00 ET).
    let d = decide(&req(t("2026-11-24T13:30:00Z"), Purpose::Reminder, &l));
    assert_eq!(until(d), t("2026-11-24T14:00:00Z"));
    // 19:30 Central is 20:30 Eastern: quiet in Florida already.
    let d = decide(&req(t("2026-11-25T01:30:00Z"), Purpose::Reminder, &l));
    assert_eq!(until(d), t("2026-11-25T14:00:00Z"));
}

#[test]
fn location_precedence() {
    let tenant = &[Rule::Florida, Rule::Connecticut];
    let l = locate(
        Some("US-TX"),
        None,
        Some("FL"),
        Some("+13055551234"),
        New_York,
        tenant,
        &AbroadHours::default(),
    );
    assert_eq!(
        (l.source, l.zones.clone()),
        ("contact region", vec![Chicago, Denver])
    );
    let l = locate(
        None,
        Some(Los_Angeles),
        Some("FL"),
        None,
        New_York,
        tenant,
        &AbroadHours::default(),
    );
    assert_eq!(l.zones, vec![Los_Angeles]);
    let l = locate(
        None,
        None,
        Some("WA"),
        Some("+13055551234"),
        New_York,
        tenant,
        &AbroadHours::default(),
    );
    assert_eq!(
        (l.source, l.rules.clone()),
        ("provider FromState", vec![Rule::Federal, Rule::Washington])
    );
    let l = locate(
        None,
        None,
        None,
        Some("+13055551234"),
        Chicago,
        tenant,
        &AbroadHours::default(),
    );
    assert_eq!((l.source, l.zones.clone()), ("area code", vec![New_York]));
    // A New York number is in New York: federal rules, Eastern time
    // (it used to get the tenant's strictest set, Florida's hours).
    let l = locate(
        None,
        None,
        None,
        Some("+12125551234"),
        Chicago,
        tenant,
        &AbroadHours::default(),
    );
    assert_eq!(
        (l.source, l.rules.clone(), l.zones.clone()),
        ("area code", vec![Rule::Federal], vec![New_York])
    );
    // A toll-free number is nowhere in particular: the strictest set.
    let l = locate(
        None,
        None,
        None,
        Some("+18005551234"),
        Chicago,
        tenant,
        &AbroadHours::default(),
    );
    assert_eq!(l.source, "tenant zone, strictest rules");
    assert_eq!(
        l.rules,
        vec![Rule::Federal, Rule::Florida, Rule::Connecticut]
    );
    assert_eq!(l.zones, vec![Chicago]);
    // A US territory: federal rules in its own zone.
    let l = locate(
        None,
        None,
        None,
        Some("+17875551234"),
        Chicago,
        tenant,
        &AbroadHours::default(),
    );
    assert_eq!(
        (l.rules.clone(), l.zones.clone()),
        (vec![Rule::Federal], vec![chrono_tz::America::Puerto_Rico])
    );
}

/// Numbers outside the US never get US rules: a clinic in Kolkata
/// texting an Indian number uses its own hours there, in its zone; a
/// country the tenant set hours for uses those.
#[test]
fn numbers_abroad_get_the_tenants_hours_never_us_state_rules() {
    let kolkata = chrono_tz::Asia::Kolkata;
    let strict = &STATE_RULES;
    let abroad = AbroadHours {
        default: (9 * 60, 20 * 60),
        by_country: vec![("GB".into(), (10 * 60, 18 * 60))],
    };
    let l = locate(
        None,
        None,
        Some("FL"),
        Some("+919876543210"),
        kolkata,
        strict,
        &abroad,
    );
    assert_eq!(
        (l.rules.clone(), l.zones.clone()),
        (vec![Rule::Abroad(9 * 60, 20 * 60)], vec![kolkata])
    );
    // 21:00 in Kolkata is 15:30 UTC: outside the tenant's 09-20 window,
    // deferred to 09:00 Kolkata (03:30 UTC).
    let d = decide(&req(t("2026-03-10T15:30:00Z"), Purpose::Reminder, &l));
    assert_eq!(until(d), t("2026-03-11T03:30:00Z"));
    let l = locate(
        None,
        None,
        None,
        Some("+442079460000"),
        kolkata,
        strict,
        &abroad,
    );
    assert_eq!(l.rules, vec![Rule::Abroad(10 * 60, 18 * 60)]);
    // Canada is North American, not US.
    let l = locate(
        None,
        None,
        None,
        Some("+14165551234"),
        New_York,
        strict,
        &AbroadHours::default(),
    );
    assert_eq!(l.rules, vec![Rule::Abroad(8 * 60, 21 * 60)]);
    assert!(!l.rules.iter().any(|r| STATE_RULES.contains(r)));
}

/// Every state, DC and territory has the zones its local time may be in.
#[test]
fn every_state_has_its_zones() {
    for st in [
        "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN",
        "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH",
        "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
        "VT", "VA", "WA", "WV", "WI", "WY", "PR", "VI", "GU", "AS", "MP",
    ] {
        assert!(!zones_of_state(st).is_empty(), "{st}");
    }
}

#[test]
fn florida_caps_three_per_rolling_day_on_one_subject() {
    let l = loc(&[Rule::Federal, Rule::Florida], &[New_York]);
    let now = t("2026-11-24T17:00:00Z"); // noon Eastern
    let sent = [
        t("2026-11-23T18:00:00Z"),
        t("2026-11-24T14:00:00Z"),
        t("2026-11-24T15:00:00Z"),
    ];
    let mut r = req(now, Purpose::Reminder, &l);
    r.sent_on_subject = &sent;
    let d = decide(&r);
    // Released 24 h after the oldest of the three.
    assert_eq!(until(d.clone()), t("2026-11-24T18:00:00.001Z"));
    assert!(matches!(d, Decision::Defer { rule, .. } if rule.contains("frequency cap")));
    // Two in the window: fine.
    r.sent_on_subject = &sent[1..];
    assert!(matches!(decide(&r), Decision::Send { .. }));
    // No cap for Washington.
    let wa = loc(&[Rule::Federal, Rule::Washington], &[Los_Angeles]);
    let mut r = req(t("2026-11-24T20:00:00Z"), Purpose::Reminder, &wa);
    r.sent_on_subject = &sent;
    assert!(matches!(decide(&r), Decision::Send { .. }));
}

/// The rolling day is 24 real hours, also across the spring-forward
/// night: three sends on Saturday 10:00-12:00 EST hold a fourth on the
/// same subject until 11:00 EDT Sunday (not 10:00, the same wall time).
#[test]
fn a_cap_across_the_dst_change_counts_real_hours() {
    let l = loc(&[Rule::Federal, Rule::Florida], &[New_York]);
    let sent = [
        t("2026-03-07T15:00:00Z"),
        t("2026-03-07T16:00:00Z"),
        t("2026-03-07T17:00:00Z"),
    ];
    let mut r = req(t("2026-03-08T14:30:00Z"), Purpose::Marketing, &l);
    r.sent_on_subject = &sent;
    assert_eq!(until(decide(&r)), t("2026-03-08T15:00:00.001Z"));
    // Another subject (the core passes none of these sends): goes now.
    r.sent_on_subject = &[];
    assert!(matches!(decide(&r), Decision::Send { .. }));
}

#[test]
fn a_cap_release_inside_quiet_hours_waits_for_the_morning() {
    let l = loc(&[Rule::Federal, Rule::Florida], &[New_York]);
    // Three sends at 19:58-19:59:30 Eastern yesterday; now 19:10.
    let sent = [
        t("2026-11-24T00:58:00Z"),
        t("2026-11-24T00:59:00Z"),
        t("2026-11-24T00:59:30Z"),
    ];
    let mut r = req(t("2026-11-25T00:10:00Z"), Purpose::Reminder, &l);
    r.sent_on_subject = &sent;
    // Released 24 h after the oldest: 19:58 today, still allowed.
    assert_eq!(until(decide(&r)), t("2026-11-25T00:58:00.001Z"));
    // Across spring-forward the same 24 h end at 20:30 EDT, which is
    // quiet: the message waits for 08:00 EDT the next morning.
    let sent = [
        t("2026-03-08T00:30:00Z"),
        t("2026-03-08T00:35:00Z"),
        t("2026-03-08T00:40:00Z"),
    ];
    let mut r = req(t("2026-03-08T23:00:00Z"), Purpose::Reminder, &l);
    r.sent_on_subject = &sent;
    assert_eq!(until(decide(&r)), t("2026-03-09T12:00:00Z"));
}

#[test]
fn consent_rules() {
    let l = loc(&[Rule::Federal], &[New_York]);
    let now = t("2026-11-24T17:00:00Z");
    let mut r = req(now, Purpose::Marketing, &l);
    r.consent = Consent::Unknown;
    assert_eq!(
        decide(&r),
        Decision::Block {
            reason: "marketing requires an opt-in"
        }
    );
    r.consent = Consent::OptedOut;
    r.purpose = Purpose::Conversational;
    r.direct_reply = true;
    assert_eq!(
        decide(&r),
        Decision::Block {
            reason: "recipient opted out"
        }
    );
    r.confirmation = true;
    assert!(
        matches!(decide(&r), Decision::Send { .. }),
        "the one confirmation goes out"
    );
    // A direct reply is not held by quiet hours.
    let mut r = req(t("2026-11-25T04:00:00Z"), Purpose::Conversational, &l);
    r.direct_reply = true;
    assert!(matches!(
        decide(&r),
        Decision::Send { rule } if rule == "direct reply"
    ));
    r.direct_reply = false;
    assert!(matches!(decide(&r), Decision::Defer { .. }));
}

#[test]
fn whatsapp_window_at_its_boundary() {
    let l = loc(&[Rule::Federal], &[New_York]);
    let last = t("2026-11-23T17:00:00Z");
    let mut r = req(t("2026-11-24T16:59:59.999Z"), Purpose::Conversational, &l);
    r.channel = Channel::Whatsapp;
    r.direct_reply = true;
    r.whatsapp_last_inbound = Some(last);
    assert!(matches!(decide(&r), Decision::Send { .. }), "inside 24 h");
    r.now = t("2026-11-24T17:00:00Z");
    assert!(
        matches!(decide(&r), Decision::Block { .. }),
        "exactly 24 h later is outside"
    );
    r.whatsapp_template = true;
    assert_eq!(
        decide(&r),
        Decision::Send {
            rule: WHATSAPP_TEMPLATE_RULE.into(),
        },
        "a template to an opted-in user"
    );
    // A template is business-initiated: quiet hours hold it.
    let late = t("2026-11-25T03:30:00Z"); // 22:30 in New York
    r.now = late;
    assert!(
        matches!(decide(&r), Decision::Defer { until, .. } if until == t("2026-11-25T13:00:00Z")),
        "a template at 22:30 waits for 08:00"
    );
    r.now = t("2026-11-24T17:00:00Z");
    r.consent = Consent::Unknown;
    assert!(
        matches!(decide(&r), Decision::Block { .. }),
        "but not to an unknown one"
    );
    r.whatsapp_last_inbound = None;
    r.consent = Consent::OptedIn;
    r.whatsapp_template = false;
    assert!(
        matches!(decide(&r), Decision::Block { .. }),
        "no customer message at all"
    );
}
