//! Golden fixtures of what nodes send each other: one per payload type of
//! `RouterMsg`, each written once when its wire version was introduced
//! (`THREADLINE_WRITE_FIXTURES=1 cargo test -p threadline-actors --lib
//! wire_golden`) and never regenerated. A change to a type that changes
//! these bytes needs a new `WIRE_VERSION` (nodes of two versions do not
//! count each other live), and new fixtures.

use serde::de::DeserializeOwned;
use serde::Serialize;
use threadline_protocol::codec::{self, InboundMessage};
use threadline_protocol::{Channel, ConversationId, Timestamp};

use super::calendar::CalendarAsk;
use super::pool::PoolTell;
use super::*;
use crate::command::ConvOp;
use crate::consent::policy::Purpose;
use crate::conversation::core::OutboundSpec;
use crate::pool::Escalation;
use crate::replica::{ReplicaBody, ReplicaEntry, Verdict};
use crate::store::{CalendarWrite, SlotHold};

/// `value` as sent now equals the fixture, and the fixture reads back as a
/// `T` that is sent as the same bytes.
fn golden<T: Serialize + DeserializeOwned>(name: &str, value: T) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wire")
        .join(name);
    let now = wire(&value);
    if std::env::var_os("THREADLINE_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::write(&path, &now).unwrap();
    }
    let fixture =
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
    assert_eq!(fixture[0], codec::WIRE_VERSION, "{name}");
    assert_eq!(now, fixture, "{name}: the bytes sent changed");
    let back: T = unwire(&fixture).unwrap_or_else(|| panic!("{name} does not read back"));
    assert_eq!(wire(&back), fixture, "{name}: does not read back the same");
}

fn inbound() -> InboundMessage {
    InboundMessage {
        channel: Channel::Sms,
        from: "+15551234567".into(),
        to: Some("+15550001111".into()),
        text: "can u do tmrw around 4ish?".into(),
        provider_message_id: Some("SM1".into()),
        at: Some(Timestamp(1_795_000_000_000)),
        media: vec![],
    }
}

#[test]
fn membership_forwarding_and_reads() {
    golden("ping_v2.bin", "n1".to_owned());
    golden(
        "heartbeat_v2.bin",
        Heartbeat {
            name: "n2".into(),
            http: Some("10.0.0.2:8080".into()),
            leaving: false,
            links: vec!["10.0.0.2:7400".parse().unwrap()],
            live: vec!["n1".into(), "n2".into(), "n3".into()],
        },
    );
    golden(
        "deliver_v2.bin",
        vec![Forwarded {
            tenant: "dental".into(),
            contact: "+15551234567".into(),
            msg: inbound(),
            hint: None,
            from_state: Some("TX".into()),
            identities: None,
            profile_name: Some("Jordan".into()),
        }],
    );
    golden(
        "deliver_answer_v2.bin",
        vec![
            ForwardResult::Recorded {
                conversation: 0x2a,
                seq: 7,
                duplicate: false,
            },
            ForwardResult::DeadLettered(Some(0x2b)),
            ForwardResult::Unavailable("not the owner".into()),
            ForwardResult::Storage("disk full".into()),
        ],
    );
    golden(
        "view_v2.bin",
        vec![
            Lookup::Contact("dental".into(), "+15551234567".into()),
            Lookup::Id(0x2a),
            Lookup::ContactHere("dental".into(), "+15551234567".into()),
        ],
    );
    golden(
        "view_answer_v2.bin",
        Ok::<Option<Vec<u8>>, String>(Some(vec![2, 3, 1, 0])),
    );
}

#[test]
fn replication_and_moves() {
    golden(
        "replicate_v2.bin",
        vec![
            ReplicaEntry {
                conv: 0x2a,
                tenant: "dental".into(),
                contact: "+15551234567".into(),
                epoch: 3,
                owner: "n1".into(),
                body: ReplicaBody::Events {
                    records: vec![(8, vec![1, 3, 1, 0, 42])],
                    through: 8,
                },
            },
            ReplicaEntry {
                conv: 0x2b,
                tenant: "dental".into(),
                contact: "+15557654321".into(),
                epoch: 1,
                owner: "n1".into(),
                body: ReplicaBody::Base {
                    snapshot: vec![2, 3, 6, 0],
                },
            },
        ],
    );
    golden(
        "replicate_answer_v2.bin",
        Ok::<_, String>(vec![Verdict::Stored, Verdict::NeedBase, Verdict::Fenced]),
    );
    golden(
        "handover_v2.bin",
        Handover {
            conv: 0x2a,
            tenant: "dental".into(),
            contact: "+15551234567".into(),
            epoch: 4,
            snapshot: vec![2, 3, 6, 0],
            work: Some(threadline_protocol::AgentWork {
                conv: ConversationId(0x2a),
                tenant: "dental".into(),
                channel: Channel::Sms,
                skills: vec!["es".into()],
                priority: 2,
                since: Timestamp(1_795_000_000_000),
                agent: None,
            }),
        },
    );
    golden("handover_answer_v2.bin", Ok::<_, String>(Verdict::Stored));
    golden("peek_v2.bin", (0x2a_u64, true));
    golden(
        "peek_answer_v2.bin",
        vec![
            Ok::<_, String>(Peek::Nothing),
            Ok(Peek::Held { epoch: 3 }),
            Ok(Peek::Replica {
                epoch: 3,
                last_seq: 8,
                snapshot: Some(vec![2, 3, 6, 0]),
            }),
            Err("cluster stopping".into()),
        ],
    );
}

#[test]
fn the_pool_requests_and_the_calendar() {
    golden(
        "pool_ask_v2.bin",
        vec![
            PoolAsk::Join {
                agent: "sarah".into(),
                node: "n2".into(),
                relay: 5,
            },
            PoolAsk::Work,
            PoolAsk::Conv(ConvOp::Send(
                ConversationId(0x2a),
                OutboundSpec {
                    text: "See you at 4".into(),
                    channel: Some(Channel::Sms),
                    purpose: Purpose::Conversational,
                    agent: Some("sarah".into()),
                    requested: false,
                    subject: None,
                },
            )),
            PoolAsk::Conv(ConvOp::Close {
                conv: ConversationId(0x2a),
                agent: "sarah".into(),
                disposition: "booked".into(),
            }),
        ],
    );
    golden(
        "pool_tell_v2.bin",
        vec![
            PoolTell::Escalate(Escalation {
                conv: ConversationId(0x2a),
                tenant: "dental".into(),
                channel: Channel::Sms,
                skills: vec!["es".into()],
                priority: 1,
            }),
            PoolTell::Leave {
                node: "n2".into(),
                relay: 5,
            },
            PoolTell::Ended(5),
        ],
    );
    golden(
        "request_v2.bin",
        PeerRequest {
            method: "POST".into(),
            path: "/api/v1/conversations/cnv_2a/notes".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: br#"{"text":"called back"}"#.to_vec(),
        },
    );
    golden(
        "request_answer_v2.bin",
        Ok::<_, String>(PeerAnswer {
            status: 201,
            content_type: Some("application/json".into()),
            body: b"{}".to_vec(),
        }),
    );
    golden(
        "calendar_v2.bin",
        vec![
            CalendarAsk::Copy {
                tenant: "dental".into(),
            },
            CalendarAsk::Reserve {
                tenant: "dental".into(),
                conv: 0x2a,
                writes: vec![
                    CalendarWrite::Put(
                        "2026-03-04T16:00".into(),
                        SlotHold {
                            conv: 0x2a,
                            booked: false,
                            until: Timestamp(1_795_000_300_000),
                        },
                    ),
                    CalendarWrite::Delete("2026-03-04T15:00".into()),
                ],
            },
        ],
    );
}

#[test]
fn writes_to_a_conversation_or_a_contact() {
    use crate::command::{ContactAnswer, ContactOp, ContactWrite, ConvAnswer};
    use crate::conversation::core::{
        BookingOutcome, BookingOutcomeError, CallEvent, DeliveryReport, TimerSpec, VoiceAction,
    };
    use threadline_protocol::{ConsentChange, ConsentStatus, ConvEvent, ConversationState};
    let conv = ConversationId(0x2a);
    let contact = |write| {
        PoolAsk::Contact(ContactOp {
            tenant: "dental".into(),
            contact: "+15551234567".into(),
            write,
        })
    };
    let report = DeliveryReport {
        delivery: threadline_protocol::Delivery::Delivered,
        provider_message_id: Some("SM9".into()),
        error: None,
        opted_out: false,
    };
    golden(
        "pool_ask_writes_v2.bin",
        vec![
            PoolAsk::Conv(ConvOp::Escalate {
                conv,
                reason: "asked for a person".into(),
                skills: vec!["es".into()],
                priority: 1,
            }),
            PoolAsk::Conv(ConvOp::Outcome(conv, BookingOutcome::NoShow)),
            PoolAsk::Conv(ConvOp::Timer(
                conv,
                TimerSpec {
                    due: Timestamp(1_795_000_300_000),
                    kind: threadline_protocol::TimerKind::FollowUp,
                    text: Some("checking in".into()),
                    channel: Some(Channel::Sms),
                },
            )),
            PoolAsk::Conv(ConvOp::Status {
                conv,
                seq: 3,
                report: report.clone(),
            }),
            contact(ContactWrite::Send(OutboundSpec {
                text: "Your visit is confirmed".into(),
                channel: None,
                purpose: Purpose::Reminder,
                agent: None,
                requested: false,
                subject: Some("visit".into()),
            })),
            contact(ContactWrite::Consent(ConsentChange {
                status: ConsentStatus::OptedOut,
                channel: Some(Channel::Sms),
                purpose: None,
                source: "web_form".into(),
                keyword: None,
                raw_text: None,
                provider_message_id: None,
                proof: Some("form 12".into()),
                at: Timestamp(1_795_000_000_000),
            })),
            contact(ContactWrite::Update(ConvEvent::ContactUpdated {
                name: Some("Dana".into()),
                timezone: None,
                region: None,
                email: None,
                facts: [("plan".to_owned(), "gold".to_owned())].into(),
            })),
            contact(ContactWrite::Call(CallEvent::Speech {
                call_sid: "CA1".into(),
                turn: 2,
                text: "tomorrow at four".into(),
                silence: 0,
            })),
            contact(ContactWrite::Status(report)),
            PoolAsk::CancelTimer(0x2a_0001),
        ],
    );
    golden(
        "conv_answer_v2.bin",
        vec![
            Ok::<_, String>(Some(ConvAnswer::Escalated(true))),
            Ok(Some(ConvAnswer::Outcome(Err(BookingOutcomeError::NotYet(
                Timestamp(1_795_000_300_000),
            ))))),
            Ok(Some(ConvAnswer::Timer(0x2a_0001))),
            Ok(None),
            Err("node n3: did not answer".into()),
        ],
    );
    let state = ConversationState::from_created(&ConvEvent::Created {
        id: conv,
        tenant: "dental".into(),
        contact: "+15551234567".into(),
        identities: Default::default(),
        at: Timestamp(1_795_000_000_000),
    })
    .unwrap();
    golden(
        "contact_answer_v2.bin",
        vec![
            Ok::<_, String>(ContactAnswer::Conversation(conv)),
            Ok(ContactAnswer::Updated(Box::new(state))),
            Ok(ContactAnswer::Call(
                conv,
                VoiceAction::Gather {
                    prompt: "What day suits you?".into(),
                    turn: 3,
                    silence: 0,
                },
            )),
            Ok(ContactAnswer::Found(true)),
        ],
    );
}

#[test]
fn identity_links_and_aliases() {
    use crate::command::{ContactOp, ContactWrite, Merge};
    use threadline_protocol::{Author, Direction, Message};
    let visitor = |write| {
        PoolAsk::Contact(ContactOp {
            tenant: "dental".into(),
            contact: "v-7f3a".into(),
            write,
        })
    };
    let identities = threadline_protocol::Identities {
        phone: Some("+15551234567".into()),
        ..Default::default()
    };
    let captured = threadline_protocol::Captured {
        name: Some("Dana".into()),
        ..Default::default()
    };
    golden(
        "pool_ask_links_v2.bin",
        vec![
            visitor(ContactWrite::Link {
                phone: "+15551234567".into(),
            }),
            visitor(ContactWrite::Merge(Box::new(Merge {
                from: ConversationId(0x2b),
                messages: vec![Message {
                    seq: 1,
                    direction: Direction::Inbound,
                    channel: Channel::Webchat,
                    author: Author::Customer,
                    text: "is my crown ready?".into(),
                    at: Timestamp(1_795_000_000_000),
                    recorded_at: Timestamp(1_795_000_000_100),
                    provider_message_id: None,
                    delivery: threadline_protocol::Delivery::Received,
                    media: vec![],
                }],
                identities,
                captured,
                journey: Default::default(),
            }))),
            PoolAsk::Alias {
                alias: "dental\0v-7f3a".into(),
                target: "+15551234567".into(),
            },
            PoolAsk::Aliases { after: None },
            PoolAsk::Aliases {
                after: Some("dental\0v-7f3a".into()),
            },
        ],
    );
    golden(
        "pool_tell_chat_v2.bin",
        PoolTell::Chat(Box::new(crate::feed::Published {
            tenant: "dental".into(),
            conversation: ConversationId(0x2a),
            contact: "+15551234567".into(),
            identities: threadline_protocol::Identities {
                visitor: Some("v-7f3a".into()),
                ..Default::default()
            },
            message: Message {
                seq: 9,
                direction: Direction::Outbound,
                channel: Channel::Webchat,
                author: Author::Bot,
                text: "Yes, Friday works".into(),
                at: Timestamp(1_795_000_000_000),
                recorded_at: Timestamp(1_795_000_000_000),
                provider_message_id: None,
                delivery: threadline_protocol::Delivery::Sent,
                media: vec![],
            },
        })),
    );
    golden(
        "aliases_answer_v2.bin",
        Ok::<_, String>(vec![(
            "dental\0v-7f3a".to_owned(),
            "+15551234567".to_owned(),
        )]),
    );
}
