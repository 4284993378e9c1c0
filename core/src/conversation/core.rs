//! The conversation as a pure state machine (sans-IO): it takes a command
//! and the current time and returns the events to persist. No clock, no
//! storage, no actor runtime: the shell in `actor.rs` does those.

use std::collections::{BTreeMap, HashMap};

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
    /// The phone that rings first on inbound calls.
    pub owner_phone: Option<String>,
    /// Answer calls with the speech assistant instead of ringing the owner.
    pub voice_assistant: bool,
    /// The text sent after a missed call (empty: none).
    pub missed_call_text: String,
    /// Purposes with an approved WhatsApp template (used outside the
    /// 24-hour window; the sender renders the template).
    pub whatsapp_templates: Vec<String>,
    /// What a business-initiated message needs on record.
    pub outreach_basis: policy::OutreachBasis,
    /// Sending hours for numbers outside the US.
    pub abroad: policy::AbroadHours,
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
            owner_phone: None,
            voice_assistant: false,
            missed_call_text: String::new(),
            whatsapp_templates: Vec::new(),
            outreach_basis: policy::OutreachBasis::default(),
            abroad: policy::AbroadHours::default(),
        }
    }
}

/// How a booked appointment went, as the business records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingOutcome {
    Attended,
    NoShow,
    /// The business cancels it (a person deciding an exception).
    Cancelled,
}

/// The slot a customer on WhatsApp is asked about after booking: may the
/// reminder come here (`journey.asking`)?
pub const REMINDER_OPT_IN: &str = "whatsapp_reminder_opt_in";

/// Who and what a journey change happens with.
struct JourneyChange<'a> {
    now: Timestamp,
    zone: chrono_tz::Tz,
    /// The channel the customer wrote on (reminders go there).
    channel: Option<Channel>,
    /// The tenant's name (`{business}` in reminders).
    business: &'a str,
    /// Who made the change, as the transcript note says it.
    by: &'static str,
}

impl BookingOutcome {
    pub fn parse(s: &str) -> Option<BookingOutcome> {
        match s {
            "attended" => Some(BookingOutcome::Attended),
            "no_show" => Some(BookingOutcome::NoShow),
            "cancelled" => Some(BookingOutcome::Cancelled),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BookingOutcome::Attended => "attended",
            BookingOutcome::NoShow => "no_show",
            BookingOutcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookingOutcomeError {
    #[error("the conversation has no booked appointment")]
    NoBooking,
    #[error("the appointment has not started yet")]
    NotYet(Timestamp),
}

/// A business-initiated message to put through the gate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboundSpec {
    pub text: String,
    pub channel: Option<Channel>,
    pub purpose: Purpose,
    /// The human agent writing it (`None`: the business's automation).
    pub agent: Option<String>,
    /// The customer asked for this very message (a web-chat verification
    /// code): a reply to their request, sent at once unless they opted out.
    #[serde(default)]
    pub requested: bool,
    /// What it is about, for frequency caps (default: its purpose).
    #[serde(default)]
    pub subject: Option<String>,
}

impl OutboundSpec {
    /// A conversational message of the business's automation on `channel`
    /// (`None`: the customer's current one).
    pub fn automated(text: impl Into<String>, channel: Option<Channel>) -> OutboundSpec {
        OutboundSpec {
            text: text.into(),
            channel,
            purpose: Purpose::Conversational,
            agent: None,
            requested: false,
            subject: None,
        }
    }
}

/// What the gate decided for an outbound message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SendOutcome {
    Sent {
        message: MessageId,
        rule: String,
    },
    Deferred {
        until: Timestamp,
        timer: u64,
        rule: String,
    },
    Blocked {
        reason: String,
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

/// The tenant's flow and the calendar it books in, when a call runs it.
pub type FlowOnCall<'a> = Option<(
    &'a crate::flows::engine::Flow,
    &'a mut dyn crate::flows::engine::Calendar,
)>;

/// A speech conversation ends after this many turns.
pub const MAX_SPEECH_TURNS: u32 = 12;

/// One step of a phone call, as the voice gateway saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// A call came in.
    Incoming { call_sid: String },
    /// The outcome of ringing the owner: anything but answered is a missed call.
    DialStatus { call_sid: String, answered: bool },
    /// What the caller said in speech turn `turn` of the voice assistant.
    Speech {
        call_sid: String,
        turn: u32,
        text: String,
        /// Turns in a row the caller said nothing (0: they spoke).
        silence: u32,
    },
    /// A call the business placed (saying message `seq`) was answered: by
    /// a person, or (`machine`, Twilio's answering-machine detection) by
    /// voicemail.
    Answered {
        call_sid: String,
        seq: u32,
        machine: bool,
    },
}

/// What the call does next (rendered as TwiML by the gateway).
#[derive(Debug, Clone, PartialEq)]
pub enum VoiceAction {
    /// Ring `number`; with `whisper`, the person answering first hears a
    /// summary of the conversation (a warm transfer).
    Dial { number: String, whisper: bool },
    /// Say `prompt` and listen for speech turn `turn` (speech or a key);
    /// `silence`: turns in a row the caller has said nothing so far.
    Gather {
        prompt: String,
        turn: u32,
        silence: u32,
    },
    /// Connect the caller to a person: an available agent with a phone if
    /// there is one (the gateway asks the pool), else `fallback` (the
    /// owner), else the call ends and the conversation waits for an agent.
    Transfer {
        fallback: Option<String>,
        /// Why, for the agent who takes it.
        reason: String,
    },
    /// Say `text`, if any, and hang up.
    Hangup { text: Option<String> },
}

/// A flow's text, worded for a caller: what a texter replies with a
/// letter, a caller says or presses ("Reply C to confirm or R for another
/// time" becomes "Say yes or press 1 to confirm, or tell me another time").
pub fn for_the_ear(text: &str) -> String {
    text.replace(
        "Reply C to confirm or R for another time",
        "Say yes or press 1 to confirm, or tell me another time",
    )
    .replace("Reply C to confirm", "Say yes or press 1 to confirm")
    .replace("reply C to confirm", "say yes or press 1 to confirm")
    .replace(
        "reply C to move it there",
        "say yes or press 1 to move it there",
    )
    .replace("Reply R to reschedule", "Say reschedule to move it")
    .replace("Text us any time", "Call or text us any time")
    .replace("just text us", "just call or text us")
}

fn channel_words(c: Channel) -> &'static str {
    match c {
        Channel::Sms => "text",
        Channel::Whatsapp => "WhatsApp",
        Channel::Voice => "the phone",
        Channel::Webchat => "chat",
        Channel::Email => "email",
    }
}

/// What a provider reported about an outbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivery: Delivery,
    pub provider_message_id: Option<String>,
    pub error: Option<String>,
    /// The provider refused because the recipient opted out (Twilio 21610).
    pub opted_out: bool,
}

/// How far along its life a delivery state is. Reports only move a
/// message forward; `blocked` is final.
fn delivery_rank(d: Delivery) -> u8 {
    match d {
        Delivery::Received => 0,
        Delivery::Queued => 1,
        Delivery::Sent => 2,
        Delivery::Failed => 3,
        Delivery::Delivered => 4,
        Delivery::Read => 5,
        Delivery::Blocked => 6,
        Delivery::Internal => 7,
    }
}

fn delivery_advances(from: Delivery, to: Delivery) -> bool {
    !matches!(from, Delivery::Blocked | Delivery::Internal)
        && delivery_rank(to) > delivery_rank(from)
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

    /// The channels the opt-out in effect on `ch` covers: `None` for every
    /// channel (a revoke-all STOP or an opt-out recorded for all).
    fn opt_out_scope(&self, ch: Channel) -> Option<Channel> {
        self.state
            .consent
            .iter()
            .rev()
            .find(|c| c.covers(ch, "conversational"))
            .filter(|c| c.status == ConsentStatus::OptedOut)
            .map_or(Some(ch), |c| c.channel)
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
                // And the follow-ups planned for them end here.
                events.extend(self.stop_cadence());
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
                    // START restores what the STOP took, on the channels
                    // it covered (all of them under revoke-all): the
                    // opt-out is lifted, and the purposes a keyword can
                    // grant (conversational, reminder) are opted in.
                    // Marketing goes back to needing a written opt-in.
                    let scope = match current {
                        ConsentStatus::OptedOut => self.opt_out_scope(ch),
                        _ => Some(ch),
                    };
                    if current == ConsentStatus::OptedOut {
                        self.push(
                            &mut events,
                            ConvEvent::ConsentChanged(change(ConsentStatus::Unknown, scope)),
                        );
                    }
                    for purpose in [Purpose::Conversational, Purpose::Reminder] {
                        let mut c = change(ConsentStatus::OptedIn, scope);
                        c.purpose = Some(purpose.as_str().into());
                        self.push(&mut events, ConvEvent::ConsentChanged(c));
                    }
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
            // A call cannot carry the confirmation: it goes out as a text.
            let ch = if ch == Channel::Voice {
                Channel::Sms
            } else {
                ch
            };
            let delivery = tenant.delivery_for(ch);
            self.outbound(&mut events, ch, Author::System, text, now, now, delivery);
        }
        events
    }

    /// The channel the customer last wrote or called on (SMS if none).
    pub fn last_inbound_channel(&self) -> Channel {
        self.channel_or_last_inbound(None)
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
        // (Internal entries, notes for the record, are no turn of the
        // conversation: a reply after one still answers the customer.)
        let direct_reply = spec.purpose == Purpose::Conversational
            && self.state.messages.iter().rev().find(|m| !m.is_internal()).is_some_and(|m| {
                m.direction == Direction::Inbound
                    // Texting back after a call answers the call.
                    && (m.channel == channel || (m.channel == Channel::Voice && channel == Channel::Sms))
                    && now.0 - m.recorded_at.0 <= DIRECT_REPLY_WINDOW_MS
            });
        let subject = spec
            .subject
            .clone()
            .unwrap_or_else(|| spec.purpose.as_str().to_owned());
        let decision = match self.gate(
            channel,
            spec.purpose,
            &subject,
            now,
            tenant,
            direct_reply || spec.requested,
        ) {
            Decision::Send { .. } if spec.requested => Decision::Send {
                rule: "requested by the customer (a web-chat verification code)".into(),
            },
            d => d,
        };
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
                let author = spec.agent.map_or(Author::Bot, Author::Agent);
                self.outbound(
                    &mut events,
                    channel,
                    author,
                    spec.text,
                    now,
                    now,
                    tenant.delivery_for(channel),
                );
                if !direct_reply && !spec.requested {
                    self.push(&mut events, ConvEvent::SubjectNoted { seq, subject });
                }
                SendOutcome::Sent {
                    message: self.state.message_id(seq),
                    rule: rule.into(),
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
            Decision::Block { reason } => SendOutcome::Blocked {
                reason: reason.into(),
            },
        };
        (outcome, events)
    }

    /// Records what became of outbound message `seq` at its provider (the
    /// sender's report). A provider saying the recipient opted out is a
    /// revocation too.
    pub fn delivery_update(
        &mut self,
        seq: u32,
        outcome: crate::delivery::Outcome,
        now: Timestamp,
    ) -> Vec<(u32, ConvEvent)> {
        let (delivery, provider_message_id, error, opted_out) = match outcome {
            crate::delivery::Outcome::Sent { provider_id } => {
                (Delivery::Sent, provider_id, None, false)
            }
            crate::delivery::Outcome::Failed { error, opted_out } => {
                (Delivery::Failed, None, Some(error), opted_out)
            }
        };
        self.set_delivery(
            Some(seq),
            DeliveryReport {
                delivery,
                provider_message_id,
                error,
                opted_out,
            },
            now,
        )
    }

    /// Applies a delivery report to outbound message `seq` (or, without it,
    /// the outbound message carrying the report's provider id). Reports may
    /// arrive out of order: one that would move the message back (`sent`
    /// after `delivered`) changes nothing, and a repeated one neither.
    pub fn set_delivery(
        &mut self,
        seq: Option<u32>,
        report: DeliveryReport,
        now: Timestamp,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::with_capacity(2);
        let found = match seq {
            Some(seq) => self
                .state
                .messages
                .binary_search_by_key(&seq, |m| m.seq)
                .ok(),
            None => report.provider_message_id.as_deref().and_then(|pid| {
                self.state.messages.iter().rposition(|m| {
                    m.direction == Direction::Outbound
                        && m.provider_message_id.as_deref() == Some(pid)
                })
            }),
        };
        let Some(i) = found else {
            return events;
        };
        let msg = &self.state.messages[i];
        if msg.direction != Direction::Outbound || !delivery_advances(msg.delivery, report.delivery)
        {
            return events;
        }
        let (seq, channel) = (msg.seq, msg.channel);
        let provider_message_id = report
            .provider_message_id
            .filter(|p| msg.provider_message_id.as_deref() != Some(p));
        self.push(
            &mut events,
            ConvEvent::DeliveryUpdated {
                seq,
                delivery: report.delivery,
                provider_message_id,
                error: report.error.clone(),
                at: now,
            },
        );
        let already_out =
            self.state.consent_for(channel, "conversational") == ConsentStatus::OptedOut;
        if report.opted_out && !already_out {
            self.push(
                &mut events,
                ConvEvent::ConsentChanged(ConsentChange {
                    status: ConsentStatus::OptedOut,
                    channel: Some(channel),
                    purpose: None,
                    source: "provider".into(),
                    keyword: None,
                    raw_text: report.error,
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
            self.note_facts(&mut events, [("provider_state".to_owned(), state)].into());
        }
        events
    }

    /// Keeps the name a provider gives for the sender, unless one is known.
    pub fn note_profile_name(&mut self, name: &str) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let name = name.trim();
        if self.state.captured.name.is_none() && !name.is_empty() {
            self.push(
                &mut events,
                ConvEvent::ContactUpdated {
                    name: Some(name.to_owned()),
                    timezone: None,
                    region: None,
                    email: None,
                    facts: Default::default(),
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
        subject: &str,
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
            &tenant.abroad,
        );
        let day_ago = now.0 - 86_400_000;
        // Caps count business-initiated messages: a bot's answer to the
        // message just before it is conversation, not solicitation.
        let sent: Vec<Timestamp> = s
            .messages
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                let answers = i
                    .checked_sub(1)
                    .and_then(|p| s.messages.get(p))
                    .is_some_and(|p| {
                        p.direction == Direction::Inbound
                            && m.recorded_at.0 - p.recorded_at.0 <= DIRECT_REPLY_WINDOW_MS
                    });
                // On the same subject; a message recorded before subjects
                // were kept counts for every subject (the safe side).
                let same_subject = s.subjects.get(&m.seq).is_none_or(|x| x == subject);
                m.direction == Direction::Outbound
                    && m.author == Author::Bot
                    && m.delivery != Delivery::Blocked
                    && m.recorded_at.0 > day_ago
                    && !answers
                    && same_subject
            })
            .map(|(_, m)| m.recorded_at)
            .collect();
        let whatsapp_last_inbound = s
            .messages
            .iter()
            .rev()
            .find(|m| {
                // A phone call is not a WhatsApp call: only WhatsApp opens it.
                m.direction == Direction::Inbound && m.channel == Channel::Whatsapp
            })
            .map(|m| m.recorded_at);
        let basis = self.basis(consent, direct_reply, tenant);
        let decision = policy::decide(&policy::Request {
            now,
            channel,
            purpose,
            subject,
            consent,
            confirmation: false,
            direct_reply,
            basis,
            location: &location,
            sent_on_subject: &sent,
            whatsapp_last_inbound,
            whatsapp_template: tenant
                .whatsapp_templates
                .iter()
                .any(|p| p == purpose.as_str()),
        });
        // The decision names the basis it rests on (a direct reply's rule
        // already says it).
        match (decision, basis.filter(|b| *b != policy::BASIS_REPLY)) {
            (Decision::Send { rule }, Some(b)) => Decision::Send {
                rule: format!("{rule}; basis: {b}").into(),
            },
            (Decision::Defer { until, rule }, Some(b)) => Decision::Defer {
                until,
                rule: format!("{rule}; basis: {b}"),
            },
            (d, _) => d,
        }
    }

    /// What on record allows a business-initiated message: consent for
    /// its channel and purpose, a reply to what the customer just wrote,
    /// or (where the tenant accepts it) an existing relationship.
    fn basis(
        &self,
        consent: Consent,
        direct_reply: bool,
        tenant: &TenantPolicy,
    ) -> Option<&'static str> {
        if consent == Consent::OptedIn {
            return Some(policy::BASIS_CONSENT);
        }
        if direct_reply {
            return Some(policy::BASIS_REPLY);
        }
        // The customer wrote or called in this conversation, and the
        // address the channel reaches is one of theirs in it (the number
        // they texted from, or gave in a chat).
        let contacted = self
            .state
            .messages
            .iter()
            .any(|m| m.direction == Direction::Inbound && m.author == Author::Customer);
        (tenant.outreach_basis == policy::OutreachBasis::RelationshipOrConsent && contacted)
            .then_some(policy::BASIS_RELATIONSHIP)
    }

    /// A step of a phone call. Returns what the call should do next and
    /// the events to persist. Repeated webhooks (same call and turn) record
    /// nothing new and get an equivalent answer.
    pub fn on_call(
        &mut self,
        event: &CallEvent,
        now: Timestamp,
        tenant: &TenantPolicy,
        flow: FlowOnCall<'_>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> (VoiceAction, Vec<(u32, ConvEvent)>) {
        let mut events = Vec::new();
        let action = match event {
            CallEvent::Incoming { call_sid } => {
                let fresh = self.note(
                    &mut events,
                    Author::Customer,
                    "[incoming call]",
                    call_sid,
                    now,
                );
                if tenant.voice_assistant {
                    let prompt = self.greeting(tenant, now);
                    if fresh {
                        self.say(&mut events, &prompt, now);
                    }
                    VoiceAction::Gather {
                        prompt,
                        turn: 1,
                        silence: 0,
                    }
                } else if let Some(owner) = &tenant.owner_phone {
                    VoiceAction::Dial {
                        number: owner.clone(),
                        whisper: true,
                    }
                } else {
                    // Nobody to ring: the call is missed at once.
                    if fresh {
                        self.missed_call(&mut events, call_sid, now, tenant, next_id);
                    }
                    VoiceAction::Hangup {
                        text: Some(format!(
                            "Sorry, nobody at {} can take your call right now. We will text you shortly.",
                            tenant.name
                        )),
                    }
                }
            }
            CallEvent::DialStatus { call_sid, answered } => {
                if *answered {
                    self.note(
                        &mut events,
                        Author::System,
                        "[call answered]",
                        &format!("{call_sid}/answered"),
                        now,
                    );
                } else {
                    self.missed_call(&mut events, call_sid, now, tenant, next_id);
                }
                VoiceAction::Hangup { text: None }
            }
            CallEvent::Answered {
                call_sid,
                seq,
                machine,
            } => self.answered(
                &mut events,
                call_sid,
                *seq,
                *machine,
                now,
                tenant,
                flow,
                next_id,
            ),
            CallEvent::Speech {
                call_sid,
                turn,
                text,
                silence,
            } => self.speech_turn(
                &mut events,
                call_sid,
                *turn,
                *silence,
                text,
                now,
                tenant,
                flow,
                next_id,
            ),
        };
        (action, events)
    }

    /// A summary for the person a call is transferred to: who, what they
    /// want and what is known, the booking, why a person is needed, then
    /// their last words on any channel. Times in `zone`.
    pub fn whisper(&self, zone: chrono_tz::Tz) -> String {
        let c = &self.state.captured;
        let who = c
            .name
            .clone()
            .or_else(|| self.state.identities.phone.clone())
            .unwrap_or_else(|| self.state.contact.clone());
        let mut out = format!("Call from {who}.");
        let booked = self
            .state
            .journey
            .booking
            .as_ref()
            .and_then(|b| b.booked().map(|s| (b.service.clone(), s)));
        // What the booking says is said with it.
        let in_booking = |v: &String| {
            booked.as_ref().is_some_and(|(service, _)| {
                v == service || crate::flows::engine::slot_time(v).is_some()
            })
        };
        let facts: Vec<String> = c
            .slots
            .iter()
            .filter(|(k, v)| k.as_str() != "name" && !v.is_empty() && !in_booking(v))
            .map(|(k, v)| {
                let v = crate::flows::engine::slot_time(v)
                    .map(|t| crate::flows::engine::spoken(t, zone))
                    .unwrap_or_else(|| v.clone());
                format!("{} {v}", k.replace('_', " "))
            })
            .collect();
        match (&c.intent, facts.is_empty()) {
            (Some(i), true) => out.push_str(&format!(" Asked about: {}.", i.replace('_', " "))),
            (Some(i), false) => out.push_str(&format!(
                " Asked about: {} ({}).",
                i.replace('_', " "),
                facts.join(", ")
            )),
            (None, false) => out.push_str(&format!(" Known: {}.", facts.join(", "))),
            (None, true) => {}
        }
        if let Some((service, start)) = booked {
            out.push_str(&format!(
                " Booked: {service}, {}.",
                crate::flows::engine::spoken(start, zone)
            ));
        }
        if let Some(reason) = self.state.messages.iter().rev().find_map(|m| {
            m.text
                .strip_prefix("[handed to a person: ")
                .and_then(|r| r.strip_suffix(']'))
        }) {
            out.push_str(&format!(" Handed over: {reason}."));
        }
        let recent: Vec<&Message> = self
            .state
            .messages
            .iter()
            .filter(|m| m.author == Author::Customer && !m.text.starts_with('['))
            .rev()
            .take(3)
            .collect();
        for m in recent.into_iter().rev() {
            out.push_str(&format!(
                " On {}: {}.",
                channel_words(m.channel),
                m.text.trim_end_matches('.')
            ));
        }
        out
    }

    /// What the voice assistant says first: the tenant, then what the
    /// conversation already knows, so the caller does not repeat it.
    fn greeting(&self, tenant: &TenantPolicy, now: Timestamp) -> String {
        let mut out = format!("Hi, thanks for calling {}.", tenant.name);
        if let Some(name) = &self.state.captured.name {
            out = format!("Hi {name}, thanks for calling {}.", tenant.name);
        }
        // The caller's last request in writing, worth repeating: not a
        // bare "ok" or "thanks" (quoting those reads as a glitch).
        let earlier = self.state.messages.iter().rev().find(|m| {
            m.direction == Direction::Inbound
                && m.author == Author::Customer
                && m.channel != Channel::Voice
                && !m.text.trim().is_empty()
                && !m.text.starts_with('[')
        });
        let earlier = earlier.filter(|m| {
            crate::flows::nlu::small_talk(&m.text).is_none()
                && crate::flows::nlu::yes_no(&m.text).is_none()
                && m.text.split_whitespace().count() >= 3
        });
        let booked = self
            .state
            .journey
            .booking
            .as_ref()
            .and_then(|b| b.booked().map(|s| (b.service.clone(), s)))
            .filter(|(_, s)| s.0 > now.0);
        if let Some((service, start)) = booked {
            out.push_str(&format!(
                " I see your {service} is booked for {}. How can I help?",
                crate::flows::engine::spoken(start, self.zone(tenant))
            ));
            return out;
        }
        match earlier {
            Some(m) => out.push_str(&format!(
                " You mentioned over {} that \"{}\". How can I help with that?",
                channel_words(m.channel),
                m.text.trim()
            )),
            None => out.push_str(" How can I help you today?"),
        }
        out
    }

    /// Records a call note (idempotent by `key`); false if it was seen before.
    fn note(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        author: Author,
        text: &str,
        key: &str,
        now: Timestamp,
    ) -> bool {
        if self.seen(key).is_some() {
            return false;
        }
        let seq = self.state.next_seq();
        self.push(
            events,
            ConvEvent::MessageAppended(Message {
                seq,
                direction: Direction::Inbound,
                channel: Channel::Voice,
                author,
                text: text.into(),
                at: now,
                recorded_at: now,
                provider_message_id: Some(key.into()),
                delivery: Delivery::Received,
                media: vec![],
            }),
        );
        true
    }

    /// Something the assistant says inside a call the customer placed: a
    /// direct reply, recorded as decided and sent (TwiML carries it).
    fn say(&mut self, events: &mut Vec<(u32, ConvEvent)>, text: &str, now: Timestamp) {
        let decision = Decision::Send {
            rule: "in-call reply".into(),
        };
        self.record_decision(
            events,
            Channel::Voice,
            Purpose::Conversational,
            &decision,
            text,
            now,
        );
        self.outbound(
            events,
            Channel::Voice,
            Author::Bot,
            text.into(),
            now,
            now,
            Delivery::Sent,
        );
    }

    fn missed_call(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        call_sid: &str,
        now: Timestamp,
        tenant: &TenantPolicy,
        next_id: &mut dyn FnMut() -> u64,
    ) {
        if !self.note(
            events,
            Author::System,
            "[missed call]",
            &format!("{call_sid}/missed"),
            now,
        ) {
            return;
        }
        if tenant.missed_call_text.is_empty() {
            return;
        }
        let spec = OutboundSpec::automated(tenant.missed_call_text.clone(), Some(Channel::Sms));
        let (_, more) = self.send_message(spec, now, tenant, next_id);
        events.extend(more);
    }

    /// A call the business placed was answered. A person hears its
    /// message and, with the tenant's flow, the call goes on as a
    /// conversation (speech turns through the flow); a machine gets a
    /// short voicemail, and the flow's unanswered-call text follows
    /// through the gate (once per call).
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        call_sid: &str,
        seq: u32,
        machine: bool,
        now: Timestamp,
        tenant: &TenantPolicy,
        flow: FlowOnCall<'_>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> VoiceAction {
        let Some(said) = self
            .state
            .messages
            .binary_search_by_key(&seq, |m| m.seq)
            .ok()
            .map(|i| self.state.messages[i].text.clone())
        else {
            return VoiceAction::Hangup { text: None };
        };
        let flow = flow.map(|(f, _)| f);
        if machine {
            let text = flow
                .and_then(|f| f.unanswered_call_text(&self.state.captured, &self.state.journey));
            let voicemail = match &text {
                Some(_) => format!("{said} Sorry we missed you. We'll follow up by text."),
                None => format!("{said} Sorry we missed you. Please call us back when you can."),
            };
            let fresh = self.note(
                events,
                Author::System,
                "[voicemail: the call was answered by a machine]",
                &format!("{call_sid}/voicemail"),
                now,
            );
            if fresh {
                self.say(events, &voicemail, now);
                if let Some(text) = text {
                    let spec = OutboundSpec::automated(text, Some(Channel::Sms));
                    events.extend(self.send_message(spec, now, tenant, next_id).1);
                }
            }
            return VoiceAction::Hangup {
                text: Some(voicemail),
            };
        }
        self.note(
            events,
            Author::System,
            "[call answered]",
            &format!("{call_sid}/answered"),
            now,
        );
        match flow {
            Some(_) => VoiceAction::Gather {
                prompt: said,
                turn: 1,
                silence: 0,
            },
            None => VoiceAction::Hangup { text: Some(said) },
        }
    }

    /// One speech (or keypad) turn of the voice assistant. With the
    /// tenant's flow, the turn goes through it as a text would (intents,
    /// answers, booking, hand-off), in words for the ear; without one, the
    /// caller is heard, noted and asked for more. Keywords, a request for
    /// a person (or 0 on the keypad) and goodbyes come first.
    #[allow(clippy::too_many_arguments)]
    fn speech_turn(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        call_sid: &str,
        turn: u32,
        silence: u32,
        text: &str,
        now: Timestamp,
        tenant: &TenantPolicy,
        flow: FlowOnCall<'_>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> VoiceAction {
        let key = format!("{call_sid}/turn/{turn}");
        let text = text.trim();
        if text.is_empty() {
            // Silence: once more with the keypad offered, then a person.
            if silence >= 2 {
                return VoiceAction::Transfer {
                    fallback: tenant.owner_phone.clone(),
                    reason: "the caller said nothing".into(),
                };
            }
            return VoiceAction::Gather {
                prompt: "Sorry, I didn't hear anything. You can tell me what you need, or press 0 to talk to a person.".into(),
                turn,
                silence: silence + 1,
            };
        }
        let fresh = self.note(events, Author::Customer, text, &key, now);
        if !fresh {
            // A webhook repeated: the same answer, nothing decided again.
            let said = self
                .state
                .messages
                .iter()
                .rev()
                .find(|m| m.channel == Channel::Voice && m.author == Author::Bot)
                .map(|m| m.text.clone())
                .unwrap_or_else(|| "Is there anything else I can help with?".into());
            return VoiceAction::Gather {
                prompt: said,
                turn: turn + 1,
                silence: 0,
            };
        }
        let keyword = tenant.keywords.classify(text, None);
        if keyword.is_some() {
            let msg = InboundMessage {
                channel: Channel::Voice,
                from: self.state.contact.clone(),
                to: None,
                text: text.into(),
                provider_message_id: Some(key.clone()),
                at: Some(now),
                media: vec![],
            };
            events.extend(self.on_keywords(&msg, None, now, tenant));
        }
        let lower = text.to_lowercase();
        let pressed_zero = lower.contains("(pressed 0)");
        let goodbye = crate::flows::nlu::small_talk(text)
            == Some(crate::flows::nlu::SmallTalk::Bye)
            || lower.contains("that's all")
            || lower.contains("no thanks");
        let (reply, action) = if keyword == Some(Keyword::OptOut) {
            let t = format!(
                "Understood. {} will not contact you again. Goodbye.",
                tenant.name
            );
            (t.clone(), VoiceAction::Hangup { text: Some(t) })
        } else if pressed_zero || crate::flows::nlu::wants_person(text) {
            let t = "Let me connect you with someone who can help. One moment.".to_string();
            let reason = "the caller asked for a person".to_string();
            (
                t,
                VoiceAction::Transfer {
                    fallback: tenant.owner_phone.clone(),
                    reason,
                },
            )
        } else if goodbye || turn >= MAX_SPEECH_TURNS {
            let t = format!("Thanks for calling {}. Goodbye.", tenant.name);
            (t.clone(), VoiceAction::Hangup { text: Some(t) })
        } else if let Some((flow, cal)) = flow {
            let t = self.flow_turn(
                flow,
                text,
                Channel::Voice,
                events,
                now,
                tenant,
                cal,
                next_id,
            );
            match t.escalate {
                Some(reason) => (
                    t.reply.map(|r| for_the_ear(&r)).unwrap_or_else(|| {
                        "Let me connect you with someone who can help. One moment.".into()
                    }),
                    VoiceAction::Transfer {
                        fallback: tenant.owner_phone.clone(),
                        reason,
                    },
                ),
                None => {
                    let r = t
                        .reply
                        .map(|r| for_the_ear(&r))
                        .unwrap_or_else(|| "Is there anything else I can help with?".into());
                    (
                        r.clone(),
                        VoiceAction::Gather {
                            prompt: r,
                            turn: turn + 1,
                            silence: 0,
                        },
                    )
                }
            }
        } else {
            let t = "Thank you, I have noted that. Is there anything else?".to_string();
            (
                t.clone(),
                VoiceAction::Gather {
                    prompt: t,
                    turn: turn + 1,
                    silence: 0,
                },
            )
        };
        if self.state.captured.intent.is_none() && keyword.is_none() {
            self.note_facts(
                events,
                [("voice_request".to_owned(), text.to_owned())].into(),
            );
        }
        self.say(events, &reply, now);
        action
    }

    /// The customer's `text` on `channel` through the tenant's flow (a
    /// text or a speech turn alike): what the conversation keeps of it
    /// (the name it learned, what it understood, the journey it moved to
    /// and its reminders) goes into `events`; the turn, for its reply,
    /// hand-off and call.
    #[allow(clippy::too_many_arguments)]
    fn flow_turn(
        &mut self,
        flow: &crate::flows::engine::Flow,
        text: &str,
        channel: Channel,
        events: &mut Vec<(u32, ConvEvent)>,
        now: Timestamp,
        tenant: &TenantPolicy,
        cal: &mut dyn crate::flows::engine::Calendar,
        next_id: &mut dyn FnMut() -> u64,
    ) -> crate::flows::engine::Turn {
        let zone = self.zone(tenant);
        let turn = flow.turn(
            text,
            &self.state.captured,
            &self.state.journey,
            now,
            zone,
            cal,
        );
        let ctx = JourneyChange {
            now,
            zone,
            channel: Some(channel),
            business: &tenant.name,
            by: "the customer",
        };
        events.extend(self.absorb_turn(&turn, &ctx, next_id));
        turn
    }

    /// What the conversation keeps of a flow turn: the name it learned,
    /// what it understood, and the journey it moved to (with reminders).
    fn absorb_turn(
        &mut self,
        turn: &crate::flows::engine::Turn,
        ctx: &JourneyChange<'_>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if let Some(name) = turn
            .slots
            .get("name")
            .filter(|_| self.state.captured.name.is_none())
        {
            let name = name.clone();
            events.extend(self.note_profile_name(&name));
        }
        if turn.intent.is_some() || !turn.slots.is_empty() || turn.score.is_some() {
            self.push(
                &mut events,
                ConvEvent::Understood {
                    intent: turn.intent.clone(),
                    slots: turn.slots.clone(),
                    score: turn.score.map(|s| s as f32),
                },
            );
        }
        events.extend(self.journey_to(turn.journey.clone(), turn.reminders.clone(), ctx, next_id));
        events
    }

    /// The tenant's flow answers a customer message: what it understood,
    /// its reply (a direct reply, through the gate), reminders it sets,
    /// and an escalation when it hands over to a person. With
    /// `phrase_elsewhere`, the reply is returned as a draft for an external
    /// responder instead of being sent.
    #[allow(clippy::too_many_arguments)]
    pub fn converse(
        &mut self,
        flow: &crate::flows::engine::Flow,
        msg: &InboundMessage,
        now: Timestamp,
        tenant: &TenantPolicy,
        cal: &mut dyn crate::flows::engine::Calendar,
        next_id: &mut dyn FnMut() -> u64,
        phrase_elsewhere: bool,
    ) -> (Vec<(u32, ConvEvent)>, Option<String>) {
        let mut events = Vec::new();
        // The customer answered: any follow-up waiting for them is off.
        events.extend(self.stop_cadence());
        if self.state.journey.asking.as_deref() == Some(REMINDER_OPT_IN) {
            let mut journey = self.state.journey.clone();
            journey.asking = None;
            self.push(&mut events, ConvEvent::JourneyChanged(journey));
            let answer = crate::flows::nlu::yes_no(&msg.text).map(|yes| {
                if yes {
                    // Their own words in the thread are the proof.
                    self.push(
                        &mut events,
                        ConvEvent::ConsentChanged(threadline_protocol::ConsentChange {
                            status: ConsentStatus::OptedIn,
                            channel: Some(Channel::Whatsapp),
                            purpose: Some(Purpose::Reminder.as_str().into()),
                            source: "reply".into(),
                            keyword: None,
                            raw_text: Some(msg.text.chars().take(160).collect()),
                            provider_message_id: msg.provider_message_id.clone(),
                            proof: Some(
                                "answered yes when asked in the WhatsApp thread whether the appointment reminder may come there".into(),
                            ),
                            at: now,
                        }),
                    );
                    "Thanks! Your reminder will come here on WhatsApp."
                } else {
                    "Okay, no reminder on WhatsApp."
                }
            });
            if let Some(text) = answer {
                let spec = OutboundSpec::automated(text, Some(msg.channel));
                events.extend(self.send_message(spec, now, tenant, next_id).1);
                return (events, None);
            }
        }
        let confirmed_before = self.state.journey.booking.as_ref().and_then(|b| b.booked());
        let turn = self.flow_turn(
            flow,
            &msg.text,
            msg.channel,
            &mut events,
            now,
            tenant,
            cal,
            next_id,
        );
        // Reminders on WhatsApp outside the 24-hour window go as the
        // tenant's template, to customers who said yes to them here.
        let mut reply = turn.reply;
        let confirmed_now = self.state.journey.booking.as_ref().and_then(|b| b.booked());
        if confirmed_now.is_some()
            && confirmed_now != confirmed_before
            && msg.channel == Channel::Whatsapp
            && tenant
                .whatsapp_templates
                .iter()
                .any(|p| p == Purpose::Reminder.as_str())
            && self
                .state
                .consent_for(Channel::Whatsapp, Purpose::Reminder.as_str())
                != ConsentStatus::OptedIn
        {
            if let Some(r) = &mut reply {
                r.push_str(" Can we send your reminder here on WhatsApp? Reply YES.");
                let mut journey = self.state.journey.clone();
                journey.asking = Some(REMINDER_OPT_IN.into());
                self.push(&mut events, ConvEvent::JourneyChanged(journey));
            }
        }
        let mut draft = None;
        let waits = self.state.journey.asking.is_some()
            || self
                .state
                .journey
                .booking
                .as_ref()
                .is_some_and(|b| b.offer.is_some());
        if let (true, Some(question)) = (waits, reply.clone()) {
            if let Some(f) =
                flow.follow_up(0, now, &self.state.captured, &self.state.journey, &question)
            {
                events.extend(self.schedule_follow_up(f, &question, next_id));
            }
        }
        if let Some(text) = reply {
            if phrase_elsewhere {
                // An external responder phrases it after the commit.
                draft = Some(text);
            } else {
                let spec = OutboundSpec::automated(text, Some(msg.channel));
                let (_, more) = self.send_message(spec, now, tenant, next_id);
                events.extend(more);
            }
        }
        if let Some(reason) = turn.escalate {
            events.extend(self.escalate(&reason, Vec::new(), 0, now));
        }
        // A conversation people have (waiting for one, or held) gets no
        // automated call: the person decides how to reach the customer.
        let with_people = self.state.waiting.is_some() || self.state.assigned_agent.is_some();
        if let Some(greeting) = turn.call.filter(|_| !with_people) {
            let via = match msg.channel {
                Channel::Sms => "by text",
                Channel::Whatsapp => "on WhatsApp",
                Channel::Webchat => "in our website chat",
                Channel::Voice => "on the phone",
                Channel::Email => "by email",
            };
            let greeting = greeting.replace("{via}", via);
            // A qualified lead gets a call now; the call says the greeting
            // (the gate decides, as for any business-initiated call).
            let spec = OutboundSpec::automated(greeting, Some(Channel::Voice));
            let (_, more) = self.send_message(spec, now, tenant, next_id);
            events.extend(more);
        }
        (events, draft)
    }

    /// After delivery `reports`: if one says a call the business placed
    /// was not answered, the flow's text about it, over SMS, through the
    /// gate.
    pub fn after_unanswered_call(
        &mut self,
        flow: &crate::flows::engine::Flow,
        reports: &[(u32, ConvEvent)],
        now: Timestamp,
        tenant: &TenantPolicy,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let unanswered = reports.iter().any(|(_, e)| match e {
            ConvEvent::DeliveryUpdated {
                seq,
                delivery: Delivery::Failed,
                ..
            } => self
                .state
                .messages
                .binary_search_by_key(seq, |m| m.seq)
                .ok()
                .map(|i| &self.state.messages[i])
                .is_some_and(|m| m.channel == Channel::Voice && m.author != Author::Customer),
            _ => false,
        });
        let Some(text) = unanswered
            .then(|| flow.unanswered_call_text(&self.state.captured, &self.state.journey))
            .flatten()
        else {
            return Vec::new();
        };
        let spec = OutboundSpec::automated(text, Some(Channel::Sms));
        self.send_message(spec, now, tenant, next_id).1
    }

    /// Schedules cadence step `f` as this conversation's one follow-up.
    fn schedule_follow_up(
        &mut self,
        f: crate::flows::engine::FollowUp,
        question: &str,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let id = next_id();
        // A channel the customer cannot be reached on (a web visitor has no
        // phone) falls back to the one they last used.
        let channel = if self.state.identities.address_for(f.channel).is_some() {
            f.channel
        } else {
            self.channel_or_last_inbound(None)
        };
        let mut events = self.schedule_timer(
            id,
            TimerSpec {
                due: f.due,
                kind: TimerKind::FollowUp,
                text: Some(f.text),
                channel: Some(channel),
            },
        );
        let mut journey = self.state.journey.clone();
        journey.cadence = Some(threadline_protocol::Cadence {
            timer: id,
            step: f.step as u32,
            question: question.chars().take(300).collect(),
        });
        self.push(&mut events, ConvEvent::JourneyChanged(journey));
        events
    }

    /// The customer's time zone: what they told us, else the tenant's.
    pub fn zone(&self, tenant: &TenantPolicy) -> chrono_tz::Tz {
        self.state
            .captured
            .facts
            .get("timezone")
            .and_then(|z| z.parse().ok())
            .unwrap_or(tenant.zone)
    }

    /// Moves the conversation to `journey` (what the flow decided): the
    /// reminders of a booking that changed are cancelled, `reminders` (of
    /// the booking now confirmed) are scheduled and kept in it, and each
    /// change of the appointment is noted in the transcript for the people
    /// who read it.
    fn journey_to(
        &mut self,
        mut journey: threadline_protocol::Journey,
        reminders: Vec<crate::flows::engine::Reminder>,
        ctx: &JourneyChange<'_>,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let before = self.state.journey.booking.clone();
        let kept: Vec<u64> = journey
            .booking
            .as_ref()
            .map(|b| b.reminders.clone())
            .unwrap_or_default();
        for id in before.iter().flat_map(|b| b.reminders.iter()) {
            if !kept.contains(id) {
                if let Some(more) = self.cancel_timer(*id) {
                    events.extend(more);
                }
            }
        }
        for r in reminders {
            let id = next_id();
            // On the channel the customer booked on, in its words if the
            // flow has them.
            let text = ctx
                .channel
                .and_then(|c| r.by_channel.get(&c))
                .unwrap_or(&r.text)
                .replace("{business}", ctx.business);
            events.extend(self.schedule_timer(
                id,
                TimerSpec {
                    due: r.at,
                    kind: TimerKind::Reminder,
                    text: Some(text),
                    channel: ctx.channel,
                },
            ));
            if let Some(b) = &mut journey.booking {
                b.reminders.push(id);
            }
        }
        if let Some(note) =
            booking_note(before.as_ref(), journey.booking.as_ref(), ctx.zone, ctx.by)
        {
            self.note_for_record(&mut events, note, ctx.now);
        }
        if journey != self.state.journey {
            self.push(&mut events, ConvEvent::JourneyChanged(journey));
        }
        events
    }

    /// A keyword opt-out (`keyword`: its events) while an appointment is
    /// booked: the opt-out stands, and the appointment becomes a question
    /// for a person (it stays on the calendar until someone decides).
    pub fn booking_exception(
        &mut self,
        keyword: &[(u32, ConvEvent)],
        now: Timestamp,
        zone: chrono_tz::Tz,
    ) -> Vec<(u32, ConvEvent)> {
        let opted_out = keyword.iter().find_map(|(_, e)| match e {
            ConvEvent::ConsentChanged(c) if c.status == ConsentStatus::OptedOut => {
                Some(c.raw_text.clone().unwrap_or_default())
            }
            _ => None,
        });
        let booked = self
            .state
            .journey
            .booking
            .as_ref()
            .and_then(|b| b.booked().map(|s| (b.service.clone(), s)));
        match (opted_out, booked) {
            (Some(said), Some((service, start))) if self.state.assigned_agent.is_none() => {
                let reason = format!(
                    "opted out ({:?}) with a {service} booked for {}: the opt-out stands; decide whether the appointment stays",
                    said.trim(),
                    crate::flows::engine::spoken(start, zone)
                );
                self.escalate(&reason, Vec::new(), 0, now)
            }
            _ => Vec::new(),
        }
    }

    /// The business says how a booked appointment went (`attended` or
    /// `no_show`, once its time has come) or cancels it (`cancelled`, which
    /// frees its time): a note in the transcript, and the booking is over
    /// (the customer can book again).
    pub fn booking_outcome(
        &mut self,
        outcome: BookingOutcome,
        now: Timestamp,
        zone: chrono_tz::Tz,
        cal: &mut dyn crate::flows::engine::Calendar,
    ) -> Result<Vec<(u32, ConvEvent)>, BookingOutcomeError> {
        let booking = self
            .state
            .journey
            .booking
            .clone()
            .ok_or(BookingOutcomeError::NoBooking)?;
        let booked = booking.booked().ok_or(BookingOutcomeError::NoBooking)?;
        if now.0 < booked.0 && outcome != BookingOutcome::Cancelled {
            return Err(BookingOutcomeError::NotYet(booked));
        }
        let mut journey = self.state.journey.clone();
        journey.booking = Some(threadline_protocol::Booking {
            status: match outcome {
                BookingOutcome::Attended => threadline_protocol::BookingStatus::Attended,
                BookingOutcome::NoShow => threadline_protocol::BookingStatus::NoShow,
                BookingOutcome::Cancelled => threadline_protocol::BookingStatus::Cancelled,
            },
            offer: None,
            reminders: Vec::new(),
            ..booking
        });
        if outcome == BookingOutcome::Cancelled {
            cal.release(booked);
        }
        let ctx = JourneyChange {
            now,
            zone,
            channel: None,
            business: "",
            by: "the business",
        };
        Ok(self.journey_to(journey, Vec::new(), &ctx, &mut || 0))
    }

    /// Records free facts about the contact (a `ContactUpdated` with only
    /// facts).
    fn note_facts(&mut self, events: &mut Vec<(u32, ConvEvent)>, facts: BTreeMap<String, String>) {
        self.push(
            events,
            ConvEvent::ContactUpdated {
                name: None,
                timezone: None,
                region: None,
                email: None,
                facts,
            },
        );
    }

    /// Cancels the pending follow-up, if any (the customer answered).
    pub fn stop_cadence(&mut self) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let Some(id) = self.state.journey.cadence.as_ref().map(|c| c.timer) else {
            return events;
        };
        if let Some(more) = self.cancel_timer(id) {
            events.extend(more);
        }
        self.end_cadence(&mut events);
        events
    }

    fn end_cadence(&mut self, events: &mut Vec<(u32, ConvEvent)>) {
        let mut journey = self.state.journey.clone();
        journey.cadence = None;
        self.push(events, ConvEvent::JourneyChanged(journey));
    }

    /// After follow-up timer `id` fired: the next step, if the last one
    /// went out (a blocked one, an opt-out say, ends the cadence).
    pub fn cadence_next(
        &mut self,
        flow: &crate::flows::engine::Flow,
        id: u64,
        now: Timestamp,
        next_id: &mut dyn FnMut() -> u64,
    ) -> Vec<(u32, ConvEvent)> {
        let Some(cadence) = self.state.journey.cadence.clone().filter(|c| c.timer == id) else {
            return Vec::new();
        };
        let step = cadence.step as usize;
        let question = cadence.question;
        let went_out = self.state.messages.last().is_some_and(|m| {
            m.direction == Direction::Outbound
                && !matches!(m.delivery, Delivery::Blocked | Delivery::Internal)
        });
        // An opt-out on any channel ends it; a step its channel could not
        // carry (a closed WhatsApp window, say) hands over to the next one
        // at once: the customer has already waited that long.
        let opted_out = Channel::ALL.iter().any(|c| {
            self.state.consent_for(*c, Purpose::Conversational.as_str()) == ConsentStatus::OptedOut
        });
        let next = flow
            .follow_up(
                step + 1,
                now,
                &self.state.captured,
                &self.state.journey,
                &question,
            )
            .filter(|_| !opted_out)
            .map(|mut f| {
                if !went_out {
                    f.due = now;
                }
                f
            });
        match next {
            Some(f) => self.schedule_follow_up(f, &question, next_id),
            None => {
                let mut events = Vec::new();
                self.end_cadence(&mut events);
                events
            }
        }
    }

    /// What an external responder gets to phrase a reply: the persona,
    /// what is known, and the last messages.
    pub fn responder_request(
        &self,
        persona: &str,
        draft: String,
    ) -> crate::flows::ResponderRequest {
        let c = &self.state.captured;
        let mut facts: Vec<(String, String)> = Vec::new();
        if let Some(n) = &c.name {
            facts.push(("name".into(), n.clone()));
        }
        if let Some(i) = &c.intent {
            facts.push(("intent".into(), i.clone()));
        }
        for (k, v) in c.slots.iter().chain(c.facts.iter()) {
            facts.push((k.clone(), v.clone()));
        }
        let transcript = self
            .state
            .messages
            .iter()
            .rev()
            .take(12)
            .rev()
            .map(|m| (m.author.label(), m.text.clone()))
            .collect();
        crate::flows::ResponderRequest {
            tenant: self.state.tenant.clone(),
            persona: persona.to_owned(),
            facts,
            transcript,
            draft,
        }
    }

    /// Asks for a person (idempotent while a request is open or an agent
    /// holds the conversation).
    pub fn escalate(
        &mut self,
        reason: &str,
        skills: Vec<String>,
        priority: i32,
        now: Timestamp,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if self.state.assigned_agent.is_none() {
            // Why, for the person who takes it (and the business's view).
            self.note_for_record(&mut events, format!("[handed to a person: {reason}]"), now);
            self.push(
                &mut events,
                ConvEvent::Escalated {
                    reason: reason.into(),
                    skills,
                    priority,
                    at: now,
                },
            );
        }
        events
    }

    /// Who holds the conversation now.
    pub fn assign(&mut self, agent: Option<String>, now: Timestamp) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if self.state.assigned_agent != agent {
            let taken = agent.is_some();
            self.push(&mut events, ConvEvent::AgentAssigned { agent, at: now });
            // A qualified lead handed to a person has met the business.
            let j = &self.state.journey;
            if taken && j.handoff.as_deref() == Some("qualified") && !j.lead_met {
                let mut journey = j.clone();
                journey.lead_met = true;
                self.push(&mut events, ConvEvent::JourneyChanged(journey));
            }
        }
        events
    }

    /// A note for the record (a transfer note): a system message.
    pub fn system_note(&mut self, text: String, now: Timestamp) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        self.note_for_record(&mut events, text, now);
        events
    }

    /// Appends a system message on the customer's current channel; it is
    /// a record, not something sent.
    fn note_for_record(
        &mut self,
        events: &mut Vec<(u32, ConvEvent)>,
        text: String,
        now: Timestamp,
    ) {
        let channel = self.channel_or_last_inbound(None);
        self.outbound(
            events,
            channel,
            Author::System,
            text,
            now,
            now,
            Delivery::Internal,
        );
    }

    /// An agent closes the conversation with a disposition.
    pub fn close_by_agent(
        &mut self,
        agent: &str,
        disposition: &str,
        now: Timestamp,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        self.note_for_record(
            &mut events,
            format!("[closed by agent:{agent}: {disposition}]"),
            now,
        );
        events.extend(self.assign(None, now));
        self.push(
            &mut events,
            ConvEvent::StatusChanged {
                status: Status::Closed,
                at: now,
            },
        );
        events
    }

    /// Records addresses of this customer that became known (only what is
    /// new: no event when nothing changes).
    pub fn link_identity(&mut self, ids: &Identities) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        let mine = &self.state.identities;
        let new = Identities {
            phone: ids.phone.clone().filter(|p| mine.phone.as_ref() != Some(p)),
            whatsapp: ids
                .whatsapp
                .clone()
                .filter(|p| mine.whatsapp.as_ref() != Some(p)),
            visitor: ids
                .visitor
                .clone()
                .filter(|p| mine.visitor.as_ref() != Some(p)),
            email: ids.email.clone().filter(|p| mine.email.as_ref() != Some(p)),
        };
        if new != Identities::default() {
            self.push(&mut events, ConvEvent::IdentityLinked(new));
        }
        events
    }

    /// Takes over the messages of another conversation of the same customer
    /// (a web-chat visitor who gave their phone number), in their original
    /// order and times. Idempotent: a message already taken over is skipped.
    pub fn import(
        &mut self,
        from: ConversationId,
        messages: &[Message],
        now: Timestamp,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        for m in messages {
            let key = m
                .provider_message_id
                .clone()
                .unwrap_or_else(|| format!("import/{}/{}", from.0, m.seq));
            if self.seen(&key).is_some() {
                continue;
            }
            let seq = self.state.next_seq();
            let mut copy = m.clone();
            copy.seq = seq;
            copy.recorded_at = now;
            copy.provider_message_id = Some(key);
            if copy.delivery == Delivery::Queued {
                // Its original conversation's sender delivers it.
                copy.delivery = Delivery::Sent;
            }
            self.push(&mut events, ConvEvent::MessageAppended(copy));
        }
        events
    }

    /// What another conversation of this contact learned, when it is
    /// merged into this one: its name if this one has none, facts this one
    /// lacks, its slots and intent (the more recent talk: an unfinished
    /// journey goes on here), and the higher score.
    pub fn adopt_captured(
        &mut self,
        from: &threadline_protocol::Captured,
        journey: &threadline_protocol::Journey,
    ) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if let Some(n) = &from.name {
            events.extend(self.note_profile_name(n));
        }
        let facts: BTreeMap<String, String> = from
            .facts
            .iter()
            .filter(|(k, _)| !self.state.captured.facts.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !facts.is_empty() {
            self.note_facts(&mut events, facts);
        }
        // (Not the other conversation's journey: its timers and its
        // calendar holds are its own.)
        let slots: BTreeMap<String, String> = from
            .slots
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let score = from
            .score
            .filter(|s| self.state.captured.score.is_none_or(|mine| *s > mine));
        if !slots.is_empty() || from.intent.is_some() || score.is_some() {
            self.push(
                &mut events,
                ConvEvent::Understood {
                    intent: from.intent.clone(),
                    slots,
                    score,
                },
            );
        }
        // The journey under way goes on here; the other's booking and
        // follow-up stay its own (their holds and timers are its).
        let mut mine = self.state.journey.clone();
        if mine.active.is_none() && journey.active.is_some() {
            mine.active.clone_from(&journey.active);
            mine.asking.clone_from(&journey.asking);
        }
        if mine.handoff.is_none() {
            mine.handoff.clone_from(&journey.handoff);
        }
        mine.lead_met |= journey.lead_met;
        if mine != self.state.journey {
            self.push(&mut events, ConvEvent::JourneyChanged(mine));
        }
        events
    }

    /// Closes this conversation because another one took it over.
    pub fn close_merged(&mut self, into: ConversationId, now: Timestamp) -> Vec<(u32, ConvEvent)> {
        let mut events = Vec::new();
        if self.state.status == Status::Closed {
            return events;
        }
        self.note_for_record(
            &mut events,
            format!("[continued in conversation {into}]"),
            now,
        );
        self.push(
            &mut events,
            ConvEvent::StatusChanged {
                status: Status::Closed,
                at: now,
            },
        );
        events
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
            TimerKind::FollowUp
                if self.channel_or_last_inbound(timer.channel) == Channel::Voice
                    && (self.state.waiting.is_some() || self.state.assigned_agent.is_some()) =>
            {
                // The cadence's call, while people have the conversation:
                // not placed (they decide how to reach the customer).
                self.push(&mut events, ConvEvent::TimerFired { id, at: now });
            }
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
                let decision = self.gate(channel, purpose, purpose.as_str(), at, tenant, false);
                self.record_decision(&mut events, channel, purpose, &decision, &text, at);
                match decision {
                    Decision::Send { .. } => {
                        let seq = self.state.next_seq();
                        self.outbound(
                            &mut events,
                            channel,
                            Author::Bot,
                            text,
                            at,
                            now,
                            tenant.delivery_for(channel),
                        );
                        self.push(
                            &mut events,
                            ConvEvent::SubjectNoted {
                                seq,
                                subject: purpose.as_str().to_owned(),
                            },
                        );
                    }
                    Decision::Block { reason } => {
                        // A reminder its channel cannot carry goes on the
                        // next channel the gate allows; if none does, the
                        // business is told (never silently dropped).
                        let fallback = (purpose == Purpose::Reminder)
                            .then(|| {
                                [Channel::Sms, Channel::Whatsapp, Channel::Webchat]
                                    .into_iter()
                                    .filter(|c| {
                                        *c != channel
                                            && self.state.identities.address_for(*c).is_some()
                                    })
                                    .find_map(|c| {
                                        let d = self.gate(
                                            c,
                                            purpose,
                                            purpose.as_str(),
                                            at,
                                            tenant,
                                            false,
                                        );
                                        matches!(d, Decision::Send { .. }).then_some((c, d))
                                    })
                            })
                            .flatten();
                        self.outbound(
                            &mut events,
                            channel,
                            Author::Bot,
                            text.clone(),
                            at,
                            now,
                            Delivery::Blocked,
                        );
                        match fallback {
                            Some((c, d)) => {
                                self.record_decision(&mut events, c, purpose, &d, &text, at);
                                let seq = self.state.next_seq();
                                self.outbound(
                                    &mut events,
                                    c,
                                    Author::Bot,
                                    text,
                                    at,
                                    now,
                                    tenant.delivery_for(c),
                                );
                                self.push(
                                    &mut events,
                                    ConvEvent::SubjectNoted {
                                        seq,
                                        subject: purpose.as_str().to_owned(),
                                    },
                                );
                            }
                            None if purpose == Purpose::Reminder
                                && self.state.assigned_agent.is_none() =>
                            {
                                let why = format!(
                                    "an appointment reminder could not go out on any channel ({reason}): tell the customer another way"
                                );
                                events.extend(self.escalate(&why, Vec::new(), 0, now));
                            }
                            None => {}
                        }
                    }
                    // Held, not dropped: the same message waits as a new timer.
                    Decision::Defer { until, rule } => {
                        // A booking's reminder held past the appointment
                        // (less than half an hour before it) is useless:
                        // it is noted, not sent.
                        let mine = self
                            .state
                            .journey
                            .booking
                            .as_ref()
                            .filter(|b| b.reminders.contains(&id))
                            .cloned();
                        let start = mine.as_ref().and_then(|b| b.booked());
                        if let Some(start) = start.filter(|s| until.0 > s.0 - 30 * 60_000) {
                            let zone = self.zone(tenant);
                            self.note_for_record(
                                &mut events,
                                format!(
                                    "[reminder not sent: {rule} held it until {}, too close to the appointment {}]",
                                    crate::flows::engine::spoken(until, zone),
                                    crate::flows::engine::spoken(start, zone)
                                ),
                                now,
                            );
                        } else {
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
                            // Still what the journey held it as (a
                            // booking's reminder, the cadence's follow-up):
                            // a move, a cancel or an answer cancels it too.
                            let mut journey = self.state.journey.clone();
                            if let Some(b) = &mut journey.booking {
                                for r in b.reminders.iter_mut().filter(|r| **r == id) {
                                    *r = new_id;
                                }
                            }
                            if let Some(c) = journey.cadence.as_mut().filter(|c| c.timer == id) {
                                c.timer = new_id;
                            }
                            if journey != self.state.journey {
                                self.push(&mut events, ConvEvent::JourneyChanged(journey));
                            }
                        }
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

/// How a change of the appointment reads in the transcript (an internal
/// note for agents and the business; customers are told in the reply).
fn booking_note(
    before: Option<&threadline_protocol::Booking>,
    after: Option<&threadline_protocol::Booking>,
    zone: chrono_tz::Tz,
    by: &str,
) -> Option<String> {
    use threadline_protocol::BookingStatus as S;
    let at = |t: Option<Timestamp>| {
        t.map(|t| crate::flows::engine::spoken(t, zone))
            .unwrap_or_default()
    };
    let (b0, b1) = (before.map(|b| b.status), after.map(|b| b.status));
    let service = after.or(before).map(|b| b.service.as_str()).unwrap_or("");
    let (start0, start1) = (before.and_then(|b| b.start), after.and_then(|b| b.start));
    match (b0, b1) {
        (Some(S::Rescheduling), Some(S::Confirmed)) if start0 == start1 => Some(format!(
            "[reschedule dropped: {service} stays {}]",
            at(start1)
        )),
        (Some(S::Rescheduling), Some(S::Confirmed)) => Some(format!(
            "[booking moved: {service} from {} to {}]",
            at(start0),
            at(start1)
        )),
        (x, Some(S::Confirmed)) if x != Some(S::Confirmed) || start0 != start1 => {
            Some(format!("[booking confirmed: {service} {}]", at(start1)))
        }
        (Some(S::Confirmed), Some(S::Rescheduling)) => Some(format!(
            "[reschedule asked: {service} {} stays booked until a new time is confirmed]",
            at(start0)
        )),
        (Some(x), Some(S::Cancelled)) if x != S::Cancelled => Some(format!(
            "[booking cancelled by {by}: {service} {}]",
            at(start0)
        )),
        (x, Some(S::Attended)) if x != Some(S::Attended) => {
            Some(format!("[attended: appointment {}]", at(start1)))
        }
        (x, Some(S::NoShow)) if x != Some(S::NoShow) => {
            Some(format!("[no-show: appointment {}]", at(start1)))
        }
        _ => None,
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
}
