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

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use threadline_protocol::codec::{self, TimerRow};
use threadline_protocol::{ConversationId, ConversationState, LogRecord, OutboxEntry};

use crate::store::{
    contact_key, replay, Damage, Pending, Store, StoreError, AGENT_WORK, CONTACTS, CONVERSATIONS,
    EPOCHS, LOG, MOVED, OUTBOX, SNAPSHOTS, SUMMARIES, TIMERS,
};

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

/// Applies the cluster's writes of one batch; returns the verdicts of
/// each `Replica` write, in order.
///
/// Tail records are appended under `tail.next_key`; `index` is the tail's
/// committed index, which this does not change (`tail.effects` say how).
pub(crate) fn apply(
    txn: &WriteTransaction,
    writes: Vec<ClusterWrite<'_>>,
    tail: &mut Tail,
    index: &Mutex<Pending>,
    log_next: u64,
) -> Result<Vec<Vec<Verdict>>, StoreError> {
    let mut metas = txn.open_table(REPLICAS)?;
    let mut rcontacts = txn.open_table(REPLICA_CONTACTS)?;
    let mut rsnaps = txn.open_table(REPLICA_SNAPSHOTS)?;
    let mut rtail = txn.open_table(REPLICA_TAIL)?;
    let mut convs = txn.open_table(CONVERSATIONS)?;
    let start_key = tail.next_key;
    // This commit's tail records per conversation, and the conversations
    // whose committed records no longer count (replaced, gone or folded
    // in this commit).
    let mut fresh: HashMap<u64, Vec<(u32, u64)>> = HashMap::new();
    let mut local_only: HashSet<u64> = HashSet::new();
    let keys_of = |conv: u64, fresh: &HashMap<u64, Vec<(u32, u64)>>, local_only: &HashSet<u64>| {
        let mut keys = match local_only.contains(&conv) {
            true => Vec::new(),
            false => index.lock().keys(conv),
        };
        keys.extend(fresh.get(&conv).into_iter().flatten().map(|(_, k)| *k));
        keys
    };
    // A replica's row is written when it starts, moves to another owner
    // or is folded, not for every change: its last seq and unfolded count
    // are the row's plus the records indexed since (committed, and this
    // commit's).
    let current = |conv: u64,
                   m: ReplicaMeta,
                   fresh: &HashMap<u64, Vec<(u32, u64)>>,
                   local_only: &HashSet<u64>| {
        let mut m = match local_only.contains(&conv) {
            true => m,
            false => m.with_tail(index.lock().last(conv)),
        };
        if let Some(v) = fresh.get(&conv) {
            m.last_seq = m.last_seq.max(v.last().map_or(0, |(s, _)| *s));
            m.unfolded += v.len() as u32;
        }
        m
    };
    let drop_tail = |conv: u64,
                     tail: &mut Tail,
                     fresh: &mut HashMap<u64, Vec<(u32, u64)>>,
                     local_only: &mut HashSet<u64>| {
        fresh.remove(&conv);
        local_only.insert(conv);
        tail.effects.push(TailEffect::Dropped { conv });
    };
    // The tables of held conversations, only when one moves (replica
    // writes, the common case, do not need them).
    let moves = writes
        .iter()
        .any(|w| !matches!(w, ClusterWrite::Replica { .. }));
    let mut held = match moves {
        true => Some((
            txn.open_table(EPOCHS)?,
            txn.open_table(SNAPSHOTS)?,
            txn.open_table(CONTACTS)?,
            txn.open_table(LOG)?,
            txn.open_table(TIMERS)?,
            txn.open_table(OUTBOX)?,
            txn.open_table(AGENT_WORK)?,
            txn.open_table(MOVED)?,
            txn.open_table(SUMMARIES)?,
        )),
        false => None,
    };
    let mut out = Vec::new();
    for w in writes {
        match w {
            ClusterWrite::Replica { entries } => {
                let mut verdicts = Vec::with_capacity(entries.len());
                for e in entries {
                    let held = convs.get(e.conv)?.is_some().then_some(());
                    if held.is_some() {
                        // This node holds the conversation itself: at the
                        // same or a newer epoch the sender is stale; at an
                        // older one the move back settles it first.
                        verdicts.push(Verdict::Fenced);
                        continue;
                    }
                    let meta =
                        meta_in(&metas, e.conv)?.map(|m| current(e.conv, m, &fresh, &local_only));
                    let v = match &e.body {
                        ReplicaBody::Base { snapshot } => {
                            let state = codec::decode_snapshot(snapshot)?;
                            if meta.as_ref().is_some_and(|m| e.epoch < m.epoch) {
                                Verdict::Fenced
                            } else if meta
                                .as_ref()
                                .is_some_and(|m| e.epoch == m.epoch && m.last_seq >= state.last_seq)
                            {
                                // Same owner, and this replica is already
                                // further on (a base that overlapped later
                                // changes): it has all of this base.
                                Verdict::Stored
                            } else {
                                drop_tail(e.conv, tail, &mut fresh, &mut local_only);
                                rsnaps.insert(e.conv, snapshot.as_slice())?;
                                let m = ReplicaMeta {
                                    tenant: e.tenant.clone(),
                                    contact: e.contact.clone(),
                                    epoch: e.epoch,
                                    owner: e.owner.clone(),
                                    last_seq: state.last_seq,
                                    unfolded: 0,
                                };
                                metas.insert(e.conv, encode_meta(&m).as_slice())?;
                                let ck = contact_key(&e.tenant, &e.contact);
                                rcontacts.insert(ck.as_str(), e.conv)?;
                                Verdict::Stored
                            }
                        }
                        ReplicaBody::Events { records, through } => {
                            let mut write_meta = false;
                            let mut m = match meta {
                                Some(m) if e.epoch < m.epoch => {
                                    verdicts.push(Verdict::Fenced);
                                    continue;
                                }
                                Some(m) if e.epoch == m.epoch => m,
                                // A newer epoch starts from a base.
                                Some(_) => {
                                    verdicts.push(Verdict::NeedBase);
                                    continue;
                                }
                                None if records.first().is_some_and(|(s, _)| *s == 1) => {
                                    let ck = contact_key(&e.tenant, &e.contact);
                                    rcontacts.insert(ck.as_str(), e.conv)?;
                                    write_meta = true;
                                    ReplicaMeta {
                                        tenant: e.tenant.clone(),
                                        contact: e.contact.clone(),
                                        epoch: e.epoch,
                                        owner: e.owner.clone(),
                                        last_seq: 0,
                                        unfolded: 0,
                                    }
                                }
                                None => {
                                    verdicts.push(Verdict::NeedBase);
                                    continue;
                                }
                            };
                            let mut gap = false;
                            for (seq, rec) in records {
                                if *seq <= m.last_seq {
                                    continue; // sent again after a failure
                                }
                                if *seq != m.last_seq + 1 {
                                    gap = true;
                                    break;
                                }
                                let key = tail.next_key;
                                tail.next_key += 1;
                                let row = tail_record(e.conv, m.epoch, *seq, rec);
                                rtail.insert(key, row.as_slice())?;
                                fresh.entry(e.conv).or_default().push((*seq, key));
                                tail.effects.push(TailEffect::Added {
                                    conv: e.conv,
                                    seq: *seq,
                                    key,
                                });
                                m.last_seq = *seq;
                                m.unfolded += 1;
                            }
                            if m.owner != e.owner {
                                m.owner = e.owner.clone();
                                write_meta = true;
                            }
                            if m.unfolded >= FOLD_EVERY {
                                let keys = keys_of(e.conv, &fresh, &local_only);
                                if let Some(seq) =
                                    fold(&mut rsnaps, &rtail, e.conv, m.epoch, &keys)?
                                {
                                    tail.effects.push(TailEffect::Covered { conv: e.conv, seq });
                                    fresh.remove(&e.conv);
                                    local_only.insert(e.conv);
                                    m.last_seq = m.last_seq.max(seq);
                                    m.unfolded = 0;
                                    write_meta = true;
                                }
                            }
                            if write_meta {
                                metas.insert(e.conv, encode_meta(&m).as_slice())?;
                            }
                            if gap || m.last_seq != *through {
                                Verdict::NeedBase
                            } else {
                                Verdict::Stored
                            }
                        }
                    };
                    verdicts.push(v);
                }
                out.push(verdicts);
            }
            ClusterWrite::Install { install, log_keys } => {
                let c = install.conv;
                let (epochs, snaps, contacts, log, timers, outbox, work, moved, summaries) =
                    held.as_mut().expect("opened for moves");
                drop_rows(log, timers, outbox, c, log_keys, &install.old_timers)?;
                moved.insert(c, log_next)?;
                drop_tail(c, tail, &mut fresh, &mut local_only);
                match &install.work {
                    Some(w) => work.insert(c, codec::encode_agent_work(w).as_slice())?,
                    None => work.remove(c)?,
                };
                for row in &install.timers {
                    timers.insert(row.id, codec::encode_timer_row(row).as_slice())?;
                }
                for e in &install.outbox {
                    outbox.insert((c, e.seq), codec::encode_outbox(e).as_slice())?;
                }
                snaps.insert(c, install.snapshot.as_slice())?;
                // Listed here from now on.
                if let Ok(state) = codec::decode_snapshot(&install.snapshot) {
                    summaries.insert(
                        (install.tenant.as_str(), c),
                        codec::encode_summary(&codec::ConversationSummary::of(&state)).as_slice(),
                    )?;
                }
                let ck = contact_key(&install.tenant, &install.contact);
                contacts.insert(ck.as_str(), c)?;
                convs.insert(c, ck.as_str())?;
                epochs.insert(c, install.epoch)?;
                metas.remove(c)?;
                rsnaps.remove(c)?;
                if rcontacts.get(ck.as_str())?.is_some_and(|v| v.value() == c) {
                    rcontacts.remove(ck.as_str())?;
                }
            }
            ClusterWrite::Demote { demote, log_keys } => {
                let c = demote.conv;
                let (epochs, snaps, contacts, log, timers, outbox, work, moved, summaries) =
                    held.as_mut().expect("opened for moves");
                drop_rows(log, timers, outbox, c, log_keys, &demote.old_timers)?;
                moved.insert(c, log_next)?;
                // The pool's row goes with the conversation.
                work.remove(c)?;
                snaps.remove(c)?;
                summaries.remove((demote.meta.tenant.as_str(), c))?;
                let ck = contact_key(&demote.meta.tenant, &demote.meta.contact);
                if contacts.get(ck.as_str())?.is_some_and(|v| v.value() == c) {
                    contacts.remove(ck.as_str())?;
                }
                convs.remove(c)?;
                epochs.remove(c)?;
                drop_tail(c, tail, &mut fresh, &mut local_only);
                rsnaps.insert(c, demote.snapshot.as_slice())?;
                metas.insert(c, encode_meta(&demote.meta).as_slice())?;
                rcontacts.insert(ck.as_str(), c)?;
            }
        }
    }
    // Quiet conversations far behind in the tail are folded, so that it
    // can be truncated. The committed index is as it was before this
    // commit: every record below its low water is garbage now too.
    let (low, oldest) = {
        let p = index.lock();
        (p.low_water(), p.oldest(FORCED_FOLDS))
    };
    for (c, first) in oldest {
        if first + TAIL_SPAN >= tail.next_key {
            break;
        }
        if local_only.contains(&c) {
            continue;
        }
        let Some(mut m) = meta_in(&metas, c)?.map(|m| current(c, m, &fresh, &local_only)) else {
            drop_tail(c, tail, &mut fresh, &mut local_only);
            continue;
        };
        let keys = keys_of(c, &fresh, &local_only);
        if let Some(seq) = fold(&mut rsnaps, &rtail, c, m.epoch, &keys)? {
            tail.effects.push(TailEffect::Covered { conv: c, seq });
            fresh.remove(&c);
            local_only.insert(c);
            m.last_seq = m.last_seq.max(seq);
            m.unfolded = 0;
            metas.insert(c, encode_meta(&m).as_slice())?;
        } else {
            // Nothing of it to fold (no base, no record of its epoch): its
            // entries must not hold the tail's low water.
            drop_tail(c, tail, &mut fresh, &mut local_only);
        }
    }
    let below = low.unwrap_or(start_key);
    if below >= tail.truncated_below + TRUNCATE_TAIL_EVERY {
        rtail.retain_in(..below, |_, _| false)?;
        tail.truncating = Some(below);
    }
    Ok(out)
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
    /// The epoch at which this node holds conversation `conv` (0 until its
    /// ownership first moves).
    pub fn epoch(&self, conv: u64) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(EPOCHS)?.get(conv)?.map_or(0, |v| v.value()))
    }

    /// Every conversation this node holds: (id, tenant, address).
    pub fn held(&self) -> Result<Vec<(u64, String, String)>, StoreError> {
        let r = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(CONVERSATIONS)?.iter()? {
            let (k, v) = item?;
            if let Some((t, a)) = v.value().split_once('\0') {
                out.push((k.value(), t.to_owned(), a.to_owned()));
            }
        }
        Ok(out)
    }

    /// Every replica this node keeps.
    pub fn replicas(&self) -> Result<Vec<(u64, ReplicaMeta)>, StoreError> {
        let (index, r) = {
            let index = self.replica_pending.lock();
            (index.lasts(), self.db.begin_read()?)
        };
        let mut out = Vec::new();
        for item in r.open_table(REPLICAS)?.iter()? {
            let (k, v) = item?;
            let m = decode_meta(v.value())?.with_tail(index.get(&k.value()).copied());
            out.push((k.value(), m));
        }
        Ok(out)
    }

    /// The replica of a contact's conversation, if this node keeps one.
    pub fn replica_of(&self, tenant: &str, address: &str) -> Result<Option<u64>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(REPLICA_CONTACTS)?;
        Ok(t.get(contact_key(tenant, address).as_str())?
            .map(|v| v.value()))
    }

    /// What this node's replica of `conv` says about it, if it keeps one.
    pub fn replica_meta(&self, conv: u64) -> Result<Option<ReplicaMeta>, StoreError> {
        let (last, r) = {
            let index = self.replica_pending.lock();
            (index.last(conv), self.db.begin_read()?)
        };
        Ok(meta_in(&r.open_table(REPLICAS)?, conv)?.map(|m| m.with_tail(last)))
    }

    /// A replica's meta and the conversation it describes.
    pub fn replica_state(
        &self,
        conv: u64,
    ) -> Result<Option<(ReplicaMeta, ConversationState)>, StoreError> {
        self.noted(self.read_replica(conv), "replica")
    }

    fn read_replica(
        &self,
        conv: u64,
    ) -> Result<Option<(ReplicaMeta, ConversationState)>, StoreError> {
        // The index and the snapshot the read sees: the writer changes
        // the index only after a commit, and never truncates a record the
        // index still lists, so the read holds every record listed (or a
        // snapshot that covers it).
        let (keys, r) = {
            let index = self.replica_pending.lock();
            (index.keys(conv), self.db.begin_read()?)
        };
        let Some(meta) = meta_in(&r.open_table(REPLICAS)?, conv)? else {
            return Ok(None);
        };
        let base = snapshot_in(&r.open_table(REPLICA_SNAPSHOTS)?, conv)?;
        let recs = tail_records(&r.open_table(REPLICA_TAIL)?, conv, meta.epoch, &keys)?;
        Ok(replay(ConversationId(conv), base, &recs)?.map(|s| {
            let meta = ReplicaMeta {
                last_seq: meta.last_seq.max(s.last_seq),
                unfolded: recs.len() as u32,
                ..meta
            };
            (meta, s)
        }))
    }

    /// Whether this node keeps any replica (it has had peers).
    pub fn keeps_replicas(&self) -> Result<bool, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(REPLICAS)?.first()?.is_some())
    }

    /// Records in the replica tail (folded or not, until truncated).
    pub fn replica_tail_len(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(REPLICA_TAIL)?.len()?)
    }

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
            let r = self.db.begin_read()?;
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
        let w = self.db.begin_write()?;
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
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn meta() -> ReplicaMeta {
        ReplicaMeta {
            tenant: "clinic-01".into(),
            contact: "+15551234567".into(),
            epoch: 3,
            owner: "n2".into(),
            last_seq: 41,
            unfolded: 5,
        }
    }

    /// A replica row written before the header (bare bincode) still
    /// reads, even one whose first byte is the header's kind byte (a
    /// tenant name of 9 bytes); rows are now written headed, checksummed
    /// postcard, and read back; a damaged headed row is not read as a
    /// bare one.
    #[test]
    fn replica_rows_of_before_and_now_read_back() {
        let bare = std::fs::read(fixture("replica_meta_bare_bincode.bin")).unwrap();
        assert_eq!(bare[0], codec::Kind::ReplicaMeta as u8);
        assert_eq!(decode_meta(&bare).unwrap(), meta());
        let now = encode_meta(&meta());
        let path = fixture("replica_meta_v1.bin");
        if std::env::var_os("THREADLINE_WRITE_FIXTURES").is_some() && !path.exists() {
            std::fs::write(&path, &now).unwrap();
        }
        let golden = std::fs::read(&path).unwrap();
        assert_eq!(golden, now, "the writer's bytes changed");
        assert_eq!(decode_meta(&golden).unwrap(), meta());
        let mut damaged = golden.clone();
        let at = damaged.len() - 6;
        damaged[at] ^= 0x40;
        assert!(decode_meta(&damaged).is_err());
    }
}
