//! The node's configuration: one typed struct, read from TOML, validated
//! before anything starts, overridable by command-line flags. Errors name
//! the key and the line.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

fn default_service_name() -> String {
    "threadline".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}
fn default_batch_delay_ms() -> u64 {
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

fn default_cluster_server_name() -> String {
    "threadline-cluster".into()
}

fn default_stalled_after_minutes() -> u32 {
    60
}

fn default_replication_factor() -> u8 {
    2
}

fn default_heartbeat_ms() -> u64 {
    500
}

fn default_failure_after_ms() -> u64 {
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

fn default_ws_write_timeout() -> u64 {
    10_000
}
fn default_gateway_in_flight() -> usize {
    4096
}
fn default_body_timeout() -> u64 {
    15_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_ws_idle_timeout() -> u64 {
    120_000
}
fn default_ws_per_source() -> usize {
    64
}

fn default_http() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_max_body() -> usize {
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

fn default_offer_timeout() -> u64 {
    30
}
fn default_agent_grace() -> u64 {
    60
}
fn default_wait_text() -> String {
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

fn default_storage_cache_mb() -> usize {
    32
}

fn default_max_resident() -> usize {
    200_000
}
fn default_passivate_after() -> u64 {
    600
}
fn default_snapshot_every() -> u32 {
    64
}
fn default_persistence_queue() -> usize {
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

fn default_retry_attempts() -> u32 {
    8
}
fn default_retry_base_ms() -> u64 {
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

fn default_twilio_base() -> String {
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

fn default_whatsapp_base() -> String {
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

fn default_quiet_hours_abroad() -> String {
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

fn default_outreach_basis() -> String {
    "relationship_or_consent".into()
}

fn default_template_language() -> String {
    "en_US".into()
}

fn default_true() -> bool {
    true
}
fn default_quiet_states() -> Vec<String> {
    ["FL", "OK", "MD", "WA", "CT", "TX", "AL"]
        .map(String::from)
        .to_vec()
}

fn default_inactive_after() -> u64 {
    24 * 3600
}
fn default_close_after() -> u64 {
    7 * 24 * 3600
}

fn default_timezone() -> String {
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

/// A configuration problem: which key, on which line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: `{}`: {}", self.key, self.message),
            None => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A path into the TOML document, like `tenants[0].timezone`.
#[derive(Debug, Clone)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

fn path_text(path: &[Seg]) -> String {
    segs_text(path.iter().map(Seg::as_ref))
}

impl Seg {
    fn as_ref(&self) -> SegRef<'static> {
        match self {
            Seg::Key(k) => SegRef::Key(k),
            Seg::Index(i) => SegRef::Index(*i),
        }
    }
}

/// `tenants[0].timezone` from its steps.
fn segs_text<'a>(path: impl Iterator<Item = SegRef<'a>>) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            SegRef::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            SegRef::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// One step of a key path, borrowed (from `Seg` or `OwnedSeg`).
#[derive(Clone, Copy)]
enum SegRef<'a> {
    Key(&'a str),
    Index(usize),
}

/// The 1-based line where the value at `path` (or its nearest present
/// ancestor) is written.
fn line_of(src: &str, path: &[Seg]) -> Option<usize> {
    let path: Vec<SegRef> = path.iter().map(Seg::as_ref).collect();
    line_of_path(src, &path)
}

fn line_of_path(src: &str, path: &[SegRef]) -> Option<usize> {
    enum Cur<'a> {
        Table(&'a toml_edit::Table),
        Item(&'a toml_edit::Item),
    }
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut cur = Cur::Table(doc.as_table());
    let mut span = None;
    for seg in path {
        let next = match (&cur, seg) {
            (Cur::Table(t), SegRef::Key(k)) => t.get(k).map(Cur::Item),
            (Cur::Item(toml_edit::Item::ArrayOfTables(a)), SegRef::Index(i)) => {
                a.get(*i).map(Cur::Table)
            }
            (Cur::Item(it), SegRef::Key(k)) => it.get(*k).map(Cur::Item),
            (Cur::Item(it), SegRef::Index(i)) => it.get(*i).map(Cur::Item),
            (Cur::Table(_), SegRef::Index(_)) => None,
        };
        let Some(next) = next else { break };
        let s = match &next {
            Cur::Table(t) => t.span(),
            Cur::Item(it) => it.span(),
        };
        span = s.or(span);
        cur = next;
    }
    span.map(|r| line_at(src, r.start))
}

fn line_at(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

pub use threadline_actors::phone::is_e164;

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Config {
    /// Parses and validates a config file's text.
    pub fn parse(src: &str) -> Result<Config, ConfigError> {
        Self::parse_at(src, Path::new("."))
    }

    /// Parses and checks a config whose relative file names (certificates,
    /// keys) are relative to `base_dir`, the config file's directory; the
    /// first problem found.
    pub fn parse_at(src: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse_all(src, base_dir).map_err(|mut e| e.swap_remove(0))
    }

    /// Parses and checks a config, reporting every problem, each with its
    /// key path and line. A value of the wrong type or an unknown key is
    /// reported and set aside so the rest is still read and checked.
    pub fn parse_all(src: &str, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut text = src.to_owned();
        let mut errors = Vec::new();
        let cfg = loop {
            match toml::from_str::<Config>(&text) {
                Ok(cfg) => break Some(cfg),
                Err(e) => {
                    let mut path = e.span().and_then(|r| key_path_at(&text, r.start));
                    // A missing key is named inside the table that lacks it.
                    let missing = e.message().contains("missing field `");
                    if let (true, Some(p), Some(k)) = (missing, &mut path, key_from_toml_error(&e))
                    {
                        p.push(OwnedSeg::Key(k));
                    }
                    let (key, line) = match &path {
                        Some(p) => (owned_path_text(p), owned_line_of(src, p)),
                        None => (
                            key_from_toml_error(&e).unwrap_or_else(|| "(syntax)".into()),
                            e.span().map(|r| line_at(&text, r.start)),
                        ),
                    };
                    errors.push(ConfigError {
                        key,
                        line,
                        message: plain_types(e.message().trim()),
                    });
                    // Set the offending key aside and read the rest; a
                    // missing key or a syntax error ends the reading.
                    match path.and_then(|p| without(&text, &p)) {
                        Some(rest) if errors.len() < 100 => text = rest,
                        _ => break None,
                    }
                }
            }
        };
        let Some(mut cfg) = cfg else {
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            return Err(errors);
        };
        cfg.base_dir = base_dir.to_path_buf();
        errors.extend(
            cfg.check_all()
                .into_iter()
                .map(|(path, message)| ConfigError {
                    key: path_text(&path),
                    line: line_of(src, &path),
                    message,
                }),
        );
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        match errors.is_empty() {
            true => Ok(cfg),
            false => Err(errors),
        }
    }
}

/// A deserializer's message in the config's words, not Rust's: "expected
/// usize" reads "expected a whole number".
fn plain_types(m: &str) -> String {
    let mut out = m.to_owned();
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected a list [...]"),
        ("expected a map", "expected a table"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

/// A key path with owned keys (from a parse error's position).
#[derive(Debug, Clone)]
enum OwnedSeg {
    Key(String),
    Index(usize),
}

fn owned_path_text(path: &[OwnedSeg]) -> String {
    segs_text(path.iter().map(OwnedSeg::as_ref))
}

fn owned_line_of(src: &str, path: &[OwnedSeg]) -> Option<usize> {
    let path: Vec<SegRef> = path.iter().map(OwnedSeg::as_ref).collect();
    line_of_path(src, &path)
}

impl OwnedSeg {
    fn as_ref(&self) -> SegRef<'_> {
        match self {
            OwnedSeg::Key(k) => SegRef::Key(k),
            OwnedSeg::Index(i) => SegRef::Index(*i),
        }
    }
}

/// The path of the innermost key whose entry (key or value) covers
/// `offset` in `src`.
fn key_path_at(src: &str, offset: usize) -> Option<Vec<OwnedSeg>> {
    fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|r| r.start <= offset && offset < r.end.max(r.start + 1))
    }
    fn walk_table(t: &toml_edit::Table, offset: usize, path: &mut Vec<OwnedSeg>) -> bool {
        for (k, item) in t.iter() {
            let (key, _) = t.get_key_value(k).expect("iterated key");
            if covers(key.span(), offset) {
                path.push(OwnedSeg::Key(k.to_owned()));
                return true;
            }
            path.push(OwnedSeg::Key(k.to_owned()));
            if walk_item(item, offset, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    fn walk_item(item: &toml_edit::Item, offset: usize, path: &mut Vec<OwnedSeg>) -> bool {
        match item {
            toml_edit::Item::Table(t) => walk_table(t, offset, path) || covers(t.span(), offset),
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(OwnedSeg::Index(i));
                    // A key in the entry, or else the entry itself (its
                    // header: where a missing key is reported).
                    if walk_table(t, offset, path) || covers(t.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
                false
            }
            toml_edit::Item::Value(v) => {
                if !covers(v.span(), offset) {
                    return false;
                }
                if let toml_edit::Value::InlineTable(t) = v {
                    for (k, v) in t.iter() {
                        path.push(OwnedSeg::Key(k.to_owned()));
                        if covers(v.span(), offset) {
                            return true;
                        }
                        path.pop();
                    }
                }
                true
            }
            toml_edit::Item::None => false,
        }
    }
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut path = Vec::new();
    walk_table(doc.as_table(), offset, &mut path).then_some(path)
}

/// `src` without the entry at `path`, if it can be removed.
fn without(src: &str, path: &[OwnedSeg]) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = src.parse().ok()?;
    let (last, parents) = path.split_last()?;
    let OwnedSeg::Key(last) = last else {
        return None;
    };
    let mut item: &mut toml_edit::Item = doc.as_item_mut();
    for seg in parents {
        item = match seg {
            OwnedSeg::Key(k) => item.get_mut(k.as_str())?,
            OwnedSeg::Index(i) => match item {
                // `[[tenants]]` entries: only a key directly in one is set
                // aside (a deeper one ends the reading).
                toml_edit::Item::ArrayOfTables(a) if parents.len() == 2 => {
                    a.get_mut(*i)?.remove(last)?;
                    return Some(doc.to_string());
                }
                other => other.get_mut(*i)?,
            },
        };
    }
    match item {
        toml_edit::Item::Table(t) => t.remove(last)?,
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            toml_edit::Item::Value(t.remove(last)?)
        }
        _ => return None,
    };
    Some(doc.to_string())
}

/// The development node's flow: the dental example, compiled in so the
/// node converses wherever it is started from.
pub const DEV_FLOW: (&str, &str) = (
    "examples/flows/dental.toml (built in)",
    include_str!("../examples/flows/dental.toml"),
);

impl Config {
    /// The development node: one `demo` tenant running the dental example
    /// flow, the sandbox provider, one demo agent, fixed tokens printed at
    /// start.
    pub fn dev() -> Config {
        Config {
            server: Server {
                admin_token: "dev-admin-token".into(),
                supervisor_token: None,
                ..Server::default()
            },
            runtime: Runtime::default(),
            providers: Providers::default(),
            tenants: vec![Tenant {
                id: "demo".into(),
                name: "Demo Business".into(),
                timezone: "America/New_York".into(),
                sms_numbers: vec!["+15550000100".into()],
                whatsapp_phone_number_id: None,
                owner_phone: Some("+15550000199".into()),
                help_text: "Demo Business: reply STOP to opt out.".into(),
                gateway_token: "gw-demo".into(),
                inactive_after_secs: default_inactive_after(),
                close_after_secs: default_close_after(),
                revoke_all: true,
                opt_out_keywords: vec![],
                opt_in_keywords: vec![],
                help_keywords: vec![],
                language_packs: vec![],
                quiet_hours_states: default_quiet_states(),
                voice_assistant: false,
                missed_call_text: None,
                stalled_after_minutes: default_stalled_after_minutes(),
                whatsapp_templates: Default::default(),
                outreach_basis: default_outreach_basis(),
                chat_frame_ancestors: Vec::new(),
                quiet_hours_abroad: default_quiet_hours_abroad(),
                quiet_hours_by_country: Default::default(),
                flow: None,
                builtin_flow: Some(DEV_FLOW),
            }],
            agents: vec![Agent {
                id: "demo-agent".into(),
                name: "Demo Agent".into(),
                token: "agent-demo".into(),
                tenants: vec!["demo".into()],
                skills: vec!["en".into()],
                capacity: BTreeMap::from([("chat".into(), 3), ("voice".into(), 1)]),
                phone: None,
            }],
            cluster: None,
            telemetry: Telemetry::default(),
            base_dir: PathBuf::from("."),
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.server
            .http
            .parse()
            .expect("validated at load: server.http is a socket address")
    }

    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id == id)
    }

    /// The consent and lifecycle settings the actors need, per tenant.
    pub fn tenant_policies(
        &self,
    ) -> std::collections::HashMap<String, threadline_actors::conversation::core::TenantPolicy>
    {
        use threadline_actors::consent::keywords::Keywords;
        use threadline_actors::consent::policy::Rule;
        use threadline_actors::conversation::core::{Lifecycle, TenantPolicy};
        self.tenants
            .iter()
            .map(|t| {
                let name = if t.name.is_empty() {
                    t.id.clone()
                } else {
                    t.name.clone()
                };
                let missed = format!(
                    "Sorry we missed your call at {name}! How can we help? Reply here and we will get back to you."
                );
                let policy = TenantPolicy {
                    help_text: if t.help_text.is_empty() {
                        format!("{name}: reply STOP to opt out.")
                    } else {
                        t.help_text.clone()
                    },
                    name,
                    keywords: Keywords::new(
                        &t.opt_out_keywords,
                        &t.opt_in_keywords,
                        &t.help_keywords,
                        &t.language_packs,
                    ),
                    revoke_all: t.revoke_all,
                    outreach_basis: threadline_actors::consent::policy::OutreachBasis::parse(
                        &t.outreach_basis,
                    )
                    .unwrap_or_default(),
                    abroad: threadline_actors::consent::policy::AbroadHours {
                        default: parse_window(&t.quiet_hours_abroad).unwrap_or((480, 1260)),
                        by_country: t
                            .quiet_hours_by_country
                            .iter()
                            .filter_map(|(c, w)| Some((c.to_ascii_uppercase(), parse_window(w)?)))
                            .collect(),
                    },
                    zone: t.timezone.parse().unwrap_or(chrono_tz::UTC),
                    strict_rules: t
                        .quiet_hours_states
                        .iter()
                        .filter_map(|s| Rule::for_state(s))
                        .collect(),
                    lifecycle: Lifecycle {
                        inactive_after_ms: t.inactive_after_secs as i64 * 1000,
                        close_after_ms: t.close_after_secs as i64 * 1000,
                    },
                    // Filled by the runtime from the configured provider.
                    providers: Vec::new(),
                    owner_phone: t.owner_phone.clone(),
                    voice_assistant: t.voice_assistant,
                    missed_call_text: t.missed_call_text.clone().unwrap_or(missed),
                    whatsapp_templates: t.whatsapp_templates.keys().cloned().collect(),
                };
                (t.id.clone(), policy)
            })
            .collect()
    }

    /// Checks every semantic rule (after flags changed the parsed file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|(path, message)| ConfigError {
            key: path_text(&path),
            line: None,
            message,
        })
    }

    /// Checks every semantic rule; returns the first offending key's path.
    fn check(&self) -> Result<(), (Vec<Seg>, String)> {
        match self.check_all().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Checks every semantic rule; returns every offending key's path and
    /// what is wrong with it.
    fn check_all(&self) -> Vec<(Vec<Seg>, String)> {
        use Seg::{Index, Key};
        let mut errs: Vec<(Vec<Seg>, String)> = Vec::new();
        if let Some(o) = &self.telemetry.otlp {
            let at = |k: &'static str| vec![Key("telemetry"), Key("otlp"), Key(k)];
            if !(o.endpoint.starts_with("http://") || o.endpoint.starts_with("https://"))
                || o.endpoint.len() > 2048
            {
                errs.push((at("endpoint"), "must be an http:// or https:// URL".into()));
            }
            if !(0.0..=1.0).contains(&o.sample_ratio) {
                errs.push((at("sample_ratio"), "must be between 0.0 and 1.0".into()));
            }
            if !(10..=60_000).contains(&o.batch_delay_ms) {
                errs.push((at("batch_delay_ms"), "must be between 10 and 60000".into()));
            }
            if o.service_name.is_empty() || o.service_name.len() > 128 {
                errs.push((at("service_name"), "must be 1 to 128 characters".into()));
            }
            if o.headers.len() > 16 {
                errs.push((at("headers"), "at most 16 headers".into()));
            }
        }
        if self.server.http.parse::<SocketAddr>().is_err() {
            errs.push((
                vec![Key("server"), Key("http")],
                format!(
                    "{:?} is not an address like 127.0.0.1:8080",
                    self.server.http
                ),
            ));
        }
        if let Some(u) = &self.server.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2048 {
                errs.push((
                    vec![Key("server"), Key("public_url")],
                    "must be an http:// or https:// URL".into(),
                ));
            }
        }
        if self.server.admin_token.len() < 8 {
            errs.push((
                vec![Key("server"), Key("admin_token")],
                "is required, at least 8 characters".into(),
            ));
        }
        if let Some(s) = &self.server.supervisor_token {
            if s.len() < 8 || *s == self.server.admin_token {
                errs.push((
                    vec![Key("server"), Key("supervisor_token")],
                    "must be at least 8 characters and differ from admin_token".into(),
                ));
            }
        }
        if !(1024..=16 << 20).contains(&self.server.max_body_bytes) {
            errs.push((
                vec![Key("server"), Key("max_body_bytes")],
                "must be between 1024 and 16777216".into(),
            ));
        }
        if let Some(tls) = &self.server.tls {
            for (key, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !self.base_dir.join(f).is_file() {
                    errs.push((
                        vec![Key("server"), Key("tls"), Key(key)],
                        format!("{} is not a readable file", f.display()),
                    ));
                }
            }
        }
        // Bounded numbers of `[server]`: (key, value, least, most).
        let s = &self.server;
        for (key, value, least, most) in [
            (
                "websocket_write_timeout_ms",
                s.websocket_write_timeout_ms,
                100,
                600_000,
            ),
            ("body_timeout_ms", s.body_timeout_ms, 100, 600_000),
            (
                "websocket_idle_timeout_ms",
                s.websocket_idle_timeout_ms,
                1_000,
                86_400_000,
            ),
            (
                "websockets_per_source",
                s.websockets_per_source as u64,
                1,
                1_000_000,
            ),
            ("max_connections", s.max_connections as u64, 1, 1_000_000),
            (
                "max_in_flight_per_gateway",
                s.max_in_flight_per_gateway as u64,
                1,
                1_000_000,
            ),
        ] {
            if !(least..=most).contains(&value) {
                errs.push((
                    vec![Key("server"), Key(key)],
                    format!("must be between {least} and {most}"),
                ));
            }
        }
        if self.server.rate_limit_per_second > 1_000_000 {
            errs.push((
                vec![Key("server"), Key("rate_limit_per_second")],
                "must be at most 1000000 (0: no limit)".into(),
            ));
        }
        if let Some(b) = self.server.rate_limit_burst {
            if b == 0 || b > 10_000_000 || self.server.rate_limit_per_second == 0 {
                errs.push((
                    vec![Key("server"), Key("rate_limit_burst")],
                    "must be between 1 and 10000000, with a rate_limit_per_second".into(),
                ));
            }
        }
        if let Some(c) = &self.cluster {
            if !is_id(&c.name) {
                errs.push((
                    vec![Key("cluster"), Key("name")],
                    "must be a name of letters, digits, - and _".into(),
                ));
            }
            match c.listen.parse::<SocketAddr>() {
                Err(_) => errs.push((
                    vec![Key("cluster"), Key("listen")],
                    format!("{:?} is not an address like 127.0.0.1:7100", c.listen),
                )),
                // Peers are told this address: it must reach this node.
                Ok(a) if a.ip().is_unspecified() => errs.push((
                    vec![Key("cluster"), Key("listen")],
                    format!(
                        "{:?} is announced to the peers, so it must be this node's own address (not {})",
                        c.listen,
                        a.ip()
                    ),
                )),
                Ok(_) => {}
            }
            if let Some((i, s)) = c
                .seeds
                .iter()
                .enumerate()
                .find(|(_, s)| s.parse::<SocketAddr>().is_err())
            {
                errs.push((
                    vec![Key("cluster"), Key("seeds"), Index(i)],
                    format!("{s:?} is not an address like 127.0.0.2:7100"),
                ));
            }
            if !(50..=60_000).contains(&c.heartbeat_ms) {
                errs.push((
                    vec![Key("cluster"), Key("heartbeat_ms")],
                    "must be between 50 and 60000".into(),
                ));
            }
            if c.failure_after_ms < 2 * c.heartbeat_ms || c.failure_after_ms > 600_000 {
                errs.push((
                    vec![Key("cluster"), Key("failure_after_ms")],
                    "must be at least twice heartbeat_ms, and at most 600000".into(),
                ));
            }
            if !(1..=2).contains(&c.replication_factor) {
                errs.push((
                    vec![Key("cluster"), Key("replication_factor")],
                    "must be 1 (no replica) or 2 (one replica)".into(),
                ));
            }
            if c.cookie.len() < 16 {
                errs.push((
                    vec![Key("cluster"), Key("cookie")],
                    "is required, at least 16 characters".into(),
                ));
            }
            if let Some(tls) = &c.tls {
                for (key, f) in [
                    ("cert_file", &tls.cert_file),
                    ("key_file", &tls.key_file),
                    ("ca_file", &tls.ca_file),
                ] {
                    if !self.base_dir.join(f).is_file() {
                        errs.push((
                            vec![Key("cluster"), Key("tls"), Key(key)],
                            format!("{} is not a readable file", f.display()),
                        ));
                    }
                }
                if rustls_pki_types::DnsName::try_from(tls.server_name.as_str()).is_err() {
                    errs.push((
                        vec![Key("cluster"), Key("tls"), Key("server_name")],
                        format!("{:?} is not a DNS name", tls.server_name),
                    ));
                }
            }
        }
        let r = &self.runtime;
        if r.max_resident_conversations == 0 {
            errs.push((
                vec![Key("runtime"), Key("max_resident_conversations")],
                "must be at least 1".into(),
            ));
        }
        if r.passivate_after_secs == 0 {
            errs.push((
                vec![Key("runtime"), Key("passivate_after_secs")],
                "must be at least 1".into(),
            ));
        }
        if r.snapshot_every_events == 0 {
            errs.push((
                vec![Key("runtime"), Key("snapshot_every_events")],
                "must be at least 1".into(),
            ));
        }
        if !(4..=65_536).contains(&r.storage_cache_mb) {
            errs.push((
                vec![Key("runtime"), Key("storage_cache_mb")],
                "must be between 4 and 65536".into(),
            ));
        }
        if !(16..=1 << 22).contains(&r.persistence_queue) {
            errs.push((
                vec![Key("runtime"), Key("persistence_queue")],
                "must be between 16 and 4194304".into(),
            ));
        }
        let p = &self.providers;
        if !(1..=50).contains(&p.retry_attempts) {
            errs.push((
                vec![Key("providers"), Key("retry_attempts")],
                "must be between 1 and 50".into(),
            ));
        }
        if !(1..=60_000).contains(&p.retry_base_ms) {
            errs.push((
                vec![Key("providers"), Key("retry_base_ms")],
                "must be between 1 and 60000".into(),
            ));
        }
        for (name, base) in [
            ("twilio", p.twilio.as_ref().map(|t| &t.api_base)),
            ("whatsapp", p.whatsapp.as_ref().map(|w| &w.api_base)),
        ] {
            if let Some(b) = base {
                if !(b.starts_with("http://") || b.starts_with("https://")) {
                    errs.push((
                        vec![Key("providers"), Key(name), Key("api_base")],
                        "must be an http:// or https:// URL".into(),
                    ));
                }
            }
        }
        if self.tenants.is_empty() {
            errs.push((
                vec![Key("tenants")],
                "at least one [[tenants]] entry is required".into(),
            ));
        }
        let mut ids = HashSet::new();
        let mut numbers = std::collections::HashMap::new();
        let mut wa_ids = std::collections::HashMap::new();
        let mut tokens = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = |k| vec![Key("tenants"), Index(i), Key(k)];
            if !is_id(&t.id) {
                errs.push((at("id"), "must be 1-64 letters, digits, '-' or '_'".into()));
            }
            if !ids.insert(t.id.as_str()) {
                errs.push((at("id"), format!("duplicate tenant id {:?}", t.id)));
            }
            if t.timezone.parse::<chrono_tz::Tz>().is_err() {
                errs.push((
                    at("timezone"),
                    format!("unknown IANA time zone {:?}", t.timezone),
                ));
            }
            for (j, n) in t.sms_numbers.iter().enumerate() {
                if !is_e164(n) {
                    errs.push((
                        vec![Key("tenants"), Index(i), Key("sms_numbers"), Index(j)],
                        format!("{n:?} is not an E.164 number like +15557654321"),
                    ));
                }
            }
            if let Some(p) = &t.owner_phone {
                if !is_e164(p) {
                    errs.push((at("owner_phone"), format!("{p:?} is not an E.164 number")));
                }
            }
            for (j, n) in t.sms_numbers.iter().enumerate() {
                if let Some(other) = numbers.insert(n.as_str(), t.id.as_str()) {
                    errs.push((
                        vec![Key("tenants"), Index(i), Key("sms_numbers"), Index(j)],
                        format!("{n} is already a number of tenant {other:?}"),
                    ));
                }
            }
            if let Some(w) = &t.whatsapp_phone_number_id {
                if w.is_empty() || w.len() > 64 || !w.bytes().all(|b| b.is_ascii_digit()) {
                    errs.push((
                        at("whatsapp_phone_number_id"),
                        "must be the digits of a WhatsApp phone number id".into(),
                    ));
                }
                if let Some(other) = wa_ids.insert(w.as_str(), t.id.as_str()) {
                    errs.push((
                        at("whatsapp_phone_number_id"),
                        format!("{w} is already used by tenant {other:?}"),
                    ));
                }
            }
            if t.missed_call_text.as_ref().is_some_and(|m| m.len() > 1600) {
                errs.push((at("missed_call_text"), "must be at most 1600 bytes".into()));
            }
            if !(1..=43_200).contains(&t.stalled_after_minutes) {
                errs.push((
                    at("stalled_after_minutes"),
                    "must be between 1 and 43200 (30 days)".into(),
                ));
            }
            for (j, o) in t.chat_frame_ancestors.iter().enumerate() {
                let host = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"))
                    .unwrap_or("");
                if host.is_empty()
                    || o.len() > 256
                    || !host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:*".contains(&b))
                {
                    errs.push((
                        vec![
                            Key("tenants"),
                            Index(i),
                            Key("chat_frame_ancestors"),
                            Index(j),
                        ],
                        format!("{o:?} is not an origin like https://www.example.com"),
                    ));
                }
            }
            if parse_window(&t.quiet_hours_abroad).is_none() {
                errs.push((
                    at("quiet_hours_abroad"),
                    format!(
                        "{:?} is not a window like \"08:00-21:00\"",
                        t.quiet_hours_abroad
                    ),
                ));
            }
            for (c, w) in &t.quiet_hours_by_country {
                if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                    errs.push((
                        at("quiet_hours_by_country"),
                        format!("{c:?} is not a two-letter country code"),
                    ));
                }
                if parse_window(w).is_none() {
                    errs.push((
                        at("quiet_hours_by_country"),
                        format!("{c}: {w:?} is not a window like \"09:00-20:00\""),
                    ));
                }
            }
            if threadline_actors::consent::policy::OutreachBasis::parse(&t.outreach_basis).is_none()
            {
                errs.push((
                    at("outreach_basis"),
                    format!(
                        "{:?} is not relationship_or_consent or consent",
                        t.outreach_basis
                    ),
                ));
            }
            for (purpose, tpl) in &t.whatsapp_templates {
                if !["conversational", "reminder", "marketing"].contains(&purpose.as_str()) {
                    errs.push((
                        at("whatsapp_templates"),
                        format!("{purpose:?}: the purpose must be conversational, reminder or marketing"),
                    ));
                }
                if tpl.name.is_empty()
                    || tpl.name.len() > 512
                    || tpl.language.is_empty()
                    || tpl.language.len() > 16
                {
                    errs.push((
                        at("whatsapp_templates"),
                        format!(
                            "{purpose}: needs a template `name` and a `language` code like en_US"
                        ),
                    ));
                }
            }
            const TEN_YEARS: u64 = 10 * 366 * 24 * 3600;
            if !(60..=TEN_YEARS).contains(&t.inactive_after_secs) {
                errs.push((
                    at("inactive_after_secs"),
                    "must be between 60 and 316224000".into(),
                ));
            }
            if !(60..=TEN_YEARS).contains(&t.close_after_secs) {
                errs.push((
                    at("close_after_secs"),
                    "must be between 60 and 316224000".into(),
                ));
            }
            for (j, p) in t.language_packs.iter().enumerate() {
                if threadline_actors::consent::keywords::language_pack(p).is_none() {
                    errs.push((
                        vec![Key("tenants"), Index(i), Key("language_packs"), Index(j)],
                        format!("unknown language pack {p:?} (available: es)"),
                    ));
                }
            }
            for (j, st) in t.quiet_hours_states.iter().enumerate() {
                if threadline_actors::consent::policy::Rule::for_state(st).is_none() {
                    errs.push((
                        vec![
                            Key("tenants"),
                            Index(i),
                            Key("quiet_hours_states"),
                            Index(j),
                        ],
                        format!("{st:?} has no rules here (FL, OK, MD, WA, CT, TX, AL)"),
                    ));
                }
            }
            for (key, list) in [
                ("opt_out_keywords", &t.opt_out_keywords),
                ("opt_in_keywords", &t.opt_in_keywords),
                ("help_keywords", &t.help_keywords),
            ] {
                if list.len() > 100 || list.iter().any(|k| k.trim().is_empty() || k.len() > 64) {
                    errs.push((
                        at(key),
                        "keyword lists hold at most 100 non-empty entries of at most 64 bytes"
                            .into(),
                    ));
                }
            }
            if t.help_text.len() > 1600 {
                errs.push((at("help_text"), "at most 1600 bytes".into()));
            }
            if t.gateway_token.len() < 6 {
                errs.push((
                    at("gateway_token"),
                    "is required, at least 6 characters".into(),
                ));
            }
            if !tokens.insert(t.gateway_token.as_str())
                || t.gateway_token == self.server.admin_token
            {
                errs.push((
                    at("gateway_token"),
                    "must be unique among all tokens".into(),
                ));
            }
        }
        if !(1..=3600).contains(&self.runtime.offer_timeout_secs) {
            errs.push((
                vec![Key("runtime"), Key("offer_timeout_secs")],
                "must be between 1 and 3600".into(),
            ));
        }
        if self.runtime.agent_grace_secs > 86_400 {
            errs.push((
                vec![Key("runtime"), Key("agent_grace_secs")],
                "must be at most 86400".into(),
            ));
        }
        if self.runtime.agent_wait_text.len() > 1600 {
            errs.push((
                vec![Key("runtime"), Key("agent_wait_text")],
                "must be at most 1600 bytes".into(),
            ));
        }
        let mut agent_ids = HashSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            let at = |k| vec![Key("agents"), Index(i), Key(k)];
            if !is_id(&a.id) {
                errs.push((at("id"), "must be 1-64 letters, digits, '-' or '_'".into()));
            }
            if !agent_ids.insert(a.id.as_str()) {
                errs.push((at("id"), format!("duplicate agent id {:?}", a.id)));
            }
            if a.token.len() < 6 {
                errs.push((at("token"), "is required, at least 6 characters".into()));
            }
            if !tokens.insert(a.token.as_str()) || a.token == self.server.admin_token {
                errs.push((at("token"), "must be unique among all tokens".into()));
            }
            for (j, t) in a.tenants.iter().enumerate() {
                if !ids.contains(t.as_str()) {
                    errs.push((
                        vec![Key("agents"), Index(i), Key("tenants"), Index(j)],
                        format!("unknown tenant {t:?}"),
                    ));
                }
            }
            if a.phone.as_ref().is_some_and(|p| !is_e164(p)) {
                errs.push((
                    at("phone"),
                    "must be an E.164 number like +15550001111".into(),
                ));
            }
            for k in a.capacity.keys() {
                if !["chat", "sms", "whatsapp", "voice"].contains(&k.as_str()) {
                    errs.push((
                        at("capacity"),
                        format!("unknown channel {k:?} (chat, sms, whatsapp, voice)"),
                    ));
                }
            }
        }
        errs
    }
}

/// The key a serde/TOML error is about, when its message names one.
fn key_from_toml_error(e: &toml::de::Error) -> Option<String> {
    let m = e.message();
    for marker in ["unknown field `", "missing field `", "duplicate key `"] {
        if let Some(rest) = m.split_once(marker).map(|(_, r)| r) {
            if let Some((k, _)) = rest.split_once('`') {
                return Some(k.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
http = "127.0.0.1:0"
admin_token = "admin-secret"

[[tenants]]
id = "acme"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"

[[tenants]]
id = "beta"
timezone = "Europe/Berlin"
gateway_token = "gw-beta"

[[agents]]
id = "sarah"
token = "agent-sarah"
tenants = ["acme"]
capacity = { chat = 3, voice = 1 }
"#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.server.max_body_bytes, 64 * 1024);
        assert_eq!(c.runtime.max_resident_conversations, 200_000);
    }

    fn error_of(src: &str) -> ConfigError {
        Config::parse(src).unwrap_err()
    }

    #[test]
    fn semantic_errors_name_the_key_and_its_line() {
        let e = error_of(&GOOD.replace("Europe/Berlin", "Mars/Olympus"));
        assert_eq!(e.key, "tenants[1].timezone");
        assert_eq!(e.line, Some(14));
        assert!(e.message.contains("Mars/Olympus"));

        let e = error_of(&GOOD.replace("+15557654321", "555-1234"));
        assert_eq!(e.key, "tenants[0].sms_numbers[0]");
        assert_eq!(e.line, Some(9));

        let e = error_of(&GOOD.replace("127.0.0.1:0", "localhost"));
        assert_eq!(e.key, "server.http");
        assert_eq!(e.line, Some(3));

        let e = error_of(&GOOD.replace("tenants = [\"acme\"]", "tenants = [\"nope\"]"));
        assert_eq!(e.key, "agents[0].tenants[0]");
        assert_eq!(e.line, Some(20));

        let e = error_of(&GOOD.replace("gw-beta", "gw-acme"));
        assert_eq!(e.key, "tenants[1].gateway_token");

        let e = error_of(&GOOD.replace(
            "http = \"127.0.0.1:0\"",
            "http = \"127.0.0.1:0\"\nmax_in_flight_per_gateway = 0",
        ));
        assert_eq!(e.key, "server.max_in_flight_per_gateway");
        assert_eq!(e.line, Some(4));

        let e = error_of(&GOOD.replace(
            "gateway_token = \"gw-beta\"",
            "gateway_token = \"gw-beta\"\nopt_in_keywords = [\" \"]",
        ));
        assert_eq!(e.key, "tenants[1].opt_in_keywords");
    }

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        let errors = Config::parse_all(&GOOD.replace("admin_token", "admin_tokn"), Path::new("."))
            .unwrap_err();
        let e = errors
            .iter()
            .find(|e| e.key == "server.admin_tokn")
            .unwrap();
        assert_eq!(e.line, Some(4));
        let e = error_of("[server\nhttp = 1");
        assert_eq!(e.line, Some(1));
        let e = error_of(&GOOD.replace("id = \"beta\"\n", ""));
        assert_eq!(
            e.key, "tenants[1].id",
            "a missing key is named in its table"
        );
    }

    /// A supervisor token must not be the admin token (it would write).
    #[test]
    fn a_supervisor_token_equal_to_the_admin_token_is_refused() {
        let src = GOOD.replace(
            "admin_token = \"admin-secret\"",
            "admin_token = \"admin-secret\"\nsupervisor_token = \"admin-secret\"",
        );
        let errors = Config::parse_all(&src, Path::new(".")).unwrap_err();
        assert_eq!(errors[0].key, "server.supervisor_token", "{errors:?}");
        let src = GOOD.replace(
            "admin_token = \"admin-secret\"",
            "admin_token = \"admin-secret\"\nsupervisor_token = \"reads-only-please\"",
        );
        Config::parse_all(&src, Path::new(".")).unwrap();
    }

    /// Five broken keys of three kinds (a wrong type, an unknown key, three
    /// rules) are all reported in one run, each with its path and line.
    #[test]
    fn every_error_is_reported_at_once_with_its_key_and_line() {
        let src = GOOD
            .replace(
                "http = \"127.0.0.1:0\"",
                "http = \"127.0.0.1:0\"\nmax_body_bytes = \"64k\"\nbogus = 1",
            )
            .replace("admin_token = \"admin-secret\"", "admin_token = \"short\"")
            .replace("America/New_York", "America/NewYork")
            .replace(
                "gateway_token = \"gw-beta\"",
                "gateway_token = \"gw-beta\"\nsms_numbers = [\"555\"]",
            );
        let errors = Config::parse_all(&src, Path::new(".")).unwrap_err();
        let got: Vec<(String, Option<usize>)> =
            errors.iter().map(|e| (e.key.clone(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("server.max_body_bytes".to_owned(), Some(4)),
                ("server.bogus".to_owned(), Some(5)),
                ("server.admin_token".to_owned(), Some(6)),
                ("tenants[0].timezone".to_owned(), Some(10)),
                ("tenants[1].sms_numbers[0]".to_owned(), Some(18)),
            ],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("64k"), "{}", errors[0]);
        assert!(
            errors[0].message.contains("expected a whole number"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let src = include_str!("../threadline.example.toml");
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = Config::parse_all(src, base).unwrap_or_else(|e| panic!("{e:?}"));
        crate::flows::load(&cfg).unwrap();
    }

    #[test]
    fn the_dev_config_is_valid() {
        Config::dev().validate().unwrap();
    }

    #[test]
    fn e164_check() {
        assert!(is_e164("+15551234567"));
        for bad in [
            "15551234567",
            "+1555",
            "+0123456789",
            "+1555123456a",
            "+1234567890123456",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }
}
