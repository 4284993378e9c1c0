//! The flow engine: a tenant's flow file compiled into intents, journeys
//! (slot filling) and escalation rules, and one pure function per customer
//! turn (`Flow::turn`): given what the customer told us (`Captured`) and
//! where the conversation stands (the typed `Journey`), it returns the
//! reply, the slots learned, and the journey after the message. Booking
//! slots are held through a `Calendar` the caller provides (in-memory and
//! atomic; the caller makes it durable).
//!
//! # The appointment's life
//!
//! A booking journey fills its slots, then offers a time (held until
//! `hold_minutes`): yes or C books it, another time or R offers again, no
//! lets it go. A booked appointment is moved (`nlu::appointment_ask`:
//! "move", "push it back", "instead", R), cancelled ("cancel my
//! appointment", "I can't make it") or asked about ("when is my
//! appointment?") in plain words. A move keeps the booked time until the
//! new one is confirmed (`confirm` then gives the old one back), never
//! offers the booked time again, and is dropped with no or "never mind".
//! Confirming returns the reminders of the booking's service (`services`,
//! else the journey's) with their texts per channel; the caller schedules
//! them and keeps their timer ids in the booking, so a moved or cancelled
//! booking cancels them. `flows/mod.rs`: the shared calendar
//! (`SharedCalendar`): holds are atomic in a DashMap across conversations,
//! and each change is a `calendar` row committed with the conversation's
//! events (reloaded at start); slots the business blocks over the API are
//! rows held by `BLOCKED`. In a cluster the node's map is, for a tenant
//! whose calendar home is elsewhere, a copy refreshed from the home
//! (`cluster/calendar.rs`). A merge of conversations carries the captured
//! facts and the journey under way, not the merged conversation's booking.

use std::collections::BTreeMap;

use chrono::NaiveTime;
use serde::Deserialize;
use threadline_protocol::{Captured, Journey, Timestamp};

use super::nlu::IntentModel;

mod booking;
mod compile;
mod keypad;
mod slots;
mod turn;

use compile::{duration_ms, fill};
pub use keypad::SOONEST;
use slots::{keeping, slot_time_text};
pub use slots::{slot_time, spoken, spoken_time};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    pub persona: Persona,
    #[serde(default)]
    pub intents: Vec<IntentSpec>,
    #[serde(default)]
    pub journeys: BTreeMap<String, JourneySpec>,
    #[serde(default)]
    pub escalation: EscalationSpec,
    pub calendar: Option<CalendarSpec>,
    /// Said when nothing was understood.
    #[serde(default = "default_fallback")]
    pub fallback: String,
    /// Intent confidence below which a message is not understood.
    #[serde(default = "default_floor")]
    pub min_confidence: f32,
    /// An external responder that phrases the replies (optional).
    pub responder: Option<ResponderSpec>,
    /// Lead scoring: points from what was captured; at the threshold the
    /// lead is handed off.
    pub scoring: Option<ScoringSpec>,
    /// Follow-ups when the customer goes quiet while the bot waits for an
    /// answer: one step at a time, each on its own channel.
    pub cadence: Option<CadenceSpec>,
    /// How the voice assistant listens on calls.
    #[serde(default)]
    pub voice: VoiceSpec,
}

/// How the voice assistant listens (each speech turn's `<Gather>`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VoiceSpec {
    /// The caller's language for speech recognition (BCP-47, "en-US").
    #[serde(default = "default_language")]
    pub language: String,
    /// Words and phrases callers of this business say (services, names):
    /// they help recognition. At most 100, each at most 100 characters.
    #[serde(default)]
    pub hints: Vec<String>,
    /// Seconds of silence before a turn counts as silent (1 to 30).
    #[serde(default = "default_listen_seconds")]
    pub timeout_seconds: u32,
}

impl Default for VoiceSpec {
    fn default() -> VoiceSpec {
        VoiceSpec {
            language: default_language(),
            hints: Vec::new(),
            timeout_seconds: default_listen_seconds(),
        }
    }
}

fn default_language() -> String {
    "en-US".into()
}
fn default_listen_seconds() -> u32 {
    6
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CadenceSpec {
    pub steps: Vec<CadenceStep>,
    /// Texted when a call the business placed goes unanswered (`{name}`,
    /// `{persona}`, slots).
    pub unanswered_call: Option<String>,
    /// Left on an answering machine after the call's message (`{name}`,
    /// `{persona}`, slots; default "Sorry we missed you."). The node adds
    /// how the business follows up: by text when `unanswered_call` will go
    /// out, else a request to call back.
    pub voicemail: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CadenceStep {
    /// Quiet time before this step: "2h", "1d".
    pub after: String,
    /// sms, voice (a call that says `text`), whatsapp, webchat.
    pub channel: String,
    /// What it says (`{name}`, `{persona}`, slots, `{question}`: the bot's
    /// last question).
    pub text: String,
}

/// A follow-up the cadence schedules.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub step: usize,
    pub due: Timestamp,
    pub channel: threadline_protocol::Channel,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringSpec {
    pub threshold: u32,
    /// `agent`: to the agent pool; `call`: a call to the customer now.
    #[serde(default)]
    pub handoff: Handoff,
    /// What the call says first (with `{name}`, `{persona}`, slots, and
    /// `{via}`: where the customer wrote, "by text", "in our website chat").
    #[serde(default = "default_call_greeting")]
    pub call_greeting: String,
    pub rules: Vec<ScoreRule>,
}

fn default_call_greeting() -> String {
    "Hi {name}, this is {persona} following up on what you told us {via}. Is now a good time to talk?".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handoff {
    #[default]
    Agent,
    Call,
}

/// Points when a slot (or the intent) matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRule {
    /// A slot name, or `intent`.
    pub slot: String,
    /// Any of these words or phrases in the value (empty: any value).
    #[serde(default)]
    pub contains: Vec<String>,
    pub points: u32,
}

impl ScoringSpec {
    /// The score of what is known.
    pub fn score(&self, intent: Option<&str>, slots: &BTreeMap<String, String>) -> u32 {
        self.rules
            .iter()
            .filter(|r| {
                let value = if r.slot == "intent" {
                    intent.map(str::to_owned)
                } else {
                    slots.get(&r.slot).filter(|v| !v.is_empty()).cloned()
                };
                value.is_some_and(|v| {
                    let v = crate::consent::keywords::normalize(&v);
                    r.contains.is_empty()
                        || r.contains.iter().any(|c| {
                            let c = crate::consent::keywords::normalize(c);
                            !c.is_empty() && v.windows(c.len()).any(|w| w == c.as_slice())
                        })
                })
            })
            .map(|r| r.points)
            .sum()
    }
}

/// An OpenAI-compatible chat-completions endpoint. It phrases each reply
/// from the persona, the captured facts, the recent transcript and the
/// built-in flow's draft; past `timeout_ms` (or on any error) the draft
/// goes out instead, so the customer never waits on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponderSpec {
    /// The chat-completions URL (`.../v1/chat/completions`).
    pub url: String,
    pub model: String,
    /// The bearer key; `api_key_env` names an environment variable instead.
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default = "default_responder_timeout")]
    pub timeout_ms: u64,
}

fn default_responder_timeout() -> u64 {
    2000
}

fn default_fallback() -> String {
    "Sorry, I didn't quite get that. Could you say it another way?".into()
}
fn default_floor() -> f32 {
    0.3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentSpec {
    pub name: String,
    #[serde(default)]
    pub examples: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    /// A direct answer.
    pub reply: Option<String>,
    /// The answer instead while the customer has an upcoming booking
    /// (`{when}`: its time in their zone), so an answer that ends by
    /// offering to book ("Want me to book you in?") is not said to someone
    /// already booked.
    pub reply_when_booked: Option<String>,
    /// What the keypad menu of a call calls it ("For {label}, press N";
    /// default: the intent's name).
    pub label: Option<String>,
    /// The intent a yes right after this reply starts: the reply offers
    /// it ("... Want me to book you in?" → `on_yes = "book"`); a no is
    /// answered, anything else is read as usual.
    pub on_yes: Option<String>,
    /// Or a journey to start.
    pub journey: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneySpec {
    #[serde(default)]
    pub slots: Vec<SlotSpec>,
    /// Said when every slot is filled (and, for a booking, the slot held).
    pub done: String,
    /// The journey books a calendar slot from its `datetime` slot.
    #[serde(default)]
    pub booking: bool,
    /// Reminders before a confirmed booking: "24h", "2h", "30m".
    #[serde(default)]
    pub reminders: Vec<String>,
    /// What a reminder says: `{name}`, `{service}`, `{when}` (in the
    /// customer's zone), `{business}`, `{persona}`. Default: "Reminder: your
    /// {service} is {when}. Reply C to confirm or R to reschedule."
    #[serde(default)]
    pub reminder_text: Option<String>,
    /// The reminder's text on one channel (`sms`, `whatsapp`, `webchat`).
    #[serde(default)]
    pub reminder_text_by_channel: BTreeMap<String, String>,
    /// Per service (a value of the journey's `service` slot): its own
    /// lead times and texts, instead of the journey's.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// When complete, hand the conversation to a person (a qualified lead).
    #[serde(default)]
    pub handoff: bool,
    /// Follow-ups while this journey waits for the customer (instead of
    /// the flow's `[cadence]`).
    #[serde(default)]
    pub cadence: Option<CadenceSpec>,
}

/// One service's own reminders.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub reminders: Option<Vec<String>>,
    pub reminder_text: Option<String>,
    #[serde(default)]
    pub reminder_text_by_channel: BTreeMap<String, String>,
}

/// The reminders a confirmed booking gets, compiled.
#[derive(Debug, Clone, Default)]
struct ReminderPlan {
    /// Milliseconds before the appointment.
    leads: Vec<i64>,
    text: String,
    by_channel: BTreeMap<threadline_protocol::Channel, String>,
}

const DEFAULT_REMINDER: &str =
    "Reminder: your {service} is {when}. Reply C to confirm or R to reschedule.";

/// A reminder to schedule for a confirmed booking: its time and what it
/// says (on a given channel, if the flow says so). `{business}` is left for
/// the caller, who knows the tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reminder {
    pub at: Timestamp,
    pub text: String,
    pub by_channel: BTreeMap<threadline_protocol::Channel, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    #[default]
    Text,
    Datetime,
    Name,
    Email,
    /// A phone number, stored in E.164.
    Phone,
    Choice,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    pub name: String,
    pub ask: String,
    #[serde(default)]
    pub kind: SlotKind,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSpec {
    /// Words or phrases that hand the conversation to a person at once.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Messages not understood in a row before a person takes over.
    #[serde(default = "default_misunderstood")]
    pub max_misunderstood: u32,
}

impl Default for EscalationSpec {
    fn default() -> Self {
        EscalationSpec {
            keywords: Vec::new(),
            max_misunderstood: default_misunderstood(),
        }
    }
}

fn default_misunderstood() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    /// Open days: mon, tue, ...
    pub days: Vec<String>,
    /// "09:00"
    pub open: String,
    /// "17:00" (the last slot ends by then)
    pub close: String,
    pub slot_minutes: u32,
    /// How long a slot offered to a customer is held for them.
    #[serde(default = "default_hold_minutes")]
    pub hold_minutes: u32,
}

fn default_hold_minutes() -> u32 {
    15
}

/// A compiled flow.
#[derive(Debug, Clone)]
pub struct Flow {
    pub spec: FlowSpec,
    intents: Vec<IntentModel>,
    escalate_words: Vec<Vec<String>>,
    open_days: Vec<chrono::Weekday>,
    open: NaiveTime,
    close: NaiveTime,
    /// By (journey, service); the service "" is the journey's own.
    reminders: BTreeMap<(String, String), ReminderPlan>,
}

impl Flow {
    pub fn persona(&self) -> &str {
        &self.spec.persona.name
    }

    /// How the voice assistant listens on this flow's calls.
    pub fn voice(&self) -> &VoiceSpec {
        &self.spec.voice
    }

    /// The cadence that applies now: the journey's own, else the flow's.
    fn cadence_for(&self, journey: &Journey) -> Option<&CadenceSpec> {
        journey
            .active
            .as_ref()
            .and_then(|j| self.spec.journeys.get(j))
            .and_then(|j| j.cadence.as_ref())
            .or(self.spec.cadence.as_ref())
    }

    /// The text after an unanswered outbound call, if the flow has one.
    pub fn unanswered_call_text(&self, captured: &Captured, journey: &Journey) -> Option<String> {
        let t = self.cadence_for(journey)?.unanswered_call.as_ref()?;
        Some(fill(t, captured, &BTreeMap::new(), self.persona()))
    }

    /// What a call the business placed leaves on an answering machine, if
    /// the flow words it.
    pub fn voicemail_text(&self, captured: &Captured, journey: &Journey) -> Option<String> {
        let t = self.cadence_for(journey)?.voicemail.as_ref()?;
        Some(fill(t, captured, &BTreeMap::new(), self.persona()))
    }

    /// Cadence step `step` after quiet from `now`, given what is known and
    /// the bot's last question.
    pub fn follow_up(
        &self,
        step: usize,
        now: Timestamp,
        captured: &Captured,
        journey: &Journey,
        question: &str,
    ) -> Option<FollowUp> {
        let st = self.cadence_for(journey)?.steps.get(step)?;
        let mut extra = BTreeMap::new();
        extra.insert("question".to_owned(), question.to_owned());
        Some(FollowUp {
            step,
            due: now.saturating_add_millis(duration_ms(&st.after)?),
            channel: threadline_protocol::Channel::parse(&st.channel)?,
            text: fill(&st.text, captured, &extra, self.persona()),
        })
    }
}

/// Slot holds for bookings, kept by the caller (atomic across customers).
pub trait Calendar {
    /// Holds `start` for this conversation until `until`; false if another
    /// customer holds or booked it.
    fn hold(&mut self, start: Timestamp, until: Timestamp) -> bool;
    /// Gives back what this conversation held at `start`.
    fn release(&mut self, start: Timestamp);
    /// Turns this conversation's hold at `start` into a booking.
    fn book(&mut self, start: Timestamp) -> bool;
    /// Whether `hold(start)` would succeed now (nothing is held).
    fn free(&self, start: Timestamp) -> bool;
}

/// What one customer turn produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turn {
    pub reply: Option<String>,
    pub intent: Option<String>,
    /// Slot changes (an empty value removes the slot).
    pub slots: BTreeMap<String, String>,
    /// Hand the conversation to a person, for this reason.
    pub escalate: Option<String>,
    /// Reminders to schedule.
    pub reminders: Vec<Reminder>,
    /// The lead score, when the flow scores and it changed.
    pub score: Option<u32>,
    /// Call the customer now, saying this (a qualified lead, `handoff = "call"`).
    pub call: Option<String>,
    /// Where the conversation stands after this message.
    pub journey: Journey,
    /// `escalate` is only the journey's own hand-off on completion
    /// (`handoff = true`), which a lead qualified on the same turn replaces.
    pub(crate) completion_handoff: bool,
}

#[cfg(test)]
mod tests;
