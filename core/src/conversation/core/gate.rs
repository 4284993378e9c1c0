//! Everything the business sends goes through the consent gate here: the
//! decision, its basis and its record.

use super::*;

use threadline_protocol::ConsentStatus;

use crate::consent::policy::{self, Consent, Decision, Purpose};
use threadline_protocol::{
    Author, Channel, ConvEvent, Delivery, Direction, Message, PendingTimer, TimerKind, Timestamp,
};

impl Conversation {
    /// `channel`, or else the channel of the customer's last message.
    pub(super) fn channel_or_last_inbound(&self, channel: Option<Channel>) -> Channel {
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn outbound(
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

    pub(super) fn record_decision(
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
    pub(super) fn basis(
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
}
