//! People: escalation, assignment, notes and closing by an agent.

use super::*;

use threadline_protocol::{Author, ConvEvent, Delivery, Status, Timestamp};

impl Conversation {
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
    pub(super) fn note_for_record(
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
}
