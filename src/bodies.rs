//! The JSON bodies the HTTP API takes: what each handler parses, and the
//! JSON Schemas of the OpenAPI document (derived with schemars).

use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct InboundBody {
    pub tenant: String,
    pub channel: String,
    pub from: String,
    pub to: Option<String>,
    #[serde(default)]
    pub text: String,
    pub provider_message_id: Option<String>,
    pub at: Option<String>,
    #[serde(default)]
    pub media: Vec<String>,
    /// The provider's keyword classification: STOP, START or HELP
    /// (Twilio's `OptOutType`). Honoured, never required.
    pub opt_out_type: Option<String>,
    /// The sender's US state as the provider knows it (Twilio `FromState`).
    pub from_state: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageBody {
    pub text: String,
    pub channel: Option<String>,
    pub purpose: String,
    /// What the message is about: frequency caps (Florida, Oklahoma,
    /// Maryland: three a day) count the messages on the same subject.
    /// Default: the purpose.
    pub subject: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContactBody {
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub region: Option<String>,
    pub email: Option<String>,
    #[serde(default)]
    pub facts: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsentBody {
    pub status: String,
    pub channel: Option<String>,
    pub purpose: Option<String>,
    pub source: String,
    pub proof: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimerBody {
    pub at: Option<String>,
    pub in_seconds: Option<i64>,
    pub kind: String,
    pub text: Option<String>,
    pub channel: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdvanceBody {
    pub seconds: f64,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EscalateBody {
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    pub reason: Option<String>,
}

/// A private note on a conversation: for the business and its agents,
/// never sent to the customer.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoteBody {
    /// At most 2,000 characters.
    pub text: String,
    /// Who writes it (shown with the note).
    pub author: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutcomeBody {
    pub outcome: String,
}
