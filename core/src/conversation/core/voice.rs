//! Calls: the greeting, the flow on speech turns, missed calls, voicemail and
//! the whisper to the person who takes the call.

use super::*;

use threadline_protocol::codec::InboundMessage;

use crate::consent::keywords::Keyword;
use crate::consent::policy::{Decision, Purpose};
use threadline_protocol::{Author, Channel, ConvEvent, Delivery, Direction, Message, Timestamp};

impl Conversation {
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
                    VoiceAction::Hangup { text: None }
                } else {
                    // A caller still on the line (no answer, busy) is
                    // told, not dropped; the transcript has the missed call.
                    self.missed_call(&mut events, call_sid, now, tenant, next_id);
                    VoiceAction::Hangup {
                        text: Some(
                            "Sorry, nobody could take your call right now. We'll get back to you soon. Goodbye."
                                .into(),
                        ),
                    }
                }
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
        // Their last words that say something: not a key pressed, a
        // "yes", an "ok" or a goodbye.
        let recent: Vec<&Message> = self
            .state
            .messages
            .iter()
            .filter(|m| {
                m.author == Author::Customer
                    && !m.text.starts_with('[')
                    && !m.text.contains("(pressed ")
                    && m.text.split_whitespace().count() >= 3
                    && crate::flows::nlu::small_talk(&m.text).is_none()
                    && crate::flows::nlu::yes_no(&m.text).is_none()
            })
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
    pub(super) fn greeting(&self, tenant: &TenantPolicy, now: Timestamp) -> String {
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
    pub(super) fn note(
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
    pub(super) fn say(&mut self, events: &mut Vec<(u32, ConvEvent)>, text: &str, now: Timestamp) {
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

    pub(super) fn missed_call(
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
        if !tenant.missed_call_text.is_empty() {
            let spec = OutboundSpec::automated(tenant.missed_call_text.clone(), Some(Channel::Sms));
            let (_, more) = self.send_message(spec, now, tenant, next_id);
            events.extend(more);
        }
    }

    /// A call the business placed was answered. A person hears its
    /// message and, with the tenant's flow, the call goes on as a
    /// conversation (speech turns through the flow); a machine gets a
    /// short voicemail (the flow's `voicemail`), and the flow's
    /// unanswered-call text follows through the gate (once per call). The
    /// voicemail promises a text only when the gate will let it go out
    /// (now or after quiet hours); otherwise it asks for a call back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answered(
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
            .map(|i| for_the_ear(&self.state.messages[i].text))
        else {
            return VoiceAction::Hangup { text: None };
        };
        let flow = flow.map(|(f, _)| f);
        if machine {
            let (captured, journey) = (&self.state.captured, &self.state.journey);
            let text = flow.and_then(|f| f.unanswered_call_text(captured, journey));
            let left = flow
                .and_then(|f| f.voicemail_text(captured, journey))
                .unwrap_or_else(|| "Sorry we missed you.".to_owned());
            let texting = text.is_some()
                && !matches!(
                    self.gate(
                        Channel::Sms,
                        Purpose::Conversational,
                        Purpose::Conversational.as_str(),
                        now,
                        tenant,
                        false,
                    ),
                    Decision::Block { .. }
                );
            let voicemail = match texting {
                true => format!("{said} {left} We'll follow up by text."),
                false => format!("{said} {left} Please call us back when you can."),
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
    pub(super) fn speech_turn(
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
        let on_call = flow.as_ref().map(|(f, _)| *f);
        if text.is_empty() {
            // Silence: once more with the keypad offered (the flow's menu,
            // or the keys of what was asked), then a person.
            let pending = self.state.journey.waits_for_answer();
            if silence >= 2 {
                // A caller already served on this call, with nothing left
                // to answer, is let go; anyone else goes to a person.
                let served = self.state.messages.iter().any(|m| {
                    m.author == Author::Customer
                        && m.provider_message_id
                            .as_deref()
                            .is_some_and(|p| p.starts_with(&format!("{call_sid}/turn/")))
                });
                if served && !pending {
                    let t = format!("Thanks for calling {}. Goodbye.", tenant.name);
                    self.say(events, &t, now);
                    return VoiceAction::Hangup { text: Some(t) };
                }
                self.say(
                    events,
                    "Let me connect you with someone who can help. One moment.",
                    now,
                );
                return VoiceAction::Transfer {
                    fallback: tenant.owner_phone.clone(),
                    reason: "the caller said nothing".into(),
                };
            }
            // The question again (its last question, or all of what was
            // said), then the keys.
            let keys_said = [
                on_call.and_then(|f| f.key_menu()),
                on_call.and_then(|f| f.key_hint(&self.state.journey, false)),
                Some("To talk to a person, press 0.".to_owned()),
            ];
            let asked = self
                .state
                .messages
                .iter()
                .rev()
                .find(|m| m.channel == Channel::Voice && m.author == Author::Bot)
                .map(|m| {
                    // Without the keys it read (they are read again below).
                    let mut q = m.text.clone();
                    for k in keys_said.iter().flatten() {
                        q = q.replace(k.as_str(), "");
                    }
                    let q = q.trim();
                    // One apology is enough, and no "Great!" again.
                    let q = q.strip_prefix("Sorry, I didn't catch that.").unwrap_or(q);
                    let q = q.trim_start();
                    let q = q.strip_prefix("Great! ").unwrap_or(q);
                    last_question(q.trim(), pending)
                })
                .filter(|q| !q.is_empty())
                .unwrap_or_else(|| "You can tell me what you need.".into());
            let prompt = match on_call.and_then(|f| f.key_hint(&self.state.journey, true)) {
                Some(keys) => format!(
                    "Sorry, I didn't hear anything. {asked} {keys} To talk to a person, press 0."
                ),
                None => format!(
                    "Sorry, I didn't hear anything. {asked} You can also press 0 to talk to a person."
                ),
            };
            return VoiceAction::Gather {
                prompt,
                turn,
                silence: silence + 1,
            };
        }
        // A key: what it means where the call stands (`Flow::key_answer`),
        // else 1 yes and 2 no; 0 (a person) is read below.
        let pressed = text
            .strip_prefix("(pressed ")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|d| d.parse::<u8>().ok())
            .filter(|d| (1..=9).contains(d));
        let meant = pressed.and_then(|d| {
            on_call
                .and_then(|f| f.key_answer(d, &self.state.journey))
                .or_else(|| match d {
                    1 => Some("yes".to_owned()),
                    2 => Some("no".to_owned()),
                    _ => None,
                })
        });
        let heard = match &meant {
            Some(m) => format!("{m} {text}"),
            None => text.to_owned(),
        };
        let fresh = self.note(events, Author::Customer, &heard, &key, now);
        let text = meant.as_deref().unwrap_or(text);
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
        let keyword = tenant.keywords.classify_spoken(text);
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
        let goodbye = ends_call(text);
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
                    let mut r = t
                        .reply
                        .map(|r| for_the_ear(&r))
                        .unwrap_or_else(|| "Is there anything else I can help with?".into());
                    // The keys for what was just asked; the menu when
                    // nothing was understood.
                    let lost = self.state.journey.misunderstood > 0;
                    if let Some(keys) = flow.key_hint(&self.state.journey, lost) {
                        r = format!("{r} {keys}");
                    }
                    if lost {
                        r.push_str(" To talk to a person, press 0.");
                    }
                    // A plain answer (an address, hours) would leave the
                    // caller in silence: ask what else.
                    if !lost
                        && !self.state.journey.waits_for_answer()
                        && !r.trim_end().ends_with('?')
                    {
                        r.push_str(" Is there anything else I can help with?");
                    }
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
}

/// What to ask again after a silence: the last question of `said` ("How
/// can I help you today?"); with none, all of it when it waits for an
/// answer (`pending`: "I can do Thu at 3:00 PM. Say yes or press 1 to
/// confirm, or tell me another time."), else how it can help.
fn last_question(said: &str, pending: bool) -> String {
    let Some(end) = said.rfind('?') else {
        return match pending {
            true => said.to_owned(),
            false => "How can I help you?".to_owned(),
        };
    };
    let start = said[..end].rfind(['.', '!', '?']).map_or(0, |i| i + 1);
    said[start..=end].trim().to_owned()
}

/// The caller is done: a goodbye, or "that's all", "no that's it",
/// "nope, I'm good", "end call", "quit".
fn ends_call(text: &str) -> bool {
    if crate::flows::nlu::small_talk(text) == Some(crate::flows::nlu::SmallTalk::Bye) {
        return true;
    }
    let words = crate::consent::keywords::normalize(text);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let has = |x: &str| w.contains(&x);
    let phrase = |p: &[&str]| w.windows(p.len()).any(|win| win == p);
    has("bye")
        || has("goodbye")
        || phrase(&["that", "is", "all"])
        || phrase(&["thats", "all"])
        || phrase(&["that", "is", "it"])
        || phrase(&["thats", "it"])
        || phrase(&["all", "set"])
        || phrase(&["nothing", "else"])
        || phrase(&["no", "thanks"])
        || phrase(&["no", "thank", "you"])
        || phrase(&["i", "am", "good"])
        || phrase(&["im", "good"])
        || phrase(&["end", "call"])
        || phrase(&["end", "the", "call"])
        || (w.len() <= 2 && (has("end") || has("quit")))
}

pub(super) fn channel_words(c: Channel) -> &'static str {
    match c {
        Channel::Sms => "text",
        Channel::Whatsapp => "WhatsApp",
        Channel::Voice => "the phone",
        Channel::Webchat => "chat",
        Channel::Email => "email",
    }
}
