//! Reads: a conversation, its contact, the outbox, timers, the audit trail,
//! the calendar, summaries and the agent pool's rows.

use super::*;

use redb::{ReadableDatabase, ReadableTable};
use threadline_protocol::codec::{self, DeadLetter, TimerRow};
use threadline_protocol::{ConversationId, ConversationState};

impl Store {
    /// The current conversation of a contact, if any.
    pub fn conversation_of(
        &self,
        tenant: &str,
        address: &str,
    ) -> Result<Option<ConversationId>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(CONTACTS)?;
        Ok(t.get(contact_key(tenant, address).as_str())?
            .map(|v| ConversationId(v.value())))
    }

    /// (tenant, address) of a conversation id, if it exists.
    pub fn contact_of(&self, id: ConversationId) -> Result<Option<(String, String)>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(CONVERSATIONS)?;
        Ok(t.get(id.0)?.and_then(|v| split_contact_key(v.value())))
    }

    /// The durable state of a conversation: snapshot plus pending log records.
    /// The caller must have passed a persistence barrier, so that everything
    /// submitted before is committed and listed in `Pending`.
    pub fn load(&self, id: ConversationId) -> Result<Option<ConversationState>, StoreError> {
        Ok(self.load_held(id)?.0)
    }

    /// `load`, and the epoch this node holds the conversation at, read in
    /// one transaction (an actor writes at the epoch its state is from:
    /// the writer's fence refuses its writes once the conversation moved).
    pub fn load_held(
        &self,
        id: ConversationId,
    ) -> Result<(Option<ConversationState>, u64), StoreError> {
        self.noted(self.read_held(id), "conversation")
    }

    pub(super) fn read_held(
        &self,
        id: ConversationId,
    ) -> Result<(Option<ConversationState>, u64), StoreError> {
        let keys = self.pending.lock().keys(id.0);
        let r = self.db()?.begin_read()?;
        let epoch = r.open_table(EPOCHS)?.get(id.0)?.map_or(0, |v| v.value());
        let snapshot = match r.open_table(SNAPSHOTS)?.get(id.0)? {
            Some(v) => Some(codec::decode_snapshot(v.value())?),
            None => None,
        };
        let log = r.open_table(LOG)?;
        let mut records = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = log.get(k)? {
                records.push(codec::decode_log_record(v.value())?);
            }
        }
        Ok((replay(id, snapshot, &records)?, epoch))
    }

    /// Whether outbound message (conv, seq) still waits for its provider.
    pub fn outbox_contains(&self, conv: u64, seq: u32) -> Result<bool, StoreError> {
        let r = self.db()?.begin_read()?;
        Ok(r.open_table(OUTBOX)?.get((conv, seq))?.is_some())
    }

    /// Every outbound message waiting for its provider.
    pub fn outbox_entries(&self) -> Result<Vec<threadline_protocol::OutboxEntry>, StoreError> {
        let r = self.db()?.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(OUTBOX)?.iter()? {
            let (_, v) = item?;
            out.push(codec::decode_outbox(v.value())?);
        }
        Ok(out)
    }

    /// Every pending timer in the index.
    pub fn timer_rows(&self) -> Result<Vec<TimerRow>, StoreError> {
        let r = self.db()?.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(TIMERS)?.iter()? {
            let (_, v) = item?;
            out.push(codec::decode_timer_row(v.value())?);
        }
        Ok(out)
    }

    /// Sealed audit records of a tenant in chain order, optionally only one
    /// contact's and only from `since` on (a filtered export does not verify
    /// as a chain: records of other contacts are left out).
    pub fn audit_records(
        &self,
        tenant: &str,
        contact: Option<&str>,
        since: Option<threadline_protocol::Timestamp>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(AUDIT)?;
        let from = format!("{tenant}\0");
        let to = format!("{tenant}\u{1}");
        let mut out = Vec::new();
        for item in t.range(from.as_str()..to.as_str())? {
            let (_, v) = item?;
            let line = String::from_utf8_lossy(v.value()).into_owned();
            if contact.is_some() || since.is_some() {
                let rec: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if contact.is_some_and(|c| rec["contact"] != c) {
                    continue;
                }
                if since.is_some_and(|s| rec["at"].as_i64().unwrap_or(0) < s.0) {
                    continue;
                }
            }
            out.push(line);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every held or booked calendar slot.
    pub fn calendar(&self) -> Result<Vec<(String, SlotHold)>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(CALENDAR)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if let Some(h) = SlotHold::decode(v.value()) {
                out.push((k.value().to_owned(), h));
            }
        }
        Ok(out)
    }

    /// The summaries of `tenant`'s conversations held here.
    pub fn summaries(&self, tenant: &str) -> Result<Vec<codec::ConversationSummary>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(SUMMARIES)?;
        let mut out = Vec::new();
        for row in t.range((tenant, 0)..=(tenant, u64::MAX))? {
            let (_, v) = row?;
            out.push(self.noted(
                codec::decode_summary(v.value()).map_err(StoreError::from),
                "summary",
            )?);
        }
        Ok(out)
    }

    /// The outcome counts kept so far: (tenant, name, value).
    pub fn outcomes(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(OUTCOMES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if let Some((tenant, name)) = k.value().split_once('\0') {
                out.push((tenant.to_owned(), name.to_owned(), v.value()));
            }
        }
        Ok(out)
    }

    /// Open offers the agent pool made, by conversation.
    pub fn offers(&self) -> Result<Vec<threadline_protocol::OfferHold>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(OFFERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(codec::decode_offer_hold(v.value())?);
        }
        Ok(out)
    }

    /// The agent pool's durable index: conversations waiting for or held by
    /// an agent.
    pub fn agent_work(&self) -> Result<Vec<threadline_protocol::AgentWork>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(AGENT_WORK)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(codec::decode_agent_work(v.value())?);
        }
        Ok(out)
    }

    /// The agent pool's row of conversation `conv`, if any.
    pub fn agent_work_of(
        &self,
        conv: u64,
    ) -> Result<Option<threadline_protocol::AgentWork>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(AGENT_WORK)?;
        Ok(match t.get(conv)? {
            Some(v) => Some(codec::decode_agent_work(v.value())?),
            None => None,
        })
    }

    /// Every alias: (`tenant \0 address`, the address it continues).
    pub fn aliases(&self) -> Result<Vec<(String, String)>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(ALIASES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// Up to `limit` aliases after `after`, in key order (a page of
    /// `aliases`).
    pub fn aliases_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(ALIASES)?;
        let mut out = Vec::new();
        let rows = match after {
            Some(a) => {
                t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
            }
            None => t.range::<&str>(..)?,
        };
        for row in rows.take(limit) {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(DEAD_LETTERS)?;
        let mut out = Vec::new();
        for item in t.iter()?.take(limit) {
            let (k, v) = item?;
            out.push((k.value(), codec::decode_dead_letter(v.value())?));
        }
        Ok(out)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().len()
    }
}
