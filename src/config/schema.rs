//! The configuration's types as the file spells them, with their defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub providers: Providers,
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    #[serde(default)]
    pub agents: Vec<Agent>,
    /// Run as one node of a cluster (absent: a single node).
    pub cluster: Option<Cluster>,
    /// Traces and other telemetry sent elsewhere (absent: none).
    #[serde(default)]
    pub telemetry: Telemetry,
    /// The config file's folder: relative paths in it start here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Export request traces over OTLP (HTTP/protobuf).
    pub otlp: Option<Otlp>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// The collector's OTLP/HTTP base address; spans go to
    /// `{endpoint}/v1/traces` (a collector listens on port 4318).
    pub endpoint: String,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of requests traced, 0.0 to 1.0 (a traced caller's
    /// `traceparent` decision is kept).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// How long spans wait to be sent in one batch, in milliseconds.
    #[serde(default = "default_batch_delay_ms")]
    pub batch_delay_ms: u64,
    /// Extra HTTP headers for the collector (an API key, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

pub(super) fn default_service_name() -> String {
    "threadline".into()
}

pub(super) fn default_sample_ratio() -> f64 {
    1.0
}

pub(super) fn default_batch_delay_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// This node's name, unique in the cluster.
    pub name: String,
    /// Where this node listens for its peers (host:port).
    pub listen: String,
    /// Peers to join through (host:port).
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Shared secret of the cluster's nodes.
    pub cookie: String,
    /// How often each peer is pinged (application heartbeat).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A peer silent this long is down.
    #[serde(default = "default_failure_after_ms")]
    pub failure_after_ms: u64,
    /// Copies of each conversation: 2 (the default) keeps one replica on
    /// the next node in hash order, written before anything is
    /// acknowledged; 1 keeps none.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u8,
    /// TLS on every link between nodes (absent: plain TCP, for a private
    /// network only).
    #[serde(default)]
    pub tls: Option<ClusterTls>,
}

/// `[cluster.tls]`: each node's certificate and the CA that signs every
/// node's. A node accepts and connects only to nodes whose certificate
/// that CA signed (mutual TLS); the cookie is checked as well.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// This node's PEM certificate chain, leaf first (relative to the
    /// config file).
    pub cert_file: PathBuf,
    /// Its PEM private key.
    pub key_file: PathBuf,
    /// The cluster CA's PEM certificate(s).
    pub ca_file: PathBuf,
    /// The name every node's certificate carries (a DNS subject
    /// alternative name), checked when connecting to a node.
    #[serde(default = "default_cluster_server_name")]
    pub server_name: String,
}

pub(super) fn default_cluster_server_name() -> String {
    "threadline-cluster".into()
}

pub(super) fn default_stalled_after_minutes() -> u32 {
    60
}

pub(super) fn default_replication_factor() -> u8 {
    2
}

pub(super) fn default_heartbeat_ms() -> u64 {
    500
}

pub(super) fn default_failure_after_ms() -> u64 {
    3000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_http")]
    pub http: String,
    pub public_url: Option<String>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub admin_token: String,
    /// A bearer token that reads what the admin token reads (every GET of
    /// the API, the inbox socket) and changes nothing: for supervisors and
    /// dashboards.
    #[serde(default)]
    pub supervisor_token: Option<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests per second one source (client IP address) may make; 0 is
    /// no limit. Health, readiness and metrics are never limited.
    #[serde(default)]
    pub rate_limit_per_second: u32,
    /// Requests a source may make at once above its rate (default: twice
    /// the rate).
    #[serde(default)]
    pub rate_limit_burst: Option<u32>,
    /// A WebSocket client that does not take a frame within this long
    /// (it stopped reading) is disconnected.
    #[serde(default = "default_ws_write_timeout")]
    pub websocket_write_timeout_ms: u64,
    /// Requests each gateway (api, twilio, whatsapp, webchat) works on at
    /// once; beyond it callers get 503 with Retry-After.
    #[serde(default = "default_gateway_in_flight")]
    pub max_in_flight_per_gateway: usize,
    /// A request whose whole body has not arrived this long after its
    /// headers is answered 408 and its connection closed.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Connections open at once (HTTP and the WebSockets upgraded from
    /// them); beyond it the listener stops accepting until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A web-chat socket that sends no frame this long is closed (the
    /// widget pings while its page is open).
    #[serde(default = "default_ws_idle_timeout")]
    pub websocket_idle_timeout_ms: u64,
    /// Web-chat sockets one source (client IP address) may hold open at
    /// once; beyond it the upgrade is refused with 429.
    #[serde(default = "default_ws_per_source")]
    pub websockets_per_source: usize,
    /// Serve HTTPS (and WSS) with this certificate; absent: plain HTTP
    /// (behind a TLS-terminating proxy).
    #[serde(default)]
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first (relative to the config file).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

pub(super) fn default_ws_write_timeout() -> u64 {
    10_000
}

pub(super) fn default_gateway_in_flight() -> usize {
    4096
}

pub(super) fn default_body_timeout() -> u64 {
    15_000
}

pub(super) fn default_max_connections() -> usize {
    10_000
}

pub(super) fn default_ws_idle_timeout() -> u64 {
    120_000
}

pub(super) fn default_ws_per_source() -> usize {
    64
}

pub(super) fn default_http() -> String {
    "127.0.0.1:8080".into()
}

pub(super) fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

pub(super) fn default_max_body() -> usize {
    64 * 1024
}

impl Default for Server {
    fn default() -> Self {
        Server {
            http: default_http(),
            public_url: None,
            data_dir: default_data_dir(),
            admin_token: String::new(),
            supervisor_token: None,
            max_body_bytes: default_max_body(),
            rate_limit_per_second: 0,
            rate_limit_burst: None,
            websocket_write_timeout_ms: default_ws_write_timeout(),
            max_in_flight_per_gateway: default_gateway_in_flight(),
            body_timeout_ms: default_body_timeout(),
            max_connections: default_max_connections(),
            websocket_idle_timeout_ms: default_ws_idle_timeout(),
            websockets_per_source: default_ws_per_source(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    #[serde(default = "default_max_resident")]
    pub max_resident_conversations: usize,
    #[serde(default = "default_passivate_after")]
    pub passivate_after_secs: u64,
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_events: u32,
    #[serde(default = "default_persistence_queue")]
    pub persistence_queue: usize,
    /// redb page cache in MiB.
    #[serde(default = "default_storage_cache_mb")]
    pub storage_cache_mb: usize,
    /// How long an offer waits for an agent before it moves on.
    #[serde(default = "default_offer_timeout")]
    pub offer_timeout_secs: u64,
    /// How long an agent whose desktop dropped keeps their conversations.
    #[serde(default = "default_agent_grace")]
    pub agent_grace_secs: u64,
    /// Told to a customer when no agent can take them now; `{position}` is
    /// their place in line.
    #[serde(default = "default_wait_text")]
    pub agent_wait_text: String,
}

pub(super) fn default_offer_timeout() -> u64 {
    30
}

pub(super) fn default_agent_grace() -> u64 {
    60
}

pub(super) fn default_wait_text() -> String {
    "All of our team are busy right now. You are number {position} in line; someone will reply here as soon as they are free.".into()
}

impl Agent {
    /// The pool's view of this agent. Capacity: `chat` also sets SMS and
    /// WhatsApp unless they are given; nothing given is 3 text
    /// conversations and 1 call.
    pub fn spec(&self) -> threadline_actors::pool::routing::AgentSpec {
        let get = |k: &str| self.capacity.get(k).copied();
        let chat = get("chat").unwrap_or(if self.capacity.is_empty() { 3 } else { 0 });
        let voice = get("voice").unwrap_or(if self.capacity.is_empty() { 1 } else { 0 });
        threadline_actors::pool::routing::AgentSpec {
            id: self.id.clone(),
            name: if self.name.is_empty() {
                self.id.clone()
            } else {
                self.name.clone()
            },
            tenants: self.tenants.clone(),
            skills: self.skills.clone(),
            capacity: [
                chat,
                get("sms").unwrap_or(chat),
                get("whatsapp").unwrap_or(chat),
                voice,
            ],
            phone: self.phone.clone(),
        }
    }
}

pub(super) fn default_storage_cache_mb() -> usize {
    32
}

pub(super) fn default_max_resident() -> usize {
    200_000
}

pub(super) fn default_passivate_after() -> u64 {
    600
}

pub(super) fn default_snapshot_every() -> u32 {
    64
}

pub(super) fn default_persistence_queue() -> usize {
    65_536
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            max_resident_conversations: default_max_resident(),
            passivate_after_secs: default_passivate_after(),
            snapshot_every_events: default_snapshot_every(),
            persistence_queue: default_persistence_queue(),
            storage_cache_mb: default_storage_cache_mb(),
            offer_timeout_secs: default_offer_timeout(),
            agent_grace_secs: default_agent_grace(),
            agent_wait_text: default_wait_text(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    pub twilio: Option<Twilio>,
    pub whatsapp: Option<Whatsapp>,
    /// Attempts per outbound message before it is marked failed.
    #[serde(default = "default_retry_attempts")]
    pub retry_attempts: u32,
    /// First retry delay; doubled per attempt up to 30 s.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
}

impl Default for Providers {
    fn default() -> Self {
        Providers {
            twilio: None,
            whatsapp: None,
            retry_attempts: default_retry_attempts(),
            retry_base_ms: default_retry_base_ms(),
        }
    }
}

pub(super) fn default_retry_attempts() -> u32 {
    8
}

pub(super) fn default_retry_base_ms() -> u64 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Twilio {
    pub account_sid: String,
    pub auth_token: String,
    #[serde(default = "default_twilio_base")]
    pub api_base: String,
}

pub(super) fn default_twilio_base() -> String {
    "https://api.twilio.com".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Whatsapp {
    pub app_secret: String,
    pub verify_token: String,
    pub access_token: String,
    #[serde(default = "default_whatsapp_base")]
    pub api_base: String,
}

pub(super) fn default_whatsapp_base() -> String {
    "https://graph.facebook.com/v21.0".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default)]
    pub sms_numbers: Vec<String>,
    pub whatsapp_phone_number_id: Option<String>,
    pub owner_phone: Option<String>,
    #[serde(default)]
    pub help_text: String,
    pub gateway_token: String,
    /// Silence (seconds) after which an active conversation becomes inactive.
    #[serde(default = "default_inactive_after")]
    pub inactive_after_secs: u64,
    /// Further silence (seconds) after which an inactive conversation closes.
    #[serde(default = "default_close_after")]
    pub close_after_secs: u64,
    /// One opt-out covers every channel and purpose (FCC revoke-all; the
    /// waiver runs until 2027-01-31, on is the safe choice).
    #[serde(default = "default_true")]
    pub revoke_all: bool,
    /// Extra keywords and phrases, matched after normalization.
    #[serde(default)]
    pub opt_out_keywords: Vec<String>,
    #[serde(default)]
    pub opt_in_keywords: Vec<String>,
    #[serde(default)]
    pub help_keywords: Vec<String>,
    /// Keyword language packs, off unless listed (`es`).
    #[serde(default)]
    pub language_packs: Vec<String>,
    /// State rules applied when a recipient's location is unknown (the
    /// strictest set the tenant enables); two-letter codes.
    #[serde(default = "default_quiet_states")]
    pub quiet_hours_states: Vec<String>,
    /// Answer inbound calls with the speech assistant (`<Gather>`) instead
    /// of ringing `owner_phone`.
    #[serde(default)]
    pub voice_assistant: bool,
    /// The text sent after a missed call; empty sends none. Default: a
    /// short note with the tenant's name.
    pub missed_call_text: Option<String>,
    /// A conversation counts as stalled (`GET …/leakage`) once the
    /// customer's last message, or the flow's last question, has waited
    /// this long.
    #[serde(default = "default_stalled_after_minutes")]
    pub stalled_after_minutes: u32,
    /// Approved WhatsApp templates by purpose (`conversational`,
    /// `reminder`, `marketing`): outside the 24-hour window a message of
    /// that purpose goes out as this template, its text as the template's
    /// single body parameter.
    #[serde(default)]
    pub whatsapp_templates: std::collections::BTreeMap<String, WhatsappTemplate>,
    /// What a business-initiated conversational or reminder message (or
    /// call) needs on record: `relationship_or_consent` (the customer has
    /// contacted the business at that address, or consent is recorded) or
    /// `consent` (consent recorded). Marketing always needs a written
    /// opt-in.
    #[serde(default = "default_outreach_basis")]
    pub outreach_basis: String,
    /// The sites that may embed the web chat page in a frame (origins such
    /// as `https://www.example.com`); default: only this node's own pages.
    #[serde(default)]
    pub chat_frame_ancestors: Vec<String>,
    /// Sending hours for numbers outside the US, in the recipient's zone
    /// when known, else the tenant's: `"HH:MM-HH:MM"`. US state rules never
    /// apply to them.
    #[serde(default = "default_quiet_hours_abroad")]
    pub quiet_hours_abroad: String,
    /// Hours for particular countries (ISO 3166 codes such as `GB`),
    /// instead of `quiet_hours_abroad`.
    #[serde(default)]
    pub quiet_hours_by_country: BTreeMap<String, String>,
    /// The tenant's conversation flow (TOML), relative to the config file.
    pub flow: Option<PathBuf>,
    /// A flow compiled into the binary (the development node's dental
    /// example), used when `flow` is unset; never read from a config file.
    #[serde(skip)]
    pub builtin_flow: Option<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappTemplate {
    pub name: String,
    #[serde(default = "default_template_language")]
    pub language: String,
}

pub(super) fn default_quiet_hours_abroad() -> String {
    "08:00-21:00".into()
}

/// `"HH:MM-HH:MM"` as minutes after midnight, start before end.
pub fn parse_window(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let m = |t: &str| {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
    };
    let (a, b) = (m(a)?, m(b)?);
    (a < b).then_some((a, b))
}

pub(super) fn default_outreach_basis() -> String {
    "relationship_or_consent".into()
}

pub(super) fn default_template_language() -> String {
    "en_US".into()
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn default_quiet_states() -> Vec<String> {
    ["FL", "OK", "MD", "WA", "CT", "TX", "AL"]
        .map(String::from)
        .to_vec()
}

pub(super) fn default_inactive_after() -> u64 {
    24 * 3600
}

pub(super) fn default_close_after() -> u64 {
    7 * 24 * 3600
}

pub(super) fn default_timezone() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub token: String,
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub capacity: BTreeMap<String, u32>,
    /// Where calls transferred to this agent ring (E.164).
    pub phone: Option<String>,
}
