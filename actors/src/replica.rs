//! Replicas and ownership moves in storage (the cluster's half of `store`).
//!
//! A node *holds* the conversations it owns: the ordinary tables (`log`,
//! `snapshots`, `contacts`, `conversations`, `timers`, `outbox`), plus an
//! `epochs` row once ownership has moved at least once. It keeps *replicas*
//! of conversations owned by the node before it in hash order:
//! - `replicas`: conversation id → `ReplicaMeta` (key, epoch, owner, last seq);
//! - `replica_contacts`: `tenant \0 address` → conversation id;
//! - `replica_snapshots`: conversation id → snapshot (the folded base);
//! - `replica_log`: (conversation id, event seq) → log record, folded into
//!   the snapshot every `FOLD_EVERY` records.
//!
//! Every ownership move raises the conversation's epoch. A replica refuses
//! events from an epoch older than its own, and a node refuses to keep a
//! replica of a conversation it holds at the same or a newer epoch: that
//! is the fence that keeps a stale owner (a paused node that was taken
//! over) from acknowledging anything, since an owner acknowledges only
//! once its replica accepted.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use threadline_protocol::codec::{self, TimerRow};
use threadline_protocol::{ConversationId, ConversationState, OutboxEntry};

use crate::store::{
    contact_key, replay, Store, StoreError, AGENT_WORK, CONTACTS, CONVERSATIONS, LOG, OUTBOX,
    SNAPSHOTS, TIMERS,
};

pub(crate) const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
pub(crate) const REPLICAS: TableDefinition<u64, &[u8]> = TableDefinition::new("replicas");
pub(crate) const REPLICA_CONTACTS: TableDefinition<&str, u64> =
    TableDefinition::new("replica_contacts");
pub(crate) const REPLICA_SNAPSHOTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("replica_snapshots");
pub(crate) const REPLICA_LOG: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("replica_log");

/// Replica log records of one conversation folded into its snapshot at once.
const FOLD_EVERY: u32 = 64;

/// What a replica knows of a conversation owned elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMeta {
    pub tenant: String,
    pub contact: String,
    pub epoch: u64,
    /// The node that sent the last change.
    pub owner: String,
    /// The last event seq the replica has.
    pub last_seq: u32,
    /// Records in `replica_log` not folded yet.
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

fn encode_meta(m: &ReplicaMeta) -> Vec<u8> {
    bincode::serde::encode_to_vec(m, threadline_protocol::codec::wire_config())
        .expect("plain data encodes")
}

fn decode_meta(b: &[u8]) -> Result<ReplicaMeta, StoreError> {
    bincode::serde::decode_from_slice(b, threadline_protocol::codec::wire_config())
        .map(|(m, _)| m)
        .map_err(|e| StoreError::Redb(format!("unreadable replica row: {e}")))
}

/// Applies the cluster's writes of one batch; returns the verdicts of
/// each `Replica` write, in order.
pub(crate) fn apply(
    txn: &WriteTransaction,
    writes: Vec<ClusterWrite<'_>>,
) -> Result<Vec<Vec<Verdict>>, StoreError> {
    let mut metas = txn.open_table(REPLICAS)?;
    let mut rcontacts = txn.open_table(REPLICA_CONTACTS)?;
    let mut rsnaps = txn.open_table(REPLICA_SNAPSHOTS)?;
    let mut rlog = txn.open_table(REPLICA_LOG)?;
    let mut convs = txn.open_table(CONVERSATIONS)?;
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
                    let meta = match metas.get(e.conv)? {
                        Some(v) => Some(decode_meta(v.value())?),
                        None => None,
                    };
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
                                rlog.retain_in(of(e.conv), |_, _| false)?;
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
                                rlog.insert((e.conv, *seq), rec.as_slice())?;
                                m.last_seq = *seq;
                                m.unfolded += 1;
                            }
                            m.owner = e.owner.clone();
                            if m.unfolded >= FOLD_EVERY {
                                let base = match rsnaps.get(e.conv)? {
                                    Some(v) => Some(codec::decode_snapshot(v.value())?),
                                    None => None,
                                };
                                let mut recs = Vec::new();
                                for item in rlog.range(of(e.conv))? {
                                    let (_, v) = item?;
                                    recs.push(codec::decode_log_record(v.value())?);
                                }
                                if let Some(s) = replay(ConversationId(e.conv), base, &recs)? {
                                    rsnaps.insert(e.conv, codec::encode_snapshot(&s).as_slice())?;
                                    rlog.retain_in(of(e.conv), |_, _| false)?;
                                    m.unfolded = 0;
                                }
                            }
                            metas.insert(e.conv, encode_meta(&m).as_slice())?;
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
                let (epochs, snaps, contacts, log, timers, outbox, work) =
                    held.as_mut().expect("opened for moves");
                drop_rows(log, timers, outbox, c, log_keys, &install.old_timers)?;
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
                let ck = contact_key(&install.tenant, &install.contact);
                contacts.insert(ck.as_str(), c)?;
                convs.insert(c, ck.as_str())?;
                epochs.insert(c, install.epoch)?;
                metas.remove(c)?;
                rsnaps.remove(c)?;
                rlog.retain_in(of(c), |_, _| false)?;
                if rcontacts.get(ck.as_str())?.is_some_and(|v| v.value() == c) {
                    rcontacts.remove(ck.as_str())?;
                }
            }
            ClusterWrite::Demote { demote, log_keys } => {
                let c = demote.conv;
                let (epochs, snaps, contacts, log, timers, outbox, work) =
                    held.as_mut().expect("opened for moves");
                drop_rows(log, timers, outbox, c, log_keys, &demote.old_timers)?;
                // The pool's row goes with the conversation.
                work.remove(c)?;
                snaps.remove(c)?;
                let ck = contact_key(&demote.meta.tenant, &demote.meta.contact);
                if contacts.get(ck.as_str())?.is_some_and(|v| v.value() == c) {
                    contacts.remove(ck.as_str())?;
                }
                convs.remove(c)?;
                epochs.remove(c)?;
                rlog.retain_in(of(c), |_, _| false)?;
                rsnaps.insert(c, demote.snapshot.as_slice())?;
                metas.insert(c, encode_meta(&demote.meta).as_slice())?;
                rcontacts.insert(ck.as_str(), c)?;
            }
        }
    }
    Ok(out)
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
        let r = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(REPLICAS)?.iter()? {
            let (k, v) = item?;
            out.push((k.value(), decode_meta(v.value())?));
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
        let r = self.db.begin_read()?;
        let meta = r.open_table(REPLICAS)?.get(conv)?;
        meta.map(|m| decode_meta(m.value())).transpose()
    }

    /// A replica's meta and the conversation it describes.
    pub fn replica_state(
        &self,
        conv: u64,
    ) -> Result<Option<(ReplicaMeta, ConversationState)>, StoreError> {
        let r = self.db.begin_read()?;
        let Some(meta) = r.open_table(REPLICAS)?.get(conv)? else {
            return Ok(None);
        };
        let meta = decode_meta(meta.value())?;
        let base = match r.open_table(REPLICA_SNAPSHOTS)?.get(conv)? {
            Some(v) => Some(codec::decode_snapshot(v.value())?),
            None => None,
        };
        let mut recs = Vec::new();
        for item in r.open_table(REPLICA_LOG)?.range(of(conv))? {
            let (_, v) = item?;
            recs.push(codec::decode_log_record(v.value())?);
        }
        Ok(replay(ConversationId(conv), base, &recs)?.map(|s| (meta, s)))
    }

    /// Creates the cluster's tables (at open).
    pub(crate) fn create_cluster_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(EPOCHS)?;
        txn.open_table(REPLICAS)?;
        txn.open_table(REPLICA_CONTACTS)?;
        txn.open_table(REPLICA_SNAPSHOTS)?;
        txn.open_table(REPLICA_LOG)?;
        Ok(())
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
