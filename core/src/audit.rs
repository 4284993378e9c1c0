//! The tamper-evident audit trail: every consent change and every gate
//! decision, as one JSON record per line, hash-chained per tenant.
//!
//! A record is `{"seq", "tenant", "contact", "at", "time", "kind", "detail",
//! "prev"}`; its `hash` is the lowercase hex SHA-256 of that object
//! serialized by serde_json (keys sorted, no whitespace), and `prev` is the
//! previous record's hash (64 zeros for the first). Records are sealed by the
//! storage writer inside the same transaction as the events they describe,
//! so the chain has one order and no gaps. Editing, removing or reordering
//! any record breaks every hash after it; `verify` finds the first break.

use std::io::BufRead;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use threadline_protocol::Timestamp;

pub type Hash = [u8; 32];
pub const GENESIS: Hash = [0; 32];

/// An audit record before the writer gives it its place in the chain.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    pub tenant: String,
    pub contact: String,
    pub kind: &'static str,
    pub detail: Value,
    pub at: Timestamp,
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

use crate::clock::rfc3339;

/// A consent change as JSON, the same in the audit trail and the API.
pub fn consent_change_json(c: &threadline_protocol::ConsentChange) -> Value {
    json!({
        "status": c.status.as_str(),
        "channel": c.channel.map(|x| x.as_str()),
        "purpose": c.purpose,
        "source": c.source,
        "keyword": c.keyword,
        "raw_text": c.raw_text,
        "provider_message_id": c.provider_message_id,
        "proof": c.proof,
    })
}

/// Seals `draft` as record `seq` after `prev`: returns the NDJSON line and
/// the record's hash.
pub fn seal(prev: &Hash, seq: u64, d: &AuditDraft) -> (String, Hash) {
    let mut record = json!({
        "seq": seq,
        "tenant": d.tenant,
        "contact": d.contact,
        "at": d.at.0,
        "time": rfc3339(d.at),
        "kind": d.kind,
        "detail": d.detail,
        "prev": hex(prev),
    });
    let hash: Hash = Sha256::digest(record.to_string().as_bytes()).into();
    record["hash"] = json!(hex(&hash));
    (record.to_string(), hash)
}

#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub tenants: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Broken {
    pub line: usize,
    pub reason: String,
}

/// Checks an exported trail (all records of one or more tenants, in order).
pub fn verify(input: impl BufRead) -> Result<Verified, Broken> {
    // Chains are per tenant, and in a cluster per node too: an export from
    // a cluster names each record's node (`node`, outside the hash).
    let mut heads: std::collections::HashMap<(String, String), (u64, String)> = Default::default();
    let mut records = 0;
    for (i, line) in input.lines().enumerate() {
        let line_no = i + 1;
        let broken = |reason: String| Broken {
            line: line_no,
            reason,
        };
        let line = line.map_err(|e| broken(format!("unreadable: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut v: Map<String, Value> =
            serde_json::from_str(&line).map_err(|e| broken(format!("not a JSON object: {e}")))?;
        let node = match v.remove("node") {
            None => String::new(),
            Some(Value::String(n)) => n,
            Some(_) => return Err(broken("node is not a name".into())),
        };
        let claimed = match v.remove("hash") {
            Some(Value::String(h)) => h,
            _ => return Err(broken("no hash".into())),
        };
        let tenant = v
            .get("tenant")
            .and_then(Value::as_str)
            .ok_or_else(|| broken("no tenant".into()))?
            .to_owned();
        let seq = v
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| broken("no seq".into()))?;
        let prev = v
            .get("prev")
            .and_then(Value::as_str)
            .ok_or_else(|| broken("no prev".into()))?
            .to_owned();
        let chain = (node, tenant.clone());
        let (want_seq, want_prev) = heads
            .get(&chain)
            .map(|(s, h)| (s + 1, h.clone()))
            .unwrap_or((1, hex(&GENESIS)));
        if seq != want_seq {
            return Err(broken(format!(
                "tenant {tenant}: record {seq} where {want_seq} was expected (missing or reordered)"
            )));
        }
        if prev != want_prev {
            return Err(broken(format!(
                "tenant {tenant}: record {seq} does not follow the previous record"
            )));
        }
        let actual = hex(&Sha256::digest(Value::Object(v).to_string().as_bytes()));
        if actual != claimed {
            return Err(broken(format!(
                "tenant {tenant}: record {seq} was altered (hash mismatch)"
            )));
        }
        heads.insert(chain, (seq, claimed));
        records += 1;
    }
    let tenants: std::collections::HashSet<&String> = heads.keys().map(|(_, t)| t).collect();
    Ok(Verified {
        records,
        tenants: tenants.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let (line, h) = seal(
                    &prev,
                    seq,
                    &AuditDraft {
                        tenant: "acme".into(),
                        contact: "+15551234567".into(),
                        kind: "consent",
                        detail: json!({"status": "opted_out", "n": seq}),
                        at: Timestamp(1_800_000_000_000 + seq as i64),
                    },
                );
                prev = h;
                line
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let text = chain(5).join("\n");
        assert_eq!(
            verify(text.as_bytes()),
            Ok(Verified {
                records: 5,
                tenants: 1
            })
        );
    }

    #[test]
    fn edits_removals_and_reorders_are_detected() {
        let lines = chain(5);
        let edited: Vec<String> = lines
            .iter()
            .map(|l| {
                l.replace(
                    "\"n\":3,\"status\":\"opted_out\"",
                    "\"n\":3,\"status\":\"opted_in\"",
                )
            })
            .collect();
        assert_ne!(edited, lines);
        let e = verify(edited.join("\n").as_bytes()).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("altered"));

        let mut removed = lines.clone();
        removed.remove(1);
        assert_eq!(verify(removed.join("\n").as_bytes()).unwrap_err().line, 2);

        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        assert_eq!(verify(swapped.join("\n").as_bytes()).unwrap_err().line, 3);

        // Re-sealing an edited record does not help: the next one breaks.
        let mut v: Map<String, Value> = serde_json::from_str(&lines[1]).unwrap();
        v.remove("hash");
        v.insert("detail".into(), json!({"status": "opted_in"}));
        let h = hex(&Sha256::digest(
            Value::Object(v.clone()).to_string().as_bytes(),
        ));
        v.insert("hash".into(), json!(h));
        let mut forged = lines.clone();
        forged[1] = Value::Object(v).to_string();
        assert_eq!(verify(forged.join("\n").as_bytes()).unwrap_err().line, 3);
    }
}
