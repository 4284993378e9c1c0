//! One customer, one conversation: linked identities, imports and merges.

use super::*;
use std::collections::BTreeMap;

use threadline_protocol::{
    ConvEvent, ConversationId, Delivery, Identities, Message, Status, Timestamp,
};

impl Conversation {
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
}
