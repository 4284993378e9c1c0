//! Scenario files: who the simulated customers are, what they say on
//! which channel, how many at once or how fast, and for how long.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// The tenant's flow file, relative to the scenario file (none: the
    /// node only records messages; no reply is expected then).
    pub flow: Option<PathBuf>,
    /// IANA zone of the tenant.
    #[serde(default = "default_zone")]
    pub timezone: String,
    /// The node's simulated clock (RFC 3339): a weekday daytime instant,
    /// so quiet hours never hold a reply back during a run.
    #[serde(default = "default_clock")]
    pub clock: String,
    /// The tenant answers calls with the speech assistant (voice journeys
    /// then speak: `say` steps are speech turns) instead of ringing the
    /// owner (voice journeys are then `missed_call` steps).
    #[serde(default)]
    pub voice_assistant: bool,
    pub load: Load,
    pub journeys: Vec<Journey>,
    #[serde(default)]
    pub agents: Agents,
}

fn default_zone() -> String {
    "America/New_York".into()
}

fn default_clock() -> String {
    "2026-03-03T15:00:00Z".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// `customers` simulated customers at once, each running journey after
    /// journey (a fresh identity each time) with think times.
    Closed,
    /// Journeys start at `rate` per second whatever the node's latency.
    Open,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub model: Model,
    /// Closed model: concurrent customers (conversations in progress).
    #[serde(default = "default_customers")]
    pub customers: usize,
    /// Open model: customer messages per second (after the ramp); new
    /// journeys start at this rate divided by their mean number of steps.
    #[serde(default)]
    pub rate: f64,
    /// Open model: seconds to ramp from 0 to `rate`.
    #[serde(default)]
    pub ramp_secs: f64,
    /// Stop starting journeys after this long...
    pub duration_secs: Option<f64>,
    /// ...or after this many customer messages.
    pub messages: Option<u64>,
    /// A customer's pause before each message: [min, max] milliseconds.
    #[serde(default = "default_think")]
    pub think_ms: [u64; 2],
    /// Journeys come from this many returning customers (their messages
    /// continue existing conversations) instead of a new customer each;
    /// only for journeys that expect no replies.
    pub identities: Option<u64>,
    /// How long a customer waits for each expected reply.
    #[serde(default = "default_reply_timeout")]
    pub reply_timeout_ms: u64,
}

fn default_customers() -> usize {
    100
}

fn default_think() -> [u64; 2] {
    [0, 0]
}

fn default_reply_timeout() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Signed Twilio SMS webhooks; replies reach the fake Twilio.
    Sms,
    /// Signed WhatsApp Cloud API webhooks; replies reach the fake Meta API.
    Whatsapp,
    /// The web chat WebSocket; replies come back on the socket.
    Webchat,
    /// The gateway JSON API; replies are recorded (sandbox), not sent.
    Api,
    /// Twilio voice webhooks: `missed_call` steps, or speech turns (`say`)
    /// with `voice_assistant = true`.
    Voice,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Webchat => "webchat",
            Channel::Api => "api",
            Channel::Voice => "voice",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journey {
    pub name: String,
    #[serde(default = "one")]
    pub weight: u32,
    pub channel: Channel,
    pub steps: Vec<Step>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the customer writes (`{name}`: the customer's name).
    pub say: Option<String>,
    /// A call nobody answers (voice journeys).
    #[serde(default)]
    pub missed_call: bool,
    /// Replies the customer must get for this step.
    #[serde(default)]
    pub replies: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agents {
    /// Agent desktops connected over the WebSocket, accepting every offer
    /// and answering once.
    #[serde(default)]
    pub count: usize,
    /// What an agent says after accepting.
    #[serde(default = "default_agent_reply")]
    pub reply: String,
}

fn default_agent_reply() -> String {
    "Hi, this is a person from the team. How can I help?".into()
}

impl Scenario {
    /// Reads and checks a scenario file; the flow path becomes absolute.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut s: Scenario = toml::from_str(&src)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        if let Some(f) = &s.flow {
            let base = path.parent().unwrap_or(Path::new("."));
            s.flow =
                Some(std::fs::canonicalize(base.join(f)).map_err(|e| {
                    anyhow::anyhow!("{}: flow {}: {e}", path.display(), f.display())
                })?);
        }
        s.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        if self.journeys.is_empty() || self.journeys.iter().all(|j| j.weight == 0) {
            return Err("at least one [[journeys]] with a weight".into());
        }
        for j in &self.journeys {
            if j.steps.is_empty() {
                return Err(format!("journey {:?} has no steps", j.name));
            }
            for (i, st) in j.steps.iter().enumerate() {
                match (j.channel, st.missed_call, &st.say) {
                    (Channel::Voice, true, None) if !self.voice_assistant => {}
                    (Channel::Voice, false, Some(_)) if self.voice_assistant => {
                        if st.replies > 1 {
                            return Err(format!(
                                "journey {:?} step {i}: a speech turn gets one answer",
                                j.name
                            ));
                        }
                    }
                    (Channel::Voice, _, _) => {
                        return Err(format!(
                            "journey {:?} step {i}: voice steps are `missed_call = true`, or speech (`say`) with `voice_assistant = true`",
                            j.name
                        ))
                    }
                    (_, false, Some(_)) => {}
                    _ => {
                        return Err(format!(
                            "journey {:?} step {i}: a step says something (`say`)",
                            j.name
                        ))
                    }
                }
                if j.channel == Channel::Api && st.replies > 0 {
                    return Err(format!(
                        "journey {:?}: replies to the gateway API are not delivered anywhere to wait for",
                        j.name
                    ));
                }
            }
        }
        let l = &self.load;
        if l.duration_secs.is_none() && l.messages.is_none() {
            return Err("[load] needs `duration_secs` or `messages`".into());
        }
        if l.model == Model::Open && l.rate <= 0.0 {
            return Err("[load] an open model needs `rate` > 0".into());
        }
        if l.model == Model::Closed && l.customers == 0 {
            return Err("[load] a closed model needs `customers` > 0".into());
        }
        if l.identities == Some(0) {
            return Err("[load] identities must be at least 1".into());
        }
        if l.identities.is_some()
            && self
                .journeys
                .iter()
                .any(|j| j.steps.iter().any(|s| s.replies > 0) || j.channel == Channel::Webchat)
        {
            return Err(
                "[load] returning `identities` are for journeys without replies (replies would mix)"
                    .into(),
            );
        }
        if l.think_ms[0] > l.think_ms[1] {
            return Err("[load] think_ms is [min, max]".into());
        }
        Ok(())
    }

    /// Mean customer messages per journey, by weight.
    pub fn mean_steps(&self) -> f64 {
        let total: u32 = self.journeys.iter().map(|j| j.weight).sum();
        self.journeys
            .iter()
            .map(|j| f64::from(j.weight) * j.steps.len() as f64)
            .sum::<f64>()
            / f64::from(total.max(1))
    }

    /// A journey by weight.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        let total: u32 = self.journeys.iter().map(|j| j.weight).sum();
        let mut n = rng.u32(0..total);
        for (i, j) in self.journeys.iter().enumerate() {
            if n < j.weight {
                return i;
            }
            n -= j.weight;
        }
        0
    }
}
