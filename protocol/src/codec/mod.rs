//! Versioned binary formats for everything Threadline stores, and the
//! envelope of everything its nodes send each other.
//!
//! Every stored value starts with a 4-byte header: a kind byte, a flags
//! byte and a little-endian `u16` format version, followed by the
//! encoding of that version's type. Flag bit 0 (`CHECKSUMMED`) says a
//! CRC-32 of everything before it (header and payload) follows as 4
//! little-endian bytes: a value whose bytes changed on disk decodes to
//! `CodecError::Damaged` instead of to other content. Flag bit 1
//! (`POSTCARD`) says the payload is postcard (1.x); without it, it is
//! bincode 2 (standard config), which every value written before
//! postcard used. Values written before the checksum existed (flags 0)
//! still decode. Writers always write the current version, checksummed,
//! in postcard; readers accept every version listed in `decode_*`, in
//! either encoding, and upgrade it to the current type. A change to a
//! stored type adds a new version (keeping the old type as `...V{n}` here
//! and its upgrade function) and a golden fixture under
//! `protocol/tests/fixtures/`.
//!
//! Between nodes, every payload is `WIRE_VERSION` (one byte) followed by
//! the postcard encoding of its type (`encode_wire` / `decode_wire`); a
//! payload of another version is refused by name, never decoded as
//! something else. The types themselves live with the code that sends
//! them, each with a golden fixture.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::conversation::{Channel, ConvEvent, ConversationState};
use crate::ids::ConversationId;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    LogRecord = 1,
    Snapshot = 2,
    DeadLetter = 3,
    TimerRow = 4,
    Outbox = 5,
    AgentWork = 6,
    OfferHold = 7,
    Summary = 8,
    /// A replica's row of a conversation it keeps (`actors::replica`).
    ReplicaMeta = 9,
}

pub const LOG_RECORD_VERSION: u16 = 1;
pub const SNAPSHOT_VERSION: u16 = 6;
/// Version 2 added `TimerOwner::Offer`; version 1 rows decode unchanged.
pub const TIMER_ROW_VERSION: u16 = 2;
pub const OUTBOX_VERSION: u16 = 2;
pub const DEAD_LETTER_VERSION: u16 = 1;
pub const AGENT_WORK_VERSION: u16 = 1;
pub const OFFER_HOLD_VERSION: u16 = 1;
pub const SUMMARY_VERSION: u16 = 1;

/// Flags byte: a CRC-32 trailer follows the payload.
const CHECKSUMMED: u8 = 1;
/// Flags byte: the payload is postcard (else bincode 2, standard config).
const POSTCARD: u8 = 2;

/// The version of the envelope of node-to-node payloads (version 1 was
/// bare bincode, without this byte).
pub const WIRE_VERSION: u8 = 2;

/// Why a node-to-node payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty payload")]
    Empty,
    #[error("payload of wire version {found}, this node speaks {WIRE_VERSION}")]
    Version { found: u8 },
    #[error("unreadable payload: {0}")]
    Corrupt(#[from] postcard::Error),
    #[error("payload has {0} trailing bytes")]
    Trailing(usize),
}

/// A node-to-node payload: the wire version, then `value` in postcard.
pub fn encode_wire<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![WIRE_VERSION];
    postcard::to_extend(value, out).expect("encoding plain data into a Vec cannot fail")
}

/// Reads a node-to-node payload of this node's wire version.
pub fn decode_wire<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    match bytes.split_first() {
        None => Err(WireError::Empty),
        Some((&WIRE_VERSION, payload)) => {
            let (value, rest) = postcard::take_from_bytes(payload)?;
            match rest.len() {
                0 => Ok(value),
                n => Err(WireError::Trailing(n)),
            }
        }
        Some((&found, _)) => Err(WireError::Version { found }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value's checksum does not match its bytes (or its flags are
    /// unknown): the storage under it was damaged.
    #[error("damaged {kind:?}: its checksum does not match its bytes")]
    Damaged { kind: Kind },
    #[error("stored value too short for its header")]
    Truncated,
    #[error("stored value is a {found:?}, expected {expected:?}")]
    WrongKind { expected: Kind, found: u8 },
    #[error("unsupported {kind:?} format version {version}")]
    UnsupportedVersion { kind: Kind, version: u16 },
    #[error("corrupt {kind:?} (version {version}): {reason}")]
    Corrupt {
        kind: Kind,
        version: u16,
        reason: String,
    },
    #[error("{kind:?} has {extra} trailing bytes")]
    Trailing { kind: Kind, extra: usize },
}

/// The most a decoder may allocate for one value. A length prefix is
/// outside input (a damaged file, a peer): without a bound, one forged
/// length made a decoder allocate 2.5 GB (found by fuzzing). Every record
/// Threadline writes is far smaller (a message's text is at most 8 KiB).
pub const MAX_DECODED_BYTES: usize = 256 << 20;

/// The bincode configuration of the values written before postcard.
type BincodeConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODED_BYTES>,
>;

/// Standard bincode with the decoding bound.
fn config() -> BincodeConfig {
    bincode::config::standard().with_limit::<MAX_DECODED_BYTES>()
}

/// `value` as format `version` of `kind`: the header, postcard, the CRC.
/// For stored types defined outside this crate; the ones here have their
/// own `encode_*`.
pub fn encode<T: Serialize>(kind: Kind, version: u16, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(kind as u8);
    out.push(CHECKSUMMED | POSTCARD);
    out.extend_from_slice(&version.to_le_bytes());
    // Encoding plain data into a Vec cannot fail: every type here is
    // serde-derived without custom serializers.
    let mut out =
        postcard::to_extend(value, out).expect("encoding plain data into a Vec cannot fail");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A stored value's payload and how it is encoded.
#[derive(Clone, Copy)]
struct Payload<'a> {
    bytes: &'a [u8],
    postcard: bool,
}

/// Splits the header off; returns (version, payload).
fn header(kind: Kind, bytes: &[u8]) -> Result<(u16, Payload<'_>), CodecError> {
    if bytes.len() < 4 {
        return Err(CodecError::Truncated);
    }
    if bytes[0] != kind as u8 {
        return Err(CodecError::WrongKind {
            expected: kind,
            found: bytes[0],
        });
    }
    let version = u16::from_le_bytes([bytes[2], bytes[3]]);
    let flags = bytes[1];
    let postcard = flags & POSTCARD != 0;
    match flags & !POSTCARD {
        // Unchecksummed values predate postcard.
        0 if !postcard => Ok((
            version,
            Payload {
                bytes: &bytes[4..],
                postcard,
            },
        )),
        CHECKSUMMED => {
            if bytes.len() < 8 {
                return Err(CodecError::Damaged { kind });
            }
            let (body, trailer) = bytes.split_at(bytes.len() - 4);
            let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
            if crc32fast::hash(body) != stored {
                return Err(CodecError::Damaged { kind });
            }
            Ok((
                version,
                Payload {
                    bytes: &body[4..],
                    postcard,
                },
            ))
        }
        _ => Err(CodecError::Damaged { kind }),
    }
}

impl CodecError {
    /// Whether the bytes were damaged (checksum, or a payload that does not
    /// decode), rather than of an unknown kind or version.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            CodecError::Damaged { .. }
                | CodecError::Corrupt { .. }
                | CodecError::Trailing { .. }
                | CodecError::Truncated
        )
    }
}

fn decode_exact<T: DeserializeOwned>(
    kind: Kind,
    version: u16,
    payload: Payload<'_>,
) -> Result<T, CodecError> {
    let corrupt = |reason: String| CodecError::Corrupt {
        kind,
        version,
        reason,
    };
    let (value, extra) = if payload.postcard {
        let (value, rest) =
            postcard::take_from_bytes(payload.bytes).map_err(|e| corrupt(e.to_string()))?;
        (value, rest.len())
    } else {
        let (value, used) = bincode::serde::decode_from_slice(payload.bytes, config())
            .map_err(|e| corrupt(e.to_string()))?;
        (value, payload.bytes.len() - used)
    };
    if extra != 0 {
        return Err(CodecError::Trailing { kind, extra });
    }
    Ok(value)
}

/// Reads bincode 2 (standard config) with no header: how a few stored
/// values were written before they had one (the replica rows). For
/// readers of those, after the headed format did not match.
/// Every byte must be used.
pub fn decode_bare_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bincode::serde::decode_from_slice(bytes, config()) {
        Ok((v, used)) if used == bytes.len() => Ok(v),
        Ok((_, used)) => Err(format!("{} trailing bytes", bytes.len() - used)),
        Err(e) => Err(e.to_string()),
    }
}

/// Decodes a kind that has only ever had format version 1.
pub fn decode_only_v1<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, CodecError> {
    match header(kind, bytes)? {
        (1, p) => decode_exact(kind, 1, p),
        (version, _) => Err(CodecError::UnsupportedVersion { kind, version }),
    }
}

/// One entry of the node's write-ahead log: event `seq` of conversation `conv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub conv: ConversationId,
    pub seq: u32,
    pub event: ConvEvent,
}

pub fn encode_log_record(r: &LogRecord) -> Vec<u8> {
    encode(Kind::LogRecord, LOG_RECORD_VERSION, r)
}

pub fn decode_log_record(bytes: &[u8]) -> Result<LogRecord, CodecError> {
    decode_only_v1(Kind::LogRecord, bytes)
}

pub fn encode_snapshot(s: &ConversationState) -> Vec<u8> {
    encode(Kind::Snapshot, SNAPSHOT_VERSION, s)
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<ConversationState, CodecError> {
    match header(Kind::Snapshot, bytes)? {
        (1, p) => decode_exact::<v1::ConversationStateV1>(Kind::Snapshot, 1, p)
            .map(v1::upgrade)
            .map(v5::journey_from_slots),
        (2, p) => decode_exact::<v2::ConversationStateV2>(Kind::Snapshot, 2, p)
            .map(v2::upgrade)
            .map(v5::journey_from_slots),
        (3, p) => decode_exact::<v3::ConversationStateV3>(Kind::Snapshot, 3, p)
            .map(v3::upgrade)
            .map(v5::journey_from_slots),
        (4, p) => decode_exact::<v4::ConversationStateV4>(Kind::Snapshot, 4, p)
            .map(v4::upgrade)
            .map(v5::journey_from_slots),
        (5, p) => decode_exact::<v5::ConversationStateV5>(Kind::Snapshot, 5, p).map(v5::upgrade),
        (6, p) => decode_exact(Kind::Snapshot, 6, p),
        (version, _) => Err(CodecError::UnsupportedVersion {
            kind: Kind::Snapshot,
            version,
        }),
    }
}

/// Frozen format version 1 of the snapshot, and its upgrade.
mod v1;

/// Frozen format version 2 of the snapshot (before the consent ledger).
mod v2;

/// Frozen format version 3 of the snapshot (before `waiting`).
mod v3;

/// Frozen format version 4 of the snapshot (before `subjects`).
mod v4;

/// Frozen format version 5 of the snapshot (before `journey`: the flow's
/// machine state was kept in the captured slots).
mod v5;

/// Who receives a timer when it comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimerOwner {
    Conversation(ConversationId),
    /// The agent pool: offer `offer` of conversation `conv` expires.
    Offer {
        conv: ConversationId,
        offer: u64,
    },
}

/// The scheduler's durable index entry for one pending timer. Written in
/// the same transaction as the owner's event that scheduled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRow {
    pub id: u64,
    pub due: Timestamp,
    pub owner: TimerOwner,
}

pub fn encode_timer_row(r: &TimerRow) -> Vec<u8> {
    encode(Kind::TimerRow, TIMER_ROW_VERSION, r)
}

pub fn decode_timer_row(bytes: &[u8]) -> Result<TimerRow, CodecError> {
    // Version 1 knew only conversation owners, encoded exactly as now.
    match header(Kind::TimerRow, bytes)? {
        (v @ (1 | 2), p) => decode_exact(Kind::TimerRow, v, p),
        (version, _) => Err(CodecError::UnsupportedVersion {
            kind: Kind::TimerRow,
            version,
        }),
    }
}

/// A decided outbound message waiting for its provider. Keyed by its
/// message id, which is also the idempotency key sent to the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub conv: ConversationId,
    pub seq: u32,
    pub tenant: String,
    pub to: String,
    pub channel: Channel,
    pub body: String,
    /// Send as the tenant's approved WhatsApp template for this purpose
    /// (`body` is its parameter): the 24-hour window was closed.
    pub template: Option<String>,
}

pub fn encode_outbox(e: &OutboxEntry) -> Vec<u8> {
    encode(Kind::Outbox, OUTBOX_VERSION, e)
}

pub fn decode_outbox(bytes: &[u8]) -> Result<OutboxEntry, CodecError> {
    match header(Kind::Outbox, bytes)? {
        (1, p) => decode_exact::<OutboxEntryV1>(Kind::Outbox, 1, p).map(|e| OutboxEntry {
            conv: e.conv,
            seq: e.seq,
            tenant: e.tenant,
            to: e.to,
            channel: e.channel,
            body: e.body,
            template: None,
        }),
        (2, p) => decode_exact(Kind::Outbox, 2, p),
        (version, _) => Err(CodecError::UnsupportedVersion {
            kind: Kind::Outbox,
            version,
        }),
    }
}

/// Frozen format version 1 of the outbox entry (before templates).
#[derive(Deserialize, Serialize)]
struct OutboxEntryV1 {
    conv: ConversationId,
    seq: u32,
    tenant: String,
    to: String,
    channel: Channel,
    body: String,
}

/// A conversation that needs or has a human agent: the agent pool's durable
/// index, written in the same transaction as the conversation's
/// `Escalated` / `AgentAssigned` events and read when the pool starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentWork {
    pub conv: ConversationId,
    pub tenant: String,
    pub channel: Channel,
    pub skills: Vec<String>,
    pub priority: i32,
    /// Since when it waits (or was taken).
    pub since: Timestamp,
    /// The agent holding it; `None` while it waits.
    pub agent: Option<String>,
}

pub fn encode_agent_work(w: &AgentWork) -> Vec<u8> {
    encode(Kind::AgentWork, AGENT_WORK_VERSION, w)
}

pub fn decode_agent_work(bytes: &[u8]) -> Result<AgentWork, CodecError> {
    decode_only_v1(Kind::AgentWork, bytes)
}

/// An open offer of a waiting conversation to an agent, kept by the agent
/// pool so that a restart neither forgets the offer nor extends its
/// deadline. Written with the offer's expiry timer, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferHold {
    pub conv: ConversationId,
    pub agent: String,
    pub offer: u64,
    /// The scheduler timer that expires it.
    pub timer: u64,
    pub expires: Timestamp,
}

pub fn encode_offer_hold(h: &OfferHold) -> Vec<u8> {
    encode(Kind::OfferHold, OFFER_HOLD_VERSION, h)
}

pub fn decode_offer_hold(bytes: &[u8]) -> Result<OfferHold, CodecError> {
    decode_only_v1(Kind::OfferHold, bytes)
}

/// A normalized inbound message, whatever channel or provider it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub channel: Channel,
    pub from: String,
    pub to: Option<String>,
    pub text: String,
    pub provider_message_id: Option<String>,
    pub at: Option<Timestamp>,
    pub media: Vec<String>,
}

/// A message that made its conversation fail repeatedly, parked for an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub tenant: String,
    pub contact: String,
    pub conversation: Option<ConversationId>,
    pub message: InboundMessage,
    pub attempts: u32,
    pub error: String,
    pub at: Timestamp,
}

pub fn encode_dead_letter(d: &DeadLetter) -> Vec<u8> {
    encode(Kind::DeadLetter, DEAD_LETTER_VERSION, d)
}

pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, CodecError> {
    decode_only_v1(Kind::DeadLetter, bytes)
}

/// What lists of conversations show of one, kept beside it (the store's
/// `summaries` table, written in the same commit as its events): who,
/// where, the last message, and what needs the business's attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub conv: ConversationId,
    pub tenant: String,
    pub contact: String,
    pub name: Option<String>,
    pub status: crate::conversation::Status,
    pub channels: Vec<Channel>,
    pub updated_at: Timestamp,
    /// The last message a person would read (not internal entries): its
    /// author label, channel, time and first 160 characters.
    pub last: Option<(String, Channel, Timestamp, String)>,
    /// The texts of the last three messages a person would read (160
    /// characters each), newest first: what a search looks in.
    pub recent: Vec<String>,
    pub assigned_agent: Option<String>,
    /// Waiting for a person since.
    pub waiting_since: Option<Timestamp>,
    /// The appointment's status and time.
    pub booking: Option<(crate::conversation::BookingStatus, Option<Timestamp>)>,
    /// Opted out on some channel.
    pub opted_out: bool,
    /// The customer's last message has no answer yet: since when, and on
    /// which channel.
    pub unanswered: Option<(Timestamp, Channel)>,
    /// The last thing from the customer is a missed call nobody heard
    /// back from: when.
    pub missed_call: Option<Timestamp>,
    /// The flow asked the customer something (or offered a time) and no
    /// follow-up is planned: since the question, on its channel.
    pub journey_idle: Option<(Timestamp, Channel)>,
}

impl ConversationSummary {
    /// Reads `s` from its last message back to the customer's last one
    /// (a commit pays for what happened since, not for the transcript).
    pub fn of(s: &ConversationState) -> ConversationSummary {
        use crate::conversation::{Author, ConsentStatus, Direction};
        let mut last = None;
        let mut answered = false;
        let mut unanswered = None;
        let mut missed_call = None;
        let mut bot_last = None;
        let recent: Vec<String> = s
            .messages
            .iter()
            .rev()
            .filter(|m| !m.is_internal())
            .take(3)
            .map(|m| m.text.chars().take(160).collect())
            .collect();
        for m in s.messages.iter().rev().filter(|m| !m.is_internal()) {
            if last.is_none() {
                last = Some((
                    m.author.label(),
                    m.channel,
                    m.recorded_at,
                    m.text.chars().take(160).collect(),
                ));
            }
            let customer = m.direction == Direction::Inbound && m.author == Author::Customer;
            if customer {
                if !answered {
                    unanswered = Some((m.recorded_at, m.channel));
                }
                break;
            }
            if m.direction == Direction::Outbound
                && matches!(m.author, Author::Bot | Author::Agent(_))
            {
                answered = true;
                if m.author == Author::Bot && bot_last.is_none() {
                    bot_last = Some((m.recorded_at, m.channel));
                }
            }
            if m.direction == Direction::Inbound
                && m.author == Author::System
                && m.text == "[missed call]"
                && missed_call.is_none()
            {
                missed_call = Some(m.recorded_at);
            }
        }
        let j = &s.journey;
        let asks = j.asking.is_some() || j.booking.as_ref().is_some_and(|b| b.offer.is_some());
        let journey_idle = (asks && j.cadence.is_none() && unanswered.is_none())
            .then_some(bot_last)
            .flatten();
        ConversationSummary {
            conv: s.id,
            tenant: s.tenant.clone(),
            contact: s.contact.clone(),
            name: s.captured.name.clone(),
            status: s.status,
            channels: s.channels.clone(),
            updated_at: s.updated_at,
            last,
            recent,
            assigned_agent: s.assigned_agent.clone(),
            waiting_since: s.waiting.as_ref().map(|w| w.since),
            booking: j.booking.as_ref().map(|b| (b.status, b.start)),
            opted_out: s
                .consent
                .iter()
                .any(|c| c.status == ConsentStatus::OptedOut)
                && crate::conversation::Channel::ALL
                    .iter()
                    .any(|c| s.consent_for(*c, "conversational") == ConsentStatus::OptedOut),
            unanswered,
            missed_call,
            journey_idle,
        }
    }
}

pub fn encode_summary(s: &ConversationSummary) -> Vec<u8> {
    encode(Kind::Summary, SUMMARY_VERSION, s)
}

pub fn decode_summary(bytes: &[u8]) -> Result<ConversationSummary, CodecError> {
    decode_only_v1(Kind::Summary, bytes)
}

#[cfg(test)]
mod tests;
