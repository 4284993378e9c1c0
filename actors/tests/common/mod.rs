//! Log records for the storage tests: a conversation created and its
//! inbound messages, encoded as the writer stores them.

use threadline_protocol::codec::{self, LogRecord};
use threadline_protocol::*;

pub fn record(conv: u64, seq: u32, event: ConvEvent) -> Vec<u8> {
    codec::encode_log_record(&LogRecord {
        conv: ConversationId(conv),
        seq,
        event,
    })
}

pub fn created(conv: u64, contact: &str) -> ConvEvent {
    ConvEvent::Created {
        id: ConversationId(conv),
        tenant: "acme".into(),
        contact: contact.into(),
        identities: Identities::default(),
        at: Timestamp(1),
    }
}

pub fn appended(seq: u32, text: &str) -> ConvEvent {
    ConvEvent::MessageAppended(Message {
        seq,
        direction: Direction::Inbound,
        channel: Channel::Sms,
        author: Author::Customer,
        text: text.into(),
        at: Timestamp(2),
        recorded_at: Timestamp(2),
        provider_message_id: None,
        delivery: Delivery::Received,
        media: vec![],
    })
}
