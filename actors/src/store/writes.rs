//! The batch writer: one redb transaction per batch of operations, in
//! submission order, and the write types it takes.

use super::*;
use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable};
use threadline_protocol::codec::{self, LogRecord, TimerRow};
use threadline_protocol::ConversationId;

/// Writes one batch of operations in one durable transaction.
/// Returns what must be done to `Pending` once the commit returned.
pub(crate) struct BatchWriter<'a> {
    pub next_log_key: &'a mut u64,
    pub next_dead_letter: &'a mut u64,
    pub audit_heads: &'a mut AuditHeads,
}

/// Further writes in a batch's transaction (the cluster's), given the
/// log's next key once the batch's events are in; what they return.
pub(crate) type ExtraWrites<'e, R> =
    &'e mut dyn FnMut(&redb::WriteTransaction, u64) -> Result<R, StoreError>;

pub(crate) enum Applied {
    Logged { conv: u64, seq: u32, key: u64 },
    Snapshotted { conv: u64, seq: u32 },
    Nothing,
}

/// A change to the outbox, committed with the owner's events.
#[derive(Debug, Clone)]
pub enum OutboxWrite {
    Put(threadline_protocol::OutboxEntry),
    /// The message's provider outcome is recorded: (conversation, seq).
    Delete(u64, u32),
}

/// A calendar slot and who has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotHold {
    pub conv: u64,
    pub booked: bool,
    /// A hold (not booked) lapses at this instant.
    pub until: threadline_protocol::Timestamp,
}

impl SlotHold {
    /// Whether conversation `conv` may take this slot from its holder: its
    /// own, or another customer's hold that lapsed (never a booking or a
    /// slot the business blocked).
    pub fn takeable_by(&self, conv: u64, now: threadline_protocol::Timestamp) -> bool {
        self.conv == conv || (!self.booked && self.until.0 <= now.0)
    }

    pub(super) fn encode(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[..8].copy_from_slice(&self.conv.to_le_bytes());
        b[8] = u8::from(self.booked);
        b[9..].copy_from_slice(&self.until.0.to_le_bytes());
        b
    }
    pub(super) fn decode(b: &[u8]) -> Option<SlotHold> {
        Some(SlotHold {
            conv: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            booked: *b.get(8)? == 1,
            until: threadline_protocol::Timestamp(i64::from_le_bytes(
                b.get(9..17)?.try_into().ok()?,
            )),
        })
    }
}

/// The calendar row key of `tenant`'s slot at `start`.
pub fn slot_key(tenant: &str, start: threadline_protocol::Timestamp) -> String {
    format!("{tenant}\0{:016x}", start.0)
}

/// A change to the calendar, committed with the owner's events.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum CalendarWrite {
    Put(String, SlotHold),
    Delete(String),
}

/// A change to the agent pool's index, committed with the owner's events.
#[derive(Debug, Clone)]
pub enum WorkWrite {
    Put(threadline_protocol::AgentWork),
    Delete(u64),
}

/// A change to the scheduler's timer index, committed with the owner's events.
#[derive(Debug, Clone, Copy)]
pub enum TimerIndex {
    Put(TimerRow),
    Delete(u64),
}

pub(crate) enum Write<'a> {
    /// Consecutive events of one conversation, committed together with the
    /// timer index changes they imply.
    Events {
        conv: ConversationId,
        records: &'a [(u32, Vec<u8>)],
        index: Option<(&'a str, &'a str)>,
        timers: &'a [TimerIndex],
        audit: &'a [crate::audit::AuditDraft],
        outbox: &'a [OutboxWrite],
        work: &'a [WorkWrite],
        calendar: &'a [CalendarWrite],
        outcomes: &'a [(String, u64)],
        /// The conversation's summary after these events (tenant, bytes).
        summary: Option<(&'a str, &'a [u8])>,
    },
    Snapshot {
        conv: ConversationId,
        seq: u32,
        bytes: &'a [u8],
    },
    DeadLetter {
        bytes: &'a [u8],
    },
    Alias {
        alias: &'a str,
        target: &'a str,
    },
    TimerDelete {
        id: u64,
    },
    /// An offer of `conv` opened (`hold`) or ended (`None`), with its
    /// expiry timer's index change.
    Offer {
        conv: u64,
        hold: Option<&'a [u8]>,
        timer: TimerIndex,
    },
    /// Deletes log records below `below` (already covered by snapshots).
    Truncate {
        below: u64,
    },
}

impl BatchWriter<'_> {
    /// Commits `writes`, then the cluster's writes (replicas, ownership
    /// moves), in one durable transaction; returns the replicas' verdicts.
    pub(crate) fn commit<'w, R: Default>(
        &mut self,
        db: &Database,
        writes: impl Iterator<Item = Write<'w>>,
        extra: Option<ExtraWrites<'_, R>>,
        out: &mut Vec<Applied>,
    ) -> Result<R, StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let start_log = *self.next_log_key;
        let start_dead = *self.next_dead_letter;
        // Chain heads of the tenants this batch audits, as they were before
        // it: to write once at the end, or to restore if the commit fails.
        let mut heads_before: HashMap<String, Option<(u64, crate::audit::Hash)>> = HashMap::new();
        {
            let mut log = txn.open_table(LOG)?;
            let mut snaps = txn.open_table(SNAPSHOTS)?;
            let mut contacts = txn.open_table(CONTACTS)?;
            let mut convs = txn.open_table(CONVERSATIONS)?;
            let mut dead = txn.open_table(DEAD_LETTERS)?;
            let mut timers = txn.open_table(TIMERS)?;
            let mut audit_t = txn.open_table(AUDIT)?;
            let mut audit_heads_t = txn.open_table(AUDIT_HEADS)?;
            let mut outbox_t = txn.open_table(OUTBOX)?;
            let mut aliases = txn.open_table(ALIASES)?;
            let mut work_t = txn.open_table(AGENT_WORK)?;
            let mut calendar_t = txn.open_table(CALENDAR)?;
            let mut offers_t = txn.open_table(OFFERS)?;
            let mut outcomes_t = txn.open_table(OUTCOMES)?;
            let mut summaries_t = txn.open_table(SUMMARIES)?;
            let mut timer_hwm = 0u64;
            for w in writes {
                match w {
                    Write::Events {
                        conv,
                        records,
                        index,
                        timers: timer_ops,
                        audit,
                        outbox,
                        work,
                        calendar,
                        outcomes,
                        summary,
                    } => {
                        if let Some((tenant, bytes)) = summary {
                            summaries_t.insert((tenant, conv.0), bytes)?;
                        }
                        for (k, inc) in outcomes {
                            let now = outcomes_t.get(k.as_str())?.map_or(0, |v| v.value());
                            outcomes_t.insert(k.as_str(), now.saturating_add(*inc))?;
                        }
                        for w in calendar {
                            match w {
                                CalendarWrite::Put(k, h) => {
                                    calendar_t.insert(k.as_str(), h.encode().as_slice())?;
                                }
                                CalendarWrite::Delete(k) => {
                                    calendar_t.remove(k.as_str())?;
                                }
                            }
                        }
                        for w in work {
                            match w {
                                WorkWrite::Put(row) => {
                                    work_t.insert(
                                        row.conv.0,
                                        codec::encode_agent_work(row).as_slice(),
                                    )?;
                                }
                                WorkWrite::Delete(c) => {
                                    work_t.remove(*c)?;
                                }
                            }
                        }
                        for w in outbox {
                            match w {
                                OutboxWrite::Put(e) => {
                                    outbox_t.insert(
                                        (e.conv.0, e.seq),
                                        codec::encode_outbox(e).as_slice(),
                                    )?;
                                }
                                OutboxWrite::Delete(c, s) => {
                                    outbox_t.remove((*c, *s))?;
                                }
                            }
                        }
                        for draft in audit {
                            if !heads_before.contains_key(&draft.tenant) {
                                let head = match self.audit_heads.get(&draft.tenant) {
                                    Some(h) => Some(*h),
                                    None => audit_heads_t
                                        .get(draft.tenant.as_str())?
                                        .and_then(|v| decode_head(v.value())),
                                };
                                heads_before.insert(draft.tenant.clone(), head);
                                if let Some(h) = head {
                                    self.audit_heads.insert(draft.tenant.clone(), h);
                                }
                            }
                            let (last, prev) = self
                                .audit_heads
                                .get(&draft.tenant)
                                .copied()
                                .unwrap_or((0, crate::audit::GENESIS));
                            let seq = last + 1;
                            let (line, hash) = crate::audit::seal(&prev, seq, draft);
                            let key = format!("{}\0{seq:016x}", draft.tenant);
                            audit_t.insert(key.as_str(), line.as_bytes())?;
                            self.audit_heads.insert(draft.tenant.clone(), (seq, hash));
                        }
                        for (seq, record) in records {
                            let key = *self.next_log_key;
                            *self.next_log_key += 1;
                            log.insert(key, record.as_slice())?;
                            out.push(Applied::Logged {
                                conv: conv.0,
                                seq: *seq,
                                key,
                            });
                        }
                        if let Some((tenant, address)) = index {
                            let ck = contact_key(tenant, address);
                            contacts.insert(ck.as_str(), conv.0)?;
                            convs.insert(conv.0, ck.as_str())?;
                        }
                        for op in timer_ops {
                            match op {
                                TimerIndex::Put(row) => {
                                    timers
                                        .insert(row.id, codec::encode_timer_row(row).as_slice())?;
                                    timer_hwm = timer_hwm.max(row.id);
                                }
                                TimerIndex::Delete(id) => {
                                    timers.remove(*id)?;
                                }
                            }
                        }
                    }
                    Write::TimerDelete { id } => {
                        timers.remove(id)?;
                        out.push(Applied::Nothing);
                    }
                    Write::Offer { conv, hold, timer } => {
                        match hold {
                            Some(h) => offers_t.insert(conv, h)?,
                            None => offers_t.remove(conv)?,
                        };
                        match timer {
                            TimerIndex::Put(row) => {
                                timers.insert(row.id, codec::encode_timer_row(&row).as_slice())?;
                                timer_hwm = timer_hwm.max(row.id);
                            }
                            TimerIndex::Delete(id) => {
                                timers.remove(id)?;
                            }
                        }
                        out.push(Applied::Nothing);
                    }
                    Write::Snapshot { conv, seq, bytes } => {
                        snaps.insert(conv.0, bytes)?;
                        out.push(Applied::Snapshotted { conv: conv.0, seq });
                    }
                    Write::DeadLetter { bytes } => {
                        let key = *self.next_dead_letter;
                        *self.next_dead_letter += 1;
                        dead.insert(key, bytes)?;
                        out.push(Applied::Nothing);
                    }
                    Write::Alias { alias, target } => {
                        aliases.insert(alias, target)?;
                        out.push(Applied::Nothing);
                    }
                    Write::Truncate { below } => {
                        log.retain_in(..below, |_, _| false)?;
                        out.push(Applied::Nothing);
                    }
                }
            }
            for tenant in heads_before.keys() {
                let (seq, hash) = self.audit_heads[tenant];
                let mut head = seq.to_le_bytes().to_vec();
                head.extend_from_slice(&hash);
                audit_heads_t.insert(tenant.as_str(), head.as_slice())?;
            }
            if timer_hwm > 0 {
                let mut meta = txn.open_table(META)?;
                let old = meta.get(TIMER_HWM)?.map_or(0, |v| v.value());
                if timer_hwm > old {
                    meta.insert(TIMER_HWM, timer_hwm)?;
                }
            }
        }
        let extra = match extra {
            None => Ok(R::default()),
            Some(f) => f(&txn, *self.next_log_key),
        };
        let committed = extra.and_then(|r| txn.commit().map(|()| r).map_err(StoreError::from));
        if committed.is_err() {
            self.restore(start_log, start_dead, heads_before);
            out.clear();
        }
        committed
    }

    /// Nothing of this batch is durable: hand the keys out again.
    fn restore(
        &mut self,
        start_log: u64,
        start_dead: u64,
        heads_before: HashMap<String, Option<(u64, crate::audit::Hash)>>,
    ) {
        *self.next_log_key = start_log;
        *self.next_dead_letter = start_dead;
        for (tenant, head) in heads_before {
            match head {
                Some(h) => self.audit_heads.insert(tenant, h),
                None => self.audit_heads.remove(&tenant),
            };
        }
    }
}

/// A stored chain head: seq (u64 LE) then the 32-byte hash.
pub(super) fn decode_head(b: &[u8]) -> Option<(u64, crate::audit::Hash)> {
    let seq = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let hash = b.get(8..40)?.try_into().ok()?;
    Some((seq, hash))
}

/// Convenience for tests and tools: decode every event of the log tail.
pub fn log_tail(store: &Store) -> Result<Vec<(u64, LogRecord)>, StoreError> {
    let r = store.db()?.begin_read()?;
    let t = r.open_table(LOG)?;
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        out.push((k.value(), codec::decode_log_record(v.value())?));
    }
    Ok(out)
}
