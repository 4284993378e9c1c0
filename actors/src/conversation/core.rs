//! The conversation as a pure state machine (sans-IO): it takes a command
//! and the current time and returns the events to persist. No clock, no
//! storage, no actor runtime: the shell in `actor.rs` does those.

use std::collections::HashMap;

use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{ConsentChange, ConsentStatus};

use crate::consent::keywords::{self, Keyword, Keywords};
use crate::consent::policy::{self, Consent, Decision, Purpose, Rule};
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

/// A tenant's consent settings, as the pure core needs them.
#[derive(Debug, Clone)]
pub struct TenantPolicy {
    pub name: String,
    pub help_text: String,
    pub keywords: Keywords,
    /// One revocation covers every channel and purpose (FCC revoke-all).
    pub revoke_all: bool,
    pub zone: chrono_tz::Tz,
    /// State rules applied when the recipient's location is unknown.
    pub strict_rules: Vec<Rule>,
    pub lifecycle: Lifecycle,
    /// Channels with a real provider: messages there are queued for the
    /// sender. Elsewhere the sandbox provider records them as sent.
    pub providers: Vec<Channel>,
}

impl TenantPolicy {
    /// How a message the gate lets through starts its life.
    pub fn delivery_for(&self, channel: Channel) -> Delivery {
        if self.providers.contains(&channel) {
            Delivery::Queued
        } else {
            Delivery::Sent
        }
    }
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            name: "Threadline".into(),
            help_text: "Reply STOP to opt out.".into(),
            keywords: Keywords::default(),
            revoke_all: true,
            zone: chrono_tz::UTC,
            strict_rules: policy::STATE_RULES.to_vec(),
            lifecycle: Lifecycle::default(),
            providers: Vec::new(),
        }
    }
}

/// A business-initiated message to put through the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundSpec {
    pub text: String,
    pub channel: Option<Channel>,
    pub purpose: Purpose,
}

/// What the gate decided for an outbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Sent {
        message: MessageId,
        rule: &'static str,
    },
    Deferred {
        until: Timestamp,
        timer: u64,
        rule: String,
    },
    Blocked {
        reason: &'static str,
    },
}

/// A conversational message answering the customer's message of at most
/// this long ago is a direct reply (not held by quiet hours).
pub const DIRECT_REPLY_WINDOW_MS: i64 = 10 * 60_000;

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

    /// Consent effects of an inbound message (opt-out, opt-in, help),
    /// after it was recorded. `hint` is the provider's own classification.
    pub fn on_keywords(
        &mut self,
        msg: &InboundMessage,
        hint: Option<Keyword>,
        now: Timestamp,
        tenant: &TenantPolicy,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let Some(kw) = tenant.keywords.classify(&msg.text, hint) else {
            return events;
        };
        let ch = msg.channel;
        let change = |status, channel| ConsentChange {
            status,
            channel,
            purpose: None,
            source: "keyword".into(),
            keyword: Some(
                match kw {
                    Keyword::OptOut => "opt_out",
                    Keyword::OptIn => "opt_in",
                    Keyword::Help => "help",
                }
                .into(),
            ),
            raw_text: Some(msg.text.clone()),
            provider_message_id: msg.provider_message_id.clone(),
            proof: None,
            at: now,
        };
        let current = self.state.consent_for(ch, "conversational");
        let reply = match kw {
            Keyword::OptOut => {
                let scope = (!tenant.revoke_all).then_some(ch);
                self.push(
                    &mut events,
                    ConvEvent::ConsentChanged(change(ConsentStatus::OptedOut, scope)),
                );
                // Business messages decided but not yet handed to a provider
                // are blocked (the sender checks before every attempt).
                let queued: Vec<u32> = self
                    .state
                    .messages
                    .iter()
                    .filter(|m| {
                        m.delivery == Delivery::Queued
                            && m.author == Author::Bot
                            && scope.is_none_or(|c| c == m.channel)
                    })
                    .map(|m| m.seq)
                    .collect();
                for seq in queued {
                    self.push(
                        &mut events,
                        ConvEvent::DeliveryUpdated {
                            seq,
                            delivery: Delivery::Blocked,
                            provider_message_id: None,
                            error: Some("recipient opted out before it was sent".into()),
                            at: now,
                        },
                    );
                }
                // One confirmation only; a repeated STOP gets none.
                (current != ConsentStatus::OptedOut).then(|| {
                    format!(
                        "{}: you are unsubscribed and will receive no further messages. Reply START to resubscribe.",
                        tenant.name
                    )
                })
            }
            Keyword::OptIn => {
                let is_yes = keywords::normalize(&msg.text).iter().any(|w| w == "yes");
                let reopen = current == ConsentStatus::OptedOut
                    || (!is_yes && current != ConsentStatus::OptedIn);
                if reopen {
                    self.push(
                        &mut events,
                        ConvEvent::ConsentChanged(change(ConsentStatus::OptedIn, Some(ch))),
                    );
                }
                reopen.then(|| {
                    format!(
                        "{}: you are resubscribed. Reply HELP for help, STOP to opt out.",
                        tenant.name
                    )
                })
            }
            Keyword::Help => Some(tenant.help_text.clone()),
        };
        if let Some(text) = reply {
            let delivery = tenant.delivery_for(ch);
            self.outbound(&mut events, ch, Author::System, text, now, now, delivery);
        }
        events
    }

    /// `channel`, or else the channel of the customer's last message.
    fn channel_or_last_inbound(&self, channel: Option<Channel>) -> Channel {
        channel
            .or_else(|| {
                self.state
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.direction == Direction::Inbound)
                    .map(|m| m.channel)
            })
            .unwrap_or(Channel::Sms)
    }

    /// Puts a business-initiated message through the gate: sends it (to the
    /// sandbox provider until senders exist), holds it as a timer until the
    /// allowed instant, or refuses it. The decision is always recorded.
    pub fn send_message(
        &mut self,
        spec: OutboundSpec,
        now: Timestamp,
        tenant: &TenantPolicy,
        next_id: &mut dyn FnMut() -> u64,
    ) -> (SendOutcome, Vec<(u32, ConvEvent)>) {
        let channel = self.channel_or_last_inbound(spec.channel);
        let direct_reply = spec.purpose == Purpose::Conversational
            && self.state.messages.last().is_some_and(|m| {
                m.direction == Direction::Inbound
                    && m.channel == channel
                    && now.0 - m.recorded_at.0 <= DIRECT_REPLY_WINDOW_MS
            });
        let decision = self.gate(channel, spec.purpose, now, tenant, direct_reply);
        let mut events = Vec::with_capacity(3);
        self.record_decision(
            &mut events,
            channel,
            spec.purpose,
            &decision,
            &spec.text,
            now,
        );
        let outcome = match decision {
            Decision::Send { rule } => {
                let seq = self.state.next_seq();
                self.outbound(
                    &mut events,
                    channel,
                    Author::Bot,
                    spec.text,
                    now,
                    now,
                    tenant.delivery_for(channel),
                );
                SendOutcome::Sent {
                    message: self.state.message_id(seq),
                    rule,
                }
            }
            Decision::Defer { until, rule } => {
                let id = next_id();
                let kind = match spec.purpose {
                    Purpose::Conversational => TimerKind::FollowUp,
                    Purpose::Reminder => TimerKind::Reminder,
                    Purpose::Marketing => TimerKind::Marketing,
                };
                self.push(
                    &mut events,
                    ConvEvent::TimerScheduled(PendingTimer {
                        id,
                        due: until,
                        kind,
                        text: Some(spec.text),
                        channel: Some(channel),
                    }),
                );
                SendOutcome::Deferred {
                    until,
                    timer: id,
                    rule,
                }
            }
            Decision::Block { reason } => SendOutcome::Blocked { reason },
        };
        (outcome, events)
    }

    /// Records what became of outbound message `seq` at its provider. A
    /// provider saying the recipient opted out is a revocation too.
    pub fn delivery_update(
        &mut self,
        seq: u32,
        outcome: crate::sender::Outcome,
        now: Timestamp,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::with_capacity(2);
        let Ok(i) = self.state.messages.binary_search_by_key(&seq, |m| m.seq) else {
            return events;
        };
        let msg = &self.state.messages[i];
        if msg.delivery != Delivery::Queued {
            return events; // already recorded (a repeated report)
        }
        let channel = msg.channel;
        let (delivery, provider_message_id, error, opted_out) = match outcome {
            crate::sender::Outcome::Sent { provider_id } => {
                (Delivery::Sent, provider_id, None, false)
            }
            crate::sender::Outcome::Failed { error, opted_out } => {
                (Delivery::Failed, None, Some(error), opted_out)
            }
        };
        self.push(
            &mut events,
            ConvEvent::DeliveryUpdated {
                seq,
                delivery,
                provider_message_id,
                error: error.clone(),
                at: now,
            },
        );
        if opted_out {
            self.push(
                &mut events,
                ConvEvent::ConsentChanged(ConsentChange {
                    status: ConsentStatus::OptedOut,
                    channel: Some(channel),
                    purpose: None,
                    source: "provider".into(),
                    keyword: None,
                    raw_text: error,
                    provider_message_id: None,
                    proof: None,
                    at: now,
                }),
            );
        }
        events
    }

    /// Remembers the state a provider places the sender in (used by the
    /// gate after explicit contact data); an event only when it changes.
    pub fn note_provider_state(&mut self, state: &str) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let state = state.trim().to_ascii_uppercase();
        let valid = state.len() == 2 && state.bytes().all(|b| b.is_ascii_uppercase());
        if valid && self.state.captured.facts.get("provider_state") != Some(&state) {
            self.push(
                &mut events,
                ConvEvent::ContactUpdated {
                    name: None,
                    timezone: None,
                    region: None,
                    email: None,
                    facts: [("provider_state".to_owned(), state)].into(),
                },
            );
        }
        events
    }

    /// Records what is known of the contact (a `ContactUpdated` event).
    pub fn update_contact(&mut self, update: ConvEvent) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::with_capacity(1);
        if matches!(update, ConvEvent::ContactUpdated { .. }) {
            self.push(&mut events, update);
        }
        events
    }

    /// Records a change of consent made through the API.
    pub fn record_consent(&mut self, change: ConsentChange) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::with_capacity(1);
        self.push(&mut events, ConvEvent::ConsentChanged(change));
        events
    }

    #[allow(clippy::too_many_arguments)]
    fn outbound(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        channel: Channel,
        author: Author,
        text: String,
        at: Timestamp,
        now: Timestamp,
        delivery: Delivery,
    ) {
        let seq = self.state.next_seq();
        self.push(
            events,
            ConvEvent::MessageAppended(Message {
                seq,
                direction: Direction::Outbound,
                channel,
                author,
                text,
                at,
                recorded_at: now,
                provider_message_id: None,
                delivery,
                media: vec![],
            }),
        );
    }

    fn record_decision(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        channel: Channel,
        purpose: Purpose,
        d: &Decision,
        text: &str,
        at: Timestamp,
    ) {
        let (decision, rule, until) = match d {
            Decision::Send { rule } => ("sent", rule.to_string(), None),
            Decision::Defer { until, rule } => ("deferred", rule.clone(), Some(*until)),
            Decision::Block { reason } => ("blocked", reason.to_string(), None),
        };
        self.push(
            events,
            ConvEvent::Decided(threadline_protocol::GateDecision {
                channel,
                purpose: purpose.as_str().into(),
                decision: decision.into(),
                rule,
                until,
                text: text.into(),
                at,
            }),
        );
    }

    /// The gate's verdict on a business-initiated message at `now`.
    pub fn gate(
        &self,
        channel: Channel,
        purpose: Purpose,
        now: Timestamp,
        tenant: &TenantPolicy,
        direct_reply: bool,
    ) -> Decision {
        let s = &self.state;
        let consent = match s.consent_for(channel, purpose.as_str()) {
            ConsentStatus::OptedIn => Consent::OptedIn,
            ConsentStatus::OptedOut => Consent::OptedOut,
            ConsentStatus::Unknown => Consent::Unknown,
        };
        let fact = |k: &str| s.captured.facts.get(k).map(String::as_str);
        let zone = fact("timezone").and_then(|z| z.parse().ok());
        let location = policy::locate(
            fact("region"),
            zone,
            fact("provider_state"),
            s.identities.phone.as_deref(),
            tenant.zone,
            &tenant.strict_rules,
        );
        let day_ago = now.0 - 86_400_000;
        let sent: Vec<Timestamp> = s
            .messages
            .iter()
            .filter(|m| {
                m.direction == Direction::Outbound
                    && m.author == Author::Bot
                    && m.delivery != Delivery::Blocked
                    && m.recorded_at.0 > day_ago
            })
            .map(|m| m.recorded_at)
            .collect();
        let whatsapp_last_inbound = s
            .messages
            .iter()
            .rev()
            .find(|m| {
                m.direction == Direction::Inbound
                    && matches!(m.channel, Channel::Whatsapp | Channel::Voice)
            })
            .map(|m| m.recorded_at);
        policy::decide(&policy::Request {
            now,
            channel,
            purpose,
            subject: purpose.as_str(),
            consent,
            confirmation: false,
            direct_reply,
            location: &location,
            sent_on_subject: &sent,
            whatsapp_last_inbound,
            whatsapp_template: false,
        })
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
        tenant: &TenantPolicy,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Option<Vec<(u32, ConvEvent)>> {
        let policy = &tenant.lifecycle;
        let timer = self.state.pending_timer(id)?.clone();
        let at = timer.due;
        let mut events = Vec::with_capacity(3);
        match timer.kind {
            TimerKind::FollowUp | TimerKind::Reminder | TimerKind::Marketing => {
                let channel = self.channel_or_last_inbound(timer.channel);
                let purpose = match timer.kind {
                    TimerKind::Reminder => Purpose::Reminder,
                    TimerKind::Marketing => Purpose::Marketing,
                    _ => Purpose::Conversational,
                };
                let text = timer.text.clone().unwrap_or_default();
                self.push(&mut events, ConvEvent::TimerFired { id, at: now });
                // Judged at the due time, as if the clock had stopped there.
                let decision = self.gate(channel, purpose, at, tenant, false);
                self.record_decision(&mut events, channel, purpose, &decision, &text, at);
                match decision {
                    Decision::Send { .. } => self.outbound(
                        &mut events,
                        channel,
                        Author::Bot,
                        text,
                        at,
                        now,
                        tenant.delivery_for(channel),
                    ),
                    Decision::Block { .. } => self.outbound(
                        &mut events,
                        channel,
                        Author::Bot,
                        text,
                        at,
                        now,
                        Delivery::Blocked,
                    ),
                    // Held, not dropped: the same message waits as a new timer.
                    Decision::Defer { until, .. } => {
                        let new_id = next_id();
                        self.push(
                            &mut events,
                            ConvEvent::TimerScheduled(PendingTimer {
                                id: new_id,
                                due: until,
                                kind: timer.kind,
                                text: timer.text.clone(),
                                channel: Some(channel),
                            }),
                        );
                    }
                }
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
        assert_eq!(events.len(), 3, "fired, the gate's decision, the message");
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
            .filter(|x| x.kind == TimerKind::FollowUp)
            .last()
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
}
