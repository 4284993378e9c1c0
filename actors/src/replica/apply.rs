//! The cluster's writes inside the writer's transaction: replica changes,
//! bases, installs (take-over and hand-over) and demotions.

use super::*;
use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use redb::{ReadableTable, WriteTransaction};
use threadline_protocol::codec::{self};

use crate::store::{
    contact_key, Pending, StoreError, AGENT_WORK, CONTACTS, CONVERSATIONS, EPOCHS, LOG, MOVED,
    OUTBOX, SNAPSHOTS, SUMMARIES, TIMERS,
};

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
