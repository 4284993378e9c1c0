//! Opening the data: replaying the log tail onto the snapshots, and the
//! integrity check of every stored value.

use super::*;
use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable};
use threadline_protocol::codec::{self, LogRecord};
use threadline_protocol::{ConversationId, ConversationState};

impl Store {
    pub(super) fn recover(&self) -> Result<OpenReport, StoreError> {
        let mut report = OpenReport::default();
        // Group the log tail by conversation.
        let mut tail: HashMap<u64, Vec<(u64, LogRecord)>> = HashMap::new();
        let mut undecodable: Vec<(u64, String)> = Vec::new();
        let (max_log, max_conv, max_dead, any_moved) = {
            let r = self.db()?.begin_read()?;
            let log = r.open_table(LOG)?;
            // Records of a copy that moved away (or was replaced) count not.
            let mut moved: HashMap<u64, u64> = HashMap::new();
            for item in r.open_table(MOVED)?.iter()? {
                let (c, k) = item?;
                moved.insert(c.value(), k.value());
            }
            for item in log.iter()? {
                let (k, v) = item?;
                let rec = match codec::decode_log_record(v.value()) {
                    Ok(rec) => rec,
                    Err(e) => {
                        // Whose it was cannot be told: set aside.
                        undecodable.push((k.value(), e.to_string()));
                        continue;
                    }
                };
                if moved.get(&rec.conv.0).is_some_and(|from| k.value() < *from) {
                    report.log_records_of_moved_copies += 1;
                    continue;
                }
                tail.entry(rec.conv.0).or_default().push((k.value(), rec));
                report.log_records_replayed += 1;
            }
            let last = |t: Option<u64>| t.map_or(0, |k| k + 1);
            let max_log = last(log.last()?.map(|(k, _)| k.value()));
            let max_conv = last(r.open_table(CONVERSATIONS)?.last()?.map(|(k, _)| k.value()));
            let max_dead = last(r.open_table(DEAD_LETTERS)?.last()?.map(|(k, _)| k.value()));
            (max_log, max_conv, max_dead, !moved.is_empty())
        };
        let mut max_conv = max_conv;
        if !tail.is_empty() || any_moved || !undecodable.is_empty() {
            let w = self.db()?.begin_write()?;
            {
                let mut snaps = w.open_table(SNAPSHOTS)?;
                let mut contacts = w.open_table(CONTACTS)?;
                let mut convs = w.open_table(CONVERSATIONS)?;
                let mut quarantine = w.open_table(QUARANTINE)?;
                let mut summaries = w.open_table(SUMMARIES)?;
                let log = w.open_table(LOG)?;
                for (k, e) in &undecodable {
                    if let Some(v) = log.get(*k)? {
                        quarantine.insert(*k, v.value())?;
                    }
                    tracing::error!(log_key = k, error = %e, "a damaged log record was quarantined");
                    report.quarantined.push((ConversationId(0), e.clone(), 1));
                }
                for (conv, keyed) in tail {
                    let existing = match snaps.get(conv)? {
                        Some(v) => codec::decode_snapshot(v.value()).map(Some),
                        None => Ok(None),
                    };
                    let (keys, records): (Vec<u64>, Vec<LogRecord>) = keyed.into_iter().unzip();
                    let replayed = existing
                        .map_err(StoreError::from)
                        .and_then(|existing| replay(ConversationId(conv), existing, &records));
                    let state = match replayed {
                        Ok(state) => state,
                        Err(e) => {
                            // One conversation's records do not hold the
                            // whole node's data hostage: they are set
                            // aside, kept for an operator, and said.
                            for k in &keys {
                                if let Some(v) = log.get(*k)? {
                                    quarantine.insert(*k, v.value())?;
                                }
                            }
                            tracing::error!(
                                conversation = %ConversationId(conv),
                                records = keys.len(),
                                error = %e,
                                "log records that do not replay were quarantined; the conversation is served as its snapshot had it"
                            );
                            report.quarantined.push((
                                ConversationId(conv),
                                e.to_string(),
                                keys.len(),
                            ));
                            continue;
                        }
                    };
                    if let Some(state) = state {
                        let key = contact_key(&state.tenant, &state.contact);
                        contacts.insert(key.as_str(), conv)?;
                        convs.insert(conv, key.as_str())?;
                        snaps.insert(conv, codec::encode_snapshot(&state).as_slice())?;
                        summaries.insert(
                            (state.tenant.as_str(), conv),
                            codec::encode_summary(&codec::ConversationSummary::of(&state))
                                .as_slice(),
                        )?;
                        max_conv = max_conv.max(conv + 1);
                        report.conversations_recovered += 1;
                    }
                }
                drop(log);
                w.open_table(LOG)?.retain(|_, _| false)?;
                // The log is empty now: no record is of a moved copy.
                w.open_table(MOVED)?.retain(|_, _| false)?;
            }
            w.commit()?;
        }
        self.backfill_summaries()?;
        report.next_log_key = max_log;
        report.next_conversation = max_conv.max(1);
        report.next_dead_letter = max_dead;
        let r = self.db()?.begin_read()?;
        let hwm = r.open_table(META)?.get(TIMER_HWM)?.map_or(0, |v| v.value());
        drop(r);
        report.timers = self.timer_rows()?;
        report.outbox = self.outbox_entries()?;
        report.next_timer_id = report
            .timers
            .iter()
            .map(|t| t.id)
            .max()
            .unwrap_or(0)
            .max(hwm)
            + 1;
        Ok(report)
    }

    /// Data written before conversations had summaries gets them, once.
    pub(super) fn backfill_summaries(&self) -> Result<(), StoreError> {
        let r = self.db()?.begin_read()?;
        if !redb::ReadableTableMetadata::is_empty(&r.open_table(SUMMARIES)?)? {
            return Ok(());
        }
        let snaps = r.open_table(SNAPSHOTS)?;
        let mut rows = Vec::new();
        for row in snaps.iter()? {
            let (k, v) = row?;
            // A damaged snapshot is reported by the integrity check.
            if let Ok(state) = codec::decode_snapshot(v.value()) {
                rows.push((
                    state.tenant.clone(),
                    k.value(),
                    codec::encode_summary(&codec::ConversationSummary::of(&state)),
                ));
            }
        }
        drop(snaps);
        drop(r);
        if rows.is_empty() {
            return Ok(());
        }
        let w = self.db()?.begin_write()?;
        {
            let mut t = w.open_table(SUMMARIES)?;
            for (tenant, conv, bytes) in &rows {
                t.insert((tenant.as_str(), *conv), bytes.as_slice())?;
            }
        }
        w.commit()?;
        tracing::info!(
            conversations = rows.len(),
            "conversation summaries written for existing data"
        );
        Ok(())
    }
}

/// Decodes every value of the tables that hold encoded records.
pub(super) fn check_values(db: &Database, ext: &dyn Extension) -> Result<Vec<Damage>, StoreError> {
    let r = db.begin_read()?;
    let mut out = Vec::new();
    let mut note = |table: &'static str, conversation: Option<u64>, e: Option<String>| {
        if let Some(error) = e {
            out.push(Damage {
                table,
                conversation: conversation.map(ConversationId),
                error,
            });
        }
    };
    let err = |r: Result<(), codec::CodecError>| r.err().map(|e| e.to_string());
    // Each table: its values decoded, the conversation read off the key.
    macro_rules! scan {
        ($table:expr, $name:literal, $conv:expr, $decode:path) => {
            for row in r.open_table($table)?.iter()? {
                let (k, v) = row?;
                note($name, $conv(k.value()), err($decode(v.value()).map(drop)));
            }
        };
    }
    scan!(SNAPSHOTS, "snapshots", Some, codec::decode_snapshot);
    scan!(LOG, "log", |_| None, codec::decode_log_record);
    scan!(TIMERS, "timers", |_| None, codec::decode_timer_row);
    scan!(
        OUTBOX,
        "outbox",
        |k: (u64, u32)| Some(k.0),
        codec::decode_outbox
    );
    scan!(AGENT_WORK, "agent_work", Some, codec::decode_agent_work);
    scan!(OFFERS, "offers", Some, codec::decode_offer_hold);
    ext.check(&r, &mut out)?;
    Ok(out)
}

/// Applies log records (in seq order, skipping those the snapshot covers).
pub(crate) fn replay(
    id: ConversationId,
    snapshot: Option<ConversationState>,
    records: &[LogRecord],
) -> Result<Option<ConversationState>, StoreError> {
    let mut state = snapshot;
    let mut records: Vec<&LogRecord> = records.iter().collect();
    records.sort_by_key(|r| r.seq);
    for rec in records {
        let err = |detail: String| StoreError::Replay { conv: id, detail };
        match &mut state {
            None => {
                if rec.seq != 1 {
                    return Err(err(format!(
                        "log starts at event {} with no snapshot",
                        rec.seq
                    )));
                }
                state = Some(
                    ConversationState::from_created(&rec.event).map_err(|e| err(e.to_string()))?,
                );
            }
            Some(s) if rec.seq <= s.last_seq => {}
            Some(s) => s
                .apply(rec.seq, &rec.event)
                .map_err(|e| err(e.to_string()))?,
        }
    }
    Ok(state)
}
