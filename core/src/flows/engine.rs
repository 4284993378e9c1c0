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

use chrono::{Datelike, Duration, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use serde::Deserialize;
use threadline_protocol::{Booking, BookingStatus, Captured, Journey, Offer, Timestamp};

use super::nlu::{self, AppointmentAsk, IntentModel, SmallTalk};

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CadenceSpec {
    pub steps: Vec<CadenceStep>,
    /// Texted when a call the business placed goes unanswered (`{name}`,
    /// `{persona}`, slots).
    pub unanswered_call: Option<String>,
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

fn duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    Some(match unit {
        "m" | "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    })
}

impl Flow {
    /// Checks a flow file; the error names what is wrong.
    pub fn compile(spec: FlowSpec) -> Result<Flow, String> {
        if spec.persona.name.trim().is_empty() {
            return Err("persona.name must not be empty".into());
        }
        check_placeholders(&spec)?;
        for i in &spec.intents {
            match (&i.reply, &i.journey) {
                (None, None) => {
                    return Err(format!(
                        "intent {:?} needs a `reply` or a `journey`",
                        i.name
                    ))
                }
                (_, Some(j)) if !spec.journeys.contains_key(j) => {
                    return Err(format!(
                        "intent {:?} names an unknown journey {j:?}",
                        i.name
                    ))
                }
                _ => {}
            }
            if i.examples.is_empty() && i.keywords.is_empty() {
                return Err(format!(
                    "intent {:?} needs `examples` or `keywords`",
                    i.name
                ));
            }
        }
        let cadences =
            spec.cadence
                .iter()
                .map(|c| ("cadence".to_owned(), c))
                .chain(spec.journeys.iter().filter_map(|(n, j)| {
                    Some((format!("journeys.{n}.cadence"), j.cadence.as_ref()?))
                }));
        for (key, c) in cadences {
            for (i, st) in c.steps.iter().enumerate() {
                if duration_ms(&st.after).is_none() {
                    return Err(format!(
                        "{key}.steps[{i}].after: {:?} is not like 2h or 1d",
                        st.after
                    ));
                }
                if threadline_protocol::Channel::parse(&st.channel).is_none() {
                    return Err(format!(
                        "{key}.steps[{i}].channel: {:?} is not sms, voice, whatsapp or webchat",
                        st.channel
                    ));
                }
            }
        }
        if let Some(r) = &spec.responder {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err("responder.url must be an http:// or https:// URL".into());
            }
            if !(50..=30_000).contains(&r.timeout_ms) {
                return Err("responder.timeout_ms must be between 50 and 30000".into());
            }
        }
        let mut reminders = BTreeMap::new();
        for (name, j) in &spec.journeys {
            if j.booking && !j.slots.iter().any(|s| s.kind == SlotKind::Datetime) {
                return Err(format!(
                    "journey {name:?} books, so it needs a `datetime` slot"
                ));
            }
            if j.booking && spec.calendar.is_none() {
                return Err(format!(
                    "journey {name:?} books, so the flow needs a [calendar]"
                ));
            }
            let leads = |list: &[String]| -> Result<Vec<i64>, String> {
                list.iter()
                    .map(|d| {
                        duration_ms(d).ok_or_else(|| {
                            format!("journey {name:?}: reminder {d:?} is not like 24h, 2h or 30m")
                        })
                    })
                    .collect()
            };
            let by_channel = |m: &BTreeMap<String, String>| {
                m.iter()
                    .map(|(c, t)| {
                        threadline_protocol::Channel::parse(c)
                            .map(|c| (c, t.clone()))
                            .ok_or_else(|| {
                                format!("journey {name:?}: reminder_text_by_channel: {c:?} is not a channel")
                            })
                    })
                    .collect::<Result<BTreeMap<_, _>, String>>()
            };
            let base = ReminderPlan {
                leads: leads(&j.reminders)?,
                text: j
                    .reminder_text
                    .clone()
                    .unwrap_or_else(|| DEFAULT_REMINDER.to_owned()),
                by_channel: by_channel(&j.reminder_text_by_channel)?,
            };
            for (service, sv) in &j.services {
                let mut plan = base.clone();
                if let Some(r) = &sv.reminders {
                    plan.leads = leads(r)?;
                }
                if let Some(t) = &sv.reminder_text {
                    plan.text.clone_from(t);
                    plan.by_channel.clear();
                }
                plan.by_channel
                    .extend(by_channel(&sv.reminder_text_by_channel)?);
                reminders.insert((name.clone(), service.clone()), plan);
            }
            reminders.insert((name.clone(), String::new()), base);
            for s in &j.slots {
                if s.kind == SlotKind::Choice && s.options.is_empty() {
                    return Err(format!(
                        "journey {name:?}: slot {:?} is a choice without `options`",
                        s.name
                    ));
                }
            }
        }
        let (mut open_days, mut open, mut close) = (Vec::new(), NaiveTime::MIN, NaiveTime::MIN);
        if let Some(c) = &spec.calendar {
            for d in &c.days {
                open_days.push(
                    d.parse::<chrono::Weekday>()
                        .map_err(|_| format!("calendar.days: {d:?} is not a weekday"))?,
                );
            }
            let t = |s: &str, k: &str| {
                NaiveTime::parse_from_str(s, "%H:%M")
                    .map_err(|_| format!("calendar.{k}: {s:?} is not like 09:00"))
            };
            open = t(&c.open, "open")?;
            close = t(&c.close, "close")?;
            if close <= open || c.slot_minutes == 0 || c.slot_minutes > 24 * 60 {
                return Err("calendar: open before close, slot_minutes between 1 and 1440".into());
            }
        }
        let intents = spec
            .intents
            .iter()
            .map(|i| IntentModel::new(&i.name, &i.examples, &i.keywords))
            .collect();
        let escalate_words = spec
            .escalation
            .keywords
            .iter()
            .map(|k| crate::consent::keywords::normalize(k))
            .filter(|k| !k.is_empty())
            .collect();
        Ok(Flow {
            spec,
            intents,
            escalate_words,
            open_days,
            open,
            close,
            reminders,
        })
    }

    pub fn persona(&self) -> &str {
        &self.spec.persona.name
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
}

/// Every `{placeholder}` a text of the flow uses must be one the engine
/// fills (`name`, `persona`, a slot of the flow; `question` in follow-ups,
/// `via` in call greetings), or it would reach customers literally.
fn check_placeholders(spec: &FlowSpec) -> Result<(), String> {
    let slots: Vec<&str> = spec
        .journeys
        .values()
        .flat_map(|j| j.slots.iter().map(|s| s.name.as_str()))
        .collect();
    let check = |key: String, text: &str, extra: &[&str]| -> Result<(), String> {
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            let word = &after[..close];
            let is_word =
                !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if is_word
                && !["name", "persona"].contains(&word)
                && !slots.contains(&word)
                && !extra.contains(&word)
            {
                let mut known: Vec<&str> = vec!["name", "persona"];
                known.extend(extra.iter().copied());
                known.extend(slots.iter().copied());
                return Err(format!(
                    "{key}: unknown placeholder {{{word}}} (known: {})",
                    known
                        .iter()
                        .map(|k| format!("{{{k}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            rest = &after[close + 1..];
        }
        Ok(())
    };
    check("fallback".into(), &spec.fallback, &[])?;
    for (i, intent) in spec.intents.iter().enumerate() {
        if let Some(r) = &intent.reply {
            check(format!("intents[{i}].reply"), r, &[])?;
        }
    }
    let cadences = spec
        .cadence
        .iter()
        .map(|c| ("cadence".to_owned(), c))
        .chain(
            spec.journeys
                .iter()
                .filter_map(|(n, j)| Some((format!("journeys.{n}.cadence"), j.cadence.as_ref()?))),
        );
    for (key, c) in cadences {
        for (i, st) in c.steps.iter().enumerate() {
            check(format!("{key}.steps[{i}].text"), &st.text, &["question"])?;
        }
        if let Some(t) = &c.unanswered_call {
            check(format!("{key}.unanswered_call"), t, &[])?;
        }
    }
    for (n, j) in &spec.journeys {
        let reminder = ["when", "service", "business"];
        let texts = j
            .reminder_text
            .iter()
            .map(|t| (format!("journeys.{n}.reminder_text"), t))
            .chain(
                j.reminder_text_by_channel
                    .iter()
                    .map(|(c, t)| (format!("journeys.{n}.reminder_text_by_channel.{c}"), t)),
            )
            .chain(j.services.iter().flat_map(|(sv, s)| {
                s.reminder_text
                    .iter()
                    .map(move |t| (format!("journeys.{n}.services.{sv}.reminder_text"), t))
                    .chain(s.reminder_text_by_channel.iter().map(move |(c, t)| {
                        (
                            format!("journeys.{n}.services.{sv}.reminder_text_by_channel.{c}"),
                            t,
                        )
                    }))
            }));
        for (key, t) in texts {
            check(key, t, &reminder)?;
        }
        check(format!("journeys.{n}.done"), &j.done, &[])?;
        for (i, s) in j.slots.iter().enumerate() {
            check(format!("journeys.{n}.slots[{i}].ask"), &s.ask, &[])?;
        }
    }
    if let Some(sc) = &spec.scoring {
        check("scoring.call_greeting".into(), &sc.call_greeting, &["via"])?;
    }
    Ok(())
}

fn fill(
    template: &str,
    captured: &Captured,
    extra: &BTreeMap<String, String>,
    persona: &str,
) -> String {
    let mut out = template.replace("{persona}", persona);
    let name = captured
        .name
        .clone()
        .or_else(|| extra.get("name").cloned())
        .or_else(|| captured.slots.get("name").cloned())
        .filter(|n| !n.is_empty());
    // "Hi {name}," without a name reads "Hi there,"; "Thanks {name}!" reads "Thanks!".
    out = match name {
        Some(n) => out.replace("{name}", &n),
        None => out
            .replace("Hi {name}", "Hi there")
            .replace(" {name}", "")
            .replace("{name}", ""),
    };
    // What the caller says (a time as spoken, say) before what was captured.
    for (k, v) in extra.iter().chain(captured.slots.iter()) {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// How a slot start reads to the customer: "Tue Mar 10 at 3:00 PM".
pub fn spoken(at: Timestamp, tz: Tz) -> String {
    tz.timestamp_millis_opt(at.0)
        .single()
        .map(|d| d.format("%a %b %-d at %-I:%M %p").to_string())
        .unwrap_or_default()
}

/// The time of day alone: "3:00 PM".
pub fn spoken_time(at: Timestamp, tz: Tz) -> String {
    tz.timestamp_millis_opt(at.0)
        .single()
        .map(|d| d.format("%-I:%M %p").to_string())
        .unwrap_or_default()
}

impl Flow {
    /// Every bookable slot that starts in [`from`, `to`), local time `tz`
    /// (open days and hours from the flow's `[calendar]`).
    pub fn slot_starts(&self, from: Timestamp, to: Timestamp, tz: Tz) -> Vec<Timestamp> {
        let (Some(c), Some(first), Some(last)) = (
            &self.spec.calendar,
            tz.timestamp_millis_opt(from.0).single(),
            tz.timestamp_millis_opt(to.0).single(),
        ) else {
            return Vec::new();
        };
        let step = Duration::minutes(c.slot_minutes.into());
        let mut out = Vec::new();
        let mut day = first.date_naive();
        while day <= last.date_naive() {
            if self.open_days.contains(&day.weekday()) {
                let mut t = self.open;
                loop {
                    // `NaiveTime` wraps at midnight: `end <= t` is a wrap.
                    let end = t + step;
                    if end <= t || end > self.close {
                        break;
                    }
                    if let Some(at) = tz.from_local_datetime(&day.and_time(t)).earliest() {
                        let at = Timestamp(at.timestamp_millis());
                        if at.0 >= from.0 && at.0 < to.0 {
                            out.push(at);
                        }
                    }
                    t = end;
                }
            }
            let Some(next) = day.succ_opt() else { break };
            day = next;
        }
        out
    }

    /// Is `at` the start of a bookable slot?
    pub fn bookable(&self, at: Timestamp, tz: Tz) -> bool {
        let Some(c) = &self.spec.calendar else {
            return false;
        };
        let Some(local) = tz.timestamp_millis_opt(at.0).single() else {
            return false;
        };
        let t = local.time();
        let minutes = (i64::from(t.num_seconds_from_midnight())
            - i64::from(self.open.num_seconds_from_midnight()))
            / 60;
        // In minutes of the day: a slot must end by closing time (a time
        // of day plus the slot's length would wrap past midnight).
        let ends = i64::from(t.num_seconds_from_midnight()) / 60 + i64::from(c.slot_minutes);
        self.open_days.contains(&local.weekday())
            && t >= self.open
            && ends <= i64::from(self.close.num_seconds_from_midnight()) / 60
            && t.num_seconds_from_midnight() % 60 == 0
            && minutes % i64::from(c.slot_minutes) == 0
    }

    /// The opening nearest `wanted` on its day, later or earlier (later
    /// first at equal distance), held; and the nearest free one on the
    /// other side of `wanted`, if any, as an alternative (not held).
    /// `None` when that day has no opening: the caller searches forward.
    #[allow(clippy::too_many_arguments)]
    fn nearest_free(
        &self,
        wanted: Timestamp,
        tz: Tz,
        now: Timestamp,
        cal: &mut dyn Calendar,
        until: Timestamp,
        exclude: Option<Timestamp>,
    ) -> Option<(Timestamp, Option<Timestamp>)> {
        let c = self.spec.calendar.as_ref()?;
        let step = i64::from(c.slot_minutes) * 60_000;
        let day = tz.timestamp_millis_opt(wanted.0).single()?.date_naive();
        let earliest = now.0 + 60 * 60_000;
        let usable = |at: i64| {
            let ts = Timestamp(at);
            at >= earliest
                && Some(ts) != exclude
                && self.bookable(ts, tz)
                && tz
                    .timestamp_millis_opt(at)
                    .single()
                    .is_some_and(|d| d.date_naive() == day)
        };
        let per_day = 24 * 60 / i64::from(c.slot_minutes).max(1);
        let mut found: Option<(Timestamp, bool)> = None;
        for k in 1..=per_day {
            for (at, later) in [(wanted.0 + k * step, true), (wanted.0 - k * step, false)] {
                if usable(at) && cal.free(Timestamp(at)) && cal.hold(Timestamp(at), until) {
                    found = Some((Timestamp(at), later));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        let (held, later) = found?;
        // The closest free time on the other side, to offer as well.
        let other = (1..=per_day)
            .map(|k| {
                if later {
                    wanted.0 - k * step
                } else {
                    wanted.0 + k * step
                }
            })
            .find(|at| usable(*at) && cal.free(Timestamp(*at)))
            .map(Timestamp);
        Some((held, other))
    }

    /// The first bookable, free slot at or after `from` (two weeks ahead).
    fn next_free(
        &self,
        from: Timestamp,
        tz: Tz,
        now: Timestamp,
        cal: &mut dyn Calendar,
        until: Timestamp,
        exclude: Option<Timestamp>,
    ) -> Option<Timestamp> {
        let c = self.spec.calendar.as_ref()?;
        let step = i64::from(c.slot_minutes) * 60_000;
        let start = from.0.max(now.0 + 60 * 60_000);
        // Align to the slot grid of the day (slots start at `open`).
        let mut at = start - start.rem_euclid(60_000);
        let end = start + 14 * 86_400_000;
        while at < end {
            let ts = Timestamp(at);
            if self.bookable(ts, tz) && Some(ts) != exclude && cal.hold(ts, until) {
                return Some(ts);
            }
            at += if self.bookable(ts, tz) {
                step
            } else {
                60_000 * 15
            };
        }
        None
    }

    /// One customer message, given what the conversation knows and where
    /// it stands. The returned turn carries the journey as it is after
    /// the message (`Turn::journey`).
    pub fn turn(
        &self,
        text: &str,
        captured: &Captured,
        journey: &Journey,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) -> Turn {
        let mut t = Turn {
            journey: journey.clone(),
            ..Turn::default()
        };
        self.understand(&mut t, text, captured, now, tz, cal);
        let Some(scoring) = &self.spec.scoring else {
            return t;
        };
        let mut slots = captured.slots.clone();
        for (k, v) in &t.slots {
            slots.insert(k.clone(), v.clone());
        }
        let intent = t.intent.as_deref().or(captured.intent.as_deref());
        let score = scoring.score(intent, &slots);
        let before = captured.score.map(|s| s as u32);
        if before != Some(score) {
            t.score = Some(score);
        }
        if score >= scoring.threshold && t.journey.handoff.is_none() && t.escalate.is_none() {
            t.journey.handoff = Some("qualified".into());
            match scoring.handoff {
                Handoff::Agent => t.escalate = Some(format!("qualified lead (score {score})")),
                Handoff::Call => {
                    let mut merged = captured.clone();
                    merged.slots = slots;
                    t.call = Some(fill(
                        &scoring.call_greeting,
                        &merged,
                        &BTreeMap::new(),
                        self.persona(),
                    ));
                }
            }
        }
        t
    }

    fn understand(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        let slots = &captured.slots;
        let words = crate::consent::keywords::normalize(text);
        if let Some(k) = self
            .escalate_words
            .iter()
            .find(|k| words.windows(k.len()).any(|w| w == k.as_slice()))
        {
            t.escalate = Some(format!("the customer mentioned {:?}", k.join(" ")));
            t.reply = Some(
                "I'm connecting you with someone from our team who can help with that.".into(),
            );
            return;
        }
        // "Are you a real person?" asks about the assistant; "can I talk
        // to a real person" asks for one.
        if self.small_talk(t, &words, text) {
            return;
        }
        if nlu::wants_person_words(&words, text) {
            t.escalate = Some("the customer asked for a person".into());
            t.reply = Some("Of course: I'm connecting you with someone from our team.".into());
            return;
        }
        // Someone's name, wherever it comes up.
        if captured.name.is_none() && !slots.contains_key("name") {
            if let Some(n) = nlu::name(text, false) {
                t.slots.insert("name".into(), n);
            }
        }
        // And their contact details.
        for (slot, found) in [
            ("phone", crate::phone::find_in_text(text)),
            ("email", nlu::email(text)),
        ] {
            if let Some(v) = found.filter(|v| slots.get(slot) != Some(v)) {
                t.slots.insert(slot.into(), v);
            }
        }
        if self.appointment_turn(t, text, captured, now, tz, cal) {
            return;
        }
        // In a journey: fill what it asked for, then what else is missing.
        if t.journey.active.is_some() {
            let mut merged = captured.clone();
            merged.slots.extend(t.slots.clone());
            let mut more = Turn {
                journey: t.journey.clone(),
                ..Turn::default()
            };
            self.continue_journey(&mut more, text, &merged, now, tz, cal);
            if more.reply.is_some() || more.escalate.is_some() {
                t.slots.extend(more.slots);
                t.reply = more.reply;
                t.escalate = more.escalate;
                t.reminders = more.reminders;
                t.journey = more.journey;
                return;
            }
        }
        let intent = nlu::classify_words(&self.intents, &words, self.spec.min_confidence)
            .map(|(name, _)| name)
            .or_else(|| self.asks_for_a_time(text, now, tz));
        match intent {
            Some(name) => {
                let intent = self
                    .spec
                    .intents
                    .iter()
                    .find(|i| i.name == name)
                    .expect("compiled");
                t.intent = Some(name.to_owned());
                t.journey.misunderstood = 0;
                if let Some(j) = &intent.journey {
                    if self.spec.journeys.get(j).is_some_and(|s| s.booking) {
                        let upcoming = t
                            .journey
                            .booking
                            .as_ref()
                            .and_then(Booking::booked)
                            .filter(|s| s.0 > now.0);
                        if let Some(start) = upcoming {
                            // Booking again while booked is moving it.
                            self.start_reschedule(t, text, captured, start, now, tz, cal);
                            return;
                        }
                    }
                    t.journey.active = Some(j.clone());
                    // A new booking asks its time afresh (not the last
                    // booking's).
                    t.slots.extend(self.datetime_cleared(j));
                    let mut merged = captured.clone();
                    merged.slots.extend(t.slots.clone());
                    merged.slots.retain(|_, v| !v.is_empty());
                    self.continue_journey(t, text, &merged, now, tz, cal);
                } else if let Some(r) = &intent.reply {
                    t.reply = Some(fill(r, captured, &t.slots, self.persona()));
                }
            }
            None => {
                let misses = t.journey.misunderstood + 1;
                t.journey.misunderstood = misses;
                if misses >= self.spec.escalation.max_misunderstood {
                    t.escalate = Some(format!("{misses} messages in a row not understood"));
                    t.reply =
                        Some("Let me get someone from our team to help you with this.".into());
                    t.journey.misunderstood = 0;
                } else {
                    t.reply = Some(fill(
                        &self.spec.fallback,
                        captured,
                        &t.slots,
                        self.persona(),
                    ));
                }
            }
        }
    }

    /// The appointment's lifecycle: a time offered waits for yes (or C),
    /// another time, or no; a booked appointment can be moved, cancelled
    /// or asked about, in plain words. True if the message was about it.
    fn appointment_turn(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) -> bool {
        let Some(b) = t.journey.booking.clone() else {
            return false;
        };
        let ask = nlu::appointment_ask(text);
        // An appointment whose time has passed is history: asking about
        // it, moving it or cancelling it starts from nothing booked.
        let past = b.booked().filter(|s| s.0 <= now.0);
        let booked = b.booked().filter(|s| s.0 > now.0);
        let words = crate::consent::keywords::normalize(text);
        if let (Some(AppointmentAsk::When), Some(p), None) = (ask, past, b.offer) {
            t.reply = Some(format!(
                "Your last appointment was {}. Would you like to book another?",
                spoken(p, tz)
            ));
            return true;
        }
        if ask == Some(AppointmentAsk::When) {
            t.reply = Some(match (booked, b.offer) {
                (Some(s), Some(o)) => format!(
                    "Your appointment is {}. I'm holding {} for you as the new time: reply C to move it there.",
                    spoken(s, tz),
                    spoken(o.start, tz)
                ),
                (Some(s), None) => format!(
                    "Your appointment is {}. Reply R to reschedule, or tell me if you need to cancel.",
                    spoken(s, tz)
                ),
                (None, Some(o)) => format!(
                    "Nothing is booked yet: I'm holding {} for you. Reply C to confirm it.",
                    spoken(o.start, tz)
                ),
                (None, None) => "I don't see an appointment booked for you. Would you like to book one?".into(),
            });
            return true;
        }
        if ask == Some(AppointmentAsk::Cancel) && (booked.is_some() || b.offer.is_some()) {
            if let Some(o) = b.offer {
                cal.release(o.start);
            }
            let journey = b.journey.clone();
            if let Some(s) = booked {
                cal.release(s);
                t.journey.booking = Some(Booking {
                    status: BookingStatus::Cancelled,
                    offer: None,
                    reminders: Vec::new(),
                    ..b
                });
                t.reply = Some(format!(
                    "Done: your appointment {} is cancelled. Text us any time to book again.",
                    spoken(s, tz)
                ));
            } else {
                t.journey.booking = None;
                t.reply =
                    Some("Okay, I've let that time go. Anything else I can help with?".into());
            }
            t.journey.active = None;
            t.journey.asking = None;
            t.slots.extend(self.datetime_cleared(&journey));
            return true;
        }
        if let Some(offer) = b.offer {
            let keeps = nlu::keeps(text);
            let yes = nlu::yes_no(text) == Some(true) && ask.is_none() && !keeps;
            let w = nlu::when(text, now, tz).filter(|w| w.has_day || w.has_time);
            if yes && w.is_none() {
                self.confirm(t, &b, offer, captured, now, tz, cal);
                return true;
            }
            if !keeps && (ask == Some(AppointmentAsk::Reschedule) || w.is_some()) {
                // Another time than the one offered.
                cal.release(offer.start);
                t.journey.booking = booked.map(|_| Booking {
                    offer: None,
                    ..b.clone()
                });
                self.ask_new_time(t, text, captured, now, tz, cal, &b.journey);
                return true;
            }
            if nlu::yes_no(text) == Some(false) || keeps {
                cal.release(offer.start);
                match booked {
                    Some(s) => {
                        t.journey.booking = Some(Booking {
                            status: BookingStatus::Confirmed,
                            offer: None,
                            ..b
                        });
                        t.reply = Some(format!(
                            "Okay, I've kept your appointment {}. Anything else I can help with?",
                            spoken(s, tz)
                        ));
                    }
                    None => {
                        t.journey.booking = None;
                        t.reply = Some(
                            "Okay, I've let that time go. Anything else I can help with?".into(),
                        );
                    }
                }
                t.journey.active = None;
                t.journey.asking = None;
                return true;
            }
            return false;
        }
        let Some(start) = booked else {
            return false;
        };
        if b.status == BookingStatus::Rescheduling {
            let keep = nlu::yes_no(text) == Some(false) || nlu::keeps(text);
            if keep {
                t.journey.booking = Some(Booking {
                    status: BookingStatus::Confirmed,
                    ..b
                });
                t.journey.active = None;
                t.journey.asking = None;
                t.reply = Some(format!(
                    "Okay, I've kept your appointment {}.",
                    spoken(start, tz)
                ));
                return true;
            }
            // A time answers the reschedule (the journey asks for it).
            return false;
        }
        if ask == Some(AppointmentAsk::Reschedule) {
            self.start_reschedule(t, text, captured, start, now, tz, cal);
            return true;
        }
        if words.first().is_some_and(|w| w == "c")
            || nlu::yes_no(text) == Some(true) && words.len() <= 2
        {
            t.reply = Some(format!("Thanks, see you {}!", spoken(start, tz)));
            return true;
        }
        false
    }

    /// "Can u do tmrw around 4ish?" with nothing else said: a customer
    /// naming a clock time asks for an appointment, when the flow books
    /// through exactly one intent. That intent's name.
    fn asks_for_a_time(&self, text: &str, now: Timestamp, tz: Tz) -> Option<&str> {
        nlu::when(text, now, tz).filter(|w| w.has_time)?;
        let mut booking = self.spec.intents.iter().filter(|i| {
            i.journey
                .as_ref()
                .and_then(|j| self.spec.journeys.get(j))
                .is_some_and(|j| j.booking)
        });
        match (booking.next(), booking.next()) {
            (Some(i), None) => Some(i.name.as_str()),
            _ => None,
        }
    }

    /// Answers small talk (`nlu::small_talk`) without counting it as a
    /// message not understood: the truth about the assistant, thanks and
    /// goodbyes; a bare "ok" or 👍 gets no reply unless it answers
    /// something pending (a question, an offer, a booking). True when
    /// handled.
    fn small_talk(&self, t: &mut Turn, words: &[String], text: &str) -> bool {
        let pending = t.journey.active.is_some()
            || t.journey.asking.is_some()
            || t.journey
                .booking
                .as_ref()
                .is_some_and(|b| b.offer.is_some() || b.status == BookingStatus::Rescheduling);
        match nlu::small_talk_words(words, text) {
            Some(SmallTalk::AsksIfBot) => {
                t.reply = Some(format!(
                    "I'm {}, an automated assistant. If you'd rather talk to a person, just say so and I'll get someone from our team.",
                    self.persona()
                ));
                true
            }
            Some(SmallTalk::Thanks) if !pending => {
                t.reply = Some("You're welcome! Anything else, just text us.".into());
                true
            }
            Some(SmallTalk::Thanks) => {
                t.reply = Some("You're welcome!".into());
                true
            }
            Some(SmallTalk::Bye) if !pending => {
                t.reply = Some("Talk soon!".into());
                true
            }
            Some(SmallTalk::Ack)
                if !pending
                    && t.journey
                        .booking
                        .as_ref()
                        .and_then(Booking::booked)
                        .is_none() =>
            {
                true
            }
            _ => false,
        }
    }

    /// The customer wants to move their appointment at `start`: it stays
    /// theirs until a new time is confirmed.
    #[allow(clippy::too_many_arguments)]
    fn start_reschedule(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        start: Timestamp,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        let Some(mut b) = t.journey.booking.clone() else {
            return;
        };
        b.status = BookingStatus::Rescheduling;
        let journey = b.journey.clone();
        t.journey.booking = Some(b);
        t.reply = Some(format!(
            "Sure, let's find a new time. Your appointment {} stays booked until you confirm a new one. What day and time work for you?",
            spoken(start, tz)
        ));
        // "Push it back an hour": the time is the booked one, moved.
        let moved = nlu::shift_minutes(text).map(|m| Timestamp(start.0 + m * 60_000));
        self.ask_new_time_at(t, text, moved, captured, now, tz, cal, &journey);
    }

    /// Asks for a new time in `journey`, or offers one at once
    /// if `text` names it.
    #[allow(clippy::too_many_arguments)]
    fn ask_new_time(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
        journey: &str,
    ) {
        self.ask_new_time_at(t, text, None, captured, now, tz, cal, journey);
    }

    /// `ask_new_time`, offering `at` (a time the customer gave relative
    /// to their booking) when given.
    #[allow(clippy::too_many_arguments)]
    fn ask_new_time_at(
        &self,
        t: &mut Turn,
        text: &str,
        at: Option<Timestamp>,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
        journey: &str,
    ) {
        t.journey.active = Some(journey.to_owned());
        let cleared = self.datetime_cleared(journey);
        let slot = cleared.keys().next().cloned();
        t.slots.extend(cleared);
        t.journey.asking = slot.clone();
        if t.reply.is_none() {
            t.reply = Some("No problem. What day and time would work better?".into());
        }
        let at = at
            .zip(slot)
            .and_then(|(at, slot)| Some((slot, slot_time_text(at, tz)?)));
        if at.is_some() || nlu::when(text, now, tz).is_some_and(|w| w.has_day || w.has_time) {
            let mut merged = captured.clone();
            merged.slots.extend(t.slots.clone());
            merged.slots.retain(|_, v| !v.is_empty());
            let text = match at {
                Some((slot, v)) => {
                    merged.slots.insert(slot, v);
                    ""
                }
                None => text,
            };
            let mut more = Turn {
                journey: t.journey.clone(),
                ..Turn::default()
            };
            self.continue_journey(&mut more, text, &merged, now, tz, cal);
            if more.reply.is_some() {
                t.reply = more.reply;
                t.escalate = more.escalate;
                t.slots.extend(more.slots);
                t.journey = more.journey;
            }
        }
    }

    /// The datetime slot of `journey`, emptied (to ask again).
    fn datetime_cleared(&self, journey: &str) -> BTreeMap<String, String> {
        self.spec
            .journeys
            .get(journey)
            .and_then(|j| j.slots.iter().find(|s| s.kind == SlotKind::Datetime))
            .map(|s| (s.name.clone(), String::new()))
            .into_iter()
            .collect()
    }

    /// The customer said yes to `offer`: booked (and, for a move, the old
    /// time given back and its reminders replaced), or taken meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn confirm(
        &self,
        t: &mut Turn,
        b: &Booking,
        offer: Offer,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        if !cal.book(offer.start) {
            t.journey.booking = Some(Booking {
                offer: None,
                ..b.clone()
            })
            .filter(|b| b.booked().is_some());
            t.journey.active = Some(b.journey.clone());
            let cleared = self.datetime_cleared(&b.journey);
            t.journey.asking = cleared.keys().next().cloned();
            t.slots.extend(cleared);
            t.reply =
                Some("Sorry, that time was just taken. What other day and time would work?".into());
            return;
        }
        let moved_from = b.booked().filter(|s| *s != offer.start);
        if let Some(old) = moved_from {
            cal.release(old);
        }
        t.journey.booking = Some(Booking {
            journey: b.journey.clone(),
            service: b.service.clone(),
            status: BookingStatus::Confirmed,
            start: Some(offer.start),
            offer: None,
            // New reminders replace the old (the caller cancels those).
            reminders: Vec::new(),
        });
        t.journey.active = None;
        t.journey.asking = None;
        // A qualified lead that became a meeting.
        if t.journey.handoff.as_deref() == Some("qualified") {
            t.journey.lead_met = true;
        }
        let when = spoken(offer.start, tz);
        let plan = self
            .reminders
            .get(&(b.journey.clone(), b.service.clone()))
            .or_else(|| self.reminders.get(&(b.journey.clone(), String::new())));
        if let Some(plan) = plan {
            let mut extra = BTreeMap::new();
            extra.insert("when".to_owned(), when.clone());
            extra.insert("service".to_owned(), b.service.clone());
            let text = |t: &str| fill(t, captured, &extra, self.persona());
            for before in &plan.leads {
                let at = Timestamp(offer.start.0 - before);
                if at.0 > now.0 {
                    t.reminders.push(Reminder {
                        at,
                        text: text(&plan.text),
                        by_channel: plan.by_channel.iter().map(|(c, t)| (*c, text(t))).collect(),
                    });
                }
            }
        }
        // A reminder is promised only if one will come.
        let remind = if t.reminders.is_empty() {
            ""
        } else {
            " We'll send you a reminder."
        };
        t.reply = Some(match moved_from {
            Some(old) => format!(
                "Done: your appointment is moved from {} to {when}.{remind} Reply R any time to reschedule.",
                spoken(old, tz)
            ),
            None => format!("You're confirmed for {when}.{remind} Reply R any time to reschedule."),
        });
    }

    /// Fills the current journey's slots from `text`, asks for the next
    /// missing one, or completes it (offering a booking slot).
    fn continue_journey(
        &self,
        t: &mut Turn,
        text: &str,
        captured: &Captured,
        now: Timestamp,
        tz: Tz,
        cal: &mut dyn Calendar,
    ) {
        let Some(jname) = t.journey.active.clone() else {
            return;
        };
        let Some(j) = self.spec.journeys.get(&jname) else {
            return;
        };
        let hold_until = now.saturating_add_millis(
            i64::from(self.spec.calendar.as_ref().map_or(15, |c| c.hold_minutes)) * 60_000,
        );
        let asking = t.journey.asking.clone().unwrap_or_default();
        let moving_from = t
            .journey
            .booking
            .as_ref()
            .filter(|b| b.status == BookingStatus::Rescheduling)
            .and_then(Booking::booked)
            .filter(|s| s.0 > now.0);
        let contact_given =
            crate::phone::find_in_text(text).is_some() || nlu::email(text).is_some();
        let mut have: BTreeMap<String, String> = captured.slots.clone();
        if let Some(n) = &captured.name {
            have.entry("name".into()).or_insert_with(|| n.clone());
        }
        let mut got_any = false;
        for s in &j.slots {
            if have.get(&s.name).is_some_and(|v| !v.is_empty()) {
                continue;
            }
            let asked = asking == s.name;
            let value = match s.kind {
                SlotKind::Datetime => nlu::when(text, now, tz)
                    .filter(|w| w.has_day || w.has_time)
                    .map(|w| match moving_from {
                        // "12pm" while moving Friday's appointment is Friday.
                        Some(day) if w.has_time && !w.has_day => on_day_of(w.at, day, tz),
                        _ => w.at,
                    })
                    .and_then(|at| slot_time_text(at, tz)),
                SlotKind::Name => nlu::name(text, asked),
                SlotKind::Email => nlu::email(text),
                SlotKind::Phone => crate::phone::find_in_text(text),
                SlotKind::Choice => {
                    // The option the customer names first ("bundle home and
                    // auto" is a bundle).
                    let words = crate::consent::keywords::normalize(text);
                    s.options
                        .iter()
                        .filter_map(|o| {
                            let ow = crate::consent::keywords::normalize(o);
                            if ow.is_empty() {
                                return None;
                            }
                            words
                                .windows(ow.len())
                                .position(|w| w == ow.as_slice())
                                .map(|at| (at, o))
                        })
                        .min_by_key(|(at, _)| *at)
                        .map(|(_, o)| o.clone())
                }
                // Contact details are not an answer to a free question.
                SlotKind::Text if asked && !contact_given => {
                    Some(text.trim().chars().take(200).collect())
                }
                SlotKind::Text => None,
            };
            if let Some(v) = value {
                have.insert(s.name.clone(), v.clone());
                t.slots.insert(s.name.clone(), v);
                got_any = true;
            }
        }
        let missing = j
            .slots
            .iter()
            .find(|s| have.get(&s.name).is_none_or(|v| v.is_empty()));
        if let Some(s) = missing {
            if contact_given && !got_any {
                // "Here's my number": noted (see `understand`), then the
                // same question again.
                t.journey.asking = Some(s.name.clone());
                t.reply = Some(format!(
                    "Thanks, noted. {}",
                    fill(&s.ask, captured, &t.slots, self.persona())
                ));
                return;
            }
            if !asking.is_empty() && asking == s.name && !got_any {
                let misses = t.journey.misunderstood + 1;
                t.journey.misunderstood = misses;
                if misses > self.spec.escalation.max_misunderstood {
                    t.escalate = Some(format!("could not get the customer's {}", s.name));
                    t.reply =
                        Some("Let me get someone from our team to help you with this.".into());
                    return;
                }
            }
            t.journey.asking = Some(s.name.clone());
            t.reply = Some(fill(&s.ask, captured, &t.slots, self.persona()));
            return;
        }
        t.journey.asking = None;
        t.journey.misunderstood = 0;
        let mut shown = t.slots.clone();
        if j.booking {
            let slot = j
                .slots
                .iter()
                .find(|s| s.kind == SlotKind::Datetime)
                .expect("compiled: a booking has a datetime slot");
            let wanted = have
                .get(&slot.name)
                .and_then(|v| slot_time(v))
                .unwrap_or(now);
            // A move never offers the time already booked.
            let current = t
                .journey
                .booking
                .as_ref()
                .and_then(Booking::booked)
                .filter(|s| s.0 > now.0);
            if let Some(old) = t.journey.booking.as_ref().and_then(|b| b.offer) {
                cal.release(old.start);
            }
            let exact = self.bookable(wanted, tz)
                && wanted.0 > now.0
                && Some(wanted) != current
                && cal.hold(wanted, hold_until);
            // A time the customer named that is taken: the nearest opening
            // that day, either side, with the other side as an
            // alternative; else the next one after it.
            let named_time = wanted.0 > now.0
                && tz
                    .timestamp_millis_opt(wanted.0)
                    .single()
                    .is_some_and(|d| d.time() != self.open);
            let mut alternative = None;
            let held = if exact {
                Some(wanted)
            } else if let Some((h, other)) = named_time
                .then(|| self.nearest_free(wanted, tz, now, cal, hold_until, current))
                .flatten()
            {
                alternative = other;
                Some(h)
            } else {
                self.next_free(wanted, tz, now, cal, hold_until, current)
            };
            match held {
                Some(h) => {
                    let offer = Offer {
                        start: h,
                        until: hold_until,
                    };
                    t.journey.booking = Some(match t.journey.booking.take() {
                        Some(b) if b.booked().is_some_and(|s| s.0 > now.0) => Booking {
                            offer: Some(offer),
                            ..b
                        },
                        _ => Booking {
                            journey: jname.clone(),
                            service: have
                                .get("service")
                                .filter(|v| !v.is_empty())
                                .cloned()
                                .unwrap_or_else(|| jname.clone()),
                            status: BookingStatus::Offered,
                            start: None,
                            offer: Some(offer),
                            reminders: Vec::new(),
                        },
                    });
                    if let Some(v) = slot_time_text(h, tz) {
                        t.slots.insert(slot.name.clone(), v);
                    }
                    shown.insert(slot.name.clone(), spoken(h, tz));
                    let lead = match (exact, alternative) {
                        (true, _) => String::new(),
                        (false, Some(other)) => format!(
                            "{} isn't available; the closest opening is {} (or {}, if that suits you better: just say so). ",
                            spoken(wanted, tz),
                            spoken(h, tz),
                            spoken_time(other, tz)
                        ),
                        (false, None) => format!(
                            "{} isn't available; the closest opening is {}. ",
                            spoken(wanted, tz),
                            spoken(h, tz)
                        ),
                    };
                    let mut merged = captured.clone();
                    merged.slots.extend(t.slots.clone());
                    merged.slots.insert(slot.name.clone(), spoken(h, tz));
                    t.reply = Some(format!(
                        "{lead}{}",
                        fill(&j.done, &merged, &shown, self.persona())
                    ));
                }
                None => {
                    if let Some(b) = &mut t.journey.booking {
                        b.offer = None;
                    }
                    t.journey.booking = t.journey.booking.take().filter(|b| b.booked().is_some());
                    t.slots.insert(slot.name.clone(), String::new());
                    t.journey.asking = Some(slot.name.clone());
                    t.reply = Some("I couldn't find an opening in the next two weeks. Let me get someone to help.".into());
                    t.escalate = Some("no bookable slot in two weeks".into());
                }
            }
            return;
        }
        let mut merged = captured.clone();
        merged.slots.extend(t.slots.clone());
        t.reply = Some(fill(&j.done, &merged, &shown, self.persona()));
        t.journey.active = None;
        // Unless the lead was already handed over when its score crossed
        // the threshold.
        if j.handoff && t.journey.handoff.is_none() {
            t.escalate = Some(format!("{jname} complete"));
        }
    }
}

/// The time of day of `at`, on the day of `day` (both in `tz`).
fn on_day_of(at: Timestamp, day: Timestamp, tz: Tz) -> Timestamp {
    let (Some(a), Some(d)) = (
        tz.timestamp_millis_opt(at.0).single(),
        tz.timestamp_millis_opt(day.0).single(),
    ) else {
        return at;
    };
    tz.from_local_datetime(&d.date_naive().and_time(a.time()))
        .earliest()
        .map_or(at, |x| Timestamp(x.timestamp_millis()))
}

/// A datetime slot's value as stored: RFC 3339 in the customer's zone.
fn slot_time_text(at: Timestamp, tz: Tz) -> Option<String> {
    tz.timestamp_millis_opt(at.0)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
}

/// A datetime slot's value read back (RFC 3339, or the epoch milliseconds
/// older records kept).
pub fn slot_time(v: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|d| Timestamp(d.timestamp_millis()))
        .or_else(|| v.parse::<i64>().ok().map(Timestamp))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::DateTime;
    use chrono_tz::America::New_York;

    use super::*;

    const DENTAL: &str = r#"
persona = { name = "Ava" }
[[intents]]
name = "book"
examples = ["I need a cleaning", "can I book an appointment"]
keywords = ["book", "appointment", "cleaning", "checkup"]
journey = "booking"
[[intents]]
name = "hours"
examples = ["when are you open"]
keywords = ["hours", "open"]
reply = "We're open Monday to Friday, 9 to 5."
[journeys.booking]
booking = true
reminders = ["24h", "2h"]
done = "I can do {when} for your {service}. Reply C to confirm or R for another time."
slots = [
  { name = "service", ask = "What would you like to come in for: cleaning, checkup or whitening?", kind = "choice", options = ["cleaning", "checkup", "whitening"] },
  { name = "when", ask = "What day and time work for you?", kind = "datetime" },
]
[escalation]
keywords = ["emergency", "bleeding"]
[calendar]
days = ["mon", "tue", "wed", "thu", "fri"]
open = "09:00"
close = "17:00"
slot_minutes = 60
"#;

    #[test]
    fn a_misspelt_placeholder_is_refused_before_it_reaches_a_customer() {
        let bad = DENTAL.replace("for your {service}", "for your {servce}");
        let e = Flow::compile(toml_spec(&bad)).unwrap_err();
        assert!(e.contains("journeys.booking.done"), "{e}");
        assert!(e.contains("{servce}"), "{e}");
        assert!(e.contains("{service}"), "the known ones are listed: {e}");
        let bad = DENTAL.replace("9 to 5.", "9 to 5, {nme}.");
        let e = Flow::compile(toml_spec(&bad)).unwrap_err();
        assert!(e.starts_with("intents[1].reply"), "{e}");
        // Braces that are not placeholders stay allowed.
        let fine = DENTAL.replace("9 to 5.", "9 to 5 {see below} or {}.");
        Flow::compile(toml_spec(&fine)).unwrap();
    }

    fn flow() -> Flow {
        Flow::compile(toml_spec(DENTAL)).unwrap()
    }

    /// The node reads flow files as TOML in `src/`; the tests do the same
    /// with `toml` as a dev-dependency.
    fn toml_spec(s: &str) -> FlowSpec {
        toml::from_str(s).unwrap()
    }

    #[derive(Default)]
    struct Cal {
        /// start → (conversation, booked)
        slots: HashMap<i64, (u64, bool)>,
        me: u64,
    }

    impl Cal {
        /// An empty calendar, as seen by conversation `me`.
        fn of(me: u64) -> Cal {
            Cal {
                me,
                ..Default::default()
            }
        }
    }

    impl Calendar for Cal {
        fn hold(&mut self, start: Timestamp, _until: Timestamp) -> bool {
            match self.slots.get(&start.0) {
                Some((c, _)) if *c != self.me => false,
                _ => {
                    self.slots.insert(start.0, (self.me, false));
                    true
                }
            }
        }
        fn release(&mut self, start: Timestamp) {
            if self.slots.get(&start.0).is_some_and(|(c, _)| *c == self.me) {
                self.slots.remove(&start.0);
            }
        }
        fn book(&mut self, start: Timestamp) -> bool {
            match self.slots.get_mut(&start.0) {
                Some((c, b)) if *c == self.me => {
                    *b = true;
                    true
                }
                _ => false,
            }
        }
        fn free(&self, start: Timestamp) -> bool {
            self.slots.get(&start.0).is_none_or(|(c, _)| *c == self.me)
        }
    }

    fn t(s: &str) -> Timestamp {
        Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
    }

    /// What a conversation knows and where it stands, as the core keeps it.
    #[derive(Default, Clone)]
    struct Conv {
        c: Captured,
        j: Journey,
    }

    impl Conv {
        /// The customer says `text`; the turn is applied as the core would.
        fn say(&mut self, f: &Flow, text: &str, now: Timestamp, cal: &mut Cal) -> Turn {
            let turn = f.turn(text, &self.c, &self.j, now, New_York, cal);
            for (k, v) in &turn.slots {
                if v.is_empty() {
                    self.c.slots.remove(k);
                } else {
                    self.c.slots.insert(k.clone(), v.clone());
                }
            }
            if turn.intent.is_some() {
                self.c.intent.clone_from(&turn.intent);
            }
            self.j = turn.journey.clone();
            // The core keeps the reminders it scheduled in the booking.
            if let Some(b) = &mut self.j.booking {
                b.reminders
                    .extend((0..turn.reminders.len()).map(|i| 100 + i as u64));
            }
            turn
        }

        fn booking(&self) -> &Booking {
            self.j.booking.as_ref().expect("a booking")
        }
    }

    const NOW: &str = "2026-03-03T15:00:00Z"; // Tue 10:00 New York

    #[test]
    fn a_booking_from_intent_to_confirmation_with_reminders() {
        let f = flow();
        let mut cal = Cal::of(1);
        let mut c = Conv::default();
        let now = t(NOW);
        let a = c.say(&f, "Hi, I'm Jordan. I need a cleaning", now, &mut cal);
        assert_eq!(a.intent.as_deref(), Some("book"));
        assert_eq!(a.reply.as_deref(), Some("What day and time work for you?"));
        assert_eq!(c.c.slots["service"], "cleaning");
        assert_eq!(c.c.slots["name"], "Jordan");
        assert_eq!(c.j.active.as_deref(), Some("booking"));
        assert_eq!(c.j.asking.as_deref(), Some("when"));
        let b = c.say(&f, "Tuesday at 3", now, &mut cal);
        assert_eq!(
            b.reply.as_deref(),
            Some("I can do Tue Mar 3 at 3:00 PM for your cleaning. Reply C to confirm or R for another time.")
        );
        // The customer's time, as they would read it: RFC 3339 in their zone.
        assert_eq!(c.c.slots["when"], "2026-03-03T15:00:00-05:00");
        assert_eq!(c.booking().status, BookingStatus::Offered);
        assert_eq!(c.booking().offer.unwrap().start, t("2026-03-03T20:00:00Z"));
        let d = c.say(&f, "C", now, &mut cal);
        assert!(d
            .reply
            .unwrap()
            .starts_with("You're confirmed for Tue Mar 3 at 3:00 PM"));
        assert_eq!(c.booking().status, BookingStatus::Confirmed);
        assert_eq!(c.booking().start, Some(t("2026-03-03T20:00:00Z")));
        assert_eq!(c.j.active, None, "the journey is over");
        // 24 h before is already past; 2 h before is 13:00.
        assert_eq!(d.reminders.len(), 1);
        assert_eq!(d.reminders[0].at, t("2026-03-03T18:00:00Z"));
        assert!(cal.slots[&t("2026-03-03T20:00:00Z").0].1, "booked");
    }

    #[test]
    fn a_slot_is_bookable_only_if_it_ends_by_closing_time_late_evening_too() {
        let f = flow();
        let close = f.spec.calendar.as_ref().unwrap().close.clone();
        assert_eq!(close, "17:00");
        // Thursday 2026-03-05 in New York (UTC-5).
        assert!(f.bookable(t("2026-03-05T21:00:00Z"), New_York), "4 PM");
        assert!(!f.bookable(t("2026-03-05T22:00:00Z"), New_York), "5 PM");
        // 11 PM plus an hour is midnight, which must not count as before 5 PM.
        assert!(!f.bookable(t("2026-03-06T04:00:00Z"), New_York), "11 PM");
        assert!(!f.bookable(t("2026-03-06T04:30:00Z"), New_York), "11:30 PM");
    }

    #[test]
    fn a_taken_slot_offers_the_next_opening_and_two_customers_never_share_one() {
        let f = flow();
        let now = t(NOW);
        let mut cal = Cal::of(1);
        let mut first = Conv::default();
        first.say(&f, "book a checkup thursday at 10am", now, &mut cal);
        let first_offer = first.booking().offer.unwrap().start;
        // The second customer asks for the same time while it is held.
        cal.me = 2;
        let mut second = Conv::default();
        let r = second.say(&f, "book a checkup thursday at 10am", now, &mut cal);
        let reply = r.reply.unwrap();
        assert!(reply.starts_with("Thu Mar 5 at 10:00 AM isn't available; the closest opening is Thu Mar 5 at 11:00 AM (or 9:00 AM, if that suits you better: just say so)."), "{reply}");
        assert_ne!(first_offer, second.booking().offer.unwrap().start);
        // Outside opening hours: the next opening.
        cal.me = 3;
        let r = Conv::default().say(&f, "book a cleaning saturday at 10am", now, &mut cal);
        assert!(r
            .reply
            .unwrap()
            .contains("the closest opening is Mon Mar 9 at 9:00 AM"));
    }

    /// Messages as customers type them (issue 22's transcripts): each gets
    /// the answer a person at the front desk would give.
    #[test]
    fn customers_plain_words_get_the_answer_a_person_would_give() {
        let f = flow();
        let now = t(NOW); // Tue Mar 3, 10:00 in New York
        let mut cal = Cal::of(1);
        // "4ish" is 4 PM; "tmrw" is tomorrow; a time alone asks for an
        // appointment.
        let mut c = Conv::default();
        let r = c.say(&f, "can u do tmrw around 4ish?", now, &mut cal);
        assert_eq!(c.j.active.as_deref(), Some("booking"), "{r:?}");
        let r = c.say(&f, "a cleaning", now, &mut cal);
        assert_eq!(
            c.booking().offer.unwrap().start,
            t("2026-03-04T21:00:00Z"),
            "{r:?}"
        );
        // "yea" confirms.
        c.say(&f, "yea", now, &mut cal);
        assert_eq!(c.booking().status, BookingStatus::Confirmed);
        // "push it back an hour" moves it by an hour: 5 PM is past
        // closing, so the nearest opening that day, earlier, is offered.
        let r = c.say(&f, "can we push it back an hour?", now, &mut cal);
        let reply = r.reply.unwrap();
        assert!(
            reply.contains(
                "Wed Mar 4 at 5:00 PM isn't available; the closest opening is Wed Mar 4 at 3:00 PM"
            ),
            "{reply}"
        );
        c.say(&f, "no, keep it", now, &mut cal);
        assert_eq!(c.booking().start, Some(t("2026-03-04T21:00:00Z")));
        // An hour earlier is free: offered as asked.
        let r = c.say(&f, "could we do an hour earlier?", now, &mut cal);
        assert!(r
            .reply
            .unwrap()
            .starts_with("I can do Wed Mar 4 at 3:00 PM"));

        // A taken hour: the nearest either side, the other as an option.
        cal.me = 2;
        let mut d = Conv::default();
        d.say(&f, "book a checkup thursday at 2pm", now, &mut cal);
        d.say(&f, "yes", now, &mut cal);
        cal.me = 3;
        let mut e = Conv::default();
        let r = e.say(&f, "book a checkup thursday at 2pm", now, &mut cal);
        let reply = r.reply.unwrap();
        assert!(reply.starts_with("Thu Mar 5 at 2:00 PM isn't available; the closest opening is Thu Mar 5 at 3:00 PM (or 1:00 PM"), "{reply}");

        // Thanks, goodbyes and "ok" are not misunderstandings: no hand-off
        // however many.
        let mut g = Conv::default();
        for text in ["thx", "thanks so much!", "ok", "👍", "bye!", "thank you"] {
            let r = g.say(&f, text, now, &mut cal);
            assert_eq!(r.escalate, None, "{text}");
            assert_eq!(g.j.misunderstood, 0, "{text}");
        }
        assert_eq!(
            g.say(&f, "thx", now, &mut cal).reply.as_deref(),
            Some("You're welcome! Anything else, just text us.")
        );
        assert_eq!(
            g.say(&f, "ok", now, &mut cal).reply,
            None,
            "nothing to answer"
        );

        // The truth about the assistant, from the persona.
        let r = g.say(&f, "Wait, am I talking to a robot?", now, &mut cal);
        assert!(r
            .reply
            .unwrap()
            .starts_with("I'm Ava, an automated assistant."));
        let r = g.say(&f, "are you a real person", now, &mut cal);
        assert!(r
            .reply
            .unwrap()
            .starts_with("I'm Ava, an automated assistant."));

        // Asking for a person hands over; mentioning one does not.
        for text in [
            "agent please",
            "can I talk to a person",
            "Can I speak with someone real?",
            "a human please",
            "representative",
        ] {
            let r = Conv::default().say(&f, text, now, &mut cal);
            assert_eq!(
                r.escalate.as_deref(),
                Some("the customer asked for a person"),
                "{text}"
            );
        }
        for text in [
            "I'm calling for someone else",
            "I'm a travel agent",
            "my son will talk to his dentist",
        ] {
            let r = Conv::default().say(&f, text, now, &mut cal);
            assert_eq!(r.escalate, None, "{text}");
        }
    }

    /// Books `when` for the conversation of `cal.me`, confirmed.
    fn booked(f: &Flow, cal: &mut Cal, when: &str) -> Conv {
        let mut c = Conv::default();
        c.say(f, &format!("book a cleaning {when}"), t(NOW), cal);
        c.say(f, "yes", t(NOW), cal);
        assert_eq!(c.booking().status, BookingStatus::Confirmed, "{when}");
        c
    }

    /// The double booking seen on a clinic's line: a move asked in plain
    /// words keeps the old time booked until the new one is confirmed, so
    /// nobody else can take it meanwhile, and the old time is given back
    /// only then.
    #[test]
    fn a_move_in_plain_words_holds_the_new_time_before_giving_back_the_old() {
        let f = flow();
        let now = t(NOW);
        let mut cal = Cal::of(1);
        let mut a = booked(&f, &mut cal, "thursday at 11am");
        let thu = t("2026-03-05T16:00:00Z");
        assert_eq!(a.booking().start, Some(thu));
        let r = a.say(&f, "I'd like to move my appointment", now, &mut cal);
        assert!(r.reply.unwrap().contains("stays booked until you confirm"));
        assert_eq!(a.booking().status, BookingStatus::Rescheduling);
        assert_eq!(
            cal.slots[&thu.0],
            (1, true),
            "still booked for the customer"
        );
        assert!(r.reminders.is_empty());
        assert_eq!(a.booking().reminders.len(), 2, "reminders kept until moved");
        let r = a.say(&f, "reschedule to friday at 3pm please", now, &mut cal);
        assert!(r.reply.unwrap().contains("Fri Mar 6 at 3:00 PM"));
        let fri = t("2026-03-06T20:00:00Z");
        assert_eq!(a.booking().offer.map(|o| o.start), Some(fri));
        assert_eq!(cal.slots[&thu.0], (1, true));
        // Another customer asks for Thursday 11: it is still taken.
        cal.me = 2;
        let mut b = Conv::default();
        let r = b.say(&f, "book a cleaning thursday at 11am", now, &mut cal);
        assert!(r.reply.unwrap().contains("isn't available"));
        cal.me = 1;
        let r = a.say(&f, "yes", now, &mut cal);
        assert!(
            r.reply.as_deref().unwrap().starts_with(
                "Done: your appointment is moved from Thu Mar 5 at 11:00 AM to Fri Mar 6 at 3:00 PM"
            ),
            "{r:?}"
        );
        assert_eq!(a.booking().status, BookingStatus::Confirmed);
        assert_eq!(a.booking().start, Some(fri));
        assert!(a.booking().reminders.iter().all(|id| *id >= 100));
        assert!(!cal.slots.contains_key(&thu.0), "given back once moved");
        assert_eq!(cal.slots[&fri.0], (1, true));
    }

    #[test]
    fn a_move_never_offers_the_time_already_booked_and_can_be_dropped() {
        let f = flow();
        let now = t(NOW);
        let mut cal = Cal::of(1);
        let mut a = booked(&f, &mut cal, "thursday at 11am");
        let r = a.say(&f, "can we push it back to thursday at 11am", now, &mut cal);
        let reply = r.reply.unwrap();
        assert!(
            reply.contains("closest opening is Thu Mar 5 at 12:00 PM"),
            "{reply}"
        );
        // Changing their mind keeps what they had.
        let r = a.say(&f, "no, never mind", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Okay, I've kept your appointment Thu Mar 5 at 11:00 AM. Anything else I can help with?")
        );
        assert_eq!(a.booking().status, BookingStatus::Confirmed);
        assert_eq!(a.booking().offer, None);
        assert_eq!(cal.slots.len(), 1, "the offered time is free again");
    }

    /// The phantom cancellation: "I can't make it anymore" cancels for
    /// real: the time is free, the reminders go, the reply says so.
    #[test]
    fn a_cancel_in_plain_words_frees_the_time_and_drops_the_reminders() {
        let f = flow();
        let now = t(NOW);
        let mut cal = Cal::of(1);
        let mut a = booked(&f, &mut cal, "thursday at 11am");
        let r = a.say(&f, "when is my appointment?", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Your appointment is Thu Mar 5 at 11:00 AM. Reply R to reschedule, or tell me if you need to cancel.")
        );
        let r = a.say(&f, "I can't make it anymore", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Done: your appointment Thu Mar 5 at 11:00 AM is cancelled. Text us any time to book again.")
        );
        assert_eq!(a.booking().status, BookingStatus::Cancelled);
        assert!(a.booking().reminders.is_empty());
        assert!(cal.slots.is_empty());
        // And one can book again afterwards.
        let r = a.say(&f, "book a cleaning friday at 10am", now, &mut cal);
        assert!(r.reply.unwrap().contains("Fri Mar 6 at 10:00 AM"));
        assert_eq!(a.booking().status, BookingStatus::Offered);
    }

    /// The transitions around an offer: no lets it go, another time
    /// replaces it, a question is answered, and a time taken meanwhile
    /// (the hold lapsed) is said so; a move that loses its new time keeps
    /// the old one; a cancel during a move frees both.
    #[test]
    fn offers_declined_replaced_lost_and_moves_cancelled() {
        let f = flow();
        let now = t(NOW);
        let mut cal = Cal::of(1);
        let mut c = Conv::default();
        c.say(&f, "book a cleaning thursday at 10am", now, &mut cal);
        let r = c.say(&f, "when is my appointment", now, &mut cal);
        assert!(r
            .reply
            .unwrap()
            .starts_with("Nothing is booked yet: I'm holding Thu Mar 5 at 10:00 AM"));
        let r = c.say(&f, "how about friday at 10 instead", now, &mut cal);
        assert!(r.reply.unwrap().contains("Fri Mar 6 at 10:00 AM"));
        assert_eq!(cal.slots.len(), 1, "the first offer is given back");
        let r = c.say(&f, "no", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Okay, I've let that time go. Anything else I can help with?")
        );
        assert_eq!(c.j.booking, None);
        assert!(cal.slots.is_empty());

        // The offered time is taken by someone else before the yes.
        let mut c = booked(&f, &mut cal, "thursday at 11am");
        c.say(&f, "R", now, &mut cal);
        c.say(&f, "friday at 9am", now, &mut cal);
        let fri9 = c.booking().offer.unwrap().start;
        cal.slots.insert(fri9.0, (2, true));
        let r = c.say(&f, "yes", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Sorry, that time was just taken. What other day and time would work?")
        );
        assert_eq!(c.booking().status, BookingStatus::Rescheduling);
        assert_eq!(
            c.booking().start,
            Some(t("2026-03-05T16:00:00Z")),
            "still booked"
        );
        assert_eq!(cal.slots[&t("2026-03-05T16:00:00Z").0], (1, true));
        // A new time, then a cancel while it is offered: both are freed.
        c.say(&f, "friday at 11am", now, &mut cal);
        assert!(c.booking().offer.is_some());
        let r = c.say(&f, "actually just cancel it", now, &mut cal);
        assert!(r.reply.unwrap().contains("is cancelled"));
        assert_eq!(c.booking().status, BookingStatus::Cancelled);
        assert_eq!(
            cal.slots.len(),
            1,
            "only the other customer's booking: {:?}",
            cal.slots
        );
    }

    /// What customers typed that was misread (found trying the flow as
    /// they would): "keep" drops a move even with a day in it, a bare
    /// time while moving is on the appointment's own day, an appointment
    /// in the past is history, and a reminder is promised only if one
    /// will come.
    #[test]
    fn keeping_moving_to_a_bare_time_past_appointments_and_honest_promises() {
        let f = flow();
        let now = t(NOW);
        let mut cal = Cal::of(1);
        let mut c = booked(&f, &mut cal, "wednesday at 2pm");
        c.say(&f, "actually can i move it", now, &mut cal);
        let r = c.say(&f, "no nvm, ill keep wednesday", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Okay, I've kept your appointment Wed Mar 4 at 2:00 PM.")
        );
        assert_eq!(c.booking().status, BookingStatus::Confirmed);
        c.say(&f, "R", now, &mut cal);
        let r = c.say(&f, "12pm", now, &mut cal);
        assert!(
            r.reply
                .as_deref()
                .unwrap()
                .contains("Wed Mar 4 at 12:00 PM"),
            "the appointment's own day: {r:?}"
        );
        let r = c.say(&f, "forget it ill just keep my wed appt", now, &mut cal);
        assert!(r
            .reply
            .unwrap()
            .starts_with("Okay, I've kept your appointment Wed Mar 4 at 2:00 PM"));
        assert_eq!(cal.slots.len(), 1, "the offered noon is free again");

        // A week later the appointment is history.
        let later = t("2026-03-10T15:00:00Z");
        let r = c.say(&f, "whens my appt", later, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("Your last appointment was Wed Mar 4 at 2:00 PM. Would you like to book another?")
        );
        let r = c.say(&f, "book a cleaning thursday at 10am", later, &mut cal);
        assert!(r.reply.unwrap().contains("Thu Mar 12 at 10:00 AM"));
        assert_eq!(
            c.booking().status,
            BookingStatus::Offered,
            "a new booking, not a move"
        );
        // An hour away: no reminder can come, none is promised.
        let soon = t("2026-03-12T14:00:00Z");
        let mut d = Conv::default();
        cal.me = 2;
        d.say(&f, "book a cleaning today at 10am", soon, &mut cal);
        let r = d.say(&f, "yes", soon, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("You're confirmed for Thu Mar 12 at 11:00 AM. Reply R any time to reschedule.")
        );
        // R on an offer before anything is booked leaves nothing half-made.
        let mut e = Conv::default();
        cal.me = 3;
        e.say(&f, "book a cleaning friday at 10am", now, &mut cal);
        e.say(&f, "R", now, &mut cal);
        assert_eq!(e.j.booking, None);
        assert_eq!(e.j.asking.as_deref(), Some("when"));
    }

    #[test]
    fn reschedule_escalation_and_plain_answers() {
        let f = flow();
        let now = t(NOW);
        let mut cal = Cal::of(1);
        let mut c = booked(&f, &mut cal, "friday at 2pm");
        let old = c.booking().start.unwrap();
        let r = c.say(&f, "R, can we do monday at 11am instead", now, &mut cal);
        assert!(r.reply.unwrap().contains("Mon Mar 9 at 11:00 AM"));
        c.say(&f, "C", now, &mut cal);
        assert!(
            !cal.slots.contains_key(&old.0),
            "the old slot is free again"
        );
        let r = Conv::default().say(&f, "when are you open?", now, &mut cal);
        assert_eq!(
            r.reply.as_deref(),
            Some("We're open Monday to Friday, 9 to 5.")
        );
        let r = Conv::default().say(&f, "it's an emergency, my tooth is bleeding", now, &mut cal);
        assert!(r.escalate.is_some());
        let mut c = Conv::default();
        for _ in 0..2 {
            let r = c.say(&f, "purple monkey dishwasher", now, &mut cal);
            if r.escalate.is_some() {
                return;
            }
        }
        panic!("two misunderstood messages escalate");
    }

    #[test]
    fn bad_flow_files_are_refused_with_a_reason() {
        let mut s = toml_spec(DENTAL);
        s.intents[0].journey = Some("nope".into());
        assert!(Flow::compile(s).unwrap_err().contains("unknown journey"));
        let mut s = toml_spec(DENTAL);
        s.calendar = None;
        assert!(Flow::compile(s).unwrap_err().contains("[calendar]"));
        let mut s = toml_spec(DENTAL);
        s.journeys.get_mut("booking").unwrap().reminders = vec!["soon".into()];
        assert!(Flow::compile(s).unwrap_err().contains("reminder"));
        let mut s = toml_spec(DENTAL);
        s.journeys.get_mut("booking").unwrap().cadence = Some(cadence("soon", "sms", "x"));
        let e = Flow::compile(s).unwrap_err();
        assert!(e.contains("journeys.booking.cadence.steps[0].after"), "{e}");
    }

    fn cadence(after: &str, channel: &str, text: &str) -> CadenceSpec {
        CadenceSpec {
            steps: vec![CadenceStep {
                after: after.into(),
                channel: channel.into(),
                text: text.into(),
            }],
            unanswered_call: None,
        }
    }

    #[test]
    fn a_journey_follows_up_with_its_own_cadence_and_otherwise_the_flows() {
        let mut s = toml_spec(DENTAL);
        s.cadence = Some(cadence("1d", "sms", "Still there?"));
        s.journeys.get_mut("booking").unwrap().cadence =
            Some(cadence("2h", "whatsapp", "About your booking: {question}"));
        let f = Flow::compile(s).unwrap();
        let now = Timestamp(1_772_550_000_000);
        let c = Captured::default();
        let mut j = Journey::default();
        let general = f.follow_up(0, now, &c, &j, "Anything else?").unwrap();
        assert_eq!(
            (
                general.channel,
                general.due.0 - now.0,
                general.text.as_str()
            ),
            (
                threadline_protocol::Channel::Sms,
                86_400_000,
                "Still there?"
            )
        );
        j.active = Some("booking".into());
        let booking = f.follow_up(0, now, &c, &j, "Which day?").unwrap();
        assert_eq!(
            (
                booking.channel,
                booking.due.0 - now.0,
                booking.text.as_str()
            ),
            (
                threadline_protocol::Channel::Whatsapp,
                7_200_000,
                "About your booking: Which day?"
            )
        );
        assert!(
            f.follow_up(1, now, &c, &j, "Which day?").is_none(),
            "one step"
        );
    }
}
