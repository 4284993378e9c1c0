use super::*;
use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{Author, ConsentStatus, Direction, Status};

fn inbound(text: &str, pid: Option<&str>) -> InboundMessage {
    InboundMessage {
        channel: Channel::Sms,
        from: "+15551234567".into(),
        to: Some("+15557654321".into()),
        text: text.into(),
        provider_message_id: pid.map(Into::into),
        at: None,
        media: vec![],
    }
}

fn new_conv() -> Conversation {
    Conversation::create(
        ConversationId(7),
        "acme",
        "+15551234567",
        identities_for(Channel::Sms, "+15551234567"),
        Timestamp(100),
    )
    .0
}

#[test]
fn inbound_messages_are_recorded_in_order_with_sequential_ids() {
    let mut c = new_conv();
    let cfg = CoreConfig::default();
    let (o1, e1) = c.on_inbound(&inbound("hi", Some("a")), Timestamp(200), &cfg);
    let (o2, _) = c.on_inbound(&inbound("there", Some("b")), Timestamp(300), &cfg);
    assert_eq!(o1, InboundOutcome::Recorded(c.state.message_id(2)));
    assert_eq!(o2, InboundOutcome::Recorded(c.state.message_id(3)));
    assert_eq!(e1.len(), 1);
    let texts: Vec<_> = c.state.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["hi", "there"]);
    assert_eq!(
        c.state.messages[0].at,
        Timestamp(200),
        "no source time: now"
    );
}

#[test]
fn a_repeated_provider_id_is_a_duplicate_and_records_nothing() {
    let mut c = new_conv();
    let cfg = CoreConfig::default();
    let (first, _) = c.on_inbound(&inbound("hi", Some("a")), Timestamp(200), &cfg);
    let (again, events) = c.on_inbound(&inbound("hi", Some("a")), Timestamp(300), &cfg);
    assert_eq!(again, InboundOutcome::Duplicate(c.state.message_id(2)));
    assert!(matches!(first, InboundOutcome::Recorded(id) if id == c.state.message_id(2)));
    assert!(events.is_empty());
    assert_eq!(c.state.messages.len(), 1);
    // Messages without a provider id are never deduplicated.
    c.on_inbound(&inbound("x", None), Timestamp(400), &cfg);
    c.on_inbound(&inbound("x", None), Timestamp(500), &cfg);
    assert_eq!(c.state.messages.len(), 3);
}

#[test]
fn dedup_holds_for_long_transcripts_with_an_index() {
    let mut c = new_conv();
    let cfg = CoreConfig::default();
    for i in 0..100 {
        c.on_inbound(&inbound("m", Some(&format!("p{i}"))), Timestamp(i), &cfg);
    }
    for i in [0, 31, 32, 33, 99] {
        let (o, e) = c.on_inbound(&inbound("m", Some(&format!("p{i}"))), Timestamp(500), &cfg);
        assert!(
            matches!(o, InboundOutcome::Duplicate(_)) && e.is_empty(),
            "p{i}"
        );
    }
    let rebuilt = Conversation::from_state(c.state.clone());
    assert!(rebuilt.by_provider_id.is_some());
    assert_eq!(rebuilt.seen("p7"), c.seen("p7"));
    assert_eq!(c.state.messages.len(), 100);
}

#[test]
fn dedup_survives_a_rebuild_from_state() {
    let mut c = new_conv();
    let cfg = CoreConfig::default();
    c.on_inbound(&inbound("hi", Some("a")), Timestamp(200), &cfg);
    let mut rebuilt = Conversation::from_state(c.state.clone());
    let (o, _) = rebuilt.on_inbound(&inbound("hi", Some("a")), Timestamp(300), &cfg);
    assert!(matches!(o, InboundOutcome::Duplicate(_)));
}

#[test]
#[should_panic(expected = "panic trigger")]
fn the_test_hook_panics_only_when_configured() {
    let mut c = new_conv();
    c.on_inbound(&inbound("boom", None), Timestamp(1), &CoreConfig::default());
    let cfg = CoreConfig {
        panic_trigger: Some("boom".into()),
    };
    c.on_inbound(&inbound("boom", None), Timestamp(2), &cfg);
}

fn ids() -> impl FnMut() -> u64 {
    let mut n = 100;
    move || {
        n += 1;
        n
    }
}

const H: i64 = 3_600_000;

fn tenant(lifecycle: Lifecycle) -> TenantPolicy {
    TenantPolicy {
        lifecycle,
        ..TenantPolicy::default()
    }
}

#[test]
fn lifecycle_goes_inactive_then_closed_and_reopens_on_a_message() {
    let policy = Lifecycle {
        inactive_after_ms: 24 * H,
        close_after_ms: 48 * H,
    };
    let mut next = ids();
    let mut c = new_conv();
    let cfg = CoreConfig::default();
    c.on_inbound(&inbound("hi", None), Timestamp(0), &cfg);
    c.ensure_lifecycle(Timestamp(0), &policy, &mut next);
    let t = c.state.timers[0].clone();
    assert_eq!((t.kind, t.due), (TimerKind::Lifecycle, Timestamp(24 * H)));
    // A message in the meantime: the timer stays, and re-arms when it fires.
    c.on_inbound(&inbound("again", None), Timestamp(10 * H), &cfg);
    assert!(c
        .ensure_lifecycle(Timestamp(10 * H), &policy, &mut next)
        .is_empty());
    c.fire_timer(t.id, Timestamp(24 * H), &tenant(policy), &mut next)
        .unwrap();
    assert_eq!(c.state.status, Status::Active);
    let t = c.state.timers[0].clone();
    assert_eq!(t.due, Timestamp(34 * H));
    // Silence: inactive, then closed.
    c.fire_timer(t.id, Timestamp(34 * H), &tenant(policy), &mut next)
        .unwrap();
    assert_eq!(c.state.status, Status::Inactive);
    let t = c.state.timers[0].clone();
    assert_eq!(t.due, Timestamp(82 * H));
    c.fire_timer(t.id, Timestamp(82 * H), &tenant(policy), &mut next)
        .unwrap();
    assert_eq!(c.state.status, Status::Closed);
    assert!(c.state.timers.is_empty());
    // Firing the same id again changes nothing.
    assert!(c
        .fire_timer(t.id, Timestamp(90 * H), &tenant(policy), &mut next)
        .is_none());
    // A new message reopens it and arms a fresh timer.
    c.on_inbound(&inbound("back", None), Timestamp(100 * H), &cfg);
    assert_eq!(c.state.status, Status::Active);
    c.ensure_lifecycle(Timestamp(100 * H), &policy, &mut next);
    assert_eq!(c.state.timers[0].due, Timestamp(124 * H));
}

#[test]
fn reopening_an_inactive_conversation_pulls_its_timer_in() {
    let policy = Lifecycle {
        inactive_after_ms: 24 * H,
        close_after_ms: 48 * H,
    };
    let mut next = ids();
    let mut c = new_conv();
    c.on_inbound(&inbound("hi", None), Timestamp(0), &CoreConfig::default());
    c.ensure_lifecycle(Timestamp(0), &policy, &mut next);
    let id = c.state.timers[0].id;
    c.fire_timer(id, Timestamp(24 * H), &tenant(policy), &mut next)
        .unwrap();
    assert_eq!(c.state.timers[0].due, Timestamp(72 * H));
    c.on_inbound(
        &inbound("back", None),
        Timestamp(30 * H),
        &CoreConfig::default(),
    );
    let events = c.ensure_lifecycle(Timestamp(30 * H), &policy, &mut next);
    assert_eq!(
        events.len(),
        2,
        "cancel the close check, arm the inactivity check"
    );
    assert_eq!(c.state.timers.len(), 1);
    assert_eq!(c.state.timers[0].due, Timestamp(54 * H));
}

/// Tuesday 2026-11-24 17:00 UTC: noon in New York, inside every window.
const NOON_ET: i64 = 1_795_539_600_000;

fn nyc() -> TenantPolicy {
    TenantPolicy {
        name: "Acme Dental".into(),
        help_text: "Acme Dental: call +1 555 765 4321. Reply STOP to opt out.".into(),
        zone: chrono_tz::America::New_York,
        ..TenantPolicy::default()
    }
}

fn follow_up(c: &mut Conversation, id: u64, due: i64, channel: Option<Channel>) {
    c.schedule_timer(
        id,
        TimerSpec {
            due: Timestamp(due),
            kind: TimerKind::FollowUp,
            text: Some("Still there?".into()),
            channel,
        },
    );
}

#[test]
fn a_follow_up_timer_sends_once_on_the_last_inbound_channel() {
    let mut next = ids();
    let mut c = new_conv();
    let mut msg = inbound("hi", None);
    msg.channel = Channel::Whatsapp;
    c.on_inbound(&msg, Timestamp(NOON_ET), &CoreConfig::default());
    follow_up(&mut c, 7, NOON_ET + 5_000, None);
    let t = nyc();
    let events = c
        .fire_timer(7, Timestamp(NOON_ET + 5_003), &t, &mut next)
        .unwrap();
    assert_eq!(
        events.len(),
        4,
        "fired, the gate's decision, the message, its subject"
    );
    assert!(matches!(
        &events[3].1,
        ConvEvent::SubjectNoted { subject, .. } if subject == "conversational"
    ));
    assert!(matches!(&events[1].1, ConvEvent::Decided(d) if d.decision == "sent"));
    let out = c.state.messages.last().unwrap();
    assert_eq!(
        (
            out.direction,
            out.channel,
            out.text.as_str(),
            out.at,
            out.delivery
        ),
        (
            Direction::Outbound,
            Channel::Whatsapp,
            "Still there?",
            Timestamp(NOON_ET + 5_000),
            Delivery::Sent
        )
    );
    assert!(c
        .fire_timer(7, Timestamp(NOON_ET + 6_000), &t, &mut next)
        .is_none());
    assert!(c.cancel_timer(7).is_none(), "already fired");
    assert_eq!(c.state.messages.len(), 2);
}

#[test]
fn stop_confirms_once_blocks_follow_ups_and_start_reopens() {
    let t = nyc();
    let mut next = ids();
    let mut c = new_conv();
    let cfg = CoreConfig::default();
    let now = Timestamp(NOON_ET);
    c.on_inbound(&inbound("STOP", Some("s1")), now, &cfg);
    c.on_keywords(&inbound("STOP", Some("s1")), None, now, &t);
    assert_eq!(
        c.state.consent_for(Channel::Sms, "marketing"),
        ConsentStatus::OptedOut
    );
    assert_eq!(
        c.state.consent_for(Channel::Whatsapp, "reminder"),
        ConsentStatus::OptedOut,
        "revoke-all"
    );
    let confirmations = |c: &Conversation| {
        c.state
            .messages
            .iter()
            .filter(|m| m.author == Author::System)
            .count()
    };
    assert_eq!(confirmations(&c), 1);
    c.on_inbound(&inbound("stop please", Some("s2")), now, &cfg);
    let again = c.on_keywords(&inbound("stop please", Some("s2")), None, now, &t);
    assert_eq!(again.len(), 1, "recorded, but no second confirmation");
    assert_eq!(confirmations(&c), 1);
    // A follow-up now is blocked, and recorded as such.
    follow_up(&mut c, 9, NOON_ET + 60_000, Some(Channel::Sms));
    c.fire_timer(9, Timestamp(NOON_ET + 60_000), &t, &mut next)
        .unwrap();
    assert_eq!(c.state.messages.last().unwrap().delivery, Delivery::Blocked);
    // START reopens SMS, with a confirmation.
    c.on_keywords(&inbound("START", Some("s3")), None, now, &t);
    assert_eq!(
        c.state.consent_for(Channel::Sms, "conversational"),
        ConsentStatus::OptedIn
    );
    assert_eq!(confirmations(&c), 2);
    // YES while opted in is just a message.
    assert!(c
        .on_keywords(&inbound("yes", None), None, now, &t)
        .is_empty());
}

#[test]
fn help_answers_with_the_tenant_text_and_keeps_consent() {
    let t = nyc();
    let mut c = new_conv();
    let events = c.on_keywords(&inbound("HELP", None), None, Timestamp(NOON_ET), &t);
    assert_eq!(events.len(), 1);
    assert_eq!(c.state.messages.last().unwrap().text, t.help_text);
    assert_eq!(
        c.state.consent_for(Channel::Sms, "marketing"),
        ConsentStatus::Unknown
    );
}

#[test]
fn a_follow_up_due_in_quiet_hours_waits_as_a_new_timer() {
    let t = nyc();
    let mut next = ids();
    let mut c = new_conv();
    c.on_inbound(
        &inbound("hi", None),
        Timestamp(NOON_ET),
        &CoreConfig::default(),
    );
    // 22:30 Eastern the same day.
    let late = NOON_ET + 10 * H + 30 * 60_000;
    follow_up(&mut c, 11, late, None);
    c.fire_timer(11, Timestamp(late), &t, &mut next).unwrap();
    assert_eq!(c.state.messages.len(), 1, "nothing sent at night");
    let held = c
        .state
        .timers
        .iter()
        .find(|x| x.kind == TimerKind::FollowUp)
        .unwrap();
    // Unknown location: tenant zone and the strictest rules (09:00 in
    // Connecticut and Texas on weekdays).
    assert_eq!(held.due, Timestamp(NOON_ET + 21 * H));
    assert_ne!(held.id, 11);
    // From Wednesday night the next allowed instant skips Thanksgiving
    // (no calls on holidays in Alabama, one of the strictest rules).
    let wed_late = late + 24 * H;
    follow_up(&mut c, 12, wed_late, None);
    c.fire_timer(12, Timestamp(wed_late), &t, &mut next)
        .unwrap();
    let held = c
        .state
        .timers
        .iter()
        .rev()
        .find(|x| x.kind == TimerKind::FollowUp)
        .unwrap();
    assert_eq!(
        held.due,
        Timestamp(NOON_ET + (21 + 48) * H),
        "Friday 09:00 Eastern"
    );
}

#[test]
fn whatsapp_identity_keeps_digits_and_phone() {
    let ids = identities_for(Channel::Whatsapp, "+15551234567");
    assert_eq!(ids.whatsapp.as_deref(), Some("15551234567"));
    assert_eq!(ids.phone.as_deref(), Some("+15551234567"));
}

/// What the booking flow writes for texters, said on a call: nothing asks
/// a caller to reply with a letter or to text.
#[test]
fn booking_texts_are_worded_for_a_caller() {
    for written in [
        "Great! I can do Thu Mar 5 at 3:00 PM for your cleaning. Reply C to confirm or R for another time.",
        "Reminder: your cleaning is Thu Mar 5 at 3:00 PM. Reply C to confirm or R to reschedule.",
        "You're confirmed for Thu Mar 5 at 3:00 PM. We'll send you a reminder. Reply R any time to reschedule.",
        "Done: your appointment is moved from Thu Mar 5 at 3:00 PM to Fri Mar 6 at 9:00 AM. Reply R any time to reschedule.",
        "Your appointment is Thu Mar 5 at 3:00 PM. Reply R to reschedule, or tell me if you need to cancel.",
        "Your appointment is Thu Mar 5 at 3:00 PM. I'm holding Fri Mar 6 at 9:00 AM for you as the new time: reply C to move it there.",
        "Done: your appointment Thu Mar 5 at 3:00 PM is cancelled. Text us any time to book again.",
        "You're welcome! Anything else, just text us.",
    ] {
        let said = for_the_ear(written);
        let lower = said.to_lowercase();
        assert!(!lower.contains("reply"), "{said}");
        assert!(
            !lower.contains("text us") || lower.contains("call or text us"),
            "{said}"
        );
        assert!(!lower.contains(" c ") && !lower.contains(" r "), "{said}");
    }
    assert_eq!(
        for_the_ear("You're confirmed for Thu Mar 5 at 3:00 PM. Reply R any time to reschedule."),
        "You're confirmed for Thu Mar 5 at 3:00 PM. If you need another time, just call or text us."
    );
}
