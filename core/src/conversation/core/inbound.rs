//! A customer's message in: dedup, consent keywords, delivery reports, what the
//! contact tells about themselves.

use super::*;

use threadline_protocol::codec::InboundMessage;
use threadline_protocol::{ConsentChange, ConsentStatus};

use crate::consent::keywords::{self, Keyword};
use crate::consent::policy::Purpose;
use threadline_protocol::{Author, Channel, ConvEvent, Delivery, Direction, Message, Timestamp};

impl Conversation {
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
    pub(super) fn opt_out_scope(&self, ch: Channel) -> Option<Channel> {
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
}

/// How far along its life a delivery state is. Reports only move a
/// message forward; `blocked` is final.
pub(super) fn delivery_rank(d: Delivery) -> u8 {
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

pub(super) fn delivery_advances(from: Delivery, to: Delivery) -> bool {
    !matches!(from, Delivery::Blocked | Delivery::Internal)
        && delivery_rank(to) > delivery_rank(from)
}
