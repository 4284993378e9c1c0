//! Golden fixtures: bytes written by earlier format versions must keep
//! decoding. A fixture is written once, when its version is introduced
//! (`THREADLINE_WRITE_FIXTURES=1 cargo test -p threadline-protocol --test golden`),
//! and never regenerated afterwards.

use std::path::PathBuf;

use threadline_protocol::codec::{self, InboundMessage, LogRecord};
use threadline_protocol::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn v1_state() -> ConversationState {
    let mut s = ConversationState::from_created(&ConvEvent::Created {
        id: ConversationId(0x2a),
        tenant: "acme".into(),
        contact: "+15551234567".into(),
        identities: Identities {
            phone: Some("+15551234567".into()),
            ..Default::default()
        },
        at: Timestamp(1_795_000_000_000),
    })
    .unwrap();
    s.apply(
        2,
        &ConvEvent::MessageAppended(Message {
            seq: 2,
            direction: Direction::Inbound,
            channel: Channel::Sms,
            author: Author::Customer,
            text: "I need a cleaning next week".into(),
            at: Timestamp(1_795_000_001_000),
            recorded_at: Timestamp(1_795_000_001_500),
            provider_message_id: Some("SM123".into()),
            delivery: Delivery::Received,
            media: vec![],
        }),
    )
    .unwrap();
    s.captured.name = Some("Jordan".into());
    s.captured.facts.insert("pet".into(), "dog".into());
    s
}

fn v1_log_record() -> LogRecord {
    LogRecord {
        conv: ConversationId(0x2a),
        seq: 2,
        event: ConvEvent::MessageAppended(v1_state().messages[0].clone()),
    }
}

fn check(name: &str, current: Vec<u8>) -> Vec<u8> {
    let path = fixture(name);
    if std::env::var_os("THREADLINE_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::write(&path, &current).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()))
}

#[test]
fn snapshot_v1_fixture_still_decodes() {
    let bytes = check("snapshot_v1.bin", codec::encode_snapshot(&v1_state()));
    assert_eq!(codec::decode_snapshot(&bytes).unwrap(), v1_state());
}

fn v2_state() -> ConversationState {
    let mut s = v1_state();
    s.apply(
        3,
        &ConvEvent::TimerScheduled(PendingTimer {
            id: 77,
            due: Timestamp(1_795_000_100_000),
            kind: TimerKind::FollowUp,
            text: Some("Still want that cleaning?".into()),
            channel: Some(Channel::Sms),
        }),
    )
    .unwrap();
    s.apply(
        4,
        &ConvEvent::StatusChanged {
            status: Status::Inactive,
            at: Timestamp(1_795_000_200_000),
        },
    )
    .unwrap();
    s
}

#[test]
fn snapshot_v2_fixture_still_decodes() {
    let bytes = check("snapshot_v2.bin", codec::encode_snapshot(&v2_state()));
    assert_eq!(codec::decode_snapshot(&bytes).unwrap(), v2_state());
}

fn v3_state() -> ConversationState {
    let mut s = v2_state();
    s.apply(
        5,
        &ConvEvent::ConsentChanged(ConsentChange {
            status: ConsentStatus::OptedOut,
            channel: None,
            purpose: None,
            source: "keyword".into(),
            keyword: Some("STOP".into()),
            raw_text: Some("stop".into()),
            provider_message_id: Some("SM9".into()),
            proof: None,
            at: Timestamp(1_795_000_300_000),
        }),
    )
    .unwrap();
    s
}

#[test]
fn snapshot_v3_fixture_still_decodes() {
    let bytes = check("snapshot_v3.bin", codec::encode_snapshot(&v3_state()));
    assert_eq!(codec::decode_snapshot(&bytes).unwrap(), v3_state());
}

fn v4_state() -> ConversationState {
    let mut s = v3_state();
    s.apply(
        6,
        &ConvEvent::Escalated {
            reason: "asked for a person".into(),
            skills: vec!["billing".into()],
            priority: 2,
            at: Timestamp(1_795_000_400_000),
        },
    )
    .unwrap();
    s
}

#[test]
fn snapshot_v4_fixture_still_decodes() {
    let state = v4_state();
    assert!(state.waiting.is_some());
    let bytes = check("snapshot_v4.bin", codec::encode_snapshot(&state));
    assert_eq!(codec::decode_snapshot(&bytes).unwrap(), state);
}

fn v5_state() -> ConversationState {
    let mut s = v4_state();
    s.apply(
        7,
        &ConvEvent::SubjectNoted {
            seq: 2,
            subject: "spring sale".into(),
        },
    )
    .unwrap();
    s
}

#[test]
fn snapshot_v5_fixture_still_decodes() {
    let state = v5_state();
    assert_eq!(
        state.subjects.get(&2).map(String::as_str),
        Some("spring sale")
    );
    let bytes = check("snapshot_v5.bin", codec::encode_snapshot(&state));
    assert_eq!(codec::decode_snapshot(&bytes).unwrap(), state);
}

/// A version-5 snapshot kept the flow's machine state in the captured
/// slots (a booked cleaning, its reminders, a pending follow-up): it
/// decodes into the typed journey, and the slots keep only what the
/// customer said.
#[test]
fn a_v5_snapshot_of_a_booking_upgrades_to_the_typed_journey() {
    let bytes = std::fs::read(fixture("snapshot_v5_booking.bin")).unwrap();
    let s = codec::decode_snapshot(&bytes).unwrap();
    let keys: Vec<&str> = s.captured.slots.keys().map(String::as_str).collect();
    assert_eq!(keys, ["service", "when"]);
    assert_eq!(
        s.journey,
        Journey {
            active: Some("booking".into()),
            asking: None,
            misunderstood: 1,
            booking: Some(Booking {
                journey: "booking".into(),
                service: "booking".into(),
                status: BookingStatus::Confirmed,
                start: Some(Timestamp(1_795_100_000_000)),
                offer: None,
                reminders: vec![91, 92],
            }),
            cadence: Some(Cadence {
                timer: 93,
                step: 1,
                question: "Still want that cleaning?".into(),
            }),
            handoff: None,
            lead_met: false,
        }
    );
}

fn v6_state() -> ConversationState {
    let mut s = v5_state();
    s.apply(
        8,
        &ConvEvent::JourneyChanged(Journey {
            active: Some("cleaning".into()),
            asking: None,
            misunderstood: 0,
            booking: Some(Booking {
                journey: "booking".into(),
                service: "cleaning".into(),
                status: BookingStatus::Rescheduling,
                start: Some(Timestamp(1_795_100_000_000)),
                offer: Some(Offer {
                    start: Timestamp(1_795_200_000_000),
                    until: Timestamp(1_795_000_900_000),
                }),
                reminders: vec![91],
            }),
            cadence: None,
            handoff: Some("qualified".into()),
            lead_met: true,
        }),
    )
    .unwrap();
    s
}

#[test]
fn snapshot_v6_fixture_still_decodes() {
    let state = v6_state();
    let bytes = check("snapshot_v6.bin", codec::encode_snapshot(&state));
    assert_eq!(codec::decode_snapshot(&bytes).unwrap(), state);
}

#[test]
fn a_conversation_waits_for_a_person_from_its_escalation_until_taken_or_closed() {
    let mut s = v4_state();
    let asked = Waiting {
        skills: vec!["billing".into()],
        priority: 2,
        since: Timestamp(1_795_000_400_000),
    };
    assert_eq!(s.waiting, Some(asked));
    s.apply(
        7,
        &ConvEvent::AgentAssigned {
            agent: Some("sarah".into()),
            at: Timestamp(1_795_000_500_000),
        },
    )
    .unwrap();
    assert_eq!(s.waiting, None);
    // Let go without a close (a requeue): it waits again.
    s.apply(
        8,
        &ConvEvent::AgentAssigned {
            agent: None,
            at: Timestamp(1_795_000_600_000),
        },
    )
    .unwrap();
    assert_eq!(
        s.waiting.as_ref().map(|w| w.since),
        Some(Timestamp(1_795_000_600_000))
    );
    s.apply(
        9,
        &ConvEvent::StatusChanged {
            status: Status::Closed,
            at: Timestamp(1_795_000_700_000),
        },
    )
    .unwrap();
    assert_eq!(s.waiting, None);
}

#[test]
fn timer_row_v1_fixture_still_decodes() {
    let row = TimerRow {
        id: 77,
        due: Timestamp(1_795_000_100_000),
        owner: TimerOwner::Conversation(ConversationId(0x2a)),
    };
    // Version 1 is no longer written: the fixture is the only copy.
    let bytes = std::fs::read(fixture("timer_row_v1.bin")).unwrap();
    assert_eq!(codec::decode_timer_row(&bytes).unwrap(), row);
}

fn timer_row_v2() -> TimerRow {
    TimerRow {
        id: 78,
        due: Timestamp(1_795_000_130_000),
        owner: TimerOwner::Offer {
            conv: ConversationId(0x2c),
            offer: 5,
        },
    }
}

fn offer_hold() -> OfferHold {
    OfferHold {
        conv: ConversationId(0x2c),
        agent: "sarah".into(),
        offer: 5,
        timer: 78,
        expires: Timestamp(1_795_000_130_000),
    }
}

fn dead_letter() -> codec::DeadLetter {
    codec::DeadLetter {
        tenant: "acme".into(),
        contact: "+15551234567".into(),
        conversation: Some(ConversationId(0x2a)),
        message: InboundMessage {
            channel: Channel::Sms,
            from: "+15551234567".into(),
            to: None,
            text: "boom".into(),
            provider_message_id: Some("p-1".into()),
            at: None,
            media: vec![],
        },
        attempts: 3,
        error: "panicked".into(),
        at: Timestamp(1),
    }
}

fn outbox_v2() -> OutboxEntry {
    OutboxEntry {
        conv: ConversationId(0x2b),
        seq: 4,
        tenant: "acme".into(),
        to: "15551234567".into(),
        channel: Channel::Whatsapp,
        body: "Your cleaning is tomorrow at 3".into(),
        template: Some("reminder".into()),
    }
}

fn agent_work() -> AgentWork {
    AgentWork {
        conv: ConversationId(0x2c),
        tenant: "acme".into(),
        channel: Channel::Sms,
        skills: vec!["es".into()],
        priority: 2,
        since: Timestamp(1_795_000_000_000),
        agent: Some("sarah".into()),
    }
}

#[test]
fn timer_row_v2_fixture_still_decodes() {
    let row = timer_row_v2();
    let bytes = check("timer_row_v2.bin", codec::encode_timer_row(&row));
    assert_eq!(codec::decode_timer_row(&bytes).unwrap(), row);
}

#[test]
fn offer_hold_v1_fixture_still_decodes() {
    let h = offer_hold();
    let bytes = check("offer_hold_v1.bin", codec::encode_offer_hold(&h));
    assert_eq!(codec::decode_offer_hold(&bytes).unwrap(), h);
}

#[test]
fn log_record_v1_fixture_still_decodes() {
    let bytes = check(
        "log_record_v1.bin",
        codec::encode_log_record(&v1_log_record()),
    );
    assert_eq!(codec::decode_log_record(&bytes).unwrap(), v1_log_record());
}

#[test]
fn dead_letter_v1_fixture_still_decodes() {
    let d = dead_letter();
    let bytes = check("dead_letter_v1.bin", codec::encode_dead_letter(&d));
    assert_eq!(codec::decode_dead_letter(&bytes).unwrap(), d);
}

#[test]
fn outbox_v1_fixture_still_decodes() {
    let e = OutboxEntry {
        conv: ConversationId(0x2a),
        seq: 9,
        tenant: "acme".into(),
        to: "+15551234567".into(),
        channel: Channel::Sms,
        body: "See you at 3".into(),
        template: None,
    };
    // Version 1 is no longer written: the fixture is the only copy.
    let bytes = std::fs::read(fixture("outbox_v1.bin")).unwrap();
    assert_eq!(codec::decode_outbox(&bytes).unwrap(), e);
}

#[test]
fn outbox_v2_fixture_still_decodes() {
    let e = outbox_v2();
    let bytes = check("outbox_v2.bin", codec::encode_outbox(&e));
    assert_eq!(codec::decode_outbox(&bytes).unwrap(), e);
}

#[test]
fn agent_work_v1_fixture_still_decodes() {
    let w = agent_work();
    let bytes = check("agent_work_v1.bin", codec::encode_agent_work(&w));
    assert_eq!(codec::decode_agent_work(&bytes).unwrap(), w);
}

/// A record whose length prefix claims gigabytes (found by fuzzing: the
/// decoder allocated 2.5 GB) is refused without allocating it.
#[test]
fn a_forged_length_is_refused_not_allocated() {
    let bytes = std::fs::read(fixture("forged_length.bin")).unwrap();
    // An outbox row; refused for its size before anything is allocated.
    match codec::decode_outbox(&bytes) {
        Err(codec::CodecError::Corrupt { reason, .. }) if reason.contains("LimitExceeded") => {}
        other => panic!("expected the decoding bound to refuse it: {other:?}"),
    }
    // Whatever the kind byte says.
    for kind in 0..=10u8 {
        let mut b = bytes.clone();
        b[0] = kind;
        let _ = codec::decode_log_record(&b);
        let _ = codec::decode_snapshot(&b);
        let _ = codec::decode_outbox(&b);
        let _ = codec::decode_dead_letter(&b);
    }
}

/// The checksummed envelope (flags bit 0, CRC-32 trailer), introduced with
/// log record version 1 unchanged: it decodes, and one changed byte of
/// the payload is reported as damage, not read as other content.
#[test]
fn a_checksummed_record_decodes_and_a_changed_byte_is_damage() {
    let bytes = check(
        "log_record_v1_checksummed.bin",
        codec::encode_log_record(&v1_log_record()),
    );
    assert_eq!(bytes[1], 1, "the flags byte says checksummed");
    assert_eq!(codec::decode_log_record(&bytes).unwrap(), v1_log_record());
    let text = b"cleaning";
    let at = bytes
        .windows(text.len())
        .position(|w| w == text)
        .expect("the text is in the record");
    let mut damaged = bytes.clone();
    damaged[at] = b'C';
    let e = codec::decode_log_record(&damaged).unwrap_err();
    assert!(e.is_damage(), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    // The unchecksummed record of before still decodes.
    let old = std::fs::read(fixture("log_record_v1.bin")).unwrap();
    assert_eq!(old[1], 0);
    assert_eq!(codec::decode_log_record(&old).unwrap(), v1_log_record());
}

fn summary_state() -> ConversationState {
    let mut s = v6_state();
    let reply = Message {
        seq: 9,
        direction: Direction::Outbound,
        channel: Channel::Sms,
        author: Author::Bot,
        text: "Which day suits you?".into(),
        at: Timestamp(1_795_000_700_000),
        recorded_at: Timestamp(1_795_000_700_000),
        provider_message_id: None,
        delivery: Delivery::Sent,
        media: vec![],
    };
    s.apply(9, &ConvEvent::MessageAppended(reply)).unwrap();
    s
}

#[test]
fn summary_v1_fixture_still_decodes() {
    let sum = ConversationSummary::of(&summary_state());
    let bytes = check("summary_v1.bin", codec::encode_summary(&sum));
    assert_eq!(codec::decode_summary(&bytes).unwrap(), sum);
}

/// What needs the business's attention, read from a conversation: the
/// customer's message with no answer, a missed call nobody heard back
/// from, a question of the flow with no follow-up planned.
#[test]
fn a_summary_says_what_waits_for_the_business() {
    let s = v1_state();
    let sum = ConversationSummary::of(&s);
    assert_eq!(
        sum.unanswered,
        Some((Timestamp(1_795_000_001_500), Channel::Sms)),
        "the customer's message is unanswered"
    );
    assert_eq!(sum.missed_call, None);
    assert_eq!(
        sum.last.as_ref().map(|l| l.3.as_str()),
        Some("I need a cleaning next week")
    );
    // Answered: nothing waits. The journey asked something (v6 has an
    // offer pending) and no follow-up is planned: the flow's question idles.
    let sum = ConversationSummary::of(&summary_state());
    assert_eq!(sum.unanswered, None);
    assert_eq!(
        sum.journey_idle,
        Some((Timestamp(1_795_000_700_000), Channel::Sms))
    );
    assert_eq!(
        sum.booking,
        Some((
            BookingStatus::Rescheduling,
            Some(Timestamp(1_795_100_000_000))
        ))
    );
    // A missed call after the customer's last message.
    let mut s = v1_state();
    s.apply(
        3,
        &ConvEvent::MessageAppended(Message {
            seq: 3,
            direction: Direction::Inbound,
            channel: Channel::Voice,
            author: Author::System,
            text: "[missed call]".into(),
            at: Timestamp(1_795_000_900_000),
            recorded_at: Timestamp(1_795_000_900_000),
            provider_message_id: Some("CA1".into()),
            delivery: Delivery::Received,
            media: vec![],
        }),
    )
    .unwrap();
    assert_eq!(
        ConversationSummary::of(&s).missed_call,
        Some(Timestamp(1_795_000_900_000))
    );
}

/// Every kind as written now: checksummed postcard (flags 3) of the
/// current version. The fixtures were written when postcard replaced
/// bincode for new writes; they keep decoding, and the writer still makes
/// the same bytes (a change to a stored type needs a new version).
#[test]
fn every_kind_as_written_now_is_postcard_and_matches_its_fixture() {
    fn golden<T: PartialEq + std::fmt::Debug>(
        name: &str,
        value: T,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Result<T, codec::CodecError>,
    ) {
        let now = encode(&value);
        assert_eq!(now[1], 3, "{name}: written checksummed, in postcard");
        let bytes = check(name, now.clone());
        assert_eq!(decode(&bytes).unwrap(), value, "{name} decodes");
        assert_eq!(bytes, now, "{name}: the writer's bytes changed");
    }
    golden(
        "snapshot_v6_postcard.bin",
        v6_state(),
        codec::encode_snapshot,
        codec::decode_snapshot,
    );
    golden(
        "log_record_v1_postcard.bin",
        v1_log_record(),
        codec::encode_log_record,
        codec::decode_log_record,
    );
    golden(
        "timer_row_v2_postcard.bin",
        timer_row_v2(),
        codec::encode_timer_row,
        codec::decode_timer_row,
    );
    golden(
        "outbox_v2_postcard.bin",
        outbox_v2(),
        codec::encode_outbox,
        codec::decode_outbox,
    );
    golden(
        "agent_work_v1_postcard.bin",
        agent_work(),
        codec::encode_agent_work,
        codec::decode_agent_work,
    );
    golden(
        "offer_hold_v1_postcard.bin",
        offer_hold(),
        codec::encode_offer_hold,
        codec::decode_offer_hold,
    );
    golden(
        "dead_letter_v1_postcard.bin",
        dead_letter(),
        codec::encode_dead_letter,
        codec::decode_dead_letter,
    );
    golden(
        "summary_v1_postcard.bin",
        ConversationSummary::of(&summary_state()),
        codec::encode_summary,
        codec::decode_summary,
    );
}

/// A postcard record whose length prefix claims gigabytes is refused as
/// corrupt, without allocating it: postcard reads a length only as far as
/// the bytes it has.
#[test]
fn a_forged_postcard_length_is_refused() {
    let e = OutboxEntry {
        conv: ConversationId(0x2b),
        seq: 4,
        tenant: "acme".into(),
        to: "1555".into(),
        channel: Channel::Sms,
        body: "hi".into(),
        template: None,
    };
    let good = codec::encode_outbox(&e);
    // The header, conv (varint 0x2b), seq (4), then the tenant's length
    // (4): forge it to 2^32, and give the record a valid checksum.
    let mut forged = good[..6].to_vec();
    assert_eq!(forged[4..6], [0x2b, 4]);
    forged.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x10]);
    forged.extend_from_slice(&good[7..good.len() - 4]);
    let crc = crc32fast::hash(&forged);
    forged.extend_from_slice(&crc.to_le_bytes());
    match codec::decode_outbox(&forged) {
        Err(codec::CodecError::Corrupt { .. }) => {}
        other => panic!("expected the forged length refused: {other:?}"),
    }
}

/// Between nodes: the wire version byte, then postcard. A payload of
/// another version (or bare bincode, as before the envelope) is refused
/// by name, not decoded as something else.
#[test]
fn a_wire_payload_of_another_version_is_refused() {
    let bytes = codec::encode_wire(&("acme".to_owned(), 7u64));
    assert_eq!(bytes[0], codec::WIRE_VERSION);
    let back: (String, u64) = codec::decode_wire(&bytes).unwrap();
    assert_eq!(back, ("acme".to_owned(), 7));
    let mut other = bytes.clone();
    other[0] = 1;
    let e = codec::decode_wire::<(String, u64)>(&other).unwrap_err();
    assert!(e.to_string().contains("wire version 1"), "{e}");
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(codec::decode_wire::<(String, u64)>(&longer).is_err());
    assert!(codec::decode_wire::<(String, u64)>(&[]).is_err());
}
