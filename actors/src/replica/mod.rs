//! Replicas and ownership moves in storage (the cluster's half of `store`).
//!
//! A node *holds* the conversations it owns: the ordinary tables (`log`,
//! `snapshots`, `contacts`, `conversations`, `timers`, `outbox`), plus an
//! `epochs` row once ownership has moved at least once. It keeps *replicas*
//! of conversations owned by the node before it in hash order:
//! - `replicas`: conversation id → `ReplicaMeta` (key, epoch, owner, last seq);
//! - `replica_contacts`: `tenant \0 address` → conversation id;
//! - `replica_snapshots`: conversation id → snapshot (the folded base);
//! - `replica_tail`: the records that came since, in arrival order under a
//!   node-local sequence (appends: the cheap way to write into redb),
//!   each tagged with its conversation, epoch and event seq; indexed per
//!   conversation in memory (`Store::replica_pending`), folded into the
//!   snapshot every `FOLD_EVERY` records of a conversation (or when a
//!   quiet conversation's records are `TAIL_SPAN` behind the newest), and
//!   truncated below the oldest record still needed. At open the whole
//!   tail is folded, so a node starts with it empty.
//!
//! Every ownership move raises the conversation's epoch. A replica refuses
//! events from an epoch older than its own, and a node refuses to keep a
//! replica of a conversation it holds at the same or a newer epoch: that
//! is the fence that keeps a stale owner (a paused node that was taken
//! over) from acknowledging anything, since an owner acknowledges only
//! once its replica accepted.
//!
//! # Tables and writes
//!
//! the cluster's tables (`epochs`, `replicas`, `replica_contacts`,
//! `replica_snapshots`, `replica_tail`) and their writes inside the writer's
//! transaction. Replica records are appended to `replica_tail` under a
//! node-local sequence (random keys made every record a write into a random
//! leaf: the replica's writes cost several times the owner's), tagged with
//! conversation, epoch and seq, indexed per conversation in memory
//! (`Store::replica_pending`, a `Pending` like the log's, changed only after
//! a commit: `Tail::settle`), and truncated below the index's low water; a
//! conversation quiet for `TAIL_SPAN` records is folded so the tail stays
//! bounded; at open the whole tail (and an earlier node's `replica_log`,
//! which is dropped) is folded into `replica_snapshots`, keeping only records
//! of each replica's current epoch. A replica's `replicas` row is written
//! when it starts, gets a new owner, a base or a fold, not for every change:
//! every read (`replica_meta`, `replicas`, `replica_state`, and the writer
//! itself) adds the index's records since to its last seq. Replica changes
//! come with their verdicts (contiguous records stored, folded every 64; a
//! gap or a newer epoch asks for a base; an older epoch, or a conversation
//! this node holds, is fenced), `Install` (a conversation taken over:
//! snapshot, index, epoch, timer and outbox rows replaced, stale log records
//! and replica rows dropped) and `Demote` (handed over: held rows dropped, a
//! replica kept). The pool's `agent_work` row moves with the conversation:
//! `Install` writes the one the hand-over carried (or, for a take-over,
//! `derived_work`: who holds it, or that it waits, from its state's
//! `assigned_agent` and `waiting`), `Demote` drops it; a waiting row
//! installed is queued again at the pool's home (`enqueue` ignores a
//! conversation it already has).

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use threadline_protocol::codec::{self, TimerRow};
use threadline_protocol::{ConversationId, ConversationState, LogRecord, OutboxEntry};

use crate::store::{replay, Damage, Pending, Store, StoreError};

mod apply;
mod reads;

pub(crate) use apply::apply;

pub(crate) const REPLICAS: TableDefinition<u64, &[u8]> = TableDefinition::new("replicas");
pub(crate) const REPLICA_CONTACTS: TableDefinition<&str, u64> =
    TableDefinition::new("replica_contacts");
pub(crate) const REPLICA_SNAPSHOTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("replica_snapshots");
pub(crate) const REPLICA_TAIL: TableDefinition<u64, &[u8]> = TableDefinition::new("replica_tail");
/// The replica records of nodes before the tail: keyed by (conversation,
/// event seq), so every record was written into a random place of the
/// tree. Folded into the snapshots and dropped at open.
const OLD_REPLICA_LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("replica_log");

/// Replica records of one conversation folded into its snapshot at once.
const FOLD_EVERY: u32 = 64;
/// A conversation whose oldest unfolded record is this far behind the
/// newest is folded, so a quiet one does not keep the tail from being
/// truncated.
const TAIL_SPAN: u64 = 1 << 16;
/// At most this many such folds per commit.
const FORCED_FOLDS: usize = 64;
/// The tail is truncated once this many records below the oldest one
/// still needed can go.
const TRUNCATE_TAIL_EVERY: u64 = 8192;

/// What a commit did to the replica tail's index, applied to
/// `Store::replica_pending` once it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TailEffect {
    Added {
        conv: u64,
        seq: u32,
        key: u64,
    },
    /// Folded into the snapshot up to `seq`.
    Covered {
        conv: u64,
        seq: u32,
    },
    /// The replica was replaced or went: none of its records is needed.
    Dropped {
        conv: u64,
    },
}

/// The writer's cursor into the replica tail.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    pub next_key: u64,
    truncated_below: u64,
    /// Set by a commit that truncates, until it is known durable.
    truncating: Option<u64>,
    pub effects: Vec<TailEffect>,
}

impl Tail {
    /// The commit failed: its keys are handed out again.
    pub(crate) fn undo(&mut self, start: u64) {
        self.next_key = start;
        self.truncating = None;
        self.effects.clear();
    }

    /// The commit is durable: its effects go into the index.
    pub(crate) fn settle(&mut self, index: &mut Pending) {
        if let Some(below) = self.truncating.take() {
            self.truncated_below = below;
        }
        for e in self.effects.drain(..) {
            match e {
                TailEffect::Added { conv, seq, key } => index.push(conv, seq, key),
                TailEffect::Covered { conv, seq } => index.covered(conv, seq),
                TailEffect::Dropped { conv } => index.covered(conv, u32::MAX),
            }
        }
    }
}

/// A tail record: conversation, epoch, event seq (little-endian), then the
/// encoded log record.
fn tail_record(conv: u64, epoch: u64, seq: u32, record: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + record.len());
    b.extend_from_slice(&conv.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(record);
    b
}

/// (conversation, epoch, the log record) of a tail record.
fn untail(b: &[u8]) -> Result<(u64, u64, LogRecord), StoreError> {
    let bad = || StoreError::Redb("unreadable replica tail record".into());
    let conv = u64::from_le_bytes(b.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let epoch = u64::from_le_bytes(
        b.get(8..16)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let rec = codec::decode_log_record(b.get(20..).ok_or_else(bad)?)?;
    Ok((conv, epoch, rec))
}

/// The records of `conv` at `epoch` among tail records `keys`.
fn tail_records(
    tail: &impl ReadableTable<u64, &'static [u8]>,
    conv: u64,
    epoch: u64,
    keys: &[u64],
) -> Result<Vec<LogRecord>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(v) = tail.get(*k)? {
            let (c, e, rec) = untail(v.value())?;
            if c == conv && e == epoch {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// Folds records `keys` of replica `conv` (at `epoch`) into its snapshot;
/// the event seq the snapshot is at then.
fn fold(
    rsnaps: &mut redb::Table<u64, &[u8]>,
    rtail: &redb::Table<u64, &[u8]>,
    conv: u64,
    epoch: u64,
    keys: &[u64],
) -> Result<Option<u32>, StoreError> {
    let recs = tail_records(rtail, conv, epoch, keys)?;
    fold_records(rsnaps, conv, &recs)
}

/// Folds `recs` into the replica snapshot of `conv`; the event seq the
/// snapshot is at then.
fn fold_records(
    rsnaps: &mut redb::Table<u64, &[u8]>,
    conv: u64,
    recs: &[LogRecord],
) -> Result<Option<u32>, StoreError> {
    let base = snapshot_in(rsnaps, conv)?;
    match replay(ConversationId(conv), base, recs)? {
        Some(s) => {
            rsnaps.insert(conv, codec::encode_snapshot(&s).as_slice())?;
            Ok(Some(s.last_seq))
        }
        None => Ok(None),
    }
}

/// What a replica knows of a conversation owned elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMeta {
    pub tenant: String,
    pub contact: String,
    pub epoch: u64,
    /// The node that sent the last change.
    pub owner: String,
    /// The last event seq the replica has. (The stored row's is as of its
    /// last write: the start, a new owner, a base or a fold; the records
    /// in the tail since are counted in by every read.)
    pub last_seq: u32,
    /// Records in the tail not folded yet.
    pub unfolded: u32,
}

/// One conversation's committed change, as an owner sends it to its replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub conv: u64,
    pub tenant: String,
    pub contact: String,
    pub epoch: u64,
    pub owner: String,
    pub body: ReplicaBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReplicaBody {
    /// Consecutive log records (event seq, encoded `LogRecord`); after
    /// them the owner is at event `through` (no records: a check that the
    /// replica is there).
    Events {
        records: Vec<(u32, Vec<u8>)>,
        through: u32,
    },
    /// The whole conversation (an encoded snapshot): the base a replica
    /// that is missing something starts again from.
    Base { snapshot: Vec<u8> },
}

/// A replica's answer to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Durable here.
    Stored,
    /// The replica lacks what comes before: send a `Base`.
    NeedBase,
    /// The sender's epoch is older than this node's: it no longer owns
    /// the conversation.
    Fenced,
}

/// A conversation this node takes over (from its replica, or handed over
/// by its previous owner): everything the writer replaces in one commit.
pub struct Install {
    pub conv: u64,
    pub tenant: String,
    pub contact: String,
    pub epoch: u64,
    pub snapshot: Vec<u8>,
    /// Timer rows of what this node held before (dropped).
    pub old_timers: Vec<u64>,
    pub timers: Vec<TimerRow>,
    pub outbox: Vec<OutboxEntry>,
    /// The agent pool's row of it (waiting for or held by an agent).
    pub work: Option<threadline_protocol::AgentWork>,
}

/// A conversation this node handed over: its held rows go, a replica stays.
pub struct Demote {
    pub conv: u64,
    pub meta: ReplicaMeta,
    pub snapshot: Vec<u8>,
    pub old_timers: Vec<u64>,
}

/// The writes of the cluster, applied inside the writer's transaction.
pub(crate) enum ClusterWrite<'a> {
    Replica {
        entries: &'a [ReplicaEntry],
    },
    /// `log_keys`: the conversation's pending log records (dropped).
    Install {
        install: &'a Install,
        log_keys: Vec<u64>,
    },
    Demote {
        demote: &'a Demote,
        log_keys: Vec<u64>,
    },
}

/// Every key of conversation `conv` in a table keyed by (conversation, seq).
fn of(conv: u64) -> std::ops::RangeInclusive<(u64, u32)> {
    (conv, 0)..=(conv, u32::MAX)
}

/// Drops what a node held of conversation `c` besides its snapshot and
/// index: its pending log records, its timers, its queued messages.
fn drop_rows(
    log: &mut redb::Table<u64, &[u8]>,
    timers: &mut redb::Table<u64, &[u8]>,
    outbox: &mut redb::Table<(u64, u32), &[u8]>,
    c: u64,
    log_keys: Vec<u64>,
    old_timers: &[u64],
) -> Result<(), StoreError> {
    for k in log_keys {
        log.remove(k)?;
    }
    for id in old_timers {
        timers.remove(*id)?;
    }
    outbox.retain_in(of(c), |_, _| false)?;
    Ok(())
}

/// Format version of the replica row (`Kind::ReplicaMeta`).
const REPLICA_META_VERSION: u16 = 1;

fn encode_meta(m: &ReplicaMeta) -> Vec<u8> {
    codec::encode(codec::Kind::ReplicaMeta, REPLICA_META_VERSION, m)
}

/// The replica row of `conv` in `table`, if any.
fn meta_in(
    table: &impl ReadableTable<u64, &'static [u8]>,
    conv: u64,
) -> Result<Option<ReplicaMeta>, StoreError> {
    table.get(conv)?.map(|v| decode_meta(v.value())).transpose()
}

/// The replica snapshot of `conv` in `table`, if any.
fn snapshot_in(
    table: &impl ReadableTable<u64, &'static [u8]>,
    conv: u64,
) -> Result<Option<ConversationState>, StoreError> {
    Ok(table
        .get(conv)?
        .map(|v| codec::decode_snapshot(v.value()))
        .transpose()?)
}

impl ReplicaMeta {
    /// The row as it stands with the tail's indexed records since it was
    /// written: (seq of the last, how many), if any.
    fn with_tail(mut self, indexed: Option<(u32, usize)>) -> ReplicaMeta {
        if let Some((seq, n)) = indexed {
            self.last_seq = self.last_seq.max(seq);
            self.unfolded = n as u32;
        }
        self
    }
}

/// A replica row: headed and checksummed since postcard; before, bare
/// bincode with no header. A bare row is read as such only when it does
/// not carry the header (its kind byte and a matching checksum).
fn decode_meta(b: &[u8]) -> Result<ReplicaMeta, StoreError> {
    match codec::decode_only_v1(codec::Kind::ReplicaMeta, b) {
        Ok(m) => Ok(m),
        Err(e) if b.first() == Some(&(codec::Kind::ReplicaMeta as u8)) && !e.is_damage() => {
            Err(StoreError::Redb(format!("unreadable replica row: {e}")))
        }
        Err(headed) => codec::decode_bare_bincode(b).map_err(|bare| {
            StoreError::Redb(format!(
                "unreadable replica row: {headed} (as a row of before: {bare})"
            ))
        }),
    }
}

/// The cluster's tables in the node's database, for `Store::open_with`.
pub struct ReplicaTables;

impl crate::store::Extension for ReplicaTables {
    fn create_tables(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        Store::create_cluster_tables(txn)
    }
    fn recover(&self, store: &Store) -> Result<usize, StoreError> {
        store.recover_replicas()
    }
    fn check(&self, r: &redb::ReadTransaction, out: &mut Vec<Damage>) -> Result<(), StoreError> {
        for row in r.open_table(REPLICA_SNAPSHOTS)?.iter()? {
            let (k, v) = row?;
            if let Err(e) = codec::decode_snapshot(v.value()) {
                out.push(Damage {
                    table: "replica_snapshots",
                    conversation: Some(ConversationId(k.value())),
                    error: e.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Opens the node's store with the cluster's tables (what a node runs on).
pub fn open(
    dir: &std::path::Path,
    cache_bytes: usize,
) -> Result<(std::sync::Arc<Store>, crate::store::OpenReport), StoreError> {
    Store::open_with(dir, cache_bytes, &ReplicaTables)
}

/// `Store::check_data` of a node's data directory, replicas included.
pub fn check_data(dir: &std::path::Path) -> Result<Vec<Damage>, StoreError> {
    Store::check_data(dir, &ReplicaTables)
}

impl Store {
    /// Creates the cluster's tables (at open).
    pub(crate) fn create_cluster_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(REPLICAS)?;
        txn.open_table(REPLICA_CONTACTS)?;
        txn.open_table(REPLICA_SNAPSHOTS)?;
        txn.open_table(REPLICA_TAIL)?;
        Ok(())
    }

    /// At open: folds every replica tail record (and the records of the
    /// old `replica_log` table, which goes) into its replica's snapshot,
    /// so the tail starts empty. Records of an epoch other than the
    /// replica's (it was replaced by a newer owner's base) or of a replica
    /// this node no longer keeps are dropped. Returns the records folded.
    pub(crate) fn recover_replicas(&self) -> Result<usize, StoreError> {
        let mut by_conv: HashMap<u64, Vec<(u64, LogRecord)>> = HashMap::new();
        let mut old_table = false;
        let mut any = false;
        {
            let r = self.db()?.begin_read()?;
            for item in r.open_table(REPLICA_TAIL)?.iter()? {
                let (_, v) = item?;
                let (conv, epoch, rec) = untail(v.value())?;
                by_conv.entry(conv).or_default().push((epoch, rec));
                any = true;
            }
            match r.open_table(OLD_REPLICA_LOG) {
                Ok(t) => {
                    old_table = true;
                    // It held only the replica's current epoch.
                    let metas = r.open_table(REPLICAS)?;
                    for item in t.iter()? {
                        let (k, v) = item?;
                        let conv = k.value().0;
                        let epoch = meta_in(&metas, conv)?.map_or(0, |m| m.epoch);
                        let rec = codec::decode_log_record(v.value())?;
                        by_conv.entry(conv).or_default().push((epoch, rec));
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !any && !old_table {
            return Ok(0);
        }
        let mut folded = 0;
        let w = self.db()?.begin_write()?;
        {
            let mut metas = w.open_table(REPLICAS)?;
            let mut rsnaps = w.open_table(REPLICA_SNAPSHOTS)?;
            for (conv, records) in by_conv {
                let Some(mut m) = meta_in(&metas, conv)? else {
                    continue;
                };
                let recs: Vec<LogRecord> = records
                    .into_iter()
                    .filter(|(e, _)| *e == m.epoch)
                    .map(|(_, r)| r)
                    .collect();
                folded += recs.len();
                if let Some(seq) = fold_records(&mut rsnaps, conv, &recs)? {
                    m.last_seq = m.last_seq.max(seq);
                    m.unfolded = 0;
                    metas.insert(conv, encode_meta(&m).as_slice())?;
                }
            }
            w.open_table(REPLICA_TAIL)?.retain(|_, _| false)?;
        }
        if old_table {
            w.delete_table(OLD_REPLICA_LOG)?;
        }
        w.commit()?;
        Ok(folded)
    }
}

/// The agent pool's row of a conversation taken over from a replica, from
/// its state: held by its agent, or waiting for one.
pub fn derived_work(state: &ConversationState) -> Option<threadline_protocol::AgentWork> {
    let (agent, skills, priority, since) = match (&state.assigned_agent, &state.waiting) {
        (Some(a), _) => (Some(a.clone()), Vec::new(), 0, state.updated_at),
        (None, Some(w)) => (None, w.skills.clone(), w.priority, w.since),
        (None, None) => return None,
    };
    let channel = state
        .messages
        .iter()
        .rev()
        .find(|m| m.direction == threadline_protocol::Direction::Inbound)
        .map_or(threadline_protocol::Channel::Sms, |m| m.channel);
    Some(threadline_protocol::AgentWork {
        conv: state.id,
        tenant: state.tenant.clone(),
        channel,
        skills,
        priority,
        since,
        agent,
    })
}

/// What a conversation's state implies for the timer index and the outbox
/// of the node that holds it.
pub fn derived_rows(state: &ConversationState) -> (Vec<TimerRow>, Vec<OutboxEntry>) {
    let owner = codec::TimerOwner::Conversation(state.id);
    let timers = state
        .timers
        .iter()
        .map(|t| TimerRow {
            id: t.id,
            due: t.due,
            owner,
        })
        .collect();
    let outbox = state
        .messages
        .iter()
        .filter(|m| {
            m.direction == threadline_protocol::Direction::Outbound
                && m.delivery == threadline_protocol::Delivery::Queued
        })
        .map(|m| OutboxEntry {
            conv: state.id,
            seq: m.seq,
            tenant: state.tenant.clone(),
            to: state
                .identities
                .address_for(m.channel)
                .unwrap_or(&state.contact)
                .to_owned(),
            channel: m.channel,
            body: m.text.clone(),
            template: None,
        })
        .collect();
    (timers, outbox)
}

#[cfg(test)]
mod tests;
