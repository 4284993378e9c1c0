//! The conversation as a pure state machine (sans-IO): it takes a command
//! and the current time and returns the events to persist. No clock, no
//! storage, no actor runtime: the shell in `actor.rs` does those.

use std::collections::HashMap;

use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{
    Author, Channel, ConvEvent, ConversationId, ConversationState, Delivery, Direction, Identities,
    Message, MessageId, Timestamp,
};

#[derive(Debug, Clone, Default)]
pub struct CoreConfig {
    /// Test hook: an inbound text exactly equal to this makes the handler
    /// panic. Only settable through `serve --test-hooks`.
    pub panic_trigger: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundOutcome {
    Recorded(MessageId),
    /// The provider message id was seen before; nothing new is recorded.
    Duplicate(MessageId),
}

pub struct Conversation {
    pub state: ConversationState,
    /// Hash of a provider message id → seq of the message carrying it. A hit
    /// is confirmed against the message itself, so a hash collision can
    /// never swallow a new message; keeping hashes instead of the ids halves
    /// the index's memory for resident conversations.
    by_provider_id: HashMap<u64, u32>,
}

fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
}

/// The identities a first message from `address` on `channel` establishes.
pub fn identities_for(channel: Channel, address: &str) -> Identities {
    let mut ids = Identities::default();
    match channel {
        Channel::Sms | Channel::Voice => ids.phone = Some(address.to_owned()),
        Channel::Whatsapp => {
            ids.whatsapp = Some(address.trim_start_matches('+').to_owned());
            if address.starts_with('+') {
                ids.phone = Some(address.to_owned());
            }
        }
        Channel::Webchat => ids.visitor = Some(address.to_owned()),
        Channel::Email => ids.email = Some(address.to_owned()),
    }
    ids
}

impl Conversation {
    /// A new conversation; returns it and its `Created` event (seq 1).
    pub fn create(
        id: ConversationId,
        tenant: &str,
        contact: &str,
        identities: Identities,
        now: Timestamp,
    ) -> (Conversation, (u32, ConvEvent)) {
        let created = ConvEvent::Created {
            id,
            tenant: tenant.to_owned(),
            contact: contact.to_owned(),
            identities,
            at: now,
        };
        let state = ConversationState::from_created(&created).expect("Created builds a state");
        (Conversation::from_state(state), (1, created))
    }

    pub fn from_state(state: ConversationState) -> Conversation {
        let by_provider_id = state
            .messages
            .iter()
            .filter_map(|m| Some((id_hash(m.provider_message_id.as_deref()?), m.seq)))
            .collect();
        Conversation {
            state,
            by_provider_id,
        }
    }

    pub fn id(&self) -> ConversationId {
        self.state.id
    }

    /// Records an inbound message. Returns what happened and the events to
    /// persist (already applied to `self.state`).
    pub fn on_inbound(
        &mut self,
        msg: &InboundMessage,
        now: Timestamp,
        cfg: &CoreConfig,
    ) -> (InboundOutcome, Vec<(u32, ConvEvent)>) {
        if let Some(pid) = &msg.provider_message_id {
            if let Some(seq) = self.seen(pid) {
                return (
                    InboundOutcome::Duplicate(self.state.message_id(seq)),
                    vec![],
                );
            }
        }
        if cfg.panic_trigger.as_deref() == Some(msg.text.as_str()) {
            panic!("test hook: panic trigger received by {}", self.state.id);
        }
        let seq = self.state.next_seq();
        let event = ConvEvent::MessageAppended(Message {
            seq,
            direction: Direction::Inbound,
            channel: msg.channel,
            author: Author::Customer,
            text: msg.text.clone(),
            at: msg.at.unwrap_or(now),
            recorded_at: now,
            provider_message_id: msg.provider_message_id.clone(),
            delivery: Delivery::Received,
            media: msg.media.clone(),
        });
        self.apply(seq, &event);
        (
            InboundOutcome::Recorded(self.state.message_id(seq)),
            vec![(seq, event)],
        )
    }

    /// The seq of the message that carried provider id `pid`, if any.
    fn seen(&self, pid: &str) -> Option<u32> {
        let by_seq = |seq: u32| {
            let m = &self.state.messages;
            m.binary_search_by_key(&seq, |m| m.seq)
                .ok()
                .map(|i| &m[i])
                .filter(|m| m.provider_message_id.as_deref() == Some(pid))
        };
        match self.by_provider_id.get(&id_hash(pid)) {
            Some(&seq) if by_seq(seq).is_some() => Some(seq),
            // A colliding hash: settle it by scanning.
            Some(_) => self
                .state
                .messages
                .iter()
                .find(|m| m.provider_message_id.as_deref() == Some(pid))
                .map(|m| m.seq),
            None => None,
        }
    }

    fn apply(&mut self, seq: u32, event: &ConvEvent) {
        self.state
            .apply(seq, event)
            .expect("the core only produces events in sequence");
        if let ConvEvent::MessageAppended(m) = event {
            if let Some(pid) = &m.provider_message_id {
                self.by_provider_id.entry(id_hash(pid)).or_insert(m.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn whatsapp_identity_keeps_digits_and_phone() {
        let ids = identities_for(Channel::Whatsapp, "+15551234567");
        assert_eq!(ids.whatsapp.as_deref(), Some("15551234567"));
        assert_eq!(ids.phone.as_deref(), Some("+15551234567"));
    }
}
