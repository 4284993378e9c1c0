//! Built-in understanding (`nlu`) and the flow engine (`engine`) that
//! turns a tenant's flow file into replies, captured facts, bookings and
//! hand-offs. How flows attach to a conversation is in
//! `threadline_actors::flows`.

pub mod engine;
pub mod nlu;

/// What an external responder is asked for one reply.
#[derive(Debug, Clone)]
pub struct ResponderRequest {
    pub tenant: String,
    pub persona: String,
    /// What the conversation knows (name, intent, slots, facts).
    pub facts: Vec<(String, String)>,
    /// Recent transcript, oldest first: (who, text).
    pub transcript: Vec<(String, String)>,
    /// The built-in flow's reply, sent if the responder fails.
    pub draft: String,
}
