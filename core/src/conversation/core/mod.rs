//! The conversation as a pure state machine (sans-IO): it takes a command
//! and the current time and returns the events to persist. No clock, no
//! storage, no actor runtime: the shell in `actor.rs` does those.

use std::collections::HashMap;

use crate::consent::keywords::Keywords;
use crate::consent::policy::{self, Purpose, Rule};
use threadline_protocol::{
    Channel, ConvEvent, ConversationId, ConversationState, Delivery, Identities, MessageId,
    TimerKind, Timestamp,
};

mod agents;
mod flow;
mod gate;
mod identity;
mod inbound;
mod timers;
mod voice;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    // Longest phrasings first: "Reply C to confirm" is part of several.
    const EAR: [(&str, &str); 11] = [
        (
            "Reply C to confirm or R for another time",
            "Say yes or press 1 to confirm, or tell me another time",
        ),
        (
            "Reply C to confirm or R to reschedule",
            "Say yes or press 1 to confirm, or tell me another time",
        ),
        ("Reply C to confirm", "Say yes or press 1 to confirm"),
        ("reply C to confirm", "say yes or press 1 to confirm"),
        (
            "reply C to move it there",
            "say yes or press 1 to move it there",
        ),
        (
            "Reply R any time to reschedule",
            "If you need another time, just call or text us",
        ),
        ("Reply R to reschedule", "Say reschedule to move it"),
        ("Reply YES", "Say yes"),
        ("Text us any time", "Call or text us any time"),
        (
            "Anything else, just text us.",
            "Is there anything else I can help with?",
        ),
        ("just text us", "just call or text us"),
    ];
    let mut out = text.to_owned();
    for (written, spoken) in EAR {
        if out.contains(written) {
            out = out.replace(written, spoken);
        }
    }
    out
}

/// What a provider reported about an outbound message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryReport {
    pub delivery: Delivery,
    pub provider_message_id: Option<String>,
    pub error: Option<String>,
    /// The provider refused because the recipient opted out (Twilio 21610).
    pub opted_out: bool,
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

    /// The channel the customer last wrote or called on (SMS if none).
    pub fn last_inbound_channel(&self) -> Channel {
        self.channel_or_last_inbound(None)
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

    fn push(&mut self, events: &mut Vec<(u32, ConvEvent)>, event: ConvEvent) {
        let seq = self.state.next_seq();
        self.apply(seq, &event);
        events.push((seq, event));
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
mod tests;
