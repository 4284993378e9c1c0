//! Compiling a flow file: checks (placeholders, durations, intents) that refuse
//! a bad flow before it reaches a customer.

use super::*;
use std::collections::BTreeMap;

use chrono::NaiveTime;
use threadline_protocol::Captured;

use crate::flows::nlu::IntentModel;

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
            if let Some(next) = &i.on_yes {
                if i.reply.is_none() {
                    return Err(format!(
                        "intent {:?}: `on_yes` only beside a `reply`",
                        i.name
                    ));
                }
                if !spec.intents.iter().any(|o| &o.name == next) {
                    return Err(format!(
                        "intent {:?}: `on_yes` names an unknown intent {next:?}",
                        i.name
                    ));
                }
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
}

pub(super) fn duration_ms(s: &str) -> Option<i64> {
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

/// Every `{placeholder}` a text of the flow uses must be one the engine
/// fills (`name`, `persona`, a slot of the flow; `question` in follow-ups,
/// `via` in call greetings), or it would reach customers literally.
pub(super) fn check_placeholders(spec: &FlowSpec) -> Result<(), String> {
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
    let v = &spec.voice;
    let tag =
        |t: &str| !t.is_empty() && t.len() <= 8 && t.chars().all(|c| c.is_ascii_alphanumeric());
    if v.language.len() > 35 || !v.language.split('-').all(tag) {
        return Err(format!(
            "voice.language: {:?} is not a language tag such as \"en-US\" or \"es-MX\"",
            v.language
        ));
    }
    if v.hints.len() > 100 {
        return Err("voice.hints: at most 100 hints".into());
    }
    if let Some((i, _)) = v
        .hints
        .iter()
        .enumerate()
        .find(|(_, h)| h.trim().is_empty() || h.chars().count() > 100 || h.contains(','))
    {
        return Err(format!(
            "voice.hints[{i}]: a hint is a word or phrase of 1 to 100 characters, without commas"
        ));
    }
    if !(1..=30).contains(&v.timeout_seconds) {
        return Err("voice.timeout_seconds: between 1 and 30".into());
    }
    for (i, intent) in spec.intents.iter().enumerate() {
        if let Some(r) = &intent.reply {
            check(format!("intents[{i}].reply"), r, &[])?;
        }
        if let Some(r) = &intent.reply_when_booked {
            if intent.reply.is_none() {
                return Err(format!(
                    "intents[{i}].reply_when_booked: only beside a `reply`"
                ));
            }
            check(format!("intents[{i}].reply_when_booked"), r, &["when"])?;
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
        if let Some(t) = &c.voicemail {
            check(format!("{key}.voicemail"), t, &[])?;
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

pub(super) fn fill(
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
