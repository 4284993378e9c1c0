//! What became of a message the business sent.

/// The final outcome of a message at its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent { provider_id: Option<String> },
    Failed { error: String, opted_out: bool },
}
