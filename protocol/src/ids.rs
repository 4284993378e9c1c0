//! External identifiers. Internally a conversation is a `u64` allocated from
//! a node-wide monotonic sequence (sequential keys are cheap to append in
//! redb); externally it is `cnv_` followed by 16 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConversationId(pub u64);

const CONV_PREFIX: &str = "cnv_";
const MSG_PREFIX: &str = "msg_";

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CONV_PREFIX}{:016x}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {0} id")]
pub struct BadId(&'static str);

fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

impl FromStr for ConversationId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        s.strip_prefix(CONV_PREFIX)
            .and_then(parse_hex16)
            .map(ConversationId)
            .ok_or(BadId("conversation"))
    }
}

/// A message is identified by its conversation and its position in the
/// conversation's event sequence: `msg_<conversation hex>_<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageId {
    pub conversation: ConversationId,
    pub seq: u32,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MSG_PREFIX}{:016x}_{}", self.conversation.0, self.seq)
    }
}

impl FromStr for MessageId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        let rest = s.strip_prefix(MSG_PREFIX).ok_or(BadId("message"))?;
        let (hex, seq) = rest.split_once('_').ok_or(BadId("message"))?;
        Ok(MessageId {
            conversation: ConversationId(parse_hex16(hex).ok_or(BadId("message"))?),
            seq: seq.parse().map_err(|_| BadId("message"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let c = ConversationId(0x2a);
        assert_eq!(c.to_string(), "cnv_000000000000002a");
        assert_eq!("cnv_000000000000002a".parse::<ConversationId>().unwrap(), c);
        let m = MessageId {
            conversation: c,
            seq: 7,
        };
        assert_eq!(m.to_string(), "msg_000000000000002a_7");
        assert_eq!(m.to_string().parse::<MessageId>().unwrap(), m);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "cnv_",
            "cnv_2a",
            "cnv_000000000000002A",
            "xyz_000000000000002a",
            "cnv_000000000000002a0",
        ] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad}");
        }
        for bad in ["msg_000000000000002a", "msg_000000000000002a_x", "msg__1"] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }
}
