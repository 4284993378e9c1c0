use super::*;

pub(crate) fn created() -> ConvEvent {
    ConvEvent::Created {
        id: ConversationId(1),
        tenant: "acme".into(),
        contact: "+15551234567".into(),
        identities: Identities {
            phone: Some("+15551234567".into()),
            ..Default::default()
        },
        at: Timestamp(1_000),
    }
}

fn msg(seq: u32, channel: Channel, text: &str) -> ConvEvent {
    ConvEvent::MessageAppended(Message {
        seq,
        direction: Direction::Inbound,
        channel,
        author: Author::Customer,
        text: text.into(),
        at: Timestamp(2_000),
        recorded_at: Timestamp(2_000 + seq as i64),
        provider_message_id: None,
        delivery: Delivery::Received,
        media: vec![],
    })
}

#[test]
fn internal_entries_are_marked_and_older_notes_are_recognized() {
    let note = |delivery, text: &str| Message {
        seq: 3,
        direction: Direction::Outbound,
        channel: Channel::Webchat,
        author: Author::System,
        text: text.into(),
        at: Timestamp(1),
        recorded_at: Timestamp(1),
        provider_message_id: None,
        delivery,
        media: vec![],
    };
    assert!(note(Delivery::Internal, "[transfer note from a to b: x]").is_internal());
    // Written before `Internal` existed: a system note stored as sent.
    assert!(note(Delivery::Sent, "[closed by agent:a: booked]").is_internal());
    assert!(note(Delivery::Sent, "[continued in conversation cnv_1]").is_internal());
    // A keyword confirmation is a system message the customer must get.
    assert!(!note(
        Delivery::Sent,
        "You are unsubscribed. Reply START to resubscribe."
    )
    .is_internal());
    // The new state encodes after the others: older records keep theirs.
    let mut m = note(Delivery::Internal, "[closed by agent:a: x]");
    m.seq = 2;
    let mut s = ConversationState::from_created(&created()).unwrap();
    s.apply(2, &ConvEvent::MessageAppended(m)).unwrap();
    let back = crate::codec::decode_snapshot(&crate::codec::encode_snapshot(&s)).unwrap();
    assert_eq!(back.messages[0].delivery, Delivery::Internal);
}

#[test]
fn messages_append_in_order_and_record_channels_once() {
    let mut s = ConversationState::from_created(&created()).unwrap();
    s.apply(2, &msg(2, Channel::Sms, "hi")).unwrap();
    s.apply(3, &msg(3, Channel::Voice, "call")).unwrap();
    s.apply(4, &msg(4, Channel::Sms, "again")).unwrap();
    assert_eq!(s.channels, vec![Channel::Sms, Channel::Voice]);
    let texts: Vec<_> = s.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["hi", "call", "again"]);
    assert_eq!(s.last_seq, 4);
    assert_eq!(s.updated_at, Timestamp(2_004));
}

#[test]
fn out_of_order_events_are_refused() {
    let mut s = ConversationState::from_created(&created()).unwrap();
    assert_eq!(
        s.apply(3, &msg(3, Channel::Sms, "x")),
        Err(ApplyError::OutOfOrder {
            expected: 2,
            got: 3
        })
    );
    assert_eq!(
        s.apply(2, &created()),
        Err(ApplyError::NotCreated),
        "a second Created is refused"
    );
    assert!(ConversationState::from_created(&msg(1, Channel::Sms, "x")).is_err());
}
