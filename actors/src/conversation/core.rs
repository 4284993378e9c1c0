//! The conversation as a pure state machine (sans-IO): it takes a command
//! and the current time and returns the events to persist. No clock, no
//! storage, no actor runtime: the shell in `actor.rs` does those.

use std::collections::HashMap;

use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{
    Author, Channel, ConvEvent, ConversationId, ConversationState, Delivery, Direction, Identities,
    Message, MessageId, PendingTimer, Status, TimerKind, Timestamp,
};

#[derive(Debug, Clone, Default)]
pub struct CoreConfig {
    /// Test hook: an inbound text exactly equal to this makes the handler
    /// panic. Only settable through `serve --test-hooks`.
    pub panic_trigger: Option<String>,
}

/// When a quiet conversation changes status (per tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Silence after the last message before active → inactive.
    pub inactive_after_ms: i64,
    /// Further silence before inactive → closed.
    pub close_after_ms: i64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            inactive_after_ms: 24 * 3_600_000,
            close_after_ms: 7 * 24 * 3_600_000,
        }
    }
}

/// What a new timer should do.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerSpec {
    pub due: Timestamp,
    pub kind: TimerKind,
    pub text: Option<String>,
    pub channel: Option<Channel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundOutcome {
    Recorded(MessageId),
    /// The provider message id was seen before; nothing new is recorded.
    Duplicate(MessageId),
}

pub struct Conversation {
    pub state: ConversationState,
    /// Hash of a provider message id → seq of the message carrying it,
    /// built only once the transcript is longer than `INDEX_AFTER` (a short
    /// transcript is scanned instead: most conversations are short and many
    /// are resident, so the index would cost more memory than it saves
    /// time). A hit is confirmed against the message itself, so a hash
    /// collision can never swallow a new message.
    by_provider_id: Option<HashMap<u64, u32>>,
}

/// Transcript length beyond which provider ids are indexed.
const INDEX_AFTER: usize = 32;

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
        let mut c = Conversation {
            state,
            by_provider_id: None,
        };
        c.index_if_long();
        c
    }

    fn index_if_long(&mut self) {
        if self.by_provider_id.is_none() && self.state.messages.len() > INDEX_AFTER {
            self.by_provider_id = Some(
                self.state
                    .messages
                    .iter()
                    .filter_map(|m| Some((id_hash(m.provider_message_id.as_deref()?), m.seq)))
                    .collect(),
            );
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

    fn push(&mut self, events: &mut Vec<(u32, ConvEvent)>, event: ConvEvent) {
        let seq = self.state.next_seq();
        self.apply(seq, &event);
        events.push((seq, event));
    }

    /// Schedules a timer with id `id`; returns its event.
    pub fn schedule_timer(&mut self, id: u64, spec: TimerSpec) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::with_capacity(1);
        self.push(
            &mut events,
            ConvEvent::TimerScheduled(PendingTimer {
                id,
                due: spec.due,
                kind: spec.kind,
                text: spec.text,
                channel: spec.channel,
            }),
        );
        events
    }

    /// Cancels pending timer `id`; `None` if it is not pending.
    pub fn cancel_timer(&mut self, id: u64) -> Option<Vec<(u32, ConvEvent)>> {
        self.state.pending_timer(id)?;
        let mut events = Vec::with_capacity(1);
        self.push(&mut events, ConvEvent::TimerCancelled { id });
        Some(events)
    }

    /// Keeps exactly one lifecycle timer pending, due no later than the
    /// silence that would make this conversation inactive.
    pub fn ensure_lifecycle(
        &mut self,
        now: Timestamp,
        policy: &Lifecycle,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if self.state.status == Status::Closed {
            return events;
        }
        let target = now.saturating_add_millis(policy.inactive_after_ms);
        let current = self
            .state
            .timers
            .iter()
            .find(|t| t.kind == TimerKind::Lifecycle)
            .map(|t| (t.id, t.due));
        match current {
            Some((_, due)) if due <= target => return events,
            Some((id, _)) => self.push(&mut events, ConvEvent::TimerCancelled { id }),
            None => {}
        }
        let id = next_id();
        self.push(
            &mut events,
            ConvEvent::TimerScheduled(PendingTimer {
                id,
                due: target,
                kind: TimerKind::Lifecycle,
                text: None,
                channel: None,
            }),
        );
        events
    }

    /// Timer `id` came due. Returns `None` when it is not pending (already
    /// handled, cancelled, or never acknowledged): firing is idempotent.
    /// Effects are computed at the timer's due time, so a simulated jump of
    /// the clock has the same outcome as time passing.
    pub fn fire_timer(
        &mut self,
        id: u64,
        now: Timestamp,
        policy: &Lifecycle,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Option<Vec<(u32, ConvEvent)>> {
        let timer = self.state.pending_timer(id)?.clone();
        let at = timer.due;
        let mut events = Vec::with_capacity(3);
        match timer.kind {
            TimerKind::FollowUp | TimerKind::Reminder => {
                let channel = timer
                    .channel
                    .or_else(|| {
                        self.state
                            .messages
                            .iter()
                            .rev()
                            .find(|m| m.direction == Direction::Inbound)
                            .map(|m| m.channel)
                    })
                    .unwrap_or(Channel::Sms);
                let seq = self.state.next_seq();
                self.push(
                    &mut events,
                    ConvEvent::MessageAppended(Message {
                        seq,
                        direction: Direction::Outbound,
                        channel,
                        author: Author::Bot,
                        text: timer.text.clone().unwrap_or_default(),
                        at,
                        recorded_at: now,
                        provider_message_id: None,
                        delivery: Delivery::Sent,
                        media: vec![],
                    }),
                );
                self.push(&mut events, ConvEvent::TimerFired { id, at: now });
            }
            TimerKind::Lifecycle => {
                self.push(&mut events, ConvEvent::TimerFired { id, at: now });
                let last = self.state.last_message_at();
                let inactive_at = last.saturating_add_millis(policy.inactive_after_ms);
                let close_at = inactive_at.saturating_add_millis(policy.close_after_ms);
                let (change, next) = match self.state.status {
                    Status::Active if at >= close_at => (Some(Status::Closed), None),
                    Status::Active if at >= inactive_at => (Some(Status::Inactive), Some(close_at)),
                    Status::Active => (None, Some(inactive_at)),
                    Status::Inactive if at >= close_at => (Some(Status::Closed), None),
                    Status::Inactive => (None, Some(close_at)),
                    Status::Closed => (None, None),
                };
                if let Some(status) = change {
                    self.push(&mut events, ConvEvent::StatusChanged { status, at });
                }
                if let Some(due) = next {
                    let id = next_id();
                    self.push(
                        &mut events,
                        ConvEvent::TimerScheduled(PendingTimer {
                            id,
                            due,
                            kind: TimerKind::Lifecycle,
                            text: None,
                            channel: None,
                        }),
                    );
                }
            }
        }
        Some(events)
    }

    /// The seq of the message that carried provider id `pid`, if any.
    fn seen(&self, pid: &str) -> Option<u32> {
        let scan = || {
            self.state
                .messages
                .iter()
                .rev()
                .find(|m| m.provider_message_id.as_deref() == Some(pid))
                .map(|m| m.seq)
        };
        let Some(index) = &self.by_provider_id else {
            return scan();
        };
        let by_seq = |seq: u32| {
            let m = &self.state.messages;
            m.binary_search_by_key(&seq, |m| m.seq)
                .ok()
                .map(|i| &m[i])
                .filter(|m| m.provider_message_id.as_deref() == Some(pid))
        };
        match index.get(&id_hash(pid)) {
            Some(&seq) if by_seq(seq).is_some() => Some(seq),
            // A colliding hash: settle it by scanning.
            Some(_) => scan(),
            None => None,
        }
    }

    fn apply(&mut self, seq: u32, event: &ConvEvent) {
        self.state
            .apply(seq, event)
            .expect("the core only produces events in sequence");
        if let ConvEvent::MessageAppended(m) = event {
            match (&mut self.by_provider_id, &m.provider_message_id) {
                (Some(index), Some(pid)) => {
                    index.entry(id_hash(pid)).or_insert(m.seq);
                }
                (None, _) => self.index_if_long(),
                _ => {}
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
        c.fire_timer(t.id, Timestamp(24 * H), &policy, &mut next)
            .unwrap();
        assert_eq!(c.state.status, Status::Active);
        let t = c.state.timers[0].clone();
        assert_eq!(t.due, Timestamp(34 * H));
        // Silence: inactive, then closed.
        c.fire_timer(t.id, Timestamp(34 * H), &policy, &mut next)
            .unwrap();
        assert_eq!(c.state.status, Status::Inactive);
        let t = c.state.timers[0].clone();
        assert_eq!(t.due, Timestamp(82 * H));
        c.fire_timer(t.id, Timestamp(82 * H), &policy, &mut next)
            .unwrap();
        assert_eq!(c.state.status, Status::Closed);
        assert!(c.state.timers.is_empty());
        // Firing the same id again changes nothing.
        assert!(c
            .fire_timer(t.id, Timestamp(90 * H), &policy, &mut next)
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
        c.fire_timer(id, Timestamp(24 * H), &policy, &mut next)
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

    #[test]
    fn a_follow_up_timer_sends_once_on_the_last_inbound_channel() {
        let mut next = ids();
        let mut c = new_conv();
        let mut msg = inbound("hi", None);
        msg.channel = Channel::Whatsapp;
        c.on_inbound(&msg, Timestamp(0), &CoreConfig::default());
        c.schedule_timer(
            7,
            TimerSpec {
                due: Timestamp(5_000),
                kind: TimerKind::FollowUp,
                text: Some("Still there?".into()),
                channel: None,
            },
        );
        let policy = Lifecycle::default();
        let events = c
            .fire_timer(7, Timestamp(5_003), &policy, &mut next)
            .unwrap();
        assert_eq!(events.len(), 2);
        let out = c.state.messages.last().unwrap();
        assert_eq!(
            (out.direction, out.channel, out.text.as_str(), out.at),
            (
                Direction::Outbound,
                Channel::Whatsapp,
                "Still there?",
                Timestamp(5_000)
            )
        );
        assert!(c
            .fire_timer(7, Timestamp(6_000), &policy, &mut next)
            .is_none());
        assert!(c.cancel_timer(7).is_none(), "already fired");
        assert_eq!(c.state.messages.len(), 2);
    }

    #[test]
    fn whatsapp_identity_keeps_digits_and_phone() {
        let ids = identities_for(Channel::Whatsapp, "+15551234567");
        assert_eq!(ids.whatsapp.as_deref(), Some("15551234567"));
        assert_eq!(ids.phone.as_deref(), Some("+15551234567"));
    }
}
