use super::*;
use crate::conversation::{Author, Delivery, Direction, Identities, Message};

fn state() -> ConversationState {
    let mut s = ConversationState::from_created(&ConvEvent::Created {
        id: ConversationId(9),
        tenant: "acme".into(),
        contact: "+15551234567".into(),
        identities: Identities::default(),
        at: Timestamp(5),
    })
    .unwrap();
    s.apply(
        2,
        &ConvEvent::MessageAppended(Message {
            seq: 2,
            direction: Direction::Inbound,
            channel: Channel::Sms,
            author: Author::Customer,
            text: "héllo ✓".into(),
            at: Timestamp(6),
            recorded_at: Timestamp(7),
            provider_message_id: Some("SM1".into()),
            delivery: Delivery::Received,
            media: vec!["https://x/y.png".into()],
        }),
    )
    .unwrap();
    s
}

#[test]
fn snapshot_round_trips() {
    let s = state();
    assert_eq!(decode_snapshot(&encode_snapshot(&s)).unwrap(), s);
}

#[test]
fn wrong_kind_unknown_version_truncation_and_trailing_bytes_are_errors() {
    let bytes = encode_snapshot(&state());
    assert!(matches!(
        decode_log_record(&bytes),
        Err(CodecError::WrongKind { .. })
    ));
    // A checksummed value whose header or length changed is damage.
    let mut future = bytes.clone();
    future[2] = 99;
    assert!(matches!(
        decode_snapshot(&future),
        Err(CodecError::Damaged { .. })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode_snapshot(&longer),
        Err(CodecError::Damaged { .. })
    ));
    assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
    assert!(matches!(
        decode_snapshot(&bytes[..3]),
        Err(CodecError::Truncated)
    ));
    // The same without a checksum (as written before it existed).
    let mut plain = bytes[..bytes.len() - 4].to_vec();
    plain[1] = 0;
    assert_eq!(decode_snapshot(&plain).unwrap(), state());
    plain[2] = 99;
    assert!(matches!(
        decode_snapshot(&plain),
        Err(CodecError::UnsupportedVersion { version: 99, .. })
    ));
    plain[2] = SNAPSHOT_VERSION as u8;
    plain.push(0);
    assert!(matches!(
        decode_snapshot(&plain),
        Err(CodecError::Trailing { .. })
    ));
    // Unknown flags are damage too.
    let mut flagged = bytes.clone();
    flagged[1] = 0x80;
    assert!(matches!(
        decode_snapshot(&flagged),
        Err(CodecError::Damaged { .. })
    ));
}
